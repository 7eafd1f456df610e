//! TLS handshake metadata between two namespaces, seen from both sockets:
//! a real TLS server and client (Python's ssl on the system's OpenSSL,
//! tests/peers/tls_peer.py) with a certificate made for the test.
//!
//! Connections of three kinds, each counted exactly on both sides: TLS 1.3
//! offering h2 and http/1.1 (the choice is encrypted: no `alpn`), TLS 1.2
//! offering http/1.1 (named in the ServerHello), and a client that does not
//! trust the server's CA (a failed handshake, its alert named). Every
//! record names the SNI; no other L7 record comes from these connections
//! (the ciphertext after the handshake is not parsed), and
//! `weft_tls_handshakes_total` counts each handshake once. Then mutual TLS:
//! a server that requires a client certificate refuses clients without
//! one (TLS 1.3 and 1.2), and accepts one with a certificate.

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    peer::TempDir,
    require_root, servers,
    tls::certificates,
    unique_port,
};

const WAIT: Duration = Duration::from_secs(20);
const SNI: &str = "api.weft.test";

/// A client run: (its highest version, the ALPN it offers, connections,
/// the negotiated version, the records' `alpn`, their `failure`).
type Run = (
    &'static str,
    &'static str,
    usize,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const RUNS: [Run; 3] = [
    ("1.3", "h2,http/1.1", 5, "1.3", None, None),
    ("1.2", "http/1.1", 3, "1.2", Some("http/1.1"), None),
    ("1.3", "h2,http/1.1", 2, "1.3", None, Some("unknown_ca")),
];

#[test]
fn tls_handshakes_from_both_sides() {
    if !require_root("tls_handshakes_from_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(100);
    let port_s = port.to_string();
    let dir = TempDir::new("tls-certs");
    certificates(&dir, SNI);
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let mut server =
        servers::python_tls(&lab, port, &dir.join("server.pem"), &dir.join("server.key"));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/tls_peer.py");
    for (max, alpn, count, _, want_alpn, failure) in RUNS {
        let ca = dir.join(if failure.is_some() {
            "other-ca.pem"
        } else {
            "ca.pem"
        });
        let count_s = count.to_string();
        let args = [
            "python3",
            script,
            "client",
            &lab.server_v4,
            &port_s,
            &ca,
            SNI,
            max,
            alpn,
            &count_s,
        ];
        // `exec` fails the test, with the output, when the client fails.
        let out = lab.exec(&lab.client_ns, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let want = match failure {
            // The server picks h2 when offered; the client says what it got.
            None => format!("ok {}\n", want_alpn.unwrap_or("h2")),
            Some(_) => "failed CERTIFICATE_VERIFY_FAILED\n".to_owned(),
        };
        assert_eq!(text, want.repeat(count), "{max} {alpn}");
    }
    server.stop();

    let total: usize = RUNS.iter().map(|r| r.2).sum();
    let [egress, ingress] =
        follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["python3"]) >= total);
    for side in [&egress, &ingress] {
        let mut at = 0;
        for (_, _, count, version, alpn, failure) in RUNS {
            for r in &side[at..at + count] {
                check_record(r, &lab, port, version, alpn, failure);
            }
            at += count;
        }
    }

    // Once per handshake (both ends are on this node: at the server).
    let metric = "weft_tls_handshakes_total";
    let dport = format!("destination_port=\"{port}\"");
    let sni = format!("server_name=\"{SNI}\"");
    for (version, outcome, want) in [
        ("1.3", "ok", 5.0),
        ("1.2", "ok", 3.0),
        ("1.3", "failed", 2.0),
    ] {
        let version = format!("tls_protocol_version=\"{version}\"");
        let outcome = format!("outcome=\"{outcome}\"");
        let got = agent.metric_sum(metric, &[&dport, &sni, &version, &outcome]);
        assert_eq!(got, want, "{version} {outcome}");
    }
    assert_eq!(agent.metric_sum(metric, &[&dport]), total as f64);
}

/// Mutual TLS runs: (highest version, ALPN offered, connections, whether
/// the client presents a certificate, the records' `alpn`, `failure`).
type MutualRun = (
    &'static str,
    &'static str,
    usize,
    bool,
    Option<&'static str>,
    Option<&'static str>,
);

/// A server that requires a client certificate refuses clients without
/// one: in TLS 1.2 with an alert in the clear, in TLS 1.3 after the
/// client's Finished, encrypted (told by its size); a client with a
/// certificate is accepted and its handshake is not taken for a refusal.
const MUTUAL_RUNS: [MutualRun; 3] = [
    (
        "1.3",
        "h2,http/1.1",
        2,
        false,
        None,
        Some("encrypted_alert"),
    ),
    (
        "1.2",
        "http/1.1",
        1,
        false,
        Some("http/1.1"),
        Some("handshake_failure"),
    ),
    ("1.3", "h2,http/1.1", 2, true, None, None),
];

#[test]
fn mutual_tls_refusals_from_both_sides() {
    if !require_root("mutual_tls_refusals_from_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(104);
    let port_s = port.to_string();
    let dir = TempDir::new("mtls-certs");
    certificates(&dir, SNI);
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    let mut server = servers::python_tls_with(&lab, port, &cert, &key, Some(&ca));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/tls_peer.py");
    for (max, alpn, count, with_cert, _, failure) in MUTUAL_RUNS {
        let count_s = count.to_string();
        let mut args = vec![
            "python3",
            script,
            "client",
            &lab.server_v4,
            &port_s,
            &ca,
            SNI,
            max,
            alpn,
            &count_s,
        ];
        // The server's own certificate, signed by the CA it trusts.
        if with_cert {
            args.extend([cert.as_str(), key.as_str()]);
        }
        let out = lab.exec(&lab.client_ns, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let want = match failure {
            None => "ok h2\n",
            Some("encrypted_alert") => "failed TLSV13_ALERT_CERTIFICATE_REQUIRED\n",
            Some(_) => "failed SSLV3_ALERT_HANDSHAKE_FAILURE\n",
        };
        assert_eq!(text, want.repeat(count), "{max} {with_cert}");
    }
    server.stop();

    let total: usize = MUTUAL_RUNS.iter().map(|r| r.2).sum();
    let [egress, ingress] =
        follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["python3"]) >= total);
    for side in [&egress, &ingress] {
        let mut at = 0;
        for (max, _, count, _, alpn, failure) in MUTUAL_RUNS {
            for r in &side[at..at + count] {
                check_record(r, &lab, port, max, alpn, failure);
            }
            at += count;
        }
    }
    let metric = "weft_tls_handshakes_total";
    let dport = format!("destination_port=\"{port}\"");
    for (version, outcome, want) in [
        ("1.3", "failed", 2.0),
        ("1.2", "failed", 1.0),
        ("1.3", "ok", 2.0),
    ] {
        let version = format!("tls_protocol_version=\"{version}\"");
        let outcome = format!("outcome=\"{outcome}\"");
        let got = agent.metric_sum(metric, &[&dport, &version, &outcome]);
        assert_eq!(got, want, "{version} {outcome}");
    }
}

fn check_record(
    r: &Value,
    lab: &Lab,
    port: u16,
    version: &str,
    alpn: Option<&str>,
    failure: Option<&str>,
) {
    let l7 = &r["l7"];
    // Only the handshake: the ciphertext after it makes no record.
    assert_eq!(l7["protocol"], "tls", "{r:#}");
    assert_eq!(r["source"]["process"], "python3", "{r:#}");
    assert_eq!(r["destination"]["process"], "python3", "{r:#}");
    assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
    assert_eq!(r["destination"]["port"], port, "{r:#}");
    assert_eq!(l7["sni"], SNI, "{r:#}");
    assert_eq!(l7["version"], version, "{r:#}");
    assert_eq!(l7["alpn"], alpn.map_or(Value::Null, Value::from), "{r:#}");
    let offered: Vec<&str> = if version == "1.2" {
        vec!["http/1.1"]
    } else {
        vec!["h2", "http/1.1"]
    };
    assert_eq!(l7["alpn_offered"], serde_json::json!(offered), "{r:#}");
    match failure {
        None => {
            assert_eq!(l7["outcome"], "ok", "{r:#}");
            assert!(l7.get("failure").is_none(), "{r:#}");
        }
        Some(failure) => {
            assert_eq!(l7["outcome"], "failed", "{r:#}");
            assert_eq!(l7["failure"], failure, "{r:#}");
        }
    }
    // A handshake on a veth pair: well under a second, and it took time.
    let us = l7["handshake_us"].as_u64().expect("handshake_us");
    assert!(us > 0 && us < 1_000_000, "handshake_us {us}: {r:#}");
    assert_eq!(l7["latency_us"], us, "{r:#}");
    assert!(r["bytes_sent"].as_u64().expect("bytes") > 0, "{r:#}");
    assert!(r["bytes_received"].as_u64().expect("bytes") > 0, "{r:#}");
}
