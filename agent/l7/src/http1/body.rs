//! Skipping HTTP/1.x message bodies (RFC 9112 §6–§7) without storing them:
//! weft reports no bodies, so a body is only counted through to its end.

use crate::ErrorKind;

/// Longest chunk-size line (with extensions) accepted (RFC 9112 §7.1.1
/// sets no limit; servers commonly allow a few KiB).
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Bytes still to skip.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line: the size so far, its digit count, whether an
    /// extension (or whitespace) started, the line's length.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
        line: usize,
    },
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data: the CRLF.
    DataEnd,
    /// In the trailer section: current line length, total length.
    Trailer { line: usize, total: usize },
}

impl Chunked {
    pub const START: Chunked = Chunked::Size {
        size: 0,
        digits: 0,
        ext: false,
        line: 0,
    };
}

impl Body {
    /// Consumes body bytes from `data`: how many were the body's, and
    /// whether the body ended.
    pub fn consume(&mut self, data: &[u8], max_message: usize) -> Result<(usize, bool), ErrorKind> {
        match self {
            Body::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            Body::UntilClose => Ok((data.len(), false)),
            Body::Chunked(state) => {
                let mut used = 0;
                while used < data.len() {
                    if let Chunked::Data(left) = state {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(data.len() - used);
                        *left -= n as u64;
                        used += n;
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        continue;
                    }
                    let byte = data[used];
                    used += 1;
                    if step(state, byte, max_message)? {
                        return Ok((used, true));
                    }
                }
                Ok((used, false))
            }
        }
    }

    /// `n` bytes of the body were not captured. Returns whether they fit in
    /// what is left of the body (and whether that ended it); `None` when
    /// the lost bytes cross framing the parser needed to see.
    pub fn absorb(&mut self, n: usize) -> Option<bool> {
        match self {
            Body::Length(left) if n as u64 <= *left => {
                *left -= n as u64;
                Some(*left == 0)
            }
            Body::Chunked(Chunked::Data(left)) if (n as u64) < *left => {
                *left -= n as u64;
                Some(false)
            }
            Body::UntilClose => Some(false),
            _ => None,
        }
    }
}

/// One byte of chunked framing outside chunk data; `true` at the end of the
/// body (the empty line closing the trailer section).
fn step(state: &mut Chunked, byte: u8, max_message: usize) -> Result<bool, ErrorKind> {
    match state {
        Chunked::Size {
            size,
            digits,
            ext,
            line,
        } => {
            *line += 1;
            if *line > MAX_CHUNK_LINE {
                return Err(ErrorKind::TooLarge(MAX_CHUNK_LINE));
            }
            match byte {
                b'\n' if *digits == 0 => return Err(ErrorKind::Malformed("empty chunk size")),
                b'\n' if *size == 0 => *state = Chunked::Trailer { line: 0, total: 0 },
                b'\n' => *state = Chunked::Data(*size),
                b'\r' => {}
                _ if *ext => {}
                b';' | b' ' | b'\t' if *digits > 0 => *ext = true,
                _ => {
                    let digit = (byte as char)
                        .to_digit(16)
                        .ok_or(ErrorKind::Malformed("bad chunk size"))?;
                    // 16 hex digits fill a u64; more is an overflow attack.
                    *digits += 1;
                    if *digits > 16 {
                        return Err(ErrorKind::Malformed("chunk size overflow"));
                    }
                    *size = (*size << 4) | u64::from(digit);
                }
            }
        }
        // `consume` skips chunk data itself and never calls `step` there.
        Chunked::Data(_) => {}
        Chunked::DataEnd => match byte {
            b'\r' => {}
            b'\n' => *state = Chunked::START,
            _ => return Err(ErrorKind::Malformed("chunk data not followed by CRLF")),
        },
        Chunked::Trailer { line, total } => {
            *total += 1;
            if *total > max_message {
                return Err(ErrorKind::TooLarge(max_message));
            }
            match byte {
                b'\n' if *line == 0 => return Ok(true),
                b'\n' => *line = 0,
                b'\r' => {}
                _ => *line += 1,
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &[u8]) -> Result<(usize, bool), ErrorKind> {
        Body::Chunked(Chunked::START).consume(body, 1024)
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(run(body), Ok((body.len() - 4, true)));
        assert_eq!(run(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(run(b"A\n0123456789\n0\n\n"), Ok((16, true)));
        assert_eq!(run(b"5\r\nhel"), Ok((6, false)));
    }

    #[test]
    fn bad_chunk_sizes() {
        assert!(run(b"zz\r\n").is_err());
        assert!(run(b"\r\n").is_err());
        assert!(run(b"11111111111111111\r\n").is_err());
        assert!(run(b"5\r\nhelloXX").is_err());
        assert!(run(&[b'1'; 5000]).is_err());
        let mut trailer = b"0\r\n".to_vec();
        trailer.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(run(&trailer), Err(ErrorKind::TooLarge(1024)));
    }

    #[test]
    fn lengths_and_lost_bytes() {
        let mut b = Body::Length(u64::MAX);
        assert_eq!(b.consume(b"abc", 10), Ok((3, false)));
        assert_eq!(b.absorb(10), Some(false));
        let mut b = Body::Length(4);
        assert_eq!(b.absorb(4), Some(true));
        let mut b = Body::Length(4);
        assert_eq!(b.absorb(5), None);
        let mut b = Body::Chunked(Chunked::Data(10));
        assert_eq!(b.absorb(9), Some(false));
        assert_eq!(b.absorb(1), None);
    }
}
