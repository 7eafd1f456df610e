//! The agent's life: it leaves nothing in the kernel after SIGTERM, nor
//! after SIGKILL once a new agent has started; it cleans up a crashed
//! predecessor's pins; its metrics pass promtool; bad configuration and bad
//! usage exit with status 2 and say what is wrong.

use std::{process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft},
    require_root, run, wait_for,
};

/// Ids of the loaded BPF programs whose name starts with `weft_`.
fn weft_programs() -> Vec<u64> {
    let out = run(&["bpftool", "-j", "prog", "show"]);
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("weft_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// BPF links whose program is one of `progs`.
fn links_of(progs: &[u64]) -> usize {
    let out = run(&["bpftool", "-j", "link", "show"]);
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    links
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| progs.contains(&id)))
        .count()
}

fn expected_programs(agent: &Agent) -> usize {
    agent.status_json().expect("status")["programs"]
        .as_array()
        .expect("programs")
        .len()
}

fn assert_nothing_left(after: &str) {
    let left = wait_for(
        &format!("the kernel to free weft's programs after {after}"),
        Duration::from_secs(10),
        || {
            let progs = weft_programs();
            progs.is_empty().then_some(progs)
        },
    );
    assert!(left.is_empty());
    assert!(
        !std::path::Path::new("/sys/fs/bpf/weft").exists(),
        "pins left after {after}"
    );
}

#[test]
fn nothing_outlives_the_agent() {
    if !require_root("nothing_outlives_the_agent") {
        return;
    }
    assert!(
        weft_programs().is_empty(),
        "another weft agent is running on this machine; stop it before these tests"
    );
    // A clean stop detaches everything.
    let mut agent = Agent::start(&[]);
    let n = expected_programs(&agent);
    assert_eq!(n, 10, "8 tracepoints and 2 cgroup_skb programs");
    let progs = weft_programs();
    assert_eq!(progs.len(), n);
    // Every program hangs on a link owned by the agent's file descriptors.
    assert_eq!(links_of(&progs), n, "one link per program");
    assert!(agent.signal_and_wait(libc::SIGTERM).success());
    assert_nothing_left("SIGTERM");

    // A crash, with a pin left behind by an (older) agent: the next agent
    // removes the pin, and only its own programs are loaded.
    let mut crashed = Agent::start(&[]);
    std::fs::create_dir_all("/sys/fs/bpf/weft").expect("pin dir");
    run(&[
        "bpftool",
        "map",
        "create",
        "/sys/fs/bpf/weft/stale_map",
        "type",
        "hash",
        "key",
        "4",
        "value",
        "4",
        "entries",
        "1",
        "name",
        "weft_stale",
    ]);
    let status = crashed.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    let mut next = Agent::start(&[]);
    assert!(
        !std::path::Path::new("/sys/fs/bpf/weft").exists(),
        "the new agent removes stale pins"
    );
    let progs = wait_for(
        "only the new agent's programs",
        Duration::from_secs(10),
        || {
            let progs = weft_programs();
            (progs.len() == n).then_some(progs)
        },
    );
    assert_eq!(links_of(&progs), n);
    let status = next.status_json().expect("status");
    assert_eq!(status["pid"], next.pid());
    assert!(next.signal_and_wait(libc::SIGTERM).success());
    assert_nothing_left("SIGKILL and restart");
}

#[test]
fn status_reports_no_losses_and_metrics_pass_promtool() {
    if !require_root("status_reports_no_losses_and_metrics_pass_promtool") {
        return;
    }
    let agent = Agent::start(&[]);
    // A connection on loopback, so that the L4 families have samples.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = std::net::TcpStream::connect(addr).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop((client, server));
    let port = addr.port().to_string();
    agent.wait_flow(&["--port", &port], "close", Duration::from_secs(10));
    // And a scrape of the agent itself, which must not become a flow.
    let _ = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{}/metrics", agent.metrics_port),
        ])
        .status();
    std::thread::sleep(Duration::from_millis(1500));
    let status = agent.status_json().expect("status");
    for loss in status["losses"].as_array().expect("losses") {
        assert_eq!(loss["total"], 0, "lost events on a quiet machine: {loss}");
    }
    assert!(
        status["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["total"].as_u64() > Some(0))
    );
    let text = agent.metrics();
    for family in [
        "weft_tcp_connections_opened_total",
        "weft_events_total",
        "weft_events_lost_total",
        "weft_bpf_map_entries",
        "weft_bpf_map_capacity",
        "weft_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family} in:\n{text}"
        );
    }
    // The agent's own metrics endpoint is not one of its flows.
    let port = agent.metrics_port.to_string();
    assert!(agent.flows(&["--port", &port, "--all"]).is_empty());
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed by `cargo xtask setup`)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("weft-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("weft.yaml");
    for (yaml, field) in [
        ("metrics_adr: 127.0.0.1:1\n", "metrics_adr"),
        ("udp_idle_timeout: soon\n", "udp_idle_timeout"),
        ("ring_buffer_bytes: 1000\n", "ring_buffer_bytes"),
        ("flow_store_capacity: -3\n", "flow_store_capacity"),
    ] {
        std::fs::write(&file, yaml).expect("write config");
        let out = weft(&["agent", "--config", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{yaml}: {err}");
    }
    let out = weft(&["agent", "--update-interval", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("update_interval"));
    let out = weft(&["agent", "--config", "/nonexistent/weft.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weft.yaml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_usage_exits_2_and_a_missing_agent_exits_1() {
    let out = weft(&[
        "flows",
        "--protocol",
        "htp",
        "--api-socket",
        "/nonexistent.sock",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--protocol") && err.contains("htp"), "{err}");
    let out = weft(&[
        "flows",
        "--ip",
        "10.0.0.300",
        "--api-socket",
        "/nonexistent.sock",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = weft(&["flows", "--api-socket", "/nonexistent/weft.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weft agent") && err.contains("/nonexistent/weft.sock"),
        "{err}"
    );
    let out = weft(&["status", "--api-socket", "/nonexistent/weft.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let out = weft(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}
