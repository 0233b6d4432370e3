//! The report: a table for people, JSON (`--json`) for scripts and tests.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::capacity::Step;
use crate::stats::LatencySummary;

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `fleet`, `idle` or `capacity`.
    pub mode: String,
    /// The server's URL.
    pub server: String,
    /// Whether this run started the server.
    pub spawned: bool,
    /// Simulated agents.
    pub agents: usize,
    /// Seconds between an agent's polls (0 in the idle mode).
    pub interval_s: f64,
    /// Interval jitter share.
    pub jitter: f64,
    /// Share of agents whose state changes per interval.
    pub change_share: f64,
    /// Commands queued per second.
    pub command_rate: f64,
    /// Share of agents on a new connection every poll.
    pub reconnect_share: f64,
    /// Loopback source addresses used.
    pub source_addrs: usize,
    /// Open-file limit of this process (the spawned server inherits it).
    pub open_file_limit: u64,
    /// Creating the environments through the API.
    pub enrolment: Enrolment,
    /// The first poll of every agent (its full state).
    pub first_contact: FirstContact,
    /// The measured window.
    pub polls: Polls,
    /// Commands through the API and back.
    pub commands: Commands,
    /// The server process.
    pub server_process: ServerProcess,
    /// This process (it shares the machine).
    pub simulator: Simulator,
    /// The database files.
    pub database: Database,
    /// Failures in the measured window, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Failures in the measured window, all kinds.
    pub error_total: u64,
    /// The capacity search, when asked for.
    pub capacity: Option<Capacity>,
}

/// Creating the environments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Enrolment {
    /// Environments created.
    pub environments: usize,
    /// Seconds it took.
    pub seconds: f64,
    /// Per second.
    pub per_second: f64,
}

/// Every agent's first poll.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FirstContact {
    /// Agents that made it.
    pub agents: usize,
    /// Seconds from the first agent's start to the last first contact.
    pub seconds: f64,
    /// Its latency.
    pub latency: LatencySummary,
    /// Failures before every agent got through, by kind.
    pub errors: BTreeMap<String, u64>,
}

/// The measured window's polls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Polls {
    /// Seconds measured.
    pub seconds: f64,
    /// Polls answered.
    pub total: u64,
    /// Polls answered per second, sustained over the window.
    pub per_second: f64,
    /// Polls per second the fleet offered (agents / interval; 0 in the
    /// idle mode, which offers as many as are answered).
    pub offered_per_second: f64,
    /// Every poll's latency, as the agent sees it.
    pub latency: LatencySummary,
    /// Polls on kept-alive connections.
    pub latency_kept_alive: LatencySummary,
    /// Polls that opened a connection first (TCP and TLS included).
    pub latency_new_connection: LatencySummary,
    /// Polls that carried a state change.
    pub changes: u64,
    /// Connections opened.
    pub connections: u64,
    /// Of which resumed a TLS session.
    pub resumed: u64,
    /// Mean sealed poll body (up), bytes.
    pub body_up_mean: f64,
    /// Mean sealed reply (down), bytes.
    pub body_down_mean: f64,
}

/// Commands through the API and back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Commands {
    /// Queued through the API in the window.
    pub queued: u64,
    /// Received by agents in the window.
    pub received: u64,
    /// Results the server acknowledged in the window.
    pub results: u64,
    /// Queued to result stored.
    pub round_trip: LatencySummary,
    /// Queued before the end and not answered within the drain (the
    /// agent had not polled again yet, or it was lost).
    pub unanswered: u64,
}

/// The server process's readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerProcess {
    /// Its pid, when known.
    pub pid: Option<u32>,
    /// CPU time over the window, per poll answered.
    pub cpu_ms_per_poll: Option<f64>,
    /// CPU used over the window, in cores (1.0: one core busy).
    pub cpu_cores: Option<f64>,
    /// Resident memory after enrolment, before any agent connected.
    pub rss_before: Option<u64>,
    /// Resident memory with every agent connected (after first contact).
    pub rss_connected: Option<u64>,
    /// Resident memory at the end of the window.
    pub rss_end: Option<u64>,
    /// (rss_connected - rss_before) / connections held.
    pub rss_per_connected_agent: Option<f64>,
    /// Open files before any agent connected.
    pub open_files_before: Option<usize>,
    /// Open files with every agent connected: its connections, mostly.
    pub open_files_connected: Option<usize>,
    /// Connections the server held with every agent connected (open files
    /// minus those before).
    pub connections_held: Option<usize>,
}

/// This process's readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Simulator {
    /// CPU used over the window, in cores.
    pub cpu_cores: f64,
    /// Resident memory at the end.
    pub rss: u64,
}

/// The database files' sizes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Database {
    /// After enrolment, before any poll.
    pub bytes_enrolled: Option<u64>,
    /// After every agent's first contact and priming change (two full
    /// states stored each, as for agents that have run a while; see
    /// `agent::Shared::prime`).
    pub bytes_first_contact: Option<u64>,
    /// At the end of the window.
    pub bytes_end: Option<u64>,
    /// The growth from enrolment to the steady size, per agent (its
    /// stored states).
    pub first_contact_per_agent: Option<f64>,
    /// Growth over the window, scaled to one agent and one day.
    pub growth_per_agent_per_day: Option<f64>,
}

/// The capacity search.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capacity {
    /// The p99 limit held.
    pub p99_limit_ms: f64,
    /// Each step.
    pub steps: Vec<Step>,
    /// The largest rate that held.
    pub largest_rate: Option<f64>,
    /// The smallest rate that failed.
    pub smallest_failing_rate: Option<f64>,
    /// The largest rate that held as agents at 60 s intervals.
    pub agents_at_60s: Option<f64>,
    /// How it was found.
    pub method: String,
}

fn mb(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

fn opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}{unit}"))
}

fn lat(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<28} {v}");
        };
        row("mode", self.mode.clone());
        row("server", format!("{}{}", self.server, if self.spawned { " (spawned)" } else { "" }));
        row(
            "fleet",
            format!(
                "{} agents, interval {} s ±{:.0} %, change share {} /interval, {} commands/s, {:.0} % reconnecting",
                self.agents,
                self.interval_s,
                self.jitter * 100.0,
                self.change_share,
                self.command_rate,
                self.reconnect_share * 100.0
            ),
        );
        row("source addresses", format!("{} (open-file limit {})", self.source_addrs, self.open_file_limit));
        row(
            "enrolment",
            format!(
                "{} environments in {:.1} s ({:.0}/s)",
                self.enrolment.environments, self.enrolment.seconds, self.enrolment.per_second
            ),
        );
        row(
            "first contact",
            format!(
                "{} agents in {:.1} s; {}",
                self.first_contact.agents,
                self.first_contact.seconds,
                lat(&self.first_contact.latency)
            ),
        );
        let p = &self.polls;
        row(
            "polls/s sustained",
            format!(
                "{:.1} ({} polls in {:.1} s; offered {:.1}/s)",
                p.per_second, p.total, p.seconds, p.offered_per_second
            ),
        );
        row("latency", lat(&p.latency));
        row("  kept-alive", lat(&p.latency_kept_alive));
        row("  new connection", lat(&p.latency_new_connection));
        row(
            "connections",
            format!(
                "{} opened, {} resumed; mean body {:.0} B up, {:.0} B down",
                p.connections, p.resumed, p.body_up_mean, p.body_down_mean
            ),
        );
        row("state changes sent", p.changes.to_string());
        let c = &self.commands;
        row(
            "commands",
            format!(
                "{} queued, {} received, {} results stored, {} unanswered; round trip {}",
                c.queued,
                c.received,
                c.results,
                c.unanswered,
                lat(&c.round_trip)
            ),
        );
        let s = &self.server_process;
        row("server CPU", format!("{} per poll, {} cores", opt(s.cpu_ms_per_poll, " ms", 3), opt(s.cpu_cores, "", 2)));
        row(
            "server memory",
            format!(
                "{} before, {} connected, {} at end; {} per connected agent ({} connections held)",
                mb(s.rss_before),
                mb(s.rss_connected),
                mb(s.rss_end),
                opt(s.rss_per_connected_agent.map(|b| b / 1024.0), " KB", 1),
                s.connections_held.map_or_else(|| "-".into(), |n| n.to_string())
            ),
        );
        row(
            "simulator",
            format!("{:.2} cores, {:.1} MB resident", self.simulator.cpu_cores, self.simulator.rss as f64 / 1e6),
        );
        let d = &self.database;
        row(
            "database",
            format!(
                "{} enrolled, {} with every state stored ({} per agent), {} at end",
                mb(d.bytes_enrolled),
                mb(d.bytes_first_contact),
                opt(d.first_contact_per_agent.map(|b| b / 1024.0), " KB", 1),
                mb(d.bytes_end)
            ),
        );
        row(
            "database growth",
            format!("{} per agent per day", opt(d.growth_per_agent_per_day.map(|b| b / 1024.0), " KB", 1)),
        );
        row(
            "errors",
            if self.errors.is_empty() {
                "none".into()
            } else {
                self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            },
        );
        if let Some(cap) = &self.capacity {
            let _ = writeln!(t, "\n  capacity search (p99 < {} ms):", cap.p99_limit_ms);
            let _ = writeln!(t, "  {:>10} {:>10} {:>10} {:>7}  held", "offered/s", "served/s", "p99 ms", "errors");
            for s in &cap.steps {
                let _ = writeln!(
                    t,
                    "  {:>10.1} {:>10.1} {:>10.2} {:>7}  {}",
                    s.offered,
                    s.achieved,
                    s.p99_ms,
                    s.errors,
                    if s.held { "yes" } else { "no" }
                );
            }
            let _ = writeln!(
                t,
                "  largest rate holding: {} = {} agents at 60 s intervals",
                opt(cap.largest_rate, " polls/s", 1),
                opt(cap.agents_at_60s, "", 0)
            );
            let _ = writeln!(t, "  method: {}", cap.method);
        }
        t
    }
}
