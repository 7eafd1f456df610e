//! Same-node joining: when both ends of a connection are on this node, the
//! client's and the server's view of one exchange are parsed from two
//! sockets, in no fixed order. Whichever comes first decides the trace
//! (its id, the client span's id, sampling) and leaves it here; the other
//! takes it, so the server span becomes the child of the client span
//! without either waiting for the other.
//!
//! Exchanges are matched per connection by a fingerprint of the request
//! (protocol, method, path), the earliest waiting first: HTTP/1.x answers
//! in order, so each side sees the same sequence. An entry whose other
//! side never comes (lost, or that end was not on this node after all)
//! expires.

use std::collections::{HashMap, VecDeque};

use opentelemetry::trace::{SpanId, TraceId};

use crate::flow::addr::FlowKey;

/// How long an unmatched side waits for the other.
const JOIN_WAIT_NS: u64 = super::PENDING_WAIT_NS;
/// Unmatched entries kept at most (beyond, new ones are not kept: their
/// exchanges get spans, only not joined).
const JOIN_CAPACITY: usize = super::PENDING_CAPACITY;

/// What both spans of one exchange share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    pub trace_id: TraceId,
    /// The client span's id (also the server span's parent).
    pub client_span_id: SpanId,
    /// The client span's own parent (from an incoming `traceparent`, or
    /// the server span its request was sent from inside of).
    pub client_parent: Option<SpanId>,
    /// That parent is in the client's own process (a server span it was
    /// serving), not across the network.
    pub client_parent_local: bool,
    pub sampled: bool,
}

struct Pending {
    from_client: bool,
    fingerprint: u64,
    shared: Shared,
    at_ns: u64,
}

#[derive(Default)]
pub struct Joins {
    pending: HashMap<FlowKey, VecDeque<Pending>>,
    count: usize,
    /// Entries that expired unmatched or were not kept for lack of room.
    pub unmatched: u64,
}

impl Joins {
    /// The shared context of this exchange: the other side's, when it came
    /// first, else `make()`'s, left for the other side.
    pub fn join(
        &mut self,
        key: &FlowKey,
        from_client: bool,
        fingerprint: u64,
        now_ns: u64,
        make: impl FnOnce() -> Shared,
    ) -> Shared {
        let queue = self.pending.entry(*key).or_default();
        // The earliest waiting exchange of the other side with the same
        // request: in order on HTTP/1.x; HTTP/2 streams may finish in
        // another order on each side, so a different request waiting
        // first is passed over (it stays for its own match, or expires).
        let found = queue.iter().position(|p| {
            p.from_client != from_client
                && p.fingerprint == fingerprint
                && now_ns.saturating_sub(p.at_ns) <= JOIN_WAIT_NS
        });
        if let Some(shared) = found.and_then(|i| queue.remove(i)).map(|p| p.shared) {
            self.count -= 1;
            if queue.is_empty() {
                self.pending.remove(key);
            }
            return shared;
        }
        let shared = make();
        if self.count < JOIN_CAPACITY {
            queue.push_back(Pending {
                from_client,
                fingerprint,
                shared,
                at_ns: now_ns,
            });
            self.count += 1;
        } else {
            self.unmatched += 1;
            if queue.is_empty() {
                self.pending.remove(key);
            }
        }
        shared
    }

    /// Drops the entries whose other side never came (its end was not on
    /// this node after all, or its exchange was lost).
    pub fn expire(&mut self, now_ns: u64) {
        let mut dropped = 0;
        self.pending.retain(|_, q| {
            let before = q.len();
            q.retain(|p| now_ns.saturating_sub(p.at_ns) <= JOIN_WAIT_NS);
            dropped += before - q.len();
            !q.is_empty()
        });
        self.count -= dropped;
        self.unmatched += dropped as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Transport;

    fn key() -> FlowKey {
        FlowKey {
            transport: Transport::Tcp,
            client: "10.0.0.1:40000".parse().expect("address"),
            server: "10.0.0.2:80".parse().expect("address"),
        }
    }

    fn shared(n: u8) -> Shared {
        Shared {
            trace_id: TraceId::from_bytes([n; 16]),
            client_span_id: SpanId::from_bytes([n; 8]),
            client_parent: None,
            client_parent_local: false,
            sampled: true,
        }
    }

    #[test]
    fn the_second_side_takes_the_first_sides_context() {
        let mut j = Joins::default();
        // Server first for one exchange, client first for the next.
        assert_eq!(j.join(&key(), false, 1, 0, || shared(1)), shared(1));
        assert_eq!(j.join(&key(), true, 1, 1, || shared(9)), shared(1));
        assert_eq!(j.join(&key(), true, 2, 2, || shared(2)), shared(2));
        assert_eq!(j.join(&key(), false, 2, 3, || shared(9)), shared(2));
        assert_eq!(j.count, 0);
        assert!(j.pending.is_empty());
    }

    #[test]
    fn a_side_lost_or_reordered_is_skipped_by_fingerprint_and_expires() {
        let mut j = Joins::default();
        j.join(&key(), true, 1, 0, || shared(1));
        j.join(&key(), true, 2, 0, || shared(2));
        // The server saw exchange 2 first (another stream order), and
        // never exchange 1.
        assert_eq!(j.join(&key(), false, 2, 1, || shared(9)), shared(2));
        assert_eq!((j.count, j.unmatched), (1, 0));
        j.join(&key(), true, 3, 0, || shared(3));
        j.expire(JOIN_WAIT_NS + 1);
        assert_eq!((j.count, j.unmatched), (0, 2));
        assert_eq!(
            j.join(&key(), false, 3, JOIN_WAIT_NS + 2, || shared(4)),
            shared(4)
        );
    }
}
