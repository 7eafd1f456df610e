#![no_main]
//! The `dns_tcp` target; its body and what it checks: `weft_l7::fuzzing::dns_tcp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::dns_tcp(data));
