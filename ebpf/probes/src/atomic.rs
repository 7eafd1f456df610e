//! Atomic adds on map values shared between CPUs.
//!
//! The BPF target has no compare-and-swap, so `core::sync::atomic` offers no
//! `fetch_add` there; the intrinsic below lowers to the BPF `XADD`
//! instruction, which every kernel with BPF supports.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// `*dst += n`, atomically.
#[inline(always)]
pub fn add_u64(dst: *mut u64, n: u64) {
    // SAFETY: callers pass pointers into map values, valid and aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, n) };
}

/// `*dst += n`, atomically.
#[inline(always)]
pub fn add_u32(dst: *mut u32, n: u32) {
    // SAFETY: callers pass pointers into map values, valid and aligned.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(dst, n) };
}
