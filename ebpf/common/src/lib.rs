//! The ABI between weft's kernel programs and its agent.
//!
//! The kernel crate and the agent are built by different compilers (the BPF
//! toolchain and stable Rust): only `#[repr(C)]` layouts with fixed-width
//! fields and explicit padding are guaranteed to agree. Every type here has a
//! size assertion; change one and both sides must be rebuilt together.
#![no_std]

pub mod config;
pub mod conn;
pub mod counters;
pub mod data;
pub mod drop;
pub mod event;
pub mod policy;
pub mod steer;
pub mod udp;

#[cfg(feature = "user")]
mod user;

/// Length of a task's `comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An address pair as seen from one socket: `local` is this socket's side.
/// IPv4 addresses use the first four bytes of each address field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockTuple>() == 40);

/// The process that owns a socket, captured in process context (a syscall
/// path). Hooks that run in softirq context never fill this in themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id (tgid). 0 when unknown.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 32);
