#![no_main]
//! The `http2` target; its body and what it checks: `weft_l7::fuzzing::http2`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::http2(data));
