#![no_main]
//! The `mysql` target; its body and what it checks: `weft_l7::fuzzing::mysql`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::mysql(data));
