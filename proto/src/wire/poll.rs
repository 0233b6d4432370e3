//! The poll request and reply, as hand-written types validated at decode.

use prost::Message;

use super::pb;
use crate::sync::delta::Delta;
use crate::sync::state::{Id, InvalidObject};

/// Why a poll message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// Not a protobuf encoding of the message.
    #[error("undecodable poll message: {0}")]
    Decode(String),
    /// A field holds a value this build does not accept.
    #[error("invalid poll message: {0}")]
    Invalid(#[from] InvalidObject),
    /// A command without an action this build knows.
    #[error("command {0} has no action this agent knows")]
    UnknownAction(u64),
    /// More than a poll may carry (see [`limits`]).
    #[error("too much in one poll: {0}")]
    TooLarge(String),
}

/// What one poll request may carry at most. The server refuses a poll over
/// any of these before anything in it reaches the database, so one agent
/// cannot hold the server; the counts are checked on the encoded bytes,
/// before they are decoded, so a small body that would decode into
/// millions of empty records costs nothing. An honest agent sends far less
/// (100 results and 512 KiB of them a poll).
pub mod limits {
    /// Command results in one poll.
    pub const RESULTS: usize = 256;
    /// Job runs in one poll.
    pub const JOB_RUNS: usize = 256;
    /// Bytes of output in one result or job run (the agent keeps the last
    /// 64 KiB; as text, bytes that are not UTF-8 may grow threefold).
    pub const OUTPUT: usize = 256 * 1024;
    /// Bytes of error text in one result or job run (the agent sends 500).
    pub const ERROR: usize = 4 * 1024;
    /// Bytes of outputs and errors in one poll.
    pub const RESULT_BYTES: usize = 2 * 1024 * 1024;
    /// Objects added, changed or removed in one delta (a first snapshot of
    /// a host with thousands of containers and images fits).
    pub const DELTA_OBJECTS: usize = 65_536;
    /// Fields of those objects, each entry of a list counted (a container's
    /// variables, labels, ports, mounts): a container with five million
    /// empty variables fits 16 MiB but not this. 40 containers come to
    /// about 2,000.
    pub const DELTA_FIELDS: usize = 1_048_576;
}

/// Counts what an encoded `PollRequest` holds against [`limits`] without
/// decoding it, and stops at the first limit passed: the work it does is
/// bounded by the limits, not by what an agent sends (2.79 million results
/// in 16 MiB took 3.3 s to count whole in a debug build).
///
/// # Errors
/// [`PollError::TooLarge`] naming the first limit passed, or
/// [`PollError::Decode`] when the bytes are not protobuf.
pub fn check_limits(bytes: &[u8]) -> Result<(), PollError> {
    use super::fields::records;
    let bad = |e: super::fields::FieldError| PollError::Decode(e.to_string());
    // `count` went past `limit`: refused at once.
    let over = |count: usize, limit: usize, what: &str| -> Result<(), PollError> {
        if count > limit {
            return Err(PollError::TooLarge(format!("more than {limit} {what} (at most {limit})")));
        }
        Ok(())
    };
    let (mut results, mut job_runs, mut objects, mut result_bytes) = (0usize, 0usize, 0usize, 0usize);
    let mut fields = 0usize;
    // The fields of one object (its records), counted into `fields`.
    let count_fields = |object: &[u8], fields: &mut usize| -> Result<(), PollError> {
        for r in records(object) {
            r.map_err(bad)?;
            *fields += 1;
            over(*fields, limits::DELTA_FIELDS, "fields in the delta's objects")?;
        }
        Ok(())
    };
    // Output and error sizes of one result (fields 5 and 3) or job run (7 and 9).
    let mut sizes = |record: &[u8], output: u32, error: u32| -> Result<(), PollError> {
        for r in records(record) {
            let (field, value) = r.map_err(bad)?;
            let (limit, what) = match field {
                f if f == output => (limits::OUTPUT, "output"),
                f if f == error => (limits::ERROR, "error text"),
                _ => continue,
            };
            if value.len() > limit {
                return Err(PollError::TooLarge(format!(
                    "{} bytes of {what} in one result (at most {limit})",
                    value.len()
                )));
            }
            result_bytes += value.len();
            over(result_bytes, limits::RESULT_BYTES, "bytes of results")?;
        }
        Ok(())
    };
    for r in records(bytes) {
        let (field, value) = r.map_err(bad)?;
        match field {
            3 => {
                results += 1;
                over(results, limits::RESULTS, "command results")?;
                sizes(value, 5, 3)?;
            }
            7 => {
                job_runs += 1;
                over(job_runs, limits::JOB_RUNS, "job runs")?;
                sizes(value, 7, 9)?;
            }
            2 => {
                // Delta: the kinds are fields 3 to 6, each a KindDelta whose
                // removed (1, packed varints), changed (2) and added (3)
                // entries are objects.
                for kind in records(value) {
                    let (field, kind) = kind.map_err(bad)?;
                    if !(3..=6).contains(&field) {
                        continue;
                    }
                    for entry in records(kind) {
                        let (field, entry) = entry.map_err(bad)?;
                        match field {
                            1 => objects += entry.iter().filter(|b| *b & 0x80 == 0).count(),
                            // A patch: its `set` (2) is an object's fields,
                            // its `cleared` (3) field numbers.
                            2 => {
                                objects += 1;
                                for part in records(entry) {
                                    let (n, part) = part.map_err(bad)?;
                                    match n {
                                        2 => count_fields(part, &mut fields)?,
                                        3 => fields += part.iter().filter(|b| *b & 0x80 == 0).count(),
                                        _ => fields += 1,
                                    }
                                    over(fields, limits::DELTA_FIELDS, "fields in the delta's objects")?;
                                }
                            }
                            3 => {
                                objects += 1;
                                count_fields(entry, &mut fields)?;
                            }
                            _ => {}
                        }
                        over(objects, limits::DELTA_OBJECTS, "objects in the delta")?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why the server refused a poll, as its sealed reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The counter is not above the last one accepted.
    Replay,
    /// Another agent (EDGE_ID) holds the environment.
    BoundToAnother,
    /// The server requires an AGENT_SECRET and the agent has none.
    AgentSecret,
    /// The body does not decode or is invalid.
    BadBody,
    /// More than a poll may carry.
    TooLarge,
    /// A code this build does not know (from a newer server).
    Other,
}

/// A refused poll, from its sealed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub code: RefusalCode,
    /// For a replay: the highest counter the server accepted.
    pub last_counter: u64,
    /// What was wrong, for the log.
    pub detail: String,
}

/// What to do to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOp {
    /// `docker start`.
    Start,
    /// `docker stop`.
    Stop,
    /// `docker restart`.
    Restart,
    /// `docker kill`.
    Kill,
    /// `docker pause`.
    Pause,
    /// `docker unpause`.
    Unpause,
    /// `docker rm --force --volumes`.
    Remove,
}

/// A command's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Act on a container.
    Container(ContainerOp, Id),
    /// Pull an image by reference.
    ImagePull(String),
    /// Remove an image by id or reference.
    ImageRemove(String),
    /// Remove a volume by name.
    VolumeRemove(String),
    /// Remove a network by id.
    NetworkRemove(Id),
    /// The last `tail` lines of a container's logs (0: the agent's default).
    ContainerLogs(Id, u32),
    /// Deploy or redeploy a compose stack.
    StackDeploy(StackSpec),
    /// Remove a compose stack by name.
    StackRemove(String),
    /// Run a job once (no cron), or keep it and run it on its schedule.
    Job(JobSpec),
    /// Stop scheduling a job (by the server's job id).
    JobRemove(u64),
    /// Fetch an image the server holds, as a transfer, and load it.
    ImageFetch(ImageFetch),
    /// Update the agent itself to an image the server holds.
    AgentUpdate(AgentUpdate),
}

/// An agent update: the image (fetched as [`Action::ImageFetch`] does) and
/// how long the new agent has to poll before the old one is put back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentUpdate {
    /// The agent image.
    pub image: ImageFetch,
    /// Seconds the new agent has to poll; 0: the agent's default.
    pub timeout_s: u32,
    /// The server's number for this update: a rollback's note names it,
    /// so the same update is not tried again.
    pub update: u64,
}

/// The phase of a stack deploy whose images the agent is fetching from the
/// server (the stack is not touched yet).
pub const PHASE_FETCHING_IMAGES: &str = "fetching images";

/// An image to fetch from the server (see `wire::transfer`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFetch {
    /// The tag it gets.
    pub reference: String,
    /// Its config's digest (`sha256:` and 64 hex digits).
    pub image_id: String,
}

/// A compose stack to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StackSpec {
    /// The compose project name.
    pub name: String,
    /// The compose file (YAML).
    pub compose: String,
    /// Variables for `${VAR}` interpolation.
    pub env: std::collections::BTreeMap<String, String>,
    /// The server's version of the stack.
    pub version: u32,
    /// The services' images the server holds, fetched as transfers before
    /// the stack is deployed (pre-fetch, then swap); the others are pulled
    /// from their registry as before.
    pub images: Vec<ImageFetch>,
    /// Configuration files shipped with the stack: their paths relative to
    /// the stack's directory (checked by [`crate::stack::check_file_path`]),
    /// and their bytes.
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// An edge job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobSpec {
    /// The server's job id.
    pub job: u64,
    /// The shell script, run on the host.
    pub script: String,
    /// The helper image; empty: the agent's default.
    pub image: String,
    /// 5-field cron schedule; empty: run once, now.
    pub cron: String,
    /// Kill a run after this many seconds (0: the agent's default).
    pub timeout_s: u32,
    /// The server's version of the job.
    pub version: u32,
}

/// One run of a scheduled job, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRun {
    /// The server's job id.
    pub job: u64,
    /// The job's version that ran.
    pub version: u32,
    /// Agent-assigned, increasing per job.
    pub run: u64,
    /// When it started (seconds since the epoch).
    pub started_at: i64,
    /// When it ended.
    pub finished_at: i64,
    /// The exit code; -1 when it could not run or timed out.
    pub exit_code: i32,
    /// stdout and stderr, capped to the last 64 KiB.
    pub output: Vec<u8>,
    /// The output was cut.
    pub truncated: bool,
    /// Why it could not run.
    pub error: String,
}

impl JobRun {
    fn to_pb(&self) -> pb::JobRun {
        pb::JobRun {
            job: self.job,
            version: self.version,
            run: self.run,
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.exit_code,
            output: self.output.clone(),
            truncated: self.truncated,
            error: self.error.clone(),
        }
    }

    fn from_pb(r: pb::JobRun) -> Self {
        Self {
            job: r.job,
            version: r.version,
            run: r.run,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            output: r.output,
            truncated: r.truncated,
            error: r.error,
        }
    }
}

/// A command for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Unique per environment, increasing.
    pub id: u64,
    /// What to do.
    pub action: Action,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultStatus {
    /// It worked.
    Ok,
    /// The engine refused or failed; see the error text.
    Failed,
    /// The agent did not understand the command.
    Rejected,
    /// Not an end: a step of a long command (see `phase`).
    Progress,
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    /// The command's id.
    pub id: u64,
    /// How it ended.
    pub status: ResultStatus,
    /// The engine's error text, when it failed.
    pub error: String,
    /// When it ended, in seconds since the epoch.
    pub finished_at: i64,
    /// What it printed (logs), capped by the agent.
    pub output: Vec<u8>,
    /// For a progress result: the step ("deploying", "removing").
    pub phase: String,
}

/// Poll intervals in seconds; 0 disables a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Heartbeat.
    pub ping: u32,
    /// State snapshot.
    pub snapshot: u32,
    /// Command check.
    pub command: u32,
}

/// Who is polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// The agent's EDGE_ID.
    pub edge_id: String,
}

/// The body an agent sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollRequest {
    /// Sequence number of the acknowledged base state the delta applies to.
    pub base: u64,
    /// The state change, when there is one.
    pub delta: Option<Delta>,
    /// Results of commands run since the last acknowledged poll.
    pub results: Vec<CommandResult>,
    /// Sent on first contact and after an upgrade.
    pub agent: Option<AgentInfo>,
    /// The highest command id the agent has recorded as received (0: not
    /// sent); only when it moved since the last poll that got a reply.
    pub commands_seen: u64,
    /// The intervals the agent runs with, on the first poll after a start
    /// and after it applied new ones.
    pub intervals: Option<Intervals>,
    /// Runs of scheduled jobs not yet acknowledged.
    pub job_runs: Vec<JobRun>,
    /// Held session: hold the reply up to this many seconds (0: answer at
    /// once); the agent's keepalive period.
    pub hold: u32,
    /// Why the agent polls instead of holding a session, when that changed
    /// ("-": it holds one again); empty otherwise.
    pub fallback: String,
}

/// The body the server replies with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReply {
    /// The sequence number of the state the server now holds.
    pub acked: u64,
    /// The delta could not be applied: send the whole state.
    pub resync: bool,
    /// Commands due.
    pub commands: Vec<Command>,
    /// New intervals, only when they changed.
    pub intervals: Option<Intervals>,
    /// Ids of the results the server stored.
    pub results_acked: Vec<u64>,
    /// (job, run) of the job runs the server stored.
    pub job_runs_acked: Vec<(u64, u64)>,
    /// Ids of commands whose action this build does not know or cannot
    /// read (from a newer server). Never encoded; the agent reports each
    /// as rejected instead of failing the whole reply.
    pub unknown_commands: Vec<u64>,
    /// Set only in the reply to a refused poll.
    pub refused: Option<Refused>,
    /// Credentials for the registries this reply's commands pull from.
    pub registries: Vec<RegistryAuth>,
}

/// Most registries one reply carries credentials for.
pub const MAX_REGISTRIES: usize = 32;

/// Longest registry name, user name or password, in bytes.
pub const MAX_REGISTRY_FIELD: usize = 4096;

/// A private registry's credentials, for the pulls of one reply's
/// commands. Its `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry as image references name it (`10.0.0.5:5000`,
    /// `registry.example.com`; `docker.io` for Docker Hub).
    pub server: String,
    /// The user.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Intervals {
    fn to_pb(self) -> pb::Intervals {
        pb::Intervals { ping: self.ping, snapshot: self.snapshot, command: self.command }
    }

    fn from_pb(i: pb::Intervals) -> Self {
        Self { ping: i.ping, snapshot: i.snapshot, command: i.command }
    }
}

fn id(bytes: &[u8]) -> Result<Id, InvalidObject> {
    <[u8; 32]>::try_from(bytes).map(Id).map_err(|_| InvalidObject::BadIdLength(bytes.len()))
}

impl Action {
    fn to_pb(&self) -> pb::command::Action {
        use pb::command::Action as A;
        match self {
            Action::Container(op, cid) => A::Container(pb::ContainerCommand {
                op: match op {
                    ContainerOp::Start => pb::ContainerOp::Start,
                    ContainerOp::Stop => pb::ContainerOp::Stop,
                    ContainerOp::Restart => pb::ContainerOp::Restart,
                    ContainerOp::Kill => pb::ContainerOp::Kill,
                    ContainerOp::Pause => pb::ContainerOp::Pause,
                    ContainerOp::Unpause => pb::ContainerOp::Unpause,
                    ContainerOp::Remove => pb::ContainerOp::Remove,
                } as i32,
                container_id: cid.0.to_vec(),
            }),
            Action::ImagePull(r) => A::Image(pb::ImageCommand { op: pb::ImageOp::Pull as i32, reference: r.clone() }),
            Action::ImageRemove(r) => {
                A::Image(pb::ImageCommand { op: pb::ImageOp::Remove as i32, reference: r.clone() })
            }
            Action::VolumeRemove(name) => A::VolumeRemove(pb::VolumeRemove { name: name.clone() }),
            Action::NetworkRemove(nid) => A::NetworkRemove(pb::NetworkRemove { network_id: nid.0.to_vec() }),
            Action::ContainerLogs(cid, tail) => {
                A::ContainerLogs(pb::ContainerLogs { container_id: cid.0.to_vec(), tail: *tail })
            }
            Action::StackDeploy(st) => A::StackDeploy(pb::StackDeploy {
                name: st.name.clone(),
                compose: st.compose.clone(),
                env: st.env.clone(),
                version: st.version,
                images: st
                    .images
                    .iter()
                    .map(|f| pb::ImageFetch { reference: f.reference.clone(), image_id: f.image_id.clone() })
                    .collect(),
                files: st.files.clone(),
            }),
            Action::StackRemove(name) => A::StackRemove(pb::StackRemove { name: name.clone() }),
            Action::Job(j) => A::Job(pb::Job {
                job: j.job,
                script: j.script.clone(),
                image: j.image.clone(),
                cron: j.cron.clone(),
                timeout_s: j.timeout_s,
                version: j.version,
            }),
            Action::JobRemove(job) => A::JobRemove(pb::JobRemove { job: *job }),
            Action::ImageFetch(f) => {
                A::ImageFetch(pb::ImageFetch { reference: f.reference.clone(), image_id: f.image_id.clone() })
            }
            Action::AgentUpdate(u) => A::AgentUpdate(pb::AgentUpdate {
                image: Some(pb::ImageFetch {
                    reference: u.image.reference.clone(),
                    image_id: u.image.image_id.clone(),
                }),
                timeout_s: u.timeout_s,
                update: u.update,
            }),
        }
    }

    fn from_pb(action: Option<pb::command::Action>) -> Result<Self, PollError> {
        use pb::command::Action as A;
        Ok(match action {
            Some(A::Container(cc)) => {
                let op = match pb::ContainerOp::try_from(cc.op) {
                    Ok(pb::ContainerOp::Start) => ContainerOp::Start,
                    Ok(pb::ContainerOp::Stop) => ContainerOp::Stop,
                    Ok(pb::ContainerOp::Restart) => ContainerOp::Restart,
                    Ok(pb::ContainerOp::Kill) => ContainerOp::Kill,
                    Ok(pb::ContainerOp::Pause) => ContainerOp::Pause,
                    Ok(pb::ContainerOp::Unpause) => ContainerOp::Unpause,
                    Ok(pb::ContainerOp::Remove) => ContainerOp::Remove,
                    _ => return Err(PollError::UnknownAction(0)),
                };
                Action::Container(op, id(&cc.container_id)?)
            }
            Some(A::Image(ic)) => match pb::ImageOp::try_from(ic.op) {
                Ok(pb::ImageOp::Pull) => Action::ImagePull(ic.reference),
                Ok(pb::ImageOp::Remove) => Action::ImageRemove(ic.reference),
                _ => return Err(PollError::UnknownAction(0)),
            },
            Some(A::VolumeRemove(v)) => Action::VolumeRemove(v.name),
            Some(A::NetworkRemove(n)) => Action::NetworkRemove(id(&n.network_id)?),
            Some(A::ContainerLogs(l)) => Action::ContainerLogs(id(&l.container_id)?, l.tail),
            Some(A::StackDeploy(st)) => {
                let mut images = Vec::with_capacity(st.images.len());
                for f in st.images {
                    if crate::wire::transfer::digest_bytes(&f.image_id).is_none() {
                        return Err(PollError::UnknownAction(0));
                    }
                    images.push(ImageFetch { reference: f.reference, image_id: f.image_id });
                }
                Action::StackDeploy(StackSpec {
                    name: st.name,
                    compose: st.compose,
                    env: st.env,
                    version: st.version,
                    images,
                    files: st.files,
                })
            }
            Some(A::StackRemove(st)) => Action::StackRemove(st.name),
            Some(A::Job(j)) => Action::Job(JobSpec {
                job: j.job,
                script: j.script,
                image: j.image,
                cron: j.cron,
                timeout_s: j.timeout_s,
                version: j.version,
            }),
            Some(A::JobRemove(j)) => Action::JobRemove(j.job),
            Some(A::ImageFetch(f)) => {
                if crate::wire::transfer::digest_bytes(&f.image_id).is_none() {
                    return Err(PollError::UnknownAction(0));
                }
                Action::ImageFetch(ImageFetch { reference: f.reference, image_id: f.image_id })
            }
            Some(A::AgentUpdate(u)) => {
                let f = u.image.unwrap_or_default();
                if crate::wire::transfer::digest_bytes(&f.image_id).is_none() {
                    return Err(PollError::UnknownAction(0));
                }
                Action::AgentUpdate(AgentUpdate {
                    image: ImageFetch { reference: f.reference, image_id: f.image_id },
                    timeout_s: u.timeout_s,
                    update: u.update,
                })
            }
            None => return Err(PollError::UnknownAction(0)),
        })
    }

    /// The action alone: a protobuf `Command` message without its id, so
    /// the same bytes as in a reply less the id. The server stores queued
    /// commands this way.
    pub fn encode(&self) -> Vec<u8> {
        pb::Command { id: 0, action: Some(self.to_pb()) }.encode_to_vec()
    }

    /// Decodes what [`Self::encode`] made.
    ///
    /// # Errors
    /// When the bytes are not a `Command` holding an action this build
    /// knows ([`PollError::UnknownAction`] then names command 0).
    pub fn decode(bytes: &[u8]) -> Result<Self, PollError> {
        Self::from_pb(pb::Command::decode(bytes).map_err(|e| PollError::Decode(e.to_string()))?.action)
    }
}

impl PollRequest {
    /// The protobuf encoding (before the body codec).
    pub fn encode(&self) -> Vec<u8> {
        pb::PollRequest {
            base: self.base,
            delta: self.delta.as_ref().map(|d| d.0.clone()),
            results: self
                .results
                .iter()
                .map(|r| pb::CommandResult {
                    id: r.id,
                    status: match r.status {
                        ResultStatus::Ok => pb::ResultStatus::Ok,
                        ResultStatus::Failed => pb::ResultStatus::Failed,
                        ResultStatus::Rejected => pb::ResultStatus::Rejected,
                        ResultStatus::Progress => pb::ResultStatus::Progress,
                    } as i32,
                    error: r.error.clone(),
                    finished_at: r.finished_at,
                    output: r.output.clone(),
                    phase: r.phase.clone(),
                })
                .collect(),
            agent: self
                .agent
                .as_ref()
                .map(|a| pb::AgentInfo { version: a.version.clone(), edge_id: a.edge_id.clone() }),
            commands_seen: self.commands_seen,
            intervals: self.intervals.map(Intervals::to_pb),
            job_runs: self.job_runs.iter().map(JobRun::to_pb).collect(),
            hold: self.hold,
            fallback: self.fallback.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes and validates a request; its counts are checked against
    /// [`limits`] before anything is decoded.
    ///
    /// # Errors
    /// When the bytes are not a valid request, or carry more than a poll
    /// may ([`PollError::TooLarge`]). The delta inside is checked
    /// later, against the base, by [`crate::sync::delta::apply`].
    pub fn decode(bytes: &[u8]) -> Result<Self, PollError> {
        check_limits(bytes)?;
        let p = pb::PollRequest::decode(bytes).map_err(|e| PollError::Decode(e.to_string()))?;
        let results = p
            .results
            .into_iter()
            .map(|r| {
                let status = match pb::ResultStatus::try_from(r.status) {
                    Ok(pb::ResultStatus::Ok) => ResultStatus::Ok,
                    Ok(pb::ResultStatus::Failed) => ResultStatus::Failed,
                    Ok(pb::ResultStatus::Rejected) => ResultStatus::Rejected,
                    Ok(pb::ResultStatus::Progress) => ResultStatus::Progress,
                    _ => return Err(InvalidObject::UnknownEnum { what: "ResultStatus", value: r.status }),
                };
                Ok(CommandResult {
                    id: r.id,
                    status,
                    error: r.error,
                    finished_at: r.finished_at,
                    output: r.output,
                    phase: r.phase,
                })
            })
            .collect::<Result<_, InvalidObject>>()?;
        Ok(Self {
            base: p.base,
            delta: p.delta.map(Delta),
            results,
            agent: p.agent.map(|a| AgentInfo { version: a.version, edge_id: a.edge_id }),
            commands_seen: p.commands_seen,
            intervals: p.intervals.map(Intervals::from_pb),
            job_runs: p.job_runs.into_iter().map(JobRun::from_pb).collect(),
            hold: p.hold,
            fallback: p.fallback,
        })
    }
}

impl PollReply {
    /// The protobuf encoding (before the body codec).
    pub fn encode(&self) -> Vec<u8> {
        let commands = self.commands.iter().map(|c| pb::Command { id: c.id, action: Some(c.action.to_pb()) }).collect();
        pb::PollReply {
            acked: self.acked,
            resync: self.resync,
            commands,
            intervals: self.intervals.map(Intervals::to_pb),
            results_acked: self.results_acked.clone(),
            job_runs_acked: self.job_runs_acked.iter().map(|&(job, run)| pb::JobRunAck { job, run }).collect(),
            refusal: self.refused.as_ref().map(|r| pb::Refusal {
                code: match r.code {
                    RefusalCode::Replay => pb::RefusalCode::Replay,
                    RefusalCode::BoundToAnother => pb::RefusalCode::BoundToAnother,
                    RefusalCode::AgentSecret => pb::RefusalCode::AgentSecret,
                    RefusalCode::BadBody => pb::RefusalCode::BadBody,
                    RefusalCode::TooLarge => pb::RefusalCode::TooLarge,
                    RefusalCode::Other => pb::RefusalCode::Unspecified,
                } as i32,
                last_counter: r.last_counter,
                detail: r.detail.clone(),
            }),
            registries: self
                .registries
                .iter()
                .map(|r| pb::RegistryAuth {
                    server: r.server.clone(),
                    username: r.username.clone(),
                    password: r.password.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decodes and validates a reply.
    ///
    /// # Errors
    /// When the bytes are not a valid reply. A command this build does not
    /// know lands in `unknown_commands` instead.
    pub fn decode(bytes: &[u8]) -> Result<Self, PollError> {
        let p = pb::PollReply::decode(bytes).map_err(|e| PollError::Decode(e.to_string()))?;
        if p.registries.len() > MAX_REGISTRIES {
            return Err(PollError::TooLarge(format!("{} registries (at most {MAX_REGISTRIES})", p.registries.len())));
        }
        let registries = p
            .registries
            .into_iter()
            .map(|r| {
                let long = [&r.server, &r.username, &r.password].iter().any(|f| f.len() > MAX_REGISTRY_FIELD);
                if long || r.server.is_empty() {
                    return Err(PollError::Decode("a registry's credentials are empty or too long".into()));
                }
                Ok(RegistryAuth { server: r.server, username: r.username, password: r.password })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut commands = Vec::with_capacity(p.commands.len());
        let mut unknown = Vec::new();
        for c in p.commands {
            match Action::from_pb(c.action) {
                Ok(action) => commands.push(Command { id: c.id, action }),
                Err(_) => unknown.push(c.id),
            }
        }
        Ok(Self {
            acked: p.acked,
            resync: p.resync,
            commands,
            intervals: p.intervals.map(Intervals::from_pb),
            results_acked: p.results_acked,
            job_runs_acked: p.job_runs_acked.into_iter().map(|a| (a.job, a.run)).collect(),
            unknown_commands: unknown,
            refused: p.refusal.map(|r| Refused {
                code: match pb::RefusalCode::try_from(r.code) {
                    Ok(pb::RefusalCode::Replay) => RefusalCode::Replay,
                    Ok(pb::RefusalCode::BoundToAnother) => RefusalCode::BoundToAnother,
                    Ok(pb::RefusalCode::AgentSecret) => RefusalCode::AgentSecret,
                    Ok(pb::RefusalCode::BadBody) => RefusalCode::BadBody,
                    Ok(pb::RefusalCode::TooLarge) => RefusalCode::TooLarge,
                    _ => RefusalCode::Other,
                },
                last_counter: r.last_counter,
                detail: r.detail,
            }),
            registries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stack's configuration files cost in its deploy command, on
    /// a fixed fixture: their paths and text, and 6 bytes of framing each
    /// (a map entry's tag and length, its key's and its value's), before
    /// the reply's compression. Nothing else.
    #[test]
    fn a_stacks_files_cost_their_bytes_and_six_more_each() {
        let plain = StackSpec { name: "web".into(), compose: "services: {}".into(), version: 2, ..Default::default() };
        let files: std::collections::BTreeMap<String, Vec<u8>> =
            [("conf/app.conf", "level=1\n"), ("motd", "hello from tern\n"), ("notes/readme.txt", "ops\n")]
                .into_iter()
                .map(|(p, t)| (p.to_owned(), t.as_bytes().to_vec()))
                .collect();
        let content: usize = files.iter().map(|(p, t)| p.len() + t.len()).sum();
        let with = StackSpec { files: files.clone(), ..plain.clone() };
        let (a, b) = (Action::StackDeploy(plain).encode(), Action::StackDeploy(with.clone()).encode());
        assert_eq!(content, 61);
        assert_eq!(b.len() - a.len(), content + 6 * files.len(), "{} -> {}", a.len(), b.len());
        assert_eq!(Action::decode(&b).unwrap(), Action::StackDeploy(with));
    }

    #[test]
    fn reply_round_trips() {
        let reply = PollReply {
            acked: 9,
            resync: false,
            commands: vec![
                Command { id: 1, action: Action::Container(ContainerOp::Stop, Id([3; 32])) },
                Command { id: 2, action: Action::ImagePull("nginx:1.25".into()) },
                Command { id: 3, action: Action::VolumeRemove("data".into()) },
                Command { id: 4, action: Action::NetworkRemove(Id([4; 32])) },
            ],
            intervals: Some(Intervals { ping: 60, snapshot: 300, command: 60 }),
            results_acked: vec![1, 2],
            job_runs_acked: vec![(4, 2)],
            unknown_commands: vec![],
            refused: None,
            registries: vec![RegistryAuth {
                server: "10.0.0.5:5000".into(),
                username: "fleet".into(),
                password: "s3cret".into(),
            }],
        };
        assert!(!format!("{reply:?}").contains("s3cret"), "Debug shows no password");
        let refused = PollReply {
            refused: Some(Refused { code: RefusalCode::Replay, last_counter: 41, detail: "replayed".into() }),
            ..PollReply::default()
        };
        assert_eq!(PollReply::decode(&refused.encode()).unwrap(), refused);
        assert_eq!(PollReply::decode(&reply.encode()).unwrap(), reply);
        // A command from a newer server does not cost the rest of the reply.
        let newer = pb::PollReply {
            acked: 3,
            commands: vec![
                pb::Command { id: 7, action: None },
                pb::Command {
                    id: 8,
                    action: Some(pb::command::Action::NetworkRemove(pb::NetworkRemove { network_id: vec![1; 5] })),
                },
                pb::Command {
                    id: 9,
                    action: Some(pb::command::Action::VolumeRemove(pb::VolumeRemove { name: "v".into() })),
                },
            ],
            ..pb::PollReply::default()
        };
        let got = PollReply::decode(&newer.encode_to_vec()).unwrap();
        assert_eq!(got.unknown_commands, vec![7, 8]);
        assert_eq!(got.commands, vec![Command { id: 9, action: Action::VolumeRemove("v".into()) }]);
    }

    #[test]
    fn a_single_action_round_trips() {
        let actions = [
            Action::Container(ContainerOp::Restart, Id([5; 32])),
            Action::Container(ContainerOp::Remove, Id([6; 32])),
            Action::ImagePull("nginx:1.25".into()),
            Action::ImageRemove("sha256:abc".into()),
            Action::VolumeRemove("data".into()),
            Action::NetworkRemove(Id([7; 32])),
        ];
        for a in actions {
            assert_eq!(Action::decode(&a.encode()).unwrap(), a);
        }
        assert!(Action::decode(&[]).is_err(), "a command without an action");
        assert!(Action::decode(&[0xff]).is_err());
    }

    #[test]
    fn request_round_trips_and_rejects_garbage() {
        let req = PollRequest {
            base: 3,
            delta: None,
            results: vec![CommandResult {
                output: Vec::new(),
                phase: String::new(),
                id: 1,
                status: ResultStatus::Failed,
                error: "no such container".into(),
                finished_at: 5,
            }],
            agent: Some(AgentInfo { version: "0.1.0".into(), edge_id: "edge-1".into() }),
            commands_seen: 12,
            intervals: Some(Intervals { ping: 60, snapshot: 0, command: 5 }),
            hold: 290,
            fallback: "EDGE_SESSION=off".into(),
            job_runs: vec![JobRun {
                job: 4,
                version: 1,
                run: 2,
                started_at: 10,
                finished_at: 12,
                exit_code: 3,
                output: b"done\n".to_vec(),
                truncated: true,
                error: String::new(),
            }],
        };
        assert_eq!(PollRequest::decode(&req.encode()).unwrap(), req);
        assert!(PollRequest::decode(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn a_small_body_that_would_decode_into_millions_of_records_is_refused_before_decoding() {
        // 2 bytes per empty result: the 1,441-byte poll of the report
        // decoded into 2.79 million of them.
        let mut bomb = Vec::new();
        for _ in 0..(limits::RESULTS + 1) {
            bomb.extend_from_slice(&[0x1a, 0x00]);
        }
        let e = PollRequest::decode(&bomb).unwrap_err();
        assert_eq!(e, PollError::TooLarge(format!("more than {0} command results (at most {0})", limits::RESULTS)));
        let mut runs = Vec::new();
        for _ in 0..(limits::JOB_RUNS + 1) {
            runs.extend_from_slice(&[0x3a, 0x00]);
        }
        assert!(matches!(PollRequest::decode(&runs), Err(PollError::TooLarge(_))));
        // A delta with too many removed objects (packed varints in one record).
        let removed = vec![0x01u8; limits::DELTA_OBJECTS + 1];
        let kind = pb::KindDelta { removed: removed.iter().map(|&b| u32::from(b)).collect(), ..Default::default() };
        let delta = pb::Delta { containers: Some(kind), ..Default::default() };
        let req = pb::PollRequest { delta: Some(delta), ..Default::default() };
        let e = PollRequest::decode(&req.encode_to_vec()).unwrap_err();
        assert!(matches!(&e, PollError::TooLarge(t) if t.contains("more than 65536 objects in the delta")), "{e}");
        // One added container with two million empty variables.
        let container = [0x82u8, 0x01, 0x00].repeat(2_000_000);
        let kind = pb::KindDelta { added: vec![container], ..Default::default() };
        let delta = pb::Delta { containers: Some(kind), ..Default::default() };
        let req = pb::PollRequest { delta: Some(delta), ..Default::default() };
        let e = PollRequest::decode(&req.encode_to_vec()).unwrap_err();
        assert!(matches!(&e, PollError::TooLarge(t) if t.contains("more than 1048576 fields")), "{e}");
        // Oversized output or error text in one result.
        let big = |output: usize, error: usize| PollRequest {
            results: vec![CommandResult {
                id: 1,
                status: ResultStatus::Ok,
                error: "e".repeat(error),
                finished_at: 0,
                output: vec![b'x'; output],
                phase: String::new(),
            }],
            ..PollRequest::default()
        };
        assert!(PollRequest::decode(&big(limits::OUTPUT, limits::ERROR).encode()).is_ok(), "at the limits");
        assert!(matches!(PollRequest::decode(&big(limits::OUTPUT + 1, 0).encode()), Err(PollError::TooLarge(_))));
        assert!(matches!(PollRequest::decode(&big(0, limits::ERROR + 1).encode()), Err(PollError::TooLarge(_))));
        // And in all results together.
        let many = PollRequest {
            results: (0..9).flat_map(|_| big(limits::OUTPUT, 0).results).collect(),
            ..PollRequest::default()
        };
        assert!(
            matches!(PollRequest::decode(&many.encode()), Err(PollError::TooLarge(t)) if t.contains("bytes of results"))
        );
        // At the count limits, fine.
        let ok = PollRequest {
            results: (0..limits::RESULTS as u64)
                .flat_map(|i| big(0, 0).results.into_iter().map(move |r| CommandResult { id: i, ..r }))
                .collect(),
            ..PollRequest::default()
        };
        assert_eq!(PollRequest::decode(&ok.encode()).unwrap().results.len(), limits::RESULTS);
    }
}
