#![no_main]
//! hpack: arbitrary header blocks, with the dynamic table carried from one
//! block to the next, must not panic and must keep the table within its
//! limit. The first byte splits the input into blocks.

use libfuzzer_sys::fuzz_target;
use weft_l7::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut decoder = if split & 1 == 0 { Decoder::new(1024) } else { Decoder::joined(1024) };
    decoder.allow_max_size(usize::from(split) * 64);
    for block in rest.chunks(usize::from(split.max(1))) {
        if decoder.decode(block, &mut |_, _| {}).is_err() {
            break;
        }
        assert!(decoder.table_size() <= 1024);
    }
});
