//! Copying a whole database into another, of either backend: what
//! `tern server migrate-db` (SQLite into PostgreSQL), `tern server backup`
//! (either into a new SQLite file) and `tern server restore` (a backup
//! into a new database of either) are made of.
//!
//! The source is read in one read transaction, so the copy is one
//! consistent state even while a server writes to it (SQLite's WAL
//! snapshot, PostgreSQL's `REPEATABLE READ`). The target is written in one
//! transaction and must be empty: a copy never merges into data it would
//! have to guess about. Rows keep their ids, so every reference (an
//! environment's commands, a stack's deployments) holds, and PostgreSQL's
//! identity sequences are moved past the highest id copied. Tables are
//! read a page at a time in key order, so a large fleet's states and
//! usage rows never sit in memory whole.

use super::sql::{Dialect, Value};
use super::{Store, StoreError};

/// Every table, in an order where a row's references are copied before
/// it. The test `every_table_is_copied` holds it to the schema.
pub const TABLES: &[&str] = &[
    "settings",
    "users",
    "sessions",
    "api_tokens",
    "groups",
    "tags",
    "environments",
    "replicas",
    "commands",
    "command_outputs",
    "environment_tags",
    "usage_hourly",
    "usage_unattributed",
    "stacks",
    "stack_targets",
    "stack_deployments",
    "stack_versions",
    "stack_commands",
    "jobs",
    "job_targets",
    "job_commands",
    "job_runs",
    "registries",
    "images",
    "rollouts",
    "rollout_members",
    "tls_ticket_keys",
    "login_failures",
    "audit",
    "fleet_tokens",
    "devices",
    "teams",
    "team_members",
    "team_groups",
    "environment_variables",
];

/// Rows read at a time.
const PAGE: i64 = 500;

/// What a copy moved: rows per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// `(table, rows)`, in [`TABLES`]' order.
    pub tables: Vec<(&'static str, u64)>,
}

impl Copied {
    /// Rows over every table.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// A table's columns, and those of its primary key, in order.
fn columns(store: &Store, table: &str) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let c = &store.conn;
    let rows: Vec<(String, i64)> = match c.dialect() {
        Dialect::Sqlite => c
            .prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |r| Ok((r.get(1)?, r.get(5)?)))?
            .collect::<Result<_, _>>()?,
        Dialect::Postgres => c
            .prepare(
                "SELECT c.column_name,
                        COALESCE((SELECT k.ordinal_position FROM information_schema.key_column_usage k
                                  JOIN information_schema.table_constraints tc
                                    ON tc.constraint_name = k.constraint_name AND tc.table_name = k.table_name
                                  WHERE tc.constraint_type = 'PRIMARY KEY' AND k.table_name = c.table_name
                                    AND k.column_name = c.column_name), 0)
                 FROM information_schema.columns c
                 WHERE c.table_schema = current_schema() AND c.table_name = ?1 ORDER BY c.ordinal_position",
            )?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
    };
    let mut key: Vec<(i64, String)> = rows.iter().filter(|(_, k)| *k > 0).map(|(n, k)| (*k, n.clone())).collect();
    key.sort();
    Ok((rows.into_iter().map(|(n, _)| n).collect(), key.into_iter().map(|(_, n)| n).collect()))
}

/// Copies every table of `from` into `to`, which must be empty (freshly
/// migrated). Both must be at this build's schema. The target's
/// transaction commits only when every row is in; on any error nothing is
/// left in it.
///
/// # Errors
/// [`StoreError::Backend`] naming the table when the target is not empty,
/// or when either database fails.
pub fn copy(from: &Store, to: &Store) -> Result<Copied, StoreError> {
    let read = from.read_tx()?;
    let write = to.tx()?;
    let mut copied = Copied::default();
    for &table in TABLES {
        let present: i64 = write.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        if present > 0 {
            return Err(StoreError::Backend(
                format!("the target database is not empty ({table} has {present} rows): copy into a new one").into(),
            ));
        }
        let (cols, key) = columns(from, table)?;
        let list = cols.join(", ");
        let marks = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let insert = format!("INSERT INTO {table} ({list}) VALUES ({marks})");
        let mut n = 0u64;
        let mut last: Option<Vec<Value>> = None;
        loop {
            // Keyset pages in key order; a table without a key (stack
            // targets: a few rows a stack) is read whole.
            let (sql, params): (String, Vec<Value>) = if key.is_empty() {
                (format!("SELECT {list} FROM {table}"), Vec::new())
            } else {
                let order = key.join(", ");
                match &last {
                    None => (format!("SELECT {list} FROM {table} ORDER BY {order} LIMIT {PAGE}"), Vec::new()),
                    Some(k) => {
                        let marks = (1..=key.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                        (
                            format!(
                                "SELECT {list} FROM {table} WHERE ({order}) > ({marks}) ORDER BY {order} LIMIT {PAGE}"
                            ),
                            k.clone(),
                        )
                    }
                }
            };
            let rows = read.conn.db().query(&sql, &params)?;
            let len = rows.len();
            for row in &rows {
                let values: Vec<Value> = (0..cols.len()).map(|i| row.get::<Value>(i)).collect::<Result<_, _>>()?;
                write.conn.db().execute(&insert, &values)?;
            }
            n += len as u64;
            if key.is_empty() || len < PAGE as usize {
                break;
            }
            if let Some(row) = rows.last() {
                let at = |k: &String| cols.iter().position(|c| c == k).map_or(Ok(Value::Null), |i| row.get::<Value>(i));
                last = Some(key.iter().map(at).collect::<Result<Vec<_>, _>>()?);
            }
        }
        copied.tables.push((table, n));
    }
    if to.dialect() == Dialect::Postgres {
        // Ids go on from the highest copied, as SQLite's would.
        for &table in TABLES {
            let (cols, _) = columns(to, table)?;
            if cols.iter().any(|c| c == "id") {
                write.conn.execute_batch(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                ))?;
            }
        }
    }
    // What was read is what was written, table by table.
    for (table, n) in &copied.tables {
        let there: i64 = write.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        if there != *n as i64 {
            return Err(StoreError::Backend(format!("copy of {table}: {n} rows read, {there} in the target").into()));
        }
    }
    write.commit()?;
    drop(read);
    Ok(copied)
}

/// The table a backup file keeps the data directory's files in.
const FILES_TABLE: &str = "tern_backup_files";

impl Store {
    /// Puts the data directory's files into this (new) backup database.
    ///
    /// # Errors
    /// When the database fails.
    pub fn put_backup_files(&self, files: &[(&str, Vec<u8>)]) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.conn.execute_batch(&format!("CREATE TABLE {FILES_TABLE} (name TEXT PRIMARY KEY, content BLOB NOT NULL)"))?;
        for (name, bytes) in files {
            tx.conn.execute(
                &format!("INSERT INTO {FILES_TABLE} (name, content) VALUES (?1, ?2)"),
                super::sql::params![name, bytes],
            )?;
        }
        tx.commit()
    }

    /// The data directory's files in this backup database.
    ///
    /// # Errors
    /// When this is not a backup (`tern server backup` writes them), or the
    /// database fails.
    pub fn backup_files(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let found: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [FILES_TABLE],
            |r| r.get(0),
        )?;
        if found == 0 {
            return Err(StoreError::Backend("this is not a backup that tern server backup wrote".into()));
        }
        Ok(self
            .conn
            .prepare(&format!("SELECT name, content FROM {FILES_TABLE} ORDER BY name"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::server::store::prelude::*;
    use crate::wire::poll::{Action, ContainerOp};

    #[test]
    fn every_table_is_copied() {
        let s = Store::in_memory().unwrap();
        let mut tables: Vec<String> = s
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.sort();
        let mut listed: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        listed.sort();
        assert_eq!(tables, listed);
    }

    /// A copy keeps ids, counters, commands and settings; a second copy
    /// into the same target is refused and leaves it as it was.
    #[test]
    fn a_copy_carries_everything_and_refuses_a_target_with_data() {
        let from = Store::in_memory().unwrap();
        let tx = from.autocommit();
        let mut envs = Vec::new();
        for i in 0..(PAGE + 7) {
            envs.push(tx.create_environment(&format!("site-{i}"), Secret([i as u8; 32]), i).unwrap().id);
        }
        tx.delete_environment(envs[3]).unwrap();
        assert!(tx.accept_poll(envs[5], 41, Some("edge-5"), 100).unwrap());
        let cmd = tx.enqueue_command(envs[5], &Action::Container(ContainerOp::Stop, Default::default()), 101).unwrap();
        tx.set_agent_secret(Some("s3cret")).unwrap();
        let to = Store::scratch().unwrap();
        let copied = copy(&from, &to).unwrap();
        assert_eq!(copied.tables.iter().find(|(t, _)| *t == "environments").unwrap().1, PAGE as u64 + 6);
        let t = to.autocommit();
        assert_eq!(t.environment(envs[5]).unwrap().last_counter, 41);
        assert!(matches!(t.environment(envs[3]), Err(StoreError::NotFound(_))));
        assert!(!t.accept_poll(envs[5], 41, Some("edge-5"), 102).unwrap(), "the counter carried: a replay is refused");
        assert!(t.accept_poll(envs[5], 42, Some("edge-5"), 102).unwrap());
        assert_eq!(t.commands_due(envs[5], 103, 10).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![cmd]);
        assert_eq!(t.agent_secret().unwrap().as_deref(), Some("s3cret"));
        let next = t.create_environment("new", Secret([9; 32]), 200).unwrap();
        assert!(next.id > *envs.last().unwrap(), "ids go on past the copied ones");
        let again = copy(&from, &to);
        assert!(matches!(&again, Err(StoreError::Backend(e)) if e.to_string().contains("not empty")), "{again:?}");
        assert!(t.environment(next.id).is_ok(), "the refused copy changed nothing");
    }
}
