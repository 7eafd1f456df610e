//! The agent's life: it leaves nothing in the kernel after SIGTERM, nor
//! after SIGKILL once a new agent has started; it cleans up a crashed
//! predecessor's pins; its metrics pass promtool; bad configuration and bad
//! usage exit with status 2 and say what is wrong.

use std::{process::Command, time::Duration};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft},
    programs::{assert_none_leaked, attachments, expected_programs, programs_of, weft_programs},
    require_root, run, wait_for,
};

fn assert_nothing_left(after: &str) {
    assert_none_leaked(after);
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
    // A clean stop detaches everything.
    let mut agent = Agent::start(&[]);
    let n = expected_programs(&agent);
    let attached = attachments(&agent);
    // The TLS uprobes (when the agent may create them and this machine has
    // OpenSSL): a program may be attached at several places.
    let uprobe_programs = attached
        .iter()
        .filter(|p| p["kind"] == "uprobe")
        .filter_map(|p| p["name"].as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // 8 L4 tracepoints, 2 cgroup_skb programs, and 20 syscall tracepoints
    // for L7 payload capture, less what older kernels cannot have: before
    // 6.3 the syscall exits count bytes (no socket tracepoints), and
    // without BTF before 6.4 tcp_probe names no socket (no RTT program).
    let mut want = 30;
    if !agent.has_feature("tracepoint sock:sock_send_length") {
        want -= 2;
    }
    if !agent.has_feature("smoothed RTT") {
        want -= 1;
    }
    assert_eq!(
        n,
        want + uprobe_programs,
        "programs: {:?}",
        agent.status_json()
    );
    let progs = programs_of(&agent);
    assert_eq!(progs.len(), n, "the agent holds each of its programs");
    // Every attachment hangs on a link owned by the agent's descriptors.
    let links = held_links(agent.pid());
    assert_eq!(links, attached.len(), "one link per attachment");
    assert!(agent.signal_and_wait(libc::SIGTERM).success());
    assert_nothing_left("SIGTERM");
    for id in &progs {
        assert!(!weft_programs().contains(id), "program {id} still loaded");
    }

    // A crash, with a pin left behind by an (older) agent: the next agent
    // removes the pin, and only its own programs are loaded.
    let mut crashed = Agent::start(&[]);
    let crashed_progs = programs_of(&crashed);
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
    wait_for(
        "the crashed agent's programs to go",
        Duration::from_secs(10),
        || {
            let loaded = weft_programs();
            crashed_progs
                .iter()
                .all(|id| !loaded.contains(id))
                .then_some(())
        },
    );
    assert_eq!(programs_of(&next).len(), n);
    assert_none_leaked("SIGKILL and restart");
    let status = next.status_json().expect("status");
    assert_eq!(status["pid"], next.pid());
    assert!(next.signal_and_wait(libc::SIGTERM).success());
    assert_nothing_left("SIGKILL and restart");
}

/// Link fds held by `pid`.
/// The agent's attachments: its bpf_link descriptors, and before 5.15
/// (no bpf_link for perf events) the perf event descriptors its
/// tracepoint programs hang on.
fn held_links(pid: u32) -> usize {
    let perf_links = kernel_at_least(5, 15);
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let link = std::fs::read_to_string(e.path())
                        .is_ok_and(|info| info.lines().any(|l| l.starts_with("link_id:")));
                    let perf_event = !perf_links
                        && std::fs::read_link(format!(
                            "/proc/{pid}/fd/{}",
                            e.file_name().to_string_lossy()
                        ))
                        .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[perf_event]");
                    link || perf_event
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let running = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    running >= (major, minor)
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
    let own: Vec<Value> = agent
        .flows(&["--port", &port, "--all"])
        .into_iter()
        .filter(|r| !weft_tests::agent::refused_while_loading(r))
        .collect();
    assert!(own.is_empty(), "the agent's own connections: {own:#?}");
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
