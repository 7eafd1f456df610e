//! weft's kernel programs.
//!
//! Hook choice: this agent must work without kprobes and fentry (absent or
//! refused on many kernels), so every program sits on an ABI-stable hook:
//!
//! - `sock:inet_sock_set_state` — the TCP lifecycle. Connections opened
//!   (active and passive), closed and failed. Runs in softirq context for
//!   most transitions, so process identity comes from elsewhere (below).
//! - `sock:sock_send_length` / `sock:sock_recv_length` — payload bytes per
//!   socket exactly as the application wrote and read them, in the
//!   application's own context: this is also where the process that owns an
//!   accepted socket is learned. Before 6.3 these do not exist: the data
//!   syscalls' exit tracepoints (below, with the payload capture) count
//!   the bytes instead, from their return value, with the fd resolved to
//!   its socket through the task's file table (fd_sock.rs).
//! - `tcp:tcp_probe` (smoothed RTT), `tcp:tcp_retransmit_skb`,
//!   `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`.
//! - `skb:kfree_skb` — packet drops with the kernel's drop reason.
//! - `cgroup_skb` ingress/egress on the cgroup v2 root — UDP datagrams with
//!   their full address pair, which the socket tracepoints do not carry for
//!   unconnected sockets.
//!
//! - with `traces.inject_traceparent` only: `sock_ops` on the cgroup v2
//!   root (client sockets into a socket map) and `sk_msg` on that map
//!   (a `traceparent` written into outgoing HTTP/1.x requests; inject.rs).
//!
//! - uprobes on OpenSSL's `SSL_read`/`SSL_write` (and `_ex`): the
//!   plaintext of TLS connections (tls.rs), and on Go's
//!   `crypto/tls.(*Conn).Read`/`Write` and their `RET` instructions in Go
//!   binaries (go_tls.rs).
//!
//! Tracepoint field offsets are not compiled in: the agent reads them from
//! the running kernel's tracefs format files and sets them in `CONFIG`
//! before loading. Counters live in maps (per-CPU where possible); only
//! lifecycle events go through the ring buffer. Nothing is logged per packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// XADD for counters shared between CPUs (see atomic.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod fd_sock;
// The rare paths' logs (`weft agent --bpf-log`).
#[cfg(target_arch = "bpf")]
mod go_tls;
#[cfg(target_arch = "bpf")]
mod inject;
#[cfg(target_arch = "bpf")]
mod klog;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod netns;
#[cfg(target_arch = "bpf")]
mod owner;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod report;
#[cfg(target_arch = "bpf")]
mod resets;
#[cfg(target_arch = "bpf")]
mod sock_io;
#[cfg(target_arch = "bpf")]
mod tcp_probe;
#[cfg(target_arch = "bpf")]
mod tcp_state;
#[cfg(target_arch = "bpf")]
mod tls;
#[cfg(target_arch = "bpf")]
mod tp;
#[cfg(target_arch = "bpf")]
mod udp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never called; an infinite loop is what aya's template uses too.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
