//! Payload snippets of socket reads and writes for the L7 parsers, from
//! syscall tracepoints only (no kprobes).
//!
//! A data syscall is followed from entry to exit, keyed by thread id:
//!
//! 1. `syscalls:sys_enter_{read,write,recvfrom,sendto,recvmsg,sendmsg,
//!    readv,writev,recvmmsg,sendmmsg}` remember the user buffer (or iovec
//!    array, msghdr, mmsghdr array).
//! 2. `sock:sock_send_length`/`sock_recv_length` fire inside the syscall
//!    only when the fd is a socket, and name the socket (see sock_io.rs,
//!    which calls [`mark_socket`]). Files and pipes never get this far, so
//!    no fd-to-socket lookup in kernel structures is needed there. Kernels
//!    before 6.3 lack these tracepoints: the exit resolves the fd to its
//!    socket itself (fd_sock.rs) and also counts the bytes.
//! 3. `sys_exit_*` copies the first `snippet_bytes` of what moved (the
//!    data is in user memory by then, also for reads), gathered from the
//!    buffers of a readv/writev/recvmsg/sendmsg in order (the first
//!    [`MAX_IOVECS`]: gRPC's C core writes a request as ~30 buffers, 33 for
//!    a channel's first call with two metadata entries, nginx
//!    its first HTTP/2 answer as five), and the peer address of
//!    sendto/recvfrom/msghdr, and sends one record to the `DATA` ring; a
//!    recvmmsg/sendmmsg sends one per message (the first [`MAX_MMSGS`]:
//!    glibc's resolver sends its A and AAAA queries with one sendmmsg, dig
//!    sends with it).
//!
//! Syscall tracepoint records have one layout for all syscalls:
//! `args[i]` at offset 16 + 8*i, `ret` at 16 on exit (the agent checks the
//! format files before enabling capture).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use weft_common::{
    AF_INET6, SockTuple,
    config::NO_FIELD,
    counters::index,
    data::{DATA_MAX, DIR_RECV, DIR_SEND, DataEvent, DataHeader, SyscallArgs, kind},
};

use crate::{
    maps::{DATA, DATA_SCRATCH, SYSCALL_ARGS, batched_wakeup, config, count},
    sock_io::StreamPos,
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG3: usize = 40;
const ARG4: usize = 48;
const RET: usize = 16;

/// Buffers of one readv/writev/recvmsg/sendmsg gathered into its record.
pub const MAX_IOVECS: u64 = 64;
/// Messages of one recvmmsg/sendmmsg captured.
pub const MAX_MMSGS: u64 = 4;
/// `struct mmsghdr`: a `struct user_msghdr` (56 bytes) and `msg_len`.
const MMSGHDR_SIZE: u64 = 64;
const MMSG_LEN_OFFSET: u64 = 56;

macro_rules! capture_syscall {
    ($enter:ident, $exit:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $kind);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $kind);
            0
        }
    };
}

capture_syscall!(weft_ent_read, weft_ext_read, kind::READ);
capture_syscall!(weft_ent_write, weft_ext_write, kind::WRITE);
capture_syscall!(weft_ent_recvfrom, weft_ext_recvfrom, kind::RECVFROM);
capture_syscall!(weft_ent_sendto, weft_ext_sendto, kind::SENDTO);
capture_syscall!(weft_ent_recvmsg, weft_ext_recvmsg, kind::RECVMSG);
capture_syscall!(weft_ent_sendmsg, weft_ext_sendmsg, kind::SENDMSG);
capture_syscall!(weft_ent_readv, weft_ext_readv, kind::READV);
capture_syscall!(weft_ent_writev, weft_ext_writev, kind::WRITEV);
capture_syscall!(weft_ent_recvmmsg, weft_ext_recvmmsg, kind::RECVMMSG);
capture_syscall!(weft_ent_sendmmsg, weft_ext_sendmmsg, kind::SENDMMSG);

fn enter(ctx: &TracePointContext, kind: u32) {
    // Where the syscall exits count bytes (fd_sock.rs), every data syscall
    // is followed, the agent's own too (its sockets are flagged, as the
    // socket tracepoints flag them); else only those to capture.
    if !crate::fd_sock::enabled() && (config().snippet_bytes == 0 || crate::owner::is_agent()) {
        return;
    }
    // SAFETY: offsets of the uniform syscall record (see the module docs).
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.unwrap_or(u64::MAX);
    // SAFETY: as above.
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.unwrap_or(0);
    let addr: u64 = match kind {
        // SAFETY: as above.
        kind::SENDTO | kind::RECVFROM => unsafe { ctx.read_at(ARG4) }.unwrap_or(0),
        _ => 0,
    };
    let flags: u64 = match kind {
        // SAFETY: as above.
        kind::RECVFROM | kind::RECVMMSG => unsafe { ctx.read_at(ARG3) }.unwrap_or(0),
        // SAFETY: as above.
        kind::RECVMSG => unsafe { ctx.read_at(ARG2) }.unwrap_or(0),
        _ => 0,
    };
    let args = SyscallArgs {
        kind,
        protocol: 0,
        role: 0,
        _pad: 0,
        buf,
        addr,
        sk: 0,
        offset: 0,
        fd: fd as u32,
        flags: flags as u32,
    };
    let tid = bpf_get_current_pid_tgid();
    if SYSCALL_ARGS.insert(&tid, &args, 0).is_err() {
        count(index::LOST_MAP_SYSCALL);
    }
}

/// Called from the socket tracepoints during a data syscall: the fd is a
/// socket, and this is it.
#[inline(always)]
pub fn mark_socket(sk: u64, protocol: u16, len: i32, recv: bool, pos: StreamPos) {
    let tid = bpf_get_current_pid_tgid();
    if let Some(args) = SYSCALL_ARGS.get_ptr_mut(&tid) {
        // SAFETY: a valid pointer into the map value of this thread.
        unsafe {
            (*args).sk = sk;
            (*args).protocol = protocol;
            (*args).role = pos.role;
            (*args).offset = pos.offset;
        }
        return;
    }
    // Bytes moved by a syscall this module does not follow (sendfile,
    // splice, io_uring...): their content is not seen, but the parsers
    // must know that they passed, or a response body sent with sendfile
    // would be mistaken for the next message.
    if len > 0 && config().snippet_bytes != 0 && !crate::owner::is_agent() {
        emit_uncaptured(sk, protocol, len as u64, recv, pos.offset);
    }
}

/// A record with no payload: `total_len` bytes passed uncaptured.
/// (At most five arguments: the BPF calling convention has no more.)
fn emit_uncaptured(sk: u64, protocol: u16, total: u64, recv: bool, offset: u64) {
    let tid = bpf_get_current_pid_tgid();
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch record.
    unsafe {
        let h = &raw mut (*scratch).header;
        (*h).sk = sk;
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).pid = (tid >> 32) as u32;
        (*h).tid = tid as u32;
        (*h).total_len = total.min(u32::MAX as u64) as u32;
        (*h).captured_len = 0;
        (*h).direction = if recv { DIR_RECV } else { DIR_SEND };
        (*h).protocol = protocol as u8;
        // A rare path (sendfile, splice...): the role is looked up again.
        (*h).role = crate::sock_io::role_of(sk);
        (*h).flags = 0;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*h).peer = [0; 28];
        (*h).tuple = sock_tuple(sk);
        (*h).offset = offset;
        if DATA
            .output::<DataHeader>(&*h, batched_wakeup(&DATA))
            .is_err()
        {
            count(index::LOST_RING_DATA);
        } else {
            count(index::DATA);
        }
    }
}

/// `syscall` (a `kind::*`) is a constant in each exit program: only its
/// syscall's way of reading buffers is compiled into it (and checked by
/// the verifier, which takes seconds over the nested loops of them all).
#[inline(always)]
fn exit(ctx: &TracePointContext, syscall: u32) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(mut args) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if args.kind != syscall {
        return;
    }
    // SAFETY: `ret` of the uniform sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET) }.unwrap_or(0);
    if args.sk == 0 && crate::fd_sock::enabled() {
        count_bytes(syscall, &mut args, ret);
    }
    if args.sk != 0 && ret > 0 {
        crate::tls::syscall_socket(tid, args.sk);
    }
    if args.sk == 0 || ret <= 0 || config().snippet_bytes == 0 || crate::owner::is_agent() {
        return;
    }
    // The header is the same for every record of the syscall: written
    // once, then each record only sets its length, peer and bytes.
    if header(syscall, &args, tid).is_none() {
        return;
    }
    emit_syscall(syscall, &args, ret as u64);
}

/// Whether `syscall` (a `kind::*`) reads.
#[inline(always)]
fn is_recv(syscall: u32) -> bool {
    matches!(
        syscall,
        kind::READ | kind::RECVFROM | kind::RECVMSG | kind::READV | kind::RECVMMSG
    )
}

/// On kernels without the socket tracepoints: the bytes a data syscall
/// that returned `ret` moved through its fd, counted if the fd is a TCP
/// socket, and the socket noted in `args` for the capture (TCP and UDP),
/// as [`mark_socket`] notes it elsewhere. Peeked data is neither: it will
/// be read again.
#[inline(always)]
fn count_bytes(syscall: u32, args: &mut SyscallArgs, ret: i64) {
    let recv = is_recv(syscall);
    if recv && args.flags as i32 & crate::sock_io::MSG_PEEK != 0 {
        return;
    }
    let Some((sk, protocol)) = crate::fd_sock::socket_of_fd(args.fd) else {
        return;
    };
    if protocol != weft_common::IPPROTO_TCP as u16 && protocol != weft_common::IPPROTO_UDP as u16 {
        return;
    }
    args.sk = sk;
    args.protocol = protocol;
    let bytes = match syscall {
        kind::RECVMMSG | kind::SENDMMSG => mmsg_bytes(args.buf, ret),
        _ => ret,
    };
    let pos = crate::sock_io::account(sk, protocol, bytes, recv);
    args.offset = pos.offset;
    args.role = pos.role;
}

/// The bytes of the first [`MAX_MMSGS`] of the `ret` messages a
/// recvmmsg/sendmmsg moved (TCP sockets rarely see these; past the first
/// messages the count falls short).
#[inline(always)]
fn mmsg_bytes(vec: u64, ret: i64) -> i64 {
    let mut total = 0i64;
    for i in 0..MAX_MMSGS {
        if i as i64 >= ret {
            break;
        }
        let at = vec + i * MMSGHDR_SIZE + MMSG_LEN_OFFSET;
        // SAFETY: reading user memory through the checked helper.
        match unsafe { bpf_probe_read_user(at as *const u32) } {
            Ok(len) => total += len as i64,
            Err(_) => break,
        }
    }
    if ret < 0 { ret } else { total }
}

/// Fills this CPU's scratch header with what the syscall's records share.
#[inline(always)]
fn header(syscall: u32, args: &SyscallArgs, tid: u64) -> Option<()> {
    let scratch = DATA_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record.
    unsafe {
        let h = &raw mut (*scratch).header;
        (*h).sk = args.sk;
        (*h).pid = (tid >> 32) as u32;
        (*h).tid = tid as u32;
        (*h).direction = if is_recv(syscall) { DIR_RECV } else { DIR_SEND };
        (*h).protocol = args.protocol as u8;
        (*h).role = args.role;
        (*h).flags = 0;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*h).tuple = sock_tuple(args.sk);
        (*h).offset = args.offset;
    }
    Some(())
}

/// The records of one syscall that returned `ret` (bytes, or messages for
/// recvmmsg/sendmmsg).
#[inline(always)]
fn emit_syscall(syscall: u32, args: &SyscallArgs, ret: u64) {
    match syscall {
        kind::READ | kind::WRITE => emit_buffer(args.buf, ret, 0),
        kind::RECVFROM | kind::SENDTO => emit_buffer(args.buf, ret, args.addr),
        kind::READV | kind::WRITEV => emit_iovecs(args.buf, ret, 0),
        kind::RECVMSG | kind::SENDMSG => emit_msghdr(args.buf, ret),
        kind::RECVMMSG | kind::SENDMMSG => {
            for i in 0..MAX_MMSGS {
                if i >= ret {
                    break;
                }
                let hdr = args.buf + i * MMSGHDR_SIZE;
                // SAFETY: reading user memory through the checked helper.
                let len = unsafe { bpf_probe_read_user((hdr + MMSG_LEN_OFFSET) as *const u32) };
                match len {
                    Ok(len) if len > 0 => emit_msghdr(hdr, len as u64),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        _ => {}
    }
}

/// A `struct user_msghdr` at `msg` that moved `total` bytes: msg_name at
/// 0, msg_iov at 16 (UAPI).
#[inline(always)]
fn emit_msghdr(msg: u64, total: u64) {
    // SAFETY: reading user memory through the checked helpers.
    let name = unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(0);
    // SAFETY: as above.
    if let Ok(iov) = unsafe { bpf_probe_read_user((msg + 16) as *const u64) } {
        emit_iovecs(iov, total, name);
    }
}

/// The socket's addresses from `struct sock_common`, at offsets the agent
/// found in the kernel's BTF.
pub fn sock_tuple(sk: u64) -> SockTuple {
    let o = &config().sock;
    let mut t = SockTuple::default();
    if o.family == NO_FIELD {
        return t;
    }
    // SAFETY: kernel reads through the checked helper; a failed read
    // leaves zeros.
    unsafe {
        let at = |off: u16| (sk + off as u64) as *const u8;
        t.family = bpf_probe_read_kernel(at(o.family).cast::<u16>()).unwrap_or(0);
        // Both ports in network order. inet_sport, not skc_num: the
        // port stays known after a close released it (see SockOffsets).
        t.local_port = u16::from_be(bpf_probe_read_kernel(at(o.sport).cast::<u16>()).unwrap_or(0));
        t.remote_port = u16::from_be(bpf_probe_read_kernel(at(o.dport).cast::<u16>()).unwrap_or(0));
        if t.family == AF_INET6 {
            t.local_addr =
                bpf_probe_read_kernel(at(o.v6_rcv_saddr).cast::<[u8; 16]>()).unwrap_or([0; 16]);
            t.remote_addr =
                bpf_probe_read_kernel(at(o.v6_daddr).cast::<[u8; 16]>()).unwrap_or([0; 16]);
        } else {
            let l: [u8; 4] =
                bpf_probe_read_kernel(at(o.rcv_saddr).cast::<[u8; 4]>()).unwrap_or([0; 4]);
            let r: [u8; 4] = bpf_probe_read_kernel(at(o.daddr).cast::<[u8; 4]>()).unwrap_or([0; 4]);
            t.local_addr[..4].copy_from_slice(&l);
            t.remote_addr[..4].copy_from_slice(&r);
        }
    }
    t
}

/// The largest copy the verifier can see bounded: at most DATA_MAX.
#[inline(always)]
fn bounded(n: u64) -> u64 {
    let n = n & ((DATA_MAX as u64 * 2) - 1);
    if n > DATA_MAX as u64 {
        DATA_MAX as u64
    } else {
        n
    }
}

/// `n` (at most DATA_MAX already) as a copy length that every kernel's
/// verifier sees bounded. LLVM computes the length of a gathered copy in
/// a register the verifier of 6.1 and older cannot follow back to the
/// checks above ("R2 min value is negative"); read back through memory,
/// the value is opaque to LLVM, which must keep this check on the very
/// register the helper gets.
#[inline(always)]
fn copy_len(n: u64) -> Option<u32> {
    let slot = n;
    // SAFETY: a volatile read of a local.
    let len = unsafe { core::ptr::read_volatile(&slot) };
    (len <= DATA_MAX as u64).then_some(len as u32)
}

/// One record of `total` bytes moved through the user buffer `buf`.
/// Subprograms of their own (not inlined), this one and
/// [`emit_iovecs`]: the verifier then checks a small function per call
/// instead of a long straight line per syscall.
#[inline(never)]
pub fn emit_buffer(buf: u64, total: u64, peer: u64) {
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let n = bounded(total.min(config().snippet_bytes as u64));
    // SAFETY: this CPU's scratch record; the copy is checked by the
    // helper and bounded by DATA_MAX.
    let copied = n > 0
        && unsafe {
            let data = (&raw mut (*scratch).data).cast::<u8>();
            probe_read_user_raw(data.cast(), n as u32, buf as *const core::ffi::c_void) == 0
        };
    send(scratch, if copied { n } else { 0 }, total, peer);
}

/// One record of `total` bytes moved through the buffers of the iovec
/// array at `iov`, gathered in order up to `snippet_bytes`.
#[inline(never)]
fn emit_iovecs(iov: u64, total: u64, peer: u64) {
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let snippet = bounded(config().snippet_bytes as u64);
    // SAFETY: this CPU's scratch record. The running totals go through
    // its memory (volatile: not kept in registers), which the verifier
    // does not track: the paths through one buffer (copied, empty,
    // failed) then end in the same state, and 64 buffers cost 64 times
    // one, not one path per combination. Copies are checked by the helper
    // and bounded as noted.
    unsafe {
        let gathered = &raw mut (*scratch).gathered;
        let left = &raw mut (*scratch).left;
        gathered.write_volatile(0);
        left.write_volatile(total);
        for i in 0..MAX_IOVECS {
            let (done, rest) = (gathered.read_volatile(), left.read_volatile());
            if rest == 0 || done >= snippet {
                break;
            }
            // `struct iovec { void *iov_base; size_t iov_len; }`.
            let Ok([base, len]) = bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) else {
                break;
            };
            let moved = len.min(rest);
            let n = bounded(moved.min(snippet.saturating_sub(done)));
            if n > 0 {
                let Some(size) = copy_len(n) else {
                    break;
                };
                // `done` < snippet <= DATA_MAX: the offset is below
                // DATA_MAX and the copy ends inside the 2 * DATA_MAX area.
                let at = done & (DATA_MAX as u64 - 1);
                let data = (&raw mut (*scratch).data).cast::<u8>().add(at as usize);
                if probe_read_user_raw(data.cast(), size, base as *const core::ffi::c_void) != 0 {
                    break;
                }
                gathered.write_volatile(done + n);
            }
            left.write_volatile(rest - moved);
        }
        send(scratch, gathered.read_volatile(), total, peer);
    }
}

/// Sends the scratch record (its header filled by [`header`]) with
/// `captured` bytes of data standing for `total`.
#[inline(always)]
fn send(scratch: *mut DataEvent, captured: u64, total: u64, peer: u64) {
    let captured = bounded(captured);
    // SAFETY: this CPU's scratch record; user memory is read through the
    // checked helper.
    unsafe {
        let h = &raw mut (*scratch).header;
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).total_len = total.min(u32::MAX as u64) as u32;
        (*h).peer = [0; 28];
        if peer != 0 {
            (*h).peer = bpf_probe_read_user(peer as *const [u8; 28]).unwrap_or([0; 28]);
        }
        (*h).captured_len = captured as u32;
        let len = core::mem::size_of::<DataHeader>() + captured as usize;
        let record = core::slice::from_raw_parts(scratch.cast::<u8>(), len);
        if DATA.output::<[u8]>(record, batched_wakeup(&DATA)).is_err() {
            count(index::LOST_RING_DATA);
        } else {
            count(index::DATA);
        }
    }
}
