//! UDP flows from `cgroup_skb` programs on the cgroup v2 root.
//!
//! Socket tracepoints give a UDP socket's byte counts but not the peer of
//! an unconnected socket (a DNS server answers many peers from one socket),
//! so UDP is counted per datagram where the packet, with its headers, meets
//! the socket: egress runs in the sender's context when the datagram
//! leaves its socket, ingress when a datagram is queued to a socket. Both
//! see the packet from the IP header on. Always returns 1 (allow): these
//! programs observe, they never filter.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::cgroup_skb, programs::SkBuffContext};
use weft_common::{
    AF_INET, AF_INET6, IPPROTO_UDP, SockTuple,
    counters::index,
    udp::{UDP_FIRST_EGRESS, UDP_OWNER_KNOWN, UdpFlow},
};

use crate::{
    maps::{UDP_FLOWS, count},
    owner,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const UDP_HEADER_LEN: u32 = 8;
const IPV6_HEADER_LEN: u32 = 40;
/// Where the IPv4 header has its protocol, and IPv6 its next header.
const IPV4_PROTOCOL: usize = 9;
const IPV6_NEXT_HEADER: usize = 6;

#[cgroup_skb(egress)]
pub fn weft_udp_egress(ctx: SkBuffContext) -> i32 {
    if try_udp::<true>(&ctx, true).is_err() {
        crate::maps::count(weft_common::counters::index::SKIP_READ_FAILED);
    }
    1
}

/// `weft_udp_egress` without the sending process: kernels up to at least
/// 6.12 refuse the task helpers (`bpf_get_current_pid_tgid`...) in
/// cgroup_skb programs, and the agent loads this one there instead.
#[cgroup_skb(egress)]
pub fn weft_udp_egress_anon(ctx: SkBuffContext) -> i32 {
    if try_udp::<false>(&ctx, true).is_err() {
        crate::maps::count(weft_common::counters::index::SKIP_READ_FAILED);
    }
    1
}

#[cgroup_skb(ingress)]
pub fn weft_udp_ingress(ctx: SkBuffContext) -> i32 {
    if try_udp::<false>(&ctx, false).is_err() {
        crate::maps::count(weft_common::counters::index::SKIP_READ_FAILED);
    }
    1
}

/// A datagram's address pair and payload.
struct Datagram {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    family: u16,
    payload: u64,
    segments: u64,
}

/// `OWNER`: the program may learn the sending task (egress only).
fn try_udp<const OWNER: bool>(ctx: &SkBuffContext, egress: bool) -> Result<(), i64> {
    let Some(dgram) = parse(ctx)? else {
        return Ok(());
    };
    if OWNER && owner::is_agent() {
        return Ok(());
    }
    count(index::UDP_PACKET);
    // Key by the local socket's view: on egress the local side is the source.
    let key = if egress {
        SockTuple {
            local_addr: dgram.src,
            remote_addr: dgram.dst,
            local_port: dgram.sport,
            remote_port: dgram.dport,
            family: dgram.family,
            _pad: 0,
        }
    } else {
        SockTuple {
            local_addr: dgram.dst,
            remote_addr: dgram.src,
            local_port: dgram.dport,
            remote_port: dgram.sport,
            family: dgram.family,
            _pad: 0,
        }
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = match UDP_FLOWS.get_ptr_mut(&key) {
        Some(flow) => flow,
        None => {
            let new = UdpFlow {
                first_ns: now,
                flags: if egress { UDP_FIRST_EGRESS } else { 0 },
                ..UdpFlow::default()
            };
            if UDP_FLOWS.insert(&key, &new, 0).is_err() {
                count(index::LOST_MAP_UDP);
                return Ok(());
            }
            UDP_FLOWS.get_ptr_mut(&key).ok_or(0i64)?
        }
    };
    // SAFETY: `flow` points into the map value; counters are shared
    // between CPUs and updated atomically.
    unsafe {
        (*flow).last_ns = now;
        let (bytes, packets) = if egress {
            (&raw mut (*flow).bytes_sent, &raw mut (*flow).packets_sent)
        } else {
            (
                &raw mut (*flow).bytes_received,
                &raw mut (*flow).packets_received,
            )
        };
        crate::atomic::add_u64(bytes, dgram.payload);
        crate::atomic::add_u64(packets, dgram.segments);
        if OWNER && (*flow).flags & UDP_OWNER_KNOWN == 0 {
            owner::fill(&raw mut (*flow).owner);
            (*flow).flags |= UDP_OWNER_KNOWN;
        }
    }
    Ok(())
}

/// Parses IPv4/IPv6 + UDP headers; `None` for anything else.
fn parse(ctx: &SkBuffContext) -> Result<Option<Datagram>, i64> {
    // SAFETY: reading a field of the context structure.
    let skb = unsafe { &*ctx.skb.skb };
    let protocol = u16::from_be(skb.protocol as u16);
    // Most packets that pass are TCP: tell them apart first, and cheaply.
    let is_udp = match protocol {
        ETH_P_IP => byte_at::<IPV4_PROTOCOL>(ctx)? == IPPROTO_UDP,
        // Datagrams behind extension headers are not counted.
        ETH_P_IPV6 => byte_at::<IPV6_NEXT_HEADER>(ctx)? == IPPROTO_UDP,
        _ => false,
    };
    if !is_udp {
        return Ok(None);
    }
    let mut d = Datagram {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        payload: 0,
        segments: if skb.gso_segs > 1 {
            skb.gso_segs as u64
        } else {
            1
        },
    };
    let l4: u32 = if protocol == ETH_P_IP {
        let vihl: u8 = ctx.load(0)?;
        let src: [u8; 4] = ctx.load(12)?;
        let dst: [u8; 4] = ctx.load(16)?;
        d.src[..4].copy_from_slice(&src);
        d.dst[..4].copy_from_slice(&dst);
        d.family = AF_INET;
        ((vihl & 0x0f) as u32) * 4
    } else {
        d.src = ctx.load(8)?;
        d.dst = ctx.load(24)?;
        d.family = AF_INET6;
        IPV6_HEADER_LEN
    };
    let ports: [u8; 4] = ctx.load(l4 as usize)?;
    d.sport = u16::from_be_bytes([ports[0], ports[1]]);
    d.dport = u16::from_be_bytes([ports[2], ports[3]]);
    d.payload = skb.len.saturating_sub(l4 + UDP_HEADER_LEN) as u64;
    Ok(Some(d))
}

/// The packet's byte at `AT` (from the IP header on), read straight from
/// its linear data when it is there, else through `bpf_skb_load_bytes`.
/// Every packet of the cgroup passes these programs, TCP's included, and
/// the helper call made telling TCP apart cost about as much as counting
/// a datagram.
#[inline(always)]
fn byte_at<const AT: usize>(ctx: &SkBuffContext) -> Result<u8, i64> {
    // SAFETY: reading fields of the context structure; the byte is read
    // only after the bounds check the verifier asks for.
    unsafe {
        let data = (*ctx.skb.skb).data as usize;
        let end = (*ctx.skb.skb).data_end as usize;
        // Checked as "the byte after it is within the packet": the bound
        // every verifier since 5.10 reads the same way.
        if data + AT + 1 <= end {
            return Ok(*((data + AT) as *const u8));
        }
    }
    ctx.load(AT)
}
