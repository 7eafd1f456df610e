//! The published view of the cluster: who a container id or an address is.
//! Built from the [`Index`] by the watcher task and shared, immutable,
//! with the flow pipeline (`Arc<Names>` through a `tokio::sync::watch`
//! channel), so lookups on the hot path take no lock held by the watcher.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::index::{Index, Workload};

/// The Kubernetes identity of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    /// The pod, when the address or container is a pod's.
    pub pod: Option<String>,
    /// The pod's workload; known for pods of this node.
    pub workload: Option<Workload>,
    /// The Service whose virtual IP this is, or one that selects the pod.
    pub service: Option<String>,
}

/// Lookups by container id and by address.
#[derive(Debug, Default)]
pub struct Names {
    by_container: HashMap<String, Arc<Identity>>,
    by_ip: HashMap<IpAddr, Arc<Identity>>,
    /// Counts, for the status report.
    pub pods: usize,
    pub services: usize,
    pub endpoint_slices: usize,
}

impl Names {
    /// The identity of a container of this node.
    pub fn container(&self, id: &str) -> Option<&Identity> {
        self.by_container.get(id).map(Arc::as_ref)
    }

    /// The identity of an address: a pod of this node, a Service's virtual
    /// IP, or a pod elsewhere that backs a Service.
    pub fn ip(&self, ip: IpAddr) -> Option<&Identity> {
        self.by_ip.get(&ip).map(Arc::as_ref)
    }

    /// Builds the lookups. Precedence for an address: a pod of this node
    /// (fully known), then a Service's virtual IP, then an EndpointSlice
    /// address (a pod elsewhere). Among several Services selecting one
    /// pod, the first by namespace and name wins, so the answer is stable.
    pub fn build(index: &Index) -> Self {
        // address -> (namespace, pod, service) from EndpointSlices.
        let mut endpoints: HashMap<IpAddr, (&str, Option<&str>, Option<&str>)> = HashMap::new();
        let mut slices: Vec<_> = index.slices.iter().collect();
        slices.sort_by(|a, b| (a.0, &a.1.service).cmp(&(b.0, &b.1.service)));
        for (key, slice) in slices {
            for (ip, pod) in &slice.endpoints {
                endpoints.entry(*ip).or_insert((
                    &key.namespace,
                    pod.as_deref(),
                    slice.service.as_deref(),
                ));
            }
        }

        let mut by_ip = HashMap::new();
        for (ip, (namespace, pod, service)) in &endpoints {
            by_ip.insert(
                *ip,
                Arc::new(Identity {
                    namespace: (*namespace).to_owned(),
                    pod: pod.map(str::to_owned),
                    workload: None,
                    service: service.map(str::to_owned),
                }),
            );
        }
        for (key, svc) in index.services.iter() {
            let identity = Arc::new(Identity {
                namespace: key.namespace.clone(),
                pod: None,
                workload: None,
                service: Some(key.name.clone()),
            });
            for ip in &svc.cluster_ips {
                by_ip.insert(*ip, identity.clone());
            }
        }

        let mut by_container = HashMap::new();
        for (key, pod) in index.pods.iter() {
            let service = pod
                .ips
                .iter()
                .find_map(|ip| endpoints.get(ip))
                .filter(|(namespace, pod_name, _)| {
                    *namespace == key.namespace && pod_name.is_none_or(|p| p == key.name)
                })
                .and_then(|(_, _, service)| service.map(str::to_owned));
            let identity = Arc::new(Identity {
                namespace: key.namespace.clone(),
                pod: Some(key.name.clone()),
                workload: Some(index.workload(key, pod)),
                service,
            });
            for ip in &pod.ips {
                by_ip.insert(*ip, identity.clone());
            }
            for id in &pod.container_ids {
                by_container.insert(id.clone(), identity.clone());
            }
        }
        Self {
            by_container,
            by_ip,
            pods: index.pods.len(),
            services: index.services.len(),
            endpoint_slices: index.slices.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kubernetes::index::{
        ObjectKey, OwnerRef, PodInfo, ServiceInfo, SliceInfo, Update,
    };

    #[test]
    fn lookups_and_precedence() {
        let mut index = Index::default();
        let pod_ip: IpAddr = "10.244.1.5".parse().unwrap();
        let remote_ip: IpAddr = "10.244.2.9".parse().unwrap();
        let vip: IpAddr = "10.96.0.20".parse().unwrap();
        index.pods.update(Update::Apply(
            ObjectKey::new("shop", "cart-0"),
            PodInfo {
                owner: Some(OwnerRef {
                    kind: "StatefulSet".into(),
                    name: "cart".into(),
                }),
                template_hash: None,
                ips: vec![pod_ip],
                container_ids: vec!["c1".into()],
                labels: Default::default(),
            },
        ));
        index.services.update(Update::Apply(
            ObjectKey::new("shop", "cart"),
            ServiceInfo {
                cluster_ips: vec![vip],
                ..Default::default()
            },
        ));
        index.slices.update(Update::Apply(
            ObjectKey::new("shop", "cart-abc"),
            SliceInfo {
                service: Some("cart".into()),
                endpoints: vec![
                    (pod_ip, Some("cart-0".into())),
                    (remote_ip, Some("cart-1".into())),
                ],
                ..Default::default()
            },
        ));
        let names = Names::build(&index);
        let local = names.container("c1").unwrap();
        assert_eq!(local.pod.as_deref(), Some("cart-0"));
        assert_eq!(local.service.as_deref(), Some("cart"));
        assert_eq!(local.workload.as_ref().unwrap().name, "cart");
        assert_eq!(names.ip(pod_ip), Some(local));
        let remote = names.ip(remote_ip).unwrap();
        assert_eq!(remote.pod.as_deref(), Some("cart-1"));
        assert_eq!(remote.workload, None);
        let svc = names.ip(vip).unwrap();
        assert_eq!(
            (svc.pod.as_deref(), svc.service.as_deref()),
            (None, Some("cart"))
        );
        assert_eq!(names.ip("192.0.2.1".parse().unwrap()), None);
        assert_eq!(
            (names.pods, names.services, names.endpoint_slices),
            (1, 1, 1)
        );
    }
}
