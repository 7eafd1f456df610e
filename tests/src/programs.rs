//! The BPF programs the kernel holds, and which process holds them: what
//! the lifecycle and fault tests check an agent leaves behind.

use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;

use crate::{agent::Agent, run, try_wait_for};

/// Ids of the loaded BPF programs whose name starts with `weft_`.
pub fn weft_programs() -> Vec<u64> {
    let out = run(&["bpftool", "-j", "prog", "show"]);
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("weft_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Program ids that process `pid` holds through its file descriptors
/// (program fds and link fds both name their program in fdinfo).
pub fn held_by(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids
}

/// weft programs that no process holds: what a dead agent left in the
/// kernel (pinned, or attached without a link). Other agents that may be
/// running on the machine hold theirs, so they do not count.
pub fn leaked() -> Vec<u64> {
    let progs = weft_programs();
    if progs.is_empty() {
        return progs;
    }
    let mut held = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            held.extend(held_by(pid));
        }
    }
    progs.into_iter().filter(|id| !held.contains(id)).collect()
}

/// How many programs `agent` says it loaded.
pub fn expected_programs(agent: &Agent) -> usize {
    let names: BTreeSet<String> = attachments(agent)
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.len()
}

/// The attachments `agent` lists in its status: one row per program and
/// place (a uprobe program is attached at several).
pub fn attachments(agent: &Agent) -> Vec<Value> {
    agent.status_json().expect("status")["programs"]
        .as_array()
        .expect("programs")
        .clone()
}

/// The weft programs `agent` holds.
pub fn programs_of(agent: &Agent) -> Vec<u64> {
    let held = held_by(agent.pid());
    weft_programs()
        .into_iter()
        .filter(|id| held.contains(id))
        .collect()
}

/// Asserts that no weft program is left that no process holds, waiting up
/// to 10 s for one to go. The kernel frees a dead process's programs a
/// moment after it exits (links are released from a workqueue), so a
/// program can be listed after its holder is gone; a real leak stays.
pub fn assert_none_leaked(after: &str) {
    let mut left = Vec::new();
    let gone = try_wait_for(Duration::from_secs(10), || {
        left = leaked();
        left.is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "programs held by no process after {after}: {left:?}"
    );
}
