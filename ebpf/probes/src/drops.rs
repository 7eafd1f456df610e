//! Packet drops from `skb:kfree_skb` (net/core/skbuff.c,
//! kfree_skb_reason): counted by reason (its values are the running
//! kernel's `enum skb_drop_reason`, named by the agent from the
//! tracepoint's format file), and by address pair and reason in
//! `DROP_FLOWS` for `drop` records, read from the packet's IP header at
//! `struct sk_buff` offsets the agent found in BTF.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use weft_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
    config::NO_FIELD,
    counters::{DROP_REASON_SLOTS, index},
    drop::{DropKey, DropStats},
};

use crate::{
    maps::{DROP_FLOWS, DROP_REASONS, config, count},
    tp::{Skip, field},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->network_header` when no network header was set.
const UNSET_HEADER: u16 = 0xffff;

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
    record_pair(ctx, reason)
}

/// Counts the drop under the packet's address pair, when the packet is IP
/// and its header can be read.
fn record_pair(ctx: &TracePointContext, reason: u32) -> Result<(), Skip> {
    let off = &config().skb;
    if off.head == NO_FIELD || off.network_header == NO_FIELD {
        return Ok(());
    }
    let skb: u64 = field(ctx, config().offsets.drop_skbaddr)?;
    let l3: u16 = field(ctx, config().offsets.drop_protocol)?;
    let family = match l3 {
        ETH_P_IP => AF_INET,
        ETH_P_IPV6 => AF_INET6,
        _ => return Ok(()),
    };
    // SAFETY: kernel reads through the checked helper; a failed read ends
    // here without a record.
    let (head, nh) = unsafe {
        let head = bpf_probe_read_kernel((skb + off.head as u64) as *const u64)
            .map_err(|_| Skip::ReadFailed)?;
        let nh = bpf_probe_read_kernel((skb + off.network_header as u64) as *const u16)
            .map_err(|_| Skip::ReadFailed)?;
        (head, nh)
    };
    if head == 0 || nh == UNSET_HEADER {
        return Ok(());
    }
    let ip = head + nh as u64;
    let mut key = DropKey {
        family,
        reason,
        ..DropKey::default()
    };
    // SAFETY: as above, the packet's bytes through the checked helper.
    let l4 = unsafe {
        if family == AF_INET {
            let h = bpf_probe_read_kernel(ip as *const [u8; 20]).map_err(|_| Skip::ReadFailed)?;
            key.protocol = h[9];
            key.src_addr[..4].copy_from_slice(&h[12..16]);
            key.dst_addr[..4].copy_from_slice(&h[16..20]);
            ip + ((h[0] & 0x0f) as u64) * 4
        } else {
            let h = bpf_probe_read_kernel(ip as *const [u8; 40]).map_err(|_| Skip::ReadFailed)?;
            // Extension headers are not walked: their packets get no ports.
            key.protocol = h[6];
            key.src_addr.copy_from_slice(&h[8..24]);
            key.dst_addr.copy_from_slice(&h[24..40]);
            ip + 40
        }
    };
    if key.protocol == IPPROTO_TCP || key.protocol == IPPROTO_UDP {
        // SAFETY: as above. Both headers start with the two ports.
        if let Ok(p) = unsafe { bpf_probe_read_kernel(l4 as *const [u8; 4]) } {
            key.src_port = u16::from_be_bytes([p[0], p[1]]);
            key.dst_port = u16::from_be_bytes([p[2], p[3]]);
        }
    }
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(stats) = DROP_FLOWS.get_ptr_mut(&key) {
        // SAFETY: the map value; two CPUs may drop for one pair at once.
        unsafe {
            crate::atomic::add_u64(&raw mut (*stats).packets, 1);
            (*stats).last_ns = now;
        }
        return Ok(());
    }
    let stats = DropStats {
        packets: 1,
        last_ns: now,
    };
    if DROP_FLOWS.insert(&key, &stats, 0).is_err() {
        count(index::LOST_MAP_DROP);
    }
    Ok(())
}
