//! L7 records and metrics: one record per request/response exchange, and
//! the OpenTelemetry-named duration histograms.

use serde_json::Value;
use weft_common::Owner;
use weft_l7::{Exchange, MetricAttributes};

use super::{Emitter, Observation};
use crate::{
    export::{
        l7_metrics::{
            DbLabels, DnsLabels, HttpLabels, L7Metrics, RpcLabels, TlsLabels, TraceExemplar,
        },
        labels::ValueBudget,
    },
    flow::{
        addr::FlowKey,
        clock,
        emit::Figures,
        record::{FlowEvent, FlowRecord, FlowType, Verdict},
    },
    trace::Observed,
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
    /// Writes the record and observes the histogram of one exchange (taken
    /// by value: its fields become the record's `l7` object as they are).
    pub fn emit_l7(
        &mut self,
        metrics: &L7Metrics,
        key: &FlowKey,
        client: Option<&Owner>,
        server: Option<&Owner>,
        direction: TrafficDirection,
        ex: Exchange,
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
        // Built only when traces are on.
        let both_local = client.is_some() && server.is_some();
        let at_server = direction == TrafficDirection::Ingress;
        let trace = self.traces.as_mut().and_then(|tracer| {
            let observed = Observed {
                key,
                server: at_server,
                both_local,
                endpoint: if at_server { &destination } else { &source },
            };
            tracer.exchange(&ex, &observed)
        });
        let workload = self.labels_of(&source, &destination);
        let seconds = ex.latency_ns() as f64 / 1e9;
        let exemplar = trace.as_ref().map(|t| TraceExemplar {
            trace_id: t.trace_id.clone(),
        });
        // A handshake seen at both ends is counted once, at the server.
        let counted_elsewhere = direction == TrafficDirection::Egress && server.is_some();
        if !(ex.protocol == weft_l7::Protocol::Tls && counted_elsewhere) {
            observe(
                metrics,
                &mut self.values,
                &ex,
                direction,
                key,
                workload,
                (seconds, exemplar),
            );
        }
        // Passive health judges a backend by what its clients get.
        if direction == TrafficDirection::Egress {
            self.services.report_response(key, &ex.metric);
        }

        let latency_us = ex.latency_ns() / 1_000;
        let tls = ex.tls;
        let mut l7 = ex.fields;
        l7.insert("protocol".into(), Value::from(ex.protocol.name()));
        l7.insert("latency_us".into(), Value::from(latency_us));
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
            // The source is the client: the request went its way.
            bytes_sent: ex.request_bytes,
            bytes_received: ex.response_bytes,
            packets_sent: None,
            packets_received: None,
            retransmits: 0,
            srtt_us: None,
            duration_us: latency_us,
            resets_sent: 0,
            resets_received: 0,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            failure: None,
            l7: Some(Value::Object(l7)),
            traffic_direction: Some(direction.name().into()),
            service: self.services.get(key),
            policy: None,
            health: None,
            trace,
            tls: Some(tls),
            mono_ns: ex.request_ns,
        };
        self.store.push(record);
    }
}

/// Observes the exchange's histogram. Labels whose values come from
/// traffic go through `values`, the per-label budget.
fn observe(
    m: &L7Metrics,
    values: &mut ValueBudget,
    ex: &Exchange,
    direction: TrafficDirection,
    key: &FlowKey,
    workload: crate::export::labels::L4Labels,
    (seconds, exemplar): (f64, Option<TraceExemplar>),
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
                http_route: values.admit("http_route", route.clone()),
                url_scheme: (*scheme).to_owned(),
                server_address: values.admit("server_address", key.server.ip().to_string()),
                server_port: key.server.port().to_string(),
                workload,
            };
            let family = if server {
                &m.http_server
            } else {
                &m.http_client
            };
            family
                .get_or_create(&labels)
                .observe(seconds, exemplar, None);
        }
        MetricAttributes::Rpc {
            system,
            method,
            status_code,
        } => {
            let labels = RpcLabels {
                rpc_system_name: (*system).to_owned(),
                rpc_method: values.admit("rpc_method", method.clone()),
                // OpenTelemetry: gRPC's status name (`NOT_FOUND`); a code
                // outside the defined ones as its number.
                rpc_response_status_code: status_code
                    .map(|c| {
                        weft_l7::grpc::status_name(c).map_or_else(|| c.to_string(), str::to_owned)
                    })
                    .unwrap_or_default(),
                workload,
            };
            let family = if server { &m.rpc_server } else { &m.rpc_client };
            family
                .get_or_create(&labels)
                .observe(seconds, exemplar, None);
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
                    db_operation_name: values.admit("db_operation_name", operation.clone()),
                    error_type: values.admit("error_type", error_type.clone().unwrap_or_default()),
                    workload,
                };
                m.db_client
                    .get_or_create(&labels)
                    .observe(seconds, exemplar, None);
            }
        }
        MetricAttributes::Dns {
            question_type,
            response_code,
        } => {
            // A lookup's duration is the client's wait.
            if !server {
                let labels = DnsLabels {
                    dns_question_type: values.admit("dns_question_type", question_type.clone()),
                    dns_response_code: values.admit("dns_response_code", response_code.clone()),
                    workload,
                };
                m.dns_lookup
                    .get_or_create(&labels)
                    .observe(seconds, exemplar, None);
            }
        }
        MetricAttributes::Tls {
            version,
            outcome,
            server_name,
        } => {
            let labels = TlsLabels {
                tls_protocol_version: (*version).to_owned(),
                outcome: (*outcome).to_owned(),
                server_name: values.admit("server_name", server_name.clone().unwrap_or_default()),
                workload,
            };
            m.tls_handshakes.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Map;
    use weft_l7::{Direction, Protocol};

    use super::*;
    use crate::{
        enrich::Enricher,
        export::{
            labels::{L7_VALUES_PER_LABEL, LabelBudget},
            metrics::Metrics,
        },
        flow::{emit::Emitter, filter::FlowFilter, record::Transport, store::FlowStore},
    };

    fn call(method: String) -> Exchange {
        Exchange {
            protocol: Protocol::Grpc,
            request_ns: 1_000,
            response_ns: 2_000,
            answered: true,
            fields: Map::new(),
            metric: MetricAttributes::Rpc {
                system: "grpc",
                method,
                status_code: Some(0),
            },
            request_direction: Direction::ToServer,
            traceparent: None,
            tracestate: None,
            request_bytes: 120,
            response_bytes: 4096,
            tls: false,
        }
    }

    /// gRPC paths come from traffic: past the budget, new methods fold into
    /// `other` in the metrics (and are counted), while records keep them.
    #[test]
    fn l7_label_values_beyond_the_budget_fold_into_other() {
        let store = Arc::new(FlowStore::new(10));
        let (metrics, l4, _, l7) = Metrics::new();
        let mut out = Emitter::new(store.clone(), l4, LabelBudget::new(10), Enricher::new(None));
        let key = FlowKey {
            transport: Transport::Tcp,
            client: "10.0.0.1:40000".parse().expect("address"),
            server: "10.0.0.2:50051".parse().expect("address"),
        };
        let methods = L7_VALUES_PER_LABEL + 3;
        for i in 0..methods {
            let ex = call(format!("weft.Test/Method{i}"));
            out.emit_l7(&l7, &key, None, None, TrafficDirection::Egress, ex);
        }
        assert_eq!(out.labels_overflowed(), 3);
        let text = metrics.encode().expect("metrics encode");
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("rpc_client_call_duration_seconds_count{")
                    && l.contains(r#"rpc_method="other""#)
            })
            .unwrap_or_else(|| panic!("no `other` series:\n{text}"));
        assert!(other.ends_with(" 3"), "{other}");
        let records = store.query(&FlowFilter::default(), crate::flow::store::Range::default());
        let last = records.last().expect("a record");
        assert_eq!(last.l7.as_ref().expect("l7")["protocol"], "grpc");
        assert_eq!((last.bytes_sent, last.bytes_received), (120, 4096));
        assert_eq!(records.len(), 10, "the store keeps its newest records");
    }
}
