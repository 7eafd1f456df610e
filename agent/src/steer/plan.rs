//! What the steering maps should hold for a configuration: a pure
//! function of the `services:` section (and of the ids already in use, so
//! that a service keeps its id across restarts and reloads).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use weft_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    steer::{Backend, STEER_MAX_SLOTS, ServiceEntry, ServiceKey, SlotKey},
};

use crate::config::{
    ServiceConfig,
    steer::{HealthConfig, Protocol, ServiceSource, SessionAffinity},
};

/// One service as the kernel will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    pub name: String,
    pub source: ServiceSource,
    pub key: ServiceKey,
    pub entry: ServiceEntry,
    /// (backend id, backend, weight), in configuration order.
    pub backends: Vec<(u32, Backend, u32)>,
    /// Backend id of each slot (ejected backends hold none).
    pub slots: Vec<u32>,
    /// Backends out of rotation (passive health).
    pub ejected: BTreeSet<u32>,
    /// Passive health settings (the defaults with the service's
    /// overrides).
    pub health: HealthConfig,
}

impl PlannedService {
    /// The backend ids, in configuration order.
    pub fn backend_ids(&self) -> Vec<u32> {
        self.backends.iter().map(|b| b.0).collect()
    }

    /// This service with `ejected` out of rotation: the slots are shared
    /// by weight among the others.
    pub fn with_ejected(&self, ejected: BTreeSet<u32>) -> PlannedService {
        let in_rotation: Vec<(u32, u32)> = self
            .backends
            .iter()
            .filter(|b| !ejected.contains(&b.0))
            .map(|&(id, _, weight)| (id, weight))
            .collect();
        let slots = fill_slots(&in_rotation);
        PlannedService {
            entry: ServiceEntry {
                slots: slots.len() as u32,
                ..self.entry
            },
            slots,
            ejected,
            ..self.clone()
        }
    }
}

/// Every service, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub services: BTreeMap<u32, PlannedService>,
}

/// The ids the kernel's maps already hold: a service keeps its id, and a
/// backend of a service keeps its id, across restarts and changes (its
/// connect count and passive health stay with it).
#[derive(Debug, Clone, Default)]
pub struct InKernel {
    /// SERVICES: service address -> id.
    pub services: BTreeMap<ServiceKey, u32>,
    /// BACKENDS: backend id -> backend.
    pub backends: BTreeMap<u32, Backend>,
}

impl Plan {
    pub fn new(services: &[ServiceConfig], existing: &InKernel, health: &HealthConfig) -> Plan {
        let keys: Vec<ServiceKey> = services.iter().map(service_key).collect();
        let ids = assign_ids(&keys, &existing.services);
        let mut plan = Plan::default();
        for ((s, key), id) in services.iter().zip(keys).zip(ids) {
            let wanted: Vec<Backend> = s
                .backends
                .iter()
                .map(|b| backend(b.address, b.port))
                .collect();
            let backends: Vec<(u32, Backend, u32)> =
                assign_backend_ids(id, &wanted, &existing.backends)
                    .into_iter()
                    .zip(wanted)
                    .zip(&s.backends)
                    .map(|((bid, b), c)| (bid, b, c.weight))
                    .collect();
            let weighted: Vec<(u32, u32)> = backends.iter().map(|&(id, _, w)| (id, w)).collect();
            let slots = fill_slots(&weighted);
            let entry = ServiceEntry {
                id,
                slots: slots.len() as u32,
                affinity_timeout_s: affinity_timeout_s(s),
                _pad: 0,
            };
            plan.services.insert(
                id,
                PlannedService {
                    name: s.name.clone(),
                    source: s.source,
                    key,
                    entry,
                    backends,
                    slots,
                    ejected: BTreeSet::new(),
                    health: health.with(&s.health),
                },
            );
        }
        plan
    }

    pub fn slot_keys(&self) -> BTreeSet<(u32, u32)> {
        self.services
            .values()
            .flat_map(|s| (0..s.entry.slots).map(move |i| (s.entry.id, i)))
            .collect()
    }

    pub fn backend_ids(&self) -> BTreeSet<u32> {
        self.services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| b.0))
            .collect()
    }
}

/// The kernel's affinity timeout of a service: 0 without
/// `session_affinity: client_ip`, else whole seconds (validated to
/// 1..=86400, so it fits and is never 0).
pub fn affinity_timeout_s(s: &ServiceConfig) -> u32 {
    match s.session_affinity {
        SessionAffinity::None => 0,
        SessionAffinity::ClientIp => s.session_affinity_timeout.as_secs().clamp(1, 86_400) as u32,
    }
}

pub fn slot_key(service: u32, slot: u32) -> SlotKey {
    SlotKey { service, slot }
}

/// Backend ids: the service id in the high bits, the backend's index in
/// the low six (at most 64 backends per service).
pub fn backend_id(service: u32, index: usize) -> u32 {
    (service << 6) | index as u32
}

pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    let (addr, family) = addr16(s.address);
    ServiceKey {
        addr,
        port: s.port,
        proto: match s.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        },
        family,
    }
}

pub fn backend(address: IpAddr, port: u16) -> Backend {
    let (addr, family) = addr16(address);
    Backend {
        addr,
        port,
        family,
        ..Backend::default()
    }
}

/// An address in the maps' layout: IPv4 in the first four bytes.
fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

/// The address stored in a map entry.
pub fn ip_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == 6 {
        IpAddr::from(*addr)
    } else {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    }
}

/// Keeps the id a key already has; new keys get the smallest ids no
/// entry of the kernel's map has (not even one about to be removed: its
/// slots must not be overwritten while connects can still reach them).
fn assign_ids(keys: &[ServiceKey], existing: &BTreeMap<ServiceKey, u32>) -> Vec<u32> {
    let kept: BTreeSet<u32> = existing.values().copied().collect();
    let mut next = 1;
    keys.iter()
        .map(|k| {
            if let Some(&id) = existing.get(k) {
                return id;
            }
            while kept.contains(&next) {
                next += 1;
            }
            next += 1;
            next - 1
        })
        .collect()
}

/// Backend ids of service `service`: a backend the kernel already holds
/// under one of the service's ids keeps it; the others take the lowest
/// indexes left (at most 64 backends, so there is always one).
fn assign_backend_ids(
    service: u32,
    wanted: &[Backend],
    existing: &BTreeMap<u32, Backend>,
) -> Vec<u32> {
    let same =
        |a: &Backend, b: &Backend| a.addr == b.addr && a.port == b.port && a.family == b.family;
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let kept: Vec<Option<u32>> = wanted
        .iter()
        .map(|b| {
            let found = existing
                .iter()
                .filter(|(id, _)| *id >> 6 == service && !taken.contains(*id))
                .find(|(_, old)| same(old, b))
                .map(|(id, _)| *id);
            if let Some(id) = found {
                taken.insert(id);
            }
            found
        })
        .collect();
    let mut next = 0;
    kept.into_iter()
        .map(|k| {
            k.unwrap_or_else(|| {
                while taken.contains(&backend_id(service, next)) {
                    next += 1;
                }
                taken.insert(backend_id(service, next));
                backend_id(service, next)
            })
        })
        .collect()
}

/// The slots of backends (id, weight): each id repeated as many times as
/// [`slot_counts`] gives it.
fn fill_slots(backends: &[(u32, u32)]) -> Vec<u32> {
    let weights: Vec<u32> = backends.iter().map(|b| b.1).collect();
    slot_counts(&weights)
        .iter()
        .zip(backends)
        .flat_map(|(&n, &(id, _))| std::iter::repeat_n(id, n as usize))
        .collect()
}

/// Slots per backend, proportional to the weights: exactly the weights
/// when they add up to at most STEER_MAX_SLOTS, else scaled down by
/// largest remainder with at least one slot each.
pub fn slot_counts(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let max = u64::from(STEER_MAX_SLOTS);
    if total <= max {
        return weights.to_vec();
    }
    // Each backend first gets one slot, the rest is shared by weight.
    let spare = max - weights.len() as u64;
    let mut counts: Vec<u32> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = u64::from(w) * spare;
        counts.push(1 + (exact / total) as u32);
        remainders.push((exact % total, i));
    }
    let mut left = max - counts.iter().map(|&c| u64::from(c)).sum::<u64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn slots_follow_the_weights() {
        assert_eq!(slot_counts(&[1, 1, 1]), vec![1, 1, 1]);
        assert_eq!(slot_counts(&[2, 1, 1]), vec![2, 1, 1]);
        assert_eq!(slot_counts(&[]), Vec::<u32>::new());
        let big = slot_counts(&[1000, 1000, 1]);
        assert_eq!(big.iter().sum::<u32>(), STEER_MAX_SLOTS);
        assert_eq!(big, vec![128, 127, 1]);
        let many = slot_counts(&[1000; 64]);
        assert_eq!(many, vec![4; 64]);
    }

    #[test]
    fn a_plan_keeps_existing_ids() {
        let c = Config::from_yaml(
            "services:\n  - name: a\n    address: 10.96.0.1\n    port: 80\n    backends:\n      - {address: 10.0.0.2, port: 8080, weight: 2}\n      - {address: 10.0.0.3, port: 8080}\n  - name: b\n    address: 10.96.0.2\n    port: 80\n",
        )
        .unwrap();
        let fresh = Plan::new(&c.services, &InKernel::default(), &c.health);
        let ids: Vec<u32> = fresh.services.keys().copied().collect();
        assert_eq!(ids, vec![1, 2]);
        let a = &fresh.services[&1];
        assert_eq!(a.name, "a");
        assert_eq!(a.entry.slots, 3);
        assert_eq!(a.slots, vec![64, 64, 65]);
        assert_eq!(ip_of(&a.key.addr, a.key.family).to_string(), "10.96.0.1");
        assert_eq!(fresh.services[&2].entry.slots, 0);
        assert_eq!(a.entry.affinity_timeout_s, 0);
        // b already had id 1 in the kernel: it keeps it and a takes 2.
        let existing = InKernel {
            services: BTreeMap::from([(service_key(&c.services[1]), 1)]),
            ..InKernel::default()
        };
        let again = Plan::new(&c.services, &existing, &c.health);
        assert_eq!(again.services[&1].name, "b");
        assert_eq!(again.services[&2].name, "a");
        assert_eq!(again.slot_keys().len(), 3);
        assert_eq!(again.backend_ids(), BTreeSet::from([128, 129]));
        // Ejecting the weight-2 backend leaves the other all the slots.
        let out = again.services[&2].with_ejected(BTreeSet::from([128]));
        assert_eq!((out.entry.slots, out.slots.clone()), (1, vec![129]));
        assert_eq!(out.backends.len(), 2);
        let back = out.with_ejected(BTreeSet::new());
        assert_eq!(back.slots, again.services[&2].slots);
    }

    #[test]
    fn backends_keep_their_ids_when_others_come_and_go() {
        let yaml = |backends: &str| {
            Config::from_yaml(&format!(
                "services:\n  - name: a\n    address: 10.96.0.1\n    port: 80\n    backends:\n{backends}"
            ))
            .unwrap()
        };
        let c = yaml(
            "      - {address: 10.0.0.2, port: 8080}\n      - {address: 10.0.0.3, port: 8080}\n      - {address: 10.0.0.4, port: 8080}\n",
        );
        let first = Plan::new(&c.services, &InKernel::default(), &c.health);
        assert_eq!(first.services[&1].backend_ids(), vec![64, 65, 66]);
        let in_kernel = InKernel {
            services: BTreeMap::from([(first.services[&1].key, 1)]),
            backends: first.services[&1]
                .backends
                .iter()
                .map(|&(id, b, _)| (id, b))
                .collect(),
        };
        // 10.0.0.2 goes, 10.0.0.5 comes: .3 and .4 keep 65 and 66, the
        // newcomer takes the index left free.
        let c = yaml(
            "      - {address: 10.0.0.3, port: 8080}\n      - {address: 10.0.0.4, port: 8080}\n      - {address: 10.0.0.5, port: 8080}\n",
        );
        let next = Plan::new(&c.services, &in_kernel, &c.health);
        assert_eq!(next.services[&1].backend_ids(), vec![65, 66, 64]);
    }

    #[test]
    fn affinity_reaches_the_service_entry() {
        let c = Config::from_yaml(
            "services:\n  - name: a\n    address: 10.96.0.1\n    port: 80\n    session_affinity: client_ip\n  - name: b\n    address: 10.96.0.2\n    port: 80\n    session_affinity: client_ip\n    session_affinity_timeout: 90s\n",
        )
        .unwrap();
        let plan = Plan::new(&c.services, &InKernel::default(), &c.health);
        assert_eq!(plan.services[&1].entry.affinity_timeout_s, 10_800);
        assert_eq!(plan.services[&2].entry.affinity_timeout_s, 90);
    }
}
