//! Agent updates, staged: a share of the environments first, the rest only
//! once every one of those has updated (issue #14). An update asked for
//! without a share is a rollout of one wave (a share of 100 %), so every
//! agent update has a status and a reason to show.
//!
//! * **Start** splits the environments (by id) into a first wave of the
//!   share asked for (at least one) and the rest, and sends the first
//!   wave its `agent.update` commands. The rollout is `first`.
//! * **Advance** runs in the poll that brings an update's result. A
//!   failure in the current wave (a rollback, an agent that cannot update
//!   itself) halts the rollout, saying which environment and why: the rest
//!   is never sent. When every command of the first wave is `ok`, the rest
//!   get theirs (`rest`); when every one of those is `ok`, it is `done`.
//!   A halted rollout stays halted; the operator starts another.

use super::atomic;
use crate::server::store::images::RolloutRecord;
use crate::server::store::{CommandStatus, StoreError, Transaction};
use crate::wire::poll::{Action, AgentUpdate, ImageFetch};

/// The first wave's size: `share` percent of `n`, at least one.
#[must_use]
pub fn first_wave(n: usize, share: u8) -> usize {
    (n * usize::from(share)).div_ceil(100).clamp(1, n.max(1))
}

fn action(r: &RolloutRecord) -> Action {
    Action::AgentUpdate(AgentUpdate {
        image: ImageFetch { reference: r.reference.clone(), image_id: r.image_id.clone() },
        timeout_s: r.timeout_s,
        update: r.update,
    })
}

fn send_wave(tx: &(impl Transaction + ?Sized), r: &RolloutRecord, wave: u8, now: i64) -> Result<(), StoreError> {
    let action = action(r);
    for (environment, w, _, _) in &r.members {
        if *w == wave {
            let command = tx.enqueue_command(*environment, &action, now)?;
            tx.set_rollout_command(r.id, *environment, command)?;
        }
    }
    Ok(())
}

/// Starts a rollout of `image` (reference, image id) to `environments`:
/// `share` percent first. Returns its id.
///
/// # Errors
/// [`StoreError::NotFound`] for an environment that does not exist
/// (nothing is changed then), or when the database fails.
#[allow(clippy::too_many_arguments)]
pub fn start(
    tx: &(impl Transaction + ?Sized),
    image: ImageFetch,
    environments: &[u64],
    share: u8,
    timeout_s: u32,
    update: u64,
    now: i64,
) -> Result<u64, StoreError> {
    let mut envs = environments.to_vec();
    envs.sort_unstable();
    envs.dedup();
    for e in &envs {
        tx.environment(*e)?;
    }
    let first = first_wave(envs.len(), share);
    let mut r = RolloutRecord {
        id: 0,
        reference: image.reference,
        image_id: image.image_id,
        update,
        timeout_s,
        status: "first".into(),
        reason: String::new(),
        created_at: now,
        updated_at: now,
        members: envs.iter().enumerate().map(|(i, e)| (*e, if i < first { 1 } else { 2 }, None, None)).collect(),
    };
    atomic(tx, || {
        r.id = tx.insert_rollout(&r, now)?;
        send_wave(tx, &r, 1, now)?;
        Ok(r.id)
    })
}

/// Moves the rollout `command` belongs to on, now that its result is in
/// (see the module doc). Nothing for other commands.
///
/// # Errors
/// When the database fails.
pub fn advance(tx: &(impl Transaction + ?Sized), command: u64, now: i64) -> Result<(), StoreError> {
    let Some((id, wave)) = tx.rollout_of_command(command)? else { return Ok(()) };
    // A poll's transaction: other environments' polls may advance the
    // same rollout at the same time (PostgreSQL).
    tx.serialize(crate::server::store::Area::Rollouts)?;
    let Some(r) = tx.rollout(id)? else { return Ok(()) };
    let current = match r.status.as_str() {
        "first" => 1,
        "rest" => 2,
        _ => return Ok(()),
    };
    if wave != current {
        return Ok(());
    }
    let members: Vec<_> = r.members.iter().filter(|m| m.1 == wave).collect();
    for (environment, _, command, status) in &members {
        if matches!(status.as_deref(), Some("failed" | "rejected" | "cancelled")) {
            let why = match command {
                Some(c) => tx.command(*c).map(|c| c.error).unwrap_or_default(),
                None => String::new(),
            };
            let reason = format!("environment {environment}: {why}");
            return tx.set_rollout_status(id, "halted", &reason, now);
        }
    }
    if !members.iter().all(|m| m.3.as_deref() == Some(CommandStatus::Ok.as_str())) {
        return Ok(());
    }
    if wave == 1 && r.members.iter().any(|m| m.1 == 2) {
        atomic(tx, || {
            send_wave(tx, &r, 2, now)?;
            tx.set_rollout_status(id, "rest", "", now)
        })
    } else {
        tx.set_rollout_status(id, "done", "", now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use crate::server::store::prelude::*;
    use crate::wire::poll::{CommandResult, ResultStatus};

    #[test]
    fn a_share_is_at_least_one_and_at_most_all() {
        assert_eq!(first_wave(10, 10), 1);
        assert_eq!(first_wave(10, 25), 3);
        assert_eq!(first_wave(3, 1), 1);
        assert_eq!(first_wave(4, 99), 4);
        assert_eq!(first_wave(500, 10), 50);
    }

    fn result(tx: &dyn Transaction, env: u64, command: u64, status: ResultStatus, error: &str) {
        let r = CommandResult {
            id: command,
            status,
            error: error.into(),
            finished_at: 10,
            output: Vec::new(),
            phase: String::new(),
        };
        assert!(tx.store_result(env, &r, 10).unwrap());
        advance(tx, command, 10).unwrap();
    }

    #[test]
    fn the_rest_waits_for_the_first_wave_and_a_failure_halts_it() {
        let db = Store::scratch().unwrap();
        let tx = db.autocommit();
        let envs: Vec<u64> = (0..5u8)
            .map(|i| tx.create_environment(&format!("e{i}"), crate::auth::Secret([i + 1; 32]), 0).unwrap().id)
            .collect();
        let image = ImageFetch { reference: "r/tern-agent:2".into(), image_id: format!("sha256:{}", "a".repeat(64)) };
        let id = start(&tx, image.clone(), &envs, 40, 60, 7, 1).unwrap();
        let r = tx.rollout(id).unwrap().unwrap();
        let first: Vec<_> = r.members.iter().filter(|m| m.1 == 1).collect();
        assert_eq!((first.len(), r.status.as_str()), (2, "first"));
        assert!(r.members.iter().filter(|m| m.1 == 2).all(|m| m.2.is_none()), "the rest is not sent yet");
        let (e0, c0) = (first[0].0, first[0].2.unwrap());
        let (e1, c1) = (first[1].0, first[1].2.unwrap());
        assert!(
            matches!(tx.command(c0).unwrap().action, Action::AgentUpdate(ref u) if u.update == 7 && u.timeout_s == 60)
        );
        result(&tx, e0, c0, ResultStatus::Ok, "");
        assert_eq!(tx.rollout(id).unwrap().unwrap().status, "first", "one of two");
        result(&tx, e1, c1, ResultStatus::Ok, "");
        let r = tx.rollout(id).unwrap().unwrap();
        assert_eq!(r.status, "rest");
        let rest: Vec<_> = r.members.iter().filter(|m| m.1 == 2).collect();
        assert!(rest.iter().all(|m| m.2.is_some()), "the rest is sent: {rest:?}");
        for m in &rest[..2] {
            result(&tx, m.0, m.2.unwrap(), ResultStatus::Ok, "");
        }
        assert_eq!(tx.rollout(id).unwrap().unwrap().status, "rest");
        result(&tx, rest[2].0, rest[2].2.unwrap(), ResultStatus::Ok, "");
        assert_eq!(tx.rollout(id).unwrap().unwrap().status, "done");

        // Another: a rollback in the first wave halts it; the rest never
        // gets a command, whatever comes later.
        let id = start(&tx, image, &envs, 40, 60, 8, 20).unwrap();
        let r = tx.rollout(id).unwrap().unwrap();
        let first: Vec<_> = r.members.iter().filter(|m| m.1 == 1).cloned().collect();
        result(&tx, first[0].0, first[0].2.unwrap(), ResultStatus::Failed, "rolled back: the new agent had not polled");
        let r = tx.rollout(id).unwrap().unwrap();
        assert_eq!(r.status, "halted");
        assert!(r.reason.contains(&format!("environment {}: rolled back", first[0].0)), "{}", r.reason);
        result(&tx, first[1].0, first[1].2.unwrap(), ResultStatus::Ok, "");
        let r = tx.rollout(id).unwrap().unwrap();
        assert_eq!(r.status, "halted");
        assert!(r.members.iter().filter(|m| m.1 == 2).all(|m| m.2.is_none()));
        assert_eq!(tx.rollout_ids().unwrap(), vec![id, id - 1]);
    }
}
