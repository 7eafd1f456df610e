//! Payload snippets of socket reads and writes for the L7 parsers, from
//! syscall tracepoints only (no kprobes).
//!
//! A data syscall is followed from entry to exit, keyed by thread id:
//!
//! 1. `syscalls:sys_enter_{read,write,recvfrom,sendto,recvmsg,sendmsg,
//!    readv,writev}` remember the user buffer (or iovec array, or msghdr).
//! 2. `sock:sock_send_length`/`sock_recv_length` fire inside the syscall
//!    only when the fd is a socket, and name the socket (see sock_io.rs,
//!    which calls [`mark_socket`]). Files and pipes never get this far, so
//!    no fd-to-socket lookup in kernel structures is needed.
//! 3. `sys_exit_*` copies up to `snippet_bytes` from the first buffer (the
//!    data is in user memory by then, also for reads) and the peer address
//!    of sendto/recvfrom/msghdr, and sends one record to the `DATA` ring.
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
    data::{DATA_MAX, DIR_RECV, DIR_SEND, DataHeader, SyscallArgs, kind},
};

use crate::maps::{DATA, DATA_SCRATCH, SYSCALL_ARGS, config, count};

const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG4: usize = 48;
const RET: usize = 16;

macro_rules! capture_syscall {
    ($enter:ident, $exit:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $kind);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx);
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

fn enter(ctx: &TracePointContext, kind: u32) {
    if config().snippet_bytes == 0 || crate::owner::is_agent() {
        return;
    }
    // SAFETY: offsets of the uniform syscall record (see the module docs).
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.unwrap_or(0);
    let addr: u64 = match kind {
        // SAFETY: as above.
        kind::SENDTO | kind::RECVFROM => unsafe { ctx.read_at(ARG4) }.unwrap_or(0),
        _ => 0,
    };
    let _ = ARG0;
    let args = SyscallArgs {
        kind,
        protocol: 0,
        buf,
        addr,
        sk: 0,
    };
    let tid = bpf_get_current_pid_tgid();
    if SYSCALL_ARGS.insert(&tid, &args, 0).is_err() {
        count(index::LOST_MAP_SYSCALL);
    }
}

/// Called from the socket tracepoints during a data syscall: the fd is a
/// socket, and this is it.
#[inline(always)]
pub fn mark_socket(sk: u64, protocol: u16, len: i32, recv: bool) {
    let tid = bpf_get_current_pid_tgid();
    if let Some(args) = SYSCALL_ARGS.get_ptr_mut(&tid) {
        // SAFETY: a valid pointer into the map value of this thread.
        unsafe {
            (*args).sk = sk;
            (*args).protocol = protocol as u32;
        }
        return;
    }
    // Bytes moved by a syscall this module does not follow (sendfile,
    // splice, io_uring...): their content is not seen, but the parsers
    // must know that they passed, or a response body sent with sendfile
    // would be mistaken for the next message.
    if len > 0 && config().snippet_bytes != 0 && !crate::owner::is_agent() {
        let _ = emit_uncaptured(sk, tid, protocol, len as u64, recv);
    }
}

/// A record with no payload: `total_len` bytes passed uncaptured.
fn emit_uncaptured(sk: u64, tid: u64, protocol: u16, total: u64, recv: bool) -> Result<(), i64> {
    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
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
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*h).peer = [0; 28];
        (*h).tuple = sock_tuple(sk);
        if DATA.output::<DataHeader>(&*h, 0).is_err() {
            count(index::LOST_RING_DATA);
        } else {
            count(index::DATA);
        }
    }
    Ok(())
}

fn exit(ctx: &TracePointContext) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if args.sk == 0 {
        return;
    }
    // SAFETY: `ret` of the uniform sys_exit record.
    let ret: i64 = unsafe { ctx.read_at(RET) }.unwrap_or(0);
    if ret <= 0 {
        return;
    }
    let _ = emit(&args, tid, ret as u64);
}

/// The first user buffer of the syscall and its length, and the user
/// sockaddr of the peer if the syscall names one.
fn first_buffer(args: &SyscallArgs) -> Result<(u64, u64, u64), i64> {
    match args.kind {
        kind::READ | kind::WRITE => Ok((args.buf, u64::MAX, 0)),
        kind::RECVFROM | kind::SENDTO => Ok((args.buf, u64::MAX, args.addr)),
        kind::READV | kind::WRITEV => {
            let iov = read_iovec(args.buf)?;
            Ok((iov.0, iov.1, 0))
        }
        kind::RECVMSG | kind::SENDMSG => {
            // struct user_msghdr: msg_name at 0, msg_iov at 16 (UAPI).
            // SAFETY: reading user memory through the checked helper.
            let name: u64 =
                unsafe { bpf_probe_read_user(args.buf as *const u64) }.map_err(|e| e as i64)?;
            // SAFETY: as above.
            let iov: u64 = unsafe { bpf_probe_read_user((args.buf + 16) as *const u64) }
                .map_err(|e| e as i64)?;
            let first = read_iovec(iov)?;
            Ok((first.0, first.1, name))
        }
        _ => Err(0),
    }
}

/// `struct iovec { void *iov_base; size_t iov_len; }` at `ptr`.
fn read_iovec(ptr: u64) -> Result<(u64, u64), i64> {
    // SAFETY: reading user memory through the checked helper.
    let iov: [u64; 2] =
        unsafe { bpf_probe_read_user(ptr as *const [u64; 2]) }.map_err(|e| e as i64)?;
    Ok((iov[0], iov[1]))
}

/// The socket's addresses from `struct sock_common`, at offsets the agent
/// found in the kernel's BTF.
fn sock_tuple(sk: u64) -> SockTuple {
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
        // skc_num is the local port in host order, skc_dport the remote
        // one in network order.
        t.local_port = bpf_probe_read_kernel(at(o.num).cast::<u16>()).unwrap_or(0);
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

fn emit(args: &SyscallArgs, tid: u64, total: u64) -> Result<(), i64> {
    let (buf, buf_len, peer) = first_buffer(args)?;
    let scratch = DATA_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    let snippet = config().snippet_bytes as u64;
    let mut n = total.min(buf_len).min(snippet).min(DATA_MAX as u64);
    // Keep the verifier's bound on `n` explicit.
    n &= (DATA_MAX as u64 * 2) - 1;
    if n > DATA_MAX as u64 {
        n = DATA_MAX as u64;
    }
    // SAFETY: `scratch` is this CPU's scratch record; every read goes
    // through helpers that check the source.
    unsafe {
        let h = &raw mut (*scratch).header;
        (*h).sk = args.sk;
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).pid = (tid >> 32) as u32;
        (*h).tid = tid as u32;
        (*h).total_len = total.min(u32::MAX as u64) as u32;
        (*h).direction = match args.kind {
            kind::READ | kind::RECVFROM | kind::RECVMSG | kind::READV => DIR_RECV,
            _ => DIR_SEND,
        };
        (*h).protocol = args.protocol as u8;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*h).peer = [0; 28];
        if peer != 0 {
            (*h).peer = bpf_probe_read_user(peer as *const [u8; 28]).unwrap_or([0; 28]);
        }
        (*h).tuple = sock_tuple(args.sk);
        let data = (&raw mut (*scratch).data).cast::<u8>();
        let copied = if n > 0 {
            probe_read_user_raw(data.cast(), n as u32, buf as *const core::ffi::c_void) == 0
        } else {
            false
        };
        let captured = if copied { n } else { 0 };
        (*h).captured_len = captured as u32;
        let len = core::mem::size_of::<DataHeader>() + captured as usize;
        let record = core::slice::from_raw_parts(scratch.cast::<u8>(), len);
        if DATA.output::<[u8]>(record, 0).is_err() {
            count(index::LOST_RING_DATA);
        } else {
            count(index::DATA);
        }
    }
    Ok(())
}
