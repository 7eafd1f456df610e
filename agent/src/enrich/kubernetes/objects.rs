//! Kubernetes objects reduced to what naming needs.

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{ContainerStatus, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use super::index::{ObjectKey, OwnerRef, PodInfo, PortInfo, ServiceInfo, SliceInfo};

/// The label a Deployment's ReplicaSet sets on its pods.
const TEMPLATE_HASH: &str = "pod-template-hash";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

pub fn key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The controller among the owner references (the first owner when none
/// is marked as the controller).
pub fn controller(meta: &ObjectMeta) -> Option<OwnerRef> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o: &OwnerReference| OwnerRef {
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
}

pub fn pod(pod: &Pod) -> PodInfo {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let status = pod.status.as_ref();
    // A pod that has ended keeps its address in its status while the
    // address may already be another pod's.
    let ended = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    let mut ips: Vec<IpAddr> = Vec::new();
    if !host_network
        && !ended
        && let Some(status) = status
    {
        let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
        for ip in status.pod_ip.as_deref().into_iter().chain(listed) {
            if let Ok(ip) = ip.parse()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    let statuses = status.into_iter().flat_map(|s| {
        let all: [&Option<Vec<ContainerStatus>>; 3] = [
            &s.container_statuses,
            &s.init_container_statuses,
            &s.ephemeral_container_statuses,
        ];
        all.into_iter().flatten().flatten()
    });
    let container_ids = statuses
        .filter_map(|c| c.container_id.as_deref())
        .filter_map(container_id)
        .map(str::to_owned)
        .collect();
    PodInfo {
        owner: controller(&pod.metadata),
        template_hash: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_HASH))
            .cloned(),
        ips,
        container_ids,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
    }
}

/// `4f2a...` from `containerd://4f2a...` (also `docker://`, `cri-o://`).
pub fn container_id(text: &str) -> Option<&str> {
    let id = text.rsplit_once("://").map_or(text, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

pub fn service(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.as_ref();
    let ips = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten();
    let single = spec.and_then(|s| s.cluster_ip.as_ref());
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    // "None" (headless) and "" do not parse.
    for ip in single.into_iter().chain(ips) {
        if let Ok(ip) = ip.parse()
            && !cluster_ips.contains(&ip)
        {
            cluster_ips.push(ip);
        }
    }
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: u16::try_from(p.port).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    let affinity_timeout_s = spec
        .filter(|s| s.session_affinity.as_deref() == Some("ClientIP"))
        .map(|s| {
            s.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
        });
    ServiceInfo {
        cluster_ips,
        ports,
        affinity_timeout_s,
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

pub fn slice(slice: &EndpointSlice) -> SliceInfo {
    let endpoints = slice
        .endpoints
        .iter()
        .flat_map(|e| {
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            e.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(move |ip| (ip, pod.clone()))
        })
        .collect();
    let ready = slice
        .endpoints
        .iter()
        .filter(|e| {
            // Unset means ready (the API's own reading).
            e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
        })
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: u16::try_from(p.port?).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    SliceInfo {
        ready,
        ports,
        service: slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME))
            .cloned(),
        endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(container_id("containerd://abc"), Some("abc"));
        assert_eq!(container_id("cri-o://abc"), Some("abc"));
        assert_eq!(container_id("abc"), Some("abc"));
        assert_eq!(container_id("docker://"), None);
    }

    #[test]
    fn host_network_pods_have_no_address_of_their_own() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "kube-system"},
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"podIP": "192.0.2.10", "podIPs": [{"ip": "192.0.2.10"}]}
        }))
        .unwrap();
        assert!(super::pod(&pod).ips.is_empty());
    }

    #[test]
    fn headless_services_have_no_virtual_ip() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}
        }))
        .unwrap();
        assert!(service(&svc).cluster_ips.is_empty());
    }
}
