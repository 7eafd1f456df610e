//! `weft status`: the agent's health — attached programs, kernel features,
//! event rates, losses, map fill, table fill.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::table::Table;
use super::{ApiSocketArgs, ask_json, print};
use crate::api::proto;
use crate::status::{StatusReport, TableStatus};

/// Output formats of `weft status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StatusOutput {
    /// Sections for people.
    #[default]
    Table,
    /// The report as one JSON object.
    Json,
}

/// The local agent's health: attached programs, event rates, losses, map fill, version
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: ApiSocketArgs,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = StatusOutput::Table)]
    pub output: StatusOutput,
}

/// Runs `weft status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = args.socket.path();
    let answer = ask_json(&socket, |mut client| async move {
        let response = client.get_status(proto::GetStatusRequest {}).await?;
        Ok(response.into_inner().json)
    })
    .await?;
    match answer {
        Ok(json) => print(&render(&json, args.output)?),
        Err(code) => Ok(code),
    }
}

/// The agent's JSON report in the chosen format.
fn render(json: &str, output: StatusOutput) -> anyhow::Result<String> {
    const SKEW: &str =
        "cannot decode the agent's status report (is the agent another version of weft?)";
    let report: StatusReport = serde_json::from_str(json).context(SKEW)?;
    match output {
        // Typed rather than a generic JSON value, which would sort the keys
        // instead of keeping the report's order.
        StatusOutput::Json => Ok(serde_json::to_string_pretty(&report)? + "\n"),
        StatusOutput::Table => Ok(table(&report)),
    }
}

/// The report for people, one section per concern.
fn table(report: &StatusReport) -> String {
    let mut out = String::new();
    let uptime = humantime::format_duration(Duration::from_secs(report.uptime_seconds));
    let _ = writeln!(
        out,
        "weft {}  pid {}  kernel {}  up {uptime}",
        report.version, report.pid, report.kernel
    );

    section(
        &mut out,
        "attached programs",
        &["PROGRAM", "KIND", "ATTACH POINT"],
        {
            report
                .programs
                .iter()
                .map(|p| vec![p.name.clone(), p.kind.clone(), p.attach_point.clone()])
                .collect()
        },
    );

    // Shown only when a kernel refused something: the usual case is none.
    if !report.failed_programs.is_empty() {
        section(
            &mut out,
            "programs the kernel refused",
            &["PROGRAM", "ATTACH POINT", "ERROR"],
            report
                .failed_programs
                .iter()
                .map(|p| vec![p.name.clone(), p.attach_point.clone(), p.error.clone()])
                .collect(),
        );
    }

    section(
        &mut out,
        "kernel features",
        &["FEATURE", "AVAILABLE", "DETAIL"],
        {
            report
                .features
                .iter()
                .map(|f| {
                    let yes_no = if f.available { "yes" } else { "no" };
                    vec![f.name.clone(), yes_no.to_owned(), f.detail.clone()]
                })
                .collect()
        },
    );

    section(
        &mut out,
        "events",
        &["EVENT SOURCE", "TOTAL", "PER SECOND"],
        {
            report
                .events
                .iter()
                .map(|e| {
                    vec![
                        e.source.clone(),
                        e.total.to_string(),
                        format!("{:.1}", e.per_second),
                    ]
                })
                .collect()
        },
    );

    out.push('\n');
    if report.losses.iter().all(|l| l.total == 0) {
        out.push_str("lost events: none\n");
    } else {
        let mut t = Table::new(&["LOST EVENTS", "STAGE", "TOTAL"]);
        for l in report.losses.iter().filter(|l| l.total > 0) {
            t.push(vec![l.source.clone(), l.stage.clone(), l.total.to_string()]);
        }
        out.push_str(&t.render());
    }

    section(&mut out, "maps", &["MAP", "ENTRIES/CAPACITY", "FILL"], {
        report
            .maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    format!("{}/{}", m.entries, m.capacity),
                    fill(m.entries, m.capacity),
                ]
            })
            .collect()
    });

    let mut tables = Table::new(&["TABLE", "ENTRIES/CAPACITY", "FILL", "EVICTED"]);
    tables.push(table_row("flow table", &report.flow_table));
    tables.push(table_row("flow store", &report.flow_store));
    out.push('\n');
    out.push_str(&tables.render());
    out
}

/// A titled table, or `<title>: none` when there is nothing to list.
fn section(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    out.push('\n');
    if rows.is_empty() {
        let _ = writeln!(out, "{title}: none");
        return;
    }
    let mut t = Table::new(header);
    for row in rows {
        t.push(row);
    }
    out.push_str(&t.render());
}

fn table_row(name: &str, t: &TableStatus) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{}/{}", t.entries, t.capacity),
        fill(t.entries, t.capacity),
        t.evicted.to_string(),
    ]
}

/// `12.5%`, or `-` for an unknown capacity.
fn fill(entries: u64, capacity: u64) -> String {
    if capacity == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", entries as f64 * 100.0 / capacity as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        EventSourceStatus, FeatureStatus, LossStatus, MapStatus, ProgramFailure, ProgramStatus,
    };

    fn report() -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            pid: 4242,
            kernel: "6.8.0".into(),
            uptime_seconds: 3723,
            programs: vec![ProgramStatus {
                name: "inet_sock_set_state".into(),
                kind: "tracepoint".into(),
                attach_point: "sock/inet_sock_set_state".into(),
            }],
            failed_programs: Vec::new(),
            features: vec![FeatureStatus {
                name: "btf".into(),
                available: true,
                detail: "/sys/kernel/btf/vmlinux".into(),
            }],
            events: vec![EventSourceStatus {
                source: "tcp".into(),
                total: 1000,
                per_second: 12.34,
            }],
            losses: vec![LossStatus {
                source: "tcp".into(),
                stage: "kernel_ring".into(),
                total: 0,
            }],
            maps: vec![MapStatus {
                name: "conns".into(),
                entries: 512,
                capacity: 4096,
            }],
            flow_table: TableStatus {
                entries: 10,
                capacity: 100,
                evicted: 0,
            },
            flow_store: TableStatus {
                entries: 100,
                capacity: 100,
                evicted: 7,
            },
        }
    }

    #[test]
    fn table_shows_every_section() {
        let text = table(&report());
        assert!(
            text.starts_with("weft 0.1.0  pid 4242  kernel 6.8.0  up 1h 2m 3s\n"),
            "{text}"
        );
        for needle in [
            "inet_sock_set_state  tracepoint  sock/inet_sock_set_state",
            "btf      yes        /sys/kernel/btf/vmlinux",
            "tcp           1000   12.3",
            "lost events: none",
            "conns  512/4096          12.5%",
            "flow table  10/100            10.0%   0",
            "flow store  100/100           100.0%  7",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn losses_are_listed_when_any() {
        let mut r = report();
        r.losses[0].total = 3;
        r.programs.clear();
        let text = table(&r);
        assert!(
            text.contains("LOST EVENTS  STAGE        TOTAL\ntcp          kernel_ring  3\n"),
            "{text}"
        );
        assert!(text.contains("attached programs: none"), "{text}");
        assert!(!text.contains("refused"), "{text}");
    }

    #[test]
    fn refused_programs_are_listed_with_the_verifiers_words() {
        let mut r = report();
        r.failed_programs.push(ProgramFailure {
            name: "weft_tcp_probe".into(),
            kind: "tracepoint".into(),
            attach_point: "tcp/tcp_probe".into(),
            error: "combined stack size of 2 calls is 672. Too large".into(),
        });
        let text = table(&r);
        assert!(
            text.contains(
                "PROGRAM         ATTACH POINT   ERROR\n\
                 weft_tcp_probe  tcp/tcp_probe  combined stack size of 2 calls is 672. Too large\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_output_keeps_the_report() {
        let json = serde_json::to_string(&report()).unwrap();
        let text = render(&json, StatusOutput::Json).unwrap();
        let back: StatusReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report());
        assert!(render("{}", StatusOutput::Table).is_err());
    }
}
