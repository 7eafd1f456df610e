//! `weft agent --bpf-log`: the kernel programs log their rare paths into
//! the agent's log, at a power-of-two pace per CPU, and not at all
//! without the flag. The rare path made here is a full TCP_CONNS (a
//! 64-entry table and 150 loopback connections held open).

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use weft_tests::{agent::Agent, require_root, wait_for};

const CONNECTIONS: usize = 150;
const TABLE_FULL: &str = "TCP_CONNS is full, a new TCP socket is not tracked";

/// Opens `CONNECTIONS` loopback connections, waits until the agent counts
/// sockets its full table could not take, and returns that count.
fn overflow_the_socket_table(agent: &Agent) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut held = Vec::with_capacity(2 * CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        held.push(client);
        held.push(server);
    }
    let lost = wait_for(
        "sockets counted as lost to a full TCP_CONNS",
        Duration::from_secs(10),
        || {
            let n = agent.metric_sum(
                "weft_events_lost_total",
                &["source=\"tcp_events\"", "stage=\"kernel_map_full\""],
            );
            (n > 0.0).then_some(n)
        },
    );
    drop(held);
    lost
}

fn small_table_config(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("weft-bpf-log-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = dir.join("weft.yaml");
    std::fs::write(&config, "tcp_socket_capacity: 64\n").expect("write config");
    let path = config.to_string_lossy().into_owned();
    (dir, path)
}

fn possible_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u64::try_from(n).unwrap_or(1).max(1)
}

#[test]
fn with_bpf_log_a_full_table_is_logged_at_a_power_of_two_pace() {
    if !require_root("with_bpf_log_a_full_table_is_logged_at_a_power_of_two_pace") {
        return;
    }
    let (dir, config) = small_table_config("on");
    let agent = Agent::start(&["--config", &config, "--bpf-log"]);
    assert!(
        agent
            .log()
            .contains("--bpf-log: the kernel programs log their rare paths here"),
        "{}",
        agent.log()
    );
    let lost = overflow_the_socket_table(&agent);
    let lines = wait_for(
        "the kernel's log line for a full TCP_CONNS",
        Duration::from_secs(10),
        || {
            let n = agent
                .log()
                .lines()
                .filter(|l| l.contains(TABLE_FULL))
                .count() as u64;
            (n > 0).then_some(n)
        },
    );
    // At the 1st, 2nd, 4th... loss on each CPU: at most log2(lost) + 1
    // lines per CPU, far fewer than the losses.
    let per_cpu_bound = (lost as u64).ilog2() as u64 + 1;
    let bound = possible_cpus() * per_cpu_bound;
    eprintln!("{lost} sockets lost, {lines} log lines (bound {bound})");
    assert!(
        lines <= bound,
        "{lines} lines for {lost} losses:\n{}",
        agent.log()
    );
    assert!(
        (lines as f64) < lost,
        "one line per loss: {lines} for {lost}"
    );
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains(TABLE_FULL))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains("WARN"), "logged as a warning: {line}");
    assert!(line.contains("on this CPU"), "{line}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_bpf_log_the_programs_log_nothing() {
    if !require_root("without_bpf_log_the_programs_log_nothing") {
        return;
    }
    if std::env::var_os("WEFT_TEST_AGENT_LOG_DIR").is_some() {
        // The kernel matrix starts every agent with --bpf-log.
        eprintln!("without_bpf_log_the_programs_log_nothing: not in the kernel matrix");
        return;
    }
    let (dir, config) = small_table_config("off");
    let agent = Agent::start(&["--config", &config]);
    let lost = overflow_the_socket_table(&agent);
    assert!(lost > 0.0);
    // The agent reads its counters every second: the loss is known, and
    // a log record written by the kernel would have been read by now.
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert!(!log.contains(TABLE_FULL), "{log}");
    assert!(!log.contains("--bpf-log"), "{log}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}
