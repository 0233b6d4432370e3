//! The agent's health, for `tern agent health` (the agent image's
//! `HEALTHCHECK`): is the agent reaching its server?
//!
//! The running agent keeps a small record, `DATA_PATH/health`: when it
//! started, its last successful poll, and why polls fail when they do. An
//! idle poll writes nothing else to disk, so the record is cheap: it is
//! rewritten when the agent starts, when polls start or stop failing, and
//! otherwise at most once every [`REFRESH`] (with no fsync: after a crash
//! it may be a little old, which the margin below absorbs).
//!
//! `tern agent health` reads it, with the intervals the agent runs with
//! (`meta.json`, the defaults when the server never changed them), and
//! decides ([`judge`]):
//!
//! * healthy when the last successful poll is at most 3 × the ping interval
//!   + 60 s old (the 60 s cover the record's refresh lag);
//! * healthy during a grace period of the same length after a start, so an
//!   agent is not unhealthy before its first poll could answer;
//! * unhealthy otherwise, saying since when and the last error.
//!
//! With the ping disabled, the shortest enabled interval is the one the
//! agent polls at; with every interval disabled it polls only to report a
//! command's result, so only a failing last poll makes it unhealthy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::store::Store;
use crate::sync::schedule::Intervals;

/// The record's file name in DATA_PATH.
pub const FILE: &str = "health";

/// While nothing but the time of the last success changes, the record is
/// rewritten at most this often.
pub const REFRESH: Duration = Duration::from_secs(60);

/// Added to 3 × the ping interval: the record's refresh lag, and a slow
/// server or link.
pub const MARGIN: Duration = Duration::from_secs(60);

/// The error text is kept to this many bytes.
const MAX_ERROR: usize = 300;

/// What the running agent records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the agent process started, in Unix seconds.
    pub started_at: i64,
    /// Its last successful poll (this run's or an earlier run's), in Unix
    /// seconds.
    #[serde(default)]
    pub ok_at: Option<i64>,
    /// Why the last poll failed; `None` when it went through.
    #[serde(default)]
    pub error: Option<String>,
    /// How it reaches the server: "session, keepalive 290 s", or
    /// "polling: " and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// While a device waits for admission (`agent::enrol`): how often it
    /// asks, in seconds, which the check judges it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
}

/// The decision, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Exit 0.
    pub healthy: bool,
    /// Why, for `docker inspect` and the operator.
    pub why: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", if self.healthy { "healthy" } else { "unhealthy" }, self.why)
    }
}

/// The interval the agent polls at, and its name: the ping when it is
/// enabled, else the shortest enabled one; `None` when all are disabled.
pub fn poll_interval(i: Intervals) -> Option<(Duration, &'static str)> {
    i.ping.map(|p| (p, "ping")).or_else(|| {
        [(i.snapshot, "snapshot"), (i.command, "command")]
            .into_iter()
            .filter_map(|(d, name)| d.map(|d| (d, name)))
            .min_by_key(|(d, _)| *d)
    })
}

/// How old the last successful poll may be: 3 × the poll interval +
/// [`MARGIN`]; also the grace period after a start. `None` when every
/// interval is disabled.
pub fn limit(i: Intervals) -> Option<Duration> {
    poll_interval(i).map(|(p, _)| p.saturating_mul(3).saturating_add(MARGIN))
}

/// Decides from a record, the intervals the agent runs with, and the time
/// now (Unix seconds). A clock that went back counts as no time passed.
pub fn judge(record: &Record, intervals: Intervals, now: i64) -> Verdict {
    let age = |t: i64| now.saturating_sub(t).max(0).unsigned_abs();
    let error = record.error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
    let verdict = |healthy, why: String| Verdict { healthy, why };
    let Some(limit) = limit(intervals) else {
        // Polls happen only to report a command's result: nothing is late.
        return match (record.ok_at, &record.error) {
            (_, Some(e)) if age(record.started_at) > MARGIN.as_secs() => {
                verdict(false, format!("every interval is disabled, and the last poll failed: {e}"))
            }
            (Some(ok), _) => verdict(
                true,
                format!(
                    "every interval is disabled (polls only after a command); a successful poll within the last {} s{error}",
                    age(ok)
                ),
            ),
            (None, _) if age(record.started_at) <= MARGIN.as_secs() => {
                verdict(true, format!("started {} s ago; no successful poll yet{error}", age(record.started_at)))
            }
            (None, _) => verdict(false, format!("no successful poll since the agent started{error}")),
        };
    };
    let (interval, name) = poll_interval(intervals).unwrap_or((Duration::ZERO, "ping"));
    let rule = format!(
        "limit {} s: 3 × the {} s {name} interval + {} s",
        limit.as_secs(),
        interval.as_secs(),
        MARGIN.as_secs()
    );
    let limit = limit.as_secs();
    if let Some(ok) = record.ok_at
        && age(ok) <= limit
    {
        return verdict(true, format!("a successful poll within the last {} s ({rule}){error}", age(ok)));
    }
    let started = age(record.started_at);
    if started <= limit {
        let last = record.ok_at.map_or_else(
            || "no successful poll yet".to_owned(),
            |ok| format!("no successful poll yet (the last recorded is {} s old, before the start)", age(ok)),
        );
        return verdict(true, format!("started {started} s ago, within the grace period ({rule}); {last}{error}"));
    }
    match record.ok_at {
        Some(ok) => verdict(false, format!("no successful poll for {} s ({rule}){error}", age(ok))),
        None => verdict(false, format!("no successful poll since the agent started {started} s ago ({rule}){error}")),
    }
}

/// Reads DATA_PATH and decides, as `tern agent health` does. Nothing is
/// written. A missing or unreadable record is unhealthy, with the reason.
pub fn check(data_path: &Path, now: i64) -> Verdict {
    let unhealthy = |why: String| Verdict { healthy: false, why };
    let path = data_path.join(FILE);
    let record: Record = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return unhealthy(format!("{}: corrupt: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return unhealthy(format!(
                "no health record at {}: the agent has not started with DATA_PATH={}",
                path.display(),
                data_path.display()
            ));
        }
        Err(e) => return unhealthy(format!("{}: {e}", path.display())),
    };
    let meta = match Store::at(data_path).meta() {
        Ok(m) => m,
        Err(e) => return unhealthy(e.to_string()),
    };
    let mut intervals = meta.intervals.map_or_else(Intervals::default, |[p, s, c]| Intervals::from_secs(p, s, c));
    if let Some(wait) = record.wait_s.filter(|_| record.mode.starts_with(super::enrol::WAITING)) {
        // Waiting for admission: judged by how often it asks.
        let wait = u32::try_from(wait).unwrap_or(u32::MAX);
        intervals = Intervals::from_secs(wait, 0, 0);
    }
    let mut verdict = judge(&record, intervals, now);
    // A device with a fleet join token that is not an environment yet
    // says where it stands (`agent::enrol`).
    // A refused or rejected one will not work until someone acts: it is
    // unhealthy, with the server's words.
    if record.mode.starts_with(super::enrol::NOT_ADMITTED) {
        let why = record.error.as_deref().unwrap_or(super::enrol::NOT_ADMITTED);
        return Verdict { healthy: false, why: why.to_owned() };
    }
    if record.mode.starts_with(super::enrol::WAITING) {
        verdict.why = format!("{}; {}", record.mode, verdict.why);
    }
    verdict
}

/// Keeps the record for the running agent, writing it only when it must.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    record: Record,
    /// What the file holds, and when it was written.
    written: Option<(Instant, Record)>,
    /// Writes so far (for tests and logs).
    pub writes: u64,
}

impl Recorder {
    /// Starts a record in `dir` (the agent's data directory), keeping the
    /// last successful poll of an earlier run, and writes it.
    pub fn start(dir: &Path, now: i64) -> Self {
        let path = dir.join(FILE);
        let earlier = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
        let record = Record {
            started_at: now,
            ok_at: earlier.and_then(|r| r.ok_at),
            error: None,
            mode: String::new(),
            wait_s: None,
        };
        let mut r = Self { path, record, written: None, writes: 0 };
        r.write();
        r
    }

    /// The record as it is now (maybe not written yet).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// A poll went through at `now` (Unix seconds).
    pub fn success(&mut self, now: i64) {
        let first = self.record.ok_at.is_none_or(|t| t < self.record.started_at);
        self.record.ok_at = Some(now);
        self.record.error = None;
        if first {
            // This run's first: the check need not lean on the grace period.
            self.write();
        } else {
            self.maybe_write();
        }
    }

    /// How the agent reaches the server now (written at once when it
    /// changed: an operator reads why it polls).
    pub fn mode(&mut self, mode: &str) {
        if self.record.mode != mode || self.record.wait_s.is_some() {
            self.record.wait_s = None;
            mode.clone_into(&mut self.record.mode);
            self.write();
        }
    }

    /// The device waits for admission, asking every `interval` (written at
    /// once when that changed).
    pub fn waiting(&mut self, mode: &str, interval: std::time::Duration) {
        let wait = Some(interval.as_secs());
        if self.record.mode != mode || self.record.wait_s != wait {
            mode.clone_into(&mut self.record.mode);
            self.record.wait_s = wait;
            self.write();
        }
    }

    /// A poll failed.
    pub fn failure(&mut self, why: &str) {
        self.record.error = Some(super::run::clip(why, MAX_ERROR));
        self.maybe_write();
    }

    fn maybe_write(&mut self) {
        let due = match &self.written {
            None => true,
            Some((at, file)) => {
                // Polls started or stopped failing: say so now. Otherwise
                // (a later success, another error text) once a refresh.
                file.error.is_some() != self.record.error.is_some() || (*file != self.record && at.elapsed() >= REFRESH)
            }
        };
        if due {
            self.write();
        }
    }

    /// Replaces the file (write, rename; no fsync: losing the newest record
    /// in a crash costs nothing the margin does not cover).
    fn write(&mut self) {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.record).expect("serializable");
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        match r {
            Ok(()) => {
                self.written = Some((Instant::now(), self.record.clone()));
                self.writes += 1;
            }
            // Not fatal: the health check then says the record is old.
            Err(e) => tracing::warn!("writing {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn rec(started_ago: i64, ok_ago: Option<i64>, error: Option<&str>) -> Record {
        Record {
            started_at: NOW - started_ago,
            ok_at: ok_ago.map(|a| NOW - a),
            error: error.map(str::to_owned),
            mode: String::new(),
            wait_s: None,
        }
    }

    fn minute() -> Intervals {
        Intervals::default()
    }

    #[test]
    fn the_limit_is_three_ping_intervals_and_a_minute() {
        assert_eq!(limit(minute()), Some(Duration::from_secs(240)));
        assert_eq!(limit(Intervals::from_secs(5, 5, 5)), Some(Duration::from_secs(75)));
        // Ping disabled: the agent polls at the shortest other interval.
        assert_eq!(poll_interval(Intervals::from_secs(0, 3600, 120)), Some((Duration::from_secs(120), "command")));
        assert_eq!(limit(Intervals::from_secs(0, 3600, 120)), Some(Duration::from_secs(420)));
        // The ping wins even when another is shorter: it is the heartbeat.
        assert_eq!(limit(Intervals::from_secs(600, 60, 60)), Some(Duration::from_secs(1860)));
        assert_eq!(limit(Intervals::from_secs(0, 0, 0)), None);
    }

    #[test]
    fn a_recent_successful_poll_is_healthy_and_an_old_one_is_not() {
        let v = judge(&rec(3600, Some(30), None), minute(), NOW);
        assert!(v.healthy, "{v}");
        assert_eq!(
            v.to_string(),
            "healthy: a successful poll within the last 30 s (limit 240 s: 3 × the 60 s ping interval + 60 s)"
        );
        assert!(judge(&rec(3600, Some(240), None), minute(), NOW).healthy, "the limit itself is still healthy");
        let v = judge(&rec(3600, Some(241), Some("connection refused")), minute(), NOW);
        assert!(!v.healthy);
        assert_eq!(
            v.to_string(),
            "unhealthy: no successful poll for 241 s (limit 240 s: 3 × the 60 s ping interval + 60 s); last error: \
             connection refused"
        );
        // Longer intervals allow longer silences.
        assert!(judge(&rec(86_400, Some(3000), None), Intervals::from_secs(1000, 0, 0), NOW).healthy);
        assert!(!judge(&rec(86_400, Some(3061), None), Intervals::from_secs(1000, 0, 0), NOW).healthy);
    }

    #[test]
    fn a_just_started_agent_is_healthy_for_a_grace_period() {
        let v = judge(&rec(10, None, None), minute(), NOW);
        assert!(v.healthy && v.why.contains("grace period") && v.why.contains("no successful poll yet"), "{v}");
        let v = judge(&rec(200, None, Some("the server does not accept this agent's EDGE_KEY")), minute(), NOW);
        assert!(v.healthy && v.why.ends_with("last error: the server does not accept this agent's EDGE_KEY"), "{v}");
        let v = judge(&rec(241, None, Some("connection refused")), minute(), NOW);
        assert!(!v.healthy);
        assert!(v.why.starts_with("no successful poll since the agent started 241 s ago"), "{v}");
        // A restart after a long stop: the old success does not count, the
        // grace period does.
        let v = judge(&rec(20, Some(7200), None), minute(), NOW);
        assert!(
            v.healthy && v.why.ends_with("no successful poll yet (the last recorded is 7200 s old, before the start)"),
            "{v}"
        );
        assert!(!judge(&rec(300, Some(7200), None), minute(), NOW).healthy);
    }

    #[test]
    fn every_interval_disabled_judges_the_last_poll_only() {
        let off = Intervals::from_secs(0, 0, 0);
        assert!(judge(&rec(86_400, Some(80_000), None), off, NOW).healthy);
        assert!(judge(&rec(30, None, None), off, NOW).healthy);
        assert!(!judge(&rec(120, None, None), off, NOW).healthy);
        let v = judge(&rec(86_400, Some(80_000), Some("connection refused")), off, NOW);
        assert!(!v.healthy && v.why.ends_with("the last poll failed: connection refused"), "{v}");
    }

    #[test]
    fn a_clock_that_went_back_counts_as_no_time() {
        let v = judge(&rec(-100, Some(-50), None), minute(), NOW);
        assert!(v.healthy && v.why.starts_with("a successful poll within the last 0 s"), "{v}");
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-health-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn check_reads_the_record_and_the_intervals_the_agent_runs_with() {
        let dir = tempdir("check");
        let v = check(&dir, NOW);
        assert!(!v.healthy && v.why.starts_with("no health record at "), "{v}");
        std::fs::write(dir.join(FILE), serde_json::to_vec(&rec(3600, Some(500), None)).unwrap()).unwrap();
        assert!(!check(&dir, NOW).healthy, "500 s is too old at the default 60 s");
        let store = Store::open(&dir).unwrap();
        store
            .save_meta(&super::super::store::Meta { counter_end: 100, intervals: Some([300, 300, 300]), key_id: None })
            .unwrap();
        let v = check(&dir, NOW);
        assert!(v.healthy && v.why.contains("3 × the 300 s ping interval"), "{v}");
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        let v = check(&dir, NOW);
        assert!(!v.healthy && v.why.contains("corrupt"), "{v}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_written_at_start_on_changes_and_at_most_once_a_refresh() {
        let dir = tempdir("recorder");
        std::fs::write(dir.join(FILE), serde_json::to_vec(&rec(9000, Some(8000), None)).unwrap()).unwrap();
        let mut r = Recorder::start(&dir, NOW);
        assert_eq!(r.writes, 1);
        assert_eq!(
            r.record(),
            &Record { started_at: NOW, ok_at: Some(NOW - 8000), error: None, mode: String::new(), wait_s: None },
            "kept"
        );
        // This run's first success is written at once; then, with a poll
        // every 5 s for 10 minutes, a write a minute, not one a poll.
        r.success(NOW);
        assert_eq!(r.writes, 2);
        for i in 1..=120 {
            tokio::time::advance(Duration::from_secs(5)).await;
            r.success(NOW + i * 5);
        }
        assert_eq!(r.writes, 2 + 10, "{}", r.writes);
        let file: Record = serde_json::from_slice(&std::fs::read(dir.join(FILE)).unwrap()).unwrap();
        assert!(file.ok_at.unwrap() >= NOW + 600 - 60, "at most a refresh old: {file:?}");
        // A failure is written at once; repeating it is not.
        r.failure("connection refused");
        assert_eq!(r.writes, 13);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(5)).await;
            r.failure("connection refused");
        }
        assert_eq!(r.writes, 13);
        // Recovery is written at once.
        r.success(NOW + 800);
        assert_eq!(r.writes, 14);
        let file: Record = serde_json::from_slice(&std::fs::read(dir.join(FILE)).unwrap()).unwrap();
        assert_eq!(
            file,
            Record { started_at: NOW, ok_at: Some(NOW + 800), error: None, mode: String::new(), wait_s: None }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
