//! A socket's network namespace, read through `sk->__sk_common.skc_net`
//! at offsets the agent found in the kernel's BTF. Works in any context
//! (softirq too), unlike the current task's namespace.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use weft_common::config::NO_FIELD;

use crate::maps::config;

/// The inode number of the socket's network namespace, 0 when the layout
/// is unknown or a read fails (then all sockets share namespace 0, which
/// is what the programs did before they knew namespaces).
#[inline(always)]
pub fn of_socket(sk: u64) -> u32 {
    let o = &config().netns;
    if o.skc_net == NO_FIELD || o.net_inum == NO_FIELD || sk == 0 {
        return 0;
    }
    // SAFETY: kernel reads through the checked helper; a failed read
    // gives 0.
    unsafe {
        let net = bpf_probe_read_kernel((sk + o.skc_net as u64) as *const u64).unwrap_or(0);
        if net == 0 {
            return 0;
        }
        bpf_probe_read_kernel((net + o.net_inum as u64) as *const u32).unwrap_or(0)
    }
}
