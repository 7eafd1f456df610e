//! `cargo xtask test`: the whole suite, exactly as CI runs it (`.ci/run`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::agent;
use crate::cmd::{is_root, run, say};
use crate::setup::{self, Env};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Only the unit tests (`--lib --bins`), which need no root.
    #[arg(long)]
    unit_only: bool,
    /// Kernels of the virtual-machine matrix (`cargo xtask vm-test`, core
    /// root tests) run after the whole suite; `none` skips it. CI runs the
    /// default: the production kernels other than this machine's, about
    /// 25 minutes side by side on two cores. Not run when arguments for
    /// `cargo test` select part of the suite.
    #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12")]
    vm_kernels: Vec<String>,
    /// Skip the core root tests' second run on the older kernels' path
    /// (byte counts and payloads at the syscall exits, forced), which
    /// otherwise follows the whole suite.
    #[arg(long)]
    no_older_kernels_path: bool,
    /// Seconds each fuzz target runs (`cargo xtask fuzz`) after the root
    /// tests; 0 skips fuzzing. Not run when arguments for `cargo test`
    /// select part of the suite.
    #[arg(long, default_value_t = 20)]
    fuzz_seconds: u64,
    /// After `--`: arguments for `cargo test` (a test name filter,
    /// `--test NAME`); after a second `--`: for the test harness
    /// (`--nocapture`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn test(options: &Options) -> Result<()> {
    if !options.unit_only && !is_root()? {
        bail!(
            "the root integration tests load eBPF programs and create network namespaces: \
             run `sudo -E cargo xtask test` (if sudo then finds no cargo: \
             `sudo -E env PATH=\"$PATH\" cargo xtask test`), \
             or `cargo xtask test --unit-only` for the tests that need no root"
        );
    }
    let started = Instant::now();
    let result = setup::setup().and_then(|env| stages(&env, options));
    let elapsed = minutes(started.elapsed());
    match &result {
        Ok(()) => say(format_args!("tests passed in {elapsed}")),
        Err(_) => say(format_args!("tests FAILED after {elapsed}")),
    }
    result
}

fn stages(env: &Env, options: &Options) -> Result<()> {
    if !options.no_lint {
        run(env.cargo().args(["fmt", "--all", "--", "--check"]))?;
        let clippy = [
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ];
        run(env.cargo().args(clippy))?;
    }
    let (cargo_args, harness_args) = match options.args.iter().position(|a| a == "--") {
        Some(i) => (&options.args[..i], &options.args[i + 1..]),
        None => (&options.args[..], &[][..]),
    };
    let mut harness = Vec::new();
    let mut test = if options.unit_only {
        let mut test = cargo_test(env);
        test.args(["--workspace", "--lib", "--bins"]);
        test
    } else {
        let mut test = root_tests(env)?;
        test.arg("--workspace");
        // The root tests share kernel state (maps, hooks, namespaces).
        harness.push("--test-threads=1");
        test
    };
    // One `--` for ours and the user's: a second one would end libtest's
    // options and turn the rest into name filters.
    test.args(cargo_args);
    harness.extend(harness_args.iter().map(String::as_str));
    if !harness.is_empty() {
        test.arg("--").args(harness);
    }
    if options.unit_only {
        return run(&mut test);
    }
    run(&mut on_a_fresh_node(&test))?;
    if options.args.is_empty() && !options.no_older_kernels_path {
        older_kernels_path(env)?;
    }
    if options.args.is_empty() && options.fuzz_seconds > 0 {
        let fuzz = crate::fuzz::Options {
            seconds: options.fuzz_seconds,
            targets: Vec::new(),
        };
        crate::fuzz::fuzz(env, &fuzz)?;
    }
    let matrix = options.args.is_empty() && !options.vm_kernels.iter().any(|k| k == "none");
    if matrix {
        let kernels: Vec<&str> = options.vm_kernels.iter().map(String::as_str).collect();
        crate::vm::vm_test_with(env, &crate::vm::Options::for_ci(&kernels))?;
    }
    Ok(())
}

/// `cargo test` as every stage runs it: every test binary runs even when
/// one fails, so one failure does not hide the others (the run still
/// fails).
fn cargo_test(env: &Env) -> Command {
    let mut test = env.cargo();
    test.args(["test", "--no-fail-fast"])
        .env("RUST_BACKTRACE", "1");
    test
}

/// `cargo test` for the root tests: release build, the agent built and
/// named, the tools the tests call, and root tests required (not skipped).
pub(crate) fn root_tests(env: &Env) -> Result<Command> {
    let bin = agent::build(env)?;
    let mut test = cargo_test(env);
    test.arg("--release")
        .env("WEFT_BIN", bin)
        .env(
            "WEFT_KUBERNETES_VALIDATE",
            crate::deploy_tools::kubernetes_validate_path()?,
        )
        .env("WEFT_OTLP_PYTHON", crate::python_venvs::OTLP.python_path()?)
        .env(
            "WEFT_OPENSSL11_PYTHON",
            crate::python_venvs::OPENSSL_1_1.python_path()?,
        )
        .env("WEFT_REQUIRE_ROOT_TESTS", "1");
    Ok(test)
}

/// The root tests whose figures must hold on kernels before 6.3 too.
const OLDER_KERNEL_PATH_TESTS: &[&str] =
    &["tcp", "udp", "l7_http", "l7_http2", "l7_dns", "l7_redis"];

/// The core root tests again, with the agent counting bytes and capturing
/// payloads at the data syscalls' exits as it does on kernels before 6.3
/// (`WEFT_FORCE_SYSCALL_EXIT_COUNTS`): that path is proven at native speed
/// on every run, not only in the (emulated) kernel matrix.
fn older_kernels_path(env: &Env) -> Result<()> {
    say(format_args!(
        "the core root tests again, with the older kernels' byte counts (syscall exits)"
    ));
    let mut test = root_tests(env)?;
    test.args(["-p", "weft-tests"])
        .env("WEFT_FORCE_SYSCALL_EXIT_COUNTS", "1");
    for name in OLDER_KERNEL_PATH_TESTS {
        test.args(["--test", name]);
    }
    test.args(["--", "--test-threads=1"]);
    run(&mut on_a_fresh_node(&test))
}

/// The mounts a fresh node boots without: these machines, and many
/// nodes, mount neither tracefs nor bpffs at boot.
const FRESH_NODE_UNMOUNTED: &[&str] = &[
    "/sys/kernel/debug/tracing",
    "/sys/kernel/tracing",
    "/sys/fs/bpf",
];

/// `cmd` in a private mount namespace where tracefs and bpffs start
/// unmounted, as on a fresh node, whatever an earlier run (or another tool)
/// mounted on this machine. A test that passes only because something was
/// mounted before it then fails here too; and what the tests mount stays in
/// the namespace.
pub(crate) fn on_a_fresh_node(cmd: &Command) -> Command {
    let script = format!(
        "for m in {}; do while mountpoint -q \"$m\"; do umount -l \"$m\" || exit 1; done; done\n\
         echo '[xtask] root tests in a private mount namespace: tracefs and bpffs unmounted, as on a fresh node' >&2\n\
         exec \"$@\"",
        FRESH_NODE_UNMOUNTED.join(" ")
    );
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

fn minutes(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
