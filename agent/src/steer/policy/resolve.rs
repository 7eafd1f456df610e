//! What the kernel needs to match rule sources that name things, not
//! packets: the network namespaces whose addresses an egress rule's
//! `from.cidr` covers (a socket that is not bound has no source address
//! when connect runs, so its namespace stands for it), and the cgroup ids
//! of `from.cgroup` paths. Both change while the agent runs (pods come
//! and go, services restart in new cgroups), so they are read again every
//! second.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// A network namespace as the kernel's programs know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `SO_NETNS_COOKIE`, what `bpf_get_netns_cookie` returns.
    pub cookie: u64,
    /// Its IPv4 addresses (loopback included).
    pub addrs: Vec<Ipv4Addr>,
}

/// Namespaces by inode, with a handle to open each: a process's
/// `/proc/PID/ns/net`, or a named namespace's `/run/netns/NAME` (one
/// without a process, as `ip netns add` makes).
pub fn namespace_handles() -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(m) = std::fs::metadata(&path) {
            out.entry(m.ino()).or_insert(path);
        }
    };
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                add(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(e.path().join("ns/net"));
            }
        }
    }
    out
}

/// `SO_NETNS_COOKIE` (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Reads each namespace's cookie and addresses from inside it, on a
/// thread of its own that enters them one by one (setns changes only the
/// calling thread's namespace) and ends there. Namespaces that vanish
/// meanwhile are left out.
pub fn read_namespaces(handles: Vec<(u64, PathBuf)>) -> io::Result<BTreeMap<u64, Namespace>> {
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let mut out = BTreeMap::new();
            for (inode, path) in handles {
                if let Ok(ns) = read_one(&path) {
                    out.insert(inode, ns);
                }
            }
            out
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace reader panicked"))
}

fn read_one(path: &Path) -> io::Result<Namespace> {
    let f = File::open(path)?;
    // SAFETY: a plain syscall on a descriptor we own; it affects only this
    // thread, which serves nothing else.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Namespace {
        cookie: netns_cookie()?,
        addrs: ipv4_addresses()?,
    })
}

/// The cookie of the calling thread's network namespace.
fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain syscalls; the socket is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// Whether this kernel tells a namespace's cookie (Linux 5.14 and later).
pub fn cookies_supported() -> bool {
    netns_cookie().is_ok()
}

/// The IPv4 addresses of the calling thread's network namespace.
fn ipv4_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null()
            // SAFETY: a non-null sockaddr of the list.
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// The cgroup id (the inode of its directory) of each `from.cgroup` path
/// that exists now under the cgroup v2 mount.
pub fn cgroup_ids(cgroup_root: &Path, paths: &[&String]) -> BTreeMap<String, u64> {
    paths
        .iter()
        .filter_map(|&p| {
            let dir = cgroup_root.join(p.trim_start_matches('/'));
            let m = std::fs::metadata(dir).ok()?;
            m.is_dir().then(|| (p.clone(), m.ino()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_threads_namespace_is_read_with_its_loopback() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let handles = namespace_handles();
        let path = handles
            .get(&own)
            .expect("the agent's own namespace is found")
            .clone();
        // Entering a namespace needs CAP_SYS_ADMIN.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let read = read_namespaces(vec![(own, path)]).unwrap();
        let ns = &read[&own];
        if cookies_supported() {
            assert_ne!(ns.cookie, 0);
            assert_eq!(ns.cookie, netns_cookie().unwrap());
        }
        assert!(ns.addrs.contains(&Ipv4Addr::LOCALHOST), "{ns:?}");
    }

    #[test]
    fn cgroup_paths_resolve_to_directory_inodes() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("system.slice/a.service")).unwrap();
        let (a, b) = ("/system.slice/a.service".to_string(), "/gone".to_string());
        let ids = cgroup_ids(root.path(), &[&a, &b]);
        let ino = std::fs::metadata(root.path().join("system.slice/a.service"))
            .unwrap()
            .ino();
        assert_eq!(ids, BTreeMap::from([(a, ino)]));
    }
}
