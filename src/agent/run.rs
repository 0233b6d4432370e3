//! The agent's poll loop: scheduler, engine, sync session, journal and
//! transport put together.
//!
//! ```text
//!   wake at the scheduler's next time (or when a command finishes)
//!   -> what is due? (ping / snapshot / command, coalesced)
//!   -> snapshot due: re-read the engine if an event said it changed (or the
//!      safety re-read is due), diff against the acknowledged base
//!   -> one request: delta, every unacknowledged result, commands_seen
//!   -> reply: new base, results acknowledged, new commands (journaled
//!      before they run), new intervals
//!   -> failure: backoff with full jitter, the timers stay due
//! ```
//!
//! The engine and the transport are traits, so the loop runs against the
//! real Docker engine and HTTPS client in production and against fakes in
//! unit tests, which drive it on tokio's paused clock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::health::Recorder;
use super::journal::Ledger;
use super::store::{Meta, Store, StoreError, StoredJobRun, StoredResult};
use crate::auth::{CounterReservation, Secret, open_reply, seal_request};
use crate::sync::State;
use crate::sync::schedule::{BackoffPolicy, Due, Intervals, Scheduler};
use crate::sync::session::AgentSync;
use crate::wire::codec::{Codec, Limits};
use crate::wire::poll::{
    self, Action, AgentInfo, Command, CommandResult, PollReply, PollRequest, RefusalCode, Refused, ResultStatus,
};

/// The Docker engine as the loop sees it.
pub trait Engine: Send + Sync + 'static {
    /// Reads the whole canonical state.
    fn state(&self) -> impl Future<Output = Result<State, String>> + Send;
    /// Runs one command's action; returns what it printed (logs), or the
    /// error text the operator sees.
    fn run(&self, action: &Action) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
    /// What became of a command a restart interrupted, which started at
    /// `started_at` (seconds since the epoch): see [`super::journal`].
    fn settle(&self, action: &Action, started_at: i64) -> impl Future<Output = super::journal::Settled> + Send {
        let _ = (action, started_at);
        async { super::journal::Settled::Unknown }
    }
    /// Keeps the private registries' credentials a reply carried, in
    /// memory, for its commands' pulls.
    fn registries(&self, auths: &[poll::RegistryAuth]) {
        let _ = auths;
    }
}

/// How a poll reaches the server.
pub trait Transport: Send {
    /// Sends one sealed poll; returns the HTTP status and the reply body.
    fn send_poll(&mut self, wire: Vec<u8>) -> impl Future<Output = Result<(u16, Bytes), String>> + Send;

    /// Opens a held session if none is open: `Ok(true)` when one is,
    /// `Ok(false)` when the server does not hold sessions (or none is
    /// offered: EDGE_SESSION=off).
    fn open_session(&mut self) -> impl Future<Output = Result<bool, String>> + Send {
        async { Ok(false) }
    }

    /// Sends a held poll on the open session; its reply comes through
    /// [`Self::held_reply`].
    fn send_held(&mut self, wire: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send {
        let _ = wire;
        async { Err("no session".to_owned()) }
    }

    /// The held poll's reply (pending for ever without a session).
    /// Cancel-safe.
    fn held_reply(&mut self) -> impl Future<Output = Result<Bytes, String>> + Send {
        std::future::pending()
    }

    /// Drops the session (found dead): the next poll reconnects.
    fn drop_session(&mut self) {}
}

impl Transport for super::client::Client {
    async fn send_poll(&mut self, wire: Vec<u8>) -> Result<(u16, Bytes), String> {
        match self.ensure_session().await {
            // An empty frame: the server did not authenticate the poll
            // (`POST /q` answers that 401).
            Ok(true) => {
                return self
                    .session_poll(&wire)
                    .await
                    .map(|b| if b.is_empty() { (401, b) } else { (200, b) })
                    .map_err(|e| e.to_string());
            }
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.post(crate::wire::POLL_PATH, wire).await.map_err(|e| e.to_string())
    }

    async fn open_session(&mut self) -> Result<bool, String> {
        self.ensure_session().await.map_err(|e| e.to_string())
    }

    async fn send_held(&mut self, wire: Vec<u8>) -> Result<(), String> {
        self.session_send(&wire).await.map_err(|e| e.to_string())
    }

    async fn held_reply(&mut self) -> Result<Bytes, String> {
        super::client::Client::held_reply(self).await.map_err(|e| e.to_string())
    }

    fn drop_session(&mut self) {
        self.disconnect();
    }
}

/// The held session's side of the loop (see `server::http::session`).
#[derive(Debug)]
struct SessionState {
    learner: super::keepalive::Learner,
    /// The held poll: its counter, when it is lost if unanswered, the
    /// period it asked for and when it was sent.
    held: Option<HeldPoll>,
    /// Polling instead, until then.
    fallback_until: Option<Instant>,
    /// No held poll before then: the last one's commands could not be
    /// recorded (a full disk), and the next would bring them straight back.
    pause_until: Option<Instant>,
    /// The fallback reason the server last heard ("" : none).
    told: String,
    /// Why the agent polls now ("" while it holds a session).
    why: String,
    /// When the server closed the session lately (for the fallback rule).
    breaks: std::collections::VecDeque<Instant>,
    /// When keepalives at the learner's floor were lost lately.
    floor_losses: std::collections::VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct HeldPoll {
    counter: u64,
    deadline: Instant,
    period: Duration,
    sent_at: Instant,
    seen: u64,
    /// It reported the intervals in force (they changed since the last
    /// report): the server stops sending them once it has them.
    intervals: bool,
}

/// Session breaks within [`BREAK_WINDOW`] that make the agent fall back to
/// polling for [`FALLBACK_FOR`].
const BREAKS_TO_FALL_BACK: usize = 3;
const BREAK_WINDOW: Duration = Duration::from_secs(600);
/// How long the agent polls after it fell back, before it tries a session
/// again.
pub const FALLBACK_FOR: Duration = Duration::from_secs(3600);

/// Who the agent is and how it behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The environment id from the join token.
    pub environment: u64,
    /// The MAC key: the environment secret, mixed with AGENT_SECRET when set.
    pub key: Secret,
    /// The EDGE_ID.
    pub edge_id: String,
    /// Reported to the server on first contact.
    pub version: String,
    /// Re-read the whole engine at least this often, even without events.
    pub reread: Duration,
    /// Backoff while the server cannot be reached.
    pub backoff: BackoffPolicy,
    /// Poll counters reserved on disk per write.
    pub counter_block: u64,
    /// A poll that takes longer than this failed (EDGE_POLL_TIMEOUT).
    pub request_timeout: Duration,
    /// After a command finishes, poll this soon to report it.
    pub result_delay: Duration,
    /// At most this many results in one poll.
    pub results_per_poll: usize,
    /// Hold a session (EDGE_SESSION, on by default) rather than poll.
    pub session: bool,
    /// The first keepalive period the session tries (EDGE_SESSION_KEEPALIVE).
    pub keepalive_start: Duration,
    /// The join token's [`crate::auth::JoinToken::key_id`]: the persisted
    /// counter belongs to it.
    pub key_id: String,
}

impl Settings {
    /// Production defaults for an environment.
    pub fn new(environment: u64, key: Secret, edge_id: String) -> Self {
        let key_id =
            crate::auth::JoinToken { url: String::new(), environment, secret: key.clone(), cert_sha256: [0; 32] }
                .key_id();
        Self {
            key_id,
            environment,
            key,
            edge_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // Events tell us about changes; this only guards against a
            // missed event, so it can be rare.
            reread: Duration::from_secs(600),
            backoff: BackoffPolicy::default(),
            // One fsync per 100 polls; a restart skips at most 100 counters.
            counter_block: 100,
            request_timeout: super::config::DEFAULT_POLL_TIMEOUT,
            // Long enough for the state change a command causes to show in
            // the same poll as its result.
            result_delay: Duration::from_secs(2),
            results_per_poll: 100,
            session: false,
            keepalive_start: super::keepalive::DEFAULT_START,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory failed; continuing could run a command twice.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The codec could not be set up.
    #[error("codec: {0}")]
    Codec(#[from] crate::wire::codec::CodecError),
}

/// What one poll attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was due.
    Idle,
    /// The server answered.
    Sent {
        /// Bytes of the sealed request body.
        up: usize,
        /// Bytes of the reply body.
        down: usize,
        /// The server asked for the whole state.
        resync: bool,
        /// New commands received.
        commands: usize,
    },
    /// The poll failed; the next attempt is after a backoff.
    Failed {
        /// Why.
        why: String,
        /// Delay before the retry.
        retry_in: Duration,
    },
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Polls answered.
    pub polls: u64,
    /// Polls that failed.
    pub failures: u64,
    /// Request body bytes sent in answered polls.
    pub bytes_up: u64,
    /// Reply body bytes received.
    pub bytes_down: u64,
    /// Full engine reads.
    pub reads: u64,
}

/// The running agent.
pub struct Agent<E: Engine, T: Transport> {
    settings: Settings,
    engine: Arc<E>,
    transport: T,
    store: Store,
    codec: Codec,
    sync: AgentSync,
    counters: CounterReservation,
    meta: Meta,
    /// The command journal, shared with the command worker.
    ledger: Ledger,
    /// Commands received before a restart that never started: they run
    /// once a poll is accepted, which shows the journal is this agent's
    /// latest (a data directory restored from an older copy is refused as
    /// a replay first, and its commands are then not run again: they may
    /// have run since the copy was made).
    held: Vec<Command>,
    /// Results and job runs a poll carries at most: cut down while the
    /// server refuses a poll as too large, so one bad item cannot block the
    /// others for ever.
    batch: usize,
    sched: Scheduler,
    epoch: Instant,
    current: Option<State>,
    changed: Arc<AtomicBool>,
    last_read: Option<Duration>,
    /// The server has our AgentInfo since this start.
    named: bool,
    /// The `commands_seen` the server has from us.
    seen_reported: u64,
    /// The server has the intervals we run with.
    intervals_reported: bool,
    exec: mpsc::UnboundedSender<Command>,
    /// Ids of commands the worker finished (or moved a step on).
    finished: mpsc::UnboundedReceiver<u64>,
    job_runs: Option<mpsc::UnboundedReceiver<poll::JobRun>>,
    /// The health record (`tern agent health`).
    health: Recorder,
    /// The held session, when EDGE_SESSION is on.
    session: Option<SessionState>,
    /// Counters.
    pub stats: Stats,
}

impl<E: Engine, T: Transport> std::fmt::Debug for Agent<E, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("edge_id", &self.settings.edge_id).field("stats", &self.stats).finish()
    }
}

pub(super) use crate::clock::unix_now as now_unix;

pub(super) fn status_text(s: ResultStatus) -> &'static str {
    match s {
        ResultStatus::Ok => "ok",
        ResultStatus::Failed => "failed",
        ResultStatus::Rejected => "rejected",
        ResultStatus::Progress => "progress",
    }
}

fn status_of(text: &str) -> ResultStatus {
    match text {
        "ok" => ResultStatus::Ok,
        "rejected" => ResultStatus::Rejected,
        "progress" => ResultStatus::Progress,
        _ => ResultStatus::Failed,
    }
}

/// At most this many bytes of results (error texts and outputs) in one poll.
const RESULT_BYTES_PER_POLL: usize = 512 * 1024;

/// Error texts are kept short: they travel on a metered link.
pub(super) const MAX_ERROR: usize = 500;

/// `text` cut to at most `max` bytes (on a character boundary), with `…`
/// when it was cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    let mut out = text.to_owned();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn interval_array(i: Intervals) -> [u32; 3] {
    let s = |d: Option<Duration>| d.map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32);
    [s(i.ping), s(i.snapshot), s(i.command)]
}

impl<E: Engine, T: Transport> Agent<E, T> {
    /// Opens the agent's state from `store`. Commands that were running when
    /// the agent last stopped are reported as failed (they may or may not
    /// have taken effect), never run again. `changed` is set by whoever
    /// follows the engine's events.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn new(
        settings: Settings,
        engine: E,
        transport: T,
        store: Store,
        changed: Arc<AtomicBool>,
    ) -> Result<Self, RunError> {
        let mut meta = store.meta()?;
        if meta.key_id.as_deref() != Some(settings.key_id.as_str()) {
            if meta.key_id.is_some() {
                // A new join token: the server's counter for it starts at 0.
                tracing::info!("a new EDGE_KEY: the poll counter starts again");
                meta.counter_end = 0;
            }
            meta.key_id = Some(settings.key_id.clone());
            if let Err(e) = store.save_meta(&meta) {
                tracing::warn!("{e}: the poll counter's token is not on disk yet");
            }
        }
        let (seq, base) = store.base()?.unwrap_or_default();
        let ledger = Ledger::new(store.journal()?, store.clone());
        let (interrupted, rerun) = super::journal::recover(&ledger, now_unix());
        let intervals = meta.intervals.map_or_else(Intervals::default, |[p, s, c]| Intervals::from_secs(p, s, c));
        let seed = fastrand::u64(..);
        let sched = Scheduler::new(Duration::ZERO, intervals, settings.backoff, seed);
        let counters = CounterReservation::resume(meta.counter_end, settings.counter_block);
        let engine = Arc::new(engine);
        let (exec, queue) = mpsc::unbounded_channel::<Command>();
        let (done, finished) = mpsc::unbounded_channel();
        tokio::spawn(super::journal::work(engine.clone(), ledger.clone(), interrupted, queue, done));
        Ok(Self {
            engine,
            transport,
            codec: Codec::new(Limits::default())?,
            sync: AgentSync::restore(seq, base),
            counters,
            meta,
            ledger,
            held: rerun,
            batch: settings.results_per_poll,
            sched,
            epoch: Instant::now(),
            current: None,
            changed,
            last_read: None,
            named: false,
            seen_reported: 0,
            intervals_reported: false,
            exec,
            finished,
            job_runs: None,
            session: settings.session.then(|| {
                let max = intervals.ping.unwrap_or(super::keepalive::MAX_PERIOD);
                SessionState {
                    learner: super::keepalive::Learner::new(settings.keepalive_start, max, Some(store.dir())),
                    held: None,
                    fallback_until: None,
                    pause_until: None,
                    told: String::new(),
                    why: String::new(),
                    breaks: std::collections::VecDeque::new(),
                    floor_losses: std::collections::VecDeque::new(),
                }
            }),
            health: Recorder::start(store.dir(), now_unix()),
            stats: Stats::default(),
            store,
            settings,
        })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The acknowledged base's sequence number.
    pub fn acked(&self) -> u64 {
        self.sync.base().0
    }

    /// Where the runs of scheduled jobs come from (the job scheduler):
    /// each is journaled, sent in the next poll, and dropped once the
    /// server acknowledges it.
    pub fn set_job_runs(&mut self, runs: mpsc::UnboundedReceiver<poll::JobRun>) {
        self.job_runs = Some(runs);
    }

    /// The transport (to inspect its counters, or drop its connection).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Polls now with a snapshot and a command check, whatever the timers
    /// say (a test, or an operator's "check in now").
    ///
    /// # Errors
    /// When the data directory fails.
    pub async fn poll_now(&mut self) -> Result<Outcome, RunError> {
        self.sched.hurry(self.now());
        self.poll_once().await
    }

    /// The intervals in force.
    pub fn intervals(&self) -> Intervals {
        self.sched.intervals()
    }

    /// Runs until `shutdown` completes.
    ///
    /// # Errors
    /// Only when the data directory fails: running on could run a command
    /// twice or lose a result. Network and engine failures are retried.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        loop {
            self.hold().await?;
            let wake = self.sched.next_wake().map(|d| self.epoch + d);
            let held = self.session.as_ref().and_then(|s| s.held);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                reply = self.transport.held_reply(), if held.is_some() => self.on_held(reply)?,
                () = tokio::time::sleep_until(held.map_or_else(Instant::now, |h| h.deadline)), if held.is_some() => {
                    self.hold_lost();
                }
                Some(id) = self.finished.recv() => self.finished(id),
                Some(run) = async {
                    match self.job_runs.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.job_ran(run)?,
                () = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => match self.poll_once().await? {
                    Outcome::Failed { why, retry_in } => {
                        tracing::warn!("poll failed: {why}; retrying in {:.1} s", retry_in.as_secs_f64());
                    }
                    Outcome::Sent { up, down, resync, commands } => {
                        tracing::debug!(up, down, resync, commands, "poll");
                    }
                    Outcome::Idle => {}
                },
            }
        }
    }

    /// Sends the held poll when a session is wanted and none is held:
    /// after first contact, not while backing off or polling after a
    /// fallback.
    async fn hold(&mut self) -> Result<(), RunError> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if s.held.is_some() || !self.named || self.sched.backing_off() {
            return Ok(());
        }
        if let Some(until) = s.fallback_until {
            if Instant::now() < until {
                return Ok(());
            }
            s.fallback_until = None;
            tracing::info!("trying a held session again");
        }
        if let Some(until) = s.pause_until {
            if Instant::now() < until {
                return Ok(());
            }
            s.pause_until = None;
        }
        let timeout = self.settings.request_timeout;
        let opened = tokio::time::timeout(timeout, self.transport.open_session()).await;
        match opened {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.fall_back("the server does not hold sessions (it is older than this agent)");
                return Ok(());
            }
            Ok(Err(e)) => {
                self.note_failure(&format!("session: {e}"));
                return Ok(());
            }
            Err(_) => {
                self.transport.drop_session();
                self.note_failure(&format!("session: no connection within {} s", timeout.as_secs()));
                return Ok(());
            }
        }
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        let period = s.learner.period();
        let seen = self.ledger.read(|j| j.seen);
        let fallback = if s.told.is_empty() { String::new() } else { "-".to_owned() };
        // Intervals the server sent and the agent has not confirmed: until
        // it does, the server sends them again, answering at once every
        // held poll that leaves them out.
        let intervals = (!self.intervals_reported).then(|| {
            let [ping, snapshot, command] = interval_array(self.sched.intervals());
            poll::Intervals { ping, snapshot, command }
        });
        let request = PollRequest {
            base: self.sync.base().0,
            hold: u32::try_from(period.as_secs()).unwrap_or(u32::MAX),
            commands_seen: if seen > self.seen_reported { seen } else { 0 },
            fallback,
            intervals,
            ..PollRequest::default()
        };
        let (counter, wire) = self.seal(&request)?;
        match tokio::time::timeout(timeout, self.transport.send_held(wire)).await {
            Ok(Ok(())) => {
                let now = Instant::now();
                // Dead if unanswered a timeout after the hold ends.
                let grace = self.settings.request_timeout.min(Duration::from_secs(30));
                let s = self.session.as_mut().expect("checked above");
                s.held = Some(HeldPoll {
                    counter,
                    deadline: now + period + grace,
                    period,
                    sent_at: now,
                    seen,
                    intervals: intervals.is_some(),
                });
                if !s.why.is_empty() {
                    tracing::info!("holding a session: keepalive {} s", period.as_secs());
                    s.why.clear();
                }
                self.health.mode(&format!("session, keepalive {} s", period.as_secs()));
            }
            Ok(Err(e)) => {
                self.transport.drop_session();
                self.note_failure(&format!("session: {e}"));
            }
            Err(_) => {
                self.transport.drop_session();
                self.note_failure("session: the held poll could not be sent in time");
            }
        }
        Ok(())
    }

    /// The held poll's reply came (or the session closed first).
    fn on_held(&mut self, reply: Result<Bytes, String>) -> Result<(), RunError> {
        let Some(held) = self.session.as_mut().and_then(|s| s.held.take()) else { return Ok(()) };
        let bytes = match reply {
            Ok(b) => b,
            Err(e) => {
                // Closed by the server (a restart, an eviction): not the
                // NAT, which closes nothing; reconnect.
                self.session_broke(&format!("the session closed: {e}"));
                self.note_failure(&e);
                return Ok(());
            }
        };
        let reply = match self.open(held.counter, &bytes) {
            Ok(r) => r,
            Err(why) => {
                self.transport.drop_session();
                self.note_failure(&why);
                return Ok(());
            }
        };
        if let Some(refused) = &reply.refused {
            let why = self.refused(0, refused, &[]);
            self.transport.drop_session();
            self.note_failure(&why);
            return Ok(());
        }
        // The whole hold went by: the path kept the connection that long.
        let lasted = held.sent_at.elapsed() + Duration::from_millis(500) >= held.period;
        if lasted && let Some(s) = self.session.as_mut() {
            let before = s.learner.period();
            s.learner.survived();
            if s.learner.period() != before {
                tracing::debug!("keepalive {} s survived; next {} s", before.as_secs(), s.learner.period().as_secs());
                self.health.mode(&format!("session, keepalive {} s", s.learner.period().as_secs()));
            }
        }
        self.seen_reported = self.seen_reported.max(held.seen);
        if held.intervals {
            self.intervals_reported = true;
        }
        tracing::debug!(
            after_ms = held.sent_at.elapsed().as_millis() as u64,
            commands = reply.commands.len(),
            resync = reply.resync,
            intervals = reply.intervals.is_some(),
            "held poll answered"
        );
        let seen = self.ledger.read(|j| j.seen);
        let offered = reply.commands.iter().any(|c| c.id > seen) || reply.unknown_commands.iter().any(|&id| id > seen);
        let commands = self.take_reply(&reply, &[])?;
        if commands > 0 {
            tracing::debug!(commands, "commands pushed on the session");
        } else if offered {
            // Not taken (the journal cannot be written): the server would
            // answer the next held poll with them at once, round after
            // round. Polls at the command interval try again meanwhile.
            let wait = self.sched.intervals().command.unwrap_or(Duration::from_secs(60));
            if let Some(s) = self.session.as_mut() {
                s.pause_until = Some(Instant::now() + wait);
            }
        }
        if reply.resync {
            self.sched.hurry(self.now());
        }
        if let Some(i) = reply.intervals {
            let new = Intervals::from_secs(i.ping, i.snapshot, i.command);
            self.sched.on_success(self.now(), Due::default(), Some(new));
            self.apply_intervals();
        }
        self.health.success(now_unix());
        Ok(())
    }

    /// The held poll's reply did not come within its hold and a timeout:
    /// the path dropped the connection silently (a NAT that forgot it).
    fn hold_lost(&mut self) {
        let Some(s) = self.session.as_mut() else { return };
        let Some(held) = s.held.take() else { return };
        s.learner.failed();
        tracing::info!(
            "no keepalive within {} s: the path dropped the connection; reconnecting, keepalive now {} s",
            held.period.as_secs(),
            s.learner.period().as_secs()
        );
        self.transport.drop_session();
        // Losing a keepalive is how the learner finds the NAT's timeout; a
        // path that loses even the shortest ones cannot hold a session.
        let now = Instant::now();
        if s.learner.at_floor() {
            s.floor_losses.push_back(now);
        }
        while s.floor_losses.front().is_some_and(|t| now.duration_since(*t) > BREAK_WINDOW) {
            s.floor_losses.pop_front();
        }
        if s.floor_losses.len() >= BREAKS_TO_FALL_BACK {
            s.floor_losses.clear();
            let text = format!(
                "{BREAKS_TO_FALL_BACK} keepalives of {} s or less lost in {} minutes",
                s.learner.period().as_secs(),
                BREAK_WINDOW.as_secs() / 60
            );
            self.fall_back(&text);
        }
    }

    /// The session broke: reconnect, unless it keeps breaking, then poll
    /// for a while.
    fn session_broke(&mut self, why: &str) {
        self.transport.drop_session();
        let Some(s) = self.session.as_mut() else { return };
        s.held = None;
        let now = Instant::now();
        s.breaks.push_back(now);
        while s.breaks.front().is_some_and(|t| now.duration_since(*t) > BREAK_WINDOW) {
            s.breaks.pop_front();
        }
        if s.breaks.len() >= BREAKS_TO_FALL_BACK {
            s.breaks.clear();
            let text = format!(
                "the session broke {BREAKS_TO_FALL_BACK} times in {} minutes ({why})",
                BREAK_WINDOW.as_secs() / 60
            );
            self.fall_back(&text);
        }
    }

    /// Polls at the intervals for [`FALLBACK_FOR`], saying why.
    fn fall_back(&mut self, why: &str) {
        let Some(s) = self.session.as_mut() else { return };
        tracing::warn!("polling instead of holding a session for {} min: {why}", FALLBACK_FOR.as_secs() / 60);
        s.fallback_until = Some(Instant::now() + FALLBACK_FOR);
        s.held = None;
        s.why = why.to_owned();
        self.health.mode(&format!("polling: {why}"));
        self.transport.drop_session();
    }

    /// A session step failed: back off as a failed poll does.
    fn note_failure(&mut self, why: &str) {
        self.stats.failures += 1;
        self.health.failure(why);
        let retry_in = self.sched.on_failure(self.now());
        tracing::warn!("{why}; retrying in {:.1} s", retry_in.as_secs_f64());
    }

    /// Keeps the intervals in force on disk and caps the keepalive by the
    /// ping interval.
    fn apply_intervals(&mut self) {
        let now = interval_array(self.sched.intervals());
        if self.meta.intervals != Some(now) {
            tracing::info!("intervals from the server: {:?}", self.sched.intervals());
            self.meta.intervals = Some(now);
            if let Err(e) = self.store.save_meta(&self.meta) {
                tracing::warn!("{e}: the new intervals are not on disk");
            }
            self.intervals_reported = false;
        }
        let ping = self.sched.intervals().ping;
        if let Some(s) = self.session.as_mut() {
            s.learner.set_max(ping.unwrap_or(super::keepalive::MAX_PERIOD));
        }
    }

    /// A command finished (or moved a step on): poll soon to say so.
    fn finished(&mut self, _id: u64) {
        self.sched.hurry(self.now() + self.settings.result_delay);
    }

    fn job_ran(&mut self, run: poll::JobRun) -> Result<(), RunError> {
        tracing::info!(job = run.job, run = run.run, exit_code = run.exit_code, "job ran");
        self.ledger.record(|j| {
            j.job_runs.push(StoredJobRun::of(&run, clip(&run.error, MAX_ERROR)));
            // Offline for days with a frequent job: keep the newest runs
            // only, so the journal (rewritten on every change) stays bounded.
            if j.job_runs.len() > MAX_PENDING_JOB_RUNS {
                let drop = j.job_runs.len() - MAX_PENDING_JOB_RUNS;
                tracing::warn!(dropped = drop, "too many job runs waiting for the server: the oldest are dropped");
                j.job_runs.drain(..drop);
            }
        });
        self.sched.hurry(self.now() + self.settings.result_delay);
        Ok(())
    }

    /// Reads the engine when the state may have changed.
    async fn refresh(&mut self, now: Duration) -> Result<(), String> {
        let stale = self.last_read.is_none_or(|t| now.saturating_sub(t) >= self.settings.reread);
        // Clear the flag before reading: an event during the read marks the
        // next snapshot dirty again.
        if self.changed.swap(false, Ordering::AcqRel) || stale || self.current.is_none() {
            match self.engine.state().await {
                Ok(s) => {
                    self.current = Some(s);
                    self.last_read = Some(now);
                    self.stats.reads += 1;
                }
                Err(e) => {
                    self.changed.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes one poll if one is due now.
    ///
    /// # Errors
    /// When the data directory fails.
    pub async fn poll_once(&mut self) -> Result<Outcome, RunError> {
        let now = self.now();
        // The timers that fell due: all of them are served by this poll,
        // whatever it can carry.
        let asked = self.sched.due(now);
        if asked.is_empty() {
            return Ok(Outcome::Idle);
        }
        let mut due = asked;
        if due.snapshot
            && let Err(e) = self.refresh(now).await
        {
            // The engine is down: still report results and take commands,
            // but say nothing about the state. The snapshot timer is served
            // all the same (the next snapshot is at the next interval, and
            // re-reads the engine): kept due, it made the agent poll again
            // at once, eight times a second while the engine was down.
            tracing::warn!("cannot read the docker engine: {e}");
            due = Due { snapshot: false, ..due };
            if due.is_empty() {
                due.ping = true;
            }
        }
        // A journal write that failed (a full disk) is tried again.
        self.ledger.flush();
        let current = self.current.clone().unwrap_or_default();
        let out = self.sync.prepare(&current, due.snapshot && self.current.is_some());
        // Results ride in batches, bounded in count and in bytes (logs can be
        // large); the rest follow in the next poll.
        let batch = self.batch;
        let (carried, job_runs, journal_seen) = self.ledger.read(|j| {
            let mut budget = RESULT_BYTES_PER_POLL;
            let carried: Vec<StoredResult> = j
                .results
                .values()
                .take(batch)
                .take_while(|r| {
                    let size = r.output.len() + r.error.len() + 16;
                    let fits = size <= budget || budget == RESULT_BYTES_PER_POLL;
                    budget = budget.saturating_sub(size);
                    fits
                })
                .cloned()
                .collect();
            let job_runs: Vec<poll::JobRun> = j
                .job_runs
                .iter()
                .take(batch)
                .take_while(|r| {
                    let size = r.output.len() + r.error.len() + 32;
                    let fits = size <= budget || budget == RESULT_BYTES_PER_POLL;
                    budget = budget.saturating_sub(size);
                    fits
                })
                .map(poll::JobRun::from)
                .collect();
            (carried, job_runs, j.seen)
        });
        let results: Vec<CommandResult> = carried
            .iter()
            .map(|r| CommandResult {
                id: r.id,
                status: status_of(&r.status),
                error: r.error.clone(),
                finished_at: r.finished_at,
                output: r.output.clone().into_bytes(),
                phase: r.phase.clone(),
            })
            .collect();
        let sent_intervals = (!self.intervals_reported).then(|| {
            let [ping, snapshot, command] = interval_array(self.sched.intervals());
            poll::Intervals { ping, snapshot, command }
        });
        let seen = if journal_seen > self.seen_reported { journal_seen } else { 0 };
        let request = PollRequest {
            base: out.base,
            delta: out.delta.clone(),
            results,
            agent: (!self.named)
                .then(|| AgentInfo { version: self.settings.version.clone(), edge_id: self.settings.edge_id.clone() }),
            commands_seen: seen,
            intervals: sent_intervals,
            job_runs,
            hold: 0,
            fallback: self.fallback_note(),
        };
        // In a held session, a poll with nothing to say is not sent: the
        // held poll is the heartbeat, and it fetches the commands.
        if self.session.as_ref().is_some_and(|s| s.held.is_some())
            && request.fallback.is_empty()
            && request.results.is_empty()
            && request.job_runs.is_empty()
            && request.agent.is_none()
            && request.intervals.is_none()
            && request.delta.as_ref().is_none_or(|d| d.is_empty() && d.root().is_empty())
        {
            self.sched.on_success(self.now(), asked, None);
            return Ok(Outcome::Idle);
        }
        let (counter, wire) = self.seal(&request)?;
        let up = wire.len();
        let sent = tokio::time::timeout(self.settings.request_timeout, self.transport.send_poll(wire)).await;
        let reply = match sent {
            Err(_) => Err(format!("no reply within {} s", self.settings.request_timeout.as_secs())),
            Ok(Err(e)) => Err(e),
            // 200 is also how a held session frames every reply: a sealed
            // refusal in it is as authentic as one with an HTTP status.
            Ok(Ok((200, bytes))) => match self.open(counter, &bytes) {
                Ok(PollReply { refused: Some(refused), .. }) => Err(self.refused(0, &refused, &carried)),
                Ok(r) => Ok((r, bytes.len())),
                Err(e) => Err(e),
            },
            Ok(Ok((status, bytes))) => match self.open(counter, &bytes) {
                // A sealed refusal: it comes from our server, so it can be
                // acted on.
                Ok(PollReply { refused: Some(refused), .. }) => Err(self.refused(status, &refused, &carried)),
                // Anything else is text for the log, and is never acted on:
                // a machine in the middle (with EDGE_INSECURE_POLL=1) could
                // have written it.
                _ => Err(refusal(status, &bytes)),
            },
        };
        let (reply, down) = match reply {
            Ok(r) => r,
            Err(why) => {
                self.stats.failures += 1;
                self.health.failure(&why);
                let retry_in = self.sched.on_failure(self.now());
                if let Some(s) = self.session.as_mut() {
                    // A reply that may still come would be taken for the
                    // next poll's: a new connection instead.
                    s.held = None;
                    self.transport.drop_session();
                }
                return Ok(Outcome::Failed { why, retry_in });
            }
        };
        if let Some(s) = self.session.as_mut() {
            s.told.clone_from(&request.fallback);
            if s.told == "-" {
                s.told.clear();
            }
        }
        self.stats.polls += 1;
        self.stats.bytes_up += up as u64;
        self.stats.bytes_down += down as u64;
        self.named = true;
        self.seen_reported = self.seen_reported.max(seen);
        if sent_intervals.is_some() {
            self.intervals_reported = true;
        }
        let resync = reply.resync;
        if self.sync.on_reply(out, reply.acked, reply.resync) {
            let (seq, base) = self.sync.base();
            // Not on disk: after a restart the agent sends a delta against
            // an older base, and the server answers it (it keeps the one
            // before) or asks for the whole state.
            if let Err(e) = self.store.save_base(seq, base) {
                tracing::warn!("{e}: the acknowledged state is not on disk");
            }
        }
        self.batch = self.settings.results_per_poll;
        for c in std::mem::take(&mut self.held) {
            tracing::info!(command = c.id, action = %action_summary(&c.action), "a command received before the restart runs now");
            let _ = self.exec.send(c);
        }
        let commands = self.take_reply(&reply, &carried)?;
        let new_intervals = reply.intervals.map(|i| Intervals::from_secs(i.ping, i.snapshot, i.command));
        let before = self.sched.intervals();
        self.sched.on_success(self.now(), asked, new_intervals);
        if self.sched.intervals() != before {
            self.apply_intervals();
        }
        if resync {
            tracing::info!("the server asked for the whole state");
            self.sched.hurry(self.now());
        }
        let more = self.ledger.read(|j| !j.results.is_empty() || !j.job_runs.is_empty());
        if more && !(reply.results_acked.is_empty() && reply.job_runs_acked.is_empty()) {
            // More results than fit in one poll: send the rest soon.
            self.sched.hurry(self.now() + self.settings.result_delay);
        }
        self.health.success(now_unix());
        Ok(Outcome::Sent { up, down, resync, commands })
    }

    /// What a poll tells the server about the mode, when that changed:
    /// why the agent polls (it fell back, or EDGE_SESSION=off).
    fn fallback_note(&self) -> String {
        match &self.session {
            // Polling as configured (EDGE_SESSION=off): said in the first
            // poll, so a server that saw this agent hold a session before
            // its restart shows it polling.
            None if !self.named => "-".to_owned(),
            None => String::new(),
            Some(s) if !s.why.is_empty() && s.told != s.why => s.why.clone(),
            Some(_) => String::new(),
        }
    }

    /// Encodes a request and seals it with the next counter; returns both.
    fn seal(&mut self, request: &PollRequest) -> Result<(u64, Vec<u8>), RunError> {
        let body = self.codec.encode(&request.encode())?;
        let (counter, reserve) = self.counters.take();
        if let Some(end) = reserve {
            self.meta.counter_end = end;
            // Not on disk (a full disk): after a restart the agent would
            // reuse counters, the server would refuse the first poll as a
            // replay, sealed, and the agent would jump above: one poll lost,
            // nothing else. Better than not polling.
            if let Err(e) = self.store.save_meta(&self.meta) {
                tracing::warn!("{e}: the poll counter's reservation is not on disk");
            }
        }
        Ok((counter, seal_request(self.settings.environment, counter, &self.settings.key, &body)))
    }

    /// Opens, checks and decodes a reply.
    fn open(&mut self, counter: u64, wire: &[u8]) -> Result<PollReply, String> {
        let body = open_reply(counter, &self.settings.key, wire)
            .map_err(|e| format!("reply refused ({e}): not from our server, or altered on the way"))?;
        let bytes = self.codec.decode(body).map_err(|e| format!("reply: {e}"))?;
        PollReply::decode(&bytes).map_err(|e| format!("reply: {e}"))
    }

    /// Acts on an authentic refusal and says what it means, for the log.
    ///
    /// A replay refusal names the server's last accepted counter: ours is
    /// behind it because the data directory was lost or restored from a
    /// backup, so the counter jumps above it (never down) and the next
    /// poll, after the usual backoff, goes through.
    ///
    /// A poll refused as too large, or as a bad body, carried `sent`: the
    /// next polls carry fewer results and job runs, down to one, and a
    /// single one the server still refuses is given up (a result becomes a
    /// failure saying so), so one bad item cannot block the rest for ever.
    fn refused(&mut self, status: u16, refused: &Refused, sent: &[StoredResult]) -> String {
        match refused.code {
            RefusalCode::Replay => {
                let last = refused.last_counter;
                // The server keeps counters as SQL integers; leave room for
                // a few blocks above the hint.
                if last >= self.counters.next() && last < (i64::MAX as u64) / 2 {
                    tracing::warn!(
                        "the server has seen counter {last} already (data directory lost or restored?); jumping \
                         above it"
                    );
                    self.counters = CounterReservation::resume(last, self.settings.counter_block);
                    self.meta.counter_end = last;
                    if let Err(e) = self.store.save_meta(&self.meta) {
                        tracing::warn!("{e}: the poll counter's reservation is not on disk");
                    }
                    self.abandon_held();
                }
                format!("refused: replayed poll, the server's last counter is {last} (this agent's was behind)")
            }
            RefusalCode::BoundToAnother => format!(
                "refused: {} (another agent with this EDGE_KEY polls this environment; reset its binding on the \
                 server to move it here)",
                refused.detail
            ),
            RefusalCode::AgentSecret => {
                "refused: the server requires AGENT_SECRET and this agent has none (set AGENT_SECRET as on the \
                 server)"
                    .to_owned()
            }
            RefusalCode::BadBody | RefusalCode::TooLarge => {
                if self.batch > 1 {
                    self.batch = (self.batch / 4).max(1);
                } else {
                    self.give_up_first(sent, &refused.detail);
                }
                format!("refused{}: {}", via(status), refused.detail)
            }
            RefusalCode::Other => format!("refused{}: {}", via(status), refused.detail),
        }
    }

    /// The journal is older than the server's view of this agent (a data
    /// directory restored from a copy): the commands it holds as received
    /// and never started may have run since the copy; they are reported,
    /// not run.
    fn abandon_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let at = now_unix();
        self.ledger.record(|j| {
            for c in &held {
                tracing::warn!(command = c.id, "the data directory is older than the server's view: not run again");
                j.received.remove(&c.id);
                j.results.insert(
                    c.id,
                    super::journal::stored(
                        c.id,
                        ResultStatus::Failed,
                        "the agent's data directory was restored from an older copy; this command was not run \
                         again (it may have run since the copy was made)",
                        &[],
                        "",
                        at,
                    ),
                );
            }
        });
    }

    /// A poll of one result or job run that the server still refuses: the
    /// item is given up, so the others go on.
    fn give_up_first(&mut self, sent: &[StoredResult], why: &str) {
        let at = now_unix();
        self.ledger.record(|j| {
            if let Some(first) = sent.first()
                && j.results.get(&first.id) == Some(first)
            {
                tracing::error!(command = first.id, "the server refuses this result ({why}); reported as failed");
                let error = format!("its result could not be sent: {why}");
                j.results.insert(first.id, super::journal::stored(first.id, ResultStatus::Failed, &error, &[], "", at));
            } else if !j.job_runs.is_empty() {
                let r = j.job_runs.remove(0);
                tracing::error!(job = r.job, run = r.run, "the server refuses this job run ({why}); dropped");
            }
        });
    }

    /// Applies a reply's results acknowledgement and new commands to the
    /// journal (the commands on disk before any of them runs), then hands
    /// the commands to the worker. Returns how many are new. When the
    /// journal cannot be written, none is taken: the server sends them
    /// again, since this agent does not confirm them.
    fn take_reply(&mut self, reply: &PollReply, sent: &[StoredResult]) -> Result<usize, RunError> {
        if !reply.results_acked.is_empty() || !reply.job_runs_acked.is_empty() {
            self.ledger.record(|j| {
                for id in &reply.results_acked {
                    // Only what this poll carried: the worker may have put
                    // a command's final result over the progress result the
                    // server acknowledges, and that one is still to send.
                    if let Some(s) = sent.iter().find(|s| s.id == *id)
                        && j.results.get(id) == Some(s)
                    {
                        j.results.remove(id);
                    }
                }
                j.job_runs.retain(|r| !reply.job_runs_acked.contains(&(r.job, r.run)));
            });
        }
        // Before any command of this reply runs (never written anywhere).
        self.engine.registries(&reply.registries);
        let seen = self.ledger.read(|j| j.seen);
        let fresh: Vec<&Command> = reply.commands.iter().filter(|c| c.id > seen).collect();
        let unknown: Vec<u64> = reply.unknown_commands.iter().copied().filter(|&id| id > seen).collect();
        if fresh.is_empty() && unknown.is_empty() {
            return Ok(0);
        }
        let finished_at = now_unix();
        let taken = self.ledger.commit(|j| {
            for &id in &unknown {
                j.results.insert(
                    id,
                    super::journal::stored(
                        id,
                        ResultStatus::Rejected,
                        "this agent does not know this command (upgrade the agent)",
                        &[],
                        "",
                        finished_at,
                    ),
                );
                j.seen = j.seen.max(id);
            }
            for c in &fresh {
                j.seen = j.seen.max(c.id);
                j.received.insert(c.id, super::journal::waiting(&c.action));
            }
        });
        if let Err(e) = taken {
            tracing::warn!(
                "cannot record {} new commands ({e}): not taken; the server sends them again",
                fresh.len() + unknown.len()
            );
            return Ok(0);
        }
        for &id in &unknown {
            tracing::warn!(command = id, "a command this agent does not know; rejected");
        }
        for c in &fresh {
            // The action's name and target only: a stack's variables and a
            // job's script may hold secrets.
            tracing::info!(command = c.id, action = %action_summary(&c.action), "running command");
            // The worker lives as long as the agent.
            let _ = self.exec.send((*c).clone());
        }
        if !unknown.is_empty() {
            self.sched.hurry(self.now() + self.settings.result_delay);
        }
        Ok(fresh.len())
    }
}

/// An action for the log, without its payload.
fn action_summary(action: &Action) -> String {
    match action {
        Action::Container(op, id) => format!("container {op:?} {}", id.short()),
        Action::ContainerLogs(id, tail) => format!("container logs {} (tail {tail})", id.short()),
        Action::ImagePull(r) => format!("image pull {r}"),
        Action::ImageRemove(r) => format!("image remove {r}"),
        Action::VolumeRemove(v) => format!("volume remove {v}"),
        Action::NetworkRemove(id) => format!("network remove {}", id.short()),
        Action::StackDeploy(st) => format!("stack deploy {} v{}", st.name, st.version),
        Action::StackRemove(name) => format!("stack remove {name}"),
        Action::Job(j) => format!("job {} v{}", j.job, j.version),
        Action::JobRemove(job) => format!("job remove {job}"),
        Action::ImageFetch(f) => format!("image fetch {} ({})", f.reference, f.image_id),
        Action::AgentUpdate(u) => format!("agent update to {} ({})", u.image.reference, u.image.image_id),
    }
}

/// Job runs kept while the server cannot be reached; the oldest go first.
const MAX_PENDING_JOB_RUNS: usize = 200;

/// How a sealed refusal came, for the log: " (HTTP 413)" on a request, ""
/// in a held session's frame (status 0 or 200).
fn via(status: u16) -> String {
    if status == 0 || status == 200 { String::new() } else { format!(" (HTTP {status})") }
}

/// A refusal's meaning, for the log.
/// Unauthenticated: anything on the way could have written it, so it is
/// quoted (no line breaks or escapes of its own reach the log).
fn refusal(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_owned();
    match status {
        401 => "the server does not accept this agent's EDGE_KEY (a wrong or deleted environment, or an \
                AGENT_SECRET that does not match the server's)"
            .to_owned(),
        s => format!("HTTP {s}: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::RequestEnvelope;
    use crate::sync::session::{Received, Replica};
    use crate::sync::state::{Container, ContainerStatus, Id};
    use crate::wire::poll::ContainerOp;

    /// An engine whose state the test sets, and which records the actions it runs.
    #[derive(Default)]
    struct FakeEngine {
        state: Mutex<State>,
        ran: Mutex<Vec<Action>>,
        reads: Mutex<u32>,
    }

    impl Engine for Arc<FakeEngine> {
        async fn state(&self) -> Result<State, String> {
            *self.reads.lock().unwrap() += 1;
            Ok(self.state.lock().unwrap().clone())
        }

        /// From the fake state: a container command settles on its status.
        async fn settle(&self, action: &Action, started_at: i64) -> super::super::journal::Settled {
            match action {
                Action::Container(op, id) => {
                    let state = self.state.lock().unwrap();
                    let c = state.containers.iter().find(|c| c.id == *id);
                    let state =
                        c.map(|c| (c.status == ContainerStatus::Running, c.status == ContainerStatus::Paused, 0));
                    super::super::journal::settle_container(*op, state, started_at)
                }
                _ => super::super::journal::Settled::Unknown,
            }
        }

        async fn run(&self, action: &Action) -> Result<Vec<u8>, String> {
            self.ran.lock().unwrap().push(action.clone());
            match action {
                Action::ImagePull(r) => Err(format!("pull access denied for {r}")),
                Action::ContainerLogs(_, tail) => Ok(format!("{tail} lines\n").into_bytes()),
                _ => Ok(Vec::new()),
            }
        }
    }

    /// A scripted server: the real envelope, codec and replica, a command
    /// queue, and a switch to drop the link.
    struct FakeServer {
        key: Secret,
        replica: Replica,
        last_counter: u64,
        queue: Vec<Command>,
        seen: u64,
        results: Vec<CommandResult>,
        intervals: poll::Intervals,
        agent_intervals: Option<poll::Intervals>,
        down: bool,
        /// (time, request) of every poll that reached the server.
        log: Vec<(Duration, PollRequest)>,
        epoch: Instant,
        lose_replies: u32,
        /// Answered instead of the next poll, as a machine in the middle would.
        forged_reply: Option<(u16, Bytes)>,
        /// A poll carrying this command's `ok` result is refused as too large.
        poison: Option<u64>,
    }

    #[derive(Clone)]
    struct Link(Arc<Mutex<FakeServer>>);

    impl Transport for Link {
        async fn send_poll(&mut self, wire: Vec<u8>) -> Result<(u16, Bytes), String> {
            let mut s = self.0.lock().unwrap();
            if s.down {
                return Err("connection refused".into());
            }
            if let Some(forged) = s.forged_reply.take() {
                return Ok(forged);
            }
            let env = RequestEnvelope::parse(&wire).map_err(|e| e.to_string())?;
            match env.verify(&s.key, s.last_counter) {
                Ok(()) => {}
                Err(crate::auth::AuthError::Replay { last, .. }) => {
                    let refused = Refused { code: RefusalCode::Replay, last_counter: last, detail: String::new() };
                    let reply = PollReply { refused: Some(refused), ..PollReply::default() };
                    let body = Codec::new(Limits::default()).unwrap().encode(&reply.encode()).unwrap();
                    return Ok((409, Bytes::from(crate::auth::seal_reply(env.counter, &s.key, &body))));
                }
                Err(_) => return Ok((401, Bytes::new())),
            }
            s.last_counter = env.counter;
            let mut codec = Codec::new(Limits::default()).unwrap();
            let req = PollRequest::decode(&codec.decode(env.body).unwrap()).unwrap();
            if req.results.iter().any(|r| Some(r.id) == s.poison && r.status == ResultStatus::Ok) {
                let refused = Refused { code: RefusalCode::TooLarge, last_counter: 0, detail: "too big".into() };
                let reply = PollReply { refused: Some(refused), ..PollReply::default() };
                let body = codec.encode(&reply.encode()).unwrap();
                return Ok((413, Bytes::from(crate::auth::seal_reply(env.counter, &s.key, &body))));
            }
            let at = s.epoch.elapsed();
            s.log.push((at, req.clone()));
            let mut reply = PollReply::default();
            match s.replica.receive(req.base, req.delta.as_ref()) {
                Received::Acked(seq) => reply.acked = seq,
                Received::Resync => (reply.acked, reply.resync) = (s.replica.current().0, true),
            }
            for r in &req.results {
                if !s.results.iter().any(|x| x.id == r.id) {
                    s.results.push(r.clone());
                }
                reply.results_acked.push(r.id);
            }
            s.seen = s.seen.max(req.commands_seen);
            if let Some(i) = req.intervals {
                s.agent_intervals = Some(i);
            }
            if s.agent_intervals != Some(s.intervals) {
                reply.intervals = Some(s.intervals);
            }
            let seen = s.seen;
            reply.commands = s.queue.iter().filter(|c| c.id > seen).cloned().collect();
            let body = codec.encode(&reply.encode()).unwrap();
            if s.lose_replies > 0 {
                s.lose_replies -= 1;
                return Err("connection reset".into());
            }
            Ok((200, Bytes::from(crate::auth::seal_reply(env.counter, &s.key, &body))))
        }
    }

    fn host(n: u8, status: ContainerStatus) -> State {
        let mut s = State::default();
        for i in 0..n {
            s.containers.insert(Container {
                id: Id([i + 1; 32]),
                name: format!("c{i}"),
                status,
                ..Container::default()
            });
        }
        s
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tern-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    struct Rig {
        engine: Arc<FakeEngine>,
        server: Arc<Mutex<FakeServer>>,
        changed: Arc<AtomicBool>,
        dir: std::path::PathBuf,
    }

    impl Rig {
        fn new(name: &str) -> Self {
            let engine = Arc::new(FakeEngine::default());
            *engine.state.lock().unwrap() = host(3, ContainerStatus::Running);
            let server = Arc::new(Mutex::new(FakeServer {
                key: Secret([5; 32]),
                replica: Replica::default(),
                last_counter: 0,
                queue: vec![],
                seen: 0,
                results: vec![],
                intervals: poll::Intervals { ping: 60, snapshot: 60, command: 60 },
                agent_intervals: None,
                down: false,
                log: vec![],
                epoch: Instant::now(),
                lose_replies: 0,
                forged_reply: None,
                poison: None,
            }));
            Self { engine, server, changed: Arc::new(AtomicBool::new(false)), dir: dir(name) }
        }

        fn agent(&self) -> Agent<Arc<FakeEngine>, Link> {
            let mut settings = Settings::new(1, Secret([5; 32]), "edge-test".into());
            settings.counter_block = 3;
            let store = Store::open(&self.dir).unwrap();
            Agent::new(settings, self.engine.clone(), Link(self.server.clone()), store, self.changed.clone()).unwrap()
        }

        fn log(&self) -> Vec<(Duration, PollRequest)> {
            self.server.lock().unwrap().log.clone()
        }
    }

    async fn run_for(agent: &mut Agent<Arc<FakeEngine>, Link>, d: Duration) {
        agent.run(tokio::time::sleep(d)).await.unwrap();
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn first_contact_at_start_then_one_poll_a_minute_with_nothing_to_say() {
        let rig = Rig::new("idle");
        let mut agent = rig.agent();
        run_for(&mut agent, S(185)).await;
        let log = rig.log();
        let times: Vec<u64> = log.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(times, vec![0, 60, 120, 180], "first contact at start, then the 60 s timers together");
        let (_, first) = &log[0];
        assert!(first.agent.is_some() && first.intervals.is_some(), "first contact names the agent");
        assert!(first.delta.as_ref().is_some_and(|d| !d.is_empty()));
        for (_, r) in &log[1..] {
            assert!(r.agent.is_none() && r.intervals.is_none() && r.results.is_empty());
            assert!(r.delta.as_ref().is_some_and(crate::sync::Delta::is_empty), "unchanged: an empty delta");
        }
        assert_eq!(*rig.engine.reads.lock().unwrap(), 1, "no event, no re-read");
        assert_eq!(rig.server.lock().unwrap().replica.current().1, &host(3, ContainerStatus::Running));
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_makes_the_next_snapshot_reread_and_send_a_small_delta() {
        let rig = Rig::new("event");
        let mut agent = rig.agent();
        run_for(&mut agent, S(30)).await;
        *rig.engine.state.lock().unwrap() = host(3, ContainerStatus::Exited);
        rig.changed.store(true, Ordering::Release);
        run_for(&mut agent, S(40)).await;
        assert_eq!(*rig.engine.reads.lock().unwrap(), 2);
        assert_eq!(rig.server.lock().unwrap().replica.current().1, &host(3, ContainerStatus::Exited));
        assert_eq!(agent.acked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_down_for_hours_backs_off_then_sends_one_delta() {
        let rig = Rig::new("offline");
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        rig.server.lock().unwrap().down = true;
        // Three hours offline, with the state changing several times.
        for i in 0..6 {
            *rig.engine.state.lock().unwrap() = host(3 + i, ContainerStatus::Running);
            rig.changed.store(true, Ordering::Release);
            run_for(&mut agent, S(1800)).await;
        }
        let attempts = agent.stats.failures;
        // Backoff capped at 10 minutes with full jitter: far fewer attempts
        // than one a minute (180), and more than a handful.
        assert!((10..120).contains(&attempts), "{attempts} attempts in 3 h");
        rig.server.lock().unwrap().down = false;
        let before = rig.log().len();
        run_for(&mut agent, S(660)).await;
        let log = rig.log();
        let (_, back) = &log[before];
        assert_eq!(back.base, 1, "one delta against the last acknowledged state");
        assert_eq!(rig.server.lock().unwrap().replica.current().1, &host(8, ContainerStatus::Running));
        // Then the regular rhythm again.
        let gaps: Vec<u64> = log[before..].windows(2).map(|w| (w[1].0 - w[0].0).as_secs()).collect();
        assert!(gaps.iter().all(|g| *g == 60), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn commands_run_once_even_when_replies_repeat_and_results_are_batched() {
        let rig = Rig::new("commands");
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        {
            let mut s = rig.server.lock().unwrap();
            s.queue = vec![
                Command { id: 1, action: Action::Container(ContainerOp::Stop, Id([1; 32])) },
                Command { id: 2, action: Action::ImagePull("nginx:1.25".into()) },
                Command { id: 3, action: Action::ContainerLogs(Id([1; 32]), 7) },
            ];
            // The reply carrying them is lost after the server sent it.
            s.lose_replies = 1;
        }
        run_for(&mut agent, S(59)).await;
        assert!(rig.engine.ran.lock().unwrap().is_empty(), "a lost reply runs nothing");
        // The next poll gets them; later replies repeat them until the
        // server has commands_seen.
        run_for(&mut agent, S(120)).await;
        assert_eq!(rig.engine.ran.lock().unwrap().len(), 3, "each ran once");
        let s = rig.server.lock().unwrap();
        assert_eq!(s.seen, 3);
        let mut got = s.results.clone();
        got.sort_by_key(|r| r.id);
        assert_eq!((got[0].id, got[0].status), (1, ResultStatus::Ok));
        assert_eq!((got[1].id, got[1].status), (2, ResultStatus::Failed));
        assert!(got[1].error.contains("pull access denied"));
        assert_eq!((got[2].status, got[2].output.as_slice()), (ResultStatus::Ok, &b"7 lines\n"[..]));
        // All results went in one poll, a couple of seconds after they finished.
        let carrying: Vec<_> = s.log.iter().filter(|(_, r)| !r.results.is_empty()).collect();
        assert_eq!(carrying.len(), 1);
        assert_eq!(carrying[0].1.results.len(), 3);
        drop(s);
        assert!(
            agent.ledger.read(|j| j.results.is_empty() && j.received.is_empty()),
            "acknowledged results are dropped"
        );
        assert_eq!(Store::open(&rig.dir).unwrap().journal().unwrap().seen, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_resends_no_state_and_reports_an_interrupted_command_as_failed() {
        let rig = Rig::new("restart");
        {
            let mut agent = rig.agent();
            run_for(&mut agent, S(1)).await;
            // Simulate a crash while command 7 ran, as a journal before 0.2
            // recorded it (running, without its action).
            agent
                .ledger
                .commit(|j| {
                    j.running.insert(7);
                    j.seen = 7;
                })
                .unwrap();
        }
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        let log = rig.log();
        let (_, after) = log.last().unwrap();
        assert_eq!(after.base, 1);
        assert!(after.delta.as_ref().is_some_and(crate::sync::Delta::is_empty), "nothing resent");
        assert!(after.agent.is_some());
        assert_eq!(after.results.len(), 1);
        assert_eq!((after.results[0].id, after.results[0].status), (7, ResultStatus::Failed));
        assert!(rig.engine.ran.lock().unwrap().is_empty(), "never run again");
        // The counter went on above the reserved block.
        let s = rig.server.lock().unwrap();
        assert!(s.last_counter > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_mid_queue_runs_what_never_started_and_settles_what_ran() {
        // Killed while command 7 (a stop) ran, with 8 and 9 queued behind it:
        // 8 and 9 never started. Before, all three came back "may or may
        // not have taken effect".
        let rig = Rig::new("midqueue");
        {
            let mut agent = rig.agent();
            run_for(&mut agent, S(1)).await;
            let stop = Action::Container(ContainerOp::Stop, Id([1; 32]));
            let start = Action::Container(ContainerOp::Start, Id([2; 32]));
            agent
                .ledger
                .commit(|j| {
                    j.seen = 9;
                    j.received.insert(
                        7,
                        super::super::store::StoredCommand {
                            action: super::super::journal::encode_action(&stop),
                            started_at: Some(now_unix()),
                        },
                    );
                    j.received.insert(8, super::super::journal::waiting(&start));
                    j.received.insert(9, super::super::journal::waiting(&Action::ImagePull("nginx:1.25".into())));
                })
                .unwrap();
        }
        // The stop had taken effect: c0 is exited.
        {
            let mut s = rig.engine.state.lock().unwrap();
            let mut c0 = s.containers.iter().find(|c| c.id == Id([1; 32])).unwrap().clone();
            c0.status = ContainerStatus::Exited;
            s.containers.insert(c0);
        }
        let mut agent = rig.agent();
        run_for(&mut agent, S(10)).await;
        assert_eq!(
            *rig.engine.ran.lock().unwrap(),
            [Action::Container(ContainerOp::Start, Id([2; 32])), Action::ImagePull("nginx:1.25".into())],
            "what never started runs, in order; what ran does not run again"
        );
        let s = rig.server.lock().unwrap();
        let mut got = s.results.clone();
        got.sort_by_key(|r| r.id);
        assert_eq!(
            got.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            [(7, ResultStatus::Ok), (8, ResultStatus::Ok), (9, ResultStatus::Failed)]
        );
        assert!(String::from_utf8_lossy(&got[0].output).contains("the engine shows it took effect"), "{:?}", got[0]);
        assert!(got.iter().all(|r| !r.error.contains("may or may not")), "{got:?}");
        assert!(got[2].error.contains("pull access denied"), "its own outcome: {:?}", got[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn commands_that_cannot_be_journaled_are_not_taken_until_they_can_be() {
        let rig = Rig::new("nojournal");
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        // The journal cannot be written (a directory where the file goes).
        let journal = rig.dir.join("journal.json");
        let _ = std::fs::remove_file(&journal);
        std::fs::create_dir_all(journal.join("blocked")).unwrap();
        rig.server.lock().unwrap().queue =
            vec![Command { id: 1, action: Action::Container(ContainerOp::Stop, Id([1; 32])) }];
        run_for(&mut agent, S(130)).await;
        assert!(rig.engine.ran.lock().unwrap().is_empty(), "nothing runs unrecorded");
        assert_eq!(rig.server.lock().unwrap().seen, 0, "nor is it confirmed to the server");
        // Space again: the server's next reply brings it, and it runs once.
        std::fs::remove_dir_all(&journal).unwrap();
        run_for(&mut agent, S(130)).await;
        assert_eq!(rig.engine.ran.lock().unwrap().len(), 1);
        let s = rig.server.lock().unwrap();
        assert_eq!((s.seen, s.results.len(), s.results[0].status), (1, 1, ResultStatus::Ok));
        assert_eq!(Store::open(&rig.dir).unwrap().journal().unwrap().seen, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_that_is_down_costs_no_extra_polls() {
        // The snapshot timer stayed due when the engine could not be read:
        // 172 polls in 20 s at 5 s intervals, on the fault matrix.
        struct DownEngine;
        impl Engine for DownEngine {
            async fn state(&self) -> Result<State, String> {
                Err("engine down".into())
            }
            async fn run(&self, _: &Action) -> Result<Vec<u8>, String> {
                Err("engine down".into())
            }
        }
        let rig = Rig::new("enginedown");
        let mut settings = Settings::new(1, Secret([5; 32]), "edge-test".into());
        settings.counter_block = 3;
        let store = Store::open(&rig.dir).unwrap();
        let mut agent = Agent::new(settings, DownEngine, Link(rig.server.clone()), store, rig.changed.clone()).unwrap();
        agent.run(tokio::time::sleep(S(185))).await.unwrap();
        let times: Vec<u64> = rig.log().iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(times, vec![0, 60, 120, 180], "one poll a minute, as when the engine is up");
    }

    #[tokio::test(start_paused = true)]
    async fn one_result_the_server_refuses_does_not_block_the_others() {
        let rig = Rig::new("poison");
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        {
            let mut s = rig.server.lock().unwrap();
            s.queue =
                (1..=3).map(|id| Command { id, action: Action::Container(ContainerOp::Stop, Id([1; 32])) }).collect();
            s.poison = Some(2);
        }
        run_for(&mut agent, S(600)).await;
        let s = rig.server.lock().unwrap();
        let mut got = s.results.clone();
        got.sort_by_key(|r| r.id);
        assert_eq!(
            got.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            [(1, ResultStatus::Ok), (2, ResultStatus::Failed), (3, ResultStatus::Ok)]
        );
        assert!(got[1].error.contains("could not be sent: too big"), "{:?}", got[1]);
        assert!(agent.ledger.read(|j| j.results.is_empty()));
    }

    #[test]
    fn an_acknowledgement_drops_only_the_result_the_poll_carried() {
        // The poll carried command 5's progress; while it was on its way the
        // worker put the final result over it. The server acknowledges 5:
        // the final result stays, to be sent.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let rig = Rig::new("ackrace");
            let mut agent = rig.agent();
            let progress = super::super::journal::stored(5, ResultStatus::Progress, "", &[], "deploying", 1);
            let done = super::super::journal::stored(5, ResultStatus::Ok, "", &[], "", 2);
            agent.ledger.record(|j| j.results.insert(5, done.clone()));
            let reply = PollReply { results_acked: vec![5], ..PollReply::default() };
            agent.take_reply(&reply, std::slice::from_ref(&progress)).unwrap();
            assert_eq!(agent.ledger.read(|j| j.results.get(&5).cloned()), Some(done.clone()));
            agent.take_reply(&reply, &[done]).unwrap();
            assert!(agent.ledger.read(|j| j.results.is_empty()));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_data_directory_restored_from_an_older_copy_runs_none_of_its_waiting_commands() {
        // The copy holds command 4 as received and never started; it may have
        // run since. The server's counter is ahead of the copy's.
        let rig = Rig::new("restored");
        {
            let agent = rig.agent();
            agent
                .ledger
                .commit(|j| {
                    j.seen = 4;
                    j.received
                        .insert(4, super::super::journal::waiting(&Action::Container(ContainerOp::Stop, Id([1; 32]))));
                })
                .unwrap();
        }
        rig.server.lock().unwrap().last_counter = 10_000;
        let mut agent = rig.agent();
        run_for(&mut agent, S(30)).await;
        assert!(rig.engine.ran.lock().unwrap().is_empty(), "not run again");
        let s = rig.server.lock().unwrap();
        assert_eq!((s.results.len(), s.results[0].id, s.results[0].status), (1, 4, ResultStatus::Failed));
        assert!(s.results[0].error.contains("restored from an older copy"), "{:?}", s.results[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn job_runs_waiting_offline_are_bounded_to_the_newest() {
        let rig = Rig::new("jobruns");
        rig.server.lock().unwrap().down = true;
        let mut agent = rig.agent();
        let (tx, rx) = mpsc::unbounded_channel();
        agent.set_job_runs(rx);
        for run in 1..=(MAX_PENDING_JOB_RUNS as u64 + 50) {
            tx.send(poll::JobRun { job: 1, run, output: vec![b'x'; 10], ..poll::JobRun::default() }).unwrap();
        }
        run_for(&mut agent, S(5)).await;
        let journal = Store::open(&rig.dir).unwrap().journal().unwrap();
        assert_eq!(journal.job_runs.len(), MAX_PENDING_JOB_RUNS);
        assert_eq!(journal.job_runs[0].run, 51, "the oldest went first");
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_lost_its_counter_jumps_above_the_servers() {
        let rig = Rig::new("counter");
        rig.server.lock().unwrap().last_counter = 5_000;
        let mut agent = rig.agent();
        run_for(&mut agent, S(10)).await;
        assert_eq!(agent.stats.failures, 1, "one refused poll");
        assert_eq!(agent.stats.polls, 1, "then accepted");
        assert_eq!(rig.server.lock().unwrap().last_counter, 5_001);
        assert!(Store::open(&rig.dir).unwrap().meta().unwrap().counter_end > 5_000, "persisted");
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_unauthenticated_counter_hint_changes_nothing() {
        // A machine in the middle (the agent runs with EDGE_INSECURE_POLL=1)
        // answers a poll with the refusal text old servers sent: it once
        // made the agent jump its counter past what the server can store.
        let rig = Rig::new("injected");
        let mut agent = rig.agent();
        run_for(&mut agent, S(1)).await;
        let text = "replayed poll; last accepted counter 9223372036854775806";
        rig.server.lock().unwrap().forged_reply = Some((409, Bytes::from(text)));
        // So does a sealed-looking one under a key the server does not have.
        let refused = Refused { code: RefusalCode::Replay, last_counter: 1 << 62, detail: String::new() };
        let body = Codec::new(Limits::default())
            .unwrap()
            .encode(&PollReply { refused: Some(refused), ..PollReply::default() }.encode())
            .unwrap();
        run_for(&mut agent, S(60)).await;
        assert_eq!(agent.stats.failures, 1, "the injected answer failed one poll");
        rig.server.lock().unwrap().forged_reply =
            Some((409, Bytes::from(crate::auth::seal_reply(agent.counters.next(), &Secret([6; 32]), &body))));
        run_for(&mut agent, S(120)).await;
        assert_eq!(agent.stats.failures, 2);
        let persisted = Store::open(&rig.dir).unwrap().meta().unwrap().counter_end;
        assert!(persisted < 100, "no counter jump was persisted: {persisted}");
        assert!(agent.counters.next() < 100, "the counter went on as it was: {}", agent.counters.next());
        let polls = agent.stats.polls;
        run_for(&mut agent, S(120)).await;
        assert!(agent.stats.polls > polls, "and the server still accepts the agent's polls");
        assert_eq!(agent.stats.failures, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_health_record_follows_the_polls_without_a_write_per_poll() {
        let rig = Rig::new("health");
        rig.server.lock().unwrap().intervals = poll::Intervals { ping: 5, snapshot: 5, command: 5 };
        let mut agent = rig.agent();
        run_for(&mut agent, S(600)).await;
        assert!(agent.stats.polls >= 100, "{:?}", agent.stats);
        let record = agent.health.record().clone();
        assert!(record.ok_at.is_some() && record.error.is_none(), "{record:?}");
        // The start, the first success, then at most one a minute (the
        // record holds wall-clock seconds, which hardly move here).
        assert!((2..=12).contains(&agent.health.writes), "{} writes", agent.health.writes);
        let check = || super::super::health::check(&rig.dir, now_unix());
        assert!(check().healthy, "{}", check());
        rig.server.lock().unwrap().down = true;
        run_for(&mut agent, S(30)).await;
        let v = check();
        assert!(v.healthy && v.why.ends_with("last error: connection refused"), "{v}");
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_from_the_server_apply_and_survive_a_restart() {
        let rig = Rig::new("intervals");
        rig.server.lock().unwrap().intervals = poll::Intervals { ping: 3600, snapshot: 300, command: 120 };
        let mut agent = rig.agent();
        run_for(&mut agent, S(1000)).await;
        let times: Vec<u64> = rig.log().iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(times, vec![0, 120, 240, 300, 360, 480, 600, 720, 840, 900, 960]);
        // A reply repeats intervals only until the agent reports them.
        drop(agent);
        let agent = rig.agent();
        assert_eq!(agent.intervals(), Intervals::from_secs(3600, 300, 120));
    }
}
