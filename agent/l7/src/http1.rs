//! HTTP/1.0 and HTTP/1.1 (RFC 9112): incremental parsing of both
//! directions, FIFO pairing of responses with (pipelined) requests.
//!
//! Heads are buffered up to `Limits::max_message`; bodies are counted
//! through by Content-Length, chunked framing or connection close and never
//! stored. A response to HEAD, a 1xx, 204 or 304 has no body (RFC 9112
//! §6.3); interim 1xx responses (100-continue) are not the final response.
//! After `101 Switching Protocols` or a successful CONNECT the connection
//! is no longer HTTP/1 and is ignored.
//!
//! Lost bytes inside a body of known length are absorbed. Elsewhere the
//! direction waits for a chunk that starts a new message, and pending
//! requests are dropped: after a loss FIFO pairing cannot be trusted, and
//! reporting a wrong pair is worse than reporting none.
//!
//! Fields: `method`, `path` (query values redacted), `route` (templated),
//! `status`, `host`.
//!
//! Sizes: a message's head (from its start line to the empty line ending
//! it) and its body as framed (chunk sizes, extensions and trailers
//! included), bytes the capture cut counted. Interim 1xx responses count
//! in the final response's size: they answer the same request. A response
//! that completes before its request's body was all sent stops that
//! request's count there.

mod body;
mod head;

use std::collections::VecDeque;

use body::{Body, Chunked};
use head::BodyKind;

use crate::detect::FirstBytes;
use crate::http_fields::{
    KNOWN_METHODS, MAX_TRACEPARENT, MAX_TRACESTATE, RequestInfo, trace_header,
};
use crate::{
    Chunk, Detection, Direction, ErrorKind, Exchange, Limits, ParseError, Privacy, Protocol,
    Session,
};

/// Longest request line `detect` waits for before saying no.
const DETECT_MAX_LINE: usize = 8192;

/// Is this the start of an HTTP/1 request (known method, ` HTTP/1.` before
/// the end of the line) or response (`HTTP/1.x NNN`)?
pub fn detect(first: &FirstBytes<'_>) -> Detection {
    match first.direction {
        Direction::ToServer => detect_request(first.data),
        Direction::ToClient => detect_response(first.data),
    }
}

fn detect_request(data: &[u8]) -> Detection {
    let Some(method) = starts_with_method(data) else {
        return if KNOWN_METHODS
            .iter()
            .any(|m| data.len() <= m.len() && m.as_bytes().starts_with(data))
        {
            Detection::NeedMore
        } else {
            Detection::No
        };
    };
    let rest = &data[method + 1..];
    let line_end = rest.iter().position(|&b| b == b'\n');
    let line = head_line(rest, line_end);
    // `target SP HTTP/1.x`: the target is visible ASCII.
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return need_more_if(
            line_end.is_none()
                && line.iter().all(u8::is_ascii_graphic)
                && data.len() < DETECT_MAX_LINE,
        );
    };
    if space == 0 || !line[..space].iter().all(u8::is_ascii_graphic) {
        return Detection::No;
    }
    let version = &line[space + 1..];
    let want: &[u8] = b"HTTP/1.";
    let n = version.len().min(want.len());
    if version[..n] != want[..n] {
        Detection::No
    } else if n == want.len() {
        Detection::Yes
    } else {
        need_more_if(line_end.is_none())
    }
}

/// The line up to `\n` (or all of `data`), without a trailing `\r`.
fn head_line(data: &[u8], end: Option<usize>) -> &[u8] {
    let line = &data[..end.unwrap_or(data.len())];
    match end {
        Some(_) => line.strip_suffix(b"\r").unwrap_or(line),
        None => line,
    }
}

fn need_more_if(more: bool) -> Detection {
    if more {
        Detection::NeedMore
    } else {
        Detection::No
    }
}

/// Length of the known method `data` starts with, followed by a space.
fn starts_with_method(data: &[u8]) -> Option<usize> {
    KNOWN_METHODS.iter().find_map(|m| {
        (data.len() > m.len() && data.starts_with(m.as_bytes()) && data[m.len()] == b' ')
            .then_some(m.len())
    })
}

fn detect_response(data: &[u8]) -> Detection {
    // "HTTP/1.x NNN" then SP or end of line.
    const SHAPE: &[u8] = b"HTTP/1.x NNN";
    for (i, &b) in data.iter().take(SHAPE.len()).enumerate() {
        let ok = match SHAPE[i] {
            b'x' | b'N' => b.is_ascii_digit(),
            c => b == c,
        };
        if !ok {
            return Detection::No;
        }
    }
    match data.get(SHAPE.len()) {
        None => Detection::NeedMore,
        Some(b' ' | b'\r' | b'\n') => Detection::Yes,
        Some(_) => Detection::No,
    }
}

/// Whether a chunk may start a message in `direction` (at the start of a
/// session, which may have joined the connection mid-message, and after
/// lost bytes). A chunk too short to tell counts as a start.
fn starts_message(direction: Direction, data: &[u8]) -> bool {
    match direction {
        Direction::ToServer => detect_request(data) != Detection::No,
        Direction::ToClient => detect_response(data) != Detection::No,
    }
}

/// One direction's position in its stream of messages.
#[derive(Debug)]
enum Stage {
    /// Reading a head (possibly before its first byte).
    Head,
    Body(Body),
    /// Bytes were lost: skip until a chunk starts a message.
    Resync,
    /// The connection switched protocols: ignore everything.
    Tunnel,
}

#[derive(Debug)]
struct Reader {
    stage: Stage,
    /// The head being read (bounded by `max_message`).
    head: Vec<u8>,
    /// Length of the head's current line, without CR.
    line_len: usize,
    /// Timestamp of the chunk holding the current message's first byte.
    start_ns: u64,
    /// Wire bytes of the current message so far (for responses, of the
    /// interim responses before it too).
    bytes: u64,
}

impl Reader {
    fn new() -> Self {
        Reader {
            // The first chunk must start a message: a session may be
            // created for a connection joined in the middle of a body.
            stage: Stage::Resync,
            head: Vec::new(),
            line_len: 0,
            start_ns: 0,
            bytes: 0,
        }
    }

    /// Appends head bytes from `data`; returns how many were used and
    /// whether the head is complete (it ends with an empty line).
    fn read_head(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        max: usize,
    ) -> Result<(usize, bool), ErrorKind> {
        let mut used = 0;
        while used < data.len() {
            if self.head.is_empty() {
                // RFC 9112 §2.2: ignore empty lines before a message.
                let skip = data[used..]
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                used += skip;
                if used == data.len() {
                    break;
                }
                self.start_ns = ts_ns;
                self.line_len = 0;
            }
            let rest = &data[used..];
            let (take, nl) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (rest.len(), false),
            };
            if self.head.len() + take > max {
                return Err(ErrorKind::TooLarge(max));
            }
            self.head.extend_from_slice(&rest[..take]);
            self.bytes += take as u64;
            used += take;
            let line = &rest[..take - usize::from(nl)];
            self.line_len += line.iter().filter(|&&b| b != b'\r').count();
            if nl {
                if self.line_len == 0 {
                    return Ok((used, true));
                }
                self.line_len = 0;
            }
        }
        Ok((used, false))
    }

    fn lose(&mut self) {
        self.stage = Stage::Resync;
        self.head.clear();
        self.bytes = 0;
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    info: RequestInfo,
    request_ns: u64,
    head: bool,
    connect: bool,
    /// Tells the request whose body is being read among the others.
    seq: u64,
    /// Wire bytes of the request so far.
    bytes: u64,
}

impl Pending {
    /// The exchange; `response` is the status, the timestamp of the last
    /// byte and the size of the response, when one was seen.
    fn exchange(&self, response: Option<(u16, u64, u64)>) -> Exchange {
        let timing = response.map(|(status, ns, _)| (Some(status), ns));
        let mut exchange = self.info.exchange(Protocol::Http1, self.request_ns, timing);
        exchange.request_bytes = self.bytes;
        exchange.response_bytes = response.map_or(0, |(_, _, bytes)| bytes);
        exchange
    }
}

/// The final response being read: its request and status.
#[derive(Debug)]
struct Current {
    request: Pending,
    status: u16,
    last_ns: u64,
}

pub struct Http1Session {
    limits: Limits,
    privacy: Privacy,
    requests: Reader,
    responses: Reader,
    pending: VecDeque<Pending>,
    /// The response being read, paired with its request (`None` for a
    /// response nobody is waiting for: it is read through and dropped).
    current: Option<Current>,
    /// The `seq` of the next request.
    next_seq: u64,
    /// The request whose body is being read.
    sending: Option<u64>,
}

impl Http1Session {
    pub fn new(limits: Limits, privacy: &Privacy) -> Self {
        Http1Session {
            limits,
            privacy: privacy.clone(),
            requests: Reader::new(),
            responses: Reader::new(),
            pending: VecDeque::new(),
            current: None,
            next_seq: 0,
            sending: None,
        }
    }

    /// Bytes held by the session (heads being read): never above
    /// `max_message` per direction.
    pub fn buffered(&self) -> usize {
        self.requests.head.len() + self.responses.head.len()
    }

    /// Requests waiting for a response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn error(kind: ErrorKind) -> ParseError {
        ParseError {
            protocol: Protocol::Http1,
            kind,
        }
    }

    fn reader(&mut self, direction: Direction) -> &mut Reader {
        match direction {
            Direction::ToServer => &mut self.requests,
            Direction::ToClient => &mut self.responses,
        }
    }

    /// `n` bytes of `direction` were not captured.
    fn lose(&mut self, direction: Direction, n: usize, ts_ns: u64, out: &mut Vec<Exchange>) {
        let reader = self.reader(direction);
        let absorbed = match &mut reader.stage {
            Stage::Body(body) => body.absorb(n),
            Stage::Tunnel => Some(false),
            Stage::Head | Stage::Resync => None,
        };
        if absorbed.is_some() {
            reader.bytes += n as u64;
        }
        match absorbed {
            Some(true) => {
                reader.stage = Stage::Head;
                self.message_done(direction, ts_ns, out);
            }
            Some(false) => {}
            None => {
                reader.lose();
                self.pending.clear();
                self.sending = None;
                if direction == Direction::ToClient {
                    self.current = None;
                }
            }
        }
    }

    fn consume(
        &mut self,
        direction: Direction,
        mut data: &[u8],
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), ErrorKind> {
        let max = self.limits.max_message;
        if let Some(current) = &mut self.current
            && direction == Direction::ToClient
            && !data.is_empty()
        {
            current.last_ns = ts_ns;
        }
        while !data.is_empty() {
            let reader = self.reader(direction);
            match &mut reader.stage {
                Stage::Tunnel => return Ok(()),
                Stage::Resync => {
                    if !starts_message(direction, data) {
                        return Ok(());
                    }
                    reader.stage = Stage::Head;
                    reader.bytes = 0;
                }
                Stage::Body(body) => {
                    let (used, done) = body.consume(data, max)?;
                    data = &data[used..];
                    reader.bytes += used as u64;
                    if done {
                        reader.stage = Stage::Head;
                        self.message_done(direction, ts_ns, out);
                    }
                }
                Stage::Head => {
                    let (used, done) = reader.read_head(data, ts_ns, max)?;
                    data = &data[used..];
                    if done {
                        let head = std::mem::take(&mut reader.head);
                        let start_ns = reader.start_ns;
                        match direction {
                            Direction::ToServer => self.on_request(&head, start_ns)?,
                            Direction::ToClient => self.on_response(&head, start_ns, ts_ns, out)?,
                        }
                        // Keep the allocation for the next head.
                        let reader = self.reader(direction);
                        reader.head = head;
                        reader.head.clear();
                    }
                }
            }
        }
        Ok(())
    }

    fn on_request(&mut self, head: &[u8], start_ns: u64) -> Result<(), ErrorKind> {
        let req = head::parse_request(head).map_err(ErrorKind::Malformed)?;
        if self.pending.len() >= self.limits.max_pending {
            return Err(ErrorKind::TooLarge(self.limits.max_pending));
        }
        let mut info = RequestInfo::new(
            req.method,
            req.target,
            req.host,
            "http",
            &self.limits,
            &self.privacy,
        );
        // Kept only for traces (never in records).
        info.traceparent = trace_header(req.traceparent.map(str::as_bytes), MAX_TRACEPARENT);
        info.tracestate = trace_header(req.tracestate.map(str::as_bytes), MAX_TRACESTATE);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            info,
            request_ns: start_ns,
            head: req.method == "HEAD",
            connect: req.method == "CONNECT",
            seq,
            bytes: std::mem::take(&mut self.requests.bytes),
        });
        self.requests.stage = match req.body {
            BodyKind::None => Stage::Head,
            BodyKind::Length(n) => Stage::Body(Body::Length(n)),
            BodyKind::Chunked => Stage::Body(Body::Chunked(Chunked::START)),
            // parse_request never frames a request by close.
            BodyKind::UntilClose => Stage::Head,
        };
        if matches!(self.requests.stage, Stage::Body(_)) {
            self.sending = Some(seq);
        }
        Ok(())
    }

    /// A message body ended (its bytes were counted).
    fn message_done(&mut self, direction: Direction, ts_ns: u64, out: &mut Vec<Exchange>) {
        match direction {
            Direction::ToServer => {
                self.count_request_body();
                self.sending = None;
            }
            Direction::ToClient => self.finish_response(ts_ns, out),
        }
    }

    /// Adds the body bytes read since the last count to the request being
    /// sent, wherever it is now (waiting, or being answered). Without a
    /// body being read, the reader's bytes are a head's: left alone.
    fn count_request_body(&mut self) {
        let Some(seq) = self.sending else { return };
        let bytes = std::mem::take(&mut self.requests.bytes);
        let current = self.current.as_mut().map(|c| &mut c.request);
        let request = self
            .pending
            .iter_mut()
            .rev()
            .chain(current)
            .find(|p| p.seq == seq);
        if let Some(request) = request {
            request.bytes += bytes;
        }
    }

    fn on_response(
        &mut self,
        head: &[u8],
        _start_ns: u64,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), ErrorKind> {
        let resp = head::parse_response(head).map_err(ErrorKind::Malformed)?;
        let status = resp.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim response (RFC 9110 §15.2): the final one follows.
            return Ok(());
        }
        let request = self.pending.pop_front();
        let (is_head, is_connect) = request
            .as_ref()
            .map_or((false, false), |r| (r.head, r.connect));
        let tunnel = status == 101 || (is_connect && (200..300).contains(&status));
        // RFC 9112 §6.3 rules 1–2.
        let framing = if is_head || status == 204 || status == 304 || tunnel {
            BodyKind::None
        } else {
            resp.framing
        };
        self.current = request.map(|request| Current {
            request,
            status,
            last_ns: ts_ns,
        });
        let orphan = self.current.is_none();
        self.responses.stage = match framing {
            BodyKind::None => {
                self.finish_response(ts_ns, out);
                Stage::Head
            }
            // A response to a request never seen (a session that joined
            // mid-connection): its framing may depend on that request (HEAD),
            // so look for the next response start instead of trusting it.
            _ if orphan && !tunnel => Stage::Resync,
            BodyKind::Length(n) => Stage::Body(Body::Length(n)),
            BodyKind::Chunked => Stage::Body(Body::Chunked(Chunked::START)),
            BodyKind::UntilClose => Stage::Body(Body::UntilClose),
        };
        if tunnel {
            self.requests.stage = Stage::Tunnel;
            self.responses.stage = Stage::Tunnel;
            self.pending.clear();
            self.sending = None;
        }
        Ok(())
    }

    /// The response's last byte was in the chunk at `ts_ns`.
    fn finish_response(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let bytes = std::mem::take(&mut self.responses.bytes);
        self.answer(ts_ns, bytes, out);
    }

    /// Reports the current exchange, answered by `bytes` of response.
    fn answer(&mut self, ts_ns: u64, bytes: u64, out: &mut Vec<Exchange>) {
        // A request still being sent counts what was sent so far.
        self.count_request_body();
        if let Some(c) = self.current.take() {
            out.push(c.request.exchange(Some((c.status, ts_ns, bytes))));
        }
    }
}

impl Session for Http1Session {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        if chunk.gap_before > 0 {
            self.lose(chunk.direction, chunk.gap_before, chunk.ts_ns, out);
        }
        self.consume(chunk.direction, chunk.data, chunk.ts_ns, out)
            .map_err(Self::error)?;
        if chunk.truncated > 0 {
            self.lose(chunk.direction, chunk.truncated, chunk.ts_ns, out);
        }
        Ok(())
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        // A response framed by close (or cut short) ends with its last
        // captured byte.
        let last_ns = self.current.as_ref().map_or(0, |c| c.last_ns);
        let bytes = std::mem::take(&mut self.responses.bytes);
        self.answer(last_ns, bytes, out);
        self.count_request_body();
        for p in self.pending.drain(..) {
            out.push(p.exchange(None));
        }
    }

    fn in_flight(&self) -> Option<Exchange> {
        Some(self.pending.front()?.exchange(None))
    }

    fn awaits_answer(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
