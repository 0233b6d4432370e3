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
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Response, StatusCode};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::poll::{self, Refusal};
use super::store::Store;
use crate::wire::codec::{Codec, Limits};

/// The poll endpoint's path: one byte of path, paid on every poll.
pub const POLL_PATH: &str = "/p";

/// What the handlers share. SQLite calls are short and run on the blocking
/// pool, one at a time.
pub struct AppState {
    inner: Mutex<(Store, Codec)>,
    limits: Limits,
    /// The certificate fingerprint join tokens carry.
    pub fingerprint: [u8; 32],
    /// Failed logins, counted in memory (see [`super::api::access`]).
    pub logins: super::api::access::LoginLimiter,
}

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
        store.ensure_data_directory_token(&super::store::access::secret_hash(admin_token), now())?;
        Ok(Arc::new(Self {
            inner: Mutex::new((store, Codec::new(limits)?)),
            limits,
            fingerprint,
            logins: super::api::access::LoginLimiter::default(),
        }))
    }

    /// Runs `f` with the store (call from a blocking task).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard.0)
    }
}

/// Seconds since the Unix epoch.
pub(super) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn status(code: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = code;
    r
}

async fn poll_handler(
    State(state): State<Arc<AppState>>,
    meter: Option<axum::Extension<Arc<crate::meter::ConnMeter>>>,
    body: Bytes,
) -> Response<Body> {
    let shared = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut guard = shared.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (store, codec) = &mut *guard;
        let now = now();
        let outcome = poll::handle(store, codec, &body, now);
        // Data usage: this poll, and the connection's bytes since the last one.
        let meter = meter.as_ref().map(|m| &*m.0);
        super::api::usage::charge_poll(store, meter, &shared, &body, &outcome, now);
        outcome
    })
    .await;
    match result {
        Ok(Ok(reply)) => Response::new(Body::from(reply)),
        Ok(Err(Refusal::Unauthenticated)) => status(StatusCode::UNAUTHORIZED, ""),
        Ok(Err(e @ Refusal::Replay(_))) => status(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ Refusal::BoundToAnother(_))) => status(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ Refusal::AgentSecret)) => status(StatusCode::FORBIDDEN, &e.to_string()),
        Ok(Err(e @ Refusal::BadBody(_))) => status(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(e @ Refusal::Store(_))) => {
            tracing::error!("poll: {e}");
            status(StatusCode::INTERNAL_SERVER_ERROR, "")
        }
        Err(e) => {
            tracing::error!("poll handler panicked: {e}");
            status(StatusCode::INTERNAL_SERVER_ERROR, "")
        }
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    // The envelope adds at most 36 bytes to a body the codec accepts.
    let limit = state.limits.max_encoded + 64;
    Router::new()
        .route(POLL_PATH, post(poll_handler))
        // The API's JSON goes gzip'd to a client that asks (a browser; the
        // CLI and the agents do not ask, and the poll endpoint is outside).
        .merge(super::api::routes(state.clone()).layer(tower_http::compression::CompressionLayer::new()))
        .merge(super::ui::routes(super::api::routes(state.clone()).with_state(state.clone())))
        .fallback(super::api::not_found)
        .method_not_allowed_fallback(super::api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(request_timeout))
        .with_state(state)
}

/// The most connections served at once; past it, new ones are closed at
/// once (an attacker holding sockets cannot take the server's memory).
pub const MAX_CONNECTIONS: usize = 8192;

/// The most connections one address may hold at once. Generous, because a
/// carrier NAT puts many agents behind one address.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 512;

/// A TLS handshake must finish within this (a few round trips and a few KB,
/// seconds even on a 2G link).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection may sit idle between requests (or dribble a request's
/// headers) this long. Longer than the usual poll intervals, so agents keep
/// their connection between polls; bounded, so idle sockets do not pile up.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A request, body included, must arrive and be answered within this.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The connection limits [`serve`] applies (the constants above, unless a
/// test shortens them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once.
    pub max: usize,
    /// Connections at once from one address.
    pub per_address: usize,
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
            handshake: HANDSHAKE_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// One address's share of the connection limit, given back on drop.
struct AddressSlot {
    map: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(
        map: &Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        limit: usize,
    ) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self { map: map.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
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

/// [`serve`] with other connection limits.
///
/// # Errors
/// Never at present; accept errors are logged and the loop goes on.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    // Each connection's bytes under TLS, charged to the environment whose
    // agent polls on it (see `api::usage`).
    let meters = Arc::new(crate::meter::Meters::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max));
    let per_address: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                // Charge what open connections carried since their last poll.
                let meters = meters.clone();
                let _ = tokio::task::spawn_blocking(move || meters.flush_all()).await;
                return Ok(());
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!("{} connections open: refusing one from {peer}", limits.max);
                    continue;
                };
                let address = AddressSlot::take(&per_address, peer.ip(), limits.per_address);
                let Some(address) = address else {
                    tracing::warn!("{} holds {} connections: refusing another", peer.ip(), limits.per_address);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, meters) = (acceptor.clone(), router.clone(), meters.clone());
                tokio::spawn(async move {
                    let _slots = (slot, address);
                    let (key, meter) = meters.open();
                    let tcp = crate::meter::Counting::new(tcp, meter.wire());
                    let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
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
                    };
                    let inner = TowerToHyperService::new(router);
                    let service = hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        // The peer's address, as axum's `ConnectInfo`: the login rate limit counts by it.
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        req.extensions_mut().insert(meter.clone());
                        hyper::service::Service::call(&inner, req)
                    });
                    let result = hyper::server::conn::http1::Builder::new()
                        .auto_date_header(false)
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        // Covers the wait for the next request too: an idle
                        // connection closes after it.
                        .header_read_timeout(limits.idle)
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    if let Err(e) = result {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    // Charge what is left: the last reply, the closing alerts.
                    let _ = tokio::task::spawn_blocking(move || meters.close(key)).await;
                });
            }
        }
    }
}
