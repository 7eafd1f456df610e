//! `cargo xtask vm-test`: the agent and its core root tests on the kernels
//! production nodes run (Debian's 5.10, 6.1 and 6.12 in qemu, and the
//! machine's own 6.18).
//!
//! Each kernel boots under virtme-ng with the machine's root filesystem
//! shared read-only, so the guest runs the very binaries built here, with
//! the test peers (redis, nginx, dnsmasq...) installed on the machine.
//! Everything the matrix downloads or writes lives under
//! `target/vm/` (the results of a run in `target/vm/results/<kernel>/`).

mod guest;
mod kernels;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent;
use crate::cmd::{find_program, is_root, read, run, say};
use crate::setup::{self, Env};

/// What the guests need on the machine: qemu, and for virtme-ng's
/// initramfs busybox, depmod and `file` (it reads the kernel's version).
const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "file"];

/// virtme-ng from PyPI, pinned: its command line is part of this file.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// The core root tests, run on every kernel.
pub const CORE_TESTS: &[&str] = &[
    "tcp",
    "udp",
    "lifecycle",
    "l7_http",
    "l7_http2",
    "l7_dns",
    "l7_redis",
];

/// A guest gets this long for the start-up check and the core tests
/// under emulation.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

#[derive(clap::Args)]
pub struct Options {
    /// Kernels to test: 5.10, 6.1, 6.12, 6.18 (the machine's own), or all;
    /// repeat or separate with commas.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    kernel: Vec<String>,
    /// Test binaries (tests/tests/NAME.rs) to run in each guest.
    #[arg(long, value_delimiter = ',', default_values_t = CORE_TESTS.iter().map(|s| s.to_string()))]
    tests: Vec<String>,
    /// After `--`: arguments for every test binary (name filters).
    #[arg(last = true)]
    harness: Vec<String>,
}

impl Options {
    /// The options `cargo xtask test` runs the matrix with.
    pub fn for_ci(kernels: &[&str]) -> Self {
        Self {
            kernel: kernels.iter().map(|s| s.to_string()).collect(),
            tests: CORE_TESTS.iter().map(|s| s.to_string()).collect(),
            harness: Vec::new(),
        }
    }
}

pub fn vm_test(options: &Options) -> Result<()> {
    if !is_root()? {
        bail!("the matrix installs packages and runs root tests: run it as root");
    }
    let env = setup::setup()?;
    vm_test_with(&env, options)
}

/// The matrix with setup already done (from `cargo xtask test`).
pub fn vm_test_with(env: &Env, options: &Options) -> Result<()> {
    let series = chosen(&options.kernel)?;
    let dir = agent::target_dir(env)?.join("vm");
    setup::install_packages("vm-test packages", PACKAGES)?;
    let vng = virtme_ng(&dir)?;
    let bin = agent::build(env)?;
    let tests = build_tests(env, &options.tests)?;
    let mut failed = Vec::new();
    for s in series {
        let started = Instant::now();
        let outcome = one_kernel(s, &dir, &vng, &bin, &tests, options);
        let took = started.elapsed().as_secs();
        match outcome {
            Ok(Some(line)) => say(format_args!(
                "kernel {}: PASSED in {took}s ({line})",
                s.name
            )),
            Ok(None) => say(format_args!("kernel {}: skipped", s.name)),
            Err(e) => {
                say(format_args!(
                    "kernel {}: FAILED after {took}s: {e:#}",
                    s.name
                ));
                failed.push(s.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the matrix failed on {}; see {}/results/<kernel>/",
            failed.join(", "),
            dir.display()
        );
    }
    Ok(())
}

fn chosen(names: &[String]) -> Result<Vec<&'static kernels::Series>> {
    if names.iter().any(|n| n == "all") {
        return Ok(kernels::SERIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            kernels::SERIES
                .iter()
                .find(|s| s.name == n)
                .with_context(|| format!("--kernel {n}: not one of 5.10, 6.1, 6.12, 6.18, all"))
        })
        .collect()
}

/// Runs one kernel; `None` when it cannot run here (6.18 on another host).
fn one_kernel(
    series: &kernels::Series,
    dir: &Path,
    vng: &Path,
    bin: &Path,
    tests: &[(String, PathBuf)],
    options: &Options,
) -> Result<Option<String>> {
    let out = dir.join("results").join(series.name);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let plan = guest::Plan {
        agent: bin,
        tests,
        harness: &options.harness,
    };
    let script = out.join("run.sh");
    fs::write(&script, guest::script(&out, &plan))?;
    make_executable(&script)?;
    if let kernels::Source::Host = series.source {
        let release = read(Command::new("uname").arg("-r"))?;
        if !release.starts_with(&format!("{}.", series.name)) {
            say(format_args!(
                "kernel {}: this machine runs {release}; no package provides {}",
                series.name, series.name
            ));
            return Ok(None);
        }
        // The machine's own kernel: the same script, without a VM.
        run(Command::new("sh").arg(&script))?;
    } else {
        let kernel = kernels::fetch(series, dir)?;
        say(format_args!(
            "kernel {}: booting {}",
            series.name, kernel.package
        ));
        guest::boot(vng, &kernel.image, &out, &script, GUEST_TIMEOUT)?;
    }
    let verdict = guest::verdict(&out);
    let summary = format!(
        "{}: agent {}, {}",
        if verdict.kernel.is_empty() {
            "no kernel line"
        } else {
            &verdict.kernel
        },
        if verdict.agent_started {
            "started"
        } else {
            "did NOT start"
        },
        verdict
            .tests
            .iter()
            .map(|(name, rc)| format!("{name} {}", if *rc == 0 { "ok" } else { "FAILED" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !verdict.passed(tests.len()) {
        bail!(
            "{summary}{}; logs in {}",
            if verdict.finished {
                ""
            } else {
                ", the guest did not finish"
            },
            out.display()
        );
    }
    Ok(Some(summary))
}

/// virtme-ng in a virtual environment under `dir` (installed once).
fn virtme_ng(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let vng = venv.join("bin").join("vng");
    if vng.is_file() {
        return Ok(vng);
    }
    let python = find_program("python3", None).context("python3 is not installed")?;
    run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", VIRTME_NG]))?;
    if !vng.is_file() {
        bail!("pip installed {VIRTME_NG} but {} is missing", vng.display());
    }
    Ok(vng)
}

/// Builds the chosen test binaries (release, like the agent) and returns
/// (name, executable) for each.
fn build_tests(env: &Env, names: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut cargo = env.cargo();
    cargo.args([
        "test",
        "--release",
        "-p",
        "weft-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for name in names {
        cargo.args(["--test", name]);
    }
    let json = read(&mut cargo)?;
    let mut found = Vec::new();
    for line in json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) else {
            continue;
        };
        if names.iter().any(|n| n == name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if found.len() != names.len() {
        bail!("built {} test binaries for {names:?}", found.len());
    }
    Ok(found)
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}
