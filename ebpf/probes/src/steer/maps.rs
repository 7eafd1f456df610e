//! The steering maps. Every one is pinned by the agent under
//! `<bpffs>/weft/steer/<version>/maps/`, so their contents survive the
//! agent; the agent is their only writer (the programs write only ORIGINS,
//! STEERED, AFFINITY and the counters).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use weft_common::policy::{
    Ip4Data, POLICY_EVENTS_BYTES, POLICY_MAX_CGROUPS, POLICY_MAX_NETNS, POLICY_MAX_PORTS,
    POLICY_MAX_PREFIXES, POLICY_MAX_RULES, PolicyGlobals, PortKey, counter as policy_counter,
    verdict,
};
use weft_common::steer::{
    AffinityEntry, AffinityKey, Backend, Origin, ReplyKey, STEER_MAX_AFFINITY, STEER_MAX_BACKENDS,
    STEER_MAX_REPLIES, STEER_MAX_SERVICES, STEER_MAX_SOCKETS, ServiceEntry, ServiceKey, SlotKey,
    counter,
};

/// Service address -> id and slot count. The one lookup every connect
/// pays.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(STEER_MAX_SERVICES, 0);

/// (service id, slot) -> backend id; a backend of weight w fills about w
/// shares of the slots.
#[map]
pub static SLOTS: HashMap<SlotKey, u32> =
    HashMap::with_max_entries(STEER_MAX_SERVICES * weft_common::steer::STEER_MAX_SLOTS, 0);

/// Backend id -> address.
#[map]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(STEER_MAX_BACKENDS, 0);

/// Connects rewritten to each backend, by backend id (entries created by
/// the agent; the programs only add).
#[map]
pub static BACKEND_CONNECTS: HashMap<u32, u64> = HashMap::with_max_entries(STEER_MAX_BACKENDS, 0);

/// Connects refused for want of a backend, by service id.
#[map]
pub static SERVICE_NO_BACKEND: HashMap<u32, u64> = HashMap::with_max_entries(STEER_MAX_SERVICES, 0);

/// Socket cookie -> what it dialed, for getpeername. LRU: sockets are not
/// removed when they close; the oldest go first.
#[map]
pub static ORIGINS: LruHashMap<u64, Origin> = LruHashMap::with_max_entries(STEER_MAX_SOCKETS, 0);

/// `struct sock` address -> what it dialed, for the agent's flow records
/// (its TCP events name sockets by that address). The agent removes an
/// entry once the connection's record is written; LRU for the rest.
#[map]
pub static STEERED: LruHashMap<u64, Origin> = LruHashMap::with_max_entries(STEER_MAX_SOCKETS, 0);

/// (service, client) -> the backend the client was last sent to and when
/// (`session_affinity: client_ip`). LRU: a client that stops connecting
/// is forgotten when room is needed; the agent removes the entries of
/// services and backends that are gone.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(STEER_MAX_AFFINITY, 0);

/// (UDP socket cookie, backend) -> the service the socket sent to: a
/// datagram from that backend reads as coming from the service address.
/// LRU: nothing removes entries of closed sockets.
#[map]
pub static REPLIES: LruHashMap<ReplyKey, ServiceKey> =
    LruHashMap::with_max_entries(STEER_MAX_REPLIES, 0);

/// See `weft_common::steer::counter`.
#[map]
pub static STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to a per-CPU counter (no atomics needed per CPU).
#[inline(always)]
pub fn count(idx: u32) {
    count_in(&STEER_COUNTERS, idx);
}

/// Adds one to an agent-created counter shared between CPUs.
#[inline(always)]
pub fn bump(map: &HashMap<u32, u64>, id: u32) {
    if let Some(slot) = map.get_ptr_mut(&id) {
        crate::atomic::add_u64(slot, 1);
    }
}

// ---- policy (see weft_common::policy) ----

/// The masks of rules with a property; entry 0 only. All zero (no rule)
/// until the agent writes it.
#[map]
pub static POLICY_GLOBALS: Array<PolicyGlobals> = Array::with_max_entries(1, 0);

/// Source prefix -> rules whose `from.cidr` covers it (each prefix holds
/// the bits of every shorter prefix that covers it, so the longest match
/// answers for all).
#[map]
pub static POLICY_SRC: LpmTrie<Ip4Data, u64> = LpmTrie::with_max_entries(POLICY_MAX_PREFIXES, 0);

/// Destination prefix -> rules whose destination covers it (as above).
#[map]
pub static POLICY_DST: LpmTrie<Ip4Data, u64> = LpmTrie::with_max_entries(POLICY_MAX_PREFIXES, 0);

/// (protocol, port) -> rules that name that port.
#[map]
pub static POLICY_PORTS: HashMap<PortKey, u64> = HashMap::with_max_entries(POLICY_MAX_PORTS, 0);

/// Netns cookie -> egress rules whose `from.cidr` covers one of the
/// namespace's addresses (the source of a socket not bound yet).
#[map]
pub static POLICY_NETNS: HashMap<u64, u64> = HashMap::with_max_entries(POLICY_MAX_NETNS, 0);

/// cgroup id of a `from.cgroup` prefix -> rules naming it.
#[map]
pub static POLICY_CGROUPS: HashMap<u64, u64> = HashMap::with_max_entries(POLICY_MAX_CGROUPS, 0);

/// Verdicts per rule: index rule * verdict::COUNT + verdict.
#[map]
pub static POLICY_VERDICTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(POLICY_MAX_RULES * verdict::COUNT, 0);

/// See `weft_common::policy::counter`.
#[map]
pub static POLICY_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(policy_counter::COUNT, 0);

/// Denied and audited connects, datagrams and packets, for records.
#[map]
pub static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(POLICY_EVENTS_BYTES, 0);

/// Adds one to a per-CPU counter of `map`.
#[inline(always)]
pub fn count_in(map: &PerCpuArray<u64>, idx: u32) {
    if let Some(slot) = map.get_ptr_mut(idx) {
        // SAFETY: the pointer comes from the map and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}
