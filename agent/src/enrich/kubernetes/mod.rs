//! Kubernetes identity: names endpoints by pod, namespace and workload.
//!
//! Inside a cluster (or given a kubeconfig) a watcher task lists and
//! watches the pods of this node (field selector `spec.nodeName`), every
//! Service and EndpointSlice, and the metadata of ReplicaSets and Jobs
//! (to follow a pod's owner up to its Deployment or CronJob). It owns the
//! [`index::Index`] and publishes immutable [`Names`] through a
//! `tokio::sync::watch` channel; the [`Enricher`](super::Enricher) reads
//! the latest one for each endpoint and never waits for the API server.
//!
//! Matching: a socket of this node is matched by its container id (from
//! its cgroup) against the pods' `containerStatuses`; any address is
//! matched against pod IPs of this node, Service cluster IPs, and the
//! addresses of EndpointSlices (pods on other nodes).

mod detect;
pub mod index;
pub mod names;
mod objects;
mod observe;
mod watch;

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch as channel};
use tokio_util::sync::CancellationToken;

pub use detect::{Detection, Environment, SERVICE_ACCOUNT_DIR, Source};
pub use index::Workload;
pub use names::{Identity, Names};

use crate::{config::KubernetesConfig, status::FeatureStatus};

/// How often building a client is retried when it fails (e.g. the service
/// account token is not mounted yet).
const CLIENT_RETRY: Duration = Duration::from_secs(30);

/// What the watcher task publishes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub names: Arc<Names>,
    pub health: Arc<Health>,
    /// With `kubernetes_services`: the Services as steering services, once
    /// both Services and EndpointSlices are listed (`None` before).
    pub services: Option<Arc<Vec<crate::config::ServiceConfig>>>,
    /// With policy rules that select pods: the pods of every node, once
    /// listed (`None` before).
    pub pods: Option<Arc<Vec<crate::steer::policy::pods::PodAddresses>>>,
}

/// The state of the connection to the API server.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The API server's address.
    pub server: String,
    /// The node whose pods are watched.
    pub node: String,
    /// Per kind of object (`pods`, `services`, ...).
    pub resources: BTreeMap<&'static str, ResourceHealth>,
    /// Why there is no client at all, if so.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceHealth {
    /// Listed at least once.
    pub synced: bool,
    /// Complete lists received (start-up and every resync).
    pub relists: u64,
    /// Errors so far (each is retried with backoff).
    pub errors: u64,
    /// The last error, until the next event arrives.
    pub error: Option<String>,
}

/// The reading end: the latest names and health. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KubernetesNames {
    rx: channel::Receiver<Snapshot>,
}

impl KubernetesNames {
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    pub fn names(&self) -> Arc<Names> {
        self.rx.borrow().names.clone()
    }

    /// Waits for the next snapshot; `false` once the watcher is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// The latest services (see [`Snapshot::services`]), marked seen.
    pub fn services(&mut self) -> Option<Arc<Vec<crate::config::ServiceConfig>>> {
        self.rx.borrow_and_update().services.clone()
    }

    /// The latest pods (see [`Snapshot::pods`]).
    pub fn pods(&self) -> Option<Arc<Vec<crate::steer::policy::pods::PodAddresses>>> {
        self.rx.borrow().pods.clone()
    }

    /// Waits until `ready` holds for a published snapshot, or `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(&Snapshot) -> bool,
    ) -> Option<Snapshot> {
        tokio::time::timeout(timeout, self.rx.wait_for(|s| ready(s)))
            .await
            .ok()?
            .ok()
            .map(|s| s.clone())
    }

    /// The `kubernetes` line of `weft status`.
    pub fn status(&self) -> FeatureStatus {
        feature_status(&self.rx.borrow().health)
    }
}

fn feature_status(health: &Health) -> FeatureStatus {
    let short = |e: &str| -> String {
        let mut s: String = e.chars().take(300).collect();
        if s.len() < e.len() {
            s.push('…');
        }
        s
    };
    let status = |available, detail| FeatureStatus {
        name: "kubernetes".into(),
        available,
        detail,
    };
    if let Some(err) = &health.error {
        return status(false, format!("pods are not named: {}", short(err)));
    }
    let pods = health.resources.get("pods").cloned().unwrap_or_default();
    if !pods.synced {
        let why = pods.error.as_deref().map_or("listing pods".into(), short);
        return status(
            false,
            format!(
                "pods are not named yet: API server {}: {why}",
                health.server
            ),
        );
    }
    if let Some(err) = &pods.error {
        return status(
            false,
            format!(
                "API server {}: {}; names are from the last known state",
                health.server,
                short(err)
            ),
        );
    }
    let mut detail = format!("pods of node {} via {}", health.node, health.server);
    for (name, r) in &health.resources {
        if let Some(err) = &r.error {
            detail.push_str(&format!("; {name}: {}", short(err)));
        } else if !r.synced {
            detail.push_str(&format!("; {name}: not listed yet"));
        }
    }
    status(true, detail)
}

/// The watcher task, ready to run.
pub struct Watcher {
    source: Result<Source, String>,
    node: Option<String>,
    tx: channel::Sender<Snapshot>,
    /// Publish the Services as steering services too.
    pub steer_services: bool,
    /// Watch the pods of every node, not only this node's, and publish
    /// them for policy rules that select pods.
    pub policy_pods: bool,
}

/// Decides from the configuration and the environment whether to watch
/// the cluster; `None` when Kubernetes identity is off.
pub fn setup(config: &KubernetesConfig, env: &Environment) -> Option<(KubernetesNames, Watcher)> {
    let source = match detect::detect(config, env) {
        Detection::Off => {
            log::debug!("Kubernetes identity is off (not in a cluster, or disabled)");
            return None;
        }
        Detection::On(source) => Ok(source),
        Detection::Unavailable(why) => Err(why),
    };
    let node = detect::node_name(config, env).map(|(name, from)| {
        log::info!("Kubernetes: watching the pods of node {name} (from {from})");
        name
    });
    let (tx, rx) = channel::channel(Snapshot::default());
    Some((
        KubernetesNames { rx },
        Watcher {
            source,
            node,
            tx,
            steer_services: false,
            policy_pods: false,
        },
    ))
}

impl Watcher {
    /// Runs until `shutdown`. Never fails: what goes wrong is logged and
    /// published as the health of the feature.
    pub async fn run(self, shutdown: CancellationToken) {
        let fail = |error: String| {
            log::warn!("Kubernetes identity is unavailable: {error}");
            self.tx.send_replace(Snapshot {
                names: Arc::default(),
                health: Arc::new(Health {
                    error: Some(error),
                    ..Health::default()
                }),
                services: None,
                pods: None,
            });
        };
        let source = match &self.source {
            Ok(source) => source.clone(),
            Err(why) => {
                fail(why.clone());
                return shutdown.cancelled().await;
            }
        };
        let Some(node) = self.node.clone() else {
            fail("no node name: set kubernetes.node_name or the NODE_NAME variable".into());
            return shutdown.cancelled().await;
        };
        let (ok_tx, ok_rx) = mpsc::channel(64);
        let (client, server) = loop {
            match client(&source, &ok_tx).await {
                Ok(client) => break client,
                Err(err) => fail(format!("{err} (retrying every {CLIENT_RETRY:?})")),
            }
            tokio::select! {
                () = tokio::time::sleep(CLIENT_RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        };
        log::info!("Kubernetes: API server {server}");
        let publish = watch::Publish {
            tx: self.tx,
            steer_services: self.steer_services,
            policy_pods: self.policy_pods,
        };
        watch::run(client, server, node, publish, ok_rx, shutdown).await;
    }
}

/// A client whose successful responses are signalled on `ok`.
async fn client(
    source: &Source,
    ok: &mpsc::Sender<watch::Kind>,
) -> Result<(kube::Client, String), detect::ClientError> {
    let (config, server) = detect::client_config(source).await?;
    let ok = ok.clone();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::layer::layer_fn(move |inner| observe::Observe {
            inner,
            ok: ok.clone(),
        }))
        .build();
    Ok((client, server))
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn feature_status_follows_the_pods_watch() {
        let mut health = Health {
            server: "https://10.96.0.1:443/".into(),
            node: "node-a".into(),
            ..Health::default()
        };
        let s = feature_status(&health);
        assert!(!s.available && s.detail.contains("listing pods"), "{s:?}");
        let pods = ResourceHealth {
            synced: true,
            relists: 1,
            ..ResourceHealth::default()
        };
        health.resources.insert("pods", pods.clone());
        health.resources.insert(
            "replicasets",
            ResourceHealth {
                error: Some("replicasets.apps is forbidden".into()),
                ..ResourceHealth::default()
            },
        );
        let s = feature_status(&health);
        assert!(s.available, "{s:?}");
        assert!(s.detail.contains("node-a"), "{s:?}");
        assert!(
            s.detail
                .contains("replicasets: replicasets.apps is forbidden"),
            "{s:?}"
        );
        // Disconnected after a sync: reported, names kept.
        health.resources.insert(
            "pods",
            ResourceHealth {
                error: Some("connection refused".into()),
                ..pods
            },
        );
        let s = feature_status(&health);
        assert!(
            !s.available && s.detail.contains("connection refused"),
            "{s:?}"
        );
        health.error = Some("no node name".into());
        assert!(feature_status(&health).detail.contains("no node name"));
    }
}
