//! DNS lookups between two namespaces, seen from both sockets: a real dig
//! (client, egress records) against a real dnsmasq (ingress records), over
//! UDP (a connected client socket against the server's unconnected one,
//! whose peers are named per datagram) and over TCP.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
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

fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .cloned()
        .collect()
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
    let pid_file = dir.join("dnsmasq.pid");
    let listen = format!("--listen-address={}", lab.server_v4);
    let port_arg = format!("--port={port}");
    let pid_arg = format!("--pid-file={pid_file}");
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
    let addr = format!("{}:{port}", lab.server_v4).parse().unwrap();
    server.wait_tcp(&lab.client_ns, addr, WAIT);

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
    let records = follower.wait(WAIT, |records| {
        l7(records, "egress").len() >= total && l7(records, "ingress").len() >= total
    });
    assert!(follower.notices().is_empty(), "{:?}", follower.notices());
    let egress = l7(&records, "egress");
    let ingress = l7(&records, "ingress");
    assert_eq!(egress.len(), total, "{egress:#?}");
    assert_eq!(ingress.len(), total, "{ingress:#?}");
    for side in [&egress, &ingress] {
        let mut sorted = side.clone();
        sorted.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_owned());
        for (r, l) in sorted.iter().zip(&LOOKUPS) {
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
    let mut sorted = egress.clone();
    sorted.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_owned());
    for (r, pid) in sorted.iter().zip(&dig_pids) {
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
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(pid.trim(), server.pid().to_string(), "dnsmasq's pid file");
}
