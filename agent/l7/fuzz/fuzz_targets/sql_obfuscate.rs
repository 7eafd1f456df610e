#![no_main]
//! The `sql_obfuscate` target; its body and what it checks: `weft_l7::fuzzing::sql_obfuscate`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::sql_obfuscate(data));
