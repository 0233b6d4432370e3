//! What this host costs, read from the local engine without a server:
//! `tern snapshot` (the canonical state and what a full snapshot costs on
//! the wire) and `tern agent dry-run` (the same as JSON, and the delta from
//! a saved state).

use super::CanonicalOptions;
use crate::agent;
use crate::sync::{State, diff};
use crate::wire::codec::{Codec, Limits};
use crate::wire::poll::PollRequest;
use anyhow::Context;

/// `tern agent dry-run`.
///
/// # Errors
/// When the engine cannot be read or a file cannot be read or written.
pub fn dry_run(save: Option<&std::path::Path>, base: Option<&std::path::Path>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let raw = rt.block_on(async {
        let docker = agent::connect().await?;
        agent::collect(&docker).await
    })?;
    // The same options the agent uses (secrets redacted).
    let state = raw.canonical(&CanonicalOptions::default()).context("building the canonical state")?;
    let mut codec = Codec::new(Limits::default())?;
    let size = |codec: &mut Codec, from: &State| -> anyhow::Result<usize> {
        let body = PollRequest { base: 0, delta: Some(diff(from, &state)), ..PollRequest::default() }.encode();
        Ok(codec.encode(&body)?.len())
    };
    let full = size(&mut codec, &State::default())?;
    let delta = match base {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let old = State::from_snapshot(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not a state saved by --save: {e}", path.display()))?;
            Some(size(&mut codec, &old)?)
        }
        None => None,
    };
    if let Some(path) = save {
        std::fs::write(path, state.to_snapshot()).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = serde_json::json!({
        "containers": state.containers.len(),
        "images": state.images.len(),
        "volumes": state.volumes.len(),
        "networks": state.networks.len(),
        "stacks": state.stacks().len(),
        "root": blake3::Hash::from(state.root()).to_hex().to_string(),
        "full_snapshot_bytes": full,
        "delta_bytes": delta,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `tern snapshot`.
///
/// # Errors
/// When the engine cannot be read.
pub fn snapshot(show_secrets: bool, verbose: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let raw = rt.block_on(async {
        let docker = agent::connect().await?;
        agent::collect(&docker).await
    })?;
    let opts = CanonicalOptions { redact_secrets: !show_secrets };
    let state = raw.canonical(&opts).context("building the canonical state")?;

    let delta = diff(&State::default(), &state);
    let body = PollRequest { base: 0, delta: Some(delta), ..PollRequest::default() }.encode();
    let wire = Codec::new(Limits::default())?.encode(&body)?;

    let h = &state.host;
    println!(
        "host        {} ({} {}, engine {}, {} CPUs, {} MiB)",
        h.hostname,
        h.operating_system,
        h.architecture,
        h.engine_version,
        h.cpus,
        h.memory_bytes >> 20
    );
    println!("containers  {}", state.containers.len());
    println!("images      {}", state.images.len());
    println!("volumes     {}", state.volumes.len());
    println!("networks    {}", state.networks.len());
    println!("stacks      {}", state.stacks().len());
    println!("root        {}", blake3::Hash::from(state.root()).to_hex());
    println!(
        "full snapshot on the wire: {} B protobuf, {} B encoded (`tern-bench compare` sets it beside Portainer's)",
        body.len(),
        wire.len()
    );
    if verbose {
        for c in state.containers.iter() {
            println!("  {} {:<32} {:<28} {:?}", c.id.short(), c.name, c.image, c.status);
        }
    }
    Ok(())
}
