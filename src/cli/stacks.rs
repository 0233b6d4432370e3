//! `tern stack`: edge stacks through the server's API.
//!
//! ```text
//! tern stack deploy --name web --file compose.yml --env TAG=1.25 --group ships --tag gps [--wait]
//! tern stack list
//! tern stack show web            # per-environment status
//! tern stack update web --file compose.yml --env TAG=1.26 [--wait]
//! tern stack deploy --name web --file compose.yml --config nginx.conf --config certs/ --tag gps
//! tern stack rm web [--wait]
//! ```
//!
//! A stack is named by id or by name. `--env` on `update` replaces every
//! variable (left out: they stay); `--env-id`, `--group` or `--tag` on
//! `update` replace every target (left out: they stay); `--config` on
//! `update` replaces every configuration file (`--no-config` ships none).
//!
//! `--config [PATH=]LOCAL` ships a configuration file with the stack, at
//! `PATH` in the stack's directory on the host, where a relative bind mount
//! (`./nginx.conf:/etc/nginx/nginx.conf:ro`) finds it. Without `PATH=`, a
//! relative `LOCAL` keeps its path (`conf/site.conf`) and an absolute one
//! its file name; a directory ships every file under it (`=DIR`: at the
//! top of the stack's directory).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::fleet::print_table;
use super::{Api, ApiArgs};
use crate::server::api::types::{
    CreateStack, RefBody, Rollback, StackDetail, StackItem, StackTargetView, StackVersionView, TargetsBody, UpdateStack,
};

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

    fn to_body(&self) -> TargetsBody {
        let refs = |list: &[String]| -> Vec<RefBody> {
            list.iter().map(|t| t.parse::<u64>().map_or_else(|_| RefBody::Name(t.clone()), RefBody::Id)).collect()
        };
        TargetsBody { environments: refs(&self.environments), groups: refs(&self.groups), tags: refs(&self.tags) }
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
        /// A configuration file (or directory) shipped with the stack, for
        /// its relative bind mounts (repeat; see `tern stack --help`).
        #[arg(long = "config", value_name = "[PATH=]LOCAL")]
        config: Vec<String>,
        /// When its deploys may start: "HH:MM-HH:MM UTC[+HH:MM]".
        #[arg(long)]
        window: Option<String>,
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
        /// The configuration files, all of them (repeat).
        #[arg(long = "config", value_name = "[PATH=]LOCAL")]
        config: Vec<String>,
        /// Ship no configuration file any more.
        #[arg(long = "no-config", conflicts_with = "config")]
        no_config: bool,
        /// A new deploy window ("" for none); alone, it makes no new
        /// version.
        #[arg(long)]
        window: Option<String>,
        /// Where it goes.
        #[command(flatten)]
        targets: Targets,
        /// Wait until every environment reports.
        #[arg(long)]
        wait: bool,
    },
    /// Every version of a stack, newest first (the current one marked).
    Versions {
        /// Id or name.
        stack: String,
    },
    /// A stack's deploys, newest first, every attempt: environment,
    /// version, status, times, error.
    History {
        /// Id or name.
        stack: String,
        /// Only on this environment (id or name).
        #[arg(long = "env")]
        environment: Option<String>,
        /// How many (at most 1,000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Deploy an earlier version again, as a new version, where the stack
    /// is.
    Rollback {
        /// Id or name.
        stack: String,
        /// The version to go back to.
        #[arg(long = "to", value_name = "VERSION")]
        to: u32,
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

pub(super) fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
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

/// Reads `--config [PATH=]LOCAL` arguments into a stack's files (see the
/// module doc). The server checks the paths and sizes.
fn read_configs(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for arg in args {
        let (path, local) = match arg.split_once('=') {
            Some((p, l)) => (Some(p.trim_matches('/').to_owned()), PathBuf::from(l)),
            None => (None, PathBuf::from(arg)),
        };
        let base = path.unwrap_or_else(|| {
            if local.is_absolute() {
                local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            } else {
                let clean: Vec<String> = local
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                clean.join("/")
            }
        });
        add_config(&mut files, &base, &local).with_context(|| format!("--config {arg:?}"))?;
    }
    Ok(files)
}

fn add_config(files: &mut BTreeMap<String, String>, path: &str, local: &std::path::Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(local).with_context(|| format!("reading {}", local.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(local)
            .with_context(|| format!("reading {}", local.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", local.display()))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let sub = if path.is_empty() { name } else { format!("{path}/{name}") };
            add_config(files, &sub, &e.path())?;
        }
        return Ok(());
    }
    let text = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text (binary files are not shipped)", local.display()))?;
    files.insert(path.to_owned(), text);
    Ok(())
}

/// The id of a stack named by id or name (a live one before a removed one).
fn stack_id(api: &mut Api, stack: &str) -> anyhow::Result<u64> {
    if let Ok(id) = stack.parse() {
        return Ok(id);
    }
    let list: Vec<StackItem> = api.get_as("/api/stacks")?;
    let found: Vec<&StackItem> = list.iter().filter(|s| s.name == stack).collect();
    found
        .iter()
        .find(|s| s.removed_at.is_none())
        .or(found.first())
        .map(|s| s.id)
        .with_context(|| format!("no stack named {stack:?}"))
}

fn counts(counts: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn targets_text(targets: &[StackTargetView]) -> String {
    let parts: Vec<String> = targets.iter().map(|t| format!("{} {}", t.kind, t.name)).collect();
    parts.join(", ")
}

/// A deployment's status, with its attempt and retry when there is one:
/// `failed (attempt 2 of 5; again at 14:03:10 UTC)`.
fn status_text(d: &crate::server::api::types::DeploymentView) -> String {
    let mut notes = Vec::new();
    if d.attempt > 1 {
        notes.push(format!("attempt {} of {}", d.attempt, d.max_attempts));
    }
    if let Some(at) = d.retry_at.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
        notes.push(format!("again at {}", at.format("%H:%M:%S UTC")));
    }
    if notes.is_empty() { d.status.clone() } else { format!("{} ({})", d.status, notes.join("; ")) }
}

fn print_stack(v: &StackDetail) {
    let st = &v.item;
    println!(
        "stack {} {}  version {}  {}  targets: {}",
        st.id,
        st.name,
        st.version,
        st.status,
        targets_text(&st.targets)
    );
    if !v.window.is_empty() {
        println!("deploys start only within {}", v.window);
    }
    if !v.files.is_empty() {
        let list: Vec<String> = v
            .files
            .iter()
            .map(|(p, t)| if v.files_hidden { p.clone() } else { format!("{p} ({} B)", t.len()) })
            .collect();
        let hidden = if v.files_hidden { ", their text hidden" } else { "" };
        println!("files ({} B in each deploy{hidden}): {}", v.files_bytes, list.join(", "));
    }
    let mut rows =
        vec![vec!["ENV".into(), "NAME".into(), "STATUS".into(), "SENT".into(), "RUNS".into(), "ERROR".into()]];
    for d in &v.environments {
        rows.push(vec![
            d.environment.to_string(),
            d.environment_name.clone(),
            status_text(d),
            d.version.to_string(),
            d.running_version.map_or_else(|| "-".into(), |v| v.to_string()),
            d.error.clone().unwrap_or_default(),
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
fn wait(api: &mut Api, id: u64) -> anyhow::Result<StackDetail> {
    let start = Instant::now();
    loop {
        let v: StackDetail = api.get_as(&format!("/api/stacks/{id}"))?;
        // A failed deploy that will be sent again within the wait is still
        // on its way; one due later is not waited for.
        let deadline = crate::clock::unix_now() + WAIT.saturating_sub(start.elapsed()).as_secs() as i64;
        let busy = v.environments.iter().any(|d| {
            matches!(d.status.as_str(), "pending" | "acknowledged" | "fetching" | "deploying" | "removing")
                || d.retry_at.is_some_and(|at| at <= deadline)
        });
        if !busy {
            if v.item.status == "failed" {
                print_stack(&v);
                if v.environments.iter().any(|d| d.retry_at.is_some()) {
                    bail!("stack {id} failed on some environments; their next attempts come later (not waited for)");
                }
                bail!("stack {id} failed on some environments");
            }
            let waiting: Vec<i64> =
                v.environments.iter().filter(|d| d.status == "waiting").filter_map(|d| d.retry_at).collect();
            if let Some(first) = waiting.iter().min().and_then(|t| chrono::DateTime::from_timestamp(*t, 0)) {
                eprintln!(
                    "{} environment(s) wait for the deploy window (not waited for); the first opens at {}",
                    waiting.len(),
                    first.format("%Y-%m-%d %H:%M UTC")
                );
            }
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            print_stack(&v);
            bail!("stack {id} is still {} after {} s", v.item.status, WAIT.as_secs());
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
        StackCommand::Deploy { name, file, env, config, window, targets, wait: w } => {
            if targets.is_empty() {
                bail!("say where: --env-id, --group or --tag (repeat them as needed)");
            }
            let body = CreateStack {
                name,
                compose: read_file(&file)?,
                env: parse_env(&env)?,
                files: read_configs(&config)?,
                window: window.unwrap_or_default(),
                targets: targets.to_body(),
            };
            let mut v: StackDetail = api.send("POST", "/api/stacks", &body)?;
            if w {
                v = wait(&mut api, v.item.id)?;
            }
            api.show(&v, print_stack);
        }
        StackCommand::List => {
            let v: Vec<StackItem> = api.get_as("/api/stacks")?;
            api.show(&v, |v| {
                let mut rows = vec![vec![
                    "ID".into(),
                    "NAME".into(),
                    "VERSION".into(),
                    "STATUS".into(),
                    "ENVIRONMENTS".into(),
                    "TARGETS".into(),
                ]];
                for st in v {
                    rows.push(vec![
                        st.id.to_string(),
                        st.name.clone(),
                        st.version.to_string(),
                        st.status.clone(),
                        counts(&st.counts),
                        targets_text(&st.targets),
                    ]);
                }
                print_table(&rows);
            });
        }
        StackCommand::Show { stack } => {
            let id = stack_id(&mut api, &stack)?;
            let v: StackDetail = api.get_as(&format!("/api/stacks/{id}"))?;
            api.show(&v, print_stack);
        }
        StackCommand::Update { stack, file, env, config, no_config, window, targets, wait: w } => {
            let id = stack_id(&mut api, &stack)?;
            let body = UpdateStack {
                compose: file.as_ref().map(read_file).transpose()?,
                env: if env.is_empty() { None } else { Some(parse_env(&env)?) },
                files: if no_config {
                    Some(BTreeMap::new())
                } else if config.is_empty() {
                    None
                } else {
                    Some(read_configs(&config)?)
                },
                window,
                targets: if targets.is_empty() { None } else { Some(targets.to_body()) },
            };
            let mut v: StackDetail = api.send("PUT", &format!("/api/stacks/{id}"), &body)?;
            if w {
                v = wait(&mut api, id)?;
            }
            api.show(&v, print_stack);
        }
        StackCommand::Versions { stack } => {
            let id = stack_id(&mut api, &stack)?;
            let v: Vec<StackVersionView> = api.get_as(&format!("/api/stacks/{id}/versions"))?;
            api.show(&v, |v| {
                let mut rows = vec![vec!["VERSION".into(), "MADE (UTC)".into(), "VARIABLES".into(), "NOTE".into()]];
                for ver in v {
                    let mark = if ver.current { " (current)" } else { "" };
                    // Names only: an old version may hold a rotated password
                    // (`--json` has the values).
                    let vars: Vec<String> = ver.env.keys().cloned().collect();
                    rows.push(vec![
                        format!("{}{mark}", ver.version),
                        crate::server::ui::utc(ver.created_at),
                        vars.join(" "),
                        ver.note.clone(),
                    ]);
                }
                print_table(&rows);
            });
        }
        StackCommand::History { stack, environment, limit } => {
            let id = stack_id(&mut api, &stack)?;
            let mut path = format!("/api/stacks/{id}/history?limit={limit}");
            if let Some(e) = environment {
                path.push_str(&format!("&environment={}", super::fleet::env_id(&mut api, &e)?));
            }
            let list: Vec<crate::server::api::stacks::DeployView> = api.get_as(&path)?;
            api.show(&list, |l| {
                let mut rows = vec![vec![
                    "ENVIRONMENT".into(),
                    "VERSION".into(),
                    "STATUS".into(),
                    "QUEUED (UTC)".into(),
                    "ENDED (UTC)".into(),
                    "ERROR".into(),
                ]];
                for d in l {
                    rows.push(vec![
                        d.environment_name.clone(),
                        d.version.to_string(),
                        d.status.clone(),
                        crate::server::ui::utc(d.queued_at),
                        d.finished_at.map_or_else(|| "-".into(), crate::server::ui::utc),
                        d.error.lines().next().unwrap_or_default().to_owned(),
                    ]);
                }
                print_table(&rows);
            });
        }
        StackCommand::Rollback { stack, to, wait: w } => {
            let id = stack_id(&mut api, &stack)?;
            let body = Rollback { version: to };
            let mut v: StackDetail = api.send("POST", &format!("/api/stacks/{id}/rollback"), &body)?;
            if w {
                v = wait(&mut api, id)?;
            }
            api.show(&v, print_stack);
        }
        StackCommand::Rm { stack, wait: w } => {
            let id = stack_id(&mut api, &stack)?;
            let path = format!("/api/stacks/{id}");
            // 204 (no body) once it is gone, else 202 with the stack.
            let v: Option<StackDetail> = super::typed(api.call("DELETE", &path, None)?, "DELETE", &path)?;
            let Some(v) = v else {
                if !api.json {
                    println!("stack {id} was removed everywhere; its record is gone");
                }
                return Ok(());
            };
            let v = if w { wait(&mut api, id)? } else { v };
            api.show(&v, print_stack);
        }
    }
    Ok(())
}
