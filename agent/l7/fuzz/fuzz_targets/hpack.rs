#![no_main]
//! The `hpack` target; its body and what it checks: `weft_l7::fuzzing::hpack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::hpack(data));
