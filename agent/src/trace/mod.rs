//! Traces: every L7 exchange as an OpenTelemetry span, exported over OTLP.
//!
//! The flow table's emitter hands each exchange to [`Tracer`] (only when
//! traces are on: otherwise nothing here is built). The tracer decides the
//! span's place in its trace (an incoming `traceparent`, the other end of
//! the same exchange on this node, the server span its request was sent
//! from inside of, sampling), builds it, and queues it for the export
//! task without waiting.

/// How long trace state waits for what completes it (`join`: the other
/// side of an exchange; `nesting`: a nested exchange's enclosing span):
/// longer than slow requests take, bounded so that abandoned state goes.
const PENDING_WAIT_NS: u64 = 30_000_000_000;
/// Entries of such state kept at most per map. Beyond, new ones are not
/// kept: their exchanges still get spans, only not joined.
const PENDING_CAPACITY: usize = 65_536;

mod context;
mod export;
mod injected;
mod join;
mod nesting;
mod span;

use std::{
    hash::{Hash as _, Hasher as _},
    sync::{Arc, atomic::Ordering},
};

use opentelemetry::{InstrumentationScope, trace::TraceId};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use weft_l7::Exchange;

pub use export::{ExportTask, ExporterError, SpanCounters};
use export::{Outgoing, ResourceKey};
use join::{Joins, Shared};
use nesting::{Early, Enclosing, Nesting};

use crate::{
    config::TraceSettings,
    flow::{addr::FlowKey, clock, record::Endpoint},
};

/// The trace fields of an L7 record (hex, W3C sizes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceIds {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
}

pub struct Tracer {
    tx: mpsc::Sender<Outgoing>,
    counters: Arc<SpanCounters>,
    ratio: f64,
    ids: RandomIdGenerator,
    joins: Joins,
    nesting: Nesting,
    /// What the kernel wrote into outgoing requests (inject_traceparent).
    injections: injected::Injections,
    scope: InstrumentationScope,
}

/// Where one exchange was observed.
pub struct Observed<'a> {
    pub key: &'a FlowKey,
    /// At the server's socket.
    pub server: bool,
    /// Both ends of the connection are on this node (both parsed).
    pub both_local: bool,
    /// The end the exchange was observed at.
    pub endpoint: &'a Endpoint,
}

impl Tracer {
    /// The tracer and its export task, for `settings` (call inside the
    /// runtime).
    pub fn start(
        settings: &TraceSettings,
        exported: Counter,
    ) -> Result<(Tracer, ExportTask), ExporterError> {
        let exporter = export::exporter(settings)?;
        let (tx, rx) = mpsc::channel(export::QUEUE_CAPACITY);
        let counters = Arc::new(SpanCounters::default());
        let task = ExportTask::new(rx, exporter, counters.clone(), exported, host_name());
        let tracer = Tracer {
            tx,
            counters,
            ratio: settings.sampling_ratio,
            ids: RandomIdGenerator::default(),
            joins: Joins::default(),
            nesting: Nesting::default(),
            injections: injected::Injections::default(),
            scope: InstrumentationScope::builder("weft")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        Ok((tracer, task))
    }

    pub fn counters(&self) -> &SpanCounters {
        &self.counters
    }

    /// Exchanges whose other side never came to be joined.
    pub fn unmatched(&self) -> u64 {
        self.joins.unmatched
    }

    /// Periodic upkeep (unmatched join entries, nesting never completed).
    pub fn tick(&mut self) {
        let now = clock::mono_now_ns();
        self.joins.expire(now);
        self.nesting.expire(now);
        self.injections.expire(now);
    }

    /// The kernel wrote `injected` into a request it sent on `key` at
    /// `sent_ns`: that request's CLIENT span gets its ids.
    pub fn injected(
        &mut self,
        key: &FlowKey,
        sent_ns: u64,
        injected: &weft_common::data::Injected,
    ) {
        let now = clock::mono_now_ns();
        self.injections.add(*key, sent_ns, injected.into(), now);
    }

    /// The span of one exchange, queued for export; its ids for the
    /// record, or `None` when the trace is not sampled.
    pub fn exchange(&mut self, ex: &Exchange, at: &Observed<'_>) -> Option<TraceIds> {
        // A handshake is not a request: no span (its record and metric
        // are the handshake's view).
        if ex.protocol == weft_l7::Protocol::Tls {
            return None;
        }
        let early = at
            .server
            .then(|| self.nesting.take_early(at.key, ex.request_ns))
            .flatten();
        let Early { place, sampled } = match early {
            Some(early) => early,
            None => self.decide(ex, at.key, at.server, at.both_local),
        };
        if !sampled {
            return None;
        }
        let start = clock::wall_time(ex.request_ns);
        let end = clock::wall_time(ex.response_ns);
        let data = span::build(ex, at.key, &place, start, end, &self.scope);
        let ids = TraceIds {
            trace_id: place.trace_id.to_string(),
            span_id: place.span_id.to_string(),
            parent_span_id: place.parent.map(|p| p.to_string()),
        };
        let item = Outgoing {
            resource: resource_key(at.endpoint),
            span: data,
        };
        if self.tx.try_send(item).is_err() {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        }
        Some(ids)
    }

    /// Whether the latest request sent on `key` is known to have been
    /// sent inside a serving span.
    pub fn knows_enclosing(&self, key: &FlowKey) -> bool {
        self.nesting.enclosing(key).is_some()
    }

    /// A thread serving the request `serving` (not answered yet) of
    /// connection `server_key` sent a request on `client_key` (`None`: it
    /// sent one while serving no request, or more than one). The serving
    /// exchange's SERVER span is placed now, if it was not already, and
    /// becomes the parent of the exchanges sent on `client_key`.
    pub fn sent_while_serving(
        &mut self,
        client_key: &FlowKey,
        serving: Option<(&FlowKey, bool, &Exchange)>,
    ) {
        let now = clock::mono_now_ns();
        let Some((server_key, both_local, ex)) = serving else {
            self.nesting.set_enclosing(client_key, None, now);
            return;
        };
        let early = match self.nesting.early(server_key, ex.request_ns) {
            Some(early) => early,
            None => {
                let early = self.decide(ex, server_key, true, both_local);
                self.nesting
                    .keep_early(server_key, ex.request_ns, early, now);
                early
            }
        };
        let span = Enclosing {
            trace_id: early.place.trace_id,
            span_id: early.place.span_id,
            sampled: early.sampled,
        };
        self.nesting.set_enclosing(client_key, Some(span), now);
    }

    /// The place of an exchange's span in its trace: shared with the other
    /// end's span when both ends are on this node (whichever side comes
    /// first decides), else decided alone.
    fn decide(&mut self, ex: &Exchange, key: &FlowKey, server: bool, both_local: bool) -> Early {
        // The ids the kernel wrote into this request, when it did: the
        // client's by its request, the server's (same node) by the span
        // its header names.
        let injected = if !server {
            // A request that carried its own header got none.
            (ex.traceparent.is_none())
                .then(|| self.injections.for_client(key, ex.request_ns))
                .flatten()
        } else if both_local {
            (ex.traceparent.as_deref())
                .and_then(context::parse)
                .and_then(|incoming| self.injections.for_server(incoming.parent))
        } else {
            None
        };
        let (ids, ratio) = (&self.ids, self.ratio);
        let enclosing = self.nesting.enclosing(key);
        let start_trace = || new_trace(ex, injected, enclosing, ids, ratio);
        let shared = if both_local {
            let now = clock::mono_now_ns();
            self.joins
                .join(key, !server, fingerprint(ex), now, start_trace)
        } else {
            start_trace()
        };
        let place = if server {
            span::Place {
                trace_id: shared.trace_id,
                span_id: self.ids.new_span_id(),
                // The client span when the client is on this node, else
                // the span its `traceparent` names.
                parent: if both_local {
                    Some(shared.client_span_id)
                } else {
                    shared.client_parent
                },
                parent_is_remote: true,
                server: true,
            }
        } else {
            span::Place {
                trace_id: shared.trace_id,
                span_id: shared.client_span_id,
                parent: shared.client_parent,
                parent_is_remote: !shared.client_parent_local,
                server: false,
            }
        };
        Early {
            place,
            sampled: shared.sampled,
        }
    }
}

/// The context of an exchange seen first: the ids the kernel wrote into
/// the request (the next hop continues that trace, so the client span
/// must be the one the header names); else the trace of the request's
/// `traceparent`, keeping its sampled flag (parent-based sampling); else
/// the trace of the server span the request was sent from inside of (in
/// the sending process); else a new trace, sampled by trace-ID ratio.
fn new_trace(
    ex: &Exchange,
    injected: Option<injected::Context>,
    enclosing: Option<Enclosing>,
    ids: &RandomIdGenerator,
    ratio: f64,
) -> Shared {
    if let Some(kernel) = injected {
        return Shared {
            trace_id: kernel.trace_id,
            client_span_id: kernel.span_id,
            client_parent: None,
            client_parent_local: false,
            sampled: kernel.sampled,
        };
    }
    if let Some(incoming) = ex.traceparent.as_deref().and_then(context::parse) {
        return Shared {
            trace_id: incoming.trace_id,
            client_span_id: ids.new_span_id(),
            client_parent: Some(incoming.parent),
            client_parent_local: false,
            sampled: incoming.sampled,
        };
    }
    if let Some(span) = enclosing {
        return Shared {
            trace_id: span.trace_id,
            client_span_id: ids.new_span_id(),
            client_parent: Some(span.span_id),
            client_parent_local: true,
            sampled: span.sampled,
        };
    }
    let trace_id = ids.new_trace_id();
    Shared {
        trace_id,
        client_span_id: ids.new_span_id(),
        client_parent: None,
        client_parent_local: false,
        sampled: ratio_sampled(trace_id, ratio),
    }
}

/// OpenTelemetry's TraceIdRatioBased: the trace id's lower 8 bytes (as
/// 63 bits) below `ratio` of their range. Any agent deciding by the same
/// rule keeps the same traces.
fn ratio_sampled(trace_id: TraceId, ratio: f64) -> bool {
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    x < sample_threshold(ratio)
}

/// The bound of [`ratio_sampled`]: a trace is kept when its id's lower 8
/// bytes, shifted right by one, are below it. The kernel's traceparent
/// injection samples the traces it starts by the same bound
/// (loader/inject.rs), so that both decide alike.
pub fn sample_threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        (ratio * (1u64 << 63) as f64) as u64
    }
}

/// What both sides of one exchange see alike: protocol, method, path.
fn fingerprint(ex: &Exchange) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ex.protocol.name().hash(&mut h);
    for field in ["method", "path", "command", "operation", "query"] {
        if let Some(v) = ex.fields.get(field).and_then(|v| v.as_str()) {
            v.hash(&mut h);
        }
    }
    h.finish()
}

/// The resource of spans observed at `ep`: `service.name` is the
/// Kubernetes workload, else the process name.
fn resource_key(ep: &Endpoint) -> ResourceKey {
    let service_name = ep
        .workload
        .clone()
        .or_else(|| ep.process.clone())
        .unwrap_or_else(|| "unknown_service".to_owned());
    ResourceKey {
        service_name,
        namespace: ep.namespace.clone(),
        pod: ep.pod.clone(),
        pid: ep.pid,
        executable: ep.process.clone(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanId;

    use super::*;

    #[test]
    fn ratio_sampling_is_by_trace_id() {
        let low = TraceId::from_bytes([0; 16]);
        let high = TraceId::from_bytes([0xff; 16]);
        assert!(ratio_sampled(low, 0.5) && !ratio_sampled(high, 0.5));
        assert!(ratio_sampled(high, 1.0) && !ratio_sampled(low, 0.0));
    }

    /// A request's own `traceparent` comes first, then the server span it
    /// was sent from inside of (its trace, its sampling), then a new trace.
    #[test]
    fn a_request_sent_inside_a_server_span_joins_its_trace() {
        let ids = RandomIdGenerator::default();
        let enclosing = Enclosing {
            trace_id: TraceId::from_bytes([7; 16]),
            span_id: SpanId::from_bytes([7; 8]),
            sampled: false,
        };
        let mut ex = weft_l7::Protocol::Http1.exchange(0);
        let nested = new_trace(&ex, None, Some(enclosing), &ids, 1.0);
        assert_eq!(nested.trace_id, enclosing.trace_id);
        assert_eq!(nested.client_parent, Some(enclosing.span_id));
        assert!(
            nested.client_parent_local,
            "the parent is in the same process"
        );
        assert!(!nested.sampled, "the enclosing trace's decision");
        assert_ne!(nested.client_span_id, enclosing.span_id);
        let alone = new_trace(&ex, None, None, &ids, 1.0);
        assert_ne!(alone.trace_id, enclosing.trace_id);
        assert_eq!(alone.client_parent, None);
        ex.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let incoming = new_trace(&ex, None, Some(enclosing), &ids, 1.0);
        assert_eq!(
            incoming.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(incoming.sampled);
    }

    #[test]
    fn trace_ids_print_as_w3c_hex() {
        let ids = TraceIds {
            trace_id: TraceId::from_bytes([0xab; 16]).to_string(),
            span_id: SpanId::from_bytes([1; 8]).to_string(),
            parent_span_id: None,
        };
        assert_eq!(ids.trace_id.len(), 32);
        assert_eq!(ids.span_id, "0101010101010101");
    }
}
