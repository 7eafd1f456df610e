//! `cgroup/connect4` and `cgroup/getpeername4` (TCP, and UDP sockets that
//! connect), and the decision `sendmsg4` shares.
//!
//! Contract (kernel `__cgroup_bpf_run_filter_sock_addr`): the program may
//! rewrite `user_ip4`/`user_port` before the kernel's own connect runs;
//! returning 1 lets the (possibly rewritten) connect go on, returning 0
//! fails it with the error set by `bpf_set_retval` (EPERM if none).
//! Anything unexpected returns 1 with the address untouched: a steering
//! fault must never break a connect that does not concern it.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_set_retval},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_common::{
    IPPROTO_UDP,
    steer::{
        AffinityEntry, AffinityKey, Backend, Origin, ServiceEntry, ServiceKey, SlotKey, counter,
    },
};

use super::maps::{
    AFFINITY, BACKEND_CONNECTS, BACKENDS, ORIGINS, SERVICE_NO_BACKEND, SERVICES, SLOTS, STEERED,
    bump, count,
};
use super::policy::Decision;

const ECONNREFUSED: i32 = 111;
pub(super) const ALLOW: i32 = 1;
pub(super) const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn weft_steer_connect4(ctx: SockAddrContext) -> i32 {
    connect4::<true>(&ctx)
}

/// [`weft_steer_connect4`] for kernels without `bpf_set_retval` (before
/// 5.18): a connect to a service without backends fails with EPERM, the
/// error a refusing sock_addr program gives there.
#[cgroup_sock_addr(connect4)]
pub fn weft_steer_connect4_eperm(ctx: SockAddrContext) -> i32 {
    connect4::<false>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_steer_peername4(ctx: SockAddrContext) -> i32 {
    peername4(&ctx);
    ALLOW
}

/// What [`steer4`] did to a connect or a datagram.
pub(super) enum Steer {
    /// Not to a service (or the service was half-written): unchanged.
    Untouched,
    /// To a service without a usable backend: fail it with ECONNREFUSED.
    Refused,
    /// Rewritten to a backend.
    Rewritten(Origin),
}

#[inline(always)]
fn connect4<const SET_RETVAL: bool>(ctx: &SockAddrContext) -> i32 {
    if let Decision::Deny = egress_policy(ctx) {
        return REJECT;
    }
    match steer4(ctx) {
        Steer::Untouched => ALLOW,
        Steer::Refused => refuse::<SET_RETVAL>(),
        Steer::Rewritten(origin) => {
            remember(ctx, &origin);
            if origin.service.proto == IPPROTO_UDP {
                // A connected UDP socket: its replies come from the backend.
                super::udp::remember_replies(ctx, &origin);
            }
            ALLOW
        }
    }
}

/// The egress policy's decision on the address the application dialed
/// (before a service rewrites it). A deny returns 0 without a retval set,
/// which the kernel turns into EPERM.
#[inline(always)]
pub(super) fn egress_policy(ctx: &SockAddrContext) -> Decision {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    super::policy::egress4(
        ctx,
        sa.user_ip4,
        u16::from_be(sa.user_port as u16),
        sa.protocol as u8,
    )
}

/// Fails the call: with ECONNREFUSED where the kernel has
/// `bpf_set_retval` (`SET_RETVAL`), else with its default, EPERM.
#[inline(always)]
pub(super) fn refuse<const SET_RETVAL: bool>() -> i32 {
    if SET_RETVAL {
        // SAFETY: a helper call with a constant.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
    REJECT
}

/// The shared decision of connect4 and sendmsg4: whether the address the
/// context holds is a service's, and if so which backend it becomes
/// (rewritten in place).
#[inline(always)]
pub(super) fn steer4(ctx: &SockAddrContext) -> Steer {
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
        return Steer::Untouched;
    };
    let service = *service;
    let (id, slots) = (service.id, service.slots);
    if slots == 0 {
        count(counter::NO_BACKEND);
        bump(&SERVICE_NO_BACKEND, id);
        return Steer::Refused;
    }
    let affinity = if service.affinity_timeout_s == 0 {
        None
    } else {
        Some(affinity_key(ctx, id))
    };
    let remembered = match &affinity {
        Some(k) => remembered(k, &service),
        None => None,
    };
    let (backend_id, backend) = match remembered {
        Some(found) => found,
        None => {
            let Some(chosen) = choose(id, slots) else {
                count(counter::INCOMPLETE);
                return Steer::Untouched;
            };
            if let Some(k) = &affinity {
                remember_backend(k, chosen.0, &chosen.1);
            }
            chosen
        }
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
    Steer::Rewritten(Origin {
        service: key,
        service_id: id,
        backend_id,
        backend,
    })
}

/// Weighted random: one of the service's slots.
#[inline(always)]
fn choose(id: u32, slots: u32) -> Option<(u32, Backend)> {
    let slot = SlotKey {
        service: id,
        // SAFETY: a helper call without arguments.
        slot: unsafe { bpf_get_prandom_u32() } % slots,
    };
    // SAFETY: lookups in maps of plain values.
    let backend_id = unsafe { SLOTS.get(&slot) }.copied()?;
    let backend = unsafe { BACKENDS.get(&backend_id) }.copied()?;
    Some((backend_id, backend))
}

/// The client of a connect (see `AffinityKey`): its network namespace
/// and the address its socket is bound to, if any.
#[inline(always)]
fn affinity_key(ctx: &SockAddrContext, service: u32) -> AffinityKey {
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the context's socket pointer is never null in connect4 (the
    // verifier types it as a socket); src_ip4 is one of its readable
    // fields, 0 while the socket is not bound to an address.
    let bound = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_ip4 }.to_ne_bytes();
    let mut key = AffinityKey {
        netns,
        service,
        ..AffinityKey::default()
    };
    key.client[0] = bound[0];
    key.client[1] = bound[1];
    key.client[2] = bound[2];
    key.client[3] = bound[3];
    key
}

/// The backend this client was sent to, if it connected within the
/// timeout and that backend is still the service's (same id, same
/// address): a reconciled service never sends a client to a removed
/// backend. A hit refreshes the entry's time (Kubernetes: the timeout
/// runs from the client's last connect).
#[inline(always)]
fn remembered(key: &AffinityKey, service: &ServiceEntry) -> Option<(u32, Backend)> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from the map and stays valid for the
    // program's run (an LRU entry is freed only after an RCU grace
    // period).
    let (last, backend_id, backend) =
        unsafe { ((*entry).last_ns, (*entry).backend_id, (*entry).backend) };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last) >= u64::from(service.affinity_timeout_s) * 1_000_000_000 {
        return None;
    }
    // SAFETY: a lookup in a map of plain values.
    let current = unsafe { BACKENDS.get(&backend_id) }.copied()?;
    if ip4(&current) != ip4(&backend)
        || current.port != backend.port
        || backend_id >> 6 != service.id
    {
        return None;
    }
    // SAFETY: as above; a plain store of the refreshed time.
    unsafe { (*entry).last_ns = now };
    count(counter::AFFINITY_HIT);
    Some((backend_id, current))
}

/// A backend's IPv4 address as one word (compared without memcmp).
#[inline(always)]
fn ip4(b: &Backend) -> u32 {
    u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
}

/// Remembers a client's new backend; failing to only costs affinity
/// (counted), never the connect.
#[inline(always)]
fn remember_backend(key: &AffinityKey, backend_id: u32, backend: &Backend) {
    let entry = AffinityEntry {
        // SAFETY: a helper call without arguments.
        last_ns: unsafe { bpf_ktime_get_ns() },
        backend_id,
        _pad: 0,
        backend: *backend,
    };
    if AFFINITY.insert(key, &entry, 0).is_err() {
        count(counter::AFFINITY_LOST);
    }
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
