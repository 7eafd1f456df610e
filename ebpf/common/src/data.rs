//! Payload snippets of socket reads and writes, for the L7 parsers.
//!
//! Each record on the `DATA` ring buffer is a [`DataHeader`] followed by
//! `captured_len` bytes of payload (a prefix of what the syscall moved).

/// Most payload bytes copied per read/write (the configured snippet size is
/// at most this).
pub const DATA_MAX: usize = 4096;

/// The application sent the bytes.
pub const DIR_SEND: u8 = 0;
/// The application received the bytes.
pub const DIR_RECV: u8 = 1;

/// Which end of its TCP connection the socket is, as the kernel's
/// connection table knew it when the bytes moved (`DataHeader::role`).
pub mod role {
    /// Not known: UDP, or a connection older than the agent.
    pub const UNKNOWN: u8 = 0;
    /// The socket connected.
    pub const CLIENT: u8 = 1;
    /// The socket was accepted from a listener.
    pub const SERVER: u8 = 2;
}

/// `DataHeader::flags`.
pub mod flags {
    /// The bytes are the plaintext of a TLS connection, read at the TLS
    /// library's `SSL_read`/`SSL_write` (uprobes), not at a syscall; the
    /// header's `offset` counts plaintext bytes.
    pub const TLS: u8 = 1;
    /// Not payload: the trace context the kernel wrote into a request
    /// as it was sent (`traces.inject_traceparent`), as an
    /// [`super::Injected`]. Its header has the sending socket's tuple,
    /// thread and the time of the write (before the write's own payload
    /// record); its `sk` is 0.
    pub const INJECTED: u8 = 2;
}

/// A `traceparent` the kernel wrote into an outgoing request: what the
/// header says, for the agent's CLIENT span of that request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub trace_id: [u8; 16],
    /// The span id the header names as the parent: the request's CLIENT
    /// span.
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Injected>() == 32);

/// A TLS library call in flight (`SSL_read`, `SSL_write` and their `_ex`
/// forms), keyed by thread id from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `_ex` forms: where the library writes the byte count (`size_t *`);
    /// 0 for `SSL_read`/`SSL_write`, which return it.
    pub count_at: u64,
    /// The socket the library's own read or write syscall named during
    /// the call (0 when it made none: data already buffered).
    pub sk: u64,
    /// DIR_SEND (a write) or DIR_RECV (a read).
    pub direction: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<TlsCall>() == 40);

/// A TLS connection's plaintext stream, by process and `SSL *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsKey {
    pub ssl: u64,
    pub pid: u32,
    pub _pad: u32,
}

/// The socket under an `SSL *` and the plaintext bytes it moved so far
/// in each direction (the offsets of its records).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStream {
    pub sk: u64,
    pub sent: u64,
    pub received: u64,
}

/// Syscalls whose payload is captured (SyscallArgs.kind).
pub mod kind {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const RECVFROM: u32 = 3;
    pub const SENDTO: u32 = 4;
    pub const RECVMSG: u32 = 5;
    pub const SENDMSG: u32 = 6;
    pub const READV: u32 = 7;
    pub const WRITEV: u32 = 8;
    pub const RECVMMSG: u32 = 9;
    pub const SENDMMSG: u32 = 10;
}

/// A data syscall in flight, keyed by thread id from its entry to its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    /// `kind::*`.
    pub kind: u32,
    /// IPPROTO_TCP or IPPROTO_UDP, set when the socket tracepoint fires.
    pub protocol: u16,
    /// `role::*`, set with `protocol`.
    pub role: u8,
    pub _pad: u8,
    /// The user buffer, iovec array or msghdr, by kind.
    pub buf: u64,
    /// The user sockaddr of sendto/recvfrom (0 when none).
    pub addr: u64,
    /// The socket, set by sock_send_length/sock_recv_length during the
    /// syscall: 0 means the fd was not a socket.
    pub sk: u64,
    /// Where the syscall's bytes start in the socket's stream (TCP), set
    /// with `sk`: see [`DataHeader::offset`].
    pub offset: u64,
    /// The file descriptor (argument 0 of every data syscall).
    pub fd: u32,
    /// recvfrom/recvmsg/recvmmsg flags (MSG_PEEK...), 0 for the others.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallArgs>() == 48);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub sk: u64,
    /// bpf_ktime_get_ns() at the syscall's exit.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// Bytes the syscall moved.
    pub total_len: u32,
    /// Bytes that follow this header.
    pub captured_len: u32,
    /// DIR_SEND or DIR_RECV.
    pub direction: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    /// `role::*`: which end of its connection the socket is. Payload
    /// records come through another ring than the lifecycle events, and
    /// may be read before the agent learns of the connection (and after
    /// the kernel forgot it, once closed): the record itself must say.
    pub role: u8,
    /// `flags::*`.
    pub flags: u8,
    /// The peer's `struct sockaddr_in`/`_in6` when the syscall named one
    /// (unconnected UDP); zero otherwise.
    pub peer: [u8; 28],
    pub comm: [u8; crate::COMM_LEN],
    /// The socket's own addresses, read from `struct sock_common` (zero
    /// when the kernel's layout is unknown).
    pub tuple: crate::SockTuple,
    /// TCP: bytes the socket had moved in this direction before these
    /// (counted since the agent first saw it), so that a record lost
    /// between two others shows as a gap. 0 for UDP.
    pub offset: u64,
}
const _: () = assert!(core::mem::size_of::<DataHeader>() == 128);

impl Default for DataHeader {
    fn default() -> Self {
        Self {
            sk: 0,
            ts_ns: 0,
            pid: 0,
            tid: 0,
            total_len: 0,
            captured_len: 0,
            direction: 0,
            protocol: 0,
            role: role::UNKNOWN,
            flags: 0,
            peer: [0; 28],
            comm: [0; crate::COMM_LEN],
            tuple: crate::SockTuple {
                local_addr: [0; 16],
                remote_addr: [0; 16],
                local_port: 0,
                remote_port: 0,
                family: 0,
                _pad: 0,
            },
            offset: 0,
        }
    }
}

/// The per-CPU scratch record the kernel fills before output (only the
/// header and `captured_len` <= DATA_MAX bytes are sent). The data area is
/// twice DATA_MAX: gathering several buffers, the kernel copies up to
/// DATA_MAX bytes at an offset below DATA_MAX, and the verifier must see
/// that this stays inside the record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataHeader,
    pub data: [u8; 2 * DATA_MAX],
    /// The kernel's working state while gathering buffers (never sent):
    /// kept in the map value, whose contents the verifier does not track,
    /// so that every path through a buffer leads to the same state.
    pub gathered: u64,
    pub left: u64,
}
