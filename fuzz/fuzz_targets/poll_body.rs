//! Arbitrary bytes as a poll body: decode never panics, and what decodes
//! re-encodes to the same value. Checks live in `tern::fuzzing::poll_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::poll_body(data));
