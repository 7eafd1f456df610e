//! Incremental HTTP/2 frame reading for one direction (RFC 9113 §3.4, §4).
//!
//! Payloads the session needs (header blocks, SETTINGS, RST_STREAM, the
//! start of GOAWAY) are buffered up to a bound; everything else (DATA
//! above all) is only counted through.

use crate::ErrorKind;

/// RFC 9113 §3.4: the client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE's initial value (§6.5.2).
pub const DEFAULT_MAX_FRAME: u32 = 1 << 14;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Header {
    pub fn parse(b: &[u8; 9]) -> Header {
        Header {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // §4.1: the reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// How many payload bytes the session needs.
    fn keep(&self) -> usize {
        match self.kind {
            HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM => self.len as usize,
            // Last-Stream-ID and error code; the debug data is skipped.
            GOAWAY => (self.len as usize).min(8),
            _ => 0,
        }
    }

    /// The §6 rules on stream ids and fixed lengths, used both to reject
    /// garbage in a synchronised direction and to find a frame boundary
    /// again after lost bytes.
    pub fn check(&self, max_frame: u32) -> Result<(), &'static str> {
        if self.len > max_frame {
            return Err("frame larger than SETTINGS_MAX_FRAME_SIZE");
        }
        let on_connection = matches!(self.kind, SETTINGS | PING | GOAWAY);
        let on_stream = matches!(
            self.kind,
            DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION
        );
        if (on_connection && self.stream != 0) || (on_stream && self.stream == 0) {
            return Err("frame on the wrong stream");
        }
        let fixed = match self.kind {
            PRIORITY => Some(5),
            RST_STREAM | WINDOW_UPDATE => Some(4),
            PING => Some(8),
            _ => None,
        };
        if fixed.is_some_and(|n| n != self.len)
            || (self.kind == SETTINGS && !self.len.is_multiple_of(6))
            || (self.kind == SETTINGS && self.flags & ACK != 0 && self.len != 0)
            || (self.kind == GOAWAY && self.len < 8)
        {
            return Err("bad frame length");
        }
        Ok(())
    }
}

/// A frame read completely: its header, the payload bytes kept, and the
/// timestamps of the chunks holding its first and last bytes.
#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Frame {
    /// The frame's size on the wire: its 9-byte header and whole payload
    /// (skipped or uncaptured bytes included).
    pub fn wire_len(&self) -> u64 {
        9 + u64::from(self.header.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the client preface (bytes matched so far).
    Preface(usize),
    /// Reading a frame header (bytes read so far).
    Header(usize),
    /// Reading a payload: bytes left.
    Payload(usize),
    /// Bytes were lost: waiting for a chunk that starts with a plausible
    /// frame header.
    Lost,
}

#[derive(Debug)]
pub struct Reader {
    state: State,
    header_bytes: [u8; 9],
    header: Header,
    payload: Vec<u8>,
    start_ns: u64,
    /// Largest payload buffered (`Limits::max_message`).
    max_keep: usize,
    /// SETTINGS_MAX_FRAME_SIZE of the receiving side.
    pub max_frame: u32,
}

impl Reader {
    pub fn new(max_keep: usize, expect_preface: bool) -> Self {
        Reader {
            state: if expect_preface {
                State::Preface(0)
            } else {
                State::Header(0)
            },
            header_bytes: [0; 9],
            header: Header {
                len: 0,
                kind: 0,
                flags: 0,
                stream: 0,
            },
            payload: Vec::new(),
            start_ns: 0,
            max_keep,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// A reader for a connection joined mid-stream.
    pub fn lost(max_keep: usize) -> Self {
        Reader {
            state: State::Lost,
            ..Reader::new(max_keep, false)
        }
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Bytes held (a payload being buffered).
    pub fn buffered(&self) -> usize {
        self.payload.len()
    }

    /// Called at the start of each chunk: a lost reader resumes if the
    /// chunk starts with a plausible frame (writes usually start on frame
    /// boundaries).
    pub fn at_chunk_start(&mut self, data: &[u8]) {
        if self.state != State::Lost {
            return;
        }
        let Some(bytes) = data.get(..9) else { return };
        let mut b = [0u8; 9];
        b.copy_from_slice(bytes);
        let h = Header::parse(&b);
        if h.kind <= CONTINUATION && h.check(DEFAULT_MAX_FRAME).is_ok() {
            self.state = State::Header(0);
        }
    }

    /// Reads from `data` until one frame is complete (returned) or `data`
    /// is used up (`None`). `Err` when the bytes are not HTTP/2.
    pub fn next(&mut self, data: &mut &[u8], ts_ns: u64) -> Result<Option<Frame>, ErrorKind> {
        loop {
            match self.state {
                State::Lost => {
                    *data = &[];
                    return Ok(None);
                }
                State::Preface(n) => {
                    let take = (PREFACE.len() - n).min(data.len());
                    if data[..take] != PREFACE[n..n + take] {
                        // No preface at all: the connection was joined
                        // after it. A preface broken halfway is garbage.
                        self.state = State::Lost;
                        return Err(if n == 0 {
                            ErrorKind::Desync
                        } else {
                            ErrorKind::Malformed("bad connection preface")
                        });
                    }
                    *data = &data[take..];
                    if n + take < PREFACE.len() {
                        self.state = State::Preface(n + take);
                        return Ok(None);
                    }
                    self.state = State::Header(0);
                }
                State::Header(n) => {
                    if data.is_empty() {
                        return Ok(None);
                    }
                    if n == 0 {
                        self.start_ns = ts_ns;
                    }
                    let take = (9 - n).min(data.len());
                    self.header_bytes[n..n + take].copy_from_slice(&data[..take]);
                    *data = &data[take..];
                    if n + take < 9 {
                        self.state = State::Header(n + take);
                        return Ok(None);
                    }
                    let h = Header::parse(&self.header_bytes);
                    h.check(self.max_frame).map_err(ErrorKind::Malformed)?;
                    if h.keep() > self.max_keep {
                        return Err(ErrorKind::TooLarge(self.max_keep));
                    }
                    self.header = h;
                    self.payload.clear();
                    self.state = State::Payload(h.len as usize);
                }
                State::Payload(left) => {
                    let take = left.min(data.len());
                    let kept = self.payload.len();
                    let keep_more = self.header.keep().saturating_sub(kept).min(take);
                    self.payload.extend_from_slice(&data[..keep_more]);
                    *data = &data[take..];
                    if left > take {
                        self.state = State::Payload(left - take);
                        return Ok(None);
                    }
                    return Ok(Some(self.finish(ts_ns)));
                }
            }
        }
    }

    fn finish(&mut self, ts_ns: u64) -> Frame {
        self.state = State::Header(0);
        Frame {
            header: self.header,
            payload: std::mem::take(&mut self.payload),
            start_ns: self.start_ns,
            end_ns: ts_ns,
        }
    }

    /// `n` bytes were not captured. Inside a skipped payload they are
    /// absorbed (and may complete the frame); elsewhere the reader is lost.
    /// Returns the completed frame, and whether sync was lost.
    pub fn lose(&mut self, n: usize, ts_ns: u64) -> (Option<Frame>, bool) {
        match self.state {
            State::Payload(left) if self.header.keep() <= self.payload.len() && n <= left => {
                if n == left {
                    (Some(self.finish(ts_ns)), false)
                } else {
                    self.state = State::Payload(left - n);
                    (None, false)
                }
            }
            State::Lost => (None, false),
            _ => {
                self.state = State::Lost;
                self.payload.clear();
                (None, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len as usize));
        f
    }

    #[test]
    fn frames_are_checked() {
        let bad = [
            frame(4, SETTINGS, 0, 0),
            frame(6, SETTINGS, 0, 1),
            frame(6, SETTINGS, ACK, 0),
            frame(0, HEADERS, 0, 0),
            frame(7, PING, 0, 0),
            frame(4, GOAWAY, 0, 0),
            frame(DEFAULT_MAX_FRAME + 1, DATA, 0, 1),
        ];
        for f in bad {
            let mut r = Reader::new(1024, false);
            let mut data = f.as_slice();
            assert!(r.next(&mut data, 1).is_err(), "{:?}", &f[..9]);
        }
    }

    #[test]
    fn data_is_skipped_and_header_blocks_bounded() {
        let mut r = Reader::new(100, false);
        let f = frame(10_000, DATA, END_STREAM, 1);
        let mut data = f.as_slice();
        let got = r.next(&mut data, 7).unwrap().unwrap();
        assert_eq!(
            (got.header.len, got.payload.len(), got.end_ns),
            (10_000, 0, 7)
        );
        let f = frame(101, HEADERS, 0, 1);
        let mut data = f.as_slice();
        assert_eq!(r.next(&mut data, 8).unwrap_err(), ErrorKind::TooLarge(100));
    }

    #[test]
    fn lost_bytes() {
        let mut r = Reader::new(100, false);
        let f = frame(10, DATA, 0, 1);
        let mut data = &f[..12];
        assert!(r.next(&mut data, 1).unwrap().is_none());
        assert!(matches!(r.lose(7, 2), (Some(_), false)));
        let f = frame(10, HEADERS, 0, 1);
        let mut data = &f[..12];
        assert!(r.next(&mut data, 3).unwrap().is_none());
        assert!(matches!(r.lose(1, 4), (None, true)));
        assert!(r.is_lost());
        // Resumes at a chunk that starts with a plausible frame.
        r.at_chunk_start(b"garbage!!!!");
        assert!(r.is_lost());
        let ping = frame(8, PING, 0, 0);
        r.at_chunk_start(&ping);
        let mut data = ping.as_slice();
        assert_eq!(r.next(&mut data, 5).unwrap().unwrap().header.kind, PING);
    }
}
