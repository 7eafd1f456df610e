//! `cargo xtask bench`: weft's cost against no instrumentation and against
//! a sidecar proxy, side by side, in one run on this machine.
//!
//! A lab of two pods ([`lab`]) runs a workload's server and load generator
//! ([`workloads`]). Configurations ([`phases`]) B0 (nothing), B1 (weft L4),
//! B2 (weft L4 + L7), S1 (a haproxy sidecar in each pod), B3 (weft L4,
//! the client dialing a weft service address) and, when asked, B2T (B2
//! exporting spans to an OTLP receiver, [`collector`]) take turns in
//! interleaved rounds, each measured at fixed open-loop rates and at its
//! closed-loop maximum ([`load`], [`measure`]); an event-rate stress
//! ([`stress`]) looks for the rate at which weft starts losing events. The
//! report ([`report`]) compares every configuration with B0 of the same
//! round and goes to `target/bench/latest.{json,md}`.

mod collector;
mod lab;
mod load;
mod measure;
mod phases;
mod proc;
mod report;
mod stress;
mod weft;
mod workloads;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use self::lab::Lab;
use self::load::Load;
use self::phases::{Config, Ctx, Running};
use self::report::Run;
use self::workloads::Shape;
use crate::agent;
use crate::cmd::{is_root, probe, say};
use crate::setup;

#[derive(clap::Args)]
pub struct Options {
    /// A short run: 2 rounds of 4-second points and a short stress, under
    /// 5 minutes (the full run takes under 30).
    #[arg(long)]
    quick: bool,
    /// Rounds of interleaved phases [default: 5; with --quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: Option<u32>,
    /// Seconds measured per load point [default: 10; with --quick: 4].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: Option<u64>,
    /// Configurations to compare; B0, the baseline, always runs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "b0,b1,b2,s1,b3"
    )]
    configs: Vec<Config>,
    /// The workload (server and load generator): http, https, postgres,
    /// redis, redis-pipelined.
    #[arg(long, default_value = "http")]
    workload: String,
    /// Connections of the load generator.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Skip the event-rate stress.
    #[arg(long)]
    no_stress: bool,
    /// Measure this weft binary instead of building target/release/weft.
    #[arg(long, value_name = "PATH")]
    weft_bin: Option<std::path::PathBuf>,
    /// Arguments for `weft agent` that turn L7 on (B2); by default found
    /// in `weft agent --help`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    weft_l7_args: Option<String>,
    /// Arguments for `weft agent` that keep L7 off (B1).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    weft_l4_args: Option<String>,
}

/// Durations and counts of one run; every loop is bounded by them.
struct Plan {
    rounds: u32,
    warmup: u64,
    seconds: u64,
    /// Measurement time budget, from the lab's creation.
    budget: Duration,
    stress: stress::Budget,
    /// First rate of the connection-per-request stress.
    stress_conn_first_rate: u32,
}

impl Plan {
    fn new(options: &Options, start: Instant) -> Self {
        let (rounds, warmup, seconds, budget, first, factor, steps, step_seconds) = if options.quick
        {
            (2, 1, 4, 270, 1000, 2.0, 7, 3)
        } else {
            (5, 2, 10, 1560, 1000, 1.5, 12, 6)
        };
        let budget = Duration::from_secs(budget);
        Plan {
            rounds: options.rounds.unwrap_or(rounds),
            warmup,
            seconds: options.seconds.unwrap_or(seconds),
            budget,
            stress: stress::Budget {
                first_rate: first,
                factor,
                max_steps: steps,
                seconds: step_seconds,
                deadline: start + budget,
            },
            stress_conn_first_rate: first / 2,
        }
    }

    fn to_json(&self, connections: u32) -> Value {
        json!({
            "rounds": self.rounds,
            "warmup_seconds": self.warmup,
            "seconds_per_point": self.seconds,
            "connections": connections,
            "time_budget_seconds": self.budget.as_secs(),
            "stress": {
                "first_rate": self.stress.first_rate,
                "first_rate_connection_per_request": self.stress_conn_first_rate,
                "factor": self.stress.factor,
                "max_steps": self.stress.max_steps,
                "seconds_per_step": self.stress.seconds,
            },
        })
    }
}

pub fn bench(options: &Options) -> Result<()> {
    if !is_root()? {
        bail!(
            "the bench creates network namespaces and cgroups and loads eBPF programs: \
             run it as root (`sudo -E env PATH=\"$PATH\" cargo xtask bench`)"
        );
    }
    let workload = workloads::by_name(&options.workload)?;
    let env = setup::setup()?;
    let tools = workload.tools();
    setup::bench_tools(&env, tools.packages, tools.crates)?;
    let bin = match &options.weft_bin {
        Some(bin) => {
            fs::canonicalize(bin).with_context(|| format!("--weft-bin {}", bin.display()))?
        }
        None => agent::build(&env)?,
    };
    let out_dir = agent::target_dir(&env)?.join("bench");
    proc::catch_signals()?;
    lab::remove_stale()?;
    let l7 = weft::l7_switch(
        &bin,
        options.weft_l7_args.as_deref(),
        options.weft_l4_args.as_deref(),
    )?;
    let started = Instant::now();
    let started_at = probe(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]));
    let plan = Plan::new(options, started);
    let machine = machine();
    let lab = Lab::new(env.path())?;
    let server = workload.start_server(&lab)?;
    let ctx = Ctx {
        lab: &lab,
        workload: workload.as_ref(),
        weft_bin: &bin,
        l7: l7.as_ref(),
        connections: options.connections,
        settle: Duration::from_millis(1200),
    };
    let mut run = Run {
        command: std::iter::once("cargo xtask".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        started: started_at.unwrap_or_default(),
        seconds: 0.0,
        machine,
        tools: tool_versions(&lab, workload.as_ref(), &bin),
        workload: (workload.name().to_owned(), workload.describe()),
        plan: plan.to_json(options.connections),
        b0_max: 0.0,
        rates: Vec::new(),
        skipped: Vec::new(),
        modes: match &l7 {
            Some(switch) => vec![
                (Config::B1, switch.off.describe()),
                (Config::B2, switch.on.describe()),
            ],
            None => vec![(Config::B1, "the defaults (this weft has no L7)".into())],
        }
        .into_iter()
        .chain(std::iter::once((
            Config::B2t,
            "B2's, plus `traces:` exporting every span over OTLP/gRPC to the tests' OTLP \
             receiver (Python, the official protobuf definitions) on loopback, outside the \
             lab's cgroups"
                .into(),
        )))
        .chain(std::iter::once((
            Config::B3,
            "B1's, plus one `services:` entry whose only backend is the server; the client \
             dials the service address, which is routed nowhere"
                .into(),
        )))
        .collect(),
        points: Vec::new(),
        memory: Vec::new(),
        weft_status: BTreeMap::new(),
        stress: Vec::new(),
        notes: Vec::new(),
    };
    measure_all(&ctx, &plan, options, &mut run)?;
    drop(server);
    drop(lab);
    run.seconds = started.elapsed().as_secs_f64();
    let noise = notes(&run);
    run.notes.extend(noise);

    fs::create_dir_all(&out_dir)?;
    let json = serde_json::to_string_pretty(&run.to_json())?;
    fs::write(out_dir.join("latest.json"), json + "\n")?;
    let markdown = run.to_markdown();
    fs::write(out_dir.join("latest.md"), &markdown)?;
    println!("{markdown}");
    say(format_args!(
        "bench done in {:.0} s; results in {}/latest.{{json,md}}",
        run.seconds,
        out_dir.display()
    ));
    Ok(())
}

/// Calibration, the rounds, the stress.
fn measure_all(ctx: &Ctx, plan: &Plan, options: &Options, run: &mut Run) -> Result<()> {
    let shape = Shape {
        connections: ctx.connections,
        connection_per_request: false,
    };
    let mut configs = vec![Config::B0];
    for &config in &options.configs {
        if configs.contains(&config) {
            continue;
        }
        match (config, ctx.l7) {
            (Config::B2 | Config::B2t, None) => run.skipped.push((config, weft::NO_L7.to_owned())),
            _ => configs.push(config),
        }
    }

    // Calibration: B0's maximum sets the second fixed rate.
    say("calibration: B0's closed-loop maximum");
    let mut b0 = Running::start(ctx, Config::B0)?;
    b0.warm_up(ctx, plan.warmup)?;
    let max = b0
        .measure(ctx, 0, Load::Max, shape, plan.seconds)?
        .context("the workload has no closed-loop load")?;
    b0.stop();
    run.b0_max = max.outcome.achieved_rate();
    let half = ((run.b0_max / 2.0 / 100.0).floor() as u32 * 100).max(100);
    run.rates = if half > 1000 {
        vec![1000, half]
    } else {
        vec![1000]
    };
    say(format_args!(
        "calibration: B0 maximum {:.0} req/s; fixed rates {:?}",
        run.b0_max, run.rates
    ));
    run.points.push(max);
    let mut loads: Vec<Load> = run.rates.iter().map(|&r| Load::Rate(r)).collect();
    // What a connect costs (B3: the service rewrite) shows only when
    // connections are opened at the rate of requests.
    loads.push(Load::NewConnections(report::TARGET_RATE));
    loads.push(Load::Max);

    // Two stress series, each with an agent start.
    let stress_reserve = if options.no_stress {
        Duration::ZERO
    } else {
        // Enough for a few steps of each series; the stress stops itself
        // at the deadline.
        let step = Duration::from_secs(plan.stress.seconds) + ctx.settle * 2;
        (step * 4 + Duration::from_secs(5)) * 2
    };
    let phase_estimate = Duration::from_secs(3 + plan.warmup)
        // Each point waits for the agent's counters to settle before and
        // after (at least one read interval each).
        + (Duration::from_secs(plan.seconds + 1) + ctx.settle * 2) * loads.len() as u32;
    let mut round_time = phase_estimate * configs.len() as u32;
    let deadline = plan.stress.deadline;
    for round in 1..=plan.rounds {
        // Only whole rounds: a partial one would compare configurations
        // unevenly. The first always runs.
        if round > 1 && Instant::now() + round_time + stress_reserve > deadline {
            run.notes.push(format!(
                "the time budget ended the rounds after {} of {} round(s)",
                round - 1,
                plan.rounds
            ));
            break;
        }
        let round_start = Instant::now();
        // Rotate the order so that no configuration always runs first.
        let mut order = configs.clone();
        order.rotate_left((round as usize - 1) % configs.len());
        for config in order {
            say(format_args!(
                "round {round}/{}: {} ({})",
                plan.rounds,
                config.id(),
                config.describe()
            ));
            let mut running = Running::start(ctx, config)?;
            running.warm_up(ctx, plan.warmup)?;
            for &load in &loads {
                if let Some(point) = running.measure(ctx, round, load, shape, plan.seconds)? {
                    say(format_args!(
                        "  {load}: {:.0} req/s, p99 {:.0} µs, {} errors",
                        point.outcome.achieved_rate(),
                        point.outcome.latency.p99,
                        point.outcome.errors
                    ));
                    run.points.push(point);
                }
            }
            if let Some((rss, peak, maps)) = running.agent_memory()? {
                run.memory.push((config, rss, peak, maps));
            }
            if let Some(agent) = &running.agent {
                // The agent's own view (losses, event rates), last phase wins.
                run.weft_status.insert(config, agent.status()?);
            }
            running.stop();
        }
        round_time = round_start.elapsed();
    }

    if options.no_stress {
        return Ok(());
    }
    let Some(config) = [Config::B2, Config::B1]
        .into_iter()
        .find(|c| configs.contains(c))
    else {
        return Ok(());
    };
    let conn_budget = stress::Budget {
        first_rate: plan.stress_conn_first_rate,
        ..plan.stress
    };
    for (name, per_request, budget) in [
        ("keep-alive", false, &plan.stress),
        ("new connection per request", true, &conn_budget),
    ] {
        say(format_args!("stress: {} with {name}", config.id()));
        run.stress
            .push(stress::series(ctx, config, name, per_request, budget)?);
    }
    Ok(())
}

/// The machine and kernel, for the report.
fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned()));
    let read = |path: &str| fs::read_to_string(path).map(|s| s.trim().to_owned()).ok();
    json!({
        "cpu": field("model name"),
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "virtualized": field("flags").is_some_and(|f| f.split_whitespace().any(|w| w == "hypervisor")),
        "memory_gib": load::round(mem_kib / 1024.0 / 1024.0, 1),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "os": os,
        "load_average_at_start": read("/proc/loadavg"),
    })
}

fn tool_versions(
    lab: &Lab,
    workload: &dyn workloads::Workload,
    bin: &Path,
) -> Vec<(&'static str, String)> {
    let first_line = |out: Option<String>| {
        out.and_then(|o| o.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    let weft = first_line(probe(Command::new(bin).arg("--version")));
    let commit = probe(Command::new("git").args(["describe", "--always", "--dirty"]));
    let mut tools = vec![(
        "weft",
        format!(
            "{} ({})",
            weft.trim_start_matches("weft "),
            commit.as_deref().unwrap_or("?")
        ),
    )];
    tools.extend(workload.versions(lab));
    let haproxy = first_line(probe(Command::new("haproxy").arg("-v")));
    tools.push((
        "haproxy",
        haproxy
            .split_whitespace()
            .nth(2)
            .unwrap_or(&haproxy)
            .to_owned(),
    ));
    tools
}

/// What may have disturbed the figures.
fn notes(run: &Run) -> Vec<String> {
    let mut notes = Vec::new();
    let foreign = run
        .points
        .iter()
        .map(|p| p.cost.foreign_programs)
        .max()
        .unwrap_or(0);
    if foreign > 0 {
        notes.push(format!(
            "up to {foreign} weft programs of another agent on this machine were attached during the run; \
             they run in every configuration, B0 included, and narrow the differences"
        ));
    }
    let mut outside: Vec<f64> = run
        .points
        .iter()
        .map(|p| {
            let c = &p.cost;
            c.system_us.saturating_sub(c.lab_us()) as f64 / c.system_capacity_us.max(1) as f64
        })
        .collect();
    outside.sort_by(f64::total_cmp);
    if let Some(&median) = outside.get(outside.len() / 2)
        && median > 0.05
    {
        notes.push(format!(
            "processes outside the lab used {:.0} % of the machine's CPU time during a median load point \
             (other work on this machine): the whole-system CPU per request includes it, the lab's cgroups do not",
            median * 100.0
        ));
    }
    let load = run.machine["load_average_at_start"]
        .as_str()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    if load > 0.5 {
        notes.push(format!(
            "the machine was not idle at the start (load average {load:.2}): other work adds noise, \
             most to the whole-system CPU figures"
        ));
    }
    notes
}
