//! Per-socket TCP state, kept in the kernel's `TCP_CONNS` map (key: the
//! address of the `struct sock`) from the first state change until close.

use crate::{Owner, SockTuple};

/// The socket called connect() (the client side).
pub const CONN_ACTIVE: u32 = 1 << 0;
/// The socket was created by accept (the server side).
pub const CONN_PASSIVE: u32 = 1 << 1;
/// The connection reached ESTABLISHED.
pub const CONN_ESTABLISHED: u32 = 1 << 2;
/// `owner` was captured from a syscall on this very socket (as opposed to
/// borrowed from the listening socket, or unknown).
pub const CONN_OWNER_EXACT: u32 = 1 << 3;
/// The socket belongs to the agent itself: not reported.
pub const CONN_AGENT: u32 = 1 << 4;
/// First seen moving data, established before the agent started: its
/// figures count from then, and its role was guessed from the ports.
pub const CONN_ADOPTED: u32 = 1 << 5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpConn {
    pub tuple: SockTuple,
    pub owner: Owner,
    /// bpf_ktime_get_ns() of the first state change seen (SYN sent, or
    /// child socket created).
    pub start_ns: u64,
    /// Payload bytes the application wrote to the socket.
    pub bytes_sent: u64,
    /// Payload bytes the application read from the socket.
    pub bytes_received: u64,
    pub retransmits: u32,
    /// Smoothed RTT in microseconds (tcp_probe), 0 until measured.
    pub srtt_us: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// CONN_* flags.
    pub flags: u32,
    /// Last TCP state (TCP_ESTABLISHED = 1, ...).
    pub state: u32,
}
const _: () = assert!(core::mem::size_of::<TcpConn>() == 120);

/// A listening port, whose owner is used for accepted sockets until the
/// server touches the socket itself. Ports are per network namespace (as
/// in the kernel's own socket lookup): pods on one node listen on the same
/// port each in their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenKey {
    /// Inode number of the socket's network namespace (0 when unknown).
    pub netns: u32,
    pub port: u16,
    pub family: u16,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);

/// TCP states (include/net/tcp_states.h), stable kernel ABI.
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
}
