//! Who an endpoint is: process and container metadata for the sockets of
//! this node, and Kubernetes pods, workloads and Services for any address
//! the cluster knows.

pub mod container;
pub mod kubernetes;

use std::net::IpAddr;

use weft_common::Owner;

use crate::{flow::record::Endpoint, status::FeatureStatus};

/// Turns kernel owners into endpoint identities.
pub struct Enricher {
    containers: container::CgroupResolver,
    kubernetes: Option<kubernetes::KubernetesNames>,
}

impl Enricher {
    pub fn new(cgroup2: Option<std::path::PathBuf>) -> Self {
        Self {
            containers: container::CgroupResolver::new(cgroup2),
            kubernetes: None,
        }
    }

    /// Also names endpoints from the cluster's latest published names.
    pub fn with_kubernetes(mut self, names: kubernetes::KubernetesNames) -> Self {
        self.kubernetes = Some(names);
        self
    }

    /// The state of Kubernetes identity, when it is on.
    pub fn status(&self) -> Option<FeatureStatus> {
        self.kubernetes.as_ref().map(|k| k.status())
    }

    /// An endpoint at `ip:port`, with the process and container of `owner`
    /// when the socket belongs to this node (owner known).
    pub fn endpoint(&mut self, ip: IpAddr, port: u16, owner: Option<&Owner>) -> Endpoint {
        let mut ep = Endpoint::from_addr(ip, port);
        if let Some(owner) = owner.filter(|o| o.pid != 0) {
            ep.pid = Some(owner.pid);
            ep.process = Some(owner.comm_str().to_owned());
            ep.container_id = self.containers.container_id(owner.cgroup_id);
        }
        if let Some(k) = &self.kubernetes {
            let names = k.names();
            let identity = ep
                .container_id
                .as_deref()
                .and_then(|id| names.container(id))
                .or_else(|| names.ip(ip));
            if let Some(id) = identity {
                ep.namespace = Some(id.namespace.clone());
                ep.pod.clone_from(&id.pod);
                ep.service.clone_from(&id.service);
                if let Some(w) = &id.workload {
                    ep.workload = Some(w.name.clone());
                    ep.workload_kind = Some(w.kind.clone());
                }
            }
        }
        ep
    }
}

/// The workload label of an endpoint: the Kubernetes owner, else the
/// Service (an address the cluster knows only as a Service's, or a pod
/// elsewhere behind one), else the container, else the process name, else
/// the address.
pub fn workload_label(ep: &Endpoint) -> String {
    if let Some(w) = &ep.workload {
        return w.clone();
    }
    if let Some(s) = &ep.service {
        return s.clone();
    }
    if let Some(c) = &ep.container_id {
        return c.chars().take(12).collect();
    }
    if let Some(p) = &ep.process {
        return p.clone();
    }
    ep.ip.to_string()
}
