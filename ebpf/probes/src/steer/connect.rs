//! `cgroup/connect4` and `cgroup/getpeername4`.
//!
//! Contract (kernel `__cgroup_bpf_run_filter_sock_addr`): the program may
//! rewrite `user_ip4`/`user_port` before the kernel's own connect runs;
//! returning 1 lets the (possibly rewritten) connect go on, returning 0
//! fails it with the error set by `bpf_set_retval` (EPERM if none).
//! Anything unexpected returns 1 with the address untouched: a steering
//! fault must never break a connect that does not concern it.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, generated::bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_common::steer::{Origin, ServiceKey, SlotKey, counter};

use super::maps::{
    BACKEND_CONNECTS, BACKENDS, ORIGINS, SERVICE_NO_BACKEND, SERVICES, SLOTS, STEERED, bump, count,
};

const ECONNREFUSED: i32 = 111;
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn weft_steer_connect4(ctx: SockAddrContext) -> i32 {
    connect4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_steer_peername4(ctx: SockAddrContext) -> i32 {
    peername4(&ctx);
    ALLOW
}

#[inline(always)]
fn connect4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let mut key = ServiceKey {
        addr: [0; 16],
        port: u16::from_be(sa.user_port as u16),
        proto: sa.protocol as u8,
        family: 4,
    };
    let ip = sa.user_ip4.to_ne_bytes();
    key.addr[0] = ip[0];
    key.addr[1] = ip[1];
    key.addr[2] = ip[2];
    key.addr[3] = ip[3];
    // SAFETY: a lookup in a map of plain values.
    let Some(service) = (unsafe { SERVICES.get(&key) }) else {
        return ALLOW;
    };
    let (id, slots) = (service.id, service.slots);
    if slots == 0 {
        count(counter::NO_BACKEND);
        bump(&SERVICE_NO_BACKEND, id);
        // SAFETY: a helper call with a constant.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let slot = SlotKey {
        service: id,
        // SAFETY: a helper call without arguments.
        slot: unsafe { bpf_get_prandom_u32() } % slots,
    };
    // SAFETY: lookups in maps of plain values.
    let Some(backend_id) = (unsafe { SLOTS.get(&slot) }).copied() else {
        count(counter::INCOMPLETE);
        return ALLOW;
    };
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }).copied() else {
        count(counter::INCOMPLETE);
        return ALLOW;
    };
    sa.user_ip4 = u32::from_ne_bytes([
        backend.addr[0],
        backend.addr[1],
        backend.addr[2],
        backend.addr[3],
    ]);
    sa.user_port = u32::from(backend.port.to_be());
    count(counter::REWRITTEN);
    bump(&BACKEND_CONNECTS, backend_id);
    remember(
        ctx,
        &Origin {
            service: key,
            service_id: id,
            backend_id,
            backend,
        },
    );
    ALLOW
}

/// Keeps what the socket dialed for getpeername (by cookie) and for the
/// agent's records (by socket address). The connect goes on either way.
#[inline(always)]
fn remember(ctx: &SockAddrContext, origin: &Origin) {
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: reading the context's socket pointer; its value only serves
    // as a key (the same address the TCP tracepoints report as skaddr).
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk } as u64;
    let a = ORIGINS.insert(&cookie, origin, 0);
    let b = STEERED.insert(&sk, origin, 0);
    if a.is_err() || b.is_err() {
        count(counter::LOST_ORIGIN);
    }
}

#[inline(always)]
fn peername4(ctx: &SockAddrContext) {
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a lookup in a map of plain values.
    let Some(origin) = (unsafe { ORIGINS.get(&cookie) }) else {
        return;
    };
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let b = &origin.backend;
    // Only a socket still connected to the backend it was steered to.
    let peer = sa.user_ip4.to_ne_bytes();
    if peer != [b.addr[0], b.addr[1], b.addr[2], b.addr[3]]
        || u16::from_be(sa.user_port as u16) != b.port
    {
        return;
    }
    let s = &origin.service;
    sa.user_ip4 = u32::from_ne_bytes([s.addr[0], s.addr[1], s.addr[2], s.addr[3]]);
    sa.user_port = u32::from(s.port.to_be());
    count(counter::PEERNAME);
}
