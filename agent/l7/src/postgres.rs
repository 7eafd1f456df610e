//! PostgreSQL frontend/backend protocol 3.x
//! (<https://www.postgresql.org/docs/current/protocol-flow.html>).
//!
//! - Startup: an untyped `SSLRequest`/`GSSENCRequest` is answered with one
//!   byte, then the untyped `StartupMessage`; authentication is skipped.
//!   `S` means TLS follows: from there the socket's bytes go to the
//!   handshake parser ([`AfterGreeting`]), which reports the handshake's
//!   metadata like any other TLS connection's (the queries, when the
//!   library is hooked, come as plaintext on a stream of their own). `G`
//!   (GSSAPI encryption) ends the parsing, quietly.
//! - Simple query: `Q` is answered by rows, `CommandComplete` or
//!   `ErrorResponse`, and always ends with `ReadyForQuery` (`Z`).
//! - Extended query: `Parse`/`Bind`/`Execute`... up to `Sync` form one
//!   request, answered up to its `ReadyForQuery`. The statement comes from
//!   the `Parse` (named statements are remembered, bounded), and executions
//!   of a named (prepared) statement are named by its operation (`SELECT`),
//!   or `EXECUTE` when its `Parse` was not seen.
//!
//! One `Z` answers each `Q` and each `Sync`, so a FIFO pairs them even when
//! the client pipelines.
//!
//! Sizes (type byte and length included): the request is its `Q`, or the
//! messages of its batch up to and including `Sync`, plus COPY data the
//! client sends for it; the response is every server message from the end
//! of the previous response up to and including its `ReadyForQuery`
//! (asynchronous notices and parameter updates sent meanwhile included:
//! they are on the wire in the middle of it).

use std::collections::VecDeque;

use serde_json::Value;

use crate::detect::FirstBytes;
use crate::framer::{Frame, Framer, Layout};
use crate::pending::{Fifo, Lost, Resync};
use crate::sql_obfuscate::{Dialect, obfuscate_sql, sets_credentials, sql_operation};
use crate::text::{bounded, bounded_lossy};
use crate::tls::AfterGreeting;
use crate::{
    Chunk, Detection, Direction, ErrorKind, Exchange, Limits, MetricAttributes, ParseError,
    Privacy, Protocol, Session,
};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest startup packet the server accepts (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP: usize = 10_000;
/// The server refuses messages over 1 GB (PQ_LARGE_MESSAGE_LIMIT).
const MAX_MESSAGE: usize = 1 << 30;
/// Named statements and portals remembered per connection.
const MAX_NAMED: usize = 256;
/// Statement and portal names are at most 63 bytes in the server.
const NAME_KEEP: usize = 256;
/// Enough of an ErrorResponse for severity, SQLSTATE and message.
const ERROR_KEEP: usize = 1024;

/// Is this the start of a Postgres connection (client side)?
pub(crate) fn detect(first: &FirstBytes<'_>) -> Detection {
    if first.direction != Direction::ToServer {
        return Detection::No;
    }
    let data = first.data;
    if data.len() < 8 {
        // Startup lengths are < 2^24, so the first byte is 0.
        return if data.first().is_none_or(|&b| b == 0) {
            Detection::NeedMore
        } else {
            Detection::No
        };
    }
    let len = be32(&data[0..4]) as usize;
    let code = be32(&data[4..8]);
    let ok = match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => len == 16,
        _ => code >> 16 == 3 && code & 0xffff < 16 && (9..=MAX_STARTUP).contains(&len),
    };
    if ok { Detection::Yes } else { Detection::No }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client's next message is untyped (startup or an encryption
    /// request).
    Startup,
    /// The server answers an encryption request with one byte.
    EncryptionAnswer,
    /// Typed messages both ways.
    Typed,
    /// The server accepted an SSLRequest: the TLS handshake follows, read
    /// by [`PostgresSession::tls`].
    Tls,
    /// GSS encryption or a cancel request: nothing more to read.
    Done,
}

struct ClientLayout {
    phase: Phase,
    keep_text: usize,
}

impl Layout for ClientLayout {
    fn header_len(&self) -> usize {
        if self.phase == Phase::Startup { 4 } else { 5 }
    }

    fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind> {
        if self.phase == Phase::Startup {
            let len = be32(header) as usize;
            if !(8..=MAX_STARTUP).contains(&len) {
                return Err(ErrorKind::Malformed("startup length"));
            }
            return Ok((len - 4, (len - 4).min(self.keep_text)));
        }
        let len = typed_len(header)?;
        let keep = match header[0] {
            b'Q' | b'P' => self.keep_text,
            b'B' | b'E' | b'C' => NAME_KEEP,
            _ => 0,
        };
        Ok((len, keep))
    }
}

struct ServerLayout {
    phase: Phase,
    /// At most this much of a message's body is kept (`max_message`).
    keep_at_most: usize,
}

impl Layout for ServerLayout {
    fn header_len(&self) -> usize {
        if self.phase == Phase::EncryptionAnswer {
            1
        } else {
            5
        }
    }

    fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind> {
        if self.phase == Phase::EncryptionAnswer {
            return Ok((0, 0));
        }
        let len = typed_len(header)?;
        let keep = match header[0] {
            b'E' => ERROR_KEEP,
            b'C' => 64,
            _ => 0,
        };
        Ok((len, keep.min(self.keep_at_most)))
    }
}

/// Body length of a typed message (its length field counts itself).
fn typed_len(header: &[u8]) -> Result<usize, ErrorKind> {
    let len = be32(&header[1..5]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(ErrorKind::Malformed("message length"));
    }
    Ok(len - 4)
}

/// A statement as reported: obfuscated and bounded.
#[derive(Debug, Clone)]
struct Statement {
    operation: Option<String>,
    text: String,
}

/// A `Q` or a `Sync`-terminated extended batch, waiting for its `Z`.
#[derive(Debug, Default)]
struct Request {
    start_ns: u64,
    /// Not reported (e.g. a `Describe`+`Sync` batch): only paired.
    silent: bool,
    operation: Option<String>,
    statement: Option<String>,
    executes: usize,
    error: Option<(String, Option<String>)>,
    rows: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
}

pub struct PostgresSession {
    limits: Limits,
    privacy: Privacy,
    phase: Phase,
    client: Framer,
    server: Framer,
    /// Requests sent, in order.
    pending: Fifo<Request>,
    /// The extended-protocol batch being built, until its `Sync`.
    batch: Option<Request>,
    /// The last unnamed `Parse`.
    unnamed: Option<Statement>,
    /// Named statements (prepared), oldest first.
    named: VecDeque<(Vec<u8>, Statement)>,
    /// Portal name to statement name, from `Bind`.
    portals: VecDeque<(Vec<u8>, Vec<u8>)>,
    lost: Lost,
    /// The first `ReadyForQuery` (end of startup) was seen: later ones
    /// answer requests.
    ready: bool,
    /// The handshake after an accepted SSLRequest.
    tls: AfterGreeting,
}

impl PostgresSession {
    pub fn new(limits: Limits, privacy: &Privacy) -> Self {
        Self {
            limits,
            privacy: privacy.clone(),
            phase: Phase::Startup,
            client: Framer::default(),
            server: Framer::default(),
            pending: Fifo::new(limits.max_pending),
            batch: None,
            unnamed: None,
            named: VecDeque::new(),
            portals: VecDeque::new(),
            lost: Lost::default(),
            ready: false,
            tls: AfterGreeting::default(),
        }
    }

    /// Bytes held for partial messages (for the bounds checks).
    pub fn buffered(&self) -> usize {
        self.client.buffered() + self.server.buffered() + self.tls.buffered()
    }

    fn err(kind: ErrorKind) -> ParseError {
        ParseError {
            protocol: Protocol::Postgres,
            kind,
        }
    }

    fn client_layout(&self) -> ClientLayout {
        ClientLayout {
            phase: self.phase,
            keep_text: self.limits.max_message,
        }
    }

    fn on_client(&mut self, frame: Frame) -> Result<(), ErrorKind> {
        if self.phase == Phase::Startup {
            let code = frame.body.get(..4).map_or(0, be32);
            self.phase = match code {
                SSL_REQUEST | GSSENC_REQUEST => Phase::EncryptionAnswer,
                CANCEL_REQUEST => Phase::Done,
                _ if code >> 16 == 3 => Phase::Typed,
                _ => return Err(ErrorKind::Malformed("startup code")),
            };
            return Ok(());
        }
        let body = &frame.body;
        let cut = frame.cut || frame.body.len() < frame.body_len;
        let size = frame.wire_len();
        match frame.header()[0] {
            b'Q' => {
                let statement = self.statement(cstr(body).0, cut);
                self.pending.push(Request {
                    start_ns: frame.start_ns,
                    operation: statement.operation,
                    statement: Some(statement.text),
                    request_bytes: size,
                    ..Request::default()
                });
            }
            b'P' => {
                let (name, rest) = cstr(body);
                let statement = self.statement(cstr(rest).0, cut);
                let batch = self.batch(frame.start_ns);
                batch.request_bytes += size;
                if batch.statement.is_none() {
                    batch.operation = Some("PREPARE".into());
                    batch.statement = Some(statement.text.clone());
                }
                if name.is_empty() {
                    self.unnamed = Some(statement);
                } else {
                    remember(&mut self.named, name.to_vec(), statement);
                }
            }
            b'B' => {
                let (portal, rest) = cstr(body);
                let (statement, _) = cstr(rest);
                remember(&mut self.portals, portal.to_vec(), statement.to_vec());
                self.batch(frame.start_ns).request_bytes += size;
            }
            b'E' => {
                let (portal, _) = cstr(body);
                let stmt_name = lookup(&self.portals, portal).cloned().unwrap_or_default();
                let (operation, text) = if stmt_name.is_empty() {
                    let s = self.unnamed.clone();
                    (
                        s.as_ref().and_then(|s| s.operation.clone()),
                        s.map(|s| s.text),
                    )
                } else {
                    // A prepared statement is named by its own operation
                    // (as OpenTelemetry's `db.operation.name` is); only one
                    // prepared before weft saw the connection stays
                    // `EXECUTE`.
                    match lookup(&self.named, &stmt_name) {
                        Some(s) => (
                            Some(s.operation.clone().unwrap_or_else(|| "EXECUTE".into())),
                            Some(s.text.clone()),
                        ),
                        None => (Some("EXECUTE".to_owned()), None),
                    }
                };
                let batch = self.batch(frame.start_ns);
                batch.request_bytes += size;
                if batch.executes == 0 {
                    batch.operation = operation;
                    batch.statement = text;
                }
                batch.executes += 1;
            }
            b'C' => {
                // Close: forget a named statement.
                if body.first() == Some(&b'S') {
                    let (name, _) = cstr(&body[1..]);
                    self.named.retain(|(n, _)| n != name);
                }
                self.batch(frame.start_ns).request_bytes += size;
            }
            b'D' | b'H' => {
                self.batch(frame.start_ns).request_bytes += size;
            }
            b'S' => {
                let mut batch = self.batch.take().unwrap_or_else(|| Request {
                    start_ns: frame.start_ns,
                    ..Request::default()
                });
                batch.silent = batch.statement.is_none() && batch.executes == 0;
                batch.request_bytes += size;
                self.pending.push(batch);
            }
            // CopyData, CopyDone, CopyFail: COPY FROM STDIN's data is part
            // of the request that started the copy.
            b'd' | b'c' | b'f' => self.copy_data(size),
            // Terminate, password/SASL, COPY data, function calls: none of
            // them starts a request we report or expects a `Z` of its own
            // (a function call `F` does; it is counted so pairing holds).
            b'F' => self.pending.push(Request {
                start_ns: frame.start_ns,
                silent: true,
                ..Request::default()
            }),
            _ => {}
        }
        Ok(())
    }

    /// The request a copy belongs to: the batch being built, else the
    /// last one sent.
    fn copy_data(&mut self, size: u64) {
        let request = match &mut self.batch {
            Some(batch) => Some(batch),
            None => self.pending.back_mut(),
        };
        if let Some(request) = request {
            request.request_bytes += size;
        }
    }

    fn batch(&mut self, start_ns: u64) -> &mut Request {
        self.batch.get_or_insert_with(|| Request {
            start_ns,
            ..Request::default()
        })
    }

    fn statement(&self, raw: &[u8], cut: bool) -> Statement {
        let raw = String::from_utf8_lossy(raw);
        let max = self.limits.max_field;
        let mut text = if self.privacy.obfuscate_sql || sets_credentials(&raw, Dialect::Postgres) {
            obfuscate_sql(&raw, Dialect::Postgres, max)
        } else {
            bounded(raw.trim(), max)
        };
        if cut && !text.ends_with('…') {
            text.push('…');
        }
        Statement {
            operation: sql_operation(&raw),
            text,
        }
    }

    fn on_server(&mut self, frame: Frame, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        if self.phase == Phase::EncryptionAnswer {
            self.phase = match frame.header()[0] {
                b'N' => Phase::Startup,
                b'S' => {
                    self.tls.start();
                    Phase::Tls
                }
                b'G' => Phase::Done,
                _ => return Err(ErrorKind::Malformed("encryption answer")),
            };
            return Ok(());
        }
        if self.ready
            && let Some(request) = self.pending.front_mut()
        {
            request.response_bytes += frame.wire_len();
        }
        let body = &frame.body;
        match frame.header()[0] {
            b'Z' if !self.ready => self.ready = true,
            // Startup errors (e.g. authentication failed) answer no request.
            _ if !self.ready => {}
            b'Z' => {
                if let Some(Some(request)) = self.pending.pop()
                    && !request.silent
                {
                    let mut exchange = self.exchange(request);
                    exchange.answered = true;
                    exchange.response_ns = frame.end_ns.max(exchange.request_ns);
                    out.push(exchange);
                }
            }
            b'E' => {
                let (code, message) = error_fields(body);
                let show_message = !self.privacy.obfuscate_sql;
                let max = self.limits.max_field;
                if let Some(request) = self.pending.front_mut()
                    && request.error.is_none()
                {
                    let code = bounded(&code, 16);
                    let message = show_message.then(|| bounded(&message, max));
                    request.error = Some((code, message));
                }
            }
            b'C' => {
                let rows = cstr(body)
                    .0
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok());
                if let Some(request) = self.pending.front_mut()
                    && rows.is_some()
                {
                    request.rows = rows;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn exchange(&self, request: Request) -> Exchange {
        let mut e = Protocol::Postgres.exchange(request.start_ns);
        e.request_bytes = request.request_bytes;
        e.response_bytes = request.response_bytes;
        let operation = request.operation.unwrap_or_else(|| "UNKNOWN".into());
        e.fields
            .insert("operation".into(), Value::from(operation.clone()));
        if let Some(statement) = request.statement {
            e.fields.insert("statement".into(), Value::from(statement));
        }
        if request.executes > 1 {
            e.fields
                .insert("batch_size".into(), Value::from(request.executes));
        }
        if let Some(rows) = request.rows {
            e.fields.insert("rows".into(), Value::from(rows));
        }
        let error_type = request.error.map(|(code, message)| {
            e.fields
                .insert("error_code".into(), Value::from(code.clone()));
            if let Some(message) = message {
                e.fields
                    .insert("error_message".into(), Value::from(message));
            }
            code
        });
        e.metric = MetricAttributes::Db {
            system: "postgresql",
            operation,
            error_type,
        };
        e
    }

    fn feed_client(&mut self, chunk: &Chunk<'_>) -> Result<(), ErrorKind> {
        let mut input = chunk.data;
        while !input.is_empty() && self.parsing() {
            let layout = self.client_layout();
            if let Some(frame) = self.client.next(&mut input, chunk.ts_ns, &layout)? {
                self.on_client(frame)?;
            }
        }
        if chunk.truncated > 0 && self.parsing() {
            let (frame, lost) = self.client.hole(chunk.truncated, chunk.ts_ns);
            if let Some(frame) = frame {
                self.on_client(frame)?;
            }
            if lost {
                // The answers to what was sent come next, until the client
                // speaks again.
                self.lose(chunk.ts_ns)?;
            }
        }
        Ok(())
    }

    fn feed_server(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        let mut input = chunk.data;
        while !input.is_empty() && self.parsing() {
            let layout = ServerLayout {
                phase: self.phase,
                keep_at_most: self.limits.max_message,
            };
            if let Some(frame) = self.server.next(&mut input, chunk.ts_ns, &layout)? {
                self.on_server(frame, out)?;
            }
        }
        if self.phase == Phase::Tls {
            // What followed the `S` in the same read is the handshake's.
            self.tls.feed_rest(chunk, input, out);
            return Ok(());
        }
        if chunk.truncated > 0 && self.phase != Phase::Done {
            let (frame, lost) = self.server.hole(chunk.truncated, chunk.ts_ns);
            if let Some(frame) = frame {
                self.on_server(frame, out)?;
            }
            if lost {
                self.lose(chunk.ts_ns)?;
            }
        }
        Ok(())
    }

    /// Whether messages are still read (not past an encryption switch or
    /// a cancel request).
    fn parsing(&self) -> bool {
        !matches!(self.phase, Phase::Tls | Phase::Done)
    }
}

impl Resync for PostgresSession {
    /// The batch being built counts as pending: its `Sync` may be among
    /// the lost bytes.
    fn abandon(&mut self) -> Result<Vec<Exchange>, ErrorKind> {
        if self.phase != Phase::Typed {
            return Err(ErrorKind::Desync);
        }
        if let Some(mut batch) = self.batch.take() {
            batch.silent = batch.statement.is_none() && batch.executes == 0;
            self.pending.push(batch);
        }
        self.server.reset();
        let requests: Vec<Request> = self.pending.drain().filter(|r| !r.silent).collect();
        Ok(requests.into_iter().map(|r| self.exchange(r)).collect())
    }

    fn restart_client(&mut self) {
        self.client.reset();
    }

    fn lost(&mut self) -> &mut Lost {
        &mut self.lost
    }
}

impl Session for PostgresSession {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        if self.phase == Phase::Tls {
            self.tls.feed(chunk, out);
            return Ok(());
        }
        if self.phase == Phase::Done || !self.admit(chunk, out).map_err(Self::err)? {
            return Ok(());
        }
        match chunk.direction {
            Direction::ToServer => self.feed_client(chunk),
            Direction::ToClient => self.feed_server(chunk, out),
        }
        .map_err(Self::err)
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.tls.close(ts_ns, out);
        self.lost.finish(out);
        if let Some(batch) = self.batch.take() {
            self.pending.push(batch);
        }
        let requests: Vec<Request> = self.pending.drain().collect();
        for request in requests {
            if !request.silent && (request.statement.is_some() || request.executes > 0) {
                // Unanswered: a response cut by the close is no response.
                let mut exchange = self.exchange(request);
                exchange.response_bytes = 0;
                out.push(exchange);
            }
        }
    }
}

/// A NUL-terminated string and what follows it (all of it when the NUL is
/// missing, e.g. in a cut prefix).
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse body.
fn error_fields(mut body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let (value, rest) = cstr(rest);
        match kind {
            b'C' => code = bounded_lossy(value, 16),
            b'M' => message = bounded_lossy(value, 4096),
            _ => {}
        }
        body = rest;
    }
    (code, message)
}

/// Inserts into a bounded map kept in insertion order (oldest evicted).
fn remember<V>(map: &mut VecDeque<(Vec<u8>, V)>, key: Vec<u8>, value: V) {
    map.retain(|(k, _)| *k != key);
    if map.len() >= MAX_NAMED {
        map.pop_front();
    }
    map.push_back((key, value));
}

fn lookup<'a, V>(map: &'a VecDeque<(Vec<u8>, V)>, key: &[u8]) -> Option<&'a V> {
    map.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
