//! Packet drops from `skb:kfree_skb` (net/core/skbuff.c,
//! kfree_skb_reason): counted by reason (its values are the running
//! kernel's `enum skb_drop_reason`, named by the agent from the
//! tracepoint's format file), and by address pair and reason in
//! `DROP_FLOWS` for `drop` records, read from the packet's IP header at
//! `struct sk_buff` offsets the agent found in BTF.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
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
/// `enum` TCP state of a socket in TIME_WAIT (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 6;

/// A freed packet, from the raw tracepoint's arguments or the
/// tracepoint's record.
struct Freed {
    /// `struct sk_buff *`; 0 when unknown.
    skb: u64,
    /// `enum skb_drop_reason`; 0 before 5.17.
    reason: u32,
    /// The packet's EtherType, host order.
    l3: u16,
    /// The socket the packet was for (`rx_sk`, 6.12 and later); 0 when
    /// none or unknown.
    rx_sk: u64,
}

// On the raw tracepoint, one program per shape of `TP_PROTO`: the kernel
// refuses to attach a program that reads an argument past the
// tracepoint's last, so each reads only the arguments its kernels have.
// The raw tracepoint is preferred because a drop freed in softirq (a
// retransmitted SYN dropped by a firewall) that interrupts another BPF
// program on its CPU skips the tracepoint's program, not the raw one's
// (see tcp_state.rs).

/// `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason
/// reason, struct sock *rx_sk)`, 6.12 and later.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn weft_skb_drop(ctx: RawTracePointContext) -> u32 {
    crate::tp::counted(try_raw::<4>(&ctx));
    0
}

/// `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason
/// reason)`, 5.17 to 6.11.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn weft_skb_drop3(ctx: RawTracePointContext) -> u32 {
    crate::tp::counted(try_raw::<3>(&ctx));
    0
}

/// `TP_PROTO(struct sk_buff *skb, void *location)`, before 5.17.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn weft_skb_drop2(ctx: RawTracePointContext) -> u32 {
    crate::tp::counted(try_raw::<2>(&ctx));
    0
}

/// On the tracepoint, from its record: where the kernel has no BTF (no
/// `struct sk_buff` offsets) or refuses the raw programs.
#[tracepoint]
pub fn weft_skb_drop_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_record(&ctx));
    0
}

#[inline(always)]
fn try_raw<const ARGS: usize>(ctx: &RawTracePointContext) -> Result<(), Skip> {
    count(index::SKB_DROP);
    let protocol_at = config().skb.protocol;
    if protocol_at == NO_FIELD {
        return Err(Skip::MissingField);
    }
    let skb: u64 = ctx.arg(0);
    // SAFETY: a kernel read through the checked helper.
    let l3 = unsafe { bpf_probe_read_kernel((skb + protocol_at as u64) as *const u16) }
        .map_err(|_| Skip::ReadFailed)?;
    let reason = if ARGS >= 3 {
        ctx.arg::<u64>(2) as u32
    } else {
        0
    };
    let rx_sk = if ARGS >= 4 { ctx.arg::<u64>(3) } else { 0 };
    dropped(&Freed {
        skb,
        reason,
        l3: u16::from_be(l3),
        rx_sk,
    })
}

fn try_record(ctx: &TracePointContext) -> Result<(), Skip> {
    count(index::SKB_DROP);
    let off = &config().offsets;
    // Before 5.17 the record has no reason: every drop gets reason 0,
    // which the agent names NOT_REPORTED_BY_KERNEL on those kernels.
    let reason: u32 = if off.drop_reason == NO_FIELD {
        0
    } else {
        field(ctx, off.drop_reason)?
    };
    dropped(&Freed {
        skb: field(ctx, off.drop_skbaddr).unwrap_or(0),
        reason,
        l3: field(ctx, off.drop_protocol)?,
        rx_sk: field(ctx, off.drop_rx_sk).unwrap_or(0),
    })
}

/// Counts a freed packet as a drop, unless it was not lost: weft's drops
/// are packets the network or the stack lost or refused between two
/// endpoints, as Hubble's are. Left out (counted in `SKB_NOT_DROP`):
/// - packets that are not IPv4 or IPv6 (vsock, netlink, ...);
/// - reasons the agent marked as bookkeeping (`DropFilter::not_drop`:
///   `QUEUE_PURGE`, a closed socket's queues emptied at teardown, and the
///   "not dropped" values);
/// - `NOT_SPECIFIED` frees of multicast or broadcast packets: a group no
///   socket on this host joined (`ip6_mc_input`), not a loss.
#[inline(always)]
fn dropped(freed: &Freed) -> Result<(), Skip> {
    let reason = freed.reason;
    let family = match freed.l3 {
        ETH_P_IP => AF_INET,
        ETH_P_IPV6 => AF_INET6,
        _ => {
            count(index::SKB_NOT_DROP);
            return Ok(());
        }
    };
    let filter = &config().drops;
    if filter.is_not_drop(reason) {
        count(index::SKB_NOT_DROP);
        return Ok(());
    }
    // The packet's addresses, when its header can be read; without them
    // the drop is still counted by reason. The key is written in place,
    // never moved as an `Option`: the 5.10 verifier refuses the copy of
    // its (unwritten) bytes on the path without addresses.
    let mut key = DropKey {
        family,
        reason,
        ..DropKey::default()
    };
    let paired = read_pair(freed.skb, &mut key).unwrap_or(false);
    if reason == filter.not_specified
        && ((paired && is_multicast(&key)) || freed_by_time_wait(freed.rx_sk))
    {
        count(index::SKB_NOT_DROP);
        return Ok(());
    }
    if reason >= DROP_REASON_SLOTS {
        count(index::DROP_REASON_OVERFLOW);
        return Ok(());
    }
    if let Some(slot) = DROP_REASONS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { *slot += 1 };
    }
    if paired {
        record_pair(&key);
    }
    Ok(())
}

/// Whether the receiving socket (`rx_sk`, 6.12 and later) is in
/// TIME_WAIT. `tcp_v4_rcv`/`tcp_v6_rcv` hand a segment for a TIME_WAIT
/// socket to `tcp_timewait_state_process` (which acknowledges the peer's
/// FIN, or a duplicate) and then free it at `discard_it` with
/// `NOT_SPECIFIED`: every connection whose closing end was already
/// orphaned frees the peer's FIN so.
#[inline(always)]
fn freed_by_time_wait(sk: u64) -> bool {
    let state_off = config().sock.state;
    if state_off == NO_FIELD {
        return false;
    }
    if sk == 0 {
        return false;
    }
    // SAFETY: a kernel read through the checked helper.
    let state = unsafe { bpf_probe_read_kernel((sk + state_off as u64) as *const u8) };
    state == Ok(TCP_TIME_WAIT)
}

/// Multicast or broadcast destination (224.0.0.0/4, 255.255.255.255,
/// ff00::/8).
#[inline(always)]
fn is_multicast(key: &DropKey) -> bool {
    let d = &key.dst_addr;
    if key.family == AF_INET {
        d[0] & 0xf0 == 0xe0 || d[..4] == [0xff; 4]
    } else {
        d[0] == 0xff
    }
}

/// The packet's address pair (and ports for TCP and UDP) from its IP
/// header, written into `key` (its family set); false when the packet has
/// no network header, an error when the kernel gave no header offsets or
/// a read failed.
fn read_pair(skb: u64, key: &mut DropKey) -> Result<bool, Skip> {
    let Some(ip) = crate::packet::ip_header(skb)? else {
        return Ok(false);
    };
    let family = key.family;
    // SAFETY: the packet's bytes through the checked helper; a failed read
    // ends here without a record.
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
    if (key.protocol == IPPROTO_TCP || key.protocol == IPPROTO_UDP)
        && let Ok((src, dst)) = crate::packet::ports(l4)
    {
        key.src_port = src;
        key.dst_port = dst;
    }
    Ok(true)
}

/// Counts the drop under its address pair, for `drop` records.
fn record_pair(key: &DropKey) {
    // SAFETY: reads the clock; no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(stats) = DROP_FLOWS.get_ptr_mut(key) {
        // SAFETY: the map value; two CPUs may drop for one pair at once.
        unsafe {
            crate::atomic::add_u64(&raw mut (*stats).packets, 1);
            (*stats).last_ns = now;
        }
        return;
    }
    let stats = DropStats {
        packets: 1,
        last_ns: now,
    };
    if DROP_FLOWS.insert(key, &stats, 0).is_err() {
        count(index::LOST_MAP_DROP);
    }
}
