//! `tern env`: environments. An environment is named by its id or its
//! exact name; groups and tags by id or name.

use serde::Serialize;

use super::fleet::{env_id, fmt_age, fmt_interval, label_ref, parse_interval, print_table};
use super::{Api, ApiArgs};
use crate::server::api::types::{
    CreateEnvironment, CreatedEnvironment, EnvVars, EnvironmentFull, EnvironmentView, IntervalsBody, NameOrId,
    StatePartView, UpdateEnvironment,
};

/// The empty body of a POST that takes none: `{}`.
#[derive(Serialize)]
struct NoBody {}

/// The parts of a stored state `tern env state` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatePart {
    /// Containers.
    Containers,
    /// Images.
    Images,
    /// Volumes.
    Volumes,
    /// Networks.
    Networks,
    /// Compose stacks.
    Stacks,
}

impl StatePart {
    fn name(self) -> &'static str {
        match self {
            Self::Containers => "containers",
            Self::Images => "images",
            Self::Volumes => "volumes",
            Self::Networks => "networks",
            Self::Stacks => "stacks",
        }
    }
}

/// `tern env ...`
#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment; prints its join token (EDGE_KEY), the EDGE_ID
    /// to deploy with, and the commands that deploy its agent on Linux and
    /// on Windows.
    Add {
        /// The environment's name.
        #[arg(long)]
        name: String,
        /// The server URL as the edge sees it (default: --server).
        #[arg(long)]
        url: Option<String>,
        /// Heartbeat interval: seconds, 5m, 1h, 1d, 1w, off, or default.
        #[arg(long)]
        ping: Option<String>,
        /// Snapshot interval (as --ping).
        #[arg(long)]
        snapshot: Option<String>,
        /// Command-check interval (as --ping).
        #[arg(long)]
        command: Option<String>,
        /// Its group (id or name; it must exist: `tern group add`).
        #[arg(long)]
        group: Option<String>,
        /// A tag (repeat, or a,b); new tags are created.
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
        /// Host environment variables to pass through to the agent, comma
        /// separated (HTTP_PROXY,HTTPS_PROXY).
        #[arg(long)]
        env_vars: Option<String>,
        /// Let the agent accept a self-signed server certificate
        /// (EDGE_INSECURE_POLL=1).
        #[arg(long)]
        allow_self_signed: bool,
        /// The host's Docker volume path, when not /var/lib/docker/volumes.
        #[arg(long)]
        volume_path: Option<String>,
        /// Keep TCP timestamps on the agent's connection: the Linux command
        /// then leaves out --sysctl net.ipv4.tcp_timestamps=0 (needed on
        /// hosts with Linux before 4.15, better on links with round trips
        /// over a second; otherwise 12 bytes a packet saved).
        #[arg(long)]
        tcp_timestamps: bool,
    },
    /// List environments: status, last poll, snapshot age, containers.
    List {
        /// Only this group (id or name).
        #[arg(long)]
        group: Option<String>,
        /// Only with this tag (id or name).
        #[arg(long)]
        tag: Option<String>,
        /// Only online or offline ones.
        #[arg(long, value_parser = ["online", "offline"])]
        status: Option<String>,
        /// Only those whose name contains this.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one environment in detail.
    Show {
        /// Its id or name.
        env: String,
    },
    /// Rename an environment.
    Rename {
        /// Its id or name.
        env: String,
        /// The new name.
        name: String,
    },
    /// Move an environment to a group, or out of any.
    Move {
        /// Its id or name.
        env: String,
        /// The group (id or name).
        #[arg(long, required_unless_present = "no_group", conflicts_with = "no_group")]
        group: Option<String>,
        /// No group.
        #[arg(long)]
        no_group: bool,
    },
    /// Add tags to an environment (new tags are created); --remove takes
    /// them off, --set makes them its only tags.
    Tag {
        /// Its id or name.
        env: String,
        /// Tags (names or ids).
        tags: Vec<String>,
        /// Take these tags off.
        #[arg(long, conflicts_with = "set")]
        remove: bool,
        /// Replace its tags with these (none: no tags).
        #[arg(long)]
        set: bool,
    },
    /// Delete an environment with its stored state and commands; its agent
    /// is refused from then on.
    Rm {
        /// Its id or name.
        env: String,
    },
    /// Let another agent (EDGE_ID) take the environment over.
    ResetBinding {
        /// Its id or name.
        env: String,
    },
    /// Accept any poll counter from the environment's agent again: for an
    /// agent whose polls are refused as replays though they are not (its
    /// counter was pushed past what it can use). A machine in the middle
    /// that recorded polls could replay each once after it; on a link that
    /// is not trusted, rotate the secret instead.
    ResetCounter {
        /// Its id or name.
        env: String,
    },
    /// Give the environment a new secret and join token: the old ones, and
    /// every poll sealed with them, are refused at once. Prints the new
    /// EDGE_KEY and deploy commands; redeploy the agent with them.
    RotateSecret {
        /// Its id or name.
        env: String,
    },
    /// Print the join token and the deploy commands again.
    Deploy {
        /// Its id or name.
        env: String,
    },
    /// This environment's own values of stack variables: with NAME=VALUE
    /// arguments, sets them (replacing all; --clear removes them all); a
    /// stack that declares a NAME is deployed here with its VALUE, from the
    /// stack's next deploy.
    Vars {
        /// Its id or name.
        env: String,
        /// NAME=VALUE pairs.
        values: Vec<String>,
        /// Remove every value.
        #[arg(long, conflicts_with = "values")]
        clear: bool,
    },
    /// This environment's deploy window: with WINDOW ("01:00-05:00
    /// UTC+02:00"), sets it (--clear removes it); a stack's deploy here
    /// starts only while it is open.
    Window {
        /// Its id or name.
        env: String,
        /// HH:MM-HH:MM, then UTC or UTC+HH:MM.
        window: Option<String>,
        /// Remove it: deploys start at any time.
        #[arg(long, conflicts_with = "window")]
        clear: bool,
    },
    /// The stored state: a summary, or one part of it.
    State {
        /// Its id or name.
        env: String,
        /// Which part.
        part: Option<StatePart>,
    },
}

fn print_created(c: &CreatedEnvironment) {
    println!("environment {} ({})", c.id, c.name);
    println!();
    println!("EDGE_KEY={}", c.edge_key);
    if let Some(id) = &c.edge_id {
        println!("EDGE_ID={id}");
    }
    println!();
    println!("Linux:");
    println!();
    // The API always sends `commands`; `docker_run` is what an older
    // server sent instead.
    println!("{}", if c.commands.linux.is_empty() { &c.docker_run } else { &c.commands.linux });
    println!();
    println!("Windows (PowerShell):");
    println!();
    println!("{}", c.commands.windows);
    if let Some(note) = &c.agent_secret_note {
        println!();
        println!("{note}");
    }
}

fn counts(e: &EnvironmentView) -> String {
    let c = &e.counts;
    let mut s = format!("{} running, {} stopped", c.running, c.stopped);
    if c.paused > 0 {
        s.push_str(&format!(", {} paused", c.paused));
    }
    if c.unhealthy > 0 {
        s.push_str(&format!(", {} unhealthy", c.unhealthy));
    }
    s
}

fn tags(e: &EnvironmentView) -> String {
    if e.tags.is_empty() { "-".into() } else { e.tags.join(",") }
}

fn group_name(e: &EnvironmentView) -> String {
    e.group.as_ref().map_or_else(|| "-".into(), |g| g.name.clone())
}

fn or_dash(v: Option<&String>) -> String {
    v.cloned().unwrap_or_else(|| "-".into())
}

fn print_list(list: &[EnvironmentView]) {
    let mut rows = vec![
        ["ID", "NAME", "GROUP", "TAGS", "STATUS", "LAST POLL", "SNAPSHOT", "CONTAINERS"].map(String::from).to_vec(),
    ];
    for e in list {
        rows.push(vec![
            e.id.to_string(),
            e.name.clone(),
            group_name(e),
            tags(e),
            e.status.clone(),
            fmt_age(e.last_poll_age_s),
            fmt_age(e.snapshot_age_s),
            counts(e),
        ]);
    }
    print_table(&rows);
}

fn print_detail(full: &EnvironmentFull) {
    let e = &full.item;
    let line = |k: &str, v: String| println!("{:<18}{v}", format!("{k}:"));
    line("id", e.id.to_string());
    line("name", e.name.clone());
    line("group", group_name(e));
    line("tags", tags(e));
    line("status", format!("{} (online while the last poll is under {} s old)", e.status, e.status_window_s));
    line("last poll", fmt_age(e.last_poll_age_s));
    line("snapshot", format!("{} (seq {})", fmt_age(e.snapshot_age_s), full.seq));
    let c = &e.counts;
    line("containers", format!("{} ({})", c.containers, counts(e)));
    line(
        "objects",
        format!("{} images, {} volumes, {} networks, {} stacks", c.images, c.volumes, c.networks, c.stacks),
    );
    let own = &full.intervals;
    let eff = &full.effective_intervals;
    let intervals: Vec<String> =
        [("ping", eff.ping, own.ping), ("snapshot", eff.snapshot, own.snapshot), ("command", eff.command, own.command)]
            .iter()
            .map(|(k, eff, own)| {
                format!("{k} {}{}", fmt_interval(u64::from(*eff)), if own.is_none() { " (default)" } else { "" })
            })
            .collect();
    line("intervals", intervals.join(", "));
    line("edge id", or_dash(e.edge_id.as_ref()));
    line("agent version", or_dash(e.agent_version.as_ref()));
    line("deploy edge id", or_dash(full.deploy_edge_id.as_ref()));
    line("url", full.url.clone());
    line("env vars", if full.env_vars.is_empty() { "-".into() } else { full.env_vars.join(",") });
    line("self-signed", if full.allow_self_signed { "allowed".into() } else { "refused".into() });
    line("volume path", full.volume_path.clone().unwrap_or_else(|| "default".into()));
    line("tcp timestamps", if full.tcp_timestamps { "kept".into() } else { "off (--sysctl)".into() });
    line("root", full.root.clone());
}

fn print_state(v: &StatePartView, part: Option<StatePart>) {
    println!("as of {} (seq {}), {}", fmt_age(v.snapshot_age_s), v.seq, v.status);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let short = |id: &str| id.chars().take(12).collect::<String>();
    match part {
        None => {
            if let Some(h) = &v.host {
                println!(
                    "host {} ({} {}, engine {}, {} CPUs, {} MiB)",
                    h.hostname,
                    h.operating_system,
                    h.architecture,
                    h.engine_version,
                    h.cpus,
                    h.memory_bytes >> 20
                );
            }
            let counts = [
                ("containers", v.containers.as_ref().map_or(0, Vec::len)),
                ("images", v.images.as_ref().map_or(0, Vec::len)),
                ("volumes", v.volumes.as_ref().map_or(0, Vec::len)),
                ("networks", v.networks.as_ref().map_or(0, Vec::len)),
                ("stacks", v.stacks.as_ref().map_or(0, Vec::len)),
            ];
            for (k, n) in counts {
                println!("{k:<11}{n}");
            }
            return;
        }
        Some(StatePart::Containers) => {
            rows.push(["NAME", "STATUS", "HEALTH", "IMAGE", "ID"].map(String::from).to_vec());
            for c in v.containers.iter().flatten() {
                let health = c.health.clone().unwrap_or_else(|| "-".to_owned());
                rows.push(vec![c.name.clone(), c.status.clone(), health, c.image.clone(), short(&c.id)]);
            }
        }
        Some(StatePart::Images) => {
            rows.push(["ID", "TAGS", "SIZE"].map(String::from).to_vec());
            for i in v.images.iter().flatten() {
                let size = u64::try_from(i.size).unwrap_or_default();
                rows.push(vec![short(&i.id), i.tags.join(","), format!("{} MB", size / 1_000_000)]);
            }
        }
        Some(StatePart::Volumes) => {
            rows.push(["NAME", "DRIVER"].map(String::from).to_vec());
            for vol in v.volumes.iter().flatten() {
                rows.push(vec![vol.name.clone(), vol.driver.clone()]);
            }
        }
        Some(StatePart::Networks) => {
            rows.push(["NAME", "DRIVER", "SCOPE", "ID"].map(String::from).to_vec());
            for n in v.networks.iter().flatten() {
                rows.push(vec![n.name.clone(), n.driver.clone(), n.scope.clone(), short(&n.id)]);
            }
        }
        Some(StatePart::Stacks) => {
            rows.push(["NAME", "SERVICES", "CONTAINERS", "WORKING DIR"].map(String::from).to_vec());
            for s in v.stacks.iter().flatten() {
                rows.push(vec![
                    s.name.clone(),
                    s.services.join(","),
                    s.containers.len().to_string(),
                    s.working_dir.clone(),
                ]);
            }
        }
    }
    print_table(&rows);
}

/// Every environment `query` selects, a page at a time.
fn list_all(api: &mut Api, query: &[(&str, String)]) -> anyhow::Result<Vec<EnvironmentView>> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    loop {
        let mut q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", super::fleet::encode_query(v))).collect();
        q.push(format!("limit={PAGE}"));
        q.push(format!("offset={}", out.len()));
        let page: Vec<EnvironmentView> = api.get_as(&format!("/api/environments?{}", q.join("&")))?;
        let n = page.len();
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}

/// Runs a `tern env` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses, or an argument does not
/// parse.
pub fn run(command: EnvCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        EnvCommand::Add {
            name,
            url,
            ping,
            snapshot,
            command,
            group,
            tags,
            env_vars,
            allow_self_signed,
            volume_path,
            tcp_timestamps,
        } => {
            let mut intervals = IntervalsBody::default();
            let mut any = false;
            for (slot, v) in
                [(&mut intervals.ping, ping), (&mut intervals.snapshot, snapshot), (&mut intervals.command, command)]
            {
                if let Some(v) = v {
                    *slot = parse_interval(&v, true)?;
                    any = true;
                }
            }
            let body = CreateEnvironment {
                name,
                url: url.unwrap_or_else(|| args.server.clone()),
                intervals: any.then_some(intervals),
                group: group.as_deref().map(label_ref),
                // Tags go by name here, as they always did (a number is a
                // tag's name too).
                tags: tags.into_iter().map(NameOrId::Name).collect(),
                env_vars: env_vars.map(|v| EnvVars(v.split(',').map(str::to_owned).collect())),
                allow_self_signed,
                volume_path,
                tcp_timestamps,
            };
            let created: CreatedEnvironment = api.send("POST", "/api/environments", &body)?;
            api.show(&created, print_created);
        }
        EnvCommand::List { group, tag, status, name } => {
            let mut q = Vec::new();
            for (k, v) in [("group", group), ("tag", tag), ("status", status), ("name", name)] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let list = list_all(&mut api, &q)?;
            api.show(&list, |list| print_list(list));
        }
        EnvCommand::Show { env } => {
            let id = env_id(&mut api, &env)?;
            let e: EnvironmentFull = api.get_as(&format!("/api/environments/{id}"))?;
            api.show(&e, print_detail);
        }
        EnvCommand::Rename { env, name } => {
            let id = env_id(&mut api, &env)?;
            let body = UpdateEnvironment { name: Some(name), ..UpdateEnvironment::default() };
            let e: EnvironmentFull = api.send("PATCH", &format!("/api/environments/{id}"), &body)?;
            api.show(&e, |e| println!("environment {id} renamed to {}", e.item.name));
        }
        EnvCommand::Move { env, group, no_group } => {
            let id = env_id(&mut api, &env)?;
            let g = if no_group { None } else { group.as_deref().map(label_ref) };
            let body = UpdateEnvironment { group: Some(g), ..UpdateEnvironment::default() };
            let e: EnvironmentFull = api.send("PATCH", &format!("/api/environments/{id}"), &body)?;
            api.show(&e, |e| println!("environment {id} is in group {}", group_name(&e.item)));
        }
        EnvCommand::Tag { env, tags: wanted, remove, set } => {
            let id = env_id(&mut api, &env)?;
            let current: EnvironmentFull = api.get_as(&format!("/api/environments/{id}"))?;
            let mut now: Vec<NameOrId> = current.item.tags.into_iter().map(NameOrId::Name).collect();
            let given: Vec<NameOrId> = wanted.iter().map(|t| label_ref(t)).collect();
            if set {
                now = given;
            } else if remove {
                let same = |a: &NameOrId, b: &NameOrId| match (a, b) {
                    (NameOrId::Name(a), NameOrId::Name(b)) => a.eq_ignore_ascii_case(b),
                    _ => a == b,
                };
                now.retain(|t| !given.iter().any(|g| same(t, g)));
            } else {
                now.extend(given);
            }
            let body = UpdateEnvironment { tags: Some(now), ..UpdateEnvironment::default() };
            let e: EnvironmentFull = api.send("PATCH", &format!("/api/environments/{id}"), &body)?;
            api.show(&e, |e| println!("environment {id} tags: {}", tags(&e.item)));
        }
        EnvCommand::Vars { env, values, clear } => {
            let id = env_id(&mut api, &env)?;
            let path = format!("/api/environments/{id}/variables");
            let v: crate::server::api::stacks::EnvironmentVariables = if values.is_empty() && !clear {
                api.get_as(&path)?
            } else {
                api.send("PUT", &path, &super::stacks::parse_env(&values)?)?
            };
            api.show(&v, |v| {
                for (k, value) in &v.variables {
                    if v.env_hidden { println!("{k}") } else { println!("{k}={value}") }
                }
            });
        }
        EnvCommand::Window { env, window, clear } => {
            let id = env_id(&mut api, &env)?;
            let path = format!("/api/environments/{id}/window");
            let v: crate::server::api::stacks::WindowBody = match (window, clear) {
                (None, false) => api.get_as(&path)?,
                (w, _) => {
                    api.send("PUT", &path, &crate::server::api::stacks::WindowBody { window: w.unwrap_or_default() })?
                }
            };
            api.show(&v, |v| {
                if v.window.is_empty() {
                    println!("environment {id}: no deploy window (deploys start at any time)");
                } else {
                    println!("environment {id}: deploys start only within {}", v.window);
                }
            });
        }
        EnvCommand::Rm { env } => {
            let id = env_id(&mut api, &env)?;
            api.call("DELETE", &format!("/api/environments/{id}"), None)?;
            if !api.json {
                println!("environment {id} deleted");
            }
        }
        EnvCommand::ResetBinding { env } => {
            let id = env_id(&mut api, &env)?;
            let e: EnvironmentView = api.send("POST", &format!("/api/environments/{id}/reset-binding"), &NoBody {})?;
            api.show(&e, |_| println!("environment {id}: the next agent to poll binds it"));
        }
        EnvCommand::ResetCounter { env } => {
            let id = env_id(&mut api, &env)?;
            let e: EnvironmentView = api.send("POST", &format!("/api/environments/{id}/reset-counter"), &NoBody {})?;
            api.show(&e, |_| println!("environment {id}: the agent's next poll is accepted whatever its counter"));
        }
        EnvCommand::RotateSecret { env } => {
            let id = env_id(&mut api, &env)?;
            let d: CreatedEnvironment =
                api.send("POST", &format!("/api/environments/{id}/rotate-secret"), &NoBody {})?;
            api.show(&d, |d| {
                println!("environment {id}: new secret; the old EDGE_KEY no longer works. Redeploy its agent:");
                println!();
                print_created(d);
            });
        }
        EnvCommand::Deploy { env } => {
            let id = env_id(&mut api, &env)?;
            let d: CreatedEnvironment = api.get_as(&format!("/api/environments/{id}/deploy"))?;
            api.show(&d, print_created);
        }
        EnvCommand::State { env, part } => {
            let id = env_id(&mut api, &env)?;
            let path = match part {
                Some(p) => format!("/api/environments/{id}/state/{}", p.name()),
                None => format!("/api/environments/{id}/state"),
            };
            let v: StatePartView = api.get_as(&path)?;
            api.show(&v, |v| print_state(v, part));
        }
    }
    Ok(())
}
