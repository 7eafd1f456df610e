//! Payload bytes per TCP socket from `sock:sock_send_length` and
//! `sock:sock_recv_length` (net/socket.c: sock_sendmsg_nosec and
//! sock_recvmsg_nosec). Record: sk, family, protocol, ret, flags.
//!
//! These fire in the application's context with the number of bytes the
//! application wrote or read, so the counts are exact payload bytes (no
//! headers, no retransmitted copies) and the current task is the socket's
//! real owner: this is how the server side of accepted connections gets
//! its process.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use weft_common::{
    IPPROTO_TCP,
    conn::{CONN_AGENT, CONN_OWNER_EXACT},
    counters::index,
};

use crate::{
    maps::{TCP_CONNS, config, count},
    owner,
    tp::{Skip, field},
};

/// recvmsg flag: the data stays queued and will be read again.
const MSG_PEEK: i32 = 2;

#[tracepoint]
pub fn weft_sock_send(ctx: TracePointContext) -> u32 {
    let _ = try_sock_io(&ctx, Direction::Send);
    0
}

#[tracepoint]
pub fn weft_sock_recv(ctx: TracePointContext) -> u32 {
    let _ = try_sock_io(&ctx, Direction::Recv);
    0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Send,
    Recv,
}

fn try_sock_io(ctx: &TracePointContext, dir: Direction) -> Result<(), Skip> {
    let off = &config().offsets;
    let protocol: u16 = field(ctx, off.len_protocol)?;
    let sk: u64 = field(ctx, off.len_sk)?;
    let ret: i32 = field(ctx, off.len_ret)?;
    // Peeked data will be read again: neither counted nor captured now.
    if dir == Direction::Recv {
        let flags: i32 = field(ctx, off.len_flags)?;
        if flags & MSG_PEEK != 0 {
            return Ok(());
        }
    }
    // Tell the payload capture that the syscall in progress is on a TCP or
    // UDP socket (unix sockets and the rest are not for the L7 parsers).
    if protocol == IPPROTO_TCP as u16 || protocol == weft_common::IPPROTO_UDP as u16 {
        crate::capture::mark_socket(sk, protocol, ret, dir == Direction::Recv);
    }
    if protocol != IPPROTO_TCP as u16 {
        // UDP is counted per datagram by the cgroup_skb programs.
        return Ok(());
    }
    count(index::SOCK_IO);
    if ret <= 0 {
        return Ok(());
    }
    let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    // SAFETY: `conn` points into the map value; the counters are updated
    // atomically because two threads may use one socket at once.
    unsafe {
        let counter = match dir {
            Direction::Send => &raw mut (*conn).bytes_sent,
            Direction::Recv => &raw mut (*conn).bytes_received,
        };
        crate::atomic::add_u64(counter, ret as u64);
        if (*conn).flags & CONN_OWNER_EXACT == 0 {
            (*conn).owner = owner::current();
            let mut flags = (*conn).flags | CONN_OWNER_EXACT;
            if owner::is_agent() {
                flags |= CONN_AGENT;
            }
            (*conn).flags = flags;
        }
    }
    Ok(())
}
