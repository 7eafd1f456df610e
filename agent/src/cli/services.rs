//! `weft services`: the services the local agent steers, each backend with
//! its state, weight and connects.

use std::process::ExitCode;

use anyhow::Context;

use super::table::Table;
use super::{ApiSocketArgs, ask_json, print};
use crate::api::proto;
use crate::steer::report::ServiceReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ServicesOutput {
    /// One line per backend.
    #[default]
    Table,
    /// An array of services.
    Json,
}

/// The services the local agent steers, with their backends
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub socket: ApiSocketArgs,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = ServicesOutput::Table)]
    pub output: ServicesOutput,
}

pub async fn run(args: ServicesArgs) -> anyhow::Result<ExitCode> {
    let socket = args.socket.path();
    let answer = ask_json(&socket, |mut client| async move {
        let response = client.get_services(proto::GetServicesRequest {}).await?;
        Ok(response.into_inner().json)
    })
    .await?;
    let json = match answer {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    let services: Vec<ServiceReport> = serde_json::from_str(&json)
        .context("cannot decode the agent's services (is the agent another version of weft?)")?;
    print(&match args.output {
        ServicesOutput::Json => serde_json::to_string_pretty(&services)? + "\n",
        ServicesOutput::Table => table(&services),
    })
}

/// One row per backend; a service without backends gets one row of its
/// own.
pub fn table(services: &[ServiceReport]) -> String {
    if services.is_empty() {
        return "no services (configure `services:`, docs/steering.md)\n".into();
    }
    let mut t = Table::new(&[
        "SERVICE", "ADDRESS", "PROTO", "SOURCE", "BACKEND", "WEIGHT", "STATE", "CONNECTS",
        "ACTIVE", "FAILS", "L7ERRS", "REFUSED", "AFFINITY",
    ]);
    for s in services {
        let front = format!("{}", std::net::SocketAddr::new(s.address, s.port));
        let affinity = match s.session_affinity_timeout_s {
            Some(t) => format!(
                "{} {}",
                s.session_affinity,
                humantime::format_duration(std::time::Duration::from_secs(t.into()))
            ),
            None => s.session_affinity.clone(),
        };
        let head = |t: &mut Table, rest: [String; 7]| {
            let mut row = vec![
                s.name.clone(),
                front.clone(),
                s.protocol.clone(),
                s.source.clone(),
            ];
            row.extend(rest);
            row.push(s.no_backend.to_string());
            row.push(affinity.clone());
            t.push(row);
        };
        if s.backends.is_empty() {
            head(&mut t, std::array::from_fn(|_| "-".into()));
        }
        for b in &s.backends {
            // Seconds are enough on a terminal.
            let state = match &b.ejected_until {
                Some(until) => format!("{} until {}", b.state, until.get(..19).unwrap_or(until)),
                None => b.state.clone(),
            };
            head(
                &mut t,
                [
                    std::net::SocketAddr::new(b.address, b.port).to_string(),
                    b.weight.to_string(),
                    state,
                    b.connections.to_string(),
                    b.active_connections
                        .map_or_else(|| "-".into(), |n| n.to_string()),
                    b.recent_failures.to_string(),
                    b.recent_l7_errors.to_string(),
                ],
            );
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::report::BackendReport;

    #[test]
    fn the_table_has_a_row_per_backend() {
        let s = ServiceReport {
            name: "web".into(),
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: "tcp".into(),
            source: "config".into(),
            backends: vec![BackendReport {
                address: "10.0.1.2".parse().unwrap(),
                port: 8080,
                weight: 2,
                state: "active".into(),
                ejected_until: None,
                reason: None,
                connections: 7,
                recent_failures: 2,
                recent_l7_errors: 4,
                ejections: 0,
                active_connections: Some(5),
            }],
            no_backend: 0,
            session_affinity: "client_ip".into(),
            session_affinity_timeout_s: Some(10_800),
        };
        let empty = ServiceReport {
            name: "none".into(),
            backends: vec![],
            no_backend: 3,
            session_affinity: "none".into(),
            session_affinity_timeout_s: None,
            ..s.clone()
        };
        let text = table(&[s, empty]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].contains("10.0.1.2:8080")
                && lines[1].contains(" 7 ")
                && lines[1].contains(" 2 ")
                && lines[1].contains(" 4 ")
                && lines[1].contains(" 5 ")
                && lines[1].ends_with("client_ip 3h"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("none") && lines[2].contains(" 3 ") && lines[2].ends_with("none"),
            "{text}"
        );
    }
}
