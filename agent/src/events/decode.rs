//! Decoding of ring buffer records.

use weft_common::event::TcpEvent;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ring buffer record of {got} bytes, expected {expected}")]
pub struct DecodeError {
    pub got: usize,
    pub expected: usize,
}

/// A record as a `TcpEvent`. The ring buffer gives no alignment guarantee
/// for our type, so the bytes are read unaligned after a length check.
pub fn tcp_event(bytes: &[u8]) -> Result<TcpEvent, DecodeError> {
    let expected = std::mem::size_of::<TcpEvent>();
    if bytes.len() < expected {
        return Err(DecodeError {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked and TcpEvent is plain old data (every
    // bit pattern is valid).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TcpEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let mut ev = TcpEvent {
            kind: 2,
            sk: 0xdead_beef,
            ..TcpEvent::default()
        };
        ev.conn.bytes_sent = 1_000_000;
        // SAFETY: viewing a POD value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const ev).cast::<u8>(),
                std::mem::size_of::<TcpEvent>(),
            )
        };
        // Unaligned: copy behind one byte of offset.
        let mut buf = vec![0u8; bytes.len() + 1];
        buf[1..].copy_from_slice(bytes);
        assert_eq!(tcp_event(&buf[1..]).unwrap(), ev);
        assert_eq!(
            tcp_event(&bytes[..10]).unwrap_err(),
            DecodeError {
                got: 10,
                expected: bytes.len()
            }
        );
    }
}
