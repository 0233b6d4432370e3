//! `tern logs`: a container's last log lines, fetched by the agent and
//! returned in a later poll.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::{Api, ApiArgs};

/// `tern logs ENV CONTAINER`
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The environment: id or name.
    pub environment: String,
    /// The container: name, id or unique id prefix.
    pub container: String,
    /// How many lines from the end.
    #[arg(long, default_value_t = 100)]
    pub tail: u32,
    /// Give up waiting after this many seconds (the command stays queued;
    /// `GET /api/commands/ID` shows the logs once they arrive).
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
}

/// Queues the command and prints the logs when they come back.
///
/// # Errors
/// When the server refuses, the agent fails, or the wait runs out.
pub fn run(args: &LogsArgs, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    let env = super::fleet::env_id(&mut api, &args.environment)?;
    let queued = api.post(
        &format!("/api/environments/{env}/commands"),
        &json!({ "action": "container.logs", "target": args.container, "tail": args.tail }),
    )?;
    let id = queued["id"].as_u64().unwrap_or_default();
    eprintln!("command {id} queued; the logs come back with the agent's next poll");
    let start = Instant::now();
    loop {
        let c = api.get(&format!("/api/commands/{id}"))?;
        match c["status"].as_str() {
            Some("ok") => {
                api.print(&c, |c| print!("{}", c["output"].as_str().unwrap_or_default()));
                return Ok(());
            }
            Some(s @ ("failed" | "rejected" | "cancelled")) => {
                bail!("command {id} {s}: {}", c["error"].as_str().unwrap_or_default())
            }
            _ if start.elapsed() > Duration::from_secs(args.wait) => {
                bail!("command {id} is still {} after {} s", c["status"], args.wait)
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
