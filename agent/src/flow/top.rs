//! `weft top`'s figures: golden signals per group over a sliding window,
//! computed in the agent from the records its flow store holds.
//!
//! The records are the observations the metrics count (an L7 exchange's
//! record and its histogram observation are written together; so are an
//! L4 record and its counters' growth), so a window's request count,
//! errors and percentiles are exact: every exchange in the window, not a
//! sample. The window is measured on the store's own clock (when a record
//! was written), which is also when the metrics moved.
//!
//! What is counted, per row:
//! - `requests`: L7 exchanges. An exchange whose two ends are on this node
//!   is recorded at both; it counts once, at the server (as
//!   `http_server_request_duration` counts it): a connection's egress
//!   records are skipped when the window holds ingress records of it.
//! - `errors`: unanswered requests, HTTP 5xx, gRPC status other than OK,
//!   database errors, DNS answers other than NOERROR and NXDOMAIN.
//! - latency percentiles: nearest rank over the counted exchanges.
//! - `bytes_per_s`, `retransmits`: the growth of the L4 records' running
//!   figures inside the window (against the connection's previous record,
//!   read from before the window). Records come at open, every
//!   `update` interval and at close, so a long connection's bytes arrive
//!   in steps. By route, where connections and routes are rows of their
//!   own, a route's bytes are its requests' and responses' sizes.
//! - `connections`: `open` records; `failed_connects`: `fail` records;
//!   `drops`: packets of `drop` records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::{Endpoint, FlowEvent, FlowRecord, FlowType, Transport};

/// How `weft top` groups records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The server's workload (Kubernetes), else its process and port,
    /// else its address.
    #[default]
    Workload,
    /// The server's pod, else as for workload.
    Pod,
    /// The server's process name, else its address.
    Process,
    /// The service the client dialed, else the server's address.
    Service,
    /// The server (as for workload) and the request's route (HTTP method
    /// and route, gRPC method, database operation, DNS question type).
    Route,
    /// Source (client) to destination (server), as for workload.
    Pair,
}

impl GroupBy {
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Workload => "workload",
            GroupBy::Pod => "pod",
            GroupBy::Process => "process",
            GroupBy::Service => "service",
            GroupBy::Route => "route",
            GroupBy::Pair => "pair",
        }
    }

    /// Parses the API's name; the error lists the known ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(name, false).map_err(|_| {
            format!(
                "invalid --by {name:?}: expected one of workload, pod, process, service, route, pair"
            )
        })
    }

    /// The key fields of this grouping, in display order.
    pub fn key_fields(self) -> &'static [&'static str] {
        match self {
            GroupBy::Workload => &["workload"],
            GroupBy::Pod => &["pod"],
            GroupBy::Process => &["process"],
            GroupBy::Service => &["service"],
            GroupBy::Route => &["destination", "route"],
            GroupBy::Pair => &["source", "destination"],
        }
    }

    /// The group of `record`; `None` only for a route asked of an L4
    /// record (which still counts, under route `null`).
    fn key(self, record: &FlowRecord) -> Vec<Option<String>> {
        let d = &record.destination;
        match self {
            GroupBy::Workload => vec![Some(workload_name(d, true))],
            GroupBy::Pod => vec![Some(
                scoped(d.namespace.as_deref(), d.pod.as_deref())
                    .unwrap_or_else(|| workload_name(d, true)),
            )],
            GroupBy::Process => vec![Some(process_name(d, true))],
            GroupBy::Service => vec![Some(
                record
                    .service
                    .as_ref()
                    .map_or_else(|| address(d, true), |s| s.name.clone()),
            )],
            GroupBy::Route => vec![Some(workload_name(d, true)), route(record)],
            GroupBy::Pair => vec![
                Some(workload_name(&record.source, false)),
                Some(workload_name(d, true)),
            ],
        }
    }
}

fn scoped(namespace: Option<&str>, name: Option<&str>) -> Option<String> {
    name.map(|n| match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{n}"),
        _ => n.to_owned(),
    })
}

/// A server is named with its port (its address alone says little), a
/// client without (its port is ephemeral).
fn address(e: &Endpoint, server: bool) -> String {
    if server {
        SocketAddr::new(e.ip, e.port).to_string()
    } else {
        e.ip.to_string()
    }
}

fn process_name(e: &Endpoint, server: bool) -> String {
    e.process.clone().unwrap_or_else(|| address(e, server))
}

/// A workload's name; outside Kubernetes, a server is its process and
/// port (two servers of one program are two services), a client its
/// process.
fn workload_name(e: &Endpoint, server: bool) -> String {
    scoped(e.namespace.as_deref(), e.workload.as_deref()).unwrap_or_else(|| match &e.process {
        Some(process) if server => format!("{process}:{}", e.port),
        _ => process_name(e, server),
    })
}

/// An L7 record's route: what its metrics would label it with.
fn route(record: &FlowRecord) -> Option<String> {
    let l7 = record.l7.as_ref()?;
    let text = |name: &str| l7.get(name).and_then(Value::as_str);
    if let Some(grpc_method) = text("service").zip(text("method")) {
        return Some(format!("{}/{}", grpc_method.0, grpc_method.1));
    }
    if let Some(method) = text("method") {
        let route = text("route").unwrap_or_default();
        return Some(format!("{method} {route}").trim_end().to_owned());
    }
    ["operation", "command", "qtype"]
        .into_iter()
        .find_map(text)
        .map(str::to_owned)
        .or_else(|| text("protocol").map(str::to_owned))
}

/// Whether an L7 record's exchange failed (see the module's comment).
pub fn is_error(l7: &Value) -> bool {
    if l7.get("answered") == Some(&Value::Bool(false)) {
        return true;
    }
    if let Some(code) = l7.get("grpc_status").and_then(Value::as_u64) {
        return code != 0;
    }
    if l7.get("error_code").is_some() {
        return true;
    }
    if let Some(rcode) = l7.get("rcode").and_then(Value::as_str) {
        return !matches!(rcode, "NOERROR" | "NXDOMAIN");
    }
    l7.get("status")
        .and_then(Value::as_u64)
        .is_some_and(|s| s >= 500)
}

/// One group's figures over the window (spec.md: `weft top --once -o json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    /// The group's key fields (`workload`, or `source` and `destination`,
    /// ...), as [`GroupBy::key_fields`] lists them.
    #[serde(flatten)]
    pub key: BTreeMap<String, Option<String>>,
    pub requests: u64,
    pub requests_per_s: f64,
    pub errors: u64,
    /// `null` without requests.
    pub success_rate: Option<f64>,
    pub latency_p50_us: Option<u64>,
    pub latency_p95_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub bytes_per_s: f64,
    pub connections: u64,
    pub connections_per_s: f64,
    pub failed_connects: u64,
    pub retransmits: u64,
    pub drops: u64,
}

/// A whole view (spec.md: `{window_s, by, rows}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopSnapshot {
    /// The window asked for.
    pub window_s: f64,
    /// The part of it the store covers: less when the agent started later,
    /// or when the store had to drop records of the window (then
    /// `complete` is false). Rates are per second of this.
    pub covered_s: f64,
    /// Whether every record of the window was still in the store.
    pub complete: bool,
    pub by: GroupBy,
    pub rows: Vec<TopRow>,
}

/// The records a snapshot is computed from, in the order they were
/// stored: `earlier` (before the window, for the running figures' bases)
/// and `window`.
pub struct Observed {
    pub earlier: Vec<Arc<FlowRecord>>,
    pub window: Vec<Arc<FlowRecord>>,
}

/// A connection, by its two ends: the key of its running figures.
type ConnKey = (Transport, SocketAddr, SocketAddr);

fn conn_key(r: &FlowRecord) -> ConnKey {
    (
        r.transport,
        SocketAddr::new(r.source.ip, r.source.port),
        SocketAddr::new(r.destination.ip, r.destination.port),
    )
}

/// Running byte and retransmit figures of L4 records.
#[derive(Default, Clone, Copy)]
struct Running {
    bytes: u64,
    retransmits: u64,
}

impl Running {
    fn of(r: &FlowRecord) -> Self {
        Self {
            bytes: r.bytes_sent.saturating_add(r.bytes_received),
            retransmits: r.retransmits,
        }
    }

    /// The growth from `self` to `now`. Figures only grow along one
    /// connection; one that shrank is a new connection on the same ports.
    fn growth(self, now: Running) -> Running {
        let grow = |before: u64, after: u64| {
            if after >= before {
                after - before
            } else {
                after
            }
        };
        Running {
            bytes: grow(self.bytes, now.bytes),
            retransmits: grow(self.retransmits, now.retransmits),
        }
    }
}

#[derive(Default)]
struct Accumulator {
    requests: u64,
    /// Request and response sizes of the exchanges counted.
    exchange_bytes: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    bytes: u64,
    connections: u64,
    failed_connects: u64,
    retransmits: u64,
    drops: u64,
}

impl Accumulator {
    fn add(&mut self, record: &FlowRecord, running: &mut HashMap<ConnKey, Running>) {
        match record.flow_type {
            FlowType::L7 => {
                self.requests += 1;
                self.exchange_bytes += record.bytes_sent.saturating_add(record.bytes_received);
                if let Some(l7) = &record.l7 {
                    if is_error(l7) {
                        self.errors += 1;
                    }
                    if let Some(us) = l7.get("latency_us").and_then(Value::as_u64) {
                        self.latencies_us.push(us);
                    }
                }
            }
            FlowType::L4 => match record.event {
                FlowEvent::Open | FlowEvent::Update | FlowEvent::Close => {
                    if record.event == FlowEvent::Open {
                        self.connections += 1;
                    }
                    let now = Running::of(record);
                    let before = running.insert(conn_key(record), now).unwrap_or_default();
                    let grown = before.growth(now);
                    self.bytes += grown.bytes;
                    self.retransmits += grown.retransmits;
                }
                FlowEvent::Fail => self.failed_connects += 1,
                FlowEvent::Drop => self.drops += record.packets_sent.unwrap_or(1),
                _ => {}
            },
        }
    }

    fn row(mut self, key: BTreeMap<String, Option<String>>, by: GroupBy, covered_s: f64) -> TopRow {
        // A connection's bytes are its exchanges' too: count them once,
        // unless routes and connections are rows apart.
        if by == GroupBy::Route {
            self.bytes += self.exchange_bytes;
        }
        self.latencies_us.sort_unstable();
        let rank = |q: f64| percentile(&self.latencies_us, q);
        let per_s = |n: f64| if covered_s > 0.0 { n / covered_s } else { 0.0 };
        TopRow {
            key,
            requests: self.requests,
            requests_per_s: per_s(self.requests as f64),
            errors: self.errors,
            success_rate: (self.requests > 0)
                .then(|| (self.requests - self.errors) as f64 / self.requests as f64),
            latency_p50_us: rank(0.50),
            latency_p95_us: rank(0.95),
            latency_p99_us: rank(0.99),
            bytes_per_s: per_s(self.bytes as f64),
            connections: self.connections,
            connections_per_s: per_s(self.connections as f64),
            failed_connects: self.failed_connects,
            retransmits: self.retransmits,
            drops: self.drops,
        }
    }
}

/// The nearest-rank percentile `q` of sorted values.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The connections whose server side recorded exchanges in the window:
/// their client-side records are the same exchanges seen again.
fn served_here(window: &[Arc<FlowRecord>]) -> HashSet<ConnKey> {
    window
        .iter()
        .filter(|r| r.flow_type == FlowType::L7)
        .filter(|r| r.traffic_direction.as_deref() == Some("ingress"))
        .map(|r| conn_key(r))
        .collect()
}

/// Computes the rows of a window (unsorted: the client sorts as asked).
pub fn snapshot(
    observed: &Observed,
    by: GroupBy,
    window_s: f64,
    covered_s: f64,
    complete: bool,
) -> TopSnapshot {
    let mut running: HashMap<ConnKey, Running> = observed
        .earlier
        .iter()
        .filter(|r| r.flow_type == FlowType::L4)
        .map(|r| (conn_key(r), Running::of(r)))
        .collect();
    let served = served_here(&observed.window);
    let mut groups: BTreeMap<Vec<Option<String>>, Accumulator> = BTreeMap::new();
    for record in &observed.window {
        let seen_again = record.flow_type == FlowType::L7
            && record.traffic_direction.as_deref() == Some("egress")
            && served.contains(&conn_key(record));
        if seen_again {
            continue;
        }
        groups
            .entry(by.key(record))
            .or_default()
            .add(record, &mut running);
    }
    let rows = groups
        .into_iter()
        .map(|(values, acc)| {
            let key = by
                .key_fields()
                .iter()
                .map(|f| (*f).to_owned())
                .zip(values)
                .collect();
            acc.row(key, by, covered_s)
        })
        .collect();
    TopSnapshot {
        window_s,
        covered_s,
        complete,
        by,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flow::filter::test_support::tcp_record;

    fn l7(direction: &str, path_route: &str, status: u64, latency_us: u64) -> Arc<FlowRecord> {
        let mut r = tcp_record();
        r.flow_type = FlowType::L7;
        r.event = FlowEvent::Request;
        r.traffic_direction = Some(direction.into());
        r.l7 = Some(json!({
            "protocol": "http", "method": "GET", "route": path_route,
            "status": status, "latency_us": latency_us,
        }));
        Arc::new(r)
    }

    fn l4(event: FlowEvent, bytes: u64) -> Arc<FlowRecord> {
        let mut r = tcp_record();
        r.event = event;
        r.bytes_sent = bytes;
        r.bytes_received = 0;
        Arc::new(r)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn an_exchange_seen_at_both_ends_counts_once_at_the_server() {
        let mut window = Vec::new();
        for n in 0..10 {
            let status = if n < 2 { 500 } else { 200 };
            window.push(l7("egress", "/a", status, 900 + n));
            window.push(l7("ingress", "/a", status, 100 * (n + 1)));
        }
        let observed = Observed {
            earlier: Vec::new(),
            window,
        };
        let s = snapshot(&observed, GroupBy::Route, 10.0, 10.0, true);
        assert_eq!(s.rows.len(), 1);
        let row = &s.rows[0];
        assert_eq!(row.key["destination"].as_deref(), Some("nginx:8080"));
        assert_eq!(row.key["route"].as_deref(), Some("GET /a"));
        assert_eq!((row.requests, row.errors), (10, 2));
        assert_eq!(row.success_rate, Some(0.8));
        assert_eq!(row.requests_per_s, 1.0);
        // The server's latencies: 100..=1000.
        assert_eq!(row.latency_p50_us, Some(500));
        assert_eq!(row.latency_p99_us, Some(1000));

        // Only the client's records selected (`--traffic-direction
        // egress`): they count.
        let egress = Observed {
            earlier: Vec::new(),
            window: observed
                .window
                .iter()
                .filter(|r| r.traffic_direction.as_deref() == Some("egress"))
                .cloned()
                .collect(),
        };
        let s = snapshot(&egress, GroupBy::Route, 10.0, 10.0, true);
        assert_eq!(s.rows[0].requests, 10);
        assert_eq!(s.rows[0].latency_p50_us, Some(904));
    }

    #[test]
    fn bytes_are_the_growth_inside_the_window() {
        let observed = Observed {
            earlier: vec![l4(FlowEvent::Open, 0), l4(FlowEvent::Update, 1_000)],
            window: vec![l4(FlowEvent::Update, 3_000), l4(FlowEvent::Close, 5_000)],
        };
        let s = snapshot(&observed, GroupBy::Workload, 2.0, 2.0, true);
        let row = &s.rows[0];
        assert_eq!(row.key["workload"].as_deref(), Some("nginx:8080"));
        assert_eq!(row.bytes_per_s, 2_000.0);
        assert_eq!(row.connections, 0, "opened before the window");
        assert_eq!(row.requests, 0);
        assert_eq!(row.success_rate, None);

        // A connection opened inside the window counts from zero.
        let fresh = Observed {
            earlier: Vec::new(),
            window: vec![l4(FlowEvent::Open, 0), l4(FlowEvent::Close, 500)],
        };
        let row = &snapshot(&fresh, GroupBy::Workload, 1.0, 1.0, true).rows[0];
        assert_eq!((row.bytes_per_s, row.connections), (500.0, 1));
    }

    #[test]
    fn a_route_carries_its_exchanges_bytes_and_a_workload_its_connections() {
        let mut exchange = (*l7("ingress", "/a", 200, 10)).clone();
        exchange.bytes_sent = 100;
        exchange.bytes_received = 900;
        let observed = Observed {
            earlier: Vec::new(),
            window: vec![
                Arc::new(exchange),
                l4(FlowEvent::Open, 0),
                l4(FlowEvent::Close, 4_000),
            ],
        };
        let by_route = snapshot(&observed, GroupBy::Route, 1.0, 1.0, true);
        let bytes: Vec<(Option<&str>, f64)> = by_route
            .rows
            .iter()
            .map(|r| (r.key["route"].as_deref(), r.bytes_per_s))
            .collect();
        assert_eq!(bytes, [(None, 4_000.0), (Some("GET /a"), 1_000.0)]);
        let by_workload = snapshot(&observed, GroupBy::Workload, 1.0, 1.0, true);
        assert_eq!(by_workload.rows[0].bytes_per_s, 4_000.0);
    }

    #[test]
    fn failures_drops_and_pairs() {
        let mut fail = tcp_record();
        fail.event = FlowEvent::Fail;
        let mut drop = tcp_record();
        drop.event = FlowEvent::Drop;
        drop.packets_sent = Some(3);
        let observed = Observed {
            earlier: Vec::new(),
            window: vec![Arc::new(fail), Arc::new(drop)],
        };
        let s = snapshot(&observed, GroupBy::Pair, 10.0, 10.0, true);
        let row = &s.rows[0];
        assert_eq!(row.key["source"].as_deref(), Some("curl"));
        assert_eq!(row.key["destination"].as_deref(), Some("nginx:8080"));
        assert_eq!((row.failed_connects, row.drops), (1, 3));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["by"], "pair");
        assert_eq!(json["rows"][0]["source"], "curl");
        assert_eq!(json["rows"][0]["failed_connects"], 1);
    }

    #[test]
    fn errors_per_protocol() {
        assert!(is_error(&json!({"status": 503})));
        assert!(!is_error(&json!({"status": 404})));
        assert!(is_error(&json!({"status": 200, "grpc_status": 5})));
        assert!(!is_error(&json!({"status": 200, "grpc_status": 0})));
        assert!(is_error(&json!({"error_code": "42P01"})));
        assert!(!is_error(&json!({"rcode": "NXDOMAIN"})));
        assert!(is_error(&json!({"rcode": "SERVFAIL"})));
        assert!(is_error(&json!({"method": "GET", "answered": false})));
    }

    #[test]
    fn unnamed_servers_are_their_address_and_bad_groupings_are_refused() {
        let mut r = tcp_record();
        r.destination.process = None;
        assert_eq!(
            GroupBy::Process.key(&r),
            vec![Some("10.0.0.2:8080".to_owned())]
        );
        let err = GroupBy::parse("node").unwrap_err();
        assert!(err.contains("workload, pod"), "{err}");
    }
}
