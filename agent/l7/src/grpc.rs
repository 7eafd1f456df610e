//! gRPC over HTTP/2: which exchanges are gRPC calls and what they report
//! (`service`, `method`, `grpc_status`; the `rpc_*_call_duration` metric
//! attributes). See the gRPC "PROTOCOL-HTTP2" document: requests carry
//! `content-type: application/grpc[+proto|+json|;...]` and
//! `:path = /package.Service/Method`; the status is the `grpc-status`
//! trailer, or a header of a trailers-only response.

use serde_json::Value;

use crate::http_fields::clip;
use crate::{Exchange, Limits, MetricAttributes, Protocol};

pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.starts_with(b"application/grpc")
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`); anything else keeps
/// the whole path as the method of an empty service.
pub fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.contains('/') => {
            (service, method)
        }
        _ => ("", path),
    }
}

/// `grpc-status` is a decimal code (0–16 defined; others are kept).
pub fn parse_status(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A gRPC call as an exchange.
pub struct Call<'a> {
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub http_status: Option<u16>,
    pub grpc_status: Option<u32>,
}

impl Call<'_> {
    pub fn exchange(&self, limits: &Limits, request_ns: u64, response_ns: Option<u64>) -> Exchange {
        let mut exchange = Protocol::Grpc.exchange(request_ns);
        if let Some(ns) = response_ns {
            exchange.answered = true;
            exchange.response_ns = ns.max(request_ns);
        }
        let (service, method) = split_path(self.path);
        let (service, method) = (
            clip(service, limits.max_field),
            clip(method, limits.max_field),
        );
        let f = &mut exchange.fields;
        f.insert("service".into(), Value::from(service.clone()));
        f.insert("method".into(), Value::from(method.clone()));
        if let Some(code) = self.grpc_status {
            f.insert("grpc_status".into(), Value::from(code));
        }
        if let Some(status) = self.http_status {
            f.insert("status".into(), Value::from(status));
        }
        if let Some(host) = self.host {
            f.insert("host".into(), Value::from(host));
        }
        exchange.metric = MetricAttributes::Rpc {
            system: "grpc",
            method: if service.is_empty() {
                method
            } else {
                format!("{service}/{method}")
            },
            status_code: self.grpc_status,
        };
        exchange
    }
}

/// The name of a gRPC status code (grpc/doc/statuscodes.md), which
/// OpenTelemetry's `rpc.response.status_code` carries for gRPC; `None` for
/// a code outside the 17 defined.
pub fn status_name(code: u32) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::try_from(code).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_statuses() {
        assert_eq!(
            split_path("/weft.v1.Greeter/SayHello"),
            ("weft.v1.Greeter", "SayHello")
        );
        assert_eq!(split_path("/odd"), ("", "/odd"));
        assert_eq!(split_path("/a/b/c"), ("", "/a/b/c"));
        assert_eq!(parse_status(b"5"), Some(5));
        assert_eq!(parse_status(b"x"), None);
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(!is_grpc(b"application/json"));
    }

    #[test]
    fn status_names_follow_the_grpc_codes() {
        assert_eq!(super::status_name(0), Some("OK"));
        assert_eq!(super::status_name(4), Some("DEADLINE_EXCEEDED"));
        assert_eq!(super::status_name(5), Some("NOT_FOUND"));
        assert_eq!(super::status_name(16), Some("UNAUTHENTICATED"));
        assert_eq!(super::status_name(17), None);
    }
}
