//! `tern env`: environments. An environment is named by its id or its
//! exact name; groups and tags by id or name.

use serde_json::{Value, json};

use super::fleet::{env_id, fmt_age, fmt_interval, name_or_id, parse_interval, print_table, text};
use super::{Api, ApiArgs};

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
    /// The stored state: a summary, or one part of it.
    State {
        /// Its id or name.
        env: String,
        /// Which part.
        part: Option<StatePart>,
    },
}

fn print_created(c: &Value) {
    println!("environment {} ({})", c["id"], text(&c["name"]));
    println!();
    println!("EDGE_KEY={}", text(&c["edge_key"]));
    if let Some(id) = c["edge_id"].as_str() {
        println!("EDGE_ID={id}");
    }
    println!();
    println!("Linux:");
    println!();
    println!("{}", c["commands"]["linux"].as_str().or(c["docker_run"].as_str()).unwrap_or_default());
    if let Some(w) = c["commands"]["windows"].as_str() {
        println!();
        println!("Windows (PowerShell):");
        println!();
        println!("{w}");
    }
    if let Some(note) = c["agent_secret_note"].as_str() {
        println!();
        println!("{note}");
    }
}

fn counts(e: &Value) -> String {
    let c = &e["counts"];
    let unhealthy = c["unhealthy"].as_u64().unwrap_or_default();
    let mut s = format!("{} running, {} stopped", c["running"], c["stopped"]);
    if c["paused"].as_u64().unwrap_or_default() > 0 {
        s.push_str(&format!(", {} paused", c["paused"]));
    }
    if unhealthy > 0 {
        s.push_str(&format!(", {unhealthy} unhealthy"));
    }
    s
}

fn tags(e: &Value) -> String {
    let t: Vec<String> = e["tags"].as_array().into_iter().flatten().map(text).collect();
    if t.is_empty() { "-".into() } else { t.join(",") }
}

fn print_list(list: &[Value]) {
    let mut rows = vec![
        ["ID", "NAME", "GROUP", "TAGS", "STATUS", "LAST POLL", "SNAPSHOT", "CONTAINERS"].map(String::from).to_vec(),
    ];
    for e in list {
        rows.push(vec![
            e["id"].to_string(),
            text(&e["name"]),
            text(&e["group"]["name"]),
            tags(e),
            text(&e["status"]),
            fmt_age(e["last_poll_age_s"].as_i64()),
            fmt_age(e["snapshot_age_s"].as_i64()),
            counts(e),
        ]);
    }
    print_table(&rows);
}

fn print_detail(e: &Value) {
    let line = |k: &str, v: String| println!("{:<18}{v}", format!("{k}:"));
    line("id", e["id"].to_string());
    line("name", text(&e["name"]));
    line("group", text(&e["group"]["name"]));
    line("tags", tags(e));
    line(
        "status",
        format!("{} (online while the last poll is under {} s old)", text(&e["status"]), e["status_window_s"]),
    );
    line("last poll", fmt_age(e["last_poll_age_s"].as_i64()));
    line("snapshot", format!("{} (seq {})", fmt_age(e["snapshot_age_s"].as_i64()), e["seq"]));
    let c = &e["counts"];
    line("containers", format!("{} ({})", c["containers"], counts(e)));
    line(
        "objects",
        format!("{} images, {} volumes, {} networks, {} stacks", c["images"], c["volumes"], c["networks"], c["stacks"]),
    );
    let iv = |v: &Value| fmt_interval(v.as_u64().unwrap_or_default());
    let own = &e["intervals"];
    let eff = &e["effective_intervals"];
    let intervals: Vec<String> = ["ping", "snapshot", "command"]
        .iter()
        .map(|k| format!("{k} {}{}", iv(&eff[*k]), if own[*k].is_null() { " (default)" } else { "" }))
        .collect();
    line("intervals", intervals.join(", "));
    line("edge id", text(&e["edge_id"]));
    line("deploy edge id", text(&e["deploy_edge_id"]));
    line("url", text(&e["url"]));
    let vars: Vec<String> = e["env_vars"].as_array().into_iter().flatten().map(text).collect();
    line("env vars", if vars.is_empty() { "-".into() } else { vars.join(",") });
    line("self-signed", if e["allow_self_signed"] == true { "allowed".into() } else { "refused".into() });
    line("volume path", e["volume_path"].as_str().unwrap_or("default").to_owned());
    line("tcp timestamps", if e["tcp_timestamps"] == true { "kept".into() } else { "off (--sysctl)".into() });
    line("root", text(&e["root"]));
}

fn print_state(v: &Value, part: Option<StatePart>) {
    println!("as of {} (seq {}), {}", fmt_age(v["snapshot_age_s"].as_i64()), v["seq"], text(&v["status"]));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let items = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let short = |id: &Value| text(id).chars().take(12).collect::<String>();
    match part {
        None => {
            let h = &v["host"];
            println!(
                "host {} ({} {}, engine {}, {} CPUs, {} MiB)",
                text(&h["hostname"]),
                text(&h["operating_system"]),
                text(&h["architecture"]),
                text(&h["engine_version"]),
                h["cpus"],
                h["memory_bytes"].as_u64().unwrap_or_default() >> 20
            );
            for k in ["containers", "images", "volumes", "networks", "stacks"] {
                println!("{k:<11}{}", items(k).len());
            }
            return;
        }
        Some(StatePart::Containers) => {
            rows.push(["NAME", "STATUS", "HEALTH", "IMAGE", "ID"].map(String::from).to_vec());
            for c in items("containers") {
                let health = c["health"].as_str().unwrap_or("-").to_owned();
                rows.push(vec![text(&c["name"]), text(&c["status"]), health, text(&c["image"]), short(&c["id"])]);
            }
        }
        Some(StatePart::Images) => {
            rows.push(["ID", "TAGS", "SIZE"].map(String::from).to_vec());
            for i in items("images") {
                let tags: Vec<String> = i["tags"].as_array().into_iter().flatten().map(text).collect();
                let size = i["size"].as_u64().unwrap_or_default();
                rows.push(vec![short(&i["id"]), tags.join(","), format!("{} MB", size / 1_000_000)]);
            }
        }
        Some(StatePart::Volumes) => {
            rows.push(["NAME", "DRIVER"].map(String::from).to_vec());
            for vol in items("volumes") {
                rows.push(vec![text(&vol["name"]), text(&vol["driver"])]);
            }
        }
        Some(StatePart::Networks) => {
            rows.push(["NAME", "DRIVER", "SCOPE", "ID"].map(String::from).to_vec());
            for n in items("networks") {
                rows.push(vec![text(&n["name"]), text(&n["driver"]), text(&n["scope"]), short(&n["id"])]);
            }
        }
        Some(StatePart::Stacks) => {
            rows.push(["NAME", "SERVICES", "CONTAINERS", "WORKING DIR"].map(String::from).to_vec());
            for s in items("stacks") {
                let services: Vec<String> = s["services"].as_array().into_iter().flatten().map(text).collect();
                let n = s["containers"].as_array().map_or(0, Vec::len);
                rows.push(vec![text(&s["name"]), services.join(","), n.to_string(), text(&s["working_dir"])]);
            }
        }
    }
    print_table(&rows);
}

/// Every environment `query` selects, a page at a time.
fn list_all(api: &mut Api, query: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    loop {
        let mut q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", super::fleet::encode_query(v))).collect();
        q.push(format!("limit={PAGE}"));
        q.push(format!("offset={}", out.len()));
        let page = api.get(&format!("/api/environments?{}", q.join("&")))?;
        let page = page.as_array().cloned().unwrap_or_default();
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
            let mut body = json!({ "name": name, "url": url.as_deref().unwrap_or(&args.server) });
            let mut intervals = serde_json::Map::new();
            for (k, v) in [("ping", ping), ("snapshot", snapshot), ("command", command)] {
                if let Some(v) = v {
                    intervals.insert(k.into(), json!(parse_interval(&v, true)?));
                }
            }
            if !intervals.is_empty() {
                body["intervals"] = Value::Object(intervals);
            }
            if let Some(g) = group {
                body["group"] = name_or_id(&g);
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if let Some(v) = env_vars {
                body["env_vars"] = json!(v);
            }
            if allow_self_signed {
                body["allow_self_signed"] = json!(true);
            }
            if let Some(p) = volume_path {
                body["volume_path"] = json!(p);
            }
            if tcp_timestamps {
                body["tcp_timestamps"] = json!(true);
            }
            let created = api.post("/api/environments", &body)?;
            api.print(&created, print_created);
        }
        EnvCommand::List { group, tag, status, name } => {
            let mut q = Vec::new();
            for (k, v) in [("group", group), ("tag", tag), ("status", status), ("name", name)] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let list = list_all(&mut api, &q)?;
            api.print(&Value::Array(list.clone()), |_| print_list(&list));
        }
        EnvCommand::Show { env } => {
            let id = env_id(&mut api, &env)?;
            let e = api.get(&format!("/api/environments/{id}"))?;
            api.print(&e, print_detail);
        }
        EnvCommand::Rename { env, name } => {
            let id = env_id(&mut api, &env)?;
            let e = api.call("PATCH", &format!("/api/environments/{id}"), Some(&json!({ "name": name })))?;
            api.print(&e, |e| println!("environment {id} renamed to {}", text(&e["name"])));
        }
        EnvCommand::Move { env, group, no_group } => {
            let id = env_id(&mut api, &env)?;
            let g = if no_group { Value::Null } else { group.as_deref().map_or(Value::Null, name_or_id) };
            let e = api.call("PATCH", &format!("/api/environments/{id}"), Some(&json!({ "group": g })))?;
            api.print(&e, |e| println!("environment {id} is in group {}", text(&e["group"]["name"])));
        }
        EnvCommand::Tag { env, tags: wanted, remove, set } => {
            let id = env_id(&mut api, &env)?;
            let current = api.get(&format!("/api/environments/{id}"))?;
            let mut now: Vec<Value> = current["tags"].as_array().cloned().unwrap_or_default();
            let given: Vec<Value> = wanted.iter().map(|t| name_or_id(t)).collect();
            if set {
                now = given;
            } else if remove {
                let same = |a: &Value, b: &Value| match (a.as_str(), b.as_str()) {
                    (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                    _ => a == b,
                };
                now.retain(|t| !given.iter().any(|g| same(t, g)));
            } else {
                now.extend(given);
            }
            let e = api.call("PATCH", &format!("/api/environments/{id}"), Some(&json!({ "tags": now })))?;
            api.print(&e, |e| println!("environment {id} tags: {}", tags(e)));
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
            let e = api.post(&format!("/api/environments/{id}/reset-binding"), &json!({}))?;
            api.print(&e, |_| println!("environment {id}: the next agent to poll binds it"));
        }
        EnvCommand::ResetCounter { env } => {
            let id = env_id(&mut api, &env)?;
            let e = api.post(&format!("/api/environments/{id}/reset-counter"), &json!({}))?;
            api.print(&e, |_| println!("environment {id}: the agent's next poll is accepted whatever its counter"));
        }
        EnvCommand::RotateSecret { env } => {
            let id = env_id(&mut api, &env)?;
            let d = api.post(&format!("/api/environments/{id}/rotate-secret"), &json!({}))?;
            api.print(&d, |d| {
                println!("environment {id}: new secret; the old EDGE_KEY no longer works. Redeploy its agent:");
                println!();
                print_created(d);
            });
        }
        EnvCommand::Deploy { env } => {
            let id = env_id(&mut api, &env)?;
            let d = api.get(&format!("/api/environments/{id}/deploy"))?;
            api.print(&d, print_created);
        }
        EnvCommand::State { env, part } => {
            let id = env_id(&mut api, &env)?;
            let path = match part {
                Some(p) => format!("/api/environments/{id}/state/{}", p.name()),
                None => format!("/api/environments/{id}/state"),
            };
            let v = api.get(&path)?;
            api.print(&v, |v| print_state(v, part));
        }
    }
    Ok(())
}
