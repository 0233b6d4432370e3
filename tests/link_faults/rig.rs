//! The rig each link-fault scenario runs on: a network namespace for the
//! agent behind the emulated link (`tern_bench::wirebench::link`: rate, delay,
//! seeded loss, a down switch, a NAT), a Docker engine of its own inside
//! the namespace (so its events, its state and its restarts are the
//! scenario's alone), the real `tern server` on the host side of the link
//! and the real `tern agent` in the namespace, both this build's binary.
//!
//! Everything is named `tern-wb-<id>` (`tern_bench::wirebench::setup::Run`) and
//! removed when the rig drops, failed or not; a killed run is swept by the
//! next one.
//!
//! What a scenario shows, and this file measures:
//! * every command ran at most once: the engine's own event stream, read
//!   live (and again after an engine restart), counted per command on the
//!   command's container (`restart`, `stop` or `start`: each container gets
//!   one command, and each of these events is one execution);
//! * every command's result reached the server (`GET /api/commands/{id}`);
//! * the server's root digest equals the agent's: `tern agent dry-run`
//!   against the scenario's engine prints the root of the engine's state
//!   built as the agent builds it (the same `CanonicalOptions::default()`),
//!   and `GET /api/environments/{id}` the root the server holds;
//! * the bytes the link carried, and the time to converge.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tern::agent::client::Client;
use tern::tls::Trust;
use tern_bench::wirebench::link::{Class, FlowCount, Link, Shape};
use tern_bench::wirebench::setup::{self, Run, run_cmd};

/// The environment's ping, snapshot and command intervals, seconds.
pub const INTERVAL: u32 = 5;

/// A field link for the scenarios whose fault is elsewhere: 256 kbit/s and
/// 50 ms each way, no loss.
pub const FIELD: Shape =
    Shape { rate_bps: Some(256_000), delay: Duration::from_millis(50), loss: 0.0, queue_bytes: 32 * 1024 };

/// libfaketime, from Debian's `faketime` package.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How a scenario's rig is set up.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The scenario's name (in the summary line).
    pub name: &'static str,
    /// Agent to server.
    pub up: Shape,
    /// Server to agent.
    pub down: Shape,
    /// EDGE_POLL_TIMEOUT, seconds.
    pub poll_timeout: Option<u32>,
    /// A NAT in front of the agent from the start.
    pub nat: bool,
    /// DATA_PATH on a tmpfs of this many KiB.
    pub data_tmpfs_kib: Option<u32>,
    /// The agent runs under libfaketime (wall clock only), its offset in a
    /// file [`Rig::set_clock`] changes.
    pub faketime: bool,
    /// Seeds the link's loss.
    pub seed: u64,
    /// The agent holds a session (`EDGE_SESSION=on`) instead of polling.
    pub session: bool,
}

impl Spec {
    /// A scenario on the field link with everything else off.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            up: FIELD,
            down: FIELD,
            poll_timeout: None,
            nat: false,
            data_tmpfs_kib: None,
            faketime: false,
            seed: 12,
            session: false,
        }
    }

    /// The scenario's name with its mode: `flap` polls, `flap-session`
    /// holds a session.
    pub fn label(&self) -> String {
        if self.session { format!("{}-session", self.name) } else { self.name.to_owned() }
    }
}

/// One engine event of a container.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the follower got it.
    pub seen: Instant,
    /// The engine's time, ns.
    pub time_nano: i64,
    /// The container's name.
    pub name: String,
    /// `start`, `kill`, `die`, `stop`, `restart`, ...
    pub action: String,
}

/// The engine's container events, followed live; the follower reconnects
/// when the stream breaks (an engine restart), asking for what it missed.
struct Events {
    list: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    fn follow(socket: PathBuf) -> Self {
        let list: Arc<Mutex<Vec<Event>>> = Arc::default();
        let shared = list.clone();
        let task = tokio::spawn(async move {
            let mut since: Option<String> = None;
            loop {
                let Ok(docker) = bollard::Docker::connect_with_unix(
                    &socket.display().to_string(),
                    3600,
                    bollard::API_DEFAULT_VERSION,
                ) else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
                let opts = bollard::query_parameters::EventsOptions {
                    since: since.clone(),
                    until: None,
                    filters: Some(filters),
                };
                let mut stream = docker.events(Some(opts));
                while let Some(item) = stream.next().await {
                    let Ok(e) = item else { break };
                    let time_nano = e.time_nano.unwrap_or_default();
                    let actor = e.actor.unwrap_or_default();
                    let name = actor.attributes.unwrap_or_default().get("name").cloned().unwrap_or_default();
                    let action = e.action.unwrap_or_default();
                    let mut l = shared.lock().unwrap();
                    // After a reconnect, `since` repeats the last second's events.
                    if l.iter().any(|x| x.time_nano == time_nano && x.name == name && x.action == action) {
                        continue;
                    }
                    since = Some(format!("{}.{:09}", time_nano / 1_000_000_000, time_nano % 1_000_000_000));
                    l.push(Event { seen: Instant::now(), time_nano, name, action });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Self { list, task }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `tern server` on the host side of the link.
struct ServerProc {
    child: Child,
    port: u16,
    fingerprint: [u8; 32],
}

impl ServerProc {
    fn start(data: &Path, listen: &str, ip: &str, log: &Path) -> Self {
        let logfile = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["server", "--listen", listen, "--cert-name", ip, "--data"])
            .arg(data)
            .env_remove("AGENT_SECRET")
            .env_remove("TERN_DATA")
            .env_remove("TERN_LISTEN")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logfile)
            .spawn()
            .expect("starting tern server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut port, mut fingerprint) = (None, None);
        let mut line = String::new();
        while fingerprint.is_none() {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "tern server exited (see {})", log.display());
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            }
            if let Some(hex) = line.trim().strip_prefix("certificate sha256 ") {
                let bytes: Vec<u8> = hex.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
                fingerprint = <[u8; 32]>::try_from(bytes).ok();
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self { child, port: port.expect("a port"), fingerprint: fingerprint.unwrap() }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tern agent` in the namespace, under a supervisor that restarts it when
/// it exits, as the deployed container's `--restart always` does (after 2
/// s here), unless the scenario stopped it on purpose.
struct AgentProc {
    child: Arc<Mutex<Option<Child>>>,
    /// Exits the supervisor saw (status), in order.
    exits: Arc<Mutex<Vec<String>>>,
    /// The supervisor restarts the agent only while this is set.
    supervise: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    cmd: Arc<dyn Fn() -> Child + Send + Sync>,
}

impl AgentProc {
    fn start(cmd: Arc<dyn Fn() -> Child + Send + Sync>) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let child = Arc::new(Mutex::new(Some(cmd())));
        let exits: Arc<Mutex<Vec<String>>> = Arc::default();
        let supervise = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, e, s, st, f) = (child.clone(), exits.clone(), supervise.clone(), stop.clone(), cmd.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                let mut guard = c.lock().unwrap();
                let exited = match guard.as_mut() {
                    Some(ch) => ch.try_wait().ok().flatten(),
                    None => None,
                };
                if let Some(status) = exited {
                    e.lock().unwrap().push(status.to_string());
                    *guard = None;
                }
                if guard.is_none() && s.load(Ordering::Acquire) && !st.load(Ordering::Acquire) {
                    drop(guard);
                    std::thread::sleep(Duration::from_secs(2));
                    let mut guard = c.lock().unwrap();
                    if guard.is_none() && s.load(Ordering::Acquire) && !st.load(Ordering::Acquire) {
                        *guard = Some(f());
                    }
                }
            }
        });
        Self { child, exits, supervise, stop, cmd }
    }

    /// SIGKILL, and no restart until [`Self::restart`].
    fn kill9(&self) {
        self.supervise.store(false, std::sync::atomic::Ordering::Release);
        let mut g = self.child.lock().unwrap();
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again (if it is not running) and supervises it again.
    fn restart(&self) {
        let mut g = self.child.lock().unwrap();
        if g.is_none() {
            *g = Some((self.cmd)());
        }
        self.supervise.store(true, std::sync::atomic::Ordering::Release);
    }

    fn running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.supervise.store(false, std::sync::atomic::Ordering::Release);
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A queued command.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The server's id.
    pub id: u64,
    /// `container.restart`, ...
    pub action: String,
    /// The container's name.
    pub container: String,
    /// When it was queued.
    pub queued: Instant,
}

impl Cmd {
    /// The engine event each execution of it makes on its container.
    pub fn event(&self) -> &'static str {
        match self.action.as_str() {
            "container.restart" => "restart",
            "container.stop" => "stop",
            "container.start" => "start",
            other => panic!("no event counts {other}"),
        }
    }
}

/// A command as the server and the engine ended up with it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command.
    pub cmd: Cmd,
    /// Its status at the server.
    pub status: String,
    /// Its error at the server.
    pub error: String,
    /// Its `finished_at` as the agent reported it (unix seconds).
    pub finished_at: Option<i64>,
    /// Times the engine did it (its events).
    pub ran: usize,
}

impl Outcome {
    /// The agent said it does not know whether the command took effect.
    pub fn uncertain(&self) -> bool {
        let e = self.error.to_ascii_lowercase();
        e.contains("may or may not") || e.contains("uncertain")
    }

    /// A final status reached the server.
    pub fn reported(&self) -> bool {
        matches!(self.status.as_str(), "ok" | "failed" | "rejected")
    }
}

/// A scenario's figures.
#[derive(Debug, Clone)]
pub struct Summary {
    /// From the fault's end (the link back, the process back, ...) to the
    /// server having every result and the agent's root digest.
    pub converge: Duration,
    /// Bytes over the link from the moment the commands were queued to
    /// convergence.
    pub fault: FlowCount,
    /// Bytes over the link from the agent's start to convergence.
    pub total: FlowCount,
    /// The commands.
    pub outcomes: Vec<Outcome>,
}

/// A running scenario.
pub struct Rig {
    /// The scenario's spec.
    pub spec: Spec,
    /// Started when the rig was.
    pub t0: Instant,
    /// The link.
    pub link: Link,
    events: Events,
    agent: Option<AgentProc>,
    server: Option<ServerProc>,
    client: Client,
    token: String,
    /// The environment.
    pub env: u64,
    port: u16,
    /// The test containers: (name, id).
    pub containers: Vec<(String, String)>,
    /// The commands queued.
    pub cmds: Vec<Cmd>,
    /// Link counts when the commands were queued.
    queued_counts: FlowCount,
    /// The agent's log.
    pub agent_log: PathBuf,
    /// The server's log.
    pub server_log: PathBuf,
    /// Notes for the summary line.
    pub notes: Vec<String>,
    // Last: dropped after the processes above (engine, namespace, devices).
    /// Names, namespace, devices, engine.
    pub run: Run,
}

/// The container script: a shell as PID 1 that, on SIGTERM, takes 3 s to
/// exit (so a stop or a restart is a command that takes a while, long
/// enough to be interrupted).
const SLOW_STOPPER: &str = "trap '/bin/busybox sleep 3; exit 0' TERM; while :; do /bin/busybox sleep 1; done";

/// Whether the rig can run here. Under `CI=true` it must: a missing
/// privilege fails the test instead of skipping it.
pub fn runnable() -> bool {
    let mut missing = Vec::new();
    if !setup::privileged() {
        missing.push("root and /dev/net/tun (network namespace, TUN devices, its own dockerd)");
    }
    if !Path::new(LIBFAKETIME).exists() {
        missing.push("libfaketime (apt-get install faketime)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("the link-fault matrix needs {}", missing.join(" and "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}; CI must run it");
    eprintln!("skipping: {why}");
    false
}

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a static busybox (apt-get install busybox-static)")
}

impl Rig {
    /// Sets everything up, starts the agent, and waits until the server
    /// holds the engine's state (first contact; up to `first_contact`).
    pub async fn start(spec: Spec, first_contact: Duration) -> Self {
        setup::sweep();
        let t0 = Instant::now();
        let mut run = Run::create().expect("a run's names and namespace");
        let (host_dev, agent_dev) = run.link_devices().expect("the link's devices");
        // As the generated `docker run` makes the agent's namespace.
        let (key, value) = tern::server::domain::deploy::NO_TCP_TIMESTAMPS.split_once('=').unwrap();
        setup::netns_sysctl(&run.netns, key, value).unwrap();
        let link = Link::start(host_dev, agent_dev, spec.up, spec.down, spec.seed).unwrap();
        if spec.nat {
            // The NAT's external addresses, 10.77.<subnet>.64/26, are on the
            // agent's side of the link.
            run_cmd("ip", &["route", "add", &format!("10.77.{}.64/26", run.subnet), "dev", &run.host_dev]).unwrap();
            link.nat(run.agent_ip().parse().unwrap(), nat_addr(&run, 100), 40_000);
        }
        run.start_engine().expect("the scenario's own dockerd");
        // The image: a static busybox, imported (no registry).
        let root = run.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | docker -H {} import - tern-faults:1 >/dev/null",
                root.display(),
                run.docker_host()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "docker import");
        let events = Events::follow(run.docker_socket());
        // Four containers: three running slow stoppers, one created only.
        let mut containers = Vec::new();
        for (i, start) in [(1, true), (2, true), (3, true), (4, false)] {
            let name = format!("lf-{}-c{i}", spec.name);
            let verb = if start { "run" } else { "create" };
            let mut args = vec![verb];
            if start {
                args.push("-d");
            }
            args.extend([
                "--name",
                &name,
                "--network",
                "none",
                "tern-faults:1",
                "/bin/busybox",
                "sh",
                "-c",
                SLOW_STOPPER,
            ]);
            let id = run.docker(&args).expect("a test container").trim().to_owned();
            containers.push((name, id));
        }

        let host_ip = run.host_ip();
        let server_log = run.dir.join("server.log");
        let server = ServerProc::start(&run.dir.join("server"), &format!("{host_ip}:0"), &host_ip, &server_log);
        link.set_port(server.port, Class::Tern);
        let url = format!("https://{host_ip}:{}", server.port);
        let token =
            std::fs::read_to_string(tern::server::admin_token_path(&run.dir.join("server"))).unwrap().trim().to_owned();
        let client = Client::new(&url, Trust::Pinned(server.fingerprint), 16 << 20).unwrap();
        let port = server.port;
        let mut rig = Self {
            spec: spec.clone(),
            t0,
            link,
            events,
            agent: None,
            server: Some(server),
            client,
            token,
            env: 0,
            port,
            containers,
            cmds: Vec::new(),
            queued_counts: FlowCount::default(),
            agent_log: run.dir.join("agent.log"),
            server_log,
            notes: Vec::new(),
            run,
        };
        let i = INTERVAL;
        let created = rig
            .api_ok(
                "POST",
                "/api/environments",
                Some(json!({"name": spec.label(), "url": url, "intervals": {"ping": i, "snapshot": i, "command": i}})),
                201,
            )
            .await;
        rig.env = created["id"].as_u64().unwrap();
        let edge_key = created["edge_key"].as_str().unwrap().to_owned();

        let data = rig.run.dir.join("agent");
        std::fs::create_dir_all(&data).unwrap();
        if let Some(kib) = spec.data_tmpfs_kib {
            run_cmd(
                "mount",
                &["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tern-faults", &data.display().to_string()],
            )
            .expect("a tmpfs for DATA_PATH");
        }
        let clock = rig.run.dir.join("faketime");
        std::fs::write(&clock, "+0\n").unwrap();
        let mut vars = vec![
            ("EDGE_KEY".to_owned(), edge_key),
            ("DATA_PATH".to_owned(), data.display().to_string()),
            ("DOCKER_HOST".to_owned(), rig.run.docker_host()),
            ("EDGE_COMPOSE".to_owned(), "builtin".to_owned()),
            ("LOG_LEVEL".to_owned(), "info".to_owned()),
        ];
        if let Some(t) = spec.poll_timeout {
            vars.push(("EDGE_POLL_TIMEOUT".to_owned(), t.to_string()));
        }
        // In a session the keepalive is capped by the ping interval: 5 s.
        vars.push(("EDGE_SESSION".to_owned(), if spec.session { "on" } else { "off" }.to_owned()));
        if spec.faketime {
            vars.extend([
                ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
                ("FAKETIME_TIMESTAMP_FILE".to_owned(), clock.display().to_string()),
                // Re-read the offset every second; the monotonic clock is
                // left alone (it never jumps on a real host).
                ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
            ]);
        }
        let (netns, log) = (rig.run.netns.clone(), rig.agent_log.clone());
        let cmd: Arc<dyn Fn() -> Child + Send + Sync> = Arc::new(move || {
            let logfile = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(env!("CARGO_BIN_EXE_tern"))
                .arg("agent")
                // A clean environment: the agent refuses EDGE_*/AGENT_* it does not know.
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
                .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logfile)
                .spawn()
                .expect("starting tern agent")
        });
        rig.agent = Some(AgentProc::start(cmd));
        let took = rig.converge(first_contact, "first contact").await;
        rig.note(format!("first contact {:.1} s", took.as_secs_f64()));
        rig
    }

    /// Adds a note to the summary line.
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// Says what happens, with the scenario's clock.
    pub fn say(&self, msg: impl std::fmt::Display) {
        eprintln!("[{} {:>6.1} s] {msg}", self.spec.label(), self.t0.elapsed().as_secs_f64());
    }

    // ----- the API -----

    /// Any API call, retried while the server cannot be reached (it may be
    /// restarting); (status, JSON).
    pub async fn api(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
            let b = body.as_ref().map(|b| b.to_string().into_bytes());
            match self.client.api(m, path, &self.token, b).await {
                Ok((status, bytes)) => {
                    let json = if bytes.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                    };
                    return (status, json);
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "{method} {path}: {e}");
                    self.client.disconnect();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// A call that must answer `expect`.
    pub async fn api_ok(&mut self, method: &str, path: &str, body: Option<Value>, expect: u16) -> Value {
        let (status, v) = self.api(method, path, body).await;
        assert_eq!(status, expect, "{method} {path}: {v}");
        v
    }

    /// Polls the server has answered for the environment.
    pub async fn polls(&mut self) -> u64 {
        let v = self.api_ok("GET", &format!("/api/environments/{}/usage?days=1", self.env), None, 200).await;
        v["total"]["polls"].as_u64().unwrap_or(0)
    }

    /// Waits for the next poll the server answers (then the agent's next
    /// is an interval away).
    pub async fn after_a_poll(&mut self) {
        let n = self.polls().await;
        let deadline = Instant::now() + Duration::from_secs(u64::from(INTERVAL) * 6 + 30);
        while self.polls().await == n {
            assert!(Instant::now() < deadline, "{}: no poll for a long while", self.spec.label());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent's failed attempts to reach the server so far: failed
    /// polls, session steps that failed, and held polls found dead.
    pub fn failed_attempts(&self) -> usize {
        self.agent_log().lines().filter(|l| l.contains("; retrying in ") || l.contains("no keepalive within")).count()
    }

    /// The root digest the server holds.
    pub async fn server_root(&mut self) -> String {
        let v = self.api_ok("GET", &format!("/api/environments/{}", self.env), None, 200).await;
        v["root"].as_str().unwrap_or_default().to_owned()
    }

    /// The root digest of the engine's state as the agent builds it:
    /// `tern agent dry-run` against the scenario's engine.
    pub fn agent_root(&self) -> Option<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["agent", "dry-run"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DOCKER_HOST", self.run.docker_host())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["root"].as_str().map(str::to_owned)
    }

    // ----- commands -----

    /// Queues `action` on each container in turn (restart c1, restart c2,
    /// stop c3, start c4), right after a poll, so they reach the agent
    /// together in one reply and run one after the other.
    pub async fn queue_commands(&mut self) {
        self.after_a_poll().await;
        self.queue_now().await;
    }

    /// Queues the commands at once.
    pub async fn queue_now(&mut self) {
        self.queued_counts = self.link.counts(Class::Tern);
        let plan = ["container.restart", "container.restart", "container.stop", "container.start"];
        for (action, (name, id)) in plan.iter().zip(self.containers.clone()) {
            let body = json!({"action": action, "target": id});
            let v = self.api_ok("POST", &format!("/api/environments/{}/commands", self.env), Some(body), 201).await;
            self.cmds.push(Cmd {
                id: v["id"].as_u64().unwrap(),
                action: (*action).to_owned(),
                container: name,
                queued: Instant::now(),
            });
        }
        self.say(format!("queued {} commands", self.cmds.len()));
    }

    /// The events of container `name` so far.
    pub fn events_of(&self, name: &str) -> Vec<Event> {
        self.events.list.lock().unwrap().iter().filter(|e| e.name == name).cloned().collect()
    }

    /// Waits until container `c<n>` has had event `action` since the
    /// commands were queued (the command on it is running).
    pub async fn wait_event(&self, n: usize, action: &str, limit: Duration) -> Instant {
        let name = self.containers[n - 1].0.clone();
        let since = self.cmds.first().map_or(self.t0, |c| c.queued);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.events_of(&name).into_iter().find(|e| e.action == action && e.seen >= since) {
                self.say(format!("{name}: {action}"));
                return e.seen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {action} event of {name} within {limit:?}; agent log tail:\n{}",
                self.spec.label(),
                self.agent_log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The commands as the server has them.
    pub async fn outcomes(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        for cmd in self.cmds.clone() {
            let v = self.api_ok("GET", &format!("/api/commands/{}", cmd.id), None, 200).await;
            let ran = self
                .events_of(&cmd.container)
                .iter()
                .filter(|e| e.action == cmd.event() && e.seen >= cmd.queued)
                .count();
            out.push(Outcome {
                status: v["status"].as_str().unwrap_or_default().to_owned(),
                error: v["error"].as_str().unwrap_or_default().to_owned(),
                finished_at: v["finished_at"].as_i64(),
                ran,
                cmd,
            });
        }
        out
    }

    /// Waits until every command's result is at the server and the
    /// server's root digest is the agent's; the time it took.
    /// The server must also have answered a poll since the call began, so
    /// the agent is known to reach it again after the fault.
    pub async fn converge(&mut self, limit: Duration, what: &str) -> Duration {
        let t = Instant::now();
        let polls = self.polls().await;
        loop {
            if self.polls().await == polls {
                if t.elapsed() > limit {
                    panic!(
                        "{}: {what}: no poll answered within {limit:?}\nagent exits: {:?}\nagent log tail:\n{}",
                        self.spec.label(),
                        self.agent_exits(),
                        self.agent_log_tail(40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let outcomes = self.outcomes().await;
            let pending: Vec<String> =
                outcomes.iter().filter(|o| !o.reported()).map(|o| format!("{} {}", o.cmd.id, o.status)).collect();
            let last = if pending.is_empty() {
                let server = self.server_root().await;
                let agent = self.agent_root();
                if agent.as_deref() == Some(server.as_str()) {
                    self.say(format!("{what}: converged in {:.1} s", t.elapsed().as_secs_f64()));
                    return t.elapsed();
                }
                format!("server root {server}, agent root {agent:?}")
            } else {
                format!("results not at the server: {pending:?}")
            };
            if t.elapsed() > limit {
                panic!(
                    "{}: {what}: no convergence within {limit:?} ({last})\nagent exits: {:?}\nagent log tail:\n{}\nserver log tail:\n{}",
                    self.spec.label(),
                    self.agent_exits(),
                    self.agent_log_tail(40),
                    tail(&self.server_log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // ----- faults -----

    /// Kills the agent with SIGKILL; it stays down until [`Self::restart_agent`].
    pub fn kill_agent(&self) {
        self.agent.as_ref().unwrap().kill9();
    }

    /// Starts the agent again.
    pub fn restart_agent(&self) {
        self.agent.as_ref().unwrap().restart();
    }

    /// The agent's exits the supervisor saw.
    pub fn agent_exits(&self) -> Vec<String> {
        self.agent.as_ref().map(|a| a.exits.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Whether the agent process is up.
    pub fn agent_running(&self) -> bool {
        self.agent.as_ref().is_some_and(AgentProc::running)
    }

    /// Kills the server with SIGKILL (a crash, an OOM kill, a power cut).
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn start_server(&mut self) {
        let ip = self.run.host_ip();
        let s = ServerProc::start(&self.run.dir.join("server"), &format!("{ip}:{}", self.port), &ip, &self.server_log);
        self.client =
            Client::new(&format!("https://{ip}:{}", self.port), Trust::Pinned(s.fingerprint), 16 << 20).unwrap();
        self.server = Some(s);
    }

    /// Sets the agent's wall clock offset (libfaketime: `+1h`, `-1h`, `+0`),
    /// replacing the file atomically so the agent never reads half of it.
    pub fn set_clock(&self, offset: &str) {
        let file = self.run.dir.join("faketime");
        let tmp = self.run.dir.join("faketime.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        self.say(format!("agent clock {offset}"));
    }

    /// The NAT's `n`th external address in the run's subnet.
    pub fn nat_addr(&self, n: u8) -> std::net::Ipv4Addr {
        nat_addr(&self.run, n)
    }

    // ----- logs -----

    /// The agent's log.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    /// Its last `n` lines.
    pub fn agent_log_tail(&self, n: usize) -> String {
        tail(&self.agent_log, n)
    }

    // ----- the verdict -----

    /// The scenario's checks, common to every one: each command ran at most
    /// once (engine events), every result is at the server, the roots
    /// agree (checked by [`Self::converge`]), and, with `outcomes_real`,
    /// every result says what the engine did: `ok` ran once, a failure
    /// other than "may or may not have taken effect" did not run, and at
    /// most one command is uncertain. Prints the summary line; panics with
    /// every failed check and the evidence.
    pub async fn verdict(&mut self, converge: Duration, outcomes_real: bool) -> Summary {
        // Late events (a stop that completes) settle first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let outcomes = self.outcomes().await;
        let counts = self.link.counts(Class::Tern);
        let fault = counts.since(&self.queued_counts);
        let mut failures = Vec::new();
        for o in &outcomes {
            if o.ran > 1 {
                failures
                    .push(format!("command {} ({} {}) ran {} times", o.cmd.id, o.cmd.action, o.cmd.container, o.ran));
            }
            if !o.reported() {
                failures
                    .push(format!("command {} ({}) has no result at the server: {}", o.cmd.id, o.cmd.action, o.status));
            }
        }
        if outcomes_real {
            let uncertain = outcomes.iter().filter(|o| o.uncertain()).count();
            if uncertain > 1 {
                failures.push(format!(
                    "{uncertain} results say the command may or may not have taken effect (at most one may)"
                ));
            }
            for o in outcomes.iter().filter(|o| !o.uncertain()) {
                match (o.status.as_str(), o.ran) {
                    ("ok", 1) | ("failed" | "rejected", 0) => {}
                    (s, n) => failures.push(format!(
                        "command {} ({} {}) reports {s}{} but the engine ran it {n} times",
                        o.cmd.id,
                        o.cmd.action,
                        o.cmd.container,
                        if o.error.is_empty() { String::new() } else { format!(" ({})", o.error) }
                    )),
                }
            }
        }
        let ran = outcomes.iter().filter(|o| o.ran > 0).count();
        let reported = outcomes.iter().filter(|o| o.reported()).count();
        let ok = outcomes.iter().filter(|o| o.status == "ok").count();
        let uncertain = outcomes.iter().filter(|o| o.uncertain()).count();
        let exits = self.agent_exits();
        println!(
            "link-fault {}: converged in {:.1} s; bytes up {} / down {} from queueing to convergence ({} / {} in all; {} of {} packets lost up, {} of {} down); commands queued {}, ran {} (engine events), results at server {} (ok {}, uncertain {}){}{}",
            self.spec.label(),
            converge.as_secs_f64(),
            fault.up.bytes,
            fault.down.bytes,
            counts.up.bytes,
            counts.down.bytes,
            counts.up.lost,
            counts.up.packets,
            counts.down.lost,
            counts.down.packets,
            outcomes.len(),
            ran,
            reported,
            ok,
            uncertain,
            if exits.is_empty() { String::new() } else { format!("; agent exits {}", exits.len()) },
            if self.notes.is_empty() { String::new() } else { format!("; {}", self.notes.join("; ")) },
        );
        for o in &outcomes {
            println!(
                "  command {} {} {}: {}{} (engine: {} time{})",
                o.cmd.id,
                o.cmd.action,
                o.cmd.container,
                o.status,
                if o.error.is_empty() { String::new() } else { format!(": {}", o.error) },
                o.ran,
                if o.ran == 1 { "" } else { "s" }
            );
        }
        if !failures.is_empty() {
            let events: Vec<String> = self
                .events
                .list
                .lock()
                .unwrap()
                .iter()
                .map(|e| format!("{:>6.1} s {} {}", e.seen.duration_since(self.t0).as_secs_f64(), e.name, e.action))
                .collect();
            panic!(
                "{}: {}\nengine events:\n  {}\nagent exits: {exits:?}\nagent log (commands, polls that failed):\n{}",
                self.spec.label(),
                failures.join("\n"),
                events.join("\n  "),
                self.agent_log()
                    .lines()
                    .filter(|l| l.contains("command")
                        || l.contains("failed")
                        || l.contains("session")
                        || l.contains("keepalive")
                        || l.contains("ERROR")
                        || l.contains("rror"))
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Summary { converge, fault, total: counts, outcomes }
    }
}

impl Drop for Rig {
    /// Keeps the scenario's logs (agent, server, engine) in
    /// `target/tmp/link_faults/<name>/` before the run's directory goes.
    fn drop(&mut self) {
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("link_faults").join(self.spec.label());
        let _ = std::fs::remove_dir_all(&keep);
        if std::fs::create_dir_all(&keep).is_ok() {
            for f in ["agent.log", "server.log", "dockerd.log"] {
                let _ = std::fs::copy(self.run.dir.join(f), keep.join(f));
            }
        }
    }
}

fn nat_addr(run: &Run, n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 77, run.subnet, n)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
