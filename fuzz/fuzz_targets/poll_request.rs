//! The whole poll request as the server reads it: envelope, MAC, codec,
//! `PollRequest`. Checks live in `tern::fuzzing::poll_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::poll_request(data));
