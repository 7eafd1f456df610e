//! A small "node": two network namespaces (client and server pods) joined
//! by a veth pair, with IPv4 and IPv6 addresses. Removed on drop, also when
//! the test fails.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use crate::run;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub client_ns: String,
    pub server_ns: String,
    /// The client-side veth (in the client namespace).
    pub client_dev: String,
    pub client_v4: String,
    pub server_v4: String,
    pub client_v6: String,
    pub server_v6: String,
}

impl Lab {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 200) * 10 + n % 10;
        let subnet = id % 250 + 1;
        let lab = Lab {
            client_ns: format!("weft-t{id}-c"),
            server_ns: format!("weft-t{id}-s"),
            client_dev: format!("wt{id}c"),
            client_v4: format!("10.231.{subnet}.1"),
            server_v4: format!("10.231.{subnet}.2"),
            client_v6: format!("fd00:231:{subnet:x}::1"),
            server_v6: format!("fd00:231:{subnet:x}::2"),
        };
        // A leftover of a crashed run with the same names goes first.
        lab.remove();
        let server_dev = format!("wt{id}s");
        run(&["ip", "netns", "add", &lab.client_ns]);
        run(&["ip", "netns", "add", &lab.server_ns]);
        run(&[
            "ip",
            "link",
            "add",
            &lab.client_dev,
            "netns",
            &lab.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &server_dev,
            "netns",
            &lab.server_ns,
        ]);
        for (ns, dev, v4, v6) in [
            (
                &lab.client_ns,
                &lab.client_dev,
                &lab.client_v4,
                &lab.client_v6,
            ),
            (&lab.server_ns, &server_dev, &lab.server_v4, &lab.server_v6),
        ] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// Runs `ip netns exec NS args...` and returns its output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `curl ARGS` in the client namespace, bounded by `limit` (see
    /// [`crate::output_within`]): `None` when it did not finish.
    pub fn curl<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        limit: std::time::Duration,
    ) -> Option<std::process::Output> {
        crate::peer::require_program("curl");
        let mut curl = std::process::Command::new("ip");
        curl.args(["netns", "exec", &self.client_ns, "curl"])
            .args(args);
        crate::output_within(&mut curl, limit)
    }

    /// A 20 Mbit/s shaper with a 30 ms queue on the client's egress: a
    /// bulk upload fills the queue (tens of ms of RTT) and overflows it
    /// (drops, so retransmits).
    pub fn shape_client_egress(&self) {
        self.exec(
            &self.client_ns,
            &[
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.client_dev,
                "root",
                "tbf",
                "rate",
                "20mbit",
                "burst",
                "16kb",
                "latency",
                "30ms",
            ],
        );
    }

    /// The lab server's IPv4 address with `port`.
    pub fn server_addr(&self, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.server_v4.parse().expect("lab address"), port)
    }

    fn remove(&self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so both.
        self.remove();
    }
}

/// Runs `f` on a new thread named `name` (its `comm`, as the kernel and so
/// weft see it) inside the network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .expect("spawn thread")
}
