//! L3/L4 policy: egress at connect4/sendmsg4 (a deny fails the call with
//! EPERM before any packet exists), ingress by `cgroup_skb/ingress` on the
//! cgroup v2 root (a deny drops a TCP SYN or a UDP datagram before the
//! socket sees it; packets of established connections are not checked).
//!
//! Every map answers with a mask of rules (see `weft_common::policy`);
//! the lowest bit of their AND is the first matching rule. No rule
//! matching is the default allow, which costs one array lookup when no
//! rule of that direction exists.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_skb_load_bytes,
        },
    },
    macros::cgroup_skb,
    maps::lpm_trie::Key,
    programs::{SkBuffContext, SockAddrContext},
};
use weft_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    policy::{
        POLICY_EGRESS, POLICY_INGRESS, POLICY_MAX_CGROUP_LEVEL, PolicyEvent, PolicyGlobals,
        PortKey, counter, verdict,
    },
};

use super::maps::{
    POLICY_CGROUPS, POLICY_COUNTERS, POLICY_DST, POLICY_EVENTS, POLICY_GLOBALS, POLICY_NETNS,
    POLICY_PORTS, POLICY_SRC, POLICY_VERDICTS, count_in,
};

/// What a rule decided for the caller.
pub(super) enum Decision {
    Pass,
    Deny,
}

#[inline(always)]
fn globals() -> Option<&'static PolicyGlobals> {
    POLICY_GLOBALS.get(0)
}

#[inline(always)]
fn lpm(trie: &aya_ebpf::maps::LpmTrie<[u8; 4], u64>, ip: [u8; 4]) -> u64 {
    trie.get(Key::new(32, ip)).copied().unwrap_or(0)
}

#[inline(always)]
fn ports(g: &PolicyGlobals, proto: u8, port: u16) -> u64 {
    let key = PortKey {
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: a lookup in a map of plain values.
    let named = unsafe { POLICY_PORTS.get(&key) }.copied().unwrap_or(0);
    let any = match proto {
        IPPROTO_TCP => g.any_port_tcp,
        IPPROTO_UDP => g.any_port_udp,
        _ => 0,
    };
    named | any
}

/// Rules naming a cgroup that is the current task's or one of its
/// ancestors'.
#[inline(always)]
fn cgroups(g: &PolicyGlobals) -> u64 {
    let mut mask = 0;
    let mut level = 1;
    while level <= POLICY_MAX_CGROUP_LEVEL && level <= g.cgroup_levels {
        // SAFETY: a helper call with a plain argument.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: a lookup in a map of plain values.
        mask |= unsafe { POLICY_CGROUPS.get(&id) }.copied().unwrap_or(0);
        level += 1;
    }
    mask
}

/// Counts the first matching rule's verdict; `Deny` when it is a deny
/// that is enforced. Denies and audits are also sent as events.
#[inline(always)]
fn decide(g: &PolicyGlobals, matched: u64, mut event: PolicyEvent) -> Decision {
    if matched == 0 {
        return Decision::Pass;
    }
    let rule = matched.trailing_zeros();
    let v = if g.deny & (1u64 << rule) == 0 {
        verdict::ALLOWED
    } else if g.audit != 0 {
        verdict::AUDIT
    } else {
        verdict::DROPPED
    };
    count_in(&POLICY_VERDICTS, rule * verdict::COUNT + v as u32);
    if v == verdict::ALLOWED {
        return Decision::Pass;
    }
    // SAFETY: a helper call without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.verdict = v;
    event.rule = rule as u8;
    if POLICY_EVENTS.output::<PolicyEvent>(&event, 0).is_err() {
        count_in(&POLICY_COUNTERS, counter::EVENT_LOST);
    }
    if v == verdict::DROPPED {
        Decision::Deny
    } else {
        Decision::Pass
    }
}

/// The egress check of a connect or datagram to `dst_ip4:dst_port`
/// (network-order address, host-order port), before any rewrite.
#[inline(always)]
pub(super) fn egress4(ctx: &SockAddrContext, dst_ip4: u32, dst_port: u16, proto: u8) -> Decision {
    let Some(g) = globals() else {
        return Decision::Pass;
    };
    if g.egress == 0 {
        return Decision::Pass;
    }
    let dst = dst_ip4.to_ne_bytes();
    let mut matched = g.egress & (lpm(&POLICY_DST, dst) | g.no_dst_cidr);
    if matched == 0 {
        return Decision::Pass;
    }
    matched &= ports(g, proto, dst_port);
    if matched == 0 {
        return Decision::Pass;
    }
    // SAFETY: the context's socket pointer is never null in these hooks
    // (the verifier types it as a socket); src_ip4 is one of its readable
    // fields, 0 while the socket is not bound to an address.
    let bound = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_ip4 }.to_ne_bytes();
    // SAFETY: the context is a sock_addr context, which the helper takes.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if matched & !g.no_src_cidr != 0 {
        let by_source = if bound != [0; 4] {
            lpm(&POLICY_SRC, bound)
        } else {
            // SAFETY: a lookup in a map of plain values.
            unsafe { POLICY_NETNS.get(&netns) }.copied().unwrap_or(0)
        };
        matched &= by_source | g.no_src_cidr;
    }
    if matched & !g.no_cgroup != 0 {
        matched &= cgroups(g) | g.no_cgroup;
    }
    let event = PolicyEvent {
        netns,
        // SAFETY: a helper call without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        src_ip4: bound,
        dst_ip4: dst,
        dst_port,
        proto,
        direction: POLICY_EGRESS,
        ..PolicyEvent::default()
    };
    decide(g, matched, event)
}

/// Returned by `cgroup_skb` programs: 1 passes the packet, 0 drops it.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// TCP flags byte: SYN without ACK opens a connection.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[cgroup_skb(ingress)]
pub fn weft_policy_ingress(ctx: SkBuffContext) -> i32 {
    match ingress4(&ctx) {
        Decision::Pass => PASS,
        Decision::Deny => DROP,
    }
}

/// Copies `N` bytes at `offset` of the packet; false when it is shorter.
/// (A constant length: the verifier refuses one that may be zero.)
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: usize, dst: &mut [u8; N]) -> bool {
    // SAFETY: the helper writes at most N bytes into `dst`.
    unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            offset as u32,
            dst.as_mut_ptr().cast(),
            N as u32,
        ) == 0
    }
}

/// The ingress check of an IPv4 packet (the context's data starts at its
/// IP header): a TCP SYN or a UDP datagram is matched, anything else
/// passes.
#[inline(always)]
fn ingress4(ctx: &SkBuffContext) -> Decision {
    let Some(g) = globals() else {
        return Decision::Pass;
    };
    if g.ingress == 0 || ctx.skb.family() != 2 {
        return Decision::Pass;
    }
    let mut ip = [0u8; 20];
    if !load(ctx, 0, &mut ip) || ip[0] >> 4 != 4 {
        count_in(&POLICY_COUNTERS, counter::UNPARSED);
        return Decision::Pass;
    }
    let proto = ip[9];
    let l4 = usize::from(ip[0] & 0x0f) * 4;
    let ports_at = |h: &[u8]| {
        (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        )
    };
    let parsed = if proto == IPPROTO_TCP {
        let mut h = [0u8; 14];
        let ok = load(ctx, l4, &mut h);
        if ok && h[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
            // Not a connection's first packet: established traffic passes.
            return Decision::Pass;
        }
        ok.then(|| ports_at(&h))
    } else if proto == IPPROTO_UDP {
        let mut h = [0u8; 4];
        load(ctx, l4, &mut h).then(|| ports_at(&h))
    } else {
        return Decision::Pass;
    };
    let Some((src_port, dst_port)) = parsed else {
        count_in(&POLICY_COUNTERS, counter::UNPARSED);
        return Decision::Pass;
    };
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let mut matched = g.ingress & (lpm(&POLICY_DST, dst) | g.no_dst_cidr);
    if matched == 0 {
        return Decision::Pass;
    }
    matched &= ports(g, proto, dst_port) & (lpm(&POLICY_SRC, src) | g.no_src_cidr);
    let event = PolicyEvent {
        src_ip4: src,
        dst_ip4: dst,
        src_port,
        dst_port,
        proto,
        direction: POLICY_INGRESS,
        ..PolicyEvent::default()
    };
    decide(g, matched, event)
}
