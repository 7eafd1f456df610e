//! The programs' rare paths, logged with aya-log for `weft agent
//! --bpf-log`: a loss (a full map or ring), a program stopped by a field
//! or a read the running kernel did not give it, a layout from BTF that
//! did not match. What a kernel does differently shows up here first.
//!
//! Off by default: the agent loads the programs with `AYA_LOG_LEVEL` 0,
//! a read-only global, so the verifier knows every log statement is
//! unreachable and drops it; nothing is paid on the hot path. On, a rare
//! path is logged at its 1st, 2nd, 4th, 8th... occurrence on a CPU (its
//! per-CPU counter is a power of two), never once per packet, however
//! often it happens.

use aya_log_ebpf::{
    macro_support::{Level, level_enabled},
    warn,
};
use weft_common::counters::index;

/// Whether counter `idx` counts a loss or an early stop (a rare path).
/// Constant at almost every call site, so the other counters cost nothing.
#[inline(always)]
pub fn is_rare(idx: u32) -> bool {
    matches!(
        idx,
        index::LOST_RING_TCP
            | index::LOST_MAP_TCP
            | index::LOST_MAP_UDP
            | index::DROP_REASON_OVERFLOW
            | index::LOST_RING_DATA
            | index::LOST_MAP_SYSCALL
            | index::LOST_MAP_DROP
            | index::LOST_MAP_LISTENER
            | index::SKIP_MISSING_FIELD
            | index::SKIP_READ_FAILED
    )
}

/// Called with a rare counter and its new per-CPU value; logs when
/// logging is on and `n` is a power of two.
#[inline(always)]
pub fn counted(idx: u32, n: u64) {
    if level_enabled(Level::Warn) && n.is_power_of_two() {
        log_counted(idx, n);
    }
}

/// One call site for every counter's message (a subprogram, so programs
/// that count several losses carry one copy of the logging code).
#[inline(never)]
fn log_counted(idx: u32, n: u64) {
    let ctx = ();
    match idx {
        index::LOST_RING_TCP => warn!(
            &ctx,
            "lost: the lifecycle ring (EVENTS) was full; event {} on this CPU", n
        ),
        index::LOST_MAP_TCP => warn!(
            &ctx,
            "lost: TCP_CONNS is full, a new TCP socket is not tracked; {} on this CPU", n
        ),
        index::LOST_MAP_UDP => warn!(
            &ctx,
            "lost: UDP_FLOWS is full, a new UDP flow is not tracked; {} on this CPU", n
        ),
        index::DROP_REASON_OVERFLOW => warn!(
            &ctx,
            "a drop reason beyond the histogram's slots (counted as overflow); {} on this CPU", n
        ),
        index::LOST_RING_DATA => warn!(
            &ctx,
            "lost: the payload ring (DATA) was full; record {} on this CPU", n
        ),
        index::LOST_MAP_SYSCALL => warn!(
            &ctx,
            "lost: SYSCALL_ARGS is full, a data syscall is not followed; {} on this CPU", n
        ),
        index::LOST_MAP_DROP => warn!(
            &ctx,
            "lost: DROP_FLOWS refused a dropped packet's address pair; {} on this CPU", n
        ),
        index::LOST_MAP_LISTENER => warn!(
            &ctx,
            "lost: TCP_LISTENERS is full, a listener's accepted sockets have no owner; {} on this CPU",
            n
        ),
        index::SKIP_MISSING_FIELD => warn!(
            &ctx,
            "a program stopped: this kernel's tracepoint lacks a field it reads; {} on this CPU", n
        ),
        _ => warn!(
            &ctx,
            "a program stopped: a read of a kernel record or packet failed; {} on this CPU", n
        ),
    }
}

/// The fd fallback (kernels before 6.3) found a socket fd whose `struct
/// socket` or `struct sock` could not be read at the offsets BTF gave:
/// a layout that did not match.
#[inline(always)]
pub fn fd_layout_mismatch(fd: u32, step: u32) {
    if level_enabled(Level::Warn) {
        log_fd_layout(fd, step);
    }
}

#[inline(never)]
fn log_fd_layout(fd: u32, step: u32) {
    let ctx = ();
    warn!(
        &ctx,
        "fd fallback: fd {} is a socket but step {} of file -> socket -> sock could not be read (BTF offsets do not match?)",
        fd,
        step
    );
}

/// A TCP socket moving data whose establishment was not seen was taken
/// into the table (`TCP_ADOPTED`, the `n`th on this CPU): expected for
/// connections older than the agent, a missed or raced event otherwise.
#[inline(always)]
pub fn adopted(local_port: u16, remote_port: u16, state: u32, n: u64) {
    if level_enabled(Level::Warn) && n.is_power_of_two() {
        log_adopted(local_port, remote_port, state, n);
    }
}

#[inline(never)]
fn log_adopted(local_port: u16, remote_port: u16, state: u32, n: u64) {
    let ctx = ();
    warn!(
        &ctx,
        "adopted a TCP socket whose establishment was not seen (ports {} -> {}, state {}); {} on this CPU",
        local_port,
        remote_port,
        state,
        n
    );
}
