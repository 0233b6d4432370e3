//! The `tern` binary: parses the command line, sets up logging, and hands
//! each command to the library (`tern::agent`, `tern::server`, `tern::cli`).

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
        command: Option<tern::agent::AgentCommand>,
    },
    /// Run the control server: one HTTPS port, an embedded database.
    #[cfg(feature = "server")]
    Server(tern::server::ServeArgs),
    /// Start a server on its embedded database and an agent for the local
    /// Docker engine, in one process: the quickest way to see tern work.
    /// Ctrl-C stops both; run it again and both carry on where they were.
    #[cfg(all(feature = "server", feature = "agent"))]
    Quickstart(tern::server::quickstart::QuickstartArgs),
    #[cfg(all(feature = "server", feature = "agent"))]
    #[command(flatten)]
    Operator(tern::cli::Command),
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

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        // One JSON object a line, for a log collector: time, level,
        // target, message and the event's fields.
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Plain text when the log goes to a file or `docker logs`.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let cli = Cli::parse();
    // One-shot commands die quietly when their reader goes away (`tern env
    // list | head`), as Unix tools do; servers and agents keep Rust's
    // default (SIGPIPE ignored), so a closed socket never kills them.
    let long_running = match &cli.command {
        #[cfg(feature = "agent")]
        Command::Agent { command: None } => true,
        #[cfg(feature = "server")]
        Command::Server(_) => true,
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Quickstart(_) => true,
        _ => false,
    };
    #[cfg(unix)]
    if !long_running {
        // SAFETY: restoring the default disposition of a signal, before any
        // thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let _ = long_running;
    let result = match cli.command {
        #[cfg(feature = "agent")]
        Command::Snapshot { show_secrets, verbose } => tern::agent::inspect::snapshot(show_secrets, verbose),
        #[cfg(feature = "agent")]
        Command::Agent { command } => return tern::agent::main(command),
        #[cfg(feature = "server")]
        Command::Server(args) => args.run(),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Quickstart(args) => args.run(),
        #[cfg(all(feature = "server", feature = "agent"))]
        Command::Operator(command) => command.run(),
        Command::DecodeBody { file, reply } => decode_body(&file, reply),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tern decode-body`: what a captured body holds.
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
