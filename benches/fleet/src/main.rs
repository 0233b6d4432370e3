//! `tern-fleet`: see the crate's documentation (`tern_fleet`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let opts = tern_fleet::Options::parse();
    if let Err(e) = opts.check() {
        eprintln!("tern-fleet: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(tern_fleet::run(&opts))?;
    if opts.json {
        eprint!("{}", report.table());
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
