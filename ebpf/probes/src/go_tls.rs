//! The plaintext of Go's `crypto/tls`, which Go links statically into
//! each binary (no libssl to hook): uprobes on `crypto/tls.(*Conn).Read`
//! and `Write`, attached per binary by the agent (loader/go_tls.rs).
//!
//! Go differs from OpenSSL in three ways, each handled here:
//!
//! - Go's register ABI (Go 1.17+, amd64): the receiver in RAX, the
//!   buffer's pointer and length in RBX and RCX; the count `Read`
//!   returns in RAX. The current goroutine (`g`) is in R14, at entry and at return.
//! - A goroutine that blocks in `Read` (an idle keep-alive connection)
//!   resumes on whichever thread the scheduler picks: the call is keyed by
//!   process and goroutine, not by thread, and its socket cannot be named
//!   by "the syscall on this thread". It is named at entry instead, from
//!   the connection's file descriptor (`Conn.conn` → `net.TCPConn` →
//!   `netFD.pfd.Sysfd`, a layout unchanged since Go 1.9) resolved through
//!   the task's file table (fd_sock.rs).
//! - A uretprobe rewrites the return address on the stack, which Go's
//!   growing stacks move: the return program sits on each `RET`
//!   instruction of `Read` instead (the agent finds them).
//!
//! The entry programs sit past the function's stack check (the agent
//! finds it), which runs again after the stack grows: a probe there runs
//! once per call.
//!
//! `Write` is recorded at its entry, whole: Go's HTTP client writes a
//! request on one goroutine and reads the answer on another, so a record
//! made when `Write` returns could come after the answer's, and pair it
//! with the wrong request. `Write` sends all of its buffer or fails the
//! connection; a failed write's bytes are still recorded (as a syscall
//! capture records a request whose answer never comes).

use aya_ebpf::{
    bindings::pt_regs, helpers::bpf_get_current_pid_tgid, helpers::bpf_probe_read_user,
    macros::uprobe, programs::ProbeContext,
};
use weft_common::{
    IPPROTO_TCP,
    counters::index,
    data::{DIR_RECV, DIR_SEND, TlsCall, TlsKey},
};

use crate::maps::{GO_TLS_CALLS, config, count};

/// Where a `*tls.Conn` keeps the data word of its `conn net.Conn`
/// interface (after the itab word).
const CONN_DATA: u64 = 8;
/// Where a `poll.FD` keeps `Sysfd`, after its 16-byte `fdMutex`; `pfd`
/// is the first field of `net.netFD`, and `*netFD` the first word of
/// `net.TCPConn`.
const NETFD_SYSFD: u64 = 16;

/// `func (c *Conn) Write(b []byte) (int, error)`
#[uprobe]
pub fn weft_go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_SEND);
    0
}

/// `func (c *Conn) Read(b []byte) (int, error)`
#[uprobe]
pub fn weft_go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_RECV);
    0
}

/// Each `RET` of `Read`.
#[uprobe]
pub fn weft_go_tls_return(ctx: ProbeContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: a uprobe's context is the trapped task's registers.
    unsafe { &*ctx.regs }
}

/// The call's key: this process and the goroutine in R14.
#[inline(always)]
fn key(r: &pt_regs) -> TlsKey {
    TlsKey {
        ssl: r.r14,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u8) {
    if config().snippet_bytes == 0 || crate::owner::is_agent() {
        return;
    }
    let r = regs(ctx);
    let (conn, buf) = (r.rax, r.rbx);
    if conn == 0 || buf == 0 || r.r14 == 0 {
        return;
    }
    let Some(fd) = conn_fd(conn) else {
        count(index::LOST_TLS_SOCKET);
        return;
    };
    let Some((sk, protocol)) = crate::fd_sock::socket_of_fd(fd) else {
        count(index::LOST_TLS_SOCKET);
        return;
    };
    if protocol != IPPROTO_TCP as u16 {
        return;
    }
    let call = TlsCall {
        ssl: conn,
        buf,
        count_at: 0,
        sk,
        direction,
        _pad: [0; 7],
    };
    if direction == DIR_SEND {
        // The whole buffer goes out (or the connection fails): recorded
        // now, before any byte of it leaves, so that the answer, which
        // another goroutine reads, cannot be recorded first.
        let len = r.rcx as i64;
        if len > 0 {
            crate::tls::emit_plaintext(bpf_get_current_pid_tgid(), &call, len as u64);
        }
        return;
    }
    if GO_TLS_CALLS.insert(&key(r), &call, 0).is_err() {
        count(index::LOST_MAP_SYSCALL);
    }
}

/// The file descriptor under a `*tls.Conn` over a TCP connection.
#[inline(always)]
fn conn_fd(conn: u64) -> Option<u32> {
    // SAFETY: user memory, read through the checked helper.
    let tcp: u64 = unsafe { bpf_probe_read_user((conn + CONN_DATA) as *const u64) }.ok()?;
    if tcp == 0 {
        return None;
    }
    // SAFETY: as above.
    let netfd: u64 = unsafe { bpf_probe_read_user(tcp as *const u64) }.ok()?;
    if netfd == 0 {
        return None;
    }
    // SAFETY: as above.
    let fd: i64 = unsafe { bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64) }.ok()?;
    u32::try_from(fd).ok()
}

#[inline(always)]
fn exit(ctx: &ProbeContext) {
    let r = regs(ctx);
    let key = key(r);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else {
        return;
    };
    let _ = GO_TLS_CALLS.remove(&key);
    // `n int` in RAX; an error with n == 0 moved nothing.
    let moved = r.rax as i64;
    if moved <= 0 {
        return;
    }
    crate::tls::emit_plaintext(bpf_get_current_pid_tgid(), &call, moved as u64);
}
