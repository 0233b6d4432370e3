//! Edge jobs on the agent: a shell script run on the host through a helper
//! container, once (the output comes back as the command's result) or on a
//! cron schedule kept by the agent and run on its own clock, link or no link.
//!
//! **A run.** The agent creates a container from the job's image (or its
//! default, `EDGE_JOB_IMAGE`, `busybox:latest` out of the box: the image
//! needs `sh` and `chroot` on its `PATH`), with the host's root mounted at
//! `/host`, the host's PID and network namespaces, privileged (unless
//! `EDGE_JOB_PRIVILEGED=0`), running `chroot /host sh -c SCRIPT`: the script
//! runs with the host's own shell and tools. With `EDGE_JOB_CHROOT=0` it
//! runs `sh -c SCRIPT` in the helper image itself, the host still under
//! `/host` (for hosts without a usable `/bin/sh`). A run longer than its
//! timeout (the job's, else an hour) is killed: exit code -1. Its stdout and
//! stderr are kept to the last [`OUTPUT_CAP`] bytes (`truncated` says when
//! the start was cut), and the container is removed. The helper image is
//! pulled when the host lacks it.
//!
//! **Scheduled jobs** live in `DATA_PATH/jobs.json` (replaced atomically,
//! like the rest of the agent's files): the job, the last run number, the
//! time up to which its schedule was handled, and the run going on. Cron
//! expressions have 5 fields (minute granularity) or 6 (a leading seconds
//! field), and are evaluated in UTC. Rules:
//!
//! * a new or edited job first runs at its next occurrence after it arrived;
//! * one run at a time per job: occurrences that fall while the previous
//!   run is still going are skipped;
//! * missed occurrences collapse into one run: an agent that was down (or a
//!   clock that jumped) runs a job **at most once** for everything it
//!   missed, at once on start, then follows the schedule again, never a
//!   storm of replays;
//! * a run interrupted by an agent restart is reported as a run with exit
//!   code -1 and an error saying so, and is not run again.
//!
//! Each run becomes a [`JobRun`] (run numbers increase per job, and are
//! persisted before the run starts) sent on the channel the poll loop
//! journals and sends (`Agent::set_job_runs`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use super::store::StoreError;
use crate::wire::poll::{Action, JobRun, JobSpec};

/// Output kept per run: the last this many bytes.
pub const OUTPUT_CAP: usize = super::OUTPUT_CAP;

/// The helper image when neither the job nor `EDGE_JOB_IMAGE` names one.
pub const DEFAULT_IMAGE: &str = "busybox:latest";

/// A run's timeout when the job gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The label that marks a helper container as this agent's (its EDGE_ID).
pub const OWNER_LABEL: &str = "tern.job.owner";

/// The label holding the job id of a helper container.
pub const JOB_LABEL: &str = "tern.job";

/// How the agent runs jobs (`EDGE_JOB_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// `EDGE_JOB_IMAGE`: the default helper image.
    pub image: String,
    /// `EDGE_JOB_PRIVILEGED` (default on): run the helper privileged. Some
    /// engines (rootless, nested) refuse privileged containers.
    pub privileged: bool,
    /// `EDGE_JOB_CHROOT` (default on): run the script with the host's shell
    /// (`chroot /host sh -c`); off: with the helper image's own `sh`.
    pub chroot: bool,
    /// A run's timeout when the job gives none.
    pub default_timeout: Duration,
    /// Private registries' credentials for the helper image's pull.
    pub registries: super::Registries,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            privileged: true,
            chroot: true,
            default_timeout: DEFAULT_TIMEOUT,
            registries: super::Registries::default(),
        }
    }
}

pub use crate::cron::{next_after, parse as parse_cron};

// ----- the schedule, apart from the engine and the clock -----

/// A job kept by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The server's job id.
    pub job: u64,
    /// Its version.
    pub version: u32,
    /// The script.
    pub script: String,
    /// The helper image (empty: the agent's default).
    #[serde(default)]
    pub image: String,
    /// The cron expression.
    pub cron: String,
    /// Seconds (0: the agent's default).
    #[serde(default)]
    pub timeout_s: u32,
    /// Occurrences at or before this time (Unix seconds) are handled.
    pub checked: i64,
    /// The last run number used.
    #[serde(default)]
    pub last_run: u64,
    /// The run going on (persisted before it starts).
    #[serde(default)]
    pub running: Option<Running>,
}

/// A run that started and has not been reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Running {
    /// Its number.
    pub run: u64,
    /// The job's version it runs.
    pub version: u32,
    /// When it started.
    pub started_at: i64,
}

impl Entry {
    fn spec(&self) -> JobSpec {
        JobSpec {
            job: self.job,
            script: self.script.clone(),
            image: self.image.clone(),
            cron: self.cron.clone(),
            timeout_s: self.timeout_s,
            version: self.version,
        }
    }
}

/// The scheduled jobs: what `jobs.json` holds, and the rules of the module
/// doc, as pure functions of the time given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// By job id.
    #[serde(default)]
    pub jobs: BTreeMap<u64, Entry>,
}

/// A run to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRun {
    /// The job as it is now.
    pub spec: JobSpec,
    /// The run's number.
    pub run: u64,
    /// When it starts.
    pub started_at: i64,
}

impl Schedule {
    /// Adds a job, or replaces it with a new version (its run numbers go
    /// on). Its first run is its next occurrence after `now`.
    ///
    /// # Errors
    /// When the cron expression does not parse.
    pub fn upsert(&mut self, spec: &JobSpec, now: i64) -> Result<Option<i64>, String> {
        let cron = parse_cron(&spec.cron)?;
        let previous = self.jobs.remove(&spec.job);
        let entry = Entry {
            job: spec.job,
            version: spec.version,
            script: spec.script.clone(),
            image: spec.image.clone(),
            cron: spec.cron.clone(),
            timeout_s: spec.timeout_s,
            checked: now,
            last_run: previous.as_ref().map_or(0, |p| p.last_run),
            running: previous.and_then(|p| p.running),
        };
        self.jobs.insert(spec.job, entry);
        Ok(next_after(&cron, now))
    }

    /// Stops scheduling a job; true when it was scheduled. A run going on
    /// finishes and is reported.
    pub fn remove(&mut self, job: u64) -> bool {
        self.jobs.remove(&job).is_some()
    }

    /// The runs due at `now`, marked running (the caller persists the
    /// schedule before starting them). Every occurrence missed up to `now`
    /// makes one run, not one each.
    pub fn take_due(&mut self, now: i64) -> Vec<DueRun> {
        let mut due = Vec::new();
        for e in self.jobs.values_mut() {
            if e.running.is_some() {
                continue;
            }
            let Ok(cron) = parse_cron(&e.cron) else { continue };
            if next_after(&cron, e.checked).is_some_and(|t| t <= now) {
                e.checked = now;
                e.last_run += 1;
                e.running = Some(Running { run: e.last_run, version: e.version, started_at: now });
                due.push(DueRun { spec: e.spec(), run: e.last_run, started_at: now });
            }
        }
        due
    }

    /// A run ended at `finished_at`: the occurrences that fell during it
    /// are skipped. False when the job is gone or runs another run.
    pub fn finish(&mut self, job: u64, run: u64, finished_at: i64) -> bool {
        match self.jobs.get_mut(&job) {
            Some(e) if e.running.is_some_and(|r| r.run == run) => {
                e.running = None;
                e.checked = e.checked.max(finished_at);
                true
            }
            _ => false,
        }
    }

    /// The earliest time a job is due after `now` (running jobs excluded).
    pub fn next_due(&self, now: i64) -> Option<i64> {
        self.jobs
            .values()
            .filter(|e| e.running.is_none())
            .filter_map(|e| parse_cron(&e.cron).ok().and_then(|c| next_after(&c, e.checked)))
            .map(|t| t.max(now))
            .min()
    }

    /// At start: the runs an agent restart interrupted, as failed runs (they
    /// may or may not have done their work; they are not run again).
    pub fn interrupted(&mut self, now: i64) -> Vec<JobRun> {
        let mut out = Vec::new();
        for e in self.jobs.values_mut() {
            if let Some(r) = e.running.take() {
                e.checked = e.checked.max(now);
                out.push(JobRun {
                    job: e.job,
                    version: r.version,
                    run: r.run,
                    started_at: r.started_at,
                    finished_at: now,
                    exit_code: -1,
                    output: Vec::new(),
                    truncated: false,
                    error: "the agent restarted while this run was going; it may or may not have finished its work"
                        .into(),
                });
            }
        }
        out
    }
}

// ----- persistence -----

/// `DATA_PATH/jobs.json`.
#[derive(Debug, Clone)]
pub struct JobFile {
    path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl JobFile {
    /// The file in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("jobs.json") }
    }

    /// The schedule (empty when there is no file).
    ///
    /// # Errors
    /// When the file cannot be read or is corrupt.
    pub fn load(&self) -> Result<Schedule, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt { path: self.path.clone(), why: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Schedule::default()),
            Err(e) => Err(StoreError::Io { path: self.path.clone(), source: e }),
        }
    }

    /// Replaces the file atomically (write, fsync, rename, fsync the
    /// directory).
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save(&self, schedule: &Schedule) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(schedule).expect("serializable");
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(())
    }
}

// ----- one run in a helper container -----

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The script's exit code; -1 when it could not run or timed out.
    pub exit_code: i32,
    /// The last [`OUTPUT_CAP`] bytes of stdout and stderr.
    pub output: Vec<u8>,
    /// The output was cut.
    pub truncated: bool,
    /// Why it could not run or was killed (empty otherwise).
    pub error: String,
}

/// Keeps the last [`OUTPUT_CAP`] bytes; true when something was cut.
pub fn cap_output(mut out: Vec<u8>) -> (Vec<u8>, bool) {
    if out.len() > OUTPUT_CAP {
        out.drain(..out.len() - OUTPUT_CAP);
        (out, true)
    } else {
        (out, false)
    }
}

/// The command the helper runs.
pub fn helper_cmd(config: &JobConfig, script: &str) -> Vec<String> {
    let mut cmd: Vec<String> = Vec::new();
    if config.chroot {
        cmd.extend(["chroot".into(), "/host".into()]);
    }
    cmd.extend(["sh".into(), "-c".into(), script.to_owned()]);
    cmd
}

use super::{ImageError, engine_error, ensure_image, with_tag};

/// Runs `spec`'s script once in a helper container named `name`, labelled
/// with `owner`. Never fails: what went wrong is in the outcome.
pub async fn run_script(docker: &Docker, config: &JobConfig, spec: &JobSpec, name: &str, owner: &str) -> Outcome {
    let image = with_tag(if spec.image.is_empty() { &config.image } else { &spec.image });
    let timeout =
        if spec.timeout_s == 0 { config.default_timeout } else { Duration::from_secs(u64::from(spec.timeout_s)) };
    let failed = |error: String| Outcome { exit_code: -1, output: Vec::new(), truncated: false, error };
    if let Err(e) = ensure_image(docker, &image, &config.registries).await {
        return failed(match e {
            ImageError::Inspect(e) => e,
            ImageError::Pull(e) => format!("the helper image {image} is not on the host and could not be pulled: {e}"),
        });
    }
    let labels =
        HashMap::from([(OWNER_LABEL.to_owned(), owner.to_owned()), (JOB_LABEL.to_owned(), spec.job.to_string())]);
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: Some(helper_cmd(config, &spec.script)),
        labels: Some(labels),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            binds: Some(vec!["/:/host".into()]),
            privileged: Some(config.privileged),
            pid_mode: Some("host".into()),
            network_mode: Some("host".into()),
            // Whatever the engine's default driver, the output must be
            // readable back; 2 × 1 MB is plenty for the last 64 KiB.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([("max-size".into(), "1m".into()), ("max-file".into(), "2".into())])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
    if let Err(e) = docker.create_container(Some(opts), body).await {
        return failed(format!("cannot create the helper container: {}", engine_error(e)));
    }
    let outcome = start_and_wait(docker, config, name, timeout).await;
    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    if let Err(e) = docker.remove_container(name, Some(opts)).await {
        tracing::warn!(container = name, "cannot remove the job's helper container: {}", engine_error(e));
    }
    outcome
}

async fn start_and_wait(docker: &Docker, config: &JobConfig, name: &str, timeout: Duration) -> Outcome {
    if let Err(e) = docker.start_container(name, None).await {
        let mut error = format!("cannot start the helper container: {}", engine_error(e));
        if config.privileged && error.contains("operation not permitted") {
            error.push_str(" (this engine refuses privileged containers: set EDGE_JOB_PRIVILEGED=0)");
        }
        return Outcome { exit_code: -1, output: Vec::new(), truncated: false, error };
    }
    let wait = async {
        let mut stream = docker.wait_container(name, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(engine_error(e)),
            None => Err("the engine ended the wait without an exit code".to_owned()),
        }
    };
    let (exit_code, error) = match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(code)) => (i32::try_from(code).unwrap_or(-1), String::new()),
        Ok(Err(e)) => (-1, format!("waiting for the helper container: {e}")),
        Err(_) => {
            let _ = docker.kill_container(name, None::<KillContainerOptions>).await;
            (-1, format!("timed out after {} s; killed", timeout.as_secs()))
        }
    };
    let (output, truncated) = read_output(docker, name).await;
    Outcome { exit_code, output, truncated, error }
}

/// The container's stdout and stderr, interleaved, capped to the tail.
async fn read_output(docker: &Docker, name: &str) -> (Vec<u8>, bool) {
    let opts = LogsOptions { stdout: true, stderr: true, tail: "all".into(), ..Default::default() };
    let mut stream = docker.logs(name, Some(opts));
    let mut out = Vec::new();
    let mut cut = false;
    while let Some(item) = stream.next().await {
        let Ok(chunk) = item else { break };
        out.extend_from_slice(&chunk.into_bytes());
        if out.len() > 2 * OUTPUT_CAP {
            out.drain(..out.len() - OUTPUT_CAP);
            cut = true;
        }
    }
    let (out, more) = cap_output(out);
    (out, cut || more)
}

use crate::clock::unix_now as now_unix;

fn helper_name(job: u64, run: Option<u64>) -> String {
    let run = run.map_or_else(|| "once".to_owned(), |r| r.to_string());
    format!("tern-job-{job}-{run}-{:08x}", fastrand::u32(..))
}

/// How a run-once job's result reads: its output when the script exited 0;
/// otherwise an error starting `exit code N` (or the reason it could not
/// run) followed by the output's last lines, since a failed command's
/// result carries its error text, not its output.
pub fn once_result(outcome: Outcome) -> Result<Vec<u8>, String> {
    if outcome.exit_code == 0 && outcome.error.is_empty() {
        return Ok(outcome.output);
    }
    let head = if outcome.error.is_empty() { format!("exit code {}", outcome.exit_code) } else { outcome.error };
    let text = String::from_utf8_lossy(&outcome.output);
    let mut start = text.len().saturating_sub(ONCE_ERROR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = text[start..].trim_end();
    Err(if tail.is_empty() { head } else { format!("{head}; last output: {tail}") })
}

/// The output's last bytes a failed run-once job's error carries (the agent
/// keeps error texts under 500 bytes).
const ONCE_ERROR_TAIL: usize = 400;

/// Runs a job once, now (no scheduler needed).
pub async fn run_once(docker: &Docker, config: &JobConfig, spec: &JobSpec, owner: &str) -> Result<Vec<u8>, String> {
    let name = helper_name(spec.job, None);
    tracing::info!(job = spec.job, container = %name, "running a job once");
    once_result(run_script(docker, config, spec, &name, owner).await)
}

/// Runs a `Job` or `JobRemove` command: with `jobs`, scheduled jobs are
/// kept; without (a bare engine), only run-once jobs can run.
///
/// # Errors
/// The text the operator sees.
pub async fn execute(
    docker: &Docker,
    jobs: Option<&Jobs>,
    registries: &super::Registries,
    action: &Action,
) -> Result<Vec<u8>, String> {
    match (action, jobs) {
        (Action::Job(spec), Some(jobs)) => jobs.command(spec).await,
        (Action::Job(spec), None) if spec.cron.is_empty() => {
            let config = JobConfig { registries: registries.clone(), ..JobConfig::default() };
            run_once(docker, &config, spec, "").await
        }
        (Action::JobRemove(job), Some(jobs)) => jobs.remove(*job),
        (Action::Job(_) | Action::JobRemove(_), None) => Err("this agent runs no job scheduler".into()),
        _ => Err("not a job command".into()),
    }
}

// ----- the scheduler -----

/// The agent's job scheduler: cheap to clone, shared by the command worker
/// (which adds and removes jobs) and the scheduling task.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: JobConfig,
    owner: String,
    file: JobFile,
    schedule: Mutex<Schedule>,
    wake: Notify,
    runs: mpsc::UnboundedSender<JobRun>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("owner", &self.inner.owner).field("file", &self.inner.file).finish()
    }
}

impl Jobs {
    /// Opens the schedule in `dir`. Runs interrupted by the last stop are
    /// reported (as failed) on `runs`. `owner` (the EDGE_ID) labels the
    /// helper containers.
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn open(
        dir: &Path,
        docker: Docker,
        config: JobConfig,
        owner: &str,
        runs: mpsc::UnboundedSender<JobRun>,
    ) -> Result<Self, StoreError> {
        let file = JobFile::new(dir);
        let mut schedule = file.load()?;
        let interrupted = schedule.interrupted(now_unix());
        if !interrupted.is_empty() {
            file.save(&schedule)?;
        }
        for run in interrupted {
            tracing::warn!(
                job = run.job,
                run = run.run,
                "the agent stopped while this job ran; reporting it as failed"
            );
            let _ = runs.send(run);
        }
        if !schedule.jobs.is_empty() {
            tracing::info!(jobs = schedule.jobs.len(), "scheduled jobs loaded");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                docker,
                config,
                owner: owner.to_owned(),
                file,
                schedule: Mutex::new(schedule),
                wake: Notify::new(),
                runs,
            }),
        })
    }

    /// The jobs scheduled now.
    pub fn schedule(&self) -> Schedule {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.inner.schedule.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the schedule and persists it.
    fn update<T>(&self, f: impl FnOnce(&mut Schedule) -> T) -> Result<T, String> {
        let mut s = self.lock();
        let r = f(&mut s);
        self.inner.file.save(&s).map_err(|e| format!("cannot save the job schedule: {e}"))?;
        Ok(r)
    }

    /// A `Job` command: a run-once job runs now (and stops any schedule the
    /// job had); a scheduled one is kept and its next run time returned.
    ///
    /// # Errors
    /// The text the operator sees.
    pub async fn command(&self, spec: &JobSpec) -> Result<Vec<u8>, String> {
        if spec.cron.is_empty() {
            if self.lock().jobs.contains_key(&spec.job) {
                self.update(|s| s.remove(spec.job))?;
            }
            return run_once(&self.inner.docker, &self.inner.config, spec, &self.inner.owner).await;
        }
        let now = now_unix();
        let next = self.update(|s| s.upsert(spec, now))??;
        self.inner.wake.notify_one();
        tracing::info!(job = spec.job, version = spec.version, cron = %spec.cron, next, "job scheduled");
        let next = next
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(|| "never (the expression matches no future time)".to_owned(), |t| t.to_rfc3339());
        Ok(format!("scheduled (version {}); next run {next}\n", spec.version).into_bytes())
    }

    /// A `JobRemove` command.
    ///
    /// # Errors
    /// When the schedule cannot be saved.
    pub fn remove(&self, job: u64) -> Result<Vec<u8>, String> {
        let was = self.update(|s| s.remove(job))?;
        self.inner.wake.notify_one();
        tracing::info!(job, was_scheduled = was, "job removed");
        Ok(if was { b"removed\n".to_vec() } else { b"was not scheduled\n".to_vec() })
    }

    /// Removes helper containers a crash left behind (labelled with this
    /// agent's EDGE_ID).
    pub async fn remove_leftovers(&self) {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{OWNER_LABEL}={}", self.inner.owner)])]);
        let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let Ok(list) = self.inner.docker.list_containers(Some(opts)).await else { return };
        for c in list {
            let Some(id) = c.id else { continue };
            tracing::info!(container = %id, "removing a job helper container left by an earlier run");
            let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let _ = self.inner.docker.remove_container(&id, Some(opts)).await;
        }
    }

    /// Runs the schedule until the task is dropped: each due job in its own
    /// task, its result sent on the runs channel.
    pub async fn run(self) {
        self.remove_leftovers().await;
        loop {
            let now = now_unix();
            let due = match self.update(|s| s.take_due(now)) {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!("{e}; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
            };
            for d in due {
                tokio::spawn(self.clone().run_due(d));
            }
            let next = self.lock().next_due(now);
            // Wake at least every minute: the wall clock may jump.
            let wait = next.map_or(Duration::from_secs(60), |t| until(t).min(Duration::from_secs(60)));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.wake.notified() => {}
            }
        }
    }

    async fn run_due(self, due: DueRun) {
        let name = helper_name(due.spec.job, Some(due.run));
        tracing::info!(job = due.spec.job, run = due.run, container = %name, "job run starting");
        let o = run_script(&self.inner.docker, &self.inner.config, &due.spec, &name, &self.inner.owner).await;
        let finished_at = now_unix();
        tracing::info!(job = due.spec.job, run = due.run, exit_code = o.exit_code, error = %o.error, "job run finished");
        let run = JobRun {
            job: due.spec.job,
            version: due.spec.version,
            run: due.run,
            started_at: due.started_at,
            finished_at,
            exit_code: o.exit_code,
            output: o.output,
            truncated: o.truncated,
            error: o.error,
        };
        // Reported before the marker is cleared: a crash in between reports
        // the run twice under one number (the server keeps the first).
        let _ = self.inner.runs.send(run);
        if let Err(e) = self.update(|s| s.finish(due.spec.job, due.run, finished_at)) {
            tracing::error!("{e}");
        }
        self.inner.wake.notify_one();
    }
}

/// From now to Unix time `t` (whole seconds), to the millisecond.
fn until(t: i64) -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(u64::try_from(t).unwrap_or(0)).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05 12:01:30 UTC (a Monday).
    const T: i64 = 1_767_614_490;

    fn spec(job: u64, cron: &str) -> JobSpec {
        JobSpec { job, script: "echo hi".into(), image: String::new(), cron: cron.into(), timeout_s: 0, version: 1 }
    }

    fn at(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn next_runs_follow_five_and_six_field_expressions_in_utc() {
        assert_eq!(at("2026-01-05T12:01:30Z"), T);
        let every5 = parse_cron("*/5 * * * *").unwrap();
        assert_eq!(next_after(&every5, T), Some(at("2026-01-05T12:05:00Z")));
        assert_eq!(next_after(&every5, at("2026-01-05T12:05:00Z")), Some(at("2026-01-05T12:10:00Z")), "strictly after");
        let nightly = parse_cron("30 2 * * *").unwrap();
        assert_eq!(next_after(&nightly, T), Some(at("2026-01-06T02:30:00Z")));
        let weekdays = parse_cron("0 9 * * 1-5").unwrap();
        assert_eq!(next_after(&weekdays, at("2026-01-09T10:00:00Z")), Some(at("2026-01-12T09:00:00Z")), "Fri → Mon");
        let seconds = parse_cron("*/10 * * * * *").unwrap();
        assert_eq!(next_after(&seconds, T), Some(T + 10));
        assert_eq!(next_after(&parse_cron("@hourly").unwrap(), T), Some(at("2026-01-05T13:00:00Z")));
        for bad in ["", "* * *", "61 * * * *", "* * * * * * 2030", "every minute", "*/0 * * * *"] {
            assert!(parse_cron(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_new_job_first_runs_at_its_next_occurrence_and_not_twice_for_one() {
        let mut s = Schedule::default();
        assert_eq!(s.upsert(&spec(1, "*/5 * * * *"), T).unwrap(), Some(at("2026-01-05T12:05:00Z")));
        assert!(s.take_due(T).is_empty(), "not at once");
        assert_eq!(s.next_due(T), Some(at("2026-01-05T12:05:00Z")));
        assert!(s.take_due(at("2026-01-05T12:04:59Z")).is_empty());
        let due = s.take_due(at("2026-01-05T12:05:00Z"));
        assert_eq!((due.len(), due[0].run, due[0].spec.job), (1, 1, 1));
        assert!(s.take_due(at("2026-01-05T12:05:01Z")).is_empty(), "one run at a time");
        assert_eq!(s.next_due(T), None, "a running job has no next time until it ends");
        assert!(s.finish(1, 1, at("2026-01-05T12:05:03Z")));
        assert!(!s.finish(1, 1, at("2026-01-05T12:05:04Z")), "once");
        assert!(s.take_due(at("2026-01-05T12:05:04Z")).is_empty());
        let due = s.take_due(at("2026-01-05T12:10:00Z"));
        assert_eq!(due[0].run, 2, "run numbers increase");
    }

    #[test]
    fn missed_occurrences_make_one_run_not_a_storm() {
        let mut s = Schedule::default();
        s.upsert(&spec(1, "* * * * *"), T).unwrap();
        s.upsert(&spec(2, "0 3 * * *"), T).unwrap();
        s.upsert(&spec(3, "0 0 1 1 *"), T).unwrap();
        // Ten days later (the agent was down, or the clock jumped): 14,400
        // missed minutes and ten missed nights make one run each.
        let later = T + 10 * 86_400;
        let due = s.take_due(later);
        assert_eq!(due.iter().map(|d| (d.spec.job, d.run)).collect::<Vec<_>>(), vec![(1, 1), (2, 1)]);
        for d in &due {
            assert!(s.finish(d.spec.job, d.run, later + 1));
        }
        assert!(s.take_due(later + 2).is_empty(), "nothing replayed");
        assert_eq!(s.next_due(later + 2), Some(later - later % 60 + 60));
        // A run longer than the period skips the occurrences it overlaps.
        let due = s.take_due(later - later % 60 + 60);
        assert_eq!(due.len(), 1);
        assert!(s.finish(1, due[0].run, later + 600));
        assert!(s.take_due(later + 600).is_empty());
        assert_eq!(s.take_due(later - later % 60 + 660).len(), 1);
    }

    #[test]
    fn an_edit_keeps_the_run_numbers_and_a_removal_stops_the_schedule() {
        let mut s = Schedule::default();
        s.upsert(&spec(7, "*/10 * * * * *"), T).unwrap();
        assert_eq!(s.take_due(T + 10)[0].run, 1);
        s.finish(7, 1, T + 11);
        let v2 = JobSpec { version: 2, script: "echo v2".into(), ..spec(7, "*/20 * * * * *") };
        s.upsert(&v2, T + 12).unwrap();
        assert!(s.take_due(T + 19).is_empty(), "the new schedule starts from the edit");
        let due = s.take_due(T + 30);
        assert_eq!((due[0].run, due[0].spec.version, due[0].spec.script.as_str()), (2, 2, "echo v2"));
        assert!(s.remove(7));
        assert!(!s.remove(7));
        assert!(s.take_due(T + 1000).is_empty());
        assert!(!s.finish(7, 2, T + 31), "the run of a removed job ends quietly");
        assert!(s.upsert(&spec(8, "not cron"), T).is_err());
        assert!(!s.jobs.contains_key(&8));
    }

    #[test]
    fn the_schedule_survives_a_restart_and_an_interrupted_run_is_reported_once() {
        let dir = std::env::temp_dir().join(format!("tern-jobs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = JobFile::new(&dir);
        assert_eq!(file.load().unwrap(), Schedule::default());
        let mut s = Schedule::default();
        s.upsert(&spec(1, "*/5 * * * *"), T).unwrap();
        s.upsert(&spec(2, "*/5 * * * *"), T).unwrap();
        let due = s.take_due(at("2026-01-05T12:05:00Z"));
        assert_eq!(due.len(), 2);
        s.finish(2, 1, at("2026-01-05T12:05:01Z"));
        file.save(&s).unwrap();
        // The agent stops while job 1 runs.
        let mut back = file.load().unwrap();
        assert_eq!(back, s);
        let restart = at("2026-01-05T13:00:30Z");
        let lost = back.interrupted(restart);
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].job, lost[0].run, lost[0].exit_code), (1, 1, -1));
        assert!(lost[0].error.contains("restarted"));
        assert!(back.interrupted(restart).is_empty(), "reported once");
        // Job 1's interrupted run is not run again for the time it missed;
        // job 2 missed eleven occurrences and runs once, with the next number.
        let due = back.take_due(restart);
        assert_eq!(due.iter().map(|d| (d.spec.job, d.run)).collect::<Vec<_>>(), vec![(2, 2)]);
        assert_eq!(back.take_due(at("2026-01-05T13:05:00Z")).iter().map(|d| d.run).collect::<Vec<_>>(), vec![2]);
        std::fs::write(dir.join("jobs.json"), b"{\"jobs\": 5}").unwrap();
        assert!(matches!(file.load(), Err(StoreError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_keep_their_last_64_kib_and_failed_run_once_jobs_say_why() {
        let (out, cut) = cap_output(b"short".to_vec());
        assert_eq!((out.as_slice(), cut), (&b"short"[..], false));
        let mut big = vec![b'a'; OUTPUT_CAP];
        big.extend_from_slice(b"the end");
        let (out, cut) = cap_output(big);
        assert!(cut && out.len() == OUTPUT_CAP && out.ends_with(b"the end"));
        let ok = Outcome { exit_code: 0, output: b"fine\n".to_vec(), truncated: false, error: String::new() };
        assert_eq!(once_result(ok), Ok(b"fine\n".to_vec()));
        let bad = Outcome { exit_code: 3, output: b"x\n".repeat(1000), truncated: false, error: String::new() };
        let e = once_result(bad).unwrap_err();
        assert!(e.starts_with("exit code 3; last output: x\nx") && e.len() < 450, "{e}");
        let killed =
            Outcome { exit_code: -1, output: Vec::new(), truncated: false, error: "timed out after 5 s".into() };
        assert_eq!(once_result(killed), Err("timed out after 5 s".into()));
    }

    #[test]
    fn the_helper_chroots_into_the_host_unless_told_not_to() {
        let c = JobConfig::default();
        assert_eq!(helper_cmd(&c, "df -h"), ["chroot", "/host", "sh", "-c", "df -h"]);
        let own = JobConfig { chroot: false, ..c };
        assert_eq!(helper_cmd(&own, "df -h"), ["sh", "-c", "df -h"]);
        assert_eq!(with_tag("busybox"), "busybox:latest");
        assert_eq!(with_tag("registry:5000/tools/busybox"), "registry:5000/tools/busybox:latest");
        assert_eq!(with_tag("alpine:3.20"), "alpine:3.20");
        assert_eq!(with_tag("alpine@sha256:abc"), "alpine@sha256:abc");
    }
}
