//! Parsing of a complete HTTP/1.x message head (start line and header
//! fields, RFC 9112 §2–§5), and the body length rules of RFC 9112 §6.
//!
//! Only the fields weft reports or needs for framing are extracted; header
//! values are never kept (privacy: nothing else can leak).

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub host: Option<&'a str>,
    /// The W3C `traceparent` header, as sent (checked by the caller).
    pub traceparent: Option<&'a str>,
    /// The first W3C `tracestate` header, as sent.
    pub tracestate: Option<&'a str>,
    pub body: BodyKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The framing the headers announce; the caller applies the rules that
    /// depend on the request (HEAD, CONNECT) and on the status.
    pub framing: BodyKind,
}

/// The framing headers of a message.
#[derive(Default)]
struct Framing {
    content_length: Option<u64>,
    /// Transfer-Encoding present; `true` when its final coding is chunked.
    transfer_encoding: Option<bool>,
}

pub fn parse_request(head: &[u8]) -> Result<RequestHead<'_>, &'static str> {
    let (start, fields) = split_start_line(head)?;
    let mut parts = start.splitn(3, |&b| b == b' ');
    let method = parts.next().filter(|m| is_token(m)).ok_or("bad method")?;
    let target = parts
        .next()
        .filter(|t| is_target(t))
        .ok_or("bad request target")?;
    let version = parts.next().ok_or("no HTTP version")?;
    if !is_version(version) {
        return Err("bad HTTP version");
    }
    let mut host = None;
    let mut traceparent = None;
    let mut tracestate = None;
    let framing = parse_fields(fields, |name, value| {
        if name.eq_ignore_ascii_case(b"host") && host.is_none() {
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"traceparent") && traceparent.is_none() {
            traceparent = Some(value);
        } else if name.eq_ignore_ascii_case(b"tracestate") && tracestate.is_none() {
            tracestate = Some(value);
        }
    })?;
    // RFC 9112 §6.3 (rules 4–6): a request's transfer coding must end in
    // chunked; without Transfer-Encoding or Content-Length it has no body.
    let body = match (framing.transfer_encoding, framing.content_length) {
        (Some(true), _) => BodyKind::Chunked,
        (Some(false), _) => return Err("request transfer coding is not chunked"),
        (None, Some(0)) | (None, None) => BodyKind::None,
        (None, Some(n)) => BodyKind::Length(n),
    };
    Ok(RequestHead {
        method: utf8(method)?,
        target: utf8(target)?,
        host: host.map(utf8).transpose()?,
        traceparent: traceparent.and_then(|v| utf8(v).ok()),
        tracestate: tracestate.and_then(|v| utf8(v).ok()),
        body,
    })
}

pub fn parse_response(head: &[u8]) -> Result<ResponseHead, &'static str> {
    let (start, fields) = split_start_line(head)?;
    // status-line = HTTP-version SP status-code SP [ reason-phrase ]
    let version = start.get(..8).ok_or("short status line")?;
    if !is_version(version) || start.get(8) != Some(&b' ') {
        return Err("bad HTTP version");
    }
    let code = start.get(9..12).ok_or("short status line")?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(start.get(12), None | Some(b' ')) {
        return Err("bad status code");
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=999).contains(&status) {
        return Err("bad status code");
    }
    let framing = parse_fields(fields, |_, _| {})?;
    let framing = match (framing.transfer_encoding, framing.content_length) {
        (Some(true), _) => BodyKind::Chunked,
        (Some(false), _) | (None, None) => BodyKind::UntilClose,
        (None, Some(0)) => BodyKind::None,
        (None, Some(n)) => BodyKind::Length(n),
    };
    Ok(ResponseHead { status, framing })
}

/// Splits off the start line; `head` ends with its empty line.
fn split_start_line(head: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let nl = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no start line")?;
    Ok((trim_cr(&head[..nl]), &head[nl + 1..]))
}

/// Walks the field lines, handing each (name, value) to `seen` and
/// collecting the framing headers.
fn parse_fields<'a>(
    fields: &'a [u8],
    mut seen: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Framing, &'static str> {
    let mut framing = Framing::default();
    for line in fields.split(|&b| b == b'\n') {
        let line = trim_cr(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold (RFC 9112 §5.2): a continuation of the previous
            // value. We never report values, so it only matters for the
            // framing headers, which must not be folded.
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header without colon")?;
        let name = &line[..colon];
        if !is_token(name) {
            return Err("bad header name");
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 rule 5: a list of identical values is one value;
            // differing ones are unrecoverable.
            for item in value.split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or("bad Content-Length")?;
                if framing.content_length.is_some_and(|old| old != n) {
                    return Err("conflicting Content-Length");
                }
                framing.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            framing.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        seen(name, value);
    }
    Ok(framing)
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn is_version(v: &[u8]) -> bool {
    v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit()
}

/// RFC 9110 §5.6.2 token characters.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// A request target is visible ASCII without spaces (RFC 9112 §3.2).
fn is_target(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|&c| c.is_ascii_graphic())
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn utf8(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "header is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_header_is_picked_up() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\nTraceParent: {tp}\r\n\r\n");
        let r = parse_request(head.as_bytes()).unwrap();
        assert_eq!(r.traceparent, Some(tp));
        assert_eq!(r.tracestate, None);
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\ntracestate: v=1\r\n\r\n").unwrap();
        assert_eq!((r.traceparent, r.tracestate), (None, Some("v=1")));
    }

    #[test]
    fn request_framing() {
        let r = parse_request(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(
            (r.method, r.target, r.host, r.body),
            ("POST", "/x", Some("a"), BodyKind::Length(5))
        );
        let r = parse_request(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        let r = parse_request(b"GET / HTTP/1.0\n\n").unwrap();
        assert_eq!(r.body, BodyKind::None);
        assert!(parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n").is_err());
        assert!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")
                .is_err()
        );
        assert!(parse_request(b"GET / HTTP/2.0\r\n\r\n").is_err());
        assert!(parse_request(b"GET  / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nbad header\r\n\r\n").is_err());
    }

    #[test]
    fn response_framing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n").unwrap();
        assert_eq!((r.status, r.framing), (200, BodyKind::Length(12)));
        let r = parse_response(b"HTTP/1.0 404\r\n\r\n").unwrap();
        assert_eq!((r.status, r.framing), (404, BodyKind::UntilClose));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(r.framing, BodyKind::Chunked);
        assert!(parse_response(b"HTTP/1.1 20 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 099 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    }
}
