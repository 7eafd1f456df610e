//! UDP flows, kept in the kernel's `UDP_FLOWS` map keyed by the address pair
//! as seen from the local socket. The agent polls and ages them out.

use crate::{Owner, SockTuple};

/// The first datagram seen for the flow went out of the local socket (the
/// local side is the client).
pub const UDP_FIRST_EGRESS: u32 = 1 << 0;
/// The owner was captured in the sending process's context.
pub const UDP_OWNER_KNOWN: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlow {
    pub owner: Owner,
    pub first_ns: u64,
    pub last_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// UDP_* flags.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UdpFlow>() == 88);

/// Key of `UDP_FLOWS`.
pub type UdpKey = SockTuple;
