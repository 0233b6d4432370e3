//! The agent role: its configuration ([`config`]), what it keeps on disk
//! ([`store`]), its connection to the server ([`client`]), the poll loop
//! ([`run`]), its health record and check ([`health`]), and the local
//! Docker engine: the collector, which reads a [`RawSnapshot`] through
//! bollard and makes it canonical ([`canonical`]), the event follower, and
//! the commands.

pub mod canonical;
pub mod client;
pub mod compose;
pub mod config;
pub mod enrol;
pub mod fetch;
pub mod health;
mod image;
pub mod inspect;
pub mod jobs;
pub mod journal;
pub mod keepalive;
pub mod proxy;
pub mod run;
pub mod stackfiles;
pub mod store;
pub mod update;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions, RemoveImageOptions,
};
use futures_util::StreamExt;

pub use canonical::{CanonicalOptions, RawSnapshot};
pub use image::Registries;
pub(crate) use image::{ImageError, ensure_image, is_status, pull, with_tag};

/// `tern agent`'s subcommands (none: run the agent).
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Read the local engine and print, as JSON, what this host costs: the
    /// object counts, the root digest, the encoded size of a full snapshot
    /// and of the delta from --base.
    DryRun {
        /// Save the state read, for a later --base.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
        /// A state saved earlier with --save: also report the delta from it.
        #[arg(long)]
        base: Option<std::path::PathBuf>,
    },
    /// Exit 0 when the agent using this data path is reaching its server:
    /// its last successful poll is at most 3 × its ping interval + 60 s old,
    /// or it started that recently; 1 otherwise. Prints why. The agent
    /// image's HEALTHCHECK.
    Health {
        /// The agent's data directory.
        #[arg(long, env = "DATA_PATH", default_value = config::DEFAULT_DATA_PATH)]
        data_path: std::path::PathBuf,
    },
    /// The helper an agent update starts (see `agent::update`): replaces
    /// the agent's container by one from the new image, and puts it back
    /// if the new agent does not poll in time.
    #[command(hide = true)]
    UpdateHelper {
        /// The agent's container.
        #[arg(long)]
        container: String,
        /// The new image's id.
        #[arg(long)]
        image: String,
        /// Seconds the new agent has to poll.
        #[arg(long)]
        timeout: u64,
        /// The update command's id.
        #[arg(long)]
        command: u64,
        /// The agent's data directory (shared with the agent).
        #[arg(long, env = "DATA_PATH", default_value = config::DEFAULT_DATA_PATH)]
        data_path: std::path::PathBuf,
    },
}

/// `tern agent [COMMAND]`. Running the agent exits 2 for a configuration
/// error and 1 for a failure; `health` 1 when unhealthy.
pub fn main(command: Option<AgentCommand>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match command {
        None => config::AgentConfig::from_env(&std::env::vars().collect()),
        Some(AgentCommand::DryRun { save, base }) => {
            return match inspect::dry_run(save.as_deref(), base.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tern: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(AgentCommand::UpdateHelper { container, image, timeout, command, data_path }) => {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return ExitCode::FAILURE;
            };
            let timeout = std::time::Duration::from_secs(timeout);
            let code = rt.block_on(update::helper(&container, &image, timeout, command, &data_path));
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Some(AgentCommand::Health { data_path }) => {
            let verdict = health::check(&data_path, crate::clock::unix_now());
            println!("{verdict}");
            return if verdict.healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(async { start(config, crate::signal::shutdown()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern agent: {e}");
            ExitCode::FAILURE
        }
    }
}

use crate::sync::State;
use crate::wire::poll::{Action, ContainerOp};

/// Why the engine could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The engine could not be reached or refused a request.
    #[error("docker engine: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// Connects to the engine named by `DOCKER_HOST` (or the local default) and
/// negotiates the API version, so older engines work too.
///
/// # Errors
/// When the engine cannot be reached.
pub async fn connect() -> Result<Docker, CollectError> {
    let docker = Docker::connect_with_defaults()?;
    Ok(docker.negotiate_version().await?)
}

/// Reads everything the canonical state is built from.
///
/// # Errors
/// When a request to the engine fails. A container removed between the list
/// and its inspect is skipped, not an error.
pub async fn collect(docker: &Docker) -> Result<RawSnapshot, CollectError> {
    let list = docker.list_containers(Some(ListContainersOptions { all: true, ..Default::default() })).await?;
    let mut containers = Vec::with_capacity(list.len());
    for c in &list {
        let Some(id) = c.id.as_deref() else { continue };
        match docker.inspect_container(id, None).await {
            Ok(inspect) => containers.push(inspect),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(RawSnapshot {
        containers,
        images: docker.list_images(Some(ListImagesOptions { all: false, ..Default::default() })).await?,
        volumes: docker.list_volumes(None::<ListVolumesOptions>).await?.volumes.unwrap_or_default(),
        networks: docker.list_networks(None::<ListNetworksOptions>).await?,
        info: docker.info().await?,
        version: docker.version().await?,
    })
}

/// Runs one command's action against the engine, stacks with the agent's
/// stack settings. The error is the engine's own text, which the operator
/// sees.
///
/// # Errors
/// The engine's refusal or failure, as text.
pub async fn execute(docker: &Docker, stacks: &compose::Stacks, action: &Action) -> Result<Vec<u8>, String> {
    use bollard::query_parameters::{RemoveContainerOptions, RemoveVolumeOptions};
    let r = match action {
        Action::Container(op, id) => {
            let id = id.to_string();
            match op {
                ContainerOp::Start => docker.start_container(&id, None).await,
                ContainerOp::Stop => docker.stop_container(&id, None).await,
                ContainerOp::Restart => docker.restart_container(&id, None).await,
                ContainerOp::Kill => docker.kill_container(&id, None).await,
                ContainerOp::Pause => docker.pause_container(&id).await,
                ContainerOp::Unpause => docker.unpause_container(&id).await,
                ContainerOp::Remove => {
                    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
                    docker.remove_container(&id, Some(opts)).await
                }
            }
        }
        Action::ImagePull(reference) => return pull(docker, reference, &stacks.registries).await.map(|()| Vec::new()),
        Action::ImageRemove(reference) => {
            docker.remove_image(reference, None::<RemoveImageOptions>, None).await.map(drop)
        }
        Action::VolumeRemove(name) => docker.remove_volume(name, None::<RemoveVolumeOptions>).await,
        Action::NetworkRemove(id) => docker.remove_network(&id.to_string()).await,
        Action::ContainerLogs(id, tail) => return logs(docker, id, *tail).await,
        Action::StackDeploy(spec) => return stacks.deploy(docker, spec).await,
        Action::StackRemove(name) => return stacks.remove(docker, name).await,
        Action::Job(_) | Action::JobRemove(_) => {
            return jobs::execute(docker, None, &stacks.registries, action).await;
        }
        Action::ImageFetch(_) | Action::AgentUpdate(_) => {
            return Err("this agent has no server to fetch images from".into());
        }
    };
    r.map(|()| Vec::new()).map_err(engine_error)
}

/// A command's output is capped to its last this many bytes: enough for a
/// few hundred log lines, small enough for a slow link.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// Log lines when the command does not say.
const DEFAULT_TAIL: u32 = 100;

/// The last `tail` lines of a container's stdout and stderr, interleaved as
/// the engine returns them, capped to the last [`OUTPUT_CAP`] bytes.
async fn logs(docker: &Docker, id: &crate::sync::state::Id, tail: u32) -> Result<Vec<u8>, String> {
    use bollard::query_parameters::LogsOptions;
    let tail = if tail == 0 { DEFAULT_TAIL } else { tail };
    let opts = LogsOptions { stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
    let mut stream = docker.logs(&id.to_string(), Some(opts));
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(engine_error)?;
        out.extend_from_slice(&chunk.into_bytes());
        if out.len() > 2 * OUTPUT_CAP {
            out.drain(..out.len() - OUTPUT_CAP);
        }
    }
    if out.len() > OUTPUT_CAP {
        out.drain(..out.len() - OUTPUT_CAP);
    }
    Ok(out)
}

/// The engine's message without bollard's wrapping, as a command's result
/// tells the operator. An engine that cannot be reached (stopped,
/// restarting) says so with its cause, where bollard says "Error in the
/// hyper legacy client: client error (Connect)".
pub(crate) fn engine_error(e: bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        E::HyperLegacyError { err } if err.is_connect() => {
            let mut causes = Vec::new();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                causes.push(cause.to_string());
                source = cause.source();
            }
            causes.dedup();
            if causes.is_empty() {
                "the Docker engine is not reachable".to_owned()
            } else {
                format!("the Docker engine is not reachable: {}", causes.join(": "))
            }
        }
        E::SocketNotFoundError(path) => format!("the Docker engine is not reachable: no socket at {path}"),
        E::RequestTimeoutError => "the Docker engine did not answer in time".to_owned(),
        other => other.to_string(),
    }
}

/// Whether an engine event may change what the agent reports. Container
/// actions that touch nothing it reads do not: `exec_create`, `exec_start`
/// and `exec_die` above all, which every health check probe makes (five
/// containers probed every 30 s made the agent re-read the whole engine,
/// about 20 ms of CPU, every 6 s; at 60 s intervals, at every snapshot). A
/// probe that changes a container's health comes with its own
/// `health_status` event. Unknown or unnamed events count as changes.
pub fn changes_state(event: &bollard::models::EventMessage) -> bool {
    use bollard::models::EventMessageTypeEnum;
    const INERT: [&str; 6] = ["attach", "detach", "resize", "top", "archive-path", "export"];
    let Some(action) = event.action.as_deref() else { return true };
    let inert = action.starts_with("exec_") || INERT.contains(&action);
    !(event.typ == Some(EventMessageTypeEnum::CONTAINER) && inert)
}

/// Follows the engine's event stream and sets `changed` on every event
/// that may change the state ([`changes_state`]), so the next snapshot
/// re-reads the engine only when something happened. When the stream
/// breaks (engine restart), it sets `changed` too and reconnects after a
/// pause. Runs until the task is dropped.
pub async fn follow_events(docker: Docker, changed: Arc<AtomicBool>) {
    loop {
        let mut events = docker.events(None::<bollard::query_parameters::EventsOptions>);
        while let Some(event) = events.next().await {
            match event {
                Ok(e) if !changes_state(&e) => {}
                Ok(_) => changed.store(true, Ordering::Release),
                Err(e) => {
                    tracing::debug!("docker event stream: {e}");
                    break;
                }
            }
        }
        changed.store(true, Ordering::Release);
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

/// The local engine, as the agent's runtime sees it.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    opts: CanonicalOptions,
    /// The job scheduler, which keeps scheduled jobs (without it, only
    /// run-once jobs run).
    jobs: Option<jobs::Jobs>,
    /// Where stacks' files go and how they are deployed.
    stacks: compose::Stacks,
    /// Images fetched from the server as transfers (without it,
    /// `image.fetch` fails: no server to fetch from).
    fetcher: Option<Arc<fetch::Fetcher>>,
    /// The data directory, where an update's helper leaves its note.
    data_path: Option<std::path::PathBuf>,
}

impl DockerEngine {
    /// Wraps a connected engine (stacks with [`compose::Stacks::default`]).
    pub fn new(docker: Docker) -> Self {
        Self {
            docker,
            opts: CanonicalOptions::default(),
            jobs: None,
            stacks: compose::Stacks::default(),
            fetcher: None,
            data_path: None,
        }
    }

    /// With a fetcher for `image.fetch` and `agent.update`, whose notes go
    /// in `data_path`.
    pub fn with_fetcher(self, fetcher: Arc<fetch::Fetcher>, data_path: &std::path::Path) -> Self {
        Self { fetcher: Some(fetcher), data_path: Some(data_path.to_owned()), ..self }
    }

    /// With these stack settings.
    pub fn with_stacks(self, stacks: compose::Stacks) -> Self {
        Self { stacks, ..self }
    }

    /// With a job scheduler, which keeps the scheduled jobs it is sent.
    pub fn with_jobs(self, jobs: jobs::Jobs) -> Self {
        Self { jobs: Some(jobs), ..self }
    }

    /// The bollard handle.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }
}

impl DockerEngine {
    /// An `agent.update`: its image fetched (or here already), then the
    /// helper started (see [`update`]); not again once the helper put the
    /// old agent back (its note names the update).
    async fn update(
        &self,
        fetcher: &fetch::Fetcher,
        data: &std::path::Path,
        u: &crate::wire::poll::AgentUpdate,
    ) -> Result<Vec<u8>, String> {
        let command = u.update;
        if let Some(r) = update::rollback_of(data, command) {
            return Err(format!("rolled back: {}; this agent runs its earlier image again", r.reason));
        }
        let mut out = fetcher.fetch(&self.docker, &u.image).await?;
        out.push(b'\n');
        out.extend(update::start(&self.docker, command, u).await?);
        Ok(out)
    }
}

impl run::Engine for DockerEngine {
    async fn state(&self) -> Result<State, String> {
        let raw = collect(&self.docker).await.map_err(|e| e.to_string())?;
        raw.canonical(&self.opts).map_err(|e| format!("engine state: {e}"))
    }

    async fn run(&self, action: &Action) -> Result<Vec<u8>, String> {
        if let (Some(j), Action::Job(_) | Action::JobRemove(_)) = (&self.jobs, action) {
            return jobs::execute(&self.docker, Some(j), &self.stacks.registries, action).await;
        }
        if let (Some(fetcher), Action::ImageFetch(f)) = (&self.fetcher, action) {
            return fetcher.fetch(&self.docker, f).await;
        }
        if let (Some(fetcher), Some(data), Action::AgentUpdate(u)) = (&self.fetcher, &self.data_path, action) {
            return self.update(fetcher, data, u).await;
        }
        execute(&self.docker, &self.stacks, action).await
    }

    async fn settle(&self, action: &Action, started_at: i64) -> journal::Settled {
        settle(&self.docker, action, started_at).await
    }

    fn registries(&self, auths: &[crate::wire::poll::RegistryAuth]) {
        self.stacks.registries.remember(auths);
    }
}

/// How long [`settle`] watches a command that has not taken effect yet: the
/// engine carries on with a request whose client died (a restart's stop
/// waits for the container's grace period, then it starts again), so "not
/// yet" is only "not" once this has passed.
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the engine says became of a command a restart interrupted (see
/// [`journal`]): a container's state, watched for up to [`SETTLE_WAIT`]
/// while the container is there and the command has not taken effect; or
/// whether an image, a volume or a network is there. Stacks and jobs cannot
/// be told: unknown.
pub async fn settle(docker: &Docker, action: &Action, started_at: i64) -> journal::Settled {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let settled = settle_now(docker, action, started_at).await;
        let watch = matches!(action, Action::Container(..))
            && matches!(&settled, journal::Settled::NotDone(why) if why != journal::GONE);
        if !watch || tokio::time::Instant::now() >= deadline {
            return settled;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn settle_now(docker: &Docker, action: &Action, started_at: i64) -> journal::Settled {
    use journal::Settled;
    let gone = |r: &bollard::errors::Error| {
        matches!(r, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
    };
    let presence = |found: Result<(), bollard::errors::Error>, want: bool, what: &str| match found {
        Ok(()) if want => Settled::Done,
        Ok(()) => Settled::NotDone(format!("the {what} is still there")),
        Err(e) if gone(&e) && !want => Settled::Done,
        Err(e) if gone(&e) => Settled::NotDone(format!("the {what} is not there")),
        Err(e) => {
            tracing::warn!("cannot ask the engine: {e}");
            Settled::Unknown
        }
    };
    match action {
        Action::Container(op, id) => match docker.inspect_container(&id.to_string(), None).await {
            Ok(c) => {
                let st = c.state.unwrap_or_default();
                let running = st.running.unwrap_or(false);
                let paused = st.paused.unwrap_or(false);
                let since = canonical::seconds(st.started_at.as_deref());
                journal::settle_container(*op, Some((running, paused, since)), started_at)
            }
            Err(e) if gone(&e) => journal::settle_container(*op, None, started_at),
            Err(e) => {
                tracing::warn!("cannot ask the engine: {e}");
                Settled::Unknown
            }
        },
        Action::ImagePull(r) => presence(docker.inspect_image(r).await.map(drop), true, "image"),
        Action::ImageFetch(f) => presence(docker.inspect_image(&f.image_id).await.map(drop), true, "image"),
        // Run again after a restart (see `journal::recover`), never settled.
        Action::AgentUpdate(_) => Settled::Unknown,
        Action::ImageRemove(r) => presence(docker.inspect_image(r).await.map(drop), false, "image"),
        Action::VolumeRemove(v) => presence(docker.inspect_volume(v).await.map(drop), false, "volume"),
        Action::NetworkRemove(n) => presence(
            docker
                .inspect_network(&n.to_string(), None::<bollard::query_parameters::InspectNetworkOptions>)
                .await
                .map(drop),
            false,
            "network",
        ),
        Action::ContainerLogs(..)
        | Action::StackDeploy(_)
        | Action::StackRemove(_)
        | Action::Job(_)
        | Action::JobRemove(_) => Settled::Unknown,
    }
}

/// Why `tern agent` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// The engine.
    #[error("{0}")]
    Collect(#[from] CollectError),
    /// TLS or URL setup.
    #[error("{0}")]
    Client(#[from] client::ClientError),
    /// The loop.
    #[error("{0}")]
    Run(#[from] run::RunError),
}

/// Runs the agent for `config` until `shutdown` completes: the engine named
/// by DOCKER_HOST (or the default socket), the server named by the join
/// token, state in DATA_PATH.
///
/// # Errors
/// When the data directory, the engine connection or TLS cannot be set up
/// at start, or the data directory fails later.
pub async fn start(
    mut config: config::AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let store = store::Store::open(&config.data_path)?;
    let edge_id = store.edge_id(config.edge_id.as_deref())?;
    let trust = if config.insecure_poll {
        tracing::warn!(
            "EDGE_INSECURE_POLL=1: the server's certificate is NOT checked. Anyone on the path can read this \
             agent's traffic (polls are still authenticated both ways, so they cannot forge commands)."
        );
        crate::tls::Trust::Insecure
    } else {
        crate::tls::Trust::Pinned(config.token.cert_sha256)
    };
    let tls = crate::tls::TlsOptions { post_quantum: config.tls_pq };
    if tls.post_quantum {
        tracing::info!(
            "EDGE_TLS_PQ=1: offering the X25519MLKEM768 post-quantum key exchange (about 2.3 KB a connection)"
        );
    }
    let max_reply = crate::wire::codec::Limits::default().max_encoded + 64;
    let mut transport = client::Client::with_tls(&config.token.url, trust, tls, max_reply)?;
    if let Some(p) = &config.proxy {
        tracing::info!(proxy = %p, "connecting to the server through the proxy {p} ({})", p.from);
    }
    transport.set_proxy(config.proxy.clone());
    let docker = connect().await?;
    if let Some(fleet) = config.fleet.clone() {
        // A device with a fleet join token: admitted first (over plain
        // requests; the session is an environment's).
        let description = enrol::describe(&docker).await;
        let secret = config.agent_secret.as_ref().map(|s| s.0.as_str());
        let mut enrolment = enrol::Enrolment::open(&store, &fleet, secret, &edge_id, description)?;
        let mut health = health::Recorder::start(store.dir(), crate::clock::unix_now());
        match enrol::until_admitted(&mut enrolment, &mut transport, &mut health, shutdown.as_mut()).await? {
            Some(token) => {
                config.token = token;
                // A session is picked in the TLS handshake: the enrolment's
                // connection cannot become one (the next resumes its TLS).
                if config.session {
                    transport.disconnect();
                }
            }
            None => {
                transport.close().await;
                return Ok(());
            }
        }
    }
    transport.offer_session(config.session);
    let key = config.token.secret.with_agent_secret(config.agent_secret.as_ref().map(|s| s.0.as_str()));
    let fetcher = fetch::Fetcher::new(
        &config.token.url,
        trust,
        tls,
        config.token.environment,
        &key,
        &config.token.key_id(),
        &config.data_path,
    )
    .map_err(|source| store::StoreError::Io { path: config.data_path.join("transfers"), source })?
    .with_proxy(config.proxy.clone());
    let changed = Arc::new(AtomicBool::new(true));
    let events = tokio::spawn(follow_events(docker.clone(), changed.clone()));
    let mut settings = run::Settings::new(config.token.environment, key, edge_id.clone());
    settings.request_timeout = config.poll_timeout;
    settings.session = config.session;
    settings.keepalive_start = config.keepalive_start;
    settings.key_id = config.token.key_id();
    tracing::info!(
        edge_id = %edge_id,
        environment = config.token.environment,
        server = %config.token.url,
        data = %config.data_path.display(),
        version = env!("CARGO_PKG_VERSION"),
        // A note a build can carry (TERN_BUILD_NOTE at build time): what
        // makes a local build told apart; tests/image_bytes.rs builds the
        // agent twice, once with a note, as an update with a one-line change.
        build = option_env!("TERN_BUILD_NOTE").unwrap_or(""),
        "agent starting"
    );
    let (job_runs, job_runs_rx) = tokio::sync::mpsc::unbounded_channel();
    // Private registries' credentials, in memory only: the stacks, the
    // image pulls and the jobs (run once or scheduled) share them.
    let registries = Registries::default();
    let job_config = jobs::JobConfig { registries: registries.clone(), ..config.jobs.clone() };
    let jobs = jobs::Jobs::open(&config.data_path, docker.clone(), job_config, &edge_id, job_runs)?;
    let scheduler = tokio::spawn(jobs.clone().run());
    // Read once: what the host passed through when the agent started.
    let host_vars = config.host_vars.iter().filter_map(|k| Some((k.clone(), std::env::var(k).ok()?))).collect();
    let stacks = compose::Stacks { dir: config.data_path.join("stacks"), mode: config.compose, registries, host_vars };
    let engine = DockerEngine::new(docker)
        .with_jobs(jobs)
        .with_stacks(stacks)
        .with_fetcher(Arc::new(fetcher), &config.data_path);
    let mut agent = run::Agent::new(settings, engine, transport, store, changed)?;
    agent.set_job_runs(job_runs_rx);
    let r = agent.run(shutdown).await;
    // Close the kept-alive connection cleanly (both sides' close_notify),
    // not by exiting under it.
    agent.transport_mut().close().await;
    events.abort();
    scheduler.abort();
    tracing::info!(polls = agent.stats.polls, failures = agent.stats.failures, "agent stopped");
    Ok(r?)
}

#[cfg(test)]
mod tests {
    use bollard::models::{EventMessage, EventMessageTypeEnum};

    use super::changes_state;

    fn event(typ: EventMessageTypeEnum, action: Option<&str>) -> EventMessage {
        EventMessage { typ: Some(typ), action: action.map(str::to_owned), ..EventMessage::default() }
    }

    #[tokio::test]
    async fn an_engine_that_cannot_be_reached_is_named_in_the_error() {
        // A socket path that exists but where nothing listens, and one that
        // does not exist: what a stopped or restarting engine looks like.
        let dir = std::env::temp_dir().join(format!("tern-engine-error-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dead = dir.join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let docker =
            bollard::Docker::connect_with_unix(dead.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION).unwrap();
        let e = super::engine_error(docker.ping().await.unwrap_err());
        assert!(e.starts_with("the Docker engine is not reachable: "), "{e}");
        assert!(e.contains("refused") && !e.contains("hyper"), "{e}");
        let missing = dir.join("missing.sock");
        let e = bollard::Docker::connect_with_unix(missing.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            super::engine_error(e),
            format!("the Docker engine is not reachable: no socket at {}", missing.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_inert_container_actions_are_not_changes() {
        use EventMessageTypeEnum::{CONTAINER, IMAGE, NETWORK, VOLUME};
        for inert in
            ["exec_create: /bin/sh -c curl -f localhost", "exec_start: /bin/true", "exec_die", "attach", "resize"]
        {
            assert!(!changes_state(&event(CONTAINER, Some(inert))), "{inert}");
        }
        for change in ["start", "die", "stop", "rename", "update", "health_status: unhealthy", "destroy", "pause"] {
            assert!(changes_state(&event(CONTAINER, Some(change))), "{change}");
        }
        assert!(changes_state(&event(NETWORK, Some("connect"))));
        assert!(changes_state(&event(IMAGE, Some("tag"))));
        assert!(changes_state(&event(VOLUME, Some("create"))));
        assert!(changes_state(&event(CONTAINER, None)), "an unnamed event counts");
        assert!(changes_state(&EventMessage { action: Some("exec_create".into()), ..EventMessage::default() }));
    }
}
