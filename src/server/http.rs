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
        .merge(super::api::routes(state.clone()))
        .fallback(super::api::not_found)
        .method_not_allowed_fallback(super::api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router` over TLS on an already-bound listener until `shutdown`
/// completes. Connections are kept alive between polls.
///
/// # Errors
/// Never at present; accept errors are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    // Each connection's bytes under TLS, charged to the environment whose
    // agent polls on it (see `api::usage`).
    let meters = Arc::new(crate::meter::Meters::default());
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
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, meters) = (acceptor.clone(), router.clone(), meters.clone());
                tokio::spawn(async move {
                    let (key, meter) = meters.open();
                    let tcp = crate::meter::Counting::new(tcp, meter.wire());
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::debug!("tls from {peer}: {e}");
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
