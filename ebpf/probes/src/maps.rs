//! Maps shared by the programs. Sizes are defaults: the agent sets the real
//! capacities at load time from its configuration.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use weft_common::{
    Owner,
    config::ProbeConfig,
    conn::{ListenKey, TcpConn},
    counters::{DROP_REASON_SLOTS, index},
    data::{DataEvent, SyscallArgs, TlsCall, TlsKey, TlsStream},
    drop::{DROP_FLOWS_CAPACITY, DropKey, DropStats},
    udp::{UdpFlow, UdpKey},
};

/// Load-time settings, written by the agent before loading.
#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = ProbeConfig::DEFAULT;

/// Live TCP sockets, keyed by the `struct sock` address. A plain hash map,
/// not LRU: every socket reaches TCP_CLOSE and is removed there, and when
/// the map is full a new socket is counted as lost rather than silently
/// evicting a live one.
#[map]
pub static TCP_CONNS: HashMap<u64, TcpConn> = HashMap::with_max_entries(65536, 0);

/// Owners of listening ports, to attribute accepted sockets until the
/// server process touches them. LRU: a stale listener is harmless.
#[map]
pub static TCP_LISTENERS: LruHashMap<ListenKey, Owner> = LruHashMap::with_max_entries(4096, 0);

/// UDP flows (address pair as seen by the local socket). The agent ages
/// them out; a full map counts new flows as lost.
#[map]
pub static UDP_FLOWS: HashMap<UdpKey, UdpFlow> = HashMap::with_max_entries(16384, 0);

/// TCP lifecycle events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Data syscalls between entry and exit, by thread id. LRU: a thread
/// killed inside a syscall never reaches its exit.
#[map]
pub static SYSCALL_ARGS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);

/// Payload snippets for the agent's L7 parsers.
/// TLS library calls in flight, by thread (tls.rs).
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Go `crypto/tls` calls in flight, by process and goroutine (go_tls.rs).
#[map]
pub static GO_TLS_CALLS: LruHashMap<TlsKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// TLS connections' sockets and plaintext counts, by process and `SSL *`.
#[map]
pub static TLS_STREAMS: LruHashMap<TlsKey, TlsStream> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static DATA: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// One record being filled, per CPU (too large for the BPF stack).
#[map]
pub static DATA_SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// TCP connection records being built, per CPU. A `TcpConn` built on
/// the stack next to its callers' frames put `weft_tcp_state` over the
/// verifier's 512-byte combined stack on kernels without a private stack
/// for tracing programs (before 6.17): it is filled here and copied into
/// `TCP_CONNS` from map memory.
///
/// One slot per program that may be running on the CPU at once: slot
/// `SCRATCH_ADOPT` for the data programs (process context, tracepoints:
/// never interrupted by another tracepoint program), and from
/// `SCRATCH_LIFECYCLE` one per nesting level of the lifecycle program,
/// a raw tracepoint, which the kernel lets a softirq run in the middle of
/// a data program or of itself (a connect() in process context; from 6.2
/// the kernel skips a program's run inside its own).
#[map]
pub static CONN_SCRATCH: PerCpuArray<TcpConn> =
    PerCpuArray::with_max_entries(SCRATCH_LIFECYCLE + LIFECYCLE_NESTING, 0);
pub const SCRATCH_ADOPT: u32 = 0;
pub const SCRATCH_LIFECYCLE: u32 = 1;
/// Process context and one softirq over it.
pub const LIFECYCLE_NESTING: u32 = 2;

/// How many runs of the lifecycle program are building a record on this
/// CPU (the index of the next free `CONN_SCRATCH` slot, from
/// `SCRATCH_LIFECYCLE`).
#[map]
pub static LIFECYCLE_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU event and loss counters, see `weft_common::counters::index`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(index::COUNT, 0);

/// Dropped packets by address pair and reason, for the agent's `drop`
/// records. LRU: under a flood of distinct addresses the oldest pairs go
/// (their packets are still in `DROP_REASONS`).
#[map]
pub static DROP_FLOWS: LruHashMap<DropKey, DropStats> =
    LruHashMap::with_max_entries(DROP_FLOWS_CAPACITY, 0);

/// Per-CPU count of dropped packets by `enum skb_drop_reason`.
#[map]
pub static DROP_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASON_SLOTS, 0);

/// Adds one to a per-CPU counter. Per-CPU slots need no atomics: a program
/// is not preempted by itself on one CPU. A loss or an early stop goes
/// out of line (it may be logged, klog.rs): the index is constant at
/// almost every call site, so the other counters' code is as before.
#[inline(always)]
pub fn count(idx: u32) {
    if crate::klog::is_rare(idx) {
        count_rare(idx);
        return;
    }
    if let Some(slot) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: the pointer comes from the map and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}

/// Counts a loss or an early stop and returns its new count on this CPU
/// (0 when the slot is missing), logging it at a power-of-two count.
#[inline(never)]
pub fn count_rare(idx: u32) -> u64 {
    let n = count_rare_unlogged(idx);
    crate::klog::counted(idx, n);
    n
}

/// [`count_rare`] for a caller that logs the event itself, with more to
/// say than the counter's generic line.
#[inline(never)]
pub fn count_rare_unlogged(idx: u32) -> u64 {
    let Some(slot) = COUNTERS.get_ptr_mut(idx) else {
        return 0;
    };
    // SAFETY: the pointer comes from the map and is valid for this CPU.
    unsafe {
        *slot += 1;
        *slot
    }
}

/// Reads the load-time settings without letting the compiler fold the
/// initial (all-absent) value into the code.
#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    // SAFETY: CONFIG is a valid static; the volatile read of its address
    // keeps the compiler from assuming its compile-time contents.
    unsafe { &*core::ptr::read_volatile(&&raw const CONFIG) }
}

/// The agent is woken once this fraction of a ring holds unread records.
const WAKEUP_FRACTION: u64 = 32;

/// Flags for a ring record: wake the agent only once a batch of records
/// is waiting (1/32 of the ring). Below that, the agent finds them on its
/// own timer (events/drain.rs). A wakeup per record is an interrupt and a
/// context switch per record: on a virtual machine it cost several
/// microseconds per record, inside the traced syscall.
#[inline(always)]
pub fn batched_wakeup(ring: &RingBuf) -> u64 {
    let pending = ring.query(BPF_RB_AVAIL_DATA as u64);
    let size = ring.query(BPF_RB_RING_SIZE as u64);
    if pending >= size / WAKEUP_FRACTION {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
