//! The server's one HTTPS port: TLS 1.3 (rustls) and HTTP/1.1 (hyper),
//! routed by axum. It serves the agents' poll endpoint, `POST /p`, and the
//! REST API under `/api/` (see [`super::api`]).
//!
//! Every header byte is paid on every poll, so the poll reply carries only
//! what HTTP/1.1 requires (status line and `content-length`): no `date`, no
//! `content-type`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Response, StatusCode};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub mod enrol;
pub mod gate;
pub mod proxy;
pub mod session;

use super::poll::{self, Refusal};
use super::store::pool::Pool;
use super::store::{Store, StoreError};
use crate::server::store::prelude::*;
use crate::wire::codec::{Codec, Limits};

/// The poll endpoint's path: one byte of path, paid on every poll.
pub const POLL_PATH: &str = crate::wire::POLL_PATH;

/// What the handlers share. Database calls are short and run on the
/// blocking pool: writes one at a time on the writing connection, reads on
/// reading connections beside it ([`Pool`]); decompression, decoding and
/// compression of poll bodies run outside both.
pub struct AppState {
    pub(crate) store: Pool,
    /// Codecs (zstd contexts with the dictionaries loaded) for poll bodies,
    /// reused.
    codecs: Mutex<Vec<Codec>>,
    limits: Limits,
    /// Poll bodies decoded at once: decoding is CPU work, and a body may
    /// decode to 16 MiB, so this bounds both.
    decoding: Arc<tokio::sync::Semaphore>,
    /// Poll body bytes the server holds at once (see
    /// [`MAX_BODY_BYTES_IN_FLIGHT`]).
    poll_bodies: Arc<tokio::sync::Semaphore>,
    /// API and UI body bytes held at once, apart from polls' (see
    /// [`MAX_API_BODY_BYTES_IN_FLIGHT`]), so no API client can keep an
    /// agent's poll waiting.
    api_bodies: Arc<tokio::sync::Semaphore>,
    /// The certificate fingerprint join tokens carry.
    pub fingerprint: [u8; 32],
    /// Failed logins, counted in memory (see [`super::api::access`]).
    pub logins: super::api::access::LoginLimiter,
    /// Data usage charged and not yet written (see [`super::ledger`]).
    pub usage: super::ledger::Ledger,
    /// The key operators' secrets are sealed under (see [`super::secrets`]).
    pub secrets: super::secrets::SecretKey,
    /// The data directory (the database's), where held images' blobs go
    /// ([`super::images`]); for a database in memory, a temporary one.
    pub data: std::path::PathBuf,
}

/// Poll body bytes held at once over all polls: a poll's body is read only
/// once its header is authenticated, and only when its bytes fit here
/// (else 503 with `Retry-After`). 64 MiB: sixteen of the largest poll
/// bodies at once.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 << 20;

/// API and UI body bytes held at once, counted by `Content-Length` for a
/// body over [`READ_BUFFER`] (smaller ones are bounded by the connection
/// count, as what hyper reads ahead is), once the caller is authenticated
/// (the only routes open to anyone, the logins, take 4 to 16 KiB).
pub const MAX_API_BODY_BYTES_IN_FLIGHT: usize = 32 << 20;

/// How long a request waits for room under [`MAX_BODY_BYTES_IN_FLIGHT`]
/// before it is answered 503.
pub const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Poll bodies decoded, and held decoded until applied, at once.
const CONCURRENT_DECODES: usize = 2;

impl AppState {
    /// Wraps the store. `admin_token` (the data directory's) is made an API
    /// token in the store, if it is not one yet.
    ///
    /// # Errors
    /// When the codec cannot be set up or the store fails.
    pub fn new(
        store: Store,
        limits: Limits,
        admin_token: &str,
        fingerprint: [u8; 32],
    ) -> Result<Arc<Self>, super::StartError> {
        // Beside the database, never in it; a database in memory (tests)
        // gets a key of its own.
        let dir = store.path().as_deref().and_then(std::path::Path::parent).map(std::path::Path::to_owned);
        Self::with_pool(Pool::new(store), dir, limits, admin_token, fingerprint)
    }

    /// [`Self::new`] on a pool of either database, with the data directory
    /// (the server key, image blobs) given: `None` for a database in
    /// memory, which gets a temporary one and a key of its own.
    ///
    /// # Errors
    /// When the codec cannot be set up or the store fails.
    pub fn with_pool(
        store: Pool,
        dir: Option<std::path::PathBuf>,
        limits: Limits,
        admin_token: &str,
        fingerprint: [u8; 32],
    ) -> Result<Arc<Self>, super::StartError> {
        let hash = super::store::access::secret_hash(admin_token);
        store.write(|tx| tx.ensure_data_directory_token(&hash, now()))?;
        let secrets = match &dir {
            Some(dir) => super::secrets::SecretKey::load_or_create(dir, std::env::var(super::secrets::KEY_VAR).ok())
                .map_err(super::StartError::Secrets)?,
            None => super::secrets::SecretKey::ephemeral(),
        };
        let data = dir.unwrap_or_else(|| {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("tern-memory-{}-{n}", std::process::id()))
        });
        Ok(Arc::new(Self {
            store,
            codecs: Mutex::new(vec![Codec::new(limits)?]),
            limits,
            decoding: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DECODES)),
            poll_bodies: Arc::new(tokio::sync::Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT)),
            api_bodies: Arc::new(tokio::sync::Semaphore::new(MAX_API_BODY_BYTES_IN_FLIGHT)),
            fingerprint,
            logins: super::api::access::LoginLimiter::default(),
            usage: super::ledger::Ledger::default(),
            secrets,
            data,
        }))
    }

    /// Runs `f` in one write transaction, committed when it returns `Ok`
    /// (call from a blocking task); see [`Pool::write`].
    ///
    /// # Errors
    /// `f`'s, or the store's.
    pub fn with_store<T, E: From<StoreError>>(&self, f: impl FnOnce(&dyn Transaction) -> Result<T, E>) -> Result<T, E> {
        self.store.write(f)
    }

    /// Runs `f` in one read transaction on a reading connection (call from
    /// a blocking task); it must not write. See [`Pool::read`].
    pub fn read_store<T>(&self, f: impl FnOnce(&dyn Transaction) -> T) -> T {
        self.store.read(f)
    }

    /// Runs `f` with a codec of the pool (call from a blocking task).
    ///
    /// # Errors
    /// When no codec can be made (out of memory).
    fn with_codec<T>(&self, f: impl FnOnce(&mut Codec) -> T) -> Result<T, crate::wire::codec::CodecError> {
        let pooled = self.codecs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut codec = match pooled {
            Some(c) => c,
            None => Codec::new(self.limits)?,
        };
        let out = f(&mut codec);
        self.codecs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(codec);
        Ok(out)
    }

    /// Waits (at most [`BODY_WAIT`]) for room for `bytes` of poll body.
    async fn poll_room(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        room(&self.poll_bodies, bytes).await
    }
}

/// Waits (at most [`BODY_WAIT`]) for room for `bytes` under `budget`.
async fn room(budget: &Arc<tokio::sync::Semaphore>, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let n = u32::try_from(bytes.max(1)).ok()?;
    tokio::time::timeout(BODY_WAIT, budget.clone().acquire_many_owned(n)).await.ok()?.ok()
}

/// Seconds since the Unix epoch.
pub(super) use crate::clock::unix_now as now;

fn status(code: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = code;
    r
}

/// 503 with `Retry-After` when request bodies fill [`MAX_BODY_BYTES_IN_FLIGHT`].
fn busy() -> Response<Body> {
    let mut r = status(StatusCode::SERVICE_UNAVAILABLE, "the server is busy reading other requests; retry shortly");
    r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
    r
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response<Body>> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!("poll handler panicked: {e}");
        status(StatusCode::INTERNAL_SERVER_ERROR, "")
    })
}

/// A request's `Content-Length`, when it has a valid one (the poll and
/// enrolment endpoints size their reads by it).
pub(crate) fn content_length(request: &axum::extract::Request) -> Option<usize> {
    request.headers().get(axum::http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads `body` until `buf` holds `want` bytes (the request's
/// `Content-Length` makes hyper end the body there).
async fn read_to(body: &mut Body, buf: &mut Vec<u8>, want: usize) -> Result<(), Response<Body>> {
    use http_body_util::BodyExt;
    while buf.len() < want {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => return Err(status(StatusCode::BAD_REQUEST, "the body ended early")),
        }
    }
    Ok(())
}

/// How long a poll's header (its first bytes) may take to arrive: a client
/// dribbling it holds a connection that cannot be evicted while it waits.
pub const HEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What became of a poll's body, in the blocking task that decodes and
/// applies it.
pub(crate) enum Applied {
    /// Applied: the reply to seal, and what the request asked of a held
    /// session (its `hold`, 0 outside one).
    Reply(crate::wire::poll::PollReply, u32),
    Refused(Refusal),
    /// Not the body its header was sealed with: its counter was burnt.
    BodyMac,
}

/// How the poll came: `POST /q`, or a frame of a held session (see
/// [`session`]) whose agent last said it keeps alive every `recorded`
/// seconds (`None`: nothing recorded on this session yet).
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// `POST /q`.
    Post,
    /// A held session's frame.
    Session {
        /// The keepalive period this session last recorded.
        recorded: Option<u32>,
    },
}

/// A poll whose header is authenticated and whose whole envelope is in
/// `buf` (its body from `header_len`): the body is checked, decoded and
/// applied in one transaction, on the blocking pool, holding `room` (its
/// bytes' place under [`MAX_BODY_BYTES_IN_FLIGHT`]) and a decoding slot
/// until it is applied. Returns what became of it and the envelope's
/// length. The held session and `POST /q` share it.
pub(crate) async fn apply_body(
    state: &Arc<AppState>,
    auth: &Arc<poll::Authenticated>,
    buf: Vec<u8>,
    header_len: usize,
    room: tokio::sync::OwnedSemaphorePermit,
    via: Via,
) -> Result<(Applied, usize), Response<Body>> {
    // The permits go into the blocking task: they are held until the poll
    // is applied even if this request is dropped meanwhile (a timeout, a
    // client gone), so at most two decoded polls (up to 16 MiB each) exist
    // at once, one in the store, the other waiting for it.
    let Ok(decoding) = state.decoding.clone().acquire_owned().await else { return Err(busy()) };
    let (shared, a) = (state.clone(), auth.clone());
    blocking(move || {
        let _held = (room, decoding);
        let applied = match shared.with_codec(|c| poll::open(&a, c, &buf[header_len..])) {
            Err(e) => Applied::Refused(Refusal::BadBody(e.to_string())),
            Ok(Err(Refusal::BodyMac)) => {
                if let Err(e) = shared.store.write_for(a.environment, |s| poll::burn(s, &a)) {
                    tracing::error!("poll: {e}");
                }
                Applied::BodyMac
            }
            Ok(Err(e)) => Applied::Refused(e),
            Ok(Ok(request)) => match shared.store.write_for(a.environment, |s| {
                let reply = poll::apply(s, &a, &request, now())?;
                poll::record_mode(s, a.environment, &request, via)?;
                Ok(reply)
            }) {
                Ok(mut reply) => {
                    poll::add_credentials(&shared.store, &shared.secrets, &mut reply);
                    Applied::Reply(reply, request.hold)
                }
                Err(e) => Applied::Refused(e),
            },
        };
        (applied, buf.len())
    })
    .await
}

/// The poll endpoint. A poll is read in two steps: its header (at most
/// [`crate::auth::MAX_REQUEST_HEADER`] bytes, within [`HEADER_WAIT`]) is
/// authenticated against the environment it names before a byte more is
/// read, so a client without the environment's key cannot make the server
/// hold a body; a replayed counter is refused there too. Then the body,
/// within [`MAX_BODY_BYTES_IN_FLIGHT`] of poll bodies. It is checked and
/// decoded outside the store's lock, applied in one transaction, and the
/// reply compressed outside the lock again.
async fn poll_handler(
    state: State<Arc<AppState>>,
    meter: Option<axum::Extension<Arc<crate::meter::ConnMeter>>>,
    agent: Option<axum::Extension<gate::Authenticate>>,
    request: axum::extract::Request,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let r = answer_poll(state, meter, agent.map(|a| a.0), request).await;
    super::metrics::get().poll(r.status().as_u16(), started.elapsed().as_secs_f64());
    r
}

/// [`poll_handler`]'s answer.
async fn answer_poll(
    State(state): State<Arc<AppState>>,
    meter: Option<axum::Extension<Arc<crate::meter::ConnMeter>>>,
    agent: Option<gate::Authenticate>,
    request: axum::extract::Request,
) -> Response<Body> {
    let meter = meter.map(|m| m.0);
    // In memory: written in batches (see `server::ledger`).
    let charge = |environment: Option<u64>, bodies: Option<(usize, usize)>| {
        super::api::usage::charge_poll(meter.as_deref(), &state, environment, bodies, now());
    };
    let Some(len) = content_length(&request) else {
        return status(StatusCode::LENGTH_REQUIRED, "a poll needs a Content-Length");
    };
    if len > state.limits.max_encoded + crate::auth::MAX_REQUEST_HEADER {
        charge(None, None);
        return status(StatusCode::PAYLOAD_TOO_LARGE, "");
    }
    let mut body = request.into_body();
    let mut buf = Vec::with_capacity(crate::auth::MAX_REQUEST_HEADER);
    let want = len.min(crate::auth::MAX_REQUEST_HEADER);
    match tokio::time::timeout(HEADER_WAIT, read_to(&mut body, &mut buf, want)).await {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return r,
        Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "the poll's header came too slowly"),
    }
    let Ok((header, header_len)) = crate::auth::RequestHeader::parse(&buf) else {
        charge(None, None);
        return status(StatusCode::UNAUTHORIZED, "");
    };
    let body_len = len - header_len;
    let shared = state.clone();
    let auth = match blocking(move || shared.store.read_one(|s| poll::authenticate(s, &header, body_len))).await {
        Ok(Ok(auth)) => auth,
        Ok(Err(e)) => {
            charge(None, None);
            return refused_unsealed(&e);
        }
        Err(r) => return r,
    };
    let environment = auth.environment;
    let auth = Arc::new(auth);
    // Authentic from here: a refusal is sealed, so the agent can trust it.
    let refuse = |e: Refusal| {
        let (state, auth) = (state.clone(), auth.clone());
        async move {
            if let Refusal::Store(e) = &e {
                tracing::error!("poll: {e}");
            }
            let sealed = blocking(move || state.with_codec(|c| poll::seal_refusal(&auth, c, &e).map(|b| (b, e))))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            match sealed {
                Some((body, e)) => {
                    let mut r = Response::new(Body::from(body));
                    *r.status_mut() = refusal_status(&e);
                    r
                }
                None => status(StatusCode::INTERNAL_SERVER_ERROR, ""),
            }
        }
    };
    if let Some(e) = auth.early_refusal() {
        charge(Some(environment), None);
        return refuse(e).await;
    }
    let Some(room) = state.poll_room(body_len).await else {
        return busy();
    };
    if let Err(r) = read_to(&mut body, &mut buf, len).await {
        return r;
    }
    drop(body);
    let applied = apply_body(&state, &auth, buf, header_len, room, Via::Post).await;
    let (reply, up) = match applied {
        Ok((Applied::Reply(reply, _), up)) => (reply, up),
        Ok((Applied::BodyMac, _)) => {
            charge(None, None);
            return status(StatusCode::UNAUTHORIZED, "");
        }
        Ok((Applied::Refused(e), _)) => {
            charge(Some(environment), None);
            return refuse(e).await;
        }
        Err(r) => return r,
    };
    let (shared, a) = (state.clone(), auth.clone());
    match blocking(move || shared.with_codec(|c| poll::seal(&a, c, &reply))).await {
        Ok(Ok(Ok(wire))) => {
            charge(Some(environment), Some((up, wire.len())));
            // An agent's connection: no longer held against its address's
            // cap (see `gate`). Only an accepted poll counts, not a replay.
            if let Some(agent) = &agent {
                agent.mark();
            }
            Response::new(Body::from(wire))
        }
        Ok(Ok(Err(e))) => {
            tracing::error!("poll reply: {e}");
            status(StatusCode::INTERNAL_SERVER_ERROR, "")
        }
        Ok(Err(e)) => {
            tracing::error!("poll: no codec: {e}");
            status(StatusCode::INTERNAL_SERVER_ERROR, "")
        }
        Err(r) => r,
    }
}

/// The HTTP status of a refusal.
pub(crate) fn refusal_status(e: &Refusal) -> StatusCode {
    match e {
        Refusal::Unauthenticated | Refusal::BodyMac => StatusCode::UNAUTHORIZED,
        Refusal::Replay(_) | Refusal::BoundToAnother(_) => StatusCode::CONFLICT,
        Refusal::AgentSecret => StatusCode::FORBIDDEN,
        Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
        Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refusal to a poll that proved nothing: its status, no body.
fn refused_unsealed(e: &Refusal) -> Response<Body> {
    if let Refusal::Store(e) = e {
        tracing::error!("poll: {e}");
    }
    status(refusal_status(e), "")
}

/// The path agents before version 0.2 polled, with an envelope whose one
/// MAC covered the body, so the server had to read a body before it could
/// authenticate it. It is answered 426 with what to do.
pub const OLD_POLL_PATH: &str = "/p";

async fn old_poll() -> Response<Body> {
    status(
        StatusCode::UPGRADE_REQUIRED,
        "this tern server needs tern agent 0.2 or later (poll headers are now authenticated before their body is \
         read): update the agent image and restart it",
    )
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    // The API's largest bodies are compose files and scripts.
    let limit = state.limits.max_encoded + 64;
    Router::new()
        .route(POLL_PATH, post(poll_handler))
        .route(OLD_POLL_PATH, post(old_poll))
        .route(crate::wire::TRANSFER_PATH, post(super::transfers::endpoint::handler))
        .route(crate::enrol::ENROL_PATH, post(enrol::handler))
        // The API's JSON goes gzip'd to a client that asks (a browser; the
        // CLI and the agents do not ask, and the poll endpoint is outside).
        .merge(super::api::routes(state.clone()).layer(tower_http::compression::CompressionLayer::new()))
        .merge(super::ui::routes(super::api::routes(state.clone()).with_state(state.clone()), state.clone()))
        .fallback(super::api::not_found)
        .method_not_allowed_fallback(super::api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(request_timeout))
        .with_state(state)
}

/// Holds an API or UI request's body bytes under
/// [`MAX_API_BODY_BYTES_IN_FLIGHT`] while the request runs: its
/// `Content-Length`, or the most a body may be when it has none; bodies of
/// at most [`READ_BUFFER`] are not counted. 503 when there is no room
/// within [`BODY_WAIT`]. A route layer inside the API's credential check
/// (and before the UI's handlers, which check the session before reading a
/// body), so a stranger's body is never held against it.
pub async fn body_budget(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response<Body> {
    let most = state.limits.max_encoded + 64;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = match (request.method(), declared) {
        (&axum::http::Method::GET | &axum::http::Method::HEAD, None) => 0,
        (_, Some(n)) => n.min(most),
        (_, None) => most,
    };
    if bytes <= READ_BUFFER {
        return next.run(request).await;
    }
    let Some(_room) = room(&state.api_bodies, bytes).await else { return busy() };
    next.run(request).await
}

/// The most connections served at once; past it, new ones are closed at
/// once (an attacker holding sockets cannot take the server's memory).
pub const MAX_CONNECTIONS: usize = 8192;

/// The most connections one address may hold at once that no poll
/// authenticated yet (agents' connections stop counting once one does, so
/// a carrier NAT's thousand agents all get in).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 512;

/// The same for a prefix (IPv4 /24, IPv6 /64): a few addresses' worth.
pub const MAX_CONNECTIONS_PER_PREFIX: usize = 2048;

/// A TLS handshake must finish within this (a few round trips and a few KB,
/// seconds even on a 2G link).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection may sit idle between requests (or dribble a request's
/// headers) this long. Longer than the usual poll intervals, so agents keep
/// their connection between polls; bounded, so idle sockets do not pile up.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A request, body included, must arrive and be answered within this.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// At shutdown, how long requests under way may take to finish before
/// their connections are closed anyway. Below `docker stop`'s 10 s, so the
/// usage meters are still written before a SIGKILL; an agent whose poll is
/// cut retries it, which the protocol makes safe.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The connection limits [`serve`] applies (the constants above, unless a
/// test shortens them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once.
    pub max: usize,
    /// Connections at once from one address that no poll authenticated
    /// yet (`usize::MAX`: no cap); see [`gate`].
    pub per_address: usize,
    /// The same per IPv4 /24 or IPv6 /64.
    pub per_prefix: usize,
    /// The load balancers whose PROXY headers are believed.
    pub proxies: proxy::Trusted,
    /// For the TLS handshake.
    pub handshake: std::time::Duration,
    /// Idle between requests, or reading a request's headers.
    pub idle: std::time::Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: MAX_CONNECTIONS,
            per_address: MAX_CONNECTIONS_PER_ADDRESS,
            per_prefix: MAX_CONNECTIONS_PER_PREFIX,
            proxies: proxy::Trusted::none(),
            handshake: HANDSHAKE_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Answers 408 to a request not done within [`REQUEST_TIMEOUT`] (a body sent
/// a byte at a time holds nothing for long).
pub async fn request_timeout(request: axum::extract::Request, next: axum::middleware::Next) -> Response<Body> {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => status(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

/// Serves `router` over TLS on an already-bound listener until `shutdown`
/// completes. Connections are kept alive between polls, within the limits
/// above.
///
/// Shutdown drains, as mini-redis does: the listener stops accepting, idle
/// connections close at once (a TCP close, no TLS alert: bytes on the
/// agents' links), a request under way is answered and then its
/// connection closes, and this returns when every connection is closed
/// (or after [`DRAIN_TIMEOUT`]), with what they carried written to the
/// usage meters.
///
/// # Errors
/// Never at present; accept errors are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, tls, router, shutdown, ConnectionLimits::default()).await
}

/// Logs a repeated warning at most once per [`WARN_EVERY`], with how many
/// were left out: a flood must not become a flood of log lines.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<std::time::Instant>,
    left_out: u64,
}

/// See [`Quiet`].
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Quiet {
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.left_out += 1;
            return;
        }
        if self.left_out > 0 {
            tracing::warn!("{what} ({} more like it in the last {} s)", self.left_out, WARN_EVERY.as_secs());
        } else {
            tracing::warn!("{what}");
        }
        self.last = Some(now);
        self.left_out = 0;
    }
}

/// How long the accept loop pauses after an accept error (out of file
/// descriptors, above all): retrying at once spins a core and floods the
/// log while nothing can change.
pub const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// [`serve`] with other connection limits.
///
/// At start the process's soft limit on open files is raised to its hard
/// limit, and the connection caps are sized below it (see [`gate`]), so a
/// flood of connections meets the caps, not the file limit.
///
/// # Errors
/// Never at present; accept errors are logged (rate-limited) and the loop
/// goes on after a pause.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    serve_inner(listener, tls, router, None, shutdown, limits).await
}

/// [`serve_with`] the server's routes on `state`, and held sessions (see
/// [`session`]) on connections that negotiate them.
///
/// # Errors
/// As [`serve_with`].
pub async fn serve_app(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let router = router(state.clone());
    serve_inner(listener, tls, router, Some(state), shutdown, limits).await
}

async fn serve_inner(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    sessions: Option<Arc<AppState>>,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let mut tls = tls;
    if sessions.is_some() {
        // Offered first: an agent that asks for a session gets one; a
        // browser or the CLI asks for http/1.1 only.
        let config = Arc::make_mut(&mut tls);
        config.alpn_protocols = vec![crate::wire::SESSION_ALPN.to_vec(), b"http/1.1".to_vec()];
    }
    let acceptor = TlsAcceptor::from(tls);
    // Each connection's bytes under TLS, charged to the environment whose
    // agent polls on it (see `api::usage`).
    let meters = Arc::new(crate::meter::Meters::default());
    let open_files = gate::raise_open_file_limit();
    let max = gate::cap_for(limits.max, open_files);
    if max < limits.max {
        tracing::warn!(
            "the open-file limit ({}) allows {max} connections, not {}: raise it (ulimit -n, LimitNOFILE=) for \
             a large fleet",
            open_files.unwrap_or(0),
            limits.max
        );
    }
    // One address never takes more than half the slots, one prefix three
    // quarters: under a low file limit (256 files, 192 slots) a flood from
    // one address still leaves room for its neighbours in the same /24.
    let caps = gate::Caps {
        per_address: limits.per_address.min((max / 2).max(1)),
        per_prefix: limits.per_prefix.min((max * 3 / 4).max(1)),
    };
    let gate = gate::Gate::with_caps(max, caps);
    let mut accept_errors = Quiet::default();
    let refusals = Arc::new(Mutex::new(Quiet::default()));
    // Told to every connection at shutdown; each holds a `done` sender, so
    // the receiver ends when the last connection has closed.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                drop(listener);
                let _ = drain_tx.send(true);
                drop(done_tx);
                if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv()).await.is_err() {
                    tracing::warn!(
                        "shutdown: requests still under way after {} s are cut (their agents retry)",
                        DRAIN_TIMEOUT.as_secs()
                    );
                }
                // Charge what open connections carried since their last poll.
                let meters = meters.clone();
                let _ = tokio::task::spawn_blocking(move || meters.flush_all()).await;
                return Ok(());
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        accept_errors.warn(format_args!("accept: {e}; pausing {} ms", ACCEPT_PAUSE.as_millis()));
                        tokio::select! {
                            () = &mut shutdown => {}
                            () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        }
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, meters, gate) = (acceptor.clone(), router.clone(), meters.clone(), gate.clone());
                let sessions = sessions.clone();
                let refusals = refusals.clone();
                let (mut drain, done) = (drain_rx.clone(), done_tx.clone());
                let from_proxy = limits.proxies.trusts(peer.ip());
                let handshake_limit = limits.handshake;
                tokio::spawn(async move {
                    let _done = done;
                    let refuse = |reason: &'static str, what: std::fmt::Arguments<'_>| {
                        super::metrics::get().refused(reason);
                        refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).warn(what);
                    };
                    // Behind a trusted load balancer, the client is the one
                    // its PROXY header names (see `proxy`).
                    let mut tcp = tcp;
                    let peer = if from_proxy {
                        match tokio::time::timeout(handshake_limit, proxy::read_header(&mut tcp)).await {
                            Ok(Ok(client)) => client.unwrap_or(peer),
                            Ok(Err(e)) => {
                                return refuse("proxy", format_args!("refusing a connection from proxy {peer}: {e}"));
                            }
                            Err(_) => return,
                        }
                    } else {
                        peer
                    };
                    // When the server is full, another connection may give
                    // way; this waits (briefly) for its slot.
                    let admission = match gate.admit(peer.ip()).await {
                        Ok(a) => Arc::new(a),
                        Err(e) => {
                            let reason = match e {
                                gate::Refused::Address(..) => "address",
                                gate::Refused::Prefix(..) => "prefix",
                                gate::Refused::Full(_) => "full",
                            };
                            return refuse(reason, format_args!("refusing a connection from {}: {e}", peer.ip()));
                        }
                    };
                    if !from_proxy {
                        // A PROXY header from anyone else: a load balancer
                        // the server was not told about, or a client
                        // choosing its own address. Admitted first, so a
                        // silent connection waits here within its caps.
                        let peeked = tokio::select! {
                            p = tokio::time::timeout(handshake_limit, proxy::sends_header(&tcp)) => p,
                            () = admission.close.notified() => return,
                            () = draining(&mut drain) => return,
                        };
                        match peeked {
                            Ok(Ok(false)) => {}
                            // Silent for the whole handshake limit, or gone.
                            Err(_) | Ok(Err(_)) => return,
                            Ok(Ok(true)) => return refuse(
                                "proxy",
                                format_args!(
                                    "refusing a connection from {peer}: it sent a PROXY protocol header and is not a \
                                     trusted proxy (--proxy-protocol)"
                                ),
                            ),
                        }
                    }
                    let (key, meter) = meters.open();
                    let tcp = crate::meter::Counting::new(tcp, meter.wire());
                    let handshake = tokio::time::timeout(limits.handshake, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!("tls from {peer}: {e}");
                                meters.forget(key);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("tls from {peer}: no handshake within {:?}", limits.handshake);
                                meters.forget(key);
                                return;
                            }
                        },
                        () = admission.close.notified() => {
                            tracing::debug!("tls from {peer}: closed mid-handshake to make room");
                            meters.forget(key);
                            return;
                        }
                        () = draining(&mut drain) => {
                            meters.forget(key);
                            return;
                        }
                    };
                    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    admission.serving(requests.clone());
                    if let Some(state) = sessions.filter(|_| tls.get_ref().1.alpn_protocol() == Some(crate::wire::SESSION_ALPN)) {
                        // A held session: tern's frames, no HTTP. It counts
                        // as idle for eviction (its agent reconnects).
                        let closing = async {
                            tokio::select! {
                                () = admission.close.notified() => {}
                                () = draining(&mut drain) => {}
                            }
                        };
                        session::serve(state, tls, meter, gate::Authenticate(admission.clone()), closing).await;
                        drop(admission);
                        let _ = tokio::task::spawn_blocking(move || meters.close(key)).await;
                        return;
                    }
                    let in_flight = requests.clone();
                    let admission_for_requests = admission.clone();
                    let inner = TowerToHyperService::new(router);
                    let service = hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        // The peer's address, as axum's `ConnectInfo`: the login rate limit counts by it.
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        req.extensions_mut().insert(meter.clone());
                        req.extensions_mut().insert(gate::Authenticate(admission_for_requests.clone()));
                        let busy = Busy::new(&requests);
                        let call = hyper::service::Service::call(&inner, req);
                        async move {
                            let r = call.await;
                            drop(busy);
                            r
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .auto_date_header(false)
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        // Covers the wait for the next request too: an idle
                        // connection closes after it.
                        .header_read_timeout(limits.idle)
                        // What hyper reads ahead of a handler: a poll's body
                        // is read only once its header is authenticated.
                        .max_buf_size(READ_BUFFER)
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        r = connection.as_mut() => r,
                        () = admission.close.notified() => {
                            // Evicted to make room: finish what is under way, then close.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                        () = draining(&mut drain) => {
                            if in_flight.load(std::sync::atomic::Ordering::Acquire) == 0 {
                                // Idle: closed as a stopped process's sockets
                                // are, without a TLS close_notify (24 B an
                                // agent, and its next poll reconnects either way).
                                Ok(())
                            } else {
                                // A request under way is answered first.
                                connection.as_mut().graceful_shutdown();
                                connection.await
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    drop(admission);
                    // Charge what is left: the last reply, the closing alerts.
                    let _ = tokio::task::spawn_blocking(move || meters.close(key)).await;
                });
            }
        }
    }
}

/// Completes when the server starts to shut down (or is gone).
async fn draining(drain: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` gives is dropped here, not held in the caller.
    let _ = drain.wait_for(|d| *d).await;
}

/// The most a connection reads ahead of its handler (hyper's default is
/// about 400 KB): with thousands of connections, read-ahead is memory.
const READ_BUFFER: usize = 64 * 1024;

/// A request under way on a connection, counted while it lives.
struct Busy(Arc<std::sync::atomic::AtomicUsize>);

impl Busy {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
