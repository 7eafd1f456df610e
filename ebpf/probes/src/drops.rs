//! Packet drops by reason from `skb:kfree_skb` (net/core/skbuff.c,
//! kfree_skb_reason). Only the `reason` field is read; its values are the
//! running kernel's `enum skb_drop_reason`, named by the agent from the
//! tracepoint's format file.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use weft_common::counters::{DROP_REASON_SLOTS, index};

use crate::{
    maps::{DROP_REASONS, config, count},
    tp::{Skip, field},
};

#[tracepoint]
pub fn weft_skb_drop(ctx: TracePointContext) -> u32 {
    let _ = try_drop(&ctx);
    0
}

fn try_drop(ctx: &TracePointContext) -> Result<(), Skip> {
    count(index::SKB_DROP);
    let reason: u32 = field(ctx, config().offsets.drop_reason)?;
    if reason >= DROP_REASON_SLOTS {
        count(index::DROP_REASON_OVERFLOW);
        return Ok(());
    }
    if let Some(slot) = DROP_REASONS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { *slot += 1 };
    }
    Ok(())
}
