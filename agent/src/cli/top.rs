//! `weft top`: golden signals per workload, pod, process, service, route or
//! client-server pair over a sliding window, as a live full-screen table,
//! one snapshot, or JSON. The agent computes the figures from its flow
//! store (`flow::top`); this side sorts, trims and draws them.

use std::cmp::Ordering;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use tonic::transport::Channel;

use super::filter_args::FilterArgs;
use super::table::{self, Table};
use super::{ApiSocketArgs, is_broken_pipe, print, rpc_failure, usage_error};
use crate::api::{self, proto, proto::flow_api_client::FlowApiClient};
use crate::flow::top::{GroupBy, TopRow, TopSnapshot};

mod screen;

/// Output formats of `weft top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TopOutput {
    /// An aligned table.
    #[default]
    Table,
    /// The snapshot as JSON (refreshing: one snapshot per line).
    Json,
}

/// The columns `--sort` accepts. Figures sort largest first, except
/// `success` (lowest first: the failing groups on top) and `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortColumn {
    /// The group's key, alphabetically.
    Name,
    /// Requests per second.
    #[default]
    Rps,
    /// Errors.
    Errors,
    /// Success rate, lowest first.
    Success,
    P50,
    P95,
    P99,
    /// Bytes per second.
    Bytes,
    /// New connections per second.
    Conns,
    /// Failed connects.
    Failed,
    Retransmits,
    Drops,
}

/// Live golden signals by workload, pod, process, service, route or pair
///
/// Requests per second, success rate, latency percentiles, bytes and new
/// connections per second, failed connects, retransmits and drops over a
/// sliding window, from every record the agent wrote in it. In a terminal
/// the table redraws in place (q or Ctrl-C quits); piped, or with --once,
/// it prints one snapshot. Filters are those of `weft flows`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub socket: ApiSocketArgs,

    /// Group by: the server's workload, pod or process, the service dialed, the route, or client to server
    #[arg(long, value_enum, default_value_t = GroupBy::Workload)]
    pub by: GroupBy,

    /// The sliding window (1s to 1h)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_window)]
    pub window: Duration,

    /// Sort by this column
    #[arg(long, value_enum, default_value_t = SortColumn::Rps)]
    pub sort: SortColumn,

    /// Only the first N rows [default: as many as the screen holds; all when printing once]
    #[arg(long = "top", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,

    /// Print one snapshot and exit
    #[arg(long)]
    pub once: bool,

    /// How often the live view refreshes
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_refresh)]
    pub refresh: Duration,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = TopOutput::Table)]
    pub output: TopOutput,

    #[command(flatten)]
    pub filters: Box<FilterArgs>,
}

fn parse_window(value: &str) -> Result<Duration, String> {
    parse_within(
        value,
        Duration::from_secs(1)..=Duration::from_secs(3600),
        "10s, 1m, 1h",
    )
}

fn parse_refresh(value: &str) -> Result<Duration, String> {
    parse_within(
        value,
        Duration::from_millis(100)..=Duration::from_secs(60),
        "500ms, 1s, 5s",
    )
}

/// A duration within `range`; the errors give `examples` and the range.
fn parse_within(
    value: &str,
    range: std::ops::RangeInclusive<Duration>,
    examples: &str,
) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(value).map_err(|_| format!("expected a duration: {examples}"))?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "expected from {} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        ))
    }
}

/// Runs `weft top`.
pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let filter = match args.filters.to_filter() {
        Ok(filter) => filter,
        Err(e) => return Ok(usage_error(e)),
    };
    let request = proto::GetTopRequest {
        filter: Some(proto::FlowFilter::from(&filter)),
        window_ms: u64::try_from(args.window.as_millis()).unwrap_or(u64::MAX),
        by: args.by.name().to_owned(),
    };
    let socket = args.socket.path();
    let mut source = Source {
        client: api::connect(&socket).await?,
        socket: &socket,
        request,
    };
    let live = !args.once && io::stdout().is_terminal();
    let outcome = match (live, args.output) {
        (false, output) => match source.snapshot().await? {
            Ok(snapshot) => print(&render_once(&args, snapshot, output)?),
            Err(code) => Ok(code),
        },
        (true, TopOutput::Json) => json_lines(&args, &mut source).await,
        (true, TopOutput::Table) => screen::run(&args, &mut source).await,
    };
    match outcome {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Where snapshots come from: the agent.
pub struct Source<'a> {
    client: FlowApiClient<Channel>,
    socket: &'a Path,
    request: proto::GetTopRequest,
}

impl Source<'_> {
    /// One snapshot: `Ok(Err(code))` when the agent refused the request as
    /// bad usage (already printed).
    pub async fn snapshot(&mut self) -> anyhow::Result<Result<TopSnapshot, ExitCode>> {
        let answer = tokio::time::timeout(
            super::ANSWER_TIMEOUT,
            self.client.get_top(self.request.clone()),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "the weft agent at {} did not answer within {}s",
                self.socket.display(),
                super::ANSWER_TIMEOUT.as_secs()
            )
        })?;
        let json = match answer {
            Ok(response) => response.into_inner().json,
            Err(status) => return rpc_failure(self.socket, status).map(Err),
        };
        let snapshot = serde_json::from_str(&json).context(
            "cannot decode the agent's top view (is the agent another version of weft?)",
        )?;
        Ok(Ok(snapshot))
    }
}

/// `-o json` in a terminal: a snapshot per refresh, one per line.
async fn json_lines(args: &TopArgs, source: &mut Source<'_>) -> anyhow::Result<ExitCode> {
    let mut stdout = io::stdout();
    loop {
        let snapshot = match source.snapshot().await? {
            Ok(s) => arrange(s, args.sort, args.top),
            Err(code) => return Ok(code),
        };
        serde_json::to_writer(&mut stdout, &snapshot)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
        tokio::select! {
            () = tokio::time::sleep(args.refresh) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn render_once(args: &TopArgs, snapshot: TopSnapshot, output: TopOutput) -> anyhow::Result<String> {
    let snapshot = arrange(snapshot, args.sort, args.top);
    Ok(match output {
        TopOutput::Json => serde_json::to_string_pretty(&snapshot)? + "\n",
        TopOutput::Table => {
            let mut text = heading(&snapshot, args.sort, SystemTime::now()) + "\n";
            text.push_str(&table(&snapshot));
            text
        }
    })
}

/// The rows in `sort` order, the first `top` of them.
pub fn arrange(mut snapshot: TopSnapshot, sort: SortColumn, top: Option<u64>) -> TopSnapshot {
    snapshot
        .rows
        .sort_by(|a, b| compare(a, b, sort).then_with(|| a.key.cmp(&b.key)));
    if let Some(top) = top {
        snapshot
            .rows
            .truncate(usize::try_from(top).unwrap_or(usize::MAX));
    }
    snapshot
}

fn compare(a: &TopRow, b: &TopRow, sort: SortColumn) -> Ordering {
    // Largest first; a missing figure (no requests) last.
    let desc = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (x, y) => y.is_some().cmp(&x.is_some()),
    };
    let us = |v: Option<u64>| v.map(|v| v as f64);
    let n = |v: u64| Some(v as f64);
    match sort {
        SortColumn::Name => a.key.cmp(&b.key),
        SortColumn::Rps => desc(Some(a.requests_per_s), Some(b.requests_per_s)),
        SortColumn::Errors => desc(n(a.errors), n(b.errors)),
        // Lowest first: negate, so that "largest first" puts it on top.
        SortColumn::Success => desc(a.success_rate.map(|r| -r), b.success_rate.map(|r| -r)),
        SortColumn::P50 => desc(us(a.latency_p50_us), us(b.latency_p50_us)),
        SortColumn::P95 => desc(us(a.latency_p95_us), us(b.latency_p95_us)),
        SortColumn::P99 => desc(us(a.latency_p99_us), us(b.latency_p99_us)),
        SortColumn::Bytes => desc(Some(a.bytes_per_s), Some(b.bytes_per_s)),
        SortColumn::Conns => desc(Some(a.connections_per_s), Some(b.connections_per_s)),
        SortColumn::Failed => desc(n(a.failed_connects), n(b.failed_connects)),
        SortColumn::Retransmits => desc(n(a.retransmits), n(b.retransmits)),
        SortColumn::Drops => desc(n(a.drops), n(b.drops)),
    }
}

/// The line above the table: what is shown, over which window.
pub fn heading(snapshot: &TopSnapshot, sort: SortColumn, now: SystemTime) -> String {
    let clock = table::local_clock(now).map_or_else(String::new, |c| {
        format!("  {}", c.split('.').next().unwrap_or(&c))
    });
    let sort = <SortColumn as clap::ValueEnum>::to_possible_value(&sort)
        .map_or_else(String::new, |v| v.get_name().to_owned());
    let mut line = format!(
        "weft top  by {}  window {}  sort {sort}{clock}",
        snapshot.by.name(),
        seconds(snapshot.window_s),
    );
    if snapshot.covered_s + 0.5 < snapshot.window_s {
        line.push_str(&format!(
            "  (covering the last {})",
            seconds(snapshot.covered_s)
        ));
    }
    if !snapshot.complete {
        line.push_str(
            "  (the flow store dropped records of this window: raise flow_store_capacity)",
        );
    }
    line
}

fn seconds(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
}

/// The table of a snapshot's rows.
pub fn table(snapshot: &TopSnapshot) -> String {
    let keys = snapshot.by.key_fields();
    let mut header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    header.extend(
        [
            "RPS", "SUCCESS", "P50", "P95", "P99", "BYTES/S", "CONN/S", "FAILED", "RETRANS",
            "DROPS",
        ]
        .map(str::to_owned),
    );
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&header);
    for row in &snapshot.rows {
        let mut cells: Vec<String> = keys
            .iter()
            .map(|k| {
                row.key
                    .get(*k)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        let latency = |v: Option<u64>| v.map_or_else(|| "-".into(), table::human_duration_us);
        cells.extend([
            rate(row.requests_per_s),
            row.success_rate
                .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
            latency(row.latency_p50_us),
            latency(row.latency_p95_us),
            latency(row.latency_p99_us),
            table::human_bytes(row.bytes_per_s.round() as u64),
            rate(row.connections_per_s),
            row.failed_connects.to_string(),
            row.retransmits.to_string(),
            row.drops.to_string(),
        ]);
        t.push(cells);
    }
    if t.is_empty() {
        return t.render() + "(no flows in the window)\n";
    }
    t.render()
}

/// A per-second rate: whole above 100, else one decimal.
fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row(name: &str, rps: f64, success: Option<f64>, p99: Option<u64>) -> TopRow {
        TopRow {
            key: BTreeMap::from([("workload".to_owned(), Some(name.to_owned()))]),
            requests: (rps * 10.0) as u64,
            requests_per_s: rps,
            errors: 0,
            success_rate: success,
            latency_p50_us: p99,
            latency_p95_us: p99,
            latency_p99_us: p99,
            bytes_per_s: 2048.0,
            connections: 1,
            connections_per_s: 0.1,
            failed_connects: 0,
            retransmits: 0,
            drops: 0,
        }
    }

    fn snapshot() -> TopSnapshot {
        TopSnapshot {
            window_s: 10.0,
            covered_s: 10.0,
            complete: true,
            by: GroupBy::Workload,
            rows: vec![
                row("api", 5.0, Some(1.0), Some(1_500)),
                row("db", 50.0, Some(0.9), Some(900)),
                row("idle", 0.0, None, None),
            ],
        }
    }

    fn names(s: &TopSnapshot) -> Vec<&str> {
        s.rows
            .iter()
            .map(|r| r.key["workload"].as_deref().unwrap())
            .collect()
    }

    #[test]
    fn sorting_puts_the_interesting_rows_first() {
        assert_eq!(
            names(&arrange(snapshot(), SortColumn::Rps, None)),
            ["db", "api", "idle"]
        );
        assert_eq!(
            names(&arrange(snapshot(), SortColumn::P99, None)),
            ["api", "db", "idle"]
        );
        assert_eq!(
            names(&arrange(snapshot(), SortColumn::Success, None)),
            ["db", "api", "idle"],
            "lowest success first, none last"
        );
        assert_eq!(
            names(&arrange(snapshot(), SortColumn::Name, Some(2))),
            ["api", "db"]
        );
    }

    #[test]
    fn the_table_shows_each_figure() {
        let text = table(&arrange(snapshot(), SortColumn::Rps, None));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("WORKLOAD  RPS   SUCCESS  P50"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("db        50.0  90.0%    900µs"),
            "{text}"
        );
        assert!(lines[2].contains("1.50ms"), "{text}");
        assert!(lines[3].starts_with("idle      0.0   -"), "{text}");
        assert!(lines[1].contains("2.0KiB"), "{text}");
    }

    #[test]
    fn the_heading_says_what_the_window_covers() {
        let mut s = snapshot();
        s.covered_s = 3.2;
        s.complete = false;
        let h = heading(&s, SortColumn::P99, SystemTime::UNIX_EPOCH);
        assert!(
            h.starts_with("weft top  by workload  window 10s  sort p99"),
            "{h}"
        );
        assert!(h.contains("covering the last 3s"), "{h}");
        assert!(h.contains("flow_store_capacity"), "{h}");
    }

    #[test]
    fn windows_and_refreshes_are_bounded() {
        assert_eq!(parse_window("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("2h").unwrap_err().contains("1h"));
        assert!(parse_refresh("10ms").is_err());
    }
}
