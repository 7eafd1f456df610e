//! TLS handshake metadata: what a TLS connection says in the clear before
//! its keys take over, for connections whose plaintext weft cannot read.
//!
//! One exchange per connection, the handshake: from the client's
//! ClientHello to the client's first protected record (TLS 1.3: its
//! Finished) or, in TLS 1.2, until both sides have sent ChangeCipherSpec.
//! Its fields:
//!
//! - `sni`: the ClientHello's server_name (host_name), when present;
//! - `version`: the negotiated version (`"1.3"`, `"1.2"`, ...), from the
//!   ServerHello's supported_versions extension, else its legacy version;
//!   null when no ServerHello came;
//! - `alpn`: the negotiated protocol. TLS 1.2 names it in the ServerHello;
//!   TLS 1.3 sends it encrypted (EncryptedExtensions), so there it is the
//!   client's offer when it offered exactly one, else null.
//!   `alpn_offered` is the client's list;
//! - `handshake_us`: from the ClientHello to the end above;
//! - `outcome`: `ok`, or `failed` with `failure` saying why: a cleartext
//!   alert's description (`handshake_failure`, `bad_certificate`,
//!   `unknown_ca`, ...), `encrypted_alert` (TLS 1.3: a protected record of
//!   an alert's size, 19 bytes: 2 of alert, 1 of content type, 16 of AEAD
//!   tag, where the handshake's next record was due), or `closed` (the
//!   connection ended first).
//!
//! TLS 1.3 encrypts the end of the handshake, so two refusals are read from
//! record sizes: a client that refuses the server's certificate sends an
//! alert-sized record in place of its first protected one; a server that
//! refuses the client's certificate (mutual TLS: none, or an untrusted
//! one) answers the client's Finished with an alert-sized record, where an
//! accepting server sends its session tickets or its first data. So a TLS
//! 1.3 handshake is reported once the server's first protected record
//! after the client's Finished came (or the connection closed: then it
//! ended well on the client's side, and is `ok`); its end and sizes are
//! still the client's Finished. A server whose first data after the
//! handshake is 2 bytes, with no session ticket before it, is read as a
//! refusal. Nothing after the handshake is parsed.
//!
//! Records are read as a stream per direction (a record may be split
//! across reads, several may share one); bytes the capture cut inside a
//! record are skipped. Cut bytes that cover a record header lose the
//! direction until a read or write starts with a well-formed header again
//! (TLS libraries write whole records).

use serde_json::{Map, Value};

use crate::detect::FirstBytes;
use crate::{
    Chunk, Detection, Direction, Exchange, MetricAttributes, ParseError, Protocol, Session,
};

/// Record content types.
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message types.
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
/// Extension types.
const SERVER_NAME: u16 = 0;
const ALPN: u16 = 16;
const SUPPORTED_VERSIONS: u16 = 43;
/// A record's header: type, version, length.
const HEADER: usize = 5;
/// Largest record (2^14 plaintext plus what protection may add).
const MAX_RECORD: usize = (1 << 14) + 2048;
/// How much of a hello's record is kept to read it.
const MAX_HELLO: usize = 1 << 14;
/// A TLS 1.3 alert, protected: 2 bytes, the inner type, a 16-byte tag.
const PROTECTED_ALERT_LEN: usize = 2 + 1 + 16;
/// The ServerHello random that makes it a HelloRetryRequest (RFC 8446 4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// ALPN protocols kept from the client's offer, and their longest name.
const MAX_ALPN_OFFERED: usize = 8;
const MAX_ALPN: usize = 32;
/// Longest host name (RFC 1035).
const MAX_SNI: usize = 253;

/// A ClientHello in its record, from the client: handshake records of
/// TLS 1.0 to 1.3 (1.3 still writes `03 01` or `03 03` there).
pub fn detect(first: &FirstBytes<'_>) -> Detection {
    if first.direction != Direction::ToServer {
        return Detection::No;
    }
    let d = first.data;
    let checks: [fn(u8) -> bool; 6] = [
        |b| b == HANDSHAKE,
        |b| b == 3,
        |b| b <= 4,
        |_| true,
        |_| true,
        |b| b == CLIENT_HELLO,
    ];
    for (i, check) in checks.iter().enumerate() {
        match d.get(i) {
            Some(&b) if !check(b) => return Detection::No,
            Some(_) => {}
            None => return Detection::NeedMore,
        }
    }
    Detection::Yes
}

/// A record as the session sees it: its type and length, when its header
/// was read, and the first bytes of its body that were asked for.
#[derive(Debug)]
struct Record {
    content_type: u8,
    length: usize,
    ts_ns: u64,
    body: Vec<u8>,
    /// The direction's byte count at the record's end.
    end: u64,
}

/// The record being read.
#[derive(Debug)]
struct Current {
    record: Record,
    /// Body bytes read or skipped so far.
    seen: usize,
    /// Body bytes to keep.
    keep: usize,
    /// Whether the session has been given it already.
    given: bool,
}

/// One direction's records, read from its byte stream.
#[derive(Debug, Default)]
struct Records {
    header: Vec<u8>,
    current: Option<Current>,
    /// A cut or a loss covered a record header: until a chunk starts with
    /// a well-formed one, the bytes mean nothing.
    lost: bool,
    /// Bytes of this direction, cut ones included.
    bytes: u64,
}

impl Records {
    /// Reads a chunk; `keep(content_type)` says how many body bytes of a
    /// new record to keep. Completed records (or as much of them as was
    /// kept) go to `out`.
    fn push(&mut self, chunk: &Chunk<'_>, keep: impl Fn(u8) -> usize, out: &mut Vec<Record>) {
        if chunk.gap_before > 0 {
            self.lose();
        }
        if self.lost {
            // Resynchronise only at the start of a read or write.
            if !looks_like_header(chunk.data) {
                self.bytes += (chunk.data.len() + chunk.truncated) as u64;
                return;
            }
            self.lost = false;
        }
        // Bytes are counted as they are read, so that a handshake ending
        // inside a chunk counts the same however the stream was split.
        let mut data = chunk.data;
        while !data.is_empty() {
            data = self.read(data, chunk.ts_ns, &keep, out);
            if self.lost {
                self.bytes += (data.len() + chunk.truncated) as u64;
                return;
            }
        }
        self.skip(chunk.truncated, out);
    }

    /// Reads what it can of `data`; returns the rest.
    fn read<'a>(
        &mut self,
        data: &'a [u8],
        ts_ns: u64,
        keep: &impl Fn(u8) -> usize,
        out: &mut Vec<Record>,
    ) -> &'a [u8] {
        let Some(current) = self.current.as_mut() else {
            let take = (HEADER - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            self.bytes += take as u64;
            if self.header.len() == HEADER {
                self.start_record(ts_ns, keep);
            }
            return &data[take..];
        };
        let take = (current.record.length - current.seen).min(data.len());
        let room = current.keep.saturating_sub(current.record.body.len());
        current
            .record
            .body
            .extend_from_slice(&data[..take.min(room)]);
        current.seen += take;
        self.bytes += take as u64;
        self.give_if_ready(out);
        &data[take..]
    }

    fn start_record(&mut self, ts_ns: u64, keep: &impl Fn(u8) -> usize) {
        let header = std::mem::take(&mut self.header);
        if !looks_like_header(&header) {
            self.lose();
            return;
        }
        let content_type = header[0];
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        self.current = Some(Current {
            record: Record {
                content_type,
                length,
                ts_ns,
                body: Vec::new(),
                end: self.bytes + length as u64,
            },
            seen: 0,
            keep: keep(content_type).min(length),
            given: false,
        });
    }

    /// Gives the current record once its kept bytes are in, and ends it
    /// once its body is.
    fn give_if_ready(&mut self, out: &mut Vec<Record>) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let done = current.seen == current.record.length;
        if !current.given && (done || current.record.body.len() >= current.keep) {
            current.given = true;
            out.push(Record {
                content_type: current.record.content_type,
                length: current.record.length,
                ts_ns: current.record.ts_ns,
                body: std::mem::take(&mut current.record.body),
                end: current.record.end,
            });
        }
        if done {
            self.current = None;
        }
    }

    /// Skips bytes the capture cut: inside the current record they are
    /// body (what was kept of it is given as it is); past it, or in a
    /// header, the stream is lost.
    fn skip(&mut self, cut: usize, out: &mut Vec<Record>) {
        if cut == 0 {
            return;
        }
        self.bytes += cut as u64;
        let Some(current) = self.current.as_mut() else {
            self.lose();
            return;
        };
        let rest = current.record.length - current.seen;
        current.keep = current.record.body.len();
        current.seen += cut.min(rest);
        self.give_if_ready(out);
        if cut > rest {
            self.lose();
        }
    }

    fn lose(&mut self) {
        self.lost = true;
        self.header.clear();
        self.current = None;
    }
}

/// A record header: a known content type, version 3.x, a possible length.
fn looks_like_header(b: &[u8]) -> bool {
    b.len() >= HEADER
        && (CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&b[0])
        && b[1] == 3
        && b[2] <= 4
        && usize::from(u16::from_be_bytes([b[3], b[4]])) <= MAX_RECORD
}

/// What the ClientHello said.
#[derive(Debug, Default, Clone, PartialEq)]
struct ClientHello {
    sni: Option<String>,
    alpn_offered: Vec<String>,
}

/// What the ServerHello said.
#[derive(Debug, Default, Clone, PartialEq)]
struct ServerHello {
    /// (major, minor) of the negotiated version.
    version: (u8, u8),
    alpn: Option<String>,
    retry: bool,
}

/// A bounded big-endian reader over a message; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one- or two-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The extensions of a hello, as far as the kept bytes go (a hello cut by
/// the capture still names what came before the cut).
fn extensions(mut r: Reader<'_>, mut each: impl FnMut(u16, &[u8])) {
    let Some(declared) = r.u16() else {
        return;
    };
    let mut r = Reader(&r.0[..usize::from(declared).min(r.0.len())]);
    while let (Some(kind), Some(body)) = (r.u16(), r.vec16()) {
        each(kind, body);
    }
}

/// The handshake message of a hello record: its type and body.
fn handshake_message(body: &[u8]) -> Option<(u8, &[u8])> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let len = r.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    Some((kind, &r.0[..len.min(r.0.len())]))
}

fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let (kind, message) = handshake_message(body)?;
    if kind != CLIENT_HELLO {
        return None;
    }
    let mut r = Reader(message);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    extensions(r, |kind, body| match kind {
        SERVER_NAME => hello.sni = server_name(body),
        ALPN => hello.alpn_offered = alpn_list(body),
        _ => {}
    });
    Some(hello)
}

fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let (kind, message) = handshake_message(body)?;
    if kind != SERVER_HELLO {
        return None;
    }
    let mut r = Reader(message);
    let legacy = r.take(2)?;
    let random = r.take(32)?;
    let mut hello = ServerHello {
        version: (legacy[0], legacy[1]),
        alpn: None,
        retry: random == HELLO_RETRY_RANDOM,
    };
    r.vec8()?; // legacy_session_id_echo
    r.take(2 + 1)?; // cipher_suite, legacy_compression_method
    extensions(r, |kind, body| match (kind, body) {
        (SUPPORTED_VERSIONS, &[major, minor]) => hello.version = (major, minor),
        (ALPN, _) => hello.alpn = alpn_list(body).into_iter().next(),
        _ => {}
    });
    Some(hello)
}

/// The host_name of a server_name extension.
fn server_name(body: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(body).vec16()?);
    while let Some(kind) = list.u8() {
        let name = list.vec16()?;
        if kind == 0 {
            return printable(name, MAX_SNI);
        }
    }
    None
}

/// The protocol names of an ALPN extension (bounded).
fn alpn_list(body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let Some(list) = Reader(body).vec16() else {
        return names;
    };
    let mut list = Reader(list);
    while let Some(name) = list.vec8() {
        if names.len() == MAX_ALPN_OFFERED {
            break;
        }
        if let Some(name) = printable(name, MAX_ALPN) {
            names.push(name);
        }
    }
    names
}

/// Visible ASCII only, at most `max` bytes: these become record fields and
/// metric labels.
fn printable(bytes: &[u8], max: usize) -> Option<String> {
    let ok = !bytes.is_empty() && bytes.len() <= max && bytes.iter().all(u8::is_ascii_graphic);
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The version as OpenTelemetry's `tls.protocol.version` writes it.
fn version_name((major, minor): (u8, u8)) -> Option<&'static str> {
    match (major, minor) {
        (3, 0) => Some("ssl3"),
        (3, 1) => Some("1.0"),
        (3, 2) => Some("1.1"),
        (3, 3) => Some("1.2"),
        (3, 4) => Some("1.3"),
        _ => None,
    }
}

/// An alert description's name (RFC 8446 6, RFC 5246 7.2).
fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "other",
    }
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the client's ClientHello.
    Hello,
    /// ClientHello seen; waiting for the ServerHello.
    ServerHello,
    /// ServerHello seen; waiting for the end of the handshake.
    Finishing,
    /// TLS 1.3: the client sent its Finished; the server's next protected
    /// record says whether it accepted the client (its certificate).
    Confirming,
    /// Reported (or never to be): everything else is ignored.
    Done,
}

/// One connection's handshake.
pub struct TlsSession {
    stage: Stage,
    to_server: Records,
    to_client: Records,
    client: ClientHello,
    server: Option<ServerHello>,
    hello_ns: u64,
    client_ccs_ns: Option<u64>,
    server_ccs_ns: Option<u64>,
    /// Where the client's side of a TLS 1.3 handshake ended.
    client_done: Option<HandshakeEnd>,
    records: Vec<Record>,
}

/// The end of a handshake: when, and each direction's bytes up to it.
#[derive(Debug, Clone, Copy)]
struct HandshakeEnd {
    ts_ns: u64,
    to_server: u64,
    to_client: u64,
}

impl Default for TlsSession {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsSession {
    pub fn new() -> Self {
        Self {
            stage: Stage::Hello,
            to_server: Records::default(),
            to_client: Records::default(),
            client: ClientHello::default(),
            server: None,
            hello_ns: 0,
            client_ccs_ns: None,
            server_ccs_ns: None,
            client_done: None,
            records: Vec::new(),
        }
    }

    /// Bytes held: at most a hello record being read per direction.
    pub fn buffered(&self) -> usize {
        let held =
            |r: &Records| r.header.len() + r.current.as_ref().map_or(0, |c| c.record.body.len());
        held(&self.to_server) + held(&self.to_client)
    }

    /// How much of a new record's body the handshake needs: a hello's
    /// whole record while waiting for it, an alert's two bytes.
    fn keep(stage: Stage, direction: Direction) -> impl Fn(u8) -> usize {
        move |content_type| match (content_type, stage, direction) {
            (HANDSHAKE, Stage::Hello, Direction::ToServer)
            | (HANDSHAKE, Stage::ServerHello, Direction::ToClient) => MAX_HELLO,
            (ALERT, _, _) => 2,
            _ => 0,
        }
    }

    fn on_record(&mut self, direction: Direction, record: &Record, out: &mut Vec<Exchange>) {
        match (self.stage, direction, record.content_type) {
            (Stage::Done, _, _) => {}
            (_, _, ALERT) if self.stage != Stage::Hello => {
                let failure = record.body.get(1).map_or("other", |&d| alert_name(d));
                let end = self.end_at(direction, record);
                self.report(end, Some(failure), out);
            }
            (Stage::Hello, Direction::ToServer, HANDSHAKE) => {
                match parse_client_hello(&record.body) {
                    Some(hello) => {
                        self.client = hello;
                        self.hello_ns = record.ts_ns;
                        self.stage = Stage::ServerHello;
                    }
                    // Joined mid-connection, or not a hello: nothing to say.
                    None => self.stage = Stage::Done,
                }
            }
            (Stage::Hello, _, _) => self.stage = Stage::Done,
            (Stage::ServerHello, Direction::ToClient, HANDSHAKE) => {
                // A HelloRetryRequest asks for a second ClientHello; the
                // handshake goes on to the real ServerHello.
                if let Some(hello) = parse_server_hello(&record.body).filter(|h| !h.retry) {
                    self.server = Some(hello);
                    self.stage = Stage::Finishing;
                }
            }
            (Stage::Finishing, Direction::ToServer, CHANGE_CIPHER_SPEC) => {
                self.client_ccs_ns.get_or_insert(record.ts_ns);
                self.finish_tls12(direction, record, out);
            }
            (Stage::Finishing, Direction::ToClient, CHANGE_CIPHER_SPEC) => {
                self.server_ccs_ns.get_or_insert(record.ts_ns);
                self.finish_tls12(direction, record, out);
            }
            (Stage::Finishing, Direction::ToServer, APPLICATION_DATA) if self.is_tls13() => {
                let end = self.end_at(direction, record);
                if record.length == PROTECTED_ALERT_LEN {
                    // The client refused the server (its certificate).
                    self.report(end, Some("encrypted_alert"), out);
                } else {
                    self.client_done = Some(end);
                    self.stage = Stage::Confirming;
                }
            }
            (Stage::Confirming, Direction::ToClient, APPLICATION_DATA) => {
                if record.length == PROTECTED_ALERT_LEN {
                    // The server refused the client (its certificate).
                    let end = self.end_at(direction, record);
                    self.report(end, Some("encrypted_alert"), out);
                } else {
                    self.report_client_done(out);
                }
            }
            _ => {}
        }
    }

    fn is_tls13(&self) -> bool {
        self.server.as_ref().is_some_and(|s| s.version >= (3, 4))
    }

    /// TLS 1.2 and before: done once both sides changed cipher spec
    /// (`record` is the second one).
    fn finish_tls12(&mut self, direction: Direction, record: &Record, out: &mut Vec<Exchange>) {
        if self.is_tls13() {
            return;
        }
        if let (Some(client), Some(server)) = (self.client_ccs_ns, self.server_ccs_ns) {
            let end = HandshakeEnd {
                ts_ns: client.max(server),
                ..self.end_at(direction, record)
            };
            self.report(end, None, out);
        }
    }

    /// The handshake ending with `record` (of `direction`): each
    /// direction's bytes up to it.
    fn end_at(&self, direction: Direction, record: &Record) -> HandshakeEnd {
        let (mut to_server, mut to_client) = (self.to_server.bytes, self.to_client.bytes);
        match direction {
            Direction::ToServer => to_server = record.end,
            Direction::ToClient => to_client = record.end,
        }
        HandshakeEnd {
            ts_ns: record.ts_ns,
            to_server,
            to_client,
        }
    }

    /// A TLS 1.3 handshake the server did not refuse: it ended at the
    /// client's first protected record.
    fn report_client_done(&mut self, out: &mut Vec<Exchange>) {
        if let Some(end) = self.client_done {
            self.report(end, None, out);
        }
    }

    /// The handshake's exchange, ended at `end`; `failure` when failed.
    fn report(
        &mut self,
        end: HandshakeEnd,
        failure: Option<&'static str>,
        out: &mut Vec<Exchange>,
    ) {
        self.stage = Stage::Done;
        let mut ex = Protocol::Tls.exchange(self.hello_ns);
        ex.response_ns = end.ts_ns.max(self.hello_ns);
        let (to_server, to_client) = (end.to_server, end.to_client);
        // A ServerHello, or an alert instead: the server answered.
        ex.answered = to_client > 0;
        ex.request_bytes = to_server;
        ex.response_bytes = to_client;
        let version = self.server.as_ref().and_then(|s| version_name(s.version));
        let alpn = match &self.server {
            Some(s) if s.alpn.is_some() => s.alpn.clone(),
            // TLS 1.3 sends the choice encrypted: the offer, if only one.
            Some(_) if self.is_tls13() && self.client.alpn_offered.len() == 1 => {
                self.client.alpn_offered.first().cloned()
            }
            _ => None,
        };
        let outcome = if failure.is_some() { "failed" } else { "ok" };
        let mut fields = Map::new();
        fields.insert("sni".into(), self.client.sni.clone().into());
        fields.insert("version".into(), version.into());
        fields.insert("alpn".into(), alpn.into());
        fields.insert(
            "alpn_offered".into(),
            Value::from(self.client.alpn_offered.clone()),
        );
        fields.insert("handshake_us".into(), (ex.latency_ns() / 1_000).into());
        fields.insert("outcome".into(), outcome.into());
        if let Some(failure) = failure {
            fields.insert("failure".into(), failure.into());
        }
        ex.fields = fields;
        ex.metric = MetricAttributes::Tls {
            version: version.unwrap_or_default(),
            outcome,
            server_name: self.client.sni.clone(),
        };
        out.push(ex);
    }
}

/// The TLS handshake a protocol switches to after a cleartext greeting
/// (PostgreSQL's `SSLRequest`, MySQL's SSL request): that protocol's
/// session hands it the socket's bytes from the switch on, so the
/// connection gets its handshake record like any TLS connection.
#[derive(Default)]
pub struct AfterGreeting(Option<Box<TlsSession>>);

impl AfterGreeting {
    /// The switch: the next bytes are the handshake's.
    pub fn start(&mut self) {
        self.0 = Some(Box::default());
    }

    pub fn buffered(&self) -> usize {
        self.0.as_ref().map_or(0, |tls| tls.buffered())
    }

    /// Handshake bytes: never an error (the TLS session only stops
    /// looking), so the connection does not fail over them.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        if let Some(tls) = &mut self.0
            && (!chunk.data.is_empty() || chunk.truncated > 0)
        {
            let _ = tls.feed(chunk, out);
        }
    }

    /// What followed the switch in the read or write of `chunk`.
    pub fn feed_rest(&mut self, chunk: &Chunk<'_>, rest: &[u8], out: &mut Vec<Exchange>) {
        let rest = Chunk {
            data: rest,
            gap_before: 0,
            ..*chunk
        };
        self.feed(&rest, out);
    }

    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        if let Some(tls) = &mut self.0 {
            tls.close(ts_ns, out);
        }
    }
}

impl Session for TlsSession {
    fn protocol(&self) -> Protocol {
        Protocol::Tls
    }

    /// Never fails: bytes it cannot read end its interest, not the
    /// connection's (they are ciphertext anyway).
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        if self.stage == Stage::Done {
            return Ok(());
        }
        let keep = Self::keep(self.stage, chunk.direction);
        let mut records = std::mem::take(&mut self.records);
        match chunk.direction {
            Direction::ToServer => self.to_server.push(chunk, keep, &mut records),
            Direction::ToClient => self.to_client.push(chunk, keep, &mut records),
        }
        for record in records.drain(..) {
            self.on_record(chunk.direction, &record, out);
        }
        self.records = records;
        Ok(())
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        match self.stage {
            Stage::ServerHello | Stage::Finishing => {
                let end = HandshakeEnd {
                    ts_ns,
                    to_server: self.to_server.bytes,
                    to_client: self.to_client.bytes,
                };
                self.report(end, Some("closed"), out);
            }
            Stage::Confirming => self.report_client_done(out),
            Stage::Hello | Stage::Done => {}
        }
        self.stage = Stage::Done;
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
