//! The held session (issue #16): one long-lived TLS connection on which
//! the agent sends its polls as frames and the server answers one of them,
//! the *held* poll, only when it has something to say: a command queued
//! for the environment (on this replica or, through the database's
//! notifications, on another), or the end of the hold, which is the
//! agent's keepalive period. So a command reaches the agent half a round
//! trip after it is queued, and an idle agent costs one small frame each
//! way per keepalive period, which it stretches to the longest silence its
//! path's NAT allows.
//!
//! A connection becomes a session when TLS negotiates the ALPN protocol
//! [`crate::wire::SESSION_ALPN`] (the agent offers it beside `http/1.1`):
//! no HTTP request, header or status line is ever sent on it. The frames
//! are in [`crate::wire::frame`]. Every frame up is a sealed poll, read and
//! authenticated exactly as `POST /q`'s body is (its header before its
//! body, its counter above the last one accepted), and every frame down is
//! a sealed reply, so the session adds no way in that polls do not have.
//!
//! What the server does with a frame:
//!
//! * a poll with `hold` 0 is applied and answered at once, in order;
//! * a poll with `hold` > 0 is applied at once too (its counter, its
//!   results); when its reply carries commands, a refusal, a resync or new
//!   intervals it is answered at once, else it is held, at most `hold`
//!   seconds (capped at [`poll::MAX_HOLD`]): answered with the commands
//!   queued meanwhile as soon as one is, or empty when the hold ends. A
//!   second held poll answers the first.
//!
//! A session whose agent sent nothing authentic within [`HEADER_WAIT`], or
//! nothing at all for a hold plus [`SILENCE_GRACE`], is closed: a dead
//! agent's connection does not outlive its keepalive.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{AppState, Applied, HEADER_WAIT, Via, apply_body, blocking, now};
use crate::server::poll::{self, Authenticated, Refusal};
use crate::wire::frame;
use crate::wire::poll::PollReply;

/// How long after a held poll's reply (or its hold's end) the agent's next
/// frame may take: it sends its next held poll at once, so this is a round
/// trip on the slowest link, and a lost packet's retransmissions.
pub const SILENCE_GRACE: Duration = Duration::from_secs(60);

/// Why a session ended, for the log.
#[derive(Debug)]
enum End {
    /// The agent closed it (or the connection broke).
    Closed,
    /// Something not from the environment's agent: an oversized or
    /// malformed frame.
    Refused(String),
    /// A frame that does not authenticate: the agent is told with an
    /// empty frame (as `POST /q` answers 401 with no body), then closed.
    Unauthenticated(String),
    /// Silent past its keepalive.
    Silent,
    /// The server is shutting down, or needs the connection's slot.
    Closing,
}

/// The poll held for the agent.
struct Held {
    auth: Arc<Authenticated>,
    /// Its reply so far (what applying it acknowledged); commands queued
    /// meanwhile are added when it is answered.
    reply: PollReply,
    /// When the hold ends.
    until: Instant,
}

/// One session on `io`, until the agent closes it, it falls silent, or
/// `closing` completes (shutdown, eviction).
pub async fn serve<S>(
    state: Arc<AppState>,
    io: S,
    meter: Arc<crate::meter::ConnMeter>,
    agent: super::gate::Authenticate,
    closing: impl std::future::Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = Session {
        state,
        meter,
        agent,
        inbuf: Vec::new(),
        held: None,
        wakes: None,
        recorded: None,
        environment: None,
        silent_from: Instant::now(),
        quiet_for: HEADER_WAIT,
    };
    let (mut reader, mut writer) = tokio::io::split(io);
    tokio::pin!(closing);
    let end = loop {
        let held_until = session.held.as_ref().map(|h| h.until);
        let silent_at = session.silent_from + session.quiet_for;
        let limit = session.limit();
        tokio::select! {
            () = &mut closing => break End::Closing,
            read = read_more(&mut session.inbuf, limit, &mut reader) => {
                if !read {
                    break End::Closed;
                }
                if session.environment.is_some() {
                    session.silent_from = Instant::now();
                    session.quiet_for = SILENCE_GRACE;
                }
            }
            () = async {
                match session.wakes.as_mut() {
                    Some(w) => w.woken().await,
                    None => std::future::pending().await,
                }
            }, if held_until.is_some() => {
                if let Err(e) = session.answer_held(&mut writer, false).await {
                    break e;
                }
                continue;
            }
            () = tokio::time::sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() => {
                if let Err(e) = session.answer_held(&mut writer, true).await {
                    break e;
                }
                continue;
            }
            () = tokio::time::sleep_until(silent_at), if held_until.is_none() => break End::Silent,
        }
        // Every whole frame read so far, in order.
        loop {
            match session.next_frame(&mut writer).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    if matches!(e, End::Unauthenticated(_)) {
                        let _ = write_frame(&mut writer, &[], false).await;
                    }
                    let _ = writer.shutdown().await;
                    return session.ended(&e);
                }
            }
        }
    };
    let _ = writer.shutdown().await;
    session.ended(&end);
}

struct Session {
    state: Arc<AppState>,
    meter: Arc<crate::meter::ConnMeter>,
    agent: super::gate::Authenticate,
    /// Bytes read and not yet taken as frames.
    inbuf: Vec<u8>,
    held: Option<Held>,
    /// Wakes this environment's session when a command is queued for it.
    wakes: Option<crate::server::wakes::Subscription>,
    /// The keepalive period last recorded for the environment.
    recorded: Option<u32>,
    /// The environment, once a frame authenticated.
    environment: Option<u64>,
    /// The session is closed when nothing arrives for `quiet_for` after
    /// `silent_from` (while no poll is held).
    silent_from: Instant,
    quiet_for: Duration,
}

impl Session {
    fn ended(&self, end: &End) {
        match end {
            End::Refused(why) | End::Unauthenticated(why) => {
                tracing::info!(environment = ?self.environment, "session closed: {why}");
            }
            End::Silent => tracing::info!(environment = ?self.environment, "session closed: the agent fell silent"),
            End::Closed | End::Closing => tracing::debug!(environment = ?self.environment, "session ended: {end:?}"),
        }
    }

    /// How many bytes the buffer may hold now: before a frame's header is
    /// authenticated, only that header; after, the frame (with the room
    /// for it taken under the server's body budget when it is read).
    fn limit(&self) -> usize {
        let header = frame::MAX_HEADER + crate::auth::MAX_REQUEST_HEADER;
        match frame::parse_header(&self.inbuf) {
            Ok(Some((len, at))) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if self.inbuf.len() >= at + crate::auth::MAX_REQUEST_HEADER.min(len) && self.environment.is_some() {
                    at.saturating_add(len).max(header)
                } else {
                    header
                }
            }
            _ => header,
        }
    }

    /// Takes one whole frame from the buffer, if there is one, and answers
    /// it (or holds it). `Ok(false)`: no whole frame yet.
    async fn next_frame<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> Result<bool, End> {
        let state = self.state.clone();
        let max = state.limits.max_encoded + crate::auth::MAX_REQUEST_HEADER;
        let Some((len, at)) = frame::parse_header(&self.inbuf).map_err(|e| End::Refused(e.to_owned()))? else {
            return Ok(false);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max {
            return Err(End::Refused(format!("a frame of {len} bytes (at most {max})")));
        }
        // The header first: nothing more is read for a frame that does not
        // authenticate.
        let want_header = len.min(crate::auth::MAX_REQUEST_HEADER);
        if self.inbuf.len() < at + want_header {
            return Ok(false);
        }
        let Ok((header, header_len)) = crate::auth::RequestHeader::parse(&self.inbuf[at..at + want_header]) else {
            return Err(End::Unauthenticated("a frame that is not a poll".into()));
        };
        if self.environment.is_some_and(|e| e != header.environment) {
            return Err(End::Refused("a frame for another environment".into()));
        }
        if self.inbuf.len() < at + len {
            if self.environment.is_none() {
                // Authenticate before the buffer may grow past the header.
                self.authenticate_first(&header, len - header_len).await?;
            }
            return Ok(false);
        }
        let buf: Vec<u8> = self.inbuf[at..at + len].to_vec();
        self.inbuf.drain(..at + len);
        let body_len = len - header_len;
        let auth = {
            let shared = state.clone();
            match blocking(move || shared.store.read_one(|s| poll::authenticate(s, &header, body_len))).await {
                Ok(Ok(auth)) => Arc::new(auth),
                Ok(Err(e)) => {
                    self.charge(None, None);
                    return Err(End::Unauthenticated(format!("a frame refused: {e}")));
                }
                Err(_) => return Err(End::Refused("the server failed".into())),
            }
        };
        let environment = auth.environment;
        self.subscribe(environment);
        if let Some(e) = auth.early_refusal() {
            self.charge(Some(environment), None);
            self.send_refusal(writer, &auth, e, false).await?;
            return Ok(true);
        }
        let Some(room) = state.poll_room(body_len).await else {
            return Err(End::Refused("the server is busy".into()));
        };
        let applied = apply_body(&state, &auth, buf, header_len, room, Via::Session { recorded: self.recorded }).await;
        let (reply, hold, up) = match applied {
            Ok((Applied::Reply(reply, hold), up)) => (reply, hold, up),
            Ok((Applied::BodyMac, _)) => {
                self.charge(None, None);
                return Err(End::Unauthenticated(
                    "a frame whose body is not the one its header was sealed with".into(),
                ));
            }
            Ok((Applied::Refused(e), _)) => {
                self.charge(Some(environment), None);
                self.send_refusal(writer, &auth, e, false).await?;
                return Ok(true);
            }
            Err(_) => return Err(End::Refused("the server failed".into())),
        };
        self.agent.mark();
        if hold > 0 {
            self.recorded = Some(hold);
        }
        // A new held poll answers the one held before it.
        if hold > 0 && self.held.is_some() {
            self.answer_held(writer, true).await?;
        }
        let now_answered = hold == 0
            || !reply.commands.is_empty()
            || reply.resync
            || reply.intervals.is_some()
            || !reply.unknown_commands.is_empty();
        if now_answered {
            let wire = self.seal(&auth, &reply).await?;
            self.charge(Some(environment), Some((up, wire.len())));
            write_frame(writer, &wire, hold > 0).await?;
            self.silent_from = Instant::now();
            self.quiet_for = SILENCE_GRACE;
        } else {
            self.charge(Some(environment), Some((up, 0)));
            let hold = Duration::from_secs(u64::from(hold.min(poll::MAX_HOLD)));
            self.held = Some(Held { auth, reply, until: Instant::now() + hold });
        }
        Ok(true)
    }

    /// The first frame's header, checked before its body is read.
    async fn authenticate_first(&mut self, header: &crate::auth::RequestHeader, body_len: usize) -> Result<(), End> {
        let (shared, header) = (self.state.clone(), header.clone());
        match blocking(move || shared.store.read_one(|s| poll::authenticate(s, &header, body_len))).await {
            Ok(Ok(auth)) => {
                self.subscribe(auth.environment);
                Ok(())
            }
            Ok(Err(e)) => {
                self.charge(None, None);
                Err(End::Unauthenticated(format!("a frame refused: {e}")))
            }
            Err(_) => Err(End::Refused("the server failed".into())),
        }
    }

    /// Listens for commands queued for `environment` (before its first poll
    /// is applied, so none queued after that is missed).
    fn subscribe(&mut self, environment: u64) {
        if self.environment.is_none() {
            self.environment = Some(environment);
            self.wakes = Some(self.state.store.wakes().subscribe(environment));
        }
    }

    /// Answers the held poll: with the commands due now, or, when there are
    /// none, only if `anyway` (the hold ended, or another poll took its
    /// place). A wake with nothing new for the agent answers nothing.
    async fn answer_held<W: AsyncWrite + Unpin>(&mut self, writer: &mut W, anyway: bool) -> Result<(), End> {
        let Some(held) = self.held.take() else { return Ok(()) };
        let Held { auth, mut reply, until } = held;
        let (shared, environment) = (self.state.clone(), auth.environment);
        let due = blocking(move || {
            let due = shared
                .store
                .write_for(environment, |s| s.commands_due(environment, now(), poll::MAX_COMMANDS_PER_REPLY));
            due.map(|commands| {
                let mut extra = PollReply { commands, ..PollReply::default() };
                poll::add_credentials(&shared.store, &shared.secrets, &mut extra);
                extra
            })
        })
        .await;
        match due {
            Ok(Ok(extra)) => {
                reply.commands = extra.commands;
                reply.registries = extra.registries;
            }
            Ok(Err(e)) => tracing::error!("session: commands due for environment {environment}: {e}"),
            Err(_) => {}
        }
        if reply.commands.is_empty() && !anyway {
            self.held = Some(Held { auth, reply, until });
            return Ok(());
        }
        let wire = self.seal(&auth, &reply).await?;
        write_frame(writer, &wire, true).await?;
        // Its bytes; the poll was counted when it came.
        self.charge(Some(environment), None);
        self.silent_from = Instant::now();
        self.quiet_for = SILENCE_GRACE;
        Ok(())
    }

    async fn seal(&self, auth: &Arc<Authenticated>, reply: &PollReply) -> Result<Vec<u8>, End> {
        let (shared, a, reply) = (self.state.clone(), auth.clone(), reply.clone());
        match blocking(move || shared.with_codec(|c| poll::seal(&a, c, &reply))).await {
            Ok(Ok(Ok(wire))) => Ok(wire),
            _ => Err(End::Refused("the server could not seal a reply".into())),
        }
    }

    async fn send_refusal<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        auth: &Arc<Authenticated>,
        refusal: Refusal,
        held: bool,
    ) -> Result<(), End> {
        if let Refusal::Store(e) = &refusal {
            tracing::error!("session poll: {e}");
        }
        let (shared, a) = (self.state.clone(), auth.clone());
        let sealed = blocking(move || shared.with_codec(|c| poll::seal_refusal(&a, c, &refusal))).await;
        match sealed {
            Ok(Ok(Some(wire))) => {
                write_frame(writer, &wire, held).await?;
                self.silent_from = Instant::now();
                self.quiet_for = SILENCE_GRACE;
                Ok(())
            }
            _ => Err(End::Refused("a refusal that cannot be told to the agent".into())),
        }
    }

    fn charge(&self, environment: Option<u64>, bodies: Option<(usize, usize)>) {
        crate::server::api::usage::charge_poll(Some(&self.meter), &self.state, environment, bodies, now());
    }
}

/// Reads what the agent sent into `inbuf`, which may hold `limit` bytes
/// ([`Session::limit`]). Cancel-safe. `false` at the end of the stream.
async fn read_more<R: AsyncRead + Unpin>(inbuf: &mut Vec<u8>, limit: usize, reader: &mut R) -> bool {
    let room = limit.saturating_sub(inbuf.len()).clamp(1, 64 * 1024);
    let mut chunk = vec![0u8; room];
    match reader.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            inbuf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Writes one frame down.
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, wire: &[u8], held: bool) -> Result<(), End> {
    let mut out = frame::header(((wire.len() as u64) << 1) | u64::from(held));
    out.extend_from_slice(wire);
    writer.write_all(&out).await.map_err(|_| End::Closed)?;
    writer.flush().await.map_err(|_| End::Closed)
}
