//! Runs of the programs the kernel skipped. A tracing program is not run
//! when another BPF program is already running on its CPU (a socket
//! closing in softirq while a capture program runs there): the event is
//! lost. The kernel counts these per program (`recursion_misses` of
//! `struct bpf_prog_info`, Linux 5.12 and later); the agent reads them
//! and reports them as lost events, and logs which program lost them.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::Mutex,
};

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
    programs: Vec<(String, ProgramFd)>,
    /// Each program's count when last read, to name the program whose
    /// count rose (the lost-events metric sums them).
    seen: Mutex<Vec<u64>>,
}

impl RecursionMisses {
    /// `programs`: each program's name and a handle on it.
    pub fn new(programs: Vec<(String, ProgramFd)>) -> Self {
        let seen = Mutex::new(vec![0; programs.len()]);
        Self { programs, seen }
    }

    /// Skipped runs of all programs so far (a program whose count cannot
    /// be read adds nothing). Logs each program whose count rose since
    /// the last call.
    pub fn total(&self) -> u64 {
        let counts: Vec<u64> = self
            .programs
            .iter()
            .map(|(_, fd)| misses(fd.as_fd()).unwrap_or(0))
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (((name, _), count), before) in self.programs.iter().zip(&counts).zip(seen.iter_mut()) {
            if *count > *before {
                log::warn!(
                    "the kernel skipped {} run(s) of {name} (another BPF program was running \
                     on its CPU), {count} in all; counted in weft_events_lost_total \
                     (kernel_programs/recursion)",
                    count - *before
                );
                *before = *count;
            }
        }
        counts.iter().sum()
    }
}
