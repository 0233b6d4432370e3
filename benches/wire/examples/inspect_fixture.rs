//! Prints what the canonical state of a recording costs, by kind and field,
//! and what changed between two steps. A tool for tuning the wire format.
//!
//! ```text
//! cargo run --release --example inspect_fixture -- host40 0 1
//! ```

use tern::sync::diff;
use tern::sync::state::Object;
use tern_bench::fixture;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "host40".into());
    let from: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let to: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let rec = fixture::load(&fixture::dir(), &name)?;
    let p = tern_bench::scenarios::prepare(&rec);
    let s = &p.states[from];
    let sum = |v: Vec<usize>| v.iter().sum::<usize>();
    println!(
        "containers {} B, images {} B, volumes {} B, networks {} B",
        sum(s.containers.iter().map(|o| o.encode().len()).collect()),
        sum(s.images.iter().map(|o| o.encode().len()).collect()),
        sum(s.volumes.iter().map(|o| o.encode().len()).collect()),
        sum(s.networks.iter().map(|o| o.encode().len()).collect())
    );
    if let Some(c) = s.containers.iter().next() {
        println!("{c:#?}");
    }
    let d = diff(&p.states[from], &p.states[to]);
    println!("{} -> {} ({}): {:?} {} B", from, to, p.events[to], d.counts(), d.encode().len());
    for (a, b) in p.states[from].containers.iter().zip(p.states[to].containers.iter()) {
        if a != b {
            println!("--- {}\n{a:?}\n+++\n{b:?}", a.name);
        }
    }
    if p.states[from].host != p.states[to].host {
        println!("host: {:?}\n  -> {:?}", p.states[from].host, p.states[to].host);
    }
    Ok(())
}
