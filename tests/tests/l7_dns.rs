//! DNS lookups between two namespaces, seen from both sockets: a real dig
//! (client, egress records) against a real dnsmasq (ingress records), over
//! UDP (a connected client socket against the server's unconnected one,
//! whose peers are named per datagram) and over TCP.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use weft_tests::{
    agent::Agent,
    follow::Follower,
    lab::Lab,
    peer::{Peer, TempDir, require_program},
    require_root, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);

/// A query and what weft must report for it.
struct Lookup {
    name: &'static str,
    qtype: &'static str,
    tcp: bool,
    rcode: &'static str,
    answers: u64,
}

const LOOKUPS: [Lookup; 5] = [
    Lookup {
        name: "www.example.test",
        qtype: "A",
        tcp: false,
        rcode: "NOERROR",
        answers: 1,
    },
    Lookup {
        name: "www.example.test",
        qtype: "AAAA",
        tcp: false,
        rcode: "NOERROR",
        answers: 1,
    },
    // `--address=/nx.test/`: the domain exists nowhere.
    Lookup {
        name: "nx.test",
        qtype: "A",
        tcp: false,
        rcode: "NXDOMAIN",
        answers: 0,
    },
    // Not local and no upstream server: refused.
    Lookup {
        name: "elsewhere.example",
        qtype: "MX",
        tcp: false,
        rcode: "REFUSED",
        answers: 0,
    },
    Lookup {
        name: "www.example.test",
        qtype: "A",
        tcp: true,
        rcode: "NOERROR",
        answers: 1,
    },
];

/// dnsmasq in the lab's server namespace on `port`, answering
/// www.example.test (A and AAAA) and NXDOMAIN for nx.test, refusing the
/// rest (no upstream), once it accepts connections.
fn dnsmasq(lab: &Lab, port: u16, dir: &TempDir) -> Peer {
    let listen = format!("--listen-address={}", lab.server_v4);
    let port_arg = format!("--port={port}");
    let pid_arg = format!("--pid-file={}", dir.join("dnsmasq.pid"));
    let mut server = Peer::start(
        "dnsmasq",
        &lab.server_ns,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            // Only the lab address: the server's sockets then carry it as
            // their local address (a wildcard socket would say 0.0.0.0).
            &listen,
            "--bind-interfaces",
            &port_arg,
            &pid_arg,
            "--user=root",
            "--group=root",
            "--log-facility=-",
            "--host-record=www.example.test,10.1.2.3,fd00::1:2:3",
            "--address=/nx.test/",
        ],
    );
    // dnsmasq serves TCP and UDP on the same port: TCP accepting means
    // both are bound.
    let addr = format!("{}:{port}", lab.server_v4)
        .parse()
        .expect("a lab address");
    server.wait_tcp(&lab.client_ns, addr, WAIT);
    server
}

#[test]
fn dns_lookups_from_both_sides() {
    if !require_root("dns_lookups_from_both_sides") {
        return;
    }
    require_program("dnsmasq");
    require_program("dig");
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(22);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let dir = TempDir::new("dnsmasq");
    let mut server = dnsmasq(&lab, port, &dir);
    let mut dig_pids = Vec::new();
    for l in &LOOKUPS {
        let at = format!("@{}", lab.server_v4);
        let transport = if l.tcp { "+tcp" } else { "+notcp" };
        let dig = Command::new("ip")
            .args(["netns", "exec", &lab.client_ns])
            .args([
                "dig", &at, "-p", &port_s, "+tries=1", "+time=5", transport, l.name, l.qtype,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run dig");
        // `ip netns exec` execs dig: this is dig's pid.
        dig_pids.push(u64::from(dig.id()));
        let out = dig.wait_with_output().expect("dig");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && text.contains(&format!("status: {},", l.rcode))
                && text.contains(&format!("ANSWER: {},", l.answers)),
            "dig {} {}: {text}",
            l.name,
            l.qtype
        );
    }
    server.assert_running();

    let total = LOOKUPS.len();
    // UDP has no close: the records are complete once each side has them.
    let [egress, ingress] = follower.l7_both_sides(WAIT, total, |_| true);
    for side in [&egress, &ingress] {
        for (r, l) in side.iter().zip(&LOOKUPS) {
            assert_eq!(r["l7"]["protocol"], "dns", "{r:#}");
            assert_eq!(r["transport"], if l.tcp { "tcp" } else { "udp" }, "{r:#}");
            assert_eq!(r["l7"]["query"], l.name, "{r:#}");
            assert_eq!(r["l7"]["qtype"], l.qtype, "{r:#}");
            assert_eq!(r["l7"]["rcode"], l.rcode, "{r:#}");
            assert_eq!(r["l7"]["answers"], l.answers, "{r:#}");
            assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
            assert_eq!(r["source"]["ip"], lab.client_v4.as_str(), "{r:#}");
            assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
            let latency = r["l7"]["latency_us"].as_u64().expect("latency");
            assert!(latency > 0 && latency < 1_000_000, "{r:#}");
        }
    }
    // Each side names its own process; dnsmasq is the server on both.
    for r in &ingress {
        assert_eq!(r["destination"]["process"], "dnsmasq", "{r:#}");
    }
    // dig's records come from its network threads (comm `isc-net-0000`),
    // of its process.
    for (r, pid) in egress.iter().zip(&dig_pids) {
        assert_eq!(r["source"]["pid"], *pid, "{r:#}");
    }

    // Lookup durations are the client's (egress) only.
    let dns = "dns_lookup_duration_seconds_count";
    let dport = format!("destination_port=\"{port}\"");
    assert_eq!(agent.metric_sum(dns, &[&dport]), total as f64);
    assert_eq!(
        agent.metric_sum(dns, &[&dport, "dns_question_type=\"A\""]),
        3.0
    );
    assert_eq!(
        agent.metric_sum(dns, &[&dport, "dns_question_type=\"AAAA\""]),
        1.0
    );
    assert_eq!(
        agent.metric_sum(
            dns,
            &[
                &dport,
                "dns_question_type=\"A\"",
                "dns_response_code=\"NXDOMAIN\""
            ]
        ),
        1.0
    );
    assert_eq!(
        agent.metric_sum(dns, &[&dport, "dns_response_code=\"REFUSED\""]),
        1.0
    );
    assert_eq!(
        agent.metric_sum(dns, &[&dport, "dns_response_code=\"NOERROR\""]),
        3.0
    );
    // The server's pid file is in our directory; it goes with it.
    let pid = std::fs::read_to_string(dir.join("dnsmasq.pid")).unwrap_or_default();
    assert_eq!(pid.trim(), server.pid().to_string(), "dnsmasq's pid file");
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` mounts over
/// `/etc/resolv.conf`; removed on drop.
struct NetnsResolvConf {
    dir: std::path::PathBuf,
}

impl NetnsResolvConf {
    fn new(ns: &str, nameserver: &str) -> Self {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).expect("/etc/netns directory");
        let conf = format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n");
        std::fs::write(dir.join("resolv.conf"), conf).expect("resolv.conf");
        Self { dir }
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // /etc/netns itself, if nothing else is in it.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The C library's resolver (getaddrinfo, as nearly every program uses
/// it) sends its A and AAAA queries together with one sendmmsg, and reads
/// the answers with recvfrom: two lookups, each seen from both sides.
#[test]
fn dns_lookups_of_the_c_library() {
    if !require_root("dns_lookups_of_the_c_library") {
        return;
    }
    require_program("dnsmasq");
    require_program("getent");
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    // resolv.conf names no port: the standard one, on the lab's address.
    let port = 53;
    let follower = Follower::start(&agent, &["--port", "53", "--ip", &lab.server_v4]);
    let dir = TempDir::new("dnsmasq");
    let mut server = dnsmasq(&lab, port, &dir);
    let _resolv = NetnsResolvConf::new(&lab.client_ns, &lab.server_v4);

    let getent = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns])
        .args(["getent", "ahosts", "www.example.test"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run getent");
    let pid = u64::from(getent.id());
    let out = getent.wait_with_output().expect("getent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("10.1.2.3") && text.contains("fd00::1:2:3"),
        "getent ahosts www.example.test: {text}"
    );
    server.assert_running();

    let [egress, ingress] = follower.l7_both_sides(WAIT, 2, |_| true);
    for side in [&egress, &ingress] {
        let mut qtypes: Vec<&str> = side
            .iter()
            .map(|r| r["l7"]["qtype"].as_str().unwrap_or_default())
            .collect();
        qtypes.sort_unstable();
        assert_eq!(qtypes, ["A", "AAAA"], "{side:#?}");
        for r in side.iter() {
            assert_eq!(r["transport"], "udp", "{r:#}");
            assert_eq!(r["l7"]["query"], "www.example.test", "{r:#}");
            assert_eq!(r["l7"]["rcode"], "NOERROR", "{r:#}");
            assert_eq!(r["l7"]["answers"], 1, "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
        }
    }
    for r in &egress {
        assert_eq!(r["source"]["pid"], pid, "{r:#}");
        assert_eq!(r["source"]["process"], "getent", "{r:#}");
    }
    // Port 53 is everyone's: the lab server (named by its address, its
    // process being on the other socket) and getent narrow it to ours.
    let dns = "dns_lookup_duration_seconds_count";
    let ours = [
        "destination_port=\"53\"",
        &format!("destination_workload=\"{}\"", lab.server_v4),
        "source_workload=\"getent\"",
    ];
    assert_eq!(agent.metric_sum(dns, &ours), 2.0);
    let aaaa = [ours.as_slice(), &["dns_question_type=\"AAAA\""]].concat();
    assert_eq!(agent.metric_sum(dns, &aaaa), 1.0);
}
