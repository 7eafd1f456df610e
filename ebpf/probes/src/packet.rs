//! Where a packet's IP header is, from the `struct sk_buff` offsets the
//! agent found in BTF (`SkbOffsets`): the reset programs read the packet a
//! reset answers, the drop programs the packet freed. Each then reads the
//! header its own way (the drop programs know the family from the
//! packet's EtherType already; a reset's packet is told by the IP
//! version).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use weft_common::config::NO_FIELD;

use crate::{maps::config, tp::Skip};

/// `skb->network_header` when no network header was set.
const UNSET_HEADER: u16 = 0xffff;

/// The address of the IP header of `skb` (`skb->head` plus
/// `skb->network_header`); `None` when the packet has no network header
/// set. `MissingField` when the kernel's layout is unknown or `skb` is
/// null, `ReadFailed` when a read fails.
#[inline(always)]
pub fn ip_header(skb: u64) -> Result<Option<u64>, Skip> {
    let off = &config().skb;
    if skb == 0 || off.head == NO_FIELD || off.network_header == NO_FIELD {
        return Err(Skip::MissingField);
    }
    // SAFETY: kernel reads through the checked helper.
    let (head, nh) = unsafe {
        let head = bpf_probe_read_kernel((skb + off.head as u64) as *const u64)
            .map_err(|_| Skip::ReadFailed)?;
        let nh = bpf_probe_read_kernel((skb + off.network_header as u64) as *const u16)
            .map_err(|_| Skip::ReadFailed)?;
        (head, nh)
    };
    if head == 0 || nh == UNSET_HEADER {
        return Ok(None);
    }
    Ok(Some(head + nh as u64))
}

/// The two ports that begin a TCP or UDP header at `l4`: (source,
/// destination).
#[inline(always)]
pub fn ports(l4: u64) -> Result<(u16, u16), Skip> {
    // SAFETY: the packet's bytes through the checked helper.
    let p = unsafe { bpf_probe_read_kernel(l4 as *const [u8; 4]) }.map_err(|_| Skip::ReadFailed)?;
    Ok((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}
