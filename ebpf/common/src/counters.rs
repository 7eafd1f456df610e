//! Per-CPU counters of the kernel programs (the `COUNTERS` array) and the
//! drop-reason histogram (`DROP_REASONS`).

/// Events the programs handled, per source, and what they could not deliver.
pub mod index {
    /// inet_sock_set_state calls for TCP.
    pub const TCP_STATE: u32 = 0;
    /// sock_send_length / sock_recv_length calls.
    pub const SOCK_IO: u32 = 1;
    /// tcp_probe calls.
    pub const TCP_PROBE: u32 = 2;
    pub const TCP_RETRANSMIT: u32 = 3;
    pub const TCP_RESET: u32 = 4;
    pub const SKB_DROP: u32 = 5;
    /// UDP datagrams seen by the cgroup_skb programs.
    pub const UDP_PACKET: u32 = 6;
    /// Ring buffer reservations that failed: events lost in the kernel.
    pub const LOST_RING_TCP: u32 = 7;
    /// A new TCP socket could not be inserted in TCP_CONNS.
    pub const LOST_MAP_TCP: u32 = 8;
    /// A new UDP flow could not be inserted in UDP_FLOWS.
    pub const LOST_MAP_UDP: u32 = 9;
    /// Drop reasons above DROP_REASON_SLOTS - 1.
    pub const DROP_REASON_OVERFLOW: u32 = 10;
    /// Payload snippets sent to the agent.
    pub const DATA: u32 = 11;
    /// Payload snippets lost: the DATA ring was full.
    pub const LOST_RING_DATA: u32 = 12;
    /// Data syscalls not tracked: the SYSCALL_ARGS map was full.
    pub const LOST_MAP_SYSCALL: u32 = 13;
    /// A dropped packet's address pair could not be inserted in
    /// DROP_FLOWS (it is still counted by reason).
    pub const LOST_MAP_DROP: u32 = 14;
    /// Packets `kfree_skb` freed that were not lost: not IP, a reason that
    /// is bookkeeping (`DropFilter`), or multicast nobody here joined.
    pub const SKB_NOT_DROP: u32 = 15;
    /// A listening socket could not be inserted in TCP_LISTENERS: its
    /// accepted connections are reported without an owner until the
    /// server touches them.
    pub const LOST_MAP_LISTENER: u32 = 16;
    /// A program stopped early because the running kernel's tracepoint
    /// lacks a field it needs: its event is not seen.
    pub const SKIP_MISSING_FIELD: u32 = 17;
    /// A program stopped early because a read of the kernel's record or
    /// packet failed: its event is not seen.
    pub const SKIP_READ_FAILED: u32 = 18;
    /// A TCP socket moving data whose establishment was not seen, taken
    /// into the table then (connected before the agent started).
    pub const TCP_ADOPTED: u32 = 19;
    /// TLS plaintext records sent (a part of `DATA`).
    pub const TLS_DATA: u32 = 20;
    /// TLS plaintext lost: the library call moved bytes on an `SSL *`
    /// whose socket was never named (no syscall seen under it yet).
    pub const LOST_TLS_SOCKET: u32 = 21;
    /// `traceparent` headers written into outgoing HTTP/1.x requests
    /// (`traces.inject_traceparent`).
    pub const TRACEPARENT_INJECTED: u32 = 22;
    /// Client sockets not put in the injection socket map (full, or a
    /// socket the kernel refuses there): their requests go unchanged.
    pub const LOST_INJECT_SOCKET: u32 = 23;
    pub const COUNT: u32 = 24;
}

/// Slots of the drop-reason histogram; the kernel has about 130 reasons.
pub const DROP_REASON_SLOTS: u32 = 512;
