//! `tern logs`: a container's last log lines, or every container's of a
//! stack, fetched by the agent and returned in a later poll.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::types::{CommandView, CreateCommand, StackLogsRequest, StackLogsView};

/// `tern logs ENV CONTAINER`, `tern logs ENV --stack NAME`
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The environment: id or name.
    pub environment: String,
    /// The container: name, id or unique id prefix.
    #[arg(required_unless_present = "stack", conflicts_with = "stack")]
    pub container: Option<String>,
    /// Every container of this stack instead, each line after its
    /// container's name (as `docker compose logs`).
    #[arg(long)]
    pub stack: Option<String>,
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
    if let Some(stack) = &args.stack {
        return stack_logs(&mut api, env, stack, args);
    }
    let container = args.container.clone().unwrap_or_default();
    let body = CreateCommand { action: "container.logs".into(), target: container, tail: Some(args.tail) };
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

/// `--stack`: one command per container, queued together; prints each
/// container's lines, each after its name, as they all come back.
fn stack_logs(api: &mut Api, env: u64, stack: &str, args: &LogsArgs) -> anyhow::Result<()> {
    let path = format!(
        "/api/environments/{env}/stacks/{}/logs",
        percent_encoding::utf8_percent_encode(stack, percent_encoding::NON_ALPHANUMERIC)
    );
    let queued: StackLogsView = api.send("POST", &path, &StackLogsRequest { tail: Some(args.tail) })?;
    eprintln!(
        "{} commands queued, one per container of {stack}; the logs come back with the agent's next poll",
        queued.parts.len()
    );
    let start = Instant::now();
    let mut done: Vec<Option<CommandView>> = vec![None; queued.parts.len()];
    while done.iter().any(Option::is_none) {
        for (i, part) in queued.parts.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let c: CommandView = api.get_as(&format!("/api/commands/{}", part.command.id))?;
            if matches!(c.status.as_str(), "ok" | "failed" | "rejected" | "cancelled") {
                done[i] = Some(c);
            }
        }
        if done.iter().any(Option::is_none) {
            if start.elapsed() > Duration::from_secs(args.wait) {
                bail!("the stack's logs are not all back after {} s", args.wait);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let results: Vec<CommandView> = done.into_iter().flatten().collect();
    api.show(&results, |results| {
        let width = queued.parts.iter().map(|p| p.container.chars().count()).max().unwrap_or(0);
        for (part, c) in queued.parts.iter().zip(results) {
            if c.status != "ok" {
                println!("{:<width$} | ({}: {})", part.container, c.status, c.error.as_deref().unwrap_or_default());
                continue;
            }
            for line in c.output.as_deref().unwrap_or_default().lines() {
                println!("{:<width$} | {line}", part.container);
            }
        }
    });
    Ok(())
}
