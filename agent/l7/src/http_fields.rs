//! What HTTP/1.x and HTTP/2 exchanges report: the `l7` fields (`method`,
//! `path`, `route`, `status`, `host`) and the `http_*_request_duration`
//! metric attributes, built the same way for both versions.

use serde_json::Value;

use crate::{Exchange, Limits, MetricAttributes, Privacy, Protocol, query, route};

/// Methods of RFC 9110 §9 and RFC 5789 (PATCH). Others are reported as
/// `_OTHER` in metrics (OpenTelemetry's rule, which bounds the label).
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A request, reduced to what may leave the parser: already redacted and
/// clipped, so nothing larger than `Limits::max_field` is kept per field.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
    pub route: String,
    pub host: Option<String>,
    pub scheme: &'static str,
    /// The request's W3C `traceparent` (HTTP/1.x header or HTTP/2 field),
    /// when it is no longer than a traceparent can be.
    pub traceparent: Option<String>,
    /// Its `tracestate`, when no longer than [`MAX_TRACESTATE`].
    pub tracestate: Option<String>,
}

/// Bytes of a `traceparent` kept at most: 55 in version 00, a little
/// more allowed for later versions.
pub const MAX_TRACEPARENT: usize = 128;
/// Bytes of a `tracestate` kept at most (W3C Trace Context §3.3.1.5: at
/// least 512 should be propagated).
pub const MAX_TRACESTATE: usize = 512;

/// A trace context header's value, kept when it fits `max` (a longer one
/// is dropped whole: a cut one would be wrong).
pub fn trace_header(value: Option<&[u8]>, max: usize) -> Option<String> {
    value
        .filter(|v| v.len() <= max)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

impl RequestInfo {
    pub fn new(
        method: &str,
        target: &str,
        host: Option<&str>,
        scheme: &'static str,
        limits: &Limits,
        privacy: &Privacy,
    ) -> Self {
        // Absolute-form targets (proxies, RFC 9112 §3.2.2) carry the
        // authority; the route is templated from the path alone.
        let (abs_host, path_part) = split_absolute(target);
        let host = host.or(abs_host).filter(|_| !host_is_sensitive(privacy));
        RequestInfo {
            method: clip(method, limits.max_field),
            path: clip(&query::redact_target(target, privacy), limits.max_field),
            route: route::template(path_part),
            host: host.map(|h| clip(strip_userinfo(h), limits.max_field)),
            scheme,
            traceparent: None,
            tracestate: None,
        }
    }

    /// The exchange for this request; `response` is the status and the
    /// timestamp of the response's last byte, when one was seen.
    pub fn exchange(
        &self,
        protocol: Protocol,
        request_ns: u64,
        response: Option<(Option<u16>, u64)>,
    ) -> Exchange {
        let mut exchange = protocol.exchange(request_ns);
        let status = response.and_then(|(status, _)| status);
        if let Some((_, response_ns)) = response {
            exchange.answered = true;
            exchange.response_ns = response_ns.max(request_ns);
        }
        let f = &mut exchange.fields;
        f.insert("method".into(), Value::from(self.method.clone()));
        f.insert("path".into(), Value::from(self.path.clone()));
        f.insert("route".into(), Value::from(self.route.clone()));
        if let Some(host) = &self.host {
            f.insert("host".into(), Value::from(host.clone()));
        }
        if let Some(status) = status {
            f.insert("status".into(), Value::from(status));
        }
        exchange.traceparent = self.traceparent.clone();
        exchange.tracestate = self.tracestate.clone();
        exchange.metric = MetricAttributes::Http {
            method: metric_method(&self.method),
            status_code: status,
            route: self.route.clone(),
            scheme: self.scheme,
        };
        exchange
    }
}

/// `method` as a metric label: known methods as-is, others `_OTHER`.
pub fn metric_method(method: &str) -> String {
    if KNOWN_METHODS.contains(&method) {
        method.to_owned()
    } else {
        "_OTHER".to_owned()
    }
}

/// At most `max` bytes of `s` (cut on a char boundary), `…` appended when
/// cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn host_is_sensitive(privacy: &Privacy) -> bool {
    privacy
        .sensitive_headers
        .iter()
        .any(|h| h == "host" || h == ":authority")
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`); origin-form
/// targets are returned as they are.
fn split_absolute(target: &str) -> (Option<&str>, &str) {
    let Some(scheme_end) = target.find("://") else {
        return (None, target);
    };
    let rest = &target[scheme_end + 3..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (Some(&rest[..i]), &rest[i..]),
        Some(i) => (Some(&rest[..i]), "/"),
        None => (Some(rest), "/"),
    }
}

fn strip_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("aé", 2), "a…");
    }

    #[test]
    fn absolute_form_targets() {
        let r = RequestInfo::new(
            "GET",
            "http://u:p@example.com:8080/users/42?x=1",
            None,
            "http",
            &Limits::default(),
            &Privacy::default(),
        );
        assert_eq!(r.host.as_deref(), Some("example.com:8080"));
        assert_eq!(r.path, "http://example.com:8080/users/42?x=REDACTED");
        assert_eq!(r.route, "/users/{id}");
    }

    #[test]
    fn host_can_be_made_sensitive() {
        let privacy = Privacy {
            sensitive_headers: vec!["host".into()],
            ..Privacy::default()
        };
        let r = RequestInfo::new(
            "BREW",
            "/pot",
            Some("h"),
            "http",
            &Limits::default(),
            &privacy,
        );
        assert_eq!(r.host, None);
        let e = r.exchange(Protocol::Http1, 5, None);
        assert!(!e.answered);
        assert_eq!(e.response_ns, 5);
        assert!(
            matches!(e.metric, MetricAttributes::Http { ref method, .. } if method == "_OTHER")
        );
    }
}
