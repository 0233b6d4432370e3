//! Edge stacks (migration 8): a compose file with its variables, a version
//! bumped by every update, and targets (environments, groups, tags). Each
//! environment a stack reaches has a *deployment* row naming the last
//! command sent to it for this stack (a `StackDeploy`, or a `StackRemove`
//! once the stack is being removed); its status is read off that command
//! by the domain's rule ([`crate::server::domain::status`]).
//!
//! What the store does here is keep and find: stacks, targets resolved to
//! ids, the environments targets name, deployment rows. What is sent where
//! and when (create, update, retarget, remove, and late targets) is the
//! domain's ([`crate::server::domain::stacks`]), through this trait.

use std::collections::{BTreeMap, BTreeSet};

use super::sql::{Connection, OptionalExtension, Row, params};

use super::{StoreError, Tx, sql_id};
use crate::wire::poll::StackSpec;

/// What can go wrong with a stack, apart from the database.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The database.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// No such stack.
    #[error("no stack {0}")]
    NotFound(u64),
    /// A stack (not removed) has this name.
    #[error("a stack named {0:?} exists already")]
    NameTaken(String),
    /// A target names nothing.
    #[error("{0}")]
    UnknownTarget(String),
    /// The stack has no such version.
    #[error("stack {0} has no version {1}")]
    NoVersion(u64, u32),
}

/// One version of a stack, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackVersion {
    /// Its number.
    pub version: u32,
    /// The compose file.
    pub compose: String,
    /// Its variables.
    pub env: BTreeMap<String, String>,
    /// Its configuration files, by path.
    pub files: StackFiles,
    /// When it was made.
    pub created_at: i64,
    /// What made it, when not an edit (`rolled back to version 2`).
    pub note: String,
}

/// A stack's configuration files: their paths relative to the stack's
/// directory on the host, and their text.
pub type StackFiles = BTreeMap<String, String>;

/// How many versions of a stack are kept (the newest; older ones can no
/// longer be rolled back to).
pub const VERSIONS_KEPT: i64 = 100;

/// One deploy of a stack on one environment, as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRecord {
    /// The stack version it carried.
    pub version: u32,
    /// Its command.
    pub command: u64,
    /// The environment.
    pub environment: u64,
    /// Its name.
    pub environment_name: String,
    /// The command's status: queued, delivered, ok, failed, rejected,
    /// cancelled.
    pub status: String,
    /// The agent's error, when it failed.
    pub error: String,
    /// When it was queued.
    pub queued_at: i64,
    /// When the agent took it.
    pub delivered_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

impl From<super::sql::Error> for StackError {
    fn from(e: super::sql::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A group, tag or environment as an operator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    /// By id.
    Id(u64),
    /// By name (groups and tags regardless of case).
    Name(String),
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// Where a stack goes, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetRefs {
    /// Environments.
    pub environments: Vec<TargetRef>,
    /// Groups: every environment in them.
    pub groups: Vec<TargetRef>,
    /// Tags: every environment with one of them.
    pub tags: Vec<TargetRef>,
}

impl TargetRefs {
    /// No target at all.
    pub fn is_empty(&self) -> bool {
        self.environments.is_empty() && self.groups.is_empty() && self.tags.is_empty()
    }
}

/// A target, resolved to ids, with its name for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `environment`, `group` or `tag`.
    pub kind: &'static str,
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// A deploy queued and not yet sent, under a deploy window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsentDeploy {
    /// The stack.
    pub stack: u64,
    /// The environment.
    pub environment: u64,
    /// Its command.
    pub command: u64,
    /// The stack's window and the environment's (`""`: none).
    pub windows: [String; 2],
}

/// A new stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStack {
    /// The compose project name.
    pub name: String,
    /// The compose file.
    pub compose: String,
    /// Variables for interpolation.
    pub env: BTreeMap<String, String>,
    /// Configuration files shipped with it.
    pub files: StackFiles,
    /// Its deploy window (`""`: none; see `domain::windows`).
    pub window: String,
    /// Where it goes.
    pub targets: TargetRefs,
}

/// An update: what is `None` stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackChange {
    /// A new compose file.
    pub compose: Option<String>,
    /// New variables (replacing all of them).
    pub env: Option<BTreeMap<String, String>>,
    /// New configuration files (replacing all of them).
    pub files: Option<StackFiles>,
    /// A new deploy window (`""`: none). Not part of the version: it
    /// says when, not what.
    pub window: Option<String>,
    /// New targets (replacing all of them).
    pub targets: Option<TargetRefs>,
}

/// A stack on one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The environment.
    pub environment: u64,
    /// Its name.
    pub environment_name: String,
    /// The stack version last sent to it.
    pub version: u32,
    /// The version it runs: its last deploy that ended ok (`None`: none
    /// known yet).
    pub running_version: Option<u32>,
    /// Which attempt of the version last sent is on its way (1: the first).
    pub attempt: u32,
    /// When a failed deploy is tried again.
    pub retry_at: Option<i64>,
    /// See the module doc.
    pub status: &'static str,
    /// The agent's error, when failed.
    pub error: Option<String>,
    /// The command that carries it.
    pub command: Option<u64>,
    /// When that command was queued.
    pub queued_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

/// A stack as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackRecord {
    /// Its id.
    pub id: u64,
    /// The compose project name.
    pub name: String,
    /// The compose file.
    pub compose: String,
    /// Variables.
    pub env: BTreeMap<String, String>,
    /// Configuration files.
    pub files: StackFiles,
    /// Its deploy window (`""`: none).
    pub window: String,
    /// Bumped by every update.
    pub version: u32,
    /// When created.
    pub created_at: i64,
    /// When last updated.
    pub updated_at: i64,
    /// When its removal was asked for.
    pub removed_at: Option<i64>,
    /// Its targets.
    pub targets: Vec<Target>,
    /// Where it is, by environment id.
    pub deployments: Vec<Deployment>,
}

/// A `stacks` row: id, name, compose, env, version, created, updated,
/// removed, files, window.
type StackRow = (i64, String, String, String, i64, i64, i64, Option<i64>, String, String);

/// The environments a stack's targets name now: `(stack, environment)`
/// pairs without a deployment yet, for one stack and/or one environment
/// (`NULL`: all).
const UNDEPLOYED: &str = "
    WITH targeted(stack, environment) AS (
        SELECT t.stack, t.environment FROM stack_targets t
         WHERE t.environment IS NOT NULL AND (t.environment = ?2 OR ?2 IS NULL)
        UNION
        SELECT t.stack, e.id FROM stack_targets t JOIN environments e ON e.group_id = t.group_id
         WHERE t.group_id IS NOT NULL AND (e.id = ?2 OR ?2 IS NULL)
        UNION
        SELECT t.stack, et.environment FROM stack_targets t JOIN environment_tags et ON et.tag = t.tag
         WHERE t.tag IS NOT NULL AND (et.environment = ?2 OR ?2 IS NULL)
    )
    SELECT x.stack, x.environment FROM targeted x JOIN stacks s ON s.id = x.stack
     WHERE s.removed_at IS NULL AND (x.stack = ?1 OR ?1 IS NULL)
       AND NOT EXISTS (SELECT 1 FROM stack_deployments d WHERE d.stack = x.stack AND d.environment = x.environment)
     ORDER BY x.stack, x.environment";

/// Edge stacks, their targets and deployments: what is kept and found.
/// What is sent where is the domain's (`domain::stacks`).
pub trait StackStore {
    /// The `(stack, environment)` pairs whose targets name the environment
    /// now while it has no deployment of that (live) stack, for one stack
    /// and/or one environment (`None`: all), in order.
    ///
    /// # Errors
    /// When the database fails.
    fn undeployed_stacks(&self, stack: Option<u64>, environment: Option<u64>) -> Result<Vec<(u64, u64)>, StoreError>;

    /// Every environment a stack's targets name now, deployed or not.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_reach(&self, stack: u64) -> Result<BTreeSet<u64>, StoreError>;

    /// Stores a new stack at version 1 with its targets resolved; no
    /// deployment yet.
    ///
    /// # Errors
    /// [`StackError::NameTaken`], [`StackError::UnknownTarget`], or when
    /// the database fails (the caller's transaction is then to be rolled
    /// back: the row may be written).
    fn insert_stack(&self, new: &NewStack, now: i64) -> Result<u64, StackError>;

    /// Replaces a stack's targets.
    ///
    /// # Errors
    /// [`StackError::UnknownTarget`], or when the database fails.
    fn set_stack_targets(&self, stack: u64, targets: &TargetRefs) -> Result<(), StackError>;

    /// A new version of a live stack: its file, variables and/or
    /// configuration files replaced where given (its targets are not
    /// touched here), its version bumped.
    ///
    /// # Errors
    /// [`StackError::NotFound`] (also for a stack being removed), or when
    /// the database fails.
    fn revise_stack(&self, id: u64, change: &StackChange, now: i64) -> Result<(), StackError>;

    /// What a `StackDeploy` of the stack's current version carries.
    ///
    /// # Errors
    /// When the database fails or the stored stack is corrupt.
    fn stack_spec(&self, stack: u64) -> Result<StackSpec, StackError>;

    /// A stack's versions, newest first.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_versions(&self, stack: u64) -> Result<Vec<StackVersion>, StackError>;

    /// A stack's deploys, newest first, on one environment or all: every
    /// attempt, retries included, as long as their commands are kept.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_history(&self, stack: u64, environment: Option<u64>, limit: u32) -> Result<Vec<DeployRecord>, StoreError>;

    /// An environment's own stack variable values (migration 25): a stack
    /// that declares one of these names is deployed there with this value
    /// instead of its own.
    ///
    /// # Errors
    /// When the database fails.
    fn environment_variables(&self, environment: u64) -> Result<BTreeMap<String, String>, StoreError>;

    /// The deploy windows of a stack and of an environment (`""`: none).
    ///
    /// # Errors
    /// When the database fails (a stack or environment that is not there
    /// has none).
    fn deploy_windows(&self, stack: u64, environment: u64) -> Result<(String, String), StoreError>;

    /// Sets a stack's (`stack`) or an environment's deploy window (checked
    /// and written one way by the caller; `""`: none); its deployments
    /// waiting for a window are looked at again at once. `false` when there
    /// is no such stack or environment.
    ///
    /// # Errors
    /// When the database fails.
    fn set_deploy_window(
        &self,
        stack: Option<u64>,
        environment: Option<u64>,
        window: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Records a deploy of `version` that waits for its window: no command
    /// yet, sent at `at` (by the retry scheduler) as its first attempt.
    ///
    /// # Errors
    /// When the database fails.
    fn wait_stack_deploy(&self, stack: u64, environment: u64, version: u32, at: i64) -> Result<(), StoreError>;

    /// Takes back a deploy whose command was cancelled before it was sent:
    /// no command, sent again at `at` as the attempt it was (the one taken
    /// back did not count).
    ///
    /// # Errors
    /// When the database fails.
    fn hold_stack_deploy(&self, stack: u64, environment: u64, at: i64) -> Result<(), StoreError>;

    /// Deploys queued and not yet sent whose stack or environment has a
    /// deploy window (open or not: the caller reads the windows).
    ///
    /// # Errors
    /// When the database fails.
    fn unsent_windowed_deploys(&self) -> Result<Vec<UnsentDeploy>, StoreError>;

    /// Replaces an environment's own values; `false` when there is no such
    /// environment (nothing changed).
    ///
    /// # Errors
    /// When the database fails.
    fn set_environment_variables(
        &self,
        environment: u64,
        values: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError>;

    /// One version of a stack.
    ///
    /// # Errors
    /// [`StackError::NoVersion`], or when the database fails.
    fn stack_version(&self, stack: u64, version: u32) -> Result<StackVersion, StackError>;

    /// Notes what made the stack's current version (a rollback's origin).
    ///
    /// # Errors
    /// When the database fails.
    fn note_stack_version(&self, stack: u64, note: &str) -> Result<(), StackError>;

    /// The environments a stack has a deployment on, and whether the last
    /// command there removes it.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_deployments(&self, stack: u64) -> Result<Vec<(u64, bool)>, StoreError>;

    /// Records `command` as the stack's last command on `environment`
    /// (its deployment row, made or replaced).
    ///
    /// # Errors
    /// When the database fails.
    fn record_stack_command(
        &self,
        stack: u64,
        environment: u64,
        command: u64,
        version: u32,
        removing: bool,
    ) -> Result<(), StoreError>;

    /// Records that `command` deploys `version` of `stack`.
    ///
    /// # Errors
    /// When the database fails.
    fn note_stack_command(&self, command: u64, stack: u64, version: u32) -> Result<(), StoreError>;

    /// An ok result of `command` on `environment`: a deploy makes its
    /// version the one running there (unless a later one already is); the
    /// removal that is the deployment's last command clears it.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_command_ok(&self, environment: u64, command: u64) -> Result<(), StoreError>;

    /// The stack and attempt of a deploy or removal (`true`) that `command`
    /// carries to `environment`, if it is the stack's last command there.
    ///
    /// # Errors
    /// When the database fails.
    fn deploy_of_command(&self, environment: u64, command: u64) -> Result<Option<(u64, u32, bool)>, StoreError>;

    /// When the stack's deploy on `environment` is tried again (`None`:
    /// not).
    ///
    /// # Errors
    /// When the database fails.
    fn set_stack_retry(&self, stack: u64, environment: u64, at: Option<i64>) -> Result<(), StoreError>;

    /// The `(stack, environment)` deploys due to be tried again at `now`.
    ///
    /// # Errors
    /// When the database fails.
    fn due_stack_retries(&self, now: i64) -> Result<Vec<(u64, u64)>, StoreError>;

    /// Takes a due retry: for the one transaction (of any replica) that is
    /// to send it, whether it is a removal's (`Some(true)`) or a deploy's.
    ///
    /// # Errors
    /// When the database fails.
    fn claim_stack_retry(&self, stack: u64, environment: u64, now: i64) -> Result<Option<bool>, StoreError>;

    /// Records `command` as the next attempt of the stack's deploy on
    /// `environment`.
    ///
    /// # Errors
    /// When the database fails.
    fn record_stack_retry(&self, stack: u64, environment: u64, command: u64, version: u32) -> Result<(), StoreError>;

    /// Marks a stack as being removed (its name is free from then on); the
    /// first time counts.
    ///
    /// # Errors
    /// When the database fails.
    fn mark_stack_removed(&self, id: u64, now: i64) -> Result<(), StoreError>;

    /// Deletes a stack's record, its targets and deployments.
    ///
    /// # Errors
    /// When the database fails.
    fn purge_stack(&self, id: u64) -> Result<(), StoreError>;

    /// One stack, with its targets and deployments.
    ///
    /// # Errors
    /// [`StackError::NotFound`], or when the database fails.
    fn stack(&self, id: u64) -> Result<StackRecord, StackError>;

    /// Every stack, by id.
    ///
    /// # Errors
    /// When the database fails.
    fn stacks(&self) -> Result<Vec<StackRecord>, StackError>;
}

impl StackStore for Tx<'_> {
    fn undeployed_stacks(&self, stack: Option<u64>, environment: Option<u64>) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(UNDEPLOYED)?;
        let rows = stmt.query_map(params![stack.map(sql_id), environment.map(sql_id)], |r| {
            Ok((r.get::<i64>(0)? as u64, r.get::<i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn stack_reach(&self, stack: u64) -> Result<BTreeSet<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&UNDEPLOYED.replace(
            "AND NOT EXISTS (SELECT 1 FROM stack_deployments d WHERE d.stack = x.stack AND d.environment = x.environment)",
            "",
        ))?;
        let rows = stmt.query_map(params![sql_id(stack), None::<i64>], |r| r.get::<i64>(1).map(|e| e as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_stack(&self, new: &NewStack, now: i64) -> Result<u64, StackError> {
        let env = serde_json::to_string(&new.env).unwrap_or_else(|_| "{}".into());
        let files = serde_json::to_string(&new.files).unwrap_or_else(|_| "{}".into());
        let r = self.conn.insert(
            "INSERT INTO stacks (name, compose, env, version, created_at, updated_at, files, deploy_window)
             VALUES (?1, ?2, ?3, 1, ?4, ?4, ?5, ?6)",
            params![new.name, new.compose, env, now, files, new.window],
        );
        let id = match r {
            Err(super::sql::Error::Constraint(_)) => {
                return Err(StackError::NameTaken(new.name.clone()));
            }
            r => r?,
        };
        Self::set_targets(self.conn, id, &new.targets)?;
        Self::keep_version(self.conn, id)?;
        Ok(id as u64)
    }

    fn set_stack_targets(&self, stack: u64, targets: &TargetRefs) -> Result<(), StackError> {
        Self::set_targets(self.conn, sql_id(stack), targets)
    }

    fn revise_stack(&self, id: u64, change: &StackChange, now: i64) -> Result<(), StackError> {
        let live: Option<i64> = self
            .conn
            .query_row("SELECT id FROM stacks WHERE id = ?1 AND removed_at IS NULL", [sql_id(id)], |r| r.get(0))
            .optional()?;
        let stack = live.ok_or(StackError::NotFound(id))?;
        if let Some(compose) = &change.compose {
            self.conn.execute("UPDATE stacks SET compose = ?2 WHERE id = ?1", params![stack, compose])?;
        }
        if let Some(env) = &change.env {
            let env = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
            self.conn.execute("UPDATE stacks SET env = ?2 WHERE id = ?1", params![stack, env])?;
        }
        if let Some(files) = &change.files {
            let files = serde_json::to_string(files).unwrap_or_else(|_| "{}".into());
            self.conn.execute("UPDATE stacks SET files = ?2 WHERE id = ?1", params![stack, files])?;
        }
        self.conn
            .execute("UPDATE stacks SET version = version + 1, updated_at = ?2 WHERE id = ?1", params![stack, now])?;
        Self::keep_version(self.conn, stack)?;
        Ok(())
    }

    fn stack_spec(&self, stack: u64) -> Result<StackSpec, StackError> {
        Self::spec_of(self.conn, sql_id(stack))
    }

    fn stack_history(&self, stack: u64, environment: Option<u64>, limit: u32) -> Result<Vec<DeployRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT sc.version, c.id, c.environment, e.name, c.status, c.error, c.created_at, c.delivered_at,
                        c.finished_at
                 FROM stack_commands sc JOIN commands c ON c.id = sc.command
                 JOIN environments e ON e.id = c.environment
                 WHERE sc.stack = ?1 AND (c.environment = ?2 OR ?2 IS NULL)
                 ORDER BY c.id DESC LIMIT ?3",
            )?
            .query_map(params![sql_id(stack), environment.map(sql_id), i64::from(limit)], |r| {
                Ok(DeployRecord {
                    version: r.get::<i64>(0)? as u32,
                    command: r.get::<i64>(1)? as u64,
                    environment: r.get::<i64>(2)? as u64,
                    environment_name: r.get(3)?,
                    status: r.get(4)?,
                    error: r.get(5)?,
                    queued_at: r.get(6)?,
                    delivered_at: r.get(7)?,
                    finished_at: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn deploy_windows(&self, stack: u64, environment: u64) -> Result<(String, String), StoreError> {
        let stack_window: Option<String> = self
            .conn
            .query_row("SELECT deploy_window FROM stacks WHERE id = ?1", [sql_id(stack)], |r| r.get(0))
            .optional()?;
        let env_window: Option<String> = self
            .conn
            .query_row("SELECT deploy_window FROM environments WHERE id = ?1", [sql_id(environment)], |r| r.get(0))
            .optional()?;
        Ok((stack_window.unwrap_or_default(), env_window.unwrap_or_default()))
    }

    fn set_deploy_window(
        &self,
        stack: Option<u64>,
        environment: Option<u64>,
        window: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (table, column, id) = match (stack, environment) {
            (Some(s), _) => ("stacks", "stack", s),
            (None, Some(e)) => ("environments", "environment", e),
            (None, None) => return Ok(false),
        };
        let n = self
            .conn
            .execute(&format!("UPDATE {table} SET deploy_window = ?2 WHERE id = ?1"), params![sql_id(id), window])?;
        if n == 0 {
            return Ok(false);
        }
        self.conn.execute(
            &format!(
                "UPDATE stack_deployments SET retry_at = ?2
                 WHERE {column} = ?1 AND command IS NULL AND removing = 0 AND retry_at IS NOT NULL"
            ),
            params![sql_id(id), now],
        )?;
        Ok(true)
    }

    fn wait_stack_deploy(&self, stack: u64, environment: u64, version: u32, at: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO stack_deployments (stack, environment, version, command, removing, attempt, retry_at)
             VALUES (?1, ?2, ?3, NULL, 0, 0, ?4)
             ON CONFLICT(stack, environment) DO UPDATE SET version = ?3, command = NULL, removing = 0,
                 attempt = 0, retry_at = ?4",
            params![sql_id(stack), sql_id(environment), version, at],
        )?;
        Ok(())
    }

    fn hold_stack_deploy(&self, stack: u64, environment: u64, at: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE stack_deployments SET command = NULL, retry_at = ?3,
                 attempt = CASE WHEN attempt > 0 THEN attempt - 1 ELSE 0 END
             WHERE stack = ?1 AND environment = ?2",
            params![sql_id(stack), sql_id(environment), at],
        )?;
        Ok(())
    }

    fn unsent_windowed_deploys(&self) -> Result<Vec<UnsentDeploy>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.stack, d.environment, d.command, s.deploy_window, e.deploy_window
               FROM stack_deployments d
               JOIN commands c ON c.id = d.command
               JOIN stacks s ON s.id = d.stack
               JOIN environments e ON e.id = d.environment
              WHERE c.status = 'queued' AND c.sent_at IS NULL AND d.removing = 0
                AND (s.deploy_window <> '' OR e.deploy_window <> '')",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UnsentDeploy {
                stack: r.get::<i64>(0)? as u64,
                environment: r.get::<i64>(1)? as u64,
                command: r.get::<i64>(2)? as u64,
                windows: [r.get(3)?, r.get(4)?],
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn environment_variables(&self, environment: u64) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT name, value FROM environment_variables WHERE environment = ?1")?
            .query_map([sql_id(environment)], |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    fn set_environment_variables(
        &self,
        environment: u64,
        values: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let tx = self.tx()?;
        let exists: Option<i64> = tx
            .query_row("SELECT id FROM environments WHERE id = ?1", [sql_id(environment)], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Ok(false);
        }
        tx.execute("DELETE FROM environment_variables WHERE environment = ?1", [sql_id(environment)])?;
        for (name, value) in values {
            tx.execute(
                "INSERT INTO environment_variables (environment, name, value) VALUES (?1, ?2, ?3)",
                params![sql_id(environment), name, value],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn stack_versions(&self, stack: u64) -> Result<Vec<StackVersion>, StackError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT version, compose, env, created_at, note, files FROM stack_versions WHERE stack = ?1 ORDER BY version DESC",
        )?;
        let rows: Vec<_> = stmt.query_map([sql_id(stack)], Self::version_row)?.collect::<Result<_, _>>()?;
        rows.into_iter().collect()
    }

    fn stack_version(&self, stack: u64, version: u32) -> Result<StackVersion, StackError> {
        self.conn
            .query_row(
                "SELECT version, compose, env, created_at, note, files FROM stack_versions WHERE stack = ?1
                 AND version = ?2",
                params![sql_id(stack), i64::from(version)],
                Self::version_row,
            )
            .optional()?
            .ok_or(StackError::NoVersion(stack, version))?
    }

    fn note_stack_version(&self, stack: u64, note: &str) -> Result<(), StackError> {
        self.conn.execute(
            "UPDATE stack_versions SET note = ?2 WHERE stack = ?1 AND version = (SELECT version FROM stacks WHERE id = ?1)",
            params![sql_id(stack), note],
        )?;
        Ok(())
    }

    fn stack_deployments(&self, stack: u64) -> Result<Vec<(u64, bool)>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT environment, removing FROM stack_deployments WHERE stack = ?1")?;
        let rows = stmt.query_map([sql_id(stack)], |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_stack_command(
        &self,
        stack: u64,
        environment: u64,
        command: u64,
        version: u32,
        removing: bool,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO stack_deployments (stack, environment, version, command, removing) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(stack, environment) DO UPDATE SET version = ?3, command = ?4, removing = ?5,
                 attempt = 1, retry_at = NULL",
            params![sql_id(stack), sql_id(environment), version, sql_id(command), removing],
        )?;
        Ok(())
    }

    fn note_stack_command(&self, command: u64, stack: u64, version: u32) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO stack_commands (command, stack, version) VALUES (?1, ?2, ?3) ON CONFLICT (command) DO NOTHING",
            params![sql_id(command), sql_id(stack), version],
        )?;
        Ok(())
    }

    fn stack_command_ok(&self, environment: u64, command: u64) -> Result<(), StoreError> {
        let carried = self
            .conn
            .query_row("SELECT stack, version FROM stack_commands WHERE command = ?1", [sql_id(command)], |r| {
                Ok((r.get::<i64>(0)?, r.get::<i64>(1)?))
            })
            .optional()?;
        if let Some((stack, version)) = carried {
            self.conn.execute(
                "UPDATE stack_deployments SET running_version = ?3
                 WHERE stack = ?1 AND environment = ?2 AND removing = 0
                   AND (running_version IS NULL OR running_version < ?3)",
                params![stack, sql_id(environment), version],
            )?;
        } else {
            self.conn.execute(
                "UPDATE stack_deployments SET running_version = NULL
                 WHERE environment = ?1 AND command = ?2 AND removing = 1",
                params![sql_id(environment), sql_id(command)],
            )?;
        }
        Ok(())
    }

    fn deploy_of_command(&self, environment: u64, command: u64) -> Result<Option<(u64, u32, bool)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT stack, attempt, removing FROM stack_deployments WHERE environment = ?1 AND command = ?2",
                params![sql_id(environment), sql_id(command)],
                |r| {
                    Ok((
                        r.get::<i64>(0)? as u64,
                        u32::try_from(r.get::<i64>(1)?).unwrap_or(u32::MAX),
                        r.get::<i64>(2)? != 0,
                    ))
                },
            )
            .optional()?)
    }

    fn set_stack_retry(&self, stack: u64, environment: u64, at: Option<i64>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE stack_deployments SET retry_at = ?3 WHERE stack = ?1 AND environment = ?2",
            params![sql_id(stack), sql_id(environment), at],
        )?;
        Ok(())
    }

    fn due_stack_retries(&self, now: i64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT stack, environment FROM stack_deployments WHERE retry_at IS NOT NULL AND retry_at <= ?1
             ORDER BY retry_at LIMIT 100",
        )?;
        let rows = stmt.query_map([now], |r| Ok((r.get::<i64>(0)? as u64, r.get::<i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim_stack_retry(&self, stack: u64, environment: u64, now: i64) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "UPDATE stack_deployments SET retry_at = NULL
                 WHERE stack = ?1 AND environment = ?2 AND retry_at IS NOT NULL AND retry_at <= ?3
                 RETURNING removing",
                params![sql_id(stack), sql_id(environment), now],
                |r| Ok(r.get::<i64>(0)? != 0),
            )
            .optional()?)
    }

    fn record_stack_retry(&self, stack: u64, environment: u64, command: u64, version: u32) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE stack_deployments SET command = ?3, version = ?4, attempt = attempt + 1, retry_at = NULL
             WHERE stack = ?1 AND environment = ?2",
            params![sql_id(stack), sql_id(environment), sql_id(command), version],
        )?;
        Ok(())
    }

    fn mark_stack_removed(&self, id: u64, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE stacks SET removed_at = COALESCE(removed_at, ?2) WHERE id = ?1",
            params![sql_id(id), now],
        )?;
        Ok(())
    }

    fn purge_stack(&self, id: u64) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM stacks WHERE id = ?1", [sql_id(id)])?;
        Ok(())
    }

    fn stack(&self, id: u64) -> Result<StackRecord, StackError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {} FROM stacks WHERE id = ?1", Self::STACK_COLUMNS),
                [sql_id(id)],
                Self::stack_row,
            )
            .optional()?
            .ok_or(StackError::NotFound(id))?;
        self.finish_stack(row)
    }

    fn stacks(&self) -> Result<Vec<StackRecord>, StackError> {
        let rows: Vec<_> = {
            let mut stmt = self.conn.prepare(&format!("SELECT {} FROM stacks ORDER BY id", Self::STACK_COLUMNS))?;
            stmt.query_map([], Self::stack_row)?.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(|r| self.finish_stack(r)).collect()
    }
}

impl Tx<'_> {
    /// Copies the stack's current version into `stack_versions`, and
    /// forgets those older than the newest [`VERSIONS_KEPT`] (a stack
    /// updated by a script every hour would otherwise grow without end).
    fn keep_version(tx: &Connection, stack: i64) -> Result<(), StackError> {
        tx.execute(
            "INSERT INTO stack_versions (stack, version, compose, env, created_at, files)
             SELECT id, version, compose, env, updated_at, files FROM stacks WHERE id = ?1",
            [stack],
        )?;
        tx.execute(
            "DELETE FROM stack_versions WHERE stack = ?1
             AND version <= (SELECT version FROM stacks WHERE id = ?1) - ?2",
            params![stack, VERSIONS_KEPT],
        )?;
        Ok(())
    }

    fn version_row(r: &Row) -> super::sql::Result<Result<StackVersion, StackError>> {
        let (version, compose, env, created_at, note, files): (i64, String, String, i64, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?);
        let corrupt = |_| StackError::Store(StoreError::Corrupt { what: "stack version", environment: 0 });
        Ok((|| {
            Ok(StackVersion {
                version: u32::try_from(version).unwrap_or(u32::MAX),
                compose,
                env: serde_json::from_str(&env).map_err(corrupt)?,
                files: serde_json::from_str(&files).map_err(corrupt)?,
                created_at,
                note,
            })
        })())
    }

    fn resolve_one(tx: &Connection, kind: &'static str, r: &TargetRef) -> Result<Target, StackError> {
        let table = match kind {
            "environment" => "environments",
            "group" => "groups",
            _ => "tags",
        };
        let by_id = |id: u64| -> Result<Option<Target>, StackError> {
            Ok(tx
                .query_row(&format!("SELECT id, name FROM {table} WHERE id = ?1"), [sql_id(id)], |r| {
                    Ok(Target { kind, id: r.get::<i64>(0)? as u64, name: r.get(1)? })
                })
                .optional()?)
        };
        let found = match r {
            TargetRef::Id(id) => by_id(*id)?,
            TargetRef::Name(name) => {
                let collate = if kind == "environment" { "" } else { " COLLATE NOCASE" };
                let by_name = tx
                    .query_row(&format!("SELECT id, name FROM {table} WHERE name = ?1{collate}"), [name], |r| {
                        Ok(Target { kind, id: r.get::<i64>(0)? as u64, name: r.get(1)? })
                    })
                    .optional()?;
                match by_name {
                    Some(t) => Some(t),
                    None => name.parse().ok().map(by_id).transpose()?.flatten(),
                }
            }
        };
        found.ok_or_else(|| StackError::UnknownTarget(format!("targets: no {kind} {r}")))
    }

    fn set_targets(tx: &Connection, stack: i64, refs: &TargetRefs) -> Result<(), StackError> {
        tx.execute("DELETE FROM stack_targets WHERE stack = ?1", [stack])?;
        for (kind, list, column) in [
            ("environment", &refs.environments, "environment"),
            ("group", &refs.groups, "group_id"),
            ("tag", &refs.tags, "tag"),
        ] {
            for r in list {
                let t = Self::resolve_one(tx, kind, r)?;
                tx.execute(
                    &format!(
                        "INSERT INTO stack_targets (stack, {column}) SELECT ?1, ?2
                         WHERE NOT EXISTS (SELECT 1 FROM stack_targets WHERE stack = ?1 AND {column} = ?2)"
                    ),
                    params![stack, sql_id(t.id)],
                )?;
            }
        }
        Ok(())
    }

    fn spec_of(tx: &Connection, stack: i64) -> Result<StackSpec, StackError> {
        let (name, compose, env, version, files): (String, String, String, i64, String) =
            tx.query_row("SELECT name, compose, env, version, files FROM stacks WHERE id = ?1", [stack], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
        let env = serde_json::from_str(&env).map_err(|_| StoreError::Corrupt { what: "stack env", environment: 0 })?;
        let files: StackFiles =
            serde_json::from_str(&files).map_err(|_| StoreError::Corrupt { what: "stack files", environment: 0 })?;
        Ok(StackSpec {
            name,
            compose,
            env,
            version: u32::try_from(version).unwrap_or(u32::MAX),
            images: Vec::new(),
            files: files.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        })
    }

    fn targets_of(&self, stack: i64) -> Result<Vec<Target>, StackError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT 'environment', e.id, e.name FROM stack_targets t JOIN environments e ON e.id = t.environment
              WHERE t.stack = ?1
             UNION ALL
             SELECT 'group', g.id, g.name FROM stack_targets t JOIN groups g ON g.id = t.group_id WHERE t.stack = ?1
             UNION ALL
             SELECT 'tag', g.id, g.name FROM stack_targets t JOIN tags g ON g.id = t.tag WHERE t.stack = ?1",
        )?;
        let rows = stmt.query_map([stack], |r| {
            let kind: String = r.get(0)?;
            let kind = match kind.as_str() {
                "environment" => "environment",
                "group" => "group",
                _ => "tag",
            };
            Ok(Target { kind, id: r.get::<i64>(1)? as u64, name: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn deployments_of(&self, stack: i64) -> Result<Vec<Deployment>, StackError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.environment, e.name, d.version, d.removing, d.command,
                    c.status, c.phase, c.error, c.created_at, c.finished_at, d.running_version, d.attempt, d.retry_at
               FROM stack_deployments d
               JOIN environments e ON e.id = d.environment
               LEFT JOIN commands c ON c.id = d.command
              WHERE d.stack = ?1 ORDER BY d.environment",
        )?;
        let rows = stmt.query_map([stack], |r| {
            let status: Option<String> = r.get(5)?;
            let phase: Option<String> = r.get(6)?;
            let error: Option<String> = r.get(7)?;
            let retry_at: Option<i64> = r.get(12)?;
            let s = if status.is_none() && retry_at.is_some() {
                // No command yet: its deploy window is closed.
                crate::server::domain::status::WAITING
            } else {
                crate::server::domain::status::deployment_status(r.get(3)?, status.as_deref(), phase.as_deref())
            };
            Ok(Deployment {
                environment: r.get::<i64>(0)? as u64,
                environment_name: r.get(1)?,
                version: u32::try_from(r.get::<i64>(2)?).unwrap_or(u32::MAX),
                running_version: r.get::<Option<i64>>(10)?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
                attempt: u32::try_from(r.get::<i64>(11)?).unwrap_or(u32::MAX),
                retry_at,
                status: s,
                error: error.filter(|e| !e.is_empty() && s == "failed"),
                command: r.get::<Option<i64>>(4)?.map(|c| c as u64),
                queued_at: r.get(8)?,
                finished_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn stack_row(r: &Row) -> super::sql::Result<StackRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ))
    }

    fn finish_stack(
        &self,
        (id, name, compose, env, version, created_at, updated_at, removed_at, files, window): StackRow,
    ) -> Result<StackRecord, StackError> {
        Ok(StackRecord {
            id: id as u64,
            name,
            compose,
            env: serde_json::from_str(&env).map_err(|_| StoreError::Corrupt { what: "stack env", environment: 0 })?,
            files: serde_json::from_str(&files)
                .map_err(|_| StoreError::Corrupt { what: "stack files", environment: 0 })?,
            window,
            version: u32::try_from(version).unwrap_or(u32::MAX),
            created_at,
            updated_at,
            removed_at,
            targets: self.targets_of(id)?,
            deployments: self.deployments_of(id)?,
        })
    }

    const STACK_COLUMNS: &'static str =
        "id, name, compose, env, version, created_at, updated_at, removed_at, files, deploy_window";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::domain::prelude::*;
    use crate::server::domain::stacks::Removal;
    use crate::server::store::Store;
    use crate::server::store::prelude::*;
    use crate::wire::poll::Action;

    use crate::auth::Secret;
    use crate::wire::poll::{CommandResult, ResultStatus};

    fn new(name: &str, targets: TargetRefs) -> NewStack {
        NewStack {
            name: name.into(),
            compose: "services:\n  a:\n    image: busybox\n".into(),
            env: BTreeMap::from([("K".into(), "v".into())]),
            files: StackFiles::new(),
            window: String::new(),
            targets,
        }
    }

    fn result(id: u64, status: ResultStatus, phase: &str, error: &str) -> CommandResult {
        CommandResult { id, status, error: error.into(), finished_at: 500, output: Vec::new(), phase: phase.into() }
    }

    /// An environment `a` and a stack `web` on it: `(a, stack)`.
    fn web_on_a(s: &dyn Transaction) -> (u64, u64) {
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let targets = TargetRefs { environments: vec![TargetRef::Id(a)], ..TargetRefs::default() };
        (a, s.create_stack(&new("web", targets), 10).unwrap())
    }

    fn statuses(s: &dyn Transaction, id: u64) -> Vec<(u64, &'static str)> {
        s.stack(id).unwrap().deployments.iter().map(|d| (d.environment, d.status)).collect()
    }

    #[test]
    fn the_newest_versions_are_kept_and_a_stacks_history_lists_its_deploys() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let (a, id) = web_on_a(&s);
        for i in 0..VERSIONS_KEPT + 5 {
            let change =
                StackChange { env: Some(BTreeMap::from([("K".into(), format!("v{i}"))])), ..Default::default() };
            s.update_stack(id, &change, 20 + i).unwrap();
        }
        let versions = s.stack_versions(id).unwrap();
        assert_eq!(versions.len() as i64, VERSIONS_KEPT);
        assert_eq!(versions[0].version as i64, VERSIONS_KEPT + 6, "the newest first");
        assert_eq!(versions.last().unwrap().version, 7, "the oldest kept");
        // Every deploy is in the history, newest first.
        let history = s.stack_history(id, Some(a), 1000).unwrap();
        assert_eq!(history.len() as i64, VERSIONS_KEPT + 6);
        assert_eq!(history[0].version as i64, VERSIONS_KEPT + 6);
        assert_eq!((history[0].environment_name.as_str(), history[0].status.as_str()), ("a", "queued"));
        assert_eq!(s.stack_history(id, Some(a), 3).unwrap().len(), 3);
        assert!(s.stack_history(id, Some(a + 1), 10).unwrap().is_empty());
    }

    #[test]
    fn a_deploy_waits_for_its_window_and_one_not_sent_when_it_closes_waits_for_the_next() {
        use crate::server::domain::stacks::{hold_closed, retry_due};
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        // 2026-12-08 00:00 UTC; the stack's window is 01:00-05:00 UTC+02:00,
        // 23:00-03:00 UTC.
        let midnight = 1_796_688_000;
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let targets = TargetRefs { environments: vec![TargetRef::Id(a)], ..TargetRefs::default() };
        let noon = midnight + 12 * 3600;
        let mut web = new("web", targets);
        web.window = "01:00-05:00 UTC+02:00".into();
        let id = s.create_stack(&web, noon).unwrap();
        let d = s.stack(id).unwrap().deployments[0].clone();
        let opens = midnight + 23 * 3600;
        assert_eq!((d.status, d.command, d.retry_at, d.attempt), ("waiting", None, Some(opens), 0));
        assert!(s.commands_due(a, noon, 10).unwrap().is_empty(), "nothing sent outside the window");
        assert_eq!(retry_due(&s, opens - 1).unwrap(), 0);
        assert_eq!(retry_due(&s, opens).unwrap(), 1, "sent when it opens");
        let d = s.stack(id).unwrap().deployments[0].clone();
        assert_eq!((d.status, d.attempt, d.retry_at), ("pending", 1, None));
        // The agent did not poll while it was open: at 03:00 UTC the unsent
        // deploy is taken back (cancelled) and waits for the next opening.
        assert_eq!(hold_closed(&s, opens + 3600).unwrap(), 0, "still open");
        let closed = midnight + 27 * 3600;
        assert_eq!(hold_closed(&s, closed).unwrap(), 1);
        let taken = s.command(d.command.unwrap()).unwrap();
        assert_eq!(taken.status, crate::server::store::CommandStatus::Cancelled);
        let d = s.stack(id).unwrap().deployments[0].clone();
        assert_eq!(
            (d.status, d.retry_at, d.attempt),
            ("waiting", Some(opens + 24 * 3600), 0),
            "the attempt not counted"
        );
        // An environment window that never meets the stack's: looked at
        // again in a day; clearing it looks again at once.
        assert!(s.set_deploy_window(None, Some(a), "12:00-13:00 UTC", closed).unwrap());
        assert_eq!(s.stack(id).unwrap().deployments[0].retry_at, Some(closed), "looked at again at once");
        assert_eq!(retry_due(&s, closed).unwrap(), 0);
        assert_eq!(s.stack(id).unwrap().deployments[0].retry_at, Some(closed + 24 * 3600), "never meets: a day later");
        // Cleared windows: it goes at once.
        assert!(s.set_deploy_window(None, Some(a), "", closed + 10).unwrap());
        s.update_stack(id, &StackChange { window: Some(String::new()), ..Default::default() }, closed + 10).unwrap();
        assert_eq!(s.stack(id).unwrap().version, 1, "a window alone makes no new version");
        assert_eq!(retry_due(&s, closed + 10).unwrap(), 1);
        assert_eq!(s.stack(id).unwrap().deployments[0].status, "pending");
        // A removal is never held.
        s.update_stack(id, &StackChange { window: Some("01:00-02:00 UTC".into()), ..Default::default() }, noon)
            .unwrap();
        assert_eq!(s.remove_stack(id, noon).unwrap(), Removal::Removing);
        assert_eq!(s.stack(id).unwrap().deployments[0].status, "removing");
    }

    #[test]
    fn a_failed_deploy_is_sent_again_with_backoff_up_to_its_attempts_and_a_new_version_starts_over() {
        use crate::server::domain::stacks::{MAX_DEPLOY_ATTEMPTS, after_result, retry_due};
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let (a, id) = web_on_a(&s);
        let deployment = |s: &dyn Transaction| s.stack(id).unwrap().deployments[0].clone();
        let mut now = 100;
        for attempt in 1..=MAX_DEPLOY_ATTEMPTS {
            let d = deployment(&s);
            assert_eq!((d.attempt, d.retry_at, d.status), (attempt, None, "pending"), "attempt {attempt}");
            let failed = result(d.command.unwrap(), ResultStatus::Failed, "", "pulling busybox: no route to host");
            assert!(s.store_result(a, &failed, now).unwrap());
            after_result(&s, a, &failed, now).unwrap();
            let d = deployment(&s);
            assert_eq!(d.status, "failed");
            if attempt == MAX_DEPLOY_ATTEMPTS {
                assert_eq!(d.retry_at, None, "the last attempt's failure stands");
                break;
            }
            let at = d.retry_at.expect("a retry");
            // 60 s doubling per attempt (the default), from half to one and
            // a half times that.
            let base = 60 * (1 << (attempt - 1));
            assert!(
                (now + base / 2..=now + base / 2 + base).contains(&at),
                "attempt {attempt}: again at +{}",
                at - now
            );
            assert_eq!(retry_due(&s, at - 1).unwrap(), 0, "not before it is due");
            now = at;
            assert_eq!(retry_due(&s, now).unwrap(), 1);
            assert_eq!(retry_due(&s, now).unwrap(), 0, "sent once");
        }
        assert_eq!(s.commands(a, 100).unwrap().len(), MAX_DEPLOY_ATTEMPTS as usize);
        // A rejected deploy (the agent refused it) is not tried again.
        let change = StackChange { env: Some(BTreeMap::from([("K".into(), "w".into())])), ..StackChange::default() };
        s.update_stack(id, &change, now).unwrap();
        let d = deployment(&s);
        assert_eq!((d.version, d.attempt, d.retry_at), (2, 1, None), "a new version starts over");
        let rejected = result(d.command.unwrap(), ResultStatus::Rejected, "", "bad file");
        s.store_result(a, &rejected, now).unwrap();
        after_result(&s, a, &rejected, now).unwrap();
        assert_eq!(deployment(&s).retry_at, None);
        // One that ends ok is what runs.
        s.update_stack(id, &StackChange { env: Some(BTreeMap::new()), ..StackChange::default() }, now).unwrap();
        let ok = result(deployment(&s).command.unwrap(), ResultStatus::Ok, "", "");
        s.store_result(a, &ok, now).unwrap();
        after_result(&s, a, &ok, now).unwrap();
        let d = deployment(&s);
        assert_eq!((d.status, d.version, d.running_version, d.retry_at), ("running", 3, Some(3), None));
    }

    #[test]
    fn a_failed_removal_is_sent_again_with_backoff_even_in_a_closed_window() {
        use crate::server::domain::stacks::{MAX_DEPLOY_ATTEMPTS, after_result, retry_due};
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let (a, id) = web_on_a(&s);
        let deployment = |s: &dyn Transaction| s.stack(id).unwrap().deployments[0].clone();
        // A window that is closed at every time below: removals ignore it.
        s.set_deploy_window(Some(id), None, "00:00-00:01 UTC", 0).unwrap();
        assert_eq!(s.remove_stack(id, 100).unwrap(), Removal::Removing);
        let mut now = 100;
        for attempt in 1..=MAX_DEPLOY_ATTEMPTS {
            let d = deployment(&s);
            assert_eq!((d.attempt, d.status), (attempt, "removing"), "attempt {attempt}");
            let command = d.command.unwrap();
            assert_eq!(s.command(command).unwrap().action, Action::StackRemove("web".into()));
            let failed = result(command, ResultStatus::Failed, "", "removing web-a-1: device busy");
            assert!(s.store_result(a, &failed, now).unwrap());
            after_result(&s, a, &failed, now).unwrap();
            let d = deployment(&s);
            assert_eq!(d.status, "failed");
            if attempt == MAX_DEPLOY_ATTEMPTS {
                assert_eq!(d.retry_at, None, "its failure stands after the last attempt");
                break;
            }
            let at = d.retry_at.expect("a retry is due");
            assert_eq!(retry_due(&s, at - 1).unwrap(), 0, "not before it is due");
            now = at;
            assert_eq!(retry_due(&s, now).unwrap(), 1);
            assert_eq!(retry_due(&s, now).unwrap(), 0, "sent once");
        }
        // Removing it again still retries at once; once removed, it is gone.
        assert_eq!(s.remove_stack(id, now).unwrap(), Removal::Removing);
        let ok = result(deployment(&s).command.unwrap(), ResultStatus::Ok, "", "");
        assert!(s.store_result(a, &ok, now).unwrap());
        after_result(&s, a, &ok, now).unwrap();
        assert_eq!(s.stack(id).unwrap().status(), "removed");
    }

    #[test]
    fn the_running_version_counts_an_older_commands_ok_and_a_removal_clears_it() {
        use crate::server::domain::stacks::after_result;
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let (a, id) = web_on_a(&s);
        let deployment = |s: &dyn Transaction| s.stack(id).unwrap().deployments[0].clone();
        let v1 = deployment(&s).command.unwrap();
        // Version 2 is sent before version 1's result comes back.
        let change = StackChange { env: Some(BTreeMap::from([("K".into(), "w".into())])), ..StackChange::default() };
        s.update_stack(id, &change, 20).unwrap();
        let v2 = deployment(&s).command.unwrap();
        let finish = |command: u64, status: ResultStatus| {
            let r = result(command, status, "", "");
            assert!(s.store_result(a, &r, 30).unwrap());
            after_result(&s, a, &r, 30).unwrap();
        };
        finish(v1, ResultStatus::Ok);
        assert_eq!((deployment(&s).version, deployment(&s).running_version), (2, Some(1)));
        finish(v2, ResultStatus::Failed);
        assert_eq!(deployment(&s).running_version, Some(1), "a failed deploy leaves the one before");
        assert_eq!(s.remove_stack(id, 40).unwrap(), Removal::Removing);
        finish(deployment(&s).command.unwrap(), ResultStatus::Ok);
        assert!(s.stack(id).map(|st| st.deployments.iter().all(|d| d.running_version.is_none())).unwrap_or(true));
    }

    #[test]
    fn a_stack_is_deployed_tracked_updated_and_removed() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap().id;
        let id = s
            .create_stack(
                &new(
                    "web",
                    TargetRefs {
                        environments: vec![TargetRef::Id(a), TargetRef::Name("b".into())],
                        ..Default::default()
                    },
                ),
                10,
            )
            .unwrap();
        assert!(matches!(s.create_stack(&new("web", TargetRefs::default()), 11), Err(StackError::NameTaken(_))));
        let st = s.stack(id).unwrap();
        assert_eq!((st.version, st.status(), st.targets.len()), (1, "deploying", 2));
        assert_eq!(statuses(&s, id), [(a, "pending"), (b, "pending")]);
        let cmd = st.deployments[0].command.unwrap();
        match s.command(cmd).unwrap().action {
            Action::StackDeploy(spec) => {
                assert_eq!((spec.name.as_str(), spec.version, spec.env["K"].as_str()), ("web", 1, "v"))
            }
            other => panic!("{other:?}"),
        }
        // The agent of a: delivered, deploying, running; b fails.
        s.commands_due(a, 20, 10).unwrap();
        s.mark_seen(a, cmd, 21).unwrap();
        assert_eq!(statuses(&s, id)[0].1, "acknowledged");
        s.store_result(a, &result(cmd, ResultStatus::Progress, "deploying", ""), 22).unwrap();
        assert_eq!(statuses(&s, id)[0].1, "deploying");
        s.store_result(a, &result(cmd, ResultStatus::Ok, "", ""), 23).unwrap();
        let bcmd = s.stack(id).unwrap().deployments[1].command.unwrap();
        s.store_result(b, &result(bcmd, ResultStatus::Failed, "", "no such image"), 23).unwrap();
        let st = s.stack(id).unwrap();
        assert_eq!(statuses(&s, id), [(a, "running"), (b, "failed")]);
        assert_eq!((st.status(), st.deployments[1].error.as_deref()), ("failed", Some("no such image")));
        // Update: a new version everywhere.
        let change = StackChange { env: Some(BTreeMap::from([("K".into(), "w".into())])), ..Default::default() };
        s.update_stack(id, &change, 30).unwrap();
        let st = s.stack(id).unwrap();
        assert_eq!((st.version, st.env["K"].as_str()), (2, "w"));
        assert_eq!(
            st.deployments.iter().map(|d| (d.version, d.status)).collect::<Vec<_>>(),
            [(2, "pending"), (2, "pending")]
        );
        // Retargeting to b alone removes it from a.
        let change = StackChange {
            targets: Some(TargetRefs { environments: vec![TargetRef::Id(b)], ..Default::default() }),
            ..Default::default()
        };
        s.update_stack(id, &change, 31).unwrap();
        assert_eq!(statuses(&s, id), [(a, "removing"), (b, "pending")]);
        // Remove: the name is free at once, the stack stays until every environment reported.
        assert_eq!(s.remove_stack(id, 40).unwrap(), Removal::Removing);
        assert_eq!(s.stack(id).unwrap().status(), "removing");
        assert!(matches!(s.update_stack(id, &StackChange::default(), 41), Err(StackError::NotFound(_))));
        let again = s.create_stack(&new("web", TargetRefs::default()), 42).unwrap();
        assert_ne!(again, id);
        for d in s.stack(id).unwrap().deployments {
            let env = d.environment;
            s.store_result(env, &result(d.command.unwrap(), ResultStatus::Ok, "", ""), 50).unwrap();
        }
        assert_eq!(statuses(&s, id), [(a, "removed"), (b, "removed")]);
        assert_eq!(s.stack(id).unwrap().status(), "removed");
        assert_eq!(s.remove_stack(id, 60).unwrap(), Removal::Purged);
        assert!(matches!(s.stack(id), Err(StackError::NotFound(_))));
    }

    #[test]
    fn groups_and_tags_resolve_now_and_later() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap().id;
        s.conn
            .execute_batch(
                "INSERT INTO groups (id, name) VALUES (7, 'Ships'); INSERT INTO tags (id, name) VALUES (9, 'gps');",
            )
            .unwrap();
        s.conn.execute("UPDATE environments SET group_id = 7 WHERE id = ?1", [a as i64]).unwrap();
        let refs = TargetRefs {
            groups: vec![TargetRef::Name("ships".into())],
            tags: vec![TargetRef::Id(9)],
            ..Default::default()
        };
        let id = s.create_stack(&new("nav", refs), 10).unwrap();
        assert_eq!(statuses(&s, id), [(a, "pending")]);
        let names: Vec<_> = s.stack(id).unwrap().targets.iter().map(|t| (t.kind, t.name.clone())).collect();
        assert_eq!(names, [("group", "Ships".to_owned()), ("tag", "gps".to_owned())]);
        // b gets the tag later: reconciling it (the API does, with the change) deploys it, once.
        s.conn.execute("INSERT INTO environment_tags (environment, tag) VALUES (?1, 9)", [b as i64]).unwrap();
        assert_eq!(s.reconcile_stacks(None, Some(a), 20).unwrap(), 0);
        assert_eq!(s.reconcile_stacks(None, Some(b), 20).unwrap(), 1);
        assert_eq!(s.reconcile_stacks(None, None, 21).unwrap(), 0);
        assert_eq!(statuses(&s, id), [(a, "pending"), (b, "pending")]);
        // Unknown targets change nothing.
        for refs in [
            TargetRefs { environments: vec![TargetRef::Id(99)], ..Default::default() },
            TargetRefs { groups: vec![TargetRef::Name("nope".into())], ..Default::default() },
            TargetRefs { tags: vec![TargetRef::Id(1)], ..Default::default() },
        ] {
            let e = s.create_stack(&new("other", refs), 30).unwrap_err();
            assert!(matches!(e, StackError::UnknownTarget(_)), "{e}");
        }
        assert_eq!(s.stacks().unwrap().len(), 1);
        // A deleted environment takes its deployment along.
        s.conn.execute("DELETE FROM environments WHERE id = ?1", [a as i64]).unwrap();
        assert_eq!(statuses(&s, id), [(b, "pending")]);
    }
}
