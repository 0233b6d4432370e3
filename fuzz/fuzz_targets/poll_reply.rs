//! The poll reply as the agent reads it: MAC, codec, `PollReply`. Checks
//! live in `tern::fuzzing::poll_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::poll_reply(data));
