//! The requests inside TLS connections, read at OpenSSL's libssl (uprobes
//! on SSL_read/SSL_write and their `_ex` forms) between two namespaces, at
//! both ends, with a certificate made for the test:
//!
//! - curl against nginx, HTTP/1.1 keep-alive and HTTP/2 (ALPN h2): one
//!   connection each, several requests;
//! - Python's http.client against Python's http.server over `ssl` (another
//!   process image, the same libssl, the `_ex` functions).
//!
//! Every client process starts after the agent, so each test also shows
//! that a process the agent never saw running is seen from its first
//! request. Counts, methods, paths, statuses and the protocol are exact
//! on both sides; each record says `tls: true`, and `--tls` selects exactly
//! them. The ciphertext still makes its one `tls` handshake record per
//! connection and side, and nothing else. A query value that the privacy
//! settings redact appears in no record and in no line of the agent's log.

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by, l7},
    lab::Lab,
    peer::{TempDir, require_program},
    require_root, servers,
    tls::certificates,
    unique_port,
};

const WAIT: Duration = Duration::from_secs(20);
const SNI: &str = "api.weft.test";
/// A query value the default privacy settings redact.
const SECRET: &str = "s3cr3t-token-value";

/// An expected request: (L7 protocol, path as recorded, status).
type Request = (&'static str, String, u64);

#[test]
fn curl_and_nginx_over_tls_http1_and_http2() {
    if !require_root("curl_and_nginx_over_tls_http1_and_http2") {
        return;
    }
    require_program("curl");
    let setup = Setup::new(101);
    let (agent, lab, port, dir) = (&setup.agent, &setup.lab, setup.port, &setup.dir);
    let mut server =
        servers::nginx_https(lab, port, &dir.join("server.pem"), &dir.join("server.key"));

    let url = |path: &str| format!("https://{SNI}:{port}{path}");
    let paths = ["/ok", "/missing", &format!("/ok?token={SECRET}")];
    let resolve = format!("{SNI}:{port}:{}", lab.server_v4);
    let ca = dir.join("ca.pem");
    for version in ["--http1.1", "--http2"] {
        let mut args = vec![
            "curl",
            "-sS",
            version,
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "%{http_version} %{http_code}\n",
        ];
        let urls: Vec<String> = paths.iter().map(|p| url(p)).collect();
        for u in &urls {
            args.extend(["-o", "/dev/null", u.as_str()]);
        }
        // `exec` fails the test, with the output, when the client fails.
        let out = lab.exec(&lab.client_ns, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if version == "--http2" { "2" } else { "1.1" };
        assert_eq!(text, format!("{v} 200\n{v} 404\n{v} 200\n"), "{version}");
    }
    server.stop();

    let redacted = "/ok?token=REDACTED".to_owned();
    let mut want: Vec<Request> = Vec::new();
    for protocol in ["http", "http2"] {
        want.push((protocol, "/ok".into(), 200));
        want.push((protocol, "/missing".into(), 404));
        want.push((protocol, redacted.clone(), 200));
    }
    setup.check_both_sides(&want, ("curl", "nginx"), 2);

    // The server's metrics say https.
    let dport = format!("destination_port=\"{port}\"");
    for (family, count) in [
        ("http_server_request_duration_seconds_count", 6.0),
        ("http_client_request_duration_seconds_count", 6.0),
    ] {
        assert_eq!(
            agent.metric_sum(family, &[&dport, "url_scheme=\"https\""]),
            count,
            "{family}"
        );
        assert_eq!(agent.metric_sum(family, &[&dport]), count, "{family}");
    }
    assert_no_secret_and_no_parse_error(agent);
}

#[test]
fn python_ssl_client_and_server() {
    if !require_root("python_ssl_client_and_server") {
        return;
    }
    let setup = Setup::new(102);
    let (agent, lab, port, dir) = (&setup.agent, &setup.lab, setup.port, &setup.dir);
    let mut server =
        servers::python_https(lab, port, &dir.join("server.pem"), &dir.join("server.key"));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/https_client.py");
    let port_s = port.to_string();
    let secret = format!("/status/201?token={SECRET}");
    let paths = ["/hello", "/status/404", "/status/503", &secret];
    let ca = dir.join("ca.pem");
    let mut args = vec!["python3", script, &lab.server_v4, &port_s, &ca, SNI];
    args.extend(paths);
    // `exec` fails the test, with the output, when the client fails.
    let out = lab.exec(&lab.client_ns, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "200\n404\n503\n201\n");
    server.stop();

    let want: Vec<Request> = vec![
        ("http", "/hello".into(), 200),
        ("http", "/status/404".into(), 404),
        ("http", "/status/503".into(), 503),
        ("http", "/status/201?token=REDACTED".into(), 201),
    ];
    setup.check_both_sides(&want, ("python3", "python3"), 1);
    assert_no_secret_and_no_parse_error(agent);
}

/// The redacted value is in no line of the agent's log, and no TLS byte
/// made a parser give up.
fn assert_no_secret_and_no_parse_error(agent: &Agent) {
    assert!(
        !agent.log().contains(SECRET),
        "the agent's log holds the secret"
    );
    let errors = agent.metric_sum("weft_events_total", &["source=\"l7_parse_errors\""]);
    assert_eq!(errors, 0.0, "parse errors");
}

/// An agent, a lab, the server's port (`unique_port(offset)`), the
/// certificates for [`SNI`] in `dir`, a follower of every record of the
/// server's port, and one of `--tls`.
struct Setup {
    agent: Agent,
    lab: Lab,
    port: u16,
    dir: TempDir,
    all: Follower,
    plaintext: Follower,
}

impl Setup {
    fn new(offset: u16) -> Self {
        let agent = Agent::start(&[]);
        let lab = Lab::new();
        let port = unique_port(offset);
        let dir = TempDir::new("tls-plaintext-certs");
        certificates(&dir, SNI);
        let port_s = port.to_string();
        let filter = ["--port", &port_s, "--ip", &lab.server_v4];
        let all = Follower::start(&agent, &filter);
        let mut tls_only = filter.to_vec();
        tls_only.push("--tls");
        let plaintext = Follower::start(&agent, &tls_only);
        Self {
            agent,
            lab,
            port,
            dir,
            all,
            plaintext,
        }
    }
}

impl Setup {
    /// On each side: `want`'s requests, in order, read from the plaintext
    /// (`tls: true`), then one handshake record per connection and nothing
    /// else; `--tls` shows exactly the plaintext ones.
    fn check_both_sides(
        &self,
        want: &[Request],
        (client, server): (&str, &str),
        connections: usize,
    ) {
        let (all, plaintext, lab, port) = (&self.all, &self.plaintext, &self.lab, self.port);
        let total = want.len() + connections;
        let [egress, ingress] =
            all.l7_both_sides(WAIT, total, |r| closes_by(r, &[client]) >= connections);
        for side in [&egress, &ingress] {
            let (handshakes, requests): (Vec<&Value>, Vec<&Value>) =
                side.iter().partition(|r| r["l7"]["protocol"] == "tls");
            assert_eq!(handshakes.len(), connections, "{side:#?}");
            for h in &handshakes {
                assert_eq!(h["l7"]["sni"], SNI, "{h:#}");
                assert_eq!(h["l7"]["outcome"], "ok", "{h:#}");
                assert_eq!(h["tls"], false, "{h:#}");
            }
            assert_eq!(requests.len(), want.len(), "{requests:#?}");
            for (r, (protocol, path, status)) in requests.iter().zip(want) {
                let l7 = &r["l7"];
                assert_eq!(l7["protocol"], *protocol, "{r:#}");
                assert_eq!(l7["method"], "GET", "{r:#}");
                assert_eq!(l7["path"], path.as_str(), "{r:#}");
                assert_eq!(l7["status"], *status, "{r:#}");
                assert_eq!(r["tls"], true, "{r:#}");
                assert_eq!(r["source"]["process"], client, "{r:#}");
                assert_eq!(r["destination"]["process"], server, "{r:#}");
                assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
                assert_eq!(r["destination"]["port"], port, "{r:#}");
                // On a veth pair: under a second, and it took time.
                let us = l7["latency_us"].as_u64().expect("latency_us");
                assert!(us > 0 && us < 1_000_000, "latency_us {us}: {r:#}");
            }
            assert!(!side.iter().any(|r| r.to_string().contains(SECRET)));
        }
        let tls_records = plaintext.wait(WAIT, |r| {
            l7(r, "egress").len() >= want.len() && l7(r, "ingress").len() >= want.len()
        });
        assert!(
            tls_records.iter().all(|r| r["tls"] == true),
            "{tls_records:#?}"
        );
        for direction in ["egress", "ingress"] {
            assert_eq!(l7(&tls_records, direction).len(), want.len(), "{direction}");
        }
    }
}
