//! Flow filters: what `weft flows --protocol/--ip/--from-port/--not ...`
//! select.
//!
//! A [`FlowFilter`] is only ever built through validation, from the command
//! line's strings in the CLI and again from the request in the agent (a
//! client of another version may send anything). The spec wants an unknown
//! value to be an error naming it, never an empty result, so every value is
//! checked here, once, and matching works on parsed values only: no string
//! parsing per record.
//!
//! Semantics: kinds combine with AND, values of one kind with OR, an empty
//! kind does not constrain. The endpoint filters match either side, their
//! `from-` forms the source (the client) and their `to-` forms the
//! destination (the server). A record matching any excluded filter
//! (`--not`) is left out.

mod endpoint;
mod l7;

pub use endpoint::Side;
use endpoint::{EndpointFilter, RawEndpointFilter};

use crate::api::proto;
use crate::flow::record::{FlowEvent, FlowRecord, FlowType, Verdict};

/// The protocol names `--protocol` accepts: the transports and the L7
/// protocols the parsers report in `l7.protocol`.
pub const PROTOCOLS: &[&str] = &[
    "tcp", "udp", "http", "http2", "grpc", "dns", "redis", "postgres", "mysql", "tls",
];

/// The kinds of record `--type` accepts.
pub const TYPES: &[&str] = &["l4", "l7", "drop", "policy", "service"];

/// A filter value that cannot be used, naming the flag, the value and why.
///
/// Displays as `invalid --protocol "htp": expected one of tcp, udp, ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{filter} {value:?}: {reason}")]
pub struct FilterError {
    /// The flag, without dashes: `protocol`, `ip`, `from-port`, ...
    pub filter: String,
    /// The value as given.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

impl FilterError {
    fn new(filter: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            filter: filter.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The agent answers a bad filter with INVALID_ARGUMENT carrying the same
/// message the CLI would print.
impl From<FilterError> for tonic::Status {
    fn from(err: FilterError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// `--type`: which kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordType {
    /// Connection and datagram records (`type: l4`), drops included.
    L4,
    /// Request records (`type: l7`).
    L7,
    /// Packets the kernel dropped (`event: drop`).
    Drop,
    /// Records a policy rule decided (`policy` set).
    Policy,
    /// Records of connections made through a service, and its backends'
    /// ejections and returns.
    Service,
}

impl RecordType {
    fn name(self) -> &'static str {
        match self {
            RecordType::L4 => "l4",
            RecordType::L7 => "l7",
            RecordType::Drop => "drop",
            RecordType::Policy => "policy",
            RecordType::Service => "service",
        }
    }

    fn matches(self, r: &FlowRecord) -> bool {
        match self {
            RecordType::L4 => r.flow_type == FlowType::L4,
            RecordType::L7 => r.flow_type == FlowType::L7,
            RecordType::Drop => r.event == FlowEvent::Drop,
            RecordType::Policy => r.policy.is_some() || r.event == FlowEvent::Policy,
            RecordType::Service => {
                r.service.is_some() || matches!(r.event, FlowEvent::Ejected | FlowEvent::Returned)
            }
        }
    }
}

/// A validated flow filter. Build it with [`FlowFilter::default`] and the
/// `add_*` methods (one call per value), or from the API's
/// [`proto::FlowFilter`] with `TryFrom`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    protocols: Vec<&'static str>,
    either: EndpointFilter,
    from: EndpointFilter,
    to: EndpointFilter,
    verdicts: Vec<Verdict>,
    services: Vec<String>,
    trace_ids: Vec<String>,
    /// `--tls`: L7 records read from TLS plaintext only.
    tls: bool,
    types: Vec<RecordType>,
    /// `ingress` or `egress`.
    directions: Vec<&'static str>,
    l7: l7::L7Filter,
    /// `--not`: records matching any of these are left out.
    exclude: Vec<FlowFilter>,
}

/// Trims a value and rejects an empty one (`--process ""`, `tcp,,udp`),
/// which would otherwise silently match nothing.
fn non_empty<'a>(filter: &str, value: &'a str) -> Result<&'a str, FilterError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(FilterError::new(filter, value, "the value is empty"))
    } else {
        Ok(trimmed)
    }
}

impl FlowFilter {
    /// Whether the filter lets every record through.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn side_mut(&mut self, side: Side) -> &mut EndpointFilter {
        match side {
            Side::Either => &mut self.either,
            Side::From => &mut self.from,
            Side::To => &mut self.to,
        }
    }

    /// `--protocol`: a transport or an L7 protocol, case-insensitive.
    pub fn add_protocol(&mut self, value: &str) -> Result<(), FilterError> {
        let name = non_empty("protocol", value)?.to_ascii_lowercase();
        let known = PROTOCOLS.iter().find(|p| **p == name).ok_or_else(|| {
            FilterError::new(
                "protocol",
                value,
                format!("expected one of {}", PROTOCOLS.join(", ")),
            )
        })?;
        self.protocols.push(known);
        Ok(())
    }

    /// `--ip`: an address or a CIDR, either side.
    pub fn add_ip(&mut self, value: &str) -> Result<(), FilterError> {
        self.add_ip_on(Side::Either, value)
    }

    /// `--ip`, `--from-ip`, `--to-ip`.
    pub fn add_ip_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side).add_ip(&side.flag("ip"), value)
    }

    /// `--port`, as typed on the command line.
    pub fn add_port(&mut self, value: &str) -> Result<(), FilterError> {
        self.add_port_on(Side::Either, value)
    }

    /// `--port`, `--from-port`, `--to-port`.
    pub fn add_port_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side).add_port(&side.flag("port"), value)
    }

    /// `--pid`, as typed on the command line.
    pub fn add_pid(&mut self, value: &str) -> Result<(), FilterError> {
        self.either.add_pid("pid", value)
    }

    /// `--process`: a process name (comm), matched exactly.
    pub fn add_process(&mut self, value: &str) -> Result<(), FilterError> {
        self.add_process_on(Side::Either, value)
    }

    /// `--process`, `--from-process`, `--to-process`.
    pub fn add_process_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side)
            .add_process(&side.flag("process"), value)
    }

    /// `--pod`: `[namespace/]name-prefix`.
    pub fn add_pod(&mut self, value: &str) -> Result<(), FilterError> {
        self.add_pod_on(Side::Either, value)
    }

    /// `--pod`, `--from-pod`, `--to-pod`.
    pub fn add_pod_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side).add_pod(&side.flag("pod"), value)
    }

    /// `--namespace`: a Kubernetes namespace, matched exactly.
    pub fn add_namespace(&mut self, value: &str) -> Result<(), FilterError> {
        self.add_namespace_on(Side::Either, value)
    }

    /// `--namespace`, `--from-namespace`, `--to-namespace`.
    pub fn add_namespace_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side)
            .add_namespace(&side.flag("namespace"), value)
    }

    /// `--workload`, `--from-workload`, `--to-workload`: a Kubernetes
    /// workload's name, matched exactly.
    pub fn add_workload_on(&mut self, side: Side, value: &str) -> Result<(), FilterError> {
        self.side_mut(side)
            .add_workload(&side.flag("workload"), value)
    }

    /// `--verdict`: forwarded, dropped, redirected or audit.
    pub fn add_verdict(&mut self, value: &str) -> Result<(), FilterError> {
        let verdict = match non_empty("verdict", value)?.to_ascii_lowercase().as_str() {
            "forwarded" => Verdict::Forwarded,
            "dropped" => Verdict::Dropped,
            "redirected" => Verdict::Redirected,
            "audit" => Verdict::Audit,
            _ => {
                return Err(FilterError::new(
                    "verdict",
                    value,
                    "expected one of forwarded, dropped, redirected, audit",
                ));
            }
        };
        self.verdicts.push(verdict);
        Ok(())
    }

    /// `--type`: l4, l7, drop, policy or service.
    pub fn add_type(&mut self, value: &str) -> Result<(), FilterError> {
        let name = non_empty("type", value)?.to_ascii_lowercase();
        let kind = [
            RecordType::L4,
            RecordType::L7,
            RecordType::Drop,
            RecordType::Policy,
            RecordType::Service,
        ]
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            FilterError::new(
                "type",
                value,
                format!("expected one of {}", TYPES.join(", ")),
            )
        })?;
        self.types.push(kind);
        Ok(())
    }

    /// `--traffic-direction`: ingress or egress.
    pub fn add_traffic_direction(&mut self, value: &str) -> Result<(), FilterError> {
        let direction = match non_empty("traffic-direction", value)?
            .to_ascii_lowercase()
            .as_str()
        {
            "ingress" => "ingress",
            "egress" => "egress",
            _ => {
                return Err(FilterError::new(
                    "traffic-direction",
                    value,
                    "expected ingress (seen at the server) or egress (seen at the client)",
                ));
            }
        };
        self.directions.push(direction);
        Ok(())
    }

    /// `--http-status`: a code or a class (`5xx`).
    pub fn add_http_status(&mut self, value: &str) -> Result<(), FilterError> {
        self.l7.add_http_status(value)
    }

    /// `--http-path`: a path prefix.
    pub fn add_http_path(&mut self, value: &str) -> Result<(), FilterError> {
        self.l7.add_http_path(value)
    }

    /// `--http-method`: GET, POST, ... (case-insensitive).
    pub fn add_http_method(&mut self, value: &str) -> Result<(), FilterError> {
        self.l7.add_http_method(value)
    }

    /// `--dns-query`: a name and its subdomains.
    pub fn add_dns_query(&mut self, value: &str) -> Result<(), FilterError> {
        self.l7.add_dns_query(value)
    }

    /// `--service`: the name of the service a connection was made through.
    pub fn add_service(&mut self, value: &str) -> Result<(), FilterError> {
        let name = non_empty("service", value)?;
        self.services.push(name.to_owned());
        Ok(())
    }

    /// `--trace-id`: the trace of L7 records (32 hex digits).
    pub fn add_trace_id(&mut self, value: &str) -> Result<(), FilterError> {
        let id = non_empty("trace-id", value)?.to_ascii_lowercase();
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FilterError::new(
                "trace-id",
                value,
                "expected a trace id (32 hex digits)",
            ));
        }
        self.trace_ids.push(id);
        Ok(())
    }

    /// `--tls` (its implicit value is `true`): L7 records whose request
    /// was read from a TLS connection's plaintext.
    pub fn add_tls(&mut self, value: &str) -> Result<(), FilterError> {
        if value != "true" {
            return Err(FilterError::new("tls", value, "--tls takes no value"));
        }
        self.tls = true;
        Ok(())
    }

    /// `--not`: leaves out the records `negated` matches (one filter flag
    /// with its values). An empty one would leave out everything, and is
    /// refused.
    pub fn exclude(&mut self, negated: FlowFilter) -> Result<(), FilterError> {
        if negated.is_empty() || !negated.exclude.is_empty() {
            return Err(FilterError::new(
                "not",
                "",
                "--not must be followed by one filter flag and its values (--not --port 80)",
            ));
        }
        self.exclude.push(negated);
        Ok(())
    }

    /// The service names asked for, excluded ones included (each must be
    /// a service the agent steers).
    pub fn services(&self) -> Vec<&String> {
        self.services
            .iter()
            .chain(self.exclude.iter().flat_map(|f| &f.services))
            .collect()
    }

    /// Whether `record` passes: every constrained kind has a matching
    /// value, and no excluded filter matches it.
    pub fn matches(&self, record: &FlowRecord) -> bool {
        self.l7.matches(record)
            && self.kinds_match(record)
            && self.either.matches(Side::Either, record)
            && self.from.matches(Side::From, record)
            && self.to.matches(Side::To, record)
            && !self.exclude.iter().any(|negated| negated.matches(record))
    }

    fn kinds_match(&self, record: &FlowRecord) -> bool {
        (self.protocols.is_empty()
            || record
                .protocol_names()
                .any(|name| self.protocols.contains(&name)))
            && (self.verdicts.is_empty() || self.verdicts.contains(&record.verdict))
            && (self.types.is_empty() || self.types.iter().any(|t| t.matches(record)))
            && (self.directions.is_empty()
                || record
                    .traffic_direction
                    .as_deref()
                    .is_some_and(|d| self.directions.contains(&d)))
            && (!self.tls || record.tls == Some(true))
            && (self.trace_ids.is_empty()
                || record
                    .trace
                    .as_ref()
                    .is_some_and(|t| self.trace_ids.contains(&t.trace_id)))
            && (self.services.is_empty()
                || record
                    .service
                    .as_ref()
                    .is_some_and(|s| self.services.contains(&s.name)))
    }
}

/// The agent validates what it receives: the same checks, the same messages.
impl TryFrom<&proto::FlowFilter> for FlowFilter {
    type Error = FilterError;

    fn try_from(raw: &proto::FlowFilter) -> Result<Self, FilterError> {
        let mut filter = FlowFilter::default();
        type Add = fn(&mut FlowFilter, &str) -> Result<(), FilterError>;
        let kinds: [(&[String], Add); 10] = [
            (&raw.protocol, FlowFilter::add_protocol),
            (&raw.verdict, FlowFilter::add_verdict),
            (&raw.r#type, FlowFilter::add_type),
            (&raw.traffic_direction, FlowFilter::add_traffic_direction),
            (&raw.http_status, FlowFilter::add_http_status),
            (&raw.http_path, FlowFilter::add_http_path),
            (&raw.http_method, FlowFilter::add_http_method),
            (&raw.dns_query, FlowFilter::add_dns_query),
            (&raw.service, FlowFilter::add_service),
            (&raw.trace_id, FlowFilter::add_trace_id),
        ];
        for (values, add) in kinds {
            for v in values {
                add(&mut filter, v)?;
            }
        }
        filter.tls = raw.tls;
        filter.either.read(
            Side::Either,
            RawEndpointFilter {
                ip: &raw.ip,
                port: &raw.port,
                pid: &raw.pid,
                process: &raw.process,
                pod: &raw.pod,
                namespace: &raw.namespace,
                workload: &raw.workload,
            },
        )?;
        filter.from.read(
            Side::From,
            RawEndpointFilter {
                ip: &raw.from_ip,
                port: &raw.from_port,
                pid: &[],
                process: &raw.from_process,
                pod: &raw.from_pod,
                namespace: &raw.from_namespace,
                workload: &raw.from_workload,
            },
        )?;
        filter.to.read(
            Side::To,
            RawEndpointFilter {
                ip: &raw.to_ip,
                port: &raw.to_port,
                pid: &[],
                process: &raw.to_process,
                pod: &raw.to_pod,
                namespace: &raw.to_namespace,
                workload: &raw.to_workload,
            },
        )?;
        for negated in &raw.exclude {
            filter.exclude(FlowFilter::try_from(negated)?)?;
        }
        Ok(filter)
    }
}

impl From<&FlowFilter> for proto::FlowFilter {
    fn from(filter: &FlowFilter) -> Self {
        let either = filter.either.write();
        let from = filter.from.write();
        let to = filter.to.write();
        proto::FlowFilter {
            protocol: filter.protocols.iter().map(|p| (*p).to_owned()).collect(),
            ip: either.ip,
            port: either.port,
            pid: either.pid,
            process: either.process,
            pod: either.pod,
            namespace: either.namespace,
            workload: either.workload,
            from_ip: from.ip,
            to_ip: to.ip,
            from_port: from.port,
            to_port: to.port,
            from_process: from.process,
            to_process: to.process,
            from_pod: from.pod,
            to_pod: to.pod,
            from_namespace: from.namespace,
            to_namespace: to.namespace,
            from_workload: from.workload,
            to_workload: to.workload,
            verdict: filter
                .verdicts
                .iter()
                .map(|v| verdict_name(*v).to_owned())
                .collect(),
            r#type: filter.types.iter().map(|t| t.name().to_owned()).collect(),
            traffic_direction: filter.directions.iter().map(|d| (*d).to_owned()).collect(),
            http_status: filter.l7.statuses(),
            http_path: filter.l7.paths(),
            http_method: filter.l7.methods(),
            dns_query: filter.l7.dns_queries(),
            service: filter.services.clone(),
            trace_id: filter.trace_ids.clone(),
            tls: filter.tls,
            exclude: filter.exclude.iter().map(proto::FlowFilter::from).collect(),
        }
    }
}

/// The JSON spelling of a verdict (`forwarded`, ...).
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Forwarded => "forwarded",
        Verdict::Dropped => "dropped",
        Verdict::Redirected => "redirected",
        Verdict::Audit => "audit",
    }
}

/// Records for the tests of this crate's flow consumers (filter, store, CLI)
/// and for its fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod test_support {
    use crate::flow::record::{Endpoint, FlowEvent, FlowRecord, Transport};

    /// A closed TCP connection from `curl[1234] 10.0.0.1:40512` to
    /// `nginx[999] 10.0.0.2:8080`.
    pub(crate) fn tcp_record() -> FlowRecord {
        let ip = |text: &str| -> std::net::IpAddr { text.parse().expect("an address") };
        let mut source = Endpoint::from_addr(ip("10.0.0.1"), 40512);
        source.pid = Some(1234);
        source.process = Some("curl".into());
        let mut destination = Endpoint::from_addr(ip("10.0.0.2"), 8080);
        destination.pid = Some(999);
        destination.process = Some("nginx".into());
        let mut r =
            FlowRecord::event_between(FlowEvent::Close, Transport::Tcp, source, destination, 0);
        r.time = "2026-11-28T21:00:00.123456789Z".into();
        r.bytes_sent = 1_000_000;
        r.bytes_received = 250_000;
        r.srtt_us = Some(41);
        r.duration_us = 1830;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::tcp_record;
    use super::*;
    use crate::flow::record::Transport;

    fn filter(build: impl FnOnce(&mut FlowFilter) -> Result<(), FilterError>) -> FlowFilter {
        let mut f = FlowFilter::default();
        build(&mut f).unwrap();
        f
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = FlowFilter::default();
        assert!(f.is_empty());
        assert!(f.matches(&tcp_record()));
    }

    #[test]
    fn unknown_protocol_lists_the_known_ones() {
        let err = FlowFilter::default().add_protocol("htp").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --protocol \"htp\": expected one of tcp, udp, http, http2, grpc, dns, \
             redis, postgres, mysql, tls"
        );
    }

    type Add = fn(&mut FlowFilter, &str) -> Result<(), FilterError>;

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let mut f = FlowFilter::default();
        let cases: [(Add, &str, &str); 8] = [
            (FlowFilter::add_ip, "10.0.0.300", "ip"),
            (FlowFilter::add_port, "http", "port"),
            (FlowFilter::add_port, "65536", "port"),
            (FlowFilter::add_pid, "-1", "pid"),
            (FlowFilter::add_verdict, "allowed", "verdict"),
            (FlowFilter::add_pod, "ns/", "pod"),
            (FlowFilter::add_namespace, "a/b", "namespace"),
            (FlowFilter::add_process, "  ", "process"),
        ];
        for (add, value, flag) in cases {
            let err = add(&mut f, value).unwrap_err();
            assert_eq!(err.filter, flag);
            assert_eq!(err.value, value);
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid --{flag} {value:?}: ")),
                "{err}"
            );
        }
        assert!(f.is_empty(), "a rejected value must not be added");
    }

    #[test]
    fn protocol_matches_transport_and_l7() {
        let mut rec = tcp_record();
        assert!(filter(|f| f.add_protocol("TCP")).matches(&rec));
        assert!(!filter(|f| f.add_protocol("udp")).matches(&rec));
        assert!(!filter(|f| f.add_protocol("http")).matches(&rec));
        rec.l7 = Some(serde_json::json!({"protocol": "http", "method": "GET"}));
        assert!(filter(|f| f.add_protocol("http")).matches(&rec));
        rec.transport = Transport::Udp;
        assert!(filter(|f| f.add_protocol("udp")).matches(&rec));
    }

    #[test]
    fn ip_matches_address_or_cidr_on_either_side() {
        let rec = tcp_record();
        assert!(filter(|f| f.add_ip("10.0.0.1")).matches(&rec));
        assert!(filter(|f| f.add_ip("10.0.0.2")).matches(&rec));
        assert!(filter(|f| f.add_ip("10.0.0.0/24")).matches(&rec));
        assert!(!filter(|f| f.add_ip("10.0.1.0/24")).matches(&rec));
        assert!(!filter(|f| f.add_ip("fd00::1")).matches(&rec));
    }

    #[test]
    fn ipv4_filter_matches_mapped_ipv6_addresses() {
        let mut rec = tcp_record();
        rec.source.ip = "::ffff:192.168.1.5".parse().unwrap();
        assert!(filter(|f| f.add_ip("192.168.1.0/24")).matches(&rec));
    }

    #[test]
    fn endpoint_filters_match_either_side() {
        let mut rec = tcp_record();
        rec.destination.pod = Some("web-7d9f8-x2k4q".into());
        rec.destination.namespace = Some("shop".into());
        assert!(filter(|f| f.add_port("40512")).matches(&rec));
        assert!(filter(|f| f.add_port("8080")).matches(&rec));
        assert!(!filter(|f| f.add_port("80")).matches(&rec));
        assert!(filter(|f| f.add_pid("999")).matches(&rec));
        assert!(!filter(|f| f.add_pid("1")).matches(&rec));
        assert!(filter(|f| f.add_process("curl")).matches(&rec));
        assert!(!filter(|f| f.add_process("cur")).matches(&rec), "exact");
        assert!(filter(|f| f.add_pod("web")).matches(&rec), "prefix");
        assert!(filter(|f| f.add_pod("shop/web-7d9f8")).matches(&rec));
        assert!(!filter(|f| f.add_pod("other/web")).matches(&rec));
        assert!(filter(|f| f.add_namespace("shop")).matches(&rec));
        assert!(!filter(|f| f.add_namespace("sho")).matches(&rec));
        assert!(filter(|f| f.add_verdict("forwarded")).matches(&rec));
        assert!(!filter(|f| f.add_verdict("dropped")).matches(&rec));
    }

    #[test]
    fn kinds_and_values_combine_with_and_or() {
        let rec = tcp_record();
        let or = filter(|f| {
            f.add_port("1")?;
            f.add_port("8080")
        });
        assert!(or.matches(&rec));
        let and_ok = filter(|f| {
            f.add_port("8080")?;
            f.add_process("nginx")
        });
        assert!(and_ok.matches(&rec));
        let and_fail = filter(|f| {
            f.add_port("8080")?;
            f.add_process("redis")
        });
        assert!(!and_fail.matches(&rec));
    }

    /// A connection whose two ends are both on this node: `curl` at
    /// 10.0.0.1 is the source, `nginx` at 10.0.0.2 the destination, and
    /// each end's identity is in its own endpoint.
    fn local_pair() -> FlowRecord {
        let mut rec = tcp_record();
        rec.source.pod = Some("client-5d8f-abcde".into());
        rec.source.namespace = Some("front".into());
        rec.source.workload = Some("client".into());
        rec.destination.pod = Some("web-7d9f8-x2k4q".into());
        rec.destination.namespace = Some("shop".into());
        rec.destination.workload = Some("web".into());
        rec
    }

    #[test]
    fn from_and_to_filters_look_at_one_side() {
        let rec = local_pair();
        type AddOn = fn(&mut FlowFilter, Side, &str) -> Result<(), FilterError>;
        // (kind, the source's value, the destination's value)
        let cases: [(AddOn, &str, &str); 6] = [
            (FlowFilter::add_ip_on, "10.0.0.1", "10.0.0.2/32"),
            (FlowFilter::add_port_on, "40512", "8080"),
            (FlowFilter::add_process_on, "curl", "nginx"),
            (FlowFilter::add_pod_on, "front/client", "web-7d9f8"),
            (FlowFilter::add_namespace_on, "front", "shop"),
            (FlowFilter::add_workload_on, "client", "web"),
        ];
        for (add, source, destination) in cases {
            let on = |side: Side, value: &str| filter(|f| add(f, side, value));
            assert!(on(Side::From, source).matches(&rec), "from {source}");
            assert!(on(Side::To, destination).matches(&rec), "to {destination}");
            assert!(
                !on(Side::From, destination).matches(&rec),
                "from {destination}"
            );
            assert!(!on(Side::To, source).matches(&rec), "to {source}");
            assert!(on(Side::Either, source).matches(&rec), "either {source}");
            assert!(on(Side::Either, destination).matches(&rec));
        }
        // Both sides constrained at once.
        let both = filter(|f| {
            f.add_process_on(Side::From, "curl")?;
            f.add_port_on(Side::To, "8080")
        });
        assert!(both.matches(&rec));
        let crossed = filter(|f| {
            f.add_process_on(Side::From, "nginx")?;
            f.add_port_on(Side::To, "8080")
        });
        assert!(!crossed.matches(&rec));
        // The flag names the side.
        let err = FlowFilter::default()
            .add_port_on(Side::To, "http")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid --to-port \"http\""),
            "{err}"
        );
    }

    #[test]
    fn record_types() {
        let mut rec = tcp_record();
        let is = |rec: &FlowRecord, t: &str| filter(|f| f.add_type(t)).matches(rec);
        assert!(is(&rec, "l4") && !is(&rec, "l7") && !is(&rec, "drop"));
        assert!(!is(&rec, "policy") && !is(&rec, "service"));
        rec.event = FlowEvent::Drop;
        assert!(is(&rec, "drop") && is(&rec, "l4"));
        rec.event = FlowEvent::Policy;
        rec.policy = Some("deny-db".into());
        assert!(is(&rec, "policy") && !is(&rec, "drop"));
        rec.event = FlowEvent::Ejected;
        rec.policy = None;
        assert!(is(&rec, "service"));
        let mut l7 = tcp_record();
        l7.flow_type = FlowType::L7;
        l7.event = FlowEvent::Request;
        assert!(is(&l7, "l7") && !is(&l7, "l4"));
        let err = FlowFilter::default().add_type("trace").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --type \"trace\": expected one of l4, l7, drop, policy, service"
        );
    }

    #[test]
    fn traffic_direction_of_l7_records() {
        let mut rec = tcp_record();
        let egress = filter(|f| f.add_traffic_direction("Egress"));
        assert!(!egress.matches(&rec), "an L4 record has no direction");
        rec.traffic_direction = Some("egress".into());
        assert!(egress.matches(&rec));
        rec.traffic_direction = Some("ingress".into());
        assert!(!egress.matches(&rec));
        assert!(FlowFilter::default().add_traffic_direction("in").is_err());
    }

    #[test]
    fn not_leaves_out_what_it_negates() {
        let rec = local_pair();
        let negated = |build: fn(&mut FlowFilter) -> Result<(), FilterError>| {
            let mut f = FlowFilter::default();
            f.exclude(filter(build)).unwrap();
            f
        };
        assert!(!negated(|f| f.add_port("8080")).matches(&rec));
        assert!(negated(|f| f.add_port("80")).matches(&rec));
        assert!(!negated(|f| f.add_process_on(Side::From, "curl")).matches(&rec));
        assert!(negated(|f| f.add_process_on(Side::To, "curl")).matches(&rec));
        // Values of one negated flag: none of them.
        let two = negated(|f| {
            f.add_port("80")?;
            f.add_port("8080")
        });
        assert!(!two.matches(&rec));
        // With a positive filter: both must hold.
        let mut f = filter(|f| f.add_protocol("tcp"));
        f.exclude(filter(|f| f.add_process("redis"))).unwrap();
        assert!(f.matches(&rec));
        f.exclude(filter(|f| f.add_namespace("shop"))).unwrap();
        assert!(!f.matches(&rec), "any excluded filter leaves it out");
        // Nothing to negate, or a negation inside one, is refused.
        assert!(
            FlowFilter::default()
                .exclude(FlowFilter::default())
                .is_err()
        );
        assert!(FlowFilter::default().exclude(f).is_err());
    }

    #[test]
    fn proto_round_trip_keeps_the_filter() {
        let f = filter(|f| {
            f.add_protocol("dns")?;
            f.add_ip("10.0.0.0/8")?;
            f.add_ip("fd00::1")?;
            f.add_port("53")?;
            f.add_pid("42")?;
            f.add_process("coredns")?;
            f.add_pod("kube-system/coredns")?;
            f.add_pod("web")?;
            f.add_namespace("kube-system")?;
            f.add_verdict("dropped")?;
            f.add_ip_on(Side::From, "10.1.0.0/16")?;
            f.add_port_on(Side::To, "8080")?;
            f.add_process_on(Side::From, "curl")?;
            f.add_pod_on(Side::To, "shop/web")?;
            f.add_namespace_on(Side::From, "front")?;
            f.add_workload_on(Side::To, "web")?;
            f.add_workload_on(Side::Either, "db")?;
            f.add_type("l7")?;
            f.add_traffic_direction("ingress")?;
            f.add_http_method("GET")?;
            f.exclude(filter(|f| f.add_port_on(Side::From, "22")))
        });
        let raw = proto::FlowFilter::from(&f);
        assert_eq!(FlowFilter::try_from(&raw).unwrap(), f);
    }

    #[test]
    fn server_side_validation_rejects_bad_proto_values() {
        let raw = proto::FlowFilter {
            port: vec![70000],
            ..Default::default()
        };
        let err = FlowFilter::try_from(&raw).unwrap_err();
        assert_eq!(err.filter, "port");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("\"70000\""),
            "{}",
            status.message()
        );

        let raw = proto::FlowFilter {
            protocol: vec!["smtp".into()],
            ..Default::default()
        };
        let status = tonic::Status::from(FlowFilter::try_from(&raw).unwrap_err());
        assert!(status.message().starts_with("invalid --protocol \"smtp\""));
    }
}
