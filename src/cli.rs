//! The operator's CLI: every subcommand that talks to a server goes through
//! its REST API with [`ApiArgs`] and [`Api`]. Each area has its own module
//! (a clap `Subcommand` enum and a `run` function); [`Command`] gathers
//! them, and `main.rs` only flattens it into the binary's commands.

pub mod access;
pub mod admission;
pub mod audit;
pub mod env;
pub mod fleet;
pub mod images;
pub mod jobs;
pub mod logs;
pub mod registries;
pub mod stacks;
pub mod usage;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::client::Client;
use crate::server::api::types::ErrorBody;
use crate::tls::Trust;

/// The operator's commands, each through the server's API (but `admin`,
/// which works offline on the server's data directory).
#[derive(clap::Subcommand)]
#[allow(missing_docs)] // fields are clap's plumbing; each variant's doc is its help text
pub enum Command {
    /// Edge stacks: a compose file deployed to environments, groups or
    /// tags, with per-environment status.
    Stack {
        #[command(subcommand)]
        command: stacks::StackCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a container's last log lines (fetched by its agent at its next
    /// poll).
    Logs {
        #[command(flatten)]
        logs: logs::LogsArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// API tokens for automation, through the server's API.
    Token {
        #[command(subcommand)]
        command: access::TokenCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Users and their roles (viewer, operator, admin), through the
    /// server's API (an admin's token).
    User {
        #[command(subcommand)]
        command: access::UserCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Teams: which groups of environments their users (not admins) see
    /// and act on.
    Team {
        #[command(subcommand)]
        command: access::TeamCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The admin account, offline on the server's data directory.
    Admin {
        #[command(subcommand)]
        command: access::AdminCommand,
    },
    /// Manage environments through the server's API.
    Env {
        #[command(subcommand)]
        command: env::EnvCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Groups of environments, through the server's API.
    Group {
        #[command(subcommand)]
        command: fleet::LabelCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Tags for environments, through the server's API.
    Tag {
        #[command(subcommand)]
        command: fleet::LabelCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The server's settings: default intervals, AGENT_SECRET.
    Settings {
        #[command(subcommand)]
        command: fleet::SettingsCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Queue a command for an environment's agent (and follow it with --wait).
    Cmd {
        #[command(flatten)]
        cmd: fleet::CmdArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An environment's commands, newest first.
    Commands {
        /// The environment: id or name.
        env: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Edge jobs: a script run on chosen hosts, once or on a cron schedule,
    /// with its output collected.
    Job {
        #[command(subcommand)]
        command: jobs::JobCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Images the server holds, pulled from their registry, through the
    /// server's API.
    Image {
        #[command(subcommand)]
        command: images::ImageCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Private registries' credentials, which agents pull with, through
    /// the server's API.
    Registry {
        #[command(subcommand)]
        command: registries::RegistryCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Fleet join tokens: one EDGE_KEY and one command for a whole batch
    /// of devices, which wait in the waiting room (`tern device`) until
    /// admitted.
    FleetToken {
        #[command(subcommand)]
        command: admission::FleetTokenCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The waiting room: devices that asked to join with a fleet token;
    /// admit, reject or forget them.
    Device {
        #[command(subcommand)]
        command: admission::DeviceCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit log: every change and login, who, what, which target,
    /// when and from where; --jsonl exports it.
    Audit {
        #[command(flatten)]
        audit: audit::AuditArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Data usage through the server's API: what each environment's polls
    /// cost at the TLS socket and in poll bodies, per day and in total.
    Usage {
        #[command(flatten)]
        usage: usage::UsageArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

impl Command {
    /// Runs the command.
    ///
    /// # Errors
    /// What went wrong, for the operator.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Env { command, api } => env::run(command, &api),
            Self::Group { command, api } => fleet::run_label(fleet::LabelKind::Group, command, &api),
            Self::Tag { command, api } => fleet::run_label(fleet::LabelKind::Tag, command, &api),
            Self::Settings { command, api } => fleet::run_settings(command, &api),
            Self::Cmd { cmd, api } => fleet::run_cmd(&cmd, &api),
            Self::Commands { env, api } => fleet::run_commands(&env, &api),
            Self::Token { command, api } => access::run_token(command, &api),
            Self::User { command, api } => access::run_user(command, &api),
            Self::Team { command, api } => access::run_team(command, &api),
            Self::Admin { command } => access::run_admin(command),
            Self::Usage { usage, api } => usage::run(&usage, &api),
            Self::Audit { audit, api } => audit::run(&audit, &api),
            Self::FleetToken { command, api } => admission::run_token(command, &api),
            Self::Device { command, api } => admission::run_device(command, &api),
            Self::Job { command, api } => jobs::run(command, &api),
            Self::Stack { command, api } => stacks::run(command, &api),
            Self::Logs { logs, api } => logs::run(&logs, &api),
            Self::Registry { command, api } => registries::run(command, &api),
            Self::Image { command, api } => images::run(command, &api),
        }
    }
}

/// How the CLI finds and authenticates to the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The server's API URL.
    #[arg(long, env = "TERN_SERVER", default_value = "https://127.0.0.1:9443", global = true)]
    pub server: String,
    /// An API token (default: the admin token in <data>/admin-token).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The server's data directory, when the CLI runs on the server's host:
    /// the token and the certificate to pin are read from it.
    #[arg(long, env = "TERN_DATA", default_value = "tern-data", global = true)]
    pub data: std::path::PathBuf,
    /// SHA-256 of the server certificate to pin (aa:bb:...), when the data
    /// directory is not at hand.
    #[arg(long, env = "TERN_SERVER_FINGERPRINT", global = true)]
    pub fingerprint: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A connected API client (blocking: one small runtime per CLI run).
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: Client,
    token: String,
    /// From `--json`.
    pub json: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("client", &self.client).finish_non_exhaustive()
    }
}

/// Parses `aa:bb:...` (32 bytes).
///
/// # Errors
/// When it is not 32 hex bytes.
pub fn parse_fingerprint(hex: &str) -> anyhow::Result<[u8; 32]> {
    let bytes: Result<Vec<u8>, _> = hex.split(':').map(|b| u8::from_str_radix(b, 16)).collect();
    bytes.ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).context("--fingerprint: 32 hex bytes, aa:bb:...")
}

impl Api {
    /// Connects as `args` say.
    ///
    /// # Errors
    /// When there is no token or no certificate to pin.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(crate::server::admin_token_path(&args.data))
                .with_context(|| format!("no --token / TERN_TOKEN, and no admin token in {}", args.data.display()))?
                .trim()
                .to_owned(),
        };
        let pin = match &args.fingerprint {
            Some(hex) => parse_fingerprint(hex)?,
            None => crate::tls::fingerprint_of_pem(&args.data.join("cert.pem")).with_context(|| {
                format!("no --fingerprint / TERN_SERVER_FINGERPRINT, and no certificate in {}", args.data.display())
            })?,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = Client::new(&args.server, Trust::Pinned(pin), 64 << 20)?;
        Ok(Self { rt, client, token, json: args.json })
    }

    /// `method path` with an optional JSON body; returns the JSON reply,
    /// or the server's error text as the error.
    ///
    /// # Errors
    /// When the server cannot be reached or answers with an error.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(serde_json::to_vec).transpose()?;
        self.call_with(method, path, body)
    }

    /// `method path` with a body of raw bytes (an image upload's piece),
    /// read as the typed reply `T`.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_bytes<T: DeserializeOwned>(&mut self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let v = self.call_with(method, path, Some(body))?;
        typed(v, method, path)
    }

    fn call_with(&mut self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Value> {
        let method = hyper::Method::from_bytes(method.as_bytes())?;
        let (status, reply) = self
            .rt
            .block_on(self.client.api(method.clone(), path, &self.token, body))
            .with_context(|| format!("{method} {path}"))?;
        if !(200..300).contains(&status) {
            let text = serde_json::from_slice::<ErrorBody>(&reply)
                .map_or_else(|_| String::from_utf8_lossy(&reply).into_owned(), |e| e.error);
            bail!("{method} {path}: {status}: {text}");
        }
        let json: Value =
            if reply.is_empty() { Value::Null } else { serde_json::from_slice(&reply).unwrap_or(Value::Null) };
        Ok(json)
    }

    /// GET.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None)
    }

    /// `GET path`, read as the API's typed view `T` (see
    /// [`crate::server::api`]): a renamed field fails here, with the path,
    /// instead of printing blanks.
    ///
    /// # Errors
    /// As [`Self::call`], and when the reply is not a `T`.
    pub fn get_as<T: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        let v = self.get(path)?;
        typed(v, "GET", path)
    }

    /// `method path` with the typed request `body`, read as the typed
    /// reply `T` (`()` for none).
    ///
    /// # Errors
    /// As [`Self::call`], and when the reply is not a `T`.
    pub fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body)?;
        let v = self.call(method, path, Some(&body))?;
        typed(v, method, path)
    }

    /// Prints `value` as JSON when `--json` was given; otherwise calls
    /// `text` with it. The JSON goes through a [`Value`], so its keys are
    /// in the order [`Self::print`] prints the server's reply in (sorted),
    /// whatever the order of the view's fields.
    pub fn show<T: Serialize>(&self, value: &T, text: impl FnOnce(&T)) {
        if self.json {
            let json = serde_json::to_value(value).and_then(|v| serde_json::to_string_pretty(&v));
            println!("{}", json.unwrap_or_default());
        } else {
            text(value);
        }
    }
}

/// Reads the API's reply to `method path` as `T` (an empty reply is
/// `null`, which `()` and `Option` accept).
fn typed<T: DeserializeOwned>(v: Value, method: &str, path: &str) -> anyhow::Result<T> {
    serde_json::from_value(v).with_context(|| format!("{method} {path}: the server's reply is not what this CLI reads"))
}
