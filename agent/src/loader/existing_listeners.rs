//! The TCP listeners that already exist when the agent starts, read from
//! `/proc`: the lifecycle program learns a listener's owner when it starts
//! listening, so without this every connection accepted by a server older
//! than the agent (after any restart of the agent) would name no server
//! process at its open, and its metrics would carry the server's address
//! for a workload.
//!
//! What `netstat -p` does: each process's socket descriptors
//! (`/proc/PID/fd`, `socket:[INODE]`) give the owner of each socket inode,
//! and each network namespace's `/proc/PID/net/tcp` and `tcp6` list its
//! listening sockets with their port and inode.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use weft_common::{AF_INET, AF_INET6, COMM_LEN, Owner, conn::ListenKey};

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// A listening socket: its namespace, port, family and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listening {
    key: ListenKey,
    inode: u64,
}

/// Every listening TCP socket of every network namespace a process of
/// `proc` is in, with the process that holds it (the first found when
/// several share it, as after a fork). Processes that vanish meanwhile,
/// or that cannot be read, are skipped: this is best effort, and the
/// lifecycle program, attached before, catches the listeners made from
/// then on. `skip_pid` (the agent) is left out. `cgroup_root` is the
/// cgroup v2 mount, to name each owner's cgroup as the kernel does.
pub fn scan(proc: &Path, cgroup_root: &Path, skip_pid: u32) -> Vec<(ListenKey, Owner)> {
    let pids = pids(proc);
    let mut listening = Vec::new();
    let mut namespaces_read = HashSet::new();
    let mut holders: HashMap<u64, u32> = HashMap::new();
    for &pid in &pids {
        let dir = proc.join(pid.to_string());
        if let Some(netns) = netns(&dir)
            && namespaces_read.insert(netns)
        {
            listening.extend(listeners_in(&dir, netns));
        }
        for inode in socket_inodes(&dir) {
            holders.entry(inode).or_insert(pid);
        }
    }
    listening
        .into_iter()
        .filter_map(|l| {
            let pid = *holders.get(&l.inode)?;
            (pid != skip_pid).then(|| (l.key, owner(&proc.join(pid.to_string()), pid, cgroup_root)))
        })
        .collect()
}

fn pids(proc: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The inode number of the process's network namespace (`net->ns.inum`).
fn netns(dir: &Path) -> Option<u32> {
    let ino = fs::metadata(dir.join("ns/net")).ok()?.ino();
    u32::try_from(ino).ok()
}

/// The listening sockets of the namespace `dir`'s process is in.
fn listeners_in(dir: &Path, netns: u32) -> Vec<Listening> {
    [("net/tcp", AF_INET), ("net/tcp6", AF_INET6)]
        .into_iter()
        .filter_map(|(table, family)| Some((fs::read_to_string(dir.join(table)).ok()?, family)))
        .flat_map(|(text, family)| parse_table(&text, netns, family))
        .collect()
}

/// The `LISTEN` rows of a `/proc/net/tcp` or `tcp6` table.
fn parse_table(text: &str, netns: u32, family: u16) -> Vec<Listening> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            let port = fields.get(1)?.rsplit_once(':')?.1;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = fields.get(9)?.parse().ok().filter(|&i| i != 0)?;
            Some(Listening {
                key: ListenKey {
                    netns,
                    port,
                    family,
                },
                inode,
            })
        })
        .collect()
}

/// The socket inodes a process holds descriptors of.
fn socket_inodes(dir: &Path) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// The process as the lifecycle program would have named it when it
/// started listening (its main thread standing for the thread).
fn owner(dir: &Path, pid: u32, cgroup_root: &Path) -> Owner {
    let mut comm = [0u8; COMM_LEN];
    if let Ok(name) = fs::read_to_string(dir.join("comm")) {
        let name = name.trim_end_matches('\n').as_bytes();
        let n = name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&name[..n]);
    }
    Owner {
        pid,
        tid: pid,
        cgroup_id: cgroup_id(dir, cgroup_root).unwrap_or(0),
        comm,
    }
}

/// The cgroup v2 id of the process: the inode number of its cgroup's
/// directory (`0::/path` in `/proc/PID/cgroup`).
fn cgroup_id(dir: &Path, cgroup_root: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join("cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let relative = path.trim_start_matches('/');
    Some(fs::metadata(cgroup_root.join(relative)).ok()?.ino())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn listen_rows_are_read_with_port_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1
";
        let rows = parse_table(table, 7, AF_INET);
        assert_eq!(
            rows,
            [Listening {
                key: ListenKey {
                    netns: 7,
                    port: 8080,
                    family: AF_INET
                },
                inode: 31337
            }],
            "the established row is not a listener"
        );
    }

    #[test]
    fn this_process_listener_is_found_with_its_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        let found = scan(Path::new("/proc"), Path::new("/sys/fs/cgroup"), 0);
        let (key, owner) = found
            .iter()
            .find(|(k, o)| k.port == port && o.pid == me)
            .expect("our listener");
        assert_eq!(key.family, AF_INET);
        assert_eq!(
            key.netns,
            super::super::listeners::own_netns().expect("netns")
        );
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let want = comm.trim_end().as_bytes();
        let n = want.len().min(COMM_LEN - 1);
        assert_eq!(&owner.comm[..n], &want[..n]);
        // Left out when it is the agent's own.
        let without = scan(Path::new("/proc"), Path::new("/sys/fs/cgroup"), me);
        assert!(!without.iter().any(|(k, o)| k.port == port && o.pid == me));
    }
}
