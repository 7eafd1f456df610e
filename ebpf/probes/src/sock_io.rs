//! Payload bytes per TCP socket from `sock:sock_send_length` and
//! `sock:sock_recv_length` (net/socket.c: sock_sendmsg_nosec and
//! sock_recvmsg_nosec). Record: sk, family, protocol, ret, flags.
//!
//! These fire in the application's context with the number of bytes the
//! application wrote or read, so the counts are exact payload bytes (no
//! headers, no retransmitted copies) and the current task is the socket's
//! real owner: this is how the server side of accepted connections gets
//! its process.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::tracepoint,
    programs::TracePointContext,
};
use weft_common::{
    IPPROTO_TCP, SockTuple,
    conn::{
        CONN_ACTIVE, CONN_ADOPTED, CONN_AGENT, CONN_ESTABLISHED, CONN_OWNER_EXACT, CONN_PASSIVE,
        ListenKey, tcp_state,
    },
    counters::index,
    data::role,
    event::EVENT_TCP_OPEN,
};

use crate::{
    maps::{CONN_SCRATCH, TCP_CONNS, TCP_LISTENERS, config, count},
    owner,
    tp::{Skip, field},
};

/// recvmsg flag: the data stays queued and will be read again.
pub const MSG_PEEK: i32 = 2;

#[tracepoint]
pub fn weft_sock_send(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_sock_io(&ctx, Direction::Send));
    0
}

#[tracepoint]
pub fn weft_sock_recv(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_sock_io(&ctx, Direction::Recv));
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
    let recv = dir == Direction::Recv;
    let pos = account(sk, protocol, ret as i64, recv);
    // Tell the payload capture that the syscall in progress is on a TCP or
    // UDP socket (unix sockets and the rest are not for the L7 parsers).
    if protocol == IPPROTO_TCP as u16 || protocol == weft_common::IPPROTO_UDP as u16 {
        crate::capture::mark_socket(sk, protocol, ret, recv, pos);
    }
    Ok(())
}

/// Where a read/write's bytes sit in their socket's stream, and which
/// end of its connection the socket is: what its payload records carry.
#[derive(Clone, Copy, Default)]
pub struct StreamPos {
    /// The socket's count of bytes in this direction before these.
    pub offset: u64,
    /// `weft_common::data::role::*`.
    pub role: u8,
}

/// The role recorded for a tracked connection: its end is known from how
/// it began (connect or accept); an adopted one's is only guessed, and
/// the agent guesses it again from the same ports.
#[inline(always)]
fn role(flags: u32) -> u8 {
    if flags & CONN_ADOPTED != 0 {
        role::UNKNOWN
    } else if flags & CONN_ACTIVE != 0 {
        role::CLIENT
    } else if flags & CONN_PASSIVE != 0 {
        role::SERVER
    } else {
        role::UNKNOWN
    }
}

/// The role of socket `sk`, looked up (for bytes that passed uncaptured,
/// which carry no [`StreamPos`]).
#[inline(always)]
pub fn role_of(sk: u64) -> u8 {
    // SAFETY: the flags are copied out of the map value.
    TCP_CONNS
        .get_ptr(&sk)
        .map_or(role::UNKNOWN, |conn| role(unsafe { (*conn).flags }))
}

/// Counts `ret` bytes (a syscall's result: negative for an error) moved
/// by the current task through the socket `sk`, and returns where these
/// bytes start in the socket's stream (as far as the agent has seen it),
/// so that the L7 parsers can tell a lost payload record from the next
/// one, with the socket's role (nothing for UDP and errors: nothing of
/// them is captured). Called here from the socket tracepoints, and from
/// the data syscalls' exits on kernels without them (capture.rs).
#[inline(always)]
pub fn account(sk: u64, protocol: u16, ret: i64, recv: bool) -> StreamPos {
    if protocol != IPPROTO_TCP as u16 {
        // UDP is counted per datagram by the cgroup_skb programs.
        return StreamPos::default();
    }
    count(index::SOCK_IO);
    if ret <= 0 {
        return StreamPos::default();
    }
    let dir = if recv {
        Direction::Recv
    } else {
        Direction::Send
    };
    let moved = ret as u64;
    let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) else {
        adopt(sk, dir, moved);
        return StreamPos::default();
    };
    // SAFETY: `conn` points into the map value; the counters are updated
    // atomically because two threads may use one socket at once (their
    // offsets may then overlap: the parsers take that as no gap).
    unsafe {
        let counter = match dir {
            Direction::Send => &raw mut (*conn).bytes_sent,
            Direction::Recv => &raw mut (*conn).bytes_received,
        };
        let before = counter.read_volatile();
        crate::atomic::add_u64(counter, moved);
        if (*conn).flags & CONN_OWNER_EXACT == 0 {
            owner::fill(&raw mut (*conn).owner);
            let mut flags = (*conn).flags | CONN_OWNER_EXACT;
            if owner::is_agent() {
                flags |= CONN_AGENT;
            }
            (*conn).flags = flags;
        }
        StreamPos {
            offset: before,
            role: role((*conn).flags),
        }
    }
}

/// The socket's state (`skc_state`, BTF offset); 0 when unknown.
#[inline(always)]
fn socket_state(sk: u64) -> u32 {
    let off = config().sock.state;
    if off == weft_common::config::NO_FIELD {
        return 0;
    }
    // SAFETY: a kernel read through the checked helper.
    let state = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((sk + off as u64) as *const u8) };
    state.map_or(0, u32::from)
}

/// The role of an adopted socket (see [`adopt`]): by its namespace's
/// listeners, else by the ports.
#[inline(always)]
fn adopted_role(sk: u64, tuple: &SockTuple) -> u32 {
    let netns = crate::netns::of_socket(sk);
    let listens = |port: u16| {
        let key = ListenKey {
            netns,
            port,
            family: tuple.family,
        };
        TCP_LISTENERS.get_ptr(&key).is_some()
    };
    if listens(tuple.local_port) {
        CONN_PASSIVE
    } else if listens(tuple.remote_port) || tuple.local_port >= tuple.remote_port {
        CONN_ACTIVE
    } else {
        CONN_PASSIVE
    }
}

/// A TCP socket moving data that was never seen being established: one
/// connected before the agent started. It is tracked from here on, as
/// if it opened now (an `open` event), with its addresses from the
/// socket's `sock_common` (BTF offsets; without them it stays untracked).
/// Which end is the client: the server's end is the one whose port its
/// network namespace listens on (a listener seen, or found at start); a
/// client of a listener in its own namespace is the other end. Otherwise
/// it is not known, and the lower port is taken for the server's, as
/// ephemeral ports are high. A socket whose own establishment run the
/// kernel skipped (recursion) is adopted too: its listener then names it
/// even when the server's port is above its client's. The agent's own
/// sockets are adopted too, marked: a scrape accepted while the programs
/// were being loaded is the agent's connection, and its other end must be
/// known as such (both ends' roles are decided alike, so they name one
/// flow).
fn adopt(sk: u64, dir: Direction, moved: u64) {
    // A connection that closed while this read or write was in progress
    // (a reset, or the syscall exit after the close on kernels that count
    // there) is not one older than the agent: its close was seen.
    let state = socket_state(sk);
    if state == tcp_state::CLOSE {
        return;
    }
    let tuple: SockTuple = crate::capture::sock_tuple(sk);
    if tuple.family == 0 || tuple.local_port == 0 || tuple.remote_port == 0 {
        return;
    }
    let role = adopted_role(sk, &tuple);
    let Some(conn) = CONN_SCRATCH.get_ptr_mut(crate::maps::SCRATCH_ADOPT) else {
        return;
    };
    // SAFETY: this CPU's scratch record (a `TcpConn` is too large for the
    // stack of these programs, see maps.rs).
    unsafe {
        core::ptr::write_bytes(conn, 0, 1);
        (*conn).tuple = tuple;
        owner::fill(&raw mut (*conn).owner);
        (*conn).start_ns = bpf_ktime_get_ns();
        (*conn).flags = role
            | CONN_ESTABLISHED
            | CONN_OWNER_EXACT
            | CONN_ADOPTED
            | if owner::is_agent() { CONN_AGENT } else { 0 };
        (*conn).state = tcp_state::ESTABLISHED;
        match dir {
            Direction::Send => (*conn).bytes_sent = moved,
            Direction::Recv => (*conn).bytes_received = moved,
        }
    }
    // Only the first thread to get here adopts it; a full map leaves the
    // socket untracked (new connections are counted as lost then, not
    // this one, which would be counted again at every send).
    // SAFETY: as above.
    if TCP_CONNS
        .insert(&sk, unsafe { &*conn }, BPF_NOEXIST as u64)
        .is_err()
    {
        return;
    }
    let n = crate::maps::count_rare_unlogged(weft_common::counters::index::TCP_ADOPTED);
    crate::klog::adopted(tuple.local_port, tuple.remote_port, state, n);
    if let Some(conn) = TCP_CONNS.get_ptr(&sk) {
        crate::report::send(EVENT_TCP_OPEN, sk, Some(conn), SockTuple::default());
    }
}
