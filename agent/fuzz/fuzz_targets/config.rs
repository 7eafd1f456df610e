#![no_main]
//! The `config` target; its body and what it checks: `weft::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzzing::config(data));
