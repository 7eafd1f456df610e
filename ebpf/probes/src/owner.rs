//! Process identity, valid only in process context (a syscall path).

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
};
use weft_common::{COMM_LEN, Owner};

use crate::maps::config;

/// The current task as a socket owner.
#[inline(always)]
pub fn current() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    Owner {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: a helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
    }
}

/// True when the current task is the agent itself.
#[inline(always)]
pub fn is_agent() -> bool {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    pid != 0 && pid == config().agent_pid
}
