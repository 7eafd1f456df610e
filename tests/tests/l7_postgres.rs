//! PostgreSQL queries between two namespaces, seen from both sockets: a
//! real psql (client, egress records) against a real PostgreSQL server
//! (ingress records) in a temporary cluster: statements one at a time, an
//! error (SQLSTATE 42P01) and a slow statement for the latency.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::Follower,
    lab::Lab,
    peer::{Peer, TempDir, require_program},
    require_root, run, unique_port,
};

const WAIT: Duration = Duration::from_secs(30);

/// Debian's PostgreSQL server programs (initdb and postgres are not on
/// PATH there).
const PG_BIN: &str = "/usr/lib/postgresql";

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

fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .cloned()
        .collect()
}

/// The newest installed major version's bin directory.
fn pg_bin() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir(PG_BIN)
        .unwrap_or_else(|e| {
            panic!("{PG_BIN}: {e}: PostgreSQL is not installed (`cargo xtask setup` installs it)")
        })
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v| Path::new(&format!("{PG_BIN}/{v}/bin/postgres")).exists())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL server under {PG_BIN}"));
    format!("{PG_BIN}/{v}/bin")
}

#[test]
fn postgres_queries_from_both_sides() {
    if !require_root("postgres_queries_from_both_sides") {
        return;
    }
    require_program("psql");
    require_program("setpriv");
    let bin = pg_bin();
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(24);
    let port_s = port.to_string();
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);

    // A cluster of our own, owned by the `postgres` user (the server
    // refuses to run as root), trusting local and lab connections.
    let dir = TempDir::new("postgres");
    let data = dir.join("data");
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets).expect("socket directory");
    run(&["chown", "-R", "postgres:postgres", dir.as_str()]);
    let as_postgres = [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
    ];
    let initdb = format!("{bin}/initdb");
    let mut args = as_postgres.to_vec();
    args.extend([
        initdb.as_str(),
        "--pgdata",
        &data,
        "--auth=trust",
        "--username=postgres",
        "--no-sync",
        "--no-instructions",
    ]);
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir.as_str())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        format!("{data}/pg_hba.conf"),
        format!(
            "local all all trust\nhost all all {}/32 trust\n",
            lab.client_v4
        ),
    )
    .expect("pg_hba.conf");

    let postgres = format!("{bin}/postgres");
    let listen = format!("listen_addresses={}", lab.server_v4);
    let socket_dir = format!("unix_socket_directories={sockets}");
    let mut args = as_postgres.to_vec();
    args.extend([
        postgres.as_str(),
        "-D",
        &data,
        "-p",
        &port_s,
        "-c",
        &listen,
        "-c",
        &socket_dir,
        "-c",
        "fsync=off",
        "-c",
        "logging_collector=off",
    ]);
    let mut server = Peer::start("postgres", &lab.server_ns, &args);
    let addr = format!("{}:{port}", lab.server_v4).parse().unwrap();
    server.wait_tcp(&lab.client_ns, addr, WAIT);

    let mut psql = vec![
        "psql",
        "--no-psqlrc",
        "--quiet",
        "-h",
        &lab.server_v4,
        "-p",
        &port_s,
        "-U",
        "postgres",
        "-d",
        "postgres",
    ];
    for (sql, _, _, _) in &STATEMENTS {
        psql.extend(["-c", sql]);
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.client_ns]).args(&psql);
    let out = cmd.output().expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("relation \"weft_missing\" does not exist"),
        "psql: {stdout}{stderr}"
    );
    assert!(stdout.contains("alice"), "psql: {stdout}{stderr}");
    server.stop();

    let total = STATEMENTS.len();
    // The connection's L4 close comes after its L7 stream was flushed.
    let records = follower.wait(WAIT, |records| {
        let closed = records.iter().any(|r| {
            r["type"] == "l4" && r["event"] == "close" && r["source"]["process"] == "psql"
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
