//! TCP resets from `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.
//!
//! Each has two programs, as the other softirq programs (see
//! tcp_state.rs): on the raw tracepoint (`weft_rst_send`,
//! `weft_rst_recv`), from its arguments, with the addresses read from the
//! socket, or for a reset answering a packet no full socket owns, from
//! that packet's headers, at offsets from BTF; a reset sent in softirq
//! (a segment for a closed port, or a port whose listener is gone) that
//! interrupts another BPF program is then not skipped. On the tracepoint
//! (`weft_rst_send_tp`, `weft_rst_recv_tp`), from the record:
//!
//! tcp_receive_reset: skaddr, sport, dport, family, saddr[4], daddr[4],
//! saddr_v6[16], daddr_v6[16] (the socket's side first); older kernels
//! have no `family`.
//! tcp_send_reset: skaddr (NULL for a reset answering a packet that matched
//! no socket, e.g. a SYN to a closed port), saddr and daddr as 28-byte
//! `struct sockaddr_in`/`sockaddr_in6` describing the reset itself (source
//! = this host). Older kernels (5.10, 6.1) trace only the resets a socket
//! sends, with the socket's addresses as 4- and 16-byte arrays.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use weft_common::{
    AF_INET, AF_INET6, SockTuple,
    config::NO_FIELD,
    conn::CONN_AGENT,
    counters::index,
    event::{EVENT_TCP_RESET_RECEIVED, EVENT_TCP_RESET_SENT},
};

use crate::{
    maps::{TCP_CONNS, config, count},
    tp::{Skip, field},
};

/// TCP states of sockets that are not full sockets (no `inet_sock`):
/// TIME_WAIT and NEW_SYN_RECV (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// `TP_PROTO(struct sock *sk)`: a full socket got a reset.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn weft_rst_recv(ctx: RawTracePointContext) -> u32 {
    count(index::TCP_RESET);
    let sk: u64 = ctx.arg(0);
    emit_reset(sk, crate::capture::sock_tuple(sk), EVENT_TCP_RESET_RECEIVED);
    0
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...)`: as
/// the record does, the addresses of a full socket, else those of the
/// packet answered, reversed (the reset goes back to its source).
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn weft_rst_send(ctx: RawTracePointContext) -> u32 {
    count(index::TCP_RESET);
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    if sk != 0 && is_full_socket(sk) {
        emit_reset(sk, crate::capture::sock_tuple(sk), EVENT_TCP_RESET_SENT);
        return 0;
    }
    match answered(skb) {
        Ok(tuple) => emit_reset(sk, tuple, EVENT_TCP_RESET_SENT),
        Err(skip) => crate::tp::counted(Err(skip)),
    }
    0
}

/// Whether `sk` is a full socket, whose `inet_sock` members (the local
/// port) exist.
#[inline(always)]
fn is_full_socket(sk: u64) -> bool {
    let state_at = config().sock.state;
    if state_at == NO_FIELD {
        return false;
    }
    // SAFETY: a kernel read through the checked helper.
    match unsafe { bpf_probe_read_kernel((sk + state_at as u64) as *const u8) } {
        Ok(state) => state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV,
        Err(_) => false,
    }
}

/// The reset's address pair from the packet it answers, whose
/// destination is the reset's source: its IP header and the ports that
/// follow it (IPv6 extension headers are not walked), at the `struct
/// sk_buff` offsets from BTF. Out of line: the 40-byte header copy would
/// otherwise add to the program's frame.
#[inline(never)]
fn answered(skb: u64) -> Result<SockTuple, Skip> {
    let ip = crate::packet::ip_header(skb)?.ok_or(Skip::ReadFailed)?;
    let mut t = SockTuple::default();
    // SAFETY: kernel reads through the checked helper; a failed read ends
    // here, counted.
    let l4 = unsafe {
        let version = bpf_probe_read_kernel(ip as *const u8).map_err(|_| Skip::ReadFailed)? >> 4;
        if version == 4 {
            let h = bpf_probe_read_kernel(ip as *const [u8; 20]).map_err(|_| Skip::ReadFailed)?;
            t.family = AF_INET;
            t.remote_addr[..4].copy_from_slice(&h[12..16]);
            t.local_addr[..4].copy_from_slice(&h[16..20]);
            ip + ((h[0] & 0x0f) as u64) * 4
        } else if version == 6 {
            let h = bpf_probe_read_kernel(ip as *const [u8; 40]).map_err(|_| Skip::ReadFailed)?;
            t.family = AF_INET6;
            t.remote_addr.copy_from_slice(&h[8..24]);
            t.local_addr.copy_from_slice(&h[24..40]);
            ip + 40
        } else {
            return Err(Skip::ReadFailed);
        }
    };
    (t.remote_port, t.local_port) = crate::packet::ports(l4)?;
    Ok(t)
}

#[tracepoint]
pub fn weft_rst_recv_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_reset_received(&ctx));
    0
}

fn try_reset_received(ctx: &TracePointContext) -> Result<(), Skip> {
    let off = &config().offsets;
    count(index::TCP_RESET);
    let sk: u64 = field(ctx, off.rrst_skaddr)?;
    // Older kernels' record has no family: the socket's own addresses
    // (BTF offsets) stand in for the record's.
    if off.rrst_family == NO_FIELD {
        emit_reset(sk, crate::capture::sock_tuple(sk), EVENT_TCP_RESET_RECEIVED);
        return Ok(());
    }
    let family: u16 = field(ctx, off.rrst_family)?;
    let mut tuple = SockTuple {
        local_port: field(ctx, off.rrst_sport)?,
        remote_port: field(ctx, off.rrst_dport)?,
        family,
        ..SockTuple::default()
    };
    if family == AF_INET6 {
        tuple.local_addr = field(ctx, off.rrst_saddr_v6)?;
        tuple.remote_addr = field(ctx, off.rrst_daddr_v6)?;
    } else {
        let s: [u8; 4] = field(ctx, off.rrst_saddr)?;
        let d: [u8; 4] = field(ctx, off.rrst_daddr)?;
        tuple.local_addr[..4].copy_from_slice(&s);
        tuple.remote_addr[..4].copy_from_slice(&d);
    }
    emit_reset(sk, tuple, EVENT_TCP_RESET_RECEIVED);
    Ok(())
}

#[tracepoint]
pub fn weft_rst_send_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_reset_sent(&ctx));
    0
}

fn try_reset_sent(ctx: &TracePointContext) -> Result<(), Skip> {
    let off = &config().offsets;
    count(index::TCP_RESET);
    let sk: u64 = field(ctx, off.srst_skaddr)?;
    // Older kernels' record carries the socket's addresses as 4- and
    // 16-byte arrays (and fires only for a socket): read from the socket.
    if off.srst_saddr == NO_FIELD {
        if sk != 0 {
            emit_reset(sk, crate::capture::sock_tuple(sk), EVENT_TCP_RESET_SENT);
        }
        return Ok(());
    }
    reset_from_record(ctx, sk)
}

/// A sent reset with the addresses of the tracepoint's record (newer
/// kernels). Out of line: its 28-byte address copies would otherwise sit
/// in the program's frame on top of `sock_tuple`'s (the verifier adds
/// them up along the calls).
#[inline(never)]
fn reset_from_record(ctx: &TracePointContext, sk: u64) -> Result<(), Skip> {
    let off = &config().offsets;
    let src: [u8; 28] = field(ctx, off.srst_saddr)?;
    let dst: [u8; 28] = field(ctx, off.srst_daddr)?;
    let family = u16::from_ne_bytes([src[0], src[1]]);
    let mut tuple = SockTuple {
        local_port: u16::from_be_bytes([src[2], src[3]]),
        remote_port: u16::from_be_bytes([dst[2], dst[3]]),
        family,
        ..SockTuple::default()
    };
    match family {
        AF_INET => {
            tuple.local_addr[..4].copy_from_slice(&src[4..8]);
            tuple.remote_addr[..4].copy_from_slice(&dst[4..8]);
        }
        AF_INET6 => {
            tuple.local_addr.copy_from_slice(&src[8..24]);
            tuple.remote_addr.copy_from_slice(&dst[8..24]);
        }
        _ => return Err(Skip::ReadFailed),
    }
    emit_reset(sk, tuple, EVENT_TCP_RESET_SENT);
    Ok(())
}

/// Counts the reset on its socket (when there is one) and tells the agent,
/// with the socket's state when known. Resets are rare: one event each.
fn emit_reset(sk: u64, tuple: SockTuple, kind: u32) {
    let conn = if sk != 0 {
        TCP_CONNS.get_ptr_mut(&sk)
    } else {
        None
    };
    if let Some(conn) = conn {
        // SAFETY: a valid pointer into the map value.
        unsafe {
            if (*conn).flags & CONN_AGENT != 0 {
                return;
            }
            let counter = if kind == EVENT_TCP_RESET_SENT {
                &raw mut (*conn).resets_sent
            } else {
                &raw mut (*conn).resets_received
            };
            crate::atomic::add_u32(counter, 1);
        }
    }
    crate::report::send(kind, sk, conn.map(|c| c.cast_const()), tuple);
}
