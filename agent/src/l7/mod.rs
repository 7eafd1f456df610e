//! The L7 engine: payload snippets in, request/response exchanges out.
//!
//! Per socket it keeps a stream: first *detection* (the first bytes of
//! either direction are offered to every parser's cheap check), then a
//! protocol *session* (from `weft-l7`) fed every later read and write in
//! order. Memory is bounded: a fixed number of streams, a bounded
//! detection buffer, and the sessions' own limits. A session that errors is
//! switched off for its connection (counted), never retried byte by byte.

use std::collections::HashMap;

use weft_common::data::{DIR_SEND, DataHeader};
use weft_l7::{
    Chunk, Direction, Exchange, Limits, Privacy, Protocol, Session, Transport,
    detect::{Detection, FirstBytes},
};

/// Bytes and chunks kept while detecting.
const DETECT_BYTES: usize = 1024;
const DETECT_CHUNKS: usize = 8;

/// What the engine needs to know about the socket a record came from.
#[derive(Debug, Clone, Copy)]
pub struct SocketRole {
    /// The socket is the connection's client (it connected).
    pub is_client: bool,
    pub server_port: u16,
}

enum Stage {
    Detecting(Vec<Pending>),
    Parsing(Box<dyn Session>),
    /// Not a protocol weft understands, or the session failed.
    Off,
}

struct Pending {
    direction: Direction,
    data: Vec<u8>,
    truncated: usize,
    ts_ns: u64,
}

struct Stream {
    stage: Stage,
    last_ns: u64,
}

/// Counters for the status report and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct L7Counters {
    pub streams_evicted: u64,
    pub parse_errors: u64,
    pub exchanges: u64,
}

pub struct L7Engine {
    streams: HashMap<u64, Stream>,
    capacity: usize,
    limits: Limits,
    privacy: Privacy,
    pub counters: L7Counters,
}

impl L7Engine {
    pub fn new(capacity: usize, limits: Limits, privacy: Privacy) -> Self {
        Self {
            streams: HashMap::new(),
            capacity,
            limits,
            privacy,
            counters: L7Counters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Feeds one captured read/write of socket `header.sk`.
    pub fn feed(
        &mut self,
        header: &DataHeader,
        payload: &[u8],
        role: SocketRole,
        out: &mut Vec<Exchange>,
    ) {
        let sent = header.direction == DIR_SEND;
        // A client's sends and a server's receives are requests.
        let direction = if sent == role.is_client {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let truncated = (header.total_len as usize).saturating_sub(payload.len());
        if !self.streams.contains_key(&header.sk) {
            if self.streams.len() >= self.capacity {
                self.evict_oldest();
            }
            self.streams.insert(
                header.sk,
                Stream {
                    stage: Stage::Detecting(Vec::new()),
                    last_ns: header.ts_ns,
                },
            );
        }
        let Some(stream) = self.streams.get_mut(&header.sk) else {
            return;
        };
        stream.last_ns = header.ts_ns;
        let chunk = Chunk {
            direction,
            data: payload,
            truncated,
            gap_before: 0,
            ts_ns: header.ts_ns,
        };
        match &mut stream.stage {
            Stage::Off => {}
            Stage::Parsing(session) => {
                if session.feed(&chunk, out).is_err() {
                    self.counters.parse_errors += 1;
                    stream.stage = Stage::Off;
                }
            }
            Stage::Detecting(pending) => {
                pending.push(Pending {
                    direction,
                    data: payload.to_vec(),
                    truncated,
                    ts_ns: header.ts_ns,
                });
                stream.stage = detect_stage(
                    std::mem::take(pending),
                    role,
                    self.limits,
                    &self.privacy,
                    out,
                    &mut self.counters,
                );
            }
        }
        self.counters.exchanges += out.len() as u64;
    }

    /// The socket closed: flush and forget its stream.
    pub fn close(&mut self, sk: u64, ts_ns: u64, out: &mut Vec<Exchange>) {
        if let Some(mut stream) = self.streams.remove(&sk)
            && let Stage::Parsing(session) = &mut stream.stage
        {
            session.close(ts_ns, out);
            self.counters.exchanges += out.len() as u64;
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((&sk, _)) = self.streams.iter().min_by_key(|(_, s)| s.last_ns) {
            self.streams.remove(&sk);
            self.counters.streams_evicted += 1;
        }
    }
}

/// Decides what a stream in detection becomes, replaying the buffered
/// chunks into a new session when a protocol says yes.
fn detect_stage(
    pending: Vec<Pending>,
    role: SocketRole,
    limits: Limits,
    privacy: &Privacy,
    out: &mut Vec<Exchange>,
    counters: &mut L7Counters,
) -> Stage {
    // Detection looks at the first direction that spoke, contiguous bytes.
    let Some(first) = pending.first() else {
        return Stage::Detecting(pending);
    };
    let mut bytes = Vec::new();
    for p in pending.iter().filter(|p| p.direction == first.direction) {
        bytes.extend_from_slice(&p.data);
        if p.truncated > 0 || bytes.len() >= DETECT_BYTES {
            break;
        }
    }
    bytes.truncate(DETECT_BYTES);
    let first_bytes = FirstBytes {
        direction: first.direction,
        data: &bytes,
        transport: Transport::Stream,
        server_port: role.server_port,
    };
    match weft_l7::detect(&first_bytes) {
        Ok(protocol) => start_session(protocol, pending, limits, privacy, out, counters),
        Err(Detection::NeedMore) if pending.len() < DETECT_CHUNKS && bytes.len() < DETECT_BYTES => {
            Stage::Detecting(pending)
        }
        Err(_) => Stage::Off,
    }
}

fn start_session(
    protocol: Protocol,
    pending: Vec<Pending>,
    limits: Limits,
    privacy: &Privacy,
    out: &mut Vec<Exchange>,
    counters: &mut L7Counters,
) -> Stage {
    let Some(mut session) = weft_l7::new_session(protocol, limits, privacy) else {
        return Stage::Off;
    };
    for p in &pending {
        let chunk = Chunk {
            direction: p.direction,
            data: &p.data,
            truncated: p.truncated,
            gap_before: 0,
            ts_ns: p.ts_ns,
        };
        if session.feed(&chunk, out).is_err() {
            counters.parse_errors += 1;
            return Stage::Off;
        }
    }
    Stage::Parsing(session)
}
