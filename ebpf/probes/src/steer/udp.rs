//! `cgroup/sendmsg4`/`sendmsg6` and `cgroup/recvmsg4`/`recvmsg6`: UDP to a
//! service address.
//!
//! A datagram sent to a service (by sendto/sendmsg on an unconnected
//! socket) is rewritten to a backend chosen as a connect is, per datagram;
//! the (socket, backend) pair is remembered so that the backend's replies
//! read as coming from the service address the application sent to (DNS
//! clients check a reply's source). A socket that connects goes through
//! connect4 instead, which remembers the same pair.
//!
//! recvmsg4 must allow (the kernel only accepts 1 from it); it rewrites
//! the source address or leaves it.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_common::steer::{Origin, ReplyKey, ServiceKey, counter};

use super::policy::Decision;
use super::{
    connect::{ALLOW, REJECT, Steer, dialed, egress_policy, refuse, steer, write_addr},
    maps::{REPLIES, count},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_steer_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg::<true, false>(&ctx)
}

/// [`weft_steer_sendmsg4`] for kernels without `bpf_set_retval`: a
/// datagram to a service without backends fails with EPERM.
#[cgroup_sock_addr(sendmsg4)]
pub fn weft_steer_sendmsg4_eperm(ctx: SockAddrContext) -> i32 {
    sendmsg::<false, false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn weft_steer_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg::<true, true>(&ctx)
}

/// [`weft_steer_sendmsg6`] without `bpf_set_retval`.
#[cgroup_sock_addr(sendmsg6)]
pub fn weft_steer_sendmsg6_eperm(ctx: SockAddrContext) -> i32 {
    sendmsg::<false, true>(&ctx)
}

#[inline(always)]
fn sendmsg<const SET_RETVAL: bool, const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let key = dialed::<V6>(ctx);
    if let Decision::Deny = egress_policy(ctx, &key) {
        return REJECT;
    }
    match steer::<V6>(ctx, key) {
        Steer::Untouched => ALLOW,
        Steer::Refused => refuse::<SET_RETVAL>(),
        Steer::Rewritten(origin) => {
            remember_replies(ctx, &origin);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weft_steer_recvmsg4(ctx: SockAddrContext) -> i32 {
    rewrite_reply::<false>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn weft_steer_recvmsg6(ctx: SockAddrContext) -> i32 {
    rewrite_reply::<true>(&ctx);
    ALLOW
}

/// Remembers that the socket's datagrams from `origin.backend` answer the
/// service. Failing to only costs the rewrite of the replies (counted).
#[inline(always)]
pub(super) fn remember_replies(ctx: &SockAddrContext, origin: &Origin) {
    let b = &origin.backend;
    let key = ReplyKey {
        // SAFETY: the context is a sock_addr context, which the helper
        // takes.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: b.addr,
        backend_port: b.port,
        family: b.family,
        _pad: [0; 5],
    };
    if REPLIES.insert(&key, &origin.service, 0).is_err() {
        count(counter::REPLY_LOST);
    }
}

#[inline(always)]
fn rewrite_reply<const V6: bool>(ctx: &SockAddrContext) {
    let source = dialed::<V6>(ctx);
    let key = ReplyKey {
        // SAFETY: the context is a sock_addr context, which the helper
        // takes.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: source.addr,
        backend_port: source.port,
        family: source.family,
        _pad: [0; 5],
    };
    // SAFETY: a lookup in a map of plain values.
    let Some(service) = (unsafe { REPLIES.get(&key) }) else {
        return;
    };
    let s: &ServiceKey = service;
    if write_addr::<V6>(ctx, &s.addr, s.family, s.port) {
        count(counter::REPLY_REWRITTEN);
    }
}
