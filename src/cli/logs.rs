//! `tern logs`: a container's last log lines, fetched by the agent and
//! returned in a later poll.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::types::{CommandView, CreateCommand};

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
    let body = CreateCommand { action: "container.logs".into(), target: args.container.clone(), tail: Some(args.tail) };
    let queued: CommandView = api.send("POST", &format!("/api/environments/{env}/commands"), &body)?;
    let id = queued.id;
    eprintln!("command {id} queued; the logs come back with the agent's next poll");
    let start = Instant::now();
    loop {
        let c: CommandView = api.get_as(&format!("/api/commands/{id}"))?;
        match c.status.as_str() {
            "ok" => {
                api.show(&c, |c| print!("{}", c.output.as_deref().unwrap_or_default()));
                return Ok(());
            }
            s @ ("failed" | "rejected" | "cancelled") => {
                bail!("command {id} {s}: {}", c.error.as_deref().unwrap_or_default())
            }
            s if start.elapsed() > Duration::from_secs(args.wait) => {
                bail!("command {id} is still {s:?} after {} s", args.wait)
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
