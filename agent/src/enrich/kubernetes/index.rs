//! What the agent knows of the cluster, as plain data: the pods of this
//! node, the Services, the EndpointSlices, and the owners of ReplicaSets
//! and Jobs. The watcher task owns one [`Index`], applies watch events to
//! it, and publishes [`Names`](super::names::Names) built from it.
//!
//! Objects are reduced to the few fields naming needs when they arrive
//! (see `objects.rs`), so the index stays small even for large clusters.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// A namespaced object's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// An owner reference: the controller of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// A pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's controller (`ownerReferences` entry with `controller:
    /// true`), if any.
    pub owner: Option<OwnerRef>,
    /// The `pod-template-hash` label a Deployment's ReplicaSet puts on its
    /// pods.
    pub template_hash: Option<String>,
    /// `status.podIPs`. Empty for host-network pods: their address is the
    /// node's, shared by every such pod, so it names none of them.
    pub ips: Vec<IpAddr>,
    /// Container ids of every container (init and ephemeral included),
    /// without the runtime's `containerd://` prefix.
    pub container_ids: Vec<String>,
    /// `metadata.labels` (policy rules select pods by them).
    pub labels: BTreeMap<String, String>,
}

/// A Service's virtual addresses (and, for `kubernetes_services`, what
/// steering needs to balance them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `spec.clusterIPs` (none for headless and ExternalName Services).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<PortInfo>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
}

/// A port of a Service or of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Required when a Service has several ports; a slice's port has the
    /// name of the Service port it serves.
    pub name: Option<String>,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`, as the API spells them (default `TCP`).
    pub protocol: String,
}

/// One EndpointSlice: the addresses behind a Service, anywhere in the
/// cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// Each address with the pod it belongs to (`targetRef` of kind Pod).
    pub endpoints: Vec<(IpAddr, Option<String>)>,
    /// The addresses of endpoints ready for traffic (`conditions.ready`
    /// true or unset, as the API asks consumers to read it).
    pub ready: Vec<IpAddr>,
    /// `ports`: the target ports, by Service port name.
    pub ports: Vec<PortInfo>,
}

/// The kinds whose owners are looked up to name a pod's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    ReplicaSet,
    Job,
}

/// A change to one kind of object, as the watcher reports it. A relist
/// (start-up, or after the API server said our resource version is too
/// old) is `Restart`, the listed objects, then `Relisted`: objects not
/// listed again are gone, even though no delete event was seen.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T> {
    Apply(ObjectKey, T),
    Delete(ObjectKey),
    Restart,
    Listed(ObjectKey, T),
    Relisted,
}

/// Objects of one kind. During a relist the old objects stay visible
/// until the new list is complete, then are replaced at once.
#[derive(Debug, Clone)]
pub struct Table<T> {
    live: HashMap<ObjectKey, T>,
    relisting: Option<HashMap<ObjectKey, T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            relisting: None,
        }
    }
}

impl<T> Table<T> {
    /// Applies one update; returns whether the visible objects changed.
    pub fn update(&mut self, update: Update<T>) -> bool {
        match update {
            Update::Apply(key, value) => {
                self.live.insert(key, value);
                true
            }
            Update::Delete(key) => self.live.remove(&key).is_some(),
            Update::Restart => {
                self.relisting = Some(HashMap::new());
                false
            }
            Update::Listed(key, value) => {
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(key, value);
                false
            }
            Update::Relisted => {
                self.live = self.relisting.take().unwrap_or_default();
                true
            }
        }
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.live.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &T)> {
        self.live.iter()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Everything watched, one table per kind.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub pods: Table<PodInfo>,
    pub services: Table<ServiceInfo>,
    pub slices: Table<SliceInfo>,
    /// Controllers of ReplicaSets (a Deployment) and Jobs (a CronJob);
    /// `None` for one that has no controller.
    pub replica_sets: Table<Option<OwnerRef>>,
    pub jobs: Table<Option<OwnerRef>>,
}

/// A pod's workload: its top-level controller, e.g. Deployment `frontend`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`,
    /// `CronJob`, ..., or `Pod` for a pod without a controller.
    pub kind: String,
    pub name: String,
}

impl Index {
    /// The workload of a pod: its controller, followed up through a
    /// ReplicaSet to its Deployment and through a Job to its CronJob.
    ///
    /// When the ReplicaSet or Job itself is not known (not watched yet, or
    /// the agent may not read them), its name tells: a Deployment names
    /// its ReplicaSets `<deployment>-<pod-template-hash>`, and a CronJob
    /// names its Jobs `<cronjob>-<scheduled time in minutes>`.
    pub fn workload(&self, key: &ObjectKey, pod: &PodInfo) -> Workload {
        let Some(owner) = &pod.owner else {
            return Workload {
                kind: "Pod".into(),
                name: key.name.clone(),
            };
        };
        let owned = |kind: OwnedKind| {
            let table = match kind {
                OwnedKind::ReplicaSet => &self.replica_sets,
                OwnedKind::Job => &self.jobs,
            };
            table.get(&ObjectKey::new(key.namespace.clone(), owner.name.clone()))
        };
        let as_is = || Workload {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        };
        match owner.kind.as_str() {
            "ReplicaSet" => match owned(OwnedKind::ReplicaSet) {
                Some(Some(parent)) => to_workload(parent),
                Some(None) => as_is(),
                None => match deployment_of(&owner.name, pod.template_hash.as_deref()) {
                    Some(deployment) => Workload {
                        kind: "Deployment".into(),
                        name: deployment.into(),
                    },
                    None => as_is(),
                },
            },
            "Job" => match owned(OwnedKind::Job) {
                Some(Some(parent)) => to_workload(parent),
                Some(None) => as_is(),
                None => match cronjob_of(&owner.name) {
                    Some(cronjob) => Workload {
                        kind: "CronJob".into(),
                        name: cronjob.into(),
                    },
                    None => as_is(),
                },
            },
            // A static pod's mirror is "owned" by its Node: it is a pod of
            // its own, not a workload named after the node.
            "Node" => Workload {
                kind: "Pod".into(),
                name: key.name.clone(),
            },
            _ => as_is(),
        }
    }
}

fn to_workload(owner: &OwnerRef) -> Workload {
    Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    }
}

/// `frontend` from ReplicaSet `frontend-7d9f8b6c5d` when the pod's
/// `pod-template-hash` is `7d9f8b6c5d`.
pub fn deployment_of<'a>(replica_set: &'a str, template_hash: Option<&str>) -> Option<&'a str> {
    let hash = template_hash.filter(|h| !h.is_empty())?;
    let prefix = replica_set.strip_suffix(hash)?.strip_suffix('-')?;
    (!prefix.is_empty()).then_some(prefix)
}

/// `backup` from Job `backup-29400960`: the CronJob controller appends the
/// scheduled time in minutes since the epoch (8 digits since 1989).
pub fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty())
        .then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(owner: Option<(&str, &str)>, hash: Option<&str>) -> PodInfo {
        PodInfo {
            owner: owner.map(|(kind, name)| OwnerRef {
                kind: kind.into(),
                name: name.into(),
            }),
            template_hash: hash.map(Into::into),
            ips: vec![],
            container_ids: vec![],
            labels: BTreeMap::new(),
        }
    }

    fn workload(kind: &str, name: &str) -> Workload {
        Workload {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn workload_through_known_owners() {
        let mut index = Index::default();
        let key = ObjectKey::new("shop", "frontend-5f7c9d8b4-abcde");
        index.replica_sets.update(Update::Apply(
            ObjectKey::new("shop", "frontend-5f7c9d8b4"),
            Some(OwnerRef {
                kind: "Deployment".into(),
                name: "frontend".into(),
            }),
        ));
        index
            .replica_sets
            .update(Update::Apply(ObjectKey::new("shop", "bare-rs"), None));
        index.jobs.update(Update::Apply(
            ObjectKey::new("shop", "nightly-x"),
            Some(OwnerRef {
                kind: "CronJob".into(),
                name: "nightly".into(),
            }),
        ));
        let p = pod(Some(("ReplicaSet", "frontend-5f7c9d8b4")), None);
        assert_eq!(index.workload(&key, &p), workload("Deployment", "frontend"));
        let p = pod(Some(("ReplicaSet", "bare-rs")), Some("rs"));
        assert_eq!(index.workload(&key, &p), workload("ReplicaSet", "bare-rs"));
        let p = pod(Some(("Job", "nightly-x")), None);
        assert_eq!(index.workload(&key, &p), workload("CronJob", "nightly"));
        let p = pod(Some(("StatefulSet", "db")), None);
        assert_eq!(index.workload(&key, &p), workload("StatefulSet", "db"));
        let p = pod(Some(("DaemonSet", "agent")), None);
        assert_eq!(index.workload(&key, &p), workload("DaemonSet", "agent"));
        let p = pod(None, None);
        assert_eq!(index.workload(&key, &p), workload("Pod", &key.name));
        let p = pod(Some(("Node", "node-a")), None);
        assert_eq!(index.workload(&key, &p), workload("Pod", &key.name));
    }

    #[test]
    fn workload_from_names_when_owners_are_unknown() {
        let index = Index::default();
        let key = ObjectKey::new("shop", "p");
        let p = pod(
            Some(("ReplicaSet", "frontend-5f7c9d8b4")),
            Some("5f7c9d8b4"),
        );
        assert_eq!(index.workload(&key, &p), workload("Deployment", "frontend"));
        // Without the hash label, or when it does not match, the ReplicaSet
        // is the workload.
        let p = pod(Some(("ReplicaSet", "frontend-5f7c9d8b4")), None);
        assert_eq!(
            index.workload(&key, &p),
            workload("ReplicaSet", "frontend-5f7c9d8b4")
        );
        let p = pod(Some(("ReplicaSet", "frontend-5f7c9d8b4")), Some("zzz"));
        assert_eq!(
            index.workload(&key, &p),
            workload("ReplicaSet", "frontend-5f7c9d8b4")
        );
        let p = pod(Some(("Job", "backup-29400960")), None);
        assert_eq!(index.workload(&key, &p), workload("CronJob", "backup"));
        let p = pod(Some(("Job", "migrate-v2")), None);
        assert_eq!(index.workload(&key, &p), workload("Job", "migrate-v2"));
    }

    #[test]
    fn name_heuristics() {
        assert_eq!(deployment_of("a-b-123", Some("123")), Some("a-b"));
        assert_eq!(deployment_of("123", Some("123")), None);
        assert_eq!(deployment_of("-123", Some("123")), None);
        assert_eq!(deployment_of("a123", Some("123")), None);
        assert_eq!(deployment_of("a-123", Some("")), None);
        assert_eq!(cronjob_of("a-b-12345678"), Some("a-b"));
        assert_eq!(cronjob_of("a-1234567"), None);
        assert_eq!(cronjob_of("-12345678"), None);
        assert_eq!(cronjob_of("12345678"), None);
    }

    #[test]
    fn relist_replaces_objects_when_complete() {
        let mut t = Table::default();
        let a = ObjectKey::new("ns", "a");
        let b = ObjectKey::new("ns", "b");
        assert!(t.update(Update::Apply(a.clone(), 1)));
        assert!(!t.update(Update::Restart));
        assert!(!t.update(Update::Listed(b.clone(), 2)));
        // Still the old view until the list is complete.
        assert_eq!(t.get(&a), Some(&1));
        assert_eq!(t.get(&b), None);
        assert!(t.update(Update::Relisted));
        assert_eq!(t.get(&a), None);
        assert_eq!(t.get(&b), Some(&2));
        assert!(t.update(Update::Delete(b.clone())));
        assert!(!t.update(Update::Delete(b)));
        assert!(t.is_empty());
    }
}
