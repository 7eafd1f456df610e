//! UDP flows, polled from the kernel's `UDP_FLOWS` table.
//!
//! The kernel keys a flow by the local socket's view. When both ends are on
//! this node a flow has two views (client's and server's); they map to the
//! same [`FlowKey`] and are merged. The client is the side that sent the
//! first datagram. A flow with no datagram for the idle timeout is closed:
//! its record is written and its kernel entries are deleted.

use std::collections::HashMap;

use weft_common::{
    SockTuple,
    udp::{UDP_FIRST_EGRESS, UDP_OWNER_KNOWN, UdpFlow},
};

use super::{
    addr::{FlowKey, key},
    emit::{Emitter, Exported, Figures, Observation},
    record::{FlowEvent, Transport},
};

#[derive(Debug, Clone, Copy)]
struct View {
    tuple: SockTuple,
    flow: UdpFlow,
}

#[derive(Debug)]
struct Flow {
    client: Option<View>,
    server: Option<View>,
    last_record_ns: u64,
    exported: Exported,
}

impl Flow {
    fn views(&self) -> impl Iterator<Item = &View> {
        self.client.iter().chain(self.server.iter())
    }

    fn first_ns(&self) -> u64 {
        self.views().map(|v| v.flow.first_ns).min().unwrap_or(0)
    }

    fn last_ns(&self) -> u64 {
        self.views().map(|v| v.flow.last_ns).max().unwrap_or(0)
    }

    fn figures(&self) -> Figures {
        let c = self.client.map(|v| v.flow);
        let s = self.server.map(|v| v.flow);
        let pick = |from_client: Option<u64>, from_server: Option<u64>| {
            from_client.or(from_server).unwrap_or(0)
        };
        Figures {
            bytes_sent: pick(c.map(|c| c.bytes_sent), s.map(|s| s.bytes_received)),
            bytes_received: pick(c.map(|c| c.bytes_received), s.map(|s| s.bytes_sent)),
            packets_sent: Some(pick(
                c.map(|c| c.packets_sent),
                s.map(|s| s.packets_received),
            )),
            packets_received: Some(pick(
                c.map(|c| c.packets_received),
                s.map(|s| s.packets_sent),
            )),
            ..Figures::default()
        }
    }

    fn owner(view: &Option<View>) -> Option<&weft_common::Owner> {
        view.as_ref()
            .filter(|v| v.flow.flags & UDP_OWNER_KNOWN != 0)
            .map(|v| &v.flow.owner)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UdpSettings {
    pub update_interval_ns: u64,
    pub idle_timeout_ns: u64,
    pub capacity: usize,
}

pub struct UdpTracker {
    settings: UdpSettings,
    flows: HashMap<FlowKey, Flow>,
    pub rejected: u64,
}

impl UdpTracker {
    pub fn new(settings: UdpSettings) -> Self {
        Self {
            settings,
            flows: HashMap::new(),
            rejected: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Merges the kernel's table into the flows, writes records, and
    /// returns the kernel keys of flows that went idle (to delete).
    pub fn tick(
        &mut self,
        now_ns: u64,
        kernel: &mut dyn Iterator<Item = (SockTuple, UdpFlow)>,
        out: &mut Emitter,
    ) -> Vec<SockTuple> {
        let mut new_keys = Vec::new();
        for (tuple, flow) in kernel {
            let local_is_client = flow.flags & UDP_FIRST_EGRESS != 0;
            let key = key(Transport::Udp, &tuple, local_is_client);
            if !self.flows.contains_key(&key) {
                if self.flows.len() >= self.settings.capacity {
                    self.rejected += 1;
                    continue;
                }
                new_keys.push(key);
            }
            let entry = self.flows.entry(key).or_insert_with(|| Flow {
                client: None,
                server: None,
                last_record_ns: 0,
                exported: Exported::default(),
            });
            let view = Some(View { tuple, flow });
            if local_is_client {
                entry.client = view;
            } else {
                entry.server = view;
            }
        }
        for key in &new_keys {
            if let Some(flow) = self.flows.get_mut(key) {
                let ts = flow.first_ns();
                emit(key, flow, FlowEvent::Open, ts, out);
            }
        }
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (key, flow) in &mut self.flows {
            let last = flow.last_ns();
            if now_ns.saturating_sub(last) >= self.settings.idle_timeout_ns {
                emit(key, flow, FlowEvent::Close, last, out);
                idle.extend(flow.views().map(|v| v.tuple));
                expired.push(*key);
            } else if now_ns.saturating_sub(flow.last_record_ns) >= self.settings.update_interval_ns
            {
                emit(key, flow, FlowEvent::Update, now_ns, out);
            } else {
                let obs = observation(key, flow, FlowEvent::Update, now_ns, flow.figures());
                out.export_growth(&obs, &mut flow.exported);
            }
        }
        for key in expired {
            self.flows.remove(&key);
        }
        idle
    }
}

fn observation<'a>(
    key: &'a FlowKey,
    flow: &Flow,
    event: FlowEvent,
    ts_ns: u64,
    figures: Figures,
) -> Observation<'a> {
    Observation {
        key,
        event,
        ts_ns,
        start_ns: flow.first_ns(),
        client: Flow::owner(&flow.client).copied(),
        server: Flow::owner(&flow.server).copied(),
        figures,
        failure: None,
    }
}

fn emit(key: &FlowKey, flow: &mut Flow, event: FlowEvent, ts_ns: u64, out: &mut Emitter) {
    let obs = observation(key, flow, event, ts_ns, flow.figures());
    out.emit(&obs, &mut flow.exported);
    flow.last_record_ns = ts_ns.max(flow.last_record_ns);
}
