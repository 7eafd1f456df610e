//! Prepared statements from real benchmark clients: `pgbench -M prepared`
//! against PostgreSQL and sysbench's oltp_read_only against MariaDB. Every
//! execution is counted under its statement's operation (`SELECT`), never
//! `EXECUTE`: weft saw each statement being prepared.

use std::{process::Command, time::Duration};

use weft_tests::{agent::Agent, lab::Lab, require_root, servers, unique_port, wait_for};

const WAIT: Duration = Duration::from_secs(30);
const DB: &str = "db_client_operation_duration_seconds_count";

/// Runs `args` in the lab's client namespace; returns its stdout.
fn in_client(lab: &Lab, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number after `label` on the line that has it.
fn figure(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no `{label}` in {text}"));
    let rest = &line[line.find(label).expect("label") + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("`{label}`: {line}"))
}

/// The client-side count of `operation` against `port` in `system`.
fn ops(agent: &Agent, system: &str, port: u16, operation: &str) -> f64 {
    let labels = [
        format!("db_system_name=\"{system}\""),
        format!("destination_port=\"{port}\""),
        format!("db_operation_name=\"{operation}\""),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    agent.metric_sum(DB, &labels)
}

#[test]
fn pgbench_prepared_selects_are_selects() {
    if !require_root("pgbench_prepared_selects_are_selects") {
        return;
    }
    const TRANSACTIONS: u64 = 600;
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(17);
    let server = servers::postgres(&lab, port);
    let (ip, port_s) = (lab.server_v4.clone(), port.to_string());
    let conn = ["-h", &ip, "-p", &port_s, "-U", "postgres"];
    let mut init = vec!["pgbench", "-i", "-s", "1", "-q"];
    init.extend(conn);
    init.push("postgres");
    in_client(&lab, &init);
    // One SELECT per transaction, by a script of our own: the built-in
    // ones also count the branches with a query of their own.
    let script = std::env::temp_dir().join(format!("weft-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
    )
    .expect("script");
    let script_s = script.to_string_lossy().into_owned();
    let before = ops(&agent, "postgresql", port, "SELECT");
    let t = TRANSACTIONS.to_string();
    let mut run = vec!["pgbench", "-n", "-M", "prepared", "-c", "1", "-t", &t];
    run.extend(["-f", &script_s]);
    run.extend(conn);
    run.push("postgres");
    let report = in_client(&lab, &run);
    let _ = std::fs::remove_file(&script);
    drop(server);
    assert_eq!(
        figure(&report, "number of transactions actually processed:"),
        TRANSACTIONS,
        "{report}"
    );

    let selects = wait_for("600 SELECTs counted", WAIT, || {
        let n = ops(&agent, "postgresql", port, "SELECT") - before;
        (n >= TRANSACTIONS as f64).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ops(&agent, "postgresql", port, "SELECT") - before,
        TRANSACTIONS as f64,
        "{selects}"
    );
    assert_eq!(ops(&agent, "postgresql", port, "EXECUTE"), 0.0);
}

#[test]
fn sysbench_prepared_reads_are_selects() {
    if !require_root("sysbench_prepared_reads_are_selects") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(18);
    let server = servers::mariadb(&lab, port);
    let (_, stderr) = servers::mariadb_client(&lab, &server, &["CREATE DATABASE sbtest"]);
    assert!(stderr.is_empty(), "{stderr}");
    let host = format!("--mysql-host={}", lab.server_v4);
    let port_arg = format!("--mysql-port={port}");
    let common = [
        "sysbench",
        "oltp_read_only",
        "--db-driver=mysql",
        &host,
        &port_arg,
        "--mysql-user=root",
        "--mysql-db=sbtest",
        "--tables=1",
        "--table-size=1000",
    ];
    let mut prepare = common.to_vec();
    prepare.push("prepare");
    in_client(&lab, &prepare);
    let count = |op: &str| ops(&agent, "mysql", port, op);
    let before = [count("SELECT"), count("BEGIN"), count("COMMIT")];
    let mut run = common.to_vec();
    run.extend([
        "--threads=1",
        "--events=200",
        "--time=0",
        "--db-ps-mode=auto",
        "run",
    ]);
    let report = in_client(&lab, &run);
    drop(server);
    let reads = figure(&report, "read:");
    let other = figure(&report, "other:");
    assert_eq!(figure(&report, "total:"), reads + other, "{report}");
    assert!(reads > 0, "{report}");

    wait_for("sysbench's reads counted", WAIT, || {
        (count("SELECT") - before[0] >= reads as f64).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count("SELECT") - before[0], reads as f64, "{report}");
    let begin_commit = count("BEGIN") - before[1] + count("COMMIT") - before[2];
    assert_eq!(begin_commit, other as f64, "{report}");
    assert_eq!(count("EXECUTE"), 0.0);
}
