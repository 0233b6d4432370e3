//! The on-wire benchmark (`tern bench wire`, and `tests/wire.rs` for the
//! clean-link budgets): a real server and a real agent, a realistic host,
//! a link with a chosen profile, and every IP byte counted.
//!
//! * [`setup`]: a network namespace for the agent, the TUN devices of the
//!   link, and a Docker engine of the run's own inside the namespace, on
//!   which `scripts/make-fixtures.sh host40-up` builds the 40-container
//!   fixture host. Everything is named `tern-wb-<id>` and removed on drop.
//! * [`link`]: the link emulator (rate, delay, loss, counts), in user space
//!   because this kernel has no `netem`.
//! * [`portainer`]: the baseline, Portainer's async agent request, and a
//!   sink that answers like Portainer's endpoint, side by side with tern.
//!
//! The scenarios, in order: first contact; N idle polls on a kept-alive
//! connection; a churn trace of docker CLI events, each waited for until the
//! server's root digest is the engine's; an agent restart; a server
//! restart; N idle polls with the server closing every connection between
//! polls (`tern server --idle-timeout`). Each scenario's bytes are read at
//! quiet points of its class's traffic (nothing put on the link for a
//! moment, the poll count unchanged around the read), so a scenario holds
//! whole polls.

pub mod link;
pub mod nat;
pub mod portainer;
mod report;
pub mod setup;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use link::{Class, DirCount, FlowCount, Shape};
pub use report::{chart_svg, markdown, summary_markdown};

/// A link profile and the timings that go with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// `clean`, `2g` or `satellite`.
    pub name: String,
    /// How the README names it.
    pub label: String,
    /// Agent to server.
    pub up: Shape,
    /// Server to agent.
    pub down: Shape,
    /// Poll interval (ping, snapshot and command alike), seconds.
    pub interval: u32,
    /// A class is quiet when nothing of it was put on the link this long.
    pub quiet: Duration,
    /// The server's idle timeout in the closed-connections scenario,
    /// shorter than the interval.
    pub close_after: Duration,
}

impl Profile {
    /// The profiles' names.
    pub const NAMES: [&'static str; 3] = ["clean", "2g", "satellite"];

    /// A profile by name.
    pub fn by_name(name: &str) -> Option<Self> {
        let ms = Duration::from_millis;
        match name {
            "clean" => Some(Self {
                name: "clean".into(),
                label: "clean (no rate limit, no delay, no loss)".into(),
                up: Shape::CLEAN,
                down: Shape::CLEAN,
                interval: 1,
                quiet: ms(150),
                close_after: ms(500),
            }),
            "2g" => {
                let s = Shape { rate_bps: Some(50_000), delay: ms(300), loss: 0.02, queue_bytes: 64 * 1024 };
                Some(Self {
                    name: "2g".into(),
                    label: "2G (50 kbit/s each way, 300 ms each way: 600 ms RTT, 2 % loss each way)".into(),
                    up: s,
                    down: s,
                    interval: 5,
                    quiet: ms(900),
                    close_after: ms(1000),
                })
            }
            "satellite" => {
                let s = Shape { rate_bps: None, delay: ms(600), loss: 0.01, queue_bytes: 64 * 1024 };
                Some(Self {
                    name: "satellite".into(),
                    label: "satellite (600 ms each way: 1.2 s RTT, 1 % loss each way, no rate limit)".into(),
                    up: s,
                    down: s,
                    interval: 5,
                    quiet: ms(1800),
                    close_after: ms(1000),
                })
            }
            _ => None,
        }
    }
}

/// How old the baseline's containers read in the scenario of containers
/// hours old (`idle_kept_alive_aged`).
pub const BASELINE_AGE: Duration = Duration::from_secs(2 * 3600);

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The link.
    pub profile: Profile,
    /// Polls in each idle scenario.
    pub idle_polls: u64,
    /// The `tern` binary (the server; the agent too unless `agent` is
    /// another).
    pub tern: PathBuf,
    /// The agent's binary (`tern`, or an agent-only build).
    pub agent: PathBuf,
    /// The source tree (for `scripts/make-fixtures.sh`).
    pub repo: PathBuf,
    /// Seeds the link's loss.
    pub seed: u64,
    /// Agent and server restarts, each; their figures are the median
    /// restart's.
    pub restarts: usize,
    /// Commands queued one at a time in each mode, polling and holding a
    /// session, for their latency; 0 leaves the held session's scenarios
    /// out.
    pub commands: usize,
    /// Print progress on stderr.
    pub verbose: bool,
    /// Leave out the last scenario (idle polls on new connections): on the
    /// satellite link after the session phase the Portainer-style client's
    /// traffic has not gone quiet for a mark (see the README's satellite
    /// note), and the rest of the run (the session's latencies) is still
    /// worth its table.
    pub skip_new_connection: bool,
}

/// One side's figures in a scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Side {
    /// Polls answered in the scenario.
    pub polls: u64,
    /// Agent to server.
    pub up: DirCount,
    /// Server to agent.
    pub down: DirCount,
    /// Bytes of each poll cycle (from one poll's first packet to the
    /// next's), when the scenario has more than one.
    pub cycles: Vec<u64>,
    /// The packets, for the scenarios of one poll.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packets: Vec<link::Packet>,
    /// A repeated scenario's bytes each time; the figures above are the
    /// median one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<u64>,
    /// The packets of each repetition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeat_packets: Vec<Vec<link::Packet>>,
}

impl Side {
    fn new(from: &Mark, to: &Mark, cycles: Vec<u64>) -> Self {
        let d = to.counts.since(&from.counts);
        Self { polls: to.polls - from.polls, up: d.up, down: d.down, cycles, ..Self::default() }
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.up.bytes + self.down.bytes
    }

    /// Packets both ways.
    pub fn packets(&self) -> u64 {
        self.up.packets + self.down.packets
    }

    /// The median cycle's bytes (a poll's bytes, robust to the odd extra
    /// ACK), or the mean when cycles could not be told apart.
    pub fn per_poll(&self) -> u64 {
        if self.cycles.len() as u64 == self.polls && !self.cycles.is_empty() {
            let mut c = self.cycles.clone();
            c.sort_unstable();
            c[c.len() / 2]
        } else {
            self.bytes() / self.polls.max(1)
        }
    }
}

/// One scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    /// The key, as in `budgets.toml`.
    pub key: String,
    /// How tables name it.
    pub name: String,
    /// tern.
    pub tern: Side,
    /// The Portainer-style baseline.
    pub baseline: Side,
}

/// Event to server, per churn event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latencies {
    /// tern: from the docker command's return to the server's root digest
    /// being the engine's, ms.
    pub tern_ms: Vec<u64>,
    /// The baseline: from the command's return to the reply of the first
    /// poll that read the engine after it, ms.
    pub baseline_ms: Vec<u64>,
    /// tern: from the first packet of the poll that carried the event to
    /// the server having it, ms (the delivery, without the wait for the
    /// next poll, which depends on where in the interval the event fell).
    pub tern_delivery_ms: Vec<u64>,
    /// The baseline: from the start of the first poll that read the engine
    /// after the event to its reply, ms.
    pub baseline_delivery_ms: Vec<u64>,
    /// Events tern's server had not seen within the limit.
    pub missed: Vec<String>,
}

/// Commands queued one at a time (`container.logs`, one line: it changes
/// nothing the agent reports), each right after the one before has its
/// result, at a point of the interval that moves from one to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandLatency {
    /// From the queueing request to the agent starting the command (its
    /// log's `running command` line, the same machine's clock), ms.
    pub delivered_ms: Vec<u64>,
    /// From the queueing request to the server holding its result (`GET
    /// /api/commands/{id}` read every 10 ms), ms.
    pub result_ms: Vec<u64>,
    /// Every byte of tern's flow from before the first to after the last.
    pub bytes: u64,
    /// Polls (held polls and keepalives included) meanwhile.
    pub polls: u64,
}

/// The held session (issue #16) against polling, on the same host, link,
/// server and agent: the agent restarted with `EDGE_SESSION=on`, its
/// keepalive capped at the run's interval (the ping interval).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionFigures {
    /// The keepalive the agent held in the idle scenario (the ping
    /// interval, which caps it, set to the run's interval), seconds.
    pub keepalive_s: u64,
    /// The keepalive during the commands and the churn trace, seconds: the
    /// ping interval off, so it is the agent's own (its first, 90 s, on a
    /// path that has not failed one), as in the field, where it is minutes
    /// against a snapshot interval of a minute.
    #[serde(default)]
    pub held_s: u64,
    /// Idle keepalives (each a held poll and its empty answer).
    pub idle: Side,
    /// The churn trace again, in the session.
    pub churn: Side,
    /// Event to server for each churn event, ms (as `Latencies::tern_ms`).
    pub churn_ms: Vec<u64>,
    /// Commands while polling at the run's interval.
    pub polling_commands: CommandLatency,
    /// Commands in the session.
    pub session_commands: CommandLatency,
    /// Held polls found dead and connections made again during the
    /// session's scenarios (the agent's log).
    pub reconnects: u64,
}

/// The link's counters against the devices' own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CrossCheck {
    /// (forwarder, device) bytes the agent's side put on the link.
    pub up_bytes: (u64, u64),
    /// (forwarder, device) bytes the server's side put on the link.
    pub down_bytes: (u64, u64),
    /// (forwarder, device) packets, agent's side.
    pub up_packets: (u64, u64),
    /// (forwarder, device) packets, server's side.
    pub down_packets: (u64, u64),
    /// Packets of no class (neither port): expected 0.
    pub other_packets: u64,
}

/// What the agent process cost on the fixture host (the agent alone, its
/// threads included; from `/proc/<pid>/stat` and `/proc/<pid>/status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentCost {
    /// CPU time (user + system) over the kept-alive idle polls, ms.
    pub idle_cpu_ms: f64,
    /// The polls it was measured over.
    pub idle_polls: u64,
    /// CPU time over the churn trace, ms.
    pub churn_cpu_ms: f64,
    /// The churn trace's polls.
    pub churn_polls: u64,
    /// Resident memory (VmRSS) after the churn trace, KiB.
    pub rss_kib: u64,
    /// The peak resident memory so far (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Of `rss_kib`, anonymous memory (heap, stacks), KiB.
    #[serde(default)]
    pub anon_kib: u64,
    /// Of `rss_kib`, file pages (the binary and libraries mapped), KiB.
    #[serde(default)]
    pub file_kib: u64,
    /// The agent binary's size, bytes.
    #[serde(default)]
    pub binary_bytes: u64,
    /// Whether the agent was a release build (a debug build costs several
    /// times the CPU).
    pub release: bool,
}

impl AgentCost {
    /// CPU ms per idle poll.
    pub fn idle_per_poll(&self) -> f64 {
        self.idle_cpu_ms / self.idle_polls.max(1) as f64
    }

    /// CPU ms per poll during the churn trace.
    pub fn churn_per_poll(&self) -> f64 {
        self.churn_cpu_ms / self.churn_polls.max(1) as f64
    }
}

/// Whether `tern` is an optimized build: this one, or by its path
/// (`target/release/...`).
fn is_release(tern: &Path) -> bool {
    match std::env::current_exe() {
        Ok(me) if me == tern => !cfg!(debug_assertions),
        _ => !tern.components().any(|c| c.as_os_str() == "debug"),
    }
}

/// A process's CPU time so far (user + system, every thread), ms.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1000.0 / hz)
}

/// (VmRSS, VmHWM, RssAnon, RssFile) of a process, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((get("VmRSS:"), get("VmHWM:"), get("RssAnon:"), get("RssFile:")))
}

/// A run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The link.
    pub profile: Profile,
    /// The machine.
    pub machine: String,
    /// When (UTC).
    pub date: String,
    /// Polls in each idle scenario.
    pub idle_polls: u64,
    /// The scenarios.
    pub scenarios: Vec<Scenario>,
    /// The host, as its first snapshot has it.
    pub host: String,
    /// The churn trace's events.
    pub events: Vec<String>,
    /// Event to server.
    pub latency: Latencies,
    /// The agent's CPU and memory on the host.
    #[serde(default)]
    pub agent: AgentCost,
    /// The baseline's request body for the patch over the whole kept-alive
    /// scenario (`baseline_body_gap_s` long), against its mean body per poll
    /// at the run's interval: a patch grows with its gap (status texts such
    /// as "Up 5 minutes", times).
    pub baseline_body_gap: u64,
    /// Mean baseline request body per idle poll at the run's interval.
    pub baseline_body_interval: u64,
    /// The gap `baseline_body_gap` was measured over, seconds (about 60
    /// with the benchmark's 60 polls a second apart; shorter in the CI test).
    pub baseline_body_gap_s: u64,
    /// The held session against polling (none when `commands` was 0, or
    /// in runs saved before it was measured).
    #[serde(default)]
    pub session: Option<SessionFigures>,
    /// Forwarder against devices.
    pub crosscheck: CrossCheck,
    /// Seconds to build the host.
    pub setup_s: f64,
    /// Seconds for the whole run.
    pub total_s: f64,
}

impl Report {
    /// A scenario by key.
    pub fn scenario(&self, key: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.key == key)
    }

    /// tern's bytes a day, idle, 60 s intervals: one poll's bytes × 1,440
    /// (`new_connection`: every poll on a new connection).
    pub fn tern_per_day(&self, new_connection: bool) -> u64 {
        let key = if new_connection { "idle_new_connection" } else { "idle_kept_alive" };
        self.scenario(key).map_or(0, |s| s.tern.per_poll() * 1440)
    }

    /// The baseline's bytes a day at 60 s intervals: one poll × 1,440, as
    /// tern's. (Its patch over a minute is about the size of its patch over
    /// a second, `baseline_body_gap` against `baseline_body_interval`: what
    /// changes between two reads is mostly what changes at every read.)
    pub fn baseline_per_day(&self, new_connection: bool) -> u64 {
        let key = if new_connection { "idle_new_connection" } else { "idle_kept_alive" };
        self.scenario(key).map_or(0, |s| s.baseline.per_poll() * 1440)
    }

    /// The baseline's bytes a day, kept alive, its host as in the field
    /// (containers hours old, images in one order; `None` in runs saved
    /// before that scenario).
    pub fn baseline_aged_per_day(&self) -> Option<u64> {
        self.scenario("idle_kept_alive_aged").map(|s| s.baseline.per_poll() * 1440)
    }

    /// What the churn trace cost above idling, (tern, baseline): its bytes
    /// minus as many idle polls (kept alive, the median one) as it made.
    pub fn churn_above_idle(&self) -> (u64, u64) {
        let (Some(c), Some(i)) = (self.scenario("churn_trace"), self.scenario("idle_kept_alive")) else {
            return (0, 0);
        };
        let above = |churn: &Side, idle: &Side| churn.bytes().saturating_sub(churn.polls * idle.per_poll());
        (above(&c.tern, &i.tern), above(&c.baseline, &i.baseline))
    }

    /// The figures `budgets.toml` holds (`[wire_clean]`).
    pub fn budget_figures(&self) -> Vec<(&str, u64)> {
        let get = |k: &str| self.scenario(k);
        let mut out = Vec::new();
        if let Some(s) = get("first_contact") {
            out.push(("first_contact", s.tern.bytes()));
        }
        if let Some(s) = get("idle_kept_alive") {
            out.push(("idle_poll_kept_alive", s.tern.per_poll()));
        }
        if let Some(s) = get("idle_new_connection") {
            out.push(("idle_poll_new_connection", s.tern.per_poll()));
        }
        for k in ["churn_trace", "agent_restart", "server_restart"] {
            if let Some(s) = get(k) {
                out.push((s.key.as_str(), s.tern.bytes()));
            }
        }
        out
    }
}

fn log(verbose: bool, start: Instant, msg: impl std::fmt::Display) {
    if verbose {
        eprintln!("[wirebench {:>6.1} s] {msg}", start.elapsed().as_secs_f64());
    }
}

/// Runs the benchmark on one profile. Needs root (namespaces, TUN devices,
/// a Docker engine of its own), `dockerd`, `docker`, `docker-compose` (v1)
/// and busybox-static, as `scripts/make-fixtures.sh` does.
///
/// # Errors
/// When something cannot be set up, or a scenario does not complete.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    if !setup::privileged() {
        bail!("the on-wire benchmark needs root (network namespaces, TUN devices, its own Docker engine)");
    }
    setup::sweep();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(options))
}

/// `tern server` as a child process.
struct ServerProc {
    child: Child,
    port: u16,
    fingerprint: [u8; 32],
}

impl ServerProc {
    fn start(
        tern: &Path,
        data: &Path,
        listen: &str,
        ip: &str,
        idle: Option<Duration>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(tern);
        cmd.args(["server", "--listen", listen, "--cert-name", ip, "--data"]).arg(data);
        if let Some(idle) = idle {
            cmd.args(["--idle-timeout", &idle.as_secs_f64().to_string()]);
        }
        let logfile = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = cmd
            .env_remove("AGENT_SECRET")
            .env_remove("TERN_DATA")
            .env_remove("TERN_LISTEN")
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logfile)
            .spawn()
            .with_context(|| format!("starting {}", tern.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("server stdout")?);
        let (mut port, mut fingerprint) = (None, None);
        let mut line = String::new();
        while fingerprint.is_none() {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                bail!("tern server exited (see {})", log.display());
            }
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            }
            if let Some(hex) = line.trim().strip_prefix("certificate sha256 ") {
                let bytes: Vec<u8> = hex.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
                fingerprint = <[u8; 32]>::try_from(bytes).ok();
            }
        }
        // Keep reading (the admin password line), so the pipe stays open.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Self {
            child,
            port: port.context("no port in the server's output")?,
            fingerprint: fingerprint.unwrap_or_default(),
        })
    }

    fn stop(&mut self) {
        signal(&self.child, libc::SIGINT);
        wait_exit(&mut self.child);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_exit(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `tern agent` in the agent's namespace.
struct AgentProc {
    child: Child,
}

impl AgentProc {
    fn start(
        tern: &Path,
        netns: &str,
        edge_key: &str,
        data: &Path,
        docker_host: &str,
        log: &Path,
        session: bool,
    ) -> anyhow::Result<Self> {
        let logfile = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        // A clean environment: the agent refuses EDGE_*/AGENT_* it does not know.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(tern)
            .arg("agent")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("EDGE_KEY", edge_key)
            .env("DATA_PATH", data)
            .env("DOCKER_HOST", docker_host)
            .env("EDGE_COMPOSE", "builtin")
            .env("EDGE_SESSION", if session { "on" } else { "off" })
            .env("LOG_LEVEL", "info")
            // One JSON object a line: the command latencies read its times.
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .context("starting tern agent")?;
        Ok(Self { child })
    }

    fn stop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        wait_exit(&mut self.child);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The longest an API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's API, as the operator uses it.
struct Api {
    client: tern::agent::client::Client,
    token: String,
    env: u64,
}

impl Api {
    async fn call(&mut self, method: hyper::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let body = body.map(|b| b.to_string().into_bytes());
        // Bounded: a call that never returns would stall the whole run
        // without a word (the satellite run once did, in its last phase).
        let Ok(answer) =
            tokio::time::timeout(API_TIMEOUT, self.client.api(method.clone(), path, &self.token, body)).await
        else {
            self.client.disconnect();
            bail!("{method} {path}: no answer within {} s", API_TIMEOUT.as_secs());
        };
        let (status, bytes) = answer?;
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, json))
    }

    async fn polls(&mut self) -> anyhow::Result<u64> {
        let (status, v) =
            self.call(hyper::Method::GET, &format!("/api/environments/{}/usage?days=1", self.env), None).await?;
        if status != 200 {
            bail!("usage: {status} {v}");
        }
        v["total"]["polls"].as_u64().context("usage without polls")
    }

    async fn root(&mut self) -> anyhow::Result<String> {
        let (status, v) = self.call(hyper::Method::GET, &format!("/api/environments/{}", self.env), None).await?;
        if status != 200 {
            bail!("environment: {status} {v}");
        }
        Ok(v["root"].as_str().unwrap_or_default().to_owned())
    }
}

/// A point in a class's traffic: its counts, on the link's clock, and the
/// polls answered until then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    counts: FlowCount,
    at: Duration,
    polls: u64,
}

/// Everything a running benchmark holds.
struct Bench<'a> {
    options: &'a Options,
    start: Instant,
    link: link::Link,
    api: Api,
    baseline: Option<portainer::Client>,
    docker: bollard::Docker,
}

impl Bench<'_> {
    fn say(&self, msg: impl std::fmt::Display) {
        log(self.options.verbose, self.start, msg);
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.options.profile.interval))
    }

    async fn polls(&mut self, class: Class) -> anyhow::Result<u64> {
        match class {
            Class::Tern => self.api.polls().await,
            _ => Ok(self.baseline.as_ref().map_or(0, portainer::Client::polls)),
        }
    }

    /// Waits for a quiet point of `class` and reads it there.
    async fn mark(&mut self, class: Class) -> anyhow::Result<Mark> {
        let quiet = self.options.profile.quiet;
        let deadline = Instant::now() + self.interval() * 6 + Duration::from_secs(20);
        loop {
            let before = self.polls(class).await?;
            if let Some((counts, at)) = self.link.counts_if_quiet(class, quiet) {
                let after = self.polls(class).await?;
                if before == after {
                    return Ok(Mark { counts, at, polls: after });
                }
            }
            if Instant::now() > deadline {
                bail!("{class:?} traffic never went quiet for {quiet:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `class` has answered `target` polls.
    async fn wait_polls(&mut self, class: Class, target: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.polls(class).await?;
            if n >= target {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{class:?}: {n} polls, waited for {target}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll cycles of `class` between two marks: each starts at a packet
    /// from the agent's side that opens a connection or carries data after
    /// a quiet gap, and holds everything until the next (the server closing
    /// an idle connection belongs to the poll that used it). Packets before
    /// the first start (the close of the connection of the poll before the
    /// window) are left out: they are counted in the scenario, not in a
    /// cycle.
    fn cycles(&self, class: Class, from: &Mark, to: &Mark) -> Vec<u64> {
        let gap = self.options.profile.quiet;
        let mut out: Vec<u64> = Vec::new();
        let mut last: Option<Duration> = None;
        for p in self.link.packets(class, from.at, to.at) {
            if p.up && (p.syn || p.payload > 0) && last.is_none_or(|l| p.at - l >= gap) {
                out.push(0);
            }
            if let Some(c) = out.last_mut() {
                *c += u64::from(p.len);
            }
            last = Some(p.at);
        }
        out
    }

    /// A one-poll scenario's side, with its packets.
    fn one(&self, class: Class, from: &Mark, to: &Mark) -> Side {
        Side { packets: self.link.packets(class, from.at, to.at), ..Side::new(from, to, Vec::new()) }
    }

    /// Queues `count` commands one at a time and times each (see
    /// [`CommandLatency`]).
    async fn commands(&mut self, agent_log: &Path, count: usize, target: &str) -> anyhow::Result<CommandLatency> {
        let mut out = CommandLatency::default();
        let limit = self.interval() * 4 + Duration::from_secs(30);
        let m0 = self.mark(Class::Tern).await?;
        for i in 0..count {
            // Where in the interval a command falls is what polling's wait
            // depends on: spread them over it (i × 3/7 of an interval on).
            let phase = self.interval().mul_f64((i * 3 % 7) as f64 / 7.0);
            tokio::time::sleep(phase + Duration::from_millis(50)).await;
            let body = serde_json::json!({"action": "container.logs", "target": target, "tail": 1});
            let path = format!("/api/environments/{}/commands", self.api.env);
            // From the request (a session's push can reach the agent before
            // the API's answer reaches the operator).
            let (queued, at) = (time::OffsetDateTime::now_utc(), Instant::now());
            let (status, v) = self.api.call(hyper::Method::POST, &path, Some(body)).await?;
            if status != 201 {
                bail!("queueing a command: {status} {v}");
            }
            let id = v["id"].as_u64().context("command id")?;
            loop {
                let (_, c) = self.api.call(hyper::Method::GET, &format!("/api/commands/{id}"), None).await?;
                match c["status"].as_str() {
                    Some("ok") => break,
                    Some(s @ ("failed" | "rejected" | "cancelled")) => bail!("command {id} {s}: {c}"),
                    _ if at.elapsed() > limit => bail!("command {id} has no result after {limit:?}: {c}"),
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            out.result_ms.push(at.elapsed().as_millis() as u64);
            let ran = ran_at(agent_log, id).with_context(|| format!("command {id}: no 'running command' line"))?;
            out.delivered_ms.push(u64::try_from((ran - queued).whole_milliseconds()).unwrap_or(0));
        }
        let m1 = self.mark(Class::Tern).await?;
        out.bytes = m1.counts.since(&m0.counts).bytes();
        out.polls = m1.polls - m0.polls;
        Ok(out)
    }

    /// Waits until the server says the agent is in `mode` (`session` or
    /// `polling`); the environment as it says so.
    async fn wait_mode(&mut self, mode: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let (_, v) =
                self.api.call(hyper::Method::GET, &format!("/api/environments/{}", self.api.env), None).await?;
            if v["mode"] == mode {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("the agent is not in mode {mode} after {limit:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn engine_root(&self) -> anyhow::Result<String> {
        let raw = tern::agent::collect(&self.docker).await?;
        let state = raw.canonical(&tern::agent::CanonicalOptions::default())?;
        Ok(state.root().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Waits until the server's state is the engine's; the time it took.
    async fn converge(&mut self, limit: Duration) -> anyhow::Result<Option<Duration>> {
        let t0 = Instant::now();
        let mut target = self.engine_root().await?;
        let mut reread = t0 + self.interval() * 3;
        loop {
            if self.api.root().await? == target {
                return Ok(Some(t0.elapsed()));
            }
            let now = Instant::now();
            if now > t0 + limit {
                return Ok(None);
            }
            if now > reread {
                // The engine moved on by itself (a container exited after start).
                target = self.engine_root().await?;
                reread = now + self.interval() * 3;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// When the agent's JSON log says it started command `id`.
fn ran_at(log: &Path, id: u64) -> Option<time::OffsetDateTime> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|v| {
        let f = &v["fields"];
        (f["message"] == "running command" && f["command"].as_u64() == Some(id))
            .then(|| v["timestamp"].as_str())
            .flatten()
            .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
    })
}

/// Lines of the agent's JSON log whose message starts with one of `what`.
fn log_count(log: &Path, what: &[&str]) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"].as_str().is_some_and(|m| what.iter().any(|w| m.starts_with(w))))
        .count() as u64
}

/// The churn trace: docker CLI events on the fixture host, each quick (so
/// it lands in one poll) and each changing what tern's state holds.
pub fn churn_events() -> Vec<(&'static str, Vec<&'static str>)> {
    let e = |d: &'static str, a: &[&'static str]| (d, a.to_vec());
    vec![
        e("stop shop_web_1", &["stop", "-t", "0", "shop_web_1"]),
        e("start shop_web_1", &["start", "shop_web_1"]),
        e("restart shop_scheduler_1", &["restart", "-t", "1", "shop_scheduler_1"]),
        e("pause iot_node-red_1", &["pause", "iot_node-red_1"]),
        e("unpause iot_node-red_1", &["unpause", "iot_node-red_1"]),
        e("volume create firmware-cache", &["volume", "create", "--label", "com.example.owner=iot", "firmware-cache"]),
        e(
            "network create diag",
            &[
                "network",
                "create",
                "--internal",
                "--subnet",
                "10.250.0.0/24",
                "--label",
                "com.example.purpose=diagnostics",
                "diag",
            ],
        ),
        e("network connect diag iot_node-red_1", &["network", "connect", "diag", "iot_node-red_1"]),
        e(
            "tag acme/api:2.4.1 as acme/api:stable",
            &["tag", "registry.example.com/acme/api:2.4.1", "registry.example.com/acme/api:stable"],
        ),
        e(
            "run iot-diag",
            &[
                "run",
                "-d",
                "--name",
                "iot-diag",
                "--network",
                "iot_mqtt",
                "--label",
                "com.example.purpose=diagnostics",
                "registry.example.com/acme/ota-agent:1.3.0",
                "sleep",
                "86400",
            ],
        ),
        e("stop iot-diag", &["stop", "-t", "0", "iot-diag"]),
        e("remove iot-diag", &["rm", "iot-diag"]),
        e("restart logging_promtail_1", &["restart", "-t", "1", "logging_promtail_1"]),
        e("stop monitoring_blackbox_1", &["stop", "-t", "1", "monitoring_blackbox_1"]),
        e("start monitoring_blackbox_1", &["start", "monitoring_blackbox_1"]),
        e("rename debug-shell to debug-shell-old", &["rename", "debug-shell", "debug-shell-old"]),
        e(
            "restart policy of iot_zigbee2mqtt_1 to unless-stopped",
            &["update", "--restart", "unless-stopped", "iot_zigbee2mqtt_1"],
        ),
        e("volume remove scratch", &["volume", "rm", "scratch"]),
        e("network disconnect diag iot_node-red_1", &["network", "disconnect", "diag", "iot_node-red_1"]),
        e("untag acme/api:stable", &["rmi", "registry.example.com/acme/api:stable"]),
        e("start ota-staged", &["start", "ota-staged"]),
        e("stop ota-staged", &["stop", "-t", "0", "ota-staged"]),
        e(
            "create ota-staged-2",
            &[
                "create",
                "--name",
                "ota-staged-2",
                "--label",
                "com.example.ota.stage=pending",
                "registry.example.com/acme/ota-agent:1.3.0",
            ],
        ),
        e("remove ota-staged-2", &["rm", "ota-staged-2"]),
        e("pause shop_worker_1", &["pause", "shop_worker_1"]),
        e("unpause shop_worker_1", &["unpause", "shop_worker_1"]),
        e("restart wiki_cache_1", &["restart", "-t", "1", "wiki_cache_1"]),
        e("stop logging_fluent-bit_1", &["stop", "-t", "1", "logging_fluent-bit_1"]),
        e("start logging_fluent-bit_1", &["start", "logging_fluent-bit_1"]),
        e("network remove diag", &["network", "rm", "diag"]),
        e(
            "volume create logs-archive",
            &[
                "volume",
                "create",
                "--label",
                "com.example.owner=ops",
                "--label",
                "com.example.retention=30d",
                "logs-archive",
            ],
        ),
        e("tag nginx:1.25.3 as nginx:stable", &["tag", "nginx:1.25.3", "nginx:stable"]),
        e(
            "run canary-web",
            &[
                "run",
                "-d",
                "--name",
                "canary-web",
                "--network",
                "shop_frontend",
                "--label",
                "com.example.canary=true",
                "-p",
                "127.0.0.1:18081:80",
                "nginx:stable",
            ],
        ),
        e("stop canary-web", &["stop", "-t", "0", "canary-web"]),
        e("remove canary-web", &["rm", "canary-web"]),
        e("untag nginx:stable", &["rmi", "nginx:stable"]),
        e("restart iot_mosquitto_1", &["restart", "-t", "1", "iot_mosquitto_1"]),
        e("restart monitoring_alertmanager_1", &["restart", "-t", "1", "monitoring_alertmanager_1"]),
        e(
            "restart policy of monitoring_grafana_1 to always",
            &["update", "--restart", "always", "monitoring_grafana_1"],
        ),
        e("stop iot_telegraf_1", &["stop", "-t", "1", "iot_telegraf_1"]),
        e("start iot_telegraf_1", &["start", "iot_telegraf_1"]),
        e("rename debug-shell-old to debug-shell", &["rename", "debug-shell-old", "debug-shell"]),
        e("volume remove logs-archive", &["volume", "rm", "logs-archive"]),
        e("volume remove firmware-cache", &["volume", "rm", "firmware-cache"]),
        e("pause wiki_wiki_1", &["pause", "wiki_wiki_1"]),
        e("unpause wiki_wiki_1", &["unpause", "wiki_wiki_1"]),
        e("restart shop_traefik_1", &["restart", "-t", "1", "shop_traefik_1"]),
        e("kill autoheal", &["kill", "autoheal"]),
        e("start autoheal", &["start", "autoheal"]),
        e("network create vpn", &["network", "create", "--label", "com.example.role=vpn", "vpn"]),
        e("network connect vpn shop_traefik_1", &["network", "connect", "vpn", "shop_traefik_1"]),
        e("network disconnect vpn shop_traefik_1", &["network", "disconnect", "vpn", "shop_traefik_1"]),
        e("network remove vpn", &["network", "rm", "vpn"]),
        e(
            "restart policy of iot_zigbee2mqtt_1 back to always",
            &["update", "--restart", "always", "iot_zigbee2mqtt_1"],
        ),
        e("restart monitoring_pushgateway_1", &["restart", "-t", "1", "monitoring_pushgateway_1"]),
        e("stop shop_worker_2", &["stop", "-t", "1", "shop_worker_2"]),
        e("start shop_worker_2", &["start", "shop_worker_2"]),
    ]
}

/// A repeated scenario: the run with the median tern bytes, every run's
/// bytes kept.
fn median_of(key: &str, name: &str, mut sides: Vec<(Side, Side)>) -> Scenario {
    let tern: Vec<u64> = sides.iter().map(|(t, _)| t.bytes()).collect();
    let baseline: Vec<u64> = sides.iter().map(|(_, b)| b.bytes()).collect();
    let packets: Vec<Vec<link::Packet>> = sides.iter().map(|(t, _)| t.packets.clone()).collect();
    sides.sort_by_key(|(t, _)| t.bytes());
    let (mut t, mut b) = sides.swap_remove(sides.len() / 2);
    if tern.len() > 1 {
        (t.repeats, b.repeats, t.repeat_packets) = (tern, baseline, packets);
    }
    let name = if t.repeats.len() > 1 { format!("{name} (median of {})", t.repeats.len()) } else { name.to_owned() };
    Scenario { key: key.to_owned(), name, tern: t, baseline: b }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split(':').nth(1)).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = setup::run_cmd("uname", &["-r"]).unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

async fn run_async(options: &Options) -> anyhow::Result<Report> {
    let start = Instant::now();
    let profile = &options.profile;
    let say = |m: &str| log(options.verbose, start, m);
    let mut run = setup::Run::create()?;
    say(&format!("run {} in {}", run.id, run.dir.display()));
    let (host_dev, agent_dev) = run.link_devices()?;
    run.namespaces_as_deployed()?;
    let link = link::Link::start(host_dev, agent_dev, profile.up, profile.down, options.seed)?;
    run.start_engine()?;
    say("engine up; building the fixture host (scripts/make-fixtures.sh host40-up)");
    let script_log = run.dir.join("host40-up.log");
    let status = Command::new("bash")
        .arg(options.repo.join("scripts/make-fixtures.sh"))
        .arg("host40-up")
        .env("DOCKER_HOST", run.docker_host())
        .env("FIXTURE_WORK", run.dir.join("work"))
        .env("BUILD_JOBS", "4")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&script_log)?)
        .stderr(std::fs::OpenOptions::new().append(true).open(&script_log)?)
        .status()?;
    if !status.success() {
        let log = std::fs::read_to_string(&script_log).unwrap_or_default();
        bail!("host40-up failed: {}", log.lines().rev().take(8).collect::<Vec<_>>().join(" | "));
    }
    let setup_s = start.elapsed().as_secs_f64();
    say("host up");

    // The server, the environment, the sink.
    let host_ip = run.host_ip();
    let server_log = run.dir.join("server.log");
    let server_data = run.dir.join("server");
    let mut server =
        ServerProc::start(&options.tern, &server_data, &format!("{host_ip}:0"), &host_ip, None, &server_log)?;
    let port = server.port;
    link.set_port(port, Class::Tern);
    let url = format!("https://{host_ip}:{port}");
    let token = std::fs::read_to_string(tern::server::admin_token_path(&server_data))?.trim().to_owned();
    let client = tern::agent::client::Client::new(&url, tern::tls::Trust::Pinned(server.fingerprint), 16 << 20)?;
    let mut api = Api { client, token, env: 0 };
    let i = profile.interval;
    let body = serde_json::json!({
        "name": "wirebench", "url": url, "intervals": { "ping": i, "snapshot": i, "command": i },
    });
    let (status, created) = api.call(hyper::Method::POST, "/api/environments", Some(body)).await?;
    if status != 201 {
        bail!("creating the environment: {status} {created}");
    }
    api.env = created["id"].as_u64().context("environment id")?;
    let edge_key = created["edge_key"].as_str().context("edge_key")?.to_owned();
    let interval = Duration::from_secs(u64::from(i));
    let default_idle = tern::server::http::IDLE_TIMEOUT;
    let mut sink = portainer::Sink::start(&host_ip, &run.dir.join("sink"), interval, api.env, default_idle).await?;
    link.set_port(sink.port, Class::Baseline);
    let docker = bollard::Docker::connect_with_unix(&run.docker_host(), 120, bollard::API_DEFAULT_VERSION)?;
    let host_desc = {
        let state = tern::agent::collect(&docker).await?.canonical(&tern::agent::CanonicalOptions::default())?;
        format!(
            "{} containers in {} compose projects and standalone, {} images, {} volumes, {} networks",
            state.containers.len(),
            state.stacks().len(),
            state.images.len(),
            state.volumes.len(),
            state.networks.len()
        )
    };
    let mut b = Bench { options, start, link, api, baseline: None, docker };
    let limit = interval * 10 + Duration::from_secs(60);
    let mut scenarios = Vec::new();

    // 1. First contact: agent and baseline client start together.
    let t0 = b.mark(Class::Tern).await?;
    let b0 = b.mark(Class::Baseline).await?;
    let agent_log = run.dir.join("agent.log");
    let agent_data = run.dir.join("agent");
    let mut agent =
        AgentProc::start(&options.agent, &run.netns, &edge_key, &agent_data, &run.docker_host(), &agent_log, false)?;
    b.baseline = Some(portainer::Client::start(portainer::ClientConfig {
        ip: host_ip.clone(),
        port: sink.port,
        fingerprint: sink.fingerprint,
        interval,
        docker_socket: run.docker_socket(),
        netns: run.baseline_netns_path(),
        endpoint: b.api.env,
    })?);
    b.wait_polls(Class::Tern, 1, limit).await?;
    let t1 = b.mark(Class::Tern).await?;
    b.wait_polls(Class::Baseline, 1, limit).await?;
    let b1 = b.mark(Class::Baseline).await?;
    scenarios.push(Scenario {
        key: "first_contact".into(),
        name: "first contact".into(),
        tern: b.one(Class::Tern, &t0, &t1),
        baseline: b.one(Class::Baseline, &b0, &b1),
    });
    b.say(format!("first contact: tern {} B, baseline {} B", t1.counts.bytes(), b1.counts.since(&b0.counts).bytes()));
    if b.converge(limit).await?.is_none() {
        bail!("the server never had the host's state (see {})", agent_log.display());
    }

    // 2. Idle polls, kept alive.
    let n = options.idle_polls;
    let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
    let doc_at = Instant::now();
    let doc0 = portainer::docker_snapshot(&portainer::read_engine(&run.docker_socket()).await?, 0);
    let cpu0 = cpu_ms(agent.child.id())?;
    b.wait_polls(Class::Tern, t0.polls + n, limit + (interval * 2 + Duration::from_secs(5)) * n as u32).await?;
    let t1 = b.mark(Class::Tern).await?;
    let mut cost = AgentCost {
        idle_cpu_ms: cpu_ms(agent.child.id())? - cpu0,
        idle_polls: t1.polls - t0.polls,
        release: is_release(&options.agent),
        binary_bytes: std::fs::metadata(&options.agent).map_or(0, |m| m.len()),
        ..AgentCost::default()
    };
    b.wait_polls(Class::Baseline, b0.polls + n, limit + (interval * 2 + Duration::from_secs(5)) * n as u32).await?;
    let b1 = b.mark(Class::Baseline).await?;
    let gap = doc_at.elapsed().as_secs();
    let doc1 = portainer::docker_snapshot(&portainer::read_engine(&run.docker_socket()).await?, gap as i64);
    let (tc, bc) = (b.cycles(Class::Tern, &t0, &t1), b.cycles(Class::Baseline, &b0, &b1));
    scenarios.push(Scenario {
        key: "idle_kept_alive".into(),
        name: format!("{n} idle polls, connection kept alive"),
        tern: Side::new(&t0, &t1, tc),
        baseline: Side::new(&b0, &b1, bc),
    });
    // The baseline's body for a 60 s gap, against its mean at this interval.
    let patch = serde_json::to_value(json_patch::diff(&doc0, &doc1))?;
    let snapshot =
        serde_json::json!({ "dockerPatch": patch, "dockerHash": portainer::fnv32a(&serde_json::to_vec(&doc0)?) });
    let req = portainer::request("h", "e", 1, Some(snapshot));
    let baseline_body_gap = (req.len() - req.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4)) as u64;
    let baseline_body_interval = {
        let stats =
            b.baseline.as_ref().expect("started").stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bodies: Vec<u64> =
            stats.log.iter().skip(b0.polls as usize).take(n as usize).map(|r| r.body_up as u64).collect();
        bodies.iter().sum::<u64>() / bodies.len().max(1) as u64
    };
    b.say(format!(
        "idle kept alive: tern {} B/poll, baseline {} B/poll",
        scenarios[1].tern.per_poll(),
        scenarios[1].baseline.per_poll()
    ));

    // 2b. The same, the baseline reading its engine as a field host's:
    // containers as if started hours ago (their status texts, "Up 2
    // hours", then change once an hour, not at every poll) and images in
    // one order (see `portainer::field_image_order`). Its first poll after
    // the switch (every text changes at once) is left out.
    let baseline = b.baseline.as_ref().expect("started");
    baseline.set_age(BASELINE_AGE);
    let p = baseline.polls();
    b.wait_polls(Class::Baseline, p + 2, limit).await?;
    let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
    let wait = limit + (interval * 2 + Duration::from_secs(5)) * n as u32;
    b.wait_polls(Class::Tern, t0.polls + n, wait).await?;
    let t1 = b.mark(Class::Tern).await?;
    b.wait_polls(Class::Baseline, b0.polls + n, wait).await?;
    let b1 = b.mark(Class::Baseline).await?;
    let (tc, bc) = (b.cycles(Class::Tern, &t0, &t1), b.cycles(Class::Baseline, &b0, &b1));
    scenarios.push(Scenario {
        key: "idle_kept_alive_aged".into(),
        name: format!(
            "{n} idle polls, kept alive, the baseline's host as in the field (containers {} h old)",
            BASELINE_AGE.as_secs() / 3600
        ),
        tern: Side::new(&t0, &t1, tc),
        baseline: Side::new(&b0, &b1, bc),
    });
    b.say(format!(
        "idle, the baseline's host as in the field: tern {} B/poll, baseline {} B/poll",
        scenarios[2].tern.per_poll(),
        scenarios[2].baseline.per_poll()
    ));
    // The rest as before: containers as the engine has them.
    b.baseline.as_ref().expect("started").set_age(Duration::ZERO);
    let p = b.polls(Class::Baseline).await?;
    b.wait_polls(Class::Baseline, p + 2, limit).await?;

    // 3. The churn trace.
    let events = churn_events();
    let events_of_trace = events.clone();
    let mut latency = Latencies::default();
    let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
    let cpu0 = cpu_ms(agent.child.id())?;
    let mut done_at = Vec::new();
    for (what, args) in &events {
        // Right after a poll (quiet), so the event lands in the next one.
        b.mark(Class::Tern).await?;
        run.docker(args).with_context(|| format!("churn event {what}"))?;
        let (at, link_at) = (Instant::now(), b.link.now());
        done_at.push(at);
        match b.converge(limit).await? {
            Some(d) => {
                latency.tern_ms.push(d.as_millis() as u64);
                let seen = link_at + d;
                let started = b.link.packets(Class::Tern, link_at, seen).into_iter().find(|p| p.up).map(|p| p.at);
                if let Some(started) = started {
                    latency.tern_delivery_ms.push((seen - started).as_millis() as u64);
                }
            }
            None => latency.missed.push((*what).to_owned()),
        }
    }
    let t1 = b.mark(Class::Tern).await?;
    (cost.churn_cpu_ms, cost.churn_polls) = (cpu_ms(agent.child.id())? - cpu0, t1.polls - t0.polls);
    (cost.rss_kib, cost.peak_rss_kib, cost.anon_kib, cost.file_kib) = rss_kib(agent.child.id())?;
    b.say(format!(
        "agent: {:.2} ms CPU per idle poll, {:.2} ms per churn poll, {} KiB resident ({} KiB peak)",
        cost.idle_per_poll(),
        cost.churn_per_poll(),
        cost.rss_kib,
        cost.peak_rss_kib
    ));
    let b1 = b.mark(Class::Baseline).await?;
    {
        let stats =
            b.baseline.as_ref().expect("started").stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for at in &done_at {
            if let Some(r) = stats.log.iter().find(|r| r.read_at >= *at) {
                latency.baseline_ms.push((r.done_at - *at).as_millis() as u64);
                latency.baseline_delivery_ms.push((r.done_at - r.read_at).as_millis() as u64);
            }
        }
    }
    scenarios.push(Scenario {
        key: "churn_trace".into(),
        name: format!("churn trace ({} events)", events.len()),
        tern: Side::new(&t0, &t1, Vec::new()),
        baseline: Side::new(&b0, &b1, Vec::new()),
    });
    b.say(format!("churn: tern {} B, baseline {} B", scenarios[3].tern.bytes(), scenarios[3].baseline.bytes()));

    // 4. Agent restarts (and the baseline client's).
    let mut sides = Vec::new();
    for _ in 0..options.restarts.max(1) {
        let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
        agent.stop();
        agent = AgentProc::start(
            &options.agent,
            &run.netns,
            &edge_key,
            &agent_data,
            &run.docker_host(),
            &agent_log,
            false,
        )?;
        b.baseline.as_ref().expect("started").restart();
        b.wait_polls(Class::Tern, t0.polls + 1, limit).await?;
        let t1 = b.mark(Class::Tern).await?;
        b.wait_polls(Class::Baseline, b0.polls + 1, limit).await?;
        let b1 = b.mark(Class::Baseline).await?;
        sides.push((b.one(Class::Tern, &t0, &t1), b.one(Class::Baseline, &b0, &b1)));
    }
    scenarios.push(median_of("agent_restart", "agent restart", sides));

    // 5. Server restarts (and the sink's), on the same ports.
    let mut sides = Vec::new();
    for _ in 0..options.restarts.max(1) {
        let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
        server.stop();
        sink.restart().await?;
        server =
            ServerProc::start(&options.tern, &server_data, &format!("{host_ip}:{port}"), &host_ip, None, &server_log)?;
        b.wait_polls(Class::Tern, t0.polls + 1, limit).await?;
        let t1 = b.mark(Class::Tern).await?;
        b.wait_polls(Class::Baseline, b0.polls + 1, limit).await?;
        let b1 = b.mark(Class::Baseline).await?;
        sides.push((b.one(Class::Tern, &t0, &t1), b.one(Class::Baseline, &b0, &b1)));
    }
    scenarios.push(median_of("server_restart", "server restart", sides));

    // 6. The held session against polling (issue #16): commands while
    // polling, then the agent again with EDGE_SESSION=on: idle
    // keepalives, commands, the churn trace; then polling again.
    let session = if options.commands > 0 {
        let target = "shop_web_1";
        b.say("commands, polling");
        let polling_commands = b.commands(&agent_log, options.commands, target).await?;
        let lost0 = log_count(&agent_log, &["no keepalive within", "the session closed"]);
        agent.stop();
        agent =
            AgentProc::start(&options.agent, &run.netns, &edge_key, &agent_data, &run.docker_host(), &agent_log, true)?;
        let env = b.wait_mode("session", limit).await?;
        let keepalive_s = env["keepalive_s"].as_u64().unwrap_or(0);
        b.say(format!("holding a session, keepalive {keepalive_s} s"));
        // Idle keepalives: a held poll and its empty answer each.
        let keepalives = n.min(20);
        let t0 = b.mark(Class::Tern).await?;
        b.wait_polls(Class::Tern, t0.polls + keepalives, limit + interval * 3 * keepalives as u32).await?;
        let t1 = b.mark(Class::Tern).await?;
        let idle = Side::new(&t0, &t1, b.cycles(Class::Tern, &t0, &t1));
        b.say(format!("session idle: {} B a keepalive", idle.per_poll()));
        // The rest with the ping interval off: the keepalive is the agent's
        // own, minutes as in the field, not the run's interval.
        let path = format!("/api/environments/{}/intervals", b.api.env);
        let (i, body) = (profile.interval, |ping| serde_json::json!({"ping": ping, "snapshot": i, "command": i}));
        let (status, v) = b.api.call(hyper::Method::PUT, &path, Some(body(0))).await?;
        if status != 200 {
            bail!("setting the ping interval off: {status} {v}");
        }
        let held_s = {
            let deadline = Instant::now() + limit;
            loop {
                let (_, v) = b.api.call(hyper::Method::GET, &format!("/api/environments/{}", b.api.env), None).await?;
                let k = v["keepalive_s"].as_u64().unwrap_or(0);
                if k > u64::from(i) * 4 {
                    break k;
                }
                if Instant::now() > deadline {
                    bail!("the keepalive did not grow with the ping interval off: {v}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        b.say(format!("commands, session (keepalive {held_s} s)"));
        let session_commands = b.commands(&agent_log, options.commands, target).await?;
        // The churn trace again. It removed the fixture's volume `scratch`:
        // made again first, outside the measurement.
        run.docker(&["volume", "create", "scratch"]).context("volume create scratch")?;
        b.converge(limit).await?;
        let mut churn_ms = Vec::new();
        let t0 = b.mark(Class::Tern).await?;
        for (what, args) in &events_of_trace {
            b.mark(Class::Tern).await?;
            run.docker(args).with_context(|| format!("churn event {what} (session)"))?;
            match b.converge(limit).await? {
                Some(d) => churn_ms.push(d.as_millis() as u64),
                None => latency.missed.push(format!("{what} (session)")),
            }
        }
        let t1 = b.mark(Class::Tern).await?;
        let churn = Side::new(&t0, &t1, Vec::new());
        b.say(format!("session churn: {} B", churn.bytes()));
        let reconnects = log_count(&agent_log, &["no keepalive within", "the session closed"]) - lost0;
        let (status, v) = b.api.call(hyper::Method::PUT, &path, Some(body(i))).await?;
        if status != 200 {
            bail!("setting the ping interval back: {status} {v}");
        }
        agent.stop();
        agent = AgentProc::start(
            &options.agent,
            &run.netns,
            &edge_key,
            &agent_data,
            &run.docker_host(),
            &agent_log,
            false,
        )?;
        b.wait_mode("polling", limit).await?;
        Some(SessionFigures {
            keepalive_s,
            held_s,
            idle,
            churn,
            churn_ms,
            polling_commands,
            session_commands,
            reconnects,
        })
    } else {
        None
    };

    // 7. Idle polls, every connection closed between polls. The server
    // restarts with the short idle timeout (not measured), then settles.
    if !options.skip_new_connection {
        server.stop();
        server = ServerProc::start(
            &options.tern,
            &server_data,
            &format!("{host_ip}:{port}"),
            &host_ip,
            Some(profile.close_after),
            &server_log,
        )?;
        sink.set_idle(profile.close_after);
        let p = b.polls(Class::Tern).await?;
        b.wait_polls(Class::Tern, p + 2, limit).await?;
        let (t0, b0) = (b.mark(Class::Tern).await?, b.mark(Class::Baseline).await?);
        b.wait_polls(Class::Tern, t0.polls + n, limit + (interval * 2 + Duration::from_secs(5)) * n as u32).await?;
        let t1 = b.mark(Class::Tern).await?;
        b.wait_polls(Class::Baseline, b0.polls + n, limit + (interval * 2 + Duration::from_secs(5)) * n as u32).await?;
        let b1 = b.mark(Class::Baseline).await?;
        let (tc, bc) = (b.cycles(Class::Tern, &t0, &t1), b.cycles(Class::Baseline, &b0, &b1));
        scenarios.push(Scenario {
            key: "idle_new_connection".into(),
            name: format!("{n} idle polls, server closes every connection"),
            tern: Side::new(&t0, &t1, tc),
            baseline: Side::new(&b0, &b1, bc),
        });
    }

    // The devices' own counters against the forwarder's, everything quiet.
    agent.stop();
    drop(b.baseline.take());
    tokio::time::sleep(profile.quiet + Duration::from_millis(200)).await;
    let totals = b.link.totals();
    let host = run.device_counters(false)?;
    let agent_side = run.device_counters(true)?;
    let crosscheck = CrossCheck {
        up_bytes: (totals.up.bytes, agent_side[2]),
        down_bytes: (totals.down.bytes, host[2]),
        up_packets: (totals.up.packets, agent_side[3]),
        down_packets: (totals.down.packets, host[3]),
        other_packets: b.link.counts(Class::Other).packets(),
    };
    server.stop();
    drop(sink);
    let events = events.iter().map(|(d, _)| (*d).to_owned()).collect();
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    Ok(Report {
        profile: profile.clone(),
        machine: machine(),
        date,
        idle_polls: n,
        host: host_desc,
        scenarios,
        events,
        latency,
        agent: cost,
        baseline_body_gap,
        baseline_body_interval,
        baseline_body_gap_s: gap,
        session,
        crosscheck,
        setup_s,
        total_s: start.elapsed().as_secs_f64(),
    })
}
