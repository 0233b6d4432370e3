//! The server's embedded database (SQLite, WAL): environments, each agent's
//! reconstructed state, the command queue and command results. The only
//! module that touches the database.
//!
//! Schema changes are numbered migrations, applied in order at open and
//! recorded in `PRAGMA user_version`; a database from a newer build is
//! refused rather than guessed at.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::Secret;
use crate::sync::State;
use crate::sync::session::Replica;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer build.
    #[error("database schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A stored value does not decode.
    #[error("corrupt stored {what} for environment {environment}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Whose.
        environment: u64,
    },
    /// No such environment.
    #[error("no environment {0}")]
    NotFound(u64),
    /// The name is taken.
    #[error("an environment named {0:?} exists already")]
    NameTaken(String),
}

/// Migrations, in order. Never edit one that has shipped; add another.
const MIGRATIONS: &[&str] = &[
    // 1: environments, replicas, commands.
    "CREATE TABLE environments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        secret BLOB NOT NULL,
        edge_id TEXT,
        last_counter INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        last_poll_at INTEGER,
        snapshot_at INTEGER
    );
    CREATE TABLE replicas (
        environment INTEGER PRIMARY KEY REFERENCES environments(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        state BLOB NOT NULL,
        prev_seq INTEGER,
        prev_state BLOB
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        action BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued','delivered','ok','failed','rejected','cancelled')),
        error TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        delivered_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX commands_due ON commands(environment, status);",
];

/// An environment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The MAC key its agent uses.
    pub secret: Secret,
    /// The EDGE_ID bound at first poll.
    pub edge_id: Option<String>,
    /// The highest poll counter accepted.
    pub last_counter: u64,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn decode_state(bytes: &[u8], environment: u64) -> Result<State, StoreError> {
    State::from_snapshot(bytes).map_err(|_| StoreError::Corrupt { what: "state", environment })
}

impl Store {
    /// Opens (or creates) the database at `path` and migrates it.
    ///
    /// # Errors
    /// When SQLite fails or the schema is newer than this build.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::migrate(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::migrate(Connection::open_in_memory()?)
    }

    fn migrate(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew { found: version, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Self { conn })
    }

    /// Creates an environment with a fresh secret.
    ///
    /// # Errors
    /// When the name is taken or SQLite fails.
    pub fn create_environment(&self, name: &str, secret: Secret, now: i64) -> Result<Environment, StoreError> {
        let r = self.conn.execute(
            "INSERT INTO environments (name, secret, created_at) VALUES (?1, ?2, ?3)",
            params![name, &secret.0[..], now],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(StoreError::NameTaken(name.to_owned()));
            }
            r => r?,
        };
        let id = self.conn.last_insert_rowid() as u64;
        Ok(Environment { id, name: name.to_owned(), secret, edge_id: None, last_counter: 0 })
    }

    /// Looks an environment up.
    ///
    /// # Errors
    /// When it does not exist or SQLite fails.
    pub fn environment(&self, id: u64) -> Result<Environment, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, secret, edge_id, last_counter FROM environments WHERE id = ?1",
                [id as i64],
                |r| {
                    let secret: Vec<u8> = r.get(2)?;
                    Ok((r.get::<_, i64>(0)?, r.get(1)?, secret, r.get(3)?, r.get::<_, i64>(4)?))
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
            .and_then(|(id, name, secret, edge_id, last_counter)| {
                let secret = <[u8; 32]>::try_from(secret.as_slice())
                    .map_err(|_| StoreError::Corrupt { what: "secret", environment: id as u64 })?;
                Ok(Environment {
                    id: id as u64,
                    name,
                    secret: Secret(secret),
                    edge_id,
                    last_counter: last_counter as u64,
                })
            })
    }

    /// Records an accepted poll: raises the counter only if it is higher
    /// (so two racing requests cannot both pass), binds the EDGE_ID if none
    /// is bound, and stamps the poll time. Returns false when the counter
    /// was not higher (a replay) or another EDGE_ID is bound.
    ///
    /// # Errors
    /// When SQLite fails.
    /// An agent names itself (`edge_id`) on its first poll after a start;
    /// later polls may leave it out, but only once the environment is bound.
    pub fn accept_poll(&self, id: u64, counter: u64, edge_id: Option<&str>, now: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE environments SET last_counter = ?2, edge_id = COALESCE(edge_id, ?3), last_poll_at = ?4
             WHERE id = ?1 AND last_counter < ?2
               AND ((?3 IS NULL AND edge_id IS NOT NULL) OR (?3 IS NOT NULL AND (edge_id IS NULL OR edge_id = ?3)))",
            params![id as i64, counter as i64, edge_id, now],
        )?;
        Ok(n == 1)
    }

    /// Unbinds the EDGE_ID, so another agent may take the environment over.
    ///
    /// # Errors
    /// When it does not exist or SQLite fails.
    pub fn reset_binding(&self, id: u64) -> Result<(), StoreError> {
        match self.conn.execute("UPDATE environments SET edge_id = NULL WHERE id = ?1", [id as i64])? {
            0 => Err(StoreError::NotFound(id)),
            _ => Ok(()),
        }
    }

    /// The stored replica of an environment's state (empty before its first
    /// snapshot).
    ///
    /// # Errors
    /// When SQLite fails or a stored state is corrupt.
    pub fn replica(&self, id: u64) -> Result<Replica, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq, state, prev_seq, prev_state FROM replicas WHERE environment = ?1",
                [id as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((seq, state, prev_seq, prev_state)) = row else { return Ok(Replica::default()) };
        let prev = match (prev_seq, prev_state) {
            (Some(s), Some(b)) => Some((s as u64, decode_state(&b, id)?)),
            _ => None,
        };
        Ok(Replica::restore(seq as u64, decode_state(&state, id)?, prev))
    }

    /// Stores a replica after a poll changed it.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn save_replica(&self, id: u64, replica: &Replica, now: i64) -> Result<(), StoreError> {
        let (seq, state) = replica.current();
        let prev = replica.previous();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO replicas (environment, seq, state, prev_seq, prev_state) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(environment) DO UPDATE SET seq = ?2, state = ?3, prev_seq = ?4, prev_state = ?5",
            params![
                id as i64,
                seq as i64,
                state.to_snapshot(),
                prev.map(|(s, _)| s as i64),
                prev.map(|(_, st)| st.to_snapshot())
            ],
        )?;
        tx.execute("UPDATE environments SET snapshot_at = ?2 WHERE id = ?1", params![id as i64, now])?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::diff;
    use crate::sync::session::Received;
    use crate::sync::state::{Container, Id};

    #[test]
    fn environments_bind_to_the_first_edge_id_and_refuse_replays() {
        let s = Store::in_memory().unwrap();
        let e = s.create_environment("ship-1", Secret([1; 32]), 100).unwrap();
        assert!(matches!(s.create_environment("ship-1", Secret([2; 32]), 100), Err(StoreError::NameTaken(_))));
        assert!(!s.accept_poll(e.id, 1, None, 101).unwrap(), "the first poll must name its agent");
        assert!(s.accept_poll(e.id, 1, Some("edge-a"), 101).unwrap());
        assert!(!s.accept_poll(e.id, 1, Some("edge-a"), 102).unwrap(), "replayed counter");
        assert!(!s.accept_poll(e.id, 2, Some("edge-b"), 102).unwrap(), "another agent with the same token");
        assert!(s.accept_poll(e.id, 2, None, 103).unwrap());
        s.reset_binding(e.id).unwrap();
        assert!(s.accept_poll(e.id, 3, Some("edge-b"), 104).unwrap(), "an operator reset lets a new agent in");
        let got = s.environment(e.id).unwrap();
        assert_eq!((got.edge_id.as_deref(), got.last_counter), (Some("edge-b"), 3));
        assert!(matches!(s.environment(99), Err(StoreError::NotFound(99))));
    }

    #[test]
    fn replicas_survive_a_server_restart() {
        let dir = std::env::temp_dir().join(format!("tern-server-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        let mut replica = Replica::default();
        let id = {
            let s = Store::open(&path).unwrap();
            let e = s.create_environment("site", Secret([3; 32]), 1).unwrap();
            let mut state = State::default();
            state.containers.insert(Container { id: Id([4; 32]), name: "db".into(), ..Container::default() });
            assert_eq!(replica.receive(0, Some(&diff(&State::default(), &state))), Received::Acked(1));
            s.save_replica(e.id, &replica, 2).unwrap();
            e.id
        };
        let s = Store::open(&path).unwrap();
        assert_eq!(s.replica(id).unwrap(), replica);
        assert_eq!(s.replica(id + 1).unwrap(), Replica::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-server-store-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 99, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
