//! DNS over UDP and TCP (RFC 1035, RFC 7766 for TCP framing, RFC 6891 for
//! the extended response code).
//!
//! Over UDP each chunk is one datagram (one message); over TCP messages
//! carry a 2-byte length prefix and may be pipelined and answered out of
//! order. Either way queries and responses are paired by transaction id.
//! Only the header, the first question and the OPT record's extended
//! rcode are read: `answers` is the header's answer count.
//!
//! Sizes: a query's and its response's whole message, as the datagram's
//! length over UDP, and with its 2-byte length prefix over TCP.
//!
//! Hostile input: name compression pointers must point strictly backwards
//! (so a walk always terminates), names are at most 255 bytes, and every
//! record walk is bounded by the message length.

use std::collections::VecDeque;

use serde_json::Value;

use crate::detect::FirstBytes;
use crate::framer::{Frame, Framer, Layout};
use crate::text::bounded;
use crate::{
    Chunk, Detection, Direction, ErrorKind, Exchange, Limits, MetricAttributes, ParseError,
    Privacy, Protocol, Session, Transport,
};

const HEADER: usize = 12;
/// A name in wire form is at most 255 bytes (RFC 1035 3.1).
const MAX_NAME: usize = 255;
const TYPE_OPT: u16 = 41;

/// The parts of a message weft reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    /// With the OPT record's upper bits when present.
    pub rcode: u16,
    /// The first question, in presentation form, and its type.
    pub question: Option<(String, u16)>,
    pub answers: u16,
}

/// Parses a DNS message (without the TCP length prefix). A message cut
/// short (a truncated capture) still yields its header, and its question
/// if that was captured.
pub fn parse_message(msg: &[u8]) -> Result<Message, ErrorKind> {
    if msg.len() < HEADER {
        return Err(ErrorKind::Malformed("short DNS header"));
    }
    let u16_at = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let flags = u16_at(2);
    let (qd, an, ns, ar) = (u16_at(4), u16_at(6), u16_at(8), u16_at(10));
    let mut m = Message {
        id: u16_at(0),
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        rcode: flags & 0xf,
        question: None,
        answers: an,
    };
    let mut at = HEADER;
    if qd > 0
        && let Ok((name, end)) = read_name(msg, at)
        && let Some(t) = msg.get(end..end + 4)
    {
        m.question = Some((name, u16::from_be_bytes([t[0], t[1]])));
    }
    // The extended rcode lives in the OPT record of the additional
    // section: walk the records (skipping names, never following them).
    if m.response && ar > 0 {
        for _ in 0..qd {
            match skip_name(msg, at) {
                Some(end) if end + 4 <= msg.len() => at = end + 4,
                _ => return Ok(m),
            }
        }
        let records = u32::from(an) + u32::from(ns) + u32::from(ar);
        for _ in 0..records {
            let Some(end) = skip_name(msg, at) else { break };
            let Some(fixed) = msg.get(end..end + 10) else {
                break;
            };
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
            if rtype == TYPE_OPT {
                m.rcode |= u16::from(fixed[4]) << 4;
                break;
            }
            at = end + 10 + rdlen;
            if at > msg.len() {
                break;
            }
        }
    }
    Ok(m)
}

/// The end of the name at `at` without following pointers.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            0xc0..=0xff => return Some(at + 2).filter(|&e| e <= msg.len()),
            0x40..=0xbf => return None,
            _ => at += 1 + usize::from(len),
        }
    }
}

/// The name at `at` in presentation form, and where it ends in the
/// message (after its first pointer, if any).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), ErrorKind> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut at = start;
    let mut end = None;
    // Pointers must go strictly backwards: each jump lowers `limit`, so
    // the walk ends whatever the message says.
    let mut limit = start;
    loop {
        let len = *msg
            .get(at)
            .ok_or(ErrorKind::Malformed("name runs past the message"))?;
        match len {
            0 => {
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((name, end.unwrap_or(at + 1)));
            }
            0xc0..=0xff => {
                let low = *msg.get(at + 1).ok_or(ErrorKind::Malformed("pointer"))?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                if target >= limit {
                    return Err(ErrorKind::Malformed("compression pointer loop"));
                }
                end.get_or_insert(at + 2);
                limit = target;
                at = target;
            }
            0x40..=0xbf => return Err(ErrorKind::Malformed("label type")),
            _ => {
                let label = msg
                    .get(at + 1..at + 1 + usize::from(len))
                    .ok_or(ErrorKind::Malformed("label runs past the message"))?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME {
                    return Err(ErrorKind::Malformed("name longer than 255 bytes"));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                at += 1 + label.len();
                if end.is_none() {
                    limit = at;
                }
            }
        }
    }
}

/// A label in presentation form (RFC 4343): `.` and `\` escaped,
/// non-printable bytes as `\DDD`.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x21..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
}

/// Type mnemonic, or `TYPEn` (RFC 3597).
pub fn type_name(t: u16) -> String {
    let name = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        24 => "SIG",
        25 => "KEY",
        28 => "AAAA",
        29 => "LOC",
        33 => "SRV",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        39 => "DNAME",
        41 => "OPT",
        43 => "DS",
        44 => "SSHFP",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        _ => return format!("TYPE{t}"),
    };
    name.to_owned()
}

/// Response code mnemonic (IANA DNS RCODEs), or `RCODEn`.
pub fn rcode_name(r: u16) -> String {
    let name = match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        16 => "BADVERS",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => return format!("RCODE{r}"),
    };
    name.to_owned()
}

/// Is this a DNS query? Strict on structure (one question, no answers, a
/// name that parses) unless the server port is 53.
pub(crate) fn detect(first: &FirstBytes<'_>) -> Detection {
    if first.direction != Direction::ToServer {
        return Detection::No;
    }
    let stream = first.transport == Transport::Stream;
    let (msg, announced) = if stream {
        match first.data {
            [hi, lo, rest @ ..] => (rest, usize::from(u16::from_be_bytes([*hi, *lo]))),
            _ => return Detection::NeedMore,
        }
    } else {
        (first.data, first.data.len())
    };
    if announced < HEADER + 5 {
        return Detection::No;
    }
    if msg.len() < HEADER {
        return if stream {
            Detection::NeedMore
        } else {
            Detection::No
        };
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let query = flags & 0x8000 == 0 && flags & 0xf == 0;
    let opcode = (flags >> 11) & 0xf;
    if !query || count(4) != 1 || count(6) != 0 {
        return Detection::No;
    }
    if first.server_port == 53 && matches!(opcode, 0 | 4 | 5) {
        return Detection::Yes;
    }
    if opcode != 0 || count(8) != 0 || count(10) > 2 {
        return Detection::No;
    }
    let Ok((_, end)) = read_name(msg, HEADER) else {
        // A name cut by the end of the bytes we have may still complete.
        return if stream && msg.len() < announced {
            Detection::NeedMore
        } else {
            Detection::No
        };
    };
    let Some(t) = msg.get(end..end + 4) else {
        return if stream && msg.len() < announced {
            Detection::NeedMore
        } else {
            Detection::No
        };
    };
    let (qtype, class) = (
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
    );
    if qtype != 0 && matches!(class, 1 | 3 | 255) {
        Detection::Yes
    } else {
        Detection::No
    }
}

/// The 2-byte length prefix; bodies kept up to `Limits::max_message` (a
/// cut message still has its header and, usually, its question).
struct Prefix2 {
    keep: usize,
}

impl Layout for Prefix2 {
    fn header_len(&self) -> usize {
        2
    }

    fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind> {
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len < HEADER {
            return Err(ErrorKind::Malformed("DNS message shorter than its header"));
        }
        Ok((len, len.min(self.keep)))
    }
}

struct Query {
    id: u16,
    start_ns: u64,
    question: Option<(String, u16)>,
    /// The query's size on the wire.
    bytes: u64,
}

/// A message as it crossed the socket: its bytes (perhaps a captured
/// prefix), wire size and the timestamps of its first and last bytes.
struct Wire<'a> {
    msg: &'a [u8],
    bytes: u64,
    start_ns: u64,
    end_ns: u64,
}

pub struct DnsSession {
    transport: Transport,
    limits: Limits,
    framers: [Framer; 2],
    /// Queries awaiting their response, oldest first.
    pending: VecDeque<Query>,
}

impl DnsSession {
    pub fn new(transport: Transport, limits: Limits, _privacy: &Privacy) -> Self {
        Self {
            transport,
            limits,
            framers: [Framer::default(), Framer::default()],
            pending: VecDeque::new(),
        }
    }

    /// Bytes held for partial TCP messages (for the bounds checks).
    pub fn buffered(&self) -> usize {
        self.framers.iter().map(Framer::buffered).sum()
    }

    fn on_message(&mut self, direction: Direction, wire: Wire<'_>, out: &mut Vec<Exchange>) {
        // A message we cannot read is skipped, not fatal: the next
        // datagram (or TCP message, framing intact) may be fine.
        let Ok(m) = parse_message(wire.msg) else {
            return;
        };
        match (direction, m.response) {
            (Direction::ToServer, false) => {
                if self.pending.len() >= self.limits.max_pending.max(1)
                    && let Some(old) = self.pending.pop_front()
                {
                    out.push(self.exchange(old, None));
                }
                self.pending.push_back(Query {
                    id: m.id,
                    start_ns: wire.start_ns,
                    question: m.question,
                    bytes: wire.bytes,
                });
            }
            (Direction::ToClient, true) => {
                let Some(i) = self.pending.iter().position(|q| q.id == m.id) else {
                    return;
                };
                if let Some(query) = self.pending.remove(i) {
                    let mut e = self.exchange(query, Some(&m));
                    e.answered = true;
                    e.response_ns = wire.end_ns.max(e.request_ns);
                    e.response_bytes = wire.bytes;
                    out.push(e);
                }
            }
            _ => {}
        }
    }

    fn exchange(&self, query: Query, response: Option<&Message>) -> Exchange {
        let mut e = Protocol::Dns.exchange(query.start_ns);
        e.request_bytes = query.bytes;
        e.fields.insert("id".into(), Value::from(query.id));
        let (name, qtype) = match query.question.or_else(|| response?.question.clone()) {
            Some((name, t)) => (Some(name), type_name(t)),
            None => (None, String::new()),
        };
        if let Some(name) = name {
            e.fields.insert(
                "query".into(),
                Value::from(bounded(&name, self.limits.max_field)),
            );
        }
        if !qtype.is_empty() {
            e.fields.insert("qtype".into(), Value::from(qtype.clone()));
        }
        // Unanswered queries have no response code.
        let rcode = response.map(|m| rcode_name(m.rcode)).unwrap_or_default();
        if let Some(m) = response {
            e.fields.insert("rcode".into(), Value::from(rcode.clone()));
            e.fields.insert("answers".into(), Value::from(m.answers));
        }
        e.metric = MetricAttributes::Dns {
            question_type: qtype,
            response_code: rcode,
        };
        e
    }

    fn feed_stream(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        let d = usize::from(chunk.direction == Direction::ToClient);
        let mut input = chunk.data;
        while !input.is_empty() {
            let layout = Prefix2 {
                keep: self.limits.max_message,
            };
            if let Some(frame) = self.framers[d].next(&mut input, chunk.ts_ns, &layout)? {
                self.on_frame(chunk.direction, frame, out);
            }
        }
        if chunk.truncated > 0 {
            let (frame, lost) = self.framers[d].hole(chunk.truncated, chunk.ts_ns);
            if let Some(frame) = frame {
                self.on_frame(chunk.direction, frame, out);
            }
            if lost {
                return Err(ErrorKind::Desync);
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, direction: Direction, frame: Frame, out: &mut Vec<Exchange>) {
        let wire = Wire {
            msg: &frame.body,
            bytes: frame.wire_len(),
            start_ns: frame.start_ns,
            end_ns: frame.end_ns,
        };
        self.on_message(direction, wire, out);
    }
}

impl Session for DnsSession {
    fn protocol(&self) -> Protocol {
        Protocol::Dns
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        if self.transport == Transport::Datagram {
            // Datagrams keep their boundaries: a lost one loses nothing
            // but itself, and a truncated one still has its header.
            let wire = Wire {
                msg: chunk.data,
                bytes: (chunk.data.len() + chunk.truncated) as u64,
                start_ns: chunk.ts_ns,
                end_ns: chunk.ts_ns,
            };
            self.on_message(chunk.direction, wire, out);
            return Ok(());
        }
        if chunk.gap_before > 0 {
            return Err(ParseError {
                protocol: Protocol::Dns,
                kind: ErrorKind::Desync,
            });
        }
        self.feed_stream(chunk, out).map_err(|kind| ParseError {
            protocol: Protocol::Dns,
            kind,
        })
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        while let Some(query) = self.pending.pop_front() {
            out.push(self.exchange(query, None));
        }
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
