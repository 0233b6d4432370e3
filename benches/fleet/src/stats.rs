//! What a run measures: poll latencies (HdrHistogram, microseconds),
//! counters, errors by kind, and the pure arithmetic the report does on
//! them (percentiles, rates, scaling to a day).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency recorded exactly (larger ones are clamped): 10 minutes.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS).clamp(1, MAX_MICROS);
        self.0.saturating_record(us);
    }

    /// Adds another histogram's values.
    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The percentiles the report shows, in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |q: f64| if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(q) as f64 / 1000.0 };
        LatencySummary {
            count: self.0.len(),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if self.0.is_empty() { 0.0 } else { self.0.max() as f64 / 1000.0 },
        }
    }
}

/// Percentiles of a latency histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

/// Why a poll or an API call failed, as the report counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// TCP connect failed (refused, no port, no file).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The HTTP exchange failed (the connection closed under a request).
    Http,
    /// No reply within the poll timeout.
    Timeout,
    /// An HTTP status other than 200 without a sealed refusal.
    Status,
    /// A reply whose MAC did not check.
    ReplyMac,
    /// A reply that did not decode.
    Decode,
    /// A sealed refusal: a replayed counter.
    RefusedReplay,
    /// A sealed refusal: bound to another agent.
    RefusedBound,
    /// A sealed refusal of another kind (body, size, secret).
    RefusedOther,
    /// The server asked for the whole state again (the delta did not apply).
    Resync,
    /// An API call (environment, command) failed.
    Api,
}

impl ErrorKind {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::ReplyMac => "reply_mac",
            Self::Decode => "decode",
            Self::RefusedReplay => "refused_replay",
            Self::RefusedBound => "refused_bound",
            Self::RefusedOther => "refused_other",
            Self::Resync => "resync",
            Self::Api => "api",
        }
    }
}

/// One measuring window's figures, shared by every agent task.
#[derive(Debug, Default)]
pub struct Window {
    inner: Mutex<Counts>,
}

/// The counts of a window.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Every successful poll's latency, as the agent sees it (a new
    /// connection's TCP and TLS handshakes included).
    pub all: Latency,
    /// Polls on a kept-alive connection.
    pub kept: Latency,
    /// Polls that opened a new connection first.
    pub fresh: Latency,
    /// Queued (API) to result stored (the agent's next poll acknowledged).
    pub command_round_trip: Latency,
    /// Polls that carried a state change.
    pub changes: u64,
    /// Command results acknowledged by the server.
    pub results_acked: u64,
    /// Commands received by agents.
    pub commands_received: u64,
    /// Commands queued through the API.
    pub commands_queued: u64,
    /// Connections opened.
    pub connections: u64,
    /// Of which resumed a TLS session.
    pub resumed: u64,
    /// Poll bytes on the wire up (sealed body) and down (sealed reply).
    pub body_up: u64,
    /// See `body_up`.
    pub body_down: u64,
    /// Failures by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Window {
    /// Runs `f` on the counts.
    pub fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Counts a failure.
    pub fn error(&self, kind: ErrorKind) {
        self.with(|c| *c.errors.entry(kind).or_insert(0) += 1);
    }

    /// Takes the counts so far and starts afresh.
    pub fn take(&self) -> Counts {
        self.with(std::mem::take)
    }
}

impl Counts {
    /// Errors by name, for the report.
    pub fn errors_by_name(&self) -> BTreeMap<String, u64> {
        self.errors.iter().map(|(k, v)| (k.name().to_owned(), *v)).collect()
    }

    /// All errors.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Events per second over `elapsed`.
pub fn per_second(events: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { events as f64 / elapsed.as_secs_f64() }
}

/// A growth of `bytes` over `elapsed` by `agents`, scaled to one agent
/// and one day (86,400 s). Negative growth (a checkpoint shrank a WAL) is
/// reported as it is.
pub fn per_agent_per_day(bytes: i64, agents: usize, elapsed: Duration) -> f64 {
    if agents == 0 || elapsed.is_zero() {
        return 0.0;
    }
    bytes as f64 / agents as f64 * (86_400.0 / elapsed.as_secs_f64())
}

/// CPU time per event, in milliseconds.
pub fn cpu_ms_per(cpu: Duration, events: u64) -> f64 {
    if events == 0 { 0.0 } else { cpu.as_secs_f64() * 1000.0 / events as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Latency::default();
        // 1..=1000 ms, once each.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        // Three significant digits: within 0.1 %.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(s.p50_ms, 500.0), "{s:?}");
        assert!(near(s.p99_ms, 990.0), "{s:?}");
        assert!(near(s.p999_ms, 999.0), "{s:?}");
        assert!(near(s.max_ms, 1000.0), "{s:?}");
    }

    #[test]
    fn a_rare_slow_poll_moves_p999_not_p99() {
        let mut h = Latency::default();
        for _ in 0..9_990 {
            h.record(Duration::from_millis(2));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(800));
        }
        let s = h.summary();
        assert!(s.p99_ms < 2.1, "{s:?}");
        assert!(s.p999_ms < 2.1, "the 10 slow ones are exactly the top 0.1 %: {s:?}");
        h.record(Duration::from_millis(800));
        assert!(h.summary().p999_ms > 799.0);
    }

    #[test]
    fn an_empty_histogram_reports_zeros_and_huge_values_are_clamped() {
        assert_eq!(Latency::default().summary(), LatencySummary::default());
        let mut h = Latency::default();
        h.record(Duration::from_secs(3600));
        assert!((h.summary().max_ms - 600_000.0).abs() < 600.0);
        let mut sum = Latency::default();
        sum.add(&h);
        sum.add(&h);
        assert_eq!(sum.count(), 2);
    }

    #[test]
    fn growth_is_scaled_to_one_agent_and_one_day() {
        // 1 MB over 10 minutes by 100 agents: 144 MB a day, 1.44 MB an agent.
        let g = per_agent_per_day(1_000_000, 100, Duration::from_secs(600));
        assert!((g - 1_440_000.0).abs() < 1e-6, "{g}");
        assert_eq!(per_agent_per_day(-4096, 1, Duration::from_secs(86_400)), -4096.0);
        assert_eq!(per_agent_per_day(5, 0, Duration::from_secs(1)), 0.0);
        assert_eq!(per_agent_per_day(5, 1, Duration::ZERO), 0.0);
    }

    #[test]
    fn rates_and_cpu_per_event() {
        assert_eq!(per_second(500, Duration::from_secs(2)), 250.0);
        assert_eq!(per_second(1, Duration::ZERO), 0.0);
        assert_eq!(cpu_ms_per(Duration::from_millis(1500), 3000), 0.5);
        assert_eq!(cpu_ms_per(Duration::from_secs(1), 0), 0.0);
    }

    #[test]
    fn a_window_counts_errors_by_kind_and_starts_afresh() {
        let w = Window::default();
        w.error(ErrorKind::Timeout);
        w.error(ErrorKind::Timeout);
        w.error(ErrorKind::Tls);
        let c = w.take();
        assert_eq!(c.error_total(), 3);
        assert_eq!(c.errors_by_name()["timeout"], 2);
        assert_eq!(w.take().error_total(), 0);
    }
}
