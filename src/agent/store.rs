//! What the agent keeps on disk (DATA_PATH), so that a restart resends
//! nothing and runs no command twice:
//!
//! * `edge_id`: the generated EDGE_ID, when none is configured;
//! * `meta.json`: the end of the reserved poll-counter block and the
//!   intervals the server last set;
//! * `base.bin`: the acknowledged base state and its sequence number in one
//!   file (so they cannot disagree after a crash), the state encoded as a
//!   delta from the empty state (so loading it re-checks its root digest);
//! * `journal.json`: the highest command id received, the commands received
//!   and not finished (with their actions, and when each started, so a
//!   restart runs those that never started and settles the one that was
//!   running), and results not yet acknowledged;
//! * `health`: when the agent started and last polled successfully, for
//!   `tern agent health` (see `agent::health`; written at most once a
//!   minute while nothing changes).
//!
//! Every file is replaced atomically (write, fsync, rename, fsync the
//! directory): a crash leaves the old file or the new one, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sync::State;
use crate::wire::codec::{Codec, Limits};
use crate::wire::poll;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file holds something this build cannot read.
    #[error("{path}: corrupt: {why}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Small counters kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// End of the reserved block of poll counters.
    pub counter_end: u64,
    /// The intervals (ping, snapshot, command; seconds, 0 = disabled) the
    /// server last set, so a restart does not fall back to the defaults.
    #[serde(default)]
    pub intervals: Option<[u32; 3]>,
    /// Which join token the counter belongs to (see
    /// `crate::auth::JoinToken::key_id`): an agent redeployed with a new
    /// token (its environment's secret rotated, which resets the server's
    /// counter) starts its counter again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// A command's result waiting for the server's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredResult {
    /// Command id.
    pub id: u64,
    /// `ok`, `failed` or `rejected`.
    pub status: String,
    /// Error text.
    pub error: String,
    /// When it ended.
    pub finished_at: i64,
    /// What it printed (logs), as text.
    #[serde(default)]
    pub output: String,
    /// For a progress result: the step.
    #[serde(default)]
    pub phase: String,
}

/// What makes commands run at most once: the highest command id received
/// (persisted before any of them runs, so a repeated reply or a restart
/// runs nothing twice), the commands received and not finished, each
/// marked when it starts (on disk before it is handed to the engine), and
/// the results the server has not acknowledged yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Highest command id received. Commands at or below it are ignored.
    #[serde(default)]
    pub seen: u64,
    /// Commands received and not finished. At start, one that never
    /// started runs (in id order, as before the restart); one that had
    /// started was interrupted: it is never run again, and the engine is
    /// asked what became of it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub received: BTreeMap<u64, StoredCommand>,
    /// Commands running, as journals before 0.2 recorded them (without
    /// their action): each is reported as failed, may or may not have taken
    /// effect.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub running: BTreeSet<u64>,
    /// Results by command id, until the server acknowledges them.
    #[serde(default)]
    pub results: BTreeMap<u64, StoredResult>,
    /// Runs of scheduled jobs, until the server acknowledges them.
    #[serde(default)]
    pub job_runs: Vec<StoredJobRun>,
}

/// A command received and not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCommand {
    /// Its action, protobuf-encoded (`wire::poll::Action::encode`), in base64.
    pub action: String,
    /// When it was handed to the engine (seconds since the epoch); absent
    /// while it waits its turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
}

/// A scheduled job's run waiting for the server's acknowledgement: the
/// journal's form of [`poll::JobRun`] (its output as text, in JSON), a type
/// of its own so the file's format does not follow the wire type's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredJobRun {
    /// The server's job id.
    pub job: u64,
    /// The job's version that ran.
    pub version: u32,
    /// Agent-assigned, increasing per job.
    pub run: u64,
    /// When it started.
    pub started_at: i64,
    /// When it ended.
    pub finished_at: i64,
    /// Exit code; -1 when it could not run or timed out.
    pub exit_code: i32,
    /// Output as text (capped).
    pub output: String,
    /// The output was cut.
    pub truncated: bool,
    /// Why it could not run.
    pub error: String,
}

impl StoredJobRun {
    /// The run as the journal keeps it; `error` already clipped by the
    /// caller.
    pub fn of(run: &poll::JobRun, error: String) -> Self {
        Self {
            job: run.job,
            version: run.version,
            run: run.run,
            started_at: run.started_at,
            finished_at: run.finished_at,
            exit_code: run.exit_code,
            output: String::from_utf8_lossy(&run.output).into_owned(),
            truncated: run.truncated,
            error,
        }
    }
}

impl From<&StoredJobRun> for poll::JobRun {
    fn from(r: &StoredJobRun) -> Self {
        Self {
            job: r.job,
            version: r.version,
            run: r.run,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            output: r.output.clone().into_bytes(),
            truncated: r.truncated,
            error: r.error.clone(),
        }
    }
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// The zstd level of `base.bin`, written after every acknowledged change.
/// The link's level for a body this size (19) took 17 ms of CPU for the
/// 40-container host's 56 KB state, half of what a change cost the agent;
/// level 3 takes 0.4 ms for a file 10 % larger (13.6 KB against 12.3 KB),
/// and the file never crosses the link.
const BASE_LEVEL: i32 = 3;

/// Replaces `path` with `bytes` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A half-written file takes space a full disk needs.
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io { path: tmp, source: e });
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
    }
}

impl Store {
    /// Opens (and creates) the data directory.
    ///
    /// # Errors
    /// When it cannot be created or is not writable.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // It holds the poll counter, command results and stack variables:
        // the agent's alone (best effort: a volume may belong to another).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let probe = dir.join(".writable");
        match write_atomic(&probe, b"") {
            Ok(()) => {}
            // Full, not unwritable: the agent starts and polls (what cannot
            // be written waits in memory, commands wait until their start
            // can be recorded), instead of exiting at every restart.
            Err(StoreError::Io { ref source, .. })
                if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) =>
            {
                tracing::warn!("{}: no space left; the agent runs on, and writes when it can", dir.display());
            }
            Err(e) => return Err(e),
        }
        let _ = std::fs::remove_file(&probe);
        Ok(Self { dir })
    }

    /// The directory as it is, for a reader (`tern agent health`): nothing
    /// is created or written.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The EDGE_ID: the configured one, else the one generated on an earlier
    /// start, else a new random one (persisted before it is returned).
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn edge_id(&self, configured: Option<&str>) -> Result<String, StoreError> {
        if let Some(id) = configured {
            return Ok(id.to_owned());
        }
        let path = self.dir.join("edge_id");
        if let Some(b) = read_optional(&path)? {
            let id = String::from_utf8(b)
                .map_err(|_| StoreError::Corrupt { path: path.clone(), why: "not UTF-8".into() })?;
            let id = id.trim();
            if !id.is_empty() {
                return Ok(id.to_owned());
            }
        }
        let mut rng = fastrand::Rng::new();
        let id = format!("tern-{:016x}", rng.u64(..));
        write_atomic(&path, id.as_bytes())?;
        Ok(id)
    }

    fn load_json<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T, StoreError> {
        let path = self.dir.join(name);
        match read_optional(&path)? {
            None => Ok(T::default()),
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt { path: path.clone(), why: e.to_string() })
            }
        }
    }

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        write_atomic(&self.dir.join(name), &serde_json::to_vec(value).expect("serializable"))
    }

    /// The persisted counters (zero on first start).
    ///
    /// # Errors
    /// When the file cannot be read or is corrupt.
    pub fn meta(&self) -> Result<Meta, StoreError> {
        self.load_json("meta.json")
    }

    /// Persists the counters.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        self.save_json("meta.json", meta)
    }

    /// The command journal.
    ///
    /// # Errors
    /// When the file cannot be read or is corrupt.
    pub fn journal(&self) -> Result<Journal, StoreError> {
        self.load_json("journal.json")
    }

    /// Persists the command journal.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        self.save_json("journal.json", journal)
    }

    /// The acknowledged base state and its sequence number, if one was
    /// saved. Its root digest is checked as it loads.
    ///
    /// # Errors
    /// When the file cannot be read, or does not decode to a state with
    /// the digest it carries.
    pub fn base(&self) -> Result<Option<(u64, State)>, StoreError> {
        let path = self.dir.join("base.bin");
        let Some(file) = read_optional(&path)? else { return Ok(None) };
        let corrupt = |why: String| StoreError::Corrupt { path: path.clone(), why };
        let (seq, wire) = file.split_first_chunk::<8>().ok_or_else(|| corrupt("truncated".into()))?;
        let body = Codec::new(Limits::default())
            .map_err(|e| corrupt(e.to_string()))?
            .decode(wire)
            .map_err(|e| corrupt(e.to_string()))?;
        let state = State::from_snapshot(&body).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some((u64::from_le_bytes(*seq), state)))
    }

    /// Saves the acknowledged base state with its sequence number.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save_base(&self, seq: u64, state: &State) -> Result<(), StoreError> {
        let body = state.to_snapshot();
        let wire = Codec::new(Limits::default())
            .and_then(|mut c| c.encode_at(&body, BASE_LEVEL))
            .map_err(|e| StoreError::Corrupt { path: self.dir.join("base.bin"), why: e.to_string() })?;
        let mut file = seq.to_le_bytes().to_vec();
        file.extend_from_slice(&wire);
        write_atomic(&self.dir.join("base.bin"), &file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::state::{Container, Id};

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-store-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn everything_survives_a_restart() {
        let dir = tempdir("restart");
        let store = Store::open(&dir).unwrap();
        let id = store.edge_id(None).unwrap();
        assert!(id.starts_with("tern-"));
        let mut state = State::default();
        state.containers.insert(Container { id: Id([1; 32]), name: "web".into(), ..Container::default() });
        store.save_base(7, &state).unwrap();
        store
            .save_meta(&Meta { counter_end: 100, intervals: Some([60, 300, 0]), key_id: Some("00ff".into()) })
            .unwrap();
        let mut j = Journal { seen: 6, ..Journal::default() };
        j.running.insert(5);
        store.save_journal(&j).unwrap();

        let again = Store::open(&dir).unwrap();
        assert_eq!(again.edge_id(None).unwrap(), id, "the generated EDGE_ID is kept");
        assert_eq!(again.edge_id(Some("site-1")).unwrap(), "site-1", "a configured one wins");
        assert_eq!(again.base().unwrap(), Some((7, state)));
        assert_eq!(
            again.meta().unwrap(),
            Meta { counter_end: 100, intervals: Some([60, 300, 0]), key_id: Some("00ff".into()) }
        );
        assert_eq!(again.journal().unwrap(), j);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_first_start_has_nothing_and_corruption_is_reported() {
        let dir = tempdir("corrupt");
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.base().unwrap(), None);
        assert_eq!(store.meta().unwrap(), Meta::default());
        std::fs::write(dir.join("base.bin"), b"\x07\0\0\0\0\0\0\0\x01\x00garbage").unwrap();
        assert!(matches!(store.base(), Err(StoreError::Corrupt { .. })));
        std::fs::write(dir.join("meta.json"), b"{\"counter_end\": 1, \"surprise\": 2}").unwrap();
        assert!(matches!(store.meta(), Err(StoreError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
