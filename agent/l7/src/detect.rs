//! Protocol detection and the registry of parsers.

use crate::{Direction, Limits, Privacy, Protocol, Session, Transport};

/// A parser's answer to "are these bytes mine?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Yes,
    No,
    /// Too few bytes to tell; ask again with more.
    NeedMore,
}

/// The first bytes seen on a connection, from either side (some protocols,
/// e.g. MySQL, speak server-first), with the server's port as a hint.
#[derive(Debug, Clone, Copy)]
pub struct FirstBytes<'a> {
    pub direction: Direction,
    pub data: &'a [u8],
    pub transport: Transport,
    pub server_port: u16,
}

/// Asks every protocol in turn; the first `Yes` wins. `NeedMore` when no
/// protocol said yes and at least one needs more bytes.
pub fn detect(first: &FirstBytes<'_>) -> Result<Protocol, Detection> {
    let mut need_more = false;
    for protocol in Protocol::ALL {
        match detect_one(protocol, first) {
            Detection::Yes => return Ok(protocol),
            Detection::NeedMore => need_more = true,
            Detection::No => {}
        }
    }
    Err(if need_more {
        Detection::NeedMore
    } else {
        Detection::No
    })
}

/// Each protocol module's cheap check (filled in as protocols land).
fn detect_one(protocol: Protocol, first: &FirstBytes<'_>) -> Detection {
    match protocol {
        Protocol::Dns => crate::dns::detect(first),
        Protocol::Redis if first.transport == Transport::Stream => crate::redis::detect(first),
        Protocol::Postgres if first.transport == Transport::Stream => {
            crate::postgres::detect(first)
        }
        Protocol::Mysql if first.transport == Transport::Stream => crate::mysql::detect(first),
        Protocol::Http1 if first.transport == Transport::Stream => crate::http1::detect(first),
        Protocol::Http2 if first.transport == Transport::Stream => crate::http2::detect(first),
        Protocol::Tls if first.transport == Transport::Stream => crate::tls::detect(first),
        // gRPC is found inside HTTP/2 sessions, per request.
        Protocol::Http1
        | Protocol::Http2
        | Protocol::Grpc
        | Protocol::Redis
        | Protocol::Postgres
        | Protocol::Mysql
        | Protocol::Tls => Detection::No,
    }
}

/// A new session for a detected protocol on a stream (TCP) connection;
/// [`new_session_on`] for datagram flows (DNS over UDP).
pub fn new_session(
    protocol: Protocol,
    limits: Limits,
    privacy: &Privacy,
) -> Option<Box<dyn Session>> {
    match protocol {
        Protocol::Dns => Some(Box::new(crate::dns::DnsSession::new(
            Transport::Stream,
            limits,
            privacy,
        ))),
        Protocol::Redis => Some(Box::new(crate::redis::RedisSession::new(limits, privacy))),
        Protocol::Postgres => Some(Box::new(crate::postgres::PostgresSession::new(
            limits, privacy,
        ))),
        Protocol::Mysql => Some(Box::new(crate::mysql::MysqlSession::new(limits, privacy))),
        Protocol::Http1 => Some(Box::new(crate::http1::Http1Session::new(limits, privacy))),
        Protocol::Http2 | Protocol::Grpc => {
            Some(Box::new(crate::http2::Http2Session::new(limits, privacy)))
        }
        Protocol::Tls => Some(Box::new(crate::tls::TlsSession::new())),
    }
}

/// A new session for a detected protocol over `transport`: DNS reads one
/// message per datagram over UDP and length-prefixed messages over TCP;
/// the other protocols are stream-only.
pub fn new_session_on(
    protocol: Protocol,
    transport: Transport,
    limits: Limits,
    privacy: &Privacy,
) -> Option<Box<dyn Session>> {
    match (protocol, transport) {
        (Protocol::Dns, _) => Some(Box::new(crate::dns::DnsSession::new(
            transport, limits, privacy,
        ))),
        (_, Transport::Stream) => new_session(protocol, limits, privacy),
        (_, Transport::Datagram) => None,
    }
}
