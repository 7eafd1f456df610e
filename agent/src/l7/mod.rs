//! The L7 engine: payload snippets in, request/response exchanges out.
//!
//! Per socket it keeps a stream: first *detection* (the first bytes of
//! either direction are offered to every parser's cheap check), then a
//! protocol *session* (from `weft-l7`) fed every later read and write in
//! order. Memory is bounded: a fixed number of streams, a bounded
//! detection buffer, and the sessions' own limits. A session that errors is
//! switched off for its connection (counted), never retried byte by byte.
//!
//! A socket is its kernel address *and* its addresses (from the kernel's
//! `sock_common`): the kernel reuses a freed socket's memory at once, and
//! payload records come through another ring than lifecycle events, so the
//! last reads of a closed connection can arrive after the first writes of
//! a new one at the same kernel address. Each keeps its own stream.

use std::collections::HashMap;

use weft_common::{
    SockTuple,
    data::{DIR_SEND, DataHeader, flags},
};
use weft_l7::{
    Chunk, Direction, Exchange, Limits, Privacy, Protocol, Session, Transport,
    detect::{Detection, FirstBytes},
};

/// Bytes and chunks kept while detecting.
const DETECT_BYTES: usize = 1024;
const DETECT_CHUNKS: usize = 8;
/// Streams kept per kernel socket address: the live socket and the last
/// ones closed there whose records may still be on their way. With a new
/// connection per request the kernel hands one freed socket's memory to
/// connection after connection, and payload records are read in batches
/// (every 20 ms when quiet): at 1000 connections/s, 20 may share an
/// address between two reads.
pub const STREAMS_PER_ADDRESS: usize = 16;

/// What the engine needs to know about the socket a record came from.
#[derive(Debug, Clone, Copy)]
pub struct SocketRole {
    /// The socket is the connection's client (it connected, or sent the
    /// first datagram).
    pub is_client: bool,
    pub server_port: u16,
    /// TCP is a byte stream; over UDP each read/write is one datagram,
    /// one message (DNS).
    pub transport: Transport,
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
    gap_before: usize,
    ts_ns: u64,
}

struct Stream {
    stage: Stage,
    last_ns: u64,
    /// The socket's addresses when the stream began (zero without the
    /// kernel's socket layout).
    tuple: SockTuple,
    /// The stream is a TLS connection's plaintext, read at the TLS library
    /// (the socket's ciphertext is another stream, for the `tls`
    /// handshake parser).
    tls: bool,
    /// The socket's first captured read/write was a write.
    first_sent: bool,
    transport: Transport,
    /// TCP: where the next record of each direction (sent, received)
    /// starts in the socket's stream; a record starting further on comes
    /// after lost ones. `None` while unknown.
    next_offset: [Option<u64>; 2],
}

/// Whether a record holds TLS plaintext (see [`Stream::tls`]).
fn is_tls(header: &DataHeader) -> bool {
    header.flags & flags::TLS != 0
}

impl Stream {
    /// Whether the record is of this stream's socket and layer.
    fn holds(&self, header: &DataHeader) -> bool {
        self.tuple == header.tuple && self.tls == is_tls(header)
    }

    /// The stream's socket is gone: its session flushes what it holds
    /// (an unanswered request ends unanswered at `ts_ns`).
    fn end(mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let before = out.len();
        if let Stage::Parsing(session) = &mut self.stage {
            session.close(ts_ns, out);
        }
        if self.tls {
            out[before..].iter_mut().for_each(Exchange::mark_tls);
        }
    }

    /// Bytes lost before a record of `total_len` bytes at `offset` in its
    /// direction. Records of two threads writing one socket at once may
    /// overlap or come out of order: that is not a loss.
    fn gap_before(&mut self, sent: bool, offset: u64, total_len: u64) -> usize {
        let next = &mut self.next_offset[usize::from(!sent)];
        let gap = next.map_or(0, |n| offset.saturating_sub(n));
        let end = offset.saturating_add(total_len);
        *next = Some(next.map_or(end, |n| n.max(end)));
        usize::try_from(gap).unwrap_or(usize::MAX)
    }
}

/// Counters for the status report and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct L7Counters {
    pub streams_evicted: u64,
    /// Payload records found missing between two of a stream (a gap the
    /// parser had to resynchronise after).
    pub gaps: u64,
    pub parse_errors: u64,
    pub exchanges: u64,
}

pub struct L7Engine {
    /// By kernel socket address; one stream per set of socket addresses.
    streams: HashMap<u64, Vec<Stream>>,
    count: usize,
    capacity: usize,
    /// The latest timestamp of a payload record seen.
    data_ts_ns: u64,
    limits: Limits,
    privacy: Privacy,
    pub counters: L7Counters,
}

impl L7Engine {
    pub fn new(capacity: usize, limits: Limits, privacy: Privacy) -> Self {
        Self {
            streams: HashMap::new(),
            count: 0,
            capacity,
            data_ts_ns: 0,
            limits,
            privacy,
            counters: L7Counters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A payload record was read (whether or not it is attributed).
    pub fn saw(&mut self, ts_ns: u64) {
        self.data_ts_ns = self.data_ts_ns.max(ts_ns);
    }

    /// The latest payload record's timestamp: records of sockets closed
    /// before it have been read, give or take the ring's small reordering
    /// between CPUs.
    pub fn data_ts_ns(&self) -> u64 {
        self.data_ts_ns
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
        // `out` may hold the exchanges of earlier records: only this one's
        // are counted (streams an eviction ended included).
        let at_entry = out.len();
        self.ensure_stream(header, sent, role.transport, out);
        let Some(stream) = self
            .streams
            .get_mut(&header.sk)
            .and_then(|l| l.iter_mut().find(|s| s.holds(header)))
        else {
            return;
        };
        let before = out.len();
        stream.last_ns = header.ts_ns;
        let gap_before = match role.transport {
            Transport::Stream => {
                stream.gap_before(sent, header.offset, u64::from(header.total_len))
            }
            // One datagram is one message: nothing to resynchronise.
            Transport::Datagram => 0,
        };
        if gap_before > 0 {
            self.counters.gaps += 1;
        }
        let chunk = Chunk {
            direction,
            data: payload,
            truncated,
            gap_before,
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
                    gap_before,
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
        if is_tls(header) {
            out[before..].iter_mut().for_each(Exchange::mark_tls);
        }
        self.counters.exchanges += (out.len() - at_entry) as u64;
    }

    /// Makes the stream of the record's socket when it is new.
    fn ensure_stream(
        &mut self,
        header: &DataHeader,
        sent: bool,
        transport: Transport,
        out: &mut Vec<Exchange>,
    ) {
        let here = self.streams.get(&header.sk);
        if here.is_some_and(|l| l.iter().any(|s| s.holds(header))) {
            return;
        }
        let crowded = here.is_some_and(|l| l.len() >= STREAMS_PER_ADDRESS);
        if crowded && !self.end_oldest_datagram_stream(header.sk, out) {
            self.evict(|sk, _| sk == header.sk);
        }
        if self.count >= self.capacity {
            self.evict(|_, _| true);
        }
        self.streams.entry(header.sk).or_default().push(Stream {
            stage: Stage::Detecting(Vec::new()),
            last_ns: header.ts_ns,
            tuple: header.tuple,
            tls: is_tls(header),
            first_sent: sent,
            transport,
            // A stream that begins at the start of its socket's bytes
            // knows where both directions start: a first response lost is
            // a gap too. One that begins later (its first records lost, or
            // an evicted stream's socket) learns each from its first record.
            next_offset: if header.offset == 0 {
                [Some(0); 2]
            } else {
                [None; 2]
            },
        });
        self.count += 1;
    }

    /// Whether a record of socket `sk` with addresses `tuple` would start
    /// a stream at an address that has no room left for one.
    pub fn crowded(&self, sk: u64, tuple: &SockTuple) -> bool {
        self.streams
            .get(&sk)
            .is_some_and(|l| l.len() >= STREAMS_PER_ADDRESS && !l.iter().any(|s| s.tuple == *tuple))
    }

    /// The request that socket `sk` (with addresses `tuple`) has read and
    /// not answered yet, as an unanswered exchange (see
    /// `Session::in_flight`).
    pub fn in_flight(&self, sk: u64, tuple: &SockTuple) -> Option<Exchange> {
        self.session(sk, tuple)?.in_flight()
    }

    /// Whether socket `sk` (with addresses `tuple`) has read a request it
    /// has not answered yet: [`in_flight`](Self::in_flight) without
    /// building the exchange.
    pub fn awaits_answer(&self, sk: u64, tuple: &SockTuple) -> bool {
        self.session(sk, tuple)
            .is_some_and(|session| session.awaits_answer())
    }

    /// The session of the socket's requests: of its TLS plaintext when
    /// there is one (its ciphertext's session only sees the handshake).
    fn session(&self, sk: u64, tuple: &SockTuple) -> Option<&dyn Session> {
        let mut streams = self.streams.get(&sk)?.iter().filter(|s| s.tuple == *tuple);
        let (first, second) = (streams.next()?, streams.next());
        let stream = match second {
            Some(other) if other.tls => other,
            _ => first,
        };
        match &stream.stage {
            Stage::Parsing(session) => Some(session.as_ref()),
            Stage::Detecting(_) | Stage::Off => None,
        }
    }

    /// Whether socket `sk` (with addresses `tuple`) wrote before it read,
    /// as far as captured; `None` when it has no stream yet. A UDP socket
    /// that sends first is a client (the rule of the UDP flows), one that
    /// receives first a server: unlike the port numbers, this holds for
    /// servers on high ports.
    pub fn first_sent(&self, sk: u64, tuple: &SockTuple) -> Option<bool> {
        self.streams
            .get(&sk)?
            .iter()
            .find(|s| s.tuple == *tuple)
            .map(|s| s.first_sent)
    }

    /// Whether socket `sk` has a stream whose addresses pass `is` (the
    /// kernel reuses a closed socket's address, and its stream lingers).
    pub fn has_stream(&self, sk: u64, is: impl Fn(&SockTuple) -> bool) -> bool {
        self.streams
            .get(&sk)
            .is_some_and(|streams| streams.iter().any(|s| is(&s.tuple)))
    }

    /// Whether a stream at `sk` has no socket addresses (the kernel's
    /// layout is unknown), so that sockets reusing the address cannot be
    /// told apart.
    pub fn untold(&self, sk: u64) -> bool {
        self.streams
            .get(&sk)
            .is_some_and(|l| l.iter().any(|s| s.tuple.family == 0))
    }

    /// The socket closed: flush and forget the streams at `sk` whose
    /// addresses are the socket's (`its`).
    pub fn close(
        &mut self,
        sk: u64,
        its: impl Fn(&SockTuple) -> bool,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        let before = out.len();
        // At most STREAMS_PER_ADDRESS streams share a kernel address.
        while let Some(i) = self
            .streams
            .get(&sk)
            .and_then(|l| l.iter().position(|s| its(&s.tuple)))
        {
            if let Some(stream) = self.take_stream(sk, i) {
                stream.end(ts_ns, out);
            }
        }
        self.counters.exchanges += (out.len() - before) as u64;
    }

    /// Ends the least recently used stream at kernel address `sk` as its
    /// socket's close would, if it is a datagram one. A UDP socket's close
    /// is not traced: that other sockets, with other addresses, have used
    /// its kernel address since is what tells it closed (a resolver opens
    /// a socket per lookup, each reusing the last one's memory). Nothing
    /// of it is lost, so it is not an eviction.
    fn end_oldest_datagram_stream(&mut self, sk: u64, out: &mut Vec<Exchange>) -> bool {
        let oldest = self.streams.get(&sk).and_then(|list| {
            let (i, s) = list.iter().enumerate().min_by_key(|(_, s)| s.last_ns)?;
            (s.transport == Transport::Datagram).then_some(i)
        });
        let Some(stream) = oldest.and_then(|i| self.take_stream(sk, i)) else {
            return false;
        };
        let last_ns = stream.last_ns;
        stream.end(last_ns, out);
        true
    }

    /// Drops the least recently used stream among those `among` selects
    /// (by kernel address and addresses).
    fn evict(&mut self, among: impl Fn(u64, &SockTuple) -> bool) {
        let oldest = self
            .streams
            .iter()
            .flat_map(|(&sk, l)| l.iter().enumerate().map(move |(i, s)| (sk, i, s)))
            .filter(|(sk, _, s)| among(*sk, &s.tuple))
            .min_by_key(|(_, _, s)| s.last_ns)
            .map(|(sk, i, _)| (sk, i));
        if let Some((sk, i)) = oldest
            && self.take_stream(sk, i).is_some()
        {
            self.counters.streams_evicted += 1;
        }
    }

    /// Takes stream `i` at kernel address `sk` out of the engine,
    /// forgetting the address once no stream is left at it.
    fn take_stream(&mut self, sk: u64, i: usize) -> Option<Stream> {
        let list = self.streams.get_mut(&sk)?;
        if i >= list.len() {
            return None;
        }
        let stream = list.swap_remove(i);
        if list.is_empty() {
            self.streams.remove(&sk);
        }
        self.count -= 1;
        Some(stream)
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
    // Detection looks at the first direction that spoke, contiguous bytes
    // (over UDP: its first datagram, which is a whole message).
    let Some(first) = pending.first() else {
        return Stage::Detecting(pending);
    };
    let mut bytes = Vec::new();
    for p in pending.iter().filter(|p| p.direction == first.direction) {
        if p.gap_before > 0 && !bytes.is_empty() {
            // Not contiguous: what came before the gap is all there is.
            break;
        }
        bytes.extend_from_slice(&p.data);
        if p.truncated > 0 || bytes.len() >= DETECT_BYTES || role.transport == Transport::Datagram {
            break;
        }
    }
    bytes.truncate(DETECT_BYTES);
    let first_bytes = FirstBytes {
        direction: first.direction,
        data: &bytes,
        transport: role.transport,
        server_port: role.server_port,
    };
    match weft_l7::detect(&first_bytes) {
        Ok(protocol) => start_session(protocol, role, pending, limits, privacy, out, counters),
        Err(Detection::NeedMore) if pending.len() < DETECT_CHUNKS && bytes.len() < DETECT_BYTES => {
            Stage::Detecting(pending)
        }
        Err(_) => Stage::Off,
    }
}

fn start_session(
    protocol: Protocol,
    role: SocketRole,
    pending: Vec<Pending>,
    limits: Limits,
    privacy: &Privacy,
    out: &mut Vec<Exchange>,
    counters: &mut L7Counters,
) -> Stage {
    let Some(mut session) = weft_l7::new_session_on(protocol, role.transport, limits, privacy)
    else {
        return Stage::Off;
    };
    for p in &pending {
        let chunk = Chunk {
            direction: p.direction,
            data: &p.data,
            truncated: p.truncated,
            gap_before: p.gap_before,
            ts_ns: p.ts_ns,
        };
        if session.feed(&chunk, out).is_err() {
            counters.parse_errors += 1;
            return Stage::Off;
        }
    }
    Stage::Parsing(session)
}

#[cfg(test)]
mod tests {
    use weft_common::{AF_INET, data::DIR_RECV};

    use super::*;

    fn engine() -> L7Engine {
        L7Engine::new(16, Limits::default(), Privacy::default())
    }

    fn tuple(local_port: u16, remote_port: u16) -> SockTuple {
        let mut t = SockTuple {
            family: AF_INET,
            local_port,
            remote_port,
            ..SockTuple::default()
        };
        t.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        t
    }

    fn header(sk: u64, tuple: SockTuple, direction: u8, len: usize, ts_ns: u64) -> DataHeader {
        DataHeader {
            sk,
            ts_ns,
            total_len: len as u32,
            captured_len: len as u32,
            direction,
            tuple,
            ..DataHeader::default()
        }
    }

    const CLIENT: SocketRole = SocketRole {
        is_client: true,
        server_port: 80,
        transport: Transport::Stream,
    };

    /// `weft_events_total{source="l7_exchanges"}` counts each exchange
    /// once, also when the caller feeds several records into one batch
    /// before taking the exchanges out.
    #[test]
    fn exchanges_are_counted_once_per_batch() {
        let t = tuple(40001, 80);
        let mut e = engine();
        let mut out = Vec::new();
        for i in 0..3u64 {
            let request = format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n");
            let response = b"HTTP/1.1 204 No Content\r\n\r\n";
            let mut sent = header(9, t, DIR_SEND, request.len(), 10 * i + 1);
            sent.offset = i * request.len() as u64;
            e.feed(&sent, request.as_bytes(), CLIENT, &mut out);
            let mut got = header(9, t, DIR_RECV, response.len(), 10 * i + 2);
            got.offset = i * response.len() as u64;
            e.feed(&got, response, CLIENT, &mut out);
        }
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(e.counters.exchanges, 3);
    }

    /// The plaintext a TLS library gave and took on a socket is a stream
    /// of its own beside the socket's ciphertext: interleaved with it, it
    /// parses as HTTP, its exchange says `tls` (and `https`), and it is the
    /// session asked about the socket's unanswered request.
    #[test]
    fn tls_plaintext_is_a_stream_beside_the_ciphertext() {
        let request = b"GET /secure HTTP/1.1\r\nHost: x\r\n\r\n";
        let response = b"HTTP/1.1 204 No Content\r\n\r\n";
        // A TLS 1.2 application data record: what the syscalls moved.
        let mut cipher = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        cipher.extend([0xa5; 32]);
        let t = tuple(40000, 443);
        let plain = |direction, len, ts, offset| DataHeader {
            flags: flags::TLS,
            offset,
            ..header(7, t, direction, len, ts)
        };
        let role = SocketRole {
            server_port: 443,
            ..CLIENT
        };
        let mut e = engine();
        let mut out = Vec::new();
        e.feed(
            &header(7, t, DIR_SEND, cipher.len(), 1),
            &cipher,
            role,
            &mut out,
        );
        e.feed(
            &plain(DIR_SEND, request.len(), 2, 0),
            request,
            role,
            &mut out,
        );
        assert!(
            e.awaits_answer(7, &t),
            "the plaintext session has the request"
        );
        let mut reply = header(7, t, DIR_RECV, cipher.len(), 3);
        reply.offset = 0;
        e.feed(&reply, &cipher, role, &mut out);
        assert!(out.is_empty(), "{out:?}");
        e.feed(
            &plain(DIR_RECV, response.len(), 4, 0),
            response,
            role,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].tls);
        assert_eq!(out[0].fields["path"], "/secure");
        assert_eq!(out[0].fields["status"], 204);
        assert!(matches!(
            out[0].metric,
            weft_l7::MetricAttributes::Http {
                scheme: "https",
                ..
            }
        ));
        assert_eq!(e.len(), 2, "the ciphertext's stream and the plaintext's");
        assert_eq!(e.counters.parse_errors, 0);
        // The socket's close ends both.
        e.close(7, |_| true, 5, &mut out);
        assert!(e.is_empty());
    }

    /// An exchange a TLS stream's close completes says `tls` too.
    #[test]
    fn a_tls_stream_closed_unanswered_still_says_tls() {
        let request = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
        let t = tuple(40000, 443);
        let mut h = header(7, t, DIR_SEND, request.len(), 1);
        h.flags = flags::TLS;
        let mut e = engine();
        let mut out = Vec::new();
        e.feed(&h, request, CLIENT, &mut out);
        e.close(7, |_| true, 2, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].tls && !out[0].answered);
    }

    #[test]
    fn sockets_at_a_reused_address_keep_their_own_streams() {
        let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let old = tuple(40000, 80);
        let new = tuple(40001, 80);
        let mut e = engine();
        let mut out = Vec::new();
        e.feed(
            &header(1, old, DIR_SEND, request.len(), 1),
            request,
            CLIENT,
            &mut out,
        );
        // A new socket at the old one's kernel address reads a response to
        // a request it never sent: not the old socket's answer.
        e.feed(
            &header(1, new, DIR_RECV, response.len(), 2),
            response,
            CLIENT,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // The old socket's response, read before it closed, comes late.
        e.feed(
            &header(1, old, DIR_RECV, response.len(), 3),
            response,
            CLIENT,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].fields["path"], "/a");
        assert_eq!(e.len(), 2);
        // Closing one socket leaves the other's stream.
        e.close(1, |t| *t == old, 4, &mut out);
        assert_eq!(e.len(), 1);
        assert_eq!(e.first_sent(1, &new), Some(false));
        assert_eq!(e.first_sent(1, &old), None);
    }

    #[test]
    fn an_address_keeps_a_bounded_number_of_streams() {
        let mut e = engine();
        let mut out = Vec::new();
        let streams = STREAMS_PER_ADDRESS as u16 + 6;
        for port in 0..streams {
            let t = tuple(40000 + port, 80);
            // Full once it holds its share, for new sockets only.
            assert_eq!(e.crowded(1, &t), port >= STREAMS_PER_ADDRESS as u16);
            let h = header(1, t, DIR_SEND, 1, u64::from(port));
            e.feed(&h, b"x", CLIENT, &mut out);
            assert!(!e.crowded(1, &t));
            assert!(!e.crowded(2, &t));
        }
        assert_eq!(e.len(), STREAMS_PER_ADDRESS);
        assert_eq!(e.counters.streams_evicted, 6);
        // The newest are kept.
        let newest = 40000 + streams - 1;
        assert_eq!(e.first_sent(1, &tuple(newest, 80)), Some(true));
        assert_eq!(e.first_sent(1, &tuple(40000, 80)), None);
    }

    /// A DNS message: id 0x1234, one question `a.test` of type A; a
    /// response adds one answer.
    fn dns(response: bool) -> Vec<u8> {
        let flags: u16 = if response { 0x8180 } else { 0x0100 };
        let mut m = vec![0x12, 0x34];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, u8::from(response), 0, 0, 0, 0]);
        m.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        if response {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        }
        m
    }

    #[test]
    fn a_socket_per_lookup_ends_datagram_streams_without_evicting() {
        // glibc's resolver: a connected UDP socket per lookup, each at the
        // kernel address of the one before.
        let client = SocketRole {
            is_client: true,
            server_port: 53,
            transport: Transport::Datagram,
        };
        let (query, answer) = (dns(false), dns(true));
        let mut e = engine();
        let mut out = Vec::new();
        let lookups = STREAMS_PER_ADDRESS as u16 + 10;
        for port in 0..lookups {
            let t = tuple(40000 + port, 53);
            let ts = u64::from(port) * 10;
            let sent = header(1, t, DIR_SEND, query.len(), ts);
            e.feed(&sent, &query, client, &mut out);
            let received = header(1, t, DIR_RECV, answer.len(), ts + 1);
            e.feed(&received, &answer, client, &mut out);
        }
        assert_eq!(out.len(), usize::from(lookups), "{out:?}");
        assert_eq!(e.counters.streams_evicted, 0);
        assert_eq!(e.len(), STREAMS_PER_ADDRESS);
    }

    #[test]
    fn dns_over_udp_is_one_message_per_datagram() {
        let server = SocketRole {
            is_client: false,
            server_port: 20053,
            transport: Transport::Datagram,
        };
        let (query, answer) = (dns(false), dns(true));
        let t = tuple(20053, 0);
        let mut e = engine();
        let mut out = Vec::new();
        e.feed(
            &header(7, t, DIR_RECV, query.len(), 10),
            &query,
            server,
            &mut out,
        );
        assert_eq!(e.first_sent(7, &t), Some(false));
        e.feed(
            &header(7, t, DIR_SEND, answer.len(), 30),
            &answer,
            server,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].protocol, Protocol::Dns);
        assert_eq!(out[0].fields["query"], "a.test");
        assert_eq!(out[0].fields["rcode"], "NOERROR");
        assert_eq!(out[0].fields["answers"], 1);
        assert_eq!(out[0].latency_ns(), 20);
    }

    /// A keep-alive HTTP/1.1 connection seen from its client, one record
    /// per read/write at its place in the socket's stream: `(sent, bytes)`.
    fn http_client_records() -> Vec<(bool, &'static [u8])> {
        vec![
            (true, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            (false, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            (true, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
            (
                false,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ),
            (true, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"),
            (false, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ]
    }

    /// Feeds the records but the one at `lost`, each with its offset.
    fn feed_losing(e: &mut L7Engine, lost: Option<usize>) -> Vec<Exchange> {
        let t = tuple(40000, 80);
        let mut offsets = [0u64; 2];
        let mut out = Vec::new();
        for (i, (sent, bytes)) in http_client_records().into_iter().enumerate() {
            let dir = if sent { DIR_SEND } else { DIR_RECV };
            let mut h = header(1, t, dir, bytes.len(), 10 * i as u64 + 10);
            h.offset = offsets[usize::from(!sent)];
            offsets[usize::from(!sent)] += bytes.len() as u64;
            if Some(i) != lost {
                e.feed(&h, bytes, CLIENT, &mut out);
            }
        }
        out
    }

    fn pairs(out: &[Exchange]) -> Vec<(String, String)> {
        out.iter()
            .map(|x| {
                let field = |k: &str| x.fields.get(k).map(|v| v.to_string()).unwrap_or_default();
                (field("path"), field("status"))
            })
            .collect()
    }

    #[test]
    fn a_lost_response_never_pairs_the_next_one_with_its_request() {
        let mut whole = engine();
        let all = pairs(&feed_losing(&mut whole, None));
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(whole.counters.gaps, 0);
        // The first response's record is lost.
        let mut e = engine();
        let out = feed_losing(&mut e, Some(1));
        assert_eq!(e.counters.gaps, 1);
        let got = pairs(&out);
        // The response after the gap cannot be placed (HTTP/1 has no ids):
        // the parser gives up on the requests waiting then (the gap is
        // counted) and finds its footing at the next request.
        assert!(
            got.iter().all(|p| all.contains(p)),
            "an exchange paired wrong: {got:?} (right: {all:?})"
        );
        assert_eq!(got.last(), all.last(), "/c after the gap: {got:?}");
    }

    #[test]
    fn a_lost_request_leaves_the_others_right() {
        let mut whole = engine();
        let all = pairs(&feed_losing(&mut whole, None));
        let mut e = engine();
        let out = feed_losing(&mut e, Some(2));
        assert_eq!(e.counters.gaps, 1);
        let got = pairs(&out);
        assert!(
            got.iter().all(|p| all.contains(p)),
            "an exchange paired wrong: {got:?} (right: {all:?})"
        );
        assert!(got.contains(&all[2]), "/c after the gap: {got:?}");
    }
}
