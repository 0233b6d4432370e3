//! The compose model both sides share: a typed, I/O-free reading of a
//! compose file, and the documented subset of the Compose format that the
//! agent's built-in implementation deploys.
//!
//! The server checks a stack's file with it before storing it
//! ([`crate::stack::check_file`]), and the agent parses it again before
//! deploying it, whichever way it deploys ([`crate::stack::check_stack`]),
//! so a file the API takes is one the built-in compose can read: one parse,
//! one set of messages. It is a pure function of the text, the variables,
//! the project name and its directory: no file, no engine, no process
//! environment (a `~` bind path is left as written for the agent to
//! resolve, [`Project::expand_home`]).
//!
//! # The subset
//!
//! Services: `image` (required: an edge host has no build context, so
//! `build` alone is refused), `command` and `entrypoint` (a string split
//! as a shell would, or a list), `environment` (a mapping or a list of
//! `KEY=VALUE`; a bare `KEY` takes the stack's variable), `ports` (short
//! syntax `[[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]` and long syntax; no
//! ranges), `volumes` (named, bind and anonymous, short and long syntax;
//! relative bind paths are under the stack's directory), `networks` (a list,
//! or a mapping with `aliases`), `network_mode`, `restart` (`no`, `always`,
//! `on-failure[:N]`, `unless-stopped`), `labels`, `container_name`,
//! `depends_on` (start order; cycles refused), `working_dir`, `user`,
//! `hostname`. Top level: `services`, `networks` and `volumes` (with
//! `external`, `name`, `driver`, `internal`, `labels`).
//!
//! Any other key is not an error: the host's compose tool, the agent's
//! first choice, reads far more of the format, so [`Project::warnings`]
//! names what the built-in implementation ignores, and a variable that is
//! not set, and neither side refuses the file for it. `${VAR}` is
//! interpolated as compose does it ([`crate::stack::interpolate`]) before
//! anything is read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::stack::{check_name, interpolate_all};

/// Parses YAML text into a JSON value (mappings with string keys).
///
/// # Errors
/// The parser's message (with the line), or a budget breach (alias bombs,
/// very deep nesting).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        let text = e.to_string();
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("not YAML").trim().to_owned();
        format!("not valid YAML: {line}")
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
    /// A host path: absolute, relative ones resolved against the stack's
    /// directory; one starting with `~` as written until
    /// [`Project::expand_home`].
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
    /// What the built-in implementation ignores, variables that were not
    /// set, and images a variable left empty: none of them makes the file
    /// wrong, for the host's compose tool reads it too.
    pub warnings: Vec<String>,
    /// Valid Compose the built-in subset cannot run (a port range, a mount
    /// type other than volume or bind), each left out of the service with
    /// its reason. The host's compose tool runs them, so the server's check
    /// only warns of them; the built-in refuses the file
    /// ([`Self::parse_builtin`]).
    pub unsupported: Vec<String>,
}

/// Service keys the built-in implementation understands (the others are
/// ignored, with a warning).
pub const SERVICE_KEYS: &[&str] = &[
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

/// How an error for valid Compose beyond the built-in subset ends: such an
/// entry goes to [`Project::unsupported`] instead of failing the parse.
const UNSUPPORTED: &str = "not supported by the built-in compose";

/// `Ok(None)` for an entry the subset cannot run (kept in `unsupported`).
fn or_unsupported<T>(r: Result<T, String>, unsupported: &mut Vec<String>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.ends_with(UNSUPPORTED) => {
            unsupported.push(e);
            Ok(None)
        }
        Err(e) => Err(e),
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

fn parse_ports(v: &Value, what: &str, unsupported: &mut Vec<String>) -> Result<Vec<Port>, String> {
    let Value::Array(items) = v else { return Err(format!("{what}: a list")) };
    let mut out = Vec::new();
    for item in items {
        let port = match item {
            Value::Object(m) => (|| {
                let target = m.get("target").and_then(scalar).ok_or_else(|| format!("{what}: `target` missing"))?;
                let published = match m.get("published").and_then(scalar) {
                    Some(p) if !p.is_empty() => Some(port_number(&p, what)?),
                    _ => None,
                };
                Ok(Port {
                    host_ip: m.get("host_ip").and_then(scalar).filter(|h| !h.is_empty()),
                    published,
                    target: port_number(&target, what)?,
                    protocol: m.get("protocol").and_then(scalar).unwrap_or_else(|| "tcp".into()),
                })
            })(),
            x => parse_port(&scalar(x).ok_or_else(|| format!("{what}: a string or a mapping"))?, what),
        };
        out.extend(or_unsupported(port, unsupported)?);
    }
    Ok(out)
}

fn is_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

/// A bind mount's host path: relative ones under `dir`; absolute ones, and
/// `~` ones (the agent's home, [`Project::expand_home`]), as written.
fn bind_path(source: &str, dir: &Path) -> String {
    if source.starts_with('/') || source.starts_with('~') {
        return source.to_owned();
    }
    let rel = source.trim_start_matches("./");
    if rel == "." { dir.display().to_string() } else { dir.join(rel).display().to_string() }
}

fn parse_mounts(
    v: &Value,
    what: &str,
    dir: &Path,
    volumes: &BTreeMap<String, Resource>,
    unsupported: &mut Vec<String>,
) -> Result<Vec<Mount>, String> {
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
                    (k, _) => {
                        unsupported.push(format!("{what}: mount type {k:?} is {UNSUPPORTED}"));
                        continue;
                    }
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
    /// for `${VAR}` interpolation. Relative bind paths are resolved against
    /// `dir` (path text only: nothing is read), `~` ones are left for
    /// [`Project::expand_home`].
    ///
    /// # Errors
    /// What is wrong with the file, naming the service and key: not YAML
    /// (or over the parser's budgets), no `services`, a service without an
    /// `image`, a value of a known key the subset cannot read (a port
    /// range, a mount type other than volume or bind, an undeclared network
    /// or volume, a restart policy, a dependency cycle), an interpolation
    /// that fails.
    pub fn parse(name: &str, text: &str, env: &BTreeMap<String, String>, dir: &Path) -> Result<Self, String> {
        Self::parse_all(name, text, env, dir)
    }

    /// [`Self::parse`] for the built-in compose: valid Compose beyond its
    /// subset ([`Self::unsupported`]) is refused too.
    ///
    /// # Errors
    /// As [`Self::parse`], and the first entry the subset cannot run.
    pub fn parse_builtin(name: &str, text: &str, env: &BTreeMap<String, String>, dir: &Path) -> Result<Self, String> {
        let project = Self::parse(name, text, env, dir)?;
        match project.unsupported.first() {
            Some(e) => Err(e.clone()),
            None => Ok(project),
        }
    }

    fn parse_all(name: &str, text: &str, env: &BTreeMap<String, String>, dir: &Path) -> Result<Self, String> {
        check_name(name)?;
        let mut root = parse_yaml(text)?;
        // Which services name an image as written: one named through a
        // variable that is not set is empty once interpolated, which
        // compose warns about, and so does this (the deploy fails then).
        let named_image: BTreeSet<String> = match root.get("services") {
            Some(Value::Object(s)) => s
                .iter()
                .filter(|(_, def)| def.get("image").and_then(scalar).is_some_and(|i| !i.trim().is_empty()))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => BTreeSet::new(),
        };
        let mut unset = BTreeSet::new();
        interpolate_all(&mut root, env, &mut unset)?;
        let Value::Object(top) = root else {
            return Err("the file must be a mapping with `services` (a mapping of services)".into());
        };
        let services_v = match top.get("services") {
            Some(Value::Object(s)) if !s.is_empty() => s,
            _ => return Err("no `services` mapping, or it is empty".into()),
        };
        let mut warnings: Vec<String> =
            unset.iter().map(|v| format!("the variable {v} is not set; it is empty")).collect();
        let mut unsupported = Vec::new();
        let mut networks = parse_resources(top.get("networks"), "networks", name)?;
        let volumes = parse_resources(top.get("volumes"), "volumes", name)?;
        let mut services = BTreeMap::new();
        for (sname, def) in services_v {
            let what = format!("services.{sname}");
            if sname.is_empty() || !sname.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!(
                    "service {:?}: not a service name: a name is letters, digits, '-', '_' or '.'",
                    sname.chars().take(70).collect::<String>()
                ));
            }
            let Value::Object(def) = def else { return Err(format!("{what} must be a mapping")) };
            if !named_image.contains(sname) {
                return Err(if def.contains_key("build") {
                    format!(
                        "{what} needs an `image`: `build` is not supported on an edge host (it has no build context)"
                    )
                } else {
                    format!(
                        "{what}: `image` is required (an edge host has no build context: a service needs an `image`)"
                    )
                });
            }
            for key in def.keys() {
                if !SERVICE_KEYS.contains(&key.as_str()) && key != "build" {
                    warnings.push(format!("{what}.{key} is ignored by the built-in compose"));
                }
            }
            let image = def.get("image").and_then(scalar).unwrap_or_default();
            if image.trim().is_empty() {
                warnings.push(format!("{what}.image is empty once the variables are interpolated"));
            }
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
                    Some(v) => parse_ports(v, &format!("{what}.ports"), &mut unsupported)?,
                    None => Vec::new(),
                },
                volumes: match get("volumes") {
                    Some(v) => parse_mounts(v, &format!("{what}.volumes"), dir, &volumes, &mut unsupported)?,
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
        let project =
            Self { name: name.to_owned(), dir: dir.to_owned(), services, networks, volumes, warnings, unsupported };
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

    /// Resolves bind mounts written `~...` against `home`, the deploying
    /// process's home directory (the one thing of the host a file may
    /// refer to), which the parse leaves to the agent.
    pub fn expand_home(&mut self, home: &str) {
        for service in self.services.values_mut() {
            for mount in &mut service.volumes {
                if let MountSource::Bind(path) = &mut mount.source
                    && let Some(rest) = path.strip_prefix('~')
                {
                    *path = format!("{home}{rest}");
                }
            }
        }
    }
}

/// The hash a container of `service` is labelled with by the built-in
/// implementation: its resolved configuration (the [`Service`] as JSON, so
/// the model's field names and order are part of it), the image it runs,
/// and the engine names of its networks and volumes. A redeploy replaces a
/// container whose hash changed.
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
        let ports = parse_ports(&v, "p", &mut Vec::new()).unwrap();
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
        let parse = |text: &str| Project::parse_builtin("x", text, &BTreeMap::new(), Path::new("/s")).unwrap_err();
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
}
