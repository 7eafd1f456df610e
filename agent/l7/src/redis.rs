//! Redis sessions: commands (RESP arrays or inline) paired in order with
//! their replies, pipelining included.
//!
//! Not every server frame answers a command: RESP3 push frames (`>`:
//! client-side caching invalidations, pub/sub messages) and, in RESP2
//! pub/sub mode, `message`/`pmessage`/`smessage` arrays are skipped. A
//! (un)subscribe command is answered by one confirmation per channel; the
//! first one answers it, the others are skipped.
//!
//! Privacy: by default the statement is the command and its first
//! argument (the key) with the rest replaced by `?` (`SET user:1 ?`), and
//! commands whose arguments are secrets (`AUTH`, `HELLO`) keep none.
//! With values reported, credentials still are not: `AUTH`'s arguments,
//! those after `AUTH` in `HELLO` and `MIGRATE`, `ACL SETUSER` password
//! rules, and passwords given to `CONFIG SET` are `?`.
//! Error replies report only their prefix (`ERR`, `WRONGTYPE`): Redis
//! error texts quote arguments.
//!
//! Sizes: the command's RESP value (or inline line) and the reply value
//! that answers it, framing included. Frames that answer no command (push
//! frames, pub/sub messages, the extra confirmations of a multi-channel
//! subscribe) count for no exchange.

use serde_json::Value as Json;

use crate::detect::FirstBytes;
use crate::pending::{Fifo, Lost, Resync};
use crate::resp::{Reader, Value};
use crate::text::{bounded, bounded_lossy, command_name};
use crate::{
    Chunk, Detection, Direction, ErrorKind, Exchange, Limits, MetricAttributes, ParseError,
    Privacy, Protocol, Session,
};

/// Arguments kept per command when values are not obfuscated.
const MAX_ARGS: usize = 16;
/// Enough of a reply's first elements to recognise errors and pub/sub.
const REPLY_KEEP: usize = 64;
/// Longest command name (module commands like `JSON.ARRAPPEND` included).
const MAX_COMMAND: usize = 32;

/// Commands whose first argument is not a key but a secret or a value:
/// none of their arguments is reported.
const SECRET_ARGS: [&str; 4] = ["AUTH", "HELLO", "MIGRATE", "ECHO"];

/// `CONFIG SET` parameters whose values are passwords.
const PASSWORD_PARAMETERS: [&str; 4] = [
    "requirepass",
    "masterauth",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// Which of a command's arguments are credentials, reported as `?` even
/// when values are reported.
fn credentials(command: &str, args: &[Vec<u8>]) -> Vec<bool> {
    let is = |arg: &[u8], word: &str| arg.eq_ignore_ascii_case(word.as_bytes());
    let sub = args.first().map(Vec::as_slice).unwrap_or_default();
    match command {
        "AUTH" => vec![true; args.len()],
        // `HELLO 3 AUTH user pass ...`, `MIGRATE ... AUTH pass` / `AUTH2
        // user pass`: everything from the keyword on.
        "HELLO" | "MIGRATE" => {
            let from = args
                .iter()
                .position(|a| is(a, "AUTH") || is(a, "AUTH2"))
                .map_or(args.len(), |at| at + 1);
            (0..args.len()).map(|i| i >= from).collect()
        }
        // Rules adding or removing a password (`>pw`, `<pw`) or its hash
        // (`#hex`, `!hex`).
        "ACL" if is(sub, "SETUSER") => args
            .iter()
            .enumerate()
            .map(|(i, a)| i >= 2 && matches!(a.first(), Some(b'>' | b'<' | b'#' | b'!')))
            .collect(),
        // `CONFIG SET name value [name value ...]`.
        "CONFIG" if is(sub, "SET") => (0..args.len())
            .map(|i| {
                i >= 2 && i % 2 == 0 && PASSWORD_PARAMETERS.iter().any(|p| is(&args[i - 1], p))
            })
            .collect(),
        _ => vec![false; args.len()],
    }
}

const SUBSCRIPTIONS: [&str; 6] = [
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
];

/// Is this a client's RESP command array (`*<n>\r\n$`)?
pub(crate) fn detect(first: &FirstBytes<'_>) -> Detection {
    if first.direction != Direction::ToServer {
        return Detection::No;
    }
    let d = first.data;
    match d.first() {
        None => return Detection::NeedMore,
        Some(b'*') => {}
        Some(_) => return Detection::No,
    }
    let digits = d[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 7 {
        return Detection::No;
    }
    let rest = &d[1 + digits..];
    let want = b"\r\n$";
    let n = rest.len().min(want.len());
    if digits == 0 && !rest.is_empty() || rest[..n] != want[..n] {
        return Detection::No;
    }
    if n < want.len() {
        return Detection::NeedMore;
    }
    Detection::Yes
}

struct Request {
    start_ns: u64,
    command: String,
    statement: String,
    bytes: u64,
}

pub struct RedisSession {
    limits: Limits,
    privacy: Privacy,
    requests: Reader,
    replies: Reader,
    pending: Fifo<Request>,
    /// A subscribe command was sent: RESP2 message arrays are not replies.
    subscribed: bool,
    lost: Lost,
}

impl RedisSession {
    pub fn new(limits: Limits, privacy: &Privacy) -> Self {
        Self {
            limits,
            privacy: privacy.clone(),
            requests: Reader::new(true, MAX_ARGS, limits.max_field),
            replies: Reader::new(false, 1, REPLY_KEEP),
            pending: Fifo::new(limits.max_pending),
            subscribed: false,
            lost: Lost::default(),
        }
    }

    /// Bytes held for partial values (for the bounds checks).
    pub fn buffered(&self) -> usize {
        self.requests.buffered() + self.replies.buffered()
    }

    fn on_request(&mut self, value: Value) {
        // Empty arrays and blank inline lines are ignored by the server.
        let Some(name) = value.items.first().filter(|_| value.len > 0) else {
            return;
        };
        let command = command_name(name, MAX_COMMAND).unwrap_or_else(|| "UNKNOWN".into());
        if matches!(command.as_str(), "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE") {
            self.subscribed = true;
        }
        let statement = self.statement(&command, &value);
        self.pending.push(Request {
            start_ns: value.start_ns,
            command,
            statement,
            bytes: value.wire_len,
        });
    }

    fn statement(&self, command: &str, value: &Value) -> String {
        let max = self.limits.max_field;
        let args = &value.items[1..];
        let more = value.len > value.items.len() as i64;
        let mut s = command.to_owned();
        if self.privacy.obfuscate_redis_values {
            let secret = SECRET_ARGS.contains(&command);
            match args.first() {
                Some(_) if secret => s.push_str(" ?"),
                Some(key) => {
                    s.push(' ');
                    s.push_str(&bounded_lossy(key, max));
                    if args.len() > 1 || more {
                        s.push_str(" ?");
                    }
                }
                None => {}
            }
            return bounded(&s, max);
        }
        let hidden = credentials(command, args);
        for (arg, hide) in args.iter().zip(hidden) {
            s.push(' ');
            if hide {
                s.push('?');
            } else {
                s.push_str(&bounded_lossy(arg, max));
            }
            if s.len() > max {
                break;
            }
        }
        if more {
            s.push_str(" …");
        }
        bounded(&s, max)
    }

    fn on_reply(&mut self, value: Value, out: &mut Vec<Exchange>) {
        let first = value
            .items
            .first()
            .and_then(|i| command_name(i, MAX_COMMAND));
        let aggregate = matches!(value.kind, b'*' | b'>');
        let confirmation = first
            .as_deref()
            .filter(|f| aggregate && SUBSCRIPTIONS.contains(f));
        if let Some(kind) = confirmation {
            // Answers the front command only if it is that (un)subscribe.
            let front = self.pending.front_mut().map(|r| r.command.as_str());
            if front != Some(kind) {
                return;
            }
        } else if value.kind == b'>'
            || (self.subscribed
                && value.kind == b'*'
                && matches!(first.as_deref(), Some("MESSAGE" | "PMESSAGE" | "SMESSAGE")))
        {
            return;
        }
        let Some(Some(request)) = self.pending.pop() else {
            return;
        };
        let error = matches!(value.kind, b'-' | b'!').then(|| error_prefix(&value));
        let mut e = self.exchange(request);
        e.answered = true;
        e.response_ns = value.end_ns.max(e.request_ns);
        e.response_bytes = value.wire_len;
        if let Some(prefix) = error {
            e.fields
                .insert("error_code".into(), Json::from(prefix.clone()));
            if let MetricAttributes::Db { error_type, .. } = &mut e.metric {
                *error_type = Some(prefix);
            }
        }
        out.push(e);
    }

    fn exchange(&self, request: Request) -> Exchange {
        let mut e = Protocol::Redis.exchange(request.start_ns);
        e.request_bytes = request.bytes;
        e.fields
            .insert("command".into(), Json::from(request.command.clone()));
        e.fields
            .insert("statement".into(), Json::from(request.statement));
        e.metric = MetricAttributes::Db {
            system: "redis",
            operation: request.command,
            error_type: None,
        };
        e
    }

    fn feed_dir(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ErrorKind> {
        let client = chunk.direction == Direction::ToServer;
        let mut input = chunk.data;
        while !input.is_empty() {
            if client {
                if let Some(value) = self.requests.next(&mut input, chunk.ts_ns)? {
                    self.on_request(value);
                }
            } else if let Some(value) = self.replies.next(&mut input, chunk.ts_ns)? {
                self.on_reply(value, out);
            }
        }
        if chunk.truncated > 0 {
            // A cut inside a bulk string (a big value) is skipped; one
            // that swallows a line loses the framing.
            let (value, lost) = if client {
                self.requests.hole(chunk.truncated, chunk.ts_ns)
            } else {
                self.replies.hole(chunk.truncated, chunk.ts_ns)
            };
            match value {
                Some(value) if client => self.on_request(value),
                Some(value) => self.on_reply(value, out),
                None => {}
            }
            if lost {
                self.lose(chunk.ts_ns)?;
            }
        }
        Ok(())
    }
}

impl Resync for RedisSession {
    /// Never fails: Redis has no handshake, and each command stands alone.
    fn abandon(&mut self) -> Result<Vec<Exchange>, ErrorKind> {
        self.replies.reset();
        let requests: Vec<Request> = self.pending.drain().collect();
        Ok(requests.into_iter().map(|r| self.exchange(r)).collect())
    }

    fn restart_client(&mut self) {
        self.requests.reset();
    }

    fn lost(&mut self) -> &mut Lost {
        &mut self.lost
    }
}

impl Session for RedisSession {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) -> Result<(), ParseError> {
        let err = |kind| ParseError {
            protocol: Protocol::Redis,
            kind,
        };
        if !self.admit(chunk, out).map_err(err)? {
            return Ok(());
        }
        self.feed_dir(chunk, out).map_err(err)
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        self.lost.finish(out);
        let requests: Vec<Request> = self.pending.drain().collect();
        for request in requests {
            out.push(self.exchange(request));
        }
    }
}

/// `WRONGTYPE Operation against...` → `WRONGTYPE`; anything that does not
/// start with an upper-case word → `ERR`.
fn error_prefix(value: &Value) -> String {
    let text = value.items.first().map_or(&[][..], Vec::as_slice);
    let word = text.split(|&b| b == b' ').next().unwrap_or_default();
    let ok =
        !word.is_empty() && word.len() <= MAX_COMMAND && word.iter().all(u8::is_ascii_uppercase);
    if ok {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".into()
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
