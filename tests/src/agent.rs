//! The real `weft` binary, started as an agent with its own metrics port and
//! API socket, and used as a client of it.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{output_within, thread_states, try_wait_for, wait_for};

/// How long a one-shot `weft` command may wait for the agent (stretched
/// under emulation).
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The binary under test: `$WEFT_BIN`, else the workspace's release build.
pub fn weft_bin() -> PathBuf {
    let path = std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/weft")
        });
    assert!(
        path.exists(),
        "weft binary not found at {} (build it with `cargo xtask build`, or set WEFT_BIN)",
        path.display()
    );
    path
}

/// Runs `weft ARGS` and returns its output (any exit status).
pub fn weft(args: &[&str]) -> Output {
    Command::new(weft_bin())
        .args(args)
        .output()
        .expect("run weft")
}

pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    pub metrics_port: u16,
    /// Where the harness reaches the metrics listener.
    metrics_ip: IpAddr,
    stderr_path: PathBuf,
}

/// The agent's own metrics address when no `--metrics-addr` is given.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// How an agent is started.
struct Launch<'a> {
    /// A command the agent runs under (`setpriv ...`), or none.
    wrapper: &'a [&'a str],
    /// The address the metrics listener is bound to, on a free port; `None`
    /// gives no `--metrics-addr` (the agent's default, 127.0.0.1:9464).
    metrics_ip: Option<&'a str>,
    /// `RUST_LOG`.
    log_filter: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Self {
            wrapper: &[],
            metrics_ip: Some("127.0.0.1"),
            log_filter: "info",
        }
    }
}

impl Agent {
    /// Starts an agent with `extra` flags and waits until it is ready.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// Starts `WRAPPER... weft agent ...` (e.g. `setpriv` with fewer
    /// capabilities) and waits until it is ready: its flow API answers and
    /// its `/readyz` says 200.
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Self {
        Self::launch(
            Launch {
                wrapper,
                ..Launch::default()
            },
            extra,
        )
    }

    /// Starts an agent whose metrics listener is bound to `metrics_ip` (as
    /// the DaemonSet binds `0.0.0.0`), on a free port.
    pub fn start_metrics_on(metrics_ip: &str, extra: &[&str]) -> Self {
        Self::launch(
            Launch {
                metrics_ip: Some(metrics_ip),
                ..Launch::default()
            },
            extra,
        )
    }

    /// Starts an agent without `--metrics-addr`: its metrics listen where
    /// the agent's default says ([`DEFAULT_METRICS_PORT`] on loopback).
    pub fn start_default_metrics(extra: &[&str]) -> Self {
        Self::launch(
            Launch {
                metrics_ip: None,
                ..Launch::default()
            },
            extra,
        )
    }

    /// Starts an agent logging what `RUST_LOG=log_filter` lets through.
    pub fn start_logging(log_filter: &str, extra: &[&str]) -> Self {
        Self::launch(
            Launch {
                log_filter,
                ..Launch::default()
            },
            extra,
        )
    }

    fn launch(launch: Launch<'_>, extra: &[&str]) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A virtual machine's shared folders cannot hold unix sockets: the
        // matrix (cargo xtask vm-test) points this at the guest's /run.
        let dir = std::env::var("WEFT_TEST_SOCKET_DIR").unwrap_or_else(|_| "/tmp".into());
        let socket = PathBuf::from(format!("{dir}/weft-test-{pid}-{n}.sock"));
        // The matrix keeps every agent's log (with the programs' rare-path
        // logs on) in its results; elsewhere a log lives as long as its test.
        let log_dir = std::env::var("WEFT_TEST_AGENT_LOG_DIR").ok();
        let stderr_path = PathBuf::from(format!(
            "{}/weft-test-{pid}-{n}.log",
            log_dir.as_deref().unwrap_or("/tmp")
        ));
        let bpf_log: &[&str] = if log_dir.is_some() && !extra.contains(&"--bpf-log") {
            &["--bpf-log"]
        } else {
            &[]
        };
        let (metrics_ip, metrics_port, metrics_flag) = metrics_listener(launch.metrics_ip);
        let stderr = std::fs::File::create(&stderr_path).expect("agent log file");
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(weft_bin());
                c
            }
            None => Command::new(weft_bin()),
        };
        let child = command
            .arg("agent")
            .args(metrics_flag)
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .args(bpf_log)
            .env("RUST_LOG", launch.log_filter)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start weft agent");
        let mut agent = Agent {
            child: Some(child),
            socket,
            metrics_port,
            metrics_ip,
            stderr_path,
        };
        let started = Instant::now();
        wait_for(
            "the agent to serve its flow API",
            Duration::from_secs(30),
            || {
                if let Some(status) = agent.try_exit() {
                    panic!("the agent exited at start ({status}):\n{}", agent.log());
                }
                let ready = agent
                    .http_get("/readyz")
                    .is_some_and(|(code, _)| code == 200);
                let ok = ready && agent.status_json().is_some() && agent.try_metrics().is_some();
                ok.then_some(())
            },
        );
        eprintln!("agent ready in {:?}", started.elapsed());
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `weft ARGS --api-socket <ours>`. The agent answers within a
    /// second; a client still waiting after [`CLIENT_LIMIT`] fails the
    /// test with what the agent's threads were doing.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(weft_bin());
        cmd.args(args).arg("--api-socket").arg(&self.socket);
        output_within(&mut cmd, CLIENT_LIMIT).unwrap_or_else(|| {
            panic!(
                "`weft {}` got no answer from the agent within {:?}; its threads:\n{}",
                args.join(" "),
                crate::scaled(CLIENT_LIMIT),
                thread_states(self.pid())
            )
        })
    }

    /// The non-zero losses of `weft status` (source, stage, total).
    pub fn losses(&self) -> Vec<(String, String, u64)> {
        let status = self.status_json().unwrap_or_default();
        status["losses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["total"].as_u64().unwrap_or(0) > 0)
            .map(|l| {
                (
                    l["source"].as_str().unwrap_or("").to_owned(),
                    l["stage"].as_str().unwrap_or("").to_owned(),
                    l["total"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    pub fn status_json(&self) -> Option<Value> {
        let out = self.client(&["status", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Whether the running kernel offers the feature `name` (a row of
    /// `weft status`): tests hold an older kernel to what the kernel table
    /// of docs/kernels.md says it does without a feature, not to what it
    /// lacks.
    /// Whether `weft status` lists feature `name` as unavailable (some
    /// rows appear only on the kernels that lack the feature).
    pub fn lacks_feature(&self, name: &str) -> bool {
        let status = self.status_json().expect("weft status -o json");
        status["features"]
            .as_array()
            .expect("features")
            .iter()
            .any(|f| f["name"] == name && f["available"] == false)
    }

    pub fn has_feature(&self, name: &str) -> bool {
        let status = self.status_json().expect("weft status -o json");
        let features = status["features"].as_array().expect("features");
        let row = features
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no feature {name:?} in {features:#?}"));
        row["available"].as_bool().expect("available")
    }

    /// Flow records matching `filters` (`weft flows -o jsonl FILTERS`).
    pub fn flows(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["flows", "-o", "jsonl"];
        args.extend_from_slice(filters);
        let out = self.client(&args);
        assert!(
            out.status.success(),
            "weft flows failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
            .collect()
    }

    /// Waits for a record of `event` among the flows matching `filters`.
    /// On a timeout, the panic message lists the records that did match
    /// the filters (what came instead).
    pub fn wait_flow(&self, filters: &[&str], event: &str, timeout: Duration) -> Value {
        let mut last = Vec::new();
        let found = try_wait_for(timeout, || {
            last = self.flows(filters);
            last.iter().find(|r| r["event"] == event).cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {:?} waiting for a `{event}` flow matching {filters:?}; \
                 the records matching were: {last:#?}; the agent's losses: {:?}",
                timeout * crate::timeout_scale(),
                self.losses()
            )
        })
    }

    /// `GET path` on the metrics listener: (status code, body), or `None`
    /// when it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        self.http_get_with(path, "")
    }

    /// [`Agent::http_get`] with more header lines (each ending in CRLF).
    pub fn http_get_with(&self, path: &str, headers: &str) -> Option<(u16, String)> {
        http_get((self.metrics_ip, self.metrics_port), path, headers)
    }

    fn try_metrics(&self) -> Option<String> {
        self.http_get("/metrics")
            .and_then(|(code, body)| (code == 200).then_some(body))
    }

    /// The metrics page in OpenMetrics, as Prometheus asks for it (with
    /// exemplars).
    pub fn openmetrics(&self) -> String {
        let (code, body) = self
            .http_get_with(
                "/metrics",
                "Accept: application/openmetrics-text; version=1.0.0\r\n",
            )
            .expect("metrics endpoint answers");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// The metrics page (Prometheus text format).
    pub fn metrics(&self) -> String {
        self.try_metrics().expect("metrics endpoint answers")
    }

    /// Sum of the samples of `name` whose labels include all of `labels`
    /// (`key="value"` strings). 0 when there is none.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Sends a signal and waits for the agent to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the agent did not exit within 20s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.signal_and_wait(libc::SIGTERM);
            if !status.success() && !std::thread::panicking() {
                panic!("the agent exited with {status}:\n{}", self.log());
            }
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
        if std::env::var_os("WEFT_TEST_AGENT_LOG_DIR").is_none() {
            let _ = std::fs::remove_file(&self.stderr_path);
        }
        // The agent removes its socket when it shuts down, but not when a
        // test killed it with SIGKILL.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Sum of a metric's samples (see [`Agent::metric_sum`]).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Where the harness reaches an agent's metrics bound to `ip` (`None`:
/// the agent's default), on which port, and the flag that says so.
fn metrics_listener(ip: Option<&str>) -> (IpAddr, u16, Vec<String>) {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let Some(ip) = ip else {
        return (loopback, DEFAULT_METRICS_PORT, Vec::new());
    };
    let port = free_port();
    let flag = vec!["--metrics-addr".to_owned(), format!("{ip}:{port}")];
    // An unspecified address (the DaemonSet's 0.0.0.0) is reached on loopback.
    let reach = ip
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(loopback);
    (reach, port, flag)
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `GET path` (HTTP/1.1, `Connection: close`, with `headers`: lines each
/// ending in CRLF) to `at`: (status code, body), or `None` when nothing
/// answers within 5 s.
pub fn http_get(at: (IpAddr, u16), path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(at).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    read_response(&mut s)
}

/// An HTTP response read to the end of the stream: (status code, body).
pub fn read_response(s: &mut impl Read) -> Option<(u16, String)> {
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// `port` on IPv4 loopback, for [`http_get`].
pub fn local(port: u16) -> (IpAddr, u16) {
    (IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

/// Whether a record on the agent's port is one of the harness's readiness
/// checks made while the programs were being loaded: the port is bound
/// but not listening then, so they were refused (a `fail`, and the SYN's
/// NO_SOCKET drop). Those are failed connects like any other, recorded as
/// such, not the agent's traffic. Kernels before 5.17 give no drop
/// reason: there the SYN's drop is NOT_REPORTED_BY_KERNEL.
pub fn refused_while_loading(record: &Value) -> bool {
    record["event"] == "fail"
        || (record["event"] == "drop"
            && ["NO_SOCKET", "NOT_REPORTED_BY_KERNEL"]
                .iter()
                .any(|r| record["drop_reason"] == *r))
}
