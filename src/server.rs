//! The server role: the HTTPS port ([`http`]), the poll logic ([`poll`]) and
//! the store ([`store`], the only module that touches the database).

pub mod api;
pub mod dbtools;
pub mod domain;
pub mod http;
pub mod images;
pub mod ledger;
pub mod metrics;
pub mod poll;
#[cfg(feature = "agent")]
pub mod quickstart;
pub mod secrets;
pub mod store;
pub mod tickets;
pub mod transfers;
pub mod ui;
pub mod wakes;

use std::path::PathBuf;
use std::sync::Arc;

/// How `tern server` runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory: database, certificate and key.
    pub data: PathBuf,
    /// A user-supplied certificate chain and key (PEM), instead of the
    /// self-signed one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Names for the self-signed certificate.
    pub names: Vec<String>,
    /// A PostgreSQL URL (`--database`); `None`: SQLite in the data
    /// directory.
    pub database: Option<String>,
}

impl ServerConfig {
    /// The embedded default: SQLite in `data`, the self-signed certificate
    /// for `localhost`.
    #[must_use]
    pub fn new(data: PathBuf) -> Self {
        Self { data, cert: None, names: vec!["localhost".into()], database: None }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {0}: {1}")]
    Data(PathBuf, std::io::Error),
    /// TLS setup failed.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The codec could not be set up.
    #[error("{0}")]
    Codec(#[from] crate::wire::codec::CodecError),
    /// The admin account could not be set up (a bad `TERN_ADMIN_PASSWORD`).
    #[error("admin account: {0}")]
    Admin(String),
    /// The server key (`secret.key`, `TERN_SECRET_KEY`) could not be read
    /// or made.
    #[error("server key: {0}")]
    Secrets(String),
}

/// A server ready to serve: what `run` needs, and what to tell the operator.
pub struct Prepared {
    /// SHA-256 of the certificate, as join tokens carry it.
    pub fingerprint: [u8; 32],
    /// The admin's password when it was generated at this (first) start:
    /// shown once, never stored in the clear.
    pub initial_admin_password: Option<String>,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<http::AppState>,
    tickets: Arc<tickets::SharedTicketer>,
}

impl Prepared {
    /// The server's AGENT_SECRET, if it has one (for an agent started in the
    /// same process, as `tern quickstart` does).
    ///
    /// # Errors
    /// When the database fails.
    pub fn agent_secret(&self) -> Result<Option<String>, StartError> {
        Ok(self.state.with_store(|s| s.agent_secret())?)
    }
}

/// Opens the data directory: creates the certificate at first start, opens
/// (and migrates) the database.
///
/// # Errors
/// When the directory, certificate or database cannot be set up.
pub fn prepare(config: &ServerConfig) -> Result<Prepared, StartError> {
    std::fs::create_dir_all(&config.data).map_err(|e| StartError::Data(config.data.clone(), e))?;
    // The database, the key and the admin token are secrets: the directory
    // is the server's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StartError::Data(config.data.clone(), e))?;
    }
    let identity = match &config.cert {
        Some((cert, key)) => crate::tls::ServerIdentity::load(cert, key)?,
        None => crate::tls::ServerIdentity::load_or_create(&config.data, &config.names)?,
    };
    let pool = match &config.database {
        Some(url) => {
            let pg = store::postgres::PgPool::connect(url)?;
            store::Store::postgres(pg.get()?).backfill()?;
            store::pool::Pool::postgres(pg)
        }
        None => store::pool::Pool::new(store::Store::open(&config.data.join("tern.db"))?),
    };
    tracing::info!("database {}", pool.shown());
    let now = crate::clock::unix_now();
    // Stacks are queued for an environment when it joins a targeted group
    // or tag (api::fleet); a database written before that rule, when polls
    // and listings looked for them, is brought up to it once.
    pool.write(|tx| crate::server::domain::stacks::reconcile(tx, None, None, now))?;
    // Image pulls die with the process that ran them. (With replicas on
    // one PostgreSQL, another replica's pull may be under way: only pulls
    // no replica has touched for a while are given up.)
    let stale = if config.database.is_some() { now - store::images::PULL_STALE_SECS } else { i64::MAX };
    let interrupted = pool.write(|tx| tx.interrupt_pulls(stale, now))?;
    if interrupted > 0 {
        tracing::warn!("{interrupted} image pull(s) were under way when the server stopped: marked failed");
    }
    let initial_admin_password =
        pool.write(|tx| api::access::ensure_admin(tx, |k| std::env::var(k).ok()).map_err(StartError::Admin))?;
    let mut admin_token = admin_token(&config.data)?;
    if pool.read(|tx| api::access::token_revoked(tx, &admin_token))? {
        // An operator revoked it: a new one replaces it.
        let path = admin_token_path(&config.data);
        tracing::warn!("the admin token in {} was revoked; writing a new one", path.display());
        std::fs::remove_file(&path).map_err(|e| StartError::Data(path, e))?;
        admin_token = crate::server::admin_token(&config.data)?;
    }
    let fingerprint = identity.fingerprint();
    let state = http::AppState::with_pool(
        pool,
        Some(config.data.clone()),
        crate::wire::codec::Limits::default(),
        &admin_token,
        fingerprint,
    )?;
    // Session tickets any replica (and this server after a restart) opens.
    let tickets = tickets::SharedTicketer::load(&state.store, &state.secrets)?;
    let mut tls = identity.server_config()?;
    tls.ticketer = tickets.clone();
    Ok(Prepared { fingerprint, initial_admin_password, tls: Arc::new(tls), state, tickets })
}

/// The admin token file in a data directory.
pub fn admin_token_path(data: &std::path::Path) -> PathBuf {
    data.join("admin-token")
}

/// Reads the admin token, making one (random, mode 0600) at first start.
fn admin_token(data: &std::path::Path) -> Result<String, StartError> {
    let path = admin_token_path(data);
    let err = |e| StartError::Data(path.clone(), e);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| err(std::io::Error::other("no randomness")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path).map_err(err)?, token.as_bytes()).map_err(err)?;
    Ok(token)
}

impl Prepared {
    /// Sets the server's `AGENT_SECRET` (as `tern server` reads it from its
    /// environment): from now on every agent must hold the same one, mixed
    /// into its MAC key (see [`crate::auth::Secret::with_agent_secret`]).
    /// It is kept in the database, so it holds across restarts: `None` (not
    /// given) keeps the stored one, an empty text removes it.
    ///
    /// # Errors
    /// When the database fails.
    pub fn set_agent_secret(&self, secret: Option<&str>) -> Result<(), StartError> {
        let Some(secret) = secret else { return Ok(()) };
        Ok(self.state.with_store(|s| s.set_agent_secret(Some(secret)))?)
    }

    /// Whether the server requires an `AGENT_SECRET` of its agents.
    ///
    /// # Errors
    /// When the database fails.
    pub fn requires_agent_secret(&self) -> Result<bool, StartError> {
        Ok(self.state.read_store(|tx| tx.agent_secret())?.is_some())
    }
}

/// Serves on an already-bound listener until `shutdown` completes.
///
/// # Errors
/// When serving fails.
pub async fn run(
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    run_with(prepared, listener, shutdown, http::ConnectionLimits::default()).await
}

/// [`run`] with other connection limits (`tern server --idle-timeout`, which
/// the on-wire benchmark uses to close every connection between polls, as a
/// carrier NAT would).
///
/// # Errors
/// When serving fails.
pub async fn run_with(
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    limits: http::ConnectionLimits,
) -> std::io::Result<()> {
    prepared.tickets.spawn_refresh(prepared.state.clone());
    let state = prepared.state.clone();
    let flusher = tokio::spawn(keep_flushing_usage(state.clone()));
    let retries = tokio::spawn(keep_retrying_deploys(state.clone()));
    // PostgreSQL: the commands other replicas queue wake the agents held
    // here (`wakes`); stopped when this returns (or is dropped).
    let wake_listener = state.store.listen();
    let served = http::serve_app(listener, prepared.tls, prepared.state, shutdown, limits).await;
    drop(wake_listener);
    // Last: the charges of the connections the shutdown closed.
    flusher.abort();
    retries.abort();
    let _ = tokio::task::spawn_blocking(move || state.usage.settle(&state.store)).await;
    served
}

/// How often the server looks for failed stack deploys due to be tried
/// again (`domain::stacks::retry_due`).
const RETRY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends the stack deploys due to be tried again: one read every
/// [`RETRY_CHECK`], a write only when one is due.
async fn keep_retrying_deploys(state: std::sync::Arc<http::AppState>) {
    let mut every = tokio::time::interval(RETRY_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = crate::clock::unix_now();
            // Deploys whose window closed before they were sent wait for
            // the next one (one read; a write only when one is to wait).
            let closed =
                state.store.read(|tx| crate::server::domain::stacks::closed_unsent(tx, now).map(|d| !d.is_empty()));
            if matches!(closed, Ok(true)) {
                match state.store.write(|tx| crate::server::domain::stacks::hold_closed(tx, now)) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("{n} stack deploy(s) not sent in their window wait for the next one"),
                    Err(e) => tracing::warn!("stack deploy windows: {e}"),
                }
            }
            let due = state.store.read(|tx| tx.due_stack_retries(now).map(|d| !d.is_empty()));
            match due {
                Ok(true) => match state.store.write(|tx| crate::server::domain::stacks::retry_due(tx, now)) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("sent {n} stack deploy(s) again after a failure"),
                    Err(e) => tracing::warn!("stack deploy retries: {e}"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!("stack deploy retries: {e}"),
            }
        })
        .await;
    }
}

/// Writes the data usage charged in memory every [`ledger::FLUSH_EVERY`].
async fn keep_flushing_usage(state: std::sync::Arc<http::AppState>) {
    let mut every = tokio::time::interval(ledger::FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || state.usage.settle(&state.store)).await;
    }
}

/// `tern server`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TERN_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Data directory (database, certificate, key).
    #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
    pub data: PathBuf,
    /// A PostgreSQL database to keep everything in instead of SQLite in
    /// the data directory (`postgres://user:password@host:5432/tern`, or
    /// `postgres:///tern?host=/run/postgresql` on a Unix socket). Several
    /// servers on one database serve one fleet; give them the same
    /// certificate and key (--tls-cert/--tls-key) and TERN_SECRET_KEY.
    #[arg(long, env = "TERN_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// PEM certificate chain to use instead of the self-signed one.
    #[arg(long, env = "TERN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TERN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Names for the self-signed certificate (made at first start).
    #[arg(long = "cert-name", default_values = ["localhost", "127.0.0.1"])]
    pub cert_names: Vec<String>,
    /// A shared secret every agent must also be given (AGENT_SECRET on
    /// the agent); kept in the database. An empty value removes it.
    /// Prefer the AGENT_SECRET variable: a command-line option shows in
    /// the process list.
    #[arg(long, env = "AGENT_SECRET", hide_env_values = true)]
    pub agent_secret: Option<String>,
    /// Close a connection idle this many seconds between requests
    /// (default 600). Advanced: the on-wire benchmark shortens it to
    /// close every connection between polls, as a carrier NAT would.
    #[arg(long, hide = true, value_name = "SECONDS", value_parser = positive_seconds)]
    pub idle_timeout: Option<std::time::Duration>,
    /// Connections held at once (default 8192). Each costs a file
    /// descriptor and about 37 KB: for a large fleet on kept-alive
    /// connections, raise it with the file limit (`ulimit -n`).
    #[arg(long, env = "TERN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections held at once from one address (an IPv6 /64) that no
    /// poll has authenticated yet (default 512; 0 for no cap). An agent's
    /// connection stops counting once its poll is accepted, so agents
    /// behind one carrier NAT all get in; a flood that proves nothing is
    /// held to this.
    #[arg(long, env = "TERN_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// The same per IPv4 /24 and IPv6 /64 (default 2048; 0 for no cap).
    #[arg(long, env = "TERN_MAX_CONNECTIONS_PER_PREFIX", value_name = "N")]
    pub max_connections_per_prefix: Option<usize>,
    /// Load balancers that send a PROXY protocol v2 header (HAProxy's
    /// `send-proxy-v2`): addresses or networks, comma-separated
    /// (`10.0.0.5,10.1.0.0/16`). Their connections must carry one, and
    /// every per-client rule (connection caps, login limits, logs) applies
    /// to the client it names. A PROXY header from any other address is
    /// refused.
    #[arg(long, env = "TERN_PROXY_PROTOCOL", value_name = "ADDRESSES")]
    pub proxy_protocol: Option<http::proxy::Trusted>,
    /// Maintenance of the database instead of serving.
    #[command(subcommand)]
    pub command: Option<dbtools::ServerCommand>,
}

/// A positive number of seconds (`--idle-timeout 0.5`).
fn positive_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>().map(std::time::Duration::try_from_secs_f64) {
        Ok(Ok(d)) if !d.is_zero() => Ok(d),
        _ => Err("a positive number of seconds".into()),
    }
}

impl ServeArgs {
    /// `tern server`: serves until Ctrl-C or SIGTERM.
    ///
    /// # Errors
    /// When the server cannot start.
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(command) = self.command {
            return dbtools::run(command);
        }
        let mut limits = http::ConnectionLimits::default();
        if let Some(idle) = self.idle_timeout {
            limits.idle = idle;
        }
        if let Some(max) = self.max_connections {
            limits.max = max.max(1);
        }
        // 0: no cap.
        let cap = |n: usize| if n == 0 { usize::MAX } else { n };
        if let Some(max) = self.max_connections_per_address {
            limits.per_address = cap(max);
        }
        if let Some(max) = self.max_connections_per_prefix {
            limits.per_prefix = cap(max);
        }
        if let Some(proxies) = self.proxy_protocol {
            limits.proxies = proxies;
        }
        let config = ServerConfig {
            data: self.data,
            cert: self.tls_cert.zip(self.tls_key),
            names: self.cert_names,
            database: self.database.filter(|u| !u.is_empty()),
        };
        let prepared = prepare(&config)?;
        if std::env::args().any(|a| a == "--agent-secret" || a.starts_with("--agent-secret=")) {
            tracing::warn!(
                "--agent-secret on the command line shows the secret to anyone who can list processes (ps); set \
                 the AGENT_SECRET variable instead"
            );
        }
        prepared.set_agent_secret(self.agent_secret.as_deref())?;
        let listen = self.listen;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async move {
            let shutdown = crate::signal::shutdown();
            let listener = tokio::net::TcpListener::bind(listen).await?;
            // Printed on stdout, one item a line, so scripts and tests can read them.
            println!("listening on {}", listener.local_addr()?);
            println!("data directory {}", config.data.display());
            println!("certificate sha256 {}", fingerprint_hex(&prepared.fingerprint));
            // Only at first start, when it was generated: shown this once.
            // Not println!: a reader that stopped after the lines above
            // (closed stdout) must not stop the server.
            if let Some(password) = &prepared.initial_admin_password {
                let _ = std::io::Write::write_all(
                    &mut std::io::stdout(),
                    format!("admin password {password}\n").as_bytes(),
                );
            }
            run_with(prepared, listener, shutdown, limits).await?;
            Ok(())
        })
    }
}

/// The default port, as Portainer's UI port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9443";

/// Formats a fingerprint the way operators compare them.
pub fn fingerprint_hex(f: &[u8; 32]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_secret_given_at_start_is_kept_until_cleared() {
        let data = std::env::temp_dir().join(format!("tern-server-prepare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let config = ServerConfig::new(data.clone());
        let first = prepare(&config).unwrap();
        assert!(!first.requires_agent_secret().unwrap());
        first.set_agent_secret(Some("s3cret")).unwrap();
        assert!(first.requires_agent_secret().unwrap());
        drop(first);
        // Restarted without AGENT_SECRET: the stored one holds.
        let again = prepare(&config).unwrap();
        again.set_agent_secret(None).unwrap();
        assert!(again.requires_agent_secret().unwrap());
        // An empty one clears it.
        again.set_agent_secret(Some("")).unwrap();
        assert!(!again.requires_agent_secret().unwrap());
        drop(again);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
