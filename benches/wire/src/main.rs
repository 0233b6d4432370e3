//! `tern-bench`: the bench lab's command line (not part of the `tern`
//! binary).
//!
//! * `tern-bench wire`: the on-wire benchmark (README, "On-wire
//!   benchmark"), root only;
//! * `tern-bench compare`: the local engine's full snapshot as tern sends
//!   it and as Portainer's async agent does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern-bench", about = "tern's bench lab: the on-wire benchmark and the Portainer comparison")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The on-wire benchmark: the fixture host in a Docker engine of its
    /// own, a real server and agent, the Portainer-style baseline beside
    /// them, on an emulated link; prints the results table and writes it
    /// (markdown and JSON) to --out. Root only.
    #[cfg(target_os = "linux")]
    Wire(WireArgs),
    /// Read the local Docker engine and print what a full snapshot costs on
    /// the wire, as tern sends it and as Portainer's async agent does.
    #[cfg(target_os = "linux")]
    Compare {
        /// The engine's socket.
        #[arg(long, default_value = "/var/run/docker.sock")]
        socket: PathBuf,
    },
}

/// `tern-bench wire`'s options.
#[cfg(target_os = "linux")]
#[derive(clap::Args)]
struct WireArgs {
    /// Link profile: clean, 2g, satellite, or all (one after the other).
    #[arg(long, default_value = "all")]
    profile: String,
    /// Polls in each idle scenario.
    #[arg(long, default_value_t = 60)]
    idle_polls: u64,
    /// Commands queued in each mode, polling and holding a session, for
    /// their latency (issue #16); 0 leaves the held session out.
    #[arg(long, default_value_t = 20)]
    commands: usize,
    /// Where the results go (<profile>.md, <profile>.json, results.md).
    #[arg(long, default_value = "wirebench-results")]
    out: PathBuf,
    /// Also write the bytes-per-day chart of the profiles run here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Seed of the link's random loss.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The source tree (for scripts/make-fixtures.sh): run from its root,
    /// or name it.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The `tern` binary that serves (default: the one beside this binary,
    /// as `cargo build --workspace` leaves them).
    #[arg(long)]
    tern: Option<PathBuf>,
    /// The agent's binary, when not --tern: e.g. the agent-only build the
    /// image holds (scripts/agent-image.sh), for its memory figures.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Leave out the last scenario (idle polls on new connections), whose
    /// baseline side does not go quiet on the satellite link after the
    /// session phase.
    #[arg(long)]
    skip_new_connection: bool,
    /// Run nothing: print the tables of the runs saved in --out
    /// (<profile>.json) and write --svg from them.
    #[arg(long)]
    report: bool,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        #[cfg(target_os = "linux")]
        Command::Wire(args) => wire(args),
        #[cfg(target_os = "linux")]
        Command::Compare { socket } => compare(&socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tern-bench wire`.
#[cfg(target_os = "linux")]
fn wire(args: WireArgs) -> anyhow::Result<()> {
    use tern_bench::wirebench::{self, Options, Profile, Report};
    let WireArgs {
        profile,
        idle_polls,
        commands,
        out,
        svg,
        seed,
        repo,
        tern,
        agent,
        skip_new_connection,
        report: saved,
    } = args;
    if !saved && !repo.join("scripts/make-fixtures.sh").is_file() {
        anyhow::bail!(
            "{} is not tern's source tree (no scripts/make-fixtures.sh): run from its root or pass --repo",
            repo.display()
        );
    }
    let names: Vec<&str> = if profile == "all" { Profile::NAMES.to_vec() } else { vec![profile.as_str()] };
    let profiles = names
        .iter()
        .map(|n| Profile::by_name(n).with_context(|| format!("unknown profile {n:?} (clean, 2g, satellite, all)")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let tern = match tern {
        Some(t) => t,
        None => std::env::current_exe()?.with_file_name("tern"),
    };
    if !saved && !tern.is_file() {
        anyhow::bail!("no tern binary at {} (cargo build --workspace, or pass --tern)", tern.display());
    }
    let mut reports = Vec::new();
    for profile in profiles {
        let name = profile.name.clone();
        let json = out.join(format!("{name}.json"));
        let report: Report = if saved {
            if !json.exists() {
                continue;
            }
            serde_json::from_slice(&std::fs::read(&json)?).with_context(|| format!("reading {}", json.display()))?
        } else {
            let options = Options {
                profile,
                idle_polls,
                agent: agent.clone().unwrap_or_else(|| tern.clone()),
                tern: tern.clone(),
                repo: repo.clone(),
                seed,
                restarts: 3,
                commands,
                verbose: true,
                skip_new_connection,
            };
            wirebench::run(&options).with_context(|| format!("profile {name}"))?
        };
        let md = wirebench::markdown(&report);
        println!("{md}");
        std::fs::write(out.join(format!("{name}.md")), &md)?;
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
        reports.push(report);
    }
    let summary = wirebench::summary_markdown(&reports);
    println!("{summary}");
    std::fs::write(out.join("results.md"), &summary)?;
    if let Some(svg) = svg {
        std::fs::write(&svg, wirebench::chart_svg(&reports)).with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(())
}

/// `tern-bench compare`.
#[cfg(target_os = "linux")]
fn compare(socket: &std::path::Path) -> anyhow::Result<()> {
    use tern::agent::CanonicalOptions;
    use tern::sync::State;
    use tern::wire::codec::{Codec, Limits};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (raw, json) = rt.block_on(async {
        let docker = bollard::Docker::connect_with_unix(
            socket.to_str().context("a socket path in UTF-8")?,
            120,
            bollard::API_DEFAULT_VERSION,
        )?;
        let raw = tern::agent::collect(&docker).await?;
        let json = tern_bench::wirebench::portainer::read_engine(socket).await?;
        anyhow::Ok((raw, json))
    })?;
    let state = raw.canonical(&CanonicalOptions::default()).context("building the canonical state")?;
    // The first poll's body, as the agent sends it (the scenarios' own).
    let wire = tern_bench::scenarios::poll_body(&mut Codec::new(Limits::default())?, 0, &State::default(), &state)?;
    let portainer = tern_bench::baseline::full_bytes(&tern_bench::baseline::snapshot(&json));
    println!(
        "{} containers, {} images, {} volumes, {} networks",
        state.containers.len(),
        state.images.len(),
        state.volumes.len(),
        state.networks.len()
    );
    println!("full snapshot: tern {} B encoded; Portainer-style ~{portainer} B gzip'd JSON", wire.len());
    Ok(())
}
