//! # tern-proto
//!
//! What tern's agent and server must agree on, and nothing that does I/O:
//!
//! * [`sync`]: the canonical host state, its blake3 digests, `diff` and
//!   `apply`, the poll scheduler and both ends of a sync session;
//! * [`wire`]: the protobuf schema (`tern/v1/tern.proto`, whose generated
//!   types stay private to this crate), the field-level diff, the body
//!   codec (zstd with a shipped dictionary, limits) and the poll messages;
//! * [`auth`]: the poll envelope and its MAC (keys, counters, replay);
//! * the contracts both sides check the same way: [`stack`] (project names,
//!   variables, interpolation, the file check), [`compose`] (the typed
//!   compose model and the documented subset the agent's built-in compose
//!   deploys), [`edge_env`] (the agent's variables),
//!   [`cron`] (job schedules) and [`clock`] (the protocol's time).
//!
//! This crate must not depend on tokio, bollard, rusqlite or axum:
//! `scripts/check-deps.sh` holds it to that with `cargo tree` in CI.

#![warn(missing_docs)]

pub mod auth;
pub mod clock;
pub mod compose;
pub mod cron;
pub mod edge_env;
pub mod enrol;
pub mod registry;
pub mod stack;
pub mod sync;
pub mod transfer;
pub mod wire;
