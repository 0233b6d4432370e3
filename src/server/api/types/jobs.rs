//! Edge jobs' bodies.

use serde::{Deserialize, Serialize};

use super::TargetsBody;

/// `POST /api/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Its name.
    pub name: String,
    /// The shell script, run on each host (`chroot /host sh -c`).
    pub script: String,
    /// A cron expression; absent or empty: run once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The helper image (it needs `sh` and `chroot`); absent: each agent's
    /// default (`EDGE_JOB_IMAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Seconds before a run is killed; absent: the agent's default (1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Where it runs.
    pub targets: TargetsBody,
}

/// `PUT /api/jobs/{id}`: what is left out stays as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateJob {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// A new script.
    #[serde(default)]
    pub script: Option<String>,
    /// A new schedule (empty: run once).
    #[serde(default)]
    pub cron: Option<String>,
    /// A new helper image (empty: the agent's default).
    #[serde(default)]
    pub image: Option<String>,
    /// A new timeout (0: the agent's default).
    #[serde(default)]
    pub timeout_s: Option<u32>,
    /// New targets, replacing the environments it is on.
    #[serde(default)]
    pub targets: Option<TargetsBody>,
}

/// A job in the list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobItem {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its schedule (None: run once).
    pub cron: Option<String>,
    /// Its helper image (None: each agent's default).
    pub image: Option<String>,
    /// Its timeout in seconds (None: the agent's default).
    pub timeout_s: Option<u32>,
    /// Its version.
    pub version: u32,
    /// When it was created.
    pub created_at: i64,
    /// When it was last edited.
    pub updated_at: i64,
    /// When it was deleted.
    pub removed_at: Option<i64>,
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    /// The environment it ran on.
    pub environment: u64,
    /// Its number (the agent's); 0 for a run-once job's run.
    pub run: u64,
    /// The job's version that ran.
    pub version: u32,
    /// When it started (unknown for a run-once job).
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: i64,
    /// The script's exit code; -1 when it could not run or was killed.
    pub exit_code: i32,
    /// Why it could not run, or was killed.
    pub error: Option<String>,
    /// The output's start was cut (it keeps its last 64 KiB).
    pub truncated: bool,
    /// stdout and stderr (in `/runs` only), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A job on one environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTargetView {
    /// The environment's id.
    pub environment: u64,
    /// Its name.
    pub name: String,
    /// The job's version last sent there.
    pub version: u32,
    /// The command carrying it (`GET /api/commands/{id}`).
    pub command: Option<u64>,
    /// That command's status: queued, sent, delivered, ok, failed, ...
    pub status: Option<String>,
    /// The agent has it (for a run-once job: it ran, or runs).
    pub delivered: bool,
    /// The job was taken off this environment.
    pub removed: bool,
    /// The command's error (a run-once job that failed, or an agent that
    /// could not keep the job).
    pub error: Option<String>,
    /// The newest run, without its output.
    pub last_run: Option<RunView>,
    /// Runs stored.
    pub runs: u64,
}

/// A job in detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub item: JobItem,
    /// The script.
    pub script: String,
    /// Per environment.
    pub environments: Vec<JobTargetView>,
}
