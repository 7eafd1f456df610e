//! PostgreSQL queries between two namespaces, seen from both sockets: a
//! real psql (client, egress records) against a real PostgreSQL server
//! (ingress records) in a temporary cluster: statements one at a time, an
//! error (SQLSTATE 42P01) and a slow statement for the latency.

use std::time::Duration;

use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    require_root, servers, unique_port,
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
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(24);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let mut server = servers::postgres(&lab, port);

    let statements: Vec<&str> = STATEMENTS.iter().map(|s| s.0).collect();
    let (stdout, stderr) = servers::psql(&lab, &server, &statements);
    assert!(
        stderr.contains("relation \"weft_missing\" does not exist"),
        "psql: {stdout}{stderr}"
    );
    assert!(stdout.contains("alice"), "psql: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    // The connection's L4 close comes after its L7 stream was flushed.
    let sides = follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["psql"]) >= 1);
    for sorted in &sides {
        for (r, (_, operation, rows, error)) in sorted.iter().zip(STATEMENTS) {
            assert_eq!(r["l7"]["protocol"], "postgres", "{r:#}");
            assert_eq!(r["source"]["process"], "psql", "{r:#}");
            assert_eq!(r["destination"]["process"], "postgres", "{r:#}");
            assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
            assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
            assert_eq!(r["l7"]["operation"], operation, "{r:#}");
            match rows {
                Some(n) => assert_eq!(r["l7"]["rows"], n, "{r:#}"),
                None => assert!(r["l7"]["rows"].is_null(), "{r:#}"),
            }
            match error {
                Some(code) => assert_eq!(r["l7"]["error_code"], code, "{r:#}"),
                None => assert!(r["l7"]["error_code"].is_null(), "{r:#}"),
            }
        }
        // Literals never leave the agent.
        let insert = sorted[1]["l7"]["statement"].as_str().expect("statement");
        assert!(!insert.contains("alice"), "{insert}");
        assert_eq!(
            sorted[2]["l7"]["statement"],
            "SELECT name FROM weft_t WHERE id = ?"
        );
        let sleep = sorted[5]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(
            (200_000..2_000_000).contains(&sleep),
            "pg_sleep(0.2): {sleep} µs"
        );
        let select = sorted[2]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(select < 200_000, "SELECT took {select} µs");
    }

    let db = "db_client_operation_duration_seconds_count";
    let system = "db_system_name=\"postgresql\"";
    let dport = format!("destination_port=\"{port}\"");
    assert_eq!(agent.metric_sum(db, &[system, &dport]), total as f64);
    assert_eq!(
        agent.metric_sum(db, &[system, &dport, "db_operation_name=\"SELECT\""]),
        3.0
    );
    assert_eq!(
        agent.metric_sum(db, &[system, &dport, "error_type=\"42P01\""]),
        1.0
    );
}
