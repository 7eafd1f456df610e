//! The L7 filters of `weft flows`: `--http-status`, `--http-path`,
//! `--http-method` and `--dns-query`. A record without the field (an L4 record, another
//! protocol) does not match a constrained kind.

use super::FilterError;
use crate::flow::record::FlowRecord;

/// `404` matches exactly; `4xx` matches the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Exact(code) => write!(f, "{code}"),
            StatusMatch::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L7Filter {
    statuses: Vec<StatusMatch>,
    path_prefixes: Vec<String>,
    /// Upper case, as the parsers report them.
    methods: Vec<String>,
    dns_suffixes: Vec<String>,
}

impl L7Filter {
    /// `--http-status`: a code (`404`) or a class (`5xx`).
    pub fn add_http_status(&mut self, value: &str) -> Result<(), FilterError> {
        let v = value.trim().to_ascii_lowercase();
        let bad = || {
            FilterError::new(
                "http-status",
                value,
                "expected a status code (100-599, e.g. 404) or a class (1xx-5xx)",
            )
        };
        let m = if let Some(class) = v.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&class) {
                return Err(bad());
            }
            StatusMatch::Class(class)
        } else {
            let code: u16 = v.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&code) {
                return Err(bad());
            }
            StatusMatch::Exact(code)
        };
        self.statuses.push(m);
        Ok(())
    }

    /// `--http-path`: a path prefix (`/api/`), as the record shows it
    /// (query values redacted).
    pub fn add_http_path(&mut self, value: &str) -> Result<(), FilterError> {
        let v = value.trim();
        if !v.starts_with('/') {
            return Err(FilterError::new(
                "http-path",
                value,
                "expected a path starting with / (matched as a prefix)",
            ));
        }
        self.path_prefixes.push(v.to_owned());
        Ok(())
    }

    /// `--http-method`: a method token (`GET`, `PURGE`), case-insensitive.
    pub fn add_http_method(&mut self, value: &str) -> Result<(), FilterError> {
        let v = value.trim().to_ascii_uppercase();
        // RFC 9110's token characters.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if v.is_empty() || !v.bytes().all(token) {
            return Err(FilterError::new(
                "http-method",
                value,
                "expected an HTTP method (GET, POST, PUT, DELETE, ...)",
            ));
        }
        self.methods.push(v);
        Ok(())
    }

    /// `--dns-query`: a name; matches it and its subdomains.
    pub fn add_dns_query(&mut self, value: &str) -> Result<(), FilterError> {
        let v = value.trim().trim_end_matches('.').to_ascii_lowercase();
        if v.is_empty() || v.contains(char::is_whitespace) {
            return Err(FilterError::new(
                "dns-query",
                value,
                "expected a domain name (matches it and its subdomains)",
            ));
        }
        self.dns_suffixes.push(v);
        Ok(())
    }

    pub fn matches(&self, record: &FlowRecord) -> bool {
        let l7 = record.l7.as_ref();
        let field = |name: &str| l7.and_then(|v| v.get(name));
        (self.statuses.is_empty()
            || field("status")
                .and_then(|s| s.as_u64())
                .is_some_and(|code| {
                    self.statuses.iter().any(|m| match m {
                        StatusMatch::Exact(want) => code == u64::from(*want),
                        StatusMatch::Class(class) => code / 100 == u64::from(*class),
                    })
                }))
            && (self.path_prefixes.is_empty()
                || field("path")
                    .and_then(|p| p.as_str())
                    .is_some_and(|path| self.path_prefixes.iter().any(|p| path.starts_with(p))))
            && (self.methods.is_empty()
                || (matches!(
                    field("protocol").and_then(|p| p.as_str()),
                    Some("http" | "http2")
                ) && field("method")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| self.methods.iter().any(|want| want == m))))
            && (self.dns_suffixes.is_empty()
                || field("query").and_then(|q| q.as_str()).is_some_and(|q| {
                    let q = q.trim_end_matches('.').to_ascii_lowercase();
                    self.dns_suffixes
                        .iter()
                        .any(|s| q == *s || q.ends_with(&format!(".{s}")))
                }))
    }

    pub fn statuses(&self) -> Vec<String> {
        self.statuses.iter().map(ToString::to_string).collect()
    }

    pub fn paths(&self) -> Vec<String> {
        self.path_prefixes.clone()
    }

    pub fn methods(&self) -> Vec<String> {
        self.methods.clone()
    }

    pub fn dns_queries(&self) -> Vec<String> {
        self.dns_suffixes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::filter::test_support::tcp_record;

    fn http(status: u64, path: &str) -> FlowRecord {
        let mut r = tcp_record();
        r.l7 = Some(serde_json::json!({"protocol": "http", "status": status, "path": path}));
        r
    }

    #[test]
    fn status_codes_and_classes() {
        let mut f = L7Filter::default();
        f.add_http_status("5xx").unwrap();
        f.add_http_status("404").unwrap();
        assert!(f.matches(&http(503, "/")));
        assert!(f.matches(&http(404, "/")));
        assert!(!f.matches(&http(200, "/")));
        assert!(!f.matches(&tcp_record()), "an L4 record has no status");
        for bad in ["600", "6xx", "abc", "0xx", "99"] {
            assert!(L7Filter::default().add_http_status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_prefix() {
        let mut f = L7Filter::default();
        f.add_http_path("/api/").unwrap();
        assert!(f.matches(&http(200, "/api/users/1")));
        assert!(!f.matches(&http(200, "/health")));
        assert!(L7Filter::default().add_http_path("api").is_err());
    }

    #[test]
    fn http_methods_of_http_records_only() {
        let mut f = L7Filter::default();
        f.add_http_method("post").unwrap();
        let mut r = tcp_record();
        r.l7 = Some(serde_json::json!({"protocol": "http", "method": "POST"}));
        assert!(f.matches(&r));
        r.l7 = Some(serde_json::json!({"protocol": "http2", "method": "POST"}));
        assert!(f.matches(&r));
        r.l7 = Some(serde_json::json!({"protocol": "http", "method": "GET"}));
        assert!(!f.matches(&r));
        // A gRPC record's method is the RPC's, not an HTTP method.
        r.l7 = Some(serde_json::json!({"protocol": "grpc", "method": "POST"}));
        assert!(!f.matches(&r));
        assert!(!f.matches(&tcp_record()), "an L4 record has no method");
        for bad in ["", "GET /", "G\"T"] {
            assert!(L7Filter::default().add_http_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names_and_subdomains() {
        let mut f = L7Filter::default();
        f.add_dns_query("Example.com.").unwrap();
        let mut r = tcp_record();
        r.l7 = Some(serde_json::json!({"protocol": "dns", "query": "www.example.com"}));
        assert!(f.matches(&r));
        r.l7 = Some(serde_json::json!({"protocol": "dns", "query": "example.com."}));
        assert!(f.matches(&r));
        r.l7 = Some(serde_json::json!({"protocol": "dns", "query": "notexample.com"}));
        assert!(!f.matches(&r));
    }
}
