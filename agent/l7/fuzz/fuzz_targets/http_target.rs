#![no_main]
//! The `http_target` target; its body and what it checks: `weft_l7::fuzzing::http_target`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::http_target(data));
