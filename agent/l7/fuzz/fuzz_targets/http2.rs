#![no_main]
//! http2: arbitrary conversations (with or without the client preface) must
//! not panic or buffer beyond the limits: per direction one frame payload
//! and one header block of at most `max_message`, HPACK tables within
//! `max_hpack_table`.

use libfuzzer_sys::fuzz_target;
use weft_l7::http2::Http2Session;
use weft_l7::{Limits, Privacy};

#[path = "chunks.rs"]
mod chunks;

const LIMITS: Limits = Limits { max_message: 1024, max_pending: 8, max_field: 64, max_hpack_table: 1024 };

fn buffered(s: &Http2Session) -> usize {
    let tables = s.hpack_table_sizes();
    assert!(tables.iter().all(|&t| t <= LIMITS.max_hpack_table), "tables {tables:?}");
    s.buffered()
}

fuzz_target!(|data: &[u8]| {
    let session = Http2Session::new(LIMITS, &Privacy::default());
    chunks::run(data, session, buffered, 4 * LIMITS.max_message);
});
