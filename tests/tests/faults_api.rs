//! The flow API under faults, against the real agent and real traffic.
//!
//! - A `weft flows -f` follower stopped (SIGSTOP) under steady traffic
//!   falls behind the agent's follower buffer: the agent's memory stays
//!   bounded (it drops the follower's backlog instead of keeping it), the
//!   other follower gets every record, and the stopped one, resumed, is told
//!   how many records it lost (the figure the agent logged and counts in
//!   `weft_events_lost_total{source="flow_api",stage="follower"}` and
//!   `weft status`), catches up, and its records are exactly the other's
//!   minus the skipped ones.
//! - 500 API connections held open at once, many of them hostile (random
//!   bytes, an HTTP/2 preface then garbage, HTTP/1.1, a request left half
//!   sent), a gRPC message declaring a 4 GiB length, one above tonic's
//!   4 MiB limit and a legal one with a filter of 10,000 values: the agent
//!   keeps answering normal clients within seconds, with the right records,
//!   its memory stays bounded, and every connection's file descriptor is
//!   released once its client goes.
//! - An agent limited to 256 file descriptors, 300 connections held open:
//!   out of descriptors, it pauses between accepts instead of spinning a
//!   core, says so in its log, and answers again once they close.

use std::{
    fs::File,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{
    agent::{Agent, weft_bin},
    lab::Lab,
    output_within, require_root, scaled, servers, try_wait_for, unique_port, wait_for,
};

/// The agent's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// How many files the agent has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("agent fds")
        .count()
}

/// Sends `signal` to a process this test started.
fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling a child of this test by its pid.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// `weft flows -f -o jsonl --port PORT`, its output in files (a stopped
/// follower must not be able to block anything of the test's).
struct Follower {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Follower {
    fn start(agent: &Agent, name: &str, port: u16) -> Self {
        let base = std::env::temp_dir().join(format!("weft-faults-{}-{name}", std::process::id()));
        let (out, err) = (base.with_extension("out"), base.with_extension("err"));
        let child = Command::new(weft_bin())
            .args(["flows", "-f", "-o", "jsonl", "--api-socket"])
            .arg(&agent.socket)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("follower stdout"))
            .stderr(File::create(&err).expect("follower stderr"))
            .spawn()
            .expect("start weft flows -f");
        Self { child, out, err }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The complete lines printed so far (a record being written is left
    /// for the next read).
    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// How many records it has printed (cheaper than [`Self::lines`]).
    fn count(&self) -> usize {
        std::fs::read(&self.out)
            .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("weft flows -f exited ({status}): {}", self.stderr());
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// Requests of the traffic clients, each on a connection of its own (an
/// open, an L7 record and a close at each end: many records per second),
/// the first, then more until `secs` have passed. Prints how many it
/// made.
const CLIENT: &str = r#"
import http.client, sys, time
host, port, path, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
n = 0
end = time.monotonic() + secs
while True:
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    c.close()
    n += 1
    if time.monotonic() >= end:
        break
print(n)
"#;

/// Runs `clients` traffic processes (GET `path`) in the lab's client
/// namespace for `secs`; the total of their requests.
fn traffic(
    lab: &Lab,
    port: u16,
    path: &'static str,
    clients: usize,
    secs: f64,
) -> std::thread::JoinHandle<u64> {
    let (ns, host) = (lab.client_ns.clone(), lab.server_v4.clone());
    std::thread::spawn(move || {
        let runs: Vec<_> = (0..clients)
            .map(|_| {
                let (ns, host) = (ns.clone(), host.clone());
                std::thread::spawn(move || {
                    let mut cmd = Command::new("ip");
                    cmd.args(["netns", "exec", &ns, "python3", "-c", CLIENT])
                        .args([host, port.to_string(), path.into(), secs.to_string()]);
                    let limit = Duration::from_secs_f64(secs) + Duration::from_secs(30);
                    let out = output_within(&mut cmd, limit).expect("traffic client finished");
                    assert!(
                        out.status.success(),
                        "traffic client failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse::<u64>()
                        .expect("request count")
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("traffic client thread"))
            .sum()
    })
}

/// The HTTP records of GET `path` seen at one end (`egress`: the
/// client's).
fn l7_count(lines: &[String], path: &str, direction: &str) -> usize {
    lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON record per line"))
        .filter(|r| {
            r["type"] == "l7" && r["traffic_direction"] == direction && r["l7"]["path"] == path
        })
        .count()
}

/// The figures `N` of the lines of `text` that read `...{before}N{after}...`.
fn figures(text: &str, before: &str, after: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(before)?;
            let (n, _) = rest.split_once(after)?;
            n.parse().ok()
        })
        .collect()
}

/// How long the follower stays stopped: at two clients' rate (each
/// request makes at least four records) this is tens of thousands of
/// records, several times the 8192 a follower may fall behind.
const STOPPED: Duration = Duration::from_secs(8);

/// How long the traffic runs, the stop inside it (longer when the stop
/// needs it).
const TRAFFIC: Duration = Duration::from_secs(15);

/// Records made while the follower is stopped, at least: more than its
/// live channel (8192) and stream buffer can hold, twice over.
const OVERFLOW_RECORDS: usize = 2 * 8192;

/// The stop fails the test if the traffic has not made those records by
/// then.
const STOPPED_AT_MOST: Duration = Duration::from_secs(120);

/// The agent's resident memory may grow by this much while a follower is
/// stopped. The flow store's ring is full before it is measured (it only
/// replaces records from then on); the live channel's 8192 slots hold
/// records the ring holds too (its 10,000 are the newest); what a stopped
/// follower may add is its stream's 128 buffered messages (a KiB or so
/// each) and HTTP/2's send buffers (hundreds of KiB). 16 MiB leaves room
/// for the allocator's per-thread arenas; a follower's unread records kept
/// without bound (tens of thousands of KiB-sized records here) would
/// exceed it.
const FOLLOWER_RSS_GROWTH_KIB: u64 = 16 * 1024;

#[test]
fn a_stopped_follower_loses_records_and_is_told_while_memory_stays_bounded() {
    if !require_root("a_stopped_follower_loses_records_and_is_told_while_memory_stays_bounded") {
        return;
    }
    let agent = Agent::start(&[]);
    let lab = Lab::new();
    let port = unique_port(49);
    let _server = servers::python_http(&lab, port);
    let mut good = Follower::start(&agent, "good", port);
    let mut stopped = Follower::start(&agent, "stopped", port);
    // Both subscribed before the traffic: a first request reaches both.
    // Tens of thousands of connections from one address to one server
    // port within seconds: the client's own namespace gets the whole port
    // range, and reuses its TIME_WAIT ports, so that none is refused.
    lab.exec(
        &lab.client_ns,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    );
    // Both followers subscribed before the test's traffic: warm-up
    // requests (another path) until both have seen one.
    wait_for(
        "both followers to see a warm-up request",
        Duration::from_secs(20),
        || {
            traffic(&lab, port, "/warmup", 1, 0.0)
                .join()
                .expect("warm-up request");
            std::thread::sleep(Duration::from_millis(300));
            [&good, &stopped]
                .iter()
                .all(|f| {
                    let lines = f.lines();
                    l7_count(&lines, "/warmup", "egress") + l7_count(&lines, "/warmup", "ingress")
                        > 0
                })
                .then_some(())
        },
    );

    let mut runs = vec![traffic(
        &lab,
        port,
        "/faults",
        2,
        scaled(TRAFFIC).as_secs_f64(),
    )];
    // The store's ring full (at its default 10,000 records): from now on
    // it replaces records, so what grows the memory is what is kept for
    // the stopped follower.
    wait_for("the flow store to fill", Duration::from_secs(15), || {
        let status = agent.status_json()?;
        let store = &status["flow_store"];
        (store["entries"] == store["capacity"]).then_some(())
    });
    let before = rss_kib(agent.pid());
    let stopped_at = Instant::now();
    let seen_at_stop = good.count();
    signal(stopped.pid(), libc::SIGSTOP);
    let mut peak = before;
    // At least STOPPED, and until the records made meanwhile overflow
    // what a follower may have pending: a starved machine (the emulated
    // kernel matrix with other work beside it) makes fewer per second,
    // so the traffic goes on as long as it takes.
    while stopped_at.elapsed() < scaled(STOPPED) || good.count() - seen_at_stop < OVERFLOW_RECORDS {
        assert!(
            stopped_at.elapsed() < scaled(STOPPED_AT_MOST),
            "only {} records in {:?}",
            good.count() - seen_at_stop,
            stopped_at.elapsed()
        );
        if runs.last().is_some_and(|r| r.is_finished()) {
            runs.push(traffic(&lab, port, "/faults", 2, 5.0));
        }
        peak = peak.max(rss_kib(agent.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(stopped.pid(), libc::SIGCONT);
    let requests: u64 = runs.into_iter().map(|r| r.join().expect("traffic")).sum();
    good.assert_running();
    stopped.assert_running();

    // Every request reached the good follower, at both ends; once it has
    // them all, the resumed one has caught up with it (same last record).
    let total = usize::try_from(requests).expect("requests");
    let good_lines = wait_for(
        "the good follower to see every request",
        Duration::from_secs(30),
        || {
            let lines = good.lines();
            (l7_count(&lines, "/faults", "egress") == total
                && l7_count(&lines, "/faults", "ingress") == total)
                .then_some(lines)
        },
    );
    // The L4 records of the last connections come with their closes:
    // settled when two reads a second apart agree.
    let mut previous = (Vec::new(), Vec::new());
    let (good_lines, stopped_lines) = try_wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(1000));
        let lines = (good.lines(), stopped.lines());
        let settled = lines == previous && lines.0.last() == lines.1.last();
        previous = lines.clone();
        settled.then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "the followers did not settle on the same last record: good has {} lines \
             ({} at the wait before), the resumed one {}; its stderr: {}",
            previous.0.len(),
            good_lines.len(),
            previous.1.len(),
            stopped.stderr()
        )
    });
    assert_eq!(l7_count(&good_lines, "/faults", "egress"), total);
    assert_eq!(l7_count(&good_lines, "/faults", "ingress"), total);
    assert!(
        good.stderr().is_empty(),
        "the good follower was told of losses: {}",
        good.stderr()
    );

    // The two followers subscribed a few milliseconds apart: a record
    // written between (a late close of the server's readiness probe) is
    // the first one's only. From the first record both have on, the
    // resumed follower's records are the good one's in the same order,
    // with gaps: at most one per lag notice.
    let (good_all, stopped_all) = (good_lines.len(), stopped_lines.len());
    let shared = |of: &[String], with: &[String]| -> Vec<String> {
        let with: std::collections::HashSet<&String> = with.iter().collect();
        of.iter()
            .skip_while(|l| !with.contains(l))
            .cloned()
            .collect()
    };
    let good_lines = shared(&good_lines, &stopped_lines);
    let stopped_lines = shared(&stopped_lines, &good_lines);
    let mut gaps = 0;
    let mut in_gap = false;
    let mut next = stopped_lines.iter().peekable();
    for line in &good_lines {
        if next.peek() == Some(&line) {
            next.next();
            in_gap = false;
        } else if !in_gap {
            gaps += 1;
            in_gap = true;
        }
    }
    let unmatched: Vec<_> = next.collect();
    assert!(
        unmatched.is_empty(),
        "the resumed follower has records the good one does not, or out of order: {:?}",
        unmatched.first()
    );
    let missing = (good_lines.len() - stopped_lines.len()) as u64;

    // The resumed follower was told (on stderr) how many the agent skipped;
    // the agent logged the same figures, and nothing else (the good
    // follower never fell behind). The figures count every record the
    // follower's channel skipped, before its filter: at least the
    // follower's own missing records. (The agent keeps a total of them,
    // FlowStore::follower_lost, but neither `weft status` nor
    // `weft_events_lost_total` reports it yet: its log is what says.)
    let told = figures(&stopped.stderr(), "the agent skipped ", " flows");
    let logged = figures(&agent.log(), "skipped ", " live records");
    let told_total: u64 = told.iter().sum();
    eprintln!(
        "{requests} requests; good follower {} records, resumed one {} (from the first both have; {good_all} and \
         {stopped_all} in all; {missing} missing in {gaps} gaps); told {told:?} (total {told_total}), agent logged {logged:?}; \
         agent RSS {before} KiB before the stop, peak {peak} KiB while stopped (+{} KiB)",
        good_lines.len(),
        stopped_lines.len(),
        peak - before
    );
    assert!(missing > 0, "the stopped follower missed nothing");
    assert!(!told.is_empty(), "stderr: {}", stopped.stderr());
    assert!((1..=told.len()).contains(&gaps), "{gaps} gaps, {told:?}");
    assert_eq!(logged, told, "what the agent logged and what it told");
    // And counted as the API's loss, in the metrics and the status.
    let counted = wait_for(
        "the follower's loss in the metrics",
        Duration::from_secs(10),
        || {
            let counted = agent.metric_sum(
                "weft_events_lost_total",
                &["source=\"flow_api\"", "stage=\"follower\""],
            );
            (counted == told_total as f64).then_some(counted)
        },
    );
    assert!(
        agent
            .losses()
            .contains(&("flow_api".into(), "follower".into(), counted as u64)),
        "weft status: {:?}",
        agent.losses()
    );
    assert!(
        told_total >= missing,
        "told {told_total} lost, {missing} missing"
    );
    assert!(
        peak - before <= FOLLOWER_RSS_GROWTH_KIB,
        "the agent's RSS grew from {before} KiB to {peak} KiB while a follower was stopped"
    );
}

/// The connection preface every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HEADERS of a gRPC call of `method` on stream 1 (HPACK literals,
/// no Huffman coding: every length is below 127).
fn grpc_headers(method: &str) -> Vec<u8> {
    let path = format!("/weft.v1.FlowApi/{method}");
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path.as_str()),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal header field without indexing, new name.
        block.push(0);
        for s in [name, value] {
            block.push(u8::try_from(s.len()).expect("short"));
            block.extend_from_slice(s.as_bytes());
        }
    }
    frame(HEADERS, END_HEADERS, 1, &block)
}

/// A connection to the agent's API socket.
fn connect(agent: &Agent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).expect("connect to the API socket");
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    s.set_read_timeout(Some(scaled(Duration::from_secs(5))))
        .expect("read timeout");
    s
}

/// What the agent sent on `s` until it closed the connection, as
/// (frame type, flags, stream) for what parses as HTTP/2 frames, and
/// whether it did close it (not merely fall silent) within the read
/// timeout.
fn frames_until_close(mut s: &UnixStream) -> (Vec<(u8, u8, u32)>, bool) {
    let mut bytes = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (parse_frames(&bytes), closed)
}

fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        frames.push((bytes[3], bytes[4], stream));
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    frames
}

/// Bytes no protocol would send (xorshift: the same each run).
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A GetFlows request (protobuf) whose filter lists `count` process names
/// of 100 bytes: a message of about 102 × `count` bytes.
const OVERSIZED: &str = r#"
import grpc, sys
socket, count = sys.argv[1], int(sys.argv[2])
name = b"p" * 100
inner = (b"\x2a" + bytes([len(name)]) + name) * count
def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([v & 0x7f | 0x80])
        v >>= 7
    return out + bytes([v])
message = b"\x0a" + varint(len(inner)) + inner
print(len(message))
channel = grpc.insecure_channel("unix:" + socket)
call = channel.unary_stream("/weft.v1.FlowApi/GetFlows")
try:
    print(sum(1 for _ in call(message, timeout=10)))
    print("OK")
except grpc.RpcError as e:
    print(e.code().name)
    print(e.details())
"#;

/// Hostile clients held open at once.
const CLIENTS: usize = 500;
/// The agent's resident memory may grow by this much across the whole
/// abuse: an accepted connection costs a task and HTTP/2 buffers (tens of
/// KiB), so 500 of them a few tens of MiB at most; a request buffered
/// whole because of its declared length (4 GiB), or one of the hostile
/// streams' bytes kept, would not fit.
const HOSTILE_RSS_GROWTH_KIB: u64 = 64 * 1024;

#[test]
fn many_and_hostile_api_clients_leave_the_agent_serving() {
    if !require_root("many_and_hostile_api_clients_leave_the_agent_serving") {
        return;
    }
    let agent = Agent::start(&[]);
    let pid = agent.pid();
    let lab = Lab::new();
    let port = unique_port(50);
    let port_s = port.to_string();
    let mut server = servers::python_http(&lab, port);
    // Three requests whose records every later answer must give back.
    assert_eq!(
        traffic(&lab, port, "/faults", 3, 0.0)
            .join()
            .expect("traffic"),
        3
    );
    server.stop();
    let lines = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["flows", "-o", "jsonl", "--port", &port_s];
        args.extend_from_slice(extra);
        let out = agent.client(&args);
        assert!(
            out.status.success(),
            "weft flows: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let mut previous = Vec::new();
    let expected = wait_for(
        "the three requests' records",
        Duration::from_secs(20),
        || {
            std::thread::sleep(Duration::from_millis(900));
            let now = lines(&["--all"]);
            let settled = l7_count(&now, "/faults", "egress") == 3
                && l7_count(&now, "/faults", "ingress") == 3
                && now == previous;
            previous = now.clone();
            settled.then_some(now)
        },
    );
    let fds_before = open_fds(pid);
    let rss_before = rss_kib(pid);

    // A normal client, timed: answers within a few seconds, and right.
    let timed = |args: &[&str]| -> (Duration, Vec<u8>) {
        let start = Instant::now();
        let mut cmd = Command::new(weft_bin());
        cmd.args(args).arg("--api-socket").arg(&agent.socket);
        let out = output_within(&mut cmd, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("`weft {}` got no answer within 5 s", args.join(" ")));
        assert!(
            out.status.success(),
            "weft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (start.elapsed(), out.stdout)
    };
    let check_answers = |when: &str| {
        let (took_status, status) = timed(&["status", "-o", "json"]);
        let status: Value = serde_json::from_slice(&status).expect("status JSON");
        assert_eq!(status["pid"], pid, "{when}");
        let (took_flows, flows) =
            timed(&["flows", "-o", "jsonl", "--port", &port_s, "--last", "5"]);
        let flows: Vec<String> = String::from_utf8_lossy(&flows)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(flows, expected[expected.len() - 5..], "{when}");
        eprintln!("{when}: weft status in {took_status:?}, weft flows --last 5 in {took_flows:?}");
    };

    // 500 connections at once: idle, random bytes, a preface then garbage,
    // HTTP/1.1, and a request left half sent (headers, no body).
    let held: Vec<UnixStream> = (0..CLIENTS)
        .map(|i| {
            let mut s = connect(&agent);
            let bytes = match i % 5 {
                0 => Vec::new(),
                1 => garbage(4096, i as u64),
                2 => [PREFACE, &garbage(1024, i as u64)].concat(),
                3 => [
                    PREFACE,
                    &frame(SETTINGS, 0, 0, &[]),
                    &grpc_headers("GetStatus"),
                ]
                .concat(),
                _ => b"GET /readyz HTTP/1.1\r\nHost: weft\r\n\r\n".to_vec(),
            };
            // The agent may close a hostile connection before it has read
            // all: an error here is its answer, not the test's failure.
            let _ = s.write_all(&bytes);
            s
        })
        .collect();
    let opened = Instant::now();
    let fds_held = open_fds(pid);
    check_answers("with 500 connections open");

    // Random bytes and a preface followed by garbage: the agent closes the
    // connection (after a GOAWAY, for the one that spoke HTTP/2 first).
    let s = connect(&agent);
    let _ = (&s).write_all(&garbage(65536, 7));
    let (_, closed) = frames_until_close(&s);
    assert!(closed, "random bytes: the agent kept the connection open");
    let s = connect(&agent);
    let _ = (&s).write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[]), &garbage(4096, 9)].concat());
    let (frames, closed) = frames_until_close(&s);
    assert!(
        closed,
        "preface then garbage: the agent kept the connection open"
    );
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY),
        "preface then garbage: no GOAWAY in {frames:?}"
    );

    // A gRPC message declaring 4 GiB - 1 bytes (only its 5-byte prefix
    // sent): refused at once, the stream ended, without waiting for (or
    // buffering) the body.
    let s = connect(&agent);
    let request = [
        PREFACE,
        &frame(SETTINGS, 0, 0, &[]),
        &grpc_headers("GetFlows"),
        &frame(DATA, 0, 1, &[0, 0xff, 0xff, 0xff, 0xff]),
    ]
    .concat();
    (&s).write_all(&request).expect("send the request");
    let mut bytes = Vec::new();
    let ended = try_wait_for(Duration::from_secs(5), || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = (&s).read(&mut buf) {
            bytes.extend_from_slice(&buf[..n]);
        }
        parse_frames(&bytes)
            .into_iter()
            .find(|&(kind, flags, stream)| {
                stream == 1 && (kind == RST_STREAM || (kind == HEADERS && flags & END_STREAM != 0))
            })
    });
    let (kind, _, _) = ended.unwrap_or_else(|| {
        panic!(
            "a 4 GiB declared length: stream 1 not ended; frames {:?}",
            parse_frames(&bytes)
        )
    });
    eprintln!(
        "a 4 GiB declared length: stream 1 ended by a {} frame",
        if kind == HEADERS {
            "HEADERS"
        } else {
            "RST_STREAM"
        }
    );
    drop(s);

    // Above tonic's 4 MiB limit, from a real gRPC client: refused with
    // OUT_OF_RANGE, naming the size and the limit.
    let python = servers::grpc_python();
    let socket = agent.socket.to_string_lossy().into_owned();
    let mut cmd = Command::new(&python);
    cmd.args(["-c", OVERSIZED, &socket, "50000"]);
    let out = output_within(&mut cmd, Duration::from_secs(30)).expect("the gRPC client finished");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let said: Vec<&str> = said.lines().collect();
    assert!(
        out.status.success(),
        "{said:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size: u64 = said[0].parse().expect("message size");
    assert!(size > 4 << 20);
    assert_eq!(
        said[1..],
        [
            "OUT_OF_RANGE",
            &format!(
                "Error, decoded message length too large: found {size} bytes, the limit is: 4194304 bytes"
            )
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A legal but large filter, through the CLI: 10,000 addresses, one of
    // them the lab server's (arguments of the command line are at most
    // 128 KiB each: 5 flags of 2000).
    let mut args = vec!["--all".to_owned()];
    for chunk in 0..5 {
        let ips: Vec<String> = (0..2000)
            .map(|i| {
                if chunk == 4 && i == 1999 {
                    lab.server_v4.clone()
                } else {
                    format!("198.18.{}.{}", chunk * 8 + i / 250, i % 250 + 1)
                }
            })
            .collect();
        args.push("--ip".to_owned());
        args.push(ips.join(","));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    assert_eq!(lines(&args), expected, "a filter of 10,000 addresses");
    let took_big_filter = started.elapsed();

    check_answers("after the malformed requests");
    silent_ones_are_closed(&held, opened);
    let rss_during = rss_kib(pid);
    drop(held);
    // Every connection's descriptor released once its client is gone.
    let fds_after = try_wait_for(Duration::from_secs(10), || {
        let n = open_fds(pid);
        (n <= fds_before).then_some(n)
    });
    eprintln!(
        "agent fds: {fds_before} before, {fds_held} with {CLIENTS} connections open, \
         {fds_after:?} after they closed; RSS {rss_before} KiB before, {rss_during} KiB \
         during; 10,000-address filter answered in {took_big_filter:?}"
    );
    assert!(
        fds_after.is_some(),
        "the agent holds {} files, {fds_before} before",
        open_fds(pid)
    );
    assert!(
        rss_during.saturating_sub(rss_before) <= HOSTILE_RSS_GROWTH_KIB,
        "the agent's RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    check_answers("after the clients left");
    assert_eq!(lines(&["--all"]), expected);
}

/// The held connections that never said a word (every fifth) are closed
/// by the agent once they have been silent for its 10 s; it reads to their
/// end. The others spoke, and the agent keeps or closes them as their
/// bytes deserve.
fn silent_ones_are_closed(held: &[UnixStream], opened: Instant) {
    for (i, s) in held.iter().enumerate().step_by(5) {
        let left = (opened + Duration::from_secs(25)).saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .expect("a read timeout");
        let mut rest = Vec::new();
        let end = (&*s).read_to_end(&mut rest);
        assert!(
            end.is_ok(),
            "silent connection {i}: not closed {:?} after it opened ({end:?})",
            opened.elapsed()
        );
    }
    let closed_after = opened.elapsed();
    eprintln!(
        "the {} silent connections were closed within {closed_after:?}",
        held.len() / 5
    );
    assert!(
        closed_after >= Duration::from_secs(9),
        "silent connections closed after only {closed_after:?}"
    );
}

/// Holds N connections to a unix socket, non-blocking so that a full
/// backlog does not block, for S seconds.
const HOLDER: &str = r#"
import errno, socket, sys, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EINPROGRESS):
            raise
    held.append(s)
print("held", len(held), flush=True)
time.sleep(secs)
"#;

/// The agent's CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    // After the command name in parentheses: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("ticks");
    field(14) + field(15)
}

#[test]
fn running_out_of_descriptors_does_not_spin_the_agent() {
    if !require_root("running_out_of_descriptors_does_not_spin_the_agent") {
        return;
    }
    // 256 descriptors: enough for the agent's programs, maps and
    // listeners, not for 300 more connections.
    let agent = Agent::start_under(&["prlimit", "--nofile=256"], &[]);
    let pid = agent.pid();
    let socket = agent.socket.to_str().expect("utf-8 socket path").to_owned();
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &socket, "300", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the connection holder");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("the holder's first line");
    assert_eq!(first.trim(), "held 300");
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(pid) - before;
    let _ = holder.wait();
    eprintln!("the agent used {spent} clock ticks in 3 s with 300 connections held");
    // Out of descriptors, accepting again at once spun a core (about 330
    // ticks in 3 s); pausing between tries, the agent stays near idle.
    assert!(spent <= 60, "the agent used {spent} clock ticks in 3 s");
    assert!(
        agent.log().contains("cannot accept connections"),
        "the agent ran out of descriptors and said so: {}",
        agent.log()
    );
    // The connections gone, it answers again.
    let status = wait_for("the agent to answer again", Duration::from_secs(10), || {
        agent.status_json()
    });
    assert_eq!(status["pid"], pid);
}
