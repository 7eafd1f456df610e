#![no_main]
//! The `postgres` target; its body and what it checks: `weft_l7::fuzzing::postgres`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::postgres(data));
