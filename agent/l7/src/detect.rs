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
fn detect_one(protocol: Protocol, _first: &FirstBytes<'_>) -> Detection {
    match protocol {
        Protocol::Http1
        | Protocol::Http2
        | Protocol::Grpc
        | Protocol::Dns
        | Protocol::Redis
        | Protocol::Postgres
        | Protocol::Mysql => Detection::No,
    }
}

/// A new session for a detected protocol.
pub fn new_session(
    protocol: Protocol,
    _limits: Limits,
    _privacy: &Privacy,
) -> Option<Box<dyn Session>> {
    match protocol {
        Protocol::Http1
        | Protocol::Http2
        | Protocol::Grpc
        | Protocol::Dns
        | Protocol::Redis
        | Protocol::Postgres
        | Protocol::Mysql => None,
    }
}
