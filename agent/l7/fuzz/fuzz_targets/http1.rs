#![no_main]
//! http1: arbitrary conversations must not panic or buffer beyond the limits
//! (one head per direction, at most `max_message` each).

use libfuzzer_sys::fuzz_target;
use weft_l7::{Limits, Privacy};

#[path = "chunks.rs"]
mod chunks;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message: 512, max_pending: 8, max_field: 64, ..Limits::default() };
    let session = weft_l7::http1::Http1Session::new(limits, &Privacy::default());
    chunks::run(data, session, weft_l7::http1::Http1Session::buffered, 2 * limits.max_message);
});
