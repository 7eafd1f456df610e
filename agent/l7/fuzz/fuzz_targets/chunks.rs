//! Turns fuzzer bytes into a conversation: each chunk is a control byte
//! (bit 0: direction; bits 1-2: none / a capture cut after the chunk / lost
//! bytes before it; the next byte sizes the cut or loss), a length byte
//! and that many bytes. Runs them through a session and checks what every
//! parser promises: no panic, bounded buffering, no negative latency.

use weft_l7::{Chunk, Direction, Session};

pub fn run<S: Session>(data: &[u8], mut session: S, buffered: fn(&S) -> usize, bound: usize) {
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts_ns = 0;
    while let [ctrl, extra, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, after) = tail.split_at(n);
        rest = after;
        ts_ns += 1;
        let direction = if ctrl & 1 == 0 { Direction::ToServer } else { Direction::ToClient };
        let (truncated, gap_before) = match (ctrl >> 1) & 3 {
            1 => (usize::from(*extra) * 64, 0),
            2 => (0, usize::from(*extra)),
            _ => (0, 0),
        };
        let chunk = Chunk { direction, data: bytes, truncated, gap_before, ts_ns };
        let result = session.feed(&chunk, &mut out);
        assert!(buffered(&session) <= bound, "buffered {} > {bound}", buffered(&session));
        if result.is_err() {
            break;
        }
    }
    session.close(ts_ns + 1, &mut out);
    for e in &out {
        assert!(e.response_ns >= e.request_ns);
        assert!(e.answered || e.response_bytes == 0, "unanswered with a response size");
    }
}
