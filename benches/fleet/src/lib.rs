//! # tern-fleet
//!
//! A fleet simulator: N simulated agents in one process against a real
//! `tern server`, over real TCP and TLS 1.3 (the agent's rustls
//! configuration, the pinned certificate), with the real poll protocol:
//! the codec, the MACs both ways, counters, deltas against acknowledged
//! bases, command results, `commands_seen`. Only the Docker engine is
//! simulated: each agent's host is one of the recorded fixture hosts
//! (`tests/fixtures`: host40, about 40 containers, and train), with fresh
//! ids, walking through its recorded events ([`states`]).
//!
//! ```text
//!  tern-fleet                                       tern server (spawned or given)
//!  ├─ POST /api/environments x N (16 at once) ────▶ REST API (admin token)
//!  ├─ N agent tasks, each:                          │
//!  │   wait interval ± jitter                       │
//!  │   maybe step its host one recorded event       │
//!  │   delta vs acked base, results, seal (MAC) ──▶ POST /q ─▶ store
//!  │   check reply MAC, adopt base, take commands ◀─ sealed reply
//!  │   (from 127.0.0.2, .3, ...: one source address per 400 agents)
//!  ├─ commands: POST /api/environments/{id}/commands at a rate (Poisson)
//!  └─ readings: /proc/<server pid>/stat, status, fd; the data directory's tern.db*
//! ```
//!
//! ## What a run reports ([`report::Report`])
//!
//! * polls per second sustained over the measured window, which starts
//!   once every agent has made its first contact (its whole state);
//! * poll latency p50, p99, p99.9 as the agent sees it (HdrHistogram), all
//!   polls and split into kept-alive and new-connection polls;
//! * server CPU per poll (utime + stime of `/proc/<pid>/stat` over the
//!   window / polls answered) and resident memory per connected agent
//!   (`VmRSS` with every agent connected minus before any connected, over
//!   the connections the server holds, its open files minus those before);
//! * database growth per agent per day: the data directory's `tern.db*`
//!   files at the end of the window minus at its start, / agents, scaled
//!   from the window to 86,400 s (first contact's growth, the stored
//!   states, is reported apart); a short window sees SQLite's WAL grow and
//!   be checkpointed, so runs of several minutes give steadier figures;
//! * errors by kind; commands queued, received, answered and their round
//!   trip (queued to result stored).
//!
//! ## Modes
//!
//! * fleet (default): `--agents`, `--interval`, `--jitter`,
//!   `--change-share`, `--command-rate`, `--reconnect-share`.
//! * `--idle`: every agent polls back to back on its kept-alive
//!   connection, no change, no command: the idle polls per second the
//!   server answers (with `--agents` polls in flight).
//! * `--find-capacity`: the largest fleet at 60 s intervals holding p99 <
//!   250 ms; see [`capacity`] for why the poll rate is stepped instead of
//!   polling faster than 60 s, and how a rate becomes a fleet.
//!
//! ## What it does not do
//!
//! It does not simulate the Docker engine's timing (a command's result is
//! ready at once), edge stacks, jobs or image transfers, or slow links (the
//! on-wire lab in `benches/wire` does links). A command does not change the
//! simulated state (a real restart would show in the next delta). Its own
//! CPU competes with the server's on the same machine: the report gives
//! both.

#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod capacity;
pub mod conn;
pub mod options;
pub mod procfs;
pub mod report;
pub mod run;
pub mod server;
pub mod states;
pub mod stats;

pub use options::Options;
pub use report::Report;
pub use run::run;
