#![no_main]
//! The `flow_api_request` target; its body and what it checks: `weft::fuzzing::flow_api_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzzing::flow_api_request(data));
