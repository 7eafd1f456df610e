//! Where finished observations go: a record into the flow store, and the
//! matching metric updates. The flow trackers decide *what* happened; this
//! module turns it into the outputs, so both outputs always agree.

mod l7;

use std::sync::Arc;

pub use l7::TrafficDirection;

use weft_common::Owner;

use super::{
    addr::FlowKey,
    clock,
    record::{Endpoint, Failure, FlowEvent, FlowRecord, FlowType, Transport, Verdict},
    store::FlowStore,
};
use crate::{
    enrich::{Enricher, workload_label},
    export::{
        labels::{L4Labels, LabelBudget, ValueBudget},
        metrics::L4Metrics,
    },
};

/// A flow's figures at one moment, merged from every end seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: Option<u64>,
    pub packets_received: Option<u64>,
    pub retransmits: u64,
    pub srtt_us: Option<u64>,
    pub resets_sent: u64,
    pub resets_received: u64,
}

/// What the metrics have already counted of a flow, so that each update
/// adds only the difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
}

/// Everything needed to write one record.
pub struct Observation<'a> {
    pub key: &'a FlowKey,
    pub event: FlowEvent,
    pub ts_ns: u64,
    pub start_ns: u64,
    /// Copied, not borrowed, so that a flow can hand out its observation
    /// and update its own export state in one call.
    pub client: Option<Owner>,
    pub server: Option<Owner>,
    pub figures: Figures,
    pub failure: Option<Failure>,
}

pub struct Emitter {
    store: Arc<FlowStore>,
    metrics: L4Metrics,
    budget: LabelBudget,
    /// The budget of the L7 labels whose values come from traffic.
    values: ValueBudget,
    enricher: Enricher,
    /// Which connections went through a service.
    pub services: crate::steer::tags::ServiceTags,
    /// Spans of L7 exchanges, when traces are on.
    pub traces: Option<crate::trace::Tracer>,
}

impl Emitter {
    pub fn new(
        store: Arc<FlowStore>,
        metrics: L4Metrics,
        budget: LabelBudget,
        enricher: Enricher,
    ) -> Self {
        Self {
            store,
            metrics,
            budget,
            values: ValueBudget::default(),
            enricher,
            services: crate::steer::tags::ServiceTags::none(),
            traces: None,
        }
    }

    pub fn metrics(&self) -> &L4Metrics {
        &self.metrics
    }

    pub fn enricher(&self) -> &Enricher {
        &self.enricher
    }

    /// Label sets (L4) and label values (L7) folded into `other` so far.
    /// Live records `weft flows -f` clients fell too far behind to get.
    pub fn follower_lost(&self) -> u64 {
        self.store.follower_lost()
    }

    pub fn labels_overflowed(&self) -> u64 {
        self.budget.overflowed + self.values.overflowed
    }

    fn endpoints(&mut self, obs: &Observation<'_>) -> (Endpoint, Endpoint) {
        let source = self.enricher.endpoint(
            obs.key.client.ip(),
            obs.key.client.port(),
            obs.client.as_ref(),
        );
        let destination = self.enricher.endpoint(
            obs.key.server.ip(),
            obs.key.server.port(),
            obs.server.as_ref(),
        );
        (source, destination)
    }

    /// The metric labels of a flow (within the cardinality budget).
    pub fn labels(&mut self, obs: &Observation<'_>) -> L4Labels {
        let (source, destination) = self.endpoints(obs);
        self.labels_of(&source, &destination)
    }

    fn labels_of(&mut self, source: &Endpoint, destination: &Endpoint) -> L4Labels {
        self.budget.admit(L4Labels {
            source_workload: workload_label(source),
            source_namespace: source.namespace.clone().unwrap_or_default(),
            destination_workload: workload_label(destination),
            destination_namespace: destination.namespace.clone().unwrap_or_default(),
            destination_port: destination.port.to_string(),
        })
    }

    /// Writes a record for the observation and updates the metrics: the
    /// event counter, then the counters' growth since `exported`.
    pub fn emit(&mut self, obs: &Observation<'_>, exported: &mut Exported) {
        let (source, destination) = self.endpoints(obs);
        let labels = self.labels_of(&source, &destination);
        self.count_event(obs, &labels);
        self.add_growth(obs.key.transport, &labels, &obs.figures, exported);
        let f = &obs.figures;
        let record = FlowRecord {
            time: clock::rfc3339(obs.ts_ns),
            flow_type: FlowType::L4,
            event: obs.event,
            transport: obs.key.transport,
            source,
            destination,
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            packets_sent: f.packets_sent,
            packets_received: f.packets_received,
            retransmits: f.retransmits,
            srtt_us: f.srtt_us,
            duration_us: obs.ts_ns.saturating_sub(obs.start_ns) / 1_000,
            resets_sent: f.resets_sent,
            resets_received: f.resets_received,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            failure: obs.failure,
            l7: None,
            traffic_direction: None,
            service: self.services.get(obs.key),
            policy: None,
            health: None,
            trace: None,
            tls: None,
            mono_ns: obs.ts_ns,
        };
        if matches!(obs.event, FlowEvent::Close | FlowEvent::Fail) {
            self.services.forget(obs.key);
        }
        self.services.report_outcome(&record);
        self.store.push(record);
    }

    /// A `drop` record: packets from `dropped.src` to `dropped.dst` that the
    /// kernel dropped for `reason` since the previous one. No metric: drops
    /// are counted by reason as they are read (`weft_packet_drops_total`).
    pub fn emit_drop(&mut self, dropped: &super::drops::Dropped, reason: &str) {
        let d = dropped;
        let source = self.enricher.endpoint(d.src.ip(), d.src.port(), None);
        let destination = self.enricher.endpoint(d.dst.ip(), d.dst.port(), None);
        let mut record =
            FlowRecord::event_between(FlowEvent::Drop, d.transport, source, destination, d.last_ns);
        record.packets_sent = Some(d.packets);
        record.verdict = Verdict::Dropped;
        record.drop_reason = Some(reason.to_owned());
        self.store.push(record);
    }

    /// Metrics only (periodic progress between records).
    pub fn export_growth(&mut self, obs: &Observation<'_>, exported: &mut Exported) {
        let labels = self.labels(obs);
        self.add_growth(obs.key.transport, &labels, &obs.figures, exported);
    }

    fn count_event(&self, obs: &Observation<'_>, labels: &L4Labels) {
        if obs.key.transport != Transport::Tcp {
            return;
        }
        let m = &self.metrics;
        match obs.event {
            FlowEvent::Open => {
                m.tcp_opened.get_or_create(labels).inc();
            }
            FlowEvent::Close => {
                m.tcp_closed.get_or_create(labels).inc();
                if let Some(srtt) = obs.figures.srtt_us.filter(|&s| s > 0) {
                    m.tcp_srtt.get_or_create(labels).observe(srtt as f64 / 1e6);
                }
            }
            FlowEvent::Fail => {
                m.tcp_failed.get_or_create(labels).inc();
            }
            _ => {}
        }
    }

    fn add_growth(
        &self,
        transport: Transport,
        labels: &L4Labels,
        f: &Figures,
        exported: &mut Exported,
    ) {
        let m = &self.metrics;
        let (sent, received) = match transport {
            Transport::Tcp => (&m.tcp_sent_bytes, &m.tcp_received_bytes),
            Transport::Udp => (&m.udp_sent_bytes, &m.udp_received_bytes),
        };
        // Figures only grow, except when a better-placed end of the flow
        // shows up late (e.g. the client's socket after the server's); the
        // difference is then not taken back, only not added twice.
        let grow = |now: u64, before: &mut u64| {
            let d = now.saturating_sub(*before);
            *before = (*before).max(now);
            d
        };
        let d = grow(f.bytes_sent, &mut exported.bytes_sent);
        if d > 0 {
            sent.get_or_create(labels).inc_by(d);
        }
        let d = grow(f.bytes_received, &mut exported.bytes_received);
        if d > 0 {
            received.get_or_create(labels).inc_by(d);
        }
        let d = grow(f.retransmits, &mut exported.retransmits);
        if d > 0 && transport == Transport::Tcp {
            m.tcp_retransmits.get_or_create(labels).inc_by(d);
        }
    }
}
