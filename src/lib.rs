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
//! Modules that do no I/O: [`sync`] (state, digests, diff/apply) and
//! [`wire`] (schema, field diff, body codec). The bench lab (the on-wire
//! benchmark, the link emulator, the recorded fixtures and the
//! Portainer-style baseline) is the `tern-bench` crate in `benches/wire`,
//! not part of this one.
//!
//! What this crate does not do: open inbound ports on the edge, tunnel
//! interactive sessions, or keep live stats.

#![warn(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
pub mod auth;
#[cfg(all(feature = "server", feature = "agent"))]
pub mod cli;
pub mod clock;
pub mod cron;
pub mod edge_env;
#[cfg(any(all(test, feature = "agent", feature = "server"), feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "tls")]
pub mod meter;
#[cfg(feature = "server")]
pub mod server;
pub mod stack;
pub mod sync;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wire;
