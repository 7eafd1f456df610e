//! What the agent needs from the kernel and the process, checked before
//! loading so that a missing piece is reported by name with what to do.

use std::path::Path;

use crate::status::FeatureStatus;

/// Capabilities (include/uapi/linux/capability.h) the agent uses.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set from /proc/self/status.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The capabilities that are missing, by name. CAP_SYS_ADMIN covers BPF and
/// PERFMON on kernels older than 5.8, so it is accepted in their place.
///
/// CAP_SYS_ADMIN itself is not required: loading and attaching (cgroup
/// root included) need only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. It is
/// needed only to mount tracefs or bpffs when the host has not, and that
/// mount's own error says so.
pub fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Whether the kernel will create uprobes for this process: its uprobe
/// perf events (`perf_event_open` with the `uprobe` PMU) need
/// CAP_SYS_ADMIN, not only CAP_PERFMON (measured on 6.18: EACCES). The
/// feature that needs them, and what is lost without it.
pub fn uprobes_available(eff: u64) -> FeatureStatus {
    let available = eff & (1u64 << CAP_SYS_ADMIN) != 0;
    FeatureStatus {
        name: "tls plaintext (uprobes)".into(),
        available,
        detail: if available {
            "OpenSSL's libssl, read at SSL_read/SSL_write".into()
        } else {
            "the kernel creates uprobes only for CAP_SYS_ADMIN: add SYS_ADMIN to the \
             agent's capabilities to read the requests inside TLS connections; until \
             then they get their handshake records only"
                .into()
        },
    }
}

/// A tracepoint a program attaches to, and what is lost without it.
pub struct TracepointNeed {
    pub category: &'static str,
    pub name: &'static str,
    pub required: bool,
    pub without: &'static str,
}

pub const TRACEPOINTS: &[TracepointNeed] = &[
    TracepointNeed {
        category: "sock",
        name: "inet_sock_set_state",
        required: true,
        without: "no TCP connections at all",
    },
    TracepointNeed {
        category: "sock",
        name: "sock_send_length",
        required: false,
        without: "kernel before 6.3: bytes sent are counted at the syscall exits instead (see `byte counts from syscall exits`)",
    },
    TracepointNeed {
        category: "sock",
        name: "sock_recv_length",
        required: false,
        without: "kernel before 6.3: bytes received are counted at the syscall exits instead",
    },
    TracepointNeed {
        category: "tcp",
        name: "tcp_probe",
        required: false,
        without: "no smoothed RTT",
    },
    TracepointNeed {
        category: "tcp",
        name: "tcp_retransmit_skb",
        required: false,
        without: "no retransmit counts",
    },
    TracepointNeed {
        category: "tcp",
        name: "tcp_send_reset",
        required: false,
        without: "no resets sent",
    },
    TracepointNeed {
        category: "tcp",
        name: "tcp_receive_reset",
        required: false,
        without: "no resets received",
    },
    TracepointNeed {
        category: "skb",
        name: "kfree_skb",
        required: false,
        without: "no packet drops",
    },
];

pub fn tracepoint_exists(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format")
        .exists()
}

pub fn btf_available() -> FeatureStatus {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    FeatureStatus {
        name: "kernel BTF".into(),
        available: path.exists(),
        detail: if path.exists() {
            "/sys/kernel/btf/vmlinux".into()
        } else {
            "not needed by the L4 programs".into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        let eff = parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(missing_caps(eff).is_empty());
    }

    #[test]
    fn unprivileged_misses_all() {
        let eff = parse_cap_eff("CapEff:\t0000000000000000\n").unwrap();
        assert!(!uprobes_available(eff).available);
        assert!(uprobes_available(1 << CAP_SYS_ADMIN).available);
        assert_eq!(
            missing_caps(eff),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn bpf_perfmon_net_admin_suffice() {
        let eff = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert!(missing_caps(eff).is_empty());
        // Before 5.8, CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        let eff = (1u64 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert!(missing_caps(eff).is_empty());
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), ["CAP_NET_ADMIN"]);
    }
}
