//! The mounts a node gives the agent. systemd distributions mount tracefs
//! (and bpffs) at boot, and the DaemonSet mounts the host's
//! `/sys/kernel/tracing`; these machines, like some nodes, mount neither.
//! A test that needs one state builds it in a private mount namespace of
//! its own, so it neither depends on nor leaves behind what another run
//! mounted.

/// What the node has mounted when the agent starts.
#[derive(Clone, Copy, Debug)]
pub enum NodeMounts {
    /// Neither tracefs nor bpffs: a fresh node that mounts nothing at boot.
    Nothing,
    /// tracefs at /sys/kernel/tracing and no bpffs.
    Tracefs,
}

const TRACEFS: &str = "/sys/kernel/tracing";
/// Where tracefs and bpffs may be mounted on a host.
const UNMOUNT: &str = "/sys/kernel/debug/tracing /sys/kernel/tracing /sys/fs/bpf";

impl NodeMounts {
    /// A command prefix that runs the rest of the command line in a private
    /// mount namespace with exactly this state (it `exec`s, so the pid is
    /// the command's own).
    pub fn wrapper(self) -> Vec<String> {
        let mount = match self {
            Self::Nothing => String::new(),
            Self::Tracefs => format!("mount -t tracefs tracefs {TRACEFS} || exit 1\n"),
        };
        let script = format!(
            "for m in {UNMOUNT}; do while mountpoint -q \"$m\"; do umount -l \"$m\" || exit 1; done; done\n\
             {mount}exec \"$@\""
        );
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([script, "sh".to_owned()])
        .collect()
    }
}
