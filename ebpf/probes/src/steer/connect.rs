//! `cgroup/connect4`/`connect6` and `cgroup/getpeername4`/`getpeername6`
//! (TCP, and UDP sockets that connect), and the decision `sendmsg4` and
//! `sendmsg6` share.
//!
//! The IPv6 programs steer IPv6 services, and IPv4 services dialed by an
//! IPv6 socket as a v4-mapped address (`::ffff:a.b.c.d`, as dual-stack
//! sockets of Java or Go do): only the last word of `user_ip6` is read and
//! rewritten then, so the socket stays v4-mapped.
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
    connect::<true, false>(&ctx)
}

/// [`weft_steer_connect4`] for kernels without `bpf_set_retval` (before
/// 5.18): a connect to a service without backends fails with EPERM, the
/// error a refusing sock_addr program gives there.
#[cgroup_sock_addr(connect4)]
pub fn weft_steer_connect4_eperm(ctx: SockAddrContext) -> i32 {
    connect::<false, false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn weft_steer_connect6(ctx: SockAddrContext) -> i32 {
    connect::<true, true>(&ctx)
}

/// [`weft_steer_connect6`] without `bpf_set_retval`.
#[cgroup_sock_addr(connect6)]
pub fn weft_steer_connect6_eperm(ctx: SockAddrContext) -> i32 {
    connect::<false, true>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_steer_peername4(ctx: SockAddrContext) -> i32 {
    peername::<false>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_steer_peername6(ctx: SockAddrContext) -> i32 {
    peername::<true>(&ctx);
    ALLOW
}

/// What [`steer`] did to a connect or a datagram.
pub(super) enum Steer {
    /// Not to a service (or the service was half-written): unchanged.
    Untouched,
    /// To a service without a usable backend: fail it with ECONNREFUSED.
    Refused,
    /// Rewritten to a backend.
    Rewritten(Origin),
}

#[inline(always)]
fn connect<const SET_RETVAL: bool, const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let key = dialed::<V6>(ctx);
    if let Decision::Deny = egress_policy(ctx, &key) {
        return REJECT;
    }
    match steer::<V6>(ctx, key) {
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
/// which the kernel turns into EPERM. Rules match IPv4 only: an IPv6
/// socket's v4-mapped address is checked as the IPv4 address it is, a
/// native IPv6 one passes.
#[inline(always)]
pub(super) fn egress_policy(ctx: &SockAddrContext, dialed: &ServiceKey) -> Decision {
    if dialed.family != 4 {
        return Decision::Pass;
    }
    let ip4 = u32::from_ne_bytes([
        dialed.addr[0],
        dialed.addr[1],
        dialed.addr[2],
        dialed.addr[3],
    ]);
    super::policy::egress4(ctx, ip4, dialed.port, dialed.proto)
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

/// The address and port the context holds (the destination in connect
/// and sendmsg, the peer in getpeername, the source in recvmsg), keyed as
/// the maps key it: a v4-mapped address of an IPv6 socket as family 4.
#[inline(always)]
pub(super) fn dialed<const V6: bool>(ctx: &SockAddrContext) -> ServiceKey {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    let mut key = ServiceKey {
        addr: [0; 16],
        port: u16::from_be(sa.user_port as u16),
        proto: sa.protocol as u8,
        family: 4,
    };
    if !V6 {
        put(&mut key.addr, 0, sa.user_ip4);
        return key;
    }
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    if w[0] == 0 && w[1] == 0 && w[2] == 0xffff_u32.to_be() {
        put(&mut key.addr, 0, w[3]);
        return key;
    }
    put(&mut key.addr, 0, w[0]);
    put(&mut key.addr, 4, w[1]);
    put(&mut key.addr, 8, w[2]);
    put(&mut key.addr, 12, w[3]);
    key.family = 6;
    key
}

/// Writes `addr` (of `family`) and `port` into the context, where
/// [`dialed`] read them from. Returns false, writing nothing, when the
/// families do not fit (an IPv6 address for an IPv4 socket).
#[inline(always)]
pub(super) fn write_addr<const V6: bool>(
    ctx: &SockAddrContext,
    addr: &[u8; 16],
    family: u8,
    port: u16,
) -> bool {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    match (V6, family) {
        (false, 4) => sa.user_ip4 = word(addr, 0),
        (true, 4) => sa.user_ip6[3] = word(addr, 0),
        (true, 6) => {
            sa.user_ip6[0] = word(addr, 0);
            sa.user_ip6[1] = word(addr, 4);
            sa.user_ip6[2] = word(addr, 8);
            sa.user_ip6[3] = word(addr, 12);
        }
        _ => return false,
    }
    sa.user_port = u32::from(port.to_be());
    true
}

#[inline(always)]
fn put(addr: &mut [u8; 16], at: usize, w: u32) {
    let b = w.to_ne_bytes();
    addr[at] = b[0];
    addr[at + 1] = b[1];
    addr[at + 2] = b[2];
    addr[at + 3] = b[3];
}

/// Compared word by word: an array comparison may become a call to
/// `bcmp`, which BPF cannot link.
#[inline(always)]
pub(super) fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    word(a, 0) == word(b, 0)
        && word(a, 4) == word(b, 4)
        && word(a, 8) == word(b, 8)
        && word(a, 12) == word(b, 12)
}

#[inline(always)]
pub(super) fn word(addr: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]])
}

/// The shared decision of connect and sendmsg: whether `key`, the
/// address the context holds ([`dialed`]), is a service's, and if so
/// which backend it becomes (rewritten in place).
#[inline(always)]
pub(super) fn steer<const V6: bool>(ctx: &SockAddrContext, key: ServiceKey) -> Steer {
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
        Some(affinity_key::<V6>(ctx, id))
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
    if backend.family != key.family
        || !write_addr::<V6>(ctx, &backend.addr, backend.family, backend.port)
    {
        count(counter::INCOMPLETE);
        return Steer::Untouched;
    }
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
fn affinity_key<const V6: bool>(ctx: &SockAddrContext, service: u32) -> AffinityKey {
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut key = AffinityKey {
        netns,
        service,
        ..AffinityKey::default()
    };
    // SAFETY: the context's socket pointer is never null in connect and
    // sendmsg (the verifier types it as a socket); src_ip4 and src_ip6 are
    // readable fields, 0 while the socket is not bound to an address.
    let sk = unsafe { &*(*ctx.sock_addr).__bindgen_anon_1.sk };
    if V6 {
        // Constant offsets: the verifier takes no other into a socket.
        put(&mut key.client, 0, sk.src_ip6[0]);
        put(&mut key.client, 4, sk.src_ip6[1]);
        put(&mut key.client, 8, sk.src_ip6[2]);
        put(&mut key.client, 12, sk.src_ip6[3]);
    } else {
        put(&mut key.client, 0, sk.src_ip4);
    }
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
    if !same_addr(&current.addr, &backend.addr)
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
fn peername<const V6: bool>(ctx: &SockAddrContext) {
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a lookup in a map of plain values.
    let Some(origin) = (unsafe { ORIGINS.get(&cookie) }) else {
        return;
    };
    let b = &origin.backend;
    // Only a socket still connected to the backend it was steered to.
    let peer = dialed::<V6>(ctx);
    if peer.family != b.family || !same_addr(&peer.addr, &b.addr) || peer.port != b.port {
        return;
    }
    let s = &origin.service;
    if write_addr::<V6>(ctx, &s.addr, s.family, s.port) {
        count(counter::PEERNAME);
    }
}
