//! The `tern` binary: parses the command line, sets up logging, and calls
//! into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern", version, about = "Edge agent and control server for Docker hosts on metered links")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the local Docker engine (DOCKER_HOST or the default socket) and
    /// show its canonical state, root digest and what a full snapshot costs
    /// on the wire (`tern-bench compare` sets it beside Portainer's).
    #[cfg(feature = "agent")]
    Snapshot {
        /// Keep the values of secret-looking environment variables.
        #[arg(long)]
        show_secrets: bool,
        /// List every container, not only the totals.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the agent for the local engine, configured the Portainer way by
    /// environment variables: EDGE_KEY, EDGE_ID, EDGE_INSECURE_POLL,
    /// AGENT_SECRET, DATA_PATH, DOCKER_HOST, LOG_LEVEL.
    #[cfg(feature = "agent")]
    Agent {
        #[command(subcommand)]
        command: Option<AgentCommand>,
    },
    /// Run the control server: one HTTPS port, an embedded database.
    #[cfg(feature = "server")]
    Server {
        /// Address to listen on.
        #[arg(long, env = "TERN_LISTEN", default_value = tern::server::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Data directory (database, certificate, key).
        #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
        data: std::path::PathBuf,
        /// PEM certificate chain to use instead of the self-signed one.
        #[arg(long, env = "TERN_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, env = "TERN_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// Names for the self-signed certificate (made at first start).
        #[arg(long = "cert-name", default_values = ["localhost", "127.0.0.1"])]
        cert_names: Vec<String>,
        /// A shared secret every agent must also be given (AGENT_SECRET on
        /// the agent); kept in the database. An empty value removes it.
        /// Prefer the AGENT_SECRET variable: a command-line option shows in
        /// the process list.
        #[arg(long, env = "AGENT_SECRET", hide_env_values = true)]
        agent_secret: Option<String>,
        /// Close a connection idle this many seconds between requests
        /// (default 600). Advanced: the on-wire benchmark shortens it to
        /// close every connection between polls, as a carrier NAT would.
        #[arg(long, hide = true, value_name = "SECONDS")]
        idle_timeout: Option<f64>,
    },
    /// Start a server on its embedded database and an agent for the local
    /// Docker engine, in one process: the quickest way to see tern work.
    /// Ctrl-C stops both; run it again and both carry on where they were.
    #[cfg(all(feature = "server", feature = "agent"))]
    Quickstart {
        /// Address to listen on (loopback only by default: the agent is local).
        #[arg(long, default_value = "127.0.0.1:9443")]
        listen: std::net::SocketAddr,
        /// Data directory (database, certificate, admin token, the local
        /// agent's state).
        #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
        data: std::path::PathBuf,
        /// Poll intervals of the local environment, in seconds. Short, since
        /// a local agent costs no data plan.
        #[arg(long, default_value_t = 5)]
        interval: u32,
    },
    /// Edge stacks: a compose file deployed to environments, groups or
    /// tags, with per-environment status.
    #[cfg(all(feature = "server", feature = "agent"))]
    Stack {
        #[command(subcommand)]
        command: tern::cli::stacks::StackCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Print a container's last log lines (fetched by its agent at its next
    /// poll).
    #[cfg(all(feature = "server", feature = "agent"))]
    Logs {
        #[command(flatten)]
        logs: tern::cli::logs::LogsArgs,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// API tokens for automation, through the server's API.
    #[cfg(all(feature = "server", feature = "agent"))]
    Token {
        #[command(subcommand)]
        command: tern::cli::access::TokenCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// The admin account, offline on the server's data directory.
    #[cfg(all(feature = "server", feature = "agent"))]
    Admin {
        #[command(subcommand)]
        command: tern::cli::access::AdminCommand,
    },
    /// Manage environments through the server's API.
    #[cfg(all(feature = "server", feature = "agent"))]
    Env {
        #[command(subcommand)]
        command: tern::cli::env::EnvCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Groups of environments, through the server's API.
    #[cfg(all(feature = "server", feature = "agent"))]
    Group {
        #[command(subcommand)]
        command: tern::cli::fleet::LabelCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Tags for environments, through the server's API.
    #[cfg(all(feature = "server", feature = "agent"))]
    Tag {
        #[command(subcommand)]
        command: tern::cli::fleet::LabelCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// The server's settings: default intervals, AGENT_SECRET.
    #[cfg(all(feature = "server", feature = "agent"))]
    Settings {
        #[command(subcommand)]
        command: tern::cli::fleet::SettingsCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Queue a command for an environment's agent (and follow it with --wait).
    #[cfg(all(feature = "server", feature = "agent"))]
    Cmd {
        #[command(flatten)]
        cmd: tern::cli::fleet::CmdArgs,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// An environment's commands, newest first.
    #[cfg(all(feature = "server", feature = "agent"))]
    Commands {
        /// The environment: id or name.
        env: String,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Edge jobs: a script run on chosen hosts, once or on a cron schedule,
    /// with its output collected.
    #[cfg(all(feature = "server", feature = "agent"))]
    Job {
        #[command(subcommand)]
        command: tern::cli::jobs::JobCommand,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Data usage through the server's API: what each environment's polls
    /// cost at the TLS socket and in poll bodies, per day and in total.
    #[cfg(all(feature = "server", feature = "agent"))]
    Usage {
        #[command(flatten)]
        usage: tern::cli::usage::UsageArgs,
        #[command(flatten)]
        api: tern::cli::ApiArgs,
    },
    /// Decode a captured poll body (request or reply) and print it: header,
    /// codec, sizes and the decoded message.
    DecodeBody {
        /// File holding the body as sent on the wire; `-` for standard input.
        file: std::path::PathBuf,
        /// The body is a server reply (default: an agent's poll request).
        #[arg(long)]
        reply: bool,
    },
}

#[cfg(feature = "agent")]
#[derive(Subcommand)]
enum AgentCommand {
    /// Read the local engine and print, as JSON, what this host costs: the
    /// object counts, the root digest, the encoded size of a full snapshot
    /// and of the delta from --base.
    DryRun {
        /// Save the state read, for a later --base.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
        /// A state saved earlier with --save: also report the delta from it.
        #[arg(long)]
        base: Option<std::path::PathBuf>,
    },
    /// Exit 0 when the agent using this data path is reaching its server:
    /// its last successful poll is at most 3 × its ping interval + 60 s old,
    /// or it started that recently; 1 otherwise. Prints why. The agent
    /// image's HEALTHCHECK.
    Health {
        /// The agent's data directory.
        #[arg(long, env = "DATA_PATH", default_value = tern::agent::config::DEFAULT_DATA_PATH)]
        data_path: std::path::PathBuf,
    },
}

impl Command {
    /// Servers and agents, which must outlive a closed pipe.
    fn long_running(&self) -> bool {
        match self {
            #[cfg(feature = "agent")]
            Self::Agent { command: None } => true,
            #[cfg(feature = "server")]
            Self::Server { .. } => true,
            #[cfg(all(feature = "server", feature = "agent"))]
            Self::Quickstart { .. } => true,
            _ => false,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Plain text when the log goes to a file or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // One-shot commands die quietly when their reader goes away (`tern env
    // list | head`), as Unix tools do; the long-running ones keep Rust's
    // default (SIGPIPE ignored), so a closed socket never kills a server.
    #[cfg(unix)]
    if !cli.command.long_running() {
        // SAFETY: restoring the default disposition of a signal, before any
        // thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        #[cfg(feature = "agent")]
        Command::Snapshot { show_secrets, verbose } => snapshot::run(show_secrets, verbose),
        Command::DecodeBody { file, reply } => decode_body(&file, reply),
        #[cfg(feature = "agent")]
        Command::Agent { command: None } => return agent_main(),
        #[cfg(feature = "agent")]
        Command::Agent { command: Some(AgentCommand::DryRun { save, base }) } => {
            snapshot::dry_run(save.as_deref(), base.as_deref())
        }
        #[cfg(feature = "agent")]
        Command::Agent { command: Some(AgentCommand::Health { data_path }) } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let verdict = tern::agent::health::check(&data_path, now);
            println!("{verdict}");
            return if verdict.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Env { command, api } => tern::cli::env::run(command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Group { command, api } => {
            tern::cli::fleet::run_label(tern::cli::fleet::LabelKind::Group, command, &api)
        }
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Tag { command, api } => tern::cli::fleet::run_label(tern::cli::fleet::LabelKind::Tag, command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Settings { command, api } => tern::cli::fleet::run_settings(command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Cmd { cmd, api } => tern::cli::fleet::run_cmd(&cmd, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Commands { env, api } => tern::cli::fleet::run_commands(&env, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Token { command, api } => tern::cli::access::run_token(command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Admin { command } => tern::cli::access::run_admin(command),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Usage { usage, api } => tern::cli::usage::run(&usage, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Job { command, api } => tern::cli::jobs::run(command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Stack { command, api } => tern::cli::stacks::run(command, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Logs { logs, api } => tern::cli::logs::run(&logs, &api),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Quickstart { listen, data, interval } => quickstart(listen, data, interval),
        #[cfg(feature = "server")]
        Command::Server { listen, data, tls_cert, tls_key, cert_names, agent_secret, idle_timeout } => {
            let cert = tls_cert.zip(tls_key);
            let mut limits = tern::server::http::ConnectionLimits::default();
            if let Some(s) = idle_timeout {
                match std::time::Duration::try_from_secs_f64(s) {
                    Ok(d) if !d.is_zero() => limits.idle = d,
                    _ => {
                        eprintln!("tern server: --idle-timeout must be a positive number of seconds");
                        return ExitCode::from(2);
                    }
                }
            }
            let config = tern::server::ServerConfig { data, cert, names: cert_names };
            server(listen, config, agent_secret.as_deref(), limits)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tern agent`: exit code 2 for a configuration error, 1 for a failure.
#[cfg(feature = "agent")]
fn agent_main() -> ExitCode {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let config = match tern::agent::config::AgentConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { tern::agent::start(config, shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for a registered signal (forever when it could not be registered).
#[cfg(unix)]
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Ctrl-C, or SIGTERM (what `docker stop` sends). The handlers are
/// registered when this is called (inside the runtime), not when the future
/// is first polled, so a signal that comes right after start is not lost.
#[cfg(any(feature = "agent", feature = "server"))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            tokio::select! {
                () = recv(&mut int) => {}
                () = recv(&mut term) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("tern: shutting down");
    }
}

#[cfg(feature = "server")]
fn server(
    listen: std::net::SocketAddr,
    config: tern::server::ServerConfig,
    agent_secret: Option<&str>,
    limits: tern::server::http::ConnectionLimits,
) -> anyhow::Result<()> {
    let prepared = tern::server::prepare(&config)?;
    if std::env::args().any(|a| a == "--agent-secret" || a.starts_with("--agent-secret=")) {
        tracing::warn!(
            "--agent-secret on the command line shows the secret to anyone who can list processes (ps); set the \
             AGENT_SECRET variable instead"
        );
    }
    prepared.set_agent_secret(agent_secret)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        // Printed on stdout, one item a line, so scripts and tests can read them.
        println!("listening on {}", listener.local_addr()?);
        println!("data directory {}", config.data.display());
        println!("certificate sha256 {}", tern::server::fingerprint_hex(&prepared.fingerprint));
        // Only at first start, when it was generated: shown this once. Not
        // println!: a reader that stopped after the lines above (closed
        // stdout) must not stop the server.
        if let Some(password) = &prepared.initial_admin_password {
            let _ =
                std::io::Write::write_all(&mut std::io::stdout(), format!("admin password {password}\n").as_bytes());
        }
        tern::server::run_with(prepared, listener, shutdown, limits).await?;
        Ok(())
    })
}

/// `tern quickstart`: the server, an environment named `local` (made once,
/// its join token kept in `<data>/local-agent/edge_key`), and its agent.
#[cfg(all(feature = "server", feature = "agent"))]
fn quickstart(listen: std::net::SocketAddr, data: std::path::PathBuf, interval: u32) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    let config = tern::server::ServerConfig {
        data: data.clone(),
        cert: None,
        names: vec!["localhost".into(), "127.0.0.1".into()],
    };
    let prepared = tern::server::prepare(&config)?;
    let agent_secret = prepared.agent_secret()?;
    let fingerprint = prepared.fingerprint;
    let initial_admin_password = prepared.initial_admin_password.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let interrupted = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (another tern running? try --listen 127.0.0.1:0)"))?;
        let addr = listener.local_addr()?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let server = tokio::spawn(tern::server::run(prepared, listener, stopped(stop_rx.clone())));

        let agent_dir = data.join("local-agent");
        std::fs::create_dir_all(&agent_dir).with_context(|| format!("creating {}", agent_dir.display()))?;
        let key_path = agent_dir.join("edge_key");
        let edge_key = match std::fs::read_to_string(&key_path) {
            Ok(k) => k.trim().to_owned(),
            Err(_) => {
                let admin = std::fs::read_to_string(tern::server::admin_token_path(&data))?;
                let mut api = tern::agent::client::Client::new(&url, tern::tls::Trust::Pinned(fingerprint), 1 << 20)?;
                let body = serde_json::json!({
                    "name": "local",
                    "url": url,
                    "intervals": { "ping": interval, "snapshot": interval, "command": interval },
                });
                let (status, reply) =
                    api.post_json("/api/environments", admin.trim(), body.to_string().into_bytes()).await?;
                if status != 201 {
                    bail!(
                        "creating the local environment: server answered {status}: {} (remove {} to start afresh)",
                        String::from_utf8_lossy(&reply),
                        data.display()
                    );
                }
                let created: tern::server::api::CreatedEnvironment = serde_json::from_slice(&reply)?;
                // The join token is a secret: the operator's alone.
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                std::io::Write::write_all(&mut opts.open(&key_path)?, created.edge_key.as_bytes())?;
                created.edge_key
            }
        };
        let mut token = tern::auth::JoinToken::parse(&edge_key).context("the saved local EDGE_KEY")?;
        // The port may differ from the first run's (--listen 127.0.0.1:0):
        // the agent and the stored environment (its deploy commands) follow.
        if token.url != url {
            let admin = std::fs::read_to_string(tern::server::admin_token_path(&data))?;
            let mut api = tern::agent::client::Client::new(&url, tern::tls::Trust::Pinned(fingerprint), 1 << 20)?;
            let body = serde_json::json!({ "url": url }).to_string().into_bytes();
            let path = format!("/api/environments/{}", token.environment);
            let (status, reply) = api.api(hyper::Method::PATCH, &path, admin.trim(), Some(body)).await?;
            if status != 200 {
                tracing::warn!("the local environment keeps its old URL: {status} {}", String::from_utf8_lossy(&reply));
            }
            token.url = url.clone();
        }
        let env_id = token.environment;
        // The agent reads its settings as `tern agent` does (EDGE_JOB_*,
        // EDGE_COMPOSE, EDGE_TLS_PQ, LOG_LEVEL, ...), with the local
        // environment's key, its data directory, and the server's own
        // AGENT_SECRET unless one is given.
        let mut vars: std::collections::BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("EDGE") || k.starts_with("AGENT_") || k == "LOG_LEVEL" || k == "DOCKER_HOST")
            .collect();
        vars.insert("EDGE_KEY".into(), token.encode());
        vars.insert("DATA_PATH".into(), agent_dir.display().to_string());
        if !vars.contains_key("AGENT_SECRET")
            && let Some(secret) = agent_secret
        {
            vars.insert("AGENT_SECRET".into(), secret);
        }
        let agent_config =
            tern::agent::config::AgentConfig::from_env(&vars).map_err(|e| anyhow::anyhow!("agent: {e}"))?;
        let mut banner = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(banner, "tern is running: a server and an agent for this host's Docker engine.");
        let _ = writeln!(banner);
        let _ = writeln!(
            banner,
            "  server       {url}  (certificate sha256 {})",
            tern::server::fingerprint_hex(&fingerprint)
        );
        let _ = writeln!(
            banner,
            "  web UI       {url}/  (user admin; the browser will warn of the self-signed certificate)"
        );
        let _ = writeln!(banner, "  data         {}", data.display());
        let _ = writeln!(banner, "  admin token  {}", tern::server::admin_token_path(&data).display());
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
            "  environment  local, polling every {interval} s; agent state in {}",
            agent_dir.display()
        );
        let _ = writeln!(banner);
        let _ = writeln!(banner, "Look at it from another terminal:");
        let _ = writeln!(
            banner,
            "  curl -sk -H \"Authorization: Bearer $(cat {})\" {url}/api/environments/{env_id}/state",
            tern::server::admin_token_path(&data).display()
        );
        let _ = writeln!(banner, "  tern env add --name another-host --server {url} --data {}", data.display());
        let _ = writeln!(banner);
        let _ = writeln!(banner, "Ctrl-C stops both.");
        // Not println!: a closed stdout (a pipe to `head`) must not stop the server.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
        let agent = tern::agent::start(agent_config, stopped(stop_rx.clone()));
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

fn decode_body(file: &std::path::Path, reply: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use tern::wire::codec::{Codec, Limits};
    use tern::wire::poll::{PollReply, PollRequest};
    let wire = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    let body = Codec::new(Limits::default())?.decode(&wire)?;
    println!("{} B on the wire, version {}, codec {}, {} B decoded", wire.len(), wire[0], wire[1], body.len());
    if reply {
        println!("{:#?}", PollReply::decode(&body)?);
        return Ok(());
    }
    let req = PollRequest::decode(&body)?;
    println!("poll request: base {}, {} results, agent {:?}", req.base, req.results.len(), req.agent);
    match &req.delta {
        Some(d) => {
            let (removed, changed, added) = d.counts();
            println!("delta: {removed} removed, {changed} changed, {added} added, root {:02x?}", d.root());
        }
        None => println!("no state reported (heartbeat or command poll)"),
    }
    for r in &req.results {
        println!("result: {r:?}");
    }
    Ok(())
}

#[cfg(feature = "agent")]
mod snapshot {
    use anyhow::Context;
    use tern::agent;
    use tern::agent::CanonicalOptions;
    use tern::sync::{State, diff};
    use tern::wire::codec::{Codec, Limits};
    use tern::wire::poll::PollRequest;

    /// `tern agent dry-run`.
    pub fn dry_run(save: Option<&std::path::Path>, base: Option<&std::path::Path>) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let raw = rt.block_on(async {
            let docker = agent::connect().await?;
            agent::collect(&docker).await
        })?;
        // The same options the agent uses (secrets redacted).
        let state = raw.canonical(&CanonicalOptions::default()).context("building the canonical state")?;
        let mut codec = Codec::new(Limits::default())?;
        let size = |codec: &mut Codec, from: &State| -> anyhow::Result<usize> {
            let body = PollRequest { base: 0, delta: Some(diff(from, &state)), ..PollRequest::default() }.encode();
            Ok(codec.encode(&body)?.len())
        };
        let full = size(&mut codec, &State::default())?;
        let delta = match base {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let old = State::from_snapshot(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not a state saved by --save: {e}", path.display()))?;
                Some(size(&mut codec, &old)?)
            }
            None => None,
        };
        if let Some(path) = save {
            std::fs::write(path, state.to_snapshot()).with_context(|| format!("writing {}", path.display()))?;
        }
        let out = serde_json::json!({
            "containers": state.containers.len(),
            "images": state.images.len(),
            "volumes": state.volumes.len(),
            "networks": state.networks.len(),
            "stacks": state.stacks().len(),
            "root": blake3::Hash::from(state.root()).to_hex().to_string(),
            "full_snapshot_bytes": full,
            "delta_bytes": delta,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }

    pub fn run(show_secrets: bool, verbose: bool) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let raw = rt.block_on(async {
            let docker = agent::connect().await?;
            agent::collect(&docker).await
        })?;
        let opts = CanonicalOptions { redact_secrets: !show_secrets };
        let state = raw.canonical(&opts).context("building the canonical state")?;

        let delta = diff(&State::default(), &state);
        let body = PollRequest { base: 0, delta: Some(delta), ..PollRequest::default() }.encode();
        let wire = Codec::new(Limits::default())?.encode(&body)?;

        let h = &state.host;
        println!(
            "host        {} ({} {}, engine {}, {} CPUs, {} MiB)",
            h.hostname,
            h.operating_system,
            h.architecture,
            h.engine_version,
            h.cpus,
            h.memory_bytes >> 20
        );
        println!("containers  {}", state.containers.len());
        println!("images      {}", state.images.len());
        println!("volumes     {}", state.volumes.len());
        println!("networks    {}", state.networks.len());
        println!("stacks      {}", state.stacks().len());
        println!("root        {}", blake3::Hash::from(state.root()).to_hex());
        println!(
            "full snapshot on the wire: {} B protobuf, {} B encoded (`tern-bench compare` sets it beside Portainer's)",
            body.len(),
            wire.len()
        );
        if verbose {
            for c in state.containers.iter() {
                println!("  {} {:<32} {:<28} {:?}", c.id.short(), c.name, c.image, c.status);
            }
        }
        Ok(())
    }
}
