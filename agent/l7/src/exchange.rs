//! A completed request/response pair.

use serde_json::{Map, Value};

use crate::{Direction, Protocol};

#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub protocol: Protocol,
    /// Timestamp of the request's first byte (ns, monotonic).
    pub request_ns: u64,
    /// Timestamp of the response's last byte; equal to `request_ns` when
    /// there was no response (see `fields["status"]`-like fields).
    pub response_ns: u64,
    /// Whether a response was seen.
    pub answered: bool,
    /// Protocol fields for the flow record's `l7` object (`method`, `path`,
    /// `status`; `service`, `method`, `grpc_status`; `query`, `qtype`,
    /// `rcode`, `answers`; `command`; `operation`, `statement`,
    /// `error_code`). Already redacted per [`crate::Privacy`].
    pub fields: Map<String, Value>,
    /// Attributes for the OpenTelemetry-named metrics.
    pub metric: MetricAttributes,
    /// The direction of the request (always `ToServer` for client/server
    /// protocols; kept for protocols where the server may speak first).
    pub request_direction: Direction,
    /// The W3C `traceparent` the request carried (an HTTP/1.x header,
    /// HTTP/2 or gRPC metadata), unchecked but bounded; for traces only,
    /// never in records.
    pub traceparent: Option<String>,
    /// Its `tracestate`, as sent (bounded; for traces only).
    pub tracestate: Option<String>,
    /// Wire bytes of the request, client to server, as the application
    /// wrote them (bytes the capture cut are counted): the message with
    /// its protocol framing (see each parser for what that is).
    pub request_bytes: u64,
    /// Wire bytes of the response, server to client, counted the same
    /// way; 0 when unanswered. For an exchange whose response bytes were
    /// lost (`truncated`), only the bytes parsed before the loss.
    pub response_bytes: u64,
    /// The bytes were the plaintext of a TLS connection (read at the TLS
    /// library): set by the engine, not the parsers.
    pub tls: bool,
}

impl Exchange {
    /// Request-to-response latency in nanoseconds.
    pub fn latency_ns(&self) -> u64 {
        self.response_ns.saturating_sub(self.request_ns)
    }

    /// Marks the exchange as read from a TLS connection's plaintext: HTTP's
    /// `url.scheme` becomes `https`.
    pub fn mark_tls(&mut self) {
        self.tls = true;
        if let MetricAttributes::Http { scheme, .. } = &mut self.metric {
            *scheme = "https";
        }
    }
}

/// The attributes each metric family needs (spec.md "L7 metrics").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricAttributes {
    /// http_{server,client}_request_duration_seconds.
    Http {
        method: String,
        status_code: Option<u16>,
        /// Templated route (ids, UUIDs and hashes replaced), bounded.
        route: String,
        scheme: &'static str,
    },
    /// rpc_{server,client}_call_duration_seconds.
    Rpc {
        system: &'static str,
        /// `package.Service/Method`.
        method: String,
        status_code: Option<u32>,
    },
    /// db_client_operation_duration_seconds.
    Db {
        /// `redis`, `postgresql`, `mysql`.
        system: &'static str,
        operation: String,
        /// Error type (e.g. SQLSTATE or the Redis error prefix) when failed.
        error_type: Option<String>,
    },
    /// dns_lookup_duration_seconds.
    Dns {
        question_type: String,
        response_code: String,
    },
    /// weft_tls_handshakes_total.
    Tls {
        /// `1.3`, `1.2`, ...; empty when no ServerHello came.
        version: &'static str,
        /// `ok` or `failed`.
        outcome: &'static str,
        /// The SNI (traffic-derived: the label budget applies).
        server_name: Option<String>,
    },
}

impl Protocol {
    /// Convenience for parsers building exchanges.
    pub fn exchange(self, request_ns: u64) -> Exchange {
        Exchange {
            protocol: self,
            request_ns,
            response_ns: request_ns,
            answered: false,
            fields: Map::new(),
            metric: MetricAttributes::Http {
                method: String::new(),
                status_code: None,
                route: String::new(),
                scheme: "http",
            },
            request_direction: Direction::ToServer,
            traceparent: None,
            tracestate: None,
            request_bytes: 0,
            response_bytes: 0,
            tls: false,
        }
    }
}
