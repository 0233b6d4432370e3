//! The server's Prometheus metrics, `GET /metrics` on its port behind an
//! API token (the same bearer tokens the API takes; a scraper gets one of
//! its own with `tern token create`), in Prometheus' text format
//! (prometheus-client).
//!
//! Counted as things happen, per replica: polls by outcome and their
//! latency, bytes through agents' connections each way, open connections
//! and those an agent authenticated on, the database's transactions (by
//! kind: read or write) and their latency and failures. Read from the
//! database at each scrape, the same on every replica: environments and
//! those online, commands waiting for their agent and the age of the
//! oldest.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A poll's outcome, from its answer's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `unauthenticated`, `replay`, `agent_secret`, `bad`,
    /// `too_large`, `busy`, `timeout`, `error`.
    pub outcome: &'static str,
}

/// Why a connection was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `address`, `prefix`, `full` or `proxy`.
    pub reason: &'static str,
}

/// A direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// `up` (from agents) or `down`.
    pub direction: &'static str,
}

/// A kind of database transaction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `read` or `write`.
    pub kind: &'static str,
}

/// Every metric (see the module doc).
pub struct Metrics {
    registry: Registry,
    polls: Family<Outcome, Counter>,
    poll_seconds: Histogram,
    bytes: Family<Direction, Counter>,
    connections: Gauge,
    refused: Family<Reason, Counter>,
    agents: Gauge,
    db_seconds: Family<Kind, Histogram>,
    db_errors: Family<Kind, Counter>,
    environments: Gauge,
    online: Gauge,
    queued: Gauge,
    queued_age: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tern");
        let polls = Family::<Outcome, Counter>::default();
        registry.register("polls", "Polls answered, by outcome", polls.clone());
        // 1 ms to about 16 s.
        let poll_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register("poll_duration_seconds", "Time to answer a poll, from its first byte", poll_seconds.clone());
        let bytes = Family::<Direction, Counter>::default();
        registry.register("agent_bytes", "Bytes through agents' connections (TLS records)", bytes.clone());
        let connections = Gauge::default();
        registry.register("connections_open", "TLS connections open", connections.clone());
        let refused = Family::<Reason, Counter>::default();
        registry.register("connections_refused", "Connections refused, by reason", refused.clone());
        let agents = Gauge::default();
        registry.register("agents_connected", "Open connections an agent's poll authenticated on", agents.clone());
        let db_seconds =
            Family::<Kind, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register("db_transaction_seconds", "Database transactions' time, by kind", db_seconds.clone());
        let db_errors = Family::<Kind, Counter>::default();
        registry.register("db_errors", "Database transactions that failed in the database", db_errors.clone());
        let environments = Gauge::default();
        registry.register("environments", "Environments", environments.clone());
        let online = Gauge::default();
        registry.register("environments_online", "Environments online (the status rule)", online.clone());
        let queued = Gauge::default();
        registry.register("commands_queued", "Commands not yet confirmed by their agent", queued.clone());
        let queued_age = Gauge::default();
        registry.register(
            "commands_queued_oldest_age_seconds",
            "Age of the oldest command not yet confirmed by its agent",
            queued_age.clone(),
        );
        Self {
            registry,
            polls,
            poll_seconds,
            bytes,
            connections,
            refused,
            agents,
            db_seconds,
            db_errors,
            environments,
            online,
            queued,
            queued_age,
        }
    }

    /// A connection was refused: `reason` is `address`, `prefix`, `full`
    /// or `proxy` (a PROXY header that is missing, bad or untrusted).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// A poll was answered with `status` after `seconds`.
    pub fn poll(&self, status: u16, seconds: f64) {
        let outcome = match status {
            200 => "ok",
            401 => "unauthenticated",
            409 => "replay",
            403 => "agent_secret",
            400 | 411 => "bad",
            413 => "too_large",
            503 => "busy",
            408 => "timeout",
            _ => "error",
        };
        self.polls.get_or_create(&Outcome { outcome }).inc();
        self.poll_seconds.observe(seconds);
    }

    /// Bytes through an agent's connection.
    pub fn agent_bytes(&self, up: u64, down: u64) {
        self.bytes.get_or_create(&Direction { direction: "up" }).inc_by(up);
        self.bytes.get_or_create(&Direction { direction: "down" }).inc_by(down);
    }

    /// A connection opened (`1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// An agent authenticated on a connection (`1`), or its connection
    /// closed (`-1`).
    pub fn agent(&self, delta: i64) {
        self.agents.inc_by(delta);
    }

    /// A database transaction took `seconds`; `failed`: the database
    /// failed it.
    pub fn transaction(&self, write: bool, seconds: f64, failed: bool) {
        let kind = Kind { kind: if write { "write" } else { "read" } };
        self.db_seconds.get_or_create(&kind).observe(seconds);
        if failed {
            self.db_errors.get_or_create(&kind).inc();
        }
    }

    /// The text a scrape gets, with the figures read from the database.
    pub fn render(&self, fleet: &FleetGauges) -> String {
        self.environments.set(fleet.environments);
        self.online.set(fleet.online);
        self.queued.set(fleet.queued);
        self.queued_age.set(fleet.oldest_queued_age);
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape reads from the database.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetGauges {
    /// Environments.
    pub environments: i64,
    /// Online ones.
    pub online: i64,
    /// Commands not yet confirmed by their agent.
    pub queued: i64,
    /// The oldest one's age, seconds (0: none).
    pub oldest_queued_age: i64,
}
