//! Who an endpoint is: process and container metadata for the sockets of
//! this node. (Kubernetes pods and workloads come later.)

pub mod container;

use std::net::IpAddr;

use weft_common::Owner;

use crate::flow::record::Endpoint;

/// Turns kernel owners into endpoint identities.
pub struct Enricher {
    containers: container::CgroupResolver,
}

impl Enricher {
    pub fn new(cgroup2: Option<std::path::PathBuf>) -> Self {
        Self {
            containers: container::CgroupResolver::new(cgroup2),
        }
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
        ep
    }
}

/// The workload label of an endpoint: the Kubernetes owner, else the
/// container, else the process name, else the address.
pub fn workload_label(ep: &Endpoint) -> String {
    if let Some(w) = &ep.workload {
        return w.clone();
    }
    if let Some(c) = &ep.container_id {
        return c.chars().take(12).collect();
    }
    if let Some(p) = &ep.process {
        return p.clone();
    }
    ep.ip.to_string()
}
