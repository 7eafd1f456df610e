//! MySQL protocol between two namespaces, seen from both sockets: the real
//! `mariadb` client (egress records) against a real MariaDB server
//! (ingress records) with a temporary data directory: statements one at a
//! time, an error (1146, table doesn't exist) and a slow statement.

use std::{process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::Follower,
    lab::Lab,
    peer::{Peer, TempDir, exec_with_input, require_program},
    require_root, unique_port,
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

fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .cloned()
        .collect()
}

#[test]
fn mysql_queries_from_both_sides() {
    if !require_root("mysql_queries_from_both_sides") {
        return;
    }
    require_program("mariadb-install-db");
    require_program("mariadbd");
    require_program("mariadb");
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(26);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);

    let dir = TempDir::new("mariadb");
    let data = dir.join("data");
    let datadir = format!("--datadir={data}");
    let out = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            &datadir,
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .output()
        .expect("run mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bind = format!("--bind-address={}", lab.server_v4);
    let port_arg = format!("--port={port}");
    let socket = format!("--socket={}", dir.join("mysqld.sock"));
    let pid_file = format!("--pid-file={}", dir.join("mysqld.pid"));
    let mut server = Peer::start(
        "mariadbd",
        &lab.server_ns,
        &[
            "mariadbd",
            "--no-defaults",
            &datadir,
            &bind,
            &port_arg,
            &socket,
            &pid_file,
            "--user=root",
            // No accounts to set up: any client is root.
            "--skip-grant-tables",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
        ],
    );
    let addr = format!("{}:{port}", lab.server_v4).parse().unwrap();
    server.wait_tcp(&lab.client_ns, addr, WAIT);

    // Statements from stdin, one COM_QUERY each; --force goes on after
    // the error (with -e the client stops at it).
    let script: String = STATEMENTS
        .iter()
        .map(|(s, _, _, _)| format!("{s};\n"))
        .collect();
    let client = [
        "mariadb",
        "--no-defaults",
        "--batch",
        "--force",
        "-h",
        &lab.server_v4,
        "-P",
        &port_s,
        "-u",
        "root",
    ];
    let (_, stdout, stderr) = exec_with_input(&lab.client_ns, &client, &script);
    assert!(stderr.contains("ERROR 1146"), "mariadb: {stdout}{stderr}");
    assert!(stdout.contains("alice"), "mariadb: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    let records = follower.wait(WAIT, |records| {
        let closed = records.iter().any(|r| {
            r["type"] == "l4" && r["event"] == "close" && r["source"]["process"] == "mariadb"
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
        for (r, (_, operation, rows, error)) in sorted.iter().zip(STATEMENTS) {
            assert_eq!(r["l7"]["protocol"], "mysql", "{r:#}");
            assert_eq!(r["source"]["process"], "mariadb", "{r:#}");
            assert_eq!(r["destination"]["process"], "mariadbd", "{r:#}");
            assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
            assert_eq!(r["destination"]["port"], port, "{r:#}");
            assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
            assert_eq!(r["l7"]["operation"], operation, "{r:#}");
            match rows {
                Some(n) => assert_eq!(r["l7"]["rows"], n, "{r:#}"),
                None => assert!(r["l7"]["rows"].is_null(), "{r:#}"),
            }
            match error {
                Some((code, state)) => {
                    assert_eq!(r["l7"]["error_code"], code, "{r:#}");
                    assert_eq!(r["l7"]["sqlstate"], state, "{r:#}");
                }
                None => assert!(r["l7"]["error_code"].is_null(), "{r:#}"),
            }
        }
        let insert = sorted[2]["l7"]["statement"].as_str().expect("statement");
        assert!(!insert.contains("alice"), "{insert}");
        assert_eq!(
            sorted[3]["l7"]["statement"],
            "SELECT name FROM weft.t WHERE id = ?"
        );
        let sleep = sorted[5]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(
            (200_000..2_000_000).contains(&sleep),
            "SLEEP(0.2): {sleep} µs"
        );
        let select = sorted[3]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(select < 200_000, "SELECT took {select} µs");
    }

    let db = "db_client_operation_duration_seconds_count";
    let system = "db_system_name=\"mysql\"";
    let dport = format!("destination_port=\"{port}\"");
    assert_eq!(agent.metric_sum(db, &[system, &dport]), total as f64);
    assert_eq!(
        agent.metric_sum(db, &[system, &dport, "db_operation_name=\"SELECT\""]),
        3.0
    );
    assert_eq!(
        agent.metric_sum(db, &[system, &dport, "error_type=\"1146\""]),
        1.0
    );
}
