//! The TCP lifecycle from `sock:inet_sock_set_state`.
//!
//! Two programs share the logic below and differ in where a change's
//! details come from:
//!
//! - `weft_tcp_state`, on the raw tracepoint: the tracepoint's arguments
//!   (`sk`, `oldstate`, `newstate`), with the socket's protocol and
//!   addresses read from the socket at offsets from the kernel's BTF. The
//!   one attached wherever BTF gives those offsets. A raw tracepoint is
//!   not skipped while another BPF program runs on the CPU: the kernel
//!   checks that only for the perf-event tracepoints, and a close in
//!   softirq that interrupts a syscall-exit capture program would be lost
//!   (and never counted before 6.7). From 6.2 a raw tracepoint is skipped
//!   only when it interrupts itself, and the kernel counts that.
//! - `weft_tcp_state_tp`, on the tracepoint, when the kernel has no BTF:
//!   the record (include/trace/events/sock.h): skaddr, oldstate, newstate,
//!   sport, dport (host order), family, protocol, saddr[4], daddr[4],
//!   saddr_v6[16], daddr_v6[16]; `s*` is the socket's own side.
//!
//! Both see the same values: the tracepoint's record is filled from the
//! same socket fields at the same moment.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use weft_common::{
    AF_INET6, IPPROTO_TCP, SockTuple,
    config::NO_FIELD,
    conn::{
        CONN_ACTIVE, CONN_AGENT, CONN_ESTABLISHED, CONN_OWNER_EXACT, CONN_PASSIVE, ListenKey,
        TcpConn, tcp_state,
    },
    counters::index,
    event::{EVENT_TCP_CLOSE, EVENT_TCP_FAIL, EVENT_TCP_OPEN},
};

use crate::{
    maps::{
        CONN_SCRATCH, LIFECYCLE_DEPTH, LIFECYCLE_NESTING, SCRATCH_LIFECYCLE, TCP_CONNS,
        TCP_LISTENERS, config, count,
    },
    owner,
    tp::{Skip, field},
};

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn weft_tcp_state(ctx: RawTracePointContext) -> u32 {
    crate::tp::counted(try_raw(&ctx));
    0
}

#[tracepoint]
pub fn weft_tcp_state_tp(ctx: TracePointContext) -> u32 {
    crate::tp::counted(try_record(&ctx));
    0
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
fn try_raw(ctx: &RawTracePointContext) -> Result<(), Skip> {
    let sk: u64 = ctx.arg(0);
    let protocol_at = config().sock.protocol;
    if protocol_at == NO_FIELD {
        return Err(Skip::MissingField);
    }
    // SAFETY: a kernel read through the checked helper.
    let protocol = unsafe { bpf_probe_read_kernel((sk + protocol_at as u64) as *const u16) }
        .map_err(|_| Skip::ReadFailed)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    changed(&FromSock { sk }, old as u32, new as u32)
}

fn try_record(ctx: &TracePointContext) -> Result<(), Skip> {
    let off = &config().offsets;
    let protocol: u16 = field(ctx, off.state_protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let sk: u64 = field(ctx, off.state_skaddr)?;
    let old: i32 = field(ctx, off.state_oldstate)?;
    let new: i32 = field(ctx, off.state_newstate)?;
    changed(&FromRecord { ctx, sk }, old as u32, new as u32)
}

/// A TCP socket's state change, and where its details are read.
trait Change {
    fn sk(&self) -> u64;
    /// The socket's address pair.
    fn tuple(&self) -> Result<SockTuple, Skip>;
    /// The socket's local port and address family.
    fn port_family(&self) -> Result<(u16, u16), Skip>;
}

/// Details read from the socket (the raw tracepoint).
struct FromSock {
    sk: u64,
}

impl Change for FromSock {
    fn sk(&self) -> u64 {
        self.sk
    }
    fn tuple(&self) -> Result<SockTuple, Skip> {
        let t = crate::capture::sock_tuple(self.sk);
        if t.family == 0 {
            return Err(Skip::ReadFailed);
        }
        Ok(t)
    }
    fn port_family(&self) -> Result<(u16, u16), Skip> {
        let t = self.tuple()?;
        Ok((t.local_port, t.family))
    }
}

/// Details from the tracepoint's record.
struct FromRecord<'a> {
    ctx: &'a TracePointContext,
    sk: u64,
}

impl Change for FromRecord<'_> {
    fn sk(&self) -> u64 {
        self.sk
    }
    fn tuple(&self) -> Result<SockTuple, Skip> {
        read_tuple(self.ctx)
    }
    fn port_family(&self) -> Result<(u16, u16), Skip> {
        let off = &config().offsets;
        Ok((
            field(self.ctx, off.state_sport)?,
            field(self.ctx, off.state_family)?,
        ))
    }
}

#[inline(always)]
fn changed<C: Change>(c: &C, old: u32, new: u32) -> Result<(), Skip> {
    count(index::TCP_STATE);
    let sk = c.sk();
    match (old, new) {
        // connect(): process context, so this is where the client's
        // owner is known. The local port may not be chosen yet.
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            let mut flags = CONN_ACTIVE | CONN_OWNER_EXACT;
            if owner::is_agent() {
                flags |= CONN_AGENT;
            }
            insert(c, flags, OwnerFrom::Current, new, Refused::Counted)
        }
        // listen(): remember who listens on the port.
        (tcp_state::CLOSE, tcp_state::LISTEN) => {
            let key = listen_key(c)?;
            if TCP_LISTENERS.insert(&key, &owner::current(), 0).is_err() {
                count(index::LOST_MAP_LISTENER);
            }
            Ok(())
        }
        // A child socket created from a listener (softirq): borrow the
        // listener's owner until the server process touches the socket.
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            let (flags, owner) = accepted(c)?;
            insert(c, flags, owner, new, Refused::Counted)
        }
        (_, tcp_state::ESTABLISHED) => established(c, old),
        (_, tcp_state::CLOSE) => closed(c),
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
fn accepted<C: Change>(c: &C) -> Result<(u32, OwnerFrom), Skip> {
    // The child is in its listener's namespace, on its port.
    let key = listen_key(c)?;
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

/// Whether an insert the full table refuses is counted as a loss.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refused {
    Counted,
    /// A second try for a socket whose first was (almost always) counted
    /// already: a lost socket counts once.
    NotCountedAgain,
}

/// Starts tracking `sk`. The record is built in a `CONN_SCRATCH` slot of
/// this CPU, not on the stack: the next free one, as a softirq's run can
/// interrupt a run in process context (see maps.rs).
#[inline(always)]
fn insert<C: Change>(
    c: &C,
    flags: u32,
    owner: OwnerFrom,
    state: u32,
    refused: Refused,
) -> Result<(), Skip> {
    let tuple = c.tuple()?;
    let depth = LIFECYCLE_DEPTH.get_ptr_mut(0).ok_or(Skip::ReadFailed)?;
    // SAFETY: this CPU's counter; a run that interrupts this one restores
    // it before this one goes on.
    let level = unsafe { *depth };
    if level >= LIFECYCLE_NESTING {
        // A third run at once on one CPU: no context does that.
        return Err(Skip::ReadFailed);
    }
    // SAFETY: as above.
    unsafe { *depth = level + 1 };
    let result = build(
        c.sk(),
        tuple,
        SCRATCH_LIFECYCLE + level,
        flags,
        owner,
        state,
        refused,
    );
    // SAFETY: as above.
    unsafe { *depth = level };
    result
}

/// Fills the scratch record `slot` and copies it into `TCP_CONNS`.
#[inline(always)]
fn build(
    sk: u64,
    tuple: SockTuple,
    slot: u32,
    flags: u32,
    owner: OwnerFrom,
    state: u32,
    refused: Refused,
) -> Result<(), Skip> {
    let conn = CONN_SCRATCH.get_ptr_mut(slot).ok_or(Skip::ReadFailed)?;
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
        if TCP_CONNS.insert(&sk, &*conn, 0).is_err() && refused == Refused::Counted {
            count(index::LOST_MAP_TCP);
        }
    }
    Ok(())
}

fn established<C: Change>(c: &C, old: u32) -> Result<(), Skip> {
    let sk = c.sk();
    let tuple = c.tuple()?;
    let conn = match TCP_CONNS.get_ptr_mut(&sk) {
        Some(conn) => conn,
        None => {
            // A socket whose handshake began before the agent started
            // (or before this program was attached). An accepted one is
            // named after its listener as at SYN_RECV: one accepted by the
            // agent during its start is the agent's.
            //
            // Or one the full table refused at its SYN, already counted
            // then: it is not counted again, and not tracked.
            let (flags, owner) = if old == tcp_state::SYN_SENT {
                (CONN_ACTIVE, OwnerFrom::Unknown)
            } else {
                accepted(c)?
            };
            insert(
                c,
                flags,
                owner,
                tcp_state::ESTABLISHED,
                Refused::NotCountedAgain,
            )?;
            match TCP_CONNS.get_ptr_mut(&sk) {
                Some(conn) => conn,
                None => return Ok(()),
            }
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

fn closed<C: Change>(c: &C) -> Result<(), Skip> {
    let sk = c.sk();
    let Some(conn) = TCP_CONNS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let tuple = c.tuple()?;
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
fn listen_key<C: Change>(c: &C) -> Result<ListenKey, Skip> {
    let (port, family) = c.port_family()?;
    Ok(ListenKey {
        netns: crate::netns::of_socket(c.sk()),
        port,
        family,
    })
}

/// The socket's address pair from the tracepoint's record.
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
