//! Commands between the poll loop and the engine, at most once across a
//! crash at any moment, and no command lost.
//!
//! ```text
//!   reply -> received (on disk, with its action) -> queue -> started (on
//!   disk) -> engine -> result (in memory at once, on disk as soon as it
//!   can be) -> sent in the next poll -> acknowledged -> dropped
//! ```
//!
//! * A command is handed to the engine only once its start is on disk. If
//!   that write fails (`DATA_PATH` full), it waits and tries again; it
//!   never runs unrecorded, so a crash then cannot make it run twice.
//! * After a restart, commands received and never started run, in the
//!   order they came; the one that had started is never run again: the
//!   engine is asked what became of it (a container's state after start,
//!   stop, kill, restart, pause, unpause or remove; an image's, a volume's
//!   or a network's presence after a pull or a remove), and only when it
//!   cannot say is the command reported as uncertain. Reading logs changes
//!   nothing, so it simply runs again.
//! * Receiving commands is all-or-nothing: when the journal cannot be
//!   written, none of them is taken (the server sends them again, since the
//!   agent does not confirm them), nothing runs.
//! * A result or an acknowledgement changes the journal in memory at once
//!   and on disk as soon as it can: a full disk delays its persistence, not
//!   its report.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::mpsc;

use super::run::Engine;
use super::store::{Journal, Store, StoreError, StoredCommand, StoredResult};
use crate::wire::poll::{Action, Command, ContainerOp, PHASE_FETCHING_IMAGES, ResultStatus};

/// The text of a result the agent cannot settle after a restart.
pub const UNCERTAIN: &str = "the agent restarted while this command was running; it may or may not have taken effect";

/// Why a container command did not take effect when its container is gone.
pub const GONE: &str = "the container no longer exists";

/// What the engine says became of a command interrupted by a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It took effect: the container is running after a start, gone after
    /// a remove, ...
    Done,
    /// It did not take effect, and why that is known.
    NotDone(String),
    /// The engine cannot say (a stack, a job), or could not be asked.
    Unknown,
}

/// The journal, shared by the poll loop and the command worker.
#[derive(Debug, Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    store: Store,
    /// The journal in memory is ahead of the one on disk.
    dirty: bool,
}

impl Ledger {
    /// The journal as loaded.
    pub fn new(journal: Journal, store: Store) -> Self {
        Self { inner: Arc::new(Mutex::new(Inner { journal, store, dirty: false })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the journal.
    pub fn read<T>(&self, f: impl FnOnce(&Journal) -> T) -> T {
        f(&self.lock().journal)
    }

    /// Changes the journal only if the change is on disk: on an error
    /// nothing changed, in memory either.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn commit<T>(&self, f: impl FnOnce(&mut Journal) -> T) -> Result<T, StoreError> {
        let mut g = self.lock();
        let mut next = g.journal.clone();
        let out = f(&mut next);
        g.store.save_journal(&next)?;
        g.journal = next;
        g.dirty = false;
        Ok(out)
    }

    /// Changes the journal in memory now and on disk when it can: a write
    /// that fails is retried by the next change or [`Self::flush`].
    pub fn record<T>(&self, f: impl FnOnce(&mut Journal) -> T) -> T {
        let mut g = self.lock();
        let out = f(&mut g.journal);
        let Inner { journal, store, dirty } = &mut *g;
        match store.save_journal(journal) {
            Ok(()) => *dirty = false,
            Err(e) => {
                if !*dirty {
                    tracing::warn!("the journal cannot be written ({e}); kept in memory until it can");
                }
                *dirty = true;
            }
        }
        out
    }

    /// Writes the journal if it is ahead of the disk.
    pub fn flush(&self) {
        if self.lock().dirty {
            self.record(|_| ());
        }
    }
}

/// A result, as the journal keeps it.
pub fn stored(id: u64, status: ResultStatus, error: &str, output: &[u8], phase: &str, at: i64) -> StoredResult {
    StoredResult {
        id,
        status: super::run::status_text(status).to_owned(),
        error: super::run::clip(error, super::run::MAX_ERROR),
        finished_at: at,
        // Logs are text; bytes that are not UTF-8 are replaced.
        output: String::from_utf8_lossy(output).into_owned(),
        phase: phase.to_owned(),
    }
}

/// An action as the journal keeps it.
pub fn encode_action(action: &Action) -> String {
    STANDARD.encode(action.encode())
}

fn decode_action(text: &str) -> Option<Action> {
    Action::decode(&STANDARD.decode(text).ok()?).ok()
}

/// What the journal says at start: commands to settle (they were running)
/// and commands to run (received, never started), in id order. Journals
/// before 0.2 named running commands without their action: those become
/// uncertain results here.
pub fn recover(ledger: &Ledger, now: i64) -> (Vec<(u64, Action, i64)>, Vec<Command>) {
    ledger.record(|j| {
        for id in std::mem::take(&mut j.running) {
            tracing::warn!(command = id, "the agent stopped while this command ran; reporting it as uncertain");
            j.results.insert(id, stored(id, ResultStatus::Failed, UNCERTAIN, &[], "", now));
        }
        let (mut settle, mut rerun) = (Vec::new(), Vec::new());
        let mut unreadable = Vec::new();
        for (&id, c) in &mut j.received {
            match (decode_action(&c.action), c.started_at) {
                (None, _) => unreadable.push(id),
                // Reading logs changes nothing: run it again. A transfer
                // resumes where it stopped (its verified chunks are on disk),
                // and so does a stack deploy that fetches its images (a
                // deploy again is the same deploy).
                (Some(action), _) if runs_again(&action) => {
                    c.started_at = None;
                    rerun.push(Command { id, action });
                }
                (Some(action), None) => {
                    c.started_at = None;
                    rerun.push(Command { id, action });
                }
                (Some(action), Some(at)) => settle.push((id, action, at)),
            }
        }
        for id in unreadable {
            j.received.remove(&id);
            j.results
                .insert(id, stored(id, ResultStatus::Failed, "the journal's copy of it is unreadable", &[], "", now));
        }
        (settle, rerun)
    })
}

fn runs_again(action: &Action) -> bool {
    match action {
        // An update runs again too: it finds the agent on its image (the
        // new agent: updated) or the helper's rollback note (the old one,
        // put back), or resumes its fetch.
        Action::ContainerLogs(..) | Action::ImageFetch(_) | Action::AgentUpdate(_) => true,
        Action::StackDeploy(s) => !s.images.is_empty(),
        _ => false,
    }
}

/// What became of a container command, from the container's state (`None`:
/// the container is gone). `started_at` is when the command started.
pub fn settle_container(op: ContainerOp, state: Option<(bool, bool, i64)>, command_started_at: i64) -> Settled {
    let Some((running, paused, started_at)) = state else {
        return match op {
            ContainerOp::Remove => Settled::Done,
            _ => Settled::NotDone(GONE.into()),
        };
    };
    let (done, what) = match op {
        ContainerOp::Start => (running, "it is not running"),
        ContainerOp::Stop | ContainerOp::Kill => (!running, "it is still running"),
        // Started again since the command began (times are whole seconds).
        ContainerOp::Restart => (running && started_at >= command_started_at - 1, "it has not started since"),
        ContainerOp::Pause => (paused, "it is not paused"),
        ContainerOp::Unpause => (running && !paused, "it is paused"),
        ContainerOp::Remove => (false, "it still exists"),
    };
    if done { Settled::Done } else { Settled::NotDone(what.into()) }
}

/// The command worker: settles the commands a restart interrupted, then
/// runs commands one at a time in the order they come (a stop then a
/// remove of the same container happen in that order, while polls go on),
/// each only once its start is on disk. Every result goes into the journal
/// and its id to `done`, so the loop reports it soon.
pub async fn work<E: Engine>(
    engine: Arc<E>,
    ledger: Ledger,
    interrupted: Vec<(u64, Action, i64)>,
    mut queue: mpsc::UnboundedReceiver<Command>,
    done: mpsc::UnboundedSender<u64>,
) {
    let now = super::run::now_unix;
    let stacks = StackTurns::default();
    for (id, action, started_at) in interrupted {
        let settled = engine.settle(&action, started_at).await;
        tracing::warn!(command = id, ?settled, "the agent stopped while this command ran; the engine was asked");
        let result = match settled {
            Settled::Done => stored(
                id,
                ResultStatus::Ok,
                "",
                b"the agent restarted while this command was running; the engine shows it took effect",
                "",
                now(),
            ),
            Settled::NotDone(why) => stored(
                id,
                ResultStatus::Failed,
                &format!("the agent restarted while this command was running; it did not take effect ({why})"),
                &[],
                "",
                now(),
            ),
            Settled::Unknown => stored(id, ResultStatus::Failed, UNCERTAIN, &[], "", now()),
        };
        ledger.record(|j| {
            j.received.remove(&id);
            j.results.insert(id, result);
        });
        if done.send(id).is_err() {
            return;
        }
    }
    while let Some(cmd) = queue.recv().await {
        // On disk before it runs, or not at all.
        let mut wait = Duration::from_secs(1);
        loop {
            let at = now();
            match ledger.commit(|j| match j.received.get_mut(&cmd.id) {
                Some(c) if c.started_at.is_none() => {
                    c.started_at = Some(at);
                    true
                }
                _ => false,
            }) {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!(command = cmd.id, "not in the journal as waiting; not run");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        command = cmd.id,
                        "cannot record that this command starts ({e}); it waits, retrying in {} s",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
        if !ledger.read(|j| j.received.get(&cmd.id).is_some_and(|c| c.started_at.is_some())) {
            continue;
        }
        let stack = match &cmd.action {
            Action::StackDeploy(s) => Some(s.name.clone()),
            Action::StackRemove(name) => Some(name.clone()),
            _ => None,
        };
        if let Some(name) = &stack {
            stacks.lock().await.insert(name.clone(), cmd.id);
        }
        if matches!(&cmd.action, Action::StackDeploy(s) if !s.images.is_empty()) {
            // Its images come from the server first, beside the queue (a
            // transfer may take hours); the stack is touched only once
            // they are all here.
            ledger.record(|j| {
                j.results.insert(cmd.id, stored(cmd.id, ResultStatus::Progress, "", &[], PHASE_FETCHING_IMAGES, now()))
            });
            let _ = done.send(cmd.id);
            let (engine, ledger, done, stacks) = (engine.clone(), ledger.clone(), done.clone(), stacks.clone());
            tokio::spawn(async move { fetch_then_deploy(&*engine, &ledger, cmd, &done, &stacks).await });
            continue;
        }
        // Long commands say what step they are at before they start.
        let phase = match cmd.action {
            Action::StackDeploy(_) => Some("deploying"),
            Action::StackRemove(_) => Some("removing"),
            _ => None,
        };
        if let Some(phase) = phase {
            ledger.record(|j| j.results.insert(cmd.id, stored(cmd.id, ResultStatus::Progress, "", &[], phase, now())));
            if done.send(cmd.id).is_err() {
                return;
            }
        }
        if matches!(cmd.action, Action::ImageFetch(_) | Action::AgentUpdate(_)) {
            // A transfer may take hours (a slow link, a download window):
            // it runs beside the queue, which goes on (the fetcher runs one
            // transfer at a time).
            ledger.record(|j| {
                j.results.insert(cmd.id, stored(cmd.id, ResultStatus::Progress, "", &[], "fetching", now()))
            });
            let _ = done.send(cmd.id);
            let (engine, ledger, done) = (engine.clone(), ledger.clone(), done.clone());
            tokio::spawn(async move { finish(&*engine, &ledger, cmd, &done).await });
            continue;
        }
        // A stack's commands run one at a time with those that fetched
        // their images first.
        let _stack = match &stack {
            Some(_) => Some(stacks.lock().await),
            None => None,
        };
        if !finish(&*engine, &ledger, cmd, &done).await {
            return;
        }
    }
}

/// The last command the queue took for each stack (by name): a deploy
/// whose images came after a later command for its stack was taken is
/// superseded. Held while a stack command runs.
type StackTurns = Arc<tokio::sync::Mutex<std::collections::HashMap<String, u64>>>;

/// A stack deploy naming images the server holds: each is fetched (or
/// found here already), then, unless a later command for the stack came
/// meanwhile, the stack is deployed. The output lists what each fetch
/// carried.
async fn fetch_then_deploy<E: Engine>(
    engine: &E,
    ledger: &Ledger,
    cmd: Command,
    done: &mpsc::UnboundedSender<u64>,
    stacks: &StackTurns,
) {
    let now = super::run::now_unix;
    let Action::StackDeploy(spec) = &cmd.action else { return };
    let mut output = Vec::new();
    let mut failed = None;
    for f in &spec.images {
        match engine.run(&Action::ImageFetch(f.clone())).await {
            Ok(out) => {
                output.extend_from_slice(&out);
                output.push(b'\n');
            }
            Err(e) => {
                failed = Some(format!("image {}: {e}; the stack was not touched", f.reference));
                break;
            }
        }
    }
    let result = match failed {
        Some(e) => stored(cmd.id, ResultStatus::Failed, &e, &output, "", now()),
        None => {
            let turns = stacks.lock().await;
            match turns.get(&spec.name) {
                Some(&later) if later != cmd.id => stored(
                    cmd.id,
                    ResultStatus::Failed,
                    &format!("superseded by command {later} for this stack, which came while its images were fetched"),
                    &output,
                    "",
                    now(),
                ),
                _ => {
                    ledger.record(|j| {
                        j.results.insert(cmd.id, stored(cmd.id, ResultStatus::Progress, "", &[], "deploying", now()))
                    });
                    let _ = done.send(cmd.id);
                    match engine.run(&cmd.action).await {
                        Ok(out) => {
                            output.extend_from_slice(&out);
                            stored(cmd.id, ResultStatus::Ok, "", &output, "", now())
                        }
                        Err(e) => stored(cmd.id, ResultStatus::Failed, &e, &output, "", now()),
                    }
                }
            }
        }
    };
    tracing::info!(command = cmd.id, status = %result.status, error = %result.error, "command finished");
    ledger.record(|j| {
        j.received.remove(&cmd.id);
        j.results.insert(cmd.id, result);
    });
    let _ = done.send(cmd.id);
}

/// Runs a command that has started and records its result. False when
/// nobody listens for results any more (the agent stops).
async fn finish<E: Engine>(engine: &E, ledger: &Ledger, cmd: Command, done: &mpsc::UnboundedSender<u64>) -> bool {
    let now = super::run::now_unix;
    let r = engine.run(&cmd.action).await;
    let result = match r {
        Ok(output) => stored(cmd.id, ResultStatus::Ok, "", &output, "", now()),
        Err(e) => stored(cmd.id, ResultStatus::Failed, &e, &[], "", now()),
    };
    tracing::info!(command = cmd.id, status = %result.status, error = %result.error, "command finished");
    ledger.record(|j| {
        j.received.remove(&cmd.id);
        j.results.insert(cmd.id, result);
    });
    done.send(cmd.id).is_ok()
}

/// A command as the journal keeps it while it waits.
pub fn waiting(action: &Action) -> StoredCommand {
    StoredCommand { action: encode_action(action), started_at: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_commands_settle_from_the_containers_state() {
        use ContainerOp::*;
        let (up, down, paused) = (Some((true, false, 100)), Some((false, false, 100)), Some((true, true, 100)));
        assert_eq!(settle_container(Start, up, 90), Settled::Done);
        assert!(matches!(settle_container(Start, down, 90), Settled::NotDone(_)));
        assert_eq!(settle_container(Stop, down, 90), Settled::Done);
        assert_eq!(settle_container(Kill, down, 90), Settled::Done);
        assert!(matches!(settle_container(Stop, up, 90), Settled::NotDone(_)));
        assert_eq!(settle_container(Restart, up, 100), Settled::Done, "started again since");
        assert!(matches!(settle_container(Restart, up, 110), Settled::NotDone(_)), "started before the command");
        assert_eq!(settle_container(Pause, paused, 90), Settled::Done);
        assert_eq!(settle_container(Unpause, up, 90), Settled::Done);
        assert!(matches!(settle_container(Unpause, paused, 90), Settled::NotDone(_)));
        assert_eq!(settle_container(Remove, None, 90), Settled::Done);
        assert!(matches!(settle_container(Remove, up, 90), Settled::NotDone(_)));
        assert!(matches!(settle_container(Start, None, 90), Settled::NotDone(_)));
    }

    #[test]
    fn recovery_runs_what_never_started_and_settles_what_ran() {
        let dir = std::env::temp_dir().join(format!("tern-journal-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let stop = Action::Container(ContainerOp::Stop, crate::sync::state::Id([1; 32]));
        let logs = Action::ContainerLogs(crate::sync::state::Id([1; 32]), 5);
        let mut j = Journal { seen: 5, ..Journal::default() };
        j.running.insert(1);
        j.received.insert(2, StoredCommand { action: encode_action(&stop), started_at: Some(50) });
        j.received.insert(3, StoredCommand { action: encode_action(&logs), started_at: Some(60) });
        j.received.insert(4, waiting(&stop));
        j.received.insert(5, StoredCommand { action: "!!".into(), started_at: None });
        let fetching = Action::StackDeploy(crate::wire::poll::StackSpec {
            name: "web".into(),
            images: vec![crate::wire::poll::ImageFetch {
                reference: "app:2".into(),
                image_id: format!("sha256:{}", "ab".repeat(32)),
            }],
            ..Default::default()
        });
        let plain = Action::StackDeploy(crate::wire::poll::StackSpec { name: "db".into(), ..Default::default() });
        j.received.insert(6, StoredCommand { action: encode_action(&fetching), started_at: Some(65) });
        j.received.insert(7, StoredCommand { action: encode_action(&plain), started_at: Some(66) });
        let ledger = Ledger::new(j, store);
        let (settle, rerun) = recover(&ledger, 70);
        assert_eq!(settle, vec![(2, stop.clone(), 50), (7, plain, 66)]);
        assert_eq!(
            rerun.iter().map(|c| c.id).collect::<Vec<_>>(),
            [3, 4, 6],
            "logs run again, a stack deploy that fetches its images, and what never started"
        );
        ledger.read(|j| {
            assert_eq!(j.results[&1].error, UNCERTAIN, "an old journal's running command");
            assert!(j.results[&5].error.contains("unreadable"));
            assert!(j.running.is_empty() && !j.received.contains_key(&5));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Stack commands in the order the engine ran them; image fetches wait
    /// for the gate.
    #[derive(Default)]
    struct StackEngine {
        ran: Mutex<Vec<String>>,
        gate: tokio::sync::Notify,
    }

    impl Engine for StackEngine {
        async fn state(&self) -> Result<crate::sync::State, String> {
            Err("no state".into())
        }
        async fn run(&self, action: &Action) -> Result<Vec<u8>, String> {
            let what = match action {
                Action::ImageFetch(f) => {
                    self.gate.notified().await;
                    return Ok(format!("fetched {}", f.reference).into_bytes());
                }
                Action::StackDeploy(s) => format!("deploy {} v{}", s.name, s.version),
                Action::StackRemove(name) => format!("remove {name}"),
                other => format!("{other:?}"),
            };
            self.ran.lock().unwrap().push(what);
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_stack_deploy_fetches_beside_the_queue_and_a_later_command_for_its_stack_supersedes_it() {
        let dir = std::env::temp_dir().join(format!("tern-journal-stacks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = crate::wire::poll::ImageFetch {
            reference: "10.0.0.5:5000/app:2".into(),
            image_id: format!("sha256:{}", "ab".repeat(32)),
        };
        let deploy = |version| {
            Action::StackDeploy(crate::wire::poll::StackSpec {
                name: "web".into(),
                version,
                images: vec![image.clone()],
                ..Default::default()
            })
        };
        let commands = [
            (1, deploy(1)),
            (2, Action::StackRemove("web".into())),
            (3, Action::ContainerLogs(crate::sync::state::Id([1; 32]), 5)),
            (4, deploy(2)),
        ];
        let mut j = Journal::default();
        for (id, a) in &commands {
            j.received.insert(*id, waiting(a));
        }
        let ledger = Ledger::new(j, Store::open(&dir).unwrap());
        let engine = Arc::new(StackEngine::default());
        let (queue_tx, queue) = mpsc::unbounded_channel();
        // Results are read off the journal; the receiver stays open (the
        // worker stops when nobody listens).
        let (done, _finished) = mpsc::unbounded_channel();
        let worker = tokio::spawn(work(engine.clone(), ledger.clone(), Vec::new(), queue, done));
        let result = |id: u64| ledger.read(|j| j.results.get(&id).cloned());
        let wait_for = |id: u64, want: fn(&StoredResult) -> bool| {
            let ledger = ledger.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let r = ledger.read(|j| j.results.get(&id).cloned());
                    if r.as_ref().is_some_and(want) {
                        return;
                    }
                    assert!(std::time::Instant::now() < deadline, "command {id}: {r:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        for (id, action) in commands.iter().take(3) {
            queue_tx.send(Command { id: *id, action: action.clone() }).unwrap();
        }
        // The deploy waits for its image; the queue goes on without it.
        wait_for(3, |r| r.status == "ok").await;
        assert_eq!(result(1).unwrap().phase, PHASE_FETCHING_IMAGES);
        assert_eq!(engine.ran.lock().unwrap().len(), 2);
        assert_eq!(engine.ran.lock().unwrap()[0], "remove web");
        // Its image here, it finds the removal came after it: not deployed.
        engine.gate.notify_one();
        wait_for(1, |r| r.status == "failed").await;
        assert!(result(1).unwrap().error.contains("superseded by command 2"), "{:?}", result(1));
        assert_eq!(engine.ran.lock().unwrap().len(), 2, "{:?}", engine.ran.lock().unwrap());
        // The next deploy, the latest for its stack, deploys once fetched.
        queue_tx.send(Command { id: 4, action: commands[3].1.clone() }).unwrap();
        wait_for(4, |r| r.phase == PHASE_FETCHING_IMAGES).await;
        engine.gate.notify_one();
        wait_for(4, |r| r.status == "ok").await;
        assert!(result(4).unwrap().output.contains("fetched 10.0.0.5:5000/app:2"));
        assert_eq!(engine.ran.lock().unwrap().last().map(String::as_str), Some("deploy web v2"));
        assert!(ledger.read(|j| j.received.is_empty()));
        drop(queue_tx);
        worker.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
