//! The sync core. It does no I/O: everything here is a function of its
//! inputs, so it is tested exhaustively without Docker or a network.
//!
//! * [`state`]: the canonical host state, per-object and root digests.
//! * [`delta`]: `diff` and `apply`.
//! * [`schedule`]: the agent's poll scheduler (timers, coalescing, backoff).
//! * [`session`]: both ends of state sync (acks, lost replies, resync).
//! * [`redact`]: what the agent keeps off the wire (credentials in
//!   environment variables, arguments and labels).
//!
//! Building the state from the engine's API types is the agent's
//! (`tern::agent::canonical`): this crate does not know Docker's client.

pub mod delta;
pub mod redact;
pub mod schedule;
pub mod session;
pub mod state;

pub use delta::{ApplyError, Delta, apply, diff};
pub use state::State;
