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
mod table;

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
    // uprobes on OpenSSL (the TLS plaintext), every kernel.
    "l7_tls_plaintext",
];

/// A guest gets this long for the start-up check and the core tests
/// under emulation.
/// The guests run one after the other, so a guest whose kernel hangs
/// must leave the others, and CI's 90 minutes, enough time.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// One test binary gets this long in a guest (the slowest, `tcp`, takes
/// about 400 s on 5.10): one that hangs is stopped, with what its
/// processes were doing, and the others still run.
const TEST_LIMIT: Duration = Duration::from_secs(15 * 60);

/// How much of a guest's console (its kernel's messages) a run prints
/// when the guest did not finish.
const CONSOLE_TAIL_LINES: usize = 60;

/// What the run prints of a failed test binary's log (CI keeps only what
/// the run printed, not the results folder): the lines from each panic
/// on, and the log's end.
const PANIC_LINES: usize = 40;
const LOG_TAIL_LINES: usize = 80;

#[derive(clap::Args)]
pub struct Options {
    /// Kernels to test: 5.10, 6.1, 6.12, 6.18 (the machine's own), or all;
    /// repeat or separate with commas.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    kernel: Vec<String>,
    /// Test binaries (tests/tests/NAME.rs) to run in each guest.
    #[arg(long, value_delimiter = ',', default_values_t = CORE_TESTS.iter().map(|s| s.to_string()))]
    tests: Vec<String>,
    /// Write the kernel table this run printed into docs/kernels.md (between
    /// its kernel-table markers).
    #[arg(long)]
    update_docs: bool,
    /// Guests running at once. Each runs its 2 vCPUs on one host thread:
    /// more guests than the machine has CPUs slow each other down
    /// unevenly, and a guest that spins starves the others'
    /// timing-sensitive tests [default: the machine's CPUs, at most 4]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    jobs: Option<u32>,
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
            update_docs: false,
            jobs: None,
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
    // Downloads one at a time (one apt directory), then the guests run,
    // `--jobs` at once (by default one per host CPU: a guest is bound by
    // its one emulation thread).
    let jobs: Vec<_> = series.iter().map(|s| (*s, guest_kernel(s, &dir))).collect();
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = options.jobs.map_or(cpus.min(4), |n| n as usize);
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(series.len()) {
            scope.spawn(|| {
                loop {
                    let Some((s, kernel)) = jobs.lock().expect("job queue").next() else {
                        return;
                    };
                    let started = Instant::now();
                    let outcome =
                        kernel.and_then(|k| one_kernel(s, k, &dir, &vng, &bin, &tests, options));
                    let took = started.elapsed().as_secs();
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push((s.name, outcome, took));
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by_key(|(name, ..)| series.iter().position(|s| s.name == *name));
    let ran: Vec<&str> = outcomes
        .iter()
        .filter(|(_, outcome, _)| !matches!(outcome, Ok(None)))
        .map(|(name, ..)| *name)
        .collect();
    kernel_table(&dir.join("results"), &ran, options)?;
    let mut failed = Vec::new();
    for (name, outcome, took) in outcomes {
        match outcome {
            Ok(Some(line)) => say(format_args!("kernel {name}: PASSED in {took}s ({line})")),
            Ok(None) => say(format_args!("kernel {name}: skipped")),
            Err(e) => {
                say(format_args!("kernel {name}: FAILED after {took}s: {e:#}"));
                failed.push(name);
            }
        }
    }
    // Every guest's failures in a few lines first, then each one's logs:
    // a reader of a cut output still sees them all.
    let results = dir.join("results");
    for name in &failed {
        for line in failure_summary(&results.join(name), &tests) {
            say(format_args!("kernel {name}: {line}"));
        }
    }
    for name in &failed {
        print_failed_logs(&results.join(name), &tests);
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

/// Prints the kernel table of this run, keeps it in
/// `results/kernel-table.md`, and compares it with the one in
/// docs/kernels.md (or writes it there with `--update-docs`).
fn kernel_table(results: &Path, kernels: &[&str], options: &Options) -> Result<()> {
    if kernels.is_empty() {
        return Ok(());
    }
    let page_path = crate::cmd::workspace_root().join("docs/kernels.md");
    let page = fs::read_to_string(&page_path)
        .with_context(|| format!("reading {}", page_path.display()))?;
    let series: Vec<&str> = kernels::SERIES.iter().map(|s| s.name).collect();
    let made = table::table(results, &series, kernels, table::in_page(&page));
    fs::write(results.join("kernel-table.md"), &made)?;
    say(format_args!(
        "the kernel table (rows of {} from this run):\n{made}",
        kernels.join(", ")
    ));
    if options.update_docs {
        fs::write(&page_path, table::replace_in(&page, &made)?)?;
        say(format_args!("written into {}", page_path.display()));
    } else if table::in_page(&page) != Some(made.trim_end()) {
        say(format_args!(
            "the kernel table of docs/kernels.md differs from this run's (`--update-docs` writes it)"
        ));
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

/// The kernel to boot for `series`, fetched; `None` for the machine's own.
fn guest_kernel(series: &kernels::Series, dir: &Path) -> Result<Option<kernels::Kernel>> {
    match series.source {
        kernels::Source::Host => Ok(None),
        _ => kernels::fetch(series, dir).map(Some),
    }
}

/// Runs one kernel (`kernel`: its guest's, `None` for the machine's own);
/// `None` when it cannot run here (6.18 on another host).
fn one_kernel(
    series: &kernels::Series,
    kernel: Option<kernels::Kernel>,
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
        test_limit: TEST_LIMIT,
    };
    let script = out.join("run.sh");
    fs::write(&script, guest::script(&out, &plan))?;
    make_executable(&script)?;
    if let Some(kernel) = kernel {
        say(format_args!(
            "kernel {}: booting {}",
            series.name, kernel.package
        ));
        guest::boot(vng, &kernel.image, &out, &script, GUEST_TIMEOUT)?;
    } else {
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

/// Prints what matters of the log of each test binary that failed or
/// never reported in the guest whose results are in `out`.
fn print_failed_logs(out: &Path, tests: &[(String, PathBuf)]) {
    let verdict = guest::verdict(out);
    if !verdict.finished {
        let console = fs::read_to_string(out.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
        say(format_args!(
            "{}: the guest did not finish; the end of its console:\n{}",
            out.display(),
            lines[from..].join("\n")
        ));
    }
    for (name, rc, log) in failed_tests(&verdict, out, tests) {
        let Some(log) = log else {
            continue;
        };
        say(format_args!(
            "{}: {name}'s log ({}), its panics and its end:\n{}",
            out.display(),
            match rc {
                Some(rc) => format!("exit status {rc}"),
                None => "it never reported".to_owned(),
            },
            log_excerpt(&log)
        ));
    }
}

/// The test binaries of `tests` that did not pass in a guest (its
/// `verdict`, its results in `out`): name, exit status (`None`: it never
/// reported) and log, if it left one.
fn failed_tests<'a>(
    verdict: &guest::Verdict,
    out: &Path,
    tests: &'a [(String, PathBuf)],
) -> Vec<(&'a str, Option<i32>, Option<String>)> {
    (tests.iter())
        .filter_map(|(name, _)| {
            let rc = (verdict.tests.iter())
                .find(|(n, _)| n == name)
                .map(|(_, rc)| *rc);
            (rc != Some(0)).then(|| {
                let log = fs::read_to_string(out.join("tests").join(format!("{name}.log")));
                (name.as_str(), rc, log.ok())
            })
        })
        .collect()
}

/// For each test binary that failed in the guest whose results are in
/// `out`: each panic's place and message, a line each.
fn failure_summary(out: &Path, tests: &[(String, PathBuf)]) -> Vec<String> {
    let verdict = guest::verdict(out);
    let mut lines = Vec::new();
    for (name, _, log) in failed_tests(&verdict, out, tests) {
        let log = log.unwrap_or_default();
        let found: Vec<String> = (log.lines().zip(log.lines().skip(1)))
            .filter(|(line, _)| line.contains("panicked at"))
            .map(|(line, message)| format!("{name}: {line} {message}"))
            .collect();
        if found.is_empty() {
            lines.push(format!("{name}: failed without a panic in its log"));
        }
        lines.extend(found);
    }
    lines
}

/// The lines of `log` from each panic on ([`PANIC_LINES`] each) and its
/// last [`LOG_TAIL_LINES`], in order, with `...` where lines are left out.
fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut keep = vec![false; lines.len()];
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            let end = (i + PANIC_LINES).min(lines.len());
            keep[i..end].iter_mut().for_each(|k| *k = true);
        }
    }
    let tail = lines.len().saturating_sub(LOG_TAIL_LINES);
    keep[tail..].iter_mut().for_each(|k| *k = true);
    let mut excerpt = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if keep[i] {
            excerpt.push(*line);
        } else if i == 0 || keep[i - 1] {
            excerpt.push("...");
        }
    }
    excerpt.join("\n")
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
    // In the order asked for (cargo reports them as they finish), so that
    // every guest runs them, and the kernel table lists them, alike.
    found.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    Ok(found)
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_guest_is_summed_up_by_its_panics() {
        let out = std::env::temp_dir().join(format!("weft-xtask-summary-{}", std::process::id()));
        fs::create_dir_all(out.join("tests")).unwrap();
        let status = "kernel 5.10\nagent started\ntest tcp 0 8 0\ntest udp 101 1 1\n\
                      test l7_http 137 0 0\ndone\n";
        fs::write(out.join("status"), status).unwrap();
        let udp = "running 2 tests\nthread 'a' (7) panicked at tests/udp.rs:9:5:\n\
                   datagrams: 3 != 4\nstack backtrace:\n";
        fs::write(out.join("tests/udp.log"), udp).unwrap();
        fs::write(out.join("tests/l7_http.log"), "killed\n").unwrap();
        let tests: Vec<(String, PathBuf)> = ["tcp", "udp", "l7_http"]
            .iter()
            .map(|n| (n.to_string(), PathBuf::new()))
            .collect();
        let summary = failure_summary(&out, &tests);
        fs::remove_dir_all(&out).unwrap();
        assert_eq!(
            summary,
            [
                "udp: thread 'a' (7) panicked at tests/udp.rs:9:5: datagrams: 3 != 4",
                "l7_http: failed without a panic in its log",
            ]
        );
    }

    #[test]
    fn excerpt_keeps_panics_and_the_end() {
        let mut log: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
        log[10] = "thread 'x' panicked at tests/tcp.rs:1:1:".to_owned();
        let excerpt = log_excerpt(&log.join("\n"));
        let lines: Vec<&str> = excerpt.lines().collect();
        assert_eq!(lines[0], "...");
        assert_eq!(lines[1], "thread 'x' panicked at tests/tcp.rs:1:1:");
        assert_eq!(lines[PANIC_LINES], "line 49");
        assert_eq!(lines[PANIC_LINES + 1], "...");
        assert_eq!(lines[PANIC_LINES + 2], "line 220");
        assert_eq!(*lines.last().unwrap(), "line 299");
        assert_eq!(lines.len(), 1 + PANIC_LINES + 1 + LOG_TAIL_LINES);
        assert_eq!(log_excerpt("a\nb"), "a\nb", "a short log is whole");
    }
}
