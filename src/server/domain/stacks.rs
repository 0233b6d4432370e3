//! Edge stacks: what each change sends where.
//!
//! * **Create** stores the stack and deploys it on every environment its
//!   targets name.
//! * **Update** makes a new version and redeploys it on every environment
//!   it is on and on those its (new) targets name; environments the new
//!   targets no longer name get a `StackRemove`.
//! * **Targets resolve late.** An environment that joins a targeted group
//!   or gets a targeted tag after the stack was created is given it by
//!   [`reconcile`], which the API runs in the same transaction as the
//!   change that gave it the group or tag (`api::fleet`), and the server
//!   once at start for databases written before that rule. Polls and
//!   listings only read. An environment that *leaves* a targeted group or
//!   tag keeps the stack: removing services from a host because a label
//!   changed would be too easy a mistake; remove or update the stack to
//!   take it off.
//! * **Removal** frees its name at once and sends a `StackRemove` to every
//!   environment it was deployed to; the stack stays listed, `removing`,
//!   until every environment has reported, then `removed`. Removing it
//!   again retries the environments whose removal failed, and once it is
//!   `removed`, purges its record.
//!
//! * **Images the server holds travel as transfers.** A deploy names, for
//!   each service image the server holds (`tern image pull`), the image id
//!   it holds under that reference, resolved when the deploy is queued: the
//!   agent fetches those as deltas against what its host has, beside its
//!   command queue, and only then touches the running stack (pre-fetch,
//!   then swap). A moving tag (`:latest`) pulled again into the server
//!   gets a new image id, so the next deploy of the stack fetches it. Other
//!   images are pulled from their registry by the host, as before.
//!
//! Each operation applies whole or not at all ([`super::atomic`]).

use std::collections::BTreeSet;
use std::path::Path;

use super::atomic;
use crate::compose::Project;
use crate::server::store::stacks::{NewStack, StackChange, StackError};
use crate::server::store::{StoreError, Transaction};
use crate::wire::poll::{Action, ImageFetch, StackSpec};

/// What removing a stack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removal commands were queued (or are still on their way).
    Removing,
    /// It was removed everywhere already: its record is gone.
    Purged,
}

/// How many times a stack's deploy is sent to an environment before its
/// failure stands: the first and four retries.
pub const MAX_DEPLOY_ATTEMPTS: u32 = 5;

/// The variable that sets the first retry's delay, in seconds (default
/// [`DEFAULT_RETRY_SECONDS`]); each next one doubles, up to an hour.
pub const RETRY_VAR: &str = "TERN_DEPLOY_RETRY";

/// The first retry's delay: a registry that hiccupped, a link that dropped
/// mid-pull, an engine restarting.
pub const DEFAULT_RETRY_SECONDS: i64 = 60;

/// How long after the failure of `attempt` the next one is sent: the
/// first delay doubled per attempt, capped at an hour, with up to 20 % of
/// jitter, so a fleet that failed at once (a registry down) does not pull
/// at once again.
pub fn retry_delay(attempt: u32) -> i64 {
    let first = retry_first().unwrap_or(DEFAULT_RETRY_SECONDS);
    let base = first.saturating_mul(1 << attempt.saturating_sub(1).min(12)).min(3600);
    // From half to one and a half times the base: a fleet that failed
    // together spreads over a whole base of time.
    base / 2 + fastrand::i64(0..=base)
}

/// The first retry's delay, read once from [`RETRY_VAR`]: `None` when it
/// is 0 (retries off). A value that is not 0 to 3600 is refused loudly
/// (the default is kept).
fn retry_first() -> Option<i64> {
    static FIRST: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *FIRST.get_or_init(|| match std::env::var(RETRY_VAR) {
        Err(_) => Some(DEFAULT_RETRY_SECONDS),
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(0) => None,
            Ok(s) if (1..=3600).contains(&s) => Some(s),
            _ => {
                tracing::warn!("{RETRY_VAR}={v:?} is not 0 (off) to 3600 seconds; the first retry waits 60 s");
                Some(DEFAULT_RETRY_SECONDS)
            }
        },
    })
}

/// After a command's final result on `environment`: a stack deploy or
/// removal that failed (not one the agent rejected, nor a cancelled one)
/// is tried again after [`retry_delay`], up to [`MAX_DEPLOY_ATTEMPTS`] in
/// all.
///
/// # Errors
/// When the database fails.
pub fn after_result(
    tx: &(impl Transaction + ?Sized),
    environment: u64,
    result: &crate::wire::poll::CommandResult,
    now: i64,
) -> Result<(), StoreError> {
    match result.status {
        crate::wire::poll::ResultStatus::Ok => tx.stack_command_ok(environment, result.id),
        crate::wire::poll::ResultStatus::Failed => {
            if retry_first().is_some()
                && let Some((stack, attempt, _)) = tx.deploy_of_command(environment, result.id)?
                && attempt < MAX_DEPLOY_ATTEMPTS
            {
                tx.set_stack_retry(stack, environment, Some(now + retry_delay(attempt)))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Sends the retries that are due: the stack's current version again, as
/// the next attempt. Each is claimed first, so of several replicas one
/// sends it. Returns how many were sent.
///
/// # Errors
/// When the database fails.
pub fn retry_due(tx: &(impl Transaction + ?Sized), now: i64) -> Result<usize, StoreError> {
    let mut sent = 0;
    for (stack, environment) in tx.due_stack_retries(now)? {
        let Some(removing) = tx.claim_stack_retry(stack, environment, now)? else { continue };
        if removing {
            // A removal that failed: sent again as it was (no window holds
            // a removal).
            let spec = match tx.stack_spec(stack) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(stack, environment, "a removal's retry not sent: {e}");
                    continue;
                }
            };
            let command = tx.enqueue_command(environment, &Action::StackRemove(spec.name), now)?;
            tx.record_stack_retry(stack, environment, command, spec.version)?;
            sent += 1;
            continue;
        }
        // A stack gone or corrupt since is skipped (its claim kept): one bad
        // row does not hold up every other retry.
        let spec = match deployable(tx, stack) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(stack, environment, "a retry not sent: {e}");
                continue;
            }
        };
        let version = spec.version;
        // Its window may have closed since (a server down across the
        // opening, a window changed): the next opening, then.
        if let Some(at) = window_wait(tx, stack, environment, now)? {
            tx.set_stack_retry(stack, environment, Some(at))?;
            continue;
        }
        let action = Action::StackDeploy(spec);
        let own = for_environment(tx, environment, &action)?;
        let command = tx.enqueue_command(environment, own.as_ref().unwrap_or(&action), now)?;
        tx.note_stack_command(command, stack, version)?;
        tx.record_stack_retry(stack, environment, command, version)?;
        sent += 1;
    }
    Ok(sent)
}

/// When a deploy of `stack` on `environment` is to wait for its windows
/// (see [`super::windows`]): `None` when they are open now (or there are
/// none), else the next minute they all are (or, when they never meet, a
/// day from now, to look again).
///
/// # Errors
/// When the database fails.
fn window_wait(
    tx: &(impl Transaction + ?Sized),
    stack: u64,
    environment: u64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let (a, b) = tx.deploy_windows(stack, environment)?;
    if a.is_empty() && b.is_empty() {
        return Ok(None);
    }
    Ok(match super::windows::next_open(&super::windows::windows(&[&a, &b]), now) {
        Some(t) if t == now => None,
        Some(t) => Some(t),
        None => Some(now + super::windows::NEVER_RECHECK),
    })
}

/// Takes back the deploys queued and not yet sent whose window has closed
/// (the agent did not poll while it was open): each is cancelled and waits
/// for the next opening. Returns how many.
///
/// # Errors
/// When the database fails.
pub fn hold_closed(tx: &(impl Transaction + ?Sized), now: i64) -> Result<usize, StoreError> {
    let mut held = 0;
    for (d, at) in closed_unsent(tx, now)? {
        match tx.cancel_command(d.command, now) {
            Ok(()) => {}
            // Sent or taken meanwhile: it stands.
            Err(StoreError::AlreadyDelivered(..)) => continue,
            Err(e) => return Err(e),
        }
        tx.hold_stack_deploy(d.stack, d.environment, at)?;
        held += 1;
    }
    Ok(held)
}

/// The deploys queued and not yet sent whose window is closed at `now`,
/// each with when it opens next (a read: the server's check writes only
/// when there is one).
///
/// # Errors
/// When the database fails.
pub fn closed_unsent(
    tx: &(impl Transaction + ?Sized),
    now: i64,
) -> Result<Vec<(crate::server::store::stacks::UnsentDeploy, i64)>, StoreError> {
    let mut out = Vec::new();
    for d in tx.unsent_windowed_deploys()? {
        let windows = super::windows::windows(&[&d.windows[0], &d.windows[1]]);
        let at = match super::windows::next_open(&windows, now) {
            Some(t) if t == now => continue,
            Some(t) => t,
            None => now + super::windows::NEVER_RECHECK,
        };
        out.push((d, at));
    }
    Ok(out)
}

/// A deploy as it goes to one environment: each variable the stack
/// declares that the environment has a value of its own for takes that
/// value (an environment's values name no variable a stack does not
/// declare: a stack's file decides what it reads).
fn for_environment(
    tx: &(impl Transaction + ?Sized),
    environment: u64,
    action: &Action,
) -> Result<Option<Action>, StoreError> {
    let Action::StackDeploy(spec) = action else { return Ok(None) };
    let own = tx.environment_variables(environment)?;
    if !own.keys().any(|k| spec.env.contains_key(k)) {
        return Ok(None);
    }
    let mut spec = spec.clone();
    for (name, value) in own {
        if let Some(v) = spec.env.get_mut(&name) {
            *v = value;
        }
    }
    Ok(Some(Action::StackDeploy(spec)))
}

/// Queues `action` for `environment` and records it as the stack's last
/// command there; a deploy whose window is closed waits instead (see
/// [`super::windows`]).
fn send(
    tx: &(impl Transaction + ?Sized),
    stack: u64,
    environment: u64,
    action: &Action,
    version: u32,
    removing: bool,
    now: i64,
) -> Result<(), StoreError> {
    if !removing && let Some(at) = window_wait(tx, stack, environment, now)? {
        return tx.wait_stack_deploy(stack, environment, version, at);
    }
    let own = for_environment(tx, environment, action)?;
    let command = tx.enqueue_command(environment, own.as_ref().unwrap_or(action), now)?;
    if !removing {
        tx.note_stack_command(command, stack, version)?;
    }
    tx.record_stack_command(stack, environment, command, version, removing)
}

/// Deploys every stack whose targets now name an environment it has no
/// deployment on (an environment that joined a targeted group or got a
/// targeted tag); for one stack and/or one environment. Returns how many
/// deploys were queued.
///
/// # Errors
/// When the database fails or a stored stack is corrupt.
pub fn reconcile(
    tx: &(impl Transaction + ?Sized),
    stack: Option<u64>,
    environment: Option<u64>,
    now: i64,
) -> Result<usize, StoreError> {
    // Almost always nothing to do: one read.
    let pairs = tx.undeployed_stacks(stack, environment)?;
    if pairs.is_empty() {
        return Ok(0);
    }
    atomic(tx, || deploy_pairs(tx, &pairs, now)).map_err(|e| match e {
        StackError::Store(e) => e,
        _ => StoreError::Corrupt { what: "stack", environment: environment.unwrap_or_default() },
    })
}

/// The stack's spec with the held images its services name (see the module
/// doc).
fn deployable(tx: &(impl Transaction + ?Sized), stack: u64) -> Result<StackSpec, StackError> {
    let mut spec = tx.stack_spec(stack)?;
    // Stored stacks were checked when written; one that no longer parses
    // (an older server's) deploys as before, and the agent says why.
    let Ok(project) = Project::parse(&spec.name, &spec.compose, &spec.env, Path::new("/")) else {
        return Ok(spec);
    };
    let references: BTreeSet<&str> =
        project.services.values().map(|s| s.image.as_str()).filter(|i| !i.is_empty()).collect();
    for reference in references {
        // `app` is `app:latest`, as the engine reads it.
        let tagged = (!reference.contains('@') && !reference.rsplit('/').next().unwrap_or("").contains(':'))
            .then(|| format!("{reference}:latest"));
        let held = match tx.held_reference(reference)? {
            Some(id) => Some(id),
            None => tagged.as_deref().map(|t| tx.held_reference(t)).transpose()?.flatten(),
        };
        if let Some(image_id) = held {
            spec.images.push(ImageFetch { reference: reference.to_owned(), image_id });
        }
    }
    Ok(spec)
}

fn deploy_pairs(tx: &(impl Transaction + ?Sized), pairs: &[(u64, u64)], now: i64) -> Result<usize, StackError> {
    for &(stack, env) in pairs {
        let spec = deployable(tx, stack)?;
        let version = spec.version;
        send(tx, stack, env, &Action::StackDeploy(spec), version, false, now)?;
    }
    Ok(pairs.len())
}

/// The stack operations, as methods of any transaction.
pub trait StackRules: Transaction {
    /// Deploys every stack whose targets now name an environment it has no
    /// deployment on: see [`reconcile`].
    ///
    /// # Errors
    /// When the database fails or a stored stack is corrupt.
    fn reconcile_stacks(&self, stack: Option<u64>, environment: Option<u64>, now: i64) -> Result<usize, StoreError> {
        reconcile(self, stack, environment, now)
    }

    /// Creates a stack and queues its deploy on every environment its
    /// targets name.
    ///
    /// # Errors
    /// [`StackError::NameTaken`], [`StackError::UnknownTarget`], or when
    /// the database fails. Nothing is changed then.
    fn create_stack(&self, new: &NewStack, now: i64) -> Result<u64, StackError> {
        atomic(self, || {
            let id = self.insert_stack(new, now)?;
            deploy_pairs(self, &self.undeployed_stacks(Some(id), None)?, now)?;
            Ok(id)
        })
    }

    /// Updates a stack: a new version, redeployed on every environment it
    /// is deployed to and on those its (new) targets name; environments the
    /// new targets no longer name get a `StackRemove`. A change of its
    /// deploy window alone is no new version: it only moves the deploys
    /// waiting for it.
    ///
    /// # Errors
    /// [`StackError::NotFound`] (also for a stack being removed),
    /// [`StackError::UnknownTarget`], or when the database fails. Nothing is
    /// changed then.
    fn update_stack(&self, id: u64, change: &StackChange, now: i64) -> Result<(), StackError> {
        atomic(self, || {
            if let Some(window) = &change.window {
                let live = self.stack(id)?.removed_at.is_none();
                if !live || !self.set_deploy_window(Some(id), None, window, now)? {
                    return Err(StackError::NotFound(id));
                }
                let only_window = StackChange { window: None, ..change.clone() } == StackChange::default();
                if only_window {
                    return Ok(());
                }
            }
            self.revise_stack(id, change, now)?;
            let spec = deployable(self, id)?;
            let deployed = self.stack_deployments(id)?;
            let targeted = match &change.targets {
                Some(targets) => {
                    self.set_stack_targets(id, targets)?;
                    self.stack_reach(id)?
                }
                None => deployed.iter().map(|(e, _)| *e).collect(),
            };
            for (env, removing) in deployed {
                if targeted.contains(&env) {
                    send(self, id, env, &Action::StackDeploy(spec.clone()), spec.version, false, now)?;
                } else if !removing {
                    send(self, id, env, &Action::StackRemove(spec.name.clone()), spec.version, true, now)?;
                }
            }
            deploy_pairs(self, &self.undeployed_stacks(Some(id), None)?, now)?;
            Ok(())
        })
    }

    /// Rolls a stack back to an earlier version: that version's file and
    /// variables become a new version (so the history stays in order and a
    /// rollback can itself be undone), deployed where the stack is, as an
    /// update is. The targets stay as they are.
    ///
    /// # Errors
    /// [`StackError::NotFound`], [`StackError::NoVersion`], or when the
    /// database fails. Nothing is changed then.
    fn rollback_stack(&self, id: u64, version: u32, now: i64) -> Result<u32, StackError> {
        let old = self.stack_version(id, version)?;
        atomic(self, || {
            let change = StackChange {
                compose: Some(old.compose.clone()),
                env: Some(old.env.clone()),
                files: Some(old.files.clone()),
                window: None,
                targets: None,
            };
            self.update_stack(id, &change, now)?;
            self.note_stack_version(id, &format!("rolled back to version {version}"))?;
            Ok(self.stack(id)?.version)
        })
    }

    /// Removes a stack (see the module doc).
    ///
    /// # Errors
    /// [`StackError::NotFound`], or when the database fails.
    fn remove_stack(&self, id: u64, now: i64) -> Result<Removal, StackError> {
        let record = self.stack(id)?;
        atomic(self, || {
            if record.removed_at.is_some() && record.status() == "removed" {
                self.purge_stack(id)?;
                return Ok(Removal::Purged);
            }
            self.mark_stack_removed(id, now)?;
            for d in &record.deployments {
                let first = record.removed_at.is_none();
                let retry = matches!(d.status, "failed" | "cancelled" | "unknown");
                if first || retry {
                    let action = Action::StackRemove(record.name.clone());
                    send(self, id, d.environment, &action, record.version, true, now)?;
                }
            }
            Ok(Removal::Removing)
        })
    }
}

impl<T: Transaction + ?Sized> StackRules for T {}
