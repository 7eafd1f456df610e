//! Reading tracepoint fields at offsets found at load time.

use aya_ebpf::programs::TracePointContext;
use weft_common::{config::NO_FIELD, counters::index};

use crate::maps::count;

/// Why a program stopped early. Counted or ignored by the caller, never
/// turned into a silent "success".
pub enum Skip {
    /// The running kernel's tracepoint lacks a field this program needs.
    MissingField,
    /// The kernel refused the read.
    ReadFailed,
}

/// Reads a `T` at `offset` in the tracepoint record.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, Skip> {
    if offset == NO_FIELD {
        return Err(Skip::MissingField);
    }
    // SAFETY: the offset was read from this tracepoint's format file; the
    // helper behind read_at checks the access and fails cleanly otherwise.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| Skip::ReadFailed)
}

/// Counts a program's early stop, so that every event a program could not
/// handle is counted (the agent reports these as lost).
#[inline(always)]
pub fn counted(result: Result<(), Skip>) {
    match result {
        Ok(()) => {}
        Err(Skip::MissingField) => count(index::SKIP_MISSING_FIELD),
        Err(Skip::ReadFailed) => count(index::SKIP_READ_FAILED),
    }
}
