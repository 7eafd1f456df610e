//! `weft policies`: the policy rules the local agent enforces, with how
//! often each decided.

use std::process::ExitCode;

use anyhow::Context;

use super::table::Table;
use super::{ApiSocketArgs, ask_json, print};
use crate::api::proto;
use crate::steer::policy::PolicyReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PoliciesOutput {
    /// One line per rule.
    #[default]
    Table,
    /// An array of rules.
    Json,
}

/// The policy rules the local agent enforces, with their hit counts
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PoliciesArgs {
    #[command(flatten)]
    pub socket: ApiSocketArgs,

    /// Output format
    #[arg(short, long, value_enum, default_value_t = PoliciesOutput::Table)]
    pub output: PoliciesOutput,
}

pub async fn run(args: PoliciesArgs) -> anyhow::Result<ExitCode> {
    let socket = args.socket.path();
    let answer = ask_json(&socket, |mut client| async move {
        let response = client.get_policies(proto::GetPoliciesRequest {}).await?;
        Ok(response.into_inner().json)
    })
    .await?;
    let json = match answer {
        Ok(json) => json,
        Err(code) => return Ok(code),
    };
    let rules: Vec<PolicyReport> = serde_json::from_str(&json)
        .context("cannot decode the agent's policies (is the agent another version of weft?)")?;
    print(&match args.output {
        PoliciesOutput::Json => serde_json::to_string_pretty(&rules)? + "\n",
        PoliciesOutput::Table => table(&rules),
    })
}

/// One row per rule, in the order the rules are matched.
pub fn table(rules: &[PolicyReport]) -> String {
    if rules.is_empty() {
        return "no policies (configure `policies:`, docs/steering.md)\n".into();
    }
    let mut t = Table::new(&[
        "POLICY",
        "DIRECTION",
        "ACTION",
        "MODE",
        "FROM",
        "TO",
        "DROPPED",
        "AUDIT",
        "ALLOWED",
    ]);
    for r in rules {
        t.push(vec![
            r.name.clone(),
            r.direction.clone(),
            r.action.clone(),
            r.mode.clone(),
            r.from.clone(),
            r.to.clone(),
            r.dropped.to_string(),
            r.audit.to_string(),
            r.allowed.to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_rule_with_its_counts() {
        let r = PolicyReport {
            name: "no-8080".into(),
            direction: "egress".into(),
            action: "deny".into(),
            mode: "enforce".into(),
            from: "10.0.0.1/32".into(),
            to: "10.0.0.2/32 port 8080/tcp".into(),
            allowed: 0,
            dropped: 20,
            audit: 0,
        };
        let out = table(&[r]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("POLICY") && lines[0].contains("DROPPED"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "no-8080",
                "egress",
                "deny",
                "enforce",
                "10.0.0.1/32",
                "10.0.0.2/32",
                "port",
                "8080/tcp",
                "20",
                "0",
                "0"
            ]
        );
        assert!(table(&[]).contains("no policies"));
    }
}
