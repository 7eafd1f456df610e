//! In-process joining: a request that a thread sends while it is serving
//! an inbound request (after reading it, before answering it) is a child
//! of that request's SERVER span. This is how thread-per-request servers
//! work (Python's `ThreadingHTTPServer`, a servlet container's worker,
//! Ruby's Puma, PHP-FPM): the thread that read the request makes the calls
//! the answer needs, then writes the answer.
//!
//! The flow table knows which thread read which unanswered request (its
//! payload records name the thread); when that thread sends a request on
//! another connection, it asks [`Nesting`] to note the serving exchange as
//! that connection's enclosing span. Spans are built when an exchange
//! completes, and the nested exchanges complete before the one enclosing
//! them, so the enclosing SERVER span's place (trace, span id, parent) is
//! decided early, when the first nested request is sent, and kept here
//! until its own exchange completes and takes it.
//!
//! Not covered, and never guessed: event loops and green threads (Node.js,
//! Python asyncio, Go, Netty, Tokio), where one thread holds many requests
//! at once. A thread with more than one unanswered inbound request when it
//! sends is ambiguous, so the request it sends starts (or joins) a trace of
//! its own as if it were not nested.

use std::collections::HashMap;

use opentelemetry::trace::{SpanId, TraceId};

use super::span::Place;
use crate::flow::addr::FlowKey;

/// How long an early-decided span waits for its exchange to complete, and
/// a connection's enclosing span for its exchange to be decided.
const NESTING_WAIT_NS: u64 = super::PENDING_WAIT_NS;
/// Entries kept at most per map (beyond, nesting is not recorded: the
/// exchanges still get spans, each in a trace of its own).
const NESTING_CAPACITY: usize = super::PENDING_CAPACITY;

/// The SERVER span a connection's latest request was sent from inside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enclosing {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Early {
    pub place: Place,
    pub sampled: bool,
}

#[derive(Default)]
pub struct Nesting {
    /// SERVER spans decided before their exchange completed, by connection
    /// and the request's start time.
    early: HashMap<(FlowKey, u64), (Early, u64)>,
    /// Connections whose latest request was sent inside a SERVER span.
    enclosing: HashMap<FlowKey, (Enclosing, u64)>,
}

impl Nesting {
    /// The place decided early for the exchange of `key` that started at
    /// `request_ns`, if any (kept for the next nested request).
    pub fn early(&self, key: &FlowKey, request_ns: u64) -> Option<Early> {
        self.early.get(&(*key, request_ns)).map(|(e, _)| *e)
    }

    /// Takes the place decided early for a completed exchange.
    pub fn take_early(&mut self, key: &FlowKey, request_ns: u64) -> Option<Early> {
        self.early.remove(&(*key, request_ns)).map(|(e, _)| e)
    }

    pub fn keep_early(&mut self, key: &FlowKey, request_ns: u64, early: Early, now_ns: u64) {
        if self.early.len() < NESTING_CAPACITY {
            self.early.insert((*key, request_ns), (early, now_ns));
        }
    }

    /// The span that the request being decided on `key` was sent inside of.
    pub fn enclosing(&self, key: &FlowKey) -> Option<Enclosing> {
        self.enclosing.get(key).map(|(e, _)| *e)
    }

    /// The latest request on `key` was sent inside `span` (`None`: outside
    /// of any, or not known).
    pub fn set_enclosing(&mut self, key: &FlowKey, span: Option<Enclosing>, now_ns: u64) {
        match span {
            Some(span)
                if self.enclosing.len() < NESTING_CAPACITY || self.enclosing.contains_key(key) =>
            {
                self.enclosing.insert(*key, (span, now_ns));
            }
            _ => {
                self.enclosing.remove(key);
            }
        }
    }

    /// Forgets what waited too long: an exchange that never completed (its
    /// connection lost), a connection that sent no more.
    pub fn expire(&mut self, now_ns: u64) {
        let fresh = |at: u64| now_ns.saturating_sub(at) <= NESTING_WAIT_NS;
        self.early.retain(|_, (_, at)| fresh(*at));
        self.enclosing.retain(|_, (_, at)| fresh(*at));
    }

    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.early.len(), self.enclosing.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Transport;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            transport: Transport::Tcp,
            client: "10.0.0.1:40000".parse().expect("address"),
            server: std::net::SocketAddr::new("10.0.0.2".parse().expect("address"), port),
        }
    }

    fn early(n: u8) -> Early {
        Early {
            place: Place {
                trace_id: TraceId::from_bytes([n; 16]),
                span_id: SpanId::from_bytes([n; 8]),
                parent: None,
                parent_is_remote: true,
                server: true,
            },
            sampled: true,
        }
    }

    #[test]
    fn an_early_place_is_taken_once_by_its_own_exchange() {
        let mut n = Nesting::default();
        n.keep_early(&key(80), 100, early(1), 0);
        assert!(n.early(&key(80), 100).is_some());
        assert!(n.take_early(&key(80), 200).is_none(), "another request");
        assert!(n.take_early(&key(81), 100).is_none(), "another connection");
        assert_eq!(
            n.take_early(&key(80), 100).map(|e| e.place.span_id),
            Some(SpanId::from_bytes([1; 8]))
        );
        assert!(n.take_early(&key(80), 100).is_none());
    }

    #[test]
    fn a_request_sent_outside_a_span_clears_the_connections_enclosing() {
        let mut n = Nesting::default();
        let span = Enclosing {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes([1; 8]),
            sampled: true,
        };
        n.set_enclosing(&key(6379), Some(span), 0);
        assert_eq!(n.enclosing(&key(6379)), Some(span));
        n.set_enclosing(&key(6379), None, 1);
        assert_eq!(n.enclosing(&key(6379)), None);
    }

    #[test]
    fn entries_expire() {
        let mut n = Nesting::default();
        n.keep_early(&key(80), 100, early(1), 0);
        let span = Enclosing {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes([1; 8]),
            sampled: true,
        };
        n.set_enclosing(&key(6379), Some(span), 10);
        n.expire(NESTING_WAIT_NS);
        assert_eq!(n.len(), (1, 1));
        n.expire(NESTING_WAIT_NS + 11);
        assert_eq!(n.len(), (0, 0));
    }
}
