#![no_main]
//! The `dns_udp` target; its body and what it checks: `weft_l7::fuzzing::dns_udp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_l7::fuzzing::dns_udp(data));
