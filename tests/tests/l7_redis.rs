//! Redis commands between two namespaces, seen from both sockets: a real
//! redis-cli (client, egress records) against a real redis-server (ingress
//! records): commands one at a time with their replies, error replies, a
//! blocking command for the latency, and a pipeline (`redis-cli --pipe`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    agent::Agent,
    follow::{Follower, closes_by},
    lab::Lab,
    peer::exec_with_input,
    require_root, servers, unique_port,
};

const WAIT: Duration = Duration::from_secs(20);

/// Commands sent one at a time on one connection, with the command name
/// and error prefix weft must report for each. redis-cli (7.0) reading
/// commands from stdin first asks the server for `COMMAND DOCS` (for its
/// hints); that is a real exchange too.
const COMMANDS: [(&str, &str, Option<&str>); 10] = [
    ("", "COMMAND", None),
    ("SET weft:k hello", "SET", None),
    ("GET weft:k", "GET", None),
    ("INCR weft:n", "INCR", None),
    ("INCR weft:n", "INCR", None),
    ("HSET weft:h field value", "HSET", None),
    ("GET weft:missing", "GET", None),
    // Unknown command: `-ERR unknown command ...`.
    ("WEFTNOSUCH arg", "WEFTNOSUCH", Some("ERR")),
    // A list operation on a string: `-WRONGTYPE ...`.
    ("LPUSH weft:k x", "LPUSH", Some("WRONGTYPE")),
    // Blocks 200 ms on an empty list, then answers nil.
    ("BLPOP weft:empty 0.2", "BLPOP", None),
];

/// Commands of the pipeline (`redis-cli --pipe` adds an `ECHO` of its own
/// to know when the last reply arrived).
const PIPELINED: usize = 5;

#[test]
fn redis_commands_from_both_sides() {
    if !require_root("redis_commands_from_both_sides") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(20);
    let port_s = port.to_string();
    // The port alone could match another process's ephemeral port on a
    // busy node: the lab's server address narrows it down to this test.
    let follower = Follower::start(&agent, &["--port", &port_s, "--ip", &lab.server_v4]);
    let mut server = servers::redis(&lab, port);

    // One connection, one command at a time (redis-cli reads stdin and
    // waits for each reply).
    let script: String = COMMANDS[1..]
        .iter()
        .map(|(c, _, _)| format!("{c}\n"))
        .collect();
    let cli = ["redis-cli", "-h", &lab.server_v4, "-p", &port_s];
    let (ok, out, err) = exec_with_input(&lab.client_ns, &cli, &script);
    assert!(ok, "redis-cli failed: {out}{err}");
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!(replies[0], "OK", "{out}");
    assert_eq!(replies[1], "hello", "{out}");
    assert!(out.contains("WRONGTYPE"), "{out}");

    // A pipeline: every command in one write, replies read afterwards.
    let raw: String = (0..PIPELINED)
        .map(|_| "*2\r\n$4\r\nINCR\r\n$6\r\nweft:p\r\n")
        .collect();
    let mut pipe = cli.to_vec();
    pipe.push("--pipe");
    let (ok, out, err) = exec_with_input(&lab.client_ns, &pipe, &raw);
    assert!(ok, "redis-cli --pipe failed: {out}{err}");
    assert!(
        out.contains(&format!("errors: 0, replies: {PIPELINED}")),
        "{out}"
    );
    server.stop();

    let total = COMMANDS.len() + PIPELINED + 1;
    // Both connections' L4 `close` records come after their L7 streams
    // were flushed: nothing more arrives for them after that.
    let [egress, ingress] =
        follower.l7_both_sides(WAIT, total, |r| closes_by(r, &["redis-cli"]) >= 2);
    for r in egress.iter().chain(&ingress) {
        assert_eq!(r["l7"]["protocol"], "redis", "{r:#}");
        assert_eq!(r["transport"], "tcp", "{r:#}");
        assert_eq!(r["source"]["process"], "redis-cli", "{r:#}");
        assert_eq!(r["destination"]["process"], "redis-server", "{r:#}");
        assert_eq!(r["destination"]["ip"], lab.server_v4.as_str(), "{r:#}");
        assert_eq!(r["destination"]["port"], port, "{r:#}");
        assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
    }
    // Records are in request order per connection; the one-at-a-time
    // connection came first.
    for sorted in [&egress, &ingress] {
        for (r, (_, command, error)) in sorted.iter().zip(COMMANDS) {
            assert_eq!(r["l7"]["command"], command, "{r:#}");
            match error {
                Some(code) => assert_eq!(r["l7"]["error_code"], code, "{r:#}"),
                None => assert!(r["l7"]["error_code"].is_null(), "{r:#}"),
            }
        }
        let rest: Vec<&Value> = sorted[COMMANDS.len()..].iter().collect();
        assert_eq!(
            rest.iter().filter(|r| r["l7"]["command"] == "INCR").count(),
            PIPELINED,
            "{rest:#?}"
        );
        assert_eq!(
            rest.iter().filter(|r| r["l7"]["command"] == "ECHO").count(),
            1,
            "{rest:#?}"
        );
        // Values are obfuscated: the key stays, the value does not.
        assert_eq!(sorted[0]["l7"]["statement"], "COMMAND DOCS");
        assert_eq!(sorted[1]["l7"]["statement"], "SET weft:k ?");
        let blpop = &sorted[COMMANDS.len() - 1];
        let latency = blpop["l7"]["latency_us"].as_u64().expect("latency");
        assert!(latency >= 200_000, "BLPOP 0.2 took only {latency} µs");
        assert!(latency < 2_000_000, "BLPOP 0.2 took {latency} µs");
        // The other answers are immediate.
        let get = sorted[2]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(get < 200_000, "GET took {get} µs");
    }

    // Database durations are measured at the client only.
    let db = "db_client_operation_duration_seconds_count";
    let redis = "db_system_name=\"redis\"";
    let dport = format!("destination_port=\"{port}\"");
    assert_eq!(agent.metric_sum(db, &[redis, &dport]), total as f64);
    assert_eq!(
        agent.metric_sum(db, &[redis, &dport, "db_operation_name=\"INCR\""]),
        (2 + PIPELINED) as f64
    );
    assert_eq!(
        agent.metric_sum(db, &[redis, &dport, "error_type=\"WRONGTYPE\""]),
        1.0
    );
    assert_eq!(
        agent.metric_sum(db, &[redis, &dport, "error_type=\"ERR\""]),
        1.0
    );
}
