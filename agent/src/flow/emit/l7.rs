//! L7 records and metrics: one record per request/response exchange, and
//! the OpenTelemetry-named duration histograms.

use serde_json::{Map, Value};
use weft_common::Owner;
use weft_l7::{Exchange, MetricAttributes};

use super::{Emitter, Observation};
use crate::{
    export::l7_metrics::{DbLabels, DnsLabels, HttpLabels, L7Metrics, RpcLabels},
    flow::{
        addr::FlowKey,
        clock,
        emit::Figures,
        record::{FlowEvent, FlowRecord, FlowType, Verdict},
    },
};

/// Where an exchange was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDirection {
    /// At the client's socket: an outgoing request.
    Egress,
    /// At the server's socket: an incoming request.
    Ingress,
}

impl TrafficDirection {
    pub fn name(self) -> &'static str {
        match self {
            TrafficDirection::Egress => "egress",
            TrafficDirection::Ingress => "ingress",
        }
    }
}

impl Emitter {
    /// Writes the record and observes the histogram of one exchange.
    pub fn emit_l7(
        &mut self,
        metrics: &L7Metrics,
        key: &FlowKey,
        client: Option<&Owner>,
        server: Option<&Owner>,
        direction: TrafficDirection,
        ex: &Exchange,
    ) {
        let obs = Observation {
            key,
            event: FlowEvent::Request,
            ts_ns: ex.request_ns,
            start_ns: ex.request_ns,
            client: client.copied(),
            server: server.copied(),
            figures: Figures::default(),
            failure: None,
        };
        let (source, destination) = self.endpoints(&obs);
        let workload = self.labels_of(&source, &destination);
        let seconds = ex.latency_ns() as f64 / 1e9;
        observe(metrics, ex, direction, key, workload, seconds);

        let mut l7 = Map::new();
        l7.insert("protocol".into(), Value::from(ex.protocol.name()));
        for (k, v) in &ex.fields {
            l7.insert(k.clone(), v.clone());
        }
        l7.insert("latency_us".into(), Value::from(ex.latency_ns() / 1_000));
        if !ex.answered {
            l7.insert("answered".into(), Value::from(false));
        }
        let record = FlowRecord {
            time: clock::rfc3339(ex.request_ns),
            flow_type: FlowType::L7,
            event: FlowEvent::Request,
            transport: key.transport,
            source,
            destination,
            bytes_sent: 0,
            bytes_received: 0,
            packets_sent: None,
            packets_received: None,
            retransmits: 0,
            srtt_us: None,
            duration_us: ex.latency_ns() / 1_000,
            resets_sent: 0,
            resets_received: 0,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            failure: None,
            l7: Some(Value::Object(l7)),
            traffic_direction: Some(direction.name().into()),
            mono_ns: ex.request_ns,
        };
        self.store.push(record);
    }
}

fn observe(
    m: &L7Metrics,
    ex: &Exchange,
    direction: TrafficDirection,
    key: &FlowKey,
    workload: crate::export::labels::L4Labels,
    seconds: f64,
) {
    let server = direction == TrafficDirection::Ingress;
    match &ex.metric {
        MetricAttributes::Http {
            method,
            status_code,
            route,
            scheme,
        } => {
            let labels = HttpLabels {
                http_request_method: method.clone(),
                http_response_status_code: status_code.map(|s| s.to_string()).unwrap_or_default(),
                http_route: route.clone(),
                url_scheme: (*scheme).to_owned(),
                server_address: key.server.ip().to_string(),
                server_port: key.server.port().to_string(),
                workload,
            };
            let family = if server {
                &m.http_server
            } else {
                &m.http_client
            };
            family.get_or_create(&labels).observe(seconds);
        }
        MetricAttributes::Rpc {
            system,
            method,
            status_code,
        } => {
            let labels = RpcLabels {
                rpc_system_name: (*system).to_owned(),
                rpc_method: method.clone(),
                rpc_response_status_code: status_code.map(|s| s.to_string()).unwrap_or_default(),
                workload,
            };
            let family = if server { &m.rpc_server } else { &m.rpc_client };
            family.get_or_create(&labels).observe(seconds);
        }
        MetricAttributes::Db {
            system,
            operation,
            error_type,
        } => {
            // Databases are measured at the client (OpenTelemetry has no
            // server-side database metric); the server-side view of the
            // same exchange is a record only.
            if !server {
                let labels = DbLabels {
                    db_system_name: (*system).to_owned(),
                    db_operation_name: operation.clone(),
                    error_type: error_type.clone().unwrap_or_default(),
                    workload,
                };
                m.db_client.get_or_create(&labels).observe(seconds);
            }
        }
        MetricAttributes::Dns {
            question_type,
            response_code,
        } => {
            // A lookup's duration is the client's wait.
            if !server {
                let labels = DnsLabels {
                    dns_question_type: question_type.clone(),
                    dns_response_code: response_code.clone(),
                    workload,
                };
                m.dns_lookup.get_or_create(&labels).observe(seconds);
            }
        }
    }
}
