//! One exchange as an OpenTelemetry span: name, kind, times, attributes and
//! status after the semantic conventions for HTTP, RPC, databases and DNS.

use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde_json::Value;
use weft_l7::{Exchange, MetricAttributes};

use crate::flow::addr::FlowKey;

/// Who the span is and where it sits in its trace.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent is in another process than the one that saw it arrive
    /// (a `traceparent` from the wire, or the client span of this node).
    pub parent_is_remote: bool,
    /// At the server's socket (SERVER span) or the client's (CLIENT).
    pub server: bool,
}

/// The request's `tracestate`, carried on when the span is in the trace
/// of the request's own `traceparent` (W3C Trace Context §3.3: a vendor's
/// entries travel with the trace); an invalid one is dropped.
fn trace_state(ex: &Exchange, trace_id: TraceId) -> TraceState {
    let joins_incoming = (ex.traceparent.as_deref())
        .and_then(super::context::parse)
        .is_some_and(|incoming| incoming.trace_id == trace_id);
    match ex.tracestate.as_deref() {
        Some(state) if joins_incoming => state.parse().unwrap_or(TraceState::NONE),
        _ => TraceState::NONE,
    }
}

pub fn build(
    ex: &Exchange,
    key: &FlowKey,
    place: &Place,
    start: SystemTime,
    end: SystemTime,
    scope: &InstrumentationScope,
) -> SpanData {
    let mut attributes = Vec::with_capacity(10);
    let (name, error) = describe(ex, place.server, &mut attributes);
    attributes.push(KeyValue::new("server.address", key.server.ip().to_string()));
    attributes.push(KeyValue::new("server.port", i64::from(key.server.port())));
    // The peer of the socket the span was observed at.
    let peer = if place.server { key.client } else { key.server };
    attributes.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
    attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    if place.server {
        attributes.push(KeyValue::new("client.address", key.client.ip().to_string()));
        attributes.push(KeyValue::new("client.port", i64::from(key.client.port())));
    }
    let status = if error {
        Status::error("")
    } else {
        Status::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            place.trace_id,
            place.span_id,
            TraceFlags::SAMPLED,
            false,
            trace_state(ex, place.trace_id),
        ),
        parent_span_id: place.parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: place.parent.is_some() && place.parent_is_remote,
        span_kind: if place.server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        name: Cow::Owned(name),
        start_time: start,
        end_time: end.max(start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

fn text<'a>(ex: &'a Exchange, field: &str) -> Option<&'a str> {
    ex.fields.get(field).and_then(Value::as_str)
}

/// The span's name and whether it failed; its protocol's attributes go
/// into `attrs`.
fn describe(ex: &Exchange, server: bool, attrs: &mut Vec<KeyValue>) -> (String, bool) {
    match &ex.metric {
        MetricAttributes::Http {
            method,
            status_code,
            route,
            scheme,
        } => {
            attrs.push(KeyValue::new("http.request.method", method.clone()));
            if let Some(code) = status_code {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(*code)));
            }
            if let Some(path) = text(ex, "path") {
                let path = path.split('?').next().unwrap_or(path);
                attrs.push(KeyValue::new("url.path", path.to_owned()));
            }
            if !route.is_empty() {
                attrs.push(KeyValue::new("http.route", route.clone()));
            }
            attrs.push(KeyValue::new("url.scheme", *scheme));
            let name = match (method.as_str(), route.is_empty()) {
                ("_OTHER", _) => "HTTP".to_owned(),
                (m, true) => m.to_owned(),
                (m, false) => format!("{m} {route}"),
            };
            // Server spans fail on 5xx only (a 4xx is the client's error).
            let limit = if server { 500 } else { 400 };
            (name, status_code.is_some_and(|c| c >= limit))
        }
        MetricAttributes::Rpc {
            system,
            method,
            status_code,
        } => {
            attrs.push(KeyValue::new("rpc.system", *system));
            if let Some((service, m)) = method.split_once('/') {
                attrs.push(KeyValue::new("rpc.service", service.to_owned()));
                attrs.push(KeyValue::new("rpc.method", m.to_owned()));
            }
            if let Some(code) = status_code {
                attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(*code)));
            }
            (method.clone(), status_code.is_some_and(|c| c != 0))
        }
        MetricAttributes::Db {
            system,
            operation,
            error_type,
        } => {
            attrs.push(KeyValue::new("db.system.name", *system));
            if !operation.is_empty() {
                attrs.push(KeyValue::new("db.operation.name", operation.clone()));
            }
            // Already obfuscated per the privacy settings.
            if let Some(statement) = text(ex, "statement") {
                attrs.push(KeyValue::new("db.query.text", statement.to_owned()));
            }
            if let Some(e) = error_type {
                attrs.push(KeyValue::new("error.type", e.clone()));
            }
            let name = if operation.is_empty() {
                (*system).to_owned()
            } else {
                operation.clone()
            };
            (name, error_type.is_some())
        }
        MetricAttributes::Dns {
            question_type,
            response_code,
        } => {
            if let Some(q) = text(ex, "query") {
                attrs.push(KeyValue::new("dns.question.name", q.to_owned()));
            }
            attrs.push(KeyValue::new("dns.question.type", question_type.clone()));
            attrs.push(KeyValue::new("dns.response_code", response_code.clone()));
            let failed = !response_code.is_empty() && response_code != "NOERROR";
            (format!("DNS {question_type}"), failed)
        }
        // Not exported as spans (Tracer::exchange); named for completeness.
        MetricAttributes::Tls {
            version, outcome, ..
        } => {
            attrs.push(KeyValue::new("tls.protocol.name", "tls"));
            attrs.push(KeyValue::new("tls.protocol.version", *version));
            ("TLS handshake".to_owned(), *outcome == "failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Transport;

    fn http(status: u16) -> Exchange {
        let mut ex = weft_l7::Protocol::Http1.exchange(1_000);
        ex.fields
            .insert("path".into(), Value::from("/users/42?x=1"));
        ex.metric = MetricAttributes::Http {
            method: "GET".into(),
            status_code: Some(status),
            route: "/users/{id}".into(),
            scheme: "http",
        };
        ex
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn the_tracestate_travels_with_its_own_trace_only() {
        let mut ex = http(200);
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        ex.traceparent = Some(format!("00-{trace}-00f067aa0ba902b7-01"));
        ex.tracestate = Some("vendor=abc,other=1".into());
        let own = TraceId::from_hex(trace).unwrap();
        assert_eq!(trace_state(&ex, own).header(), "vendor=abc,other=1");
        // Another trace (the header was not the one that decided it).
        assert_eq!(
            trace_state(&ex, TraceId::from_bytes([7; 16])),
            TraceState::NONE
        );
        // An invalid tracestate is dropped, not forwarded.
        ex.tracestate = Some("no-equals-sign".into());
        assert_eq!(trace_state(&ex, own), TraceState::NONE);
    }

    #[test]
    fn http_spans_follow_the_conventions() {
        let key = FlowKey {
            transport: Transport::Tcp,
            client: "10.0.0.1:40000".parse().expect("address"),
            server: "10.0.0.2:8080".parse().expect("address"),
        };
        let place = |server| Place {
            trace_id: TraceId::from_bytes([1; 16]),
            span_id: SpanId::from_bytes([2; 8]),
            parent: None,
            parent_is_remote: false,
            server,
        };
        let scope = InstrumentationScope::builder("weft").build();
        let t = SystemTime::now();
        let s = build(&http(404), &key, &place(true), t, t, &scope);
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(s.status, Status::Unset, "a 404 is the client's error");
        assert_eq!(
            attr(&s, "url.path").map(|v| v.as_str()),
            Some("/users/42".into())
        );
        assert_eq!(
            attr(&s, "server.port"),
            Some(&opentelemetry::Value::I64(8080))
        );
        assert_eq!(
            attr(&s, "client.port"),
            Some(&opentelemetry::Value::I64(40000))
        );
        let c = build(&http(404), &key, &place(false), t, t, &scope);
        assert!(matches!(c.status, Status::Error { .. }));
        assert_eq!(
            attr(&c, "network.peer.port"),
            Some(&opentelemetry::Value::I64(8080))
        );
        let s = build(&http(503), &key, &place(true), t, t, &scope);
        assert!(matches!(s.status, Status::Error { .. }));
    }
}
