//! The flow table's L7 side: payload records to the L7 engine, exchanges
//! to records and metrics. Kept apart from table.rs, which handles L4.

use std::net::SocketAddr;

use weft_common::{IPPROTO_UDP, Owner, data::DataHeader};

use super::{
    addr::{self, FlowKey},
    emit::TrafficDirection,
    record::Transport,
    table::FlowTable,
    tcp::SocketView,
};
use crate::{events::data::DataRecord, l7::SocketRole};

/// How long a closed socket's stream waits for its last payload records.
const L7_CLOSE_DELAY_NS: u64 = 500_000_000;

impl FlowTable {
    /// One captured read or write.
    pub fn handle_data(&mut self, rec: &DataRecord) {
        let Some(view) = self.socket_view(&rec.header) else {
            if !self.is_own_traffic(&rec.header) {
                self.l7_unattributed += 1;
            }
            return;
        };
        let role = SocketRole {
            is_client: view.is_client,
            server_port: view.key.server.port(),
        };
        let mut out = Vec::new();
        self.l7.feed(&rec.header, &rec.payload, role, &mut out);
        self.emit_exchanges(&view, out);
    }

    /// A TCP socket closed. Its last reads may still be in the payload
    /// ring (a separate ring, read by another task), so the stream stays
    /// open for `L7_CLOSE_DELAY`, named by the socket's last view.
    pub fn stream_closing(&mut self, sk: u64, ts_ns: u64, view: Option<SocketView>) {
        match view {
            Some(view) => {
                let due = super::clock::mono_now_ns() + L7_CLOSE_DELAY_NS;
                self.l7_closing.insert(sk, (view, ts_ns, due));
            }
            None => self.close_stream(sk, ts_ns, None),
        }
    }

    /// A socket was opened: if its address belonged to a socket still
    /// closing, that stream ends now.
    pub fn stream_opened(&mut self, sk: u64) {
        if let Some((view, ts_ns, _)) = self.l7_closing.remove(&sk) {
            self.close_stream(sk, ts_ns, Some(view));
        }
    }

    /// Ends the streams whose close delay has passed.
    pub fn close_due_streams(&mut self, now_ns: u64) {
        let due: Vec<u64> = self
            .l7_closing
            .iter()
            .filter(|(_, (_, _, at))| *at <= now_ns)
            .map(|(sk, _)| *sk)
            .collect();
        for sk in due {
            if let Some((view, ts_ns, _)) = self.l7_closing.remove(&sk) {
                self.close_stream(sk, ts_ns, Some(view));
            }
        }
    }

    fn close_stream(&mut self, sk: u64, ts_ns: u64, view: Option<SocketView>) {
        let mut out = Vec::new();
        self.l7.close(sk, ts_ns, &mut out);
        if let Some(view) = view {
            self.emit_exchanges(&view, out);
        }
    }

    fn emit_exchanges(&mut self, view: &SocketView, out: Vec<weft_l7::Exchange>) {
        let direction = if view.is_client {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        };
        for ex in &out {
            self.emitter.emit_l7(
                &self.l7_metrics,
                &view.key,
                view.client.as_ref(),
                view.server.as_ref(),
                direction,
                ex,
            );
        }
    }

    /// Which connection a record belongs to: the TCP tracker knows the
    /// sockets it saw being established; for the others (UDP, connections
    /// older than the agent) the socket's own addresses, read by the kernel
    /// program, name it, and the lower port is taken for the server's.
    fn socket_view(&self, h: &DataHeader) -> Option<SocketView> {
        if let Some(view) = self.tcp.socket_view(h.sk) {
            return Some(view);
        }
        if let Some((view, _, _)) = self.l7_closing.get(&h.sk) {
            return Some(*view);
        }
        if h.tuple.family == 0 {
            return None;
        }
        let transport = if h.protocol == IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let (local, mut remote) = addr::endpoints(&h.tuple);
        // Unconnected UDP sockets name their peer per datagram.
        if let Some(peer) = sockaddr(&h.peer) {
            remote = peer;
        }
        if remote.port() == 0 || local.port() == 0 {
            return None;
        }
        let is_client = local.port() > remote.port();
        let owner = Owner {
            pid: h.pid,
            tid: h.tid,
            cgroup_id: 0,
            comm: h.comm,
        };
        let (client, server) = if is_client {
            (local, remote)
        } else {
            (remote, local)
        };
        let key = FlowKey {
            transport,
            client,
            server,
        };
        if self.tcp.is_ignored(&key) {
            return None;
        }
        Some(SocketView {
            key,
            is_client,
            client: is_client.then_some(owner),
            server: (!is_client).then_some(owner),
        })
    }
}

impl FlowTable {
    /// Records of the agent's own connections are dropped on purpose.
    fn is_own_traffic(&self, h: &DataHeader) -> bool {
        let (local, remote) = addr::endpoints(&h.tuple);
        [local, remote].into_iter().any(|server| {
            self.tcp.is_ignored(&FlowKey {
                transport: Transport::Tcp,
                client: local,
                server,
            })
        })
    }
}

/// A `struct sockaddr_in`/`sockaddr_in6` copied from user memory.
fn sockaddr(raw: &[u8; 28]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        weft_common::AF_INET => {
            let ip = std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Some(SocketAddr::new(ip.into(), port))
        }
        weft_common::AF_INET6 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&raw[8..24]);
            Some(SocketAddr::new(addr::ip(weft_common::AF_INET6, &b), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs() {
        let mut raw = [0u8; 28];
        raw[..2].copy_from_slice(&weft_common::AF_INET.to_ne_bytes());
        raw[2..4].copy_from_slice(&53u16.to_be_bytes());
        raw[4..8].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(sockaddr(&raw), Some("10.0.0.1:53".parse().unwrap()));
        assert_eq!(sockaddr(&[0u8; 28]), None);
    }
}
