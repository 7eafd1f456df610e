#![no_main]
//! The `redis` target; its body and what it checks: `weft_l7::fuzzing::redis`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::redis(data));
