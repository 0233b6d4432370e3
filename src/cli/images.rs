//! `tern image`: images the server holds (pulled from their registry, with
//! a registered registry's credentials), through the server's API.

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::types::{
    BlobDone, BlobQuery, CommandView, CreateRollout, DeliverImage, DeliveryView, HeldImageView, MissingBlob,
    MissingBlobs, PullImage, PushImage, RefBody, RolloutView, TransferLimitsView,
};

/// The environments a delivery or an update goes to.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The environments (ids or names).
    #[arg(long = "env", num_args = 1.., required_unless_present_any = ["group", "tag"])]
    env: Vec<String>,
    /// Groups (names or ids): every environment in them now.
    #[arg(long = "group", num_args = 1..)]
    group: Vec<String>,
    /// Tags (names or ids): every environment with one now.
    #[arg(long = "tag", num_args = 1..)]
    tag: Vec<String>,
}

/// `tern image ...`
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the server from its registry (with a registered
    /// registry's credentials); with --wait, until it is held or failed.
    Pull {
        /// The image reference (10.0.0.5:5000/app:1).
        reference: String,
        /// Wait until the pull ends (at most 30 minutes).
        #[arg(long)]
        wait: bool,
    },
    /// List the images the server holds or is pulling.
    List,
    /// Forget an image.
    Rm {
        /// Its id (from `tern image list`).
        id: u64,
    },
    /// Upload an image from this machine's Docker engine to the server,
    /// which then holds it (for images in no registry the server can
    /// reach): only the layers the server lacks travel, zstd-compressed,
    /// in pieces; run it again after a link drop and it resumes.
    Push {
        /// The image in the engine (a tag or an id).
        image: String,
        /// The reference the server holds it by, and hosts tag it as
        /// (default: IMAGE).
        #[arg(long = "as")]
        reference: Option<String>,
    },
    /// Send a held image to environments as transfers: each host fetches
    /// only the layers it lacks, as deltas against the layers it has, and
    /// resumes after a link drop. With --wait, until every one has ended.
    Deliver {
        /// The image: its id or reference (from `tern image list`).
        image: String,
        /// Where it goes.
        #[command(flatten)]
        to: TargetArgs,
        /// Wait until every transfer ends.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the
        /// transfers go on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Update the agents of environments to an agent image the server
    /// holds (`tern image push tern-agent:NEW`): each fetches it as a
    /// transfer, and a helper container recreates the agent's container
    /// from it with the same settings; if the new agent has not polled in
    /// time, the old one is put back and the command fails, "rolled back",
    /// with the reason. Every update is a rollout (`tern image
    /// rollouts`); with --first, a staged one. With --wait, until it ends.
    UpdateAgent {
        /// The agent image: its id or reference (from `tern image list`).
        image: String,
        /// Where it goes.
        #[command(flatten)]
        to: TargetArgs,
        /// Seconds the new agent has to poll before the old one is put
        /// back (30 to 86400; default 300).
        #[arg(long)]
        poll_within: Option<u32>,
        /// A staged rollout: this percentage of the environments first,
        /// the rest only once every one of those updated (1 to 99).
        #[arg(long)]
        first: Option<u8>,
        /// Wait until every update ends.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Show agent updates (all, or one with each environment's wave and
    /// command).
    Rollouts {
        /// One rollout's id.
        id: Option<u64>,
    },
    /// Show or set an environment's transfer limits: a rate cap and a
    /// download window (UTC).
    Limits {
        /// The environment (id or name).
        env: String,
        /// The most transfers may use, in kbit/s (0: no cap).
        #[arg(long)]
        rate_kbit: Option<u64>,
        /// When transfers may run: HH:MM-HH:MM in UTC ("" for any time).
        #[arg(long)]
        window: Option<String>,
    },
}

fn line(i: &HeldImageView) {
    let id = i.image_id.as_deref().map_or("-", |d| d.get(7..19).unwrap_or(d));
    println!(
        "{}  {:<48}  {:<8}  {:<12}  {:>3} layers  {} B  {}",
        i.id,
        i.reference,
        i.status,
        id,
        i.layers.len(),
        i.size,
        i.error
    );
}

/// Runs a `tern image` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses, or a waited-for pull fails.
pub fn run(command: ImageCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        ImageCommand::Pull { reference, wait } => {
            let mut i: HeldImageView = api.send("POST", "/api/images", &PullImage { reference })?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
            while wait && i.status == "pulling" && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_secs(1));
                i = api.get_as(&format!("/api/images/{}", i.id))?;
            }
            api.show(&i, line);
            if wait && i.status == "failed" {
                bail!("image {}: {}", i.reference, i.error);
            }
        }
        ImageCommand::List => {
            let list: Vec<HeldImageView> = api.get_as("/api/images")?;
            api.show(&list, |l| l.iter().for_each(line));
        }
        ImageCommand::Rm { id } => {
            api.call("DELETE", &format!("/api/images/{id}"), None)?;
            if !args.json {
                println!("image {id} removed");
            }
        }
        ImageCommand::Push { image, reference } => {
            let reference = reference.unwrap_or_else(|| image.clone());
            let (held, summary) = push(&mut api, &image, &reference)?;
            api.show(&held, |i| {
                line(i);
                println!("{summary}");
            });
        }
        ImageCommand::Deliver { image, to, wait, timeout } => {
            deliver(&mut api, &image, &to, wait, timeout)?;
        }
        ImageCommand::UpdateAgent { image, to, poll_within, first, wait, timeout } => {
            rollout(&mut api, &image, &to, first, poll_within, wait, timeout)?;
        }
        ImageCommand::Rollouts { id: Some(id) } => {
            let r: RolloutView = api.get_as(&format!("/api/rollouts/{id}"))?;
            api.show(&r, show_rollout);
        }
        ImageCommand::Rollouts { id: None } => {
            let list: Vec<RolloutView> = api.get_as("/api/rollouts")?;
            api.show(&list, |l| l.iter().for_each(rollout_line));
        }
        ImageCommand::Limits { env, rate_kbit, window } => {
            let id = super::fleet::env_id(&mut api, &env)?;
            let path = format!("/api/environments/{id}/transfer-limits");
            let mut limits: TransferLimitsView = api.get_as(&path)?;
            if rate_kbit.is_some() || window.is_some() {
                limits.rate_kbit = rate_kbit.unwrap_or(limits.rate_kbit);
                limits.window = window.unwrap_or(limits.window);
                limits = api.send("PUT", &path, &limits)?;
            }
            api.show(&limits, |l| {
                let rate = if l.rate_kbit == 0 { "no cap".to_owned() } else { format!("{} kbit/s", l.rate_kbit) };
                let window = if l.window.is_empty() { "any time" } else { l.window.as_str() };
                println!("environment {id}: transfers at {rate}, {window} (UTC)");
            });
        }
    }
    Ok(())
}

fn rollout_line(r: &RolloutView) {
    let first = r.environments.iter().filter(|m| m.wave == 1).count();
    println!(
        "rollout {}  {}  {:<7}  {} environments, {first} first  {}",
        r.id,
        r.reference,
        r.status,
        r.environments.len(),
        r.reason
    );
}

fn show_rollout(r: &RolloutView) {
    rollout_line(r);
    for m in &r.environments {
        let command = m.command.map_or_else(|| "not sent yet".to_owned(), |c| format!("command {c}"));
        println!("  environment {}  wave {}  {command}  {}", m.environment, m.wave, m.status.as_deref().unwrap_or(""));
    }
}

/// Resolves an image named by id, reference or image id.
fn image_id(api: &mut Api, image: &str) -> anyhow::Result<u64> {
    if let Ok(id) = image.parse::<u64>() {
        return Ok(id);
    }
    let list: Vec<HeldImageView> = api.get_as("/api/images")?;
    match list.iter().find(|i| i.reference == image || i.image_id.as_deref() == Some(image)) {
        Some(i) => Ok(i.id),
        None => bail!("the server holds no image {image:?} (tern image list; tern image pull {image} --wait)"),
    }
}

fn rollout(
    api: &mut Api,
    image: &str,
    to: &TargetArgs,
    first_share: Option<u8>,
    timeout_s: Option<u32>,
    wait: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let image = image_id(api, image)?;
    let environments = to.env.iter().map(|e| super::fleet::env_id(api, e)).collect::<anyhow::Result<Vec<u64>>>()?;
    let (groups, tags) = (&to.group, &to.tag);
    let body = CreateRollout { image, environments, groups: refs(groups), tags: refs(tags), first_share, timeout_s };
    let mut r: RolloutView = api.send("POST", "/api/rollouts", &body)?;
    api.show(&r, show_rollout);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    while wait && matches!(r.status.as_str(), "first" | "rest") {
        if std::time::Instant::now() > deadline {
            bail!("rollout {} is still {:?} after {timeout} s; it goes on", r.id, r.status);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        r = api.get_as(&format!("/api/rollouts/{}", r.id))?;
    }
    if wait {
        api.show(&r, show_rollout);
        if r.status == "halted" {
            bail!("rollout {} halted: {}", r.id, r.reason);
        }
    }
    Ok(())
}

fn deliver(api: &mut Api, image: &str, to: &TargetArgs, wait: bool, timeout: u64) -> anyhow::Result<()> {
    let id = image_id(api, image)?;
    let environments = to.env.iter().map(|e| super::fleet::env_id(api, e)).collect::<anyhow::Result<Vec<u64>>>()?;
    let body = DeliverImage { environments, groups: refs(&to.group), tags: refs(&to.tag) };
    let queued: Vec<DeliveryView> = api.send("POST", &format!("/api/images/{id}/deliver"), &body)?;
    let action = "image.fetch";
    api.show(&queued, |q| {
        q.iter().for_each(|d| println!("environment {}: command {} ({action})", d.environment, d.command));
    });
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut failed = Vec::new();
    for d in &queued {
        loop {
            let c: CommandView = api.get_as(&format!("/api/commands/{}", d.command))?;
            match c.status.as_str() {
                "ok" => {
                    if !api.json {
                        println!("environment {}: {}", d.environment, c.output.unwrap_or_default().trim());
                    }
                    break;
                }
                s @ ("failed" | "rejected" | "cancelled") => {
                    let why = c.error.unwrap_or_default();
                    if !api.json {
                        println!("environment {}: {s}: {why}", d.environment);
                    }
                    failed.push(format!("environment {}: {s}: {why}", d.environment));
                    break;
                }
                _ if std::time::Instant::now() > deadline => {
                    bail!("command {} is still {:?} after {timeout} s; it goes on", d.command, c.status)
                }
                _ => std::thread::sleep(std::time::Duration::from_secs(1)),
            }
        }
    }
    if !failed.is_empty() {
        bail!("{action} did not succeed everywhere:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// What `docker save` wrote, as far as a push needs it.
struct Saved {
    /// The config, byte for byte.
    config: String,
    /// The layers' `diff_id`s, bottom first.
    diff_ids: Vec<String>,
    /// Each layer's tar's path in the archive (links followed).
    layer_paths: Vec<String>,
}

/// `a/../b/layer.tar` → `b/layer.tar`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Reads the manifest, the config and the links of a `docker save`
/// archive (the legacy layout of Docker before 25, `<id>/layer.tar`, and
/// the OCI one after, `blobs/sha256/<hex>`).
fn read_saved(archive: &std::path::Path) -> anyhow::Result<Saved> {
    use std::io::Read;
    let mut files: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    let mut links: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut small = Vec::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?.to_string_lossy());
        if entry.header().entry_type().is_symlink() {
            if let Some(target) = entry.link_name()? {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
                links.insert(path, normalize(&format!("{dir}/{}", target.to_string_lossy())));
            }
            continue;
        }
        // The manifest and configs are small; layers are read later.
        if entry.size() <= (crate::wire::transfer::MAX_CONFIG as u64) {
            small.clear();
            entry.read_to_end(&mut small)?;
            files.insert(path, small.clone());
        }
    }
    let resolve = |p: &str| {
        let mut p = normalize(p);
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        p
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(files.get("manifest.json").context("docker save wrote no manifest.json")?)?;
    let first = &manifest[0];
    let config_path = resolve(first["Config"].as_str().context("the manifest names no config")?);
    let config = String::from_utf8(files.get(&config_path).context("the config is not in the archive")?.clone())
        .context("the config is not UTF-8")?;
    let parsed: serde_json::Value = serde_json::from_str(&config)?;
    let diff_ids: Vec<String> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .context("the config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let layer_paths: Vec<String> = first["Layers"]
        .as_array()
        .context("the manifest names no layers")?
        .iter()
        .filter_map(|l| l.as_str().map(&resolve))
        .collect();
    if layer_paths.len() != diff_ids.len() {
        bail!("the manifest names {} layers, the config {}", layer_paths.len(), diff_ids.len());
    }
    Ok(Saved { config, diff_ids, layer_paths })
}

/// Compresses the archive's entries at `wanted` (path → file to write).
fn compress_layers(
    archive: &std::path::Path,
    wanted: &std::collections::HashMap<String, std::path::PathBuf>,
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut sizes = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?.to_string_lossy());
        let Some(out) = wanted.get(&path) else { continue };
        if sizes.contains_key(&path) {
            continue;
        }
        let file = std::fs::File::create(out)?;
        let mut enc = zstd::stream::write::Encoder::new(file, tern_proto::transfer::LEVEL)?;
        enc.long_distance_matching(true)?;
        let n = std::io::copy(&mut entry, &mut enc)?;
        enc.finish()?.sync_all()?;
        sizes.insert(path, n);
    }
    Ok(sizes)
}

/// Uploads the layers of `image` the server lacks, then its config.
fn push(api: &mut Api, image: &str, reference: &str) -> anyhow::Result<(HeldImageView, String)> {
    let dir = std::env::temp_dir().join(format!("tern-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = push_in(api, image, reference, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn push_in(
    api: &mut Api,
    image: &str,
    reference: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(HeldImageView, String)> {
    let archive = dir.join("image.tar");
    let out = std::process::Command::new("docker")
        .args(["image", "save", "-o"])
        .arg(&archive)
        .arg(image)
        .output()
        .context("running docker (tern image push reads the image with `docker image save`)")?;
    if !out.status.success() {
        bail!("docker image save {image}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let saved = read_saved(&archive)?;
    let query = BlobQuery { digests: saved.diff_ids.clone() };
    let missing: MissingBlobs = api.send("POST", "/api/images/blobs/missing", &query)?;
    let mut wanted = std::collections::HashMap::new();
    for m in &missing.missing {
        let i = saved.diff_ids.iter().position(|d| *d == m.digest).context("the server named a layer not asked")?;
        wanted.insert(saved.layer_paths[i].clone(), dir.join(format!("{i}.zst")));
    }
    let sizes = compress_layers(&archive, &wanted)?;
    let _ = std::fs::remove_file(&archive);
    let mut sent = 0u64;
    for m in &missing.missing {
        let i = saved.diff_ids.iter().position(|d| *d == m.digest).context("layer")?;
        let path = &saved.layer_paths[i];
        let size = *sizes.get(path).with_context(|| format!("layer {} is not in the archive", m.digest))?;
        let compressed = std::fs::read(&wanted[path])?;
        sent += upload(api, m, &compressed, size)?;
    }
    let held: HeldImageView =
        api.send("POST", "/api/images/push", &PushImage { reference: reference.to_owned(), config: saved.config })?;
    let summary = format!(
        "{} layers: {} uploaded as {sent} B, {} already on the server",
        saved.diff_ids.len(),
        missing.missing.len(),
        saved.diff_ids.len() - missing.missing.len()
    );
    Ok((held, summary))
}

/// Uploads one layer's zstd stream from where the server's copy ends;
/// returns the bytes sent. A copy that was not this stream's start (another
/// zstd made it, or it was damaged) does not check out when whole: the
/// server discards it, and the layer is sent again from its start, once.
fn upload(api: &mut Api, m: &MissingBlob, compressed: &[u8], size: u64) -> anyhow::Result<u64> {
    let done = format!("/api/images/blobs/{}/done", m.digest);
    let mut have = m.have;
    if have > compressed.len() as u64 {
        let _ = api.send::<_, serde_json::Value>("POST", &done, &BlobDone { size });
        have = 0;
    }
    let mut sent = send_from(api, m, compressed, have)?;
    if have > 0 && api.send::<_, serde_json::Value>("POST", &done, &BlobDone { size }).is_err() {
        sent += send_from(api, m, compressed, 0)?;
    }
    api.send::<_, serde_json::Value>("POST", &done, &BlobDone { size })?;
    Ok(sent)
}

fn send_from(api: &mut Api, m: &MissingBlob, compressed: &[u8], mut have: u64) -> anyhow::Result<u64> {
    let mut sent = 0;
    let piece = crate::server::api::uploads::PIECE;
    while (have as usize) < compressed.len() {
        let end = (have as usize + piece).min(compressed.len());
        let path = format!("/api/images/blobs/{}?offset={have}", m.digest);
        let reply: MissingBlob = api.send_bytes("PATCH", &path, compressed[have as usize..end].to_vec())?;
        sent += (end - have as usize) as u64;
        have = reply.have;
    }
    Ok(sent)
}

/// Names or ids, as the API takes them.
fn refs(names: &[String]) -> Vec<RefBody> {
    names.iter().map(|n| n.parse().map_or_else(|_| RefBody::Name(n.clone()), RefBody::Id)).collect()
}
