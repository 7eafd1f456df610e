//! Kubernetes Services as steering services (`kubernetes_services: true`):
//! what kube-proxy does for connections made on this node, done at
//! connect time instead.
//!
//! Each port of a Service with a cluster IP becomes one service: the
//! cluster IP and the Service port, in front of the ready endpoints of the
//! Service's EndpointSlices (of the cluster IP's family) at the slice port
//! of the same name (the way kube-proxy pairs them). A dual-stack Service
//! is steered at its IPv4 cluster IP, an IPv6-only one at its IPv6 one.
//! Headless and ExternalName Services have no cluster IP and are left
//! alone; so are SCTP ports, which stay with kube-proxy.
//!
//! Built by the Kubernetes watcher each time it publishes, from the same
//! index that names flows, and only once both Services and EndpointSlices
//! have been listed: a half-known cluster would remove services from the
//! kernel that are only not listed yet.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    config::{
        ServiceConfig,
        steer::{
            BackendConfig, HealthOverrides, MAX_BACKENDS, Protocol, ServiceSource, SessionAffinity,
        },
    },
    enrich::kubernetes::index::{Index, ObjectKey, PortInfo, ServiceInfo, SliceInfo},
};

/// The services of every ClusterIP Service of `index`, in a stable order
/// (namespace, name, port).
pub fn services(index: &Index) -> Vec<ServiceConfig> {
    let mut slices: BTreeMap<ObjectKey, Vec<&SliceInfo>> = BTreeMap::new();
    for (key, slice) in index.slices.iter() {
        if let Some(service) = &slice.service {
            let owner = ObjectKey::new(key.namespace.clone(), service.clone());
            slices.entry(owner).or_default().push(slice);
        }
    }
    let mut listed: Vec<(&ObjectKey, &ServiceInfo)> = index.services.iter().collect();
    listed.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (key, svc) in listed {
        let v4 = svc.cluster_ips.iter().find(|ip| ip.is_ipv4());
        let Some(address) = v4.or(svc.cluster_ips.first()) else {
            continue;
        };
        let behind = slices.get(key).map(Vec::as_slice).unwrap_or_default();
        for port in &svc.ports {
            if let Some(s) = service_port(key, svc, *address, port, behind) {
                out.push(s);
            }
        }
    }
    out
}

/// One port of a Service as a steering service; `None` for a protocol
/// steering does not balance.
fn service_port(
    key: &ObjectKey,
    svc: &ServiceInfo,
    address: IpAddr,
    port: &PortInfo,
    slices: &[&SliceInfo],
) -> Option<ServiceConfig> {
    let protocol = match port.protocol.as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        _ => return None,
    };
    // An endpoint may be in two slices while they are being rebalanced.
    let mut backends: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    for slice in slices {
        let target = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol);
        let Some(target) = target else { continue };
        for ip in slice
            .ready
            .iter()
            .filter(|ip| ip.is_ipv4() == address.is_ipv4())
        {
            backends.insert((*ip, target.port));
        }
    }
    let name = service_name(key, svc, port);
    if backends.len() > MAX_BACKENDS {
        log::warn!(
            "Kubernetes service {name} has {} ready endpoints; steering balances over the \
             first {MAX_BACKENDS} (by address)",
            backends.len()
        );
    }
    let (session_affinity, timeout) = match svc.affinity_timeout_s {
        Some(s) => (SessionAffinity::ClientIp, s.clamp(1, 86_400)),
        None => (SessionAffinity::None, 10_800),
    };
    Some(ServiceConfig {
        name,
        address,
        port: port.port,
        protocol,
        backends: backends
            .into_iter()
            .take(MAX_BACKENDS)
            .map(|(address, port)| BackendConfig {
                address,
                port,
                weight: 1,
            })
            .collect(),
        session_affinity,
        session_affinity_timeout: std::time::Duration::from_secs(u64::from(timeout)),
        health: HealthOverrides::default(),
        source: ServiceSource::Kubernetes,
    })
}

/// `namespace/name`, with `:port` (its name, else its number) when the
/// Service has several ports, so that each has its own metrics.
fn service_name(key: &ObjectKey, svc: &ServiceInfo, port: &PortInfo) -> String {
    let base = format!("{}/{}", key.namespace, key.name);
    if svc.ports.len() < 2 {
        return base;
    }
    match &port.name {
        Some(n) => format!("{base}:{n}"),
        None => format!("{base}:{}", port.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kubernetes::index::Update;

    fn port(name: Option<&str>, port: u16, protocol: &str) -> PortInfo {
        PortInfo {
            name: name.map(str::to_owned),
            port,
            protocol: protocol.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ready_endpoints_of_each_port_become_backends() {
        let mut index = Index::default();
        let svc = ServiceInfo {
            cluster_ips: vec![ip("10.96.0.10")],
            ports: vec![
                port(Some("http"), 80, "TCP"),
                port(Some("dns"), 53, "UDP"),
                port(Some("sctp"), 9, "SCTP"),
            ],
            affinity_timeout_s: Some(60),
        };
        index
            .services
            .update(Update::Apply(ObjectKey::new("shop", "web"), svc));
        // Headless: no cluster IP, not steered.
        index.services.update(Update::Apply(
            ObjectKey::new("shop", "db"),
            ServiceInfo {
                ports: vec![port(None, 5432, "TCP")],
                ..Default::default()
            },
        ));
        let slice = |ready: &[&str], all: &[&str]| SliceInfo {
            service: Some("web".into()),
            endpoints: all.iter().map(|a| (ip(a), None)).collect(),
            ready: ready.iter().map(|a| ip(a)).collect(),
            ports: vec![
                port(Some("http"), 8080, "TCP"),
                port(Some("dns"), 5353, "UDP"),
            ],
        };
        index.slices.update(Update::Apply(
            ObjectKey::new("shop", "web-a"),
            slice(
                &["10.0.1.2", "10.0.1.3"],
                &["10.0.1.2", "10.0.1.3", "10.0.1.4"],
            ),
        ));
        // The same endpoint in a second slice counts once.
        index.slices.update(Update::Apply(
            ObjectKey::new("shop", "web-b"),
            slice(&["10.0.1.3"], &["10.0.1.3"]),
        ));
        // A slice of another namespace's `web` is not this Service's.
        index.slices.update(Update::Apply(
            ObjectKey::new("other", "web-c"),
            slice(&["10.0.9.9"], &["10.0.9.9"]),
        ));
        let out = services(&index);
        assert_eq!(out.len(), 2, "{out:#?}");
        let http = &out[0];
        assert_eq!(http.name, "shop/web:http");
        assert_eq!((http.address, http.port), (ip("10.96.0.10"), 80));
        assert_eq!(http.protocol, Protocol::Tcp);
        assert_eq!(http.source, ServiceSource::Kubernetes);
        assert_eq!(http.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(http.session_affinity_timeout.as_secs(), 60);
        let backends: Vec<(IpAddr, u16)> =
            http.backends.iter().map(|b| (b.address, b.port)).collect();
        assert_eq!(
            backends,
            vec![(ip("10.0.1.2"), 8080), (ip("10.0.1.3"), 8080)]
        );
        let dns = &out[1];
        assert_eq!(
            (dns.name.as_str(), dns.protocol),
            ("shop/web:dns", Protocol::Udp)
        );
        assert_eq!(dns.backends[0].port, 5353);
    }

    #[test]
    fn a_single_port_service_is_named_by_namespace_and_name() {
        let mut index = Index::default();
        index.services.update(Update::Apply(
            ObjectKey::new("shop", "cart"),
            ServiceInfo {
                cluster_ips: vec![ip("10.96.0.11")],
                ports: vec![port(None, 80, "TCP")],
                affinity_timeout_s: None,
            },
        ));
        let out = services(&index);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "shop/cart");
        assert_eq!(out[0].session_affinity, SessionAffinity::None);
        // No slice yet: a service without backends (connects refused, as
        // kube-proxy rejects them).
        assert!(out[0].backends.is_empty());
        // IPv6 only: steered at its IPv6 cluster IP, over IPv6 endpoints.
        index.services.update(Update::Apply(
            ObjectKey::new("shop", "cart"),
            ServiceInfo {
                cluster_ips: vec![ip("fd00:96::11")],
                ports: vec![port(None, 80, "TCP")],
                affinity_timeout_s: None,
            },
        ));
        index.slices.update(Update::Apply(
            ObjectKey::new("shop", "cart-v6"),
            SliceInfo {
                service: Some("cart".into()),
                ready: vec![ip("fd00:1::2"), ip("10.0.1.2")],
                ports: vec![port(None, 8080, "TCP")],
                ..Default::default()
            },
        ));
        let out = services(&index);
        assert_eq!(out[0].address, ip("fd00:96::11"));
        let backends: Vec<IpAddr> = out[0].backends.iter().map(|b| b.address).collect();
        assert_eq!(backends, vec![ip("fd00:1::2")]);
    }
}
