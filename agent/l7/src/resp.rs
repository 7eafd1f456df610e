//! Incremental RESP2/RESP3 reader (<https://redis.io/docs/latest/develop/reference/protocol-spec/>).
//!
//! It walks values without building them: it keeps the first few top-level
//! elements' prefixes (a command and its key, an error's text) and counts
//! the rest down, so a 512 MB bulk string or a million-element array costs
//! a few bytes. Nesting is bounded. Streamed RESP3 strings and aggregates
//! (`$?`, `*?`), which Redis never sends, are reported as malformed.

use crate::ErrorKind;

/// Deepest nesting accepted (Redis' own replies nest a few levels).
pub(crate) const MAX_DEPTH: usize = 32;
/// Length lines (`$12`, `*3`) are short; a longer one is garbage.
const MAX_NUMBER_LINE: usize = 24;
/// Largest bulk length accepted (Redis' proto-max-bulk-len is 512 MB by
/// default and can be raised; 4 GB is well beyond it).
const MAX_BULK: i64 = 1 << 32;
/// Largest aggregate length accepted.
const MAX_AGGREGATE: i64 = 1 << 32;

/// A complete top-level value, summarised.
#[derive(Debug, Default)]
pub(crate) struct Value {
    /// The type byte (`*`, `+`, `-`, `$`, `>`...), or 0 for an inline
    /// command.
    pub(crate) kind: u8,
    /// Element count of a top-level aggregate (-1 for a null one).
    pub(crate) len: i64,
    /// Prefixes of the first top-level elements (of a scalar: its text).
    pub(crate) items: Vec<Vec<u8>>,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    /// The value's size on the wire, skipped and uncaptured bytes included.
    pub(crate) wire_len: u64,
}

struct Level {
    remaining: u64,
    /// An attribute map (`|`): metadata before the real value, not an
    /// element of its parent.
    attribute: bool,
}

pub(crate) struct Reader {
    /// Requests may be inline commands (`PING\r\n`).
    inline_allowed: bool,
    max_items: usize,
    item_keep: usize,
    /// The current line (type byte first), prefix kept, and its full length.
    line: Vec<u8>,
    line_len: usize,
    /// The line's last byte so far was a CR.
    line_cr: bool,
    inline: bool,
    /// Bulk payload left (then 2 bytes of CRLF).
    bulk: Option<u64>,
    stack: Vec<Level>,
    value: Option<Value>,
    /// Bytes of the current value read so far.
    consumed: u64,
}

impl Reader {
    pub(crate) fn new(inline_allowed: bool, max_items: usize, item_keep: usize) -> Self {
        Self {
            inline_allowed,
            max_items,
            item_keep,
            line: Vec::new(),
            line_len: 0,
            line_cr: false,
            inline: false,
            bulk: None,
            stack: Vec::new(),
            value: None,
            consumed: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.inline_allowed, self.max_items, self.item_keep);
    }

    pub(crate) fn buffered(&self) -> usize {
        let items = self
            .value
            .as_ref()
            .map_or(0, |v| v.items.iter().map(Vec::len).sum::<usize>());
        self.line.len() + items + self.stack.len() * size_of::<Level>()
    }

    /// Consumes bytes until a top-level value completes (returned) or the
    /// input runs out.
    pub(crate) fn next(
        &mut self,
        input: &mut &[u8],
        ts_ns: u64,
    ) -> Result<Option<Value>, ErrorKind> {
        let before = input.len();
        let value = self.read(input, ts_ns);
        // Everything read belongs to the current value: `read` returns as
        // soon as one completes.
        self.consumed += (before - input.len()) as u64;
        Ok(value?.map(|v| self.sized(v)))
    }

    fn sized(&mut self, mut value: Value) -> Value {
        value.wire_len = std::mem::take(&mut self.consumed);
        value
    }

    fn read(&mut self, input: &mut &[u8], ts_ns: u64) -> Result<Option<Value>, ErrorKind> {
        loop {
            if let Some(left) = self.bulk {
                let take = (left as usize).min(input.len());
                // The payload is `left - 2` bytes, then CRLF.
                let payload = (left.saturating_sub(2) as usize).min(take);
                self.keep_item_bytes(&input[..payload]);
                *input = &input[take..];
                let left = left - take as u64;
                if left > 0 {
                    self.bulk = Some(left);
                    return Ok(None);
                }
                self.bulk = None;
                if self.element_done() {
                    return Ok(self.finish(ts_ns));
                }
                continue;
            }
            if input.is_empty() {
                return Ok(None);
            }
            if self.value.is_none() {
                self.value = Some(Value {
                    start_ns: ts_ns,
                    ..Value::default()
                });
                self.inline = self.inline_allowed && input[0] != b'*';
            }
            let newline = input.iter().position(|&b| b == b'\n');
            let part = &input[..newline.unwrap_or(input.len())];
            let room = self.line_keep().saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.line_len = self.line_len.saturating_add(part.len());
            if let Some(&last) = part.last() {
                self.line_cr = last == b'\r';
            }
            *input = &input[newline.map_or(input.len(), |n| n + 1)..];
            if newline.is_none() {
                if !self.inline && is_length_type(self.line[0]) && self.line_len > MAX_NUMBER_LINE {
                    return Err(ErrorKind::Malformed("length line too long"));
                }
                return Ok(None);
            }
            if self.on_line()? {
                return Ok(self.finish(ts_ns));
            }
        }
    }

    /// `n` bytes were not captured. They can only be skipped inside a bulk
    /// string; returns the value they completed, if any, and whether
    /// framing was lost.
    pub(crate) fn hole(&mut self, n: usize, ts_ns: u64) -> (Option<Value>, bool) {
        let Some(left) = self.bulk else {
            return (None, n > 0);
        };
        let take = (n as u64).min(left);
        self.consumed += take;
        if take < left {
            self.bulk = Some(left - take);
            return (None, false);
        }
        self.bulk = None;
        let value = if self.element_done() {
            self.finish(ts_ns).map(|v| self.sized(v))
        } else {
            None
        };
        (value, take < n as u64)
    }

    fn line_keep(&self) -> usize {
        if self.inline {
            self.item_keep.saturating_mul(self.max_items)
        } else {
            self.item_keep.max(MAX_NUMBER_LINE) + 1
        }
    }

    fn finish(&mut self, ts_ns: u64) -> Option<Value> {
        let mut value = self.value.take()?;
        value.end_ns = ts_ns;
        Some(value)
    }

    /// A complete line is in `line`; true if it completed the value.
    fn on_line(&mut self) -> Result<bool, ErrorKind> {
        let mut line = std::mem::take(&mut self.line);
        let full = self.line_len;
        self.line_len = 0;
        // Inline commands may end with a bare LF; RESP lines need CRLF.
        let cr = std::mem::take(&mut self.line_cr);
        if cr && full == line.len() {
            line.pop();
        }
        if self.inline {
            let (max_items, keep) = (self.max_items, self.item_keep);
            if let Some(value) = &mut self.value {
                value.kind = 0;
                for word in line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                {
                    value.len += 1;
                    if value.items.len() < max_items {
                        value.items.push(word[..word.len().min(keep)].to_vec());
                    }
                }
            }
            return Ok(true);
        }
        if !cr {
            return Err(ErrorKind::Malformed("line without CR"));
        }
        let Some((&kind, text)) = line.split_first() else {
            return Err(ErrorKind::Malformed("empty line"));
        };
        let top = self.stack.is_empty();
        if top
            && kind != b'|'
            && let Some(value) = &mut self.value
        {
            value.kind = kind;
        }
        match kind {
            b'$' | b'=' | b'!' => {
                let n = number(text)?;
                if n == -1 && kind == b'$' {
                    self.push_item(b"");
                    return Ok(self.element_done());
                }
                if !(0..=MAX_BULK).contains(&n) {
                    return Err(ErrorKind::Malformed("bulk length"));
                }
                self.push_item(b"");
                self.bulk = Some(n as u64 + 2);
                Ok(false)
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number(text)?;
                if top && let Some(value) = &mut self.value {
                    value.len = n;
                }
                if n == -1 && kind == b'*' {
                    return Ok(self.element_done());
                }
                if !(0..=MAX_AGGREGATE).contains(&n) {
                    return Err(ErrorKind::Malformed("aggregate length"));
                }
                let count = if matches!(kind, b'%' | b'|') {
                    2 * n
                } else {
                    n
                } as u64;
                if count == 0 {
                    return Ok(kind != b'|' && self.element_done());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ErrorKind::Malformed("nesting too deep"));
                }
                self.stack.push(Level {
                    remaining: count,
                    attribute: kind == b'|',
                });
                Ok(false)
            }
            b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => {
                self.push_item(text);
                Ok(self.element_done())
            }
            b'?' | b';' | b'.' => Err(ErrorKind::Malformed("streamed RESP3 types")),
            _ => Err(ErrorKind::Malformed("unknown RESP type")),
        }
    }

    /// Whether elements at the current position are kept: top-level
    /// scalars and the scalars directly inside a top-level aggregate.
    fn collecting(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [level] => !level.attribute,
            _ => false,
        }
    }

    fn push_item(&mut self, text: &[u8]) {
        if !self.collecting() {
            return;
        }
        let (max_items, keep) = (self.max_items, self.item_keep);
        if let Some(value) = &mut self.value
            && value.items.len() < max_items
        {
            value.items.push(text[..text.len().min(keep)].to_vec());
        }
    }

    fn keep_item_bytes(&mut self, bytes: &[u8]) {
        if !self.collecting() {
            return;
        }
        let keep = self.item_keep;
        if let Some(item) = self.value.as_mut().and_then(|v| v.items.last_mut()) {
            let room = keep.saturating_sub(item.len()).min(bytes.len());
            item.extend_from_slice(&bytes[..room]);
        }
    }

    /// An element completed at the current level; true if that completed
    /// the top-level value.
    fn element_done(&mut self) -> bool {
        loop {
            let Some(level) = self.stack.last_mut() else {
                return true;
            };
            level.remaining -= 1;
            if level.remaining > 0 {
                return false;
            }
            let attribute = level.attribute;
            self.stack.pop();
            if attribute {
                // Metadata done; the value it annotates follows.
                return false;
            }
        }
    }
}

fn is_length_type(kind: u8) -> bool {
    matches!(kind, b'$' | b'=' | b'!' | b'*' | b'~' | b'>' | b'%' | b'|')
}

fn number(text: &[u8]) -> Result<i64, ErrorKind> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ErrorKind::Malformed("length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Result<Vec<Value>, ErrorKind> {
        let mut reader = Reader::new(false, 4, 8);
        let mut input = bytes;
        let mut values = Vec::new();
        while let Some(v) = reader.next(&mut input, 1)? {
            values.push(v);
        }
        assert!(input.is_empty());
        Ok(values)
    }

    #[test]
    fn nested_and_resp3_values() {
        let values = read_all(
            b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n%1\r\n+k\r\n~2\r\n#t\r\n,1.5\r\n|1\r\n+ttl\r\n:3\r\n$-1\r\n_\r\n=8\r\ntxt:abcd\r\n",
        )
        .unwrap();
        let kinds: Vec<u8> = values.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, b"*%$_=");
        assert_eq!(values[0].items, vec![b"abc".to_vec()]);
        assert_eq!(values[4].items, vec![b"txt:abcd".to_vec()]);
        let sizes: Vec<u64> = values.iter().map(|v| v.wire_len).collect();
        assert_eq!(sizes, [21, 22, 19, 3, 14]);
    }

    #[test]
    fn hostile_values() {
        assert!(read_all(b"$-2\r\n").is_err());
        assert!(read_all(b"*-5\r\n").is_err());
        assert!(read_all(b"$99999999999999999999\r\n").is_err());
        assert!(read_all(b"$?\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(read_all(deep.as_bytes()).is_err());
        assert!(
            read_all(b"*1\r\n$4294967296\r\n").is_ok(),
            "big lengths are counted, not stored"
        );
        let mut reader = Reader::new(false, 4, 8);
        let mut input: &[u8] =
            b"+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert!(reader.next(&mut input, 1).unwrap().is_none());
        assert!(reader.buffered() <= MAX_NUMBER_LINE + 1);
    }
}
