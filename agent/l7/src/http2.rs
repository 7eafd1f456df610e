//! HTTP/2 (RFC 9113) and gRPC on top: frames of both directions, header
//! blocks decoded with HPACK, requests and responses paired per stream.
//!
//! An exchange starts with the chunk holding the first byte of the
//! request's HEADERS frame and ends with the chunk holding the last byte of
//! the frame that ends the response stream (END_STREAM on DATA or on
//! trailers), or with RST_STREAM. Requests whose `content-type` starts with
//! `application/grpc` are reported as gRPC calls (see [`crate::grpc`]).
//!
//! Connections seen from their start (the client preface, or the server's
//! first SETTINGS) are parsed strictly: a protocol violation is an error.
//! A connection joined mid-stream, or a direction that lost bytes, is
//! parsed leniently: frames are picked up again at the start of a chunk
//! that begins with a plausible frame header, and header blocks that refer
//! to dynamic-table entries never seen are dropped, not guessed.
//!
//! HTTP fields: `method`, `path`, `route`, `status`, `host`; gRPC fields:
//! `service`, `method`, `grpc_status`, `status`, `host`. Either may carry
//! `rst_error_code` when the stream was reset.
//!
//! Sizes, per stream and direction: its HEADERS, CONTINUATION and DATA
//! frames, 9-byte frame headers and whole payloads (padding included).
//! Frames about the stream but not of its messages (RST_STREAM, PRIORITY,
//! WINDOW_UPDATE) and connection frames are in no exchange; interim 1xx
//! header blocks count in the response.

mod frame;

use std::collections::BTreeMap;

use frame::{Frame, Reader};
use serde_json::Value;

use crate::detect::FirstBytes;
use crate::hpack::{Block, Decoder, HpackError};
use crate::http_fields::{MAX_TRACEPARENT, MAX_TRACESTATE, RequestInfo, trace_header};
use crate::{
    Chunk, Detection, Direction, ErrorKind, Exchange, Limits, ParseError, Privacy, Protocol,
    Session, grpc,
};

/// The client preface, or a server's first SETTINGS frame.
pub fn detect(first: &FirstBytes<'_>) -> Detection {
    match first.direction {
        Direction::ToServer => {
            let n = first.data.len().min(frame::PREFACE.len());
            if first.data[..n] != frame::PREFACE[..n] {
                Detection::No
            } else if n == frame::PREFACE.len() {
                Detection::Yes
            } else {
                Detection::NeedMore
            }
        }
        Direction::ToClient => {
            // §3.4: the server's preface is a (non-ACK) SETTINGS frame.
            let Some(bytes) = first.data.get(..9) else {
                let partial_ok = first.data.get(3).is_none_or(|&k| k == frame::SETTINGS)
                    && first.data.iter().skip(4).all(|&b| b == 0);
                return if partial_ok {
                    Detection::NeedMore
                } else {
                    Detection::No
                };
            };
            let mut b = [0u8; 9];
            b.copy_from_slice(bytes);
            let h = frame::Header::parse(&b);
            let ok = h.kind == frame::SETTINGS
                && h.flags == 0
                && bytes[5..9] == [0, 0, 0, 0]
                && h.check(frame::DEFAULT_MAX_FRAME).is_ok();
            if ok { Detection::Yes } else { Detection::No }
        }
    }
}

const fn index(d: Direction) -> usize {
    match d {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    }
}

/// A header block being assembled from HEADERS/PUSH_PROMISE and
/// CONTINUATION frames (§6.10).
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    push: bool,
    fragments: Vec<u8>,
    start_ns: u64,
    /// Wire bytes of the block's frames.
    bytes: u64,
}

/// The fields of a header block weft looks at, clipped as they are read.
#[derive(Debug, Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    scheme: Option<String>,
    status: Option<u16>,
    grpc: bool,
    grpc_status: Option<u32>,
    /// W3C trace context (HTTP/2 fields, gRPC metadata alike).
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Fields {
    fn take(&mut self, name: &[u8], value: &[u8], max: usize) {
        let text = || {
            let cut = value.len().min(max);
            String::from_utf8_lossy(&value[..cut]).into_owned()
        };
        match name {
            b":method" if self.method.is_none() => self.method = Some(text()),
            b":path" if self.path.is_none() => self.path = Some(text()),
            b":authority" if self.authority.is_none() => self.authority = Some(text()),
            // HTTP/1-style Host when :authority is absent (§8.3.1).
            b"host" if self.authority.is_none() => self.authority = Some(text()),
            b":scheme" if self.scheme.is_none() => self.scheme = Some(text()),
            b":status" if self.status.is_none() => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            b"content-type" => self.grpc |= grpc::is_grpc(value),
            b"grpc-status" => self.grpc_status = grpc::parse_status(value),
            b"traceparent" if self.traceparent.is_none() => {
                self.traceparent = trace_header(Some(value), MAX_TRACEPARENT);
            }
            b"tracestate" if self.tracestate.is_none() => {
                self.tracestate = trace_header(Some(value), MAX_TRACESTATE);
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
enum Kind {
    Http(RequestInfo),
    Grpc { path: String, host: Option<String> },
}

#[derive(Debug)]
struct Stream {
    kind: Kind,
    request_ns: u64,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// End of the last response frame seen.
    response_ns: Option<u64>,
    rst_error_code: Option<u32>,
    /// The request's trace context (for traces only).
    traceparent: Option<String>,
    tracestate: Option<String>,
    /// Wire bytes of the stream's frames each way.
    request_bytes: u64,
    response_bytes: u64,
}

pub struct Http2Session {
    limits: Limits,
    privacy: Privacy,
    /// Whether the first chunk was seen (it tells a connection's start from
    /// a connection joined mid-stream).
    started: bool,
    readers: [Reader; 2],
    /// Decoders of the header blocks sent in each direction.
    decoders: [Decoder; 2],
    blocks: [Option<PendingBlock>; 2],
    /// Whether a direction is known from its start with nothing lost:
    /// violations are then errors, otherwise they mean "lost again".
    strict: [bool; 2],
    streams: BTreeMap<u32, Stream>,
}

impl Http2Session {
    pub fn new(limits: Limits, privacy: &Privacy) -> Self {
        Http2Session {
            limits,
            privacy: privacy.clone(),
            started: false,
            readers: [
                Reader::new(limits.max_message, true),
                Reader::new(limits.max_message, false),
            ],
            decoders: [
                Decoder::new(limits.max_hpack_table),
                Decoder::new(limits.max_hpack_table),
            ],
            blocks: [None, None],
            strict: [true, true],
            streams: BTreeMap::new(),
        }
    }

    /// Bytes buffered (frame payloads and header blocks being assembled),
    /// excluding the HPACK tables (see [`Self::hpack_table_sizes`]).
    pub fn buffered(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .flatten()
            .map(|b| b.fragments.len())
            .sum();
        self.readers.iter().map(Reader::buffered).sum::<usize>() + blocks
    }

    pub fn hpack_table_sizes(&self) -> [usize; 2] {
        [self.decoders[0].table_size(), self.decoders[1].table_size()]
    }

    /// Streams waiting for their response.
    pub fn pending(&self) -> usize {
        self.streams.len()
    }

    /// The first chunk decides whether the connection is seen from its
    /// start.
    fn start(&mut self, chunk: &Chunk<'_>) {
        self.started = true;
        let from_start = chunk.gap_before == 0
            && match chunk.direction {
                Direction::ToServer => {
                    let n = chunk.data.len().min(frame::PREFACE.len());
                    chunk.data[..n] == frame::PREFACE[..n]
                }
                Direction::ToClient => {
                    let first = FirstBytes {
                        direction: Direction::ToClient,
                        data: chunk.data,
                        transport: crate::Transport::Stream,
                        server_port: 0,
                    };
                    detect(&first) != Detection::No
                }
            };
        if !from_start {
            let max = self.limits.max_message;
            self.readers = [Reader::lost(max), Reader::lost(max)];
            let table = self.limits.max_hpack_table;
            self.decoders = [Decoder::joined(table), Decoder::joined(table)];
            self.strict = [false, false];
        }
    }

    /// Bytes of direction `d` were lost.
    fn lose(
        &mut self,
        d: usize,
        n: usize,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), ErrorKind> {
        let (frame, lost) = self.readers[d].lose(n, ts_ns);
        if let Some(frame) = frame {
            self.on_frame(d, frame, out)?;
        }
        if lost {
            self.desync(d);
        }
        Ok(())
    }

    /// Direction `d` can no longer be trusted from here on.
    fn desync(&mut self, d: usize) {
        self.strict[d] = false;
        self.blocks[d] = None;
        self.decoders[d].lose_sync();
        if !self.readers[d].is_lost() {
            self.readers[d] = Reader::lost(self.limits.max_message);
        }
    }

    /// A violation: an error when strict, else a loss of sync.
    fn violation(&mut self, d: usize, kind: ErrorKind) -> Result<(), ErrorKind> {
        if self.strict[d] {
            return Err(kind);
        }
        self.desync(d);
        Ok(())
    }

    fn on_frame(&mut self, d: usize, f: Frame, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        let h = f.header;
        if self.blocks[d].is_some() && h.kind != frame::CONTINUATION {
            return self.violation(d, ErrorKind::Malformed("header block interrupted"));
        }
        match h.kind {
            frame::HEADERS | frame::PUSH_PROMISE => {
                let push = h.kind == frame::PUSH_PROMISE;
                let Some(fragment) = block_fragment(&f, push) else {
                    return self.violation(d, ErrorKind::Malformed("bad padding"));
                };
                self.blocks[d] = Some(PendingBlock {
                    stream: h.stream,
                    end_stream: !push && h.flags & frame::END_STREAM != 0,
                    push,
                    fragments: fragment.to_vec(),
                    start_ns: f.start_ns,
                    bytes: f.wire_len(),
                });
                if h.flags & frame::END_HEADERS != 0 {
                    self.complete_block(d, f.end_ns, out)?;
                }
            }
            frame::CONTINUATION => {
                let max = self.limits.max_message;
                let Some(block) = self.blocks[d].as_mut().filter(|b| b.stream == h.stream) else {
                    return self.violation(d, ErrorKind::Malformed("unexpected CONTINUATION"));
                };
                // §6.10 floods: the block as a whole is bounded.
                if block.fragments.len() + f.payload.len() > max {
                    return Err(ErrorKind::TooLarge(max));
                }
                block.fragments.extend_from_slice(&f.payload);
                block.bytes += f.wire_len();
                if h.flags & frame::END_HEADERS != 0 {
                    self.complete_block(d, f.end_ns, out)?;
                }
            }
            frame::DATA => {
                let Some(stream) = self.streams.get_mut(&h.stream) else {
                    return Ok(());
                };
                if d == index(Direction::ToServer) {
                    stream.request_bytes += f.wire_len();
                } else {
                    stream.response_bytes += f.wire_len();
                    stream.response_ns = Some(f.end_ns);
                    if h.flags & frame::END_STREAM != 0 {
                        self.finish(h.stream, out);
                    }
                }
            }
            frame::SETTINGS if h.flags & frame::ACK == 0 => self.on_settings(d, &f.payload)?,
            frame::RST_STREAM => {
                if let Some(stream) = self.streams.get_mut(&h.stream) {
                    let code = f
                        .payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    stream.rst_error_code = code;
                    // A reset after response headers ends the response; a
                    // reset before them leaves the request unanswered.
                    if stream.status.is_some() {
                        stream.response_ns = Some(f.end_ns);
                    }
                    self.finish(h.stream, out);
                }
            }
            frame::GOAWAY if d == index(Direction::ToClient) => {
                // §6.8: client streams above Last-Stream-ID were not
                // processed and will get no response.
                if let Some(b) = f.payload.get(..4) {
                    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                    let unprocessed: Vec<u32> =
                        self.streams.range(last + 1..).map(|(&id, _)| id).collect();
                    for id in unprocessed {
                        self.finish(id, out);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// SETTINGS sent in direction `d` set what the sender accepts: the
    /// table size of the decoder of the other direction's blocks (§6.5.2,
    /// SETTINGS_HEADER_TABLE_SIZE) and the other direction's frame size
    /// (SETTINGS_MAX_FRAME_SIZE).
    fn on_settings(&mut self, d: usize, payload: &[u8]) -> Result<(), ErrorKind> {
        let other = 1 - d;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                0x1 => self.decoders[other].allow_max_size(value as usize),
                0x5 => {
                    if !(frame::DEFAULT_MAX_FRAME..=0xff_ffff).contains(&value) {
                        return self
                            .violation(d, ErrorKind::Malformed("bad SETTINGS_MAX_FRAME_SIZE"));
                    }
                    let reader = &mut self.readers[other];
                    reader.max_frame = reader.max_frame.max(value);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn complete_block(
        &mut self,
        d: usize,
        end_ns: u64,
        out: &mut Vec<Exchange>,
    ) -> Result<(), ErrorKind> {
        let Some(block) = self.blocks[d].take() else {
            return Ok(());
        };
        let mut fields = Fields::default();
        let max = self.limits.max_field;
        let decoded = self.decoders[d].decode(&block.fragments, &mut |n, v| fields.take(n, v, max));
        let complete = match decoded {
            Ok(Block::Complete) => true,
            Ok(Block::Unknown) => false,
            Err(HpackError::TableTooLarge(limit)) => return Err(ErrorKind::TooLarge(limit)),
            Err(HpackError::Malformed(why)) => return self.violation(d, ErrorKind::Malformed(why)),
        };
        if block.push {
            return Ok(());
        }
        if d == index(Direction::ToServer) {
            if let Some(stream) = self.streams.get_mut(&block.stream) {
                // Request trailers.
                stream.request_bytes += block.bytes;
            } else if complete {
                self.on_request(&block, fields, out);
            }
            return Ok(());
        }
        if !complete {
            // A response we cannot read fully: report nothing rather than
            // something wrong.
            self.streams.remove(&block.stream);
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&block.stream) else {
            return Ok(());
        };
        stream.response_bytes += block.bytes;
        if fields.status.is_some_and(|s| (100..200).contains(&s)) && !block.end_stream {
            // Interim response (§8.1): the final one follows.
            return Ok(());
        }
        if stream.status.is_none() {
            stream.status = fields.status;
        }
        if fields.grpc_status.is_some() {
            stream.grpc_status = fields.grpc_status;
        }
        stream.response_ns = Some(end_ns);
        if block.end_stream {
            self.finish(block.stream, out);
        }
        Ok(())
    }

    fn on_request(&mut self, block: &PendingBlock, fields: Fields, out: &mut Vec<Exchange>) {
        let id = block.stream;
        // §5.1.1: clients open odd-numbered streams.
        let Some(method) = fields.method.filter(|_| !id.is_multiple_of(2)) else {
            return;
        };
        let path = fields.path.unwrap_or_default();
        let host = fields
            .authority
            .as_deref()
            .filter(|_| !host_is_sensitive(&self.privacy));
        let kind = if fields.grpc {
            Kind::Grpc {
                path,
                host: host.map(str::to_owned),
            }
        } else {
            let scheme = match fields.scheme.as_deref() {
                Some("https") => "https",
                _ => "http",
            };
            // CONNECT (§8.5) has no :path; its target is the authority.
            let target = if path.is_empty() {
                fields.authority.as_deref().unwrap_or_default()
            } else {
                &path
            };
            Kind::Http(RequestInfo::new(
                &method,
                target,
                host,
                scheme,
                &self.limits,
                &self.privacy,
            ))
        };
        if self.streams.len() >= self.limits.max_pending {
            // Keep the newest streams: the oldest is reported unanswered.
            if let Some((&oldest, _)) = self.streams.first_key_value() {
                self.finish(oldest, out);
            }
        }
        let stream = Stream {
            kind,
            request_ns: block.start_ns,
            status: None,
            grpc_status: None,
            response_ns: None,
            rst_error_code: None,
            traceparent: fields.traceparent,
            tracestate: fields.tracestate,
            request_bytes: block.bytes,
            response_bytes: 0,
        };
        self.streams.insert(id, stream);
    }

    fn finish(&mut self, id: u32, out: &mut Vec<Exchange>) {
        if let Some(stream) = self.streams.remove(&id) {
            out.push(self.exchange(stream));
        }
    }

    fn exchange(&self, s: Stream) -> Exchange {
        let mut exchange = match &s.kind {
            Kind::Http(info) => info.exchange(
                Protocol::Http2,
                s.request_ns,
                s.response_ns.map(|ns| (s.status, ns)),
            ),
            Kind::Grpc { path, host } => grpc::Call {
                path,
                host: host.as_deref(),
                http_status: s.status,
                grpc_status: s.grpc_status,
            }
            .exchange(&self.limits, s.request_ns, s.response_ns),
        };
        if let Some(code) = s.rst_error_code {
            exchange
                .fields
                .insert("rst_error_code".into(), Value::from(code));
        }
        exchange.traceparent = s.traceparent;
        exchange.tracestate = s.tracestate;
        exchange.request_bytes = s.request_bytes;
        // A reset before the response headers leaves it unanswered.
        if exchange.answered {
            exchange.response_bytes = s.response_bytes;
        }
        exchange
    }
}

fn host_is_sensitive(privacy: &Privacy) -> bool {
    privacy
        .sensitive_headers
        .iter()
        .any(|h| h == "host" || h == ":authority")
}

/// The header block fragment of a HEADERS (§6.2) or PUSH_PROMISE (§6.6)
/// frame, without padding, priority or promised stream id.
fn block_fragment(f: &Frame, push: bool) -> Option<&[u8]> {
    let mut p = f.payload.as_slice();
    let mut pad = 0;
    if f.header.flags & frame::PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let skip = if push {
        4
    } else if f.header.flags & frame::PRIORITY_FLAG != 0 {
        5
    } else {
        0
    };
    let p = p.get(skip..)?;
    p.get(..p.len().checked_sub(pad)?)
}

impl Session for Http2Session {
    fn protocol(&self) -> Protocol {
        Protocol::Http2
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        let error = |kind| ParseError {
            protocol: Protocol::Http2,
            kind,
        };
        if !self.started {
            if chunk.data.is_empty() && chunk.gap_before == 0 {
                return Ok(());
            }
            self.start(chunk);
        }
        let d = index(chunk.direction);
        if chunk.gap_before > 0 {
            self.lose(d, chunk.gap_before, chunk.ts_ns, out)
                .map_err(error)?;
        }
        self.readers[d].at_chunk_start(chunk.data);
        let mut data = chunk.data;
        loop {
            match self.readers[d].next(&mut data, chunk.ts_ns) {
                Ok(Some(frame)) => self.on_frame(d, frame, out).map_err(error)?,
                Ok(None) => break,
                Err(ErrorKind::Desync) => {
                    // The client's stream does not start with the preface:
                    // the connection was joined mid-stream, so the server's
                    // side, though it began with SETTINGS, was joined too.
                    self.desync(d);
                    self.strict = [false, false];
                    self.decoders[1 - d].mark_joined();
                    break;
                }
                Err(kind) => {
                    self.violation(d, kind).map_err(error)?;
                    break;
                }
            }
        }
        if chunk.truncated > 0 {
            self.lose(d, chunk.truncated, chunk.ts_ns, out)
                .map_err(error)?;
        }
        Ok(())
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.finish(id, out);
        }
    }
}

#[cfg(test)]
mod tests;
