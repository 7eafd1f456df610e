//! The plaintext of TLS connections, read where the TLS library takes and
//! gives it: uprobes on OpenSSL's internal `ssl_read_internal` and
//! `ssl_write_internal`, to which `SSL_read`/`SSL_read_ex` and
//! `SSL_write`/`SSL_write_ex` hand their calls, or on those four where
//! the internal ones cannot be found (1.1.1 and 3, the same ABI), attached
//! per library file by the agent (loader/tls.rs, which says why), so one
//! attachment covers every process that maps the file.
//!
//! 1. The entry remembers the call (`SSL *`, buffer, where an `_ex` form
//!    writes its count) by thread id.
//! 2. The library's own read or write syscall on that thread, during the
//!    call, names the socket (capture.rs calls [`syscall_socket`]). A read
//!    served from the library's buffer makes no syscall: the socket is the
//!    one this `SSL *` last named.
//! 3. The return copies the first `snippet_bytes` of what moved into a
//!    `DATA` record of that socket, flagged [`flags::TLS`], its offset
//!    counted in plaintext bytes. The ciphertext the syscalls moved keeps
//!    going to the `tls` handshake parser, as for any TLS connection.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use weft_common::{
    IPPROTO_TCP,
    counters::index,
    data::{DIR_RECV, DIR_SEND, TlsCall, TlsKey, TlsStream, flags},
};

use crate::maps::{DATA_SCRATCH, TLS_CALLS, TLS_STREAMS, config, count};

/// `int SSL_write(SSL *ssl, const void *buf, int num)`
#[uprobe]
pub fn weft_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_SEND, false);
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`
#[uprobe]
pub fn weft_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_RECV, false);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`
#[uprobe]
pub fn weft_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_SEND, true);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`
#[uprobe]
pub fn weft_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, DIR_RECV, true);
    0
}

/// The return of any of the four: attached to each.
#[uretprobe]
pub fn weft_ssl_return(ctx: RetProbeContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u8, ex: bool) {
    if config().snippet_bytes == 0 || crate::owner::is_agent() {
        return;
    }
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        count_at: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        sk: 0,
        direction,
        _pad: [0; 7],
    };
    if call.ssl == 0 || call.buf == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid();
    if TLS_CALLS.insert(&tid, &call, 0).is_err() {
        count(index::LOST_MAP_SYSCALL);
    }
}

/// A data syscall of this thread named socket `sk`: if the thread is in
/// a TLS library call, that call's bytes are this socket's.
#[inline(always)]
pub fn syscall_socket(tid: u64, sk: u64) {
    if let Some(call) = TLS_CALLS.get_ptr_mut(&tid) {
        // SAFETY: a valid pointer into this thread's map value.
        unsafe { (*call).sk = sk };
    }
}

#[inline(always)]
fn exit(ctx: &RetProbeContext) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&tid) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&tid);
    let ret: i64 = ctx.ret::<i32>() as i64;
    let moved = if call.count_at != 0 {
        // The `_ex` forms return 1 on success, the internal functions
        // they call (loader/tls.rs) a positive value.
        if ret <= 0 {
            return;
        }
        // SAFETY: reading user memory through the checked helper.
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if moved == 0 {
        return;
    }
    emit_plaintext(tid, &call, moved);
}

/// One `DATA` record of the `moved` plaintext bytes of `call`, made on
/// thread `tid` (tls.rs and go_tls.rs).
#[inline(always)]
pub fn emit_plaintext(tid: u64, call: &TlsCall, moved: u64) {
    let key = TlsKey {
        ssl: call.ssl,
        pid: (tid >> 32) as u32,
        _pad: 0,
    };
    let Some((sk, offset)) = advance(&key, call.sk, call.direction, moved) else {
        count(index::LOST_TLS_SOCKET);
        return;
    };
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch record.
    unsafe {
        let h = &raw mut (*scratch).header;
        (*h).sk = sk;
        (*h).pid = (tid >> 32) as u32;
        (*h).tid = tid as u32;
        (*h).direction = call.direction;
        (*h).protocol = IPPROTO_TCP;
        (*h).role = crate::sock_io::role_of(sk);
        (*h).flags = flags::TLS;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*h).tuple = crate::capture::sock_tuple(sk);
        (*h).offset = offset;
    }
    crate::capture::emit_buffer(call.buf, moved, 0);
    count(index::TLS_DATA);
}

/// The socket of this call (`named` by its syscall, else the one the
/// `SSL *` last named) and where its `moved` plaintext bytes start in
/// their direction. A socket other than the one last named is a new
/// connection on a reused `SSL *`: its counts start over.
#[inline(always)]
fn advance(key: &TlsKey, named: u64, direction: u8, moved: u64) -> Option<(u64, u64)> {
    if let Some(stream) = TLS_STREAMS.get_ptr_mut(key) {
        // SAFETY: a valid pointer into the map value; one thread drives an
        // `SSL *` at a time (OpenSSL objects are not shared unlocked).
        unsafe {
            if named != 0 && named != (*stream).sk {
                *stream = TlsStream {
                    sk: named,
                    sent: 0,
                    received: 0,
                };
            }
            let counter = if direction == DIR_SEND {
                &raw mut (*stream).sent
            } else {
                &raw mut (*stream).received
            };
            let offset = *counter;
            *counter = offset + moved;
            return Some(((*stream).sk, offset));
        }
    }
    if named == 0 {
        return None;
    }
    let (sent, received) = if direction == DIR_SEND {
        (moved, 0)
    } else {
        (0, moved)
    };
    let stream = TlsStream {
        sk: named,
        sent,
        received,
    };
    if TLS_STREAMS.insert(key, &stream, 0).is_err() {
        return None;
    }
    Some((named, 0))
}
