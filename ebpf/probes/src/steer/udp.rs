//! `cgroup/sendmsg4` and `cgroup/recvmsg4`: UDP to a service address.
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
    connect::{ALLOW, REJECT, Steer, egress_policy, refuse, steer4},
    maps::{REPLIES, count},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_steer_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg4::<true>(&ctx)
}

/// [`weft_steer_sendmsg4`] for kernels without `bpf_set_retval`: a
/// datagram to a service without backends fails with EPERM.
#[cgroup_sock_addr(sendmsg4)]
pub fn weft_steer_sendmsg4_eperm(ctx: SockAddrContext) -> i32 {
    sendmsg4::<false>(&ctx)
}

#[inline(always)]
fn sendmsg4<const SET_RETVAL: bool>(ctx: &SockAddrContext) -> i32 {
    if let Decision::Deny = egress_policy(ctx) {
        return REJECT;
    }
    match steer4(ctx) {
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
    rewrite_reply(&ctx);
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
        backend_ip4: u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]),
        backend_port: b.port,
        _pad: 0,
    };
    if REPLIES.insert(&key, &origin.service, 0).is_err() {
        count(counter::REPLY_LOST);
    }
}

#[inline(always)]
fn rewrite_reply(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = ReplyKey {
        // SAFETY: as above.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_ip4: sa.user_ip4,
        backend_port: u16::from_be(sa.user_port as u16),
        _pad: 0,
    };
    // SAFETY: a lookup in a map of plain values.
    let Some(service) = (unsafe { REPLIES.get(&key) }) else {
        return;
    };
    let s: &ServiceKey = service;
    sa.user_ip4 = u32::from_ne_bytes([s.addr[0], s.addr[1], s.addr[2], s.addr[3]]);
    sa.user_port = u32::from(s.port.to_be());
    count(counter::REPLY_REWRITTEN);
}
