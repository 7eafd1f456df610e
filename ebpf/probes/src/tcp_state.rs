//! The TCP lifecycle from `sock:inet_sock_set_state`.
//!
//! Assumed record (include/trace/events/sock.h): skaddr, oldstate,
//! newstate, sport, dport (host order), family, protocol, saddr[4],
//! daddr[4], saddr_v6[16], daddr_v6[16]; `s*` is the socket's own side.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use weft_common::{
    AF_INET6, IPPROTO_TCP, SockTuple,
    conn::{
        CONN_ACTIVE, CONN_AGENT, CONN_ESTABLISHED, CONN_OWNER_EXACT, CONN_PASSIVE, ListenKey,
        TcpConn, tcp_state,
    },
    counters::index,
    event::{EVENT_TCP_CLOSE, EVENT_TCP_FAIL, EVENT_TCP_OPEN},
};

use crate::{
    maps::{CONN_SCRATCH, TCP_CONNS, TCP_LISTENERS, config, count},
    owner,
    tp::{Skip, field},
};

#[tracepoint]
pub fn weft_tcp_state(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_tcp_state(&ctx));
    0
}

fn try_tcp_state(ctx: &TracePointContext) -> Result<(), Skip> {
    let off = &config().offsets;
    let protocol: u16 = field(ctx, off.state_protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    count(index::TCP_STATE);
    let sk: u64 = field(ctx, off.state_skaddr)?;
    let old: i32 = field(ctx, off.state_oldstate)?;
    let new: i32 = field(ctx, off.state_newstate)?;
    let (old, new) = (old as u32, new as u32);

    match (old, new) {
        // connect(): process context, so this is where the client's
        // owner is known. The local port may not be chosen yet.
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            let mut flags = CONN_ACTIVE | CONN_OWNER_EXACT;
            if owner::is_agent() {
                flags |= CONN_AGENT;
            }
            insert(ctx, sk, flags, OwnerFrom::Current, new)
        }
        // listen(): remember who listens on the port.
        (tcp_state::CLOSE, tcp_state::LISTEN) => {
            let key = listen_key(ctx, sk)?;
            if TCP_LISTENERS.insert(&key, &owner::current(), 0).is_err() {
                count(index::LOST_MAP_LISTENER);
            }
            Ok(())
        }
        // A child socket created from a listener (softirq): borrow the
        // listener's owner until the server process touches the socket.
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            let (flags, owner) = accepted(ctx, sk)?;
            insert(ctx, sk, flags, owner, new)
        }
        (_, tcp_state::ESTABLISHED) => established(ctx, sk, old),
        (_, tcp_state::CLOSE) => closed(ctx, sk),
        _ => {
            if let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) {
                // SAFETY: a valid pointer into the map value.
                unsafe { (*conn).state = new };
            }
            Ok(())
        }
    }
}

/// The flags and owner of a socket accepted by a listener: its
/// listener's owner, and whether it is the agent's (a connection to its
/// metrics endpoint is the agent's traffic: not reported).
fn accepted(ctx: &TracePointContext, sk: u64) -> Result<(u32, OwnerFrom), Skip> {
    // The child is in its listener's namespace, on its port.
    let key = listen_key(ctx, sk)?;
    let listener = TCP_LISTENERS.get_ptr(&key);
    let mut flags = CONN_PASSIVE;
    // SAFETY: a valid pointer into the map value.
    let pid = listener.map_or(0, |l| unsafe { (*l).pid });
    if pid != 0 && pid == config().agent_pid {
        flags |= CONN_AGENT;
    }
    Ok((
        flags,
        listener.map_or(OwnerFrom::Unknown, OwnerFrom::Listener),
    ))
}

/// Where a new connection's owner comes from.
#[derive(Clone, Copy)]
enum OwnerFrom {
    /// The task in whose context the state changed.
    Current,
    /// The listening socket's owner (a map value).
    Listener(*const weft_common::Owner),
    /// Not known (a connection older than the agent).
    Unknown,
}

/// Starts tracking `sk`. The record is built in this CPU's
/// `CONN_SCRATCH` slot, not on the stack (see maps.rs).
#[inline(always)]
fn insert(
    ctx: &TracePointContext,
    sk: u64,
    flags: u32,
    owner: OwnerFrom,
    state: u32,
) -> Result<(), Skip> {
    let tuple = read_tuple(ctx)?;
    let conn = CONN_SCRATCH.get_ptr_mut(0).ok_or(Skip::ReadFailed)?;
    // SAFETY: this CPU's scratch record; `Listener` points into a map
    // value that outlives this call.
    unsafe {
        core::ptr::write_bytes(conn, 0, 1);
        (*conn).tuple = tuple;
        match owner {
            OwnerFrom::Current => owner::fill(&raw mut (*conn).owner),
            OwnerFrom::Listener(from) => {
                core::ptr::copy_nonoverlapping(from, &raw mut (*conn).owner, 1)
            }
            OwnerFrom::Unknown => {}
        }
        (*conn).start_ns = bpf_ktime_get_ns();
        (*conn).flags = flags;
        (*conn).state = state;
        if TCP_CONNS.insert(&sk, &*conn, 0).is_err() {
            count(index::LOST_MAP_TCP);
        }
    }
    Ok(())
}

fn established(ctx: &TracePointContext, sk: u64, old: u32) -> Result<(), Skip> {
    let tuple = read_tuple(ctx)?;
    let conn = match TCP_CONNS.get_ptr_mut(&sk) {
        Some(conn) => conn,
        None => {
            // A socket whose handshake began before the agent started
            // (or before this program was attached). An accepted one is
            // named after its listener as at SYN_RECV: one accepted by the
            // agent during its start is the agent's.
            let (flags, owner) = if old == tcp_state::SYN_SENT {
                (CONN_ACTIVE, OwnerFrom::Unknown)
            } else {
                accepted(ctx, sk)?
            };
            insert(ctx, sk, flags, owner, tcp_state::ESTABLISHED)?;
            TCP_CONNS.get_ptr_mut(&sk).ok_or(Skip::ReadFailed)?
        }
    };
    // SAFETY: a valid pointer into the map value.
    unsafe {
        (*conn).tuple = tuple;
        (*conn).flags |= CONN_ESTABLISHED;
        (*conn).state = tcp_state::ESTABLISHED;
    }
    emit(sk, conn, EVENT_TCP_OPEN);
    Ok(())
}

fn closed(ctx: &TracePointContext, sk: u64) -> Result<(), Skip> {
    let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let tuple = read_tuple(ctx)?;
    // SAFETY: a valid pointer into the map value.
    let established = unsafe {
        if tuple.local_port != 0 {
            (*conn).tuple = tuple;
        }
        (*conn).state = tcp_state::CLOSE;
        (*conn).flags & CONN_ESTABLISHED != 0
    };
    emit(
        sk,
        conn,
        if established {
            EVENT_TCP_CLOSE
        } else {
            EVENT_TCP_FAIL
        },
    );
    let _ = TCP_CONNS.remove(&sk);
    Ok(())
}

/// Sends a lifecycle event with a snapshot of the socket's state. The
/// agent's own sockets are sent too, marked `CONN_AGENT`: the agent needs
/// them to recognise the other end of its own connections (a scrape from
/// another process on this node) and leave it out. Nothing else of them
/// (bytes, payload, resets) is sent.
fn emit(sk: u64, conn: *const TcpConn, kind: u32) {
    crate::report::send(kind, sk, Some(conn), SockTuple::default());
}

/// The listening port of `sk` (a listener or a child of one) in its
/// network namespace.
fn listen_key(ctx: &TracePointContext, sk: u64) -> Result<ListenKey, Skip> {
    let off = &config().offsets;
    Ok(ListenKey {
        netns: crate::netns::of_socket(sk),
        port: field(ctx, off.state_sport)?,
        family: field(ctx, off.state_family)?,
    })
}

/// The socket's address pair from the tracepoint record.
fn read_tuple(ctx: &TracePointContext) -> Result<SockTuple, Skip> {
    let off = &config().offsets;
    let family: u16 = field(ctx, off.state_family)?;
    let mut t = SockTuple {
        local_port: field(ctx, off.state_sport)?,
        remote_port: field(ctx, off.state_dport)?,
        family,
        ..SockTuple::default()
    };
    if family == AF_INET6 {
        t.local_addr = field(ctx, off.state_saddr_v6)?;
        t.remote_addr = field(ctx, off.state_daddr_v6)?;
    } else {
        let s: [u8; 4] = field(ctx, off.state_saddr)?;
        let d: [u8; 4] = field(ctx, off.state_daddr)?;
        t.local_addr[..4].copy_from_slice(&s);
        t.remote_addr[..4].copy_from_slice(&d);
    }
    Ok(t)
}
