//! Attaching the payload-capture programs (see ebpf/probes/src/capture.rs):
//! a pair of programs on each data syscall's entry and exit tracepoints.

use std::path::Path;

use aya::Ebpf;

use super::{
    LoadError,
    attach::{Attached, Need},
    tracefs,
};

/// (syscall, entry program, exit program).
const SYSCALLS: &[(&str, &str, &str)] = &[
    ("read", "weft_ent_read", "weft_ext_read"),
    ("write", "weft_ent_write", "weft_ext_write"),
    ("recvfrom", "weft_ent_recvfrom", "weft_ext_recvfrom"),
    ("sendto", "weft_ent_sendto", "weft_ext_sendto"),
    ("recvmsg", "weft_ent_recvmsg", "weft_ext_recvmsg"),
    ("sendmsg", "weft_ent_sendmsg", "weft_ext_sendmsg"),
    ("readv", "weft_ent_readv", "weft_ext_readv"),
    ("writev", "weft_ent_writev", "weft_ext_writev"),
    ("recvmmsg", "weft_ent_recvmmsg", "weft_ext_recvmmsg"),
    ("sendmmsg", "weft_ent_sendmmsg", "weft_ext_sendmmsg"),
];

/// The syscall records the programs assume: the buffer (or
/// iovec/msghdr/mmsghdr) argument at offset 24, sendto/recvfrom's address at 48, `ret` at 16.
pub fn formats_match(tracefs_root: &Path) -> Result<(), String> {
    for (syscall, _, _) in SYSCALLS {
        let enter = tracefs::read_format(tracefs_root, "syscalls", &format!("sys_enter_{syscall}"))
            .map_err(|e| format!("syscalls:sys_enter_{syscall}: {e}"))?;
        let exit = tracefs::read_format(tracefs_root, "syscalls", &format!("sys_exit_{syscall}"))
            .map_err(|e| format!("syscalls:sys_exit_{syscall}: {e}"))?;
        if exit.offset("ret", 8) != 16 {
            return Err(format!("sys_exit_{syscall}: `ret` is not at offset 16"));
        }
        let arg1 = ["buf", "ubuf", "buff", "msg", "vec", "mmsg"]
            .iter()
            .any(|name| enter.offset(name, 8) == 24);
        if !arg1 {
            return Err(format!(
                "sys_enter_{syscall}: the buffer argument is not at offset 24"
            ));
        }
        if matches!(*syscall, "sendto" | "recvfrom") && enter.offset("addr", 8) != 48 {
            return Err(format!("sys_enter_{syscall}: `addr` is not at offset 48"));
        }
    }
    Ok(())
}

/// Attaches every capture program; one a kernel refuses is reported and
/// costs the payload of its syscall only.
pub fn attach(ebpf: &mut Ebpf, attached: &mut Attached) -> Result<(), LoadError> {
    for (syscall, enter, exit) in SYSCALLS {
        for (prog, tp) in [
            (*enter, format!("sys_enter_{syscall}")),
            (*exit, format!("sys_exit_{syscall}")),
        ] {
            attached.tracepoint(ebpf, Need::Optional, prog, "syscalls", &tp)?;
        }
    }
    Ok(())
}
