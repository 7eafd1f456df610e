//! Bounds and privacy settings shared by all parsers.

/// How much a session may buffer and remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message header block (HTTP headers, a SQL statement, a RESP
    /// array...) a session buffers while waiting for its end.
    pub max_message: usize,
    /// Requests awaiting a response (pipelining, HTTP/2 streams).
    pub max_pending: usize,
    /// Longest text field kept in an exchange (paths, queries, statements);
    /// longer ones are cut, with `…` appended.
    pub max_field: usize,
    /// HPACK dynamic table size the decoder accepts.
    pub max_hpack_table: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 64 * 1024,
            max_pending: 256,
            max_field: 1024,
            max_hpack_table: 64 * 1024,
        }
    }
}

/// What may leave a parser. Defaults are private: no bodies anywhere, query
/// parameter values and sensitive headers redacted, SQL literals and Redis
/// values replaced by `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privacy {
    /// Replace the values of URL query parameters with `REDACTED` (all of
    /// them when true; the names stay).
    pub redact_query_values: bool,
    /// Replace SQL literals with `?`.
    pub obfuscate_sql: bool,
    /// Replace Redis command arguments after the key with `?`.
    pub obfuscate_redis_values: bool,
    /// Header names (lowercase) whose values are never reported.
    pub sensitive_headers: Vec<String>,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            redact_query_values: true,
            obfuscate_sql: true,
            obfuscate_redis_values: true,
            sensitive_headers: [
                "authorization",
                "cookie",
                "set-cookie",
                "proxy-authorization",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}
