//! weft's steering programs: a separate object from the observation
//! programs (`main.rs`) because they live differently. Observation
//! programs die with the agent; these, and their maps, are pinned under
//! bpffs so that connects to a service keep working while the agent is
//! stopped, killed or upgraded (see `agent/src/steer/`).
//!
//! - `cgroup/connect4` and `connect6` on the cgroup v2 root: a connect to
//!   a service address becomes a connect to one of its backends, chosen by
//!   weighted random, before any packet exists (no NAT, no proxy).
//! - `cgroup/getpeername4` and `getpeername6`: a steered socket's peer
//!   reads as the service address the application dialed.
//! - `cgroup/sendmsg4`/`6` and `recvmsg4`/`6`: UDP datagrams to a service,
//!   and their replies.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
#[allow(
    dead_code,
    reason = "shared with weft-probes; only add_u64 is used here"
)]
mod atomic;
#[cfg(target_arch = "bpf")]
mod steer;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
