//! Edge jobs (migration 9): a script run on the hosts of chosen
//! environments, once or on a cron schedule the agents keep.
//!
//! * `jobs`: the job as the operator last set it, with its version (each
//!   edit makes a new one) and, once deleted, `removed_at` (kept so that
//!   the runs already collected stay readable);
//! * `job_targets`: the environments it was sent to (groups and tags are
//!   resolved when the job is created or edited), the version each was last
//!   sent, and the command that carried it (a `Job`, or a `JobRemove` once
//!   `removed`). The command's status tells whether the agent has it; for a
//!   run-once job its result *is* the run, and its output is the command's
//!   (in `command_outputs`);
//! * `job_commands`: every command a job queued, so that each run-once
//!   run stays listed after later edits;
//! * `job_runs`: the runs of scheduled jobs as the agents report them, one
//!   row per (job, environment, run): a repeated report changes nothing.
//!   The output is kept to its last [`MAX_OUTPUT_LEN`] bytes, and only the
//!   newest [`RUNS_KEPT`] runs per job and environment are kept.
//!
//! What a create, edit or delete sends where is the domain's
//! ([`crate::server::domain::jobs`]): a job and all of its commands are
//! queued, or nothing is.

use super::sql::{OptionalExtension, Row, params};

use super::prelude::*;
use super::{CommandStatus, MAX_ERROR_LEN, MAX_OUTPUT_LEN, StoreError, Tx, sql_id, truncate};
use crate::wire::poll::{Action, JobRun};

/// Runs kept per job and environment (the oldest go first).
pub const RUNS_KEPT: usize = 100;

/// An environment, group or tag as an operator names it (for a job, a name
/// of digits that matches no name is taken as an id).
pub use super::stacks::TargetRef;

/// A job as the operator gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewJob {
    /// Its name.
    pub name: String,
    /// The shell script.
    pub script: String,
    /// The helper image (empty: each agent's default).
    pub image: String,
    /// The cron expression (empty: run once).
    pub cron: String,
    /// Seconds before a run is killed (0: the agent's default).
    pub timeout_s: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// Its id.
    pub id: u64,
    /// What it is.
    pub job: NewJob,
    /// Its version: 1, then one more per edit.
    pub version: u32,
    /// When it was created.
    pub created_at: i64,
    /// When it was last edited.
    pub updated_at: i64,
    /// When it was deleted.
    pub removed_at: Option<i64>,
}

/// One run as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRunRecord {
    /// The environment it ran on.
    pub environment: u64,
    /// Its number (the agent's; 0 for a run-once job's run, which is its
    /// command).
    pub run: u64,
    /// The job's version that ran.
    pub version: u32,
    /// When it started (None: not known, for a run-once job).
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: i64,
    /// The script's exit code; -1 when it could not run or was killed.
    pub exit_code: i32,
    /// Its output (capped).
    pub output: Vec<u8>,
    /// The output's start was cut.
    pub truncated: bool,
    /// Why it could not run, or was killed.
    pub error: String,
}

/// A job on one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTarget {
    /// The environment.
    pub environment: u64,
    /// Its name.
    pub environment_name: String,
    /// The job's version last sent to it.
    pub version: u32,
    /// The command that carried it (None once the command was deleted
    /// with its history).
    pub command: Option<u64>,
    /// That command's status (`delivered` or later: the agent has it).
    pub command_status: Option<CommandStatus>,
    /// The command's error, when it failed.
    pub command_error: String,
    /// The job was taken off this environment (a `JobRemove` was queued).
    pub removed: bool,
    /// The newest run (without its output).
    pub last_run: Option<JobRunRecord>,
    /// Runs stored.
    pub runs: u64,
}

/// The exit code a run-once job's failed result carries (`exit code N`
/// at the start of its error, as the agent writes it), else -1.
pub fn exit_code_of(error: &str) -> i32 {
    error
        .strip_prefix("exit code ")
        .and_then(|rest| rest.split(|c: char| !(c.is_ascii_digit() || c == '-')).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// Edge jobs, their targets and runs.
pub trait JobStore {
    /// The environments `environments`, `groups` and `tags` name, without
    /// repeats, by id. A name is looked up as a name (regardless of case
    /// for groups and tags), then, when it is all digits, as an id. The
    /// inner error is for the operator: the first reference naming nothing.
    ///
    /// # Errors
    /// When the database fails.
    fn resolve_job_targets(
        &self,
        environments: &[TargetRef],
        groups: &[TargetRef],
        tags: &[TargetRef],
    ) -> Result<Result<Vec<u64>, String>, StoreError>;

    /// Stores a new job at version 1, sent nowhere yet.
    ///
    /// # Errors
    /// When the database fails.
    fn insert_job(&self, job: &NewJob, now: i64) -> Result<u64, StoreError>;

    /// Stores `job` as version `version` of job `id`.
    ///
    /// # Errors
    /// When the database fails.
    fn revise_job(&self, id: u64, job: &NewJob, version: u32, now: i64) -> Result<(), StoreError>;

    /// Marks a job deleted (its runs stay readable).
    ///
    /// # Errors
    /// When the database fails.
    fn mark_job_removed(&self, id: u64, now: i64) -> Result<(), StoreError>;

    /// The environments a job is on (not taken off), by id.
    ///
    /// # Errors
    /// When the database fails.
    fn job_environments(&self, id: u64) -> Result<Vec<u64>, StoreError>;

    /// The command last sent for job `id` to `environment`, if any.
    ///
    /// # Errors
    /// When the database fails.
    fn job_target_command(&self, id: u64, environment: u64) -> Result<Option<u64>, StoreError>;

    /// Records `command` (carrying version `version` of job `id`, or its
    /// removal) as the job's command on `environment`: the job's target
    /// there, and one more of the job's commands (`once`: a run-once job's,
    /// whose result is its run).
    ///
    /// # Errors
    /// When the environment does not exist or the database fails.
    fn record_job_command(
        &self,
        id: u64,
        environment: u64,
        command: u64,
        version: u32,
        removed: bool,
        once: bool,
    ) -> Result<(), StoreError>;

    /// One job, deleted or not.
    ///
    /// # Errors
    /// When the database fails.
    fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError>;

    /// The jobs not deleted, by id.
    ///
    /// # Errors
    /// When the database fails.
    fn jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// A job on each of its environments (those it was taken off too), by
    /// environment id.
    ///
    /// # Errors
    /// When the database fails.
    fn job_targets(&self, id: u64) -> Result<Vec<JobTarget>, StoreError>;

    /// A job's runs, newest first, at most `limit` (on one environment, or
    /// all), outputs included. A run-once job's runs are its commands'
    /// results.
    ///
    /// # Errors
    /// When the database fails.
    fn job_runs(&self, id: u64, environment: Option<u64>, limit: usize) -> Result<Vec<JobRunRecord>, StoreError>;

    /// Stores a scheduled job's run reported by `environment`'s agent. Only
    /// a job that was sent to this environment takes it; a repeated run
    /// (the agent missed our acknowledgement) changes nothing. Returns
    /// whether it was new. The output keeps its last [`MAX_OUTPUT_LEN`]
    /// bytes, the error its first [`MAX_ERROR_LEN`]; the oldest runs beyond
    /// [`RUNS_KEPT`] go.
    ///
    /// # Errors
    /// When the database fails.
    fn store_job_run(&self, environment: u64, run: &JobRun, now: i64) -> Result<bool, StoreError>;
}

impl JobStore for Tx<'_> {
    fn resolve_job_targets(
        &self,
        environments: &[TargetRef],
        groups: &[TargetRef],
        tags: &[TargetRef],
    ) -> Result<Result<Vec<u64>, String>, StoreError> {
        let mut out = std::collections::BTreeSet::new();
        for (kind, one, refs, table, members) in [
            ("environments", "environment", environments, "environments", "SELECT CAST(?1 AS BIGINT)"),
            ("groups", "group", groups, "groups", "SELECT id FROM environments WHERE group_id = ?1"),
            ("tags", "tag", tags, "tags", "SELECT environment FROM environment_tags WHERE tag = ?1"),
        ] {
            for r in refs {
                let lookup = |column: &str, value: &dyn super::sql::ToSql| -> Result<Option<i64>, StoreError> {
                    Ok(self
                        .conn
                        .query_row(&format!("SELECT id FROM {table} WHERE {column} = ?1"), [value], |r| r.get(0))
                        .optional()?)
                };
                let found = match r {
                    TargetRef::Id(id) => lookup("id", &sql_id(*id))?,
                    TargetRef::Name(name) => match lookup("name", &name.trim())? {
                        Some(id) => Some(id),
                        None => match name.trim().parse::<u64>() {
                            Ok(id) => lookup("id", &sql_id(id))?,
                            Err(_) => None,
                        },
                    },
                };
                let Some(label) = found else {
                    return Ok(Err(match r {
                        TargetRef::Id(id) => format!("targets.{kind}: no {one} {id}"),
                        TargetRef::Name(n) => format!("targets.{kind}: no {one} {n:?}"),
                    }));
                };
                let mut stmt = self.conn.prepare_cached(members)?;
                for id in stmt.query_map([label], |r| r.get::<i64>(0))? {
                    out.insert(id? as u64);
                }
            }
        }
        Ok(Ok(out.into_iter().collect()))
    }

    fn insert_job(&self, job: &NewJob, now: i64) -> Result<u64, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO jobs (name, script, image, cron, timeout_s, version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
            params![job.name, job.script, job.image, job.cron, job.timeout_s, now],
        )?;
        Ok(id as u64)
    }

    fn revise_job(&self, id: u64, job: &NewJob, version: u32, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE jobs SET name = ?2, script = ?3, image = ?4, cron = ?5, timeout_s = ?6, version = ?7,
                             updated_at = ?8
             WHERE id = ?1",
            params![sql_id(id), job.name, job.script, job.image, job.cron, job.timeout_s, version, now],
        )?;
        Ok(())
    }

    fn mark_job_removed(&self, id: u64, now: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE jobs SET removed_at = ?2 WHERE id = ?1", params![sql_id(id), now])?;
        Ok(())
    }

    fn job_environments(&self, id: u64) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT environment FROM job_targets WHERE job = ?1 AND removed = 0 ORDER BY environment",
        )?;
        let rows = stmt.query_map([sql_id(id)], |r| r.get::<i64>(0).map(|v| v as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn job_target_command(&self, id: u64, environment: u64) -> Result<Option<u64>, StoreError> {
        let command: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT command FROM job_targets WHERE job = ?1 AND environment = ?2",
                params![sql_id(id), sql_id(environment)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(command.flatten().map(|c| c as u64))
    }

    fn record_job_command(
        &self,
        id: u64,
        environment: u64,
        command: u64,
        version: u32,
        removed: bool,
        once: bool,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO job_commands (command, job, environment, once) VALUES (?1, ?2, ?3, ?4)",
            params![sql_id(command), sql_id(id), sql_id(environment), once],
        )?;
        self.conn.execute(
            "INSERT INTO job_targets (job, environment, version, command, removed) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(job, environment) DO UPDATE SET version = ?3, command = ?4, removed = ?5",
            params![sql_id(id), sql_id(environment), version, sql_id(command), removed],
        )?;
        Ok(())
    }

    fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {} FROM jobs WHERE id = ?1", Self::JOB_COLUMNS), [sql_id(id)], Self::job_row)
            .optional()?)
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {} FROM jobs WHERE removed_at IS NULL ORDER BY id", Self::JOB_COLUMNS))?;
        let rows = stmt.query_map([], Self::job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn job_targets(&self, id: u64) -> Result<Vec<JobTarget>, StoreError> {
        let rows: Vec<(u64, String, u32, Option<i64>, bool)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT t.environment, e.name, t.version, t.command, t.removed
                 FROM job_targets t JOIN environments e ON e.id = t.environment
                 WHERE t.job = ?1 ORDER BY t.environment",
            )?;
            stmt.query_map([sql_id(id)], |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (environment, environment_name, version, command, removed) in rows {
            let record = match command {
                Some(c) => match self.command(c as u64) {
                    Ok(r) => Some(r),
                    Err(StoreError::CommandNotFound(_)) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let runs: i64 = self.conn.query_row(
                "SELECT (SELECT COUNT(*) FROM job_runs WHERE job = ?1 AND environment = ?2)
                      + (SELECT COUNT(*) FROM job_commands j JOIN commands c ON c.id = j.command
                         WHERE j.job = ?1 AND j.environment = ?2 AND j.once = 1 AND c.status IN ('ok', 'failed'))",
                params![sql_id(id), environment as i64],
                |r| r.get(0),
            )?;
            let scheduled = self.job_runs_of(id, Some(environment), 1, false)?.pop();
            let once = self.once_runs(id, Some(environment), 1, false)?.pop();
            let last_run = match (scheduled, once) {
                (Some(s), Some(o)) => Some(if o.finished_at > s.finished_at { o } else { s }),
                (s, o) => s.or(o),
            };
            let runs = runs as u64;
            out.push(JobTarget {
                environment,
                environment_name,
                version,
                command: record.as_ref().map(|c| c.id),
                command_status: record.as_ref().map(|c| c.status),
                command_error: record.as_ref().map(|c| c.error.clone()).unwrap_or_default(),
                removed,
                last_run,
                runs,
            });
        }
        Ok(out)
    }

    fn job_runs(&self, id: u64, environment: Option<u64>, limit: usize) -> Result<Vec<JobRunRecord>, StoreError> {
        let mut runs = self.job_runs_of(id, environment, limit, true)?;
        runs.extend(self.once_runs(id, environment, limit, true)?);
        runs.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then(b.run.cmp(&a.run)));
        runs.truncate(limit);
        Ok(runs)
    }

    fn store_job_run(&self, environment: u64, run: &JobRun, now: i64) -> Result<bool, StoreError> {
        let (Ok(job), Ok(number)) = (i64::try_from(run.job), i64::try_from(run.run)) else { return Ok(false) };
        let env = sql_id(environment);
        let cut = run.output.len() > MAX_OUTPUT_LEN;
        let output = &run.output[run.output.len().saturating_sub(MAX_OUTPUT_LEN)..];
        // Held at the server's clock at most (an agent's clock that jumped
        // ahead must not put runs in the future), its start no later.
        let finished_at = if run.finished_at > 0 { run.finished_at.min(now) } else { now };
        let tx = self.tx()?;
        let n = tx.execute(
            "INSERT INTO job_runs (job, environment, run, version, started_at, finished_at, exit_code, output,
                                   truncated, error, received_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
             WHERE EXISTS (SELECT 1 FROM job_targets WHERE job = ?1 AND environment = ?2)
             ON CONFLICT (job, environment, run) DO NOTHING",
            params![
                job,
                env,
                number,
                run.version,
                run.started_at.min(finished_at),
                finished_at,
                run.exit_code,
                output,
                run.truncated || cut,
                truncate(&run.error, MAX_ERROR_LEN),
                now
            ],
        )?;
        if n == 1 {
            tx.execute(
                "DELETE FROM job_runs WHERE id IN (
                    SELECT id FROM job_runs WHERE job = ?1 AND environment = ?2
                    ORDER BY run DESC LIMIT 9223372036854775807 OFFSET ?3)",
                params![job, env, RUNS_KEPT as i64],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }
}

impl Tx<'_> {
    const JOB_COLUMNS: &'static str =
        "id, name, script, image, cron, timeout_s, version, created_at, updated_at, removed_at";

    fn job_row(r: &Row) -> super::sql::Result<JobRecord> {
        Ok(JobRecord {
            id: r.get::<i64>(0)? as u64,
            job: NewJob { name: r.get(1)?, script: r.get(2)?, image: r.get(3)?, cron: r.get(4)?, timeout_s: r.get(5)? },
            version: r.get(6)?,
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            removed_at: r.get(9)?,
        })
    }

    /// The run a run-once job's finished command stands for.
    fn once_run(&self, c: &super::CommandRecord, output: bool) -> Result<Option<JobRunRecord>, StoreError> {
        let Action::Job(spec) = &c.action else { return Ok(None) };
        let exit_code = match c.status {
            CommandStatus::Ok => 0,
            CommandStatus::Failed => exit_code_of(&c.error),
            _ => return Ok(None),
        };
        let output = if output { self.command_output(c.id)?.unwrap_or_default() } else { Vec::new() };
        Ok(Some(JobRunRecord {
            environment: c.environment,
            run: 0,
            version: spec.version,
            started_at: None,
            finished_at: c.finished_at.unwrap_or_default(),
            exit_code,
            output,
            truncated: false,
            error: if exit_code == 0 { String::new() } else { c.error.clone() },
        }))
    }

    /// The finished runs of a job's run-once commands, newest first.
    fn once_runs(
        &self,
        id: u64,
        environment: Option<u64>,
        limit: usize,
        output: bool,
    ) -> Result<Vec<JobRunRecord>, StoreError> {
        let commands: Vec<i64> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT j.command FROM job_commands j JOIN commands c ON c.id = j.command
                 WHERE j.job = ?1 AND (j.environment = ?2 OR ?2 IS NULL) AND j.once = 1
                   AND c.status IN ('ok', 'failed')
                 ORDER BY c.finished_at DESC, j.command DESC LIMIT ?3",
            )?;
            stmt.query_map(
                params![sql_id(id), environment.map(sql_id), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?
        };
        let mut runs = Vec::with_capacity(commands.len());
        for c in commands {
            if let Some(run) = self.once_run(&self.command(c as u64)?, output)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    fn job_runs_of(
        &self,
        id: u64,
        environment: Option<u64>,
        limit: usize,
        output: bool,
    ) -> Result<Vec<JobRunRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT environment, run, version, started_at, finished_at, exit_code, {}, truncated, error
             FROM job_runs WHERE job = ?1 AND (environment = ?2 OR ?2 IS NULL)
             ORDER BY finished_at DESC, run DESC LIMIT ?3",
            if output { "output" } else { "substr(output, 1, 0)" }
        ))?;
        let rows = stmt.query_map(
            params![sql_id(id), environment.map(sql_id), i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(JobRunRecord {
                    environment: r.get::<i64>(0)? as u64,
                    run: r.get::<i64>(1)? as u64,
                    version: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    exit_code: r.get(5)?,
                    output: r.get(6)?,
                    truncated: r.get(7)?,
                    error: r.get(8)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::domain::prelude::*;
    use crate::server::store::Store;
    use crate::wire::poll::JobSpec;

    use crate::auth::Secret;
    use crate::wire::poll::{CommandResult, ResultStatus};

    fn job(cron: &str) -> NewJob {
        NewJob { name: "disk".into(), script: "df -h".into(), cron: cron.into(), ..NewJob::default() }
    }

    fn run(job: u64, run: u64, exit_code: i32, output: &[u8]) -> JobRun {
        JobRun {
            job,
            version: 1,
            run,
            started_at: 100 + run as i64,
            finished_at: 101 + run as i64,
            exit_code,
            output: output.to_vec(),
            truncated: false,
            error: String::new(),
        }
    }

    fn job_action(s: &dyn Transaction, command: u64) -> JobSpec {
        match s.command(command).unwrap().action {
            Action::Job(spec) => spec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_resolve_by_id_group_and_tag_and_an_unknown_one_is_named() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap().id;
        let c = s.create_environment("c", Secret([3; 32]), 0).unwrap().id;
        s.conn.execute("INSERT INTO groups (id, name) VALUES (5, 'Ships')", []).unwrap();
        s.conn.execute("UPDATE environments SET group_id = 5 WHERE id IN (?1, ?2)", [b as i64, c as i64]).unwrap();
        s.conn.execute("INSERT INTO tags (id, name) VALUES (9, 'arm64')", []).unwrap();
        s.conn.execute("INSERT INTO environment_tags (environment, tag) VALUES (?1, 9)", [a as i64]).unwrap();
        let names = |v: &[&str]| v.iter().map(|x| TargetRef::Name(x.to_string())).collect::<Vec<_>>();
        let ids = |v: &[u64]| v.iter().map(|&x| TargetRef::Id(x)).collect::<Vec<_>>();
        let r = |e: Vec<TargetRef>, g: &[&str], t: &[&str]| s.resolve_job_targets(&e, &names(g), &names(t)).unwrap();
        assert_eq!(r(ids(&[a]), &[], &[]), Ok(vec![a]));
        assert_eq!(r(names(&["c"]), &[], &[]), Ok(vec![c]), "environments by name");
        assert_eq!(r(ids(&[b]), &["ships"], &[]), Ok(vec![b, c]), "names regardless of case, no repeats");
        assert_eq!(r(vec![], &["5"], &["ARM64"]), Ok(vec![a, b, c]), "ids as text too");
        assert_eq!(r(ids(&[99]), &[], &[]), Err("targets.environments: no environment 99".into()));
        assert_eq!(r(names(&["zz"]), &[], &[]), Err("targets.environments: no environment \"zz\"".into()));
        assert_eq!(r(vec![], &["boats"], &[]), Err("targets.groups: no group \"boats\"".into()));
        assert_eq!(r(vec![], &[], &["x86"]), Err("targets.tags: no tag \"x86\"".into()));
        assert_eq!(r(vec![], &[], &[]), Ok(vec![]));
    }

    #[test]
    fn a_job_queues_one_command_per_environment_and_an_edit_sends_a_new_version() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap().id;
        let id = s.create_job(&job("*/5 * * * *"), &[a, b], 10).unwrap();
        let targets = s.job_targets(id).unwrap();
        assert_eq!(targets.len(), 2);
        let first = targets[0].command.unwrap();
        let spec = job_action(&s, first);
        assert_eq!((spec.job, spec.version, spec.cron.as_str(), spec.script.as_str()), (id, 1, "*/5 * * * *", "df -h"));
        assert_eq!(targets[0].command_status, Some(CommandStatus::Queued));
        // An edit before the first was sent replaces it; the one already
        // sent to b stays as it is (the agent gets the new version after).
        s.commands_due(b, 11, 100).unwrap();
        let edited = NewJob { script: "df -h /".into(), ..job("*/10 * * * *") };
        assert_eq!(s.update_job(id, &edited, None, 12).unwrap(), Some(2));
        assert_eq!(s.command(first).unwrap().status, CommandStatus::Cancelled);
        let targets = s.job_targets(id).unwrap();
        assert!(targets.iter().all(|t| t.version == 2 && t.command_status == Some(CommandStatus::Queued)));
        assert_eq!(job_action(&s, targets[1].command.unwrap()).script, "df -h /");
        assert_eq!(s.job(id).unwrap().unwrap().version, 2);
        // Dropping b from the targets takes the job off it.
        assert_eq!(s.update_job(id, &edited, Some(&[a]), 13).unwrap(), Some(3));
        let targets = s.job_targets(id).unwrap();
        assert_eq!((targets[0].removed, targets[1].removed), (false, true));
        assert_eq!(s.command(targets[1].command.unwrap()).unwrap().action, Action::JobRemove(id));
        // Deleting it sends JobRemove to what is left; runs stay readable.
        assert!(s.remove_job(id, 14).unwrap());
        assert!(s.remove_job(id, 15).unwrap());
        assert!(s.job_targets(id).unwrap().iter().all(|t| t.removed));
        assert!(s.jobs().unwrap().is_empty());
        assert_eq!(s.job(id).unwrap().unwrap().removed_at, Some(14));
        assert_eq!(s.update_job(id, &edited, None, 16).unwrap(), None, "a deleted job cannot be edited");
        assert!(!s.remove_job(99, 16).unwrap());
        assert_eq!(s.update_job(99, &edited, None, 16).unwrap(), None);
    }

    #[test]
    fn a_job_for_an_unknown_environment_keeps_nothing() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        assert!(matches!(s.create_job(&job(""), &[a, 77], 1), Err(StoreError::NotFound(77))));
        assert!(s.jobs().unwrap().is_empty());
        assert!(s.commands(a, 10).unwrap().is_empty());
    }

    #[test]
    fn runs_are_stored_once_capped_and_only_for_jobs_sent_there() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let other = s.create_environment("other", Secret([2; 32]), 0).unwrap().id;
        let id = s.create_job(&job("* * * * *"), &[a], 1).unwrap();
        assert!(s.store_job_run(a, &run(id, 1, 0, b"ok\n"), 200).unwrap());
        assert!(!s.store_job_run(a, &run(id, 1, 3, b"again"), 201).unwrap(), "idempotent");
        assert!(!s.store_job_run(other, &run(id, 2, 0, b""), 201).unwrap(), "not sent there");
        assert!(!s.store_job_run(a, &run(id + 1, 1, 0, b""), 201).unwrap(), "no such job");
        assert!(!s.store_job_run(a, &run(u64::MAX, u64::MAX, 0, b""), 201).unwrap());
        let runs = s.job_runs(id, Some(a), 10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].run, runs[0].exit_code, runs[0].output.as_slice()), (1, 0, &b"ok\n"[..]));
        // Outputs keep their end; runs beyond the cap go, oldest first.
        let mut big = vec![b'x'; MAX_OUTPUT_LEN + 5];
        big.extend_from_slice(b"end");
        assert!(s.store_job_run(a, &run(id, 2, 1, &big), 202).unwrap());
        let newest = &s.job_runs(id, None, 1).unwrap()[0];
        assert!(newest.truncated && newest.output.len() == MAX_OUTPUT_LEN && newest.output.ends_with(b"end"));
        for n in 3..(RUNS_KEPT as u64 + 10) {
            s.store_job_run(a, &run(id, n, 0, b"."), 300).unwrap();
        }
        let all = s.job_runs(id, Some(a), 1000).unwrap();
        assert_eq!(all.len(), RUNS_KEPT);
        assert_eq!(all.last().unwrap().run, 10);
        let t = &s.job_targets(id).unwrap()[0];
        assert_eq!((t.runs, t.last_run.as_ref().unwrap().run), (RUNS_KEPT as u64, RUNS_KEPT as u64 + 9));
        assert!(t.last_run.as_ref().unwrap().output.is_empty(), "the summary leaves outputs out");
    }

    #[test]
    fn a_run_once_jobs_run_is_its_commands_result() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap().id;
        let id = s.create_job(&job(""), &[a, b], 1).unwrap();
        assert!(s.job_runs(id, None, 10).unwrap().is_empty(), "nothing ran yet");
        let targets = s.job_targets(id).unwrap();
        let result = |cmd: u64, status, error: &str, output: &[u8]| CommandResult {
            id: cmd,
            status,
            error: error.into(),
            finished_at: 50,
            output: output.to_vec(),
            phase: String::new(),
        };
        s.store_result(a, &result(targets[0].command.unwrap(), ResultStatus::Ok, "", b"42\n"), 51).unwrap();
        s.store_result(
            b,
            &result(targets[1].command.unwrap(), ResultStatus::Failed, "exit code 3; last output: no", b""),
            51,
        )
        .unwrap();
        let runs = s.job_runs(id, Some(a), 10).unwrap();
        assert_eq!((runs.len(), runs[0].exit_code, runs[0].output.as_slice()), (1, 0, &b"42\n"[..]));
        let runs = s.job_runs(id, Some(b), 10).unwrap();
        assert_eq!((runs[0].exit_code, runs[0].error.as_str()), (3, "exit code 3; last output: no"));
        let t = s.job_targets(id).unwrap();
        assert_eq!((t[0].runs, t[0].last_run.as_ref().unwrap().exit_code), (1, 0));
        assert_eq!(t[1].last_run.as_ref().unwrap().exit_code, 3);
        assert_eq!(s.job_runs(id, None, 10).unwrap().len(), 2);
    }

    #[test]
    fn exit_codes_are_read_from_failed_results() {
        assert_eq!(exit_code_of("exit code 3"), 3);
        assert_eq!(exit_code_of("exit code 127; last output: sh: nope: not found"), 127);
        assert_eq!(exit_code_of("timed out after 5 s; killed"), -1);
        assert_eq!(exit_code_of("exit code x"), -1);
    }
}
