//! The baseline: what Portainer's async Edge agent sends for the same host,
//! on the same link, at the same intervals, over the same TLS.
//!
//! The client follows `edge/client/portainer_edge_async_client.go` and
//! `edge/poll_async.go` of portainer/agent: ping, snapshot and command
//! timers coalesced into one `POST /api/endpoints/edge/async`; its JSON
//! body (`AsyncRequest`) carries on a snapshot poll the whole
//! `DockerSnapshot` the first time and then an RFC 6902 patch from the last
//! one with the last one's FNV-32a hash, gzip'd at level 9 with
//! `Content-Encoding: gzip`; headers `Portainer-Agent`,
//! `Portainer-Agent-Platform`, `X-PortainerAgent-EdgeID`,
//! `X-PortainerAgent-TimeZone`, `X-PortainerAgent-Update-ID`, and what Go's
//! `net/http` adds (`Host`, `User-Agent`, `Content-Length`,
//! `Accept-Encoding`). The snapshot is built from the engine's own JSON
//! (containers with their inspect `Env`, images, volumes, networks, info,
//! version: [`crate::baseline::snapshot`]), sorted as the agent's
//! `optimizeDockerSnapshot` sorts it, read afresh at every snapshot poll as
//! the agent does.
//!
//! The sink answers as Portainer's async endpoint does (`AsyncResponse`
//! JSON from Go's `net/http`: `Content-Type`, `Date`, `Content-Length`).
//!
//! TLS is tern's own on both ends (rustls, TLS 1.3, X25519, the same ECDSA
//! P-256 certificate type, session resumption), so the comparison is of
//! what each sends, not of TLS stacks. Both ends close an idle connection
//! the way Go does: with a `close_notify` alert.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::fixture::RawJson;
use tern::tls::{ServerIdentity, TlsOptions, Trust, client_config_with};

/// The agent version the headers name (the fixture host runs its agent).
pub const AGENT_VERSION: &str = "2.19.4";

/// The async poll's path.
pub const PATH: &str = "/api/endpoints/edge/async";

/// One GET on the engine's socket (HTTP/1.0: the engine answers with the
/// whole body and closes).
async fn engine_get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).await.with_context(|| format!("{}", socket.display()))?;
    s.write_all(format!("GET /v1.41{path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let status = String::from_utf8_lossy(&buf[..at.min(16)]).into_owned();
    if !status.contains(" 200") {
        bail!("engine {path}: {status}");
    }
    Ok(serde_json::from_slice(&buf[at + 4..])?)
}

/// The engine's responses a Portainer snapshot is made of.
///
/// # Errors
/// When the engine cannot be read.
pub async fn read_engine(socket: &Path) -> anyhow::Result<RawJson> {
    let containers_list = engine_get(socket, "/containers/json?all=1").await?;
    let mut inspects = Vec::new();
    for c in containers_list.as_array().into_iter().flatten() {
        let Some(id) = c.get("Id").and_then(Value::as_str) else { continue };
        // Removed between the list and the inspect: skipped, as the agent does.
        if let Ok(i) = engine_get(socket, &format!("/containers/{id}/json")).await {
            inspects.push(i);
        }
    }
    Ok(RawJson {
        inspects,
        containers_list,
        images: engine_get(socket, "/images/json").await?,
        volumes: engine_get(socket, "/volumes").await?,
        networks: engine_get(socket, "/networks").await?,
        info: engine_get(socket, "/info").await?,
        version: engine_get(socket, "/version").await?,
    })
}

fn by_name(list: &mut Value) {
    if let Some(a) = list.as_array_mut() {
        a.sort_by(|x, y| x["Name"].as_str().unwrap_or("").cmp(y["Name"].as_str().unwrap_or("")));
    }
}

/// Portainer's `DockerSnapshot` of the engine's responses.
pub fn docker_snapshot(json: &RawJson, time: i64) -> Value {
    let mut raw = crate::baseline::snapshot(json);
    // optimizeDockerSnapshot: networks, volumes and each container's mounts by name.
    by_name(&mut raw["Networks"]);
    by_name(&mut raw["Volumes"]["Volumes"]);
    if let Some(cs) = raw["Containers"].as_array_mut() {
        for c in cs {
            by_name(&mut c["Mounts"]);
        }
    }
    let containers = raw["Containers"].as_array().cloned().unwrap_or_default();
    let state = |s: &str| containers.iter().filter(|c| c["State"] == s).count();
    let status_has =
        |s: &str| containers.iter().filter(|c| c["Status"].as_str().is_some_and(|t| t.contains(s))).count();
    let stacks: std::collections::BTreeSet<&str> =
        containers.iter().filter_map(|c| c["Labels"]["com.docker.compose.project"].as_str()).collect();
    json!({
        "Time": time,
        "DockerVersion": json.version["Version"],
        "Swarm": false,
        "TotalCPU": json.info["NCPU"],
        "TotalMemory": json.info["MemTotal"],
        "RunningContainerCount": state("running"),
        "StoppedContainerCount": state("exited"),
        "HealthyContainerCount": status_has("(healthy)"),
        "UnhealthyContainerCount": status_has("(unhealthy)"),
        "VolumeCount": raw["Volumes"]["Volumes"].as_array().map_or(0, Vec::len),
        "ImageCount": json.images.as_array().map_or(0, Vec::len),
        "ServiceCount": 0,
        "StackCount": stacks.len(),
        "DockerSnapshotRaw": raw,
        "NodeCount": 1,
        "GpuUseAll": false,
        "GpuUseList": null,
    })
}

/// Go's `units.HumanDuration` (docker/go-units), which the engine's status
/// texts use.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (minutes, hours) = (secs / 60, (secs as f64 / 3600.0).round() as i64);
    match () {
        () if secs < 1 => "Less than a second".into(),
        () if secs == 1 => "1 second".into(),
        () if secs < 60 => format!("{secs} seconds"),
        () if minutes == 1 => "About a minute".into(),
        () if minutes < 60 => format!("{minutes} minutes"),
        () if hours == 1 => "About an hour".into(),
        () if hours < 48 => format!("{hours} hours"),
        () if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        () if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        () if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        () => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Rewrites each listed container's status text as the engine would write
/// it had the container started (running, paused) or stopped (exited)
/// `age` earlier than its inspect says: "Up 3 seconds (healthy)" becomes
/// "Up 2 hours (healthy)", "Exited (0) 5 seconds ago" "Exited (0) 2 hours
/// ago". Other states ("Created", "Restarting") are left as they are.
pub fn age_statuses(json: &mut RawJson, age: Duration, now: i64) {
    let parse = |t: &Value| {
        t.as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
            .map(time::OffsetDateTime::unix_timestamp)
    };
    let age = age.as_secs() as i64;
    let times: std::collections::HashMap<String, (Option<i64>, Option<i64>)> = json
        .inspects
        .iter()
        .filter_map(|i| {
            let id = i["Id"].as_str()?.to_owned();
            Some((id, (parse(&i["State"]["StartedAt"]), parse(&i["State"]["FinishedAt"]))))
        })
        .collect();
    for c in json.containers_list.as_array_mut().into_iter().flatten() {
        let Some((started, finished)) = c["Id"].as_str().and_then(|id| times.get(id)).copied() else { continue };
        let Some(status) = c["Status"].as_str().map(str::to_owned) else { continue };
        let aged = if let (Some(rest), Some(started)) = (status.strip_prefix("Up "), started) {
            let suffix = rest.find(" (").map_or("", |i| &rest[i..]);
            format!("Up {}{suffix}", human_duration(now - started + age))
        } else if let (true, Some(finished), Some(close)) =
            (status.starts_with("Exited ("), finished, status.find(") "))
        {
            format!("{} {} ago", &status[..=close], human_duration(now - finished + age))
        } else {
            continue;
        };
        c["Status"] = Value::String(aged);
    }
}

/// Orders the images as the engine lists images whose creation times all
/// differ (newest first), ties broken by id. The fixture host builds many
/// of its images within the same second, and the engine's order among
/// images of the same `Created` changes from one call to the next (it
/// sorts by that time alone, not stably): every poll of the baseline then
/// carried a patch moving images around, some 2 KB of its 2.6 KB body on
/// the fixture host. A field host's images were built or pulled at
/// different times, so this is the order its engine gives every time.
pub fn field_image_order(json: &mut RawJson) {
    if let Some(images) = json.images.as_array_mut() {
        images.sort_by(|a, b| {
            let created = |v: &Value| v["Created"].as_i64().unwrap_or(0);
            created(b).cmp(&created(a)).then_with(|| a["Id"].as_str().cmp(&b["Id"].as_str()))
        });
    }
}

/// FNV-1a, 32 bits (Go's `hash/fnv` New32a), of the snapshot's JSON.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The request a poll sends: the HTTP/1.1 head and body, as Go writes them.
pub fn request(host: &str, edge_id: &str, endpoint: u64, snapshot: Option<Value>) -> Vec<u8> {
    let gzip = snapshot.is_some();
    let mut body = json!({
        "commandTimestamp": "2000-01-01T00:00:00Z",
        "endpointId": endpoint,
        "metaFields": null,
    });
    if let Some(s) = snapshot {
        body["snapshot"] = s;
    }
    let mut bytes = serde_json::to_vec(&body).expect("a Value serializes");
    if gzip {
        bytes = crate::baseline::gzip9(&bytes);
    }
    let mut head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n",
        bytes.len()
    );
    if gzip {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    head.push_str(&format!(
        "Portainer-Agent: {AGENT_VERSION}\r\nPortainer-Agent-Platform: 1\r\nX-Portaineragent-Edgeid: {edge_id}\r\n\
         X-Portaineragent-Timezone: Local\r\nX-Portaineragent-Update-Id: 0\r\nAccept-Encoding: gzip\r\n\r\n"
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(&bytes);
    out
}

/// The sink's answer, as Portainer's Go server writes it.
pub fn response(endpoint: u64, interval: Duration) -> Vec<u8> {
    let ns = interval.as_nanos();
    let body = format!(
        "{{\"pingInterval\":{ns},\"snapshotInterval\":{ns},\"commandInterval\":{ns},\"endpointID\":{endpoint},\
         \"commands\":null,\"needFullSnapshot\":false}}\n"
    );
    let format = time::format_description::parse_borrowed::<2>(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
    )
    .expect("a valid format");
    let date = time::OffsetDateTime::now_utc().format(&format).unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\nDate: {date}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one HTTP/1.1 message (head and `Content-Length` body); `None` at
/// a clean end of stream before any byte.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<Option<(usize, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed mid-message");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head_end, buf[head_end..head_end + len].to_vec())))
}

/// One poll the client made.
#[derive(Debug, Clone, Copy)]
pub struct PollRecord {
    /// When it started reading the engine.
    pub read_at: Instant,
    /// When the reply was in.
    pub done_at: Instant,
    /// Body bytes sent.
    pub body_up: usize,
    /// A whole snapshot, not a patch.
    pub full: bool,
}

/// What the client did so far.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Polls answered.
    pub polls: u64,
    /// Every answered poll.
    pub log: Vec<PollRecord>,
    /// Connections opened.
    pub connections: u64,
    /// Failed polls.
    pub failures: u64,
}

enum Control {
    /// Stop as the process would (sockets closed by the kernel), then start
    /// afresh: no session cache, no last snapshot.
    Restart,
    /// Read the containers as if started (or stopped) this much earlier.
    Age(Duration),
    Stop,
}

/// What the client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The sink's address on the link.
    pub ip: String,
    /// The sink's port.
    pub port: u16,
    /// The sink's certificate fingerprint.
    pub fingerprint: [u8; 32],
    /// The coalesced poll interval.
    pub interval: Duration,
    /// The engine.
    pub docker_socket: PathBuf,
    /// The network namespace its sockets are made in.
    pub netns: PathBuf,
    /// The endpoint id it reports.
    pub endpoint: u64,
}

/// The running baseline client (its own thread, inside its own network
/// namespace behind the agent's; see `setup::Run::namespaces_as_deployed`).
pub struct Client {
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What it did.
    pub stats: Arc<Mutex<ClientStats>>,
}

impl Client {
    /// Starts polling now.
    ///
    /// # Errors
    /// When the thread cannot enter the namespace or start its runtime.
    pub fn start(config: ClientConfig) -> anyhow::Result<Self> {
        let (control, rx) = tokio::sync::mpsc::unbounded_channel();
        let stats: Arc<Mutex<ClientStats>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shared = stats.clone();
        let thread = std::thread::Builder::new().name("baseline-client".into()).spawn(move || {
            let setup = (|| -> anyhow::Result<tokio::runtime::Runtime> {
                super::setup::enter_netns(&config.netns).context("entering the baseline's namespace")?;
                Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
            })();
            let rt = match setup {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(client_loop(config, rx, shared));
        })?;
        ready_rx.recv().context("the baseline client's thread")??;
        Ok(Self { control, thread: Some(thread), stats })
    }

    /// Restarts it, as a restarted agent process.
    pub fn restart(&self) {
        let _ = self.control.send(Control::Restart);
    }

    /// From the next poll on, reads the engine as a field host's would
    /// read: its containers as if they had been started (or had stopped)
    /// `age` earlier, their status texts ("Up 2 hours", "Exited (0) 3
    /// hours ago") the engine's for containers that old (see
    /// [`age_statuses`]), and its images in one order (see
    /// [`field_image_order`]). Field containers are hours or days old, and
    /// their texts then change once an hour or a day, not at every poll as
    /// a container started seconds ago does. `Duration::ZERO`: the engine
    /// as it answers.
    pub fn set_age(&self, age: Duration) {
        let _ = self.control.send(Control::Age(age));
    }

    /// Polls answered so far.
    pub fn polls(&self) -> u64 {
        self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).polls
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn client_loop(
    config: ClientConfig,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
    stats: Arc<Mutex<ClientStats>>,
) {
    let host = format!("{}:{}", config.ip, config.port);
    let edge_id = "5b2a9c4e-1f3d-4e8a-9b7c-2d6f0a1e3c58";
    let connector = || -> tokio_rustls::TlsConnector {
        let tls = client_config_with(Trust::Pinned(config.fingerprint), TlsOptions::default())
            .expect("the client's TLS configuration");
        tokio_rustls::TlsConnector::from(Arc::new(tls))
    };
    let mut tls = connector();
    let mut conn: Option<Tls> = None;
    let mut last: Option<Value> = None;
    // First contact at start, then a fixed-rate ticker (Go's time.Ticker
    // drops ticks while a poll runs).
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scratch = [0u8; 512];
    let mut age = Duration::ZERO;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Restart) => {
                    // The process ends: the kernel closes its sockets (no close_notify).
                    drop(conn.take());
                    last = None;
                    tls = connector();
                    ticker.reset_immediately();
                }
                Some(Control::Age(a)) => age = a,
                Some(Control::Stop) | None => return,
            },
            // The server closed the kept-alive connection: Go's read loop
            // sees it and closes its side (close_notify, then FIN).
            r = async {
                match conn.as_mut() {
                    Some(c) => c.read(&mut scratch).await,
                    None => std::future::pending().await,
                }
            } => {
                if matches!(r, Ok(0) | Err(_)) && let Some(mut c) = conn.take() {
                    let _ = c.shutdown().await;
                }
            }
            _ = ticker.tick() => {
                let read_at = Instant::now();
                match poll(&config, (&host, edge_id), &tls, &mut conn, &mut last, &stats, age).await {
                    Ok((body_up, full)) => {
                        let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        s.polls += 1;
                        s.log.push(PollRecord { read_at, done_at: Instant::now(), body_up, full });
                    }
                    Err(e) => {
                        tracing::debug!("baseline poll: {e:#}");
                        conn = None;
                        stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failures += 1;
                    }
                }
            }
        }
    }
}

/// One poll; `who` is the Host header and the EdgeID.
async fn poll(
    config: &ClientConfig,
    (host, edge_id): (&str, &str),
    tls: &tokio_rustls::TlsConnector,
    conn: &mut Option<Tls>,
    last: &mut Option<Value>,
    stats: &Mutex<ClientStats>,
    age: Duration,
) -> anyhow::Result<(usize, bool)> {
    let mut json = read_engine(&config.docker_socket).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if !age.is_zero() {
        age_statuses(&mut json, age, now);
        field_image_order(&mut json);
    }
    let current = docker_snapshot(&json, now);
    let (snapshot, full) = match last.as_ref() {
        None => (json!({ "docker": current }), true),
        Some(prev) => {
            let patch = serde_json::to_value(json_patch::diff(prev, &current))?;
            let hash = fnv32a(&serde_json::to_vec(prev)?);
            (json!({ "dockerPatch": patch, "dockerHash": hash }), false)
        }
    };
    let req = request(host, edge_id, config.endpoint, Some(snapshot));
    let body_up = req.len() - req.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
    if conn.is_none() {
        let tcp = TcpStream::connect((config.ip.as_str(), config.port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(config.ip.clone())?;
        *conn = Some(tls.connect(name, tcp).await?);
        stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).connections += 1;
    }
    let c = conn.as_mut().expect("connected above");
    c.write_all(&req).await?;
    c.flush().await?;
    match read_message(c).await? {
        Some(_) => {}
        None => bail!("the sink closed the connection"),
    }
    *last = Some(current);
    Ok((body_up, full))
}

/// The sink: Portainer's async endpoint, as far as bytes go.
pub struct Sink {
    /// Its port.
    pub port: u16,
    /// Its certificate's fingerprint.
    pub fingerprint: [u8; 32],
    ip: String,
    identity: ServerIdentity,
    idle: Arc<Mutex<Duration>>,
    interval: Duration,
    endpoint: u64,
    /// Polls answered.
    pub polls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Listens on `ip:0` with a certificate kept in `dir`.
    ///
    /// # Errors
    /// When the certificate or the socket cannot be made.
    pub async fn start(
        ip: &str,
        dir: &Path,
        interval: Duration,
        endpoint: u64,
        idle: Duration,
    ) -> anyhow::Result<Self> {
        let identity = ServerIdentity::load_or_create(dir, &[ip.to_owned()])?;
        let listener = TcpListener::bind((ip, 0)).await?;
        let port = listener.local_addr()?.port();
        let idle = Arc::new(Mutex::new(idle));
        let polls = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(
            listener,
            Arc::new(identity.server_config()?),
            idle.clone(),
            interval,
            endpoint,
            polls.clone(),
        ));
        Ok(Self {
            port,
            fingerprint: identity.fingerprint(),
            ip: ip.to_owned(),
            identity,
            idle,
            interval,
            endpoint,
            polls,
            task,
        })
    }

    /// Connections idle this long are closed from now on.
    pub fn set_idle(&self, idle: Duration) {
        *self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = idle;
    }

    /// Stops as a killed server would (connections dropped, session
    /// tickets' key lost) and listens again on the same port.
    ///
    /// # Errors
    /// When the port cannot be bound again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.task.abort();
        let _ = (&mut self.task).await;
        let listener = TcpListener::bind((self.ip.as_str(), self.port)).await?;
        let config = Arc::new(self.identity.server_config()?);
        self.task =
            tokio::spawn(serve(listener, config, self.idle.clone(), self.interval, self.endpoint, self.polls.clone()));
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    idle: Arc<Mutex<Duration>>,
    interval: Duration,
    endpoint: u64,
    polls: Arc<AtomicU64>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // Connections die with the accept loop (a restart drops them all).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let (acceptor, idle, polls) = (acceptor.clone(), idle.clone(), polls.clone());
        conns.spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            loop {
                let limit = *idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match tokio::time::timeout(limit, read_message(&mut tls)).await {
                    Ok(Ok(Some(_))) => {
                        polls.fetch_add(1, Ordering::Relaxed);
                        if tls.write_all(&response(endpoint, interval)).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                    // Idle too long: Go's server closes (close_notify, FIN).
                    Err(_) => {
                        let _ = tls.shutdown().await;
                        return;
                    }
                    Ok(Ok(None) | Err(_)) => {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_texts_age_as_the_engine_writes_them() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(7200 + 5), "2 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        let mut raw = RawJson {
            inspects: vec![
                json!({"Id": "a", "State": {"StartedAt": "2026-01-01T00:00:00.123456789Z", "FinishedAt": "0001-01-01T00:00:00Z"}}),
                json!({"Id": "b", "State": {"StartedAt": "2026-01-01T00:00:00Z", "FinishedAt": "2026-01-01T00:00:10Z"}}),
                json!({"Id": "c", "State": {"StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}}),
            ],
            containers_list: json!([
                {"Id": "a", "Status": "Up 5 seconds (healthy)"},
                {"Id": "b", "Status": "Exited (137) Less than a second ago"},
                {"Id": "c", "Status": "Created"},
            ]),
            images: json!([]),
            volumes: json!({}),
            networks: json!([]),
            info: json!({}),
            version: json!({}),
        };
        let t0 = 1_767_225_600; // 2026-01-01T00:00:00Z
        age_statuses(&mut raw, Duration::from_secs(2 * 3600), t0 + 5);
        let st: Vec<&str> =
            raw.containers_list.as_array().unwrap().iter().map(|c| c["Status"].as_str().unwrap()).collect();
        assert_eq!(st, ["Up 2 hours (healthy)", "Exited (137) 2 hours ago", "Created"]);
        raw.images = json!([{"Id": "b", "Created": 5}, {"Id": "c", "Created": 9}, {"Id": "a", "Created": 5}]);
        field_image_order(&mut raw);
        let ids: Vec<&str> = raw.images.as_array().unwrap().iter().map(|i| i["Id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }

    #[test]
    fn fnv32a_matches_go() {
        // hash/fnv New32a of "" and "a".
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn the_request_carries_portainers_headers_and_a_gzip_body() {
        let req = request("10.77.3.1:9443", "edge-1", 7, Some(json!({"docker": {"Time": 1}})));
        let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(req[..head_end].to_vec()).unwrap();
        for h in [
            "POST /api/endpoints/edge/async HTTP/1.1\r\n",
            "Host: 10.77.3.1:9443\r\n",
            "Content-Encoding: gzip\r\n",
            "Portainer-Agent: 2.19.4\r\n",
            "X-Portaineragent-Edgeid: edge-1\r\n",
        ] {
            assert!(head.contains(h), "{head}");
        }
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(len, req.len() - head_end);
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&req[head_end..]), &mut json).unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["endpointId"], 7);
        assert_eq!(v["snapshot"]["docker"]["Time"], 1);
    }

    #[test]
    fn the_response_is_what_go_writes() {
        let r = String::from_utf8(response(3, Duration::from_secs(60))).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        // "Date: Mon, 02 Jan 2006 15:04:05 GMT": 29 characters of date.
        let date = head.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap();
        assert_eq!(date.len(), 29, "{date}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["pingInterval"], 60_000_000_000u64);
        assert_eq!(v["commands"], Value::Null);
    }

    #[test]
    fn a_snapshot_sorts_as_the_agent_does_and_counts_its_containers() {
        let rec = crate::fixture::load(&crate::fixture::dir(), "host40").unwrap();
        let json = &rec.steps[0].json;
        let s = docker_snapshot(json, 1);
        let names: Vec<&str> = s["DockerSnapshotRaw"]["Networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(
            s["RunningContainerCount"].as_u64().unwrap() + s["StoppedContainerCount"].as_u64().unwrap(),
            json.containers_list.as_array().unwrap().iter().filter(|c| c["State"] != "created").count() as u64
        );
        assert_eq!(s["StackCount"], 6);
    }
}
