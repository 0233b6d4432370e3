//! How long the agent's path keeps an idle connection: NAT-timeout
//! discovery for the held session (issue #16).
//!
//! Every carrier NAT forgets an idle TCP mapping after some minutes (2 min
//! to 2 h, by operator), silently: packets either way are then dropped. The
//! session's keepalive is the held poll, answered by the server when its
//! hold ends, so the connection's longest silence is the hold. The learner
//! picks it:
//!
//! * it starts at a period below the shortest timeout seen in the field
//!   (`start`, 90 s by default);
//! * while holds of the current period survive (the reply arrives on time),
//!   it doubles the period, up to `max` (the ping interval, or two hours);
//! * when one does not (the connection is found dead), the period that
//!   failed is an upper bound and the last one that survived a lower bound,
//!   and the period steps back to the lower bound, then searches between
//!   them by halves until they are within 10 %;
//! * it then stays at the longest period known to survive. Once a day at
//!   that period it tries the failed bound again, since the path may have
//!   changed (another network, another NAT).
//!
//! What it learned is kept in `DATA_PATH` ([`FILE`]), so a restart starts
//! where it left off instead of paying the search again.
//!
//! Pure: no clock, no I/O but [`Learner::save`]; the caller reports each
//! hold's fate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file in `DATA_PATH`.
pub const FILE: &str = "keepalive.json";

/// The default first keepalive period: below the 2 minutes of the
/// shortest NAT timeouts in the field.
pub const DEFAULT_START: Duration = Duration::from_secs(90);

/// The longest keepalive: two hours, the least idle timeout RFC 5382
/// (REQ-5) asks of a NAT, and the server's longest hold.
pub const MAX_PERIOD: Duration = Duration::from_secs(7200);

/// Holds survived at the settled period before the failed bound is tried
/// again (about a day on a path with a 5-minute NAT).
const RETRY_AFTER: u32 = 288;

/// What is kept on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// The longest hold known to survive, in seconds (0: none yet).
    pub good: u64,
    /// The shortest hold known to fail, in seconds (0: none yet).
    pub bad: u64,
}

/// The learner. See the module doc.
#[derive(Debug, Clone)]
pub struct Learner {
    start: Duration,
    min: Duration,
    max: Duration,
    learned: Learned,
    period: Duration,
    /// Holds survived in a row at the settled period.
    settled_for: u32,
    /// Failures in a row without a hold surviving in between.
    pub failures_in_a_row: u32,
    path: Option<PathBuf>,
}

impl Learner {
    /// A learner starting at `start` (the shortest period it tries is a
    /// quarter of it), never above `max`, resuming what `dir` holds.
    pub fn new(start: Duration, max: Duration, dir: Option<&Path>) -> Self {
        let path = dir.map(|d| d.join(FILE));
        let learned = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Learned>(&b).ok())
            .unwrap_or_default();
        let start = start.max(Duration::from_secs(1));
        let mut l = Self {
            start,
            min: (start / 4).max(Duration::from_secs(1)),
            max: max.clamp(Duration::from_secs(1), MAX_PERIOD),
            learned,
            period: start,
            settled_for: 0,
            failures_in_a_row: 0,
            path,
        };
        l.period = l.next_period();
        l
    }

    /// The hold to ask for now.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// True when the period is the shortest it tries (a quarter of the
    /// first, or the cap), or twice that.
    pub fn at_floor(&self) -> bool {
        self.period <= self.min.min(self.max) * 2
    }

    /// What it learned.
    pub fn learned(&self) -> Learned {
        self.learned
    }

    /// A new cap (the ping interval changed).
    pub fn set_max(&mut self, max: Duration) {
        self.max = max.clamp(Duration::from_secs(1), MAX_PERIOD);
        self.period = self.period.min(self.max);
    }

    /// True once the search is over: the period is the longest known to
    /// survive and the next longer one tried failed (or it is the cap).
    pub fn settled(&self) -> bool {
        let good = Duration::from_secs(self.learned.good);
        good >= self.max || (self.learned.bad > 0 && self.learned.bad * 10 <= self.learned.good * 11)
    }

    fn next_period(&self) -> Duration {
        let good = Duration::from_secs(self.learned.good);
        let bad = Duration::from_secs(self.learned.bad);
        let p = if self.learned.good == 0 && self.learned.bad == 0 {
            self.start
        } else if self.learned.good == 0 {
            // Only failures so far: half the shortest that failed.
            (bad / 2).max(self.min)
        } else if self.learned.bad == 0 {
            (good * 2).max(self.start)
        } else if self.settled() {
            if self.settled_for >= RETRY_AFTER { bad } else { good }
        } else {
            // Between the bounds, by halves.
            good + (bad.saturating_sub(good)) / 2
        };
        p.clamp(self.min.min(self.max), self.max)
    }

    /// A hold of [`Self::period`] ended with its reply on time.
    pub fn survived(&mut self) {
        let p = self.period.as_secs();
        self.failures_in_a_row = 0;
        if p >= self.learned.bad && self.learned.bad > 0 {
            // The failed bound survived this time: the path changed.
            self.learned.bad = 0;
        }
        let grew = p > self.learned.good;
        self.learned.good = self.learned.good.max(p);
        if self.settled() && !grew {
            self.settled_for = self.settled_for.saturating_add(1);
        } else {
            self.settled_for = 0;
        }
        self.period = self.next_period();
        if grew {
            self.save();
        }
    }

    /// The connection was found dead during a hold of [`Self::period`] (no
    /// reply within the hold and a timeout).
    pub fn failed(&mut self) {
        let p = self.period.as_secs();
        self.failures_in_a_row += 1;
        self.settled_for = 0;
        if p <= self.learned.good {
            // What survived before does not now: trust it less.
            self.learned.good = p * 4 / 5;
        }
        self.learned.bad = if self.learned.bad == 0 { p } else { self.learned.bad.min(p) };
        if self.learned.good >= self.learned.bad {
            self.learned.good = self.learned.bad * 4 / 5;
        }
        self.period = self.next_period();
        self.save();
    }

    /// Writes what it learned to `DATA_PATH` (best effort: a lost file
    /// costs a new search, nothing else).
    fn save(&self) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.learned).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Runs holds against a NAT that forgets a mapping idle `nat` seconds
    /// or more, and returns the periods tried.
    fn against(nat: u64, learner: &mut Learner, holds: usize) -> Vec<u64> {
        let mut tried = Vec::new();
        for _ in 0..holds {
            let p = learner.period().as_secs();
            tried.push(p);
            if p < nat { learner.survived() } else { learner.failed() }
        }
        tried
    }

    #[test]
    fn it_settles_just_below_the_nat_timeout_within_a_few_failures() {
        for (nat, lo) in [(120, 100), (300, 270), (1800, 1620), (7200, 6500)] {
            let mut l = Learner::new(DEFAULT_START, MAX_PERIOD, None);
            let tried = against(nat, &mut l, 40);
            let failures = tried.iter().filter(|&&p| p >= nat).count();
            let end = *tried.last().unwrap();
            assert!(end < nat && end >= lo, "NAT {nat} s: settled at {end} s ({tried:?})");
            assert!(failures <= 6, "NAT {nat} s: {failures} failures ({tried:?})");
        }
    }

    #[test]
    fn the_cap_is_never_passed_and_a_path_that_changed_is_found_again() {
        let mut l = Learner::new(DEFAULT_START, S(600), None);
        let tried = against(100_000, &mut l, 10);
        assert!(tried.iter().all(|&p| p <= 600), "{tried:?}");
        assert_eq!(l.period(), S(600));
        // A shorter NAT now (the device moved): it steps back and settles.
        let tried = against(200, &mut l, 30);
        assert!(*tried.last().unwrap() < 200 && *tried.last().unwrap() >= 150, "{tried:?}");
        // The NAT is gone again: the daily retry finds the longer period.
        let tried = against(100_000, &mut l, 2 * RETRY_AFTER as usize);
        assert_eq!(*tried.last().unwrap(), 600, "{:?}", &tried[tried.len() - 5..]);
    }

    #[test]
    fn what_it_learned_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("tern-keepalive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut l = Learner::new(DEFAULT_START, MAX_PERIOD, Some(&dir));
        against(300, &mut l, 30);
        let settled = l.period();
        let again = Learner::new(DEFAULT_START, MAX_PERIOD, Some(&dir));
        assert_eq!(again.period(), settled);
        assert_eq!(again.learned(), l.learned());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failures_from_the_start_step_down_to_the_floor() {
        let mut l = Learner::new(S(80), MAX_PERIOD, None);
        let tried = against(5, &mut l, 6);
        assert_eq!(tried[..3], [80, 40, 20]);
        assert!(tried.iter().all(|&p| p >= 20), "the floor is a quarter of the start: {tried:?}");
        assert_eq!(l.failures_in_a_row, 6);
    }
}
