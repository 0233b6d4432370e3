//! The sync core. It does no I/O: everything here is a function of its
//! inputs, so it is tested exhaustively without Docker or a network.
//!
//! * [`state`]: the canonical host state, per-object and root digests.
//! * [`docker`]: building that state from the engine's API types.
//! * [`delta`]: `diff` and `apply`.
//! * [`schedule`]: the agent's poll scheduler (timers, coalescing, backoff).
//! * [`session`]: both ends of state sync (acks, lost replies, resync).

pub mod delta;
pub mod docker;
pub mod redact;
pub mod schedule;
pub mod session;
pub mod state;

pub use delta::{ApplyError, Delta, apply, diff};
pub use docker::{CanonicalOptions, RawSnapshot};
pub use state::State;
