//! Rule sources that name pods (`from.namespace`, `from.pod_labels`): the
//! kernel matches sources by address, so a rule that selects pods stands
//! for the IPv4 addresses of the pods it selects now. The Kubernetes
//! watcher lists the pods of every node while such a rule exists (an
//! ingress rule's source may run anywhere); the policy task turns each
//! published list into /32 source prefixes and namespace masks.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use crate::enrich::kubernetes::index::Index;

/// A pod as rule sources see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddresses {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Its IPv4 addresses (rules are IPv4 only; host-network and ended
    /// pods have none).
    pub ips: Vec<Ipv4Addr>,
}

/// The pods of `index` that have an IPv4 address, in a stable order (so
/// that an unchanged cluster compares equal).
pub fn from_index(index: &Index) -> Vec<PodAddresses> {
    let mut pods: Vec<(&_, PodAddresses)> = index
        .pods
        .iter()
        .filter_map(|(key, pod)| {
            let ips: Vec<Ipv4Addr> = (pod.ips.iter())
                .filter_map(|ip| match ip {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            (!ips.is_empty()).then(|| {
                let pod = PodAddresses {
                    namespace: key.namespace.clone(),
                    labels: pod.labels.clone(),
                    ips,
                };
                (key, pod)
            })
        })
        .collect();
    pods.sort_by(|a, b| a.0.cmp(b.0));
    pods.into_iter().map(|(_, p)| p).collect()
}

/// `from.namespace` and `from.pod_labels` of one rule: a pod is selected
/// when it is in the namespace (any, when none is given) and carries
/// every label given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelector {
    /// The rule's bit.
    pub bit: u64,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl PodSelector {
    pub fn selects(&self, pod: &PodAddresses) -> bool {
        self.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
            && (self.labels.iter()).all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// Pod address -> the rules whose selector picks that pod.
pub type PodSources = BTreeMap<Ipv4Addr, u64>;

/// What `selectors` make of `pods`.
pub fn select(selectors: &[PodSelector], pods: &[PodAddresses]) -> PodSources {
    let mut out = PodSources::new();
    for pod in pods {
        let bits = (selectors.iter())
            .filter(|s| s.selects(pod))
            .fold(0, |m, s| m | s.bit);
        if bits != 0 {
            for ip in &pod.ips {
                *out.entry(*ip).or_default() |= bits;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kubernetes::index::{ObjectKey, PodInfo, Update};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        (pairs.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(namespace: &str, app: &str, ip: &str) -> PodAddresses {
        PodAddresses {
            namespace: namespace.into(),
            labels: labels(&[("app", app), ("tier", "1")]),
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn a_selector_needs_the_namespace_and_every_label() {
        let pods = [
            pod("prod", "web", "10.0.0.1"),
            pod("prod", "db", "10.0.0.2"),
            pod("dev", "web", "10.0.0.3"),
        ];
        let selectors = [
            PodSelector {
                bit: 0b01,
                namespace: Some("prod".into()),
                labels: labels(&[("app", "web")]),
            },
            // Labels only: any namespace.
            PodSelector {
                bit: 0b10,
                namespace: None,
                labels: labels(&[("app", "web"), ("tier", "1")]),
            },
        ];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            select(&selectors, &pods),
            PodSources::from([(ip("10.0.0.1"), 0b11), (ip("10.0.0.3"), 0b10)])
        );
        let whole_namespace = PodSelector {
            bit: 0b100,
            namespace: Some("prod".into()),
            labels: BTreeMap::new(),
        };
        assert_eq!(select(&[whole_namespace], &pods).len(), 2);
    }

    #[test]
    fn pods_without_an_ipv4_address_are_left_out() {
        let mut index = Index::default();
        let info = |ips: &[&str]| PodInfo {
            owner: None,
            template_hash: None,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            container_ids: vec![],
            labels: labels(&[("app", "x")]),
        };
        for (name, ips) in [
            ("b", &["fd00::2", "10.0.0.2"][..]),
            ("a", &["10.0.0.1"][..]),
            ("host", &[][..]),
            ("v6", &["fd00::3"][..]),
        ] {
            index
                .pods
                .update(Update::Apply(ObjectKey::new("ns", name), info(ips)));
        }
        let pods = from_index(&index);
        let ips: Vec<String> = pods.iter().map(|p| p.ips[0].to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
    }
}
