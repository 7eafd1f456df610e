//! MySQL protocol between two namespaces, seen from both sockets: the real
//! `mariadb` client (egress records) against a real MariaDB server
//! (ingress records) with a temporary data directory: statements one at a
//! time, an error (1146, table doesn't exist) and a slow statement.

use std::time::Duration;

use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    require_root, servers,
    sql::SqlExchange,
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
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(26);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let mut server = servers::mariadb(&lab, port);

    let statements: Vec<&str> = STATEMENTS.iter().map(|s| s.0).collect();
    let (stdout, stderr) = servers::mariadb_client(&lab, &server, &statements);
    assert!(stderr.contains("ERROR 1146"), "mariadb: {stdout}{stderr}");
    assert!(stdout.contains("alice"), "mariadb: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    let sides = follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["mariadb"]) >= 1);
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
        sql.check_side(sorted, 2, 3, "SELECT name FROM weft.t WHERE id = ?", 5);
    }
    sql.check_metrics(&agent, total, "1146");
}
