//! `--find-capacity`: the largest fleet at 60 s intervals that this
//! machine serves with p99 < 250 ms, found by stepping the poll rate.
//!
//! # Method
//!
//! Waiting 60 s between polls would need 100,000 real agents to load the
//! server like 100,000 agents; polling a small fleet every second instead
//! is not the same fleet either (its connections, its state sizes per
//! poll, its change rates would all be off). What a 60 s fleet of F agents
//! asks of the server per second is F/60 polls, each with the same work:
//! the same state sizes, the same chance of carrying a change, of
//! carrying a command's result, of opening a new connection. So the
//! capacity run keeps a fleet of N simulated agents (N connections), sets
//! its poll interval to N/R for a rate R, keeps the per-poll work equal to
//! a 60 s fleet's (the change share and command rate are given per
//! 60 s interval and converted to per poll), and steps R:
//!
//! * up by `factor` while a step holds, down by it while none has held;
//! * once one held and one failed, bisects between them until they are
//!   within `resolution` of each other;
//! * a step holds when its p99 is under the limit, it has no errors, and
//!   the server kept up (at least 95 % of the offered rate was served).
//!
//! The answer is the largest rate that held, R, reported as R x 60 agents
//! at 60 s. What it does not cover: a 60 s fleet of F agents also holds F
//! connections (the server caps them, see the report's connection limit),
//! and its database holds F environments' states (N here).

use serde::Serialize;

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    /// Polls per second offered (agents / interval).
    pub offered: f64,
    /// Polls per second served.
    pub achieved: f64,
    /// p99 poll latency.
    pub p99_ms: f64,
    /// Failed polls.
    pub errors: u64,
    /// Whether it held.
    pub held: bool,
}

/// Whether a step holds: p99 under `limit_ms`, no error, and at least
/// 95 % of the offered rate served.
pub fn holds(offered: f64, achieved: f64, p99_ms: f64, errors: u64, limit_ms: f64) -> bool {
    p99_ms < limit_ms && errors == 0 && achieved >= offered * 0.95
}

/// Polls per second of `agents` agents polling every `interval_s`.
pub fn rate_of(agents: f64, interval_s: f64) -> f64 {
    agents / interval_s
}

/// Agents polling every `interval_s` that make `rate` polls per second.
pub fn agents_at(rate: f64, interval_s: f64) -> f64 {
    rate * interval_s
}

/// The rate stepper (see the module's notes). Pure: it is told whether
/// each rate held and says which rate to try next.
#[derive(Debug, Clone)]
pub struct Stepper {
    next: Option<f64>,
    held: Option<f64>,
    failed: Option<f64>,
    factor: f64,
    resolution: f64,
    min_rate: f64,
    max_rate: f64,
    steps_left: usize,
}

impl Stepper {
    /// Starts at `start` polls/s, stepping by `factor` (> 1) until a
    /// bracket is found, then bisecting to `resolution` (relative, e.g.
    /// 0.05); never below `min_rate` or above `max_rate`, at most
    /// `max_steps` steps.
    pub fn new(start: f64, factor: f64, resolution: f64, min_rate: f64, max_rate: f64, max_steps: usize) -> Self {
        assert!(factor > 1.0 && resolution > 0.0 && min_rate > 0.0 && max_rate >= min_rate);
        Self {
            next: Some(start.clamp(min_rate, max_rate)),
            held: None,
            failed: None,
            factor,
            resolution,
            min_rate,
            max_rate,
            steps_left: max_steps,
        }
    }

    /// The rate to try now; `None` when done.
    pub fn current(&self) -> Option<f64> {
        if self.steps_left == 0 { None } else { self.next }
    }

    /// The largest rate that held so far.
    pub fn largest_holding(&self) -> Option<f64> {
        self.held
    }

    /// The smallest rate that failed so far.
    pub fn smallest_failing(&self) -> Option<f64> {
        self.failed
    }

    /// Records whether the current rate held and moves on.
    pub fn record(&mut self, held: bool) {
        let Some(rate) = self.current() else { return };
        self.steps_left -= 1;
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.held, self.failed) {
            (Some(h), None) => (h < self.max_rate).then(|| (h * self.factor).min(self.max_rate)),
            (None, Some(f)) => (f > self.min_rate).then(|| (f / self.factor).max(self.min_rate)),
            (Some(h), Some(f)) if f <= h => None,
            (Some(h), Some(f)) => (f / h - 1.0 > self.resolution).then_some((h + f) / 2.0),
            (None, None) => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the stepper against a server that holds up to `limit` polls/s.
    fn search(limit: f64, start: f64) -> (Option<f64>, Vec<f64>) {
        let mut s = Stepper::new(start, 2.0, 0.05, 1.0, 100_000.0, 30);
        let mut tried = Vec::new();
        while let Some(rate) = s.current() {
            tried.push(rate);
            s.record(rate <= limit);
        }
        (s.largest_holding(), tried)
    }

    #[test]
    fn steps_up_until_a_step_fails_then_bisects_to_the_resolution() {
        let (found, tried) = search(1000.0, 100.0);
        let found = found.unwrap();
        assert!((1000.0 / 1.05..=1000.0).contains(&found), "{found} after {tried:?}");
        assert_eq!(&tried[..5], &[100.0, 200.0, 400.0, 800.0, 1600.0]);
        assert!(tried.len() < 12, "{tried:?}");
    }

    #[test]
    fn steps_down_when_the_first_step_fails() {
        let (found, tried) = search(30.0, 100.0);
        assert_eq!(tried[..3], [100.0, 50.0, 25.0]);
        let found = found.unwrap();
        assert!((30.0 / 1.05..=30.0).contains(&found), "{found} after {tried:?}");
    }

    #[test]
    fn nothing_holds_below_the_floor_and_everything_holds_up_to_the_ceiling() {
        let (found, tried) = search(0.5, 4.0);
        assert_eq!(found, None);
        assert_eq!(tried, vec![4.0, 2.0, 1.0]);
        let (found, _) = search(1e9, 10_000.0);
        assert_eq!(found, Some(100_000.0));
    }

    #[test]
    fn the_number_of_steps_is_bounded() {
        let mut s = Stepper::new(1.0, 1.01, 1e-9, 1.0, 1e12, 7);
        let mut n = 0;
        while s.current().is_some() {
            s.record(true);
            n += 1;
        }
        assert_eq!(n, 7);
    }

    #[test]
    fn a_step_holds_only_under_the_limit_without_errors_and_keeping_up() {
        assert!(holds(100.0, 99.0, 249.0, 0, 250.0));
        assert!(!holds(100.0, 99.0, 250.0, 0, 250.0));
        assert!(!holds(100.0, 99.0, 10.0, 1, 250.0));
        assert!(!holds(100.0, 90.0, 10.0, 0, 250.0), "the server fell behind");
    }

    #[test]
    fn a_rate_is_a_fleet_at_60_s() {
        assert_eq!(agents_at(1_666.0, 60.0), 99_960.0);
        assert_eq!(rate_of(6_000.0, 60.0), 100.0);
        // The capacity run's interval for N agents at rate R is N / R.
        assert_eq!(rate_of(500.0, 500.0 / 250.0), 250.0);
    }
}
