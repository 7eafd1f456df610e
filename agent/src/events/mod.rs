//! Kernel events into userspace: the ring buffer readers and the decoding
//! of their records.

pub mod data;
pub mod decode;
pub mod drain;
pub mod reader;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the userspace side of the event pipeline, shared with the
/// status and metrics readers.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Records read from the ring buffer.
    pub read: AtomicU64,
    /// Records dropped because the flow table's queue was full.
    pub queue_full: AtomicU64,
    /// Records that did not decode (wrong size: an agent/kernel mismatch).
    pub decode_errors: AtomicU64,
    /// Payload records that did not decode.
    pub data_decode_errors: AtomicU64,
    /// Payload records read from the data ring.
    pub data_read: AtomicU64,
    /// Payload records dropped because the L7 queue was full.
    pub data_queue_full: AtomicU64,
    /// A CLOCK_MONOTONIC time (the kernel records' clock) before which
    /// every lifecycle event the kernel wrote has been handed to the flow
    /// table's queue: when the reader last began a pass that emptied the
    /// ring. With the queue empty, the flow table knows everything before
    /// it (`TcpTracker::set_events_read`).
    pub events_read_until_ns: AtomicU64,
}

impl PipelineCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
