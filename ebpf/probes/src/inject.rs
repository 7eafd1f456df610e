//! `traceparent` injection (`traces.inject_traceparent`, off by default):
//! an sk_msg program writes a W3C `traceparent` header into outgoing
//! plaintext HTTP/1.x requests that carry none, so that the next hop (the
//! application, or weft on another node) continues the trace.
//!
//! 1. `weft_inject_sockops` (sock_ops, cgroup v2 root) puts every TCP
//!    socket that connects into `INJECT_SOCKS` when its connection is
//!    established (accepted sockets never are: they send responses).
//! 2. `weft_inject_msg` (sk_msg on that map) runs in the sending thread
//!    for each send. When the message starts with an HTTP/1.x request line
//!    and its whole header block is within its first [`HEAD_MAX`] bytes
//!    without a `traceparent`, it inserts one line after the request line:
//!    `traceparent: 00-<trace>-<span>-<flags>\r\n`, with new random ids.
//!    Nothing else of the message changes (body, Content-Length, a
//!    pipelined request after it).
//! 3. The ids go to the agent at once, as a record of their own in the
//!    payload ring (flagged `INJECTED`, named by the socket's addresses):
//!    the agent gives them to the CLIENT span of the connection's next
//!    request, and knows the header as its own when the server side (on
//!    this node) reads it. At once, not at the syscall's exit: a server on
//!    this node may read the request, answer it, and have its span decided
//!    before the sending thread returns from its write.
//!
//! The decision is the kernel's: the request is on its way before the
//! agent sees it. A new trace is sampled by the agent's rule
//! (TraceIdRatioBased on the id the kernel drew).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, sk_action::SK_PASS},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_msg_pull_data,
    },
    macros::{map, sk_msg, sock_ops},
    maps::{PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use weft_common::{
    AF_INET6, IPPROTO_TCP, SockTuple,
    counters::index,
    data::{DIR_SEND, DataHeader, Injected, flags, role},
};

use crate::maps::{DATA, batched_wakeup, config, count};

/// Client sockets whose sends the injection program sees, by socket
/// cookie. The kernel removes a socket when it closes.
#[map]
pub static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// What the agent is told of one injection (see [`report`]).
#[repr(C)]
struct InjectedRecord {
    header: DataHeader,
    injected: Injected,
}

/// The header scan's state, in map memory: the verifier does not track
/// its values, so the paths through one byte end in the same state and
/// the scan costs [`HEAD_MAX`] times one byte, not a path per combination.
#[map]
static SCAN: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Scan {
    /// Column in the current header line.
    col: u32,
    /// Characters of `traceparent:` matched from the line's start; past
    /// [`PATTERN_LEN`] when the line is another header.
    matched: u32,
    /// 1 once a `traceparent` header was found; 2 at the end of the head.
    verdict: u32,
    /// An offset in the message (the request line's end).
    at: u32,
}

/// Bytes of a message looked at for its request head: a request whose
/// head is longer goes unchanged.
const HEAD_MAX: u32 = 1024;
/// `traceparent: 00-` + 32 + `-` + 16 + `-` + 2 + `\r\n`.
const LINE_LEN: u32 = 70;
/// `traceparent:` (see [`pattern_byte`]).
const PATTERN_LEN: u32 = 12;
const FOUND: u32 = 1;
const HEAD_END: u32 = 2;

#[sock_ops]
pub fn weft_inject_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: the helper takes the program's context.
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: `ops` is the program's context, valid for this run.
        let ops = unsafe { &mut *ctx.ops };
        if INJECT_SOCKS
            .update(&mut cookie, ops, BPF_NOEXIST as u64)
            .is_err()
        {
            count(index::LOST_INJECT_SOCKET);
        }
    }
    1
}

#[sk_msg]
pub fn weft_inject_msg(ctx: SkMsgContext) -> u32 {
    // Whatever happens here, the message goes: a request that cannot be
    // injected is sent as the application wrote it.
    let _ = inject(&ctx);
    SK_PASS
}

fn inject(ctx: &SkMsgContext) -> Option<()> {
    if crate::owner::is_agent() {
        return None;
    }
    let size = ctx.size();
    if size < 16 {
        return None;
    }
    let want = size.min(HEAD_MAX);
    // SAFETY: the helper checks its arguments against the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, want, 0) } != 0 {
        return None;
    }
    let scan = SCAN.get_ptr_mut(0)?;
    let line_end = request_line_end(ctx, scan)?;
    if scan_headers(ctx, scan, line_end)? != HEAD_END {
        return None;
    }
    let injected = new_context();
    let mut line = [0u8; LINE_LEN as usize];
    header_line(&injected, &mut line);
    ctx.push_data(line_end, LINE_LEN, 0).ok()?;
    // SAFETY: as above; the pushed bytes are then at data..data_end.
    if unsafe { bpf_msg_pull_data(ctx.msg, line_end, line_end + LINE_LEN, 0) } != 0 {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + LINE_LEN as usize > end {
        return None;
    }
    // SAFETY: the LINE_LEN bytes at `data` are inside the message (checked
    // against data_end just above).
    unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), data as *mut u8, LINE_LEN as usize) };
    count(index::TRACEPARENT_INJECTED);
    report(ctx, &injected);
    Some(())
}

/// Tells the agent which ids this message carries, before it leaves:
/// every record of the other end (a server on this node) comes after it
/// in the ring.
fn report(ctx: &SkMsgContext, injected: &Injected) {
    let Some(mut entry) = DATA.reserve::<InjectedRecord>(0) else {
        count(index::LOST_RING_DATA);
        return;
    };
    let record = entry.as_mut_ptr();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: `record` is the reserved entry, zeroed whole before its
    // fields are set; it is submitted below.
    unsafe {
        core::ptr::write_bytes(record, 0, 1);
        let h = &raw mut (*record).header;
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).pid = (id >> 32) as u32;
        (*h).tid = id as u32;
        (*h).captured_len = core::mem::size_of::<Injected>() as u32;
        (*h).direction = DIR_SEND;
        (*h).protocol = IPPROTO_TCP;
        (*h).role = role::CLIENT;
        (*h).flags = flags::INJECTED;
        (*h).tuple = msg_tuple(ctx);
        (*record).injected = *injected;
    }
    entry.submit(batched_wakeup(&DATA));
}

/// The sending socket's addresses, as the capture names them.
#[inline(always)]
fn msg_tuple(ctx: &SkMsgContext) -> SockTuple {
    // SAFETY: reading the program's context.
    let md = unsafe { &*ctx.msg };
    let mut t = SockTuple {
        family: md.family as u16,
        local_port: md.local_port as u16,
        // Network order; older kernels hand it in the upper 16 bits.
        remote_port: u16::from_be(if md.remote_port > 0xffff {
            (md.remote_port >> 16) as u16
        } else {
            md.remote_port as u16
        }),
        ..SockTuple::default()
    };
    // Every field read, each once at its constant offset, before one is
    // chosen: the verifier refuses a load through a context pointer that
    // was moved or chosen (as a branch per family compiles to).
    // SAFETY: reads of the program's context fields.
    let (v4, v6) = unsafe {
        let at = |p: *const u32| core::ptr::read_volatile(p);
        (
            [at(&md.local_ip4), at(&md.remote_ip4)],
            [
                [
                    at(&md.local_ip6[0]),
                    at(&md.local_ip6[1]),
                    at(&md.local_ip6[2]),
                    at(&md.local_ip6[3]),
                ],
                [
                    at(&md.remote_ip6[0]),
                    at(&md.remote_ip6[1]),
                    at(&md.remote_ip6[2]),
                    at(&md.remote_ip6[3]),
                ],
            ],
        )
    };
    let (local, remote) = if t.family == AF_INET6 {
        (v6[0], v6[1])
    } else {
        ([v4[0], 0, 0, 0], [v4[1], 0, 0, 0])
    };
    for k in 0..4 {
        t.local_addr[k * 4..k * 4 + 4].copy_from_slice(&local[k].to_ne_bytes());
        t.remote_addr[k * 4..k * 4 + 4].copy_from_slice(&remote[k].to_ne_bytes());
    }
    t
}

/// The byte at `at` of the pulled message, or `None` past its end.
#[inline(always)]
fn byte_at(ctx: &SkMsgContext, at: u32) -> Option<u8> {
    // Read back through memory: LLVM cannot unroll the loops that call
    // this into a straight line of constant offsets (one verifier path per
    // byte and branch), and the verifier sees one bounded offset.
    let slot = at;
    // SAFETY: a volatile read of a local.
    let at = unsafe { core::ptr::read_volatile(&slot) } & (2 * HEAD_MAX - 1);
    let (data, end) = (ctx.data(), ctx.data_end());
    let p = data + at as usize;
    if p + 1 > end {
        return None;
    }
    // SAFETY: checked against data_end just above.
    Some(unsafe { *(p as *const u8) })
}

/// Where the headers start (just past the request line's `\r\n`) when
/// the message starts with an HTTP/1.x request line: a method of 3 to 7
/// capitals, a space, a target, ` HTTP/1.x`.
fn request_line_end(ctx: &SkMsgContext, scan: *mut Scan) -> Option<u32> {
    let mut method = 0u32;
    while method < 8 {
        let c = byte_at(ctx, method)?;
        if c == b' ' {
            break;
        }
        if !c.is_ascii_uppercase() {
            return None;
        }
        method += 1;
    }
    if !(3..=7).contains(&method) {
        return None;
    }
    // The request line's `\n`. Where it is goes through map memory: as a
    // constant per path, every later check would be verified once per
    // possible line length.
    // SAFETY: this CPU's scratch value, accessed volatile (see SCAN).
    let newline = unsafe {
        let at = &raw mut (*scan).at;
        at.write_volatile(0);
        for i in 0..HEAD_MAX {
            if byte_at(ctx, method + 1 + i)? == b'\n' {
                at.write_volatile(method + 1 + i);
                break;
            }
        }
        at.read_volatile() & (HEAD_MAX - 1)
    };
    if newline < 10 || byte_at(ctx, newline - 1)? != b'\r' {
        return None;
    }
    // ` HTTP/1.` and a digit before `\r\n`.
    let version = newline - 10;
    for (k, expected) in b" HTTP/1.".iter().enumerate() {
        if byte_at(ctx, version + k as u32)? != *expected {
            return None;
        }
    }
    Some(newline + 1)
}

/// Scans the header lines from `from`: [`FOUND`] when one is a
/// `traceparent` (any case), [`HEAD_END`] at the empty line that ends the
/// head, `None` when the head goes past what was pulled.
fn scan_headers(ctx: &SkMsgContext, scan: *mut Scan, from: u32) -> Option<u32> {
    // SAFETY: this CPU's scratch value, accessed volatile (see SCAN).
    unsafe {
        // Opaque to the verifier, as the request line's end is.
        let at = &raw mut (*scan).at;
        at.write_volatile(from);
        let from = at.read_volatile() & (HEAD_MAX - 1);
        let col = &raw mut (*scan).col;
        let matched = &raw mut (*scan).matched;
        let verdict = &raw mut (*scan).verdict;
        col.write_volatile(0);
        matched.write_volatile(0);
        verdict.write_volatile(0);
        for i in 0..HEAD_MAX {
            let c = byte_at(ctx, from + i)?;
            let (k, m) = (col.read_volatile(), matched.read_volatile());
            if c == b'\n' {
                // `\r\n` alone: the head's end.
                if k == 1 {
                    verdict.write_volatile(HEAD_END);
                    break;
                }
                col.write_volatile(0);
                matched.write_volatile(0);
                continue;
            }
            if k == m && m < PATTERN_LEN {
                // `| 0x20` lowers a capital (and leaves `:` as it is).
                let next = if c | 0x20 == pattern_byte(m) {
                    m + 1
                } else {
                    PATTERN_LEN + 1
                };
                matched.write_volatile(next);
                if next == PATTERN_LEN {
                    verdict.write_volatile(FOUND);
                    break;
                }
            }
            col.write_volatile(k + 1);
        }
        match verdict.read_volatile() {
            0 => None,
            v => Some(v),
        }
    }
}

/// Byte `m` (below [`PATTERN_LEN`]) of `traceparent:`, by shifts rather
/// than a branch per value: fewer verifier paths per byte scanned.
#[inline(always)]
fn pattern_byte(m: u32) -> u8 {
    const FIRST: u64 = u64::from_le_bytes(*b"tracepar");
    const REST: u64 = u32::from_le_bytes(*b"ent:") as u64;
    let word = if m < 8 { FIRST } else { REST };
    (word >> ((m & 7) * 8)) as u8
}

/// New ids, sampled by the agent's rule.
fn new_context() -> Injected {
    let mut trace_id = [0u8; 16];
    for k in 0..4 {
        // SAFETY: a helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        trace_id[k * 4..k * 4 + 4].copy_from_slice(&r.to_be_bytes());
    }
    let mut span_id = [0u8; 8];
    for k in 0..2 {
        // SAFETY: as above.
        let r = unsafe { bpf_get_prandom_u32() };
        span_id[k * 4..k * 4 + 4].copy_from_slice(&r.to_be_bytes());
    }
    // All-zero ids are invalid (W3C): one in 2^64.
    span_id[7] |= (span_id.iter().all(|b| *b == 0)) as u8;
    trace_id[15] |= (trace_id.iter().all(|b| *b == 0)) as u8;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    let c = &config().inject;
    let below = ((c.sample_below_high as u64) << 32) | c.sample_below_low as u64;
    Injected {
        trace_id,
        span_id,
        flags: (x < below) as u8,
        _pad: [0; 7],
    }
}

/// `traceparent: 00-<trace>-<span>-<flags>\r\n`.
#[inline(always)]
fn header_line(ctx: &Injected, out: &mut [u8; LINE_LEN as usize]) {
    out[..16].copy_from_slice(b"traceparent: 00-");
    hex(&ctx.trace_id, &mut out[16..48]);
    out[48] = b'-';
    hex(&ctx.span_id, &mut out[49..65]);
    out[65] = b'-';
    out[66] = b'0';
    out[67] = if ctx.flags & 1 == 1 { b'1' } else { b'0' };
    out[68] = b'\r';
    out[69] = b'\n';
}

#[inline(always)]
fn hex(bytes: &[u8], out: &mut [u8]) {
    for (k, b) in bytes.iter().enumerate() {
        out[2 * k] = hex_digit(b >> 4);
        out[2 * k + 1] = hex_digit(b & 0xf);
    }
}

#[inline(always)]
fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}
