//! The poll endpoint's logic, apart from HTTP: authenticate, decode, apply
//! the delta, store the results, answer with the commands due. The HTTP
//! layer only moves bytes and maps a [`Refusal`] to a status code.
//!
//! After the state part, a poll is handled in this order:
//!
//! 1. each command result is stored (once: a repeated one changes nothing)
//!    and its id acknowledged, also when it names no command of this
//!    environment, so that the agent drops it either way;
//!    likewise each run of a scheduled job (`job_runs`);
//! 2. `commands_seen` marks the commands the agent recorded delivered;
//! 3. the intervals the agent reports are noted, and the reply carries the
//!    configured ones only while the agent's are unknown or differ;
//! 4. the reply carries every queued command the agent has not confirmed,
//!    oldest first, so a lost reply loses no command.
//!
//! A resync reply carries all of that too: the agent's results and
//! acknowledgements do not depend on the state part.

use crate::auth::{AuthError, RequestEnvelope, RequestHeader, Secret, seal_reply};
use crate::server::secrets::SecretKey;
use crate::server::store::StoreError;
use crate::server::store::pool::Pool;
use crate::server::store::prelude::*;
use crate::sync::session::{Received, Replica};
use crate::wire::codec::{Codec, CodecError};
use crate::wire::poll::{PollError, PollReply, PollRequest, RefusalCode, Refused};

/// The most commands one reply carries; the rest follow in later replies.
pub const MAX_COMMANDS_PER_REPLY: usize = 100;

/// Why a poll was refused. Nothing was changed (but for
/// [`Refusal::BodyMac`], which burns the counter).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope, or an unknown environment, or a bad MAC: the
    /// answer does not say which, to a client that proved nothing.
    #[error("unauthenticated poll")]
    Unauthenticated,
    /// An authentic header with a body that is not the one it was sealed
    /// with: the header's counter is burnt (see [`burn`]), so whoever
    /// holds a genuine header gets one try at a body per genuine poll.
    #[error("the body does not match its header")]
    BodyMac,
    /// A replayed counter. The highest counter accepted is not a secret:
    /// an agent that lost its data directory (and so its counter) jumps
    /// above it and carries on; a replay stays refused either way. The
    /// agent is told in a sealed reply, never in text it would parse.
    #[error("replayed poll; last accepted counter {0}")]
    Replay(u64),
    /// Another agent holds this environment (a second agent with the same
    /// token); an operator can reset the binding.
    #[error("environment {0} is bound to another agent (EDGE_ID); reset the binding to move it")]
    BoundToAnother(u64),
    /// The server has an `AGENT_SECRET` and the agent has none: its poll
    /// proves it holds the environment's secret, so its operator is told
    /// what to fix (a stranger learns nothing). An agent with a *wrong*
    /// AGENT_SECRET cannot be told from a forgery and gets
    /// [`Self::Unauthenticated`].
    #[error("the server requires AGENT_SECRET and the agent's does not match")]
    AgentSecret,
    /// The body does not decode.
    #[error("bad body: {0}")]
    BadBody(String),
    /// The body carries more than a poll may (see
    /// [`crate::wire::poll::limits`]), or is over the codec's size limits.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<CodecError> for Refusal {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::EncodedTooLarge { .. } | CodecError::DecodedTooLarge { .. } => Self::TooLarge(e.to_string()),
            e => Self::BadBody(e.to_string()),
        }
    }
}

impl From<PollError> for Refusal {
    fn from(e: PollError) -> Self {
        match e {
            PollError::TooLarge(what) => Self::TooLarge(what),
            e => Self::BadBody(e.to_string()),
        }
    }
}

/// A poll whose header proved it comes from an environment's agent: what
/// the rest of the poll is checked, applied and sealed with.
#[derive(Debug)]
pub struct Authenticated {
    /// The environment.
    pub environment: u64,
    /// The poll's counter.
    pub counter: u64,
    /// The key the request was sealed with, and its reply is.
    key: Secret,
    header: RequestHeader,
    /// A refusal the header alone decides: its body is never read.
    early: Option<Early>,
}

/// See [`Authenticated::early_refusal`].
#[derive(Debug, Clone, Copy)]
enum Early {
    /// The counter is not above this last accepted one: a replay, or an
    /// agent whose counter is behind (it jumps, then polls again, and a
    /// second agent is then told it is one).
    Replay(u64),
    /// Sealed with the environment's secret alone while the server
    /// requires an AGENT_SECRET.
    AgentSecret,
}

impl Authenticated {
    /// A refusal decided by the header alone, before any of the body is
    /// read: a replayed counter, a missing AGENT_SECRET. Sealed like any
    /// reply (see [`seal_refusal`]), so the agent can act on it.
    pub fn early_refusal(&self) -> Option<Refusal> {
        self.early.map(|e| match e {
            Early::Replay(last) => Refusal::Replay(last),
            Early::AgentSecret => Refusal::AgentSecret,
        })
    }
}

/// Checks a request's header against the environment it names, before
/// its body is read (`body_len` is the body's length, from the request's
/// `Content-Length`).
///
/// # Errors
/// [`Refusal::Unauthenticated`] for an unknown environment or a header
/// sealed with another key; [`Refusal::Store`].
pub fn authenticate(
    store: &dyn Transaction,
    header: &RequestHeader,
    body_len: usize,
) -> Result<Authenticated, Refusal> {
    let (env, agent_secret) = match store.poll_credentials(header.environment) {
        Ok(found) => found,
        Err(StoreError::NotFound(_)) => return Err(Refusal::Unauthenticated),
        Err(e) => return Err(e.into()),
    };
    authenticate_with(header, body_len, &env.secret, env.last_counter, agent_secret.as_deref())
}

/// [`authenticate`] against an environment's secret and last accepted
/// counter, and the server's AGENT_SECRET, as looked up. No I/O.
///
/// # Errors
/// [`Refusal::Unauthenticated`] for a header sealed with another key.
pub fn authenticate_with(
    header: &RequestHeader,
    body_len: usize,
    secret: &Secret,
    last_counter: u64,
    agent_secret: Option<&str>,
) -> Result<Authenticated, Refusal> {
    let key = secret.with_agent_secret(agent_secret);
    let authenticated = |key, early| Authenticated {
        environment: header.environment,
        counter: header.counter,
        key,
        header: header.clone(),
        early,
    };
    match header.verify(&key, body_len, last_counter) {
        Ok(()) => Ok(authenticated(key, None)),
        Err(AuthError::Replay { last, .. }) => Ok(authenticated(key, Some(Early::Replay(last)))),
        // The right environment secret without the server's AGENT_SECRET
        // mixed in (a replayed counter proves the secret just as well).
        Err(_)
            if agent_secret.is_some_and(|s| !s.is_empty())
                && header.verify(secret, body_len, last_counter) != Err(AuthError::BadMac) =>
        {
            Ok(authenticated(secret.clone(), Some(Early::AgentSecret)))
        }
        Err(_) => Err(Refusal::Unauthenticated),
    }
}

/// Checks the body against its authenticated header, then decodes and
/// validates it, its counts against [`crate::wire::poll::limits`] before
/// anything is decoded. Touches no store: call it outside the store's lock.
///
/// # Errors
/// [`Refusal::BodyMac`] (then [`burn`] the counter), [`Refusal::BadBody`],
/// [`Refusal::TooLarge`].
pub fn open(auth: &Authenticated, codec: &mut Codec, body: &[u8]) -> Result<PollRequest, Refusal> {
    auth.header.verify_body(&auth.key, body).map_err(|_| Refusal::BodyMac)?;
    Ok(PollRequest::decode(&codec.decode(body)?)?)
}

/// A body that did not match its authentic header burns the header's
/// counter: the next try needs the agent's next genuine poll.
///
/// # Errors
/// When the database fails.
pub fn burn(store: &dyn Transaction, auth: &Authenticated) -> Result<(), StoreError> {
    store.burn_counter(auth.environment, auth.counter)
}

/// Applies a decoded poll on `store`, one transaction ([`Pool::write`]
/// gives it, and rolls it back on an `Err`): a refusal or an error leaves
/// nothing of it behind. Returns the reply to seal.
///
/// # Errors
/// [`Refusal::Replay`], [`Refusal::BoundToAnother`], [`Refusal::Store`].
pub fn apply(
    store: &dyn Transaction,
    auth: &Authenticated,
    request: &PollRequest,
    now: i64,
) -> Result<PollReply, Refusal> {
    let env_id = auth.environment;
    let edge_id = request.agent.as_ref().map(|a| a.edge_id.as_str());
    // Not accepted: another agent is bound, or a poll with a higher
    // counter got in since this one's header was checked.
    if !store.accept_poll(env_id, auth.counter, edge_id, now)? {
        let now_env = store.environment(env_id)?;
        let another = matches!((&now_env.edge_id, edge_id), (Some(bound), Some(named)) if bound != named);
        return Err(if another {
            Refusal::BoundToAnother(env_id)
        } else if auth.counter <= now_env.last_counter {
            Refusal::Replay(now_env.last_counter)
        } else {
            Refusal::BoundToAnother(env_id)
        });
    }
    if let Some(agent) = &request.agent {
        // Kept short: what an agent says is shown, not trusted.
        let version: String = agent.version.chars().filter(|c| !c.is_control()).take(64).collect();
        store.set_agent_version(env_id, &version)?;
    }
    // A poll without a state, or with a snapshot that says nothing changed
    // since the stored state (most of them), is answered from the sequence
    // numbers: no state is read or decoded.
    let unchanged = request.delta.as_ref().is_some_and(|d| d.is_empty() && d.root().is_empty());
    let mut reply = if unchanged && store.replica_seqs(env_id)?.0 == request.base {
        // What `apply_state` would do, without decoding the stored state:
        // an empty delta on the current state leaves it as it is.
        store.confirm_snapshot(env_id, now)?;
        PollReply { acked: request.base, ..PollReply::default() }
    } else if request.delta.is_none() {
        let (seq, prev_seq) = store.replica_seqs(env_id)?;
        match Replica::receive_nothing(seq, prev_seq, request.base) {
            Received::Acked(seq) => PollReply { acked: seq, ..PollReply::default() },
            Received::Resync => PollReply { acked: seq, resync: true, ..PollReply::default() },
        }
    } else {
        apply_state(store, env_id, request, now)?
    };
    for result in &request.results {
        let stored = store.store_result(env_id, result, now)?;
        if stored && result.status != crate::wire::poll::ResultStatus::Progress {
            // A staged agent update moves on with its results; a stack's
            // failed deploy is tried again later.
            crate::server::domain::rollouts::advance(store, result.id, now)?;
            crate::server::domain::stacks::after_result(store, env_id, result, now)?;
        }
        reply.results_acked.push(result.id);
    }
    // Runs of scheduled jobs: stored once each, acknowledged every time
    // (also when they name no job sent here), so the agent drops them.
    for run in &request.job_runs {
        store.store_job_run(env_id, run, now)?;
        reply.job_runs_acked.push((run.job, run.run));
    }
    if request.commands_seen > 0 {
        store.mark_seen(env_id, request.commands_seen, now)?;
    }
    if let Some(intervals) = request.intervals {
        store.set_agent_intervals(env_id, intervals)?;
    }
    let (effective, agent) = store.poll_intervals(env_id)?;
    if agent != Some(effective) {
        reply.intervals = Some(effective);
    }
    reply.commands = store.commands_due(env_id, now, MAX_COMMANDS_PER_REPLY)?;
    Ok(reply)
}

/// Records how the agent reaches the server, when that changed (see
/// [`crate::server::store::fleet::FleetStore::set_session`]): a session
/// frame with a new keepalive period, or a poll saying why the agent polls
/// (`fallback`, sent once when that changes; "-" clears it).
///
/// # Errors
/// When the database fails.
pub fn record_mode(
    store: &dyn Transaction,
    environment: u64,
    request: &PollRequest,
    via: crate::server::http::Via,
) -> Result<(), StoreError> {
    match via {
        crate::server::http::Via::Session { recorded } => {
            if request.hold > 0 && recorded != Some(request.hold) {
                store.set_session(environment, request.hold.min(MAX_HOLD), "")?;
            }
        }
        crate::server::http::Via::Post => {
            if !request.fallback.is_empty() {
                let note = if request.fallback == "-" { "" } else { request.fallback.as_str() };
                store.set_session(environment, 0, note)?;
            }
        }
    }
    Ok(())
}

/// The longest a held session's poll is held, in seconds: two hours, the
/// least idle timeout RFC 5382 asks of a NAT (`REQ-5`: 2 h 4 min).
pub const MAX_HOLD: u32 = 7200;

/// The state part of a poll that reports one: its delta applied to the
/// stored replica (decoded for it), saved when it moved.
fn apply_state(store: &dyn Transaction, env_id: u64, request: &PollRequest, now: i64) -> Result<PollReply, Refusal> {
    let mut replica = store.replica(env_id)?;
    let before = replica.current().0;
    Ok(match replica.receive(request.base, request.delta.as_ref()) {
        Received::Acked(seq) => {
            // The replica changes exactly when its sequence number moves.
            if seq != before {
                store.save_replica(env_id, &replica, now)?;
            } else {
                // A snapshot poll that changed nothing: the stored state is
                // as of now, so its age restarts.
                store.confirm_snapshot(env_id, now)?;
            }
            PollReply { acked: seq, ..PollReply::default() }
        }
        Received::Resync => PollReply { acked: replica.current().0, resync: true, ..PollReply::default() },
    })
}

/// Adds to `reply` the credentials of the registries its commands pull
/// from, on a read of its own after the poll's write transaction (a stack's
/// compose file is parsed for its images: never under the writer). A reply
/// without a pull in it reads nothing. When the read fails, the reply goes
/// without them (its pulls then fail as unauthenticated, saying so) rather
/// than losing what it acknowledges.
pub fn add_credentials(db: &Pool, secrets: &SecretKey, reply: &mut PollReply) {
    if !crate::server::domain::registries::pulls(&reply.commands) {
        return;
    }
    match db.read(|tx| crate::server::domain::registries::credentials_for(tx, secrets, &reply.commands)) {
        Ok(registries) => reply.registries = registries,
        Err(e) => tracing::error!("poll: registries' credentials: {e}"),
    }
}

/// Seals a reply (compression included): outside the store's lock.
///
/// # Errors
/// When the codec fails.
pub fn seal(auth: &Authenticated, codec: &mut Codec, reply: &PollReply) -> Result<Vec<u8>, Refusal> {
    Ok(seal_reply(auth.counter, &auth.key, &codec.encode(&reply.encode())?))
}

/// The sealed reply that tells an authenticated agent why its poll was
/// refused, for the refusals it can act on; `None` for the others.
pub fn seal_refusal(auth: &Authenticated, codec: &mut Codec, refusal: &Refusal) -> Option<Vec<u8>> {
    let (code, last_counter) = match refusal {
        Refusal::Replay(last) => (RefusalCode::Replay, *last),
        Refusal::BoundToAnother(_) => (RefusalCode::BoundToAnother, 0),
        Refusal::AgentSecret => (RefusalCode::AgentSecret, 0),
        Refusal::BadBody(_) => (RefusalCode::BadBody, 0),
        Refusal::TooLarge(_) => (RefusalCode::TooLarge, 0),
        Refusal::Unauthenticated | Refusal::BodyMac | Refusal::Store(_) => return None,
    };
    let refused = Refused { code, last_counter, detail: refusal.to_string() };
    seal(auth, codec, &PollReply { refused: Some(refused), ..PollReply::default() }).ok()
}

/// Handles one poll held whole, every step in turn (the HTTP layer runs
/// the same steps, reading the body only after [`authenticate`]): `wire`
/// is the request as received, the result is the reply body to send.
///
/// # Errors
/// A [`Refusal`]; the stored state, counter and binding are unchanged (but
/// for a body that does not match its header, whose counter is burnt).
pub fn handle(db: &Pool, codec: &mut Codec, wire: &[u8], now: i64) -> Result<Vec<u8>, Refusal> {
    handle_with(db, &SecretKey::ephemeral(), codec, wire, now)
}

/// [`handle`] with the server key registries' credentials are sealed under
/// (without it, a reply carries none).
///
/// # Errors
/// As [`handle`].
pub fn handle_with(
    db: &Pool,
    secrets: &SecretKey,
    codec: &mut Codec,
    wire: &[u8],
    now: i64,
) -> Result<Vec<u8>, Refusal> {
    let envelope = RequestEnvelope::parse(wire).map_err(|_| Refusal::Unauthenticated)?;
    let auth = db.read_one(|tx| authenticate(tx, &envelope.header, envelope.body.len()))?;
    if let Some(refusal) = auth.early_refusal() {
        return Err(refusal);
    }
    let request = match open(&auth, codec, envelope.body) {
        Err(Refusal::BodyMac) => {
            db.write(|tx| burn(tx, &auth))?;
            return Err(Refusal::Unauthenticated);
        }
        r => r?,
    };
    let mut reply = db.write(|tx| apply(tx, &auth, &request, now))?;
    add_credentials(db, secrets, &mut reply);
    seal(&auth, codec, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::auth::{Secret, open_reply, seal_request};
    use crate::server::store::CommandStatus;
    use crate::server::store::Store;
    use crate::sync::State;
    use crate::sync::session::AgentSync;
    use crate::sync::state::Id;
    use crate::wire::codec::Limits;
    use crate::wire::poll::{Action, AgentInfo, Command, CommandResult, ContainerOp, Intervals, ResultStatus};

    struct Agent {
        env: u64,
        /// The MAC key: the environment's secret, with the agent's
        /// AGENT_SECRET mixed in when it has one.
        key: Secret,
        counter: u64,
        sync: AgentSync,
        named: bool,
        edge_id: String,
    }

    impl Agent {
        /// A poll with a snapshot of `current`.
        fn poll(&mut self, store: &Pool, codec: &mut Codec, current: &State) -> Result<PollReply, Refusal> {
            self.poll_with(store, codec, Some(current), PollRequest::default())
        }

        /// A poll carrying `extra`'s results, commands_seen and intervals,
        /// and a snapshot when `current` is given.
        fn poll_with(
            &mut self,
            store: &Pool,
            codec: &mut Codec,
            current: Option<&State>,
            extra: PollRequest,
        ) -> Result<PollReply, Refusal> {
            let out = self.sync.prepare(current.unwrap_or(&State::default()), current.is_some());
            let reply_wire =
                self.send(store, codec, PollRequest { base: out.base, delta: out.delta.clone(), ..extra })?;
            let body = open_reply(self.counter, &self.key, &reply_wire).expect("authentic reply");
            let reply = PollReply::decode(&codec.decode(body).unwrap()).unwrap();
            self.named = true;
            self.sync.on_reply(out, reply.acked, reply.resync);
            Ok(reply)
        }

        /// Sends a request; the reply's bytes come back, unopened (as good
        /// as lost unless the caller opens them).
        fn send(&mut self, store: &Pool, codec: &mut Codec, req: PollRequest) -> Result<Vec<u8>, Refusal> {
            self.counter += 1;
            let req = PollRequest {
                agent: (!self.named).then(|| AgentInfo { version: "test".into(), edge_id: self.edge_id.clone() }),
                ..req
            };
            let wire = seal_request(self.env, self.counter, &self.key, &codec.encode(&req.encode()).unwrap());
            handle(store, codec, &wire, 1000 + self.counter as i64)
        }
    }

    fn setup() -> (Pool, Codec, Agent) {
        let store = Pool::new(Store::scratch().unwrap());
        let e = store.write(|s| s.create_environment("site", Secret([8; 32]), 0)).unwrap();
        let agent = Agent {
            env: e.id,
            key: e.secret,
            counter: 0,
            sync: AgentSync::default(),
            named: false,
            edge_id: "edge-1".into(),
        };
        (store, Codec::new(Limits::default()).unwrap(), agent)
    }

    fn host40(step: usize) -> State {
        // The recording is loaded by the bench lab (tern-bench), which links
        // the non-test build of this crate: its states come over as
        // snapshots.
        static REC: std::sync::OnceLock<tern_bench::fixture::Recording> = std::sync::OnceLock::new();
        let rec = REC.get_or_init(|| tern_bench::fixture::load(&tern_bench::fixture::dir(), "host40").unwrap());
        let theirs = rec.steps[step].raw.canonical(&Default::default()).unwrap();
        State::from_snapshot(&theirs.to_snapshot()).unwrap()
    }

    fn restart(id: u8) -> Action {
        Action::Container(ContainerOp::Restart, Id([id; 32]))
    }

    fn ok(id: u64) -> CommandResult {
        CommandResult {
            output: Vec::new(),
            phase: String::new(),
            id,
            status: ResultStatus::Ok,
            error: String::new(),
            finished_at: 1001,
        }
    }

    const SIXTY: Intervals = Intervals { ping: 60, snapshot: 60, command: 60 };

    #[test]
    fn a_real_host_syncs_through_the_poll_handler() {
        let (store, mut codec, mut agent) = setup();
        let s0 = host40(0);
        let r = agent.poll(&store, &mut codec, &s0).unwrap();
        assert_eq!((r.acked, r.resync), (1, false));
        assert_eq!(store.write(|s| s.replica(agent.env)).unwrap().current().1, &s0);
        // The stopped container: one small delta.
        let s2 = host40(2);
        assert_eq!(agent.poll(&store, &mut codec, &s2).unwrap().acked, 2);
        assert_eq!(store.write(|s| s.replica(agent.env)).unwrap().current().1, &s2);
        // Nothing changed: acknowledged as is.
        let again = agent.poll(&store, &mut codec, &s2).unwrap();
        assert_eq!((again.acked, again.resync), (2, false));
    }

    #[test]
    fn forged_replayed_and_second_agents_are_refused_and_change_nothing() {
        let (store, mut codec, mut agent) = setup();
        agent.poll(&store, &mut codec, &State::default()).unwrap();
        // Forged: wrong key.
        let body = codec.encode(&PollRequest::default().encode()).unwrap();
        let forged = seal_request(agent.env, 99, &Secret([0; 32]), &body);
        assert!(matches!(handle(&store, &mut codec, &forged, 5), Err(Refusal::Unauthenticated)));
        // Unknown environment, garbage.
        assert!(matches!(
            handle(&store, &mut codec, &seal_request(77, 1, &agent.key, &body), 5),
            Err(Refusal::Unauthenticated)
        ));
        assert!(matches!(handle(&store, &mut codec, b"\x01", 5), Err(Refusal::Unauthenticated)));
        // Replayed: the agent's own last request again.
        let replay = seal_request(agent.env, agent.counter, &agent.key, &body);
        assert!(matches!(handle(&store, &mut codec, &replay, 5), Err(Refusal::Replay(_))));
        // A second agent with the same token.
        let mut other =
            Agent { edge_id: "edge-2".into(), named: false, counter: 50, sync: AgentSync::default(), ..agent };
        assert!(matches!(other.poll(&store, &mut codec, &State::default()), Err(Refusal::BoundToAnother(_))));
        let env = store.write(|s| s.environment(other.env)).unwrap();
        assert_eq!((env.edge_id.as_deref(), env.last_counter), (Some("edge-1"), 1));
        // An authenticated body that does not decode.
        let bad = seal_request(other.env, 60, &other.key, b"\x01\x00\xff\xff");
        assert!(matches!(handle(&store, &mut codec, &bad, 5), Err(Refusal::BadBody(_))));
        assert_eq!(store.write(|s| s.environment(other.env)).unwrap().last_counter, 1, "nothing changed");
    }

    #[test]
    fn a_body_that_does_not_match_its_header_burns_the_counter_and_a_replay_is_refused_unread() {
        let (store, mut codec, mut agent) = setup();
        agent.poll(&store, &mut codec, &State::default()).unwrap();
        let body = codec.encode(&PollRequest::default().encode()).unwrap();
        let genuine = seal_request(agent.env, 2, &agent.key, &body);
        // A machine in the middle swaps the body under the genuine header.
        let mut forged = genuine.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(handle(&store, &mut codec, &forged, 5), Err(Refusal::Unauthenticated)));
        assert_eq!(store.write(|s| s.environment(agent.env)).unwrap().last_counter, 2, "its counter is used up");
        // So the genuine poll with that header is a replay now: one try per
        // genuine poll. A replay is refused by its header: a body that
        // would not even decode is not looked at.
        assert!(matches!(handle(&store, &mut codec, &genuine, 5), Err(Refusal::Replay(2))));
        let garbage = seal_request(agent.env, 1, &agent.key, b"\xff\xff not a body");
        assert!(matches!(handle(&store, &mut codec, &garbage, 5), Err(Refusal::Replay(2))));
        let next = seal_request(agent.env, 3, &agent.key, &body);
        assert!(handle(&store, &mut codec, &next, 5).is_ok(), "the agent's next poll goes through");
    }

    #[test]
    fn a_command_goes_queued_sent_delivered_then_ok_with_its_result() {
        let (store, mut codec, mut agent) = setup();
        let id = store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap();
        assert_eq!(store.write(|s| s.command(id)).unwrap().status, CommandStatus::Queued);
        // The next reply carries it, whatever the poll was for.
        let r = agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        assert_eq!(r.commands, vec![Command { id, action: restart(1) }]);
        let c = store.write(|s| s.command(id)).unwrap();
        assert_eq!((c.status, c.sent_at), (CommandStatus::Sent, Some(1001)));
        // The agent recorded it: delivered, and never sent again.
        let seen = PollRequest { commands_seen: id, ..PollRequest::default() };
        let r = agent.poll_with(&store, &mut codec, None, seen).unwrap();
        assert!(r.commands.is_empty() && r.results_acked.is_empty());
        let c = store.write(|s| s.command(id)).unwrap();
        assert_eq!((c.status, c.delivered_at), (CommandStatus::Delivered, Some(1002)));
        // It ran: the result is stored and acknowledged.
        let done = PollRequest { results: vec![ok(id)], ..PollRequest::default() };
        let r = agent.poll_with(&store, &mut codec, None, done).unwrap();
        assert_eq!(r.results_acked, vec![id]);
        let c = store.write(|s| s.command(id)).unwrap();
        assert_eq!((c.status, c.finished_at), (CommandStatus::Ok, Some(1001)));
    }

    #[test]
    fn a_result_from_an_agent_whose_clock_jumped_is_held_between_queued_and_received() {
        let (store, mut codec, mut agent) = setup();
        let ids = [
            store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap(),
            store.write(|s| s.enqueue_command(agent.env, &restart(2), 900)).unwrap(),
        ];
        agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        // An hour ahead, and behind (the poll's now is 1002; queued at 900).
        let at = |id, finished_at| CommandResult { finished_at, ..ok(id) };
        let results = vec![at(ids[0], 1002 + 3600), at(ids[1], 600)];
        agent.poll_with(&store, &mut codec, None, PollRequest { results, ..PollRequest::default() }).unwrap();
        assert_eq!(
            store.write(|s| s.command(ids[0])).unwrap().finished_at,
            Some(1002),
            "not after the server heard of it"
        );
        assert_eq!(store.write(|s| s.command(ids[1])).unwrap().finished_at, Some(900), "not before it was queued");
    }

    #[test]
    fn a_repeated_result_is_acknowledged_again_and_stored_once() {
        let (store, mut codec, mut agent) = setup();
        let id = store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap();
        agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        let failed = CommandResult {
            output: Vec::new(),
            phase: String::new(),
            id,
            status: ResultStatus::Failed,
            error: "no such container".into(),
            finished_at: 950,
        };
        let first = PollRequest { results: vec![failed.clone()], commands_seen: id, ..PollRequest::default() };
        assert_eq!(agent.poll_with(&store, &mut codec, None, first).unwrap().results_acked, vec![id]);
        // The acknowledgement was lost: the agent sends the result again,
        // here with a different outcome, which must not overwrite the first.
        let again = PollRequest { results: vec![ok(id)], ..PollRequest::default() };
        assert_eq!(agent.poll_with(&store, &mut codec, None, again).unwrap().results_acked, vec![id]);
        let c = store.write(|s| s.command(id)).unwrap();
        assert_eq!(
            (c.status, c.error.as_str(), c.finished_at),
            (CommandStatus::Failed, "no such container", Some(950))
        );
        // Results naming no command of this environment are acknowledged, so
        // the agent drops them, and change nothing.
        let other = store.write(|s| s.create_environment("other", Secret([9; 32]), 0)).unwrap();
        let foreign = store.write(|s| s.enqueue_command(other.id, &restart(2), 900)).unwrap();
        let strays = PollRequest { results: vec![ok(foreign), ok(999), ok(u64::MAX)], ..PollRequest::default() };
        assert_eq!(
            agent.poll_with(&store, &mut codec, None, strays).unwrap().results_acked,
            vec![foreign, 999, u64::MAX]
        );
        assert_eq!(store.write(|s| s.command(foreign)).unwrap().status, CommandStatus::Queued);
    }

    #[test]
    fn a_lost_reply_loses_no_command() {
        let (store, mut codec, mut agent) = setup();
        let id = store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap();
        // The reply with the command never reaches the agent.
        agent.send(&store, &mut codec, PollRequest::default()).unwrap();
        assert_eq!(store.write(|s| s.command(id)).unwrap().status, CommandStatus::Sent);
        agent.named = true;
        // Its next poll has no commands_seen: the same command comes again.
        let r = agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        assert_eq!(r.commands, vec![Command { id, action: restart(1) }]);
        let later = store.write(|s| s.enqueue_command(agent.env, &restart(2), 900)).unwrap();
        let r = agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        assert_eq!(r.commands.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id, later], "oldest first");
    }

    #[test]
    fn a_resync_reply_still_acknowledges_results_and_carries_commands() {
        let (store, mut codec, mut agent) = setup();
        agent.poll(&store, &mut codec, &host40(0)).unwrap();
        let id = store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap();
        store.write(|s| s.mark_seen(agent.env, 0, 900)).unwrap();
        let before = store.write(|s| s.replica(agent.env)).unwrap();
        // An agent whose base the server never had.
        agent.sync = AgentSync::restore(42, host40(2));
        let req = PollRequest { results: vec![ok(id)], ..PollRequest::default() };
        let r = agent.poll_with(&store, &mut codec, Some(&host40(3)), req).unwrap();
        assert!(r.resync);
        assert_eq!(r.results_acked, vec![id]);
        assert_eq!(store.write(|s| s.command(id)).unwrap().status, CommandStatus::Ok);
        assert_eq!(store.write(|s| s.replica(agent.env)).unwrap(), before, "the state stays as it was");
        let next = store.write(|s| s.enqueue_command(agent.env, &restart(2), 900)).unwrap();
        let r = agent.poll_with(&store, &mut codec, Some(&host40(3)), PollRequest::default()).unwrap();
        assert_eq!((r.resync, r.commands.len(), r.commands[0].id), (false, 1, next));
    }

    #[test]
    fn intervals_are_sent_only_while_the_agents_differ() {
        let (store, mut codec, mut agent) = setup();
        // Unknown at first contact without them.
        let r = agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap();
        assert_eq!(r.intervals, Some(SIXTY));
        // The agent reports what it runs with: the same, so nothing is sent.
        let report = |i| PollRequest { intervals: Some(i), ..PollRequest::default() };
        assert_eq!(agent.poll_with(&store, &mut codec, None, report(SIXTY)).unwrap().intervals, None);
        assert_eq!(agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap().intervals, None);
        // The operator changes them: sent until the agent reports them applied.
        let own = crate::server::store::IntervalSettings { snapshot: Some(300), ..Default::default() };
        store.write(|s| s.set_intervals(agent.env, own)).unwrap();
        let new = Intervals { snapshot: 300, ..SIXTY };
        assert_eq!(agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap().intervals, Some(new));
        assert_eq!(agent.poll_with(&store, &mut codec, None, PollRequest::default()).unwrap().intervals, Some(new));
        assert_eq!(agent.poll_with(&store, &mut codec, None, report(new)).unwrap().intervals, None);
        // An agent restarted with other intervals is corrected.
        let stale = Intervals { ping: 5, ..new };
        assert_eq!(agent.poll_with(&store, &mut codec, None, report(stale)).unwrap().intervals, Some(new));
        assert_eq!(store.write(|s| s.agent_intervals(agent.env)).unwrap(), Some(stale));
    }

    #[test]
    fn an_agent_secret_mismatch_is_refused_with_its_reason_and_changes_nothing() {
        let (store, mut codec, mut agent) = setup();
        agent.poll(&store, &mut codec, &host40(0)).unwrap();
        let env_secret = agent.key.clone();
        store.write(|s| s.set_agent_secret(Some("s3cret"))).unwrap();
        let id = store.write(|s| s.enqueue_command(agent.env, &restart(1), 900)).unwrap();
        let before =
            (store.write(|s| s.environment(agent.env)).unwrap(), store.write(|s| s.replica(agent.env)).unwrap());
        let with_results = || PollRequest { results: vec![ok(id)], commands_seen: id, ..PollRequest::default() };
        // An agent without AGENT_SECRET: told apart from a forgery.
        let refused = agent.poll_with(&store, &mut codec, Some(&host40(2)), with_results());
        assert!(matches!(refused, Err(Refusal::AgentSecret)), "{refused:?}");
        // A wrong AGENT_SECRET, or a stranger without the environment's
        // secret, cannot be told from a forgery.
        for key in [env_secret.with_agent_secret(Some("wrong")), Secret([0; 32])] {
            agent.key = key;
            let refused = agent.send(&store, &mut codec, with_results());
            assert!(matches!(refused, Err(Refusal::Unauthenticated)), "{refused:?}");
        }
        assert_eq!(
            (store.write(|s| s.environment(agent.env)).unwrap(), store.write(|s| s.replica(agent.env)).unwrap()),
            before
        );
        assert_eq!(store.write(|s| s.command(id)).unwrap().status, CommandStatus::Queued, "nothing changed");
        // With the right one, the poll goes through, and the reply is sealed
        // with the same derived key.
        agent.key = env_secret.with_agent_secret(Some("s3cret"));
        let wire = agent.send(&store, &mut codec, PollRequest::default()).unwrap();
        assert!(open_reply(agent.counter, &env_secret, &wire).is_err());
        let body = open_reply(agent.counter, &agent.key, &wire).unwrap();
        let r = PollReply::decode(&codec.decode(body).unwrap()).unwrap();
        assert_eq!((r.acked, r.commands.len()), (1, 1));
        assert_eq!(store.write(|s| s.environment(agent.env)).unwrap().last_counter, agent.counter);
    }
}
