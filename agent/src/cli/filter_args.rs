//! The filter flags of `weft flows`, and `--not`, which negates the filter
//! flag right after it (`--not --port 80`), as in `hubble observe`.
//!
//! Which flag a `--not` negates depends on the order of the arguments,
//! which clap's derived fields do not keep. clap does number every flag
//! and value it parses (`ArgMatches::indices_of`): `--not` (which takes
//! no value) is numbered n and its implicit value n+1, so the flag right
//! after it is n+2 and its first value n+3, its other comma-separated
//! values following on. [`Negations`] reads those numbers and remembers,
//! for each `--not`, the flag and the positions of the values it negates.

use std::ops::Range;

use clap::{Arg, ArgAction, ArgMatches, error::ErrorKind};

use crate::flow::filter::{FilterError, FlowFilter, Side};

/// The filter flags. Repeating a flag, or giving comma-separated values,
/// ORs the values; different flags AND.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    // First: clap's derived code takes each field's values out of the
    // matches as it reads them, and `--not` needs to see them all.
    #[command(flatten)]
    pub negations: Negations,
    /// tcp, udp, http, http2, grpc, dns, redis, postgres, mysql, tls
    #[arg(long, value_name = "PROTO", value_delimiter = ',')]
    pub protocol: Vec<String>,
    /// Kind of record: l4, l7, drop, policy, service
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub record_type: Vec<String>,
    /// forwarded, dropped, redirected, audit
    #[arg(long, value_name = "VERDICT", value_delimiter = ',')]
    pub verdict: Vec<String>,
    /// Address or CIDR, either side
    #[arg(long, value_name = "IP|CIDR", value_delimiter = ',')]
    pub ip: Vec<String>,
    /// Address or CIDR of the source (the client)
    #[arg(long, value_name = "IP|CIDR", value_delimiter = ',')]
    pub from_ip: Vec<String>,
    /// Address or CIDR of the destination (the server)
    #[arg(long, value_name = "IP|CIDR", value_delimiter = ',')]
    pub to_ip: Vec<String>,
    /// Port, either side
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<String>,
    /// Port of the source
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub from_port: Vec<String>,
    /// Port of the destination
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub to_port: Vec<String>,
    /// Process id, either side
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<String>,
    /// Process name (comm, exact), either side
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub process: Vec<String>,
    /// Process name of the source
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub from_process: Vec<String>,
    /// Process name of the destination
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub to_process: Vec<String>,
    /// Pod name prefix, optionally namespace/prefix, either side
    #[arg(long, value_name = "[NS/]POD", value_delimiter = ',')]
    pub pod: Vec<String>,
    /// Pod of the source
    #[arg(long, value_name = "[NS/]POD", value_delimiter = ',')]
    pub from_pod: Vec<String>,
    /// Pod of the destination
    #[arg(long, value_name = "[NS/]POD", value_delimiter = ',')]
    pub to_pod: Vec<String>,
    /// Kubernetes namespace, either side
    #[arg(long, value_name = "NS", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Namespace of the source
    #[arg(long, value_name = "NS", value_delimiter = ',')]
    pub from_namespace: Vec<String>,
    /// Namespace of the destination
    #[arg(long, value_name = "NS", value_delimiter = ',')]
    pub to_namespace: Vec<String>,
    /// Kubernetes workload name, either side
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub workload: Vec<String>,
    /// Workload of the source
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub from_workload: Vec<String>,
    /// Workload of the destination
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub to_workload: Vec<String>,
    /// Name of the service a connection was made through
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub service: Vec<String>,
    /// Side an L7 record was seen at: egress (the client), ingress (the server)
    #[arg(long, value_name = "DIR", value_delimiter = ',')]
    pub traffic_direction: Vec<String>,
    /// HTTP status code (404) or class (5xx) of L7 records
    #[arg(long, value_name = "CODE", value_delimiter = ',')]
    pub http_status: Vec<String>,
    /// HTTP method of L7 records (GET, POST, ...)
    #[arg(long, value_name = "METHOD", value_delimiter = ',')]
    pub http_method: Vec<String>,
    /// HTTP path prefix of L7 records (/api/)
    #[arg(long, value_name = "PREFIX", value_delimiter = ',')]
    pub http_path: Vec<String>,
    /// DNS name of L7 records (matches subdomains too)
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub dns_query: Vec<String>,
    /// Trace id of L7 records (32 hex digits): every record of a trace
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub trace_id: Vec<String>,
    /// L7 records read from TLS connections' plaintext (--not --tls: the others)
    // No value, but an implicit one, as `--not` has: a `--not` before it
    // finds it by its value's position (see the module's comment).
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append)]
    pub tls: Vec<String>,
}

/// Adds one value of a filter flag.
type Add = fn(&mut FlowFilter, &str) -> Result<(), FilterError>;

/// The clap ids of the filter flags (their field names), each with its
/// values and how to add one: the one list both [`FilterArgs::to_filter`]
/// and [`Negations`] go by.
const FILTER_IDS: [&str; 30] = [
    "protocol",
    "record_type",
    "verdict",
    "ip",
    "from_ip",
    "to_ip",
    "port",
    "from_port",
    "to_port",
    "pid",
    "process",
    "from_process",
    "to_process",
    "pod",
    "from_pod",
    "to_pod",
    "namespace",
    "from_namespace",
    "to_namespace",
    "workload",
    "from_workload",
    "to_workload",
    "service",
    "traffic_direction",
    "http_status",
    "http_method",
    "http_path",
    "dns_query",
    "trace_id",
    "tls",
];

impl FilterArgs {
    /// Each filter flag's values and how to add one, in [`FILTER_IDS`]'s
    /// order.
    fn kinds(&self) -> [(&[String], Add); 30] {
        [
            (&self.protocol, FlowFilter::add_protocol),
            (&self.record_type, FlowFilter::add_type),
            (&self.verdict, FlowFilter::add_verdict),
            (&self.ip, |f, v| f.add_ip_on(Side::Either, v)),
            (&self.from_ip, |f, v| f.add_ip_on(Side::From, v)),
            (&self.to_ip, |f, v| f.add_ip_on(Side::To, v)),
            (&self.port, |f, v| f.add_port_on(Side::Either, v)),
            (&self.from_port, |f, v| f.add_port_on(Side::From, v)),
            (&self.to_port, |f, v| f.add_port_on(Side::To, v)),
            (&self.pid, FlowFilter::add_pid),
            (&self.process, |f, v| f.add_process_on(Side::Either, v)),
            (&self.from_process, |f, v| f.add_process_on(Side::From, v)),
            (&self.to_process, |f, v| f.add_process_on(Side::To, v)),
            (&self.pod, |f, v| f.add_pod_on(Side::Either, v)),
            (&self.from_pod, |f, v| f.add_pod_on(Side::From, v)),
            (&self.to_pod, |f, v| f.add_pod_on(Side::To, v)),
            (&self.namespace, |f, v| f.add_namespace_on(Side::Either, v)),
            (&self.from_namespace, |f, v| {
                f.add_namespace_on(Side::From, v)
            }),
            (&self.to_namespace, |f, v| f.add_namespace_on(Side::To, v)),
            (&self.workload, |f, v| f.add_workload_on(Side::Either, v)),
            (&self.from_workload, |f, v| f.add_workload_on(Side::From, v)),
            (&self.to_workload, |f, v| f.add_workload_on(Side::To, v)),
            (&self.service, FlowFilter::add_service),
            (&self.traffic_direction, FlowFilter::add_traffic_direction),
            (&self.http_status, FlowFilter::add_http_status),
            (&self.http_method, FlowFilter::add_http_method),
            (&self.http_path, FlowFilter::add_http_path),
            (&self.dns_query, FlowFilter::add_dns_query),
            (&self.trace_id, FlowFilter::add_trace_id),
            (&self.tls, FlowFilter::add_tls),
        ]
    }

    /// Validates every value; the first bad one is the error. Values a
    /// `--not` negates go into a filter of their own that leaves records
    /// out.
    pub fn to_filter(&self) -> Result<FlowFilter, FilterError> {
        let mut filter = FlowFilter::default();
        let mut negated = vec![FlowFilter::default(); self.negations.0.len()];
        for (id, (values, add)) in FILTER_IDS.iter().zip(self.kinds()) {
            for (pos, value) in values.iter().enumerate() {
                match self.negations.negating(id, pos) {
                    Some(n) => add(&mut negated[n], value)?,
                    None => add(&mut filter, value)?,
                }
            }
        }
        for n in negated {
            filter.exclude(n)?;
        }
        Ok(filter)
    }
}

/// What each `--not` negates: the clap id of the flag right after it, and
/// the positions, among that flag's values, of the values it gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negations(Vec<(&'static str, Range<usize>)>);

impl Negations {
    /// Which `--not` negates value `pos` of flag `id`, if one does.
    fn negating(&self, id: &str, pos: usize) -> Option<usize> {
        self.0
            .iter()
            .position(|(negated, values)| *negated == id && values.contains(&pos))
    }
}

impl clap::Args for Negations {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new("not")
                .long("not")
                .help("Negate the filter flag that follows it (--not --port 80)")
                .help_heading("Filters")
                // Listed after the filters it negates.
                .display_order(1000)
                // No value of its own, but an implicit one, so that clap
                // numbers each occurrence (see the module's comment).
                .action(ArgAction::Append)
                .num_args(0)
                .default_missing_value("true")
                .value_parser(clap::value_parser!(bool)),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Negations {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let nots: Vec<usize> = matches
            .indices_of("not")
            .map(Iterator::collect)
            .unwrap_or_default();
        let mut negations = Vec::with_capacity(nots.len());
        for not in nots {
            // The implicit value is at `not`; the next flag at `not + 1`,
            // its first value at `not + 2`.
            let first_value = not + 2;
            let negated = FILTER_IDS.iter().find_map(|id| {
                let indices: Vec<usize> = matches.indices_of(id)?.collect();
                let start = indices.iter().position(|&i| i == first_value)?;
                // The values of that one occurrence come one after another.
                let mut end = start + 1;
                while indices.get(end) == Some(&(indices[end - 1] + 1)) {
                    end += 1;
                }
                Some((*id, start..end))
            });
            match negated {
                Some(n) => negations.push(n),
                None => {
                    return Err(clap::Error::raw(
                        ErrorKind::InvalidValue,
                        "--not must be followed by a filter flag and its values \
                         (for example --not --port 80)",
                    ));
                }
            }
        }
        Ok(Self(negations))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::filter::test_support::tcp_record;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        filters: FilterArgs,
    }

    fn parse(args: &[&str]) -> Result<FilterArgs, clap::Error> {
        use clap::Parser;
        let mut argv = vec!["flows"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.filters)
    }

    fn filter(args: &[&str]) -> FlowFilter {
        parse(args).unwrap().to_filter().unwrap()
    }

    /// Every filter flag is in FILTER_IDS, in the order of `kinds`.
    #[test]
    fn every_filter_flag_is_listed() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let ids: Vec<&str> = cmd
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| !["not", "help", "version"].contains(id))
            .collect();
        assert_eq!(ids, FILTER_IDS);
        // And each one's values reach its own kind.
        for id in FILTER_IDS {
            let flag = format!(
                "--{}",
                if id == "record_type" { "type" } else { id }.replace('_', "-")
            );
            // `--tls` takes no value (its implicit one is `true`).
            let args = if id == "tls" {
                parse(&[&flag]).unwrap()
            } else {
                parse(&[&flag, "x"]).unwrap()
            };
            let with_values: Vec<usize> = args
                .kinds()
                .iter()
                .enumerate()
                .filter(|(_, (values, _))| !values.is_empty())
                .map(|(i, _)| i)
                .collect();
            let at = FILTER_IDS.iter().position(|i| *i == id).unwrap();
            assert_eq!(with_values, [at], "{flag}");
        }
    }

    #[test]
    fn tls_selects_records_read_from_tls_plaintext() {
        let mut rec = tcp_record();
        assert!(!filter(&["--tls"]).matches(&rec), "an L4 record");
        rec.tls = Some(false);
        assert!(!filter(&["--tls"]).matches(&rec));
        assert!(filter(&["--not", "--tls"]).matches(&rec));
        rec.tls = Some(true);
        assert!(filter(&["--tls"]).matches(&rec));
        assert!(filter(&["--tls", "--port", "8080"]).matches(&rec));
        assert!(!filter(&["--not", "--tls", "--port", "8080"]).matches(&rec));
        assert!(parse(&["--tls=false"]).is_err(), "no value");
        // Through the API and back.
        let f = filter(&["--tls"]);
        let raw = crate::api::proto::FlowFilter::from(&f);
        assert!(raw.tls);
        assert_eq!(FlowFilter::try_from(&raw).unwrap(), f);
    }

    #[test]
    fn not_negates_the_flag_right_after_it() {
        let rec = tcp_record(); // curl 10.0.0.1:40512 -> nginx 10.0.0.2:8080
        assert!(!filter(&["--not", "--port", "8080"]).matches(&rec));
        assert!(filter(&["--not", "--port", "80"]).matches(&rec));
        // `=` and comma-separated values: all of that flag's values.
        assert!(!filter(&["--not", "--port=80,8080"]).matches(&rec));
        assert!(!filter(&["--not", "--to-port", "80,8080"]).matches(&rec));
        assert!(filter(&["--not", "--from-port", "80,8080"]).matches(&rec));
        // Only the flag right after it: a later occurrence of the same
        // flag is positive.
        let f = filter(&["--not", "--port", "80", "--port", "8080"]);
        assert!(f.matches(&rec));
        let f = filter(&["--port", "8080", "--not", "--port", "40512"]);
        assert!(!f.matches(&rec), "its other port is excluded");
        // Two negations, with positive filters around them.
        let f = filter(&[
            "--protocol",
            "tcp",
            "--not",
            "--from-process",
            "redis",
            "--not",
            "--to-process",
            "postgres",
        ]);
        assert!(f.matches(&rec));
        let f = filter(&["--protocol", "tcp", "--not", "--from-process", "curl"]);
        assert!(!f.matches(&rec));
    }

    #[test]
    fn not_without_a_filter_after_it_is_an_error() {
        for args in [
            &["--not"][..],
            &["--port", "80", "--not"],
            &["--not", "--not", "--port", "80"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(
                err.to_string()
                    .contains("--not must be followed by a filter flag"),
                "{args:?}: {err}"
            );
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        // A bad value after --not names its flag, as anywhere.
        let err = parse(&["--not", "--to-port", "http"])
            .unwrap()
            .to_filter()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid --to-port \"http\""),
            "{err}"
        );
    }

    #[test]
    fn direction_aware_flags_reach_their_side() {
        let rec = tcp_record();
        assert!(filter(&["--from-ip", "10.0.0.1", "--to-port", "8080"]).matches(&rec));
        assert!(!filter(&["--from-ip", "10.0.0.2"]).matches(&rec));
        assert!(filter(&["--from-process", "curl", "--to-process", "nginx"]).matches(&rec));
        assert!(!filter(&["--from-process", "nginx"]).matches(&rec));
        assert!(filter(&["--type", "l4", "--verdict", "forwarded"]).matches(&rec));
        assert!(!filter(&["--type", "l7"]).matches(&rec));
    }
}
