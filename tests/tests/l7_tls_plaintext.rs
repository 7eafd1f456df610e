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

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by, l7},
    lab::Lab,
    peer::{TempDir, require_program},
    programs::attachments,
    require_root, servers,
    tls::certificates,
    unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(20);
const SNI: &str = "api.weft.test";
/// A query value the default privacy settings redact.
const SECRET: &str = "s3cr3t-token-value";

/// Rounds of the Go test's four requests.
const GO_ROUNDS: usize = 5;

/// An expected request: (L7 protocol, path as recorded, status).
type Request = (&'static str, String, u64);

/// The Python and Go tests' four requests: the paths a client asks for
/// (the last with a query value the privacy settings redact), the
/// statuses it prints, and the records expected of them.
fn four_requests() -> ([String; 4], &'static str, Vec<Request>) {
    let paths = [
        "/hello".to_owned(),
        "/status/404".to_owned(),
        "/status/503".to_owned(),
        format!("/status/201?token={SECRET}"),
    ];
    let want = vec![
        ("http", "/hello".into(), 200),
        ("http", "/status/404".into(), 404),
        ("http", "/status/503".into(), 503),
        ("http", "/status/201?token=REDACTED".into(), 201),
    ];
    (paths, "200\n404\n503\n201\n", want)
}

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
    let (paths, statuses, want) = four_requests();
    let ca = dir.join("ca.pem");
    let mut args = vec!["python3", script, &lab.server_v4, &port_s, &ca, SNI];
    args.extend(paths.iter().map(String::as_str));
    // `exec` fails the test, with the output, when the client fails.
    let out = lab.exec(&lab.client_ns, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, statuses);
    server.stop();

    setup.check_both_sides(&want, ("python3", "python3"), 1);
    assert_no_secret_and_no_parse_error(agent);
}

/// Go's crypto/tls, linked into the binary (no libssl): the agent attaches
/// to the binary when it first sees the server running it, and that
/// attachment covers the client, a later process of the same binary, from
/// its first request. Requests are read at `(*Conn).Read`/`Write` whichever
/// thread a goroutine resumes on.
#[test]
fn go_crypto_tls_client_and_server() {
    if !require_root("go_crypto_tls_client_and_server") {
        return;
    }
    let setup = Setup::new(103);
    let (agent, lab, port, dir) = (&setup.agent, &setup.lab, setup.port, &setup.dir);
    let binary = servers::go_https_binary(dir, false);
    let mut server = servers::go_https(
        lab,
        port,
        &binary,
        &dir.join("server.pem"),
        &dir.join("server.key"),
    );
    // The server's binary is attached: Read's entry and returns, Write's
    // entry.
    wait_for("the Go binary's attachments", WAIT, || {
        (attached_files(agent).get(&binary).copied() == Some(3)).then_some(())
    });

    // Five rounds of four requests on one keep-alive connection: between
    // requests the server's goroutine waits in Read, and may resume on
    // another thread.
    let port_s = port.to_string();
    let (paths, statuses, round) = four_requests();
    let ca = dir.join("ca.pem");
    let mut args = vec![binary.as_str(), "client", &lab.server_v4, &port_s, &ca, SNI];
    for _ in 0..GO_ROUNDS {
        args.extend(paths.iter().map(String::as_str));
    }
    // `exec` fails the test, with the output, when the client fails.
    let out = lab.exec(&lab.client_ns, &args);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        statuses.repeat(GO_ROUNDS)
    );
    server.stop();

    let want: Vec<Request> = (0..GO_ROUNDS).flat_map(|_| round.iter().cloned()).collect();
    setup.check_both_sides(&want, ("go_https", "go_https"), 1);
    assert_no_secret_and_no_parse_error(agent);
}

/// A TLS library the agent cannot hook (Go's crypto/tls in a binary
/// stripped of its symbol table): each connection gets its handshake
/// record, with the SNI, version and ALPN offered exact, and no plaintext
/// record is made up from the ciphertext; a client that does not trust
/// the server's certificate makes a failed handshake. The agent says why
/// it did not attach.
#[test]
fn an_unhooked_tls_library_gets_handshake_records_only() {
    if !require_root("an_unhooked_tls_library_gets_handshake_records_only") {
        return;
    }
    let setup = Setup::new(104);
    let (agent, lab, port, dir) = (&setup.agent, &setup.lab, setup.port, &setup.dir);
    let binary = servers::go_https_binary(dir, true);
    let mut server = servers::go_https(
        lab,
        port,
        &binary,
        &dir.join("server.pem"),
        &dir.join("server.key"),
    );
    wait_for(
        "the agent's refusal of the stripped Go binary",
        WAIT,
        || {
            let log = agent.log();
            log.lines()
                .find(|l| l.contains(&binary) && l.contains("no symbol table"))
                .map(str::to_owned)
        },
    );
    let port_s = port.to_string();
    // One connection with three requests, then one that refuses the
    // server's certificate.
    for (ca, want) in [("ca.pem", "200\n404\n200\n"), ("other-ca.pem", "error\n")] {
        let ca = dir.join(ca);
        let mut args = vec![binary.as_str(), "client", &lab.server_v4, &port_s, &ca, SNI];
        if want.len() > 6 {
            args.extend(["/hello", "/status/404", "/hello"]);
        } else {
            args.push("/hello");
        }
        let out = lab.exec(&lab.client_ns, &args);
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{ca}");
    }
    server.stop();

    let [egress, ingress] = setup
        .all
        .l7_both_sides(WAIT, 2, |r| closes_by(r, &[&binary_name(&binary)]) >= 2);
    for side in [&egress, &ingress] {
        assert_eq!(side.len(), 2, "handshake records only: {side:#?}");
        for (r, outcome) in side.iter().zip(["ok", "failed"]) {
            let l7 = &r["l7"];
            assert_eq!(l7["protocol"], "tls", "{r:#}");
            assert_eq!(l7["sni"], SNI, "{r:#}");
            assert_eq!(l7["version"], "1.3", "{r:#}");
            assert_eq!(l7["alpn_offered"], serde_json::json!(["http/1.1"]), "{r:#}");
            assert_eq!(l7["outcome"], outcome, "{r:#}");
            assert_eq!(r["tls"], false, "{r:#}");
        }
    }
    let dport = format!("destination_port=\"{port}\"");
    for (outcome, want) in [("ok", 1.0), ("failed", 1.0)] {
        let outcome = format!("outcome=\"{outcome}\"");
        let got = agent.metric_sum("weft_tls_handshakes_total", &[&dport, &outcome]);
        assert_eq!(got, want, "{outcome}");
    }
    let errors = agent.metric_sum("weft_events_total", &["source=\"l7_parse_errors\""]);
    assert_eq!(errors, 0.0, "parse errors");
}

/// The process name of a binary at `path` (its file name, as `comm` has
/// it: the first 15 bytes).
fn binary_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.chars().take(15).collect()
}

#[test]
fn a_libssl_first_mapped_after_start_is_attached_and_listed() {
    if !require_root("a_libssl_first_mapped_after_start_is_attached_and_listed") {
        return;
    }
    let setup = Setup::new(107);
    let (agent, lab, port, dir) = (&setup.agent, &setup.lab, setup.port, &setup.dir);
    // A copy of the system's libssl is a file the agent has never seen (a
    // container image's own libssl is one too): the server maps it, from
    // its first instruction, only after the agent has started.
    let system = system_libssl();
    let libs = TempDir::new("tls-late-libssl");
    let copy = libs.join("libssl.so.3");
    std::fs::copy(&system, &copy).expect("copy libssl");
    let listed = |a: &Agent| {
        let files = attached_files(a);
        files
            .iter()
            .filter(|(file, _)| file.ends_with(&copy))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    assert_eq!(
        listed(agent),
        0,
        "the copy is attached before any process maps it"
    );
    // The system's libssl is attached at start (by whichever of its names
    // the agent found first), with as many attachments as the copy must
    // get: its read and write functions, entry and return.
    let at_system: Vec<usize> = (attached_files(agent).into_iter())
        .filter(|(file, _)| file.contains("/libssl.so"))
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        at_system.len(),
        1,
        "the system's libssl, once: {:#?}",
        attachments(agent)
    );
    let preload = format!("LD_LIBRARY_PATH={}", libs.as_str());
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let mut server = servers::python_https_env(lab, port, &cert, &key, &[&preload]);
    let maps =
        std::fs::read_to_string(format!("/proc/{}/maps", server.peer.pid())).unwrap_or_default();
    assert!(maps.contains(&copy), "the server maps the copy: {maps}");
    wait_for("the copy to be listed in the status", WAIT, || {
        (listed(agent) == at_system[0]).then_some(())
    });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/https_client.py");
    let port_s = port.to_string();
    let ca = dir.join("ca.pem");
    let args = [
        "python3",
        script,
        &lab.server_v4,
        &port_s,
        &ca,
        SNI,
        "/hello",
        "/status/404",
    ];
    let out = lab.exec(&lab.client_ns, &args);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n404\n");
    server.stop();

    let want: Vec<Request> = vec![
        ("http", "/hello".into(), 200),
        ("http", "/status/404".into(), 404),
    ];
    setup.check_both_sides(&want, ("python3", "python3"), 1);
    assert_no_secret_and_no_parse_error(agent);
}

/// The library files attached, as `weft status` lists them, and how many
/// attachments each has.
fn attached_files(agent: &Agent) -> BTreeMap<String, usize> {
    let mut files = BTreeMap::new();
    for p in attachments(agent) {
        let at = p["attach_point"].as_str().unwrap_or_default();
        if p["kind"] == "uprobe"
            && let Some((file, _function)) = at.split_once(':')
        {
            *files.entry(file.to_owned()).or_default() += 1;
        }
    }
    files
}

/// The system's libssl, as the dynamic linker resolves it for python3.
fn system_libssl() -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl, sys; sys.stdout.write(open('/proc/self/maps').read())",
        ])
        .output()
        .expect("python3");
    let maps = String::from_utf8_lossy(&out.stdout);
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains("/libssl.so"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("python3's ssl maps no libssl:\n{maps}"))
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
