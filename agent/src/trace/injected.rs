//! The trace context the kernel wrote into outgoing requests
//! (`traces.inject_traceparent`, ebpf/probes/src/inject.rs).
//!
//! The kernel draws the ids as the request leaves: the request's CLIENT
//! span must then carry them, since the next hop continues the trace the
//! header names. They come as a record of their own, written as the
//! request is sent (before its payload record, and before anything a
//! server on this node does with it). Kept here by connection, in the
//! order sent, for the client's exchange: a request takes the latest
//! context sent on its connection no later than its own payload record;
//! and by span id for the server's when both ends are on this node (the
//! server reads the header as any incoming `traceparent`, and must know
//! it is this client's own span, not a parent before it).

use std::collections::{HashMap, VecDeque};

use opentelemetry::trace::{SpanId, TraceId};
use weft_common::data::Injected;

use crate::flow::addr::FlowKey;

/// What the kernel wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: TraceId,
    /// The CLIENT span's id (the header's parent-id).
    pub span_id: SpanId,
    pub sampled: bool,
}

impl From<&Injected> for Context {
    fn from(i: &Injected) -> Self {
        Self {
            trace_id: TraceId::from_bytes(i.trace_id),
            span_id: SpanId::from_bytes(i.span_id),
            sampled: i.flags & 1 == 1,
        }
    }
}

/// Injected contexts not yet used, by each side's way of finding them;
/// both forget them after the pending wait.
#[derive(Default)]
pub struct Injections {
    /// By connection: (when sent, context), oldest first.
    client: HashMap<FlowKey, VecDeque<(u64, Context)>>,
    server: HashMap<SpanId, Context>,
    /// When each was added, oldest first, for expiry.
    added: VecDeque<(u64, FlowKey, u64, SpanId)>,
    /// Contexts not kept for lack of room (their spans are not joined to
    /// the header the next hop saw).
    pub dropped: u64,
}

impl Injections {
    /// The kernel injected `context` into a request it sent on `key` at
    /// `sent_ns` (kernel clock).
    pub fn add(&mut self, key: FlowKey, sent_ns: u64, context: Context, now: u64) {
        if self.added.len() >= super::PENDING_CAPACITY {
            self.dropped += 1;
            // At power-of-two counts: what was lost, without a line each.
            log::log!(
                crate::flow::requests::log_level_since(self.dropped - 1, self.dropped),
                "{} injected trace contexts not kept ({} waiting): their requests' \
                 CLIENT spans get ids of their own, not the header's",
                self.dropped,
                self.added.len(),
            );
            return;
        }
        self.client
            .entry(key)
            .or_default()
            .push_back((sent_ns, context));
        self.server.insert(context.span_id, context);
        self.added.push_back((now, key, sent_ns, context.span_id));
    }

    /// The context injected into the client's request of `key` whose first
    /// payload record has the timestamp `request_ns`: the latest one sent
    /// on the connection by then (its write's record comes after the
    /// injection). Older ones are dropped: their requests were answered
    /// before, or never (a request is not answered out of order).
    pub fn for_client(&mut self, key: &FlowKey, request_ns: u64) -> Option<Context> {
        let sent = self.client.get_mut(key)?;
        let mut found = None;
        while let Some(&(at, context)) = sent.front() {
            if at > request_ns {
                break;
            }
            found = Some(context);
            sent.pop_front();
        }
        if sent.is_empty() {
            self.client.remove(key);
        }
        found
    }

    /// The injected context whose header names `parent`: the server side
    /// of a request the kernel injected on this node.
    pub fn for_server(&mut self, parent: SpanId) -> Option<Context> {
        self.server.remove(&parent)
    }

    /// Forgets contexts older than the pending wait.
    pub fn expire(&mut self, now: u64) {
        while let Some((at, key, sent_ns, span)) = self.added.front().copied() {
            if now.saturating_sub(at) < super::PENDING_WAIT_NS {
                break;
            }
            if let Some(sent) = self.client.get_mut(&key) {
                sent.retain(|(t, _)| *t != sent_ns);
                if sent.is_empty() {
                    self.client.remove(&key);
                }
            }
            self.server.remove(&span);
            self.added.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::flow::record::Transport;

    fn key(port: u16) -> FlowKey {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        FlowKey {
            client: SocketAddr::new(ip, port),
            server: SocketAddr::new(ip, 80),
            transport: Transport::Tcp,
        }
    }

    fn context(n: u8) -> Context {
        Context {
            trace_id: TraceId::from_bytes([n; 16]),
            span_id: SpanId::from_bytes([n; 8]),
            sampled: true,
        }
    }

    #[test]
    fn the_client_takes_its_request_and_the_server_finds_it_by_span() {
        let mut ids = Injections::default();
        let ctx = context(2);
        ids.add(key(1000), 5, ctx, 0);
        assert_eq!(ids.for_client(&key(1001), 7), None, "another connection");
        assert_eq!(ids.for_client(&key(1000), 4), None, "an earlier request");
        assert_eq!(ids.for_server(SpanId::from_bytes([2; 8])), Some(ctx));
        assert_eq!(ids.for_client(&key(1000), 7), Some(ctx));
        assert_eq!(ids.for_client(&key(1000), 7), None, "taken once");
        ids.add(key(1000), 9, ctx, 1);
        ids.expire(super::super::PENDING_WAIT_NS + 1);
        assert_eq!(ids.for_server(SpanId::from_bytes([2; 8])), None, "expired");
        assert_eq!(ids.for_client(&key(1000), 10), None, "expired");
        assert!(ids.client.is_empty() && ids.added.is_empty());
    }

    #[test]
    fn keep_alive_requests_take_their_own_in_order() {
        let mut ids = Injections::default();
        // Sent at 10 and 20 (the second before the first was answered);
        // their payload records at 11 and 21.
        ids.add(key(1000), 10, context(1), 0);
        ids.add(key(1000), 20, context(2), 0);
        assert_eq!(ids.for_client(&key(1000), 11), Some(context(1)));
        assert_eq!(ids.for_client(&key(1000), 21), Some(context(2)));
        // One never answered (sent at 30): the next request (40, 41)
        // takes its own, the stale one is dropped.
        ids.add(key(1000), 30, context(3), 0);
        ids.add(key(1000), 40, context(4), 0);
        assert_eq!(ids.for_client(&key(1000), 41), Some(context(4)));
        assert!(ids.client.is_empty());
    }
}
