//! Commands: queued for an environment's agent, sent in its polls,
//! delivered, ended by their results, or cancelled before delivery.

use super::*;

/// The most bytes of stored actions one reply carries (but for its first
/// command, whatever its size). A reply is refused by its own encoder past
/// 4 MiB after zstd (`Limits::max_encoded`), and files of keys and
/// certificates hardly compress: 3 MiB leaves room for the rest of the
/// reply whatever the actions hold. A stack's deploy carries its compose
/// file and configuration files (up to about 1.3 MiB), so a queue of them
/// is spread over several replies.
pub const MAX_REPLY_ACTION_BYTES: usize = 3 << 20;

/// Commands queued for agents, their delivery and results.
pub trait CommandStore {
    /// Queues a command for an environment's agent; returns its id. When
    /// the transaction commits, the environment's held sessions are woken
    /// ([`crate::server::wakes`]): on this server by the pool that ran
    /// it, on the others through PostgreSQL's `NOTIFY`.
    ///
    /// # Errors
    /// When the environment does not exist or the database fails.
    fn enqueue_command(&self, environment: u64, action: &Action, now: i64) -> Result<u64, StoreError>;

    /// The commands to put in a reply to this environment's agent: queued
    /// ones it has not confirmed, oldest first, at most `limit` and (but for
    /// the first) [`MAX_REPLY_ACTION_BYTES`] of actions. Each is
    /// stamped as sent now. A command whose stored action no longer decodes
    /// (which this build never writes) is failed rather than left to block
    /// the queue.
    ///
    /// # Errors
    /// When the database fails.
    fn commands_due(&self, environment: u64, now: i64, limit: usize) -> Result<Vec<Command>, StoreError>;

    /// The agent recorded every command up to `seen`: raises the
    /// environment's `commands_seen` (never lowers it, and never past the
    /// highest command it was sent) and marks those still queued delivered.
    ///
    /// # Errors
    /// When the database fails.
    fn mark_seen(&self, environment: u64, seen: u64, now: i64) -> Result<(), StoreError>;

    /// Stores a command's result. Only a command of this environment that
    /// has not ended takes one: a repeated result (the agent missed our
    /// acknowledgement) or one for another environment's command changes
    /// nothing and returns false. A result for a cancelled command is
    /// recorded all the same, since it ran. The error text is cut at
    /// [`MAX_ERROR_LEN`] bytes; a missing finish time is `now`.
    ///
    /// # Errors
    /// When the database fails.
    fn store_result(&self, environment: u64, result: &CommandResult, now: i64) -> Result<bool, StoreError>;

    /// What a command printed (logs), if anything.
    ///
    /// # Errors
    /// When the database fails.
    fn command_output(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// One command.
    ///
    /// # Errors
    /// When it does not exist, the database fails or it is corrupt.
    fn command(&self, id: u64) -> Result<CommandRecord, StoreError>;

    /// An environment's commands, newest first, at most `limit`.
    ///
    /// # Errors
    /// When the environment does not exist, the database fails or a command is
    /// corrupt.
    fn commands(&self, environment: u64, limit: usize) -> Result<Vec<CommandRecord>, StoreError>;

    /// Cancels a command the agent has not confirmed receiving: the server
    /// sends it no more. One already sent may still have reached the agent
    /// in a reply the server did not hear back about; the agent then runs
    /// it once and its result is recorded all the same (see
    /// [`Self::store_result`]), so the operator sees what happened.
    /// Cancelling a cancelled command again is fine.
    ///
    /// # Errors
    /// [`StoreError::AlreadyDelivered`] once the agent confirmed it (or it
    /// ended), [`StoreError::CommandNotFound`], or when the database fails.
    fn cancel_command(&self, id: u64, now: i64) -> Result<(), StoreError>;
}

impl CommandStore for Tx<'_> {
    fn enqueue_command(&self, environment: u64, action: &Action, now: i64) -> Result<u64, StoreError> {
        let id = self
            .conn
            .insert(
                "INSERT INTO commands (environment, action, status, created_at)
                 SELECT id, ?2, 'queued', ?3 FROM environments WHERE id = ?1",
                params![sql_id(environment), action.encode(), now],
            )
            .optional()?;
        let id = id.ok_or(StoreError::NotFound(environment))? as u64;
        if self.conn.dialect() == sql::Dialect::Postgres {
            // Delivered on commit, to every replica's listener (this one's
            // too); dropped with the transaction if it rolls back.
            self.conn.execute("SELECT pg_notify(?1, ?2)", params![postgres::WAKE_CHANNEL, environment.to_string()])?;
        }
        self.store.queued_for(environment);
        Ok(id)
    }

    fn commands_due(&self, environment: u64, now: i64, limit: usize) -> Result<Vec<Command>, StoreError> {
        let env = sql_id(environment);
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT c.id, c.action FROM commands c JOIN environments e ON e.id = c.environment
                 WHERE c.environment = ?1 AND c.status = 'queued' AND c.id > e.commands_seen
                 ORDER BY c.id LIMIT ?2",
            )?;
            stmt.query_map(params![env, i64::try_from(limit).unwrap_or(i64::MAX)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            // Most polls: nothing to mark, no savepoint to pay for.
            return Ok(Vec::new());
        }
        let tx = self.tx()?;
        let mut due = Vec::with_capacity(rows.len());
        let mut total = 0;
        for (id, bytes) in rows {
            // Stack deploys carry their files: a queue of them must not
            // make a reply larger than an agent takes. The rest wait for
            // the next reply.
            total += bytes.len();
            if total > MAX_REPLY_ACTION_BYTES && !due.is_empty() {
                break;
            }
            match Action::decode(&bytes) {
                Ok(action) => {
                    tx.execute("UPDATE commands SET sent_at = ?2 WHERE id = ?1", params![id, now])?;
                    due.push(Command { id: id as u64, action });
                }
                Err(e) => {
                    tracing::error!("command {id} of environment {environment}: stored action: {e}");
                    tx.execute(
                        "UPDATE commands SET status = 'failed', error = 'the server could not read its stored action',
                         finished_at = ?2 WHERE id = ?1",
                        params![id, now],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(due)
    }

    fn mark_seen(&self, environment: u64, seen: u64, now: i64) -> Result<(), StoreError> {
        let env = sql_id(environment);
        let tx = self.tx()?;
        tx.execute(
            "UPDATE environments SET commands_seen = GREATEST(commands_seen, LEAST(?2,
                (SELECT COALESCE(MAX(id), 0) FROM commands WHERE environment = ?1 AND sent_at IS NOT NULL)))
             WHERE id = ?1",
            params![env, sql_id(seen)],
        )?;
        tx.execute(
            "UPDATE commands SET status = 'delivered', delivered_at = ?2
             WHERE environment = ?1 AND status = 'queued'
               AND id <= (SELECT commands_seen FROM environments WHERE id = ?1)",
            params![env, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn store_result(&self, environment: u64, result: &CommandResult, now: i64) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(result.id) else { return Ok(false) };
        let status = match result.status {
            ResultStatus::Ok => "ok",
            ResultStatus::Failed => "failed",
            ResultStatus::Rejected => "rejected",
            ResultStatus::Progress => {
                // A step of a long command: the command stays delivered,
                // with its phase; the final result comes later.
                let n = self.conn.execute(
                    "UPDATE commands SET status = 'delivered', phase = ?3, delivered_at = COALESCE(delivered_at, ?4)
                     WHERE id = ?1 AND environment = ?2 AND status IN ('queued', 'delivered')",
                    params![id, sql_id(environment), truncate(&result.phase, 64), now],
                )?;
                return Ok(n == 1);
            }
        };
        // The agent's clock says when it finished; a clock that jumped an
        // hour must not put a result before the command was queued or after
        // the server heard of it, so it is held between the two.
        let finished_at = if result.finished_at > 0 { result.finished_at.min(now) } else { now };
        let n = self.conn.execute(
            "UPDATE commands SET status = ?3, error = ?4, finished_at = GREATEST(?5, created_at),
                                 delivered_at = COALESCE(delivered_at, ?6)
             WHERE id = ?1 AND environment = ?2 AND status IN ('queued', 'delivered', 'cancelled')",
            params![id, sql_id(environment), status, truncate(&result.error, MAX_ERROR_LEN), finished_at, now],
        )?;
        if n == 1 && !result.output.is_empty() {
            // The agent caps outputs; a forged or buggy one is cut to the
            // same size here, keeping the end (the latest log lines).
            let output = &result.output[result.output.len().saturating_sub(MAX_OUTPUT_LEN)..];
            self.conn.execute(
                "INSERT INTO command_outputs (command, output) VALUES (?1, ?2)
                 ON CONFLICT(command) DO UPDATE SET output = ?2",
                params![id, output],
            )?;
        }
        Ok(n == 1)
    }

    fn command_output(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT output FROM command_outputs WHERE command = ?1", [sql_id(id)], |r| r.get(0))
            .optional()?)
    }

    fn command(&self, id: u64) -> Result<CommandRecord, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {} FROM commands WHERE id = ?1", Self::COMMAND_COLUMNS),
                [sql_id(id)],
                Self::command_row,
            )
            .optional()?
            .ok_or(StoreError::CommandNotFound(id))?;
        Self::finish_record(row)
    }

    fn commands(&self, environment: u64, limit: usize) -> Result<Vec<CommandRecord>, StoreError> {
        self.environment(environment)?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM commands WHERE environment = ?1 ORDER BY id DESC LIMIT ?2",
            Self::COMMAND_COLUMNS
        ))?;
        let rows = stmt
            .query_map(params![sql_id(environment), i64::try_from(limit).unwrap_or(i64::MAX)], Self::command_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(Self::finish_record).collect()
    }

    fn cancel_command(&self, id: u64, now: i64) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE commands SET status = 'cancelled', finished_at = ?2
             WHERE id = ?1 AND status = 'queued'",
            params![sql_id(id), now],
        )?;
        if n == 1 {
            return Ok(());
        }
        match self.command(id)?.status {
            CommandStatus::Cancelled => Ok(()),
            _ => Err(StoreError::AlreadyDelivered(id)),
        }
    }
}

impl Tx<'_> {
    const COMMAND_COLUMNS: &'static str =
        "id, environment, action, status, error, created_at, sent_at, delivered_at, finished_at";

    /// Reads a row of [`Self::COMMAND_COLUMNS`]; the action and status are
    /// checked by [`Self::finish_record`], outside SQLite's callback.
    fn command_row(r: &Row) -> super::sql::Result<RawCommand> {
        Ok(RawCommand {
            id: r.get::<i64>(0)? as u64,
            environment: r.get::<i64>(1)? as u64,
            action: r.get(2)?,
            status: r.get(3)?,
            error: r.get(4)?,
            created_at: r.get(5)?,
            sent_at: r.get(6)?,
            delivered_at: r.get(7)?,
            finished_at: r.get(8)?,
        })
    }

    fn finish_record(c: RawCommand) -> Result<CommandRecord, StoreError> {
        let corrupt = || StoreError::Corrupt { what: "command", environment: c.environment };
        Ok(CommandRecord {
            id: c.id,
            environment: c.environment,
            action: Action::decode(&c.action).map_err(|_| corrupt())?,
            status: CommandStatus::from_row(&c.status, c.sent_at).ok_or_else(corrupt)?,
            error: c.error,
            created_at: c.created_at,
            sent_at: c.sent_at,
            delivered_at: c.delivered_at,
            finished_at: c.finished_at,
        })
    }
}
