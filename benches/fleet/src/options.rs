//! `tern-fleet`'s options.

use std::path::PathBuf;

/// Runs N simulated agents against a real `tern server` and reports what
/// the server sustained (see the crate's documentation for the method).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tern-fleet", version)]
pub struct Options {
    /// Simulated agents (one environment each).
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Seconds between an agent's polls.
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    /// Each interval varies by up to this share either way (0.1: ±10 %).
    #[arg(long, default_value_t = 0.1)]
    pub jitter: f64,
    /// Seconds measured, after every agent's first contact.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Share of agents whose state changes per interval (each change is one
    /// recorded event of its fixture host: a restart, a redeploy, a pull).
    #[arg(long, default_value_t = 0.01)]
    pub change_share: f64,
    /// Commands queued through the REST API per second, fleet-wide
    /// (container.restart of a container in a random agent's state).
    #[arg(long, default_value_t = 0.0)]
    pub command_rate: f64,
    /// Share of agents that open a new TCP+TLS connection for every poll
    /// (the rest keep theirs alive).
    #[arg(long, default_value_t = 0.0)]
    pub reconnect_share: f64,
    /// Idle-rate mode: no state change, no command, every agent polls back
    /// to back on its kept-alive connection, as fast as the server answers.
    #[arg(long)]
    pub idle: bool,

    /// Start `tern server` here (temporary data directory) instead of
    /// using --server.
    #[arg(long, conflicts_with = "server")]
    pub spawn: bool,
    /// The `tern` binary for --spawn (default: `tern` beside this binary).
    #[arg(long, value_name = "PATH")]
    pub tern: Option<PathBuf>,
    /// --listen for the spawned server.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// An extra argument for the spawned `tern server` (repeat it), e.g.
    /// `--server-arg=--database --server-arg=postgres://...`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the spawned server's temporary directory (data and log).
    #[arg(long)]
    pub keep: bool,
    /// A running server's URL (https://host:port).
    #[arg(long, requires = "token", value_name = "URL")]
    pub server: Option<String>,
    /// Its admin API token.
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Its certificate's SHA-256 (as `tern server` prints it).
    #[arg(long, requires = "server")]
    pub fingerprint: Option<String>,
    /// Its process id, for CPU and memory readings.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Its data directory, for database growth.
    #[arg(long, value_name = "DIR")]
    pub server_data: Option<PathBuf>,
    /// AGENT_SECRET, when the server requires one.
    #[arg(long, env = "AGENT_SECRET", hide_env_values = true)]
    pub agent_secret: Option<String>,

    /// Loopback source addresses to spread connections over (127.0.0.2,
    /// 127.0.0.3, ...); default: one per --per-address agents.
    #[arg(long)]
    pub source_addrs: Option<usize>,
    /// Connections per source address (the server allows 512 per client
    /// address, and a closing connection counts until it is closed).
    #[arg(long, default_value_t = 400)]
    pub per_address: usize,
    /// API calls at once while creating environments.
    #[arg(long, default_value_t = 16)]
    pub api_concurrency: usize,
    /// Seconds a poll may take before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    pub poll_timeout: f64,
    /// Seed for the simulated hosts' draws.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Find the largest fleet at 60 s intervals holding p99 under
    /// --p99-limit-ms, by stepping the poll rate (see the crate's docs).
    #[arg(long, conflicts_with = "idle")]
    pub find_capacity: bool,
    /// The latency limit the capacity search holds.
    #[arg(long, default_value_t = 250.0)]
    pub p99_limit_ms: f64,
    /// The capacity search's first rate, polls/s.
    #[arg(long, default_value_t = 100.0)]
    pub start_rate: f64,
    /// The capacity search's step factor.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Seconds measured per capacity step.
    #[arg(long, default_value_t = 20.0)]
    pub step_duration: f64,
    /// Stop bisecting when the bracket is this close (relative).
    #[arg(long, default_value_t = 0.05)]
    pub resolution: f64,
    /// The most capacity steps.
    #[arg(long, default_value_t = 14)]
    pub max_steps: usize,

    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl Options {
    /// Checks what clap cannot.
    ///
    /// # Errors
    /// A sentence naming the bad option.
    pub fn check(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("--{name} is a share from 0 to 1, not {v}")) }
        };
        share("jitter", self.jitter)?;
        share("change-share", self.change_share)?;
        share("reconnect-share", self.reconnect_share)?;
        if self.agents == 0 {
            return Err("--agents must be at least 1".into());
        }
        for (name, v) in [("interval", self.interval), ("duration", self.duration), ("poll-timeout", self.poll_timeout)]
        {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("--{name} must be a positive number of seconds"));
            }
        }
        if self.command_rate < 0.0 || !self.command_rate.is_finite() {
            return Err("--command-rate must be 0 or more".into());
        }
        if !self.spawn && self.server.is_none() {
            return Err("give --spawn, or --server URL with --token".into());
        }
        if self.find_capacity && (self.step_factor <= 1.0 || self.start_rate <= 0.0 || self.step_duration <= 0.0) {
            return Err("--step-factor must be above 1, --start-rate and --step-duration positive".into());
        }
        Ok(())
    }
}
