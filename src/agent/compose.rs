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
//!   tool (the agent's own image): the project parsed by the model both
//!   sides share ([`crate::compose`], `${VAR}` interpolated from the
//!   stack's variables) has its
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
//! Either way the file is first checked as the server checked it
//! ([`crate::stack::check_stack`]): parsed into the typed model, whose
//! documented subset of the format is what the built-in implementation
//! deploys (see [`crate::compose`]). Keys outside it are ignored with a
//! warning in the agent's log; `build` alone is refused (an edge host has
//! no build context).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

use crate::compose::{MountSource, Project, Resource, Service, config_hash};
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
/// A digest of the configuration files a service's bind mounts reach: a
/// changed file changes the service's configuration hash, so its
/// container is made again and mounts the new file (a bind-mounted file
/// is the inode that was there when the container started).
pub const LABEL_FILES_HASH: &str = "io.tern.stack.files-hash";
/// The stack version (the server's) that created a container.
pub const LABEL_STACK_VERSION: &str = "io.tern.stack.version";

/// The file the compose file is written to, in the stack's directory.
pub const COMPOSE_FILE: &str = "compose.yml";

/// The variables are written here too (for an operator on the host; the
/// tool gets them through its environment, which wins over any `.env`).
pub const ENV_FILE: &str = "stack.env";

pub use super::stackfiles::FILES_LIST;

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

/// Where the agent keeps its stacks' files, and how it deploys them. The
/// agent's engine holds one ([`super::DockerEngine::with_stacks`]) and
/// passes it to each stack command, so one process can run agents (tests
/// do) with different settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stacks {
    /// `DATA_PATH/stacks`: one directory per stack.
    pub dir: PathBuf,
    /// Tool or built-in.
    pub mode: ComposeMode,
    /// Private registries' credentials for the images' pulls.
    pub registries: super::Registries,
    /// Host variables offered to the stacks' `${VAR}` (EDGE_HOST_VARS,
    /// with their values as the agent started): a stack's own variable of
    /// the same name wins.
    pub host_vars: BTreeMap<String, String>,
}

impl Default for Stacks {
    /// A directory under the system's temporary directory, and
    /// [`ComposeMode::Auto`]: for an engine the agent's start did not set
    /// up (a test's).
    fn default() -> Self {
        Self {
            dir: std::env::temp_dir().join("tern-stacks"),
            mode: ComposeMode::Auto,
            registries: super::Registries::default(),
            host_vars: BTreeMap::new(),
        }
    }
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
        let merged;
        let spec = if self.host_vars.keys().any(|k| !spec.env.contains_key(k)) {
            let mut s = spec.clone();
            for (k, v) in &self.host_vars {
                s.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
            merged = s;
            &merged
        } else {
            spec
        };
        let dir = self.stack_dir(&spec.name);
        crate::stack::check_files(&spec.files).map_err(|e| format!("stack files: {e}"))?;
        // Relative bind mounts (`./nginx.conf:/etc/nginx/nginx.conf`) are
        // the engine's to resolve, on the host: when the agent runs in a
        // container, its stack directory is elsewhere there.
        let host_dir = host_path(docker, &dir).await;
        // What the server checks (the same parse), checked again: a stack
        // from an older server (or any other sender) must not reach the
        // tool otherwise.
        let mut project = crate::stack::check_stack(&spec.name, &spec.compose, &spec.env, &host_dir)
            .map_err(|e| format!("compose file: {e}"))?;
        let base = write_files(&dir, spec).await?;
        match self.tool().await? {
            Some(tool) => {
                tracing::info!(stack = %spec.name, version = spec.version, tool = %tool.join(" "), "deploying with the compose tool");
                let file = dir.join(COMPOSE_FILE);
                // The tool pulls what is missing with the host's own
                // credentials; images from a registry tern has
                // credentials for are pulled first, here, through the
                // engine, so those never reach the tool or the disk.
                self.pull_private(docker, &project).await?;
                // In a container, relative paths are to resolve on the host.
                let project_dir = (host_dir != dir).then_some(host_dir.as_path());
                // The tool cannot be told which services mount a changed
                // file: all are made again when the files differ from those
                // it last brought up (a failed attempt's files included).
                let digest = super::stackfiles::digest(&spec.files);
                let applied = super::stackfiles::read_own(&base, super::stackfiles::APPLIED);
                let changed = applied.trim() != digest && !(applied.is_empty() && spec.files.is_empty());
                let args: &[&str] = if changed {
                    &["up", "-d", "--remove-orphans", "--force-recreate"]
                } else {
                    &["up", "-d", "--remove-orphans"]
                };
                run_tool(&tool, &dir, project_dir, &spec.name, &file, args, &spec.env).await?;
                let applied = super::stackfiles::APPLIED;
                if let Err(e) = super::stackfiles::write(&base, applied, digest.as_bytes(), 0o600) {
                    tracing::warn!(stack = %spec.name, "noting the files brought up: {e}");
                }
            }
            None => {
                tracing::info!(stack = %spec.name, version = spec.version, "deploying with the built-in compose");
                if let Some(e) = project.unsupported.first() {
                    return Err(format!("compose file: {e}; install docker compose on the host to run it"));
                }
                for w in &project.warnings {
                    tracing::warn!(stack = %spec.name, "{w}");
                }
                project.expand_home(&std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
                label_files(&mut project, &host_dir, &spec.files);
                deploy_builtin(docker, &project, spec.version, &self.registries).await?;
            }
        }
        Ok(Vec::new())
    }

    /// Pulls the missing images of `project` that come from a registry the
    /// server gave credentials for.
    async fn pull_private(&self, docker: &Docker, project: &Project) -> Result<(), String> {
        for s in project.services.values() {
            if s.image.is_empty() || self.registries.credentials(&s.image).is_none() {
                continue;
            }
            ensure_image(docker, &s.image, &self.registries).await.map_err(|e| match e {
                ImageError::Inspect(e) => format!("service {}: {e}", s.name),
                ImageError::Pull(e) => format!("service {}: image {}: {e}", s.name, s.image),
            })?;
        }
        Ok(())
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
            run_tool(&tool, &dir, None, name, &file, &["down", "--remove-orphans"], &BTreeMap::new()).await?;
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
    project_dir: Option<&Path>,
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
    cmd.arg("-p").arg(name).arg("-f").arg(&file);
    if let Some(p) = project_dir {
        cmd.arg("--project-directory").arg(p);
    }
    cmd.args(args).current_dir(&dir).envs(env);
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

/// Labels each service with a digest of the configuration files its bind
/// mounts reach ([`LABEL_FILES_HASH`]); a service that mounts none gets no
/// label, so a file change leaves it running.
pub fn label_files(project: &mut Project, host_dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for service in project.services.values_mut() {
        let mut h = blake3::Hasher::new();
        let mut any = false;
        for (path, content) in files {
            let at = host_dir.join(path);
            let mounted =
                service.volumes.iter().any(|m| matches!(&m.source, MountSource::Bind(src) if at.starts_with(src)));
            if mounted {
                any = true;
                super::stackfiles::hash_file(&mut h, path, content);
            }
        }
        if any {
            service.labels.insert(LABEL_FILES_HASH.to_owned(), h.finalize().to_hex()[..16].to_owned());
        }
    }
}

/// Writes the stack's compose file, variables and configuration files in
/// its directory, none through a link a service may have put there
/// ([`super::stackfiles`]). Returns the directory, opened.
async fn write_files(dir: &Path, spec: &StackSpec) -> Result<std::os::fd::OwnedFd, String> {
    let dir = dir.to_owned();
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        let io = |e: String| format!("writing the stack's files in {}: {e}", dir.display());
        let base = super::stackfiles::open_dir(&dir).map_err(io)?;
        let mut env = String::new();
        for (k, v) in &spec.env {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('$', "\\$");
            env.push_str(&format!("{k}=\"{v}\"\n"));
        }
        // Stack variables hold passwords: the agent's alone.
        super::stackfiles::write(&base, COMPOSE_FILE, spec.compose.as_bytes(), 0o600).map_err(io)?;
        super::stackfiles::write(&base, ENV_FILE, env.as_bytes(), 0o600).map_err(io)?;
        super::stackfiles::write_config_files(&base, &spec.files).map_err(io)?;
        Ok(base)
    })
    .await
    .map_err(|e| format!("writing the stack's files: {e}"))?
}

/// Where `path` (in this process's filesystem) is on the engine's host:
/// itself, unless the agent runs in a container and `path` is under one of
/// its mounts (the `DATA_PATH` volume), whose host directory
/// (`Mountpoint`, a bind's source) stands in for the mount's destination.
pub async fn host_path(docker: &Docker, path: &Path) -> PathBuf {
    let Ok(abs) = std::path::absolute(path) else { return path.to_owned() };
    let Some(me) = super::update::own_container(docker).await else { return abs };
    let mounts = me.mounts.unwrap_or_default();
    let best = mounts
        .iter()
        .filter_map(|m| {
            let dest = Path::new(m.destination.as_deref()?);
            let rest = abs.strip_prefix(dest).ok()?;
            Some((dest.components().count(), Path::new(m.source.as_deref()?).join(rest)))
        })
        .max_by_key(|(depth, _)| *depth);
    best.map_or(abs, |(_, host)| host)
}

// ---------------------------------------------------------------------------
// The built-in implementation, through the engine's API.
// ---------------------------------------------------------------------------

use super::{ImageError, engine_error, ensure_image, is_status};

fn project_filter(project: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{LABEL_PROJECT}={project}")])])
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
pub async fn deploy_builtin(
    docker: &Docker,
    project: &Project,
    version: u32,
    registries: &super::Registries,
) -> Result<(), String> {
    use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
    let order = project.start_order()?;
    // A variable that is not set can leave an image empty: the file parses
    // (compose warns, as the parse does), but nothing can run it.
    if let Some(s) = order.iter().find(|s| s.image.trim().is_empty()) {
        return Err(format!(
            "services.{}: `image` is required; it is empty once the variables are interpolated",
            s.name
        ));
    }
    let mut hashes = BTreeMap::new();
    for s in &order {
        let id = ensure_image(docker, &s.image, registries).await.map_err(|e| match e {
            ImageError::Inspect(e) => format!("image {}: {e}", s.image),
            ImageError::Pull(e) => format!("pulling {}: {e}", s.image),
        })?;
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
    use crate::agent::with_tag;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_hash_is_a_tern_label_and_an_older_agents_is_still_read() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let file = "services:\n  web:\n    image: busybox\n    labels: [team=edge]\n";
        let p = Project::parse("shop", file, &env(&[]), Path::new("/data/stacks/shop")).unwrap();
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

    #[tokio::test]
    async fn two_stack_settings_in_one_process() {
        // The settings are a value the engine holds, not the process's:
        // two agents in one process keep their stacks apart. The engine's
        // socket exists but nothing listens, so a deploy writes the stack's
        // files and then fails at the engine.
        let root = std::env::temp_dir().join(format!("tern-two-stacks-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let socket = root.join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let docker = Docker::connect_with_unix(socket.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION).unwrap();
        let spec = StackSpec {
            name: "web".into(),
            compose: "services:\n  a:\n    image: busybox\n".into(),
            ..StackSpec::default()
        };
        let one = Stacks { dir: root.join("one"), mode: ComposeMode::Builtin, ..Stacks::default() };
        let two = Stacks { dir: root.join("two"), mode: ComposeMode::Builtin, ..Stacks::default() };
        let e = one.deploy(&docker, &spec).await.unwrap_err();
        assert!(e.contains("not reachable"), "{e}");
        assert!(one.stack_dir("web").join(COMPOSE_FILE).exists());
        assert!(!two.stack_dir("web").exists(), "the other settings' directory is untouched");
        two.deploy(&docker, &spec).await.unwrap_err();
        assert!(two.stack_dir("web").join(COMPOSE_FILE).exists());
        let _ = std::fs::remove_dir_all(&root);
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
