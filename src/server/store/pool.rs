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
//!
//! A write that queued a command wakes, once committed, the sessions held
//! for its environments ([`Pool::wakes`]; other replicas on PostgreSQL
//! hear of it through [`Pool::listen`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::postgres::PgPool;
use super::sql::{Db, Dialect, Error, Row, Scope, Value};
use super::{Store, StoreError, Transaction};
use crate::server::wakes::Wakes;

/// Reading connections kept open when idle; more open when more reads run
/// at once (each read runs on a blocking thread, so the threads bound them)
/// and close when they end.
const IDLE_READERS: usize = 4;

/// The server's connections to its database (see the module doc).
#[derive(Debug)]
pub struct Pool {
    backend: Backend,
    /// The sessions held for an environment, woken when a command is
    /// queued for it.
    wakes: Arc<Wakes>,
}

#[derive(Debug)]
enum Backend {
    /// One writing connection and a pool of reading ones.
    Sqlite {
        writer: Mutex<Store>,
        /// The file, for reading connections (`None`: in memory).
        path: Option<PathBuf>,
        readers: Mutex<Vec<Store>>,
    },
    /// PostgreSQL's pool: any connection reads or writes; writers take the
    /// database's write lock (see `postgres.rs`).
    Postgres(PgPool),
}

impl Pool {
    /// Wraps the writing connection ([`Store::open`] or
    /// [`Store::in_memory`]).
    #[must_use]
    pub fn new(writer: Store) -> Self {
        Self {
            backend: Backend::Sqlite {
                path: writer.path(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            },
            wakes: Arc::default(),
        }
    }

    /// A pool of PostgreSQL connections.
    #[must_use]
    pub fn postgres(pool: PgPool) -> Self {
        Self { backend: Backend::Postgres(pool), wakes: Arc::default() }
    }

    /// The sessions waiting for their environment's commands: woken when a
    /// write that queued one for it commits (see [`Self::write`]).
    #[must_use]
    pub fn wakes(&self) -> &Arc<Wakes> {
        &self.wakes
    }

    /// Starts hearing of the commands other replicas queue (PostgreSQL:
    /// `LISTEN`, see [`PgPool::listen`]), on the current Tokio runtime, to
    /// wake this pool's [`Self::wakes`]. It stops when the returned
    /// [`Listener`] is dropped. `None` on SQLite, where this process is
    /// the only writer.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    #[must_use]
    pub fn listen(&self) -> Option<Listener> {
        match &self.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres(pg) => Some(Listener(tokio::spawn(pg.listen(self.wakes.clone())))),
        }
    }

    /// The SQLite file (`None`: in memory, or PostgreSQL).
    #[must_use]
    pub fn path(&self) -> Option<PathBuf> {
        match &self.backend {
            Backend::Sqlite { path, .. } => path.clone(),
            Backend::Postgres(_) => None,
        }
    }

    /// Which database this is.
    #[must_use]
    pub fn dialect(&self) -> Dialect {
        match &self.backend {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// What to call the database in messages (the file, or the URL with
    /// its password hidden).
    #[must_use]
    pub fn shown(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path: Some(p), .. } => p.display().to_string(),
            Backend::Sqlite { path: None, .. } => "memory".into(),
            Backend::Postgres(pg) => pg.shown().to_owned(),
        }
    }

    /// Runs `f` in one write transaction (call from a blocking thread),
    /// committed when `f` returns `Ok`, rolled back when it returns `Err`
    /// (or panics): nothing half-written. Writers run one at a time, in the
    /// order they came (PostgreSQL: across every replica, in the order
    /// they took the database's write lock). Once it committed, the
    /// sessions held for each environment `f` queued a command for are
    /// woken ([`Self::wakes`]); a rolled-back transaction wakes none.
    ///
    /// # Errors
    /// `f`'s, or the store's when the transaction cannot begin or commit.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&dyn Transaction) -> Result<T, E>) -> Result<T, E> {
        self.write_in(Scope::Alone, f)
    }

    /// [`Self::write`] for one environment's poll: on PostgreSQL it runs
    /// beside other environments' polls (see [`Scope::Environment`]), so
    /// `f` writes only that environment's rows (or takes
    /// [`super::Atomic::serialize`] first). On SQLite, the same as
    /// [`Self::write`].
    ///
    /// # Errors
    /// As [`Self::write`].
    pub fn write_for<T, E: From<StoreError>>(
        &self,
        environment: u64,
        f: impl FnOnce(&dyn Transaction) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_in(Scope::Environment(environment), f)
    }

    /// [`Self::write`] in `scope` (see [`Scope`]; SQLite has one writer at
    /// a time whatever the scope).
    ///
    /// # Errors
    /// As [`Self::write`].
    pub fn write_in<T, E: From<StoreError>>(
        &self,
        scope: Scope,
        f: impl FnOnce(&dyn Transaction) -> Result<T, E>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let mut failed = false;
        let out = self.write_untimed(scope, f, &mut failed);
        crate::server::metrics::get().transaction(true, started.elapsed().as_secs_f64(), failed);
        out
    }

    fn write_untimed<T, E: From<StoreError>>(
        &self,
        scope: Scope,
        f: impl FnOnce(&dyn Transaction) -> Result<T, E>,
        failed: &mut bool,
    ) -> Result<T, E> {
        // The database's own failures (to begin, to commit) are counted;
        // `f`'s errors are the caller's (a refused request).
        let mut db = |e: StoreError| {
            *failed = true;
            E::from(e)
        };
        let run = |store: &Store, db: &mut dyn FnMut(StoreError) -> E| -> Result<(T, Vec<u64>), E> {
            // What a transaction rolled back before this one queued is not
            // to be woken for.
            store.take_queued();
            let tx = store.tx_in(scope).map_err(&mut *db)?;
            let out = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok((out, store.take_queued()))
        };
        let (out, queued) = match &self.backend {
            Backend::Sqlite { writer, .. } => run(&writer.lock().unwrap_or_else(PoisonError::into_inner), &mut db),
            Backend::Postgres(pg) => run(&Store::postgres(pg.get().map_err(&mut db)?), &mut db),
        }?;
        // After the writer is let go: a woken session's first step is a
        // write of its own.
        for environment in queued {
            self.wakes.wake(environment);
        }
        Ok(out)
    }

    /// Runs `f` with a reading connection, inside one read transaction, so
    /// everything `f` reads is one consistent state (call from a blocking
    /// thread). A write in `f` fails. SQLite: where no reader can be had
    /// (in memory, or one failed to open), `f` runs on the writer, made
    /// read-only for the while. PostgreSQL: where no connection can be
    /// had, every call of `f`'s fails with the reason.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let started = std::time::Instant::now();
        let out = self.read_untimed(f);
        crate::server::metrics::get().transaction(false, started.elapsed().as_secs_f64(), false);
        out
    }

    /// [`Self::read`] of one statement: on PostgreSQL it runs without a
    /// transaction of its own (one statement is one snapshot anyway), which
    /// saves the round trips of `BEGIN` and `ROLLBACK`. Every poll's
    /// authentication is one. A `f` that runs more statements sees each
    /// one's own snapshot.
    pub fn read_one<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let Backend::Postgres(pg) = &self.backend else { return self.read(f) };
        let started = std::time::Instant::now();
        let out = match pg.get() {
            Ok(conn) => f(&Store::postgres(conn).autocommit()),
            Err(e) => f(&Store::unavailable(e.to_string()).autocommit()),
        };
        crate::server::metrics::get().transaction(false, started.elapsed().as_secs_f64(), false);
        out
    }

    fn read_untimed<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let (writer, path, readers) = match &self.backend {
            Backend::Sqlite { writer, path, readers } => (writer, path, readers),
            Backend::Postgres(pg) => {
                let store = match pg.get() {
                    Ok(conn) => Store::postgres(conn),
                    Err(e) => Store::unavailable(e.to_string()),
                };
                return match store.read_tx() {
                    Ok(tx) => f(&tx),
                    Err(e) => f(&Store::unavailable(e.to_string()).autocommit()),
                };
            }
        };
        let Some(path) = path else { return Self::read_on_writer(writer, f) };
        let pooled = readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let reader = match pooled {
            Some(r) => r,
            None => match Store::open_reader(path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("database: no reading connection ({e}); reading on the writer");
                    return Self::read_on_writer(writer, f);
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
                return Self::read_on_writer(writer, f);
            }
        };
        // A reader left inside a transaction (a panic in `f` unwinds past
        // this, and the connection with it) is not reused.
        if reader.depth.get() == 0 {
            let mut idle = readers.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_READERS {
                idle.push(reader);
            }
        }
        out
    }

    /// [`Self::read`] on the writing connection, made read-only for the
    /// while (`query_only`), so a read that writes fails here as it would
    /// on a reader, in memory too.
    fn read_on_writer<T>(writer: &Mutex<Store>, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        let guard = writer.lock().unwrap_or_else(PoisonError::into_inner);
        let store: &Store = &guard;
        {
            let guarded = store.conn.db().set_read_only(true).map(|()| store.read_tx());
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
            if let Err(e) = store.conn.db().set_read_only(false) {
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

/// The task that forwards other replicas' wakes ([`Pool::listen`]);
/// dropped, it stops, and its connection closes.
#[derive(Debug)]
#[must_use = "the listener stops when dropped"]
pub struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A database that cannot be reached: every statement fails with why
/// (what a read is handed when PostgreSQL has no connection to give).
pub(super) struct Unavailable(pub String);

impl Db for Unavailable {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    fn execute(&self, _: &str, _: &[Value]) -> Result<usize, Error> {
        Err(Error::Backend(self.0.clone().into()))
    }
    fn query(&self, _: &str, _: &[Value]) -> Result<Vec<Row>, Error> {
        Err(Error::Backend(self.0.clone().into()))
    }
    fn execute_batch(&self, _: &str) -> Result<(), Error> {
        Err(Error::Backend(self.0.clone().into()))
    }
    fn begin(&self, _: bool) -> Result<(), Error> {
        Err(Error::Backend(self.0.clone().into()))
    }
    fn set_read_only(&self, _: bool) -> Result<(), Error> {
        Err(Error::Backend(self.0.clone().into()))
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
            let Backend::Sqlite { writer, .. } = &pool.backend else { unreachable!() };
            let held = writer.lock().unwrap();
            let read = scope.spawn(|| pool.read(|s| s.environment(env.id).map(|e| e.name)));
            let name = read.join().unwrap().unwrap();
            assert_eq!(name, "site");
            drop(held);
        });
        let Backend::Sqlite { readers, .. } = &pool.backend else { unreachable!() };
        assert_eq!(readers.lock().unwrap().len(), 1, "the reader is kept for the next read");
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
    fn a_committed_command_wakes_its_environment_and_a_rolled_back_one_does_not() {
        let pool = Pool::new(Store::in_memory().unwrap());
        let (a, b) = pool
            .write(|s| {
                Ok::<_, StoreError>((
                    s.create_environment("a", Secret([1; 32]), 0)?,
                    s.create_environment("b", Secret([2; 32]), 0)?,
                ))
            })
            .unwrap();
        let pull = crate::wire::poll::Action::ImagePull("nginx".into());
        let sub_a = pool.wakes().subscribe(a.id);
        let sub_b = pool.wakes().subscribe(b.id);
        // Rolled back: nobody is woken, and nothing is left to wake later.
        let refused: Result<(), StoreError> = pool.write(|s| {
            s.enqueue_command(a.id, &pull, 1)?;
            Err(StoreError::NotFound(0))
        });
        assert!(refused.is_err());
        assert!(!sub_a.is_woken() && !sub_b.is_woken(), "a rolled-back command wakes no one");
        pool.write(|s| s.burn_counter(b.id, 1)).unwrap();
        assert!(!sub_a.is_woken(), "nor does the next transaction, which queued nothing");
        // Committed: its environment's sessions only, once it committed.
        pool.write(|s| {
            s.enqueue_command(a.id, &pull, 2)?;
            s.enqueue_command(a.id, &pull, 2)?;
            assert!(!sub_a.is_woken(), "not before the commit");
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert!(sub_a.is_woken());
        assert!(!sub_b.is_woken());
        // A poll's transaction too.
        pool.write_for(b.id, |s| s.enqueue_command(b.id, &pull, 3)).unwrap();
        assert!(sub_b.is_woken());
        drop((sub_a, sub_b));
        assert_eq!(pool.wakes().environments(), 0);
    }

    #[test]
    fn in_memory_reads_use_the_writer_read_only() {
        let pool = Pool::new(Store::in_memory().unwrap());
        let env = pool.write(|s| s.create_environment("site", Secret([1; 32]), 0)).unwrap();
        assert_eq!(pool.read(|s| s.environment(env.id).unwrap().name), "site");
        assert!(pool.read(|s| s.burn_counter(env.id, 6)).is_err(), "a read cannot write");
        let Backend::Sqlite { readers, .. } = &pool.backend else { unreachable!() };
        assert!(readers.lock().unwrap().is_empty());
        pool.write(|s| s.burn_counter(env.id, 6)).expect("the writer writes again after");
        assert_eq!(pool.read(|s| s.environment(env.id).unwrap().last_counter), 6);
    }
}
