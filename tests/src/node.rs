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
        match self {
            Self::Nothing => private_mounts(""),
            Self::Tracefs => private_mounts(&format!("mount -t tracefs tracefs {TRACEFS}")),
        }
    }
}

/// A command prefix that runs the rest of the command line in a private
/// mount namespace where neither tracefs nor bpffs is mounted (a fresh
/// node), after the shell commands `setup` (one per line; the first that
/// fails stops it, with status 1). It `exec`s, so the pid is the command's
/// own, and whatever it or the command mounts goes with the namespace.
pub fn private_mounts(setup: &str) -> Vec<String> {
    let setup: String = setup
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l} || exit 1\n"))
        .collect();
    let script = format!(
        "for m in {UNMOUNT}; do while mountpoint -q \"$m\"; do umount -l \"$m\" || exit 1; done; done\n\
         {setup}exec \"$@\""
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
