//! HPACK header block decoding (RFC 7541), bounded for hostile peers.
//!
//! One [`Decoder`] per direction of an HTTP/2 connection keeps the dynamic
//! table (§2.3.2, §4) in step with the peer's encoder. Its size is bounded
//! by the protocol (the size updates the peer sends, at most what the
//! decoding side allowed in SETTINGS) and by `Limits::max_hpack_table`:
//! a size update beyond that is refused rather than tracked.
//!
//! A decoder that did not see the connection from its start (or lost
//! bytes) is *incomplete*: it does not know the entries inserted before.
//! Entries it saw inserted are still at the right indices (new entries go
//! to the front), so it decodes what it can, and a reference past them
//! makes the block *unknown* instead of an error: the caller then drops
//! what the block said rather than report a wrong header.

use std::collections::VecDeque;

use crate::huffman;

/// RFC 7541 §4.1: an entry's size is its name and value lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Appendix A: the static table (index 1 to 61).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// The block breaks RFC 7541 (a COMPRESSION_ERROR for the connection).
    Malformed(&'static str),
    /// A table size beyond `max_hpack_table` was asked for.
    TableTooLarge(usize),
}

/// What a block decoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Every field was known and handed to the callback.
    Complete,
    /// Some field referred to an entry inserted before this decoder started
    /// tracking the table: the fields handed over are not the whole block.
    Unknown,
}

#[derive(Debug)]
struct Entry {
    /// `None` when the name came from an unknown entry.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD + self.name.as_ref().map_or(0, |n| n.len()) + self.value.len()
    }
}

#[derive(Debug)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    /// The table's current maximum size (last size update, §4.2).
    max_size: usize,
    /// The largest maximum the decoding endpoint allowed in SETTINGS.
    allowed: usize,
    /// `Limits::max_hpack_table`.
    limit: usize,
    /// Whether every insertion since the connection started was seen.
    complete: bool,
    /// Scratch for decoded values.
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder from the start of a connection.
    pub fn new(limit: usize) -> Self {
        let max = DEFAULT_TABLE_SIZE.min(limit);
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: max,
            allowed: DEFAULT_TABLE_SIZE,
            limit,
            complete: true,
            value_buf: Vec::new(),
        }
    }

    /// A decoder joining a connection whose earlier insertions it missed:
    /// it keeps as much as the limit allows, since evicting an entry the
    /// peer still references would turn a known field into a wrong one.
    pub fn joined(limit: usize) -> Self {
        Decoder {
            max_size: limit,
            allowed: limit,
            complete: false,
            ..Decoder::new(limit)
        }
    }

    /// Bytes of header data the table holds (its RFC 7541 size).
    pub fn table_size(&self) -> usize {
        self.size
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The decoding endpoint sent SETTINGS_HEADER_TABLE_SIZE (RFC 9113
    /// §6.5.2). The peer may then announce up to that size; since SETTINGS
    /// take effect when acknowledged, the largest value seen is allowed.
    pub fn allow_max_size(&mut self, size: usize) {
        self.allowed = self.allowed.max(size);
    }

    /// The connection turned out to have been joined after its start: the
    /// entries seen are right, but older ones may be referenced.
    pub fn mark_joined(&mut self) {
        self.complete = false;
        self.allowed = self.limit;
    }

    /// Bytes were lost: earlier insertions can no longer be trusted.
    pub fn lose_sync(&mut self) {
        *self = Decoder::joined(self.limit);
    }

    /// Decodes one complete header block, calling `field(name, value)` for
    /// each field whose name and value are known.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<Block, HpackError> {
        let mut result = Block::Complete;
        let mut at_start = true;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                let index = integer(&mut block, 7)?;
                match self.lookup(index)? {
                    Some((Some(name), value)) => field(name, value),
                    _ => result = Block::Unknown,
                }
            } else if first & 0xe0 == 0x20 {
                // §6.3 Dynamic Table Size Update: only at a block's start
                // (§4.2).
                if !at_start {
                    return Err(HpackError::Malformed("table size update after a field"));
                }
                let size = integer(&mut block, 5)?;
                self.resize(size)?;
                continue;
            } else {
                // §6.2: with incremental indexing (01), without (0000),
                // never indexed (0001).
                let (prefix, index_it) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = integer(&mut block, prefix)?;
                let name = if index == 0 {
                    let mut name = Vec::new();
                    string(&mut block, &mut name)?;
                    Some(name)
                } else {
                    self.lookup(index)?
                        .and_then(|(name, _)| name.map(<[u8]>::to_vec))
                };
                let mut value = std::mem::take(&mut self.value_buf);
                string(&mut block, &mut value)?;
                match &name {
                    Some(name) => field(name, &value),
                    None => result = Block::Unknown,
                }
                if index_it {
                    let entry = Entry {
                        name: name.map(Vec::into_boxed_slice),
                        value: value.as_slice().into(),
                    };
                    self.insert(entry);
                }
                // Keep the scratch allocation, bounded by the largest
                // string of a block (itself bounded by the caller).
                self.value_buf = value;
            }
            at_start = false;
        }
        Ok(result)
    }

    /// §2.3.3: 1–61 static, 62… dynamic (newest first). `None` for a
    /// dynamic entry this (incomplete) decoder never saw.
    #[allow(clippy::type_complexity)]
    fn lookup(&self, index: usize) -> Result<Option<(Option<&[u8]>, &[u8])>, HpackError> {
        if index == 0 {
            return Err(HpackError::Malformed("index 0"));
        }
        if let Some((name, value)) = STATIC.get(index - 1) {
            return Ok(Some((Some(name.as_bytes()), value.as_bytes())));
        }
        match self.table.get(index - STATIC.len() - 1) {
            Some(entry) => Ok(Some((entry.name.as_deref(), &entry.value))),
            None if self.complete => Err(HpackError::Malformed("index out of range")),
            None => Ok(None),
        }
    }

    fn resize(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.limit {
            return Err(HpackError::TableTooLarge(self.limit));
        }
        if self.complete && size > self.allowed {
            return Err(HpackError::Malformed("table size update above SETTINGS"));
        }
        self.max_size = size;
        self.evict(0);
        Ok(())
    }

    /// §4.4: evict from the end until the new entry fits; an entry larger
    /// than the table empties it and is not inserted.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Evicts until `room` more bytes fit under the maximum size.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
    }
}

/// §5.1 prefix integer. Values above 2^28 are refused: nothing in a
/// bounded decoder needs more, and it stops shift overflows.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block
        .split_first()
        .ok_or(HpackError::Malformed("truncated integer"))?;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&b, tail) = rest
                .split_first()
                .ok_or(HpackError::Malformed("truncated integer"))?;
            rest = tail;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return Err(HpackError::Malformed("integer too large"));
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// §5.2 string literal, copied (Huffman-decoded when flagged) into `out`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Malformed("string longer than the block"));
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    out.clear();
    if huffman {
        huffman::decode(raw, out).map_err(|_| HpackError::Malformed("bad Huffman string"))?;
    } else {
        out.extend_from_slice(raw);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
