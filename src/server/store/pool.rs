//! The database's connections: one writer and a few readers.
//!
//! SQLite lets one connection write at a time, and in WAL mode any number
//! read beside it, each on the snapshot its transaction began with. So the
//! server keeps one writing connection behind an in-process lock (writers
//! queue on the lock, in order, rather than on SQLite's busy handler, which
//! sleeps and retries), and a small pool of reading connections that open
//! on demand. A poll's authentication, API reads and the UI's pages take a
//! reader and so never wait for a poll being applied, nor hold one up; a
//! write takes the writer, and each is one transaction.
//!
//! The work is handed a [`Transaction`]: the storage traits, not SQLite's
//! connection, so what runs in it (the poll, the API, the UI) is written
//! against the traits and a second backend can stand in.
//!
//! A database in memory (tests) cannot be shared between connections, so
//! there every call uses the writer.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use super::{Store, StoreError, Transaction};

/// Reading connections kept open when idle; more open when more reads run
/// at once (each read runs on a blocking thread, so the threads bound them)
/// and close when they end.
const IDLE_READERS: usize = 4;

/// One writing connection and a pool of reading ones (see the module doc).
#[derive(Debug)]
pub struct Pool {
    writer: Mutex<Store>,
    /// The file, for reading connections (`None`: in memory).
    path: Option<PathBuf>,
    readers: Mutex<Vec<Store>>,
}

impl Pool {
    /// Wraps the writing connection ([`Store::open`] or
    /// [`Store::in_memory`]).
    #[must_use]
    pub fn new(writer: Store) -> Self {
        Self { path: writer.path(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) }
    }

    /// Runs `f` in one write transaction on the writing connection (call
    /// from a blocking thread), committed when `f` returns `Ok`, rolled
    /// back when it returns `Err` (or panics): nothing half-written.
    /// Writers run one at a time, in the order they came.
    ///
    /// # Errors
    /// `f`'s, or the store's when the transaction cannot begin or commit.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&dyn Transaction) -> Result<T, E>) -> Result<T, E> {
        let guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = guard.tx()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` with a reading connection, inside one read transaction, so
    /// everything `f` reads is one consistent state (call from a blocking
    /// thread). A write in `f` fails (`query_only`). Where no reader can be
    /// had (in memory, or one failed to open), `f` runs on the writer.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let Some(path) = &self.path else { return self.read_on_writer(f) };
        let pooled = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let reader = match pooled {
            Some(r) => r,
            None => match Store::open_reader(path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("database: no reading connection ({e}); reading on the writer");
                    return self.read_on_writer(f);
                }
            },
        };
        let out = match reader.tx() {
            Ok(tx) => {
                let out = f(&tx);
                // A read transaction has nothing to commit: ending it
                // either way only releases the snapshot.
                drop(tx);
                out
            }
            Err(e) => {
                tracing::warn!("database: cannot begin a read ({e}); reading on the writer");
                return self.read_on_writer(f);
            }
        };
        // A reader left inside a transaction (a panic in `f` unwinds past
        // this, and the connection with it) is not reused.
        if reader.depth.get() == 0 {
            let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_READERS {
                idle.push(reader);
            }
        }
        out
    }

    /// [`Self::read`] on the writing connection, made read-only for the
    /// while (`query_only`), so a read that writes fails here as it would
    /// on a reader, in memory too.
    fn read_on_writer<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let store: &Store = &guard;
        {
            let guarded = store.conn.pragma_update(None, "query_only", "ON").map(|()| store.read_tx());
            let out = match guarded {
                Ok(Ok(tx)) => {
                    let out = f(&tx);
                    drop(tx);
                    out
                }
                // Cannot happen on a connection this process holds; `f`
                // still gets its answer, unguarded.
                _ => f(&store.autocommit()),
            };
            if let Err(e) = store.conn.pragma_update(None, "query_only", "OFF") {
                tracing::error!("database: the writer stays read-only ({e})");
            }
            out
        }
    }
}

impl From<Store> for Pool {
    fn from(writer: Store) -> Self {
        Self::new(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    /// A directory of its own, removed when dropped.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file_pool(tag: &str) -> (Dir, Pool) {
        let dir = std::env::temp_dir().join(format!("tern-server-pool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pool = Pool::new(Store::open(&dir.join("tern.db")).unwrap());
        (Dir(dir), pool)
    }

    #[test]
    fn reads_see_committed_writes_and_do_not_wait_for_the_writer() {
        let (_dir, pool) = file_pool("wait");
        let env = pool.write(|s| s.create_environment("site", Secret([1; 32]), 0)).unwrap();
        // The writer is held (as by a poll being applied): a read still
        // answers, from the last committed state.
        std::thread::scope(|scope| {
            let held = pool.writer.lock().unwrap();
            let read = scope.spawn(|| pool.read(|s| s.environment(env.id).map(|e| e.name)));
            let name = read.join().unwrap().unwrap();
            assert_eq!(name, "site");
            drop(held);
        });
        assert_eq!(pool.readers.lock().unwrap().len(), 1, "the reader is kept for the next read");
    }

    #[test]
    fn a_read_is_one_snapshot_and_cannot_write() {
        let (_dir, pool) = file_pool("snapshot");
        let env = pool.write(|s| s.create_environment("site", Secret([1; 32]), 0)).unwrap();
        pool.read(|s| {
            let before = s.environment(env.id).unwrap().last_counter;
            // A write committed meanwhile is not seen inside the read.
            pool.write(|w| w.burn_counter(env.id, 5)).unwrap();
            assert_eq!(s.environment(env.id).unwrap().last_counter, before, "one snapshot");
            let refused = s.burn_counter(env.id, 6);
            assert!(refused.is_err(), "a reader refuses writes: {refused:?}");
        });
        assert_eq!(pool.read(|s| s.environment(env.id).unwrap().last_counter), 5, "the next read sees it");
    }

    #[test]
    fn in_memory_reads_use_the_writer_read_only() {
        let pool = Pool::new(Store::in_memory().unwrap());
        let env = pool.write(|s| s.create_environment("site", Secret([1; 32]), 0)).unwrap();
        assert_eq!(pool.read(|s| s.environment(env.id).unwrap().name), "site");
        assert!(pool.read(|s| s.burn_counter(env.id, 6)).is_err(), "a read cannot write");
        assert!(pool.readers.lock().unwrap().is_empty());
        pool.write(|s| s.burn_counter(env.id, 6)).expect("the writer writes again after");
        assert_eq!(pool.read(|s| s.environment(env.id).unwrap().last_counter), 6);
    }
}
