//! Writing a [`Plan`] into the pinned maps without a moment in which a
//! connect to a service finds a half-written service: backends first,
//! then slots, then the service entry that makes them reachable; stale
//! entries only once nothing points at them any more.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, MapError};
use weft_common::steer::{AffinityEntry, AffinityKey, Backend, ServiceEntry, ServiceKey, SlotKey};

use super::plan::{InKernel, Plan, slot_key};

/// The maps the agent writes.
pub struct ServiceMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub backend_connects: HashMap<MapData, u32, u64>,
    pub service_no_backend: HashMap<MapData, u32, u64>,
    /// Written by the connect program; the agent only removes what no
    /// longer applies.
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
}

/// BPF_NOEXIST: create only.
const NOEXIST: u64 = 1;

impl ServiceMaps {
    /// Service address -> id, as the kernel holds them now.
    pub fn existing_ids(&self) -> BTreeMap<ServiceKey, u32> {
        self.services
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.id))
            .collect()
    }

    /// The ids the kernel holds now (a new plan keeps them).
    pub fn in_kernel(&self) -> InKernel {
        InKernel {
            services: self.existing_ids(),
            backends: self.backends.iter().filter_map(Result::ok).collect(),
        }
    }

    /// Makes the maps hold `plan`; with `prune`, exactly `plan` (else the
    /// services the kernel holds beyond it stay, e.g. Kubernetes services
    /// of an earlier agent until the Services are listed again). Returns
    /// how many stale entries were removed.
    pub fn apply(&mut self, plan: &Plan, prune: bool) -> Result<usize, MapError> {
        let existing = self.existing_ids();
        for s in plan.services.values() {
            for &(id, backend, _) in &s.backends {
                let same = self.backends.get(&id, 0).is_ok_and(|b| b == backend);
                if !same {
                    self.backends.insert(id, backend, 0)?;
                    // A new backend behind this id: its count starts over.
                    self.backend_connects.insert(id, 0, 0)?;
                } else {
                    ignore_exists(self.backend_connects.insert(id, 0, NOEXIST))?;
                }
            }
            for (i, &backend_id) in s.slots.iter().enumerate() {
                self.slots
                    .insert(slot_key(s.entry.id, i as u32), backend_id, 0)?;
            }
            if existing.get(&s.key) == Some(&s.entry.id) {
                ignore_exists(self.service_no_backend.insert(s.entry.id, 0, NOEXIST))?;
            } else {
                self.service_no_backend.insert(s.entry.id, 0, 0)?;
            }
            self.services.insert(s.key, s.entry, 0)?;
        }
        if !prune {
            return Ok(0);
        }
        self.remove_stale(plan)
    }

    fn remove_stale(&mut self, plan: &Plan) -> Result<usize, MapError> {
        let keys: std::collections::BTreeSet<ServiceKey> =
            plan.services.values().map(|s| s.key).collect();
        let slots = plan.slot_keys();
        let backends = plan.backend_ids();
        let ids: std::collections::BTreeSet<u32> = plan.services.keys().copied().collect();
        let mut removed = 0;
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for k in stale {
            self.services.remove(&k)?;
            removed += 1;
        }
        let stale: Vec<SlotKey> = self
            .slots
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !slots.contains(&(k.service, k.slot)))
            .collect();
        for k in stale {
            self.slots.remove(&k)?;
            removed += 1;
        }
        removed += remove_ids(&mut self.backends, |id| backends.contains(id))?;
        removed += remove_ids(&mut self.backend_connects, |id| backends.contains(id))?;
        removed += remove_ids(&mut self.service_no_backend, |id| ids.contains(id))?;
        removed += self.remove_stale_affinity(plan)?;
        Ok(removed)
    }

    /// Forgets the clients of services that are gone or without affinity,
    /// and those sent to a backend that is no longer the service's (the
    /// connect program checks that too, at every lookup; removing them
    /// here only frees the room) or is ejected (the program does not know
    /// ejections: this is what moves such clients on).
    fn remove_stale_affinity(&mut self, plan: &Plan) -> Result<usize, MapError> {
        let current: std::collections::BTreeMap<u32, Backend> = plan
            .services
            .values()
            .filter(|s| s.entry.affinity_timeout_s > 0)
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter(|b| !s.ejected.contains(&b.0))
                    .map(|&(id, b, _)| (id, b))
            })
            .collect();
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                let kept = plan
                    .services
                    .get(&k.service)
                    .is_some_and(|s| s.entry.affinity_timeout_s > 0)
                    && v.backend_id >> 6 == k.service
                    && current
                        .get(&v.backend_id)
                        .is_some_and(|b| b.addr == v.backend.addr && b.port == v.backend.port);
                !kept
            })
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in &stale {
            // The program may have replaced or the LRU evicted it since.
            match self.affinity.remove(k) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

fn remove_ids<V: aya::Pod>(
    map: &mut HashMap<MapData, u32, V>,
    keep: impl Fn(&u32) -> bool,
) -> Result<usize, MapError> {
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|id| !keep(id))
        .collect();
    for id in &stale {
        map.remove(id)?;
    }
    Ok(stale.len())
}

/// An insert with BPF_NOEXIST that found the entry already there is fine.
fn ignore_exists(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}
