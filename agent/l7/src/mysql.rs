//! MySQL and MariaDB client/server protocol
//! (<https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html>,
//! <https://mariadb.com/kb/en/clientserver-protocol/>).
//!
//! Packets are a 3-byte little-endian length, a sequence id and a payload
//! (a 0xffffff length means the payload continues in the next packet). The
//! server speaks first (the greeting); the client's handshake response says
//! whether TLS follows (an SSL request: from there the socket's bytes go to
//! the handshake parser, [`AfterGreeting`], which reports the handshake's
//! metadata like any other TLS connection's; the commands, when the library
//! is hooked, come as plaintext on a stream of their own, which starts at
//! the client's full handshake response); authentication is skipped up to
//! the server's OK. After that, each command (sequence id 0)
//! is answered in order:
//!
//! - `COM_QUERY` and `COM_STMT_EXECUTE`: OK, ERR, or a result set (column
//!   count, column definitions, rows; EOF packets unless both sides set
//!   `CLIENT_DEPRECATE_EOF`), repeated while the server flags more results;
//! - `COM_STMT_PREPARE`: ERR, or OK with the statement id, followed by
//!   parameter and column definitions; the statement is remembered by id
//!   (bounded) so executions report it and its operation (`SELECT`;
//!   `EXECUTE` when its prepare was not seen);
//! - `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT`: no answer;
//! - anything else: one packet.
//!
//! Sizes (4-byte packet headers included): the request is its command
//! packet, the packets continuing it, and the packets the client sends for
//! it after a server request (LOCAL INFILE contents); the response is
//! every server packet up to and including the one that ends it (the
//! final OK, EOF or ERR).

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

const MAX_PAYLOAD: usize = 0xff_ffff;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// Prepared statements remembered per connection.
const MAX_STATEMENTS: usize = 256;
/// Enough of a server packet for OK/ERR/EOF headers and an error message.
const SERVER_KEEP: usize = 512;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

/// Is this a MySQL/MariaDB server greeting (protocol version 10)?
pub(crate) fn detect(first: &FirstBytes<'_>) -> Detection {
    if first.direction != Direction::ToClient {
        return detect_response_after_ssl(first.data);
    }
    let d = first.data;
    /// Bytes needed, and the check once they are there.
    type Check = (usize, fn(&[u8]) -> bool);
    let checks: [Check; 3] = [
        // Greetings are small: the length's high byte is 0.
        (3, |d| d[2] == 0 && (20..1024).contains(&le(&d[..3]))),
        (4, |d| d[3] == 0),
        (5, |d| d[4] == 10),
    ];
    for (need, ok) in checks {
        if d.len() < need {
            return Detection::NeedMore;
        }
        if !ok(d) {
            return Detection::No;
        }
    }
    // Server version: printable up to its NUL.
    let version = &d[5..d.len().min(5 + 64)];
    match version.iter().position(|&b| b == 0) {
        Some(0) => Detection::No,
        Some(n) if version[..n].iter().all(|b| b.is_ascii_graphic()) => Detection::Yes,
        None if version.len() < 64 && version.iter().all(|b| b.is_ascii_graphic()) => {
            Detection::NeedMore
        }
        _ => Detection::No,
    }
}

/// A stream that starts with the client's handshake response (sequence
/// 2, `CLIENT_PROTOCOL_41` and `CLIENT_SSL` set, 23 bytes of filler whose
/// first 19 are zero: MariaDB keeps its extended capabilities in the last
/// four): the TLS plaintext of a connection whose greeting and SSL request
/// went in the clear, on the socket's own stream.
fn detect_response_after_ssl(d: &[u8]) -> Detection {
    const FILLER: std::ops::Range<usize> = 4 + 9..4 + 28;
    if d.len() < FILLER.end {
        return if d.len() < 4 || (d[3] == 2 && d[2] == 0) {
            Detection::NeedMore
        } else {
            Detection::No
        };
    }
    let len = le(&d[..3]);
    let caps = le(&d[4..8]) as u32;
    let ok = d[3] == 2
        && (32..4096).contains(&len)
        && caps & (CLIENT_PROTOCOL_41 | CLIENT_SSL) == CLIENT_PROTOCOL_41 | CLIENT_SSL
        && d[FILLER].iter().all(|&b| b == 0);
    if ok { Detection::Yes } else { Detection::No }
}

fn le(b: &[u8]) -> usize {
    b.iter().rev().fold(0, |n, &x| (n << 8) | usize::from(x))
}

/// A length-encoded integer and the rest.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let v = rest.get(..n)?;
    Some((le(v) as u64, &rest[n..]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    HandshakeResponse,
    /// Authentication exchange: skipped up to the server's OK.
    Auth,
    Command,
    /// The client asked for TLS: the handshake follows, read by
    /// [`MysqlSession::tls`].
    Tls,
    /// The server refused the connection.
    Done,
}

struct PacketLayout {
    keep: usize,
}

impl Layout for PacketLayout {
    fn header_len(&self) -> usize {
        4
    }

    fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind> {
        Ok((le(&header[..3]), self.keep))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// OK, ERR or a result set.
    Result,
    /// Column definitions still to come (then EOF unless deprecated).
    Columns(u64),
    ColumnsEof,
    Rows,
    /// A prepare's OK, then this many definition packets.
    PrepareOk,
    Definitions(u64),
    /// Packets up to an EOF or ERR (`COM_FIELD_LIST`, `COM_STMT_FETCH`).
    UntilEof,
    /// One packet.
    Single,
}

#[derive(Debug)]
struct Request {
    start_ns: u64,
    /// Reported in records (queries, prepares and executions).
    report: bool,
    operation: String,
    statement: Option<String>,
    /// For a prepare: the statement to remember under the returned id.
    prepared: Option<String>,
    stmt_id: Option<u32>,
    expect: Expect,
    rows: u64,
    affected: Option<u64>,
    error: Option<(u16, String, String)>,
    request_bytes: u64,
    response_bytes: u64,
}

pub struct MysqlSession {
    limits: Limits,
    privacy: Privacy,
    phase: Phase,
    client: Framer,
    server: Framer,
    /// The last packet of each direction had the maximum length: the next
    /// one continues its payload.
    continued: [bool; 2],
    server_caps: u32,
    deprecate_eof: bool,
    pending: Fifo<Request>,
    /// The last command the client sent is the newest pending request:
    /// the client's next packets that start no command are its bytes.
    sending: bool,
    statements: VecDeque<(u32, String)>,
    lost: Lost,
    /// The handshake after the client's SSL request.
    tls: AfterGreeting,
}

impl MysqlSession {
    pub fn new(limits: Limits, privacy: &Privacy) -> Self {
        Self {
            limits,
            privacy: privacy.clone(),
            phase: Phase::Greeting,
            client: Framer::default(),
            server: Framer::default(),
            continued: [false; 2],
            server_caps: 0,
            deprecate_eof: false,
            pending: Fifo::new(limits.max_pending),
            sending: false,
            statements: VecDeque::new(),
            lost: Lost::default(),
            tls: AfterGreeting::default(),
        }
    }

    /// Bytes held for partial packets (for the bounds checks).
    pub fn buffered(&self) -> usize {
        self.client.buffered() + self.server.buffered() + self.tls.buffered()
    }

    fn err(kind: ErrorKind) -> ParseError {
        ParseError {
            protocol: Protocol::Mysql,
            kind,
        }
    }

    fn statement(&self, raw: &[u8], cut: bool) -> (String, String) {
        let raw = String::from_utf8_lossy(raw);
        let max = self.limits.max_field;
        let mut text = if self.privacy.obfuscate_sql || sets_credentials(&raw, Dialect::Mysql) {
            obfuscate_sql(&raw, Dialect::Mysql, max)
        } else {
            bounded(raw.trim(), max)
        };
        if cut && !text.ends_with('…') {
            text.push('…');
        }
        let operation = sql_operation(&raw).unwrap_or_else(|| "UNKNOWN".into());
        (operation, text)
    }

    /// Client bytes that belong to the request being sent, if any.
    fn extend_request(&mut self, size: u64) {
        if self.sending
            && let Some(request) = self.pending.back_mut()
        {
            request.request_bytes += size;
        }
    }

    fn on_client(&mut self, frame: Frame) -> Result<(), ErrorKind> {
        let size = frame.wire_len();
        if std::mem::replace(&mut self.continued[0], frame.body_len == MAX_PAYLOAD) {
            self.extend_request(size);
            return Ok(());
        }
        let body = &frame.body;
        match self.phase {
            // The TLS plaintext of a connection that switched after its
            // greeting: the client's full handshake response comes first.
            // The greeting's capabilities are not in this stream; the
            // client only sets those the server offered.
            Phase::Greeting if frame.header()[3] == 2 && body.len() >= 4 => {
                let caps = le(&body[..4]) as u32;
                self.server_caps = caps;
                self.deprecate_eof = caps & CLIENT_DEPRECATE_EOF != 0;
                self.phase = Phase::Auth;
                return Ok(());
            }
            Phase::HandshakeResponse => {
                let caps = if body.len() >= 4 && self.server_caps & CLIENT_PROTOCOL_41 != 0 {
                    le(&body[..4]) as u32
                } else {
                    body.get(..2).map_or(0, le) as u32
                };
                self.deprecate_eof = caps & self.server_caps & CLIENT_DEPRECATE_EOF != 0;
                self.phase = if caps & CLIENT_SSL != 0 {
                    self.tls.start();
                    Phase::Tls
                } else {
                    Phase::Auth
                };
                return Ok(());
            }
            Phase::Command => {}
            _ => return Ok(()),
        }
        // Only sequence 0 starts a command (later ones carry LOAD DATA
        // LOCAL contents and the like).
        if frame.header()[3] != 0 {
            self.extend_request(size);
            return Ok(());
        }
        self.sending = false;
        let Some((&command, args)) = body.split_first() else {
            return Err(ErrorKind::Malformed("empty command"));
        };
        let cut = frame.cut || body.len() < frame.body_len;
        let mut request = Request {
            start_ns: frame.start_ns,
            report: false,
            operation: String::new(),
            statement: None,
            prepared: None,
            stmt_id: None,
            expect: Expect::Single,
            rows: 0,
            affected: None,
            error: None,
            request_bytes: size,
            response_bytes: 0,
        };
        match command {
            COM_QUERY => {
                let (operation, text) = self.statement(args, cut);
                request.report = true;
                request.operation = operation;
                request.statement = Some(text);
                request.expect = Expect::Result;
            }
            COM_STMT_PREPARE => {
                let (_, text) = self.statement(args, cut);
                request.report = true;
                request.operation = "PREPARE".into();
                request.statement = Some(text.clone());
                request.prepared = Some(text);
                request.expect = Expect::PrepareOk;
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                let id = args.get(..4).map(|b| le(b) as u32);
                request.report = true;
                let found = id.and_then(|id| self.statements.iter().rev().find(|(i, _)| *i == id));
                // Named by the prepared statement's operation (as
                // OpenTelemetry's `db.operation.name` is); `EXECUTE` only
                // for one prepared before weft saw the connection.
                request.operation = found
                    .and_then(|(_, s)| sql_operation(s))
                    .unwrap_or_else(|| "EXECUTE".into());
                request.statement = found.map(|(_, s)| s.clone());
                request.expect = Expect::Result;
            }
            COM_STMT_CLOSE => {
                if let Some(id) = args.get(..4).map(|b| le(b) as u32) {
                    self.statements.retain(|(i, _)| *i != id);
                }
                return Ok(());
            }
            COM_STMT_SEND_LONG_DATA | COM_QUIT => return Ok(()),
            COM_FIELD_LIST | COM_STMT_FETCH => request.expect = Expect::UntilEof,
            COM_CHANGE_USER => {
                // A new authentication exchange; nothing to pair.
                self.phase = Phase::Auth;
                return Ok(());
            }
            _ => {}
        }
        self.pending.push(request);
        self.sending = true;
        Ok(())
    }

    fn on_server(&mut self, frame: Frame, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        if std::mem::replace(&mut self.continued[1], frame.body_len == MAX_PAYLOAD) {
            if self.phase == Phase::Command
                && let Some(request) = self.pending.front_mut()
            {
                request.response_bytes += frame.wire_len();
            }
            return Ok(());
        }
        let body = &frame.body;
        match self.phase {
            Phase::Greeting => {
                self.phase = match body.first() {
                    Some(10) => {
                        self.server_caps = greeting_caps(body);
                        Phase::HandshakeResponse
                    }
                    // An ERR greeting (e.g. host blocked): the server closes.
                    _ => Phase::Done,
                };
                return Ok(());
            }
            Phase::Auth => {
                match body.first() {
                    Some(0x00) => self.phase = Phase::Command,
                    Some(0xff) => self.phase = Phase::Done,
                    _ => {}
                }
                return Ok(());
            }
            Phase::Command => {}
            _ => return Ok(()),
        }
        let deprecate_eof = self.deprecate_eof;
        let Some(request) = self.pending.front_mut() else {
            return Ok(());
        };
        request.response_bytes += frame.wire_len();
        let first = body.first().copied().unwrap_or(0);
        // EOF packets are short; with CLIENT_DEPRECATE_EOF an OK packet
        // with the 0xfe header ends a result set.
        let is_eof = first == 0xfe
            && (frame.body_len < 9 || (deprecate_eof && frame.body_len < MAX_PAYLOAD));
        let done = match request.expect {
            Expect::Single => true,
            _ if first == 0xff => {
                request.error = Some(error_packet(body));
                true
            }
            Expect::Result | Expect::PrepareOk if first == 0x00 => {
                if request.expect == Expect::PrepareOk {
                    on_prepare_ok(request, body, deprecate_eof)
                } else {
                    let (affected, status) = ok_packet(body);
                    request.affected = Some(affected);
                    more_results(request, status)
                }
            }
            // LOCAL INFILE: the client sends the file; OK/ERR follows.
            Expect::Result if first == 0xfb => false,
            Expect::Result => match lenenc(body) {
                Some((n, _)) if n > 0 => {
                    request.expect = Expect::Columns(n);
                    false
                }
                _ => return Err(ErrorKind::Malformed("column count")),
            },
            Expect::PrepareOk => return Err(ErrorKind::Malformed("prepare response")),
            Expect::Columns(n) => {
                request.expect = match (n, deprecate_eof) {
                    (1, true) => Expect::Rows,
                    (1, false) => Expect::ColumnsEof,
                    _ => Expect::Columns(n - 1),
                };
                false
            }
            Expect::ColumnsEof => {
                request.expect = Expect::Rows;
                false
            }
            Expect::Rows if is_eof => {
                let status = eof_status(body, deprecate_eof);
                more_results(request, status)
            }
            Expect::Rows => {
                request.rows += 1;
                false
            }
            Expect::Definitions(n) => {
                request.expect = Expect::Definitions(n - 1);
                n <= 1
            }
            Expect::UntilEof => is_eof,
        };
        if done && let Some(Some(request)) = self.pending.pop() {
            if let Some((id, statement)) = request.stmt_id.zip(request.prepared.as_ref()) {
                self.statements.retain(|(i, _)| *i != id);
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.pop_front();
                }
                self.statements.push_back((id, statement.clone()));
            }
            if request.report {
                let mut exchange = self.exchange(request);
                exchange.answered = true;
                exchange.response_ns = frame.end_ns.max(exchange.request_ns);
                out.push(exchange);
            }
        }
        Ok(())
    }

    fn exchange(&self, request: Request) -> Exchange {
        let mut e = Protocol::Mysql.exchange(request.start_ns);
        e.request_bytes = request.request_bytes;
        e.response_bytes = request.response_bytes;
        e.fields
            .insert("operation".into(), Value::from(request.operation.clone()));
        if let Some(statement) = request.statement {
            e.fields.insert("statement".into(), Value::from(statement));
        }
        if matches!(request.expect, Expect::Rows) {
            e.fields.insert("rows".into(), Value::from(request.rows));
        } else if let Some(affected) = request.affected {
            e.fields.insert("rows".into(), Value::from(affected));
        }
        let error_type = request.error.map(|(code, state, message)| {
            e.fields
                .insert("error_code".into(), Value::from(code.to_string()));
            if !state.is_empty() {
                e.fields.insert("sqlstate".into(), Value::from(state));
            }
            if !self.privacy.obfuscate_sql {
                let message = bounded(&message, self.limits.max_field);
                e.fields
                    .insert("error_message".into(), Value::from(message));
            }
            code.to_string()
        });
        e.metric = MetricAttributes::Db {
            system: "mysql",
            operation: request.operation,
            error_type,
        };
        e
    }

    fn feed_dir(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        let client = chunk.direction == Direction::ToServer;
        let mut input = chunk.data;
        while !input.is_empty() && self.parsing() {
            let frame = if client {
                let keep = match self.phase {
                    Phase::Command => self.limits.max_message,
                    _ => 64,
                };
                self.client
                    .next(&mut input, chunk.ts_ns, &PacketLayout { keep })?
            } else {
                let keep = SERVER_KEEP;
                self.server
                    .next(&mut input, chunk.ts_ns, &PacketLayout { keep })?
            };
            match frame {
                Some(frame) if client => self.on_client(frame)?,
                Some(frame) => self.on_server(frame, out)?,
                None => {}
            }
        }
        if self.phase == Phase::Tls {
            // What followed the SSL request in the same write is the
            // handshake's.
            self.tls.feed_rest(chunk, input, out);
            return Ok(());
        }
        if chunk.truncated > 0 && self.phase != Phase::Done {
            let framer = if client {
                &mut self.client
            } else {
                &mut self.server
            };
            let (frame, lost) = framer.hole(chunk.truncated, chunk.ts_ns);
            match frame {
                Some(frame) if client => self.on_client(frame)?,
                Some(frame) => self.on_server(frame, out)?,
                None => {}
            }
            if lost {
                self.lose(chunk.ts_ns)?;
            }
        }
        Ok(())
    }

    /// Whether packets are still read (not past a switch to TLS or a
    /// refusal).
    fn parsing(&self) -> bool {
        !matches!(self.phase, Phase::Tls | Phase::Done)
    }
}

impl Resync for MysqlSession {
    /// Continued payloads are forgotten too: the next packets start new
    /// ones.
    fn abandon(&mut self) -> Result<Vec<Exchange>, ErrorKind> {
        if self.phase != Phase::Command {
            return Err(ErrorKind::Desync);
        }
        self.server.reset();
        self.continued = [false; 2];
        let requests: Vec<Request> = self.pending.drain().filter(|r| r.report).collect();
        Ok(requests.into_iter().map(|r| self.exchange(r)).collect())
    }

    fn restart_client(&mut self) {
        self.client.reset();
        self.sending = false;
    }

    fn lost(&mut self) -> &mut Lost {
        &mut self.lost
    }
}

impl Session for MysqlSession {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        if self.phase == Phase::Tls {
            self.tls.feed(chunk, out);
            return Ok(());
        }
        if self.phase == Phase::Done || !self.admit(chunk, out).map_err(Self::err)? {
            return Ok(());
        }
        self.feed_dir(chunk, out).map_err(Self::err)
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.tls.close(ts_ns, out);
        self.lost.finish(out);
        let requests: Vec<Request> = self.pending.drain().filter(|r| r.report).collect();
        for request in requests {
            // Unanswered: a response cut by the close is no response.
            let mut exchange = self.exchange(request);
            exchange.response_bytes = 0;
            out.push(exchange);
        }
    }
}

/// Capability flags of a v10 greeting (lower and upper halves).
fn greeting_caps(body: &[u8]) -> u32 {
    let Some(nul) = body[1..].iter().position(|&b| b == 0) else {
        return 0;
    };
    // version NUL, thread id (4), auth data (8), filler (1), caps low (2),
    // charset (1), status (2), caps high (2).
    let at = 1 + nul + 1 + 4 + 8 + 1;
    let low = body.get(at..at + 2).map_or(0, le);
    let high = body.get(at + 5..at + 7).map_or(0, le);
    (low | (high << 16)) as u32
}

/// Affected rows and status flags of an OK packet.
fn ok_packet(body: &[u8]) -> (u64, u16) {
    let rest = body.get(1..).unwrap_or_default();
    let Some((affected, rest)) = lenenc(rest) else {
        return (0, 0);
    };
    let status = lenenc(rest)
        .and_then(|(_, r)| r.get(..2))
        .map_or(0, |s| le(s) as u16);
    (affected, status)
}

fn eof_status(body: &[u8], deprecate_eof: bool) -> u16 {
    if deprecate_eof && body.len() > 5 {
        return ok_packet(body).1;
    }
    // 0xfe, warnings (2), status (2).
    body.get(3..5).map_or(0, |s| le(s) as u16)
}

/// Whether the response is complete; otherwise another result follows.
fn more_results(request: &mut Request, status: u16) -> bool {
    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
        request.expect = Expect::Result;
        return false;
    }
    true
}

/// Reads a prepare's OK; true if no definitions follow.
fn on_prepare_ok(request: &mut Request, body: &[u8], deprecate_eof: bool) -> bool {
    // 0x00, statement id (4), columns (2), params (2), filler, warnings.
    request.stmt_id = body.get(1..5).map(|b| le(b) as u32);
    let columns = body.get(5..7).map_or(0, le) as u64;
    let params = body.get(7..9).map_or(0, le) as u64;
    let eofs = if deprecate_eof {
        0
    } else {
        u64::from(columns > 0) + u64::from(params > 0)
    };
    let n = columns + params + eofs;
    request.expect = Expect::Definitions(n);
    n == 0
}

/// Error number, SQLSTATE (4.1 protocol) and message of an ERR packet.
fn error_packet(body: &[u8]) -> (u16, String, String) {
    let code = body.get(1..3).map_or(0, le) as u16;
    let rest = body.get(3..).unwrap_or_default();
    let (state, message) = match rest.split_first() {
        Some((b'#', r)) if r.len() >= 5 => (bounded_lossy(&r[..5], 5), &r[5..]),
        _ => (String::new(), rest),
    };
    (code, state, bounded_lossy(message, 4096))
}

#[cfg(test)]
#[path = "mysql_tests.rs"]
mod tests;
