//! Maps and events of the L3/L4 policy programs (object `weft-steer`).
//!
//! Rules are matched with bit masks, one bit per rule (in configuration
//! order, so at most [`POLICY_MAX_RULES`]): each map answers "which rules
//! does this source, destination or port satisfy", and the rules that
//! satisfy all of them are ANDed together. The lowest bit left is the
//! first matching rule, which decides.

/// Rules one node may have (one bit each in a `u64`).
pub const POLICY_MAX_RULES: u32 = 64;
/// Prefixes the LPM tries hold.
pub const POLICY_MAX_PREFIXES: u32 = 16384;
/// (protocol, port) pairs rules name.
pub const POLICY_MAX_PORTS: u32 = 4096;
/// Network namespaces whose addresses a rule's `from.cidr` covers.
pub const POLICY_MAX_NETNS: u32 = 16384;
/// cgroups that rules' `from.cgroup` name.
pub const POLICY_MAX_CGROUPS: u32 = 1024;
/// Deepest cgroup level a `from.cgroup` prefix may be at.
pub const POLICY_MAX_CGROUP_LEVEL: u32 = 16;
/// Bytes of the verdict event ring.
pub const POLICY_EVENTS_BYTES: u32 = 256 * 1024;

/// Key of the LPM tries (POLICY_SRC, POLICY_DST): an IPv4 address in
/// network order, the way `bpf_lpm_trie_key` lays it out after the prefix
/// length.
pub type Ip4Data = [u8; 4];

/// Key of POLICY_PORTS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// Host byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);

/// The one entry of POLICY_GLOBALS: masks of the rules with a property.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyGlobals {
    /// Rules checked at connect and sendmsg.
    pub egress: u64,
    /// Rules checked on arriving packets.
    pub ingress: u64,
    /// Rules whose action is deny (the others allow).
    pub deny: u64,
    /// Rules without `from.cidr` (any source address).
    pub no_src_cidr: u64,
    /// Rules without `from.cgroup` (any cgroup).
    pub no_cgroup: u64,
    /// Rules without a destination address (any).
    pub no_dst_cidr: u64,
    /// Rules that take any TCP port (no `ports`, protocol tcp or none).
    pub any_port_tcp: u64,
    /// Rules that take any UDP port.
    pub any_port_udp: u64,
    /// 1: `policy_mode: audit` (a deny is recorded and let through).
    pub audit: u32,
    /// Deepest level of a `from.cgroup` prefix; 0: no rule names one.
    pub cgroup_levels: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyGlobals>() == 72);

/// Verdicts, as indices of POLICY_VERDICTS (rule * VERDICTS + verdict)
/// and in events.
pub mod verdict {
    /// An allow rule matched.
    pub const ALLOWED: u8 = 0;
    /// A deny rule matched and was enforced.
    pub const DROPPED: u8 = 1;
    /// A deny rule matched in audit mode: recorded and let through.
    pub const AUDIT: u8 = 2;
    pub const COUNT: u32 = 3;
}

/// `PolicyEvent::direction`.
pub const POLICY_EGRESS: u8 = 0;
pub const POLICY_INGRESS: u8 = 1;

/// A denied (or audited) connect, datagram or packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEvent {
    /// `bpf_ktime_get_ns`.
    pub ts_ns: u64,
    /// Egress: `bpf_get_netns_cookie` of the socket's namespace; 0 on
    /// ingress.
    pub netns: u64,
    /// Egress: the connecting task's cgroup v2 id; 0 on ingress.
    pub cgroup_id: u64,
    /// Network order. Egress: the socket's bound address, 0 when unbound.
    pub src_ip4: [u8; 4],
    pub dst_ip4: [u8; 4],
    /// Host byte order; 0 when unknown.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    /// Index of the rule in the configuration.
    pub rule: u8,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 40);

/// Per-CPU counters of the policy programs (POLICY_COUNTERS).
pub mod counter {
    /// A verdict event found the ring full: its record is lost (the
    /// verdict itself was applied and counted).
    pub const EVENT_LOST: u32 = 0;
    /// Ingress packets too short or malformed to match (let through).
    pub const UNPARSED: u32 = 1;
    pub const COUNT: u32 = 4;
}
