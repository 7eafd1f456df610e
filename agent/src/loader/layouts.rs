//! Kernel struct layouts from BTF that the programs read through
//! (`struct sock_common`, `struct sk_buff`), each reported as a feature.

use super::btf;
use crate::status::FeatureStatus;

/// A member's byte offset in a kernel struct, as the programs take it.
fn member_offset(btf: &btf::Btf, strukt: &str, member: &str) -> Result<u16, String> {
    btf.member_offset(strukt, member)
        .map_err(|e| e.to_string())
        .and_then(|o| u16::try_from(o).map_err(|e| e.to_string()))
}

/// `struct sk_buff` member offsets from the kernel's BTF, for the addresses
/// of dropped packets.
pub fn skb_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::SkbOffsets {
    use weft_common::config::SkbOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let off = |m: &str| member_offset(btf, "sk_buff", m);
        Ok(SkbOffsets {
            head: off("head")?,
            network_header: off("network_header")?,
            protocol: off("protocol")?,
            _pad: 0,
        })
    });
    let (offsets, available, detail) = match found {
        Ok(offsets) => (
            offsets,
            true,
            "struct sk_buff offsets from /sys/kernel/btf/vmlinux".to_owned(),
        ),
        Err(why) => (
            SkbOffsets::ABSENT,
            false,
            format!("{why}: drops are counted by reason, without drop records"),
        ),
    };
    features.push(FeatureStatus {
        name: "packet layout (BTF)".into(),
        available,
        detail,
    });
    offsets
}

/// `struct sock_common` member offsets from the kernel's BTF, for the
/// addresses of sockets no tracepoint describes (UDP, pre-existing TCP).
pub fn sock_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::SockOffsets {
    use weft_common::config::SockOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let off = |m: &str| member_offset(btf, "sock_common", m);
        Ok(SockOffsets {
            daddr: off("skc_daddr")?,
            rcv_saddr: off("skc_rcv_saddr")?,
            dport: off("skc_dport")?,
            sport: member_offset(btf, "inet_sock", "inet_sport")?,
            family: off("skc_family")?,
            v6_daddr: off("skc_v6_daddr")?,
            v6_rcv_saddr: off("skc_v6_rcv_saddr")?,
            state: off("skc_state")?,
            protocol: member_offset(btf, "sock", "sk_protocol")?,
            // Only the RTT sample needs it: its absence costs that alone.
            tcp_srtt_us: member_offset(btf, "tcp_sock", "srtt_us")
                .unwrap_or(weft_common::config::NO_FIELD),
        })
    });
    match found {
        Ok(offsets) => {
            features.push(FeatureStatus {
                name: "socket layout (BTF)".into(),
                available: true,
                detail: "struct sock_common offsets from /sys/kernel/btf/vmlinux".into(),
            });
            offsets
        }
        Err(why) => {
            features.push(FeatureStatus {
                name: "socket layout (BTF)".into(),
                available: false,
                detail: format!("{why}: no L7 for UDP or for connections older than the agent"),
            });
            SockOffsets::ABSENT
        }
    }
}

/// Where a socket's network namespace number is, from the kernel's BTF:
/// listening ports are told apart by namespace with it.
pub fn netns_offsets(
    btf: Result<&btf::Btf, &String>,
    features: &mut Vec<FeatureStatus>,
) -> weft_common::config::NetnsOffsets {
    use weft_common::config::NetnsOffsets;
    let found = btf.map_err(Clone::clone).and_then(|btf| {
        let ns = member_offset(btf, "net", "ns")?;
        let inum = member_offset(btf, "ns_common", "inum")?;
        Ok(NetnsOffsets {
            // `possible_net_t skc_net` holds one `struct net *`.
            skc_net: member_offset(btf, "sock_common", "skc_net")?,
            net_inum: ns.checked_add(inum).ok_or("struct net too large")?,
        })
    });
    let (offsets, available, detail) = match found {
        Ok(offsets) => (
            offsets,
            true,
            "listening ports per network namespace (BTF)".to_owned(),
        ),
        Err(why) => (
            NetnsOffsets::ABSENT,
            false,
            format!("{why}: a port's listeners in different namespaces are not told apart"),
        ),
    };
    features.push(FeatureStatus {
        name: "network namespaces".into(),
        available,
        detail,
    });
    offsets
}

/// The offsets from a task to the socket behind one of its fds, for
/// counting bytes at the data syscalls' exits on kernels without the
/// socket tracepoints (see ebpf/probes/src/fd_sock.rs). `enabled` is
/// left to the caller.
pub fn fd_offsets(btf: &btf::Btf) -> Result<weft_common::config::FdOffsets, String> {
    use weft_common::config::FdOffsets;
    Ok(FdOffsets {
        task_files: member_offset(btf, "task_struct", "files")?,
        files_fdt: member_offset(btf, "files_struct", "fdt")?,
        fdt_max_fds: member_offset(btf, "fdtable", "max_fds")?,
        fdt_fd: member_offset(btf, "fdtable", "fd")?,
        file_inode: member_offset(btf, "file", "f_inode")?,
        file_private_data: member_offset(btf, "file", "private_data")?,
        inode_mode: member_offset(btf, "inode", "i_mode")?,
        socket_sk: member_offset(btf, "socket", "sk")?,
        sock_protocol: member_offset(btf, "sock", "sk_protocol")?,
        enabled: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_the_fd_to_socket_path() {
        let Ok(Ok(btf)) = btf::Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux here; skipping");
            return;
        };
        let o = fd_offsets(&btf).expect("every struct and member of the walk");
        // `struct socket { int state; short type; unsigned long flags;
        // struct file *file; struct sock *sk; ...}` on 64-bit kernels.
        assert_eq!(o.socket_sk, 24);
        // `struct fdtable { unsigned int max_fds; struct file **fd; ...}`.
        assert_eq!((o.fdt_max_fds, o.fdt_fd), (0, 8));
        assert_eq!(o.enabled, 0);
    }
}
