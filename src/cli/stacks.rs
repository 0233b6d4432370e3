//! `tern stack`: edge stacks through the server's API.
//!
//! ```text
//! tern stack deploy --name web --file compose.yml --env TAG=1.25 --group ships --tag gps [--wait]
//! tern stack list
//! tern stack show web            # per-environment status
//! tern stack update web --file compose.yml --env TAG=1.26 [--wait]
//! tern stack rm web [--wait]
//! ```
//!
//! A stack is named by id or by name. `--env` on `update` replaces every
//! variable (left out: they stay); `--env-id`, `--group` or `--tag` on
//! `update` replace every target (left out: they stay).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::fleet::print_table;
use super::{Api, ApiArgs};

/// Where a stack goes: repeat any of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Targets {
    /// An environment (id or name).
    #[arg(long = "env-id", value_name = "ENV")]
    pub environments: Vec<String>,
    /// Every environment of a group (name or id), now and later.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Every environment with a tag (name or id), now and later.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.environments.is_empty() && self.groups.is_empty() && self.tags.is_empty()
    }

    fn to_json(&self) -> Value {
        let refs = |list: &[String]| -> Vec<Value> {
            list.iter().map(|t| t.parse::<u64>().map_or_else(|_| json!(t), |id| json!(id))).collect()
        };
        json!({ "environments": refs(&self.environments), "groups": refs(&self.groups), "tags": refs(&self.tags) })
    }
}

/// `tern stack ...`
#[derive(Debug, clap::Subcommand)]
pub enum StackCommand {
    /// Deploy a compose file to environments, groups or tags.
    Deploy {
        /// The stack's name (a compose project name: lowercase letters,
        /// digits, '-', '_').
        #[arg(long)]
        name: String,
        /// The compose file.
        #[arg(long)]
        file: PathBuf,
        /// A variable for the file's ${VAR} interpolation (repeat).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Where it goes.
        #[command(flatten)]
        targets: Targets,
        /// Wait until every environment reports.
        #[arg(long)]
        wait: bool,
    },
    /// Every stack with its status.
    List,
    /// One stack: its targets and its status on each environment.
    Show {
        /// Id or name.
        stack: String,
    },
    /// Redeploy a stack as a new version, with a new file, variables or
    /// targets (what is left out stays).
    Update {
        /// Id or name.
        stack: String,
        /// A new compose file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The variables, all of them (repeat).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Where it goes.
        #[command(flatten)]
        targets: Targets,
        /// Wait until every environment reports.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a stack from every environment (once removed, again: forget it).
    Rm {
        /// Id or name.
        stack: String,
        /// Wait until every environment reports.
        #[arg(long)]
        wait: bool,
    },
}

/// How long `--wait` waits.
const WAIT: Duration = Duration::from_secs(600);

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {p:?}: KEY=VALUE"))
        })
        .collect()
}

fn read_file(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The id of a stack named by id or name (a live one before a removed one).
fn stack_id(api: &mut Api, stack: &str) -> anyhow::Result<u64> {
    if let Ok(id) = stack.parse() {
        return Ok(id);
    }
    let list = api.get("/api/stacks")?;
    let found: Vec<&Value> = list.as_array().into_iter().flatten().filter(|s| s["name"] == stack).collect();
    found
        .iter()
        .find(|s| s["removed_at"].is_null())
        .or(found.first())
        .and_then(|s| s["id"].as_u64())
        .with_context(|| format!("no stack named {stack:?}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn counts(v: &Value) -> String {
    let parts: Vec<String> = v.as_object().into_iter().flatten().map(|(k, n)| format!("{n} {k}")).collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn targets_text(v: &Value) -> String {
    let parts: Vec<String> =
        v.as_array().into_iter().flatten().map(|t| format!("{} {}", s(&t["kind"]), s(&t["name"]))).collect();
    parts.join(", ")
}

fn print_stack(v: &Value) {
    println!(
        "stack {} {}  version {}  {}  targets: {}",
        s(&v["id"]),
        s(&v["name"]),
        s(&v["version"]),
        s(&v["status"]),
        targets_text(&v["targets"])
    );
    let mut rows = vec![vec!["ENV".into(), "NAME".into(), "STATUS".into(), "VERSION".into(), "ERROR".into()]];
    for d in v["environments"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&d["environment"]),
            s(&d["environment_name"]),
            s(&d["status"]),
            s(&d["version"]),
            d["error"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    if rows.len() > 1 {
        print_table(&rows);
    } else {
        println!("(no environment yet: its targets name none so far)");
    }
}

/// Waits until no environment is on its way (pending, acknowledged,
/// deploying, removing); fails when one failed.
fn wait(api: &mut Api, id: u64) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let (status, v) = match api.get(&format!("/api/stacks/{id}")) {
            Ok(v) => (v["status"].as_str().unwrap_or_default().to_owned(), v),
            Err(e) => return Err(e),
        };
        let busy = v["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| matches!(d["status"].as_str(), Some("pending" | "acknowledged" | "deploying" | "removing")));
        if !busy {
            if status == "failed" {
                print_stack(&v);
                bail!("stack {id} failed on some environments");
            }
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            print_stack(&v);
            bail!("stack {id} is still {status} after {} s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs a `tern stack` subcommand.
///
/// # Errors
/// When the server refuses, or a file cannot be read.
pub fn run(command: StackCommand, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    match command {
        StackCommand::Deploy { name, file, env, targets, wait: w } => {
            if targets.is_empty() {
                bail!("say where: --env-id, --group or --tag (repeat them as needed)");
            }
            let body = json!({ "name": name, "compose": read_file(&file)?, "env": parse_env(&env)?, "targets": targets.to_json() });
            let mut v = api.post("/api/stacks", &body)?;
            if w {
                v = wait(&mut api, v["id"].as_u64().unwrap_or_default())?;
            }
            api.print(&v, print_stack);
        }
        StackCommand::List => {
            let v = api.get("/api/stacks")?;
            api.print(&v, |v| {
                let mut rows = vec![vec![
                    "ID".into(),
                    "NAME".into(),
                    "VERSION".into(),
                    "STATUS".into(),
                    "ENVIRONMENTS".into(),
                    "TARGETS".into(),
                ]];
                for st in v.as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&st["id"]),
                        s(&st["name"]),
                        s(&st["version"]),
                        s(&st["status"]),
                        counts(&st["counts"]),
                        targets_text(&st["targets"]),
                    ]);
                }
                print_table(&rows);
            });
        }
        StackCommand::Show { stack } => {
            let id = stack_id(&mut api, &stack)?;
            let v = api.get(&format!("/api/stacks/{id}"))?;
            api.print(&v, print_stack);
        }
        StackCommand::Update { stack, file, env, targets, wait: w } => {
            let id = stack_id(&mut api, &stack)?;
            let mut body = serde_json::Map::new();
            if let Some(f) = &file {
                body.insert("compose".into(), json!(read_file(f)?));
            }
            if !env.is_empty() {
                body.insert("env".into(), json!(parse_env(&env)?));
            }
            if !targets.is_empty() {
                body.insert("targets".into(), targets.to_json());
            }
            let mut v = api.call("PUT", &format!("/api/stacks/{id}"), Some(&Value::Object(body)))?;
            if w {
                v = wait(&mut api, id)?;
            }
            api.print(&v, print_stack);
        }
        StackCommand::Rm { stack, wait: w } => {
            let id = stack_id(&mut api, &stack)?;
            let v = api.call("DELETE", &format!("/api/stacks/{id}"), None)?;
            if v.is_null() {
                if !api.json {
                    println!("stack {id} was removed everywhere; its record is gone");
                }
                return Ok(());
            }
            let v = if w { wait(&mut api, id)? } else { v };
            api.print(&v, print_stack);
        }
    }
    Ok(())
}
