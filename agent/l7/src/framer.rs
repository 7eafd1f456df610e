//! Length-prefixed message framing shared by Postgres (type + 4-byte
//! length), MySQL (3-byte length + sequence id) and DNS over TCP (2-byte
//! length).
//!
//! The framer never holds a whole message: it keeps the header (a few
//! bytes) and the first `keep` bytes of the body that the session asked
//! for, and counts the rest down. So a 1 GB result row costs nothing, and a
//! body cut short by the capture (`Chunk::truncated`) still yields its
//! prefix, marked `cut`.

use crate::ErrorKind;

pub(crate) const MAX_HEADER: usize = 5;

/// A complete message: header, the kept prefix of its body, and when its
/// first and last bytes were seen.
#[derive(Debug)]
pub(crate) struct Frame {
    header: [u8; MAX_HEADER],
    header_len: usize,
    pub(crate) body: Vec<u8>,
    /// Announced body length.
    pub(crate) body_len: usize,
    /// Some of the kept prefix was not captured.
    pub(crate) cut: bool,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

impl Frame {
    pub(crate) fn header(&self) -> &[u8] {
        &self.header[..self.header_len]
    }

    /// The frame's size on the wire: header and announced body, however
    /// much of the body was kept or captured.
    pub(crate) fn wire_len(&self) -> u64 {
        (self.header_len + self.body_len) as u64
    }
}

/// How a session wants the next frame read: header size, and from the
/// header the body length and how much of the body to keep.
pub(crate) trait Layout {
    fn header_len(&self) -> usize;
    fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind>;
}

#[derive(Default)]
pub(crate) struct Framer {
    header: [u8; MAX_HEADER],
    have: usize,
    /// Once the header is complete: (body length, keep) and the progress.
    body: Option<Body>,
    start_ns: u64,
}

struct Body {
    len: usize,
    keep: usize,
    seen: usize,
    kept: Vec<u8>,
    cut: bool,
}

impl Framer {
    /// Bytes held (header and kept body prefix).
    pub(crate) fn buffered(&self) -> usize {
        self.have + self.body.as_ref().map_or(0, |b| b.kept.len())
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Consumes bytes from `input` until one frame completes (returned) or
    /// the input runs out (`None`, everything consumed and remembered).
    pub(crate) fn next(
        &mut self,
        input: &mut &[u8],
        ts_ns: u64,
        layout: &impl Layout,
    ) -> Result<Option<Frame>, ErrorKind> {
        loop {
            if let Some(body) = &mut self.body {
                let take = (body.len - body.seen).min(input.len());
                let keep_room = body.keep.saturating_sub(body.kept.len()).min(take);
                body.kept.extend_from_slice(&input[..keep_room]);
                body.seen += take;
                *input = &input[take..];
                if body.seen == body.len {
                    return Ok(Some(self.finish(ts_ns)));
                }
                return Ok(None);
            }
            if input.is_empty() {
                return Ok(None);
            }
            if self.have == 0 {
                self.start_ns = ts_ns;
            }
            let want = layout.header_len().clamp(1, MAX_HEADER);
            if self.have >= want {
                // The session changed the layout in the middle of a header.
                return Err(ErrorKind::Malformed("framing changed mid-header"));
            }
            let take = (want - self.have).min(input.len());
            self.header[self.have..self.have + take].copy_from_slice(&input[..take]);
            self.have += take;
            *input = &input[take..];
            if self.have < want {
                return Ok(None);
            }
            let (len, keep) = layout.body(&self.header[..want])?;
            self.body = Some(Body {
                len,
                keep: keep.min(len),
                seen: 0,
                // Grown as bytes arrive: a header may lie about the length.
                kept: Vec::new(),
                cut: false,
            });
        }
    }

    /// `n` bytes were not captured. Returns the frame they completed, if
    /// any, and whether bytes beyond the current frame were lost (the
    /// framing is then unknown until the session resynchronises).
    pub(crate) fn hole(&mut self, n: usize, ts_ns: u64) -> (Option<Frame>, bool) {
        if n == 0 {
            return (None, false);
        }
        let Some(body) = &mut self.body else {
            return (None, true);
        };
        let take = (body.len - body.seen).min(n);
        if body.kept.len() < body.keep {
            body.cut = true;
        }
        body.seen += take;
        if body.seen < body.len {
            return (None, false);
        }
        (Some(self.finish(ts_ns)), take < n)
    }

    fn finish(&mut self, ts_ns: u64) -> Frame {
        let header_len = self.have;
        self.have = 0;
        let body = self.body.take();
        let (kept, len, cut) = body.map_or((Vec::new(), 0, false), |b| (b.kept, b.len, b.cut));
        Frame {
            header: self.header,
            header_len,
            body: kept,
            body_len: len,
            cut,
            start_ns: self.start_ns,
            end_ns: ts_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1-byte length, keep 2.
    struct Tiny;
    impl Layout for Tiny {
        fn header_len(&self) -> usize {
            1
        }
        fn body(&self, header: &[u8]) -> Result<(usize, usize), ErrorKind> {
            Ok((usize::from(header[0]), 2))
        }
    }

    #[test]
    fn keeps_a_prefix_and_skips_the_rest() {
        let mut framer = Framer::default();
        let mut input: &[u8] = b"\x04abcd\x00\x01z";
        let frame = framer.next(&mut input, 1, &Tiny).unwrap().unwrap();
        assert_eq!((frame.body.as_slice(), frame.body_len), (&b"ab"[..], 4));
        assert_eq!(frame.wire_len(), 5);
        let empty = framer.next(&mut input, 2, &Tiny).unwrap().unwrap();
        assert_eq!(empty.body_len, 0);
        let last = framer.next(&mut input, 3, &Tiny).unwrap().unwrap();
        assert_eq!(last.body, b"z");
        assert!(framer.next(&mut input, 4, &Tiny).unwrap().is_none());
    }

    #[test]
    fn holes_inside_a_body_cut_it_and_beyond_it_lose_sync() {
        let mut framer = Framer::default();
        let mut input: &[u8] = b"\x05a";
        assert!(framer.next(&mut input, 1, &Tiny).unwrap().is_none());
        let (frame, lost) = framer.hole(6, 2);
        let frame = frame.unwrap();
        assert!(frame.cut && lost);
        assert_eq!(frame.body, b"a");
        assert_eq!(frame.wire_len(), 6, "cut bytes are counted");
        assert!(framer.hole(1, 3).1, "a hole between frames loses sync");
    }
}
