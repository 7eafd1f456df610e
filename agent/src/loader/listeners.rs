//! The agent's own listening sockets, entered in the kernel's listener
//! table before any program is attached, so that every connection they
//! accept is known as the agent's own from its first event, whatever the
//! order in which the programs attach. (They are bound before the
//! programs are loaded, so that a taken port fails before anything is
//! attached, and listen only after: see export/server.rs.)

use std::{net::SocketAddr, os::unix::fs::MetadataExt, path::Path};

use aya::maps::{HashMap, MapData};
use weft_common::{AF_INET, AF_INET6, COMM_LEN, Owner, conn::ListenKey};

use super::LoadError;

/// The inode number of the agent's network namespace, as the programs read
/// it from a socket (`net->ns.inum`).
pub fn own_netns() -> std::io::Result<u32> {
    let ino = std::fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(ino).map_err(std::io::Error::other)
}

/// The listener-table key of a socket bound to `addr` in namespace `netns`.
/// An IPv6 socket bound to `[::]` also accepts IPv4 connections: those
/// children are IPv6 sockets too (mapped addresses), so one key covers them.
pub fn key(netns: u32, addr: SocketAddr) -> ListenKey {
    ListenKey {
        netns,
        port: addr.port(),
        family: if addr.is_ipv4() { AF_INET } else { AF_INET6 },
    }
}

/// The agent as the owner of a listener: its pid is what the programs
/// compare with the configured `agent_pid`.
fn agent_owner() -> Owner {
    let pid = std::process::id();
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"weft");
    Owner {
        pid,
        tid: pid,
        cgroup_id: 0,
        comm,
    }
}

/// The kernel's listener table.
fn listener_table(
    ebpf: &mut aya::Ebpf,
) -> Result<HashMap<&mut MapData, ListenKey, Owner>, LoadError> {
    let map = ebpf
        .map_mut("TCP_LISTENERS")
        .ok_or(LoadError::MissingMap("TCP_LISTENERS"))?;
    HashMap::try_from(map).map_err(|source| LoadError::Map {
        name: "TCP_LISTENERS",
        source,
    })
}

/// Enters the agent's listening socket bound to `addr` in the kernel's
/// listener table, so that every connection it accepts is marked as the
/// agent's own from its first event.
pub fn add_own(ebpf: &mut aya::Ebpf, addr: SocketAddr) -> Result<(), LoadError> {
    let netns = own_netns().map_err(LoadError::OwnNetns)?;
    listener_table(ebpf)?
        .insert(key(netns, addr), agent_owner(), 0)
        .map_err(|source| LoadError::Map {
            name: "TCP_LISTENERS",
            source,
        })
}

/// The map update flag: only a key not there yet (`BPF_NOEXIST`).
const BPF_NOEXIST: u64 = 1;

/// Enters the listeners that exist before the lifecycle program is
/// attached (see `existing_listeners`), so that the connections they
/// accept name their server from the open on, as for listeners made
/// later. Returns how many it entered.
pub fn add_existing(ebpf: &mut aya::Ebpf, cgroup_root: &Path) -> Result<usize, LoadError> {
    let found =
        super::existing_listeners::scan(Path::new("/proc"), cgroup_root, std::process::id());
    let mut listeners = listener_table(ebpf)?;
    let mut entered = 0;
    for (key, owner) in found {
        // The first holder found of a port shared by several processes
        // (SO_REUSEPORT) names it.
        match listeners.insert(key, owner, BPF_NOEXIST) {
            Ok(()) => entered += 1,
            Err(e) => log::debug!("listener on port {} not entered: {e}", key.port),
        }
    }
    Ok(entered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_namespace_is_the_one_proc_shows() {
        let link = std::fs::read_link("/proc/self/ns/net").expect("ns link");
        // "net:[4026531840]"
        let shown = link.to_string_lossy();
        let inum: u32 = shown
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse()
            .expect("inode number");
        assert_eq!(own_netns().expect("netns"), inum);
    }

    #[test]
    fn a_dual_stack_listener_is_keyed_as_ipv6() {
        let k = key(7, "[::]:9464".parse().expect("addr"));
        assert_eq!((k.netns, k.port, k.family), (7, 9464, AF_INET6));
        let k = key(7, "0.0.0.0:9464".parse().expect("addr"));
        assert_eq!(k.family, AF_INET);
    }
}
