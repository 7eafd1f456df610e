//! `weft flows`: recent and live flows from the local agent, as a table,
//! a JSON array, or JSON lines.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

use super::filter_args::FilterArgs;
use super::flow_text;
use super::table::{self, Table};
use super::{ApiSocketArgs, is_broken_pipe, rpc_failure, usage_error};
use crate::api::{self, proto};
use crate::flow::filter::FlowFilter;
use crate::flow::record::{Endpoint, FlowEvent, FlowRecord, FlowType, Transport};

/// Stored flows shown when neither `--last`, `--since`, `--all` nor
/// `--follow` says otherwise (as `hubble observe` does).
pub const DEFAULT_LAST: u64 = 20;

/// Output formats of `weft flows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlowsOutput {
    /// One aligned line per flow.
    #[default]
    Table,
    /// A JSON array of records (with --follow: one record per line).
    Json,
    /// One compact JSON record per line.
    Jsonl,
    /// One line per flow, as `hubble observe` prints.
    Compact,
    /// One block of `KEY: value` lines per flow.
    Dict,
}

/// A point in time on the command line: a duration ago (`5m`) or a UTC
/// time in RFC 3339 (`2026-12-05T06:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    Ago(Duration),
    At(SystemTime),
}

impl TimeArg {
    fn resolve(self, now: SystemTime) -> Option<SystemTime> {
        match self {
            TimeArg::Ago(ago) => now.checked_sub(ago),
            TimeArg::At(at) => Some(at),
        }
    }
}

fn parse_time(value: &str) -> Result<TimeArg, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(TimeArg::Ago(ago));
    }
    humantime::parse_rfc3339_weak(value)
        .map(TimeArg::At)
        .map_err(|_| {
            "expected a duration ago (30s, 5m, 1h) or a UTC time (2026-12-05T06:00:00Z)".to_owned()
        })
}

/// Recent and live flows from the local agent
///
/// Filters combine with AND; repeating a filter, or giving it comma-separated
/// values, ORs them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub socket: ApiSocketArgs,

    /// Only flows since TIME: a duration ago (30s, 5m, 1h) or a UTC time (2026-12-05T06:00:00Z)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeArg>,

    /// Only stored flows until TIME (as for --since)
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "follow")]
    pub until: Option<TimeArg>,

    /// Only the newest N stored flows [default: 20, unless --since, --until, --first, --all or --follow]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub last: Option<u64>,

    /// Only the oldest N stored flows
    #[arg(long, value_name = "N", value_parser = parse_count, conflicts_with_all = ["last", "follow"])]
    pub first: Option<u64>,

    /// All stored flows
    #[arg(long, conflicts_with_all = ["last", "first"])]
    pub all: bool,

    /// Keep printing new flows as they happen (stored flows only with --last, --since or --all)
    #[arg(short, long)]
    pub follow: bool,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,

    // Last: its help heading would otherwise carry over to the options
    // declared after it. Boxed: eight `Vec`s would make this the largest
    // variant of the binary's command enum (`clippy::large_enum_variant`).
    #[command(flatten)]
    pub filters: Box<FilterArgs>,
}

impl FlowsArgs {
    /// The API request for these arguments, `now` being the wall clock.
    fn request(&self, filter: &FlowFilter, now: SystemTime) -> proto::GetFlowsRequest {
        let explicit = self.last.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.first.is_some()
            || self.all;
        let since = match self.since {
            Some(time) => time.resolve(now),
            // Following without a backlog request: live flows only.
            None if self.follow && !explicit => Some(now),
            None => None,
        };
        let last = match self.last {
            Some(n) => n,
            None if !self.follow && !explicit => DEFAULT_LAST,
            None => 0,
        };
        proto::GetFlowsRequest {
            filter: Some(proto::FlowFilter::from(filter)),
            follow: self.follow,
            last,
            since_unix_nanos: since.map_or(0, unix_nanos),
            first: self.first.unwrap_or(0),
            // Before the epoch is no bound anyone means: the earliest.
            until_unix_nanos: self
                .until
                .and_then(|t| t.resolve(now))
                .map_or(0, |t| unix_nanos(t).max(1)),
        }
    }
}

/// `--last N`, `--first N`: at least 1; "all" has its own flag rather
/// than a magic 0.
fn parse_count(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a number of flows, at least 1 (for all of them, use --all)".to_owned()),
    }
}

/// Nanoseconds since the epoch, saturating; 0 (no bound) before the epoch.
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs `weft flows`.
pub async fn run(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let filter = match args.filters.to_filter() {
        Ok(filter) => filter,
        Err(e) => return Ok(usage_error(e)),
    };
    let socket = args.socket.path();
    let request = args.request(&filter, SystemTime::now());
    let mut client = api::connect(&socket).await?;
    let mut stream = match client.get_flows(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return rpc_failure(&socket, status),
    };

    let mut printer = FlowPrinter::new(args.output, args.follow);
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    let printed: anyhow::Result<()> = async {
        loop {
            match stream.message().await {
                Ok(Some(flow)) => printer.flow(&flow, &mut stdout, &mut stderr)?,
                Ok(None) => break,
                Err(status) => {
                    printer.finish(&mut stdout)?;
                    return Err(anyhow!(
                        "the flow stream from {} broke: {} ({:?})",
                        socket.display(),
                        status.message(),
                        status.code()
                    ));
                }
            }
        }
        printer.finish(&mut stdout)
    }
    .await;
    match printed {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
        // A follow stream only ends when the agent stops.
        Ok(()) if args.follow => Err(anyhow!(
            "the weft agent at {} ended the stream; is it shutting down?",
            socket.display()
        )),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Initial column widths for streamed tables, where the rows are not known
/// in advance: wide enough for typical values. A wider cell widens its
/// column for the lines after it, so alignment settles quickly.
const FOLLOW_WIDTHS: [usize; 9] = [12, 17, 32, 2, 36, 17, 7, 8, 9];

const HEADER: [&str; 9] = [
    "TIME",
    "EVENT",
    "SOURCE",
    "",
    "DESTINATION",
    "BYTES",
    "RTT",
    "DURATION",
    "VERDICT",
];

/// Turns the stream's messages into output, in one of the formats.
struct FlowPrinter {
    output: FlowsOutput,
    follow: bool,
    /// Non-follow table rows, aligned once all are known.
    table: Table,
    /// Non-follow `-o json` records, printed as one array at the end.
    array: Vec<FlowRecord>,
    /// Streamed table: the widest cell seen so far per column.
    widths: [usize; 9],
    header_done: bool,
    /// Records printed one by one so far (`-o dict` separates them).
    printed: usize,
}

impl FlowPrinter {
    fn new(output: FlowsOutput, follow: bool) -> Self {
        Self {
            output,
            follow,
            table: Table::new(&HEADER),
            array: Vec::new(),
            widths: FOLLOW_WIDTHS,
            header_done: false,
            printed: 0,
        }
    }

    fn flow(
        &mut self,
        flow: &proto::Flow,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> anyhow::Result<()> {
        if flow.lost > 0 {
            // Best effort: a failing stderr must not end the stream.
            let _ = writeln!(
                err,
                "warning: this client fell behind the live stream; the agent skipped {} flows",
                flow.lost
            );
        }
        if flow.json.is_empty() {
            return Ok(());
        }
        match (self.output, self.follow) {
            (FlowsOutput::Jsonl, _) | (FlowsOutput::Json, true) => {
                // The agent sends compact JSON already: pass it through, so
                // fields this CLI version does not know survive.
                writeln!(out, "{}", flow.json)?;
                out.flush()?;
            }
            (FlowsOutput::Compact, _) => {
                writeln!(out, "{}", flow_text::compact(&decode(&flow.json)?))?;
                out.flush()?;
            }
            (FlowsOutput::Dict, _) => {
                let text = flow_text::dict(&decode(&flow.json)?);
                if self.printed > 0 {
                    writeln!(out, "{}", flow_text::DICT_SEPARATOR)?;
                }
                self.printed += 1;
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            (FlowsOutput::Json, false) => self.array.push(decode(&flow.json)?),
            (FlowsOutput::Table, false) => self.table.push(row(&decode(&flow.json)?).into()),
            (FlowsOutput::Table, true) => {
                if !self.header_done {
                    writeln!(out, "{}", table::line(&HEADER, &self.widths))?;
                    self.header_done = true;
                }
                let row = row(&decode(&flow.json)?);
                writeln!(out, "{}", table::line(&row, &self.widths))?;
                for (width, cell) in self.widths.iter_mut().zip(&row) {
                    *width = (*width).max(cell.chars().count());
                }
                out.flush()?;
            }
        }
        Ok(())
    }

    /// Prints what was collected (non-follow table and JSON array).
    fn finish(&mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        match (self.output, self.follow) {
            // Typed records keep the schema's field order (a generic JSON
            // value would sort the keys).
            (FlowsOutput::Json, false) => {
                let text = serde_json::to_string_pretty(&self.array)?;
                writeln!(out, "{text}")?;
            }
            (FlowsOutput::Table, false) => out.write_all(self.table.render().as_bytes())?,
            _ => {}
        }
        out.flush()?;
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> anyhow::Result<T> {
    serde_json::from_str(json).context(
        "cannot decode a flow record from the agent (is the agent another version of weft?)",
    )
}

/// The table cells of one record.
fn row(record: &FlowRecord) -> [String; 9] {
    // A drop moved no bytes: how many packets it dropped says more. An L7
    // record counts its request's and response's bytes.
    let bytes = match (record.event, record.packets_sent) {
        (FlowEvent::Drop, Some(packets)) => format!("{packets} pkt"),
        _ => format!(
            "{}/{}",
            table::human_bytes(record.bytes_sent),
            table::human_bytes(record.bytes_received)
        ),
    };
    let rtt = record
        .srtt_us
        .map_or_else(|| "-".to_owned(), table::millis_us);
    [
        flow_text::clock(record),
        event(record),
        endpoint(&record.source),
        "->".to_owned(),
        endpoint(&record.destination),
        bytes,
        rtt,
        table::human_duration_us(record.duration_us),
        flow_text::verdict(record),
    ]
}

/// `tcp open`, `tcp fail(refused)`, `http GET /x 200`, ...
pub(super) fn event(record: &FlowRecord) -> String {
    if record.flow_type == FlowType::L7
        && let Some(l7) = &record.l7
    {
        // Both ends of a connection on this node each report its
        // requests: the side tells the two rows apart.
        let side = match record.traffic_direction.as_deref() {
            Some("egress") => " (at client)",
            Some("ingress") => " (at server)",
            _ => "",
        };
        return format!("{}{side}", l7_summary(l7));
    }
    let transport = match record.transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    let event = match record.event {
        FlowEvent::Open => "open",
        FlowEvent::Update => "update",
        FlowEvent::Close => "close",
        FlowEvent::Fail => "fail",
        FlowEvent::Drop => "drop",
        FlowEvent::Request => "request",
        FlowEvent::Ejected => "ejected",
        FlowEvent::Returned => "returned",
        FlowEvent::Policy => {
            let verdict = crate::flow::filter::verdict_name(record.verdict);
            let rule = record.policy.as_deref().unwrap_or("?");
            return format!("{transport} policy {verdict}({rule})");
        }
    };
    match record.failure {
        Some(failure) => {
            let why = serde_json::to_value(failure)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{transport} {event}({why})")
        }
        None => format!("{transport} {event}"),
    }
}

/// The protocol and its headline fields (those the spec names per
/// protocol), e.g. `http GET /x 200`, `dns A example.com NOERROR`.
fn l7_summary(l7: &serde_json::Value) -> String {
    const MAX: usize = 60;
    let protocol = l7.get("protocol").and_then(|p| p.as_str()).unwrap_or("l7");
    let keys: &[&str] = match protocol {
        "http" | "http2" => &["method", "path", "status"],
        "grpc" => &["service", "method", "grpc_status"],
        "dns" => &["qtype", "query", "rcode"],
        "redis" => &["command"],
        "postgres" | "mysql" => &["operation", "error_code"],
        "tls" => &["sni", "version", "outcome", "failure"],
        _ => &[],
    };
    let mut summary = protocol.to_owned();
    for key in keys {
        match l7.get(*key) {
            Some(serde_json::Value::String(s)) => {
                summary.push(' ');
                summary.push_str(s);
            }
            Some(v @ serde_json::Value::Number(_)) => {
                summary.push(' ');
                summary.push_str(&v.to_string());
            }
            _ => {}
        }
    }
    if keys.is_empty() {
        summary.push_str(" request");
    }
    if summary.chars().count() > MAX {
        summary = summary.chars().take(MAX - 1).chain(['…']).collect();
    }
    summary
}

/// `curl[1234] 10.0.0.1:40512`, `shop/web-1 nginx[9] [fd00::1]:80`,
/// `svc:shop/cart 10.96.20.5:6379` (a Service's virtual IP), or just the
/// address when nothing else is known.
pub(super) fn endpoint(e: &Endpoint) -> String {
    let mut parts = Vec::with_capacity(3);
    match (&e.namespace, &e.pod, &e.service) {
        (Some(ns), Some(pod), _) => parts.push(format!("{ns}/{pod}")),
        (None, Some(pod), _) => parts.push(pod.clone()),
        (Some(ns), None, Some(svc)) => parts.push(format!("svc:{ns}/{svc}")),
        _ => {}
    }
    match (&e.process, e.pid) {
        (Some(name), Some(pid)) => parts.push(format!("{name}[{pid}]")),
        (Some(name), None) => parts.push(name.clone()),
        (None, Some(pid)) => parts.push(format!("[{pid}]")),
        (None, None) => {}
    }
    parts.push(SocketAddr::new(e.ip, e.port).to_string());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::filter::test_support::tcp_record;
    use crate::flow::record::{Failure, Verdict};

    fn flow(record: &FlowRecord) -> proto::Flow {
        proto::Flow {
            json: serde_json::to_string(record).unwrap(),
            lost: 0,
        }
    }

    /// Runs the printer over `flows` and returns (stdout, stderr).
    fn print(output: FlowsOutput, follow: bool, flows: &[proto::Flow]) -> (String, String) {
        let mut printer = FlowPrinter::new(output, follow);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for f in flows {
            printer.flow(f, &mut out, &mut err).unwrap();
        }
        printer.finish(&mut out).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn record_renders_as_a_table_row() {
        let cells = row(&tcp_record());
        assert_eq!(cells[0].len(), "HH:MM:SS.mmm".len(), "{}", cells[0]);
        assert!(cells[0].ends_with(":00.123"), "{}", cells[0]);
        assert_eq!(
            cells[1..],
            [
                "tcp close",
                "curl[1234] 10.0.0.1:40512",
                "->",
                "nginx[999] 10.0.0.2:8080",
                "976.6KiB/244.1KiB",
                "0.04ms",
                "1.83ms",
                "forwarded",
            ]
        );
    }

    #[test]
    fn table_line_is_aligned_under_the_header() {
        let (out, _) = print(FlowsOutput::Table, false, &[flow(&tcp_record())]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("TIME"), "{out}");
        let col = |line: &str, needle: &str| line.find(needle).unwrap();
        assert_eq!(col(lines[0], "SOURCE"), col(lines[1], "curl[1234]"));
        assert_eq!(col(lines[0], "VERDICT"), col(lines[1], "forwarded"));
    }

    #[test]
    fn failures_drops_and_unknown_identities() {
        let mut r = tcp_record();
        r.event = FlowEvent::Fail;
        r.failure = Some(Failure::Refused);
        r.source = Endpoint::from_addr("fd00::1".parse().unwrap(), 5000);
        r.destination.pod = Some("web-1".into());
        r.destination.namespace = Some("shop".into());
        r.srtt_us = None;
        r.verdict = Verdict::Dropped;
        r.drop_reason = Some("NO_SOCKET".into());
        let cells = row(&r);
        assert_eq!(cells[1], "tcp fail(refused)");
        assert_eq!(cells[2], "[fd00::1]:5000");
        assert_eq!(cells[4], "shop/web-1 nginx[999] 10.0.0.2:8080");
        r.destination = Endpoint::from_addr("10.96.20.5".parse().unwrap(), 6379);
        r.destination.namespace = Some("shop".into());
        r.destination.service = Some("cart".into());
        assert_eq!(row(&r)[4], "svc:shop/cart 10.96.20.5:6379");
        assert_eq!(cells[6], "-");
        assert_eq!(cells[8], "dropped(NO_SOCKET)");
        // A drop record counts packets, not bytes.
        r.event = FlowEvent::Drop;
        r.failure = None;
        r.packets_sent = Some(3);
        let cells = row(&r);
        assert_eq!(cells[1], "tcp drop");
        assert_eq!(cells[5], "3 pkt");
    }

    #[test]
    fn l7_records_show_their_headline() {
        let mut r = tcp_record();
        r.flow_type = FlowType::L7;
        r.event = FlowEvent::Request;
        r.l7 = Some(serde_json::json!({
            "protocol": "http", "method": "GET", "path": "/x", "status": 200, "latency_us": 512
        }));
        assert_eq!(event(&r), "http GET /x 200");
        r.bytes_sent = 53;
        r.bytes_received = 2048;
        assert_eq!(row(&r)[5], "53B/2.0KiB", "request/response sizes");
        r.traffic_direction = Some("egress".into());
        assert_eq!(event(&r), "http GET /x 200 (at client)");
        r.traffic_direction = Some("ingress".into());
        assert_eq!(event(&r), "http GET /x 200 (at server)");
        r.traffic_direction = None;
        r.l7 = Some(serde_json::json!({"protocol": "kafka"}));
        assert_eq!(event(&r), "kafka request");
        r.l7 = Some(serde_json::json!({"protocol": "http", "path": "/".repeat(100)}));
        assert_eq!(event(&r).chars().count(), 60);
    }

    #[test]
    fn json_is_one_pretty_array() {
        let (out, _) = print(
            FlowsOutput::Json,
            false,
            &[flow(&tcp_record()), flow(&tcp_record())],
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let array = value.as_array().unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[0]["source"]["process"], "curl");
        assert_eq!(array[0]["type"], "l4");
        assert!(
            out.starts_with("[\n  {\n    \"time\": "),
            "pretty, in schema order: {out}"
        );
    }

    #[test]
    fn empty_json_is_an_empty_array() {
        let (out, _) = print(FlowsOutput::Json, false, &[]);
        assert_eq!(out, "[]\n");
    }

    #[test]
    fn jsonl_and_followed_json_are_one_compact_object_per_line() {
        for (output, follow) in [(FlowsOutput::Jsonl, false), (FlowsOutput::Json, true)] {
            let (out, _) = print(output, follow, &[flow(&tcp_record()), flow(&tcp_record())]);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{out}");
            for line in lines {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["event"], "close");
            }
        }
    }

    #[test]
    fn lost_notice_goes_to_stderr() {
        let notice = proto::Flow {
            json: String::new(),
            lost: 7,
        };
        let (out, err) = print(FlowsOutput::Jsonl, true, &[notice, flow(&tcp_record())]);
        assert_eq!(out.lines().count(), 1);
        assert!(err.contains("skipped 7 flows"), "{err}");
    }

    #[test]
    fn followed_table_prints_header_once() {
        let (out, _) = print(
            FlowsOutput::Table,
            true,
            &[flow(&tcp_record()), flow(&tcp_record())],
        );
        assert_eq!(out.lines().filter(|l| l.starts_with("TIME")).count(), 1);
        assert_eq!(out.lines().count(), 3);

        // A cell wider than its column widens it for the following lines.
        let mut wide = tcp_record();
        wide.source.process = Some("a-very-long-process-name".into());
        let (out, _) = print(
            FlowsOutput::Table,
            true,
            &[flow(&wide), flow(&tcp_record())],
        );
        let lines: Vec<&str> = out.lines().collect();
        let arrow = |l: &str| l.find("->").unwrap();
        assert!(arrow(lines[2]) >= arrow(lines[1]), "{out}");
    }

    #[test]
    fn defaults_follow_hubble() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let filter = FlowFilter::default();
        let req = |args: FlowsArgs| args.request(&filter, now);

        let plain = req(FlowsArgs::default());
        assert_eq!((plain.last, plain.since_unix_nanos), (DEFAULT_LAST, 0));

        let follow = req(FlowsArgs {
            follow: true,
            ..Default::default()
        });
        assert_eq!(follow.last, 0);
        assert_eq!(follow.since_unix_nanos, 1_000_000_000_000, "live only");

        let all = req(FlowsArgs {
            all: true,
            ..Default::default()
        });
        assert_eq!((all.last, all.since_unix_nanos), (0, 0));

        let since = req(FlowsArgs {
            since: Some(TimeArg::Ago(Duration::from_secs(300))),
            follow: true,
            ..Default::default()
        });
        assert_eq!((since.last, since.since_unix_nanos), (0, 700_000_000_000));
    }

    #[test]
    fn comma_separated_and_repeated_filters() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flows: FlowsArgs,
        }
        let cli = Cli::try_parse_from([
            "flows",
            "--protocol",
            "tcp,dns",
            "--protocol",
            "http",
            "--port",
            "80,443",
        ])
        .unwrap();
        let filters = &cli.flows.filters;
        assert_eq!(filters.protocol, ["tcp", "dns", "http"]);
        assert!(filters.to_filter().is_ok());

        let bad = Cli::try_parse_from(["flows", "--protocol", "tcp,htp"]).unwrap();
        let err = bad.flows.filters.to_filter().unwrap_err();
        assert!(err.to_string().starts_with("invalid --protocol \"htp\""));

        let zero = Cli::try_parse_from(["flows", "--last", "0"]).err().unwrap();
        assert!(zero.to_string().contains("use --all"), "{zero}");
        assert!(Cli::try_parse_from(["flows", "--last", "5", "--all"]).is_err());
        assert!(Cli::try_parse_from(["flows", "--since", "5 parsecs"]).is_err());
    }

    #[test]
    fn first_until_and_times() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flows: FlowsArgs,
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let request = |args: &[&str]| {
            let mut argv = vec!["flows"];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).unwrap();
            cli.flows.request(&FlowFilter::default(), now)
        };
        let first = request(&["--first", "3"]);
        assert_eq!(
            (first.first, first.last),
            (3, 0),
            "--first replaces the default --last"
        );
        let window = request(&["--since", "60s", "--until", "30s"]);
        assert_eq!(window.since_unix_nanos, 940_000_000_000);
        assert_eq!(window.until_unix_nanos, 970_000_000_000);
        assert_eq!(window.last, 0);
        let at = request(&["--until", "1970-01-01T00:10:00Z"]);
        assert_eq!(at.until_unix_nanos, 600_000_000_000);
        for bad in [
            &["--first", "3", "--last", "3"][..],
            &["--first", "3", "--follow"],
            &["--until", "5m", "--follow"],
            &["--first", "0"],
            &["--until", "yesterday"],
            &["-o", "yaml"],
        ] {
            let mut argv = vec!["flows"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compact_and_dict_print_each_record() {
        let (out, _) = print(
            FlowsOutput::Compact,
            false,
            &[flow(&tcp_record()), flow(&tcp_record())],
        );
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.lines().all(|l| l.contains(" -> ")), "{out}");
        let (out, _) = print(
            FlowsOutput::Dict,
            true,
            &[flow(&tcp_record()), flow(&tcp_record())],
        );
        let blocks: Vec<&str> = out.split("------------\n").collect();
        assert_eq!(blocks.len(), 2, "{out}");
        assert!(
            blocks.iter().all(|b| b.starts_with("  TIMESTAMP: ")),
            "{out}"
        );
    }
}
