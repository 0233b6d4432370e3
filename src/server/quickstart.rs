//! `tern quickstart`: a server on its embedded database and an agent for
//! the local Docker engine, in one process. The local environment is made
//! (and its port followed) through the server's own functions, the ones
//! its API handlers call, not over HTTP.

use anyhow::Context;

use super::api::fleet::{create_environment_in, update_environment_in};
use super::api::types::{CreateEnvironment, IntervalsBody, UpdateEnvironment};

/// `tern quickstart`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct QuickstartArgs {
    /// Address to listen on (loopback only by default: the agent is local).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: std::net::SocketAddr,
    /// Data directory (database, certificate, admin token, the local
    /// agent's state).
    #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
    pub data: std::path::PathBuf,
    /// Poll intervals of the local environment, in seconds. Short, since
    /// a local agent costs no data plan.
    #[arg(long, default_value_t = 5)]
    pub interval: u32,
}

impl QuickstartArgs {
    /// Runs the server, an environment named `local` (made once, its join
    /// token kept in `<data>/local-agent/edge_key`), and its agent, until
    /// Ctrl-C.
    ///
    /// # Errors
    /// When the server or the agent cannot start.
    pub fn run(self) -> anyhow::Result<()> {
        let QuickstartArgs { listen, data, interval } = self;
        let config = super::ServerConfig {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            ..super::ServerConfig::new(data.clone())
        };
        let prepared = super::prepare(&config)?;
        let agent_secret = prepared.agent_secret()?;
        let fingerprint = prepared.fingerprint;
        let initial_admin_password = prepared.initial_admin_password.clone();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async move {
            let interrupted = crate::signal::shutdown();
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
                format!("cannot listen on {listen} (another tern running? try --listen 127.0.0.1:0)")
            })?;
            let addr = listener.local_addr()?;
            let url = format!("https://127.0.0.1:{}", addr.port());
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let state = prepared.state.clone();
            let server = tokio::spawn(super::run(prepared, listener, stopped(stop_rx.clone())));

            let agent_dir = data.join("local-agent");
            std::fs::create_dir_all(&agent_dir).with_context(|| format!("creating {}", agent_dir.display()))?;
            let key_path = agent_dir.join("edge_key");
            let edge_key = match std::fs::read_to_string(&key_path) {
                Ok(k) => k.trim().to_owned(),
                Err(_) => {
                    let req = CreateEnvironment {
                        name: "local".into(),
                        url: url.clone(),
                        intervals: Some(IntervalsBody {
                            ping: Some(interval),
                            snapshot: Some(interval),
                            command: Some(interval),
                        }),
                        ..CreateEnvironment::default()
                    };
                    let created =
                        state.with_store(|store| create_environment_in(store, req, fingerprint)).map_err(|e| {
                            anyhow::anyhow!(
                                "creating the local environment: {} (remove {} to start afresh)",
                                e.message,
                                data.display()
                            )
                        })?;
                    // The join token is a secret: the operator's alone.
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create(true).truncate(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                    std::io::Write::write_all(&mut opts.open(&key_path)?, created.edge_key.as_bytes())?;
                    created.edge_key
                }
            };
            let mut token = crate::auth::JoinToken::parse(&edge_key).context("the saved local EDGE_KEY")?;
            // The port may differ from the first run's (--listen 127.0.0.1:0):
            // the agent and the stored environment (its deploy commands) follow.
            if token.url != url {
                let change = UpdateEnvironment { url: Some(url.clone()), ..UpdateEnvironment::default() };
                if let Err(e) = state.with_store(|store| update_environment_in(store, token.environment, &change)) {
                    tracing::warn!("the local environment keeps its old URL: {}", e.message);
                }
                token.url = url.clone();
            }
            let env_id = token.environment;
            // The agent reads its settings as `tern agent` does (EDGE_JOB_*,
            // EDGE_COMPOSE, EDGE_TLS_PQ, LOG_LEVEL, ...), with the local
            // environment's key, its data directory, and the server's own
            // AGENT_SECRET unless one is given.
            let mut vars: std::collections::BTreeMap<String, String> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("EDGE") || k.starts_with("AGENT_") || k == "LOG_LEVEL" || k == "DOCKER_HOST"
                })
                .collect();
            vars.insert("EDGE_KEY".into(), token.encode());
            vars.insert("DATA_PATH".into(), agent_dir.display().to_string());
            if !vars.contains_key("AGENT_SECRET")
                && let Some(secret) = agent_secret
            {
                vars.insert("AGENT_SECRET".into(), secret);
            }
            let agent_config =
                crate::agent::config::AgentConfig::from_env(&vars).map_err(|e| anyhow::anyhow!("agent: {e}"))?;
            let mut banner = String::new();
            use std::fmt::Write as _;
            let _ = writeln!(banner, "tern is running: a server and an agent for this host's Docker engine.");
            let _ = writeln!(banner);
            let _ =
                writeln!(banner, "  server       {url}  (certificate sha256 {})", super::fingerprint_hex(&fingerprint));
            let _ = writeln!(
                banner,
                "  web UI       {url}/  (user admin; the browser will warn of the self-signed certificate)"
            );
            let _ = writeln!(banner, "  data         {}", data.display());
            let _ = writeln!(banner, "  admin token  {}", super::admin_token_path(&data).display());
            match &initial_admin_password {
                Some(password) => {
                    let _ = writeln!(banner, "  admin        user admin, password {password} (shown this once)");
                }
                None => {
                    let _ = writeln!(
                        banner,
                        "  admin        user admin; forgot the password? tern admin reset-password --data {}",
                        data.display()
                    );
                }
            }
            let _ = writeln!(
                banner,
                "  environment  local, checking in every {interval} s (a held session; polling where none can be held); agent state in {}",
                agent_dir.display()
            );
            let _ = writeln!(banner);
            let _ = writeln!(banner, "Look at it from another terminal:");
            let _ = writeln!(
                banner,
                "  curl -sk -H \"Authorization: Bearer $(cat {})\" {url}/api/environments/{env_id}/state",
                super::admin_token_path(&data).display()
            );
            let _ = writeln!(banner, "  tern env add --name another-host --server {url} --data {}", data.display());
            let _ = writeln!(banner);
            let _ = writeln!(banner, "Ctrl-C stops both.");
            // Not println!: a closed stdout (a pipe to `head`) must not stop the server.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
            let agent = crate::agent::start(agent_config, stopped(stop_rx.clone()));
            tokio::pin!(agent);
            let result = tokio::select! {
                r = &mut agent => r.map_err(anyhow::Error::from),
                () = interrupted => {
                    let _ = stop_tx.send(true);
                    agent.await.map_err(anyhow::Error::from)
                }
            };
            let _ = stop_tx.send(true);
            server.await??;
            result
        })
    }
}
