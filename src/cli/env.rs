//! `tern env`: environments.

use serde_json::json;

use super::{Api, ApiArgs};

/// `tern env ...`
#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment; prints its join token (EDGE_KEY) and the
    /// `docker run` command that deploys its agent.
    Add {
        /// The environment's name.
        #[arg(long)]
        name: String,
        /// The server URL as the edge sees it (default: --server).
        #[arg(long)]
        url: Option<String>,
    },
}

/// Runs a `tern env` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run(command: EnvCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        EnvCommand::Add { name, url } => {
            let created =
                api.post("/api/environments", &json!({ "name": name, "url": url.as_deref().unwrap_or(&args.server) }))?;
            api.print(&created, |c| {
                println!("environment {} ({})", c["id"], c["name"].as_str().unwrap_or_default());
                println!();
                println!("EDGE_KEY={}", c["edge_key"].as_str().unwrap_or_default());
                println!();
                println!("{}", c["docker_run"].as_str().unwrap_or_default());
            });
        }
    }
    Ok(())
}
