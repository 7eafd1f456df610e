#![no_main]
//! The `tls` target; its body and what it checks: `weft_l7::fuzzing::tls`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::tls(data));
