//! Data usage, added up in memory and written in batches.
//!
//! Every poll is charged the bytes it cost (see `api::usage::charge_poll`).
//! Written one by one, each charge was a write transaction of its own per
//! poll: as many round trips to PostgreSQL as the rest of an idle poll's
//! transaction, and a second turn at SQLite's one writer. The ledger adds
//! charges up per environment and hour instead, and [`Ledger::flush`]
//! writes them in one transaction that runs beside polls
//! ([`Scope::Beside`]): every [`FLUSH_EVERY`], at shutdown, and before
//! this server reads usage (so what it shows includes its own last polls;
//! another replica's show up within [`FLUSH_EVERY`]).
//!
//! What a crash loses (SIGKILL, power) is at most [`FLUSH_EVERY`] of
//! charges: metering, never a command or a state. A flush that fails keeps
//! its charges for the next one.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::server::store::StoreError;
use crate::server::store::pool::Pool;
use crate::server::store::sql::Scope;
use crate::server::store::usage::{Usage, hour_of};

/// How often charges are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Charges not yet written. Kept in key order, so that two replicas'
/// flushes update shared rows (the unattributed hours) in one order and
/// never deadlock each other.
#[derive(Debug, Default)]
struct Pending {
    /// By (environment, hour).
    environments: BTreeMap<(u64, i64), Usage>,
    /// By hour: (up, down, connections).
    unattributed: BTreeMap<i64, (u64, u64, u64)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.environments.is_empty() && self.unattributed.is_empty()
    }

    fn merge(&mut self, other: Self) {
        for (key, usage) in other.environments {
            *self.environments.entry(key).or_default() += usage;
        }
        for (hour, (up, down, n)) in other.unattributed {
            let e = self.unattributed.entry(hour).or_default();
            *e = (e.0 + up, e.1 + down, e.2 + n);
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    pending: Mutex<Pending>,
    /// Held while a flush writes: one at a time, so a failed one's
    /// charges are back before the next takes them.
    flushing: Mutex<()>,
}

impl Ledger {
    /// Adds `usage` to `environment`'s hour of `now`.
    pub fn charge(&self, environment: u64, now: i64, usage: Usage) {
        if usage.is_zero() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *pending.environments.entry((environment, hour_of(now))).or_default() += usage;
    }

    /// Adds socket bytes of connections no environment answers for (and
    /// `connections` new such connections) to the hour of `now`.
    pub fn charge_unattributed(&self, now: i64, up: u64, down: u64, connections: u64) {
        if up == 0 && down == 0 && connections == 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let e = pending.unattributed.entry(hour_of(now)).or_default();
        *e = (e.0 + up, e.1 + down, e.2 + connections);
    }

    /// Writes every charge so far in one transaction (blocking: call it
    /// from a blocking thread); returns how many rows it added to. On an
    /// error nothing was written and the charges wait for the next flush.
    ///
    /// # Errors
    /// When the database fails.
    pub fn flush(&self, db: &Pool) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if taken.is_empty() {
            return Ok(0);
        }
        let written = db.write_in(Scope::Beside, |tx| {
            // An hour's start is in its hour: the rows are the charges'.
            for (&(environment, hour), usage) in &taken.environments {
                tx.record_usage(environment, hour, usage)?;
            }
            for (&hour, &(up, down, connections)) in &taken.unattributed {
                tx.record_unattributed(hour, up, down, connections)?;
            }
            Ok::<_, StoreError>(taken.environments.len() + taken.unattributed.len())
        });
        if written.is_err() {
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).merge(taken);
        }
        written
    }

    /// [`Self::flush`], with a failure logged (the charges wait).
    pub fn settle(&self, db: &Pool) {
        if let Err(e) = self.flush(db) {
            tracing::warn!("data usage not recorded yet (kept for the next try): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::server::store::Store;

    fn usage(up: u64, polls: u64) -> Usage {
        Usage { tls_up: up, tls_down: 2 * up, body_up: up / 2, body_down: up / 4, polls }
    }

    #[test]
    fn charges_add_up_in_memory_and_land_in_one_flush() {
        let db = Pool::new(Store::scratch().unwrap());
        let env = db.write(|tx| tx.create_environment("a", Secret([7; 32]), 0)).unwrap().id;
        let ledger = Ledger::default();
        let t = 1_714_521_600;
        ledger.charge(env, t, usage(100, 1));
        ledger.charge(env, t + 10, usage(40, 1));
        ledger.charge(env, t + 3_600, usage(8, 1));
        ledger.charge(env, t, Usage::default());
        ledger.charge_unattributed(t, 5, 6, 1);
        ledger.charge_unattributed(t + 1, 5, 6, 1);
        // Nothing is written until the flush.
        assert!(db.read(|tx| tx.usage_hours(env, t, t + 3_600)).unwrap().is_empty());
        assert_eq!(ledger.flush(&db).unwrap(), 3);
        let hours = db.read(|tx| tx.usage_hours(env, t, t + 3_600)).unwrap();
        assert_eq!(hours, vec![(t, usage(140, 2)), (t + 3_600, usage(8, 1))]);
        // Flushed charges are gone from the ledger: a second flush adds nothing.
        assert_eq!(ledger.flush(&db).unwrap(), 0);
        assert_eq!(db.read(|tx| tx.usage_hours(env, t, t + 3_600)).unwrap().len(), 2);
        // A charge for an environment deleted meanwhile is dropped, not an error.
        ledger.charge(env + 100, t, usage(1, 1));
        assert_eq!(ledger.flush(&db).unwrap(), 1);
    }

    #[test]
    fn a_failed_flush_keeps_its_charges_for_the_next() {
        // A database file that a second connection breaks and mends.
        let dir = std::env::temp_dir().join(format!("tern-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        let db = Pool::new(Store::open(&path).unwrap());
        let other = rusqlite::Connection::open(&path).unwrap();
        let env = db.write(|tx| tx.create_environment("a", Secret([7; 32]), 0)).unwrap().id;
        let ledger = Ledger::default();
        let t = 1_714_521_600;
        ledger.charge(env, t, usage(100, 1));
        other.execute_batch("ALTER TABLE usage_hourly RENAME TO kept").unwrap();
        assert!(ledger.flush(&db).is_err());
        ledger.charge(env, t, usage(10, 1));
        other.execute_batch("ALTER TABLE kept RENAME TO usage_hourly").unwrap();
        assert_eq!(ledger.flush(&db).unwrap(), 1);
        assert_eq!(db.read(|tx| tx.usage_hours(env, t, t)).unwrap(), vec![(t, usage(110, 2))]);
        drop((db, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
