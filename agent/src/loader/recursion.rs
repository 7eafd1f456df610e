//! Runs of the programs the kernel skipped. A tracing program is not run
//! when another BPF program is already running on its CPU (a socket
//! closing in softirq while a capture program runs there): the event is
//! lost. The kernel counts these per program (`recursion_misses` of
//! `struct bpf_prog_info`, Linux 5.12 and later); the agent reads them
//! and reports them as lost events.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::programs::ProgramFd;
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD (the kernel accepts an
/// attribute shorter than its own union).
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's count of skipped runs of the program behind `fd`.
pub fn misses(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integers; all zeros is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the attribute and the info buffer are valid for the call,
    // and the kernel writes at most `info_len` bytes into the buffer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw const attr,
            std::mem::size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// The agent's tracing programs, to sum their skipped runs at each poll.
pub struct RecursionMisses {
    programs: Vec<ProgramFd>,
}

impl RecursionMisses {
    pub fn new(programs: Vec<ProgramFd>) -> Self {
        Self { programs }
    }

    /// Skipped runs of all programs so far (a program whose count cannot
    /// be read adds nothing).
    pub fn total(&self) -> u64 {
        self.programs
            .iter()
            .filter_map(|fd| misses(fd.as_fd()).ok())
            .sum()
    }
}
