//! A lab for steering: one client namespace joined by its own veth pair to
//! each of several backend namespaces (one /24 and one IPv6 /64 per
//! backend), each backend running a real HTTP server whose page names it.
//! The service addresses (IPv4 and IPv6) are in no subnet of the client
//! and the client has no default route: without weft's rewrite a connect
//! to them fails with ENETUNREACH.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    peer::{Peer, TempDir},
    run,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Backend {
    pub ns: String,
    pub addr: SocketAddr,
    /// Its IPv6 address, same port (servers there: [`SteerLab::v6_servers`]).
    pub addr6: SocketAddr,
    /// The body its server answers with (`backend-N`).
    pub name: String,
    server: Option<Peer>,
    /// The server's command line, to start it again.
    args: Vec<String>,
    _root: TempDir,
}

impl Backend {
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
    }

    /// Replaces its server with one that accepts every connect and
    /// answers every request with `status` (`tests/peers/http_server.py`);
    /// [`Backend::stop`] and [`Backend::start`] bring the usual one back.
    pub fn answer_every_request_with(&mut self, status: u16) {
        self.stop();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http_server.py");
        let (ip, port, status) = (
            self.addr.ip().to_string(),
            self.addr.port().to_string(),
            status.to_string(),
        );
        let args = ["python3", script, &ip, &port, &status];
        let mut server = Peer::start(&self.name, &self.ns, &args);
        server.wait_tcp(&self.ns, self.addr, Duration::from_secs(20));
        self.server = Some(server);
    }

    /// Starts the server again after [`Backend::stop`]; returns once it
    /// accepts connections.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "{} is running", self.name);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut server = Peer::start(&self.name, &self.ns, &args);
        server.wait_tcp(&self.ns, self.addr, Duration::from_secs(20));
        self.server = Some(server);
    }
}

pub struct SteerLab {
    pub client_ns: String,
    pub backends: Vec<Backend>,
    /// Routed nowhere from the client namespace.
    pub service_ip: String,
    /// The same, IPv6.
    pub service_ip6: String,
    /// Further client namespaces ([`SteerLab::add_client`]).
    pub more_clients: Vec<String>,
    id: u32,
    net: u32,
}

impl SteerLab {
    /// `n` backends serving HTTP on `port`.
    pub fn new(n: usize, port: u16) -> Self {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 200) * 5 + k % 5;
        let net = id % 250 + 1;
        let client_ns = format!("weft-s{id}-c");
        let names: Vec<String> = (0..n).map(|i| format!("weft-s{id}-b{i}")).collect();
        remove_namespaces(&client_ns, &names);
        run(&["ip", "netns", "add", &client_ns]);
        run(&["ip", "-n", &client_ns, "link", "set", "lo", "up"]);
        let mut backends = Vec::new();
        for (i, ns) in names.iter().enumerate() {
            let (cdev, bdev) = (format!("ws{id}c{i}"), format!("ws{id}b{i}"));
            let subnet = format!("10.{}.{net}", 232 + i);
            run(&["ip", "netns", "add", ns]);
            run(&[
                "ip", "link", "add", &cdev, "netns", &client_ns, "type", "veth", "peer", "name",
                &bdev, "netns", ns,
            ]);
            let subnet6 = format!("fd00:{}:{net}", 232 + i);
            for (space, dev, host) in [(&client_ns, &cdev, 1), (ns, &bdev, 2)] {
                let cidr = format!("{subnet}.{host}/24");
                run(&["ip", "-n", space, "link", "set", "lo", "up"]);
                run(&["ip", "-n", space, "addr", "add", &cidr, "dev", dev]);
                // No duplicate address detection: usable at once.
                let cidr6 = format!("{subnet6}::{host}/64");
                run(&[
                    "ip", "-n", space, "addr", "add", &cidr6, "dev", dev, "nodad",
                ]);
                run(&["ip", "-n", space, "link", "set", dev, "up"]);
            }
            let addr: SocketAddr = format!("{subnet}.2:{port}").parse().expect("address");
            let addr6: SocketAddr = format!("[{subnet6}::2]:{port}").parse().expect("address");
            let name = format!("backend-{i}");
            let root = TempDir::new("steer-http");
            std::fs::write(root.path.join("index.html"), format!("{name}\n")).expect("page");
            let port_s = port.to_string();
            let ip = addr.ip().to_string();
            let args = [
                "python3",
                "-m",
                "http.server",
                &port_s,
                "--bind",
                &ip,
                "--directory",
                root.as_str(),
            ];
            let mut server = Peer::start(&name, ns, &args);
            server.wait_tcp(ns, addr, Duration::from_secs(20));
            backends.push(Backend {
                ns: ns.clone(),
                addr,
                addr6,
                name,
                server: Some(server),
                args: args.iter().map(|a| a.to_string()).collect(),
                _root: root,
            });
        }
        Self {
            client_ns,
            backends,
            service_ip: format!("10.240.{net}.10"),
            service_ip6: format!("fd00:240:{net}::10"),
            more_clients: Vec::new(),
            id,
            net,
        }
    }

    /// Another client namespace, joined to every backend by a veth pair of
    /// its own (subnet `10.{100 + 8c + i}.NET`, `c` the client's number)
    /// and routed to each backend's server address through it. Returns its
    /// name.
    pub fn add_client(&mut self) -> String {
        let c = self.more_clients.len() as u32 + 1;
        assert!(c <= 16 && self.backends.len() <= 8, "too many lab clients");
        let (id, net) = (self.id, self.net);
        let ns = format!("weft-s{id}-x{c}");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", &ns]);
        self.more_clients.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        for (i, b) in self.backends.iter().enumerate() {
            let (cdev, bdev) = (format!("ws{id}x{c}c{i}"), format!("ws{id}x{c}b{i}"));
            let subnet = format!("10.{}.{net}", 100 + 8 * c + i as u32);
            run(&[
                "ip", "link", "add", &cdev, "netns", &ns, "type", "veth", "peer", "name", &bdev,
                "netns", &b.ns,
            ]);
            for (space, dev, host) in [(&ns, &cdev, 1), (&b.ns, &bdev, 2)] {
                let cidr = format!("{subnet}.{host}/24");
                run(&["ip", "-n", space, "addr", "add", &cidr, "dev", dev]);
                run(&["ip", "-n", space, "link", "set", dev, "up"]);
            }
            let server = format!("{}/32", b.addr.ip());
            let via = format!("{subnet}.2");
            run(&[
                "ip", "-n", &ns, "route", "add", &server, "via", &via, "dev", &cdev,
            ]);
        }
        ns
    }

    /// Routes the node's own namespace (where the agent runs) to every
    /// backend's IPv4 address, through a veth pair of its own per backend
    /// (`10.249.NET.4i+1/30` on the node's side), as a cluster node reaches
    /// its pods: for the agent's active health checks. The pairs go with
    /// the backend namespaces.
    pub fn route_from_node(&self) {
        let (id, net) = (self.id, self.net);
        for (i, b) in self.backends.iter().enumerate() {
            let (ndev, bdev) = (format!("wh{id}n{i}"), format!("wh{id}b{i}"));
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &ndev])
                .stderr(std::process::Stdio::null())
                .status();
            run(&[
                "ip", "link", "add", &ndev, "type", "veth", "peer", "name", &bdev, "netns", &b.ns,
            ]);
            let (node, backend) = (4 * i + 1, 4 * i + 2);
            run(&[
                "ip",
                "addr",
                "add",
                &format!("10.249.{net}.{node}/30"),
                "dev",
                &ndev,
            ]);
            run(&["ip", "link", "set", &ndev, "up"]);
            let cidr = format!("10.249.{net}.{backend}/30");
            run(&["ip", "-n", &b.ns, "addr", "add", &cidr, "dev", &bdev]);
            run(&["ip", "-n", &b.ns, "link", "set", &bdev, "up"]);
            let server = format!("{}/32", b.addr.ip());
            let via = format!("10.249.{net}.{backend}");
            run(&["ip", "route", "add", &server, "via", &via, "dev", &ndev]);
        }
    }

    /// A `services:` entry: this lab's service `name` on `port` in front
    /// of the backends with `weights` (an empty slice: no backend).
    pub fn service_yaml(&self, name: &str, port: u16, weights: &[u32]) -> String {
        let mut y = format!(
            "  - name: {name}\n    address: {}\n    port: {port}\n    backends:",
            self.service_ip
        );
        if weights.is_empty() {
            y.push_str(" []\n");
            return y;
        }
        y.push('\n');
        for (b, w) in self.backends.iter().zip(weights) {
            y.push_str(&format!(
                "      - {{address: {}, port: {}, weight: {w}}}\n",
                b.addr.ip(),
                b.addr.port()
            ));
        }
        y
    }

    /// An HTTP server at each backend's IPv6 address (port `addr6`'s), whose
    /// page names the backend as its IPv4 one does. They stop when dropped.
    pub fn v6_servers(&self) -> Vec<(Peer, TempDir)> {
        let mut out = Vec::new();
        for b in &self.backends {
            let root = TempDir::new("steer-http6");
            std::fs::write(root.path.join("index.html"), format!("{}\n", b.name)).expect("page");
            let (port, ip) = (b.addr6.port().to_string(), b.addr6.ip().to_string());
            let args = [
                "python3",
                "-m",
                "http.server",
                &port,
                "--bind",
                &ip,
                "--directory",
                root.as_str(),
            ];
            let mut server = Peer::start(&format!("{}-v6", b.name), &b.ns, &args);
            server.wait_tcp(&b.ns, b.addr6, Duration::from_secs(20));
            out.push((server, root));
        }
        out
    }

    /// [`SteerLab::service_yaml`] at the IPv6 service address, in front of
    /// the backends' IPv6 addresses (`protocol` tcp or udp).
    pub fn service_yaml6(
        &self,
        name: &str,
        port: u16,
        protocol: &str,
        backend_port: u16,
    ) -> String {
        let backends = self.backends.iter().map(|b| b.addr6.ip());
        service_entry(
            name,
            &self.service_ip6,
            port,
            protocol,
            backends,
            backend_port,
        )
    }

    /// A UDP (or TCP) service at the IPv4 service address in front of the
    /// backends' IPv4 addresses on `backend_port`, weight 1 each.
    pub fn service_yaml_at(
        &self,
        name: &str,
        port: u16,
        protocol: &str,
        backend_port: u16,
    ) -> String {
        let backends = self.backends.iter().map(|b| b.addr.ip());
        service_entry(
            name,
            &self.service_ip,
            port,
            protocol,
            backends,
            backend_port,
        )
    }

    /// [`SteerLab::curls`] to the IPv6 service address.
    pub fn curls6(&self, port: u16, n: usize) -> Vec<String> {
        let host = format!("[{}]", self.service_ip6);
        curls_to(&self.client_ns, &host, port, n)
    }

    /// dnsmasq in every backend namespace on UDP (and TCP) `port`, each
    /// answering `which.test` with `10.250.0.N` for backend N. The peers
    /// stop when dropped.
    pub fn dnsmasqs(&self, port: u16) -> Vec<(Peer, TempDir)> {
        self.dnsmasqs_at(port, false)
    }

    /// [`SteerLab::dnsmasqs`] at the backends' IPv6 addresses (`v6`) or
    /// IPv4 ones.
    pub fn dnsmasqs_at(&self, port: u16, v6: bool) -> Vec<(Peer, TempDir)> {
        let mut out = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            let dir = TempDir::new("steer-dns");
            let ip = if v6 { b.addr6.ip() } else { b.addr.ip() };
            let listen = format!("--listen-address={ip}");
            let port_arg = format!("--port={port}");
            let pid_arg = format!("--pid-file={}", dir.join("dnsmasq.pid"));
            let record = format!("--host-record=which.test,10.250.0.{i}");
            let args = [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                &listen,
                "--bind-interfaces",
                &port_arg,
                &pid_arg,
                "--user=root",
                "--group=root",
                "--log-facility=-",
                &record,
            ];
            let mut peer = Peer::start(&format!("dnsmasq-{i}"), &b.ns, &args);
            // TCP accepting means UDP is bound too (one listen address).
            peer.wait_tcp(&b.ns, SocketAddr::new(ip, port), Duration::from_secs(20));
            out.push((peer, dir));
        }
        out
    }

    /// `ip netns exec CLIENT sh -c SCRIPT`: its stdout.
    pub fn client_sh(&self, script: &str) -> String {
        let out = run(&["ip", "netns", "exec", &self.client_ns, "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `n` curls from the client, each its own process and connection, to
    /// `http://SERVICE:port/`: one line per curl, `<body> <status> <peer>`
    /// (peer as curl reports it).
    pub fn curls(&self, port: u16, n: usize) -> Vec<String> {
        self.curls_in(&self.client_ns, port, n)
    }

    /// [`SteerLab::curls`] from client namespace `ns`.
    pub fn curls_in(&self, ns: &str, port: u16, n: usize) -> Vec<String> {
        curls_to(ns, &self.service_ip, port, n)
    }
}

/// `n` curls from namespace `ns` to `http://HOST:port/` (`host` an IPv4
/// address or a bracketed IPv6 one), one line each: `<body> <status>
/// <peer>`.
fn curls_to(ns: &str, host: &str, port: u16, n: usize) -> Vec<String> {
    // -g: the brackets of an IPv6 host are not a URL glob.
    let script = format!(
        "for i in $(seq {n}); do curl -sg --max-time 5 -w ' %{{http_code}} %{{remote_ip}}:%{{remote_port}}\\n' \
         'http://{host}:{port}/' | tr -d '\\n'; echo; done"
    );
    let out = run(&["ip", "netns", "exec", ns, "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.replace("  ", " ").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// One `services:` entry at `address`, in front of `backends` on
/// `backend_port` (weight 1 each).
fn service_entry(
    name: &str,
    address: &str,
    port: u16,
    protocol: &str,
    backends: impl Iterator<Item = std::net::IpAddr>,
    backend_port: u16,
) -> String {
    let mut y = format!(
        "  - name: {name}\n    address: '{address}'\n    port: {port}\n    protocol: {protocol}\n    backends:\n"
    );
    for ip in backends {
        y.push_str(&format!(
            "      - {{address: '{ip}', port: {backend_port}}}\n"
        ));
    }
    y
}

impl Drop for SteerLab {
    fn drop(&mut self) {
        for b in &mut self.backends {
            b.stop();
        }
        let names: Vec<String> = self
            .backends
            .iter()
            .map(|b| b.ns.clone())
            .chain(self.more_clients.iter().cloned())
            .collect();
        remove_namespaces(&self.client_ns, &names);
    }
}

fn remove_namespaces(client: &str, backends: &[String]) {
    for ns in std::iter::once(&client.to_owned()).chain(backends) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Removes every pinned weft object (steering and policy) when a test
/// ends, also when it fails, so that no program stays attached to the
/// node.
pub struct PinCleanup;

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let out = crate::agent::weft(&["cleanup"]);
        if !out.status.success() {
            eprintln!(
                "weft cleanup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
