#![no_main]
//! redis: arbitrary conversations must not panic or buffer beyond the limits.

use libfuzzer_sys::fuzz_target;
#[allow(unused_imports)]
use weft_l7::{Limits, Privacy, Transport};

#[path = "chunks.rs"]
mod chunks;

fuzz_target!(|data: &[u8]| {
    // Small limits make the bounds bite on small inputs.
    let limits = Limits { max_message: 512, max_pending: 8, max_field: 64, ..Limits::default() };
    let session = weft_l7::redis::RedisSession::new(limits, &Privacy::default());
    chunks::run(data, session, weft_l7::redis::RedisSession::buffered, 18 * limits.max_field + 64 + 1024);
});
