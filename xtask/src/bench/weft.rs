//! The weft agent under test: the release binary, run as a node agent (root
//! network namespace, its own cgroup) with its own metrics address and API
//! socket, so that it never meets another agent on the machine.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::lab::Lab;
use super::measure::BpfObjects;
use super::proc::{Proc, pause, wait_for};
use crate::cmd::read;

/// How weft is started in one configuration: extra arguments and, when
/// set, a configuration file (YAML) passed with `--config`.
#[derive(Clone, Debug, Default)]
pub struct Mode {
    pub args: Vec<String>,
    pub config: Option<String>,
}

impl Mode {
    /// For the report: what this mode changes.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.args.is_empty() {
            parts.push(format!("arguments `{}`", self.args.join(" ")));
        }
        if let Some(config) = &self.config {
            parts.push(format!("configuration `{}`", config.trim()));
        }
        if parts.is_empty() {
            "the defaults".to_owned()
        } else {
            parts.join(" and ")
        }
    }
}

/// How weft's L7 is switched: B1 runs `off`, B2 runs `on`.
#[derive(Clone, Debug)]
pub struct L7Switch {
    pub on: Mode,
    pub off: Mode,
}

/// `weft cleanup`: removes the steering a B3 agent left pinned. A failure
/// is reported, not fatal (the next agent with no service removes it too).
pub fn cleanup(bin: &Path) {
    match Command::new(bin).arg("cleanup").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "[bench] weft cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("[bench] cannot run weft cleanup: {e}"),
    }
}

/// Reads of the counters at most while waiting for the agent to settle.
const SETTLE_READS: u32 = 30;
/// L7 records per read interval that still count as settled: the bench's
/// own reads of the metrics page.
const SETTLED_L7: f64 = 4.0;

/// Why B2 does not run on an agent without L7.
pub const NO_L7: &str = "this weft has no L7 (no `l7_capture_bytes` in `weft agent --print-config`, \
                         no `--l7` or `--no-l7` in `weft agent --help`)";

/// Finds how to turn L7 on and off. The bench's `--weft-l7-args` /
/// `--weft-l4-args` win; else the configuration field `l7_capture_bytes`
/// (0 turns L7 off; on by default) when `weft agent --print-config` shows
/// it; else the flags `--l7` (off by default) or `--no-l7` (on by default)
/// when `weft agent --help` lists them. `Ok(None)`: this agent has no L7
/// (B1 runs it as it is; B2 cannot run). An error when L7 is mentioned with
/// another switch: B1 could not be sure to run L4 only. When the switch
/// changes, teach it here or pass the arguments.
pub fn l7_switch(bin: &Path, on: Option<&str>, off: Option<&str>) -> Result<Option<L7Switch>> {
    let args = |s: Option<&str>| Mode {
        args: s
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        config: None,
    };
    if on.is_some() || off.is_some() {
        return Ok(Some(L7Switch {
            on: args(on),
            off: args(off),
        }));
    }
    let config = read(Command::new(bin).args(["agent", "--print-config"]))?;
    if config.lines().any(|l| l.starts_with("l7_capture_bytes:")) {
        return Ok(Some(L7Switch {
            on: Mode::default(),
            off: Mode {
                args: Vec::new(),
                config: Some("l7_capture_bytes: 0\n".into()),
            },
        }));
    }
    let help = read(Command::new(bin).args(["agent", "--help"]))?;
    let has = |flag: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag)
    };
    if has("--no-l7") {
        return Ok(Some(L7Switch {
            on: Mode::default(),
            off: args(Some("--no-l7")),
        }));
    }
    if has("--l7") {
        return Ok(Some(L7Switch {
            on: args(Some("--l7")),
            off: Mode::default(),
        }));
    }
    if (help + &config).to_ascii_lowercase().contains("l7") {
        bail!(
            "weft mentions L7 in `agent --help` or `agent --print-config` but the bench does not \
             know its switch: pass it with --weft-l7-args and --weft-l4-args"
        );
    }
    Ok(None)
}

pub struct Agent {
    proc: Proc,
    metrics: SocketAddr,
    socket: PathBuf,
    bin: PathBuf,
    /// The programs and maps it loaded.
    pub bpf: BpfObjects,
}

/// Counters read from the agent's metrics page.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// `weft_events_total`, all sources but `l7_parse_errors`.
    pub events: f64,
    /// `weft_events_total{source="l7_parse_errors"}`: L7 streams weft could
    /// not frame (not events lost for want of capacity).
    pub parse_errors: f64,
    /// `weft_events_lost_total`, per `source/stage`.
    pub lost: BTreeMap<String, f64>,
    /// L7 records made (`weft_events_total{source="l7_exchanges"}`): a
    /// request between two pods of this node is recorded twice (client,
    /// server).
    pub l7_requests: f64,
}

impl Agent {
    /// Starts `weft agent ARGS` and waits until it serves metrics (its
    /// programs are attached by then).
    pub fn start(bin: &Path, lab: &Lab, mode: &Mode) -> Result<Self> {
        let metrics = free_port()?;
        let socket = lab.dir.join("weft.sock");
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "agent".into(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--api-socket".into(),
            socket.display().to_string(),
        ];
        if let Some(config) = &mode.config {
            let path = lab.dir.join("weft.yaml");
            std::fs::write(&path, config)?;
            argv.extend(["--config".into(), path.display().to_string()]);
        }
        argv.extend(mode.args.iter().cloned());
        let procs = lab.agent_cgroup.join("cgroup.procs");
        let log = lab.dir.join("weft.log");
        let mut agent = Agent {
            proc: Proc::spawn("weft agent", &procs, &argv, &log, lab.path())?,
            metrics,
            socket,
            bin: bin.to_owned(),
            bpf: BpfObjects::default(),
        };
        let mut failed = None;
        let ready = wait_for("weft agent", Duration::from_secs(60), || {
            if let Err(e) = agent.proc.check_alive() {
                failed = Some(e);
                return true;
            }
            http_get(metrics, "/metrics").is_ok_and(|page| page.contains("weft_build_info"))
        });
        if let Some(e) = failed {
            return Err(e);
        }
        ready.with_context(|| format!("weft's log ends with:\n{}", agent.proc.log_tail()))?;
        agent.bpf = BpfObjects::of_process(agent.pid())?;
        if agent.bpf.programs.is_empty() {
            bail!("weft is running but holds no BPF program");
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the agent with SIGTERM (it detaches its programs).
    pub fn stop(mut self) {
        self.proc.stop();
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive()
    }

    /// Reads the event and loss counters from the metrics page.
    pub fn counters(&self) -> Result<Counters> {
        let page = http_get(self.metrics, "/metrics")?;
        Ok(parse_counters(&page))
    }

    /// The counters once the agent has caught up with what the load left
    /// queued (at B2's maximum it parses a backlog for seconds after the
    /// load stops, which would count in the next point): read every
    /// `interval` until the L7 count moves by at most a few (the bench's
    /// own reads of this page are parsed as HTTP too), at most
    /// [`SETTLE_READS`] times.
    pub fn settled_counters(&self, interval: Duration) -> Result<Counters> {
        let mut last = self.counters()?;
        for _ in 0..SETTLE_READS {
            pause(interval)?;
            let now = self.counters()?;
            let moved = now.l7_requests - last.l7_requests;
            last = now;
            if moved <= SETTLED_L7 {
                break;
            }
        }
        Ok(last)
    }

    /// `weft status -o json`, for the report.
    pub fn status(&self) -> Result<Value> {
        let out = read(
            Command::new(&self.bin)
                .args(["status", "-o", "json", "--api-socket"])
                .arg(&self.socket),
        )?;
        serde_json::from_str(&out).context("parsing `weft status -o json`")
    }

    /// Resident and peak resident memory of the agent process, in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .with_context(|| format!("no {name} in /proc/PID/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Sums `weft_events_total` and `weft_events_lost_total` by labels from an
/// exposition page.
fn parse_counters(page: &str) -> Counters {
    let mut counters = Counters::default();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches(['"', '}']))
                .unwrap_or("?")
        };
        match name {
            "weft_events_total" if label("source") == "l7_parse_errors" => {
                counters.parse_errors += value;
            }
            // Every L7 record, of either side: a database call has only a
            // client-side duration metric, counted once when both sides
            // are seen, so the histograms would undercount them.
            "weft_events_total" if label("source") == "l7_exchanges" => {
                counters.l7_requests += value;
                counters.events += value;
            }
            "weft_events_total" => counters.events += value,
            "weft_events_lost_total" => {
                let key = format!("{}/{}", label("source"), label("stage"));
                *counters.lost.entry(key).or_default() += value;
            }
            _ => {}
        }
    }
    counters
}

/// A free TCP port on loopback for the agent's metrics.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// A plain HTTP/1.0 GET of `path` (the agent's metrics on loopback).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("no HTTP header from {addr}");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path} from {addr}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_counters;

    #[test]
    fn sums_events_and_losses_by_label() {
        let page = "# HELP weft_events Events\n\
                    weft_events_total{source=\"tcp_events\"} 10\n\
                    weft_events_total{source=\"udp_packet\"} 5\n\
                    weft_events_total{source=\"l7_parse_errors\"} 2\n\
                    weft_events_total{source=\"l7_exchanges\"} 13\n\
                    weft_events_lost_total{source=\"tcp_events\",stage=\"kernel_ring\"} 3\n\
                    weft_events_lost_total{source=\"udp_packet\",stage=\"flow_table_full\"} 0\n\
                    weft_events_lost_created 1.7e9\n\
                    http_server_request_duration_seconds_count{http_request_method=\"GET\"} 7\n\
                    http_client_request_duration_seconds_count{http_request_method=\"GET\"} 6\n\
                    http_server_request_duration_seconds_bucket{le=\"+Inf\"} 7\n";
        let counters = parse_counters(page);
        assert_eq!(counters.events, 28.0);
        assert_eq!(counters.parse_errors, 2.0);
        assert_eq!(counters.l7_requests, 13.0);
        assert_eq!(counters.lost["tcp_events/kernel_ring"], 3.0);
        assert_eq!(counters.lost["udp_packet/flow_table_full"], 0.0);
    }
}
