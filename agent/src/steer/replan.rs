//! Services that change while the agent runs (`kubernetes_services`):
//! the steering task rebuilds its plan from the configuration's services
//! and the cluster's, writes it into the kernel, and hands it to the flow
//! table, which names services in records.
//!
//! Ids stay with what they name (a service its id, a backend its id, see
//! [`InKernel`](super::plan::InKernel)), so a backend that stays keeps its
//! connect count and its passive health; an ejection stays in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use tokio::sync::watch;

use super::{plan::Plan, report::Reporter};
use crate::{
    config::{
        ServiceConfig,
        steer::{HealthConfig, Protocol},
    },
    enrich::kubernetes::KubernetesNames,
};

/// Where the services come from.
#[derive(Default)]
pub struct Sources {
    /// The `services:` section (always in the plan).
    pub config: Vec<ServiceConfig>,
    /// The passive health defaults.
    pub health: HealthConfig,
    /// With `kubernetes_services`: the watcher's snapshots.
    pub kubernetes: Option<KubernetesNames>,
    /// The Kubernetes services last planned.
    pub planned: Option<Arc<Vec<ServiceConfig>>>,
    /// Where each new plan goes (the flow table's service tags).
    pub plans: Option<watch::Sender<Plan>>,
    /// Services the kernel holds beyond the plan stay until the first
    /// replan: at start, those of the cluster, not listed yet.
    pub keep_unplanned: bool,
}

/// Waits for the watcher's next snapshot: `false` once it is gone; never
/// returns without Kubernetes services.
pub async fn kubernetes_changed(kubernetes: &mut Option<KubernetesNames>) -> bool {
    match kubernetes {
        Some(k) => k.changed().await,
        None => std::future::pending().await,
    }
}

impl Reporter {
    /// Replans if the cluster's services differ from those planned.
    pub fn follow_kubernetes(&mut self) {
        let Some(kubernetes) = self.sources.kubernetes.as_mut() else {
            return;
        };
        // None until Services and EndpointSlices are both listed.
        let Some(services) = kubernetes.services() else {
            return;
        };
        if self.sources.planned.as_deref() == Some(&*services) {
            return;
        }
        self.replan(&services);
        self.sources.planned = Some(services);
    }

    /// Makes the configuration's services and `kubernetes` the plan, in
    /// the kernel too. A Kubernetes service at the address of a configured
    /// one is left out: the configuration wins.
    pub fn replan(&mut self, kubernetes: &[ServiceConfig]) {
        let key =
            |s: &ServiceConfig| -> (IpAddr, u16, Protocol) { (s.address, s.port, s.protocol) };
        let configured: BTreeSet<_> = self.sources.config.iter().map(key).collect();
        let mut all = self.sources.config.clone();
        for s in kubernetes {
            if configured.contains(&key(s)) {
                log::warn!(
                    "Kubernetes service {} is at {}:{}, which `services:` configures: the \
                     configuration's is steered",
                    s.name,
                    s.address,
                    s.port
                );
            } else {
                all.push(s.clone());
            }
        }
        let mut plan = Plan::new(&all, &self.maps.in_kernel(), &self.sources.health);
        // Health stays with a backend that is still behind the same id.
        let before: BTreeMap<(u32, u32), _> = self.backends_by_id(&self.plan);
        let after = self.backends_by_id(&plan);
        self.health.retain(|s, b| {
            before
                .get(&(s, b))
                .is_some_and(|x| after.get(&(s, b)) == Some(x))
        });
        for s in plan.services.values_mut() {
            let ejected = self.health.ejected_of(s.entry.id, &s.backend_ids());
            if !ejected.is_empty() {
                *s = s.with_ejected(ejected);
            }
        }
        let changed = plan != self.plan;
        self.forget_gone_services(&plan);
        self.plan = plan;
        self.sources.keep_unplanned = false;
        match self.maps.apply(&self.plan, true) {
            Ok(removed) if changed || removed > 0 => log::info!(
                "steering {} services ({} from Kubernetes; {removed} stale map entries removed)",
                self.plan.services.len(),
                all.len() - self.sources.config.len()
            ),
            Ok(_) => {}
            // The kernel keeps what it had: connects go on as before.
            Err(e) => log::error!("cannot write the steering maps: {e}"),
        }
        if let Some(tx) = &self.sources.plans {
            tx.send_replace(self.plan.clone());
        }
    }

    /// A service that is gone leaves no gauge behind (its counters stay,
    /// as counters of a finished series do).
    fn forget_gone_services(&mut self, next: &Plan) {
        let kept: BTreeSet<&str> = next.services.values().map(|s| s.name.as_str()).collect();
        for s in self.plan.services.values() {
            if kept.contains(s.name.as_str()) {
                continue;
            }
            for state in ["active", "ejected"] {
                self.metrics
                    .backends
                    .remove(&super::report::ServiceStateLabels {
                        service: s.name.clone(),
                        state: state.into(),
                    });
            }
        }
    }

    fn backends_by_id(&self, plan: &Plan) -> BTreeMap<(u32, u32), ([u8; 16], u16)> {
        plan.services
            .values()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |(id, b, _)| ((s.entry.id, *id), (b.addr, b.port)))
            })
            .collect()
    }
}
