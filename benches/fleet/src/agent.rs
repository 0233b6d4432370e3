//! One simulated agent: the poll protocol as `tern agent` speaks it
//! (`tern::agent::run`), with the Docker engine replaced by a recorded
//! host (see [`crate::states`]) and its commands done at once: their
//! results go in a poll [`RESULT_DELAY`] later, as the agent's do.
//!
//! Each poll carries what a real agent's would: a delta against the base
//! the server acknowledged (the full state at first contact, the explicit
//! empty delta when nothing changed), the results of the commands it
//! received in the poll before, `commands_seen`, the agent's name and
//! intervals when due, all encoded with the real codec and sealed with the
//! real MAC under a counter that only goes up; the reply's MAC is checked
//! before anything in it is used.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tern::auth::{Secret, open_reply, seal_request};
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::{self, AgentInfo, CommandResult, PollReply, PollRequest, RefusalCode, ResultStatus};

use crate::conn::{Conn, Connector, Failure};
use crate::states::{Catalogue, Host};
use crate::stats::{ErrorKind, Window};

/// What every agent task shares: the server, the states, the pace and
/// the counts.
pub struct Shared {
    /// The recorded hosts.
    pub catalogue: Arc<Catalogue>,
    /// Opens connections to the server.
    pub connector: Connector,
    /// The current window's counts.
    pub window: Window,
    /// The poll interval now, in microseconds (the capacity run changes it).
    pub interval_us: AtomicU64,
    /// Each interval is the interval times 1 ± up to this.
    pub jitter: f64,
    /// Chance that a poll carries a state change (the share of agents whose
    /// state changes per interval).
    pub change_per_poll: f64,
    /// Poll back to back, never sleeping (the idle-rate run).
    pub back_to_back: bool,
    /// A poll that takes longer failed.
    pub poll_timeout: Duration,
    /// Agents that made their first contact.
    pub first_contacts: AtomicUsize,
    /// Every agent's second poll carries a change, so that the server holds
    /// two states of each (the current one and the one before), as it does
    /// for every agent of a fleet that has run for a while: the database's
    /// growth is then measured from its steady size, not while it doubles.
    pub prime: bool,
    /// Agents whose priming change was stored.
    pub primed: AtomicUsize,
    /// Commands queued through the API and not yet acknowledged, by
    /// (environment, command): when they were queued.
    pub queued: std::sync::Mutex<HashMap<(u64, u64), Instant>>,
    /// Each agent's acknowledged base (0: none, else a [`Host`] packed by
    /// [`pack`]), so that commands can target containers the server knows.
    pub bases: Vec<AtomicU64>,
    /// Set to stop.
    pub stop: AtomicBool,
    /// Wakes sleeping agents when `stop` is set.
    pub stopped: tokio::sync::Notify,
    /// Failures written to stderr so far (the first few only).
    pub logged: AtomicUsize,
}

impl Shared {
    /// The current interval.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us.load(Ordering::Relaxed))
    }

    /// Sets the interval.
    pub fn set_interval(&self, d: Duration) {
        self.interval_us.store(d.as_micros().max(1) as u64, Ordering::Relaxed);
    }

    fn failed(&self, f: &Failure) {
        self.window.error(f.kind);
        if self.logged.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("tern-fleet: poll failed ({}): {}", f.kind.name(), f.detail);
        }
    }
}

/// A [`Host`] as one number (step and direction, recording), 0 for none.
pub fn pack(h: Option<Host>) -> u64 {
    h.map_or(0, |h| 1 + ((h.recording as u64) << 33 | (h.step as u64) << 1 | u64::from(h.forward)))
}

/// The [`Host`] [`pack`] made.
pub fn unpack(v: u64) -> Option<Host> {
    let v = v.checked_sub(1)?;
    Some(Host { recording: (v >> 33) as usize, step: ((v >> 1) & 0xffff_ffff) as usize, forward: v & 1 == 1 })
}

/// Who a simulated agent is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its index in the fleet.
    pub index: usize,
    /// The environment id (from the join token).
    pub environment: u64,
    /// The MAC key.
    pub key: Secret,
    /// Its EDGE_ID.
    pub edge_id: String,
    /// Its id salt (fresh ids for its recorded host).
    pub salt: [u8; 32],
    /// Its host name.
    pub name: String,
    /// Where its host starts in its recording.
    pub start: Host,
    /// A new connection for every poll (a carrier NAT that forgets flows).
    pub reconnect: bool,
    /// The local address its connections come from.
    pub source: Option<IpAddr>,
}

/// A simulated agent.
pub struct Agent {
    id: Identity,
    counter: u64,
    base_seq: u64,
    base: Option<Host>,
    current: Host,
    named: bool,
    intervals: Option<poll::Intervals>,
    seen: u64,
    seen_reported: u64,
    results: Vec<CommandResult>,
    conn: Option<Conn>,
    rng: fastrand::Rng,
    /// Polls answered so far.
    answered: u64,
    /// An extra poll to report results, as the agent makes one
    /// [`RESULT_DELAY`] after a command finishes.
    report_at: Option<Instant>,
}

/// How soon after a command finishes the agent polls to report it
/// (`tern::agent::run::Settings::result_delay`'s default).
pub const RESULT_DELAY: Duration = Duration::from_secs(2);

thread_local! {
    /// One codec per worker thread: a codec holds zstd contexts with the
    /// dictionary (hundreds of KB), too much for each of 50,000 agents.
    static CODEC: RefCell<Option<Codec>> = const { RefCell::new(None) };
}

fn with_codec<R>(f: impl FnOnce(&mut Codec) -> R) -> R {
    CODEC.with(|c| {
        let mut c = c.borrow_mut();
        f(c.get_or_insert_with(|| Codec::new(Limits::default()).expect("the codec's dictionaries load")))
    })
}

/// The intervals a fresh agent runs with (tern's defaults), reported at
/// its first poll.
const DEFAULT_INTERVALS: poll::Intervals = poll::Intervals { ping: 60, snapshot: 60, command: 60 };

impl Agent {
    /// An agent that has never polled.
    pub fn new(id: Identity) -> Self {
        let seed = u64::from_le_bytes(id.salt[..8].try_into().expect("8 bytes"));
        Self {
            current: id.start,
            id,
            counter: 0,
            base_seq: 0,
            base: None,
            named: false,
            intervals: Some(DEFAULT_INTERVALS),
            seen: 0,
            seen_reported: 0,
            results: Vec::new(),
            conn: None,
            rng: fastrand::Rng::with_seed(seed),
            answered: 0,
            report_at: None,
        }
    }

    /// Polls at the shared pace until told to stop.
    pub async fn run(mut self, shared: Arc<Shared>) {
        let mut next = if shared.back_to_back {
            Instant::now()
        } else {
            // Spread over the first interval, as a fleet's agents are.
            Instant::now() + shared.interval().mul_f64(self.rng.f64())
        };
        loop {
            // Registered before the flag is read, so a stop cannot slip
            // between the two.
            let stopped = shared.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            let wake = self.report_at.map_or(next, |r| r.min(next));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = stopped => break,
            }
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            let extra = wake < next;
            self.report_at = None;
            self.poll(&shared).await;
            let now = Instant::now();
            if extra {
                // The regular schedule goes on.
                continue;
            }
            next = if shared.back_to_back {
                now
            } else {
                // From the scheduled time, not the reply's: a slow server
                // gets the polls it is due (no coordinated omission).
                let factor = 1.0 + shared.jitter * (2.0 * self.rng.f64() - 1.0);
                (next + shared.interval().mul_f64(factor.max(0.0))).max(now)
            };
        }
        self.conn = None;
    }

    /// One poll: build, seal, send, check, act on the reply, count.
    pub async fn poll(&mut self, shared: &Shared) {
        let priming = shared.prime && self.answered == 1;
        if self.named && !shared.back_to_back && (priming || self.rng.f64() < shared.change_per_poll) {
            self.current = shared.catalogue.next(self.current);
        }
        let delta = shared.catalogue.delta(self.base, self.current, &self.id.salt, &self.id.name);
        let changed = self.base.is_some() && !delta.is_empty();
        let seen = if self.seen > self.seen_reported { self.seen } else { 0 };
        let request = PollRequest {
            base: self.base_seq,
            delta: Some(delta),
            results: self.results.clone(),
            agent: (!self.named).then(|| AgentInfo { version: "fleet-sim".into(), edge_id: self.id.edge_id.clone() }),
            commands_seen: seen,
            intervals: self.intervals,
            job_runs: Vec::new(),
            ..PollRequest::default()
        };
        let body = match with_codec(|c| c.encode(&request.encode())) {
            Ok(b) => b,
            Err(e) => return shared.failed(&Failure { kind: ErrorKind::Decode, detail: format!("encode: {e}") }),
        };
        self.counter += 1;
        let counter = self.counter;
        let wire = seal_request(self.id.environment, counter, &self.id.key, &body);
        let up = wire.len() as u64;
        let started = Instant::now();
        let exchange = tokio::time::timeout(shared.poll_timeout, self.exchange(shared, wire)).await;
        let elapsed = started.elapsed();
        let (fresh, status, bytes) = match exchange {
            Err(_) => {
                self.conn = None;
                return shared.failed(&Failure {
                    kind: ErrorKind::Timeout,
                    detail: format!("no reply within {:?}", shared.poll_timeout),
                });
            }
            Ok(Err(f)) => {
                self.conn = None;
                return shared.failed(&f);
            }
            Ok(Ok(x)) => x,
        };
        if self.id.reconnect {
            self.conn = None;
        }
        let reply = match self.open(counter, status, &bytes) {
            Ok(r) => r,
            Err(f) => return shared.failed(&f),
        };
        // The reply is authentic: act on it as the agent does.
        let first = !self.named;
        self.named = true;
        if seen > 0 {
            self.seen_reported = seen;
        }
        if request.intervals.is_some() {
            self.intervals = None;
        }
        if let Some(i) = reply.intervals {
            // Adopted, and reported in the next poll.
            self.intervals = Some(i);
        }
        if reply.resync {
            self.base_seq = 0;
            self.base = None;
            shared.window.error(ErrorKind::Resync);
        } else {
            self.base_seq = reply.acked;
            self.base = Some(self.current);
        }
        shared.bases[self.id.index].store(pack(self.base), Ordering::Relaxed);
        let acked: Vec<u64> = reply.results_acked.clone();
        self.results.retain(|r| !acked.contains(&r.id));
        let mut new_commands = 0;
        let now = tern::clock::unix_now();
        let already = self.seen;
        for c in reply.commands.iter().filter(|c| c.id > already) {
            self.seen = self.seen.max(c.id);
            new_commands += 1;
            // Done at once: the result goes in the next poll.
            self.results.push(CommandResult {
                id: c.id,
                status: ResultStatus::Ok,
                error: String::new(),
                finished_at: now,
                output: Vec::new(),
                phase: String::new(),
            });
        }
        for &id in reply.unknown_commands.iter().filter(|&&id| id > already) {
            self.seen = self.seen.max(id);
            self.results.push(CommandResult {
                id,
                status: ResultStatus::Rejected,
                error: "unknown to the simulator".into(),
                finished_at: now,
                output: Vec::new(),
                phase: String::new(),
            });
        }
        if new_commands > 0 && !shared.back_to_back {
            self.report_at = Some(Instant::now() + RESULT_DELAY);
        }
        let round_trips: Vec<Duration> = if acked.is_empty() {
            Vec::new()
        } else {
            let mut q = shared.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            acked.iter().filter_map(|id| q.remove(&(self.id.environment, *id))).map(|t| t.elapsed()).collect()
        };
        self.answered += 1;
        if first {
            shared.first_contacts.fetch_add(1, Ordering::Relaxed);
        }
        if priming && changed && !reply.resync {
            shared.primed.fetch_add(1, Ordering::Relaxed);
        }
        shared.window.with(|w| {
            w.all.record(elapsed);
            if fresh {
                w.fresh.record(elapsed)
            } else {
                w.kept.record(elapsed)
            }
            for d in &round_trips {
                w.command_round_trip.record(*d);
            }
            w.changes += u64::from(changed);
            w.results_acked += acked.len() as u64;
            w.commands_received += new_commands;
            w.body_up += up;
            w.body_down += bytes.len() as u64;
        });
    }

    /// Sends on the kept-alive connection, or a new one; says whether it
    /// was new.
    async fn exchange(&mut self, shared: &Shared, wire: Vec<u8>) -> Result<(bool, u16, bytes::Bytes), Failure> {
        let mut fresh = false;
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                fresh = true;
                let c = shared.connector.connect(self.id.source).await?;
                shared.window.with(|w| {
                    w.connections += 1;
                    w.resumed += u64::from(c.resumed);
                });
                c
            }
        };
        let (status, bytes) = shared.connector.post(&mut conn, tern::wire::POLL_PATH, wire).await?;
        self.conn = Some(conn);
        Ok((fresh, status, bytes))
    }

    /// Checks and decodes a reply; a sealed refusal becomes its kind.
    fn open(&self, counter: u64, status: u16, bytes: &[u8]) -> Result<PollReply, Failure> {
        let fail = |kind, detail: String| Failure { kind, detail };
        let body = match open_reply(counter, &self.id.key, bytes) {
            Ok(b) => b,
            Err(_) if status != 200 => {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                return Err(fail(ErrorKind::Status, format!("HTTP {status}: {text}")));
            }
            Err(e) => return Err(fail(ErrorKind::ReplyMac, e.to_string())),
        };
        let reply = with_codec(|c| c.decode(body))
            .map_err(|e| e.to_string())
            .and_then(|b| PollReply::decode(&b).map_err(|e| e.to_string()))
            .map_err(|e| fail(ErrorKind::Decode, e))?;
        match &reply.refused {
            None if status == 200 => Ok(reply),
            None => Err(fail(ErrorKind::Status, format!("HTTP {status} without a refusal"))),
            Some(r) => {
                let kind = match r.code {
                    RefusalCode::Replay => ErrorKind::RefusedReplay,
                    RefusalCode::BoundToAnother => ErrorKind::RefusedBound,
                    _ => ErrorKind::RefusedOther,
                };
                Err(fail(kind, format!("HTTP {status}: {:?} {}", r.code, r.detail)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_packs_into_one_number_and_back() {
        assert_eq!(unpack(pack(None)), None);
        for h in [
            Host { recording: 0, step: 0, forward: false },
            Host { recording: 1, step: 72, forward: true },
            Host { recording: 3, step: 100_000, forward: false },
        ] {
            assert_eq!(unpack(pack(Some(h))), Some(h));
        }
    }
}
