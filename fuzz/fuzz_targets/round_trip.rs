//! Two arbitrary states: `apply(a, decode(encode(diff(a, b)))) == b`.
//! Checks live in `tern::fuzzing::round_trip`.
#![no_main]

use tern::sync::State;

libfuzzer_sys::fuzz_target!(|input: (State, State)| tern::fuzzing::round_trip(&input.0, &input.1));
