//! The flow table's L7 side: payload records to the L7 engine, exchanges
//! to records and metrics. Kept apart from table.rs, which handles L4.

use std::net::SocketAddr;

use weft_common::{
    IPPROTO_UDP, Owner, SockTuple,
    data::{self, DIR_SEND, DataHeader, Injected, flags as data_flags},
};

use super::{
    addr::{self, FlowKey},
    emit::TrafficDirection,
    record::Transport,
    table::FlowTable,
    tcp::SocketView,
};
use crate::{events::data::DataRecord, l7::SocketRole};

/// How long a closed socket's stream waits for its last payload records,
/// at least: also until payload records written after the close have been
/// read (the payload ring may lag behind the events under load) ...
const L7_CLOSE_DELAY_NS: u64 = 500_000_000;
/// ... but no longer than this on a node where no payload comes after it.
const L7_CLOSE_MAX_WAIT_NS: u64 = 10_000_000_000;
/// How far apart in time two payload records may be read out of order
/// (the ring is one queue; records of different CPUs reserve their places
/// microseconds after taking their timestamps).
const RING_REORDER_NS: u64 = 5_000_000;

/// A closed socket whose stream waits for late payload records.
#[derive(Debug, Clone, Copy)]
pub struct Closing {
    view: SocketView,
    /// The socket's addresses, as its close event names them.
    tuple: SockTuple,
    /// When it closed (kernel clock).
    ts_ns: u64,
    /// The earliest time to end its stream (monotonic clock).
    due_ns: u64,
}

impl Closing {
    /// Whether a stream with addresses `tuple` (from payload records) is
    /// this socket's.
    fn owns(&self, tuple: &SockTuple) -> bool {
        tuple.family == 0 || addr::endpoints(tuple) == addr::endpoints(&self.tuple)
    }
}

impl FlowTable {
    /// One captured read or write.
    pub fn handle_data(&mut self, rec: &DataRecord) {
        if rec.header.flags & data_flags::INJECTED != 0 {
            self.injected(rec);
            return;
        }
        self.l7.saw(rec.header.ts_ns);
        self.end_superseded_streams(&rec.header);
        let Some(view) = self.socket_view(&rec.header) else {
            if !self.is_own_traffic(&rec.header) {
                self.l7_unattributed += 1;
                let h = &rec.header;
                // At power-of-two counts: what was lost, without a line
                // per record.
                let n = self.l7_unattributed;
                log::log!(
                    log_level_since(n - 1, n),
                    "payload record of an untracked socket {:#x} ({:?}, pid {}): {} bytes {}",
                    h.sk,
                    addr::endpoints(&h.tuple),
                    h.pid,
                    h.total_len,
                    if h.direction == DIR_SEND {
                        "sent"
                    } else {
                        "received"
                    },
                );
            }
            return;
        };
        let role = SocketRole {
            is_client: view.is_client,
            server_port: view.key.server.port(),
            transport: match view.key.transport {
                Transport::Udp => weft_l7::Transport::Datagram,
                Transport::Tcp => weft_l7::Transport::Stream,
            },
        };
        let mut out = Vec::new();
        self.l7.feed(&rec.header, &rec.payload, role, &mut out);
        if self.emitter.traces.is_some() {
            self.follow_nesting(&rec.header, &view);
        }
        self.emit_exchanges(&view, out);
    }

    /// The trace context the kernel wrote into a request as it was sent
    /// (traces.inject_traceparent), for that request's CLIENT span. The
    /// record names the connection by its addresses (the sending socket
    /// connected: it is the client).
    fn injected(&mut self, rec: &DataRecord) {
        if rec.payload.len() < std::mem::size_of::<Injected>() || rec.header.tuple.family == 0 {
            return;
        }
        // SAFETY: Injected is plain data of that size (checked above).
        let injected: Injected = unsafe { std::ptr::read_unaligned(rec.payload.as_ptr().cast()) };
        let key = addr::key(Transport::Tcp, &rec.header.tuple, true);
        if let Some(tracer) = self.emitter.traces.as_mut() {
            tracer.injected(&key, rec.header.ts_ns, &injected);
        }
    }

    /// Traces: which thread read which server connection's requests, and
    /// the requests a thread sends while it serves one (their spans are
    /// that request's children: trace/nesting.rs).
    fn follow_nesting(&mut self, h: &DataHeader, view: &SocketView) {
        let sent = h.direction == DIR_SEND;
        if !view.is_client {
            if !sent && view.key.transport == Transport::Tcp {
                self.serving.read(h.tid, (h.sk, h.tuple), *view);
            }
            return;
        }
        if sent {
            self.sent_by_thread(h.tid, h.pid, h.ts_ns, &view.key);
        }
    }

    /// Thread `tid` (of process `pid`) sent a request on `client_key`:
    /// inside the one request it has read and not answered, if any.
    fn sent_by_thread(&mut self, tid: u32, pid: u32, ts_ns: u64, client_key: &FlowKey) {
        // The one request this thread has read and not answered; with
        // none, or more than one (an event loop), it serves no one request.
        // The exchange is built for that one only.
        let read_from = self.serving.of(tid);
        let mut unanswered = read_from
            .iter()
            .filter(|((sk, tuple), _)| self.l7.awaits_answer(*sk, tuple));
        let serving = match (unanswered.next(), unanswered.next()) {
            (Some(((sk, tuple), read_view)), None) => (self.l7.in_flight(*sk, tuple))
                .map(|ex| (self.serving_view(*sk, tuple, read_view), ex)),
            _ => None,
        };
        if serving.is_none() && !read_from.is_empty() {
            log::debug!(
                "thread {} sent on {:?} serving no one request: of the {} server sockets it read, {} await an answer",
                tid,
                client_key,
                read_from.len(),
                (read_from.iter())
                    .filter(|((sk, tuple), _)| self.l7.awaits_answer(*sk, tuple))
                    .count(),
            );
        }
        // Goroutines move between threads: what a Go process's thread
        // read says nothing of what it sends.
        let serving = serving.filter(|_| !self.runtimes.is_go(pid, ts_ns));
        let Some(tracer) = self.emitter.traces.as_mut() else {
            return;
        };
        let serving = serving.as_ref().map(|(server, ex)| {
            let both_local = server.client.is_some() && server.server.is_some();
            (&server.key, both_local, ex)
        });
        tracer.sent_while_serving(client_key, serving);
    }

    /// Traces: the server end of `view` (both ends on this node) answered
    /// a request before the agent read the payload record of its client's
    /// write. That record is written when the write returns, and a server
    /// on this node can read, answer, and have its own records read first.
    /// When the client socket has sent nothing the agent saw (a connection
    /// per request), the thread that connected it is taken for the sender,
    /// as its record will say, so that the exchange joins the request that
    /// thread serves. A connection that sent before keeps the nesting of
    /// its previous request's write (not guessed).
    fn nest_unseen_send(&mut self, view: &SocketView, ts_ns: u64) {
        let (Some(client), Some(_)) = (view.client, view.server) else {
            return;
        };
        if view.is_client || client.tid == 0 || view.key.transport != Transport::Tcp {
            return;
        }
        let Some(tracer) = self.emitter.traces.as_ref() else {
            return;
        };
        if tracer.knows_enclosing(&view.key) {
            return;
        }
        let Some(client_sk) = self.tcp.client_sk(&view.key) else {
            return;
        };
        let client_end = (view.key.client, view.key.server);
        if (self.l7).has_stream(client_sk, |t| addr::endpoints(t) == client_end) {
            return;
        }
        log::debug!(
            "{:?} answered before its client's write was read: nested by the thread that connected it ({})",
            view.key,
            client.tid
        );
        self.sent_by_thread(client.tid, client.pid, ts_ns, &view.key);
    }

    /// The view of server socket `sk` (addresses `tuple`) that a thread
    /// read a request from, as known now: the tracker's when it names that
    /// socket; else the view the request was read with (payload can be
    /// handled before the open that names the socket, and the kernel
    /// reuses a socket's address), completed with the owners the tracker
    /// knows of its connection's ends. Both ends known is what lets the
    /// serving span join its client's (trace/join.rs).
    fn serving_view(&self, sk: u64, tuple: &SockTuple, read: &SocketView) -> SocketView {
        if let Some(view) = self.tcp.socket_view(sk)
            && same_socket(&view, tuple)
        {
            return view;
        }
        let mut view = *read;
        if let Some((client, server)) = self.tcp.owners(&view.key) {
            view.client = view.client.or(client);
            view.server = view.server.or(server);
        }
        log::debug!(
            "server socket {sk:#x} ({:?}) not tracked when its thread sent: named by its read",
            view.key
        );
        view
    }

    /// A TCP socket closed. Its last reads may still be in the payload
    /// ring (a separate ring, read by another task), so the stream stays
    /// open for `L7_CLOSE_DELAY_NS` and until the payload records have
    /// caught up with the close, named by the socket's last view.
    pub fn stream_closing(
        &mut self,
        sk: u64,
        ts_ns: u64,
        tuple: &SockTuple,
        view: Option<SocketView>,
    ) {
        match view {
            Some(view) => {
                let due_ns = super::clock::mono_now_ns() + L7_CLOSE_DELAY_NS;
                self.l7_closing.entry(sk).or_default().push(Closing {
                    view,
                    tuple: *tuple,
                    ts_ns,
                    due_ns,
                });
            }
            None => {
                let mut out = Vec::new();
                let tuple = *tuple;
                let own =
                    |t: &SockTuple| t.family == 0 || addr::endpoints(t) == addr::endpoints(&tuple);
                self.l7.close(sk, own, ts_ns, &mut out);
                // A client of the agent's own endpoints (a scrape): its
                // payload can be read before the event that tells the
                // agent's end of it, and so have a stream. It is left out
                // on purpose, not lost.
                let (local, remote) = addr::endpoints(&tuple);
                if self.tcp.is_own_pair(local, remote) {
                    return;
                }
                // Exchanges its close completed, with no socket view to
                // name them by (a socket never tracked): counted, not
                // dropped silently.
                let before = self.l7_unattributed;
                self.l7_unattributed += out.len() as u64;
                if !out.is_empty() {
                    log::log!(
                        log_level_since(before, self.l7_unattributed),
                        "close of an untracked socket {sk:#x} ({:?}) completed {} exchanges",
                        addr::endpoints(&tuple),
                        out.len()
                    );
                }
            }
        }
    }

    /// The view of a closing TCP socket the tracker never knew: its open
    /// was skipped by the kernel (a program already running on that CPU,
    /// counted as `recursion`) or lost. Its payload was named from the
    /// records' own addresses and role (see `socket_view`); its close
    /// names it alike, from the same kernel state, so that the exchanges
    /// its close completes are written, not counted as unattributed.
    pub(super) fn untracked_socket_view(
        &self,
        ev: &weft_common::event::TcpEvent,
    ) -> Option<SocketView> {
        if ev.conn.tuple.family == 0 {
            return None;
        }
        let is_client = ev.conn.flags & weft_common::conn::CONN_ACTIVE != 0;
        let key = addr::key(Transport::Tcp, &ev.conn.tuple, is_client);
        let (local, remote) = addr::endpoints(&ev.conn.tuple);
        if local.port() == 0 || remote.port() == 0 || self.tcp.is_own_pair(local, remote) {
            return None;
        }
        Some(SocketView::one_end(key, is_client, ev.conn.owner))
    }

    /// A socket was opened. Streams of closed sockets at the same kernel
    /// address are told apart by their addresses and keep waiting; only
    /// without them (no socket layout) do they end now, as the new
    /// socket's records could not be told from theirs.
    pub fn stream_opened(&mut self, sk: u64) {
        if !self.l7.untold(sk) {
            return;
        }
        for closing in self.l7_closing.remove(&sk).unwrap_or_default() {
            self.close_stream(sk, closing);
        }
    }

    /// Ends the streams whose close delay has passed and whose last
    /// payload records have been read.
    pub fn close_due_streams(&mut self, now_ns: u64) {
        let caught_up = self.l7.data_ts_ns();
        let due = |c: &Closing| {
            c.due_ns <= now_ns
                && (caught_up >= c.ts_ns || now_ns >= c.due_ns + L7_CLOSE_MAX_WAIT_NS)
        };
        let sks: Vec<u64> = self
            .l7_closing
            .iter()
            .filter(|(_, list)| list.iter().any(due))
            .map(|(sk, _)| *sk)
            .collect();
        for sk in sks {
            let Some(list) = self.l7_closing.remove(&sk) else {
                continue;
            };
            let (ended, waiting): (Vec<Closing>, Vec<Closing>) = list.into_iter().partition(due);
            if !waiting.is_empty() {
                self.l7_closing.insert(sk, waiting);
            }
            for closing in ended {
                self.close_stream(sk, closing);
            }
        }
    }

    /// A record of a new socket at the kernel address of closed ones: the
    /// payload ring is read in order, so the closed sockets' last records,
    /// written before their close, have been read once a record this much
    /// later arrives. Their streams end now instead of waiting out the
    /// close delay: with a new connection per request, the kernel hands
    /// one freed socket's memory to connection after connection, and
    /// their closed streams would crowd out each other at that address.
    fn end_superseded_streams(&mut self, h: &DataHeader) {
        self.make_room(h);
        let superseded =
            |c: &Closing| !c.owns(&h.tuple) && c.ts_ns.saturating_add(RING_REORDER_NS) <= h.ts_ns;
        if !self
            .l7_closing
            .get(&h.sk)
            .is_some_and(|list| list.iter().any(superseded))
        {
            return;
        }
        let list = self.l7_closing.remove(&h.sk).unwrap_or_default();
        let (ended, waiting): (Vec<Closing>, Vec<Closing>) = list.into_iter().partition(superseded);
        if !waiting.is_empty() {
            self.l7_closing.insert(h.sk, waiting);
        }
        for closing in ended {
            self.close_stream(h.sk, closing);
        }
    }

    /// A new socket at an address whose streams are all taken (sockets
    /// closed there within the last few milliseconds: a hot address turns
    /// over faster than `RING_REORDER_NS` allows to end them as
    /// superseded): the earliest closed one ends now, flushed (an HTTP/1.0
    /// response that ends with its connection is complete), rather than
    /// evicted with what it holds. Its late records, if any, start a
    /// stream of their own that cannot pair them: they would have been
    /// lost with an eviction too.
    fn make_room(&mut self, h: &DataHeader) {
        if !self.l7.crowded(h.sk, &h.tuple) {
            return;
        }
        let Some(list) = self.l7_closing.get_mut(&h.sk) else {
            return;
        };
        let Some(earliest) = list
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.owns(&h.tuple))
            .min_by_key(|(_, c)| c.ts_ns)
            .map(|(i, _)| i)
        else {
            return;
        };
        let closing = list.remove(earliest);
        if list.is_empty() {
            self.l7_closing.remove(&h.sk);
        }
        self.close_stream(h.sk, closing);
    }

    fn close_stream(&mut self, sk: u64, closing: Closing) {
        let mut out = Vec::new();
        self.l7
            .close(sk, |t| closing.owns(t), closing.ts_ns, &mut out);
        self.emit_exchanges(&closing.view, out);
    }

    fn emit_exchanges(&mut self, view: &SocketView, out: Vec<weft_l7::Exchange>) {
        // A view made from a record read before the agent knew the
        // connection for one of its own (see `stream_closing`).
        if out.is_empty() || self.tcp.is_own(&view.key) {
            return;
        }
        let direction = if view.is_client {
            TrafficDirection::Egress
        } else {
            TrafficDirection::Ingress
        };
        if self.emitter.traces.is_some()
            && let Some(first) = out.first()
        {
            self.nest_unseen_send(view, first.response_ns);
        }
        for ex in out {
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
    /// program, name it. A UDP socket is the client when it sent before it
    /// received (as for UDP flows); for TCP connections older than the
    /// agent the lower port is taken for the server's.
    ///
    /// A view found by the socket's kernel address is only trusted when the
    /// record's own addresses agree with it: the kernel reuses a freed
    /// socket's memory at once, and payload records come through another
    /// ring than lifecycle events, so a record of a new socket can arrive
    /// while the address still names the old one's connection (still
    /// tracked, or closing), and records of an old socket can arrive after
    /// a new one took its address.
    fn socket_view(&self, h: &DataHeader) -> Option<SocketView> {
        if let Some(view) = self.tcp.socket_view(h.sk)
            && same_socket(&view, &h.tuple)
        {
            return Some(view);
        }
        // The most recently closed socket at this address that is this one.
        if let Some(closing) = self
            .l7_closing
            .get(&h.sk)
            .and_then(|list| list.iter().rev().find(|c| same_socket(&c.view, &h.tuple)))
        {
            return Some(closing.view);
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
        let is_client = match transport {
            // This record is the socket's first unless it has a stream.
            Transport::Udp => self
                .l7
                .first_sent(h.sk, &h.tuple)
                .unwrap_or(h.direction == DIR_SEND),
            // Payload can come in before the lifecycle event that tells the
            // tracker about the socket (two rings, two readers), even after
            // the kernel forgot a short connection: the record says which
            // end its socket is.
            Transport::Tcp => tcp_is_client(h.role, local, remote),
        };
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
        if self.tcp.is_own(&key) {
            return None;
        }
        Some(SocketView::one_end(key, is_client, owner))
    }
}

impl FlowTable {
    /// Records of the agent's own connections (the other end of a scrape
    /// of its metrics endpoint) are dropped on purpose.
    fn is_own_traffic(&self, h: &DataHeader) -> bool {
        if self.tcp.is_own_socket(h.sk) {
            return true;
        }
        let (local, remote) = addr::endpoints(&h.tuple);
        h.tuple.family != 0 && self.tcp.is_own_pair(local, remote)
    }
}

/// Info when a loss count going from `before` to `after` passed a power
/// of two, else debug.
pub(crate) fn log_level_since(before: u64, after: u64) -> log::Level {
    if before == 0 || (after > before && after.ilog2() != before.ilog2()) {
        log::Level::Info
    } else {
        log::Level::Debug
    }
}

/// Whether a record's socket addresses (read by the kernel program at the
/// read/write) are those of `view`'s end of its connection. Without them
/// (no BTF layout) the view cannot be checked and is trusted.
fn same_socket(view: &SocketView, tuple: &SockTuple) -> bool {
    if tuple.family == 0 {
        return true;
    }
    let (local, remote) = addr::endpoints(tuple);
    let (mine, peer) = if view.is_client {
        (view.key.client, view.key.server)
    } else {
        (view.key.server, view.key.client)
    };
    local == mine && remote == peer
}

/// Whether a TCP socket is its connection's client, by the role its
/// payload record carries. Only a connection older than the agent has
/// none: the lower port is then taken for the server's, as ephemeral
/// ports are high (a server on a port above the client's is misread).
fn tcp_is_client(role: u8, local: SocketAddr, remote: SocketAddr) -> bool {
    match role {
        data::role::CLIENT => true,
        data::role::SERVER => false,
        _ => local.port() > remote.port(),
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

    fn tuple(local: ([u8; 4], u16), remote: ([u8; 4], u16)) -> SockTuple {
        let mut t = SockTuple {
            family: weft_common::AF_INET,
            local_port: local.1,
            remote_port: remote.1,
            ..SockTuple::default()
        };
        t.local_addr[..4].copy_from_slice(&local.0);
        t.remote_addr[..4].copy_from_slice(&remote.0);
        t
    }

    #[test]
    fn a_records_role_names_the_client_whatever_the_ports() {
        let server: SocketAddr = "10.0.0.2:35000".parse().unwrap();
        let client: SocketAddr = "10.0.0.1:33000".parse().unwrap();
        // A server on a port above its client's ephemeral port.
        assert!(!tcp_is_client(data::role::SERVER, server, client));
        assert!(tcp_is_client(data::role::CLIENT, client, server));
        // Without a role (a connection older than the agent), the ports
        // decide, and get this one wrong.
        assert!(tcp_is_client(data::role::UNKNOWN, server, client));
        assert!(!tcp_is_client(data::role::UNKNOWN, client, server));
    }

    #[test]
    fn a_reused_socket_address_is_not_its_old_connection() {
        let view = SocketView {
            key: FlowKey {
                transport: Transport::Tcp,
                client: "10.0.0.1:40000".parse().unwrap(),
                server: "10.0.0.2:6379".parse().unwrap(),
            },
            is_client: true,
            client: None,
            server: None,
        };
        let client = tuple(([10, 0, 0, 1], 40000), ([10, 0, 0, 2], 6379));
        assert!(same_socket(&view, &client));
        // The server's socket of the same connection is not the client's.
        let server = tuple(([10, 0, 0, 2], 6379), ([10, 0, 0, 1], 40000));
        assert!(!same_socket(&view, &server));
        assert!(same_socket(
            &SocketView {
                is_client: false,
                ..view
            },
            &server
        ));
        // Another connection at the same kernel address.
        let other = tuple(([127, 0, 0, 1], 35680), ([127, 0, 0, 1], 15006));
        assert!(!same_socket(&view, &other));
        // Without the socket layout there is nothing to compare.
        assert!(same_socket(&view, &SockTuple::default()));
    }
}
