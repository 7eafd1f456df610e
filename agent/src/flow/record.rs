//! The flow record: what `weft flows -o json` prints and what the flow API
//! carries. Field names are part of the user-facing contract (spec.md).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `l4` for connection and datagram flows, `l7` for requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowType {
    L4,
    L7,
}

/// What happened to the flow when this record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowEvent {
    /// The connection was established (or the first datagram was seen).
    Open,
    /// Periodic progress of a long-lived flow.
    Update,
    /// The connection closed (or a UDP flow went idle).
    Close,
    /// The connection never got established: refused, reset or timed out.
    Fail,
    /// Packets were dropped by the kernel.
    Drop,
    /// An L7 request/response pair.
    Request,
    /// A service's backend was taken out of rotation (passive health):
    /// `destination` is the backend, `health` says why.
    Ejected,
    /// An ejected backend came back into rotation.
    Returned,
    /// A policy rule denied a connect, a datagram or a new connection's
    /// first packet (`verdict: dropped`), or would have in audit mode
    /// (`verdict: audit`); `policy` names the rule.
    Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Forwarded,
    Dropped,
    Redirected,
    /// A deny rule matched in `policy_mode: audit`: recorded, let through.
    Audit,
}

/// Why a connection failed to establish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The peer answered the SYN with a reset (nothing listening).
    Refused,
    /// The handshake was reset after it started.
    Reset,
    /// No answer: the SYN (or SYN-ACK) was lost or dropped, and the
    /// connecting side gave up.
    Timeout,
}

/// One side of a flow. Every level of identity that is known is filled in;
/// the rest is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The Kubernetes workload's name (`frontend`); its kind is in
    /// `workload_kind`.
    pub workload: Option<String>,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`,
    /// `CronJob`, ..., or `Pod` for a pod without a controller.
    #[serde(default)]
    pub workload_kind: Option<String>,
    /// The Kubernetes Service: the one whose virtual IP this is, or one
    /// that selects this pod.
    #[serde(default)]
    pub service: Option<String>,
}

impl Endpoint {
    pub fn from_addr(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            pid: None,
            process: None,
            container_id: None,
            pod: None,
            namespace: None,
            workload: None,
            workload_kind: None,
            service: None,
        }
    }
}

/// A service as named on flow records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    pub name: String,
    pub address: std::net::IpAddr,
    pub port: u16,
}

/// A flow record (`type: l4` today; `l7` records add the `l7` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Wall-clock time of the event, RFC 3339 with nanoseconds, UTC.
    pub time: String,
    #[serde(rename = "type")]
    pub flow_type: FlowType,
    pub event: FlowEvent,
    pub transport: Transport,
    /// The side that opened the connection (the client).
    pub source: Endpoint,
    /// The side that accepted it (the server).
    pub destination: Endpoint,
    /// Payload bytes from source to destination; on an L7 record, the
    /// request's size on the wire.
    pub bytes_sent: u64,
    /// Payload bytes from destination to source; on an L7 record, the
    /// response's size on the wire (0 when unanswered).
    pub bytes_received: u64,
    /// Datagrams from source to destination (UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_sent: Option<u64>,
    /// Datagrams from destination to source (UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_received: Option<u64>,
    pub retransmits: u64,
    /// Smoothed round-trip time, from the client's socket when it is on
    /// this node, else from the server's.
    pub srtt_us: Option<u64>,
    /// Time since the connection started (the SYN) or the first datagram.
    pub duration_us: u64,
    /// TCP resets sent by this node's ends of the connection.
    pub resets_sent: u64,
    /// TCP resets received by this node's ends of the connection.
    pub resets_received: u64,
    pub verdict: Verdict,
    pub drop_reason: Option<String>,
    /// Set on `fail` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The L7 details of `l7` records.
    pub l7: Option<serde_json::Value>,
    /// On `l7` records: `egress` when observed at the client's socket (an
    /// outgoing request), `ingress` at the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<String>,
    /// The service the client dialed, on records of connections made
    /// through one (`destination` is the backend it reached).
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// The policy rule that decided this record's flow.
    #[serde(default)]
    pub policy: Option<String>,
    /// On `ejected` and `returned` records: the reason and the counts
    /// behind the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::steer::health::HealthChange>,
    /// On `l7` records with a span: `trace_id`, `span_id`,
    /// `parent_span_id`.
    #[serde(flatten, default)]
    pub trace: Option<crate::trace::TraceIds>,
    /// On `l7` records: whether the request was read from a TLS
    /// connection's plaintext (at the TLS library).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The kernel's monotonic timestamp of the event, for ordering and
    /// `--since`; not printed.
    #[serde(skip)]
    pub mono_ns: u64,
}

impl FlowRecord {
    /// A record of something that happened to a flow rather than of its
    /// traffic (an ejection, a policy verdict): no bytes, no timing,
    /// forwarded until the caller says otherwise.
    pub fn event_between(
        event: FlowEvent,
        transport: Transport,
        source: Endpoint,
        destination: Endpoint,
        mono_ns: u64,
    ) -> Self {
        Self {
            time: crate::flow::clock::rfc3339(mono_ns),
            flow_type: FlowType::L4,
            event,
            transport,
            source,
            destination,
            bytes_sent: 0,
            bytes_received: 0,
            packets_sent: None,
            packets_received: None,
            retransmits: 0,
            srtt_us: None,
            duration_us: 0,
            resets_sent: 0,
            resets_received: 0,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            failure: None,
            l7: None,
            traffic_direction: None,
            service: None,
            policy: None,
            health: None,
            trace: None,
            tls: None,
            mono_ns,
        }
    }

    /// The protocol name this record matches in `--protocol` filters.
    pub fn protocol_names(&self) -> impl Iterator<Item = &str> {
        let transport = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        let l7 = self
            .l7
            .as_ref()
            .and_then(|l7| l7.get("protocol"))
            .and_then(|p| p.as_str());
        std::iter::once(transport).chain(l7)
    }
}
