//! Data usage's bodies: what polls cost on the wire.

use serde::{Deserialize, Serialize};

/// Bytes and polls over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageView {
    /// Bytes at the TLS socket from the agent.
    pub tls_up: u64,
    /// Bytes at the TLS socket to the agent.
    pub tls_down: u64,
    /// Poll request bodies.
    pub body_up: u64,
    /// Poll reply bodies.
    pub body_down: u64,
    /// Polls answered.
    pub polls: u64,
}

impl std::ops::AddAssign for UsageView {
    fn add_assign(&mut self, o: Self) {
        self.tls_up += o.tls_up;
        self.tls_down += o.tls_down;
        self.body_up += o.body_up;
        self.body_down += o.body_down;
        self.polls += o.polls;
    }
}

/// One UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayView {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Its first second.
    pub start: i64,
    /// What it cost.
    #[serde(flatten)]
    pub usage: UsageView,
}

/// One hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourView {
    /// Its first second.
    pub hour: i64,
    /// What it cost.
    #[serde(flatten)]
    pub usage: UsageView,
}

/// `GET /api/environments/{id}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentUsageView {
    /// The environment's id.
    pub environment: u64,
    /// Its name.
    pub name: String,
    /// How many days are covered.
    pub days: u32,
    /// The first second covered (the start of the first day).
    pub from: i64,
    /// The server's clock when it answered.
    pub now: i64,
    /// Over every day covered.
    pub total: UsageView,
    /// Since the start of today (UTC).
    pub today: UsageView,
    /// Each day, oldest first, today last.
    pub per_day: Vec<DayView>,
    /// Each hour of the last 7 days, oldest first, the current hour last.
    pub per_hour: Vec<HourView>,
}

/// Socket bytes of connections on which no poll authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnattributedView {
    /// Received by the server.
    pub tls_up: u64,
    /// Sent by the server.
    pub tls_down: u64,
    /// Connections.
    pub connections: u64,
}

/// Today and the period asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span<T> {
    /// Since the start of today (UTC).
    pub today: T,
    /// Over the days asked for, today included.
    pub period: T,
}

/// One environment in `GET /api/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLine {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// What it cost.
    #[serde(flatten)]
    pub usage: Span<UsageView>,
}

/// `GET /api/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetUsageView {
    /// How many days the period covers.
    pub days: u32,
    /// The first second of the period.
    pub from: i64,
    /// The first second of today (UTC).
    pub today_from: i64,
    /// The server's clock when it answered.
    pub now: i64,
    /// Every environment, by id.
    pub environments: Vec<FleetLine>,
    /// The sum over every environment.
    pub total: Span<UsageView>,
    /// Connections no environment answers for (failed polls, scanners
    /// that reached the poll endpoint).
    pub unattributed: Span<UnattributedView>,
}
