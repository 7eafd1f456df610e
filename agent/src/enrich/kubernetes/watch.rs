//! The watcher task: one kube-rs `watcher` stream per kind of object,
//! merged, applied to the [`Index`] this task owns, and published as
//! immutable [`Names`].
//!
//! kube-rs's watcher lists, then watches from the list's resource version;
//! when a watch ends (the API server closes watches every few minutes, or
//! the connection drops) it watches again from the last version seen, and
//! when the API server answers `410 Gone` (that version is too old) it
//! lists again. Errors back off (0.8 s doubling to 30 s, as client-go).
//! A relist replaces the kind's objects as a whole, so objects deleted
//! while the agent was disconnected disappear too.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Resource,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Health, ResourceHealth, Snapshot,
    index::{Index, ObjectKey, OwnerRef, Update},
    names::Names,
    objects,
};

/// Changes are published at most this often, so a burst of events (a
/// relist, a rollout) rebuilds the lookups once.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// The kinds of object watched; their names appear in status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Services,
    EndpointSlices,
    ReplicaSets,
    Jobs,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Pods,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::ReplicaSets,
        Kind::Jobs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::ReplicaSets => "replicasets",
            Kind::Jobs => "jobs",
        }
    }
}

enum Change {
    Pod(Update<super::index::PodInfo>),
    Service(Update<super::index::ServiceInfo>),
    Slice(Update<super::index::SliceInfo>),
    ReplicaSet(Update<Option<OwnerRef>>),
    Job(Update<Option<OwnerRef>>),
}

impl Change {
    fn apply(self, index: &mut Index) -> bool {
        match self {
            Change::Pod(u) => index.pods.update(u),
            Change::Service(u) => index.services.update(u),
            Change::Slice(u) => index.slices.update(u),
            Change::ReplicaSet(u) => index.replica_sets.update(u),
            Change::Job(u) => index.jobs.update(u),
        }
    }

    fn is_relisted(&self) -> bool {
        matches!(
            self,
            Change::Pod(Update::Relisted)
                | Change::Service(Update::Relisted)
                | Change::Slice(Update::Relisted)
                | Change::ReplicaSet(Update::Relisted)
                | Change::Job(Update::Relisted)
        )
    }
}

type Item = (Kind, Result<Change, String>);

/// A watcher event as an index update.
fn update<K, T>(event: watcher::Event<K>, reduce: impl Fn(&K) -> (ObjectKey, T)) -> Update<T> {
    match event {
        watcher::Event::Apply(o) => {
            let (k, v) = reduce(&o);
            Update::Apply(k, v)
        }
        watcher::Event::Delete(o) => Update::Delete(reduce(&o).0),
        watcher::Event::Init => Update::Restart,
        watcher::Event::InitApply(o) => {
            let (k, v) = reduce(&o);
            Update::Listed(k, v)
        }
        watcher::Event::InitDone => Update::Relisted,
    }
}

fn full<K, T>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    reduce: fn(&K) -> T,
    wrap: fn(Update<T>) -> Change,
) -> BoxStream<'static, Item>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: 'static,
{
    watcher(api, config)
        .default_backoff()
        .map(move |r| {
            let r = r
                .map(|ev| wrap(update(ev, |o: &K| (objects::key(o.meta()), reduce(o)))))
                .map_err(|e| e.to_string());
            (kind, r)
        })
        .boxed()
}

/// Where and what the watcher publishes.
pub struct Publish {
    pub tx: watch::Sender<Snapshot>,
    /// Build the steering services too (`kubernetes_services`).
    pub steer_services: bool,
    /// Watch every node's pods and publish them for policy rules.
    pub policy_pods: bool,
}

type PodList = Arc<Vec<crate::steer::policy::pods::PodAddresses>>;

/// What was last published, republished with new health.
struct Published {
    names: Arc<Names>,
    services: Option<Arc<Vec<crate::config::ServiceConfig>>>,
    pods: Option<PodList>,
}

impl Publish {
    fn send(&self, published: &Published, health: &Health) {
        self.tx.send_replace(Snapshot {
            names: published.names.clone(),
            health: Arc::new(health.clone()),
            services: published.services.clone(),
            pods: published.pods.clone(),
        });
    }

    /// Builds what the index holds now.
    fn build(&self, index: &Index, health: &Health) -> Published {
        let listed = |kind: Kind| health.resources.get(kind.name()).is_some_and(|r| r.synced);
        let services =
            (self.steer_services && listed(Kind::Services) && listed(Kind::EndpointSlices))
                .then(|| Arc::new(crate::steer::kubernetes::services(index)));
        let pods = (self.policy_pods && listed(Kind::Pods))
            .then(|| Arc::new(crate::steer::policy::pods::from_index(index)));
        Published {
            names: Arc::new(Names::build(index)),
            services,
            pods,
        }
    }
}

/// The watch streams, one per kind, merged. Pods are this node's only,
/// unless `all_pods` (policy rules select pods anywhere).
fn streams(
    client: kube::Client,
    node: &str,
    all_pods: bool,
) -> futures::stream::SelectAll<BoxStream<'static, Item>> {
    // Lists are served from the API server's watch cache (resourceVersion
    // 0, as client-go's informers ask): one agent per node must not cost a
    // quorum read of etcd each. The cache answers in one piece (it ignores
    // `limit`, and kube-rs drops resourceVersion 0 when a limit is given),
    // so no page size is set.
    let base = || {
        let mut config = watcher::Config::default().any_semantic();
        config.page_size = None;
        config
    };
    let pods = if all_pods {
        base()
    } else {
        base().fields(&format!("spec.nodeName={node}"))
    };
    let streams = vec![
        full(
            Api::<Pod>::all(client.clone()),
            pods,
            Kind::Pods,
            objects::pod,
            Change::Pod,
        ),
        full(
            Api::<Service>::all(client.clone()),
            base(),
            Kind::Services,
            objects::service,
            Change::Service,
        ),
        full(
            Api::<EndpointSlice>::all(client.clone()),
            base(),
            Kind::EndpointSlices,
            objects::slice,
            Change::Slice,
        ),
        // ReplicaSets and Jobs: only their metadata (owner references) is
        // read; `Api<PartialObjectMeta<_>>` asks for metadata-only objects.
        full(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            base(),
            Kind::ReplicaSets,
            |o| objects::controller(&o.metadata),
            Change::ReplicaSet,
        ),
        full(
            Api::<PartialObjectMeta<Job>>::all(client),
            base(),
            Kind::Jobs,
            |o| objects::controller(&o.metadata),
            Change::Job,
        ),
    ];
    futures::stream::select_all(streams)
}

/// Runs until `shutdown`: watches, and publishes.
pub async fn run(
    client: kube::Client,
    server: String,
    node: String,
    publish: Publish,
    mut ok: mpsc::Receiver<Kind>,
    shutdown: CancellationToken,
) {
    let mut merged = streams(client, &node, publish.policy_pods);
    let mut index = Index::default();
    let mut health = Health {
        server,
        node,
        resources: Kind::ALL
            .iter()
            .map(|k| (k.name(), ResourceHealth::default()))
            .collect::<BTreeMap<_, _>>(),
        error: None,
    };
    let mut published = Published {
        names: Arc::new(Names::default()),
        services: None,
        pods: None,
    };
    publish.send(&published, &health);
    let mut publish_at: Option<tokio::time::Instant> = None;
    loop {
        let due = async {
            match publish_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = merged.next() => {
                let Some((kind, result)) = item else { return };
                let entry = health.resources.entry(kind.name()).or_default();
                let health_changed = match result {
                    Ok(change) => {
                        let relisted = change.is_relisted();
                        if change.apply(&mut index) && publish_at.is_none() {
                            publish_at = Some(tokio::time::Instant::now() + PUBLISH_EVERY);
                        }
                        entry.ok(relisted, kind)
                    }
                    Err(err) => entry.failed(err, kind),
                };
                if health_changed {
                    publish.send(&published, &health);
                }
            }
            Some(kind) = ok.recv() => {
                let entry = health.resources.entry(kind.name()).or_default();
                if entry.recovered(kind) {
                    publish.send(&published, &health);
                }
            }
            () = due => {
                publish_at = None;
                published = publish.build(&index, &health);
                publish.send(&published, &health);
            }
            () = shutdown.cancelled() => return,
        }
    }
}

impl ResourceHealth {
    /// An event arrived; returns whether the health changed.
    fn ok(&mut self, relisted: bool, kind: Kind) -> bool {
        let mut changed = false;
        if self.error.take().is_some() {
            log::info!("Kubernetes: watching {} again", kind.name());
            changed = true;
        }
        if relisted {
            if !self.synced {
                log::info!("Kubernetes: {} listed", kind.name());
            }
            self.synced = true;
            self.relists += 1;
            changed = true;
        }
        changed
    }

    /// A request for the kind succeeded (e.g. a watch started again after
    /// an outage, which yields no event until an object changes).
    fn recovered(&mut self, kind: Kind) -> bool {
        let had_error = self.error.take().is_some();
        if had_error {
            log::info!("Kubernetes: watching {} again", kind.name());
        }
        had_error
    }

    fn failed(&mut self, err: String, kind: Kind) -> bool {
        self.errors += 1;
        // One line per change of error, not one per retry.
        if self.error.as_deref() != Some(err.as_str()) {
            log::warn!(
                "Kubernetes: cannot watch {} (retrying with backoff; flows are named from \
                 what was known before meanwhile): {err}",
                kind.name()
            );
        }
        self.error = Some(err);
        true
    }
}
