//! Trains the zstd dictionary shipped in `proto/dict/` from the *training*
//! recording (`tests/fixtures/train.json`), a host that shares no project,
//! service or image with the evaluation host the budgets are measured on.
//!
//! ```text
//! cargo run --release --example train_dictionary -- [SIZE_BYTES] [OUT]
//! ```
//!
//! Samples are what the agent actually compresses: each object's canonical
//! encoding, the first full snapshot body, and every poll body of the
//! recorded churn.

use std::collections::BTreeSet;

use tern::sync::state::Object;
use tern::sync::{State, diff};
use tern::wire::codec::train_dictionary;
use tern::wire::poll::PollRequest;
use tern_bench::fixture;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16 * 1024);
    let out = args.next().unwrap_or_else(|| "proto/dict/tern-v1-1.zdict".into());

    let rec = fixture::load(&fixture::dir(), "train")?;
    let prepared = tern_bench::scenarios::prepare(&rec);
    let mut samples: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut prev = State::default();
    for (i, s) in prepared.states.iter().enumerate() {
        samples.insert(s.host.encode());
        samples.extend(s.containers.iter().map(Object::encode));
        samples.extend(s.images.iter().map(Object::encode));
        samples.extend(s.volumes.iter().map(Object::encode));
        samples.extend(s.networks.iter().map(Object::encode));
        let delta = diff(&prev, s);
        if !delta.is_empty() {
            samples.insert(PollRequest { base: i as u64, delta: Some(delta), ..PollRequest::default() }.encode());
        }
        prev = s.clone();
    }
    let samples: Vec<Vec<u8>> = samples.into_iter().collect();
    let total: usize = samples.iter().map(Vec::len).sum();
    let dict = train_dictionary(&samples, size)?;
    std::fs::write(&out, &dict)?;
    println!("trained {} B dictionary from {} samples ({} B) into {out}", dict.len(), samples.len(), total);
    Ok(())
}
