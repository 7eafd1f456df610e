//! Passive health in the running agent: the steering task feeds each
//! steered connect's outcome to [`Health`](super::health::Health), and an
//! ejection or a return rewrites that service's slots in the kernel (the
//! backend keeps its id, entry and connect count; it only holds no slot
//! while it is out), records it and counts it.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use super::{
    health::{ConnectOutcome, HealthChange, L7_ERRORS},
    plan::ip_of,
    report::{EjectionLabels, Reporter},
};
use crate::flow::{
    clock,
    record::{Endpoint, FlowEvent, FlowRecord, ServiceRef, Transport},
};

pub(super) fn now() -> Duration {
    Duration::from_nanos(clock::mono_now_ns())
}

impl Reporter {
    /// Acts on one outcome. Returns whether a backend was ejected.
    pub fn on_outcome(&mut self, o: &ConnectOutcome) -> bool {
        let Some((service, backend, all)) = self.find(&o.service, o.backend) else {
            return false;
        };
        let config = self.plan.services[&service].health.clone();
        let now = now();
        let Some(change) = self
            .health
            .record((service, backend), &all, o.outcome, &config, now)
        else {
            return false;
        };
        self.metrics
            .ejections
            .get_or_create(&EjectionLabels {
                service: o.service.clone(),
                backend: o.backend.to_string(),
                reason: change.reason.clone(),
            })
            .inc();
        let what = if change.reason == L7_ERRORS {
            "error responses"
        } else {
            "failed connects"
        };
        log::warn!(
            "service {}: backend {} ejected for {}s after {} {what} in a row",
            o.service,
            o.backend,
            change.ejection_time_s,
            change.consecutive_failures
        );
        self.rotate(service);
        self.record(service, o.backend, change, now);
        true
    }

    /// Brings back the backends whose ejection has run out.
    pub fn expire_ejections(&mut self) {
        let now = now();
        for ((service, backend), change) in self.health.expire(now) {
            let Some(s) = self.plan.services.get(&service) else {
                continue;
            };
            let Some(&(_, b, _)) = s.backends.iter().find(|b| b.0 == backend) else {
                continue;
            };
            let addr = SocketAddr::new(ip_of(&b.addr, b.family), b.port);
            log::info!("service {}: backend {addr} back in rotation", s.name);
            self.rotate(service);
            self.record(service, addr, change, now);
        }
    }

    /// (service id, backend id, the service's backend ids) of a backend
    /// named by service name and address.
    fn find(&self, name: &str, backend: SocketAddr) -> Option<(u32, u32, Vec<u32>)> {
        let s = self.plan.services.values().find(|s| s.name == name)?;
        let &(id, _, _) = s
            .backends
            .iter()
            .find(|(_, b, _)| SocketAddr::new(ip_of(&b.addr, b.family), b.port) == backend)?;
        Some((s.entry.id, id, s.backend_ids()))
    }

    /// Rewrites `service`'s slots in the kernel so that exactly its
    /// backends in rotation hold them. A failed write leaves the kernel as
    /// it was (every backend reachable) and is logged.
    pub(super) fn rotate(&mut self, service: u32) {
        let Some(s) = self.plan.services.get(&service) else {
            return;
        };
        let ejected: BTreeSet<u32> = self.health.ejected_of(service, &s.backend_ids());
        let updated = s.with_ejected(ejected);
        self.plan.services.insert(service, updated);
        if let Err(e) = self.maps.apply(&self.plan, !self.sources.keep_unplanned) {
            log::error!("cannot rewrite the slots of service {service}: {e}");
        }
    }

    /// An `ejected` or `returned` record: from the service address to the
    /// backend.
    pub(super) fn record(
        &self,
        service: u32,
        backend: SocketAddr,
        change: HealthChange,
        now: Duration,
    ) {
        let (Some(store), Some(s)) = (&self.store, self.plan.services.get(&service)) else {
            return;
        };
        let address = ip_of(&s.key.addr, s.key.family);
        let mono_ns = now.as_nanos() as u64;
        let event = if change.state == "ejected" {
            FlowEvent::Ejected
        } else {
            FlowEvent::Returned
        };
        let transport = if s.key.proto == weft_common::IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let mut record = FlowRecord::event_between(
            event,
            transport,
            Endpoint::from_addr(address, s.key.port),
            Endpoint::from_addr(backend.ip(), backend.port()),
            mono_ns,
        );
        record.service = Some(ServiceRef {
            name: s.name.clone(),
            address,
            port: s.key.port,
        });
        record.health = Some(change);
        store.push(record);
    }
}
