//! Dropped packets by address pair and reason, kept in the kernel's
//! `DROP_FLOWS` map; the agent polls it and writes `drop` records.

/// Entries of `DROP_FLOWS` (an LRU map: the least recently dropped pairs
/// make room).
pub const DROP_FLOWS_CAPACITY: u32 = 4096;

/// A dropped packet's addresses (as the packet carries them: `src` sent
/// it), L4 protocol and drop reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// IPv4 addresses use the first four bytes.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order; 0 for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// IPPROTO_* of the packet.
    pub protocol: u8,
    pub _pad: u8,
    /// The kernel's `enum skb_drop_reason`.
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<DropKey>() == 44);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Packets dropped since the entry was made.
    pub packets: u64,
    /// When the last one was dropped (CLOCK_MONOTONIC ns).
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<DropStats>() == 16);
