//! Process identity, valid only in process context (a syscall path).

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    generated::bpf_get_current_comm as get_current_comm_raw,
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

/// Writes the current task as a socket owner into `dst` (map memory), so
/// that no copy of it is built on the stack.
///
/// # Safety
/// `dst` must be valid for writes.
#[inline(always)]
pub unsafe fn fill(dst: *mut Owner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the caller's pointer; helpers check what they write.
    unsafe {
        (*dst).pid = (pid_tgid >> 32) as u32;
        (*dst).tid = pid_tgid as u32;
        (*dst).cgroup_id = bpf_get_current_cgroup_id();
        let comm = &raw mut (*dst).comm;
        if get_current_comm_raw(comm.cast(), COMM_LEN as u32) != 0 {
            comm.write([0; COMM_LEN]);
        }
    }
}

/// True when the current task is the agent itself.
#[inline(always)]
pub fn is_agent() -> bool {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    pid != 0 && pid == config().agent_pid
}
