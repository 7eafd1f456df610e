//! The socket behind a file descriptor of the current task, for kernels
//! without `sock:sock_send_length`/`sock_recv_length` (before 6.3): there
//! the data syscalls' exit tracepoints count the bytes themselves, and
//! need the socket their fd names.
//!
//! The walk is `current->files->fdt->fd[fd]` to the `struct file`, whose
//! inode must be a socket's (`S_IFSOCK`) before its `private_data` is
//! taken for a `struct socket`, and `socket->sk` is the `struct sock`.
//! Every offset comes from the running kernel's BTF (the agent reads it
//! and sets `CONFIG.fd`); every read goes through the checked helper, so a
//! layout the agent got wrong yields no socket, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use weft_common::config::NO_FIELD;

use crate::maps::config;

/// `S_IFMT` and `S_IFSOCK` (include/uapi/linux/stat.h).
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// Whether the syscall exits count bytes on this kernel.
#[inline(always)]
pub fn enabled() -> bool {
    config().fd.enabled != 0
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, offset: u16) -> Option<T> {
    if base == 0 || offset == NO_FIELD {
        return None;
    }
    // SAFETY: the checked helper fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The `struct sock` and its protocol (IPPROTO_*) behind `fd` of the
/// current task, or None when the fd is not a socket.
#[inline(never)]
pub fn socket_of_fd(fd: u32) -> Option<(u64, u16)> {
    let o = &config().fd;
    // SAFETY: a helper without arguments, allowed in tracepoints.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, o.task_files)?;
    let fdt: u64 = read(files, o.files_fdt)?;
    let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = read(fdt, o.fdt_fd)?;
    let file: u64 = read(fds + fd as u64 * 8, 0)?;
    let inode: u64 = read(file, o.file_inode)?;
    let mode: u16 = read(inode, o.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    // A socket's inode: from here on a failed read is a layout the
    // agent got wrong, counted and (with --bpf-log) logged.
    let Some(socket) = read::<u64>(file, o.file_private_data) else {
        return layout_mismatch(fd, 1);
    };
    let Some(sk) = read::<u64>(socket, o.socket_sk) else {
        return layout_mismatch(fd, 2);
    };
    // A socket being released has no sock left: nothing to count.
    if sk == 0 {
        return None;
    }
    let Some(protocol) = read::<u16>(sk, o.sock_protocol) else {
        return layout_mismatch(fd, 3);
    };
    Some((sk, protocol))
}

/// A socket fd whose `struct socket` (step 1), `struct sock` (2) or
/// protocol (3) could not be read: the data syscall is not counted.
#[inline(always)]
fn layout_mismatch(fd: u32, step: u32) -> Option<(u64, u16)> {
    // Its own line says which fd and step; the counter's generic line
    // would say it a second time.
    let n = crate::maps::count_rare_unlogged(weft_common::counters::index::SKIP_READ_FAILED);
    if n.is_power_of_two() {
        crate::klog::fd_layout_mismatch(fd, step);
    }
    None
}
