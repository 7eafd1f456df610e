//! The soak's verdict on its samples. Warm-up is the first third of the
//! run: the agent's bounded stores fill at the soak's rate at their own
//! pace (the flow store's 10,000 records in about 30 s, the 16,384
//! connections it remembers as finished in about 5 minutes, `DROP_FLOWS`'
//! 4,096 entries and the agent's copy of their counts in about 30), and
//! their memory is not a leak. After it:
//!
//! - no event may be lost, at any sample, but for the program runs the
//!   kernel skipped (recursion), allowed up to one per 1,000 connections;
//! - no sample's resident memory may be more than 10 % above the one at
//!   the end of warm-up;
//! - descriptors, threads, metric series, kernel hash map entries and
//!   flow table entries must not keep growing: the samples after warm-up
//!   taken while the traffic ran (not those as it stops, when the
//!   long-lived connections' first closes make series) are split in two
//!   halves in time, and the later half's maximum may exceed
//!   the earlier half's by a small slack only (a few descriptors or
//!   threads open for a moment, a live connection more or less); LRU
//!   maps (`DROP_FLOWS`) fill to their capacity by design, evicting their
//!   least recently used entry, and are shown, not judged;
//! - the clients met no error, and made at least 100,000 connections and
//!   10,000 distinct URL paths per hour (pro rata).

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::sample::Sample;

/// How much resident memory may grow after warm-up.
pub const RSS_GROWTH: f64 = 0.10;
/// Connections and distinct paths an hour of soak must make at least.
pub const CONNECTIONS_PER_HOUR: f64 = 100_000.0;
pub const PATHS_PER_HOUR: f64 = 10_000.0;

/// The loss the kernel decides: a tracing program is not run when another
/// BPF program is running on its CPU (a softirq's tracepoint interrupting
/// a syscall's). How often depends on the CPUs' load, not on the agent;
/// the agent counts each (and logs the program).
pub const KERNEL_SKIPS: &str = "kernel_programs/recursion";
/// Connections per run the kernel may skip: a handful an hour at the
/// soak's rate on a busy two-core machine. The exact figures the soak
/// checks must hold whatever was skipped.
pub const CONNECTIONS_PER_KERNEL_SKIP: u64 = 1_000;

/// Kernel maps that fill up to their capacity by design (LRU: a full map
/// evicts its least recently used entry, one whose count the agent read
/// long ago).
const LRU_MAPS: &[&str] = &["DROP_FLOWS"];

/// A figure of a sample.
type Figure = fn(&Sample) -> u64;

pub fn warm_up(run: Duration) -> Duration {
    run / 3
}

/// A figure at the run's milestones.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Span {
    /// Before the traffic started.
    pub start: u64,
    /// At the end of warm-up.
    pub warm: u64,
    /// At the last sample.
    pub end: u64,
    /// The highest after warm-up.
    pub max: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub minutes: f64,
    pub warm_up_s: f64,
    pub samples: usize,
    pub rss_kib: Span,
    pub fds: Span,
    pub tasks: Span,
    pub series: Span,
    pub flow_table_entries: Span,
    /// Each kernel map's highest fill, percent of its capacity.
    pub map_fill_max_percent: BTreeMap<String, f64>,
    /// The agent's CPU use over the run, percent of one core.
    pub cpu_percent: f64,
    pub lost: u64,
    pub losses: BTreeMap<String, u64>,
    pub traffic: BTreeMap<String, u64>,
    pub connections_per_minute: f64,
    pub paths_per_minute: f64,
    pub client_errors: Vec<String>,
    pub failures: Vec<String>,
}

/// Judges `samples` (the first taken before the traffic, the others every
/// 10 s after it started) of a run of `run` whose clients met
/// `client_errors`; the summary lists the failures.
pub fn judge(samples: &[Sample], run: Duration, client_errors: Vec<String>) -> Summary {
    let warm_s = warm_up(run).as_secs_f64();
    let mut summary = Summary {
        minutes: run.as_secs_f64() / 60.0,
        warm_up_s: warm_s,
        samples: samples.len(),
        client_errors,
        ..Summary::default()
    };
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        summary.failures.push("no samples".into());
        return summary;
    };
    let warm_at = samples.iter().position(|s| s.t_s >= warm_s);
    let after = warm_at.map_or(&[][..], |i| &samples[i..]);
    if after.len() < 4 {
        summary.failures.push(format!(
            "only {} samples after warm-up: too short a run to judge",
            after.len()
        ));
        return summary;
    }
    let span = |f: &dyn Fn(&Sample) -> u64| Span {
        start: f(first),
        warm: f(&after[0]),
        end: f(last),
        max: after.iter().map(f).max().unwrap_or(0),
    };
    summary.rss_kib = span(&|s| s.rss_kib);
    summary.fds = span(&|s| s.fds);
    summary.tasks = span(&|s| s.tasks);
    summary.series = span(&|s| s.series);
    summary.flow_table_entries = span(&|s| s.flow_table.entries);
    for s in samples {
        for (name, fill) in &s.maps {
            let max = summary
                .map_fill_max_percent
                .entry(name.clone())
                .or_default();
            *max = max.max(fill.percent());
        }
    }
    let elapsed = last.t_s - first.t_s;
    if elapsed > 0.0 {
        summary.cpu_percent = 100.0 * (last.cpu_s - first.cpu_s) / elapsed;
    }
    summary.lost = last.lost;
    summary.losses = last.losses.clone();
    summary.traffic = last.traffic.clone();
    let per_minute = |name: &str| {
        summary.traffic.get(name).copied().unwrap_or(0) as f64 / summary.minutes.max(1e-9)
    };
    summary.connections_per_minute = per_minute("tcp_connections");
    summary.paths_per_minute = per_minute("distinct_paths");
    let running = after
        .iter()
        .take_while(|s| s.t_s < run.as_secs_f64() - 1.0)
        .count();
    summary.failures = failures(samples, after, &after[..running], &summary);
    summary
}

/// What failed: `after` are the samples after warm-up, `running` those
/// of them taken while the traffic ran.
fn failures(
    samples: &[Sample],
    after: &[Sample],
    running: &[Sample],
    summary: &Summary,
) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(s) = samples.iter().find(|s| s.lost > kernel_skips(s)) {
        failures.push(format!(
            "events lost: {:?} at {:.0} s, {:?} at the end",
            s.losses, s.t_s, summary.losses
        ));
    }
    let connections = summary.traffic.get("tcp_connections").copied().unwrap_or(0);
    let skipped = summary.losses.get(KERNEL_SKIPS).copied().unwrap_or(0);
    if skipped * CONNECTIONS_PER_KERNEL_SKIP > connections {
        failures.push(format!(
            "the kernel skipped {skipped} program runs ({KERNEL_SKIPS}) in {connections} \
             connections: more than one per {CONNECTIONS_PER_KERNEL_SKIP}"
        ));
    }
    let limit = summary.rss_kib.warm as f64 * (1.0 + RSS_GROWTH);
    if summary.rss_kib.max as f64 > limit {
        failures.push(format!(
            "resident memory grew more than {:.0} % after warm-up: {} KiB at its end, up to {} KiB",
            RSS_GROWTH * 100.0,
            summary.rss_kib.warm,
            summary.rss_kib.max
        ));
    }
    let growth: [(&str, Figure, f64, f64); 4] = [
        ("open descriptors", |s| s.fds, 4.0, 0.0),
        ("threads", |s| s.tasks, 4.0, 0.0),
        ("metric series", |s| s.series, 5.0, 0.01),
        ("flow table entries", |s| s.flow_table.entries, 64.0, 0.25),
    ];
    for (what, figure, slack, share) in growth {
        if let Err(e) = bounded(running, &figure, slack, share) {
            failures.push(format!("{what} keep growing: {e}"));
        }
    }
    for name in after[0]
        .maps
        .keys()
        .filter(|m| !LRU_MAPS.contains(&m.as_str()))
    {
        let entries = |s: &Sample| s.maps.get(name).map_or(0, |f| f.entries);
        if let Err(e) = bounded(running, &entries, 64.0, 0.25) {
            failures.push(format!("kernel map {name} keeps filling: {e}"));
        }
    }
    let hours = summary.minutes / 60.0;
    let floors = [
        ("tcp_connections", CONNECTIONS_PER_HOUR),
        ("distinct_paths", PATHS_PER_HOUR),
    ];
    for (name, per_hour) in floors {
        let made = summary.traffic.get(name).copied().unwrap_or(0) as f64;
        if made < per_hour * hours {
            failures.push(format!(
                "{made} {name} in {:.1} minutes: below {per_hour} an hour",
                summary.minutes
            ));
        }
    }
    let errors = summary.traffic.get("client_errors").copied().unwrap_or(0);
    if errors > 0 {
        failures.push(format!(
            "{errors} client errors: {:?}",
            summary.client_errors
        ));
    }
    failures
}

/// Runs the kernel skipped so far, at sample `s`.
fn kernel_skips(s: &Sample) -> u64 {
    s.losses.get(KERNEL_SKIPS).copied().unwrap_or(0)
}

/// Whether `figure` stopped growing over `samples`: the later half's
/// maximum is at most the earlier half's plus `slack` and `share` of it.
pub fn bounded(
    samples: &[Sample],
    figure: &dyn Fn(&Sample) -> u64,
    slack: f64,
    share: f64,
) -> Result<(), String> {
    let (earlier, later) = samples.split_at(samples.len() / 2);
    let max = |half: &[Sample]| half.iter().map(figure).max().unwrap_or(0) as f64;
    let (before, after) = (max(earlier), max(later));
    let allowed = before + slack.max(share * before);
    if after > allowed {
        return Err(format!(
            "at most {before} in the first half after warm-up, {after} in the second"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rss: &[u64], fds: &[u64], lost: u64) -> Summary {
        let samples: Vec<Sample> = rss
            .iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (&rss_kib, &fds))| Sample {
                t_s: i as f64 * 10.0,
                rss_kib,
                fds,
                lost: if i == 5 { lost } else { 0 },
                ..Sample::default()
            })
            .collect();
        judge(
            &samples,
            Duration::from_secs(10 * (rss.len() as u64 - 1)),
            Vec::new(),
        )
    }

    fn flat(n: usize, v: u64) -> Vec<u64> {
        vec![v; n]
    }

    #[test]
    fn a_steady_agent_passes_but_for_its_traffic() {
        let summary = run(&flat(19, 20_000), &flat(19, 30), 0);
        // No traffic in these samples: only the traffic floors fail.
        assert_eq!(summary.failures.len(), 2, "{:?}", summary.failures);
        assert!(summary.failures.iter().all(|f| f.contains("an hour")));
        assert_eq!(summary.warm_up_s, 60.0);
        assert_eq!(summary.rss_kib.warm, 20_000);
    }

    #[test]
    fn growth_and_losses_fail() {
        let rss: Vec<u64> = (0..19).map(|i| 20_000 + i * 300).collect();
        let fds: Vec<u64> = (0..19).map(|i| 30 + i).collect();
        let summary = run(&rss, &fds, 1);
        let all = summary.failures.join("\n");
        assert!(all.contains("resident memory"), "{all}");
        assert!(all.contains("open descriptors"), "{all}");
        assert!(all.contains("events lost"), "{all}");
    }

    /// A steady run of 5,000 connections whose last samples report
    /// `losses`.
    fn with_losses(losses: &[(&str, u64)]) -> Vec<String> {
        let samples: Vec<Sample> = (0..19)
            .map(|i| {
                let losses: BTreeMap<String, u64> = losses
                    .iter()
                    .filter(|_| i >= 12)
                    .map(|&(k, n)| (k.to_owned(), n))
                    .collect();
                Sample {
                    t_s: i as f64 * 10.0,
                    rss_kib: 20_000,
                    lost: losses.values().sum(),
                    losses,
                    traffic: [("tcp_connections".to_owned(), 5_000)].into(),
                    ..Sample::default()
                }
            })
            .collect();
        let summary = judge(&samples, Duration::from_secs(180), Vec::new());
        summary
            .failures
            .into_iter()
            .filter(|f| !f.contains("an hour"))
            .collect()
    }

    #[test]
    fn a_few_kernel_skips_pass_any_other_loss_fails() {
        assert_eq!(with_losses(&[(KERNEL_SKIPS, 5)]), Vec::<String>::new());
        let many = with_losses(&[(KERNEL_SKIPS, 6)]);
        assert!(
            many.len() == 1 && many[0].contains("kernel skipped 6"),
            "{many:?}"
        );
        let other = with_losses(&[(KERNEL_SKIPS, 1), ("ringbuf/full", 1)]);
        assert!(
            other.len() == 1 && other[0].contains("events lost"),
            "{other:?}"
        );
    }
}
