//! # tern
//!
//! An edge agent and its control server for Docker hosts behind slow,
//! intermittent, metered links. One crate, one binary (`tern`), two roles:
//!
//! * **agent** (feature `agent`): runs next to a Docker engine, polls the
//!   server over HTTPS, sends what changed as compact deltas, runs the
//!   commands it is given and reports their results in its next poll;
//! * **server** (feature `server`): the control plane.
//!
//! ```text
//! Docker engine --bollard--> collector --> canonical State (sorted, volatile fields dropped)
//!                                               |  blake3 per object, root hash
//!                                               v
//!    acked base State + current State --diff--> Delta (protobuf) --zstd+dict--> poll body
//!                                                                                  |
//!                                                     HTTPS POST (hyper + rustls)  v
//! server: authenticate --> decode --> apply Delta to stored State --> verify root hash
//!         --> store --> reply { base ack | resync, commands, changed intervals }
//! ```
//!
//! What does no I/O is the protocol core, the `tern-proto` crate in
//! `proto/`: [`sync`] (state, digests, diff/apply), [`wire`] (schema, field
//! diff, body codec), [`auth`] (the poll MAC) and the contracts both roles
//! share. This crate is the shells around it. The bench lab (the on-wire
//! benchmark, the link emulator, the recorded fixtures and the
//! Portainer-style baseline) is the `tern-bench` crate in `benches/wire`,
//! not part of this one.
//!
//! What this crate does not do: open inbound ports on the edge, tunnel
//! interactive sessions, or keep live stats.

#![warn(missing_docs)]

// The protocol core is its own crate (`proto/`, tern-proto), kept free of
// I/O by its dependencies; its modules are re-exported under their old
// names, so `tern::sync::State` is `tern_proto::sync::State`.
pub use tern_proto::{auth, clock, compose, cron, edge_env, enrol, registry, stack, sync, transfer, wire};

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(all(feature = "server", feature = "agent"))]
pub mod cli;
#[cfg(any(all(test, feature = "agent", feature = "server"), feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "tls")]
pub mod meter;
#[cfg(feature = "server")]
pub mod server;
#[cfg(any(feature = "agent", feature = "server"))]
pub mod signal;
#[cfg(feature = "tls")]
pub mod tls;
