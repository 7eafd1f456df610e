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
pub mod lab;
pub mod node;
pub mod otlp;
pub mod peer;
pub mod pods;
pub mod prometheus;
pub mod servers;
pub mod sql;
pub mod steer;
pub mod traffic;

use std::{
    process::{Command, Output},
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

/// A port no other test uses (the agent sees the whole node's traffic, so
/// each test filters its flows by its own server port).
pub fn unique_port(offset: u16) -> u16 {
    20_000 + (std::process::id() % 1000) as u16 * 20 + offset
}
