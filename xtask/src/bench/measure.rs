//! What is measured around one load point, besides the load generator's own
//! figures: CPU time of the whole machine (/proc/stat) and of each pod and
//! the agent (cgroup `cpu.stat`), the run time of weft's eBPF programs
//! (`kernel.bpf_stats_enabled`, read with bpftool), and weft's counters.
//!
//! eBPF programs run on the threads that trigger their hooks (the client,
//! the server, softirq work on their behalf), so their cost is in the pods'
//! CPU time and the machine's, not in the agent's own: CPU per request is
//! reported for the machine and for the lab's cgroups together.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::lab::Lab;
use super::load::round;
use super::weft::{Agent, Counters};
use crate::cmd::read;

/// Run time (ns) and run count per program name.
pub type ProgramStats = BTreeMap<String, (u64, u64)>;

/// Counters at one instant.
pub struct Snapshot {
    at: Instant,
    /// /proc/stat: busy and total CPU time of all CPUs, in µs.
    system_busy_us: u64,
    system_total_us: u64,
    client_us: u64,
    server_us: u64,
    agent_us: u64,
    /// Run time (ns) and run count of each of the agent's programs.
    bpf: ProgramStats,
    /// Programs named `weft_*` loaded by another process (another agent on
    /// this machine): they add to every configuration, B0 included.
    pub foreign_programs: usize,
}

/// The difference between two snapshots: what one load point cost.
#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub seconds: f64,
    /// All CPUs, busy time, µs.
    pub system_us: u64,
    /// CPUs available over the interval (for utilisation).
    pub system_capacity_us: u64,
    pub client_us: u64,
    pub server_us: u64,
    pub agent_us: u64,
    /// Per program: run time (ns), runs.
    pub bpf: ProgramStats,
    pub foreign_programs: usize,
    /// weft's events read and lost over the point (agent configurations).
    pub events: Option<f64>,
    pub lost: Option<BTreeMap<String, f64>>,
    /// L7 streams weft could not frame over the point.
    pub parse_errors: Option<f64>,
    /// L7 requests weft recorded over the point.
    pub l7_requests: Option<f64>,
    /// weft's resident memory at the end of the point, KiB.
    pub agent_rss_kib: Option<u64>,
}

impl Snapshot {
    pub fn take(lab: &Lab, agent: Option<&Agent>) -> Result<Self> {
        let (system_busy_us, system_total_us) = proc_stat()?;
        let (bpf, foreign_programs) = bpf_programs(agent)?;
        Ok(Self {
            at: Instant::now(),
            system_busy_us,
            system_total_us,
            client_us: lab.client.cpu_usec()?,
            server_us: lab.server.cpu_usec()?,
            agent_us: lab.agent_cpu_usec()?,
            bpf,
            foreign_programs,
        })
    }

    /// What happened between `self` and the later `after`.
    pub fn cost(&self, after: &Snapshot) -> Cost {
        let bpf = after
            .bpf
            .iter()
            .map(|(name, &(ns, runs))| {
                let (ns0, runs0) = self.bpf.get(name).copied().unwrap_or_default();
                (
                    name.clone(),
                    (ns.saturating_sub(ns0), runs.saturating_sub(runs0)),
                )
            })
            .collect();
        Cost {
            seconds: (after.at - self.at).as_secs_f64(),
            system_us: after.system_busy_us.saturating_sub(self.system_busy_us),
            system_capacity_us: after.system_total_us.saturating_sub(self.system_total_us),
            client_us: after.client_us.saturating_sub(self.client_us),
            server_us: after.server_us.saturating_sub(self.server_us),
            agent_us: after.agent_us.saturating_sub(self.agent_us),
            bpf,
            foreign_programs: self.foreign_programs.max(after.foreign_programs),
            events: None,
            lost: None,
            parse_errors: None,
            l7_requests: None,
            agent_rss_kib: None,
        }
    }
}

impl Cost {
    /// Adds the agent's counters between `before` and `after`.
    pub fn with_counters(mut self, before: &Counters, after: &Counters) -> Self {
        self.events = Some(after.events - before.events);
        self.l7_requests = Some(after.l7_requests - before.l7_requests);
        self.parse_errors = Some(after.parse_errors - before.parse_errors);
        let lost = after
            .lost
            .iter()
            .map(|(k, v)| (k.clone(), v - before.lost.get(k).copied().unwrap_or(0.0)))
            .collect();
        self.lost = Some(lost);
        self
    }

    pub fn lab_us(&self) -> u64 {
        self.client_us + self.server_us + self.agent_us
    }

    pub fn bpf_ns(&self) -> u64 {
        self.bpf.values().map(|(ns, _)| ns).sum()
    }

    /// Events lost for want of capacity (rings, queues, tables, budgets).
    pub fn lost_total(&self) -> Option<f64> {
        self.lost.as_ref().map(|l| l.values().sum())
    }

    /// L7 streams weft could not frame (not lost for want of capacity, so
    /// the bench keeps them apart).
    pub fn parse_errors(&self) -> Option<f64> {
        self.parse_errors
    }

    /// The JSON of this cost, with per-request figures for `requests`.
    pub fn to_json(&self, requests: u64) -> Value {
        let per = |x: f64| {
            if requests > 0 {
                round(x / requests as f64, 2)
            } else {
                0.0
            }
        };
        let programs: serde_json::Map<String, Value> = self
            .bpf
            .iter()
            .map(|(name, &(ns, runs))| {
                let mean = if runs > 0 {
                    ns as f64 / runs as f64
                } else {
                    0.0
                };
                let v = json!({
                    "run_time_ns": ns,
                    "run_cnt": runs,
                    "ns_per_run": round(mean, 1),
                    "ns_per_request": per(ns as f64),
                });
                (name.clone(), v)
            })
            .collect();
        json!({
            "seconds": round(self.seconds, 3),
            "cpu_us": {
                "system": self.system_us,
                "system_capacity": self.system_capacity_us,
                "client_pod": self.client_us,
                "server_pod": self.server_us,
                "agent": self.agent_us,
            },
            "cpu_us_per_request": {
                "system": per(self.system_us as f64),
                "lab": per(self.lab_us() as f64),
                "client_pod": per(self.client_us as f64),
                "server_pod": per(self.server_us as f64),
                "agent": per(self.agent_us as f64),
            },
            "bpf_ns_per_request": per(self.bpf_ns() as f64),
            "bpf_programs": programs,
            "foreign_weft_programs": self.foreign_programs,
            "weft_events": self.events,
            "weft_events_lost": self.lost,
            "weft_l7_requests": self.l7_requests,
            "weft_l7_requests_per_request": self.l7_requests.map(per),
            "weft_rss_kib": self.agent_rss_kib,
        })
    }
}

/// Busy and total time of all CPUs from the first line of /proc/stat, in
/// µs. Busy is everything but idle and iowait.
fn proc_stat() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .filter_map(|t| t.parse().ok())
        .collect();
    if ticks.len() < 8 {
        anyhow::bail!("unexpected /proc/stat: {line}");
    }
    let total: u64 = ticks.iter().sum();
    let idle = ticks[3] + ticks[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let us_per_tick = 1_000_000 / u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
    Ok(((total - idle) * us_per_tick, total * us_per_tick))
}

/// Run time and count of the agent's programs (by id, and its pinned
/// steering programs), and how many `weft_*` programs other processes
/// loaded.
fn bpf_programs(agent: Option<&Agent>) -> Result<(ProgramStats, usize)> {
    let out = read(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: Value = serde_json::from_str(&out).context("parsing `bpftool -j prog show`")?;
    let mut ours = BTreeMap::new();
    let mut foreign = 0;
    for prog in progs.as_array().into_iter().flatten() {
        let name = prog["name"].as_str().unwrap_or_default();
        if !name.starts_with("weft_") {
            continue;
        }
        let id = prog["id"].as_u64().unwrap_or(0);
        // Steering programs are held by their pinned links, not by the
        // agent's descriptors; B3's are removed after each phase, so any
        // found while an agent runs are its own.
        let pinned = name.starts_with("weft_steer_") || name.starts_with("weft_policy_");
        if !agent.is_some_and(|a| pinned || a.bpf.programs.contains(&id)) {
            foreign += 1;
            continue;
        }
        let entry = ours.entry(name.to_owned()).or_insert((0, 0));
        entry.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
        entry.1 += prog["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok((ours, foreign))
}

/// The BPF objects a process holds, from its file descriptors' fdinfo
/// (bpftool's `pids` needs a kernel iterator this machine's bpftool lacks).
#[derive(Clone, Debug, Default)]
pub struct BpfObjects {
    pub programs: BTreeSet<u64>,
    /// `memlock` of each map, by map id.
    pub maps: BTreeMap<u64, u64>,
}

impl BpfObjects {
    pub fn of_process(pid: u32) -> Result<Self> {
        let mut objects = Self::default();
        let dir = format!("/proc/{pid}/fdinfo");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            // A descriptor may close while we read.
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            if let Some(id) = field("prog_id:") {
                objects.programs.insert(id);
            } else if let Some(id) = field("map_id:") {
                objects.maps.insert(id, field("memlock:").unwrap_or(0));
            }
        }
        Ok(objects)
    }

    pub fn map_bytes(&self) -> u64 {
        self.maps.values().sum()
    }
}
