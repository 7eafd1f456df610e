//! Harness of the root integration tests (`tests/tests/*.rs`): a lab of
//! network namespaces, the real agent binary, and helpers to wait for its
//! flows and metrics.
//!
//! These tests load weft's real programs into the running kernel and drive
//! real traffic between namespaces that the test creates and removes. They
//! need root. Without root they are skipped with a loud message, unless
//! `WEFT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test` and so by CI), in
//! which case not being root is a failure.

pub mod agent;
pub mod apiserver;
pub mod dashboards;
pub mod follow;
pub mod image;
pub mod lab;
pub mod node;
pub mod otlp;
pub mod peer;
pub mod pods;
pub mod programs;
pub mod prometheus;
pub mod servers;
pub mod soak;
pub mod sql;
pub mod steer;
pub mod tls;
pub mod traffic;

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// True when the root tests can run; panics when they must run but can't.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("WEFT_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!(
            "{test}: root integration tests must run here (WEFT_REQUIRE_ROOT_TESTS=1) \
             but this is not root: run `sudo -E cargo xtask test`"
        );
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo -E cargo xtask test`)");
    false
}

/// Runs a command, panicking with its output when it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`Command::output`] with a bound: a command still running after
/// `limit` (stretched like every wait) is killed, by its pid, and `None`
/// is given. A client or peer that hangs then fails its test, with what
/// the caller can say about it, instead of stalling the whole run.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes while waiting: a full pipe would stall the child.
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + scaled(limit);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// What each thread of process `pid` is doing (name, state, CPU ticks
/// used, where it sleeps in the kernel): tells a stuck process that spins
/// from one that waits.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone");
    };
    let mut lines = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
        // `pid (comm) state ... utime stime` (fields 14 and 15): the
        // name may hold spaces, so split after its closing parenthesis.
        let (head, rest) = stat.rsplit_once(") ").unwrap_or(("", ""));
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        lines.push(format!(
            "  tid {} {comm}: state {}, {} CPU ticks, waits in {}",
            task.file_name().to_string_lossy(),
            fields.first().unwrap_or(&"?"),
            ticks(11) + ticks(12),
            if wchan.is_empty() { "-" } else { &wchan }
        ));
    }
    lines.sort();
    lines.join("\n")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
/// `WEFT_TEST_TIMEOUT_SCALE` (an integer) multiplies every wait: under
/// qemu's emulation (cargo xtask vm-test) a Python server takes seconds to
/// start.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    try_wait_for(timeout, f).unwrap_or_else(|| {
        panic!(
            "timed out after {:?} waiting for {what}",
            timeout * timeout_scale()
        )
    })
}

/// Polls `f` until it returns `Some`, or gives `None` after `timeout`
/// (stretched like [`wait_for`]'s).
pub fn try_wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout * timeout_scale();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `d` stretched by `WEFT_TEST_TIMEOUT_SCALE`, for waits that are not
/// polls (a channel's `recv_timeout` across the agent's start-up).
pub fn scaled(d: Duration) -> Duration {
    d * timeout_scale()
}

fn timeout_scale() -> u32 {
    std::env::var("WEFT_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// The Python of one of the virtual environments `cargo xtask setup`
/// makes (xtask/src/python_venvs.rs): `$VAR` (set by `cargo xtask test`),
/// else `~/.local/share/weft/DIR/bin/python`.
pub fn venv_python(var: &str, dir: &str, what: &str) -> String {
    if let Some(p) = std::env::var_os(var) {
        return p.to_string_lossy().into_owned();
    }
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".local/share/weft").join(dir).join("bin/python");
    assert!(
        p.is_file(),
        "no Python for {what} at {}: run `cargo xtask setup`",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A port no other test uses (the agent sees the whole node's traffic, so
/// each test filters its flows by its own server port).
pub fn unique_port(offset: u16) -> u16 {
    20_000 + (std::process::id() % 1000) as u16 * 20 + offset
}
