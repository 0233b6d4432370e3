//! `tern job`: edge jobs through the server's API.
//!
//! ```text
//! tern job create --name N --script FILE|- [--cron "*/5 * * * *"] [--image I] [--timeout S]
//!                 (--env-id ID | --group G | --tag T)...
//! tern job list
//! tern job show ID
//! tern job runs ID [--env ENV] [--limit N]
//! tern job rm ID
//! ```

use std::io::Read;

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::types::{CreateJob, JobDetail, JobItem, RefBody, RunView, TargetsBody};

/// `tern job ...`
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Create a job: a shell script run on each targeted host (through a
    /// helper container that chroots into the host's root), once or on a
    /// cron schedule kept by each agent.
    Create(CreateArgs),
    /// List the jobs.
    List,
    /// A job's script and, per environment, whether the agent has it, its
    /// last run and exit code.
    Show {
        /// The job: id or name.
        id: String,
    },
    /// A job's runs, newest first, with their output.
    Runs {
        /// The job: id or name.
        id: String,
        /// Only this environment's runs (id or name).
        #[arg(long)]
        env: Option<String>,
        /// At most this many runs (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Delete a job: each agent stops it; its runs stay readable.
    Rm {
        /// The job: id or name.
        id: String,
    },
}

/// `tern job create`
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The job's name.
    #[arg(long)]
    pub name: String,
    /// The script: a file, or `-` for standard input (at most 64 KiB).
    #[arg(long)]
    pub script: String,
    /// A cron schedule, UTC: 5 fields ("*/5 * * * *"), or 6 with a leading
    /// seconds field. Without it the job runs once, when each agent gets it.
    #[arg(long)]
    pub cron: Option<String>,
    /// The helper image (it needs `sh` and `chroot`); default: each agent's
    /// EDGE_JOB_IMAGE.
    #[arg(long)]
    pub image: Option<String>,
    /// Kill a run after this many seconds (default: the agent's, 1 h).
    #[arg(long)]
    pub timeout: Option<u32>,
    /// An environment (id or name); repeat for more.
    #[arg(long = "env-id")]
    pub env_ids: Vec<String>,
    /// A group (name or id): its environments now; repeat for more.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// A tag (name or id): the environments with it now; repeat for more.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

/// A target for the API: digits are an id, anything else a name.
fn target(t: &str) -> RefBody {
    t.parse::<u64>().map_or_else(|_| RefBody::Name(t.to_owned()), RefBody::Id)
}

fn read_script(path: &str) -> anyhow::Result<String> {
    let mut script = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut script).context("reading the script from standard input")?;
    } else {
        script = std::fs::read_to_string(path).with_context(|| format!("reading the script {path}"))?;
    }
    Ok(script)
}

fn time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

fn print_detail(job: &JobDetail) {
    let j = &job.item;
    println!("job {}  {}  version {}", j.id, j.name, j.version);
    println!("  schedule  {}", j.cron.as_deref().map_or_else(|| "run once".to_owned(), |c| format!("{c} (UTC)")));
    println!("  image     {}", j.image.as_deref().unwrap_or("the agent's default"));
    if let Some(t) = j.timeout_s {
        println!("  timeout   {t} s");
    }
    if let Some(t) = j.removed_at {
        println!("  deleted   {}", time(t));
    }
    println!("  script:");
    for line in job.script.lines() {
        println!("    {line}");
    }
    println!("  environments:");
    for e in &job.environments {
        let run = match &e.last_run {
            None => "no run yet".to_owned(),
            Some(last) => format!("last run {} exit {} at {}", last.run, last.exit_code, time(last.finished_at)),
        };
        // The environment's id unpadded, as printed before.
        println!(
            "    {} {:<20} v{} {:<9}{} {run}, {} run(s){}",
            e.environment,
            e.name,
            e.version,
            e.status.as_deref().unwrap_or("-"),
            if e.removed { " (removed)" } else { "" },
            e.runs,
            e.error.as_deref().map(|err| format!("; error: {err}")).unwrap_or_default(),
        );
    }
}

fn print_runs(runs: &[RunView]) {
    if runs.is_empty() {
        println!("no runs yet");
    }
    for r in runs {
        let number = if r.run == 0 { "once".to_owned() } else { format!("run {}", r.run) };
        println!(
            "== environment {}, {number}, version {}, exit {}, finished {}{}{}",
            r.environment,
            r.version,
            r.exit_code,
            time(r.finished_at),
            if r.truncated { " (output cut to its last 64 KiB)" } else { "" },
            r.error.as_deref().map(|e| format!("\n   error: {e}")).unwrap_or_default(),
        );
        let out = r.output.as_deref().unwrap_or_default();
        print!("{out}");
        if !out.is_empty() && !out.ends_with('\n') {
            println!();
        }
    }
}

/// Runs a `tern job` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run(command: JobCommand, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    match command {
        JobCommand::Create(args) => {
            if args.env_ids.is_empty() && args.groups.is_empty() && args.tags.is_empty() {
                bail!("name at least one target: --env-id, --group or --tag");
            }
            let body = CreateJob {
                name: args.name,
                script: read_script(&args.script)?,
                cron: args.cron,
                image: args.image,
                timeout_s: args.timeout,
                targets: TargetsBody {
                    environments: args.env_ids.iter().map(|t| target(t)).collect(),
                    groups: args.groups.iter().map(|t| target(t)).collect(),
                    tags: args.tags.iter().map(|t| target(t)).collect(),
                },
            };
            let job: JobDetail = api.send("POST", "/api/jobs", &body)?;
            api.show(&job, |job| {
                let n = job.environments.len();
                println!("job {} created, queued on {n} environment(s)", job.item.id);
                print_detail(job);
            });
        }
        JobCommand::List => {
            let jobs: Vec<JobItem> = api.get_as("/api/jobs")?;
            api.show(&jobs, |jobs| {
                println!("{:>5}  {:<24} {:<20} {:>7}  UPDATED", "ID", "NAME", "SCHEDULE", "VERSION");
                for j in jobs {
                    // The id and the version unpadded, as printed before.
                    println!(
                        "{}  {:<24} {:<20} {}  {}",
                        j.id,
                        j.name,
                        j.cron.as_deref().unwrap_or("once"),
                        j.version,
                        time(j.updated_at)
                    );
                }
            });
        }
        JobCommand::Show { id } => {
            let id = job_id(&mut api, &id)?;
            let job: JobDetail = api.get_as(&format!("/api/jobs/{id}"))?;
            api.show(&job, print_detail);
        }
        JobCommand::Runs { id, env, limit } => {
            let id = job_id(&mut api, &id)?;
            let mut path = format!("/api/jobs/{id}/runs?limit={limit}");
            if let Some(e) = env {
                let e: String = e
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            char::from(b).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                path.push_str(&format!("&environment={e}"));
            }
            let runs: Vec<RunView> = api.get_as(&path)?;
            api.show(&runs, |runs| print_runs(runs));
        }
        JobCommand::Rm { id } => {
            let id = job_id(&mut api, &id)?;
            let path = format!("/api/jobs/{id}");
            let job: JobDetail = super::typed(api.call("DELETE", &path, None)?, "DELETE", &path)?;
            api.show(&job, |job| {
                let n = job.environments.len();
                println!("job {id} deleted; {n} environment(s) told to stop it");
            });
        }
    }
    Ok(())
}

/// The id of a job named by id or name (the newest of that name).
fn job_id(api: &mut Api, job: &str) -> anyhow::Result<u64> {
    if let Ok(id) = job.parse() {
        return Ok(id);
    }
    let list: Vec<JobItem> = api.get_as("/api/jobs")?;
    list.iter().filter(|j| j.name == job).map(|j| j.id).max().ok_or_else(|| anyhow::anyhow!("no job named {job:?}"))
}
