//! Records sent from the kernel to the agent through the `EVENTS` ring
//! buffer. Only lifecycle events travel this way; counters stay in maps.

use crate::conn::TcpConn;

/// The connection reached ESTABLISHED.
pub const EVENT_TCP_OPEN: u32 = 1;
/// The socket reached CLOSE after having been established.
pub const EVENT_TCP_CLOSE: u32 = 2;
/// The socket reached CLOSE without ever being established.
pub const EVENT_TCP_FAIL: u32 = 3;
/// A reset was sent (`sk` may be 0: a reset for a packet with no socket).
pub const EVENT_TCP_RESET_SENT: u32 = 4;
/// A reset was received.
pub const EVENT_TCP_RESET_RECEIVED: u32 = 5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// EVENT_TCP_*.
    pub kind: u32,
    pub _pad: u32,
    /// bpf_ktime_get_ns() of the event.
    pub ts_ns: u64,
    /// Address of the kernel socket: identifies the socket while it lives.
    pub sk: u64,
    /// The socket's state and counters at the time of the event. For resets
    /// without a known socket only `conn.tuple` is filled in.
    pub conn: TcpConn,
}
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 144);
