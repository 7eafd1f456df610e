//! The soak's peers that are real programs: nginx serving HTTP/1.1 and
//! h2c, and, in the client namespace, curl (HTTP/2), a grpcio client and
//! psql, each a long-lived process (or one curl per batch of requests)
//! whose output is counted into the [`Tally`]. Every process is ended by
//! its pid when its handle is dropped, also when the soak fails.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{clients::Run, pace::Pace, paths::NOT_FOUND_PREFIX, tally::Kind};
use crate::{
    lab::Lab,
    peer::TempDir,
    servers::{self, Server},
};

/// nginx answering 200 on both ports, 404 under [`NOT_FOUND_PREFIX`]:
/// HTTP/1.1 on `http1_port`, h2c (HTTP/2 with prior knowledge) on
/// `http2_port`.
pub fn nginx(lab: &Lab, http1_port: u16, http2_port: u16) -> Server {
    let addr = &lab.server_v4;
    let locations = format!(
        "        location {NOT_FOUND_PREFIX} {{ return 404; }}
        location / {{ return 200 \"ok\\n\"; }}"
    );
    let http = format!(
        "    server {{
        listen {addr}:{http1_port};
{locations}
    }}
    server {{
        listen {addr}:{http2_port} http2;
{locations}
    }}"
    );
    servers::nginx(lab, http1_port, TempDir::new("soak-nginx"), &http)
}

/// A client program in the lab's client namespace: its stdout read line
/// by line as it comes, its stderr kept, killed by its pid if still
/// running when dropped.
pub struct ClientProcess {
    name: String,
    child: Child,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl ClientProcess {
    pub fn start(
        ns: &str,
        name: &str,
        args: &[&str],
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        let mut child = crate::peer::spawn_piped_in(ns, args);
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        Self {
            name: name.to_owned(),
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin piped, taken once")
    }

    /// Waits (at most `limit`) for the process to end; its stderr, or an
    /// error saying how it ended.
    pub fn finish(mut self, limit: Duration) -> Result<String, String> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + crate::scaled(limit);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return Err(format!("{} still running after {limit:?}", self.name)),
            }
        };
        if let Some(reader) = self.stdout.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default();
        if status.success() {
            Ok(stderr)
        } else {
            Err(format!("{} exited with {status}: {stderr}", self.name))
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The paced gRPC client of tests/peers/soak_grpc.py on one channel until
/// the deadline: four SayHello (OK) to one Lookup (NOT_FOUND).
pub fn grpc_calls(lab: &Lab, server: &Server, run: &Run, rate: f64) -> ClientProcess {
    let python = servers::grpc_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/soak_grpc.py");
    let seconds = run
        .deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    let (ip, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    let (seconds, rate) = (format!("{seconds:.1}"), rate.to_string());
    let tally = Arc::clone(&run.tally);
    run.tally.add(Kind::Connections);
    let args = [python.as_str(), script, &ip, &port, &seconds, &rate];
    ClientProcess::start(
        &lab.client_ns,
        "the gRPC client",
        &args,
        move |line| match line {
            "OK" => tally.add(Kind::GrpcOk),
            "NOT_FOUND" => tally.add(Kind::GrpcNotFound),
            other => tally.error(format_args!("gRPC call: {other}")),
        },
    )
}

/// One psql session fed a statement at a time until the deadline: `SELECT
/// n`, and one in ten a SELECT from a missing table (an error). Returns the
/// statements sent and the errors expected; fails if a statement was not
/// answered (by its row or its error).
pub fn psql_statements(
    client_ns: &str,
    server: SocketAddr,
    run: &Run,
    rate: f64,
) -> Result<(u64, u64), String> {
    let (ip, port) = (server.ip().to_string(), server.port().to_string());
    let args = [
        "psql", "-X", "-q", "-t", "-A", "-h", &ip, "-p", &port, "-U", "postgres", "-d", "postgres",
    ];
    let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&rows);
    let mut psql = ClientProcess::start(client_ns, "psql", &args, move |line| {
        if !line.is_empty() {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    run.tally.add(Kind::Connections);
    let mut stdin = psql.stdin();
    let (mut sent, mut errors) = (0u64, 0u64);
    for () in Pace::per_second(rate, run.deadline) {
        sent += 1;
        let statement = if sent % 10 == 0 {
            errors += 1;
            "SELECT * FROM soak_missing;\n".to_owned()
        } else {
            format!("SELECT {sent};\n")
        };
        if let Err(e) = stdin.write_all(statement.as_bytes()) {
            return Err(format!("psql's input: {e}"));
        }
        run.tally.add(Kind::Postgres);
    }
    drop(stdin);
    let stderr = psql.finish(Duration::from_secs(30))?;
    let failed = stderr.lines().filter(|l| l.contains("ERROR:")).count() as u64;
    let rows = rows.load(std::sync::atomic::Ordering::Relaxed);
    if rows + failed != sent || failed != errors {
        return Err(format!(
            "psql: {sent} statements sent, {rows} rows and {failed} errors back \
             ({errors} errors expected): {stderr}"
        ));
    }
    Ok((sent, errors))
}

/// Requests per nghttp run: they share its one HTTP/2 connection.
const HTTP2_BATCH: usize = 20;

/// HTTP/2 (h2c) requests from nghttp, [`HTTP2_BATCH`] distinct paths per
/// run on one connection, `rate` requests a second on average. (curl
/// 7.88 fails every request after the first on a reused h2c connection.)
pub fn http2_requests(client_ns: &str, server: SocketAddr, run: &Run, rate: f64) {
    crate::peer::require_program("nghttp");
    let mut lane = run.paths.lane();
    for () in Pace::per_second(rate / HTTP2_BATCH as f64, run.deadline) {
        let paths: Vec<String> = (0..HTTP2_BATCH).map(|_| lane.next_path()).collect();
        run.tally.add_n(Kind::Paths, paths.len() as u64);
        run.tally.add(Kind::Connections);
        let mut nghttp = Command::new("ip");
        // -n: no output of the bodies; -s: a line per request (its
        // status and path).
        nghttp
            .args(["netns", "exec", client_ns, "nghttp", "-ns", "-t", "20"])
            .args(paths.iter().map(|p| format!("http://{server}{p}")));
        let Some(out) = crate::output_within(&mut nghttp, Duration::from_secs(30)) else {
            run.tally.error("nghttp did not finish within 30 s");
            continue;
        };
        let answered = statuses(&String::from_utf8_lossy(&out.stdout));
        for path in &paths {
            let expected = if path.starts_with(NOT_FOUND_PREFIX) {
                "404"
            } else {
                "200"
            };
            match answered.iter().find(|(p, _)| p == path) {
                Some((_, status)) if status == expected => run.tally.add(Kind::Http2),
                other => run.tally.error(format_args!(
                    "HTTP/2 {path}: {other:?} instead of {expected}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        }
    }
}

/// (path, status) of each request in `nghttp -s`'s statistics: rows of
/// `id responseEnd requestStart process code size path`.
fn statuses(stats: &str) -> Vec<(String, String)> {
    stats
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [id, _, _, _, code, _, path] if id.parse::<u32>().is_ok() => {
                    Some((path.to_owned(), code.to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}
