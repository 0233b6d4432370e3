//! Operators and access: the admin account, UI sessions, API tokens, and
//! the check every API call but login goes through.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/auth/login` | `{username, password}`: sets the session cookie, returns `{username, csrf_token, expires_at}` |
//! | `POST /api/auth/logout` | ends the session (204) |
//! | `GET /api/auth/me` | who is calling: the session (with its CSRF token) or the API token |
//! | `PUT /api/auth/password` | `{current, new}`: sets the password; every other session of the user ends |
//! | `POST /api/tokens` | `{name}`: a new API token `{id, name, token, created_at}`; the token is shown this once (201) |
//! | `GET /api/tokens` | every token, revoked ones too, never a secret |
//! | `DELETE /api/tokens/{id}` | revokes it, at once |
//!
//! **Credentials.** Every API call except `POST /api/auth/login` (and the
//! agents' `POST /p`, outside the API) needs one of:
//! * an API token, `Authorization: Bearer tern_...` (or the data-directory
//!   admin token in `<data>/admin-token`, which is an API token too). No
//!   CSRF token is needed: a browser never sends this header by itself.
//! * the session cookie `tern_session` (`Secure; HttpOnly; SameSite=Strict;
//!   Path=/`), given by login. Every request of a session but `GET` and
//!   `HEAD` must also carry `X-CSRF-Token` equal to the `csrf_token` login
//!   returned (`GET /api/auth/me` shows it again), or it gets a 403.
//!
//! A missing, unknown, revoked or expired credential gets a 401 with a JSON
//! error, decided from the headers alone, before the body is read. When
//! both are present, the bearer token is the one checked.
//!
//! **Sessions** end after [`SESSION_IDLE`] without a request, and at the
//! latest [`SESSION_LIFETIME`] after login. Only the blake3 of a session id
//! is stored. Their end is moved in the database at most once a minute, and
//! a token's `last_used_at` is written at most once a minute, to spare the
//! disk.
//!
//! **Failed logins are rate-limited** in the database (`login_failures`),
//! so the limits hold across a restart and across server replicas on one
//! database: at most [`MAX_FAILURES_PER_CLIENT`] per client address (IPv6 by /64)
//! within [`FAILURE_WINDOW`]; past that, a login from that address answers
//! 429 with `Retry-After` without looking at the password. Past
//! [`MAX_FAILURES_OVERALL`] over all clients, the server slows down, and
//! turns no one away: attempts from addresses that have failed in the
//! window go one at a time through one lane, each waiting
//! [`OVERLOAD_DELAY`] before its password is checked (one guess every 2 s
//! over each replica), while an address with no failure (the admin at their
//! desk) is checked at once. (A server-wide refusal would let anyone lock the admin out: twelve
//! addresses with five wrong tries each used to do it for 15 minutes.) An
//! attempt counts as failed from the moment it starts until
//! its password is found right, so parallel guesses cannot overrun the
//! limit; a right password clears its own client's count, no other. A wrong
//! `current` password in `PUT /api/auth/password` counts the same. The
//! client address is the TCP peer: behind a reverse proxy every client
//! shares the proxy's count (`X-Forwarded-For` is not trusted).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::types::{ChangePassword, CreateToken, CreatedToken, LoggedIn, Login, Me, MeToken, TokenView};
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::http::{AppState, now};
use crate::server::store::StoreError;
use crate::server::store::access::{ADMIN, ApiToken, Role, hash_password, random_bytes, secret_hash, verify_password};
use crate::server::store::prelude::*;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tern_session";

/// The header a session's non-GET requests carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session ends after this long without a request (12 h).
pub const SESSION_IDLE: i64 = 12 * 3600;

/// A session ends this long after login, however much it is used (7 days);
/// the cookie's `Max-Age`.
pub const SESSION_LIFETIME: i64 = 7 * 24 * 3600;

/// A session's end, or a token's `last_used_at`, is written at most this
/// often (seconds).
pub const TOUCH_EVERY: i64 = 60;

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The longest API token name, in characters.
pub const MAX_TOKEN_NAME: usize = 128;

/// What every API token starts with (then 43 characters of base64url: 32
/// random bytes).
pub const TOKEN_PREFIX: &str = "tern_";

/// Failed logins allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES_PER_CLIENT: usize = 5;

/// Failed logins over all clients within [`FAILURE_WINDOW`] past which
/// addresses that failed are slowed down by [`OVERLOAD_DELAY`].
pub const MAX_FAILURES_OVERALL: usize = 60;

/// How long an attempt from an address that failed waits, while failures
/// overall are past [`MAX_FAILURES_OVERALL`].
pub const OVERLOAD_DELAY: Duration = Duration::from_secs(2);

/// The window failed logins are counted over (15 minutes).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Password hashes checked at once (argon2 takes about 19 MiB and tens of
/// milliseconds each).
pub const CONCURRENT_VERIFICATIONS: usize = 2;

/// The variable that gives the admin's password at first start.
pub const PASSWORD_ENV: &str = "TERN_ADMIN_PASSWORD";

/// The variable that names a file holding the admin's password.
pub const PASSWORD_FILE_ENV: &str = "TERN_ADMIN_PASSWORD_FILE";

const UNAUTHENTICATED: &str =
    "missing or wrong credential: an API token (Authorization: Bearer) or a session cookie (POST /api/auth/login)";

/// Who is calling, as the check found it; handlers read it as an
/// `Extension<Caller>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An API token.
    Token {
        /// Its id.
        id: u64,
        /// Its name.
        name: String,
        /// Its user (`None`: a data-directory token older than users, which
        /// acts as the admin).
        user_id: Option<u64>,
        /// Its user's name.
        username: String,
        /// What it may do now.
        role: Role,
        /// Its user's own role (what decides what it sees: see
        /// `teams::Scope`).
        user_role: Role,
    },
    /// A UI session.
    Session {
        /// The blake3 of the session id.
        id_hash: [u8; 32],
        /// Its user.
        user_id: u64,
        /// Its user's name.
        username: String,
        /// Its CSRF token.
        csrf: String,
        /// When it ends unless used.
        expires_at: i64,
        /// Its user's role.
        role: Role,
    },
}

impl Caller {
    /// What the caller may do.
    pub const fn role(&self) -> Role {
        match self {
            Self::Token { role, .. } | Self::Session { role, .. } => *role,
        }
    }

    /// The caller's user's own role (a token's may be limited below it).
    pub const fn user_role(&self) -> Role {
        match self {
            Self::Token { user_role, .. } => *user_role,
            Self::Session { role, .. } => *role,
        }
    }

    /// The caller's user.
    pub const fn user_id(&self) -> Option<u64> {
        match self {
            Self::Token { user_id, .. } => *user_id,
            Self::Session { user_id, .. } => Some(*user_id),
        }
    }

    /// The caller's user's name.
    pub fn username(&self) -> &str {
        match self {
            Self::Token { username, .. } | Self::Session { username, .. } => username,
        }
    }
}

/// The least role a call needs, by its method and route template (see
/// the README's "Users and roles"):
/// * **viewer**: every read but the admin's; the caller's own session,
///   password and API tokens;
/// * **operator**: acting on what runs: commands, whole-stack logs, poll
///   intervals, stacks, jobs, images (pulls, uploads, deliveries) and
///   transfer limits;
/// * **admin**: everything else: environments (creating, changing,
///   deleting, their join tokens and secrets), onboarding (fleet tokens,
///   the waiting room), groups, tags, settings, registries, agent updates,
///   users, teams; and reading join tokens, fleet keys, the waiting room
///   and agent updates (they name environments of every team), users,
///   teams and the audit log.
///
/// A route not named here needs the admin for anything but a read.
pub fn needs(method: &Method, route: &str) -> Role {
    let under = |prefix: &str| route == prefix || route.strip_prefix(prefix).is_some_and(|r| r.starts_with('/'));
    // Secrets, and the record of who did what: the admin's, reads too.
    if under("/api/users")
        || under("/api/teams")
        || under("/api/audit")
        || under("/api/rollouts")
        || under("/api/devices")
        || under("/api/fleet-tokens")
        || route == "/api/environments/{id}/deploy"
    {
        return Role::Admin;
    }
    // One's own session, password and tokens.
    if under("/api/auth") || under("/api/tokens") {
        return Role::Viewer;
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return Role::Viewer;
    }
    const OPERATOR: &[&str] = &[
        "/api/environments/{id}/commands",
        "/api/commands",
        "/api/environments/{id}/stacks",
        "/api/environments/{id}/intervals",
        "/api/environments/{id}/variables",
        "/api/environments/{id}/window",
        "/api/environments/{id}/transfer-limits",
        "/api/stacks",
        "/api/jobs",
        "/api/images",
    ];
    if OPERATOR.iter().any(|p| under(p)) {
        return Role::Operator;
    }
    Role::Admin
}

/// The middleware behind the credential check (and inside the audit log's,
/// so a refusal is recorded): a caller whose role is less than the route
/// [`needs`] gets a 403 saying so, before the body is read.
pub async fn require_role(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path().to_owned(), |m| m.as_str().to_owned());
    let need = needs(request.method(), &route);
    let Some(caller) = request.extensions().get::<Caller>() else {
        return ApiError::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED).into_response();
    };
    let role = caller.role();
    if role < need {
        let who = match caller {
            Caller::Token { name, username, .. } => format!("the API token {name:?} of {username:?}"),
            Caller::Session { username, .. } => format!("{username:?}"),
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} {route} needs the {need} role; {who} has the {role} role. Nothing was changed.",
                request.method()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Failed logins, counted in the database (`login_failures`), so that the
/// limits hold however many server replicas share it; what is kept here is
/// this replica's guard on its own CPU (password checks at once, and the
/// slow lane).
#[derive(Debug)]
pub struct LoginLimiter {
    verifying: tokio::sync::Semaphore,
    /// While failures overall are past [`MAX_FAILURES_OVERALL`], tries from
    /// addresses that failed go through here one at a time, each waiting
    /// [`OVERLOAD_DELAY`]: one guess every 2 s over each replica, however
    /// many addresses make them.
    slow_lane: tokio::sync::Mutex<()>,
}

/// A login attempt under way, counted as failed until
/// [`LoginLimiter::succeeded`].
#[derive(Debug)]
pub struct Attempt {
    client: String,
    /// Wait this long before checking the password (see [`OVERLOAD_DELAY`]).
    pub delay: Duration,
}

/// The client key: see [`crate::server::http::gate::address_key`].
fn client_key(ip: Option<IpAddr>) -> IpAddr {
    crate::server::http::gate::address_key(ip)
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self {
            verifying: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
            slow_lane: tokio::sync::Mutex::new(()),
        }
    }
}

impl LoginLimiter {
    /// Starts an attempt from `ip` at `now` (Unix seconds), counted as
    /// failed until it succeeds; or how long to wait when its address
    /// failed too often. While failures overall are past
    /// [`MAX_FAILURES_OVERALL`], an attempt from an address that failed in
    /// the window comes with a delay.
    ///
    /// # Errors
    /// The store's; inside, the time until the oldest failure that blocks
    /// leaves the window.
    pub fn begin(tx: &dyn Transaction, ip: Option<IpAddr>, now: i64) -> Result<Result<Attempt, Duration>, StoreError> {
        let client = client_key(ip).to_string();
        let window = FAILURE_WINDOW.as_secs() as i64;
        let (failed_before, overall, oldest) =
            tx.login_attempt(&client, now, now - window + 1, MAX_FAILURES_PER_CLIENT as u64)?;
        if failed_before >= MAX_FAILURES_PER_CLIENT as u64 {
            let left = oldest.map_or(window, |t| window - (now - t)).max(1);
            return Ok(Err(Duration::from_secs(left.unsigned_abs())));
        }
        let delay =
            if overall >= MAX_FAILURES_OVERALL as u64 && failed_before > 0 { OVERLOAD_DELAY } else { Duration::ZERO };
        Ok(Ok(Attempt { client, delay }))
    }

    /// Waits out an attempt's delay in the slow lane (see
    /// [`Attempt::delay`]); the lane is held until the guard is dropped,
    /// after the password is checked.
    pub async fn wait(&self, attempt: &Attempt) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if attempt.delay.is_zero() {
            return None;
        }
        let lane = self.slow_lane.lock().await;
        tokio::time::sleep(attempt.delay).await;
        Some(lane)
    }

    /// The attempt's password was right: its client's failures are
    /// forgotten (no other client's), this attempt's with them.
    ///
    /// # Errors
    /// The store's.
    pub fn succeeded(tx: &dyn Transaction, attempt: &Attempt) -> Result<(), StoreError> {
        tx.login_succeeded(&attempt.client)
    }
}

/// [`LoginLimiter::begin`] on the store, for a handler.
async fn begin_login(state: &Arc<AppState>, ip: Option<IpAddr>) -> Result<Attempt, Response> {
    let now = now();
    with_store(state, move |tx| Ok(LoginLimiter::begin(tx, ip, now)?))
        .await
        .map_err(IntoResponse::into_response)?
        .map_err(too_many)
}

/// [`LoginLimiter::succeeded`] on the store, for a handler.
async fn login_succeeded(state: &Arc<AppState>, attempt: Attempt) -> Result<(), Response> {
    with_store(state, move |tx| Ok(LoginLimiter::succeeded(tx, &attempt)?)).await.map_err(IntoResponse::into_response)
}

/// `Retry-After` seconds for a wait.
fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins from this address; try again in {secs} s"),
    )
    .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The client's address (the TCP peer, which `serve` adds to each request).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// What a request presents as its credential.
enum Presented {
    None,
    Bearer(String),
    Cookie(String),
}

fn presented(headers: &HeaderMap) -> Presented {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        // Another scheme, or a header that is not text, is a wrong token.
        let token = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
        return Presented::Bearer(token.trim().to_owned());
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE).and_then(|rest| rest.strip_prefix('=')));
    match cookie {
        Some(c) => Presented::Cookie(c.trim().to_owned()),
        None => Presented::None,
    }
}

/// Equal, in time independent of where they differ (blake3 hashes compare
/// in constant time).
fn same_secret(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// Checks a request's credential from its headers (the body is not read);
/// see the module doc.
///
/// # Errors
/// 401 for a missing or wrong credential, 403 for a session request
/// without its CSRF token.
pub async fn authenticate(state: &Arc<AppState>, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthenticated = || ApiError::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED);
    match presented(headers) {
        Presented::None => Err(unauthenticated()),
        Presented::Bearer(token) => {
            if token.is_empty() {
                return Err(unauthenticated());
            }
            let hash = secret_hash(&token);
            // Checked on a reading connection; the rare touch (once a
            // minute per token) is the only write.
            let now = now();
            // A revoked token, or one whose user is disabled or gone, is
            // refused alike.
            let found = read_store(state, move |store| match store.api_token_by_hash(&hash)? {
                Some(t) if t.revoked_at.is_none() => Ok(t.rights().map(|role| (t, role))),
                _ => Ok(None),
            })
            .await?;
            let (t, role) = found.ok_or_else(unauthenticated)?;
            if t.last_used_at.is_none_or(|used| now - used >= TOUCH_EVERY) {
                let id = t.id;
                with_store(state, move |store| Ok(store.touch_api_token(id, now)?)).await?;
            }
            // The data directory's token is the admin's whatever its owner.
            let user_role = if t.data_directory { Role::Admin } else { t.owner.as_ref().map_or(role, |o| o.2) };
            let (user_id, username) = t.owner.map_or((None, ADMIN.to_owned()), |(id, name, ..)| (Some(id), name));
            Ok(Caller::Token { id: t.id, name: t.name, user_id, username, role, user_role })
        }
        Presented::Cookie(id) => {
            if id.is_empty() {
                return Err(unauthenticated());
            }
            let id_hash = secret_hash(&id);
            let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let safe = *method == Method::GET || *method == Method::HEAD;
            let now = now();
            let (caller, touch) = read_store(state, move |store| {
                let Some(s) = store.session(&id_hash, now)? else {
                    return Err(ApiError::new(StatusCode::UNAUTHORIZED, "session expired or unknown: log in again"));
                };
                if !safe && !csrf.is_some_and(|c| same_secret(&c, &s.csrf)) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "missing or wrong X-CSRF-Token header: a session's requests other than GET carry the \
                         csrf_token its login returned",
                    ));
                }
                let expires_at = (now + SESSION_IDLE).min(s.created_at + SESSION_LIFETIME);
                let touch = (expires_at - s.expires_at >= TOUCH_EVERY).then_some(expires_at);
                let caller = Caller::Session {
                    id_hash,
                    user_id: s.user_id,
                    username: s.username,
                    csrf: s.csrf,
                    expires_at: expires_at.max(s.expires_at),
                    role: s.role,
                };
                Ok((caller, touch))
            })
            .await?;
            if let (Some(expires_at), Caller::Session { id_hash, .. }) = (touch, &caller) {
                let id_hash = *id_hash;
                with_store(state, move |store| Ok(store.touch_session(&id_hash, expires_at)?)).await?;
            }
            Ok(caller)
        }
    }
}

/// The middleware in front of every API route but login: refuses a request
/// without a valid credential before its body is read, and hands the
/// [`Caller`] to the handler.
pub async fn require_auth(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    match authenticate(&state, request.method(), request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The routes that need a credential (put behind [`require_auth`] by
/// `api::routes`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/me", get(me))
        .route("/api/auth/password", put(change_password))
        .route("/api/tokens", post(create_token).get(list_tokens))
        .route("/api/tokens/{id}", delete(revoke_token))
}

/// The routes open to anyone: login (its body is small).
pub fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/auth/login", post(login))
        .layer(axum::extract::DefaultBodyLimit::max(4 * MAX_PASSWORD_LEN))
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            data_directory: t.data_directory,
            user: t.owner.map(|(_, name, ..)| name),
            role: t.role.map(|r| r.as_str().to_owned()),
        }
    }
}

/// A fresh API token: `tern_` and 32 random bytes in base64url.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

fn session_cookie(id: &str, max_age: i64) -> HeaderValue {
    HeaderValue::try_from(format!(
        "{SESSION_COOKIE}={id}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tern_session=; Max-Age=0"))
}

/// A PHC string to check a password against when the user does not exist,
/// so that the answer takes as long as for a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never matched").unwrap_or_default())
}

/// Checks a password on the blocking pool, a few at a time. `None` (no
/// such user) checks against a decoy and is never right.
async fn check_password(state: &Arc<AppState>, hash: Option<String>, password: String) -> Result<bool, ApiError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    let _permit = state.logins.verifying.acquire().await.map_err(|_| ApiError::internal())?;
    tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&h, &password),
        None => {
            let _ = verify_password(decoy_hash(), &password);
            false
        }
    })
    .await
    .map_err(|e| {
        tracing::error!("password check panicked: {e}");
        ApiError::internal()
    })
}

/// Checks a new password's length.
///
/// # Errors
/// A message for the operator when it is too short or too long.
pub fn check_new_password(what: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("{what}: at least {MIN_PASSWORD_LEN} characters"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!("{what}: at most {MAX_PASSWORD_LEN} bytes"));
    }
    Ok(())
}

/// Hashes a new password on the blocking pool, a few at a time (see
/// [`CONCURRENT_VERIFICATIONS`]).
pub(super) async fn hash_new_password(state: &Arc<AppState>, password: String) -> Result<String, ApiError> {
    let _permit = state.logins.verifying.acquire().await.map_err(|_| ApiError::internal())?;
    tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(|_| ApiError::internal())?.map_err(
        |e| {
            tracing::error!("{e}");
            ApiError::internal()
        },
    )
}

/// `POST /api/auth/login`: starts a session.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<Login>,
) -> Result<Response, Response> {
    // Every attempt the limiter lets through goes in the audit log, with
    // the name as typed (at most 64 characters, `unverified:` unless the
    // password was right) and never the password. Attempts refused by the
    // limiter (429) are not: they never reach a password check, and an
    // unauthenticated flood must not grow the log without bound (the
    // limiter lets 5 failures per address and 60 overall through every 15
    // minutes).
    let name = req.username.chars().filter(|c| !c.is_control()).take(64).collect::<String>();
    let task = tokio::spawn(async move {
        let r = login_checked(&state, ip, req).await;
        let status = match &r {
            Ok(resp) | Err(resp) => resp.status(),
        };
        if status != StatusCode::TOO_MANY_REQUESTS {
            let prefix = if status.is_success() { "user:" } else { super::audit::FAILED_LOGIN_ACTOR };
            let entry = crate::server::store::audit::AuditEntry {
                id: 0,
                at: now(),
                actor: format!("{prefix}{name}"),
                action: "login".into(),
                target: "/api/auth/login".into(),
                status: status.as_u16(),
                addr: ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            };
            super::audit::record(&state, entry).await;
        }
        r
    });
    match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("login handler panicked: {e}");
            Err(ApiError::internal().into_response())
        }
    }
}

async fn login_checked(state: &Arc<AppState>, ip: Option<IpAddr>, req: Login) -> Result<Response, Response> {
    let state = state.clone();
    let attempt = begin_login(&state, ip).await?;
    let _lane = state.logins.wait(&attempt).await;
    let name = req.username.clone();
    let user = read_store(&state, move |store| Ok(store.user(&name)?)).await.map_err(IntoResponse::into_response)?;
    let right = check_password(&state, user.as_ref().map(|u| u.password_hash.clone()), req.password)
        .await
        .map_err(IntoResponse::into_response)?;
    // A disabled user is told the same as a wrong password: the answer
    // says nothing of which names exist.
    let Some(user) = user.filter(|u| right && u.disabled_at.is_none()) else {
        tracing::info!(
            "failed login for {:?} from {}",
            req.username.chars().take(64).collect::<String>(),
            client_key(ip)
        );
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password").into_response());
    };
    login_succeeded(&state, attempt).await?;
    let id = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let csrf_token = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let (id_hash, csrf) = (secret_hash(&id), csrf_token.clone());
    let now = now();
    let expires_at = now + SESSION_IDLE.min(SESSION_LIFETIME);
    with_store(&state, move |store| {
        store.delete_expired_sessions(now)?;
        Ok(store.create_session(&id_hash, user.id, &csrf, now, expires_at)?)
    })
    .await
    .map_err(IntoResponse::into_response)?;
    tracing::info!("{} logged in from {}", user.name, client_key(ip));
    let mut r = Json(LoggedIn { username: user.name, csrf_token, expires_at, role: user.role.as_str().to_owned() })
        .into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(&id, SESSION_LIFETIME));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /api/auth/logout`: ends the session and clears its cookie.
pub async fn logout(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    let Caller::Session { id_hash, .. } = caller else {
        return ApiError::bad_request(
            "logout ends a session; an API token is revoked instead (DELETE /api/tokens/{id})",
        )
        .into_response();
    };
    if let Err(e) = with_store(&state, move |store| Ok(store.delete_session(&id_hash)?)).await {
        return e.into_response();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0));
    r
}

/// `GET /api/auth/me`.
pub async fn me(Extension(caller): Extension<Caller>) -> Json<Me> {
    Json(match caller {
        Caller::Token { id, name, username, role, .. } => {
            Me::Token { token: MeToken { id, name }, username, role: role.as_str().to_owned() }
        }
        Caller::Session { username, csrf, expires_at, role, .. } => {
            Me::Session { csrf_token: csrf, expires_at, username, role: role.as_str().to_owned() }
        }
    })
}

/// `PUT /api/auth/password`: the caller's password (an API token's caller
/// is its user), given the current one. Every session of the user but the
/// caller's ends.
pub async fn change_password(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ChangePassword>,
) -> Result<Json<serde_json::Value>, Response> {
    check_new_password("new", &req.new).map_err(|e| ApiError::invalid(e).into_response())?;
    let keep = match &caller {
        Caller::Session { id_hash, .. } => Some(*id_hash),
        Caller::Token { .. } => None,
    };
    let user_id = caller.user_id();
    let user = with_store(&state, move |store| match user_id {
        Some(id) => Ok(store.user_by_id(id)?),
        None => Ok(store.user(ADMIN)?),
    })
    .await
    .map_err(IntoResponse::into_response)?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such user").into_response())?;
    let attempt = begin_login(&state, ip).await?;
    let _lane = state.logins.wait(&attempt).await;
    if !check_password(&state, Some(user.password_hash.clone()), req.current)
        .await
        .map_err(IntoResponse::into_response)?
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "current: wrong password").into_response());
    }
    login_succeeded(&state, attempt).await?;
    let hash = hash_new_password(&state, req.new).await.map_err(IntoResponse::into_response)?;
    let ended = with_store(&state, move |store| {
        store
            .set_password(user.id, &hash, keep.as_ref(), now())?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such user"))
    })
    .await
    .map_err(IntoResponse::into_response)?;
    tracing::info!("password of {} changed; {ended} other sessions ended", user.name);
    Ok(Json(serde_json::json!({ "username": user.name, "sessions_ended": ended })))
}

/// An API token's name: trimmed, 1 to [`MAX_TOKEN_NAME`] characters, no
/// control characters.
///
/// # Errors
/// A 422 saying so.
pub(crate) fn check_token_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME {
        return Err(ApiError::invalid(format!("name: 1 to {MAX_TOKEN_NAME} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name: no control characters"));
    }
    Ok(name)
}

/// A role's name from a request.
///
/// # Errors
/// A 422 naming `field` and the roles there are.
pub(crate) fn parse_role(field: &str, name: &str) -> Result<Role, ApiError> {
    Role::parse(name.trim()).ok_or_else(|| ApiError::invalid(format!("{field}: viewer, operator or admin")))
}

/// `POST /api/tokens`: a token of the caller's user, with at most the
/// caller's rights.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, [(header::HeaderName, HeaderValue); 1], Json<CreatedToken>), ApiError> {
    let name = check_token_name(&req.name)?;
    let limit = req.role.as_deref().map(|r| parse_role("role", r)).transpose()?;
    if let Some(limit) = limit.filter(|l| *l > caller.role()) {
        return Err(ApiError::invalid(format!("role: at most your own ({}); {limit} was asked", caller.role())));
    }
    // A token made by a limited token is limited as it is.
    let limit = match (&caller, limit) {
        (Caller::Token { role, .. }, None) => Some(*role),
        (_, l) => l,
    };
    let token = new_token();
    let hash = secret_hash(&token);
    // The caller's user; `None` for a data-directory token older than
    // users, whose tokens are the admin's.
    let owner = caller.user_id();
    let t = with_store(&state, move |store| {
        let user = match owner {
            Some(id) => id,
            None => store.user(ADMIN)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no admin user"))?.id,
        };
        Ok(store.create_api_token(&name, &hash, user, limit, now())?)
    })
    .await?;
    tracing::info!("API token {} ({:?}) created by {}", t.id, t.name, caller.username());
    let user = t.owner.as_ref().map_or_else(|| caller.username().to_owned(), |(_, n, ..)| n.clone());
    // The secret is in this reply only: no cache may keep it.
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(CreatedToken {
            id: t.id,
            name: t.name,
            token,
            created_at: t.created_at,
            user,
            role: t.role.map(|r| r.as_str().to_owned()),
        }),
    ))
}

/// Whether the caller may see `t`: an admin any, others their own.
fn may_see_token(caller: &Caller, t: &ApiToken) -> bool {
    caller.role() == Role::Admin || t.owner.as_ref().is_some_and(|(id, ..)| Some(*id) == caller.user_id())
}

/// Whether the caller may revoke `t`: one it may see, that does no more
/// than the caller may (a token limited to looking cannot revoke its
/// user's full tokens), and the data directory's only as an admin.
fn may_revoke_token(caller: &Caller, t: &ApiToken) -> bool {
    may_see_token(caller, t)
        && t.rights().is_none_or(|r| r <= caller.role())
        && (!t.data_directory || caller.role() == Role::Admin)
}

/// `GET /api/tokens`: an admin's lists every token, anyone else's their own.
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let list = read_store(&state, |store| Ok(store.api_tokens()?)).await?;
    Ok(Json(list.into_iter().filter(|t| may_see_token(&caller, t)).map(Into::into).collect()))
}

/// `DELETE /api/tokens/{id}`: revokes it (again: no change). Another
/// user's token is not found unless the caller is an admin.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<TokenView>, ApiError> {
    let t = with_store(&state, move |store| {
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no API token {id}"));
        let t = store.api_token(id)?.ok_or_else(not_found)?;
        if !may_see_token(&caller, &t) {
            return Err(not_found());
        }
        if !may_revoke_token(&caller, &t) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "API token {id} may do more than this caller ({}): it is not this caller's to revoke",
                    caller.role()
                ),
            ));
        }
        store.revoke_api_token(id, now())?.ok_or_else(not_found)
    })
    .await?;
    tracing::info!("API token {} ({:?}) revoked", t.id, t.name);
    Ok(Json(t.into()))
}

/// The admin password an operator gives: [`PASSWORD_ENV`], else the file
/// [`PASSWORD_FILE_ENV`] names (a trailing newline dropped). Empty
/// variables count as unset. `var` reads a variable.
///
/// # Errors
/// When both are set, the file cannot be read, or the password is too
/// short or too long.
pub fn given_password(var: impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let direct = var(PASSWORD_ENV).filter(|v| !v.is_empty());
    let file = var(PASSWORD_FILE_ENV).filter(|v| !v.is_empty());
    let (password, what) = match (direct, file) {
        (Some(_), Some(_)) => return Err(format!("set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}, not both")),
        (Some(p), None) => (p, PASSWORD_ENV.to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{PASSWORD_FILE_ENV} {path}: {e}"))?;
            (text.trim_end_matches(['\n', '\r']).to_owned(), format!("the password in {path}"))
        }
        (None, None) => return Ok(None),
    };
    check_new_password(&what, &password)?;
    Ok(Some(password))
}

/// At the server's start: makes the admin account when there is none, with
/// the password the operator gave ([`given_password`]) or else a generated
/// one. Returns the generated password, to be shown this once.
///
/// # Errors
/// When the given password is not acceptable, or the store fails.
pub fn ensure_admin(store: &dyn Transaction, var: impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let db = |e: StoreError| e.to_string();
    if store.user(ADMIN).map_err(db)?.is_some() {
        if var(PASSWORD_ENV).is_some_and(|v| !v.is_empty()) || var(PASSWORD_FILE_ENV).is_some_and(|v| !v.is_empty()) {
            tracing::info!(
                "{PASSWORD_ENV}/{PASSWORD_FILE_ENV} ignored: the admin account exists (change its password with \
                 PUT /api/auth/password, or `tern admin reset-password` on the data directory)"
            );
        }
        return Ok(None);
    }
    let (password, generated) = match given_password(&var)? {
        Some(p) => (p, false),
        None => (crate::server::store::access::generate_password(), true),
    };
    let hash = hash_password(&password).map_err(|e| e.to_string())?;
    store.create_user(ADMIN, &hash, Role::Admin, now()).map_err(db)?;
    Ok(generated.then_some(password))
}

/// Whether `token` is an API token that was revoked (the data-directory
/// token then needs replacing).
///
/// # Errors
/// When the store fails.
pub fn token_revoked(store: &dyn Transaction, token: &str) -> Result<bool, StoreError> {
    Ok(store.api_token_by_hash(&secret_hash(token))?.is_some_and(|t| t.revoked_at.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::server::store::Store;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// The limiter's `begin` on a store, at `t` seconds after 1,000,000.
    type Begin = fn(&Store, Option<IpAddr>, i64) -> Result<Attempt, Duration>;

    /// A store and the limiter's `begin`, at Unix seconds from 1,000,000.
    fn limiter() -> (Store, Begin) {
        (Store::scratch().unwrap(), |s: &Store, ip, t| LoginLimiter::begin(&s.autocommit(), ip, 1_000_000 + t).unwrap())
    }

    #[test]
    fn five_failures_block_a_client_for_the_window_and_not_another() {
        let (s, begin) = limiter();
        let window = FAILURE_WINDOW.as_secs() as i64;
        for i in 0..MAX_FAILURES_PER_CLIENT {
            begin(&s, ip("192.0.2.1"), i as i64).unwrap();
        }
        let wait = begin(&s, ip("192.0.2.1"), 60).unwrap_err();
        assert_eq!(wait, FAILURE_WINDOW - Duration::from_secs(60));
        // Another client logs in fine; that does not clear the first one's count.
        let other = begin(&s, ip("192.0.2.2"), 61).unwrap();
        LoginLimiter::succeeded(&s.autocommit(), &other).unwrap();
        assert!(begin(&s, ip("192.0.2.1"), 62).is_err());
        // Once the oldest failure leaves the window, one more try.
        assert!(begin(&s, ip("192.0.2.1"), window).is_ok());
        assert!(begin(&s, ip("192.0.2.1"), window).is_err());
    }

    #[test]
    fn a_right_password_clears_its_own_clients_count() {
        let (s, begin) = limiter();
        for _ in 0..MAX_FAILURES_PER_CLIENT - 1 {
            begin(&s, ip("192.0.2.1"), 0).unwrap();
        }
        let ok = begin(&s, ip("192.0.2.1"), 0).unwrap();
        LoginLimiter::succeeded(&s.autocommit(), &ok).unwrap();
        for _ in 0..MAX_FAILURES_PER_CLIENT {
            begin(&s, ip("192.0.2.1"), 0).unwrap();
        }
        assert!(begin(&s, ip("192.0.2.1"), 0).is_err());
    }

    #[test]
    fn failures_from_many_clients_slow_failing_addresses_down_and_turn_no_clean_one_away() {
        // Twelve addresses with five wrong tries each once refused everyone,
        // the admin with the right password included, for 15 minutes.
        let (s, begin) = limiter();
        for i in 0..MAX_FAILURES_OVERALL {
            let a = begin(&s, Some(IpAddr::from([10, 0, 0, (i / MAX_FAILURES_PER_CLIENT) as u8])), 0).unwrap();
            assert!(a.delay.is_zero() || i >= MAX_FAILURES_OVERALL, "no delay before the overall limit");
        }
        let clean = begin(&s, ip("198.51.100.7"), 5).unwrap();
        assert_eq!(clean.delay, Duration::ZERO, "an address with no failure is checked at once");
        // One that failed before is slowed down, not refused.
        let failed = begin(&s, ip("198.51.100.7"), 6).unwrap();
        assert_eq!(failed.delay, OVERLOAD_DELAY);
        // Once the window has passed, no delay.
        let later = begin(&s, ip("198.51.100.8"), FAILURE_WINDOW.as_secs() as i64).unwrap();
        assert_eq!(later.delay, Duration::ZERO);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let (s, begin) = limiter();
        for i in 0..MAX_FAILURES_PER_CLIENT {
            begin(&s, ip(&format!("2001:db8:1:2::{i:x}")), 0).unwrap();
        }
        assert!(begin(&s, ip("2001:db8:1:2:ffff::1"), 0).is_err(), "same /64");
        assert!(begin(&s, ip("2001:db8:1:3::1"), 0).is_ok(), "another /64");
        assert_eq!(client_key(ip("::ffff:192.0.2.9")), IpAddr::from([192, 0, 2, 9]));
        assert_eq!(client_key(None), IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn credentials_are_read_from_the_bearer_header_first_then_the_cookie() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h), Presented::None));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; tern_session=abc ; c=d"));
        assert!(matches!(presented(&h), Presented::Cookie(c) if c == "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tern_x"));
        assert!(matches!(presented(&h), Presented::Bearer(t) if t == "tern_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWRtaW46eA=="));
        assert!(matches!(presented(&h), Presented::Bearer(t) if t.is_empty()), "another scheme is a wrong token");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("tern_sessionx=1"));
        assert!(matches!(presented(&h), Presented::None));
    }

    #[test]
    fn tokens_are_tern_and_43_base64url_characters() {
        let t = new_token();
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 43);
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(URL_SAFE_NO_PAD.decode(&t[TOKEN_PREFIX.len()..]).unwrap().len(), 32);
        assert_ne!(new_token(), t);
    }

    #[test]
    fn the_admin_is_made_at_first_start_with_the_given_or_a_generated_password() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        assert_eq!(
            ensure_admin(&s, vars(&[(PASSWORD_ENV, "short")])).unwrap_err(),
            format!("{PASSWORD_ENV}: at least 12 characters")
        );
        assert!(s.user(ADMIN).unwrap().is_none(), "a refused password makes nothing");
        assert_eq!(ensure_admin(&s, vars(&[(PASSWORD_ENV, "a fine long password")])).unwrap(), None);
        let admin = s.user(ADMIN).unwrap().unwrap();
        assert!(verify_password(&admin.password_hash, "a fine long password"));
        // Later starts change nothing, whatever the variables say.
        assert_eq!(ensure_admin(&s, vars(&[(PASSWORD_ENV, "another long password")])).unwrap(), None);
        assert_eq!(s.user(ADMIN).unwrap().unwrap(), admin);

        let s_db = Store::scratch().unwrap();

        let s = s_db.autocommit();
        let generated = ensure_admin(&s, vars(&[(PASSWORD_ENV, "")])).unwrap().expect("generated and returned");
        assert!(generated.len() >= 20);
        assert!(verify_password(&s.user(ADMIN).unwrap().unwrap().password_hash, &generated));
        assert_eq!(ensure_admin(&s, vars(&[])).unwrap(), None, "shown once");
    }

    #[test]
    fn the_password_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("tern-admin-password-{}", std::process::id()));
        std::fs::write(&path, "from a file, long enough\n").unwrap();
        let p = path.to_str().unwrap().to_owned();
        let file = |k: &str| (k == PASSWORD_FILE_ENV).then(|| p.clone());
        assert_eq!(given_password(file).unwrap().as_deref(), Some("from a file, long enough"));
        let both = |k: &str| Some(if k == PASSWORD_ENV { "a fine long password".to_owned() } else { p.clone() });
        assert!(given_password(both).unwrap_err().contains("not both"));
        std::fs::remove_file(&path).unwrap();
        assert!(given_password(file).unwrap_err().contains(PASSWORD_FILE_ENV));
        assert_eq!(given_password(|_| None).unwrap(), None);
    }
}
