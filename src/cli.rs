//! The operator's CLI: every subcommand that talks to a server goes through
//! its REST API with [`ApiArgs`] and [`Api`]. Each area has its own module
//! (a clap `Subcommand` enum and a `run` function); `main.rs` only wires
//! them in.

pub mod access;
pub mod env;
pub mod fleet;
pub mod jobs;
pub mod logs;
pub mod stacks;
pub mod usage;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::agent::client::Client;
use crate::tls::Trust;

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
        let method = hyper::Method::from_bytes(method.as_bytes())?;
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, reply) = self
            .rt
            .block_on(self.client.api(method.clone(), path, &self.token, body))
            .with_context(|| format!("{method} {path}"))?;
        let json: Value =
            if reply.is_empty() { Value::Null } else { serde_json::from_slice(&reply).unwrap_or(Value::Null) };
        if !(200..300).contains(&status) {
            let text =
                json["error"].as_str().map_or_else(|| String::from_utf8_lossy(&reply).into_owned(), str::to_owned);
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(json)
    }

    /// GET.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None)
    }

    /// POST.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some(body))
    }

    /// Prints `value` as JSON when `--json` was given; otherwise calls `text`.
    pub fn print(&self, value: &Value, text: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            text(value);
        }
    }
}
