//! `weft top` on a known mix, driven by a real client in one network
//! namespace against the Python HTTP server in another: 200 requests to
//! one route of which 20 answer 500, 100 slow ones (100 ms) to another,
//! and 5 connects refused by a third port. `weft top --once -o json` must
//! count them exactly, and agree with the Prometheus histograms and
//! counters scraped at the same time; the live view must draw in a
//! pseudo-terminal, in `--sort` order, and restore the terminal on `q`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, metric_sum, weft_bin},
    lab::Lab,
    output_within, require_root, servers, try_wait_for, unique_port, wait_for,
};

const WAIT: Duration = Duration::from_secs(30);

/// The client: keep-alive requests on one connection, then refused
/// connects; prints how many were refused.
const MIX: &str = r#"
import http.client, socket, sys
host, port, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection(host, port, timeout=10)
for i in range(200):
    c.request("GET", "/status/500" if i % 10 == 0 else "/status/200")
    c.getresponse().read()
for i in range(100):
    c.request("GET", "/slow")
    c.getresponse().read()
c.close()
refused = 0
for i in range(5):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, closed))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
"#;

const STATUS_ROUTE: &str = "GET /status/{id}";
const SLOW_ROUTE: &str = "GET /slow";

#[test]
fn top_counts_a_known_mix_as_the_metrics_do() {
    if !require_root("top_counts_a_known_mix_as_the_metrics_do") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(47);
    let closed = unique_port(48);
    let (port_s, closed_s) = (port.to_string(), closed.to_string());
    let _server = servers::python_http(&lab, port);
    let mut client = Command::new("ip");
    client.args(["netns", "exec", &lab.client_ns, "python3", "-c", MIX]);
    client.args([&lab.server_v4, &port_s, &closed_s]);
    let out = output_within(&mut client, Duration::from_secs(90)).expect("the client finished");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5", "refused");

    let top = |args: &[&str]| -> Value {
        let mut all = vec!["top", "--once", "-o", "json", "--window", "5m"];
        all.extend_from_slice(args);
        let out = agent.client(&all);
        assert!(
            out.status.success(),
            "weft top failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("a JSON snapshot")
    };
    let route = |snapshot: &Value, name: &str| -> Option<Value> {
        snapshot["rows"]
            .as_array()?
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
    };
    // Every exchange recorded (the slow ones last), then the figures read
    // with the metrics.
    wait_for("the 300 exchanges in weft top", WAIT, || {
        let s = top(&["--by", "route", "--to-port", &port_s]);
        (route(&s, SLOW_ROUTE)?["requests"] == 100).then_some(())
    });
    let by_route = top(&["--by", "route", "--to-port", &port_s]);
    let metrics = agent.metrics();
    assert_eq!(by_route["by"], "route");
    assert_eq!(by_route["window_s"], 300.0);

    let status = route(&by_route, STATUS_ROUTE).expect("the status route's row");
    assert_eq!(status["requests"], 200, "{status:#}");
    assert_eq!(status["errors"], 20, "{status:#}");
    assert_eq!(status["success_rate"], 0.9, "{status:#}");
    assert_eq!(
        status["destination"],
        format!("python3:{port}"),
        "{status:#}"
    );
    let served = |route: &str, extra: &str| {
        let route = format!("http_route=\"{route}\"");
        let port = format!("server_port=\"{port}\"");
        let mut labels = vec![route.as_str(), port.as_str()];
        if !extra.is_empty() {
            labels.push(extra);
        }
        metric_sum(
            &metrics,
            "http_server_request_duration_seconds_count",
            &labels,
        )
    };
    assert_eq!(served("/status/{id}", ""), 200.0);
    assert_eq!(
        served("/status/{id}", "http_response_status_code=\"500\""),
        20.0
    );

    let slow = route(&by_route, SLOW_ROUTE).expect("the slow route's row");
    assert_eq!(slow["requests"], 100, "{slow:#}");
    assert_eq!(slow["success_rate"], 1.0, "{slow:#}");
    assert_eq!(served("/slow", ""), 100.0);
    let p99 = slow["latency_p99_us"].as_u64().expect("p99");
    assert!(p99 >= 100_000, "p99 {p99} µs of a route that sleeps 100 ms");
    let (low, high) = histogram_bucket_of_rank(&metrics, "/slow", port, 99);
    assert!(
        (low..=high).contains(&(p99 as f64 / 1e6)),
        "top's p99 {p99} µs outside the histogram's bucket ({low}, {high}] s of the 99th observation"
    );
    // The connection itself: its row has no route. (The harness's probes
    // refused while the server started are a row of the address.)
    let l4 = by_route["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["route"].is_null() && r["destination"] == format!("python3:{port}"))
        .expect("the connections' row");
    assert!(
        l4["connections"].as_u64().expect("connections") >= 1,
        "{l4:#}"
    );

    let refused = top(&["--by", "workload", "--to-port", &closed_s]);
    let rows = refused["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{refused:#}");
    assert_eq!(rows[0]["failed_connects"], 5, "{refused:#}");
    assert_eq!(
        rows[0]["workload"],
        format!("{}:{closed}", lab.server_v4),
        "no process serves it: named by its address"
    );
    let failed = metric_sum(
        &metrics,
        "weft_tcp_connections_failed_total",
        &[&format!("destination_port=\"{closed}\"")],
    );
    assert_eq!(failed, 5.0);

    // Filters apply: the failing requests only.
    let only_500 = top(&[
        "--by",
        "route",
        "--to-port",
        &port_s,
        "--http-status",
        "500",
    ]);
    let row = route(&only_500, STATUS_ROUTE).expect("the 500s");
    assert_eq!(
        (row["requests"].as_u64(), row["errors"].as_u64()),
        (Some(20), Some(20))
    );
    assert!(route(&only_500, SLOW_ROUTE).is_none());

    live_view_in_a_terminal(&agent, &port_s);

    // Bad usage: exit status 2, the value named.
    let bad = agent.client(&["top", "--once", "--by", "node"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = agent.client(&["top", "--once", "--window", "0s"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--window"));
}

/// The bounds (seconds) of the histogram bucket holding the `rank`th
/// observation of `route`'s server-side durations.
fn histogram_bucket_of_rank(metrics: &str, route: &str, port: u16, rank: u64) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_bucket{"))
        .filter(|l| l.contains(&format!("http_route=\"{route}\"")))
        .filter(|l| l.contains(&format!("server_port=\"{port}\"")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut low = 0.0;
    for (le, cumulative) in buckets {
        if cumulative >= rank as f64 {
            return (low, le);
        }
        low = le;
    }
    panic!("no bucket of {route} holds {rank} observations");
}

/// `weft top` in a pseudo-terminal: the table drawn on the alternate
/// screen, in `--sort p99` order (the slow route first), then `q`, and the
/// terminal as it was.
fn live_view_in_a_terminal(agent: &Agent, port: &str) {
    let (master, slave) = open_pty(40, 160);
    let before = termios(&slave);
    let fd = |f: &OwnedFd| Stdio::from(f.try_clone().expect("dup the pty"));
    let mut child = Command::new(weft_bin())
        .args(["top", "--by", "route", "--to-port", port, "--sort", "p99"])
        .args(["--window", "5m", "--refresh", "200ms", "--api-socket"])
        .arg(&agent.socket)
        .stdin(fd(&slave))
        .stdout(fd(&slave))
        .stderr(fd(&slave))
        .env("TERM", "xterm")
        .spawn()
        .expect("start weft top");
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut reader = std::fs::File::from(master.try_clone().expect("dup the pty"));
    let shown = Arc::clone(&screen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends when the pty's last writer is gone (EIO) or the test is over.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown
                .lock()
                .expect("the screen buffer")
                .extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&screen.lock().expect("the screen buffer")).into_owned();
    let drawn = try_wait_for(Duration::from_secs(15), || {
        let t = text();
        (t.contains(SLOW_ROUTE) && t.contains(STATUS_ROUTE)).then_some(t)
    });
    let Some(drawn) = drawn else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("weft top drew no table; the terminal got:\n{}", text());
    };
    assert!(
        drawn.contains("\x1b[?1049h"),
        "no alternate screen: {drawn:?}"
    );
    let frame = &drawn[drawn.rfind("DESTINATION").expect("the header")..];
    let (slow, status) = (frame.find(SLOW_ROUTE), frame.find(STATUS_ROUTE));
    assert!(
        slow.zip(status).is_some_and(|(s, t)| s < t),
        "--sort p99 puts the slow route first: {frame:?}"
    );
    let mut keys = std::fs::File::from(master.try_clone().expect("dup the pty"));
    keys.write_all(b"q").expect("type q");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait weft top") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft top did not quit on q:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "weft top exited with {status}");
    let all = text();
    let end = &all[all.rfind("DESTINATION").expect("the header")..];
    assert!(
        end.contains("\x1b[?1049l"),
        "alternate screen left: {end:?}"
    );
    assert!(end.contains("\x1b[?25h"), "cursor shown again: {end:?}");
    let after = termios(&slave);
    assert_eq!(
        (after.c_lflag & (libc::ICANON | libc::ECHO)),
        (before.c_lflag & (libc::ICANON | libc::ECHO)),
        "the terminal's line mode and echo restored"
    );
}

fn open_pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to two ints, no name buffer, a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two open descriptors that we now own.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal descriptor.
    let rc = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    t
}
