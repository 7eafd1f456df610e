//! HTTP/2 between two namespaces, seen from both sockets: nghttp (four
//! requests multiplexed on one h2c connection) and curl with prior
//! knowledge (a POST), the clients and egress records, against a real
//! nginx with an `http2` listener (ingress records); one request is
//! proxied to a slow backend for the latency.

use std::{process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    peer::{Peer, TempDir, require_program},
    require_root, servers, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);

/// The h2c server block: `/slow` (it sleeps 100 ms) and `/echo` (a POST:
/// 201) go to the Python test server on the server namespace's loopback.
/// (A `return` for a POST answers before reading the body and resets the
/// stream, which curl 7.88 reports as an error.)
fn h2c_server(addr: &str, port: u16, backend: u16) -> String {
    format!(
        "    server {{
        listen {addr}:{port} http2;
        location = /hello {{ return 200 \"hello\\n\"; }}
        location /users/ {{ return 200 \"a user\\n\"; }}
        location = /echo {{ proxy_pass http://127.0.0.1:{backend}; }}
        location = /slow {{ proxy_pass http://127.0.0.1:{backend}; }}
        location / {{ return 404; }}
    }}"
    )
}

#[test]
fn http2_requests_from_both_sides() {
    if !require_root("http2_requests_from_both_sides") {
        return;
    }
    require_program("curl");
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(28);
    let port_s = port.to_string();
    let backend = unique_port(29);
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/http_server.py");
    let backend_s = backend.to_string();
    let mut python = Peer::start(
        "python http server",
        &lab.server_ns,
        &["python3", script, "127.0.0.1", &backend_s],
    );
    let http = h2c_server(&lab.server_v4, port, backend);
    let mut nginx = servers::nginx(&lab, port, TempDir::new("nginx"), &http);
    let backend_addr = format!("127.0.0.1:{backend}").parse().expect("address");
    python.wait_tcp(&lab.server_ns, backend_addr, WAIT);

    let base = format!("http://{}:{port}", lab.server_v4);
    // (client, method, path, status). curl 7.88 cannot reuse an h2c
    // connection ("Error in the HTTP2 framing layer"): nghttp sends the
    // GETs, concurrently on one connection, and curl the POST on its own.
    let requests = [
        ("nghttp", "GET", "/hello", 200),
        ("nghttp", "GET", "/users/17", 200),
        ("nghttp", "GET", "/missing", 404),
        ("nghttp", "GET", "/slow", 200),
        ("curl", "POST", "/echo", 201),
    ];
    let mut nghttp = Command::new("ip");
    nghttp.args([
        "netns",
        "exec",
        &lab.client_ns,
        "nghttp",
        "--null-out",
        "--stat",
    ]);
    for (_, _, path, _) in requests.iter().filter(|r| r.0 == "nghttp") {
        nghttp.arg(format!("{base}{path}"));
    }
    let out = nghttp.output().expect("run nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nghttp: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "curl",
            "-sS",
            "--http2-prior-knowledge",
        ])
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--data",
            "name=weft",
        ])
        .arg(format!("{base}/echo"))
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 201",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nginx.stop();
    python.stop();

    let total = requests.len();
    let sides = follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["nghttp", "curl"]) >= 2);
    for side in &sides {
        for (client, method, path, status) in requests {
            let found: Vec<&Value> = side.iter().filter(|r| r["l7"]["path"] == path).collect();
            assert_eq!(found.len(), 1, "{path}: {side:#?}");
            let r = found[0];
            assert_eq!(r["l7"]["protocol"], "http2", "{r:#}");
            assert_eq!(r["l7"]["method"], method, "{r:#}");
            assert_eq!(r["l7"]["status"], status, "{r:#}");
            assert_eq!(r["source"]["process"], client, "{r:#}");
            assert_eq!(r["destination"]["process"], "nginx", "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
            assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
            let latency = r["l7"]["latency_us"].as_u64().expect("latency");
            // Emulated kernels (the VM matrix) run several times slower.
            let scaled_us = |ms| weft_tests::scaled(Duration::from_millis(ms)).as_micros() as u64;
            if path == "/slow" {
                assert!(
                    (100_000..scaled_us(2_000)).contains(&latency),
                    "/slow took {latency} µs"
                );
            } else {
                assert!(latency < scaled_us(100), "{path} took {latency} µs");
            }
            if path == "/users/17" {
                assert_eq!(r["l7"]["route"], "/users/{id}", "{r:#}");
            }
        }
        // nghttp's four requests share one connection.
        let nghttp_ports: std::collections::BTreeSet<u64> = side
            .iter()
            .filter(|r| r["source"]["process"] == "nghttp")
            .filter_map(|r| r["source"]["port"].as_u64())
            .collect();
        assert_eq!(nghttp_ports.len(), 1, "{side:#?}");
    }

    let port_label = format!("server_port=\"{port}\"");
    for family in [
        "http_client_request_duration_seconds_count",
        "http_server_request_duration_seconds_count",
    ] {
        assert_eq!(agent.metric_sum(family, &[&port_label]), total as f64);
        assert_eq!(
            agent.metric_sum(family, &[&port_label, "http_response_status_code=\"404\""]),
            1.0
        );
        assert_eq!(
            agent.metric_sum(family, &[&port_label, "http_route=\"/users/{id}\""]),
            1.0
        );
        assert_eq!(
            agent.metric_sum(family, &[&port_label, "http_request_method=\"POST\""]),
            1.0
        );
    }
}
