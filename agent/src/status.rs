//! The agent's health report: what `weft status` shows and what the flow API
//! returns from `GetStatus`. The daemon refreshes it every second.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    /// The agent's process id.
    pub pid: u32,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    pub uptime_seconds: u64,
    pub programs: Vec<ProgramStatus>,
    /// Optional programs the running kernel refused to load or attach.
    #[serde(default)]
    pub failed_programs: Vec<ProgramFailure>,
    /// Kernel features weft looked for, and whether they were found.
    pub features: Vec<FeatureStatus>,
    pub events: Vec<EventSourceStatus>,
    pub losses: Vec<LossStatus>,
    pub maps: Vec<MapStatus>,
    pub flow_table: TableStatus,
    pub flow_store: TableStatus,
}

/// An attached eBPF program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    /// The program's name in the object (and in `bpftool prog`).
    pub name: String,
    /// `tracepoint`, `cgroup_skb`, ...
    pub kind: String,
    /// Where it is attached, e.g. `sock/inet_sock_set_state`.
    pub attach_point: String,
}

/// Attachments made after start (the TLS programs attached to a library
/// first mapped by a process started later): the watcher that makes them
/// adds them, the status report lists them after those made at start.
#[derive(Debug, Clone, Default)]
pub struct LateAttachments(Arc<Mutex<Vec<ProgramStatus>>>);

impl LateAttachments {
    pub fn extend(&self, attached: impl IntoIterator<Item = ProgramStatus>) {
        self.lock().extend(attached);
    }

    pub fn snapshot(&self) -> Vec<ProgramStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ProgramStatus>> {
        // A list of plain values: what a panicking writer left is usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An optional program the kernel refused: what it measures is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramFailure {
    pub name: String,
    pub kind: String,
    pub attach_point: String,
    /// The load error with the first and last lines of the verifier's log.
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStatus {
    pub name: String,
    pub available: bool,
    /// What is lost without it, or where it was found.
    pub detail: String,
}

/// Events read from one kernel source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventSourceStatus {
    pub source: String,
    pub total: u64,
    /// Average over the last status period.
    pub per_second: f64,
}

/// Events lost at one stage of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossStatus {
    pub source: String,
    /// `kernel_ring` (ring buffer full), `userspace_queue` (channel full),
    /// `map_full` (kernel table evicted a live entry), `decode`.
    pub stage: String,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    pub entries: u64,
    pub capacity: u64,
    /// Entries pushed out to make room (flow table: live flows evicted;
    /// flow store: oldest records overwritten).
    pub evicted: u64,
}
