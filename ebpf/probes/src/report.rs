//! Lifecycle events to the agent through the `EVENTS` ring buffer.

use aya_ebpf::{bindings::BPF_RB_FORCE_WAKEUP, helpers::bpf_ktime_get_ns};
use weft_common::{
    SockTuple,
    conn::{CONN_ACTIVE, TcpConn},
    counters::index,
    event::{EVENT_TCP_FAIL, EVENT_TCP_OPEN, TcpEvent},
};

use crate::maps::{EVENTS, batched_wakeup, count};

/// Sends one event: a snapshot of the socket's state when it is tracked
/// (`conn`), else just the address pair. A full ring is counted.
#[inline(always)]
pub fn send(kind: u32, sk: u64, conn: Option<*const TcpConn>, tuple: SockTuple) {
    let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
        count(index::LOST_RING_TCP);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved entry, large enough for a TcpEvent;
    // every field is written before submit. `conn` points into a map value
    // that outlives this call.
    unsafe {
        (*ev).kind = kind;
        (*ev)._pad = 0;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).sk = sk;
        match conn {
            Some(conn) => core::ptr::copy_nonoverlapping(conn, &raw mut (*ev).conn, 1),
            // Written in place: a `TcpConn` built on the stack costs its
            // 120 bytes in every program that sends events.
            None => {
                core::ptr::write_bytes(&raw mut (*ev).conn, 0, 1);
                (*ev).conn.tuple = tuple;
            }
        }
    }
    // SAFETY: `ev` was written above.
    let (kind, flags) = unsafe { ((*ev).kind, (*ev).conn.flags) };
    // A client's open (or failed connect) wakes the agent at once: it
    // names a steered connection's service by the socket's entry in the
    // steering map, which a new socket at the same address overwrites once
    // this one is gone. Every other event is batched like payload records:
    // a wakeup per event was most of what a new connection cost (an
    // irq_work and a context switch each). The agent reads both rings in
    // one loop that keeps a connection's events ahead of its payload
    // (agent/src/events/reader.rs).
    let client_start =
        flags & CONN_ACTIVE != 0 && (kind == EVENT_TCP_OPEN || kind == EVENT_TCP_FAIL);
    // Forced: a plain wakeup is skipped while batched records wait
    // before this one.
    let wakeup = if client_start {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        batched_wakeup(&EVENTS)
    };
    entry.submit(wakeup);
}
