//! PostgreSQL queries between two namespaces, seen from both sockets: a
//! real psql (client, egress records) against a real PostgreSQL server
//! (ingress records) in a temporary cluster: statements one at a time, an
//! error (SQLSTATE 42P01) and a slow statement for the latency. Then the
//! same over SSL (`sslmode=require`), read at both ends' libssl: the same
//! records, with `tls: true`, and from the ciphertext only the handshake's
//! metadata (after the SSLRequest), no parse error.

use std::time::Duration;

use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    peer::{Peer, TempDir},
    programs::attachments,
    require_root, servers,
    sql::SqlExchange,
    tls::certificates,
    unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(30);

/// Each statement is one `-c` (one simple Query message), with the
/// operation, row count and SQLSTATE weft must report.
const STATEMENTS: [(&str, &str, Option<u64>, Option<&str>); 7] = [
    (
        "CREATE TABLE weft_t (id int PRIMARY KEY, name text)",
        "CREATE",
        None,
        None,
    ),
    (
        "INSERT INTO weft_t VALUES (1, 'alice'), (2, 'bob')",
        "INSERT",
        Some(2),
        None,
    ),
    (
        "SELECT name FROM weft_t WHERE id = 1",
        "SELECT",
        Some(1),
        None,
    ),
    (
        "UPDATE weft_t SET name = 'carol' WHERE id = 2",
        "UPDATE",
        Some(1),
        None,
    ),
    // undefined_table
    ("SELECT * FROM weft_missing", "SELECT", None, Some("42P01")),
    ("SELECT pg_sleep(0.2)", "SELECT", Some(1), None),
    ("DELETE FROM weft_t", "DELETE", Some(2), None),
];

#[test]
fn postgres_queries_from_both_sides() {
    if !require_root("postgres_queries_from_both_sides") {
        return;
    }
    queries_from_both_sides(24, false);
}

#[test]
fn postgres_queries_over_ssl_from_both_sides() {
    if !require_root("postgres_queries_over_ssl_from_both_sides") {
        return;
    }
    queries_from_both_sides(103, true);
}

fn queries_from_both_sides(port_offset: u16, ssl: bool) {
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(port_offset);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let certs = TempDir::new("postgres-certs");
    // Without SSL, psql's default (`prefer`) asks for it and is refused.
    let (mut server, env) = if ssl {
        certificates(&certs, "db.weft.test");
        let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
        let server = servers::postgres_ssl(&lab, port, &cert, &key);
        (server, vec![("PGSSLMODE", "require")])
    } else {
        (servers::postgres(&lab, port), vec![])
    };

    let statements: Vec<&str> = STATEMENTS.iter().map(|s| s.0).collect();
    let (stdout, stderr) = servers::psql_with(&lab, &server, &statements, &env);
    assert!(
        stderr.contains("relation \"weft_missing\" does not exist"),
        "psql: {stdout}{stderr}"
    );
    assert!(stdout.contains("alice"), "psql: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    // Over SSL, the connection's handshake is one more record per side.
    let handshakes = usize::from(ssl);
    // The connection's L4 close comes after its L7 stream was flushed.
    let sides = follower.l7_both_sides(WAIT, total + handshakes, |r| closes_by(r, &["psql"]) >= 1);
    let sides = sides.map(|side| {
        let (tls, queries): (Vec<_>, Vec<_>) =
            side.into_iter().partition(|r| r["l7"]["protocol"] == "tls");
        assert_eq!(tls.len(), handshakes, "{tls:#?}");
        for r in &tls {
            check_handshake(r, &lab.server_v4, port);
        }
        queries
    });
    let sql = SqlExchange {
        protocol: "postgres",
        system: "postgresql",
        client: "psql",
        server: "postgres",
        server_ip: &lab.server_v4,
        port,
    };
    for sorted in &sides {
        for (r, (_, operation, rows, error)) in sorted.iter().zip(STATEMENTS) {
            sql.check_record(r, operation, rows, error);
            assert_eq!(r["tls"], ssl, "{r:#}");
        }
        sql.check_side(sorted, 1, 2, "SELECT name FROM weft_t WHERE id = ?", 5);
    }
    sql.check_metrics(&agent, total, "42P01");
    // The SSLRequest, its answer and the ciphertext after it: no parser
    // gave up on them.
    let errors = agent.metric_sum("weft_events_total", &["source=\"l7_parse_errors\""]);
    assert_eq!(errors, 0.0, "parse errors");
    if ssl {
        // Once per handshake (both ends are on this node: at the server).
        let dport = format!("destination_port=\"{port}\"");
        let ok = ["tls_protocol_version=\"1.3\"", "outcome=\"ok\""];
        let metric = "weft_tls_handshakes_total";
        assert_eq!(agent.metric_sum(metric, &[&dport, ok[0], ok[1]]), 1.0);
        assert_eq!(agent.metric_sum(metric, &[&dport]), 1.0);
    }
}

/// OpenSSL 1.1.1 (Debian 12 has only 3.0): psycopg2-binary's wheel bundles
/// libpq with OpenSSL 1.1.1 under a hashed name
/// (`psycopg2_binary.libs/libssl-3a880ada.so.1.1`), a library file of
/// the client's own, found in its memory maps. The client imports
/// psycopg2, waits until the agent lists that file as attached, then
/// queries over SSL: its statements are exact at the client (OpenSSL
/// 1.1.1) and at the server (PostgreSQL on the system's OpenSSL 3).
#[test]
fn postgres_over_ssl_from_openssl_1_1_bundled_in_a_python_wheel() {
    if !require_root("postgres_over_ssl_from_openssl_1_1_bundled_in_a_python_wheel") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(105);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let dir = TempDir::new("postgres-openssl11");
    certificates(&dir, "db.weft.test");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let mut server = servers::postgres_ssl(&lab, port, &cert, &key);

    let python = weft_tests::venv_python(
        "WEFT_OPENSSL11_PYTHON",
        "openssl11-venv",
        "the OpenSSL 1.1.1 peer",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/pg_openssl11.py");
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let statements: Vec<&str> = OPENSSL11_STATEMENTS.iter().map(|s| s.0).collect();
    let mut args = vec![
        python.as_str(),
        script,
        &lab.server_v4,
        &port_s,
        &ready,
        &go,
    ];
    args.extend(&statements);
    let client = Peer::start("psycopg2 client", &lab.client_ns, &args);
    wait_for("the client's import of psycopg2", WAIT, || {
        std::path::Path::new(&ready).exists().then_some(())
    });
    assert!(client.log().contains("OpenSSL 1.1.1"), "{}", client.log());
    let bundled = wait_for("the bundled libssl's attachment", WAIT, || {
        attachments(&agent)
            .iter()
            .filter_map(|p| p["attach_point"].as_str())
            .find(|at| at.contains("psycopg2_binary.libs/libssl-"))
            .map(str::to_owned)
    });
    std::fs::write(&go, "").expect("write the go file");
    let want: String = OPENSSL11_STATEMENTS
        .iter()
        .map(|s| format!("{}\n", s.3.map_or_else(|| s.2.to_string(), str::to_owned)))
        .collect();
    wait_for("the client's end", WAIT, || {
        client.log().contains("done\n").then_some(())
    });
    assert!(client.log().contains(&want), "{}", client.log());
    server.stop();

    let total = OPENSSL11_STATEMENTS.len();
    let [egress, ingress] = follower.l7_both_sides(WAIT, total + 1, |r| {
        r.iter().filter(|r| r["event"] == "close").count() >= 1
    });
    let sql = SqlExchange {
        protocol: "postgres",
        system: "postgresql",
        client: "python",
        server: "postgres",
        server_ip: &lab.server_v4,
        port,
    };
    for side in [&egress, &ingress] {
        let (tls, queries): (Vec<_>, Vec<_>) =
            side.iter().partition(|r| r["l7"]["protocol"] == "tls");
        assert_eq!(tls.len(), 1, "{tls:#?}");
        assert_eq!(queries.len(), total, "{bundled}: {queries:#?}");
        for (r, (_, operation, rows, error)) in queries.iter().zip(OPENSSL11_STATEMENTS) {
            sql.check_record(r, operation, Some(rows).filter(|_| error.is_none()), error);
            assert_eq!(r["tls"], true, "{r:#}");
        }
    }
    let errors = agent.metric_sum("weft_events_total", &["source=\"l7_parse_errors\""]);
    assert_eq!(errors, 0.0, "parse errors");
}

/// The 1.1.1 client's statements: (SQL, operation, rows, SQLSTATE).
const OPENSSL11_STATEMENTS: [(&str, &str, u64, Option<&str>); 3] = [
    ("SELECT generate_series(1, 3)", "SELECT", 3, None),
    ("SELECT * FROM weft_missing", "SELECT", 0, Some("42P01")),
    ("SELECT pg_sleep(0.1)", "SELECT", 1, None),
];

/// The handshake after psql's SSLRequest, seen in the socket's bytes:
/// TLS 1.3 (PostgreSQL and psql on OpenSSL 3), no SNI (libpq sends none
/// to an IP address), no ALPN offered (PostgreSQL before 17).
fn check_handshake(r: &serde_json::Value, server_ip: &str, port: u16) {
    let l7 = &r["l7"];
    assert_eq!(r["source"]["process"], "psql", "{r:#}");
    assert_eq!(r["destination"]["process"], "postgres", "{r:#}");
    assert_eq!(r["destination"]["ip"], server_ip, "{r:#}");
    assert_eq!(r["destination"]["port"], port, "{r:#}");
    assert_eq!(r["tls"], false, "the handshake is not plaintext: {r:#}");
    assert_eq!(l7["version"], "1.3", "{r:#}");
    assert_eq!(l7["outcome"], "ok", "{r:#}");
    assert!(l7.get("failure").is_none(), "{r:#}");
    assert_eq!(l7["sni"], serde_json::Value::Null, "{r:#}");
    assert_eq!(l7["alpn"], serde_json::Value::Null, "{r:#}");
    let us = l7["handshake_us"].as_u64().expect("handshake_us");
    assert!(us > 0 && us < 1_000_000, "handshake_us {us}: {r:#}");
    assert!(r["bytes_sent"].as_u64().expect("bytes") > 0, "{r:#}");
    assert!(r["bytes_received"].as_u64().expect("bytes") > 0, "{r:#}");
}
