//! RTT and retransmits per TCP socket.
//!
//! `tcp:tcp_probe` fires for segments received on established sockets
//! (tcp_rcv_established) and carries `srtt` (tp->srtt_us >> 3, in µs) and,
//! on current kernels, `skaddr`. `tcp:tcp_retransmit_skb` fires once per
//! retransmitted segment with `skaddr`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use weft_common::counters::index;

use crate::{
    maps::{TCP_CONNS, config, count},
    tp::{Skip, field},
};

#[tracepoint]
pub fn weft_tcp_probe(ctx: TracePointContext) -> u32 {
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

#[tracepoint]
pub fn weft_tcp_retrans(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_retransmit(&ctx));
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), Skip> {
    count(index::TCP_RETRANSMIT);
    let sk: u64 = field(ctx, config().offsets.retrans_skaddr)?;
    if let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a valid pointer into the map value.
        unsafe {
            crate::atomic::add_u32(&raw mut (*conn).retransmits, 1);
        }
    }
    Ok(())
}
