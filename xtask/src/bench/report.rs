//! The report: medians over the rounds, each configuration against B0 of
//! the same round, as JSON and as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::load::{Latency, Load, round};
use super::phases::{Config, Point};
use super::stress::Series;

/// The targets of the issue, reported against (never asserted).
const TARGET_ADDED_P99_US: f64 = 20.0;
const TARGET_CPU_RATIO: f64 = 1.10;
const TARGET_THROUGHPUT_RATIO: f64 = 0.85;
pub const TARGET_RATE: u32 = 1000;
/// Below this share of the asked rate a configuration is overloaded.
const SHORT: f64 = 0.97;

/// Everything a run found.
pub struct Run {
    pub command: String,
    pub started: String,
    pub seconds: f64,
    pub machine: Value,
    pub tools: Vec<(&'static str, String)>,
    pub workload: (String, String),
    pub plan: Value,
    pub b0_max: f64,
    pub rates: Vec<u32>,
    /// Configurations not run, and why.
    pub skipped: Vec<(Config, String)>,
    /// How weft was started in B1 and B2.
    pub modes: Vec<(Config, String)>,
    pub points: Vec<Point>,
    /// weft's memory at the end of each phase: (config, RSS, peak, maps) KiB.
    pub memory: Vec<(Config, u64, u64, u64)>,
    /// `weft status -o json` at the end of the last phase of each agent
    /// configuration.
    pub weft_status: BTreeMap<Config, Value>,
    pub stress: Vec<Series>,
    pub notes: Vec<String>,
}

/// Medians of one configuration at one load point over the rounds.
#[derive(Clone, Debug, Default)]
struct Summary {
    rounds: usize,
    achieved: f64,
    errors: u64,
    latency: Latency,
    system_cpu: f64,
    lab_cpu: f64,
    agent_cpu: f64,
    bpf_ns: f64,
    events_per_s: Option<f64>,
    lost: Option<f64>,
    parse_errors: Option<f64>,
    /// L7 records weft wrote per request (2 when it sees both sides).
    l7_per_request: Option<f64>,
    /// Against B0 of the same round (medians of the per-round figures).
    added: Option<Latency>,
    system_cpu_ratio: Option<f64>,
    lab_cpu_ratio: Option<f64>,
    throughput_ratio: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn per_request(total: f64, p: &Point) -> f64 {
    if p.outcome.ok == 0 {
        f64::NAN
    } else {
        total / p.outcome.ok as f64
    }
}

impl Run {
    fn measured(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(|p| p.round > 0)
    }

    fn configs(&self) -> Vec<Config> {
        let mut configs: Vec<Config> = self.measured().map(|p| p.config).collect();
        configs.sort();
        configs.dedup();
        configs
    }

    fn loads(&self) -> Vec<Load> {
        let mut loads: Vec<Load> = self.rates.iter().map(|&r| Load::Rate(r)).collect();
        loads.push(Load::NewConnections(TARGET_RATE));
        loads.push(Load::Max);
        loads
    }

    fn summary(&self, config: Config, load: Load) -> Option<Summary> {
        let points: Vec<&Point> = self
            .measured()
            .filter(|p| p.config == config && p.load == load)
            .collect();
        if points.is_empty() {
            return None;
        }
        let m = |f: &dyn Fn(&Point) -> f64| median(points.iter().map(|p| f(p)).collect());
        let baseline = |p: &Point| {
            self.measured()
                .find(|b| b.config == Config::B0 && b.load == load && b.round == p.round)
        };
        let paired = |f: &dyn Fn(&Point, &Point) -> f64| {
            let xs: Vec<f64> = points
                .iter()
                .filter_map(|p| Some(f(p, baseline(p)?)))
                .collect();
            (!xs.is_empty()).then(|| median(xs))
        };
        let weft = config.is_weft();
        let added: Vec<Latency> = points
            .iter()
            .filter_map(|p| {
                let b = baseline(p)?;
                Some(Latency::from_fn(|n| {
                    p.outcome.latency.get(n) - b.outcome.latency.get(n)
                }))
            })
            .collect();
        let added = (!added.is_empty())
            .then(|| Latency::from_fn(|n| median(added.iter().map(|l| l.get(n)).collect())));
        let system = |p: &Point| per_request(p.cost.system_us as f64, p);
        let lab = |p: &Point| per_request(p.cost.lab_us() as f64, p);
        Some(Summary {
            rounds: points.len(),
            achieved: m(&|p| p.outcome.achieved_rate()),
            errors: points.iter().map(|p| p.outcome.errors).sum(),
            latency: Latency::from_fn(|name| m(&|p| p.outcome.latency.get(name))),
            system_cpu: m(&system),
            lab_cpu: m(&lab),
            agent_cpu: m(&|p| per_request(p.cost.agent_us as f64, p)),
            bpf_ns: m(&|p| per_request(p.cost.bpf_ns() as f64, p)),
            events_per_s: weft
                .then(|| m(&|p| p.cost.events.unwrap_or(f64::NAN) / p.cost.seconds.max(1e-9))),
            lost: weft.then(|| points.iter().filter_map(|p| p.cost.lost_total()).sum()),
            parse_errors: weft.then(|| points.iter().filter_map(|p| p.cost.parse_errors()).sum()),
            l7_per_request: weft
                .then(|| m(&|p| per_request(p.cost.l7_requests.unwrap_or(f64::NAN), p))),
            added,
            system_cpu_ratio: paired(&|p, b| system(p) / system(b)),
            lab_cpu_ratio: paired(&|p, b| lab(p) / lab(b)),
            throughput_ratio: paired(&|p, b| p.outcome.achieved_rate() / b.outcome.achieved_rate()),
        })
    }

    /// The configuration the targets are checked on: B2 (L4 + L7), or B1
    /// standing in while B2 cannot run.
    fn target_config(&self) -> Option<Config> {
        let configs = self.configs();
        [Config::B2, Config::B1]
            .into_iter()
            .find(|c| configs.contains(c))
    }

    fn targets(&self) -> Vec<Value> {
        let Some(config) = self.target_config() else {
            return Vec::new();
        };
        let stand_in = if config == Config::B2 {
            ""
        } else {
            " (B1 standing in: B2 did not run)"
        };
        let at_rate = self.summary(config, Load::Rate(TARGET_RATE));
        let at_max = self.summary(config, Load::Max);
        let mut targets = Vec::new();
        let mut add = |name: String, value: Option<f64>, met: Option<bool>, detail: String| {
            targets.push(json!({
                "target": format!("{name}{stand_in}"),
                "config": config.id(),
                "value": value.map(|v| round(v, 3)),
                "met": met,
                "detail": detail,
            }));
        };
        let added = at_rate.as_ref().and_then(|s| s.added).map(|a| a.p99);
        add(
            format!("added p99 at {TARGET_RATE} req/s < {TARGET_ADDED_P99_US} µs"),
            added,
            added.map(|a| a < TARGET_ADDED_P99_US),
            "median over rounds of (p99 − B0's p99 in the same round), µs".into(),
        );
        let cpu = at_rate.as_ref().and_then(|s| s.system_cpu_ratio);
        let lab = at_rate.as_ref().and_then(|s| s.lab_cpu_ratio);
        add(
            format!(
                "CPU per request at {TARGET_RATE} req/s < {:.0} % over B0",
                (TARGET_CPU_RATIO - 1.0) * 100.0
            ),
            lab,
            lab.map(|c| c < TARGET_CPU_RATIO),
            format!(
                "ratio to B0 of the CPU time of the lab's cgroups (both pods, where the eBPF programs run, \
                 and the agent); whole machine (/proc/stat, includes other work on the machine): {}",
                cpu.map_or("-".into(), |c| format!("{c:.3}"))
            ),
        );
        let throughput = at_max.as_ref().and_then(|s| s.throughput_ratio);
        add(
            format!(
                "closed-loop throughput ≥ {:.0} % of B0",
                TARGET_THROUGHPUT_RATIO * 100.0
            ),
            throughput,
            throughput.map(|t| t >= TARGET_THROUGHPUT_RATIO),
            "median over rounds of (max req/s ÷ B0's max req/s in the same round)".into(),
        );
        // B0's maximum over the rounds (the calibration's when none ran).
        let b0_max = self
            .summary(Config::B0, Load::Max)
            .map_or(self.b0_max, |s| s.achieved);
        let lost_in_phases: f64 = self
            .measured()
            .filter(|p| p.config == config)
            .filter_map(|p| p.cost.lost_total())
            .sum();
        let knee = self
            .stress
            .iter()
            .filter(|s| s.config == config)
            .filter_map(|s| s.knee)
            .min();
        let clean_to = self
            .stress
            .iter()
            .filter(|s| s.config == config)
            .filter_map(|s| s.last_clean)
            .max()
            .unwrap_or(0);
        let clean_at_max = self
            .measured()
            .filter(|p| p.config == config && p.cost.lost_total() == Some(0.0))
            .map(|p| p.outcome.achieved_rate().round() as u32)
            .max()
            .unwrap_or(0);
        let clean_to = clean_to.max(clean_at_max);
        let lost_below_max = lost_in_phases > 0.0 || knee.is_some_and(|k| f64::from(k) <= b0_max);
        // Met when nothing was lost and weft was seen clean at (nearly) B0's
        // maximum; unknown when the machine could not deliver that much
        // with weft on.
        let met = if lost_below_max {
            Some(false)
        } else if f64::from(clean_to) >= 0.95 * b0_max {
            Some(true)
        } else {
            None
        };
        add(
            format!("no events lost up to B0's maximum ({b0_max:.0} req/s)"),
            Some(lost_in_phases),
            met,
            format!(
                "events lost in all phases: {lost_in_phases}; stress knee: {}; \
                 no loss at any delivered rate up to {clean_to} req/s",
                knee.map_or("none".into(), |k| format!("{k} req/s")),
            ),
        );
        targets
    }

    pub fn to_json(&self) -> Value {
        let mut results = Vec::new();
        for config in self.configs() {
            for load in self.loads() {
                let Some(s) = self.summary(config, load) else {
                    continue;
                };
                let samples: Vec<Value> = self
                    .measured()
                    .filter(|p| p.config == config && p.load == load)
                    .map(|p| {
                        json!({
                            "round": p.round,
                            "outcome": p.outcome.to_json(),
                            "cost": p.cost.to_json(p.outcome.ok),
                        })
                    })
                    .collect();
                let r = |x: f64| round(x, 2);
                let lat = |l: Latency| json!({"p50": r(l.p50), "p90": r(l.p90), "p99": r(l.p99), "p99.9": r(l.p999)});
                results.push(json!({
                    "config": config.id(),
                    "load": load.label(),
                    "rate": load.rate(),
                    "new_connection_per_request": load.new_connections(),
                    "rounds": s.rounds,
                    "median": {
                        "achieved_rate": r(s.achieved),
                        "latency_us": lat(s.latency),
                        "cpu_us_per_request": {
                            "system": r(s.system_cpu), "lab": r(s.lab_cpu), "agent": r(s.agent_cpu),
                        },
                        "bpf_ns_per_request": r(s.bpf_ns),
                        "weft_events_per_second": s.events_per_s.map(r),
                        "weft_l7_records_per_request": s.l7_per_request.map(r),
                    },
                    "errors": s.errors,
                    "weft_events_lost": s.lost,
                    "weft_l7_parse_errors": s.parse_errors,
                    "vs_b0": {
                        "added_latency_us": s.added.map(lat),
                        "cpu_per_request_ratio": {
                            "system": s.system_cpu_ratio.map(|x| round(x, 3)),
                            "lab": s.lab_cpu_ratio.map(|x| round(x, 3)),
                        },
                        "throughput_ratio": s.throughput_ratio.map(|x| round(x, 3)),
                    },
                    "samples": samples,
                }));
            }
        }
        let memory: Vec<Value> = self
            .memory
            .iter()
            .map(|(c, rss, peak, maps)| {
                json!({"config": c.id(), "rss_kib": rss, "peak_rss_kib": peak, "bpf_maps_kib": maps})
            })
            .collect();
        let skipped: Vec<Value> = self
            .skipped
            .iter()
            .map(|(c, why)| json!({"config": c.id(), "why": why}))
            .collect();
        json!({
            "schema": "weft-bench/1",
            "command": self.command,
            "started": self.started,
            "duration_seconds": round(self.seconds, 1),
            "machine": self.machine,
            "tools": self.tools.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "workload": {"name": self.workload.0, "description": self.workload.1},
            "plan": self.plan,
            "calibration": {"b0_max_rate": round(self.b0_max, 1), "rates": self.rates},
            "configs": Config::ALL.iter().map(|c| json!({"id": c.id(), "description": c.describe()})).collect::<Vec<_>>(),
            "skipped": skipped,
            "weft_modes": self.modes.iter().map(|(c, m)| (c.id().to_owned(), json!(m))).collect::<serde_json::Map<_, _>>(),
            "results": results,
            "weft_memory": memory,
            "weft_status": self.weft_status.iter().map(|(c, v)| (c.id().to_owned(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "stress": self.stress.iter().map(Series::to_json).collect::<Vec<_>>(),
            "targets": self.targets(),
            "notes": self.notes,
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let machine = &self.machine;
        let _ = writeln!(
            w,
            "`{}` on {} ({:.0} s). Workload: {}. Machine: {}, {} CPUs{}, {} GiB; Linux {}; {}. Tools: {}.",
            self.command,
            self.started,
            self.seconds,
            self.workload.1,
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cpus"],
            if machine["virtualized"] == true {
                " (virtual machine)"
            } else {
                ""
            },
            machine["memory_gib"],
            machine["kernel"].as_str().unwrap_or("?"),
            machine["os"].as_str().unwrap_or("?"),
            self.tools
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let rounds = self.measured().map(|p| p.round).max().unwrap_or(0);
        let _ = writeln!(
            w,
            "\n{rounds} interleaved round(s); medians; Δ and ratios against B0 of the same round. \
             CPU per request: whole machine (/proc/stat) and the lab's cgroups (client pod + server pod + agent). \
             B0's closed-loop maximum at calibration: {:.0} req/s.\n",
            self.b0_max
        );
        let modes: Vec<String> = self
            .modes
            .iter()
            .filter(|(c, _)| self.configs().contains(c))
            .map(|(c, m)| format!("{} runs weft with {m}", c.id()))
            .collect();
        if !modes.is_empty() {
            let _ = writeln!(w, "{}.\n", modes.join("; "));
        }
        for (config, why) in &self.skipped {
            let _ = writeln!(
                w,
                "- **{}** ({}) not run: {why}.",
                config.id(),
                config.describe()
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(w);
        }
        let _ = writeln!(
            w,
            "| config | load | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | Δp99 µs | CPU µs/req (system) | ×B0 | CPU µs/req (lab) | ×B0 | eBPF µs/req | lost events |"
        );
        let _ = writeln!(
            w,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        let f0 = |x: f64| {
            if x.is_finite() {
                format!("{x:.0}")
            } else {
                "-".into()
            }
        };
        let f1 = |x: f64| {
            if x.is_finite() {
                format!("{x:.1}")
            } else {
                "-".into()
            }
        };
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let mut short = false;
        for config in self.configs() {
            for load in self.loads() {
                let Some(s) = self.summary(config, load) else {
                    continue;
                };
                let base = config == Config::B0;
                let _ = writeln!(
                    w,
                    "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    config.id(),
                    config.describe(),
                    match load {
                        Load::Max => "max".to_owned(),
                        rate => rate.label(),
                    },
                    f0(s.achieved)
                        + &match (load, s.throughput_ratio) {
                            (Load::Max, Some(t)) if !base => format!(" (×{t:.2})"),
                            (Load::Rate(rate) | Load::NewConnections(rate), _)
                                if s.achieved < SHORT * f64::from(rate) =>
                            {
                                short = true;
                                " ⚠".to_owned()
                            }
                            _ => String::new(),
                        },
                    f0(s.latency.p50),
                    f0(s.latency.p90),
                    f0(s.latency.p99),
                    f0(s.latency.p999),
                    if base {
                        "-".into()
                    } else {
                        s.added.map_or("-".into(), |a| f0(a.p99))
                    },
                    f1(s.system_cpu),
                    if base {
                        "-".into()
                    } else {
                        ratio(s.system_cpu_ratio)
                    },
                    f1(s.lab_cpu),
                    if base {
                        "-".into()
                    } else {
                        ratio(s.lab_cpu_ratio)
                    },
                    if config.is_weft() {
                        format!("{:.2}", s.bpf_ns / 1000.0)
                    } else {
                        "-".into()
                    },
                    match (s.lost, s.parse_errors) {
                        (Some(l), Some(e)) if e > 0.0 => format!("{l} (+{e} L7 parse errors)"),
                        (Some(l), _) => format!("{l}"),
                        _ => "-".into(),
                    },
                );
            }
        }
        if short {
            let _ = writeln!(
                w,
                "\n⚠ fell short of the asked rate: overloaded, so its latencies include queueing."
            );
        }
        // The breakdown is at the first fixed rate, or at the maximum for a
        // generator that has no fixed rates (closed loop only).
        let weft_configs = || self.configs().into_iter().filter(|c| c.is_weft());
        let detail = self
            .rates
            .first()
            .map(|&rate| Load::Rate(rate))
            .filter(|&load| weft_configs().any(|c| self.summary(c, load).is_some()))
            .unwrap_or(Load::Max);
        let l7: Vec<String> = weft_configs()
            .filter_map(|c| {
                let s = self.summary(c, detail)?;
                Some(format!("{} {:.2}", c.id(), s.l7_per_request?))
            })
            .collect();
        if !l7.is_empty() {
            let _ = writeln!(
                w,
                "\nL7 records per request at {detail} (2 when weft sees both the client's and the server's side): {}.",
                l7.join(", ")
            );
        }
        self.programs_markdown(w, detail);
        self.programs_markdown(w, Load::NewConnections(TARGET_RATE));
        if !self.memory.is_empty() {
            let _ = writeln!(
                w,
                "\nweft's memory at the end of each phase (medians):\n\n\
                 | config | RSS MiB | peak RSS MiB | BPF maps MiB |\n|---|--:|--:|--:|"
            );
            let mut by: BTreeMap<Config, Vec<(f64, f64, f64)>> = BTreeMap::new();
            for (c, rss, peak, maps) in &self.memory {
                by.entry(*c)
                    .or_default()
                    .push((*rss as f64, *peak as f64, *maps as f64));
            }
            for (c, xs) in by {
                let m =
                    |f: fn(&(f64, f64, f64)) -> f64| median(xs.iter().map(f).collect()) / 1024.0;
                let _ = writeln!(
                    w,
                    "| {} | {:.1} | {:.1} | {:.1} |",
                    c.id(),
                    m(|x| x.0),
                    m(|x| x.1),
                    m(|x| x.2)
                );
            }
        }
        if !self.stress.is_empty() {
            let _ = writeln!(
                w,
                "\nEvent-rate stress (rate raised step by step until weft loses events):\n"
            );
            let _ = writeln!(
                w,
                "| config | requests | last clean req/s | knee (first loss) | highest events/s | stopped because |"
            );
            let _ = writeln!(w, "|---|---|--:|--:|--:|---|");
            for s in &self.stress {
                let events = s
                    .steps
                    .iter()
                    .map(|p| p.cost.events.unwrap_or(0.0) / p.cost.seconds.max(1e-9))
                    .fold(0.0, f64::max);
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {events:.0} | {} |",
                    s.config.id(),
                    s.name,
                    s.last_clean.map_or("-".into(), |r| r.to_string()),
                    s.knee.map_or("none".into(), |r| {
                        let delivered = s
                            .steps
                            .iter()
                            .find(|p| p.load == Load::Rate(r))
                            .map_or(0.0, |p| p.outcome.achieved_rate());
                        format!("{r} ({delivered:.0} delivered)")
                    }),
                    s.stopped_because
                );
            }
        }
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(w, "\nTargets (reported, not asserted):\n");
            let _ = writeln!(w, "| target | value | met | how |");
            let _ = writeln!(w, "|---|--:|---|---|");
            for t in targets {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} |",
                    t["target"].as_str().unwrap_or(""),
                    t["value"],
                    match t["met"].as_bool() {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "not shown",
                    },
                    t["detail"].as_str().unwrap_or("")
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(w, "\nNote: {note}");
        }
        md
    }
}

impl Run {
    /// Per eBPF program at one load point: runs per request, time per run
    /// and per request (medians over the rounds), one column group per
    /// agent configuration.
    fn programs_markdown(&self, w: &mut String, load: Load) {
        let configs: Vec<Config> = self.configs().into_iter().filter(|c| c.is_weft()).collect();
        let points = |c: Config| {
            self.measured()
                .filter(move |p| p.config == c && p.load == load)
        };
        let mut names: Vec<&String> = configs
            .iter()
            .flat_map(|&c| points(c).flat_map(|p| p.cost.bpf.keys()))
            .collect();
        names.sort();
        names.dedup();
        // Programs that never ran (hooks this workload does not use) are
        // left out.
        names.retain(|name| {
            configs.iter().any(|&c| {
                points(c).any(|p| p.cost.bpf.get(*name).is_some_and(|&(_, runs)| runs > 0))
            })
        });
        if names.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "\neBPF programs at {load} (kernel.bpf_stats_enabled; runs are machine-wide, \
             so other traffic on the machine adds to them; programs that did not run are left out):\n"
        );
        let mut header = "| program |".to_owned();
        let mut rule = "|---|".to_owned();
        for c in &configs {
            let id = c.id();
            let _ = write!(header, " {id} runs/req | {id} ns/run | {id} ns/req |");
            rule.push_str("--:|--:|--:|");
        }
        let _ = writeln!(w, "{header}\n{rule}");
        let mut totals = vec![0.0; configs.len()];
        for name in &names {
            let mut row = format!("| {name} |");
            for (i, &c) in configs.iter().enumerate() {
                let stat = |f: &dyn Fn(u64, u64, u64) -> f64| {
                    median(
                        points(c)
                            .filter_map(|p| {
                                let &(ns, runs) = p.cost.bpf.get(*name)?;
                                Some(f(ns, runs, p.outcome.ok.max(1)))
                            })
                            .collect(),
                    )
                };
                let per_req = stat(&|ns, _, ok| ns as f64 / ok as f64);
                if per_req.is_nan() {
                    row.push_str(" - | - | - |");
                    continue;
                }
                totals[i] += per_req;
                let runs = stat(&|_, runs, ok| runs as f64 / ok as f64);
                let per_run = stat(&|ns, runs, _| ns as f64 / runs.max(1) as f64);
                let _ = write!(row, " {runs:.2} | {per_run:.0} | {per_req:.0} |");
            }
            let _ = writeln!(w, "{row}");
        }
        let mut row = "| all |".to_owned();
        for total in totals {
            let _ = write!(row, " | | {total:.0} |");
        }
        let _ = writeln!(w, "{row}");
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_nan() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 1.0]), 1.0);
        assert!(median(vec![]).is_nan());
    }
}
