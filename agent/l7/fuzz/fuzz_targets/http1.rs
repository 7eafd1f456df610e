#![no_main]
//! The `http1` target; its body and what it checks: `weft_l7::fuzzing::http1`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::http1(data));
