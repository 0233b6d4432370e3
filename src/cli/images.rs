//! `tern image`: images the server holds (pulled from their registry, with
//! a registered registry's credentials), through the server's API.

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::types::{
    CommandView, DeliverImage, DeliveryView, HeldImageView, PullImage, TransferLimitsView,
};

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
    /// Send a held image to environments as transfers: each host fetches
    /// only the layers it lacks, as deltas against the layers it has, and
    /// resumes after a link drop. With --wait, until every one has ended.
    Deliver {
        /// The image: its id or reference (from `tern image list`).
        image: String,
        /// The environments (ids or names).
        #[arg(long = "env", required = true, num_args = 1..)]
        env: Vec<String>,
        /// Wait until every transfer ends.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the
        /// transfers go on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
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
        ImageCommand::Deliver { image, env, wait, timeout } => deliver(&mut api, &image, &env, wait, timeout)?,
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

fn deliver(api: &mut Api, image: &str, envs: &[String], wait: bool, timeout: u64) -> anyhow::Result<()> {
    let id = match image.parse::<u64>() {
        Ok(id) => id,
        Err(_) => {
            let list: Vec<HeldImageView> = api.get_as("/api/images")?;
            match list.iter().find(|i| i.reference == image || i.image_id.as_deref() == Some(image)) {
                Some(i) => i.id,
                None => bail!("the server holds no image {image:?} (tern image list; tern image pull {image} --wait)"),
            }
        }
    };
    let environments = envs.iter().map(|e| super::fleet::env_id(api, e)).collect::<anyhow::Result<Vec<u64>>>()?;
    let queued: Vec<DeliveryView> =
        api.send("POST", &format!("/api/images/{id}/deliver"), &DeliverImage { environments })?;
    api.show(&queued, |q| {
        q.iter().for_each(|d| println!("environment {}: command {} (image.fetch)", d.environment, d.command));
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
                    failed.push(d.environment);
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
        bail!("the transfer failed on environments {failed:?}");
    }
    Ok(())
}
