//! The agent's poll scheduler. It does no I/O and reads no clock: the caller
//! passes `now` (time since the agent started) and gets back when to wake
//! and what the next poll must carry. Tests drive it with any clock.
//!
//! * Three timers, as in Portainer's async agent: **ping** (a heartbeat),
//!   **snapshot** (send the state delta) and **command** (fetch commands and
//!   send results). Each can be disabled. Every poll can carry everything;
//!   the timers decide when a poll is due and whether it carries the delta.
//! * Timers that fall together make one request: when one fires, any other
//!   due within a small window fires with it.
//! * First contact happens at start, not after a full interval.
//! * While the server cannot be reached: exponential backoff (backon) with
//!   full jitter, capped, reset on the first success. Timers stay due, so the
//!   poll that finally gets through carries everything that waited.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Seconds-based intervals; `None` disables a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Heartbeat.
    pub ping: Option<Duration>,
    /// State delta.
    pub snapshot: Option<Duration>,
    /// Commands and results.
    pub command: Option<Duration>,
}

impl Default for Intervals {
    /// One minute each, Portainer's default.
    fn default() -> Self {
        let m = Some(Duration::from_secs(60));
        Self { ping: m, snapshot: m, command: m }
    }
}

impl Intervals {
    /// From the wire form: seconds, 0 disables.
    pub fn from_secs(ping: u32, snapshot: u32, command: u32) -> Self {
        let d = |s: u32| (s > 0).then(|| Duration::from_secs(s.into()));
        Self { ping: d(ping), snapshot: d(snapshot), command: d(command) }
    }

    fn get(&self, t: Timer) -> Option<Duration> {
        match t {
            Timer::Ping => self.ping,
            Timer::Snapshot => self.snapshot,
            Timer::Command => self.command,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Ping,
    Snapshot,
    Command,
}

const TIMERS: [Timer; 3] = [Timer::Ping, Timer::Snapshot, Timer::Command];

/// What a poll made now must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// It is a heartbeat.
    pub ping: bool,
    /// It carries the state delta.
    pub snapshot: bool,
    /// It fetches commands and carries results.
    pub command: bool,
}

impl Due {
    fn set(&mut self, t: Timer) {
        match t {
            Timer::Ping => self.ping = true,
            Timer::Snapshot => self.snapshot = true,
            Timer::Command => self.command = true,
        }
    }

    fn has(&self, t: Timer) -> bool {
        match t {
            Timer::Ping => self.ping,
            Timer::Snapshot => self.snapshot,
            Timer::Command => self.command,
        }
    }

    /// True when nothing is due.
    pub fn is_empty(&self) -> bool {
        !(self.ping || self.snapshot || self.command)
    }
}

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First retry delay (before jitter).
    pub min: Duration,
    /// Cap on the delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 2 s doubling up to 10 minutes: a link down for hours costs a few
    /// connection attempts an hour, and a short drop is retried quickly.
    fn default() -> Self {
        Self { min: Duration::from_secs(2), max: Duration::from_secs(600) }
    }
}

/// The scheduler. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    intervals: Intervals,
    next: [Option<Duration>; 3],
    policy: BackoffPolicy,
    backoff: Option<backon::ExponentialBackoff>,
    retry_at: Option<Duration>,
    rng: fastrand::Rng,
}

/// Timers due within this much of each other fire together: a tenth of the
/// shorter interval, at most 5 s.
fn window(interval: Duration) -> Duration {
    (interval / 10).min(Duration::from_secs(5))
}

impl Scheduler {
    /// A scheduler whose every enabled timer is due at `now` (first contact
    /// at start). `seed` seeds the jitter.
    pub fn new(now: Duration, intervals: Intervals, policy: BackoffPolicy, seed: u64) -> Self {
        let next = TIMERS.map(|t| intervals.get(t).map(|_| now));
        Self { intervals, next, policy, backoff: None, retry_at: None, rng: fastrand::Rng::with_seed(seed) }
    }

    /// The intervals in force.
    pub fn intervals(&self) -> Intervals {
        self.intervals
    }

    /// When to wake next: the earliest timer, or the retry time while
    /// backing off. `None` when every timer is disabled.
    pub fn next_wake(&self) -> Option<Duration> {
        let timers = self.next.iter().flatten().min().copied();
        match self.retry_at {
            Some(r) => Some(timers.map_or(r, |t| t.max(r))),
            None => timers,
        }
    }

    /// What a poll made at `now` carries; empty when nothing is due yet (or
    /// while waiting out a backoff).
    pub fn due(&self, now: Duration) -> Due {
        let mut due = Due::default();
        if self.retry_at.is_some_and(|r| now < r) {
            return due;
        }
        let fired: Vec<Timer> =
            TIMERS.into_iter().filter(|&t| self.next[t as usize].is_some_and(|n| n <= now)).collect();
        if fired.is_empty() {
            return due;
        }
        let shortest = fired.iter().filter_map(|&t| self.intervals.get(t)).min().unwrap_or(Duration::ZERO);
        let horizon = now + window(shortest);
        for t in TIMERS {
            if self.next[t as usize].is_some_and(|n| n <= horizon) {
                due.set(t);
            }
        }
        due
    }

    /// The poll carrying `due` went through at `now`. Reschedules the timers
    /// it served, resets the backoff, and takes new intervals if the server
    /// sent some (a changed interval restarts its timer from `now`).
    pub fn on_success(&mut self, now: Duration, due: Due, new_intervals: Option<Intervals>) {
        self.backoff = None;
        self.retry_at = None;
        if let Some(new) = new_intervals.filter(|n| *n != self.intervals) {
            for t in TIMERS {
                if new.get(t) != self.intervals.get(t) {
                    self.next[t as usize] = new.get(t).map(|i| now + i);
                }
            }
            self.intervals = new;
        }
        for t in TIMERS {
            if due.has(t) {
                self.next[t as usize] = self.intervals.get(t).map(|i| now + i);
            }
        }
    }

    /// The poll failed at `now` (no connection, timeout, 5xx). Returns the
    /// delay before the next attempt: exponential, capped, with full jitter
    /// (uniform between zero and the exponential delay).
    pub fn on_failure(&mut self, now: Duration) -> Duration {
        let policy = self.policy;
        let backoff = self.backoff.get_or_insert_with(|| {
            ExponentialBuilder::default()
                .with_min_delay(policy.min)
                .with_max_delay(policy.max)
                .with_factor(2.0)
                .without_max_times()
                .build()
        });
        let ceiling = backoff.next().unwrap_or(policy.max);
        let delay = ceiling.mul_f64(self.rng.f64());
        self.retry_at = Some(now + delay);
        delay
    }

    /// Brings the snapshot and command timers forward to `at` (when they
    /// are later): command results are waiting, or the server asked for a
    /// resync. When both timers are disabled, the ping timer carries them.
    /// A backoff in progress is not cut short.
    pub fn hurry(&mut self, at: Duration) {
        let mut moved = false;
        for t in [Timer::Snapshot, Timer::Command] {
            if let Some(n) = self.next[t as usize].as_mut() {
                *n = (*n).min(at);
                moved = true;
            }
        }
        if !moved && let Some(n) = self.next[Timer::Ping as usize].as_mut() {
            *n = (*n).min(at);
        }
    }

    /// True while backing off after a failure.
    pub fn backing_off(&self) -> bool {
        self.backoff.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn sched(ping: u32, snapshot: u32, command: u32) -> Scheduler {
        Scheduler::new(S(0), Intervals::from_secs(ping, snapshot, command), BackoffPolicy::default(), 7)
    }

    #[test]
    fn first_contact_is_at_start_with_everything() {
        let s = sched(60, 60, 60);
        assert_eq!(s.next_wake(), Some(S(0)));
        assert_eq!(s.due(S(0)), Due { ping: true, snapshot: true, command: true });
    }

    #[test]
    fn timers_that_fall_together_make_one_request() {
        let mut s = sched(60, 300, 60);
        let d = s.due(S(0));
        s.on_success(S(0), d, None);
        // At 60 s: ping and command together, no snapshot.
        assert_eq!(s.next_wake(), Some(S(60)));
        assert_eq!(s.due(S(60)), Due { ping: true, snapshot: false, command: true });
        let mut polls = 0;
        let mut now = S(60);
        while now <= S(300) {
            let d = s.due(now);
            if !d.is_empty() {
                polls += 1;
                s.on_success(now, d, None);
            }
            now = s.next_wake().unwrap();
        }
        // 60, 120, 180, 240, 300 (the snapshot joins the 300 s poll).
        assert_eq!(polls, 5);
        assert_eq!(s.next[Timer::Snapshot as usize], Some(S(600)));
    }

    #[test]
    fn nearly_coinciding_timers_are_coalesced() {
        let mut s = sched(60, 0, 62);
        let d = s.due(S(0));
        s.on_success(S(0), d, None);
        // Command at 62 is within the window of the ping at 60.
        assert_eq!(s.due(S(60)), Due { ping: true, snapshot: false, command: true });
    }

    #[test]
    fn disabled_timers_never_fire() {
        let s = sched(0, 0, 0);
        assert_eq!(s.next_wake(), None);
        assert!(s.due(S(1_000_000)).is_empty());
    }

    #[test]
    fn backoff_grows_with_full_jitter_is_capped_and_resets() {
        let mut s = sched(60, 60, 60);
        let mut ceilings = Vec::new();
        let mut now = S(0);
        for _ in 0..20 {
            let d = s.on_failure(now);
            assert!(s.due(now).is_empty() || d.is_zero(), "nothing is due while backing off");
            ceilings.push(d);
            now += d;
        }
        // Full jitter: every delay is within [0, cap]; the cap holds.
        assert!(ceilings.iter().all(|d| *d <= S(600)));
        // It grows: the late delays are, on average, far above the first.
        let early: Duration = ceilings[..3].iter().sum();
        let late: Duration = ceilings[12..15].iter().sum();
        assert!(late > early * 4, "{ceilings:?}");
        // After hours offline, the first poll that gets through carries everything.
        assert_eq!(s.due(now), Due { ping: true, snapshot: true, command: true });
        s.on_success(now, s.due(now), None);
        assert!(!s.backing_off());
        assert_eq!(s.next_wake(), Some(now + S(60)));
        // And the next failure starts small again.
        assert!(s.on_failure(now) <= S(2));
    }

    #[test]
    fn hurry_brings_snapshot_and_command_forward_only() {
        let mut s = sched(60, 300, 60);
        let d = s.due(S(0));
        s.on_success(S(0), d, None);
        s.hurry(S(2));
        assert_eq!(s.next_wake(), Some(S(2)));
        assert_eq!(s.due(S(2)), Due { ping: false, snapshot: true, command: true });
        // A timer already due sooner stays.
        s.hurry(S(100));
        assert_eq!(s.next_wake(), Some(S(2)));
        // With snapshot and command disabled, the ping carries the results.
        let mut p = sched(60, 0, 0);
        let d = p.due(S(0));
        p.on_success(S(0), d, None);
        p.hurry(S(3));
        assert_eq!(p.due(S(3)), Due { ping: true, snapshot: false, command: false });
    }

    #[test]
    fn new_intervals_apply_from_the_reply() {
        let mut s = sched(60, 60, 60);
        let d = s.due(S(0));
        s.on_success(S(0), d, Some(Intervals::from_secs(3600, 300, 60)));
        assert_eq!(s.next[Timer::Ping as usize], Some(S(3600)));
        assert_eq!(s.next[Timer::Snapshot as usize], Some(S(300)));
        assert_eq!(s.next[Timer::Command as usize], Some(S(60)));
        assert_eq!(s.intervals(), Intervals::from_secs(3600, 300, 60));
    }
}
