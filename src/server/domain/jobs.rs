//! Edge jobs: what each change sends where.
//!
//! * **Create** stores the job and queues its `Job` command for each
//!   environment its targets name.
//! * **Edit** makes a new version and sends it to each environment (the
//!   new targets', or the current ones); environments dropped from the
//!   targets get a `JobRemove`.
//! * **Delete** sends a `JobRemove` to each environment still holding it;
//!   its runs stay readable.
//!
//! A new command for a job on an environment replaces the one before it:
//! that one is cancelled when it was not delivered yet. Each operation
//! applies whole or not at all ([`super::atomic`]).

use super::atomic;
use crate::server::store::jobs::NewJob;
use crate::server::store::{StoreError, Transaction};
use crate::wire::poll::{Action, JobSpec};

/// Queues version `version` of job `id` to `env` (see [`replace`]).
fn send_job(
    tx: &(impl Transaction + ?Sized),
    id: u64,
    env: u64,
    job: &NewJob,
    version: u32,
    now: i64,
) -> Result<(), StoreError> {
    let action = Action::Job(JobSpec {
        job: id,
        script: job.script.clone(),
        image: job.image.clone(),
        cron: job.cron.clone(),
        timeout_s: job.timeout_s,
        version,
    });
    replace(tx, id, env, &action, version, false, now)
}

/// Queues `action` for job `id` on `env` and records it as the target's
/// command; the target's earlier command is cancelled when it was not
/// delivered yet (the new one replaces it).
fn replace(
    tx: &(impl Transaction + ?Sized),
    id: u64,
    env: u64,
    action: &Action,
    version: u32,
    removed: bool,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(previous) = tx.job_target_command(id, env)? {
        match tx.cancel_command(previous, now) {
            Ok(()) | Err(StoreError::AlreadyDelivered(_) | StoreError::CommandNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let command = tx.enqueue_command(env, action, now)?;
    let once = matches!(action, Action::Job(s) if s.cron.is_empty());
    tx.record_job_command(id, env, command, version, removed, once)
}

/// The job operations, as methods of any transaction.
pub trait JobRules: Transaction {
    /// Creates a job and queues its `Job` command for each environment
    /// (which must exist: see `JobStore::resolve_job_targets`).
    ///
    /// # Errors
    /// When an environment does not exist or the database fails; nothing is kept.
    fn create_job(&self, job: &NewJob, environments: &[u64], now: i64) -> Result<u64, StoreError> {
        atomic(self, || {
            let id = self.insert_job(job, now)?;
            for &env in environments {
                send_job(self, id, env, job, 1, now)?;
            }
            Ok(id)
        })
    }

    /// A new version of a job: stored, and sent again to each environment
    /// (`environments`, or the current ones when `None`); environments
    /// dropped from the targets get a `JobRemove`. Returns the new version,
    /// or `None` when there is no such job (or it was deleted).
    ///
    /// # Errors
    /// When an environment does not exist or the database fails; nothing is kept.
    fn update_job(
        &self,
        id: u64,
        job: &NewJob,
        environments: Option<&[u64]>,
        now: i64,
    ) -> Result<Option<u32>, StoreError> {
        let Some(current) = self.job(id)?.filter(|j| j.removed_at.is_none()) else { return Ok(None) };
        let version = current.version + 1;
        atomic(self, || {
            self.revise_job(id, job, version, now)?;
            let before = self.job_environments(id)?;
            let after = environments.map_or_else(|| before.clone(), <[u64]>::to_vec);
            for &env in &after {
                send_job(self, id, env, job, version, now)?;
            }
            for &env in before.iter().filter(|e| !after.contains(e)) {
                replace(self, id, env, &Action::JobRemove(id), version, true, now)?;
            }
            Ok(Some(version))
        })
    }

    /// Deletes a job: a `JobRemove` goes to each environment still holding
    /// it; its runs stay readable. False when there is no such job; a job
    /// deleted already is left as it is.
    ///
    /// # Errors
    /// When the database fails.
    fn remove_job(&self, id: u64, now: i64) -> Result<bool, StoreError> {
        let Some(current) = self.job(id)? else { return Ok(false) };
        if current.removed_at.is_some() {
            return Ok(true);
        }
        atomic(self, || {
            self.mark_job_removed(id, now)?;
            for env in self.job_environments(id)? {
                replace(self, id, env, &Action::JobRemove(id), current.version, true, now)?;
            }
            Ok(true)
        })
    }
}

impl<T: Transaction + ?Sized> JobRules for T {}
