//! Edge stacks on the agent: a compose file (with its variables) deployed,
//! redeployed and removed as a compose project.
//!
//! Two implementations, chosen per command by [`ComposeMode`]
//! (`EDGE_COMPOSE`):
//!
//! * **the host's compose tool** (`docker compose`, else `docker-compose`):
//!   the file is written to `DATA_PATH/stacks/<name>/compose.yml` and the
//!   tool runs `-p <name> -f compose.yml up -d --remove-orphans` (or
//!   `down --remove-orphans`), with only the stack's variables, `PATH`,
//!   `HOME` and the `DOCKER_*` settings in its environment; its standard
//!   error is the failure's text;
//! * **the built-in one**, through the engine's API, for hosts without the
//!   tool (the agent's own image): the file is parsed ([`Project::parse`]),
//!   `${VAR}` interpolated from the stack's variables, and the project's
//!   networks, named volumes and containers (`<project>-<service>-1`) are
//!   created and labelled the way compose labels them
//!   (`com.docker.compose.project`, `.service`, `.oneoff=False`, ...), so
//!   the agent's state derives the stack from the containers whichever way
//!   it was deployed; its own configuration hash goes under a tern label
//!   (`io.tern.stack.config-hash`), not Compose's. A redeploy keeps a container
//!   whose configuration (and image) did not change, and replaces the
//!   others; services no longer in the file are removed. Images are taken
//!   from the engine when present and pulled only when missing. Removal
//!   deletes the project's containers and networks and keeps its named
//!   volumes, as `docker compose down` does.
//!
//! The built-in implementation understands the part of the compose format
//! edge services use: `image`, `command`, `entrypoint`, `environment` (list
//! or map), `ports` (short and long syntax), `volumes` (named, bind,
//! anonymous; short and long syntax), `networks` (list or map with
//! `aliases`), `network_mode`, `restart`, `labels`, `container_name`,
//! `depends_on` (start order), `working_dir`, `user`, `hostname`; top-level
//! `networks` and `volumes` (with `external`, `name`, `driver`). Other keys
//! are ignored with a warning in the agent's log; `build` is refused (an
//! edge host has no build context).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::wire::poll::StackSpec;

/// The label compose puts on everything a project owns.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// The service a container runs.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// The hash of a service's configuration, as the built-in implementation
/// computes it; a redeploy replaces a container whose hash changed. A tern
/// label: Compose's own `com.docker.compose.config-hash` means Compose's
/// hash, and writing a different one under it made each tool take the
/// other's containers for changed.
pub const LABEL_CONFIG_HASH: &str = "io.tern.stack.config-hash";
/// Where agents before 0.2 wrote [`LABEL_CONFIG_HASH`]. Read (only on
/// containers the built-in implementation made, which carry
/// [`LABEL_STACK_VERSION`]) so an upgrade replaces no unchanged container.
const LEGACY_LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
/// The stack version (the server's) that created a container.
pub const LABEL_STACK_VERSION: &str = "io.tern.stack.version";

/// The file the compose file is written to, in the stack's directory.
pub const COMPOSE_FILE: &str = "compose.yml";

/// The variables are written here too (for an operator on the host; the
/// tool gets them through its environment, which wins over any `.env`).
pub const ENV_FILE: &str = "stack.env";

/// A compose tool run that takes longer than this is killed and failed:
/// the agent runs one command at a time, so a hung tool must not block the
/// others for ever. Pulls over a slow link fit in it.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The longest error text kept from the tool's standard error (its end,
/// where compose says what failed).
const TOOL_ERROR_TAIL: usize = 480;

/// Which implementation deploys stacks (`EDGE_COMPOSE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComposeMode {
    /// The host's compose tool when there is one, else the built-in one.
    #[default]
    Auto,
    /// Always the built-in one.
    Builtin,
    /// Always the host's tool (a command fails when there is none).
    Tool,
}

impl ComposeMode {
    /// Parses `auto`, `builtin` or `tool` (empty: auto).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Self::Auto),
            "builtin" | "built-in" => Some(Self::Builtin),
            "tool" => Some(Self::Tool),
            _ => None,
        }
    }
}

/// Where the agent keeps its stacks' files, and how it deploys them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stacks {
    /// `DATA_PATH/stacks`: one directory per stack.
    pub dir: PathBuf,
    /// Tool or built-in.
    pub mode: ComposeMode,
}

static CONFIGURED: OnceLock<Stacks> = OnceLock::new();

/// Sets the process's stack settings (the agent does at start). The first
/// call wins.
pub fn configure(stacks: Stacks) {
    let _ = CONFIGURED.set(stacks);
}

/// The process's stack settings: as configured, else a directory under the
/// system's temporary directory and [`ComposeMode::Auto`].
pub fn stacks() -> Stacks {
    CONFIGURED
        .get()
        .cloned()
        .unwrap_or_else(|| Stacks { dir: std::env::temp_dir().join("tern-stacks"), mode: ComposeMode::Auto })
}

pub use crate::stack::check_name;

impl Stacks {
    /// The directory of one stack.
    pub fn stack_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Deploys (or redeploys) a stack.
    ///
    /// # Errors
    /// The tool's or the engine's error, or what is wrong with the file.
    pub async fn deploy(&self, docker: &Docker, spec: &StackSpec) -> Result<Vec<u8>, String> {
        check_name(&spec.name).map_err(|e| format!("stack name {e}"))?;
        // What the server checks, checked again: a stack from an older
        // server (or any other sender) must not reach the tool otherwise.
        crate::stack::check_file(&spec.compose, &spec.env).map_err(|e| format!("compose file: {e}"))?;
        let dir = self.stack_dir(&spec.name);
        write_files(&dir, spec).await?;
        match self.tool().await? {
            Some(tool) => {
                tracing::info!(stack = %spec.name, version = spec.version, tool = %tool.join(" "), "deploying with the compose tool");
                let file = dir.join(COMPOSE_FILE);
                run_tool(&tool, &dir, &spec.name, &file, &["up", "-d", "--remove-orphans"], &spec.env).await?;
            }
            None => {
                tracing::info!(stack = %spec.name, version = spec.version, "deploying with the built-in compose");
                let project = Project::parse(&spec.name, &spec.compose, &spec.env, &dir)?;
                for w in &project.warnings {
                    tracing::warn!(stack = %spec.name, "{w}");
                }
                deploy_builtin(docker, &project, spec.version).await?;
            }
        }
        Ok(Vec::new())
    }

    /// Removes a stack: its containers and networks (named volumes stay).
    /// Removing a stack that is not there is not an error.
    ///
    /// # Errors
    /// The tool's or the engine's error.
    pub async fn remove(&self, docker: &Docker, name: &str) -> Result<Vec<u8>, String> {
        check_name(name).map_err(|e| format!("stack name {e}"))?;
        let dir = self.stack_dir(name);
        let file = dir.join(COMPOSE_FILE);
        if let Some(tool) = self.tool().await?
            && tokio::fs::try_exists(&file).await.unwrap_or(false)
        {
            tracing::info!(stack = %name, tool = %tool.join(" "), "removing with the compose tool");
            run_tool(&tool, &dir, name, &file, &["down", "--remove-orphans"], &BTreeMap::new()).await?;
        }
        // Whatever the tool left (or everything, without a tool): by label.
        remove_builtin(docker, name).await?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(stack = %name, "removing {}: {e}", dir.display()),
        }
        Ok(Vec::new())
    }

    /// The tool's command words, when the mode and the host say to use it.
    async fn tool(&self) -> Result<Option<Vec<String>>, String> {
        match self.mode {
            ComposeMode::Builtin => Ok(None),
            ComposeMode::Auto => Ok(find_tool().await),
            ComposeMode::Tool => find_tool().await.map(Some).ok_or_else(|| {
                "EDGE_COMPOSE=tool, but neither `docker compose` nor `docker-compose` runs on this host".to_owned()
            }),
        }
    }
}

/// `docker compose` (the plugin) when it runs, else `docker-compose`.
pub async fn find_tool() -> Option<Vec<String>> {
    for words in [&["docker", "compose"][..], &["docker-compose"][..]] {
        let mut cmd = tool_command(words);
        cmd.arg("version").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let ok = tokio::time::timeout(Duration::from_secs(20), cmd.status()).await;
        if matches!(ok, Ok(Ok(s)) if s.success()) {
            return Some(words.iter().map(|w| (*w).to_owned()).collect());
        }
    }
    None
}

/// The variables of the agent's own environment the tool may see: what it
/// needs to run and reach the engine. Nothing else (the agent's EDGE_KEY
/// and AGENT_SECRET among them) is interpolated into a compose file.
const TOOL_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CONTEXT",
    "XDG_RUNTIME_DIR",
];

fn tool_command(words: &[impl AsRef<std::ffi::OsStr>]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&words[0]);
    cmd.args(&words[1..]).env_clear().stdin(std::process::Stdio::null()).kill_on_drop(true);
    for name in TOOL_PASSTHROUGH {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd
}

async fn run_tool(
    tool: &[String],
    dir: &Path,
    name: &str,
    file: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    // Absolute paths: the tool runs in `dir`, so a relative DATA_PATH would
    // otherwise be resolved twice.
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cmd = tool_command(tool);
    cmd.arg("-p").arg(name).arg("-f").arg(&file).args(args).current_dir(&dir).envs(env);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("{}: {e}", tool.join(" ")))?;
    let out = match tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("{}: {e}", tool.join(" ")))?,
        Err(_) => {
            return Err(format!("{} {}: still running after {:?}; killed", tool.join(" "), args[0], TOOL_TIMEOUT));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = stderr.trim();
    let mut start = text.len().saturating_sub(TOOL_ERROR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    Err(format!("{} {} failed ({}): {}{tail}", tool.join(" "), args[0], out.status, if start > 0 { "…" } else { "" }))
}

async fn write_files(dir: &Path, spec: &StackSpec) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("writing the stack's {what} in {}: {e}", dir.display());
    tokio::fs::create_dir_all(dir).await.map_err(|e| io("directory", e))?;
    tokio::fs::write(dir.join(COMPOSE_FILE), &spec.compose).await.map_err(|e| io("compose file", e))?;
    let mut env = String::new();
    for (k, v) in &spec.env {
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('$', "\\$");
        env.push_str(&format!("{k}=\"{v}\"\n"));
    }
    tokio::fs::write(dir.join(ENV_FILE), env).await.map_err(|e| io("variables", e))?;
    // Stack variables hold passwords: the agent's alone.
    #[cfg(unix)]
    for name in [COMPOSE_FILE, ENV_FILE] {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|e| io("permissions", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The compose file.
// ---------------------------------------------------------------------------

/// Parses YAML text into a JSON value (mappings with string keys).
///
/// # Errors
/// The parser's message (with the line), or a budget breach (alias bombs,
/// very deep nesting).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        let text = e.to_string();
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("not YAML").trim().to_owned();
        format!("the compose file is not valid YAML: {line}")
    })
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// The host address (all when absent).
    pub host_ip: Option<String>,
    /// The host port (the engine picks one when absent).
    pub published: Option<u16>,
    /// The container port.
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// What a volume entry mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MountSource {
    /// A named volume of the file's top-level `volumes` (its key).
    Volume(String),
    /// A host path (absolute: relative ones are resolved against the
    /// stack's directory).
    Bind(String),
    /// A fresh anonymous volume.
    Anonymous,
}

/// A service's mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Where from.
    pub source: MountSource,
    /// Where in the container.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// One service, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Its key in the file.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// Replaces the image's command.
    pub command: Option<Vec<String>>,
    /// Replaces the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Its environment.
    pub environment: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Mounts.
    pub volumes: Vec<Mount>,
    /// Networks (keys of the project's networks) with their aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    /// `network_mode` (host, none, container:..., service:...).
    pub network_mode: Option<String>,
    /// Restart policy name and retry count.
    pub restart: Option<(String, i64)>,
    /// Its labels (compose's are added when it is created).
    pub labels: BTreeMap<String, String>,
    /// A fixed container name.
    pub container_name: Option<String>,
    /// Services started before it.
    pub depends_on: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// The user.
    pub user: Option<String>,
    /// The hostname.
    pub hostname: Option<String>,
}

/// A top-level network or volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// The engine's name (`<project>_<key>` unless `name` or `external`).
    pub name: String,
    /// Not created nor removed by the project: it must exist.
    pub external: bool,
    /// The driver (the engine's default when absent).
    pub driver: Option<String>,
    /// Networks: `internal`.
    pub internal: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A compose file, parsed and interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The project name.
    pub name: String,
    /// Its directory (labels, relative bind mounts).
    pub dir: PathBuf,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Networks by key (`default` included when a service uses it).
    pub networks: BTreeMap<String, Resource>,
    /// Named volumes by key.
    pub volumes: BTreeMap<String, Resource>,
    /// What the built-in implementation ignores, and variables that were
    /// not set.
    pub warnings: Vec<String>,
}

/// Service keys the built-in implementation understands.
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "networks",
    "network_mode",
    "restart",
    "labels",
    "container_name",
    "depends_on",
    "working_dir",
    "user",
    "hostname",
];

/// A scalar as compose reads it: strings as they are, numbers and
/// booleans as their text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().map(|x| scalar(x).ok_or_else(|| format!("{what}: a list of strings"))).collect(),
        _ => Err(format!("{what}: a list of strings")),
    }
}

/// A map given as a mapping or as a list of `KEY=VALUE` (a bare `KEY`:
/// from `fallback`, or left out when it has none).
fn key_values(
    v: &Value,
    what: &str,
    fallback: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Null => {
                        if let Some(v) = fallback.and_then(|f| f.get(k)) {
                            out.insert(k.clone(), v.clone());
                        } else if fallback.is_none() {
                            out.insert(k.clone(), String::new());
                        }
                    }
                    x => {
                        out.insert(k.clone(), scalar(x).ok_or_else(|| format!("{what}.{k}: a string"))?);
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                let s = scalar(x).ok_or_else(|| format!("{what}: a list of KEY=VALUE strings"))?;
                match s.split_once('=') {
                    Some((k, v)) => {
                        out.insert(k.to_owned(), v.to_owned());
                    }
                    None => {
                        if let Some(v) = fallback.and_then(|f| f.get(&s)) {
                            out.insert(s, v.clone());
                        } else if fallback.is_none() {
                            out.insert(s, String::new());
                        }
                    }
                }
            }
        }
        Value::Null => {}
        _ => return Err(format!("{what}: a mapping or a list of KEY=VALUE")),
    }
    Ok(out)
}

/// Splits a command line the way a POSIX shell would split words: spaces
/// separate, quotes group, a backslash escapes (outside single quotes).
///
/// # Errors
/// An unclosed quote.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unclosed ' in {line:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unclosed \" in {line:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unclosed \" in {line:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn command_of(v: &Value, what: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => split_words(s).map(Some).map_err(|e| format!("{what}: {e}")),
        Value::Array(_) => string_list(v, what).map(Some),
        _ => Err(format!("{what}: a string or a list of strings")),
    }
}

fn port_number(text: &str, what: &str) -> Result<u16, String> {
    if text.contains('-') {
        return Err(format!("{what}: port ranges ({text}) are not supported by the built-in compose"));
    }
    text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{what}: bad port {text:?}"))
}

/// Parses a short-syntax port: `[[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]`.
///
/// # Errors
/// What is wrong with it.
pub fn parse_port(text: &str, what: &str) -> Result<Port, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, p)) => (s, p.to_owned()),
        None => (text, "tcp".to_owned()),
    };
    if protocol != "tcp" && protocol != "udp" && protocol != "sctp" {
        return Err(format!("{what}: protocol {protocol:?}: tcp, udp or sctp"));
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, published, target) = match parts.as_slice() {
        [t] => (None, None, *t),
        [t, p] => (None, Some(*p), *t),
        [t, p, ip] => (Some(ip.trim_start_matches('[').trim_end_matches(']').to_owned()), Some(*p), *t),
        _ => return Err(format!("{what}: bad port {text:?}")),
    };
    let published = match published {
        Some("") | None => None,
        Some(p) => Some(port_number(p, what)?),
    };
    Ok(Port { host_ip: host_ip.filter(|h| !h.is_empty()), published, target: port_number(target, what)?, protocol })
}

fn parse_ports(v: &Value, what: &str) -> Result<Vec<Port>, String> {
    let Value::Array(items) = v else { return Err(format!("{what}: a list")) };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::Object(m) => {
                let target = m.get("target").and_then(scalar).ok_or_else(|| format!("{what}: `target` missing"))?;
                let published = match m.get("published").and_then(scalar) {
                    Some(p) if !p.is_empty() => Some(port_number(&p, what)?),
                    _ => None,
                };
                out.push(Port {
                    host_ip: m.get("host_ip").and_then(scalar).filter(|h| !h.is_empty()),
                    published,
                    target: port_number(&target, what)?,
                    protocol: m.get("protocol").and_then(scalar).unwrap_or_else(|| "tcp".into()),
                });
            }
            x => out.push(parse_port(&scalar(x).ok_or_else(|| format!("{what}: a string or a mapping"))?, what)?),
        }
    }
    Ok(out)
}

fn is_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

fn bind_path(source: &str, dir: &Path) -> String {
    if let Some(rest) = source.strip_prefix('~') {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        return format!("{home}{rest}");
    }
    if source.starts_with('/') {
        return source.to_owned();
    }
    let rel = source.trim_start_matches("./");
    if rel == "." { dir.display().to_string() } else { dir.join(rel).display().to_string() }
}

fn parse_mounts(v: &Value, what: &str, dir: &Path, volumes: &BTreeMap<String, Resource>) -> Result<Vec<Mount>, String> {
    let Value::Array(items) = v else { return Err(format!("{what}: a list")) };
    let named = |name: &str| -> Result<MountSource, String> {
        if volumes.contains_key(name) {
            Ok(MountSource::Volume(name.to_owned()))
        } else {
            Err(format!("{what}: volume {name:?} is not declared in the top-level `volumes`"))
        }
    };
    let mut out = Vec::new();
    for item in items {
        let mount = match item {
            Value::Object(m) => {
                let kind = m.get("type").and_then(scalar).unwrap_or_else(|| "volume".into());
                let target = m.get("target").and_then(scalar).ok_or_else(|| format!("{what}: `target` missing"))?;
                let source = m.get("source").and_then(scalar).filter(|s| !s.is_empty());
                let read_only = m.get("read_only").is_some_and(|r| r == &Value::Bool(true) || r == "true");
                let source = match (kind.as_str(), source) {
                    ("volume", None) => MountSource::Anonymous,
                    ("volume", Some(s)) => named(&s)?,
                    ("bind", Some(s)) => MountSource::Bind(bind_path(&s, dir)),
                    ("bind", None) => return Err(format!("{what}: a bind mount needs a `source`")),
                    (k, _) => return Err(format!("{what}: mount type {k:?} is not supported by the built-in compose")),
                };
                Mount { source, target, read_only }
            }
            x => {
                let s = scalar(x).ok_or_else(|| format!("{what}: a string or a mapping"))?;
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [target] => {
                        Mount { source: MountSource::Anonymous, target: (*target).to_owned(), read_only: false }
                    }
                    [source, target, rest @ ..] if rest.len() <= 1 => {
                        let read_only = rest.first().is_some_and(|m| m.split(',').any(|o| o == "ro"));
                        let source =
                            if is_path(source) { MountSource::Bind(bind_path(source, dir)) } else { named(source)? };
                        Mount { source, target: (*target).to_owned(), read_only }
                    }
                    _ => return Err(format!("{what}: bad volume {s:?}")),
                }
            }
        };
        if !mount.target.starts_with('/') {
            return Err(format!("{what}: the container path {:?} must be absolute", mount.target));
        }
        out.push(mount);
    }
    Ok(out)
}

fn parse_resources(v: Option<&Value>, what: &str, project: &str) -> Result<BTreeMap<String, Resource>, String> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let m = match v {
        Value::Null => return Ok(out),
        Value::Object(m) => m,
        _ => return Err(format!("{what}: a mapping")),
    };
    for (key, def) in m {
        let def = match def {
            Value::Null => serde_json::Map::new(),
            Value::Object(d) => d.clone(),
            _ => return Err(format!("{what}.{key}: a mapping")),
        };
        let external = match def.get("external") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Object(_)) => true,
            _ => false,
        };
        let name = def
            .get("name")
            .and_then(scalar)
            .unwrap_or_else(|| if external { key.clone() } else { format!("{project}_{key}") });
        out.insert(
            key.clone(),
            Resource {
                name,
                external,
                driver: def.get("driver").and_then(scalar),
                internal: def.get("internal") == Some(&Value::Bool(true)),
                labels: match def.get("labels") {
                    Some(l) => key_values(l, &format!("{what}.{key}.labels"), None)?,
                    None => BTreeMap::new(),
                },
            },
        );
    }
    Ok(out)
}

impl Project {
    /// Parses a compose file for the project `name` in `dir`, with `env`
    /// for `${VAR}` interpolation.
    ///
    /// # Errors
    /// What is wrong with the file, naming the service and key.
    pub fn parse(name: &str, text: &str, env: &BTreeMap<String, String>, dir: &Path) -> Result<Self, String> {
        check_name(name)?;
        let mut root = parse_yaml(text)?;
        let mut unset = BTreeSet::new();
        crate::stack::interpolate_all(&mut root, env, &mut unset)?;
        let Value::Object(top) = root else { return Err("the compose file must be a mapping with `services`".into()) };
        let services_v = match top.get("services") {
            Some(Value::Object(s)) if !s.is_empty() => s,
            _ => return Err("the compose file has no `services` mapping (or it is empty)".into()),
        };
        let mut warnings: Vec<String> =
            unset.iter().map(|v| format!("the variable {v} is not set; it is empty")).collect();
        let mut networks = parse_resources(top.get("networks"), "networks", name)?;
        let volumes = parse_resources(top.get("volumes"), "volumes", name)?;
        let mut services = BTreeMap::new();
        for (sname, def) in services_v {
            let what = format!("services.{sname}");
            if sname.is_empty() || !sname.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!("{what}: a service name is letters, digits, '-', '_' or '.'"));
            }
            let Value::Object(def) = def else { return Err(format!("{what}: a mapping")) };
            if def.contains_key("build") && !def.contains_key("image") {
                return Err(format!("{what}: `build` is not supported on an edge host; give an `image`"));
            }
            for key in def.keys() {
                if !SERVICE_KEYS.contains(&key.as_str()) && key != "build" {
                    warnings.push(format!("{what}.{key} is ignored by the built-in compose"));
                }
            }
            let image = def
                .get("image")
                .and_then(scalar)
                .filter(|i| !i.trim().is_empty())
                .ok_or_else(|| format!("{what}: `image` is required"))?;
            let get = |k: &str| def.get(k).filter(|v| !v.is_null());
            let str_of = |k: &str| -> Result<Option<String>, String> {
                get(k).map(|v| scalar(v).ok_or_else(|| format!("{what}.{k}: a string"))).transpose()
            };
            let mut svc_networks = BTreeMap::new();
            match get("networks") {
                None => {}
                Some(Value::Array(a)) => {
                    for n in a {
                        let n = scalar(n).ok_or_else(|| format!("{what}.networks: a list of names"))?;
                        svc_networks.insert(n, Vec::new());
                    }
                }
                Some(Value::Object(m)) => {
                    for (n, opts) in m {
                        let aliases = match opts.get("aliases") {
                            Some(a) => string_list(a, &format!("{what}.networks.{n}.aliases"))?,
                            None => Vec::new(),
                        };
                        svc_networks.insert(n.clone(), aliases);
                    }
                }
                Some(_) => return Err(format!("{what}.networks: a list or a mapping")),
            }
            let network_mode = str_of("network_mode")?;
            if network_mode.is_none() && svc_networks.is_empty() {
                svc_networks.insert("default".to_owned(), Vec::new());
            }
            for n in svc_networks.keys() {
                if n == "default" && !networks.contains_key("default") {
                    networks.insert(
                        "default".into(),
                        Resource {
                            name: format!("{name}_default"),
                            external: false,
                            driver: None,
                            internal: false,
                            labels: BTreeMap::new(),
                        },
                    );
                } else if !networks.contains_key(n) {
                    return Err(format!("{what}.networks: {n:?} is not declared in the top-level `networks`"));
                }
            }
            let restart = match get("restart") {
                None => None,
                // `restart: no` unquoted is a boolean to some YAML readers.
                Some(Value::Bool(false)) => Some(("no".to_owned(), 0)),
                Some(v) => {
                    let r = scalar(v).ok_or_else(|| format!("{what}.restart: a string"))?;
                    let (policy, count) = match r.split_once(':') {
                        Some(("on-failure", n)) => {
                            ("on-failure", n.parse().map_err(|_| format!("{what}.restart: bad count {n:?}"))?)
                        }
                        _ => (r.as_str(), 0),
                    };
                    if !["no", "always", "on-failure", "unless-stopped"].contains(&policy) {
                        return Err(format!("{what}.restart: {r:?}: no, always, on-failure[:N] or unless-stopped"));
                    }
                    Some((policy.to_owned(), count))
                }
            };
            let depends_on = match get("depends_on") {
                None => Vec::new(),
                Some(Value::Object(m)) => m.keys().cloned().collect(),
                Some(v) => string_list(v, &format!("{what}.depends_on"))?,
            };
            let service = Service {
                name: sname.clone(),
                image,
                command: command_of(get("command").unwrap_or(&Value::Null), &format!("{what}.command"))?,
                entrypoint: command_of(get("entrypoint").unwrap_or(&Value::Null), &format!("{what}.entrypoint"))?,
                environment: match get("environment") {
                    Some(v) => key_values(v, &format!("{what}.environment"), Some(env))?,
                    None => BTreeMap::new(),
                },
                ports: match get("ports") {
                    Some(v) => parse_ports(v, &format!("{what}.ports"))?,
                    None => Vec::new(),
                },
                volumes: match get("volumes") {
                    Some(v) => parse_mounts(v, &format!("{what}.volumes"), dir, &volumes)?,
                    None => Vec::new(),
                },
                networks: svc_networks,
                network_mode,
                restart,
                labels: match get("labels") {
                    Some(v) => key_values(v, &format!("{what}.labels"), None)?,
                    None => BTreeMap::new(),
                },
                container_name: str_of("container_name")?,
                depends_on,
                working_dir: str_of("working_dir")?,
                user: str_of("user")?,
                hostname: str_of("hostname")?,
            };
            services.insert(sname.clone(), service);
        }
        for s in services.values() {
            for d in &s.depends_on {
                if !services.contains_key(d) {
                    return Err(format!("services.{}.depends_on: no service {d:?}", s.name));
                }
            }
        }
        // Keep only the networks some service uses.
        let used: BTreeSet<&String> = services.values().flat_map(|s| s.networks.keys()).collect();
        networks.retain(|k, _| used.contains(k));
        let project = Self { name: name.to_owned(), dir: dir.to_owned(), services, networks, volumes, warnings };
        project.start_order()?;
        Ok(project)
    }

    /// Services in an order that starts each after those it depends on.
    ///
    /// # Errors
    /// A dependency cycle.
    pub fn start_order(&self) -> Result<Vec<&Service>, String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < self.services.len() {
            let before = order.len();
            for s in self.services.values() {
                if !done.contains(s.name.as_str()) && s.depends_on.iter().all(|d| done.contains(d.as_str())) {
                    done.insert(&s.name);
                    order.push(s);
                }
            }
            if order.len() == before {
                let left: Vec<&str> = self.services.keys().map(String::as_str).filter(|s| !done.contains(s)).collect();
                return Err(format!("depends_on: a cycle among {}", left.join(", ")));
            }
        }
        Ok(order)
    }

    /// The container name of a service.
    pub fn container_name(&self, service: &Service) -> String {
        service.container_name.clone().unwrap_or_else(|| format!("{}-{}-1", self.name, service.name))
    }
}

// ---------------------------------------------------------------------------
// The built-in implementation, through the engine's API.
// ---------------------------------------------------------------------------

use super::engine_error;

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn project_filter(project: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{LABEL_PROJECT}={project}")])])
}

/// The reference with a tag: a bare name means `:latest`, as the CLI has
/// it (the engine would pull every tag otherwise).
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') { image.to_owned() } else { format!("{image}:latest") }
}

/// The local image's id; pulls it first only when the engine does not
/// have it.
async fn ensure_image(docker: &Docker, image: &str) -> Result<String, String> {
    match docker.inspect_image(image).await {
        Ok(i) => return Ok(i.id.unwrap_or_default()),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(format!("image {image}: {}", engine_error(e))),
    }
    tracing::info!(image, "pulling (not on this host)");
    let opts =
        bollard::query_parameters::CreateImageOptions { from_image: Some(with_tag(image)), ..Default::default() };
    let mut progress = docker.create_image(Some(opts), None, None);
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("pulling {image}: {e}"));
                }
            }
            Err(e) => return Err(format!("pulling {image}: {}", engine_error(e))),
        }
    }
    let i = docker.inspect_image(image).await.map_err(|e| format!("image {image}: {}", engine_error(e)))?;
    Ok(i.id.unwrap_or_default())
}

fn resource_labels(project: &str, kind: &str, key: &str, own: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = own.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(LABEL_PROJECT.into(), project.into());
    labels.insert(format!("com.docker.compose.{kind}"), key.into());
    labels
}

async fn ensure_network(docker: &Docker, project: &str, key: &str, net: &Resource) -> Result<(), String> {
    match docker.inspect_network(&net.name, None).await {
        Ok(_) => return Ok(()),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(format!("network {}: {}", net.name, engine_error(e))),
    }
    if net.external {
        return Err(format!("network {} is declared external but does not exist", net.name));
    }
    let req = bollard::models::NetworkCreateRequest {
        name: net.name.clone(),
        driver: net.driver.clone(),
        internal: Some(net.internal),
        labels: Some(resource_labels(project, "network", key, &net.labels)),
        ..Default::default()
    };
    docker.create_network(req).await.map_err(|e| format!("creating network {}: {}", net.name, engine_error(e)))?;
    Ok(())
}

async fn ensure_volume(docker: &Docker, project: &str, key: &str, vol: &Resource) -> Result<(), String> {
    match docker.inspect_volume(&vol.name).await {
        Ok(_) => return Ok(()),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(format!("volume {}: {}", vol.name, engine_error(e))),
    }
    if vol.external {
        return Err(format!("volume {} is declared external but does not exist", vol.name));
    }
    let req = bollard::models::VolumeCreateRequest {
        name: Some(vol.name.clone()),
        driver: vol.driver.clone(),
        labels: Some(resource_labels(project, "volume", key, &vol.labels)),
        ..Default::default()
    };
    docker.create_volume(req).await.map_err(|e| format!("creating volume {}: {}", vol.name, engine_error(e)))?;
    Ok(())
}

/// The hash a container of `service` is labelled with: its resolved
/// configuration, the image it runs, and the engine names of its networks
/// and volumes.
pub fn config_hash(project: &Project, service: &Service, image_id: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&serde_json::to_vec(service).unwrap_or_default());
    h.update(image_id.as_bytes());
    for n in service.networks.keys() {
        if let Some(r) = project.networks.get(n) {
            h.update(r.name.as_bytes());
        }
    }
    for m in &service.volumes {
        if let MountSource::Volume(v) = &m.source
            && let Some(r) = project.volumes.get(v)
        {
            h.update(r.name.as_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// The configuration hash a container of the built-in implementation
/// carries (see [`LEGACY_LABEL_CONFIG_HASH`]).
fn config_hash_of(labels: &HashMap<String, String>) -> Option<&String> {
    labels
        .get(LABEL_CONFIG_HASH)
        .or_else(|| labels.get(LEGACY_LABEL_CONFIG_HASH).filter(|_| labels.contains_key(LABEL_STACK_VERSION)))
}

/// The engine body that creates a service's container (attached to its
/// first network; the others are connected before it starts).
fn create_body(project: &Project, service: &Service, hash: &str, version: u32) -> bollard::models::ContainerCreateBody {
    use bollard::models::{
        ContainerCreateBody, EndpointSettings, HostConfig, MountType, NetworkingConfig, PortBinding, RestartPolicy,
        RestartPolicyNameEnum,
    };
    let mut labels: HashMap<String, String> = service.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let config_file = project.dir.join(COMPOSE_FILE).display().to_string();
    for (k, v) in [
        (LABEL_PROJECT, project.name.clone()),
        (LABEL_SERVICE, service.name.clone()),
        ("com.docker.compose.container-number", "1".to_owned()),
        ("com.docker.compose.oneoff", "False".to_owned()),
        ("com.docker.compose.project.working_dir", project.dir.display().to_string()),
        ("com.docker.compose.project.config_files", config_file),
        (LABEL_CONFIG_HASH, hash.to_owned()),
        ("com.docker.compose.depends_on", service.depends_on.join(",")),
        ("com.docker.compose.image", service.image.clone()),
        (LABEL_STACK_VERSION, version.to_string()),
    ] {
        labels.insert(k.to_owned(), v);
    }
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &service.ports {
        let key = format!("{}/{}", p.target, p.protocol);
        let binding = PortBinding {
            host_ip: p.host_ip.clone(),
            host_port: Some(p.published.map(|p| p.to_string()).unwrap_or_default()),
        };
        bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
    }
    let exposed: Vec<String> = bindings.keys().cloned().collect();
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for m in &service.volumes {
        match &m.source {
            MountSource::Bind(path) => {
                binds.push(format!("{path}:{}{}", m.target, if m.read_only { ":ro" } else { "" }));
            }
            MountSource::Volume(key) => mounts.push(bollard::models::Mount {
                target: Some(m.target.clone()),
                source: project.volumes.get(key).map(|r| r.name.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(m.read_only),
                ..Default::default()
            }),
            MountSource::Anonymous => mounts.push(bollard::models::Mount {
                target: Some(m.target.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(m.read_only),
                ..Default::default()
            }),
        }
    }
    let restart = service.restart.as_ref().map(|(name, count)| RestartPolicy {
        name: Some(match name.as_str() {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            _ => RestartPolicyNameEnum::NO,
        }),
        maximum_retry_count: (name == "on-failure" && *count > 0).then_some(*count),
    });
    let first = service.networks.iter().next().and_then(|(key, aliases)| {
        let net = project.networks.get(key)?;
        let mut all = vec![service.name.clone()];
        all.extend(aliases.iter().cloned());
        Some((net.name.clone(), EndpointSettings { aliases: Some(all), ..Default::default() }))
    });
    let network_mode = service.network_mode.clone().or_else(|| first.as_ref().map(|(n, _)| n.clone()));
    ContainerCreateBody {
        image: Some(service.image.clone()),
        cmd: service.command.clone(),
        entrypoint: service.entrypoint.clone(),
        env: Some(service.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        working_dir: service.working_dir.clone(),
        user: service.user.clone(),
        hostname: service.hostname.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!binds.is_empty()).then_some(binds),
            mounts: (!mounts.is_empty()).then_some(mounts),
            restart_policy: restart,
            network_mode,
            ..Default::default()
        }),
        networking_config: first
            .map(|(name, ep)| NetworkingConfig { endpoints_config: Some(HashMap::from([(name, ep)])) }),
        ..Default::default()
    }
}

/// Deploys a parsed project through the engine's API.
///
/// # Errors
/// The engine's error, naming the object.
pub async fn deploy_builtin(docker: &Docker, project: &Project, version: u32) -> Result<(), String> {
    use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
    let order = project.start_order()?;
    let mut hashes = BTreeMap::new();
    for s in &order {
        let id = ensure_image(docker, &s.image).await?;
        hashes.insert(s.name.clone(), config_hash(project, s, &id));
    }
    for (key, net) in &project.networks {
        ensure_network(docker, &project.name, key, net).await?;
    }
    for (key, vol) in &project.volumes {
        ensure_volume(docker, &project.name, key, vol).await?;
    }
    // Keep what is unchanged, remove the rest (changed services, orphans).
    let existing = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(project_filter(&project.name)),
            ..Default::default()
        }))
        .await
        .map_err(engine_error)?;
    let mut keep = BTreeMap::new();
    for c in existing {
        let Some(id) = c.id else { continue };
        let labels = c.labels.unwrap_or_default();
        let service = labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let name = c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_owned());
        let same = project.services.get(&service).is_some_and(|s| {
            config_hash_of(&labels) == hashes.get(&service)
                && name.as_deref() == Some(project.container_name(s).as_str())
        });
        if same && !keep.contains_key(&service) {
            keep.insert(service, id);
            continue;
        }
        tracing::debug!(stack = %project.name, container = %id, %service, "replacing");
        let opts = RemoveContainerOptions { force: true, v: false, ..Default::default() };
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(format!("removing the old container of {service}: {}", engine_error(e))),
        }
    }
    for s in order {
        let name = project.container_name(s);
        let id = match keep.get(&s.name) {
            Some(id) => id.clone(),
            None => {
                let body = create_body(project, s, &hashes[&s.name], version);
                let opts = bollard::query_parameters::CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                };
                let created = docker
                    .create_container(Some(opts), body)
                    .await
                    .map_err(|e| format!("creating {name}: {}", engine_error(e)))?;
                for (key, aliases) in s.networks.iter().skip(1) {
                    let Some(net) = project.networks.get(key) else { continue };
                    let mut all = vec![s.name.clone()];
                    all.extend(aliases.iter().cloned());
                    let req = bollard::models::NetworkConnectRequest {
                        container: created.id.clone(),
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            aliases: Some(all),
                            ..Default::default()
                        }),
                    };
                    docker
                        .connect_network(&net.name, req)
                        .await
                        .map_err(|e| format!("connecting {name} to {}: {}", net.name, engine_error(e)))?;
                }
                created.id
            }
        };
        match docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) => {}
            Err(e) => return Err(format!("starting {name}: {}", engine_error(e))),
        }
    }
    Ok(())
}

/// Removes a project's containers and networks by their compose labels.
///
/// # Errors
/// The engine's error.
pub async fn remove_builtin(docker: &Docker, project: &str) -> Result<(), String> {
    use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, RemoveContainerOptions};
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(project_filter(project)),
            ..Default::default()
        }))
        .await
        .map_err(engine_error)?;
    for c in containers {
        let Some(id) = c.id else { continue };
        let opts = RemoveContainerOptions { force: true, v: false, ..Default::default() };
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(format!("removing container {id:.12}: {}", engine_error(e))),
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions { filters: Some(project_filter(project)) }))
        .await
        .map_err(engine_error)?;
    for n in networks {
        let Some(id) = n.id else { continue };
        match docker.remove_network(&id).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(format!("removing network {}: {}", n.name.unwrap_or_default(), engine_error(e)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("sh -c 'echo hi; sleep 1'").unwrap(), ["sh", "-c", "echo hi; sleep 1"]);
        assert_eq!(split_words(r#"a "b c" d\ e ''"#).unwrap(), ["a", "b c", "d e", ""]);
        assert_eq!(split_words(r#"echo "a \"q\" \n""#).unwrap(), ["echo", "a \"q\" \\n"]);
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert!(split_words("echo 'open").is_err());
        assert!(split_words("echo \"open").is_err());
    }

    #[test]
    fn ports_in_short_and_long_syntax() {
        let p = |s: &str| parse_port(s, "p");
        assert_eq!(p("80").unwrap(), Port { host_ip: None, published: None, target: 80, protocol: "tcp".into() });
        assert_eq!(p("8080:80").unwrap().published, Some(8080));
        let full = p("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            full,
            Port { host_ip: Some("127.0.0.1".into()), published: Some(5353), target: 53, protocol: "udp".into() }
        );
        assert!(p("8000-8010:8000-8010").unwrap_err().contains("ranges"));
        assert!(p("0").is_err());
        assert!(p("70000").is_err());
        assert!(p("80/icmp").is_err());
        let v = parse_yaml("- target: 80\n  published: \"8081\"\n  protocol: udp\n- 9000:90\n- 443\n").unwrap();
        let ports = parse_ports(&v, "p").unwrap();
        assert_eq!(ports[0], Port { host_ip: None, published: Some(8081), target: 80, protocol: "udp".into() });
        assert_eq!((ports[1].published, ports[1].target), (Some(9000), 90));
        assert_eq!((ports[2].published, ports[2].target), (None, 443));
    }

    const FILE: &str = r#"
services:
  web:
    image: "busybox:${TAG:-1}"
    command: sh -c 'echo $${HOME}; sleep 1'
    environment:
      MODE: ${MODE}
      COUNT: 3
      DEBUG: true
      FROM_STACK:
    ports: ["8080:80", "127.0.0.1::81/udp"]
    volumes:
      - data:/data
      - ./conf:/etc/conf:ro
      - /var/log:/host-log
      - /scratch
    restart: unless-stopped
    labels: ["team=edge", "tier=front"]
    depends_on: [db]
    networks:
      back:
        aliases: [www]
    healthcheck:
      test: ["CMD", "true"]
  db:
    image: busybox
    entrypoint: ["/bin/busybox", "sh"]
    environment:
      - A=1
      - B=x=y
      - FROM_STACK
      - NOT_SET_ANYWHERE
    restart: "on-failure:3"
    networks: [back, default]
networks:
  back: {}
volumes:
  data:
  shared:
    external: true
"#;

    #[test]
    fn a_compose_file_is_parsed_and_interpolated() {
        let e = env(&[("MODE", "prod"), ("FROM_STACK", "yes")]);
        let p = Project::parse("shop", FILE, &e, Path::new("/data/stacks/shop")).unwrap();
        let web = &p.services["web"];
        assert_eq!(web.image, "busybox:1");
        assert_eq!(web.command.as_deref().unwrap(), ["sh", "-c", "echo ${HOME}; sleep 1"]);
        assert_eq!(web.environment, env(&[("MODE", "prod"), ("COUNT", "3"), ("DEBUG", "true"), ("FROM_STACK", "yes")]));
        assert_eq!(web.ports.len(), 2);
        assert_eq!(
            web.ports[1],
            Port { host_ip: Some("127.0.0.1".into()), published: None, target: 81, protocol: "udp".into() }
        );
        assert_eq!(
            web.volumes,
            [
                Mount { source: MountSource::Volume("data".into()), target: "/data".into(), read_only: false },
                Mount {
                    source: MountSource::Bind("/data/stacks/shop/conf".into()),
                    target: "/etc/conf".into(),
                    read_only: true
                },
                Mount { source: MountSource::Bind("/var/log".into()), target: "/host-log".into(), read_only: false },
                Mount { source: MountSource::Anonymous, target: "/scratch".into(), read_only: false },
            ]
        );
        assert_eq!(web.restart, Some(("unless-stopped".into(), 0)));
        assert_eq!(web.labels, env(&[("team", "edge"), ("tier", "front")]));
        assert_eq!(web.networks, BTreeMap::from([("back".to_owned(), vec!["www".to_owned()])]));
        let db = &p.services["db"];
        assert_eq!(db.entrypoint.as_deref().unwrap(), ["/bin/busybox", "sh"]);
        assert_eq!(db.command, None);
        assert_eq!(db.environment, env(&[("A", "1"), ("B", "x=y"), ("FROM_STACK", "yes")]));
        assert_eq!(db.restart, Some(("on-failure".into(), 3)));
        assert_eq!(p.networks["back"].name, "shop_back");
        assert_eq!(p.networks["default"].name, "shop_default");
        assert_eq!(p.volumes["data"].name, "shop_data");
        assert_eq!((p.volumes["shared"].name.as_str(), p.volumes["shared"].external), ("shared", true));
        assert_eq!(p.start_order().unwrap().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["db", "web"]);
        assert_eq!(p.container_name(web), "shop-web-1");
        assert!(p.warnings.iter().any(|w| w.contains("services.web.healthcheck")), "{:?}", p.warnings);
        // A changed variable changes the configuration's hash.
        let h1 = config_hash(&p, web, "sha256:1");
        let p2 = Project::parse("shop", FILE, &env(&[("MODE", "dev")]), Path::new("/data/stacks/shop")).unwrap();
        assert_ne!(h1, config_hash(&p2, &p2.services["web"], "sha256:1"));
        assert_eq!(h1, config_hash(&p, web, "sha256:1"));
        assert_ne!(h1, config_hash(&p, web, "sha256:2"), "a new image replaces the container");
    }

    #[test]
    fn the_config_hash_of_a_service_is_stable() {
        // A changed hash replaces the container on the next deploy: the
        // same file must hash the same from one agent version to the next
        // (the model's layout, field names and order included).
        let e = env(&[("MODE", "prod"), ("FROM_STACK", "yes")]);
        let p = Project::parse("shop", FILE, &e, Path::new("/data/stacks/shop")).unwrap();
        assert_eq!(
            config_hash(&p, &p.services["web"], "sha256:1"),
            "1f7f192081fc3f183848fbcf3c14eb36526ad13d288a3b07e9264df3ec82b037"
        );
        assert_eq!(
            config_hash(&p, &p.services["db"], "sha256:1"),
            "c8d8c773bc81be50c9cef691cb348a31028ecf4d12516bbcc1a36b7b2644a357"
        );
    }

    #[test]
    fn the_hash_is_a_tern_label_and_an_older_agents_is_still_read() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let p = Project::parse("shop", FILE, &env(&[]), Path::new("/data/stacks/shop")).unwrap();
        let body = create_body(&p, &p.services["web"], "abc", 3);
        let written = body.labels.unwrap_or_default();
        assert_eq!(written.get("io.tern.stack.config-hash").map(String::as_str), Some("abc"));
        assert!(!written.contains_key("com.docker.compose.config-hash"), "Compose's own label is Compose's");
        assert_eq!(config_hash_of(&labels(&[(LABEL_CONFIG_HASH, "abc")])).map(String::as_str), Some("abc"));
        // Made by an older agent's built-in compose: kept when unchanged.
        let old = labels(&[(LEGACY_LABEL_CONFIG_HASH, "abc"), (LABEL_STACK_VERSION, "2")]);
        assert_eq!(config_hash_of(&old).map(String::as_str), Some("abc"));
        // Made by the compose tool: its hash means something else.
        assert_eq!(config_hash_of(&labels(&[(LEGACY_LABEL_CONFIG_HASH, "abc")])), None);
    }

    #[test]
    fn the_default_network_only_when_used() {
        let p = Project::parse(
            "x",
            "services:\n  a:\n    image: i\n    network_mode: host\n",
            &BTreeMap::new(),
            Path::new("/s"),
        )
        .unwrap();
        assert!(p.networks.is_empty());
        assert_eq!(p.services["a"].network_mode.as_deref(), Some("host"));
        let p =
            Project::parse("x", "services:\n  a:\n    image: i\n    restart: no\n", &BTreeMap::new(), Path::new("/s"))
                .unwrap();
        assert_eq!(p.networks.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(p.services["a"].restart, Some(("no".into(), 0)));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let parse = |text: &str| Project::parse("x", text, &BTreeMap::new(), Path::new("/s")).unwrap_err();
        for (text, want) in [
            ("services: [unclosed", "not valid YAML"),
            ("just a string", "mapping with `services`"),
            ("version: '3'\n", "no `services`"),
            ("services: {}\n", "no `services`"),
            ("services:\n  a:\n    command: x\n", "`image` is required"),
            ("services:\n  a:\n    build: .\n", "`build` is not supported"),
            ("services:\n  a:\n    image: i\n    volumes: [vol:/x]\n", "not declared"),
            ("services:\n  a:\n    image: i\n    volumes: ['/a:rel']\n", "must be absolute"),
            ("services:\n  a:\n    image: i\n    networks: [nope]\n", "not declared"),
            ("services:\n  a:\n    image: i\n    depends_on: [b]\n", "no service \"b\""),
            ("services:\n  a:\n    image: i\n    depends_on: [b]\n  b:\n    image: i\n    depends_on: [a]\n", "cycle"),
            ("services:\n  a:\n    image: i\n    restart: sometimes\n", "restart"),
            ("services:\n  a:\n    image: i\n    ports: ['1-2:1-2']\n", "ranges"),
            ("services:\n  a:\n    image: ${X:?X is required}\n", "X is required"),
            ("services:\n  'a b':\n    image: i\n", "service name"),
        ] {
            let e = parse(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(Project::parse("Bad", "services:\n  a:\n    image: i\n", &BTreeMap::new(), Path::new("/s")).is_err());
    }

    #[test]
    fn yaml_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='m' {
            bomb.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        bomb.push_str("services: {}\n");
        assert!(parse_yaml(&bomb).is_err(), "a billion laughs must hit the budget");
        let deep = format!("services: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_yaml(&deep).is_err());
    }

    #[test]
    fn names_and_modes() {
        for ok in ["web", "a", "0shop", "my_stack-2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-web", "_web", "a b", "a.b", "é", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(ComposeMode::parse(""), Some(ComposeMode::Auto));
        assert_eq!(ComposeMode::parse("BuiltIn"), Some(ComposeMode::Builtin));
        assert_eq!(ComposeMode::parse("tool"), Some(ComposeMode::Tool));
        assert_eq!(ComposeMode::parse("podman"), None);
        assert_eq!(with_tag("busybox"), "busybox:latest");
        assert_eq!(with_tag("reg:5000/busybox"), "reg:5000/busybox:latest");
        assert_eq!(with_tag("reg:5000/busybox:1"), "reg:5000/busybox:1");
        assert_eq!(with_tag("busybox@sha256:ab"), "busybox@sha256:ab");
    }
}
