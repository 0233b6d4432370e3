//! `tern image`: images the server holds (pulled from their registry, with
//! a registered registry's credentials), through the server's API.

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::types::{HeldImageView, PullImage};

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
    }
    Ok(())
}
