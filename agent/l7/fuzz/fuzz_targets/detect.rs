#![no_main]
//! The `detect` target; its body and what it checks: `weft_l7::fuzzing::detect`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::detect(data));
