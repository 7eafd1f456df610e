//! Lifecycle events to the agent through the `EVENTS` ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use weft_common::{SockTuple, conn::TcpConn, counters::index, event::TcpEvent};

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
    // Batched like payload records: a wakeup per event was most of what
    // a new connection cost (ten state changes for its two ends, each an
    // irq_work and a context switch). The agent reads both rings in one
    // loop that keeps a connection's events ahead of its payload
    // (agent/src/events/reader.rs).
    entry.submit(batched_wakeup(&EVENTS));
}
