//! PostgreSQL queries between two namespaces, seen from both sockets: a
//! real psql (client, egress records) against a real PostgreSQL server
//! (ingress records) in a temporary cluster: statements one at a time, an
//! error (SQLSTATE 42P01) and a slow statement for the latency. Then the
//! same over SSL (`sslmode=require`), read at both ends' libssl: the same
//! records, with `tls: true`, and nothing from the ciphertext.

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
    // The connection's L4 close comes after its L7 stream was flushed.
    let sides = follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["psql"]) >= 1);
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
}
