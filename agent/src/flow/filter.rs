//! Flow filters: what `weft flows --protocol/--ip/--port/...` select.
//!
//! A [`FlowFilter`] is only ever built through validation, from the command
//! line's strings in the CLI and again from the request in the agent (a
//! client of another version may send anything). The spec wants an unknown
//! value to be an error naming it, never an empty result, so every value is
//! checked here, once, and matching works on parsed values only: no string
//! parsing per record.
//!
//! Semantics: kinds combine with AND, values of one kind with OR, an empty
//! kind does not constrain. Every endpoint filter matches either side.

mod l7;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::api::proto;
use crate::flow::record::{Endpoint, FlowRecord, Verdict};

/// The protocol names `--protocol` accepts: the transports and the L7
/// protocols the parsers report in `l7.protocol`.
pub const PROTOCOLS: &[&str] = &[
    "tcp", "udp", "http", "http2", "grpc", "dns", "redis", "postgres", "mysql",
];

/// A filter value that cannot be used, naming the flag, the value and why.
///
/// Displays as `invalid --protocol "htp": expected one of tcp, udp, ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{filter} {value:?}: {reason}")]
pub struct FilterError {
    /// The flag, without dashes: `protocol`, `ip`, `port`, ...
    pub filter: &'static str,
    /// The value as given.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

impl FilterError {
    fn new(filter: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            filter,
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

/// `--pod [namespace/]name-prefix`: pod names carry generated suffixes
/// (`web-7d9f8-x2k4q`), so, as in Hubble, the name is a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodFilter {
    namespace: Option<String>,
    name_prefix: String,
}

impl PodFilter {
    fn matches(&self, endpoint: &Endpoint) -> bool {
        let name_ok = endpoint
            .pod
            .as_deref()
            .is_some_and(|pod| pod.starts_with(&self.name_prefix));
        let namespace_ok = match &self.namespace {
            None => true,
            Some(ns) => endpoint.namespace.as_deref() == Some(ns.as_str()),
        };
        name_ok && namespace_ok
    }
}

impl std::fmt::Display for PodFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name_prefix),
            None => f.write_str(&self.name_prefix),
        }
    }
}

/// A validated flow filter. Build it with [`FlowFilter::default`] and the
/// `add_*` methods (one call per value), or from the API's
/// [`proto::FlowFilter`] with `TryFrom`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    protocols: Vec<&'static str>,
    ips: Vec<IpNet>,
    ports: Vec<u16>,
    pids: Vec<u32>,
    processes: Vec<String>,
    pods: Vec<PodFilter>,
    namespaces: Vec<String>,
    verdicts: Vec<Verdict>,
    services: Vec<String>,
    trace_ids: Vec<String>,
    l7: l7::L7Filter,
}

/// Trims a value and rejects an empty one (`--process ""`, `tcp,,udp`),
/// which would otherwise silently match nothing.
fn non_empty<'a>(filter: &'static str, value: &'a str) -> Result<&'a str, FilterError> {
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

    /// `--ip`: an address or a CIDR.
    pub fn add_ip(&mut self, value: &str) -> Result<(), FilterError> {
        let text = non_empty("ip", value)?;
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                FilterError::new(
                    "ip",
                    value,
                    "expected an IP address (10.0.0.1, fd00::1) or a CIDR (10.0.0.0/8)",
                )
            })?;
        self.ips.push(net);
        Ok(())
    }

    /// `--port`, as typed on the command line.
    pub fn add_port(&mut self, value: &str) -> Result<(), FilterError> {
        let port = non_empty("port", value)?
            .parse::<u16>()
            .map_err(|_| FilterError::new("port", value, "expected a port number (0-65535)"))?;
        self.ports.push(port);
        Ok(())
    }

    /// `--pid`, as typed on the command line.
    pub fn add_pid(&mut self, value: &str) -> Result<(), FilterError> {
        let pid = non_empty("pid", value)?
            .parse::<u32>()
            .map_err(|_| FilterError::new("pid", value, "expected a process id (a number)"))?;
        self.pids.push(pid);
        Ok(())
    }

    /// `--process`: a process name (comm), matched exactly.
    pub fn add_process(&mut self, value: &str) -> Result<(), FilterError> {
        let name = non_empty("process", value)?;
        self.processes.push(name.to_owned());
        Ok(())
    }

    /// `--pod`: `[namespace/]name-prefix`.
    pub fn add_pod(&mut self, value: &str) -> Result<(), FilterError> {
        let text = non_empty("pod", value)?;
        let invalid = || {
            FilterError::new(
                "pod",
                value,
                "expected [namespace/]pod-name-prefix (to match a whole namespace, use --namespace)",
            )
        };
        let pod = match text.split_once('/') {
            None => PodFilter {
                namespace: None,
                name_prefix: text.to_owned(),
            },
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(invalid());
                }
                PodFilter {
                    namespace: Some(ns.to_owned()),
                    name_prefix: name.to_owned(),
                }
            }
        };
        self.pods.push(pod);
        Ok(())
    }

    /// `--namespace`: a Kubernetes namespace, matched exactly.
    pub fn add_namespace(&mut self, value: &str) -> Result<(), FilterError> {
        let ns = non_empty("namespace", value)?;
        if ns.contains('/') {
            return Err(FilterError::new(
                "namespace",
                value,
                "a namespace name cannot contain '/' (for a pod, use --pod namespace/name)",
            ));
        }
        self.namespaces.push(ns.to_owned());
        Ok(())
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
                    "expected one of forwarded, dropped, redirected",
                ));
            }
        };
        self.verdicts.push(verdict);
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

    /// The service names asked for.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Whether `record` passes: every constrained kind has a matching value.
    pub fn matches(&self, record: &FlowRecord) -> bool {
        self.l7.matches(record) && self.l4_matches(record)
    }

    fn l4_matches(&self, record: &FlowRecord) -> bool {
        let sides = [&record.source, &record.destination];
        let any_side = |pred: &dyn Fn(&Endpoint) -> bool| sides.iter().any(|e| pred(e));

        (self.protocols.is_empty()
            || record
                .protocol_names()
                .any(|name| self.protocols.contains(&name)))
            && (self.verdicts.is_empty() || self.verdicts.contains(&record.verdict))
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
            && (self.ports.is_empty() || any_side(&|e| self.ports.contains(&e.port)))
            && (self.ips.is_empty() || any_side(&|e| self.ip_matches(e.ip)))
            && (self.pids.is_empty()
                || any_side(&|e| e.pid.is_some_and(|p| self.pids.contains(&p))))
            && (self.processes.is_empty()
                || any_side(&|e| {
                    e.process
                        .as_deref()
                        .is_some_and(|p| self.processes.iter().any(|want| want == p))
                }))
            && (self.pods.is_empty() || any_side(&|e| self.pods.iter().any(|pod| pod.matches(e))))
            && (self.namespaces.is_empty()
                || any_side(&|e| {
                    e.namespace
                        .as_deref()
                        .is_some_and(|ns| self.namespaces.iter().any(|want| want == ns))
                }))
    }

    /// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; an IPv4
    /// filter must still match them.
    fn ip_matches(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.ips
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }
}

/// The agent validates what it receives: the same checks, the same messages.
impl TryFrom<&proto::FlowFilter> for FlowFilter {
    type Error = FilterError;

    fn try_from(raw: &proto::FlowFilter) -> Result<Self, FilterError> {
        let mut filter = FlowFilter::default();
        for v in &raw.protocol {
            filter.add_protocol(v)?;
        }
        for v in &raw.ip {
            filter.add_ip(v)?;
        }
        for &v in &raw.port {
            let port = u16::try_from(v).map_err(|_| {
                FilterError::new("port", &v.to_string(), "expected a port number (0-65535)")
            })?;
            filter.ports.push(port);
        }
        filter.pids.extend_from_slice(&raw.pid);
        for v in &raw.process {
            filter.add_process(v)?;
        }
        for v in &raw.pod {
            filter.add_pod(v)?;
        }
        for v in &raw.namespace {
            filter.add_namespace(v)?;
        }
        for v in &raw.verdict {
            filter.add_verdict(v)?;
        }
        for v in &raw.http_status {
            filter.add_http_status(v)?;
        }
        for v in &raw.http_path {
            filter.add_http_path(v)?;
        }
        for v in &raw.dns_query {
            filter.add_dns_query(v)?;
        }
        for v in &raw.service {
            filter.add_service(v)?;
        }
        for v in &raw.trace_id {
            filter.add_trace_id(v)?;
        }
        Ok(filter)
    }
}

impl From<&FlowFilter> for proto::FlowFilter {
    fn from(filter: &FlowFilter) -> Self {
        proto::FlowFilter {
            protocol: filter.protocols.iter().map(|p| (*p).to_owned()).collect(),
            ip: filter.ips.iter().map(IpNet::to_string).collect(),
            port: filter.ports.iter().map(|&p| u32::from(p)).collect(),
            pid: filter.pids.clone(),
            process: filter.processes.clone(),
            pod: filter.pods.iter().map(PodFilter::to_string).collect(),
            namespace: filter.namespaces.clone(),
            verdict: filter
                .verdicts
                .iter()
                .map(|v| verdict_name(*v).to_owned())
                .collect(),
            http_status: filter.l7.statuses(),
            http_path: filter.l7.paths(),
            dns_query: filter.l7.dns_queries(),
            service: filter.services.clone(),
            trace_id: filter.trace_ids.clone(),
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

/// Records for the tests of this crate's flow consumers (filter, store, CLI).
#[cfg(test)]
pub(crate) mod test_support {
    use crate::flow::record::{Endpoint, FlowEvent, FlowRecord, Transport};

    /// A closed TCP connection from `curl[1234] 10.0.0.1:40512` to
    /// `nginx[999] 10.0.0.2:8080`.
    pub(crate) fn tcp_record() -> FlowRecord {
        let mut source = Endpoint::from_addr("10.0.0.1".parse().unwrap(), 40512);
        source.pid = Some(1234);
        source.process = Some("curl".into());
        let mut destination = Endpoint::from_addr("10.0.0.2".parse().unwrap(), 8080);
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
             redis, postgres, mysql"
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
            f.add_verdict("dropped")
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
