//! Userspace-only conveniences.

use crate::{
    Owner, SockTuple,
    config::ProbeConfig,
    conn::{ListenKey, TcpConn},
    data::{DataHeader, SyscallArgs},
    drop::{DropKey, DropStats},
    event::TcpEvent,
    policy::{PolicyEvent, PolicyGlobals, PortKey},
    steer::{AffinityEntry, AffinityKey, Backend, Origin, ServiceEntry, ServiceKey, SlotKey},
    udp::UdpFlow,
};

// SAFETY: all of these are #[repr(C)], made only of integers and byte arrays
// with explicit padding, so every bit pattern is valid.
unsafe impl aya::Pod for SockTuple {}
unsafe impl aya::Pod for Owner {}
unsafe impl aya::Pod for TcpConn {}
unsafe impl aya::Pod for ListenKey {}
unsafe impl aya::Pod for TcpEvent {}
unsafe impl aya::Pod for UdpFlow {}
unsafe impl aya::Pod for ProbeConfig {}
unsafe impl aya::Pod for SyscallArgs {}
unsafe impl aya::Pod for DataHeader {}
unsafe impl aya::Pod for DropKey {}
unsafe impl aya::Pod for DropStats {}
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServiceEntry {}
unsafe impl aya::Pod for SlotKey {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for Origin {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityEntry {}
unsafe impl aya::Pod for PortKey {}
unsafe impl aya::Pod for PolicyGlobals {}
unsafe impl aya::Pod for PolicyEvent {}

impl Owner {
    /// The `comm` as text, up to its first NUL.
    pub fn comm_str(&self) -> &str {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        core::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}
