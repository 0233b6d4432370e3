//! An arbitrary state and arbitrary delta bytes: apply either rejects the
//! delta and leaves the base alone, or yields a state with the delta's root
//! that a fresh diff reproduces. Checks live in `tern::fuzzing::apply_delta`.
#![no_main]

use tern::sync::State;

libfuzzer_sys::fuzz_target!(|input: (State, Vec<u8>)| tern::fuzzing::apply_delta(&input.0, &input.1));
