//! Writes the seed corpora of the fuzz targets from the recorded fixtures
//! (`tests/fixtures/<name>.json`, default `host40` and `train`):
//!
//! * `corpus/poll_body/`: the codec-encoded poll bodies tern sends for the
//!   recording: the first full snapshot (empty state to step 0) and each
//!   step's delta (step i-1 to step i);
//! * `corpus/apply_delta/`: the same deltas, protobuf-encoded but not
//!   compressed, twice: as raw bytes (which `arbitrary` splits into a state
//!   and a delta as it likes), and framed so that `arbitrary` reads back
//!   exactly (an empty-tabled state, the encoded delta);
//! * `corpus/round_trip/`: nothing; libFuzzer starts it from scratch.
//!
//! Usage: `cargo run --release --bin seed [-- FIXTURE...]`, from `fuzz/`.
//! Existing files of the same name are overwritten; other files are kept.

use std::path::Path;
use std::process::ExitCode;

use arbitrary::{Arbitrary, Unstructured};
use tern::scenarios::{Prepared, poll_body, prepare};
use tern::sync::{Delta, State, apply, diff};
use tern::wire::codec::{Codec, Limits};

/// The limits `tern::fuzzing::poll_body` decodes with, so every seed decodes.
const LIMITS: Limits = Limits { max_encoded: 1 << 20, max_decoded: 4 << 20 };

fn main() -> ExitCode {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() { vec!["host40".to_owned(), "train".to_owned()] } else { names };
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    match run(&names, &corpus) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(names: &[String], corpus: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let poll_dir = corpus.join("poll_body");
    let delta_dir = corpus.join("apply_delta");
    std::fs::create_dir_all(&poll_dir)?;
    std::fs::create_dir_all(&delta_dir)?;
    std::fs::create_dir_all(corpus.join("round_trip"))?;
    let mut codec = Codec::new(LIMITS)?;
    let fixtures = tern::fixture::dir();
    for name in names {
        let rec = tern::fixture::load(&fixtures, name).map_err(|e| format!("fixture {name}: {e}"))?;
        let p: Prepared = prepare(&rec);
        let (mut polls, mut deltas, mut framed, mut applies) = (0, 0, 0, 0);
        let empty = State::default();
        for (i, current) in p.states.iter().enumerate() {
            let (kind, seq, base) = match i {
                0 => ("full", 0, &empty),
                _ => ("step", i as u64 - 1, &p.states[i - 1]),
            };
            let stem = format!("{name}-{i:03}-{kind}");
            let body = poll_body(&mut codec, seq, base, current)?;
            std::fs::write(poll_dir.join(&stem), &body)?;
            polls += 1;
            let delta = diff(base, current);
            if delta.is_empty() {
                continue;
            }
            let bytes = delta.encode();
            std::fs::write(delta_dir.join(format!("{stem}-raw")), &bytes)?;
            deltas += 1;
            if let Some((seed, state)) = frame(&bytes) {
                std::fs::write(delta_dir.join(format!("{stem}-framed")), &seed)?;
                framed += 1;
                applies += usize::from(apply(&state, &Delta::decode(&bytes)?).is_ok());
            }
        }
        println!(
            "{name}: {} steps -> {polls} poll bodies, {deltas} raw deltas, {framed} framed deltas ({applies} apply to their framed base)",
            p.states.len()
        );
    }
    println!("corpus in {}", corpus.display());
    Ok(())
}

/// Input bytes that the `apply_delta` target (`(State, Vec<u8>)` via
/// `arbitrary_take_rest`, as `fuzz_target!` does) reads back as a state with
/// no objects and exactly `delta`: zeros in front (integers, `false`
/// continuation flags), then the delta with a `true` flag (`0x01`) before
/// each byte (arbitrary 1.5's `Vec::arbitrary_take_rest`), then zeros behind
/// (string lengths, which `arbitrary` takes from the end of the input).
/// Found by trying sizes and checked by decoding, so a change in `State` or
/// in `arbitrary` only costs the framed seeds, never a wrong one.
fn frame(delta: &[u8]) -> Option<(Vec<u8>, State)> {
    for front in 0..1024 {
        for back in 0..64 {
            let mut seed = vec![0u8; front];
            seed.extend(delta.iter().flat_map(|&b| [1, b]));
            seed.resize(seed.len() + back, 0);
            let Ok((state, rest)) = <(State, Vec<u8>)>::arbitrary_take_rest(Unstructured::new(&seed)) else { continue };
            let no_objects = state.containers.is_empty()
                && state.images.is_empty()
                && state.volumes.is_empty()
                && state.networks.is_empty();
            if no_objects && rest == delta {
                return Some((seed, state));
            }
        }
    }
    None
}
