//! MySQL protocol between two namespaces, seen from both sockets: the real
//! `mariadb` client (egress records) against a real MariaDB server
//! (ingress records) with a temporary data directory: statements one at a
//! time, an error (1146, table doesn't exist) and a slow statement. Then
//! the same over TLS (`--ssl`), read at both ends' libssl: the same
//! records with `tls: true`, the handshake's metadata record after the
//! client's SSL request, and no parse error.

use std::time::Duration;

use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    peer::TempDir,
    require_root, servers,
    sql::SqlExchange,
    tls::certificates,
    unique_port,
};

const WAIT: Duration = Duration::from_secs(30);

/// The error number and SQLSTATE of a statement that fails.
type MysqlError = Option<(&'static str, &'static str)>;

/// Each statement is one COM_QUERY, with the operation, row count
/// (rows read for a SELECT, rows affected otherwise) and error weft must
/// report.
const STATEMENTS: [(&str, &str, Option<u64>, MysqlError); 7] = [
    ("CREATE DATABASE weft", "CREATE", Some(1), None),
    (
        "CREATE TABLE weft.t (id INT PRIMARY KEY, name VARCHAR(20))",
        "CREATE",
        Some(0),
        None,
    ),
    (
        "INSERT INTO weft.t VALUES (1, 'alice'), (2, 'bob')",
        "INSERT",
        Some(2),
        None,
    ),
    (
        "SELECT name FROM weft.t WHERE id = 1",
        "SELECT",
        Some(1),
        None,
    ),
    // ER_NO_SUCH_TABLE
    (
        "SELECT * FROM weft.missing",
        "SELECT",
        None,
        Some(("1146", "42S02")),
    ),
    ("SELECT SLEEP(0.2)", "SELECT", Some(1), None),
    ("DELETE FROM weft.t", "DELETE", Some(2), None),
];

#[test]
fn mysql_queries_from_both_sides() {
    if !require_root("mysql_queries_from_both_sides") {
        return;
    }
    queries_from_both_sides(26, false);
}

#[test]
fn mysql_queries_over_tls_from_both_sides() {
    if !require_root("mysql_queries_over_tls_from_both_sides") {
        return;
    }
    queries_from_both_sides(105, true);
}

fn queries_from_both_sides(port_offset: u16, tls: bool) {
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(port_offset);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let certs = TempDir::new("mariadb-certs");
    let mut server = if tls {
        certificates(&certs, "db.weft.test");
        let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
        servers::mariadb_with(&lab, port, Some((&cert, &key)))
    } else {
        servers::mariadb(&lab, port)
    };

    let statements: Vec<&str> = STATEMENTS.iter().map(|s| s.0).collect();
    let (stdout, stderr) = servers::mariadb_client_with(&lab, &server, &statements, tls);
    assert!(stderr.contains("ERROR 1146"), "mariadb: {stdout}{stderr}");
    assert!(stdout.contains("alice"), "mariadb: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    // Over TLS, the connection's handshake is one more record per side.
    let handshakes = usize::from(tls);
    let sides = follower.l7_both_sides(WAIT, total + handshakes, |r| {
        closes_by(r, &["mariadb"]) >= 1
    });
    let sides = sides.map(|side| {
        let (handshake, queries): (Vec<_>, Vec<_>) =
            side.into_iter().partition(|r| r["l7"]["protocol"] == "tls");
        assert_eq!(handshake.len(), handshakes, "{handshake:#?}");
        for r in &handshake {
            check_handshake(r, &lab.server_v4, port);
        }
        queries
    });
    let sql = SqlExchange {
        protocol: "mysql",
        system: "mysql",
        client: "mariadb",
        server: "mariadbd",
        server_ip: &lab.server_v4,
        port,
    };
    for sorted in &sides {
        for (r, (_, operation, rows, error)) in sorted.iter().zip(STATEMENTS) {
            sql.check_record(r, operation, rows, error.map(|(code, _)| code));
            if let Some((_, state)) = error {
                assert_eq!(r["l7"]["sqlstate"], state, "{r:#}");
            }
        }
        for r in sorted {
            assert_eq!(r["tls"], tls, "{r:#}");
        }
        sql.check_side(sorted, 2, 3, "SELECT name FROM weft.t WHERE id = ?", 5);
    }
    sql.check_metrics(&agent, total, "1146");
    // The SSL request, the handshake and the ciphertext after it: no
    // parser gave up on them.
    let errors = agent.metric_sum("weft_events_total", &["source=\"l7_parse_errors\""]);
    assert_eq!(errors, 0.0, "parse errors");
}

/// The handshake after the client's SSL request, seen in the socket's
/// bytes: TLS 1.3 (both ends on OpenSSL 3), no SNI (to an IP address).
fn check_handshake(r: &serde_json::Value, server_ip: &str, port: u16) {
    let l7 = &r["l7"];
    assert_eq!(r["source"]["process"], "mariadb", "{r:#}");
    assert_eq!(r["destination"]["process"], "mariadbd", "{r:#}");
    assert_eq!(r["destination"]["ip"], server_ip, "{r:#}");
    assert_eq!(r["destination"]["port"], port, "{r:#}");
    assert_eq!(r["tls"], false, "the handshake is not plaintext: {r:#}");
    assert_eq!(l7["version"], "1.3", "{r:#}");
    assert_eq!(l7["outcome"], "ok", "{r:#}");
    assert_eq!(l7["sni"], serde_json::Value::Null, "{r:#}");
    let us = l7["handshake_us"].as_u64().expect("handshake_us");
    assert!(us > 0 && us < 1_000_000, "handshake_us {us}: {r:#}");
}
