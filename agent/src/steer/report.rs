//! What steering shows: the `weft_service_*` metrics and the report of
//! `weft services`, refreshed from the kernel's counters by one task that
//! owns the service maps.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use aya::maps::{MapData, PerCpuArray};
use weft_common::steer::counter;

use super::{health::ConnectOutcome, health::Health, plan::Plan, plan::ip_of, sync::ServiceMaps};
use crate::{export::metrics::LossLabels, flow::store::FlowStore};

/// One service in `weft services -o json` (shape fixed by the spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub protocol: String,
    /// `config` or `kubernetes`.
    pub source: String,
    pub backends: Vec<BackendReport>,
    /// Connects refused since the service was created: it had no backend.
    pub no_backend: u64,
    /// `none` or `client_ip`.
    pub session_affinity: String,
    /// With `client_ip`: how long (seconds) a client keeps its backend
    /// after its last connect; else null.
    pub session_affinity_timeout_s: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub weight: u32,
    /// `active` or `ejected`.
    pub state: String,
    /// RFC 3339, while ejected.
    pub ejected_until: Option<String>,
    /// Why it was ejected.
    pub reason: Option<String>,
    /// Connects rewritten to it (the kernel's count, which outlives agent
    /// restarts).
    pub connections: u64,
    /// Its connects that failed in a row since the last one that
    /// succeeded (or since it was ejected or came back).
    pub recent_failures: u32,
    /// Its error responses (HTTP 5xx, gRPC `UNAVAILABLE`) in a row, counted
    /// where `eject_on_l7_errors` is on.
    #[serde(default)]
    pub recent_l7_errors: u32,
    /// How many times passive health has ejected it.
    pub ejections: u32,
    /// Connections through the service to it that are open now, as the
    /// agent saw them open (those made while no agent ran are not known).
    pub active_connections: Option<u64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceBackendLabels {
    pub service: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceStateLabels {
    pub service: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub service: String,
    pub backend: String,
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct SteerMetrics {
    pub connections: Family<ServiceBackendLabels, Counter>,
    pub no_backend: Family<ServiceLabels, Counter>,
    pub backends: Family<ServiceStateLabels, Gauge>,
    pub ejections: Family<EjectionLabels, Counter>,
}

impl SteerMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "weft_service_connections",
            "Connects to a service rewritten to this backend",
            m.connections.clone(),
        );
        r.register(
            "weft_service_no_backend",
            "Connects to a service refused (ECONNREFUSED) because it had no usable backend",
            m.no_backend.clone(),
        );
        r.register(
            "weft_service_backends",
            "Backends of a service by state (active, ejected)",
            m.backends.clone(),
        );
        r.register(
            "weft_service_backend_ejections",
            "Backends taken out of rotation by passive health, by reason",
            m.ejections.clone(),
        );
        m
    }
}

/// What the steering programs could not do, as `weft_events_lost_total`
/// stages of source `steer`.
const LOSSES: &[(u32, &str)] = &[
    // A steered socket not remembered: its getpeername shows the backend
    // and its flow records name no service.
    (counter::LOST_ORIGIN, "kernel_map_full"),
    // A service met half-written (a slot or backend missing): the connect
    // went on unchanged.
    (counter::INCOMPLETE, "incomplete_service"),
    // A client's backend not remembered (session affinity): its next
    // connect may be balanced anew.
    (counter::AFFINITY_LOST, "affinity_not_remembered"),
    // A UDP datagram steered whose replies keep the backend's address as
    // their source (a DNS client may drop them).
    (counter::REPLY_LOST, "reply_not_remembered"),
];

/// Owns the service maps; turns their counters into metrics and reports.
pub struct Reporter {
    pub maps: ServiceMaps,
    pub plan: Plan,
    pub metrics: SteerMetrics,
    pub interval: Duration,
    /// The programs' per-CPU counters and the loss family they feed.
    pub counters: Option<(PerCpuArray<MapData, u64>, Family<LossLabels, Counter>)>,
    /// Counter values already added to the metrics, by id.
    seen: BTreeMap<(bool, u32), u64>,
    /// Passive health: which backends are out of rotation.
    pub health: Health,
    /// Where ejection and return records go.
    pub store: Option<Arc<FlowStore>>,
    /// Open connections per service and backend, counted by the flow table.
    pub active: super::tags::ActiveConnections,
    /// Where the services come from when they change at run time.
    pub sources: super::replan::Sources,
    /// The active health checks (`health_check_interval`).
    pub checks: super::check::ActiveChecks,
}

impl Reporter {
    pub fn new(maps: ServiceMaps, plan: Plan, metrics: SteerMetrics, interval: Duration) -> Self {
        Self {
            maps,
            plan,
            metrics,
            interval,
            counters: None,
            seen: BTreeMap::new(),
            health: Health::default(),
            store: None,
            active: Default::default(),
            sources: Default::default(),
            checks: Default::default(),
        }
    }

    /// Adds the programs' own losses to `weft_events_lost_total`.
    pub fn with_losses(
        mut self,
        counters: PerCpuArray<MapData, u64>,
        lost: Family<LossLabels, Counter>,
    ) -> Self {
        self.counters = Some((counters, lost));
        self
    }

    fn count_losses(&mut self) {
        let Some((counters, lost)) = &self.counters else {
            return;
        };
        for &(index, stage) in LOSSES {
            let Ok(per_cpu) = counters.get(&index, 0) else {
                continue;
            };
            let total: u64 = per_cpu.iter().sum();
            let metric = lost.get_or_create(&LossLabels {
                source: "steer".into(),
                stage: stage.into(),
            });
            // Ids above any service's: the `seen` keys of the losses.
            add(&mut self.seen, (false, u32::MAX - index), total, &metric);
        }
    }

    /// Refreshes the report every interval and acts on the outcomes of
    /// steered connects as they come (passive health).
    pub async fn run(
        mut self,
        mut outcomes: mpsc::Receiver<ConnectOutcome>,
        out: watch::Sender<Vec<ServiceReport>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Services listed before this task started.
        self.follow_kubernetes();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                more = super::replan::kubernetes_changed(&mut self.sources.kubernetes) => {
                    if more {
                        self.follow_kubernetes();
                    } else {
                        self.sources.kubernetes = None;
                    }
                }
                Some(outcome) = outcomes.recv() => {
                    if self.on_outcome(&outcome) {
                        out.send_replace(self.refresh());
                    }
                }
                Some(result) = self.checks.rx.recv() => {
                    self.on_check(&result);
                    out.send_replace(self.refresh());
                }
                _ = tick.tick() => {
                    self.expire_ejections();
                    self.start_checks();
                    let report = self.refresh();
                    out.send_replace(report);
                }
            }
        }
    }

    /// Reads the kernel's counters once.
    pub fn refresh(&mut self) -> Vec<ServiceReport> {
        self.count_losses();
        let mut out = Vec::with_capacity(self.plan.services.len());
        for s in self.plan.services.values() {
            let no_backend = self
                .maps
                .service_no_backend
                .get(&s.entry.id, 0)
                .unwrap_or(0);
            add(
                &mut self.seen,
                (false, s.entry.id),
                no_backend,
                &self.metrics.no_backend.get_or_create(&ServiceLabels {
                    service: s.name.clone(),
                }),
            );
            let mut backends = Vec::with_capacity(s.backends.len());
            for &(id, b, weight) in &s.backends {
                let address = ip_of(&b.addr, b.family);
                let connections = self.maps.backend_connects.get(&id, 0).unwrap_or(0);
                let labels = ServiceBackendLabels {
                    service: s.name.clone(),
                    backend: SocketAddr::new(address, b.port).to_string(),
                };
                add(
                    &mut self.seen,
                    (true, id),
                    connections,
                    &self.metrics.connections.get_or_create(&labels),
                );
                let until = self.health.ejected_until(s.entry.id, id);
                let out_now = self.health.is_out(s.entry.id, id);
                backends.push(BackendReport {
                    address,
                    port: b.port,
                    weight,
                    state: if out_now { "ejected" } else { "active" }.into(),
                    ejected_until: until.map(|t| crate::flow::clock::rfc3339(t.as_nanos() as u64)),
                    reason: self.health.reason(s.entry.id, id).map(|c| c.reason.clone()),
                    connections,
                    recent_failures: self.health.consecutive_failures(s.entry.id, id),
                    recent_l7_errors: self.health.consecutive_l7_errors(s.entry.id, id),
                    ejections: self.health.ejections(s.entry.id, id),
                    active_connections: Some(
                        self.active
                            .get(&s.name, std::net::SocketAddr::new(address, b.port)),
                    ),
                });
            }
            let ejected = s.ejected.len();
            for (state, n) in [("active", backends.len() - ejected), ("ejected", ejected)] {
                self.metrics
                    .backends
                    .get_or_create(&ServiceStateLabels {
                        service: s.name.clone(),
                        state: state.into(),
                    })
                    .set(n as i64);
            }
            out.push(ServiceReport {
                name: s.name.clone(),
                address: ip_of(&s.key.addr, s.key.family),
                port: s.key.port,
                protocol: if s.key.proto == weft_common::IPPROTO_UDP {
                    "udp".into()
                } else {
                    "tcp".into()
                },
                source: s.source.as_str().into(),
                backends,
                no_backend,
                session_affinity: if s.entry.affinity_timeout_s > 0 {
                    "client_ip".into()
                } else {
                    "none".into()
                },
                session_affinity_timeout_s: (s.entry.affinity_timeout_s > 0)
                    .then_some(s.entry.affinity_timeout_s),
            });
        }
        out
    }
}

/// Adds a kernel counter's growth since the last read to a metric (all of
/// it after a reset).
fn add(seen: &mut BTreeMap<(bool, u32), u64>, id: (bool, u32), now: u64, metric: &Counter) {
    let last = seen.insert(id, now).unwrap_or(0);
    let delta = if now >= last { now - last } else { now };
    if delta > 0 {
        metric.inc_by(delta);
    }
}
