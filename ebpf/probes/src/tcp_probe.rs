//! RTT and retransmits per TCP socket.
//!
//! `tcp_probe` fires for segments received on established sockets
//! (tcp_rcv_established), `tcp_retransmit_skb` once per retransmitted
//! segment. Both fire in softirq: a segment received, a retransmission
//! timer. Each has two programs:
//!
//! - on the raw tracepoint (`weft_tcp_probe`, `weft_tcp_retrans`): the
//!   arguments (`sk`, `skb`), with the smoothed RTT read from the socket
//!   at the BTF offset of `tcp_sock.srtt_us`. Attached wherever the kernel
//!   takes them: a softirq that interrupts another BPF program on its CPU
//!   (a syscall's capture program) does not skip a raw tracepoint's
//!   program, as it skips a tracepoint's (see tcp_state.rs). The raw
//!   arguments carry the socket on every kernel, so RTT is sampled before
//!   6.4 too, where the tracepoint's record has no `skaddr`.
//! - on the tracepoint (`weft_tcp_probe_tp`, `weft_tcp_retrans_tp`), from
//!   the record: `skaddr` and `srtt` (tp->srtt_us >> 3, in µs).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use weft_common::{config::NO_FIELD, counters::index};

use crate::{
    maps::{TCP_CONNS, config, count},
    tp::{Skip, field},
};

/// `TP_PROTO(struct sock *sk, struct sk_buff *skb)`.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn weft_tcp_probe(ctx: RawTracePointContext) -> u32 {
    crate::tp::counted(try_probe_raw(&ctx));
    0
}

fn try_probe_raw(ctx: &RawTracePointContext) -> Result<(), Skip> {
    count(index::TCP_PROBE);
    let srtt_at = config().sock.tcp_srtt_us;
    if srtt_at == NO_FIELD {
        return Err(Skip::MissingField);
    }
    let sk: u64 = ctx.arg(0);
    // Only tracked sockets are read: most segments are theirs, and the
    // read costs more than the lookup.
    if let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a kernel read through the checked helper.
        let srtt8 = unsafe { bpf_probe_read_kernel((sk + srtt_at as u64) as *const u32) }
            .map_err(|_| Skip::ReadFailed)?;
        // SAFETY: a valid pointer into the map value; a torn concurrent
        // write of one u32 cannot happen.
        unsafe { (*conn).srtt_us = srtt8 >> 3 };
    }
    Ok(())
}

#[tracepoint]
pub fn weft_tcp_probe_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_tcp_probe(&ctx));
    0
}

fn try_tcp_probe(ctx: &TracePointContext) -> Result<(), Skip> {
    let off = &config().offsets;
    count(index::TCP_PROBE);
    let sk: u64 = field(ctx, off.probe_skaddr)?;
    let srtt: u32 = field(ctx, off.probe_srtt)?;
    if let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a valid pointer into the map value; a torn concurrent
        // write of one u32 cannot happen.
        unsafe { (*conn).srtt_us = srtt };
    }
    Ok(())
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...)`.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn weft_tcp_retrans(ctx: RawTracePointContext) -> u32 {
    count(index::TCP_RETRANSMIT);
    retransmitted(ctx.arg(0));
    0
}

#[tracepoint]
pub fn weft_tcp_retrans_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_retransmit(&ctx));
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), Skip> {
    count(index::TCP_RETRANSMIT);
    retransmitted(field(ctx, config().offsets.retrans_skaddr)?);
    Ok(())
}

/// Counts a retransmitted segment on its socket, when tracked.
#[inline(always)]
fn retransmitted(sk: u64) {
    if let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a valid pointer into the map value.
        unsafe {
            crate::atomic::add_u32(&raw mut (*conn).retransmits, 1);
        }
    }
}
