//! gRPC between two namespaces, seen from both sockets: a real grpcio
//! client (egress records) against a real grpcio server (ingress records),
//! four unary calls on one channel: OK, OK, NOT_FOUND, and a slow one.

use std::{process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::Follower,
    lab::Lab,
    peer::{Peer, require_program},
    require_root, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "weft.test.Greeter";

/// The calls the client makes, in order, and their gRPC status codes.
const CALLS: [(&str, u64); 4] = [("SayHello", 0), ("SayHello", 0), ("Lookup", 5), ("Slow", 0)];

fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .cloned()
        .collect()
}

/// A Python with grpcio: Debian's (python3-grpcio), else the first
/// `python3` on PATH.
fn grpc_python() -> String {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.to_owned();
        }
    }
    panic!(
        "no python3 with grpcio: the gRPC test needs a real gRPC peer \
         (`cargo xtask setup` installs python3-grpcio)"
    );
}

#[test]
fn grpc_calls_from_both_sides() {
    if !require_root("grpc_calls_from_both_sides") {
        return;
    }
    require_program("python3");
    let python = grpc_python();
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(30);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/grpc_peer.py");
    let mut server = Peer::start(
        "grpc server",
        &lab.server_ns,
        &[&python, script, "serve", &lab.server_v4, &port_s],
    );
    let addr = format!("{}:{port}", lab.server_v4).parse().unwrap();
    server.wait_tcp(&lab.client_ns, addr, WAIT);

    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, &python, script, "call"])
        .args([&lab.server_v4, &port_s])
        .output()
        .expect("run the gRPC client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "SayHello OK\nSayHello OK\nLookup NOT_FOUND\nSlow OK\n",
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();

    let total = CALLS.len();
    let records = follower.wait(WAIT, |records| {
        let closed = records.iter().any(|r| {
            r["type"] == "l4"
                && r["event"] == "close"
                && r["destination"]["port"] == port
                && r["source"]["process"] != "weft-probe"
        });
        closed && l7(records, "egress").len() >= total && l7(records, "ingress").len() >= total
    });
    assert!(follower.notices().is_empty(), "{:?}", follower.notices());
    let egress = l7(&records, "egress");
    let ingress = l7(&records, "ingress");
    assert_eq!(egress.len(), total, "{egress:#?}");
    assert_eq!(ingress.len(), total, "{ingress:#?}");
    for side in [&egress, &ingress] {
        let mut sorted = side.clone();
        sorted.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_owned());
        for (r, (method, status)) in sorted.iter().zip(CALLS) {
            assert_eq!(r["l7"]["protocol"], "grpc", "{r:#}");
            assert_eq!(r["l7"]["service"], SERVICE, "{r:#}");
            assert_eq!(r["l7"]["method"], method, "{r:#}");
            assert_eq!(r["l7"]["grpc_status"], status, "{r:#}");
            assert_eq!(r["l7"]["status"], 200, "{r:#}");
            assert_eq!(r["source"]["process"], "python3", "{r:#}");
            assert_eq!(r["destination"]["process"], "python3", "{r:#}");
            assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
            assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
            let latency = r["l7"]["latency_us"].as_u64().expect("latency");
            if method == "Slow" {
                assert!(
                    (100_000..2_000_000).contains(&latency),
                    "Slow took {latency} µs"
                );
            } else {
                assert!(latency < 100_000, "{method} took {latency} µs");
            }
        }
        // One channel, one connection.
        let ports: std::collections::BTreeSet<u64> = side
            .iter()
            .filter_map(|r| r["source"]["port"].as_u64())
            .collect();
        assert_eq!(ports.len(), 1, "{side:#?}");
    }

    let say_hello = format!("rpc_method=\"{SERVICE}/SayHello\"");
    let lookup = format!("rpc_method=\"{SERVICE}/Lookup\"");
    let dport = format!("destination_port=\"{port}\"");
    for family in [
        "rpc_client_call_duration_seconds_count",
        "rpc_server_call_duration_seconds_count",
    ] {
        let grpc = "rpc_system_name=\"grpc\"";
        assert_eq!(agent.metric_sum(family, &[grpc, &dport]), total as f64);
        assert_eq!(agent.metric_sum(family, &[grpc, &dport, &say_hello]), 2.0);
        assert_eq!(
            agent.metric_sum(family, &[&dport, &lookup, "rpc_response_status_code=\"5\""]),
            1.0
        );
        assert_eq!(
            agent.metric_sum(family, &[&dport, "rpc_response_status_code=\"0\""]),
            3.0
        );
    }
}
