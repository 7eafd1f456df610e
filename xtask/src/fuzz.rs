//! `cargo xtask fuzz`: every cargo-fuzz target, each for a bounded time,
//! with the sanitizer-instrumented build (AddressSanitizer, debug
//! assertions on), as CI runs them; as many targets at once as the machine
//! has CPUs.
//!
//! Each target starts from its seeds (`<crate>/seeds/<target>/`) and the
//! corpus earlier local runs grew (`target/fuzz/corpus/<target>/`). A crash
//! fails the run, and its input is copied to
//! `<crate>/regressions/<target>/`, where `cargo test` replays it from then
//! on (`weft_l7::fuzzing`, `weft::fuzzing`): commit it with the fix. The
//! input is printed too (hex), since CI keeps only what the run prints.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd::{probe, run, say, workspace_root};
use crate::setup::Env;

/// The cargo-fuzz release the runs are made with (its rust-version fits
/// the project's toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The fuzz crates, relative to the workspace root.
const CRATES: &[&str] = &["agent/l7/fuzz", "agent/fuzz"];

#[derive(clap::Args)]
pub struct Options {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma-separated names; default: all).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
}

/// One target's run, as the summary reports it.
struct Outcome {
    target: String,
    seconds: u64,
    inputs: Option<u64>,
    coverage: Option<u64>,
    corpus: usize,
    crash: Option<PathBuf>,
}

pub fn fuzz(env: &Env, options: &Options) -> Result<()> {
    ensure_cargo_fuzz(env)?;
    let mut outcomes = Vec::new();
    // One target per CPU at a time: libFuzzer runs on one thread.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for dir in CRATES {
        let dir = workspace_root().join(dir);
        let targets: Vec<String> = targets_of(&dir)?
            .into_iter()
            .filter(|t| options.targets.is_empty() || options.targets.contains(t))
            .collect();
        if targets.is_empty() {
            continue;
        }
        run(&mut cargo_fuzz(env, &dir, &["build"]))?;
        for batch in targets.chunks(cpus) {
            let ran: Vec<Result<Outcome>> = std::thread::scope(|scope| {
                let runs: Vec<_> = (batch.iter())
                    .map(|target| scope.spawn(|| run_target(env, &dir, target, options.seconds)))
                    .collect();
                (runs.into_iter())
                    .map(|run| run.join().expect("a fuzz run's thread panicked"))
                    .collect()
            });
            for outcome in ran {
                outcomes.push(outcome?);
            }
        }
    }
    let unknown: Vec<&String> = options
        .targets
        .iter()
        .filter(|t| !outcomes.iter().any(|o| &o.target == *t))
        .collect();
    if !unknown.is_empty() {
        bail!("no fuzz target named {unknown:?}: see the [[bin]] names in {CRATES:?}");
    }
    print_summary(&outcomes);
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            if let Some(kept) = &o.crash {
                say(format_args!(
                    "{}: crashed; input kept at {}",
                    o.target,
                    kept.display()
                ));
            }
        }
        bail!(
            "{} fuzz target(s) crashed: fix the cause, and commit the inputs kept under \
             regressions/ with the fix (cargo test replays them)",
            crashed.len()
        );
    }
    Ok(())
}

/// Installs cargo-fuzz unless the pinned release is there.
fn ensure_cargo_fuzz(env: &Env) -> Result<()> {
    let installed = probe(env.cargo().args(["fuzz", "--version"]));
    if installed.as_deref() == Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        return Ok(());
    }
    say(format_args!(
        "cargo-fuzz: {} at hand; installing {CARGO_FUZZ_VERSION}",
        installed.as_deref().unwrap_or("none")
    ));
    run(env.cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// The targets of a fuzz crate: its `[[bin]]` names.
fn targets_of(dir: &Path) -> Result<Vec<String>> {
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = \"") {
            targets.push(name.trim_end_matches('"').to_owned());
        }
    }
    Ok(targets)
}

/// `cargo fuzz SUBCOMMAND` on the crate in `dir`, release build with debug
/// assertions and AddressSanitizer (cargo-fuzz's default). The stable
/// toolchain takes the sanitizer's unstable flags with RUSTC_BOOTSTRAP.
fn cargo_fuzz(env: &Env, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = env.cargo();
    cmd.current_dir(dir)
        .arg("fuzz")
        .args(args)
        .args(["--release", "--debug-assertions"])
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn run_target(env: &Env, dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz_dir = workspace_root().join("target/fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let seeds = dir.join("seeds").join(target);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let log = fuzz_dir.join(format!("{target}.log"));
    let mut cmd = cargo_fuzz(env, dir, &["run"]);
    cmd.arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"]);
    say(format_args!(
        "fuzzing {target} for {seconds} s (log: {})",
        log.display()
    ));
    let started = Instant::now();
    let out = fs::File::create(&log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("could not start cargo fuzz for {target}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crash = if status.success() {
        None
    } else {
        Some(keep_crash(dir, target, &artifacts, &text)?)
    };
    Ok(Outcome {
        target: target.to_owned(),
        seconds: fuzzed_seconds(&text).unwrap_or_else(|| started.elapsed().as_secs()),
        inputs: final_stat(&text, "stat::number_of_executed_units:"),
        coverage: last_coverage(&text),
        corpus: fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
        crash,
    })
}

/// A failed run: prints the end of its log and the input that crashed,
/// and copies that input to `regressions/<target>/`.
fn keep_crash(dir: &Path, target: &str, artifacts: &Path, log: &str) -> Result<PathBuf> {
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    for line in tail.iter().rev() {
        eprintln!("  | {line}");
    }
    let newest = fs::read_dir(artifacts)?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let Some((_, input)) = newest else {
        bail!(
            "fuzz target {target} failed without leaving an input in {} (see the log above)",
            artifacts.display()
        );
    };
    let bytes = fs::read(&input)?;
    let kept_dir = dir.join("regressions").join(target);
    fs::create_dir_all(&kept_dir)?;
    let name = input.file_name().context("an artifact has a file name")?;
    let kept = kept_dir.join(name);
    fs::write(&kept, &bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    say(format_args!(
        "{target}: the crashing input ({} bytes, hex): {hex}",
        bytes.len()
    ));
    Ok(kept)
}

/// A `name: value` line of libFuzzer's final statistics.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// How long libFuzzer itself ran (`Done N runs in S second(s)`), without
/// the build `cargo fuzz run` may have done first.
fn fuzzed_seconds(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let seconds = rest.split(" runs in ").nth(1)?;
        seconds.split_whitespace().next()?.parse().ok()
    })
}

/// The coverage (`cov:`) of libFuzzer's last status line.
fn last_coverage(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let rest = &l[l.find(" cov: ")? + 6..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn print_summary(outcomes: &[Outcome]) {
    say("fuzzing summary:");
    eprintln!(
        "  {:<18} {:>8} {:>12} {:>9} {:>8}  result",
        "target", "seconds", "inputs", "coverage", "corpus"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    for o in outcomes {
        eprintln!(
            "  {:<18} {:>8} {:>12} {:>9} {:>8}  {}",
            o.target,
            o.seconds,
            show(o.inputs),
            show(o.coverage),
            o.corpus,
            if o.crash.is_some() { "CRASH" } else { "ok" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_figures() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #568930\tDONE   cov: 1234 ft: 5678 corp: 345/12Kb lim: 4096 exec/s: 51720 rss: 471Mb\n\
                   Done 568930 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 568930\n\
                   stat::average_exec_per_sec:     51720\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units:"),
            Some(568_930)
        );
        assert_eq!(last_coverage(log), Some(1234));
        assert_eq!(fuzzed_seconds(log), Some(11));
        assert_eq!(final_stat("", "stat::number_of_executed_units:"), None);
    }

    #[test]
    fn every_fuzz_crate_names_its_targets() {
        for dir in CRATES {
            let targets = targets_of(&workspace_root().join(dir)).expect("a fuzz crate");
            assert!(targets.len() >= 2, "{dir}: {targets:?}");
            assert!(
                !targets.iter().any(|t| t.starts_with("weft")),
                "{targets:?}"
            );
        }
    }
}
