//! What the soak's clients did, counted as they do it: the truth the
//! agent's figures are checked against, and the traffic columns of each
//! sample.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// One kind of thing a client counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 requests answered, each on a connection of its own.
    Http1New,
    /// HTTP/1.1 requests answered on a kept-alive connection.
    Http1KeepAlive,
    /// HTTP/1.1 requests answered on a connection the client then reset.
    Http1Reset,
    /// HTTP/2 (h2c) requests answered.
    Http2,
    /// gRPC calls answered OK.
    GrpcOk,
    /// gRPC calls answered NOT_FOUND.
    GrpcNotFound,
    /// DNS lookups answered.
    Dns,
    /// Redis commands answered.
    Redis,
    /// PostgreSQL statements sent (each answered by a row or an error).
    Postgres,
    /// Connects refused (no listener).
    Refused,
    /// Connects whose SYNs a firewall rule dropped (timed out).
    Dropped,
    /// TCP connects made (answered, refused or dropped).
    Connections,
    /// Distinct URL paths requested.
    Paths,
    /// Anything a client did not expect (a failed request, a timeout).
    ClientErrors,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Http1New,
        Kind::Http1KeepAlive,
        Kind::Http1Reset,
        Kind::Http2,
        Kind::GrpcOk,
        Kind::GrpcNotFound,
        Kind::Dns,
        Kind::Redis,
        Kind::Postgres,
        Kind::Refused,
        Kind::Dropped,
        Kind::Connections,
        Kind::Paths,
        Kind::ClientErrors,
    ];

    /// Its name in the JSON samples and summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http1New => "http1_new_connection",
            Kind::Http1KeepAlive => "http1_keep_alive",
            Kind::Http1Reset => "http1_then_reset",
            Kind::Http2 => "http2",
            Kind::GrpcOk => "grpc_ok",
            Kind::GrpcNotFound => "grpc_not_found",
            Kind::Dns => "dns",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Refused => "refused",
            Kind::Dropped => "dropped",
            Kind::Connections => "tcp_connections",
            Kind::Paths => "distinct_paths",
            Kind::ClientErrors => "client_errors",
        }
    }
}

/// The counters, shared by every client thread.
#[derive(Default)]
pub struct Tally {
    counts: [AtomicU64; Kind::ALL.len()],
    /// The first client errors, for the summary.
    errors: Mutex<Vec<String>>,
}

/// Client errors kept word for word; the rest are only counted.
const KEPT_ERRORS: usize = 20;

impl Tally {
    pub fn add(&self, kind: Kind) {
        self.add_n(kind, 1);
    }

    pub fn add_n(&self, kind: Kind, n: u64) {
        self.counts[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, kind: Kind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Counts a client error and keeps its text if it is among the first.
    pub fn error(&self, what: impl std::fmt::Display) {
        self.add(Kind::ClientErrors);
        let mut errors = self.errors.lock().expect("error list");
        if errors.len() < KEPT_ERRORS {
            errors.push(what.to_string());
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("error list").clone()
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        Kind::ALL
            .iter()
            .map(|&k| (k.name().to_owned(), self.get(k)))
            .collect()
    }
}
