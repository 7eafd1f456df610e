//! The active health check (`health_check_interval`, off by default):
//! every interval the agent opens a TCP connection to each backend of a
//! TCP service and closes it at once, as Envoy's TCP health checker does
//! without a payload. [`CHECK_FAILURES`](super::health::CHECK_FAILURES)
//! failures in a row take the backend out of rotation; the first check
//! that passes brings it back.
//!
//! The checks connect from the agent's network namespace (the node's, as
//! a kubelet probe does), each in a task of its own with a timeout, so a
//! backend that does not answer never holds up the steering task; their
//! results come back on a channel.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    health::{CHECK_FAILED, HealthChange},
    plan::ip_of,
    report::{EjectionLabels, Reporter},
};

/// The longest a check waits for its connect.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One check's result.
#[derive(Debug)]
pub struct CheckResult {
    pub service: u32,
    pub backend: u32,
    pub addr: SocketAddr,
    pub ok: bool,
}

/// The checks in flight and when each service is due next.
pub struct ActiveChecks {
    tx: mpsc::Sender<CheckResult>,
    pub rx: mpsc::Receiver<CheckResult>,
    due: BTreeMap<u32, Instant>,
}

impl Default for ActiveChecks {
    fn default() -> Self {
        // Room for one round of every backend of many services; a result
        // that finds it full waits in its own task.
        let (tx, rx) = mpsc::channel(1024);
        Self {
            tx,
            rx,
            due: BTreeMap::new(),
        }
    }
}

impl Reporter {
    /// Starts the checks of every service that is due (called each tick).
    pub fn start_checks(&mut self) {
        let now = Instant::now();
        for s in self.plan.services.values() {
            let interval = s.health.health_check_interval;
            if interval.is_zero() || s.key.proto != weft_common::IPPROTO_TCP {
                continue;
            }
            let due = self.checks.due.entry(s.entry.id).or_insert(now);
            if *due > now {
                continue;
            }
            *due = now + interval;
            let timeout = interval.min(CHECK_TIMEOUT);
            for &(backend, b, _) in &s.backends {
                let addr = SocketAddr::new(ip_of(&b.addr, b.family), b.port);
                let tx = self.checks.tx.clone();
                let service = s.entry.id;
                tokio::spawn(async move {
                    let connect = tokio::net::TcpStream::connect(addr);
                    let ok = matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
                    let _ = tx
                        .send(CheckResult {
                            service,
                            backend,
                            addr,
                            ok,
                        })
                        .await;
                });
            }
        }
        let planned = &self.plan.services;
        self.checks.due.retain(|id, _| planned.contains_key(id));
    }

    /// Acts on one check's result: takes the backend out or brings it
    /// back, in the kernel's slots, in a record and in the metrics.
    pub fn on_check(&mut self, r: &CheckResult) {
        let Some(s) = self.plan.services.get(&r.service) else {
            return;
        };
        // The backend may have changed since the check started.
        let still = s.backends.iter().any(|&(id, b, _)| {
            id == r.backend && SocketAddr::new(ip_of(&b.addr, b.family), b.port) == r.addr
        });
        if !still {
            return;
        }
        let (name, all) = (s.name.clone(), s.backend_ids());
        let Some(change) = self.health.checked((r.service, r.backend), &all, r.ok) else {
            return;
        };
        self.announce(&name, r, &change);
        self.rotate(r.service);
        self.record(r.service, r.addr, change, super::eject::now());
    }

    fn announce(&self, service: &str, r: &CheckResult, change: &HealthChange) {
        if change.state == "ejected" {
            self.metrics
                .ejections
                .get_or_create(&EjectionLabels {
                    service: service.to_owned(),
                    backend: r.addr.to_string(),
                    reason: CHECK_FAILED.into(),
                })
                .inc();
            log::warn!(
                "service {service}: backend {} out of rotation after {} failed active checks",
                r.addr,
                change.consecutive_failures
            );
        } else {
            log::info!(
                "service {service}: backend {} passed its active check: back in rotation",
                r.addr
            );
        }
    }
}
