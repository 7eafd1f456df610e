//! The bench's "node": a client pod and a server pod (network namespaces
//! joined by a veth pair, each with its own cgroup), a run directory, and
//! `kernel.bpf_stats_enabled` switched on. Everything is named
//! `weft-bench-<pid>` and removed when the [`Lab`] drops, also on failure
//! and Ctrl-C; a run that was killed outright is cleaned up by the next one
//! ([`remove_stale`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::proc::{Proc, wait_for};
use crate::cmd::{probe, read, say};

/// Prefix of every name (namespace, cgroup, directory) the bench creates.
const PREFIX: &str = "weft-bench-";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// In the run directory: the value of [`BPF_STATS`] before the run.
const BPF_STATS_SAVED: &str = "bpf_stats_enabled.orig";

/// One pod: a network namespace with one address, and a cgroup.
pub struct Pod {
    pub name: &'static str,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cgroup: PathBuf,
    /// PATH for the programs started in the pod (with cargo's bin
    /// directory, where the load generator may be).
    path: OsString,
}

impl Pod {
    /// Starts `argv` inside this pod (its namespace and its cgroup).
    pub fn spawn(&self, lab: &Lab, name: &str, argv: &[&str]) -> Result<Proc> {
        let mut full: Vec<String> = ["ip", "netns", "exec", &self.netns]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        full.extend(argv.iter().map(|s| (*s).to_owned()));
        let log = lab.dir.join(format!("{name}.log"));
        Proc::spawn(
            name,
            &self.cgroup.join("cgroup.procs"),
            &full,
            &log,
            &self.path,
        )
    }

    /// Runs a short command inside this pod's namespace and returns its
    /// stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        read(
            Command::new("ip")
                .args(["netns", "exec", &self.netns])
                .args(argv)
                .env("PATH", &self.path),
        )
    }

    /// Waits until something in the pod listens on TCP `port`.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let wanted = format!(":{port}");
        wait_for(
            &format!("a listener on port {port} in {}", self.netns),
            timeout,
            || {
                self.exec(&["ss", "-Hltn"]).is_ok_and(|out| {
                    out.lines()
                        .filter_map(|l| l.split_whitespace().nth(3))
                        .any(|local| local.ends_with(&wanted))
                })
            },
        )
    }

    /// CPU time used by the pod's cgroup so far, in µs.
    pub fn cpu_usec(&self) -> Result<u64> {
        cgroup_cpu_usec(&self.cgroup)
    }
}

pub struct Lab {
    pub client: Pod,
    pub server: Pod,
    /// Where the agent runs (in the root network namespace, as a node agent).
    pub agent_cgroup: PathBuf,
    /// Configurations, logs and sockets of this run.
    pub dir: PathBuf,
    cgroup_root: PathBuf,
    bpf_stats_before: Option<String>,
}

impl Lab {
    /// Builds the lab; `path` is the PATH of the programs it runs.
    pub fn new(path: OsString) -> Result<Self> {
        let id = std::process::id();
        let name = format!("{PREFIX}{id}");
        let unified = cgroup2_mount()?;
        let cgroup_root = unified.join(&name);
        // Addresses of a private range no test of the project uses (tests
        // use 10.231.0.0/16).
        let pod = |role: &'static str, ip| Pod {
            name: role,
            netns: format!("{name}-{role}"),
            ip,
            cgroup: cgroup_root.join(role),
            path: path.clone(),
        };
        let mut lab = Lab {
            client: pod("client", Ipv4Addr::new(10, 232, 0, 1)),
            server: pod("server", Ipv4Addr::new(10, 232, 0, 2)),
            agent_cgroup: cgroup_root.join("agent"),
            dir: std::env::temp_dir().join(&name),
            cgroup_root,
            bpf_stats_before: None,
        };
        // From here on, Drop undoes whatever part was built.
        lab.build().context("building the lab")?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        for dir in [
            &self.cgroup_root,
            &self.client.cgroup,
            &self.server.cgroup,
            &self.agent_cgroup,
        ] {
            fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        let veth = |pod: &Pod| format!("wb{}{}", std::process::id(), &pod.name[..1]);
        let (client_dev, server_dev) = (veth(&self.client), veth(&self.server));
        ip(&["netns", "add", &self.client.netns])?;
        ip(&["netns", "add", &self.server.netns])?;
        ip(&[
            "link",
            "add",
            &client_dev,
            "netns",
            &self.client.netns,
            "type",
            "veth",
            "peer",
            "name",
            &server_dev,
            "netns",
            &self.server.netns,
        ])?;
        for (pod, dev) in [(&self.client, &client_dev), (&self.server, &server_dev)] {
            let ns = pod.netns.as_str();
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", pod.ip),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            // Per-namespace settings for many short connections (the
            // stress opens one per request): a deep accept queue, the whole
            // port range, and reuse of TIME-WAIT ports.
            for setting in [
                "net.core.somaxconn=8192",
                "net.ipv4.tcp_max_syn_backlog=8192",
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ] {
                pod.exec(&["sysctl", "-qw", setting])?;
            }
        }
        let before = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(self.dir.join(BPF_STATS_SAVED), &before)?;
        self.bpf_stats_before = Some(before);
        fs::write(BPF_STATS, "1").with_context(|| format!("enabling {BPF_STATS}"))?;
        say(format_args!(
            "lab: pods {} ({}) and {} ({}), cgroups under {}, files in {}",
            self.client.netns,
            self.client.ip,
            self.server.netns,
            self.server.ip,
            self.cgroup_root.display(),
            self.dir.display()
        ));
        Ok(())
    }

    /// PATH of the programs the lab runs.
    pub fn path(&self) -> &OsStr {
        &self.client.path
    }

    pub fn agent_cpu_usec(&self) -> Result<u64> {
        cgroup_cpu_usec(&self.agent_cgroup)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let name = format!("{PREFIX}{}", std::process::id());
        remove(
            &name,
            &self.cgroup_root,
            &self.dir,
            self.bpf_stats_before.as_deref(),
        );
    }
}

/// Removes what a run named `name` created: the processes left in its
/// cgroups, the cgroups, its namespaces (and so the veth pair), its
/// directory; restores `kernel.bpf_stats_enabled`. Every step is tried.
fn remove(name: &str, cgroup_root: &Path, dir: &Path, bpf_stats_before: Option<&str>) {
    if cgroup_root.is_dir() {
        // Only processes this run started are in these cgroups.
        let _ = fs::write(cgroup_root.join("cgroup.kill"), "1");
        let _ = wait_for(
            "the lab's processes to exit",
            Duration::from_secs(5),
            || {
                fs::read_to_string(cgroup_root.join("cgroup.procs"))
                    .is_ok_and(|p| p.trim().is_empty())
                    && children(cgroup_root).iter().all(|c| {
                        fs::read_to_string(c.join("cgroup.procs"))
                            .is_ok_and(|p| p.trim().is_empty())
                    })
            },
        );
        for child in children(cgroup_root) {
            let _ = fs::remove_dir(child);
        }
        if let Err(e) = fs::remove_dir(cgroup_root) {
            say(format_args!(
                "cleanup: could not remove cgroup {}: {e}",
                cgroup_root.display()
            ));
        }
    }
    for role in ["client", "server"] {
        let netns = format!("{name}-{role}");
        if Path::new("/run/netns").join(&netns).exists() && ip(&["netns", "del", &netns]).is_err() {
            say(format_args!("cleanup: could not delete namespace {netns}"));
        }
    }
    if let Some(before) = bpf_stats_before
        && let Err(e) = fs::write(BPF_STATS, before)
    {
        say(format_args!("cleanup: could not restore {BPF_STATS}: {e}"));
    }
    let _ = fs::remove_dir_all(dir);
}

/// Cleans up after earlier runs that did not get to (killed, machine
/// crash): anything named `weft-bench-<pid>` whose pid is no longer a
/// running xtask. Fails when another bench is running: two at once would
/// measure each other.
pub fn remove_stale() -> Result<()> {
    let cgroups = cgroup2_mount()?;
    let mut ids: Vec<u32> = Vec::new();
    let netns = probe(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    let names = netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .chain(dir_names(&cgroups))
        .chain(dir_names(&std::env::temp_dir()));
    for name in names {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let id = rest.split('-').next().and_then(|id| id.parse().ok());
        if let Some(id) = id.filter(|id| !ids.contains(id)) {
            ids.push(id);
        }
    }
    for id in ids {
        if id == std::process::id() {
            continue;
        }
        if is_bench(id) {
            bail!("another `cargo xtask bench` (pid {id}) is running; wait for it to finish");
        }
        let name = format!("{PREFIX}{id}");
        say(format_args!(
            "cleanup: removing {name}, left by an earlier run"
        ));
        let dir = std::env::temp_dir().join(&name);
        let saved = fs::read_to_string(dir.join(BPF_STATS_SAVED)).ok();
        remove(
            &name,
            &cgroups.join(&name),
            &dir,
            saved.as_deref().map(str::trim),
        );
    }
    Ok(())
}

/// Whether process `id` is a `cargo xtask bench`.
fn is_bench(id: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{id}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{id}/cmdline")).unwrap_or_default();
    comm.trim() == "xtask" && cmdline.split(|&b| b == 0).any(|arg| arg == b"bench")
}

fn ip(args: &[&str]) -> Result<()> {
    read(Command::new("ip").args(args)).map(drop)
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on a unified layout,
/// /sys/fs/cgroup/unified on a hybrid one; read from mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("cgroup v2 is not mounted; the bench counts CPU time per pod with it")
}

fn cgroup_cpu_usec(cgroup: &Path) -> Result<u64> {
    let path = cgroup.join("cpu.stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}", path.display()))
}
