//! Metric families, one struct per subsystem (names fixed in spec.md).
//! prometheus-client appends `_total` to counters and the unit suffix to
//! families registered with a unit.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::labels::{L4Labels, ResetLabels};

/// L4 traffic.
#[derive(Clone)]
pub struct L4Metrics {
    pub tcp_opened: Family<L4Labels, Counter>,
    pub tcp_closed: Family<L4Labels, Counter>,
    pub tcp_failed: Family<L4Labels, Counter>,
    pub tcp_sent_bytes: Family<L4Labels, Counter>,
    pub tcp_received_bytes: Family<L4Labels, Counter>,
    pub tcp_retransmits: Family<L4Labels, Counter>,
    pub tcp_resets: Family<ResetLabels, Counter>,
    pub tcp_srtt: Family<L4Labels, Histogram, fn() -> Histogram>,
    pub udp_sent_bytes: Family<L4Labels, Counter>,
    pub udp_received_bytes: Family<L4Labels, Counter>,
    pub packet_drops: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LossLabels {
    pub source: String,
    pub stage: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
    /// `attached`, or `failed` (an optional program the kernel refused).
    pub state: String,
}

/// The agent's own health.
#[derive(Default, Clone)]
pub struct HealthMetrics {
    pub events: Family<SourceLabels, Counter>,
    pub events_lost: Family<LossLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub program_state: Family<ProgramLabels, Gauge>,
}

/// RTT buckets: 50 µs (same host) to 2.5 s (intercontinental, or queues).
fn srtt_histogram() -> Histogram {
    Histogram::new([
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5,
    ])
}

pub struct Metrics {
    pub registry: Registry,
}

impl Metrics {
    /// Registers every family and returns handles to them (the handles are
    /// cheap clones sharing state with the registry).
    pub fn new() -> (Self, L4Metrics, HealthMetrics, super::l7_metrics::L7Metrics) {
        let mut registry = Registry::default();
        let l4 = L4Metrics {
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_failed: Family::default(),
            tcp_sent_bytes: Family::default(),
            tcp_received_bytes: Family::default(),
            tcp_retransmits: Family::default(),
            tcp_resets: Family::default(),
            tcp_srtt: Family::new_with_constructor(srtt_histogram),
            udp_sent_bytes: Family::default(),
            udp_received_bytes: Family::default(),
            packet_drops: Family::default(),
        };
        let health = HealthMetrics::default();
        let r = &mut registry;
        r.register(
            "weft_tcp_connections_opened",
            "TCP connections established",
            l4.tcp_opened.clone(),
        );
        r.register(
            "weft_tcp_connections_closed",
            "TCP connections closed after being established",
            l4.tcp_closed.clone(),
        );
        r.register(
            "weft_tcp_connections_failed",
            "TCP connections that never got established: refused, reset during the handshake, or timed out",
            l4.tcp_failed.clone(),
        );
        r.register(
            "weft_tcp_sent_bytes",
            "TCP payload bytes from the client (source) to the server (destination)",
            l4.tcp_sent_bytes.clone(),
        );
        r.register(
            "weft_tcp_received_bytes",
            "TCP payload bytes from the server (destination) to the client (source)",
            l4.tcp_received_bytes.clone(),
        );
        r.register(
            "weft_tcp_retransmits",
            "TCP segments retransmitted",
            l4.tcp_retransmits.clone(),
        );
        r.register(
            "weft_tcp_resets",
            "TCP resets sent or received by this node's sockets",
            l4.tcp_resets.clone(),
        );
        r.register_with_unit(
            "weft_tcp_srtt",
            "Smoothed round-trip time of TCP connections, observed once per connection when it closes",
            Unit::Seconds,
            l4.tcp_srtt.clone(),
        );
        r.register(
            "weft_udp_sent_bytes",
            "UDP payload bytes from the flow's client (first sender) to its server",
            l4.udp_sent_bytes.clone(),
        );
        r.register(
            "weft_udp_received_bytes",
            "UDP payload bytes from the flow's server to its client",
            l4.udp_received_bytes.clone(),
        );
        r.register(
            "weft_packet_drops",
            "Packets dropped by the kernel, by drop reason (enum skb_drop_reason)",
            l4.packet_drops.clone(),
        );
        r.register(
            "weft_events",
            "Events read from the kernel, per source",
            health.events.clone(),
        );
        r.register(
            "weft_events_lost",
            "Events lost, per source and pipeline stage",
            health.events_lost.clone(),
        );
        r.register(
            "weft_bpf_map_entries",
            "Entries in a kernel map",
            health.map_entries.clone(),
        );
        r.register(
            "weft_bpf_map_capacity",
            "Capacity of a kernel map",
            health.map_capacity.clone(),
        );
        r.register(
            "weft_build_info",
            "Build information; always 1",
            health.build_info.clone(),
        );
        r.register(
            "weft_program_state",
            "eBPF programs by state: attached, or failed (refused by the kernel; what it measures is missing); always 1",
            health.program_state.clone(),
        );
        r.register_collector(Box::new(super::process::ProcessCollector));
        let l7 = super::l7_metrics::L7Metrics::register(r);
        (Self { registry }, l4, health, l7)
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
