//! The server's domain: the rules of the fleet, between the handlers (the
//! poll, the API, the UI, quickstart) and the storage traits.
//!
//! * [`status`]: the status rules, each stated once (an environment online
//!   or offline; a stack's deployment and the stack as a whole);
//! * [`stacks`]: what an edge stack's create, update, retarget and removal
//!   send where, and the reconciliation of late targets;
//! * [`jobs`]: the same for edge jobs;
//! * [`deploy`]: the join token and the `docker run` commands of an
//!   environment;
//! * [`registries`]: private registries' credentials, sealed at rest, and
//!   the ones a poll's reply carries.
//!
//! It owns decisions, not data: every operation runs on the caller's
//! [`Transaction`](crate::server::store::Transaction) through the storage
//! traits, so it works on any backend, and one of several writes applies
//! whole ([`atomic`]). It must not touch SQL, HTTP or HTML: its errors are
//! the store's backend-neutral enums, which the API words for HTTP.

pub mod admission;
pub mod deploy;
pub mod jobs;
pub mod registries;
pub mod rollouts;
pub mod stacks;
pub mod status;
pub mod windows;

use crate::server::store::{Atomic, StoreError};

/// The domain's operations, as methods of a transaction
/// (`use domain::prelude::*`).
pub mod prelude {
    pub use super::jobs::JobRules;
    pub use super::stacks::StackRules;
}

/// Runs `work` as one unit inside `tx`: what it wrote is kept when it
/// returns `Ok`, rolled back when it returns `Err`, whether or not the
/// caller's transaction goes on.
///
/// # Errors
/// `work`'s, or the database's.
pub fn atomic<T, E: From<StoreError>>(
    tx: &(impl Atomic + ?Sized),
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let unit = tx.savepoint()?;
    let out = work()?;
    unit.release()?;
    Ok(out)
}
