//! gRPC between two namespaces, seen from both sockets: a real grpcio
//! client (egress records) against a real grpcio server (ingress records),
//! four unary calls on one channel: OK, OK, NOT_FOUND, and a slow one.

use std::time::Duration;

use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    require_root, servers, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "weft.test.Greeter";

/// The calls the client makes, in order, and their gRPC status codes.
const CALLS: [(&str, u64); 4] = [("SayHello", 0), ("SayHello", 0), ("Lookup", 5), ("Slow", 0)];

#[test]
fn grpc_calls_from_both_sides() {
    if !require_root("grpc_calls_from_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(30);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let mut server = servers::grpc(&lab, port);
    assert_eq!(
        servers::grpc_calls(&lab, &server),
        "SayHello OK\nSayHello OK\nLookup NOT_FOUND\nSlow OK\n"
    );
    server.stop();

    let total = CALLS.len();
    // Client and server are both python3: the client's socket is the
    // source of the connection's close record.
    let sides = follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["python3"]) >= 1);
    for side in &sides {
        for (r, (method, status)) in side.iter().zip(CALLS) {
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
            agent.metric_sum(
                family,
                &[&dport, &lookup, "rpc_response_status_code=\"NOT_FOUND\""]
            ),
            1.0
        );
        assert_eq!(
            agent.metric_sum(family, &[&dport, "rpc_response_status_code=\"OK\""]),
            3.0
        );
    }
}
