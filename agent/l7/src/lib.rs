//! weft's L7 protocol parsers.
//!
//! The kernel copies bounded snippets of each socket's reads and writes; the
//! agent reassembles them per connection and direction and feeds them here.
//! This crate knows nothing about eBPF: it turns byte streams into
//! request/response [`Exchange`]s, so every parser can be tested from byte
//! fixtures and fuzzed.
//!
//! Shape (after linkerd's detect and DeepFlow's parser registry):
//! - [`detect`] asks each protocol's cheap `detect` whether the first bytes
//!   of a connection are its own (yes / no / need more bytes);
//! - [`new_session`] makes the protocol's [`Session`], which is fed
//!   [`Chunk`]s of both directions in order and emits completed exchanges,
//!   pairing requests with responses (pipelining, multiplexed streams);
//! - every parser is bounded: it never buffers more than [`Limits`] allow,
//!   never panics, and reports malformed input as a [`ParseError`].

pub mod detect;
pub mod dns;
pub mod exchange;
pub mod grpc;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod http_fields;
pub mod huffman;
pub mod limits;
pub mod mysql;
pub mod postgres;
pub mod query;
pub mod redis;
pub mod route;
pub mod sql_obfuscate;
pub mod tls;
// The fuzz targets' bodies: tests and the fuzz crate only.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod testkit;

// Shared by the database and DNS parsers.
mod framer;
mod pending;
mod resp;
mod text;

pub use detect::{Detection, detect, new_session, new_session_on};
pub use exchange::{Exchange, MetricAttributes};
pub use limits::{Limits, Privacy};

/// The protocols weft understands, as named in flow records
/// (`l7.protocol`) and in `weft flows --protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
    Dns,
    Redis,
    Postgres,
    Mysql,
    /// TLS handshake metadata (the plaintext after it is not seen).
    Tls,
}

impl Protocol {
    /// Detection asks them in this order (TLS first: a ClientHello is
    /// unmistakable, and DNS over TCP would otherwise wait for more bytes).
    pub const ALL: [Protocol; 8] = [
        Protocol::Tls,
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::Dns,
        Protocol::Redis,
        Protocol::Postgres,
        Protocol::Mysql,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Dns => "dns",
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Tls => "tls",
        }
    }
}

/// Which way bytes went, relative to the connection's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (requests).
    ToServer,
    /// Server to client (responses).
    ToClient,
}

/// The transport the bytes came over: stream protocols may split and join
/// messages anywhere; datagrams keep message boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// One captured read or write of one direction.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub direction: Direction,
    /// The captured bytes (a prefix of what the application read or wrote).
    pub data: &'a [u8],
    /// How many bytes of this read/write were not captured after `data`
    /// (snippet size limit). The stream continues after them.
    pub truncated: usize,
    /// Bytes of this direction lost before `data` (a lost event): the parser
    /// must resynchronise or give up on the connection.
    pub gap_before: usize,
    /// Kernel timestamp (ns, monotonic) of the read/write.
    pub ts_ns: u64,
}

/// Why a session stopped understanding its connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol:?} parse error: {kind}")]
pub struct ParseError {
    pub protocol: Protocol,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The bytes break the protocol's grammar.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A message is larger than the limits allow buffering.
    #[error("message exceeds the {0}-byte limit")]
    TooLarge(usize),
    /// Bytes were lost and the parser cannot resynchronise.
    #[error("lost bytes; cannot resynchronise")]
    Desync,
}

/// A protocol session: the parsing state of one connection (or one UDP
/// flow). Fed chunks of both directions in capture order.
pub trait Session: Send {
    fn protocol(&self) -> Protocol;

    /// Consumes a chunk and appends the exchanges it completed to `out`.
    /// After an error the session is abandoned by the caller.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError>;

    /// The connection closed: exchanges still waiting for their response
    /// may be flushed (e.g. as requests without response).
    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<Exchange>) {}

    /// The oldest request still waiting for its response, as an unanswered
    /// exchange. Traces use it on a server's connection: a thread that
    /// read this request and has not answered it yet is serving it, and
    /// the requests it sends meanwhile are its children. `None` for
    /// protocols that do not tell it.
    fn in_flight(&self) -> Option<Exchange> {
        None
    }

    /// Whether a request waits for its response, as `in_flight` tells,
    /// without building the exchange.
    fn awaits_answer(&self) -> bool {
        self.in_flight().is_some()
    }
}
