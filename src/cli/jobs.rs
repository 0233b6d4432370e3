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
use serde_json::{Value, json};

use super::{Api, ApiArgs};

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
fn target(t: &str) -> Value {
    t.parse::<u64>().map_or_else(|_| json!(t), |id| json!(id))
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

fn time(t: &Value) -> String {
    t.as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn print_detail(job: &Value) {
    println!("job {}  {}  version {}", job["id"], text(&job["name"]), job["version"]);
    println!("  schedule  {}", job["cron"].as_str().map_or_else(|| "run once".to_owned(), |c| format!("{c} (UTC)")));
    println!("  image     {}", job["image"].as_str().unwrap_or("the agent's default"));
    if let Some(t) = job["timeout_s"].as_u64() {
        println!("  timeout   {t} s");
    }
    if !job["removed_at"].is_null() {
        println!("  deleted   {}", time(&job["removed_at"]));
    }
    println!("  script:");
    for line in job["script"].as_str().unwrap_or_default().lines() {
        println!("    {line}");
    }
    println!("  environments:");
    for e in job["environments"].as_array().into_iter().flatten() {
        let last = &e["last_run"];
        let run = if last.is_null() {
            "no run yet".to_owned()
        } else {
            format!("last run {} exit {} at {}", last["run"], last["exit_code"], time(&last["finished_at"]))
        };
        println!(
            "    {:>4} {:<20} v{} {:<9}{} {run}, {} run(s){}",
            e["environment"],
            text(&e["name"]),
            e["version"],
            text(&e["status"]),
            if e["removed"].as_bool() == Some(true) { " (removed)" } else { "" },
            e["runs"],
            e["error"].as_str().map(|err| format!("; error: {err}")).unwrap_or_default(),
        );
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
            let mut body = json!({
                "name": args.name,
                "script": read_script(&args.script)?,
                "targets": {
                    "environments": args.env_ids.iter().map(|t| target(t)).collect::<Vec<_>>(),
                    "groups": args.groups.iter().map(|t| target(t)).collect::<Vec<_>>(),
                    "tags": args.tags.iter().map(|t| target(t)).collect::<Vec<_>>(),
                },
            });
            if let Some(c) = args.cron {
                body["cron"] = json!(c);
            }
            if let Some(i) = args.image {
                body["image"] = json!(i);
            }
            if let Some(t) = args.timeout {
                body["timeout_s"] = json!(t);
            }
            let job = api.post("/api/jobs", &body)?;
            api.print(&job, |job| {
                let n = job["environments"].as_array().map_or(0, Vec::len);
                println!("job {} created, queued on {n} environment(s)", job["id"]);
                print_detail(job);
            });
        }
        JobCommand::List => {
            let jobs = api.get("/api/jobs")?;
            api.print(&jobs, |jobs| {
                println!("{:>5}  {:<24} {:<20} {:>7}  UPDATED", "ID", "NAME", "SCHEDULE", "VERSION");
                for j in jobs.as_array().into_iter().flatten() {
                    println!(
                        "{:>5}  {:<24} {:<20} {:>7}  {}",
                        j["id"],
                        text(&j["name"]),
                        j["cron"].as_str().unwrap_or("once"),
                        j["version"],
                        time(&j["updated_at"])
                    );
                }
            });
        }
        JobCommand::Show { id } => {
            let id = job_id(&mut api, &id)?;
            let job = api.get(&format!("/api/jobs/{id}"))?;
            api.print(&job, print_detail);
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
            let runs = api.get(&path)?;
            api.print(&runs, |runs| {
                let runs = runs.as_array().cloned().unwrap_or_default();
                if runs.is_empty() {
                    println!("no runs yet");
                }
                for r in runs {
                    let number =
                        if r["run"].as_u64() == Some(0) { "once".to_owned() } else { format!("run {}", r["run"]) };
                    println!(
                        "== environment {}, {number}, version {}, exit {}, finished {}{}{}",
                        r["environment"],
                        r["version"],
                        r["exit_code"],
                        time(&r["finished_at"]),
                        if r["truncated"].as_bool() == Some(true) { " (output cut to its last 64 KiB)" } else { "" },
                        r["error"].as_str().map(|e| format!("\n   error: {e}")).unwrap_or_default(),
                    );
                    let out = r["output"].as_str().unwrap_or_default();
                    print!("{out}");
                    if !out.is_empty() && !out.ends_with('\n') {
                        println!();
                    }
                }
            });
        }
        JobCommand::Rm { id } => {
            let id = job_id(&mut api, &id)?;
            let job = api.call("DELETE", &format!("/api/jobs/{id}"), None)?;
            api.print(&job, |job| {
                let n = job["environments"].as_array().map_or(0, Vec::len);
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
    let list = api.get("/api/jobs")?;
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["name"] == job)
        .filter_map(|j| j["id"].as_u64())
        .max()
        .ok_or_else(|| anyhow::anyhow!("no job named {job:?}"))
}
