//! What the policy maps should hold for a configuration: a pure function
//! of `policies:`, `policy_mode:` and `services:` (a rule's `to.service`
//! stands for the service's address, port and protocol).
//!
//! Each rule is one bit (configuration order). A map's value for a key is
//! the set of rules that key satisfies; the kernel ANDs the sets of the
//! source, destination and port and takes the lowest bit left.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::{IpNet, Ipv4Net};
use weft_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    policy::{PolicyGlobals, PortKey},
};

use super::pods::{PodSelector, PodSources};
use crate::config::{
    PolicyConfig, ServiceConfig,
    steer::{Action, Direction, PolicyMode, Protocol},
};

/// The static part of the policy maps (the parts that depend on which
/// namespaces and cgroups exist are resolved at run time from
/// [`PolicyPlan::netns_cidrs`] and [`PolicyPlan::cgroups`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyPlan {
    pub rules: Vec<PolicyConfig>,
    pub globals: PolicyGlobals,
    /// Source prefixes (both directions) -> rules, from `from.cidr` only
    /// ([`PolicyPlan::src_with`] adds the selected pods).
    pub src: BTreeMap<Ipv4Net, u64>,
    /// `from.cidr` as configured, each with its rule's bit.
    src_nets: Vec<(Ipv4Net, u64)>,
    /// Rules with `from.namespace` or `from.pod_labels`.
    pub selectors: Vec<PodSelector>,
    /// Destination prefixes -> rules.
    pub dst: BTreeMap<Ipv4Net, u64>,
    pub ports: BTreeMap<PortKey, u64>,
    /// Egress rules' `from.cidr`, matched against the addresses of each
    /// network namespace (the source of a socket not yet bound).
    pub netns_cidrs: Vec<(u32, Vec<Ipv4Net>)>,
    /// `from.cgroup` path -> rules naming it.
    pub cgroups: BTreeMap<String, u64>,
}

fn bit(i: usize) -> u64 {
    1u64 << i
}

fn v4(nets: &[IpNet]) -> Vec<Ipv4Net> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        })
        .collect()
}

impl PolicyPlan {
    pub fn new(rules: &[PolicyConfig], mode: PolicyMode, services: &[ServiceConfig]) -> Self {
        let mut plan = PolicyPlan {
            rules: rules.to_vec(),
            ..PolicyPlan::default()
        };
        plan.globals.audit = u32::from(mode == PolicyMode::Audit);
        let mut src_nets: Vec<(Ipv4Net, u64)> = Vec::new();
        let mut dst_nets: Vec<(Ipv4Net, u64)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let b = bit(i);
            let g = &mut plan.globals;
            match r.direction {
                Direction::Egress => g.egress |= b,
                Direction::Ingress => g.ingress |= b,
            }
            if r.action == Action::Deny {
                g.deny |= b;
            }
            let from = v4(&r.from.cidr);
            let selects_pods = r.from.namespace.is_some() || !r.from.pod_labels.is_empty();
            if selects_pods {
                plan.selectors.push(PodSelector {
                    bit: b,
                    namespace: r.from.namespace.clone(),
                    labels: r.from.pod_labels.clone(),
                });
            }
            // A rule that selects pods matches no source until pods are
            // selected (its source is a set of addresses, maybe empty).
            if from.is_empty() && !selects_pods {
                g.no_src_cidr |= b;
            } else {
                src_nets.extend(from.iter().map(|&n| (n, b)));
                if r.direction == Direction::Egress {
                    plan.netns_cidrs.push((i as u32, from));
                }
            }
            match &r.from.cgroup {
                Some(path) => *plan.cgroups.entry(normalize(path)).or_default() |= b,
                None => g.no_cgroup |= b,
            }
            let (to, ports, protocol) = destination(r, services);
            if to.is_empty() {
                g.no_dst_cidr |= b;
            } else {
                dst_nets.extend(to.iter().map(|&n| (n, b)));
            }
            let protos: &[u8] = match protocol {
                Some(Protocol::Tcp) => &[IPPROTO_TCP],
                Some(Protocol::Udp) => &[IPPROTO_UDP],
                None => &[IPPROTO_TCP, IPPROTO_UDP],
            };
            for &proto in protos {
                if ports.is_empty() {
                    if proto == IPPROTO_TCP {
                        g.any_port_tcp |= b;
                    } else {
                        g.any_port_udp |= b;
                    }
                }
                for &port in &ports {
                    let key = PortKey {
                        port,
                        proto,
                        _pad: 0,
                    };
                    *plan.ports.entry(key).or_default() |= b;
                }
            }
        }
        plan.globals.cgroup_levels = (plan.cgroups.keys())
            .map(|p| p.split('/').filter(|c| !c.is_empty()).count() as u32)
            .max()
            .unwrap_or(0);
        plan.src = flatten(&src_nets);
        plan.src_nets = src_nets;
        plan.dst = flatten(&dst_nets);
        plan
    }

    /// The source prefixes with the selected pods' addresses added (a /32
    /// each, with the rules that select it).
    pub fn src_with(&self, pods: &PodSources) -> BTreeMap<Ipv4Net, u64> {
        if pods.is_empty() {
            return self.src.clone();
        }
        let mut nets = self.src_nets.clone();
        nets.extend(pods.iter().map(|(&ip, &bits)| (Ipv4Net::from(ip), bits)));
        flatten(&nets)
    }

    /// The rules that select pods, as one mask.
    pub fn selector_bits(&self) -> u64 {
        self.selectors.iter().fold(0, |m, s| m | s.bit)
    }

    /// The pods a source trie written for this plan holds (what an earlier
    /// agent selected): each /32 with its selecting rules' bits. Only
    /// meaningful when the trie was written for the same rules.
    pub fn pods_in(&self, src: &BTreeMap<Ipv4Net, u64>) -> PodSources {
        let selecting = self.selector_bits();
        src.iter()
            .filter(|(net, mask)| net.prefix_len() == 32 && **mask & selecting != 0)
            .map(|(net, mask)| (net.addr(), mask & selecting))
            .collect()
    }

    /// Egress rules whose source covers one of `addrs` (a network
    /// namespace's addresses): by `from.cidr`, or by a selected pod.
    pub fn netns_mask(&self, addrs: &[Ipv4Addr], pods: &PodSources) -> u64 {
        let mut mask = 0;
        for (rule, nets) in &self.netns_cidrs {
            if nets.iter().any(|n| addrs.iter().any(|a| n.contains(a))) {
                mask |= bit(*rule as usize);
            }
        }
        for a in addrs {
            mask |= pods.get(a).copied().unwrap_or(0) & self.globals.egress;
        }
        mask
    }

    /// Whether the kernel must know namespaces (an egress rule has a
    /// `from.cidr` or selects pods).
    pub fn needs_netns(&self) -> bool {
        !self.netns_cidrs.is_empty() || self.selector_bits() & self.globals.egress != 0
    }

    pub fn has_ingress(&self) -> bool {
        self.globals.ingress != 0
    }
}

/// A rule's destination: prefixes, ports and protocol (a service's own).
fn destination(
    r: &PolicyConfig,
    services: &[ServiceConfig],
) -> (Vec<Ipv4Net>, Vec<u16>, Option<Protocol>) {
    if let Some(name) = &r.to.service
        && let Some(s) = services.iter().find(|s| &s.name == name)
    {
        let net = match s.address {
            std::net::IpAddr::V4(a) => vec![Ipv4Net::from(a)],
            std::net::IpAddr::V6(_) => Vec::new(),
        };
        return (net, vec![s.port], Some(s.protocol));
    }
    (v4(&r.to.cidr), r.to.ports.clone(), r.to.protocol)
}

/// `/a/b/` and `a/b` alike: `/a/b`.
pub fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// Each prefix with the rules of every prefix that contains it (itself
/// included): the kernel's longest-prefix match then answers for all.
fn flatten(nets: &[(Ipv4Net, u64)]) -> BTreeMap<Ipv4Net, u64> {
    let prefixes: BTreeSet<Ipv4Net> = nets.iter().map(|(n, _)| *n).collect();
    prefixes
        .into_iter()
        .map(|p| {
            let mask = nets
                .iter()
                .filter(|(n, _)| n.contains(&p))
                .fold(0, |m, (_, b)| m | b);
            (p, mask)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<PolicyConfig> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn each_key_holds_the_rules_it_satisfies() {
        let r = rules(
            "- {name: a, direction: egress, from: {cidr: [10.0.0.0/8]}, to: {cidr: [10.1.0.0/16], ports: [80, 443], protocol: tcp}, action: deny}\n\
             - {name: b, direction: egress, to: {cidr: [10.1.2.0/24]}, action: allow}\n\
             - {name: c, direction: ingress, from: {cidr: [10.2.0.0/16]}, to: {ports: [53], protocol: udp}, action: deny}\n\
             - {name: d, direction: egress, from: {cgroup: /system.slice/nginx.service/}, action: deny}\n",
        );
        let p = PolicyPlan::new(&r, PolicyMode::Enforce, &[]);
        let g = p.globals;
        assert_eq!((g.egress, g.ingress, g.deny), (0b1011, 0b0100, 0b1101));
        assert_eq!(
            (g.no_src_cidr, g.no_cgroup, g.no_dst_cidr),
            (0b1010, 0b0111, 0b1100)
        );
        assert_eq!((g.any_port_tcp, g.any_port_udp), (0b1010, 0b1010));
        assert_eq!((g.audit, g.cgroup_levels), (0, 2));
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        // 10.1.2.0/24 lies inside a's 10.1.0.0/16: it carries both.
        assert_eq!(p.dst[&net("10.1.0.0/16")], 0b0001);
        assert_eq!(p.dst[&net("10.1.2.0/24")], 0b0011);
        assert_eq!(p.src[&net("10.0.0.0/8")], 0b0001);
        // c's 10.2.0.0/16 lies inside a's 10.0.0.0/8 (the kernel then
        // checks the direction).
        assert_eq!(p.src[&net("10.2.0.0/16")], 0b0101);
        let port = |port, proto| PortKey {
            port,
            proto,
            _pad: 0,
        };
        assert_eq!(p.ports[&port(80, IPPROTO_TCP)], 0b0001);
        assert_eq!(p.ports[&port(53, IPPROTO_UDP)], 0b0100);
        assert!(!p.ports.contains_key(&port(80, IPPROTO_UDP)));
        assert_eq!(p.cgroups["/system.slice/nginx.service"], 0b1000);
        // Only egress rules are matched by namespace: c's source is not.
        let none = PodSources::new();
        let a: Ipv4Addr = "10.3.4.5".parse().unwrap();
        assert_eq!(p.netns_mask(&[a], &none), 0b0001);
        assert_eq!(p.netns_mask(&["10.2.0.1".parse().unwrap()], &none), 0b0001);
        assert_eq!(p.netns_mask(&["192.168.0.1".parse().unwrap()], &none), 0);
        assert!(p.needs_netns() && p.has_ingress());
    }

    #[test]
    fn rules_that_select_pods_match_the_selected_addresses_only() {
        let r = rules(
            "- {name: a, direction: egress, from: {namespace: prod, pod_labels: {app: web}}, to: {ports: [8080]}, action: deny}\n\
             - {name: b, direction: ingress, from: {cidr: [10.0.0.0/24], namespace: dev}, action: deny}\n\
             - {name: c, direction: egress, to: {ports: [53]}, action: allow}\n",
        );
        let p = PolicyPlan::new(&r, PolicyMode::Enforce, &[]);
        // Neither a nor b matches any source by default.
        assert_eq!(p.globals.no_src_cidr, 0b100);
        assert_eq!(p.selector_bits(), 0b011);
        assert!(p.needs_netns());
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // No pod selected: the configured prefixes alone.
        assert_eq!(p.src_with(&PodSources::new()), p.src);
        assert_eq!(p.src, BTreeMap::from([(net("10.0.0.0/24"), 0b010)]));
        let pods = PodSources::from([(ip("10.0.0.7"), 0b010), (ip("10.1.0.5"), 0b001)]);
        let src = p.src_with(&pods);
        assert_eq!(
            src,
            BTreeMap::from([
                (net("10.0.0.0/24"), 0b010),
                (net("10.0.0.7/32"), 0b010),
                (net("10.1.0.5/32"), 0b001),
            ])
        );
        // What a restarted agent reads back from the trie.
        assert_eq!(p.pods_in(&src), pods);
        // Only egress rules count for a namespace's addresses.
        assert_eq!(p.netns_mask(&[ip("10.1.0.5")], &pods), 0b001);
        assert_eq!(p.netns_mask(&[ip("10.0.0.7")], &pods), 0);
        assert_eq!(p.netns_mask(&[ip("10.9.9.9")], &pods), 0);
    }

    #[test]
    fn a_service_stands_for_its_address_port_and_protocol() {
        let services: Vec<ServiceConfig> = serde_yaml_ng::from_str(
            "- {name: dns, address: 10.96.0.10, port: 53, protocol: udp, backends: []}\n",
        )
        .unwrap();
        let r = rules("- {name: x, direction: egress, to: {service: dns}, action: deny}\n");
        let p = PolicyPlan::new(&r, PolicyMode::Audit, &services);
        assert_eq!(p.dst[&"10.96.0.10/32".parse().unwrap()], 1);
        assert_eq!(
            p.ports[&PortKey {
                port: 53,
                proto: IPPROTO_UDP,
                _pad: 0
            }],
            1
        );
        assert_eq!((p.globals.any_port_tcp, p.globals.any_port_udp), (0, 0));
        assert_eq!(p.globals.audit, 1);
    }
}
