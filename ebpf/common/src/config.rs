//! Load-time settings of the kernel programs (read-only globals set by the
//! agent before the programs are loaded).

/// Where a tracepoint field sits in the record, read from the running
/// kernel's `/sys/kernel/tracing/events/*/*/format` at load time so that the
/// programs do not depend on one kernel's layout. `NO_FIELD` when absent.
pub const NO_FIELD: u16 = u16::MAX;

/// Offsets of the tracepoint fields the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    // sock:inet_sock_set_state
    pub state_skaddr: u16,
    pub state_oldstate: u16,
    pub state_newstate: u16,
    pub state_sport: u16,
    pub state_dport: u16,
    pub state_family: u16,
    pub state_protocol: u16,
    pub state_saddr: u16,
    pub state_daddr: u16,
    pub state_saddr_v6: u16,
    pub state_daddr_v6: u16,
    // sock:sock_send_length and sock:sock_recv_length (same layout)
    pub len_sk: u16,
    pub len_protocol: u16,
    pub len_ret: u16,
    pub len_flags: u16,
    // tcp:tcp_probe
    pub probe_skaddr: u16,
    pub probe_srtt: u16,
    // tcp:tcp_retransmit_skb
    pub retrans_skaddr: u16,
    // tcp:tcp_receive_reset
    pub rrst_skaddr: u16,
    pub rrst_sport: u16,
    pub rrst_dport: u16,
    pub rrst_family: u16,
    pub rrst_saddr: u16,
    pub rrst_daddr: u16,
    pub rrst_saddr_v6: u16,
    pub rrst_daddr_v6: u16,
    // tcp:tcp_send_reset (addresses as struct sockaddr_in/_in6, 28 bytes)
    pub srst_skaddr: u16,
    pub srst_saddr: u16,
    pub srst_daddr: u16,
    // skb:kfree_skb
    pub drop_reason: u16,
    pub drop_skbaddr: u16,
    /// The packet's L3 protocol (ETH_P_*, host order).
    pub drop_protocol: u16,
    /// The socket that received the packet (`rx_sk`, 6.12 and later).
    pub drop_rx_sk: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 68);

impl TracepointOffsets {
    /// Every field absent: the programs that need a field do nothing.
    pub const ABSENT: Self = Self {
        state_skaddr: NO_FIELD,
        state_oldstate: NO_FIELD,
        state_newstate: NO_FIELD,
        state_sport: NO_FIELD,
        state_dport: NO_FIELD,
        state_family: NO_FIELD,
        state_protocol: NO_FIELD,
        state_saddr: NO_FIELD,
        state_daddr: NO_FIELD,
        state_saddr_v6: NO_FIELD,
        state_daddr_v6: NO_FIELD,
        len_sk: NO_FIELD,
        len_protocol: NO_FIELD,
        len_ret: NO_FIELD,
        len_flags: NO_FIELD,
        probe_skaddr: NO_FIELD,
        probe_srtt: NO_FIELD,
        retrans_skaddr: NO_FIELD,
        rrst_skaddr: NO_FIELD,
        rrst_sport: NO_FIELD,
        rrst_dport: NO_FIELD,
        rrst_family: NO_FIELD,
        rrst_saddr: NO_FIELD,
        rrst_daddr: NO_FIELD,
        rrst_saddr_v6: NO_FIELD,
        rrst_daddr_v6: NO_FIELD,
        srst_skaddr: NO_FIELD,
        srst_saddr: NO_FIELD,
        srst_daddr: NO_FIELD,
        drop_reason: NO_FIELD,
        drop_skbaddr: NO_FIELD,
        drop_protocol: NO_FIELD,
        drop_rx_sk: NO_FIELD,
        _pad: 0,
    };
}

/// Offsets of socket members (`struct sock_common`, `struct sock`,
/// `struct inet_sock`), from the kernel's BTF, for reading a socket's
/// addresses where no tracepoint gives them. `NO_FIELD`
/// when unknown (no BTF): then only what tracepoints carry is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub daddr: u16,
    pub rcv_saddr: u16,
    pub dport: u16,
    /// `inet_sock.inet_sport` (network order), the local port. Not
    /// `skc_num`: a close that releases the port zeroes that before the
    /// lifecycle tracepoint fires and before the socket's last reads.
    pub sport: u16,
    pub family: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    /// `skc_state` (one byte: TCP_ESTABLISHED, ..., TCP_TIME_WAIT).
    pub state: u16,
    /// `u16 sk_protocol` of `struct sock` (a plain member since 5.6): the
    /// raw TCP lifecycle program leaves other protocols out with it.
    pub protocol: u16,
    /// `u32 srtt_us` of `struct tcp_sock` (the smoothed RTT in µs, times
    /// 8): the raw `tcp_probe` program's RTT sample.
    pub tcp_srtt_us: u16,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 20);

impl SockOffsets {
    pub const ABSENT: Self = Self {
        daddr: NO_FIELD,
        rcv_saddr: NO_FIELD,
        dport: NO_FIELD,
        sport: NO_FIELD,
        family: NO_FIELD,
        v6_daddr: NO_FIELD,
        v6_rcv_saddr: NO_FIELD,
        state: NO_FIELD,
        protocol: NO_FIELD,
        tcp_srtt_us: NO_FIELD,
    };
}

/// Offsets of `struct sk_buff` members, from the kernel's BTF, for the
/// addresses of a dropped packet. `NO_FIELD` when unknown: drops are then
/// counted by reason only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `unsigned char *head`.
    pub head: u16,
    /// `u16 network_header`, an offset from `head` (`0xffff` when unset).
    pub network_header: u16,
    /// `__be16 protocol`, the packet's EtherType: the raw `kfree_skb`
    /// program tells IP packets from others with it.
    pub protocol: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SkbOffsets>() == 8);

impl SkbOffsets {
    pub const ABSENT: Self = Self {
        head: NO_FIELD,
        network_header: NO_FIELD,
        protocol: NO_FIELD,
        _pad: 0,
    };
}

/// Offsets of the kernel structs between a task and the socket behind one
/// of its file descriptors (`task_struct.files -> files_struct.fdt ->
/// fdtable.fd[fd] -> file.private_data`, a `struct socket`, whose `sk` is
/// the `struct sock`), from the kernel's BTF. Used only on kernels without
/// `sock:sock_send_length`/`sock_recv_length` (before 6.3): there the data
/// syscalls' exit tracepoints count the bytes (`enabled` is then 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdOffsets {
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_max_fds: u16,
    pub fdt_fd: u16,
    pub file_inode: u16,
    pub file_private_data: u16,
    /// `umode_t i_mode` (u16): only a socket inode's file is followed.
    pub inode_mode: u16,
    pub socket_sk: u16,
    /// `u16 sk_protocol` (a plain member since 5.6).
    pub sock_protocol: u16,
    /// 1: the syscall exits count bytes (the fallback is on).
    pub enabled: u16,
}
const _: () = assert!(core::mem::size_of::<FdOffsets>() == 20);

impl FdOffsets {
    pub const ABSENT: Self = Self {
        task_files: NO_FIELD,
        files_fdt: NO_FIELD,
        fdt_max_fds: NO_FIELD,
        fdt_fd: NO_FIELD,
        file_inode: NO_FIELD,
        file_private_data: NO_FIELD,
        inode_mode: NO_FIELD,
        socket_sk: NO_FIELD,
        sock_protocol: NO_FIELD,
        enabled: 0,
    };
}

/// Which freed packets the drop program leaves out: `kfree_skb` also
/// fires for packets that were never lost (a closed socket's queue purged
/// at teardown, multicast for a group nobody joined), and the values of
/// `enum skb_drop_reason` differ between kernels, so the agent names them
/// from the running kernel's tracepoint format.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropFilter {
    /// Bit `r` set: reason `r` is bookkeeping, not a drop. One bit per
    /// slot of the drop-reason histogram.
    pub not_drop: [u32; (crate::counters::DROP_REASON_SLOTS / 32) as usize],
    /// The kernel's `NOT_SPECIFIED` value (`u32::MAX` when it has none): a
    /// multicast or broadcast packet freed for it was not for this host,
    /// and a TCP segment freed for it by a TIME_WAIT socket was handled
    /// (the peer's FIN, acknowledged).
    pub not_specified: u32,
}
const _: () = assert!(core::mem::size_of::<DropFilter>() == 68);

impl DropFilter {
    /// Nothing left out (before the agent fills it in).
    pub const NONE: Self = Self {
        not_drop: [0; (crate::counters::DROP_REASON_SLOTS / 32) as usize],
        not_specified: u32::MAX,
    };

    /// Marks `reason` as not a drop; reasons past the histogram are ignored.
    pub fn set_not_drop(&mut self, reason: u32) {
        if let Some(word) = self.not_drop.get_mut((reason / 32) as usize) {
            *word |= 1 << (reason % 32);
        }
    }

    /// Whether `reason` is bookkeeping rather than a drop.
    #[inline(always)]
    pub fn is_not_drop(&self, reason: u32) -> bool {
        match self.not_drop.get((reason / 32) as usize) {
            Some(word) => word & (1 << (reason % 32)) != 0,
            None => false,
        }
    }
}

/// Where a socket's network namespace is found, from the kernel's BTF:
/// `struct sock_common`'s `skc_net` (a `struct net *`), and in `struct
/// net` the namespace's inode number (`ns.inum`, what `/proc/PID/ns/net`
/// shows). `NO_FIELD` when unknown: every socket is then in namespace 0,
/// and a port's listeners in different namespaces are not told apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsOffsets {
    pub skc_net: u16,
    pub net_inum: u16,
}
const _: () = assert!(core::mem::size_of::<NetnsOffsets>() == 4);

impl NetnsOffsets {
    pub const ABSENT: Self = Self {
        skc_net: NO_FIELD,
        net_inum: NO_FIELD,
    };
}

/// All load-time settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The agent's own process id: its sockets are not observed.
    pub agent_pid: u32,
    /// Payload bytes copied per read/write for the L7 parsers; 0 disables
    /// payload capture.
    pub snippet_bytes: u32,
    pub offsets: TracepointOffsets,
    pub sock: SockOffsets,
    pub skb: SkbOffsets,
    pub drops: DropFilter,
    pub netns: NetnsOffsets,
    pub fd: FdOffsets,
    pub inject: InjectConfig,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 208);

/// `traces.inject_traceparent`: whether it is on, and how the injection
/// program samples a trace it starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Non-zero when injection is on.
    pub enabled: u32,
    /// A new trace is sampled when its id's lower 8 bytes, shifted right
    /// by one, are below this (`(high << 32) | low`): OpenTelemetry's
    /// TraceIdRatioBased, as the agent decides it.
    pub sample_below_high: u32,
    pub sample_below_low: u32,
}

impl InjectConfig {
    pub const OFF: Self = Self {
        enabled: 0,
        sample_below_high: 0,
        sample_below_low: 0,
    };
}

impl ProbeConfig {
    pub const DEFAULT: Self = Self {
        agent_pid: 0,
        snippet_bytes: 0,
        offsets: TracepointOffsets::ABSENT,
        sock: SockOffsets::ABSENT,
        skb: SkbOffsets::ABSENT,
        drops: DropFilter::NONE,
        netns: NetnsOffsets::ABSENT,
        fd: FdOffsets::ABSENT,
        inject: InjectConfig::OFF,
    };
}
