//! L3/L4 policy: named rules from `policies:` enforced by the steering
//! object's programs (egress in connect4/sendmsg4, ingress in a
//! `cgroup_skb/ingress` program), with every deny and audit recorded and
//! every verdict counted per rule.
//!
//! One task owns the policy maps ([`PolicyTask`]): it writes the rules'
//! masks once, then every second the parts that follow the node (which
//! network namespaces hold a rule's source addresses, which cgroup ids a
//! rule's `from.cgroup` paths have now), and turns the kernel's per-rule
//! counters into `weft_policy_verdicts_total` and `weft policies`.

pub mod plan;
pub mod pods;
pub mod resolve;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{
    Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf, lpm_trie::Key,
    lpm_trie::LpmTrie,
};
use ipnet::Ipv4Net;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_common::{
    IPPROTO_UDP,
    policy::{
        POLICY_INGRESS, POLICY_MAX_RULES, PolicyEvent, PolicyGlobals, PortKey, counter, verdict,
    },
};

use crate::{
    config::steer::{Action, Direction},
    enrich::kubernetes::KubernetesNames,
    export::metrics::LossLabels,
    flow::{
        record::{Endpoint, FlowEvent, FlowRecord, Transport, Verdict},
        store::FlowStore,
    },
};
use plan::PolicyPlan;
use pods::{PodAddresses, PodSources};

/// The `drop_reason` of records a deny decided.
pub const POLICY_DENIED: &str = "POLICY_DENIED";
/// How often namespaces and cgroups are read again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// The policy maps of the steering object.
pub struct PolicyMaps {
    pub globals: Array<MapData, PolicyGlobals>,
    pub src: LpmTrie<MapData, [u8; 4], u64>,
    pub dst: LpmTrie<MapData, [u8; 4], u64>,
    pub ports: HashMap<MapData, PortKey, u64>,
    pub netns: HashMap<MapData, u64, u64>,
    pub cgroups: HashMap<MapData, u64, u64>,
    pub verdicts: PerCpuArray<MapData, u64>,
    pub counters: PerCpuArray<MapData, u64>,
}

fn lpm_key(net: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

impl PolicyMaps {
    /// Makes the maps hold `plan` (with `src`, its source prefixes with
    /// the selected pods, and the namespaces and cgroups known now). When
    /// the rules differ from what the kernel holds, matching is off (all
    /// masks zero) while they are rewritten, so that no connect meets half
    /// of the new rules under the old bits.
    pub fn apply(
        &mut self,
        plan: &PolicyPlan,
        src: &BTreeMap<Ipv4Net, u64>,
        netns: &BTreeMap<u64, u64>,
        cgroups: &BTreeMap<u64, u64>,
    ) -> Result<(), MapError> {
        let current = self.globals.get(&0, 0)?;
        let same = current == plan.globals
            && prefixes(&self.src) == *src
            && prefixes(&self.dst) == plan.dst
            && entries(&self.ports) == plan.ports;
        if !same {
            self.globals.set(0, PolicyGlobals::default(), 0)?;
            // A rule's counters are by its index: other rules start over.
            self.zero_verdicts()?;
            sync_lpm(&mut self.src, src)?;
            sync_lpm(&mut self.dst, &plan.dst)?;
            sync_hash(&mut self.ports, &plan.ports)?;
        }
        self.sync_resolved(netns, cgroups)?;
        if !same {
            self.globals.set(0, plan.globals, 0)?;
        }
        Ok(())
    }

    /// Writes only what follows the node (namespaces, cgroup ids): the
    /// rules themselves are written once, by [`PolicyMaps::apply`].
    pub fn sync_resolved(
        &mut self,
        netns: &BTreeMap<u64, u64>,
        cgroups: &BTreeMap<u64, u64>,
    ) -> Result<(), MapError> {
        sync_hash(&mut self.netns, netns)?;
        sync_hash(&mut self.cgroups, cgroups)
    }

    fn zero_verdicts(&mut self) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: error,
            })
        })?;
        for index in 0..POLICY_MAX_RULES * verdict::COUNT {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|_| {
                MapError::InvalidValueSize {
                    size: 0,
                    expected: 8,
                }
            })?;
            self.verdicts.set(index, zeros, 0)?;
        }
        Ok(())
    }

    /// Rewrites only the source prefixes (the selected pods changed): the
    /// entries that stay are never absent meanwhile.
    pub fn sync_src(&mut self, src: &BTreeMap<Ipv4Net, u64>) -> Result<(), MapError> {
        sync_lpm(&mut self.src, src)
    }
}

/// What a trie holds now.
fn prefixes(trie: &LpmTrie<MapData, [u8; 4], u64>) -> BTreeMap<Ipv4Net, u64> {
    trie.iter()
        .filter_map(Result::ok)
        .filter_map(|(k, v)| {
            let net = Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8).ok()?;
            Some((net, v))
        })
        .collect()
}

fn entries<K: aya::Pod + Ord, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> BTreeMap<K, V> {
    map.iter().filter_map(Result::ok).collect()
}

fn sync_hash<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    want: &BTreeMap<K, V>,
) -> Result<(), MapError> {
    let have = entries(map);
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0)?;
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        map.remove(k)?;
    }
    Ok(())
}

/// New and changed prefixes first, then the stale ones removed: a prefix
/// that stays is never missing from the trie.
fn sync_lpm(
    trie: &mut LpmTrie<MapData, [u8; 4], u64>,
    want: &BTreeMap<Ipv4Net, u64>,
) -> Result<(), MapError> {
    let have = prefixes(trie);
    for (net, mask) in want {
        if have.get(net) != Some(mask) {
            trie.insert(&lpm_key(net), mask, 0)?;
        }
    }
    for net in have.keys().filter(|n| !want.contains_key(n)) {
        trie.remove(&lpm_key(net))?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub direction: String,
    pub verdict: String,
}

#[derive(Clone, Default)]
pub struct PolicyMetrics {
    pub verdicts: Family<PolicyLabels, Counter>,
}

impl PolicyMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "weft_policy_verdicts",
            "Connects, datagrams and new connections' packets decided by a policy rule, by verdict \
             (dropped, audit, allowed)",
            m.verdicts.clone(),
        );
        m
    }
}

/// One rule in `weft policies -o json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub name: String,
    pub direction: String,
    pub action: String,
    /// `enforce` or `audit` (`policy_mode:`).
    pub mode: String,
    /// The source as configured (`any` when none is given).
    pub from: String,
    pub to: String,
    /// Verdicts since the rule was loaded, by the kernel's counters.
    pub allowed: u64,
    pub dropped: u64,
    pub audit: u64,
}

const VERDICTS: [(u8, &str); 3] = [
    (verdict::ALLOWED, "allowed"),
    (verdict::DROPPED, "dropped"),
    (verdict::AUDIT, "audit"),
];

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

/// Owns the policy maps while the agent runs.
pub struct PolicyTask {
    pub maps: PolicyMaps,
    pub plan: PolicyPlan,
    pub metrics: PolicyMetrics,
    /// The cgroup v2 mount, for `from.cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// Netns cookie -> its addresses (the source of egress records).
    pub namespaces: Arc<Mutex<BTreeMap<u64, Vec<Ipv4Addr>>>>,
    /// Verdict counts already added to the metric, by index.
    seen: BTreeMap<u32, u64>,
    pub lost: Family<LossLabels, Counter>,
    lost_seen: u64,
    /// The rules' own maps are written (once, at start); later passes
    /// only follow namespaces, cgroups and pods.
    rules_written: bool,
    /// The pods rules select come from here (rules with `from.namespace`
    /// or `from.pod_labels`).
    pub kubernetes: Option<KubernetesNames>,
    /// The pod list last applied (to skip snapshots that only change the
    /// watcher's health), and what the rules select of it: selected again
    /// only when the list changes, not every pass.
    pods_applied: Option<Arc<Vec<PodAddresses>>>,
    pods_selected: PodSources,
    /// The pods whose addresses the kernel's source trie holds.
    pods_written: PodSources,
}

impl PolicyTask {
    /// Metrics are the caller's to set (`metrics`, `lost`) before
    /// [`PolicyTask::run`]; until then they count into families nobody
    /// exports.
    pub fn new(maps: PolicyMaps, plan: PolicyPlan, cgroup_root: Option<PathBuf>) -> Self {
        Self {
            maps,
            plan,
            metrics: PolicyMetrics::default(),
            cgroup_root,
            namespaces: Arc::default(),
            seen: BTreeMap::new(),
            lost: Family::default(),
            lost_seen: 0,
            rules_written: false,
            kubernetes: None,
            pods_applied: None,
            pods_selected: PodSources::new(),
            pods_written: PodSources::new(),
        }
    }

    /// Resolves pods, namespaces and cgroups and writes everything.
    /// Called at start (before the first connect can meet the rules), then
    /// every [`RESOLVE_INTERVAL`] and whenever the pods change.
    pub fn resolve_and_apply(&mut self) -> Result<(), MapError> {
        let pods = self.selected_pods();
        let netns = self.namespace_masks(&pods);
        let cgroups = self.cgroup_masks();
        if self.rules_written {
            if pods != self.pods_written {
                self.maps.sync_src(&self.plan.src_with(&pods))?;
                self.pods_written = pods;
            }
            return self.maps.sync_resolved(&netns, &cgroups);
        }
        let src = self.plan.src_with(&pods);
        self.maps.apply(&self.plan, &src, &netns, &cgroups)?;
        self.pods_written = pods;
        self.rules_written = true;
        Ok(())
    }

    /// The addresses of the pods the rules select: from the watcher's
    /// latest list; before it, what is in the kernel (written by this
    /// agent, or by an earlier one with the same rules: a restart does not
    /// lift a rule while the pods are listed again).
    fn selected_pods(&mut self) -> PodSources {
        if self.plan.selectors.is_empty() {
            return PodSources::new();
        }
        if let Some(listed) = self.kubernetes.as_ref().and_then(KubernetesNames::pods) {
            if !(self.pods_applied.as_ref()).is_some_and(|applied| Arc::ptr_eq(applied, &listed)) {
                self.pods_selected = pods::select(&self.plan.selectors, &listed);
                self.pods_applied = Some(listed);
            }
            return self.pods_selected.clone();
        }
        if self.rules_written {
            return self.pods_written.clone();
        }
        match self.maps.globals.get(&0, 0) {
            Ok(g) if g == self.plan.globals => self.plan.pods_in(&prefixes(&self.maps.src)),
            _ => PodSources::new(),
        }
    }

    /// Network namespace cookie -> egress rules its addresses are a
    /// source of.
    fn namespace_masks(&mut self, pods: &PodSources) -> BTreeMap<u64, u64> {
        if !self.plan.needs_netns() {
            return BTreeMap::new();
        }
        let handles = resolve::namespace_handles().into_iter().collect();
        match resolve::read_namespaces(handles) {
            Ok(found) => {
                let mut by_cookie = BTreeMap::new();
                let mut masks = BTreeMap::new();
                for ns in found.into_values() {
                    let mask = self.plan.netns_mask(&ns.addrs, pods);
                    if mask != 0 {
                        masks.insert(ns.cookie, mask);
                    }
                    by_cookie.insert(ns.cookie, ns.addrs);
                }
                *self.namespaces.lock().expect("namespaces lock") = by_cookie;
                masks
            }
            Err(e) => {
                // The namespaces known so far stay; the rules are written
                // regardless.
                log::warn!("cannot read network namespaces: {e}");
                entries(&self.maps.netns)
            }
        }
    }

    /// cgroup id -> rules whose `from.cgroup` names it.
    fn cgroup_masks(&self) -> BTreeMap<u64, u64> {
        let mut cgroups = BTreeMap::new();
        if let Some(root) = &self.cgroup_root {
            let paths: Vec<&String> = self.plan.cgroups.keys().collect();
            for (path, id) in resolve::cgroup_ids(root, &paths) {
                *cgroups.entry(id).or_default() |= self.plan.cgroups[&path];
            }
        }
        cgroups
    }

    /// Whether the watcher published a pod list other than the one
    /// applied.
    fn pods_changed(&self) -> bool {
        let listed = self.kubernetes.as_ref().and_then(KubernetesNames::pods);
        match (&listed, &self.pods_applied) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    /// Reads the kernel's per-rule counters into the metric and the
    /// report.
    pub fn refresh(&mut self) -> Vec<PolicyReport> {
        let mode = if self.plan.globals.audit != 0 {
            "audit"
        } else {
            "enforce"
        };
        let mut out = Vec::with_capacity(self.plan.rules.len());
        for (i, rule) in self.plan.rules.iter().enumerate() {
            let mut counts = [0u64; 3];
            for (v, name) in VERDICTS {
                let index = i as u32 * verdict::COUNT + u32::from(v);
                let now: u64 = (self.maps.verdicts.get(&index, 0))
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                counts[usize::from(v)] = now;
                let last = self.seen.insert(index, now).unwrap_or(0);
                let delta = if now >= last { now - last } else { now };
                let labels = PolicyLabels {
                    policy: rule.name.clone(),
                    direction: direction_name(rule.direction).into(),
                    verdict: name.into(),
                };
                // Created at zero so that a rule's series exist before its
                // first hit.
                let metric = self.metrics.verdicts.get_or_create(&labels);
                if delta > 0 {
                    metric.inc_by(delta);
                }
            }
            out.push(PolicyReport {
                name: rule.name.clone(),
                direction: direction_name(rule.direction).into(),
                action: match rule.action {
                    Action::Allow => "allow",
                    Action::Deny => "deny",
                }
                .into(),
                mode: mode.into(),
                from: describe_source(rule),
                to: describe_destination(rule),
                allowed: counts[usize::from(verdict::ALLOWED)],
                dropped: counts[usize::from(verdict::DROPPED)],
                audit: counts[usize::from(verdict::AUDIT)],
            });
        }
        self.count_lost_events();
        out
    }

    fn count_lost_events(&mut self) {
        let now: u64 = (self.maps.counters.get(&counter::EVENT_LOST, 0))
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        let delta = now.saturating_sub(self.lost_seen);
        self.lost_seen = now;
        let metric = self.lost.get_or_create(&LossLabels {
            source: "policy".into(),
            stage: "ring_full".into(),
        });
        if delta > 0 {
            metric.inc_by(delta);
        }
    }

    /// Re-resolves every second and refreshes the report every
    /// `interval` until shutdown.
    pub async fn run(
        mut self,
        interval: Duration,
        out: watch::Sender<Vec<PolicyReport>>,
        shutdown: CancellationToken,
    ) {
        let mut report = tokio::time::interval(interval);
        let mut resolve = tokio::time::interval(RESOLVE_INTERVAL);
        for t in [&mut report, &mut resolve] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = report.tick() => {
                    out.send_replace(self.refresh());
                }
                _ = resolve.tick() => self.resolve_now(),
                alive = crate::steer::replan::kubernetes_changed(&mut self.kubernetes) => {
                    if !alive {
                        self.kubernetes = None;
                    } else if self.pods_changed() {
                        self.resolve_now();
                    }
                }
            }
        }
    }
}

impl PolicyTask {
    fn resolve_now(&mut self) {
        // Namespace reads block (setns, netlink) on a thread of their own;
        // the maps are written here.
        let result = tokio::task::block_in_place(|| self.resolve_and_apply());
        if let Err(e) = result {
            log::error!("cannot update the policy maps: {e}");
        }
    }
}

fn describe_source(rule: &crate::config::PolicyConfig) -> String {
    let mut parts: Vec<String> = rule.from.cidr.iter().map(ToString::to_string).collect();
    if let Some(n) = &rule.from.namespace {
        parts.push(format!("namespace {n}"));
    }
    if !rule.from.pod_labels.is_empty() {
        let labels: Vec<String> = (rule.from.pod_labels.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("pods {}", labels.join(",")));
    }
    if let Some(c) = &rule.from.cgroup {
        parts.push(format!("cgroup {c}"));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(",")
    }
}

fn describe_destination(rule: &crate::config::PolicyConfig) -> String {
    if let Some(s) = &rule.to.service {
        return format!("service {s}");
    }
    let mut parts: Vec<String> = rule.to.cidr.iter().map(ToString::to_string).collect();
    if parts.is_empty() {
        parts.push("any".into());
    }
    let mut out = parts.join(",");
    if !rule.to.ports.is_empty() {
        let ports: Vec<String> = rule.to.ports.iter().map(ToString::to_string).collect();
        out.push_str(&format!(" port {}", ports.join(",")));
    }
    if let Some(p) = rule.to.protocol {
        out.push_str(&format!("/{}", p.as_str()));
    }
    out
}

/// What turns the programs' verdict events into records.
pub struct PolicyRecorder {
    pub rules: Vec<String>,
    pub namespaces: Arc<Mutex<BTreeMap<u64, Vec<Ipv4Addr>>>>,
    pub store: Arc<FlowStore>,
    pub decode_errors: Counter,
}

impl PolicyRecorder {
    /// Reads the verdict ring until shutdown.
    pub async fn run(self, ring: RingBuf<MapData>, shutdown: CancellationToken) {
        let result =
            crate::events::drain::drain(ring, shutdown, |bytes| match self.record(bytes) {
                Some(r) => self.store.push(r),
                None => {
                    self.decode_errors.inc();
                }
            })
            .await;
        if let Err(e) = result {
            log::error!("policy verdicts can no longer be read: {e}");
        }
    }

    fn record(&self, bytes: &[u8]) -> Option<FlowRecord> {
        if bytes.len() < std::mem::size_of::<PolicyEvent>() {
            return None;
        }
        // SAFETY: PolicyEvent is plain old data and the slice is long
        // enough; the read is unaligned.
        let e: PolicyEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let rule = self.rules.get(usize::from(e.rule))?.clone();
        let mut src = Ipv4Addr::from(e.src_ip4);
        if src.is_unspecified() && e.direction != POLICY_INGRESS {
            // An unbound socket: its namespace's first address that is not
            // loopback (what a connect out of it would most likely use).
            let namespaces = self.namespaces.lock().expect("namespaces lock");
            if let Some(a) = namespaces
                .get(&e.netns)
                .and_then(|addrs| addrs.iter().find(|a| !a.is_loopback()))
            {
                src = *a;
            }
        }
        let transport = if e.proto == IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let mut record = FlowRecord::event_between(
            FlowEvent::Policy,
            transport,
            Endpoint::from_addr(IpAddr::V4(src), e.src_port),
            Endpoint::from_addr(IpAddr::V4(Ipv4Addr::from(e.dst_ip4)), e.dst_port),
            e.ts_ns,
        );
        record.verdict = if e.verdict == verdict::AUDIT {
            Verdict::Audit
        } else {
            Verdict::Dropped
        };
        record.drop_reason = Some(POLICY_DENIED.into());
        record.policy = Some(rule);
        record.traffic_direction = Some(
            if e.direction == POLICY_INGRESS {
                "ingress"
            } else {
                "egress"
            }
            .into(),
        );
        Some(record)
    }
}
