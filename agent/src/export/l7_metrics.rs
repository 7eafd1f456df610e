//! L7 metric families, named after the OpenTelemetry semantic conventions
//! and translated to Prometheus (dots to underscores, unit suffix), so that
//! dashboards built for other OpenTelemetry sources work unchanged.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, exemplar::HistogramWithExemplars, family::Family},
    registry::{Registry, Unit},
};

use super::labels::L4Labels;

/// The OpenTelemetry default duration buckets (seconds) for HTTP and RPC.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.into_iter())
}

/// A duration histogram whose buckets carry the trace id of their latest
/// observation, when traces are on: an OpenMetrics exemplar, with which a
/// latency panel links to the trace.
pub type Histogram = HistogramWithExemplars<TraceExemplar>;

/// The exemplar's labels: the W3C trace id, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub http_request_method: String,
    pub http_response_status_code: String,
    pub http_route: String,
    pub url_scheme: String,
    pub server_address: String,
    pub server_port: String,
    #[prometheus(flatten)]
    pub workload: L4Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_system_name: String,
    pub rpc_method: String,
    pub rpc_response_status_code: String,
    #[prometheus(flatten)]
    pub workload: L4Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DbLabels {
    pub db_system_name: String,
    pub db_operation_name: String,
    pub error_type: String,
    #[prometheus(flatten)]
    pub workload: L4Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DnsLabels {
    pub dns_question_type: String,
    pub dns_response_code: String,
    #[prometheus(flatten)]
    pub workload: L4Labels,
}

/// `weft_tls_handshakes_total`: OpenTelemetry's `tls.protocol.version`
/// (`1.3`, `1.2`, ...; empty when the server never said), the outcome
/// (`ok`, `failed`) and the SNI (`server_name`, under the label budget).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsLabels {
    pub tls_protocol_version: String,
    pub outcome: String,
    pub server_name: String,
    #[prometheus(flatten)]
    pub workload: L4Labels,
}

type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct L7Metrics {
    pub http_server: Durations<HttpLabels>,
    pub http_client: Durations<HttpLabels>,
    pub rpc_server: Durations<RpcLabels>,
    pub rpc_client: Durations<RpcLabels>,
    pub db_client: Durations<DbLabels>,
    pub dns_lookup: Durations<DnsLabels>,
    pub tls_handshakes: Family<TlsLabels, Counter>,
}

impl L7Metrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            http_server: Family::new_with_constructor(duration_histogram),
            http_client: Family::new_with_constructor(duration_histogram),
            rpc_server: Family::new_with_constructor(duration_histogram),
            rpc_client: Family::new_with_constructor(duration_histogram),
            db_client: Family::new_with_constructor(duration_histogram),
            dns_lookup: Family::new_with_constructor(duration_histogram),
            tls_handshakes: Family::default(),
        };
        r.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, observed at the server's socket",
            Unit::Seconds,
            m.http_server.clone(),
        );
        r.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests, observed at the client's socket",
            Unit::Seconds,
            m.http_client.clone(),
        );
        r.register_with_unit(
            "rpc_server_call_duration",
            "Duration of RPC calls, observed at the server's socket",
            Unit::Seconds,
            m.rpc_server.clone(),
        );
        r.register_with_unit(
            "rpc_client_call_duration",
            "Duration of RPC calls, observed at the client's socket",
            Unit::Seconds,
            m.rpc_client.clone(),
        );
        r.register_with_unit(
            "db_client_operation_duration",
            "Duration of database operations, from the request's first byte to the response's last",
            Unit::Seconds,
            m.db_client.clone(),
        );
        r.register_with_unit(
            "dns_lookup_duration",
            "Duration of DNS lookups",
            Unit::Seconds,
            m.dns_lookup.clone(),
        );
        r.register(
            "weft_tls_handshakes",
            "TLS handshakes seen, by negotiated version and outcome, once per handshake (at the server's socket when the server is on this node)",
            m.tls_handshakes.clone(),
        );
        m
    }
}
