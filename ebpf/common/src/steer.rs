//! Maps of the steering programs (cgroup sock_addr connect, sendmsg,
//! recvmsg and getpeername, IPv4 and IPv6, object `weft-steer`). The agent writes services and
//! backends; the programs rewrite connects and remember, per socket, which
//! service it dialed. All of it is pinned under bpffs and outlives the
//! agent.

/// Weighted slots per service: a backend of weight w holds about
/// w / (sum of weights) of them, and a connect picks one slot at random.
pub const STEER_MAX_SLOTS: u32 = 256;
/// Services the SERVICES map holds.
pub const STEER_MAX_SERVICES: u32 = 1024;
/// Backends the BACKENDS map holds (64 per service).
pub const STEER_MAX_BACKENDS: u32 = 65536;
/// Sockets remembered as steered (LRU) for getpeername and flow records.
pub const STEER_MAX_SOCKETS: u32 = 65536;
/// Clients remembered per (service, client) for session affinity (LRU).
pub const STEER_MAX_AFFINITY: u32 = 65536;
/// (UDP socket, backend) pairs remembered to rewrite replies (LRU).
pub const STEER_MAX_REPLIES: u32 = 65536;

/// A service address: what a connect dialed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 in the first four bytes (network order).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// A service's entry: its id, how many weighted slots it has and its
/// session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// 1-based service id (key of SERVICE_STATS, high part of slot keys).
    pub id: u32,
    /// Slots 0..slots of SLOTS are filled; 0: no usable backend, the
    /// connect fails with ECONNREFUSED.
    pub slots: u32,
    /// `session_affinity: client_ip`: how long (seconds) a client keeps
    /// its backend after its last connect; 0: no affinity.
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceEntry>() == 16);

/// Key of AFFINITY: one client of one service. A client is a network
/// namespace (a pod on Kubernetes, where each pod has its own namespace
/// and address) and, when the socket was bound before its connect, the
/// address it was bound to; an unbound socket (the usual case) has no
/// source address yet when connect4 runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie` of the connecting socket's namespace.
    pub netns: u64,
    pub service: u32,
    /// The bound source address (IPv4 in the first four bytes, network
    /// order); all zero when unbound.
    pub client: [u8; 16],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 32);

/// Value of AFFINITY: the backend a client was sent to and when it last
/// connected. The backend's address is kept with its id so that a
/// reconciled service whose id now names another address is not followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    /// `bpf_ktime_get_ns` of the client's last connect to the service.
    pub last_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<AffinityEntry>() == 40);

/// Key of SLOTS: one weighted slot of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub service: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);

/// A backend (value of BACKENDS, keyed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 in the first four bytes (network order).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// What a steered socket dialed and where it went (values of ORIGINS,
/// keyed by socket cookie, and of STEERED, keyed by `struct sock`
/// address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub service: ServiceKey,
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<Origin>() == 52);

/// Key of REPLIES: datagrams from `backend` arriving at the UDP socket
/// `cookie` are replies to datagrams it sent to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub cookie: u64,
    /// The backend's address as [`ServiceKey::addr`] holds one (IPv4,
    /// also v4-mapped, in the first four bytes).
    pub backend: [u8; 16],
    /// Host byte order.
    pub backend_port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<ReplyKey>() == 32);

/// Per-CPU counters of the steering programs (STEER_COUNTERS).
pub mod counter {
    /// Connects rewritten to a backend.
    pub const REWRITTEN: u32 = 0;
    /// Connects to a service with no usable backend (failed with
    /// ECONNREFUSED).
    pub const NO_BACKEND: u32 = 1;
    /// A service whose slot or backend was missing (the agent was
    /// rewriting it): the connect went through unchanged.
    pub const INCOMPLETE: u32 = 2;
    /// A steered socket could not be remembered (getpeername and its flow
    /// record will show the backend only).
    pub const LOST_ORIGIN: u32 = 3;
    /// getpeername calls answered with the service address.
    pub const PEERNAME: u32 = 4;
    /// Connects of an affinity service sent to the client's remembered
    /// backend.
    pub const AFFINITY_HIT: u32 = 5;
    /// A client's choice could not be remembered (its next connect may go
    /// to another backend).
    pub const AFFINITY_LOST: u32 = 6;
    /// A UDP datagram to a service rewritten, whose replies could not be
    /// remembered: they keep the backend's address as their source.
    pub const REPLY_LOST: u32 = 7;
    /// UDP replies whose source was rewritten to the service address.
    pub const REPLY_REWRITTEN: u32 = 8;
    pub const COUNT: u32 = 10;
}
