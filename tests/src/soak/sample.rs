//! One sample of the agent under the soak: its process (resident memory,
//! open descriptors, threads, CPU time, from /proc), its kernel maps' and
//! tables' fill and its losses (`weft status`), its metric series (the
//! samples of `/metrics`), and the traffic the clients made so far.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the traffic started.
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub tasks: u64,
    /// CPU time the agent used since it started (user + system).
    pub cpu_s: f64,
    /// Sample lines of the Prometheus text (each one series).
    pub series: u64,
    /// Each kernel map's entries and capacity.
    pub maps: BTreeMap<String, Fill>,
    pub flow_table: Fill,
    pub flow_store: Fill,
    /// Every non-zero `source/stage` of the agent's lost-event counters.
    pub losses: BTreeMap<String, u64>,
    /// Their sum.
    pub lost: u64,
    /// The clients' counters so far (see `tally::Kind`).
    pub traffic: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Fill {
    pub entries: u64,
    pub capacity: u64,
}

impl Fill {
    pub fn percent(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            100.0 * self.entries as f64 / self.capacity as f64
        }
    }
}

/// Samples `agent` at `t_s`; `traffic` is the clients' tally.
pub fn take(agent: &Agent, t_s: f64, traffic: BTreeMap<String, u64>) -> Sample {
    let pid = agent.pid();
    let status = agent.status_json().expect("weft status -o json");
    let fill = |v: &serde_json::Value| Fill {
        entries: v["entries"].as_u64().unwrap_or(0),
        capacity: v["capacity"].as_u64().unwrap_or(0),
    };
    let maps = status["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["name"].as_str().unwrap_or("?").to_owned(), fill(m)))
        .collect();
    let losses: BTreeMap<String, u64> = status["losses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let key = format!(
                "{}/{}",
                l["source"].as_str().unwrap_or("?"),
                l["stage"].as_str().unwrap_or("?")
            );
            (key, l["total"].as_u64().unwrap_or(0))
        })
        .filter(|(_, total)| *total > 0)
        .collect();
    Sample {
        t_s,
        rss_kib: rss_kib(pid),
        fds: count_entries(&format!("/proc/{pid}/fd")),
        tasks: count_entries(&format!("/proc/{pid}/task")),
        cpu_s: cpu_seconds(pid),
        series: series(&agent.metrics()),
        maps,
        flow_table: fill(&status["flow_table"]),
        flow_store: fill(&status["flow_store"]),
        lost: losses.values().sum(),
        losses,
        traffic,
    }
}

/// The number of series on a Prometheus text page: its sample lines.
pub fn series(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count() as u64
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for the agent (pid {pid}): has it exited?"))
}

fn count_entries(dir: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count() as u64
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the name's closing parenthesis: state is field 3, utime and
    // stime fields 14 and 15.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}
