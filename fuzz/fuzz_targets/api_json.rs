//! The API's JSON request bodies (the first byte picks the type) and the
//! checks their handlers run. Checks live in `tern::fuzzing::api_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::api_json(data));
