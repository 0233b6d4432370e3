//! A compose file and its variables: the server's check, `${VAR}`
//! interpolation, the built-in compose's parse. Checks live in
//! `tern::fuzzing::compose`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::compose(data));
