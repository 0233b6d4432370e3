//! The REST API (JSON):
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/environments` | create one: its join token and `docker run` line (201) |
//! | `GET /api/environments` | the list |
//! | `GET /api/environments/{id}` | one in detail: state digest and counts, intervals |
//! | `GET /api/environments/{id}/state` | its stored state: containers, images, volumes, networks, stacks, host |
//! | `PUT /api/environments/{id}/intervals` | set its intervals (`null`: the server default) |
//! | `POST /api/environments/{id}/reset-binding` | let another agent (EDGE_ID) take it over |
//! | `POST /api/environments/{id}/reset-counter` | accept any poll counter from its agent again |
//! | `POST /api/environments/{id}/rotate-secret` | a new secret and join token (the old ones are refused at once) |
//! | `POST /api/environments/{id}/commands` | queue a command (201) |
//! | `GET /api/environments/{id}/commands` | its commands, newest first (100) |
//! | `GET /api/commands/{id}` | one command |
//! | `DELETE /api/commands/{id}` | cancel it, until it is delivered (409 after) |
//!
//! Authentication (see [`access`], which also serves login, sessions and
//! API tokens): an API token (`Authorization: Bearer`) or a session cookie
//! with its CSRF token, checked before anything else. The data directory's
//! admin token (`<data>/admin-token`, mode 0600, made at first start) is an
//! API token; the CLI reads it from there when it runs on the server's
//! host, or takes `TERN_TOKEN`.
//!
//! Every error is a 4xx or 5xx status with a JSON body `{"error": "..."}`.
//! Every body the API takes or answers is a type of [`types`], which the
//! CLI, `tern quickstart` and the web UI use too.
//! Handlers are thin: the store's calls run on the blocking pool.

pub mod access;
pub mod admission;
pub mod audit;
pub mod fleet;
pub mod images;
pub mod jobs;
pub mod openapi;
pub mod registries;
pub mod stacks;
pub(crate) mod target;
pub mod teams;
pub mod types;
pub mod uploads;
pub mod usage;
pub mod users;
pub mod view;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use self::types::{
    CommandView, CreateCommand, ErrorBody, IntervalsBody, IntervalsReply, StackLogsPart, StackLogsRequest,
    StackLogsView,
};
use self::view::{ACTIONS, Kind};
use super::http::AppState;
use super::store::{IntervalSettings, StoreError};
use crate::wire::poll::{Action, Intervals};

use crate::server::store::prelude::*;

/// The longest interval the API accepts, in seconds (a week): longer ones
/// would leave an environment out of reach for too long to correct.
pub const MAX_INTERVAL: u32 = 7 * 24 * 3600;

/// The most commands a listing shows.
pub const COMMANDS_LISTED: usize = 100;

/// The longest target (name, reference) a command takes, in bytes.
pub const MAX_TARGET_LEN: usize = 512;

/// An API error: a status and a message, sent as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = error_field(&self.message).map(str::to_owned);
        (self.status, Json(ErrorBody { error: self.message, field })).into_response()
    }
}

/// A query string's `key=value` pairs, each side decoded (`+` is a space,
/// `%XX` a byte), in order: the one parser of every handler that reads a
/// query. Strict where browsers' parsers are lenient: a `%` not followed by
/// two hex digits, or bytes that are not UTF-8, are a 400, not guessed at.
/// (axum's `Query` decodes `%zz` as itself; an operator's typo in a filter
/// should say so, not match nothing.)
///
/// # Errors
/// A 400 naming what is wrong.
pub(crate) fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((query_decode(k)?, query_decode(v)?));
    }
    Ok(pairs)
}

/// Decodes one component of a query string (see [`query_pairs`]).
///
/// # Errors
/// A 400 for a bad `%`-escape or bytes that are not UTF-8.
pub(crate) fn query_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("query: bad %-escape");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit)).ok_or_else(bad)?;
                // Two ASCII hex digits: valid UTF-8 and a byte's value.
                out.push(u8::from_str_radix(std::str::from_utf8(hex).map_err(|_| bad())?, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("query: not UTF-8"))
}

/// The field an error message concerns: API messages about one field start
/// with its name (`"name: 1 to 128 characters"`, `"intervals.ping: ..."`),
/// which the error body repeats as `field` (the UI shows the message next
/// to that field).
pub fn error_field(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(": ")?;
    let ok = !head.is_empty()
        && head.len() <= 64
        && head.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    ok.then_some(head)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) | StoreError::CommandNotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::NameTaken(_) | StoreError::AlreadyDelivered(_) => {
                Self::new(StatusCode::CONFLICT, e.to_string())
            }
            StoreError::Backend(_)
            | StoreError::TooNew { .. }
            | StoreError::OtherSchema { .. }
            | StoreError::Corrupt { .. }
            | StoreError::CorruptSetting(_) => {
                tracing::error!("api: {e}");
                Self::internal()
            }
            StoreError::Fleet(e) => e.into(),
        }
    }
}

/// A JSON body whose rejections (malformed JSON, wrong content type, an
/// unknown field) are API errors with a JSON body too.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// The numeric id in a path (`/api/commands/{id}`).
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
        text.parse().map(Self).map_err(|_| {
            ApiError::bad_request(format!("bad id {:?}: ids are numbers", text.chars().take(40).collect::<String>()))
        })
    }
}

/// Runs `f` with the store's writing connection on the blocking pool
/// (writes queue there one at a time).
async fn with_store<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Transaction) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(state, move |shared| shared.with_store(f)).await
}

/// Runs `f`, which only reads, in one read transaction on a reading
/// connection on the blocking pool: it sees one consistent state and
/// neither waits for a write (a poll being applied) nor holds one up.
async fn read_store<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Transaction) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(state, move |shared| shared.read_store(f)).await
}

/// [`read_store`] of data usage: this server's charges not yet written
/// (see [`crate::server::ledger`]) are written first, so what it shows
/// includes its own last polls.
async fn read_usage<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Transaction) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(state, move |shared| {
        shared.usage.settle(&shared.store);
        shared.read_store(f)
    })
    .await
}

/// `GET /metrics`: the Prometheus text format (see `server::metrics`),
/// behind an API token as every route here.
async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let now = crate::clock::unix_now();
    let (environments, online, queued, oldest) = read_store(&state, move |tx| Ok(tx.fleet_gauges(now)?)).await?;
    let gauges = crate::server::metrics::FleetGauges {
        environments,
        online,
        queued,
        oldest_queued_age: oldest.map_or(0, |t| (now - t).max(0)),
    };
    let body = crate::server::metrics::get().render(&gauges);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

/// Runs `f` on the blocking pool; a panic in it is a 500, logged.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = state.clone();
    tokio::task::spawn_blocking(move || f(&shared)).await.map_err(|e| {
        tracing::error!("api handler panicked: {e}");
        ApiError::internal()
    })?
}

/// The API's routes: all behind a credential ([`access::require_auth`]),
/// but login. Add new routes above the `route_layer`.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/environments/{id}/intervals", put(set_intervals))
        .route("/api/environments/{id}/commands", post(create_command).get(list_commands))
        .route("/api/environments/{id}/stacks/{name}/logs", post(stack_logs))
        .route("/api/commands/{id}", get(command).delete(cancel_command))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .merge(fleet::routes())
        .merge(usage::routes())
        .merge(stacks::routes())
        .merge(jobs::routes())
        .merge(registries::routes())
        .merge(images::routes())
        .merge(access::routes())
        .merge(audit::routes())
        .merge(admission::routes())
        .merge(users::routes())
        .merge(teams::routes())
        // Innermost: what the caller may see (its teams' groups), for the
        // handlers, and a 404 for an environment, command, stack or job
        // out of it.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), teams::require_scope))
        // Then the caller's role against what the route needs
        // (a refusal is a 403 the audit log below records).
        .route_layer(axum::middleware::from_fn(access::require_role))
        // Every call that changes something, recorded with its caller
        // (known by then) and the status it was answered with.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::middleware))
        // Inside the credential check (a route layer added later runs
        // first): only an authenticated caller's body is counted.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::server::http::body_budget))
        .route_layer(axum::middleware::from_fn_with_state(state, access::require_auth))
        // Open to anyone: login (rate-limited). Never add a route below.
        .merge(access::public_routes())
}

/// The answer to a path no route takes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The answer to a method a path does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path")
}

/// Checks intervals an operator gives, against the server defaults that
/// fill the ones left out.
pub(crate) fn check_intervals(own: IntervalSettings, defaults: Intervals) -> Result<(), ApiError> {
    for (name, v) in [("ping", own.ping), ("snapshot", own.snapshot), ("command", own.command)] {
        if v.is_some_and(|v| v > MAX_INTERVAL) {
            return Err(ApiError::invalid(format!(
                "intervals.{name}: at most {MAX_INTERVAL} seconds (a week); 0 disables it"
            )));
        }
    }
    let effective = own.resolve(defaults);
    if effective.ping == 0 && effective.snapshot == 0 && effective.command == 0 {
        return Err(ApiError::invalid(
            "intervals: at least one must be above 0, or the agent never polls again and cannot be reached",
        ));
    }
    Ok(())
}

/// `PUT /api/environments/{id}/intervals`.
pub async fn set_intervals(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<IntervalsBody>,
) -> Result<Json<IntervalsReply>, ApiError> {
    let own = IntervalSettings::from(body);
    let effective = with_store(&state, move |store| {
        store.environment(id)?;
        let defaults = store.default_intervals()?;
        check_intervals(own, defaults)?;
        store.set_intervals(id, own)?;
        Ok(own.resolve(defaults))
    })
    .await?;
    Ok(Json(IntervalsReply { intervals: body, effective_intervals: effective.into() }))
}

/// Checks a command's target text before it is resolved or stored.
fn check_target(target: &str) -> Result<&str, ApiError> {
    let t = target.trim();
    if t.is_empty() {
        return Err(ApiError::bad_request("target: the container, image, volume or network to act on"));
    }
    if t.len() > MAX_TARGET_LEN {
        return Err(ApiError::bad_request(format!("target: at most {MAX_TARGET_LEN} bytes")));
    }
    if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request("target: no spaces or control characters"));
    }
    Ok(t)
}

/// The most log lines one `container.logs` asks for (the agent also caps
/// the output to its last 64 KiB).
pub const MAX_LOG_LINES: u32 = 10_000;

/// Checks a `POST /api/environments/{id}/commands` body before its target
/// is resolved: the action's kind, the target text, and the log lines
/// (`tail`, 0 when the action takes none).
///
/// # Errors
/// A 400 naming the bad field.
pub(crate) fn check_command(req: &CreateCommand) -> Result<(Kind, String, u32), ApiError> {
    let Some(&(_, kind)) = ACTIONS.iter().find(|(name, _)| *name == req.action) else {
        let names: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::bad_request(format!(
            "action: unknown {:?}; one of {}",
            req.action.chars().take(40).collect::<String>(),
            names.join(", ")
        )));
    };
    let target = check_target(&req.target)?.to_owned();
    let tail = match (kind, req.tail) {
        (Kind::ContainerLogs, None) => 100,
        (Kind::ContainerLogs, Some(n)) if (1..=MAX_LOG_LINES).contains(&n) => n,
        (Kind::ContainerLogs, Some(_)) => {
            return Err(ApiError::bad_request(format!("tail: from 1 to {MAX_LOG_LINES} lines")));
        }
        (_, Some(_)) => return Err(ApiError::bad_request("tail: only for container.logs")),
        (_, None) => 0,
    };
    Ok((kind, target, tail))
}

/// `POST /api/environments/{id}/commands`: queues a command; containers
/// and networks are resolved against the environment's stored state.
pub async fn create_command(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(req): ApiJson<CreateCommand>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let (kind, target, tail) = check_command(&req)?;
    let record = with_store(&state, move |store| {
        store.environment(id)?;
        let action = match kind {
            Kind::ImagePull => Action::ImagePull(target),
            Kind::ImageRemove => Action::ImageRemove(target),
            Kind::VolumeRemove => Action::VolumeRemove(target),
            Kind::Container(op) => {
                let replica = store.replica(id)?;
                let containers = replica.current().1.containers.iter().map(|c| (c.id, c.name.as_str()));
                Action::Container(op, target::resolve("container", &target, containers).map_err(ApiError::bad_request)?)
            }
            Kind::ContainerLogs => {
                let replica = store.replica(id)?;
                let containers = replica.current().1.containers.iter().map(|c| (c.id, c.name.as_str()));
                let cid = target::resolve("container", &target, containers).map_err(ApiError::bad_request)?;
                Action::ContainerLogs(cid, tail)
            }
            Kind::NetworkRemove => {
                let replica = store.replica(id)?;
                let networks = replica.current().1.networks.iter().map(|n| (n.id, n.name.as_str()));
                Action::NetworkRemove(target::resolve("network", &target, networks).map_err(ApiError::bad_request)?)
            }
        };
        let command = store.enqueue_command(id, &action, super::http::now())?;
        Ok(store.command(command)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// `POST /api/environments/{id}/stacks/{name}/logs`: a whole stack's logs,
/// as one `container.logs` command per container of the stack in the
/// stored state, queued in one transaction (so they reach the agent
/// together, as many to a poll as a poll carries, and come back together).
pub async fn stack_logs(
    State(state): State<Arc<AppState>>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(req): ApiJson<StackLogsRequest>,
) -> Result<(StatusCode, Json<StackLogsView>), ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("bad id {:?}: ids are numbers", id.chars().take(40).collect::<String>()))
    })?;
    let tail = match req.tail {
        None => 100,
        Some(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request(format!("tail: from 1 to {MAX_LOG_LINES} lines"))),
    };
    let view = with_store(&state, move |store| {
        store.environment(id)?;
        let replica = store.replica(id)?;
        let current = &replica.current().1;
        let mut parts: Vec<(String, String, crate::sync::state::Id)> = current
            .containers
            .iter()
            .filter(|c| c.labels.get("com.docker.compose.project") == Some(&name))
            .map(|c| {
                let service = c.labels.get("com.docker.compose.service").cloned().unwrap_or_default();
                (service, c.name.clone(), c.id)
            })
            .collect();
        if parts.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no stack {:?} in environment {id}'s state", name.chars().take(64).collect::<String>()),
            ));
        }
        parts.sort();
        let now = super::http::now();
        let mut out = Vec::with_capacity(parts.len());
        for (service, container, cid) in parts {
            let command = store.enqueue_command(id, &Action::ContainerLogs(cid, tail), now)?;
            out.push(StackLogsPart { service, container, command: store.command(command)?.into() });
        }
        Ok(StackLogsView { stack: name, parts: out })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /api/environments/{id}/commands`: newest first.
pub async fn list_commands(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    let list = read_store(&state, move |store| Ok(store.commands(id, COMMANDS_LISTED)?)).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// `GET /api/commands/{id}`.
pub async fn command(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<CommandView>, ApiError> {
    let (record, output) = read_store(&state, move |store| Ok((store.command(id)?, store.command_output(id)?))).await?;
    let mut view = CommandView::from(record);
    // Logs are text; bytes that are not UTF-8 are shown replaced.
    view.output = output.map(|o| String::from_utf8_lossy(&o).into_owned());
    Ok(Json(view))
}

/// `DELETE /api/commands/{id}`: cancels a command the agent has not
/// confirmed receiving (see [`Store::cancel_command`]).
pub async fn cancel_command(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<CommandView>, ApiError> {
    let record = with_store(&state, move |store| {
        store.cancel_command(id, super::http::now())?;
        Ok(store.command(id)?)
    })
    .await?;
    Ok(Json(record.into()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Method;
    use http_body_util::BodyExt;
    use hyper::service::Service;
    use hyper_util::service::TowerToHyperService;
    use serde_json::{Value, json};

    use super::types::{EnvironmentDetail, EnvironmentItem};
    use super::*;

    use crate::server::store::Store;
    use crate::sync::State as HostState;
    use crate::sync::diff;
    use crate::sync::session::Replica;
    use crate::sync::state::{Container, ContainerStatus, Id, Image, Network, Volume};
    use crate::wire::codec::{Codec, Limits};
    use crate::wire::poll::{CommandResult, ContainerOp, PollReply, PollRequest, ResultStatus};

    const TOKEN: &str = "admin-token";

    /// The real router, called in process.
    struct Api {
        service: TowerToHyperService<Router>,
        state: Arc<AppState>,
    }

    impl Api {
        fn new() -> Self {
            let state = AppState::new(Store::scratch().unwrap(), Limits::default(), TOKEN, [7; 32]).unwrap();
            Self { service: TowerToHyperService::new(super::super::http::router(state.clone())), state }
        }

        async fn call_as(&self, token: Option<&str>, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
            let mut req = axum::http::Request::builder().method(method).uri(path);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Body::from(body.unwrap_or_default().to_owned())).unwrap();
            let resp = self.service.call(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            (status, value)
        }

        async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
            self.call_as(Some(TOKEN), method, path, body.map(|b| b.to_string()).as_deref()).await
        }

        async fn create(&self, name: &str, intervals: Option<Value>) -> u64 {
            let mut body = json!({ "name": name, "url": "https://ops.example.com:9443" });
            if let Some(i) = intervals {
                body["intervals"] = i;
            }
            let (status, v) = self.call(Method::POST, "/api/environments", Some(body)).await;
            assert_eq!(status, 201, "{v}");
            v["id"].as_u64().unwrap()
        }

        fn store<T, E: From<StoreError>>(&self, f: impl FnOnce(&dyn Transaction) -> Result<T, E>) -> Result<T, E> {
            self.state.with_store(f)
        }
    }

    #[tokio::test]
    async fn metrics_want_a_token_and_show_the_fleet_and_the_database() {
        let api = Api::new();
        api.create("site-1", None).await;
        let id = api.create("site-2", None).await;
        api.store(|s| s.enqueue_command(id, &crate::wire::poll::Action::ImagePull("nginx".into()), 1)).unwrap();
        let req = |token: Option<&str>| {
            let mut r = axum::http::Request::builder().uri("/metrics");
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            r.body(Body::empty()).unwrap()
        };
        assert_eq!(api.service.call(req(None)).await.unwrap().status(), 401);
        let resp = api.service.call(req(Some(TOKEN))).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(text.contains("tern_environments 2\n"), "{text}");
        assert!(text.contains("tern_environments_online 0\n"), "{text}");
        assert!(text.contains("tern_commands_queued 1\n"), "{text}");
        assert!(text.contains("tern_db_transaction_seconds_count{kind=\"write\"}"), "{text}");
        assert!(text.contains("# TYPE tern_poll_duration_seconds histogram"), "{text}");
    }

    fn err(v: &Value) -> &str {
        v["error"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
    }

    fn host() -> HostState {
        let mut s = HostState::default();
        s.host.hostname = "ship-1".into();
        let id = |first: u8, second: u8, third: u8| {
            let mut b = [0x22; 32];
            (b[0], b[1], b[2]) = (first, second, third);
            Id(b)
        };
        for (i, name) in [(id(0xab, 0xcd, 1), "web"), (id(0xab, 0xcd, 2), "db"), (id(0x12, 0x34, 0), "cache")] {
            let status = if name == "db" { ContainerStatus::Exited } else { ContainerStatus::Running };
            s.containers.insert(Container {
                id: i,
                name: name.into(),
                image: "nginx:1.25".into(),
                status,
                ..Container::default()
            });
        }
        s.images.insert(Image { id: id(0x55, 0, 0), tags: vec!["nginx:1.25".into()], ..Image::default() });
        s.volumes.insert(Volume { name: "data".into(), driver: "local".into(), ..Volume::default() });
        s.networks.insert(Network {
            id: id(0x66, 0, 0),
            name: "bridge".into(),
            driver: "bridge".into(),
            ..Network::default()
        });
        s
    }

    fn with_state(api: &Api, env: u64) -> HostState {
        let state = host();
        let mut replica = Replica::default();
        replica.receive(0, Some(&diff(&HostState::default(), &state)));
        api.store(|s| s.save_replica(env, &replica, 50)).unwrap();
        state
    }

    #[test]
    fn query_strings_are_decoded_in_one_place_and_strictly() {
        let pairs = query_pairs(Some("name=site%2D1+a&&limit=5&flag")).unwrap();
        let want = [("name", "site-1 a"), ("limit", "5"), ("flag", "")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(query_pairs(None).unwrap(), []);
        // `%+1` parsed as a signed hex number before (from_str_radix takes a sign).
        for bad in ["%zz", "x%2", "%", "%+1", "%-1", "k%G0=v"] {
            let e = query_pairs(Some(bad)).unwrap_err();
            assert_eq!((e.status, e.message.as_str()), (StatusCode::BAD_REQUEST, "query: bad %-escape"), "{bad}");
        }
        assert_eq!(query_decode("%e2%28").unwrap_err().message, "query: not UTF-8");
    }
    #[tokio::test]
    async fn every_endpoint_wants_the_admin_token_before_reading_anything() {
        let api = Api::new();
        for (method, path) in [
            (Method::GET, "/api/environments"),
            (Method::POST, "/api/environments"),
            (Method::GET, "/api/environments/1"),
            (Method::GET, "/api/environments/1/state"),
            (Method::PUT, "/api/environments/1/intervals"),
            (Method::POST, "/api/environments/1/reset-binding"),
            (Method::POST, "/api/environments/1/commands"),
            (Method::GET, "/api/environments/1/commands"),
            (Method::GET, "/api/commands/1"),
            (Method::DELETE, "/api/commands/1"),
        ] {
            for token in [None, Some("wrong"), Some("")] {
                let (status, v) = api.call_as(token, method.clone(), path, Some("{not json")).await;
                assert_eq!(status, 401, "{method} {path}");
                assert!(err(&v).starts_with("missing or wrong credential"), "{v}");
            }
        }
        let (status, v) = api.call(Method::GET, "/api/nothing", None).await;
        assert_eq!((status, err(&v)), (404, "no such endpoint"));
        let (status, v) = api.call(Method::PATCH, "/api/environments", None).await;
        assert_eq!(status, 405, "{v}");
        assert!(api.store(|s| s.environments()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn environments_are_created_with_intervals_listed_shown_and_reset() {
        let api = Api::new();
        let plain = api.create("yard", None).await;
        let ship = api.create("ship-1", Some(json!({ "snapshot": 900, "ping": 0 }))).await;
        // Bad bodies: clear errors, and nothing is created.
        for (body, status, text) in [
            (json!({ "name": "x", "url": "https://a", "intervals": { "ping": 604801 } }), 422, "at most 604800"),
            (
                json!({ "name": "x", "url": "https://a", "intervals": { "ping": 0, "snapshot": 0, "command": 0 } }),
                422,
                "at least one",
            ),
            (json!({ "name": "x", "url": "https://a", "intervals": { "pong": 5 } }), 422, "unknown field"),
            (json!({ "name": "x", "url": "https://a", "intervals": { "ping": -5 } }), 422, "invalid value"),
            (json!({ "name": "", "url": "https://a" }), 422, "name"),
            (json!({ "name": "x", "url": "http://a" }), 422, "url"),
            (json!({ "name": "yard", "url": "https://a" }), 409, "exists already"),
        ] {
            let (got, v) = api.call(Method::POST, "/api/environments", Some(body.clone())).await;
            assert_eq!(got, status, "{body}: {v}");
            assert!(err(&v).contains(text), "{body}: {v}");
        }
        let (status, v) = api.call_as(Some(TOKEN), Method::POST, "/api/environments", Some("{\"name\":")).await;
        assert_eq!(status, 400, "{v}");
        assert!(!err(&v).is_empty());
        let (_, list) = api.call(Method::GET, "/api/environments", None).await;
        let list: Vec<EnvironmentItem> = serde_json::from_value(list).unwrap();
        assert_eq!(
            list.iter().map(|e| (e.id, e.name.as_str())).collect::<Vec<_>>(),
            [(plain, "yard"), (ship, "ship-1")]
        );

        let (status, v) = api.call(Method::GET, &format!("/api/environments/{ship}"), None).await;
        assert_eq!(status, 200, "{v}");
        let d: EnvironmentDetail = serde_json::from_value(v).unwrap();
        assert_eq!(d.intervals, IntervalsBody { ping: Some(0), snapshot: Some(900), command: None });
        assert_eq!(
            (d.effective_intervals.ping, d.effective_intervals.snapshot, d.effective_intervals.command),
            (0, 900, 60)
        );
        assert_eq!(
            (d.seq, d.root.as_str(), d.agent_intervals),
            (0, view::hex(&crate::sync::state::empty_root()).as_str(), None)
        );
        // Back to the defaults.
        let (status, v) = api
            .call(
                Method::PUT,
                &format!("/api/environments/{ship}/intervals"),
                Some(json!({ "command": 30, "ping": null })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let r: IntervalsReply = serde_json::from_value(v).unwrap();
        assert_eq!(
            (r.effective_intervals.ping, r.effective_intervals.snapshot, r.effective_intervals.command),
            (60, 60, 30)
        );
        assert_eq!(
            api.store(|s| s.effective_intervals(ship)).unwrap(),
            Intervals { ping: 60, snapshot: 60, command: 30 }
        );
        let (status, v) = api
            .call(
                Method::PUT,
                &format!("/api/environments/{ship}/intervals"),
                Some(json!({ "ping": 0, "snapshot": 0, "command": 0 })),
            )
            .await;
        assert_eq!(status, 422, "{v}");
        assert_eq!(api.store(|s| s.effective_intervals(ship)).unwrap().command, 30, "a refused change changes nothing");
        // Reset the binding.
        assert!(api.store(|s| s.accept_poll(ship, 1, Some("edge-a"), 60)).unwrap());
        let (_, v) = api.call(Method::GET, "/api/environments", None).await;
        assert_eq!(v[1]["edge_id"], "edge-a");
        let (status, v) = api.call(Method::POST, &format!("/api/environments/{ship}/reset-binding"), None).await;
        assert_eq!((status, &v["edge_id"], &v["last_poll_at"]), (200, &Value::Null, &json!(60)));
        // Unknown and malformed ids.
        for (method, path) in [
            (Method::GET, "/api/environments/99"),
            (Method::GET, "/api/environments/99/state"),
            (Method::POST, "/api/environments/99/reset-binding"),
            (Method::GET, "/api/environments/99/commands"),
        ] {
            let (status, v) = api.call(method, path, None).await;
            assert_eq!((status, err(&v)), (404, "no environment 99"), "{path}");
        }
        let (status, v) = api.call(Method::PUT, "/api/environments/99/intervals", Some(json!({}))).await;
        assert_eq!((status, err(&v)), (404, "no environment 99"));
        let (status, v) = api.call(Method::GET, "/api/environments/abc", None).await;
        assert_eq!(status, 400);
        assert!(err(&v).contains("ids are numbers"));
        let (status, _) = api.call(Method::GET, "/api/environments/-1", None).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn the_stored_state_is_shown_as_json_with_its_digest() {
        let api = Api::new();
        let env = api.create("ship", None).await;
        let (status, v) = api.call(Method::GET, &format!("/api/environments/{env}/state"), None).await;
        assert_eq!((status, &v["seq"], v["containers"].as_array().map(Vec::len)), (200, &json!(0), Some(0)));
        let state = with_state(&api, env);
        let (status, v) = api.call(Method::GET, &format!("/api/environments/{env}/state"), None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["root"], view::hex(&state.root()));
        assert_eq!(v["host"]["hostname"], "ship-1");
        let db = v["containers"].as_array().unwrap().iter().find(|c| c["name"] == "db").unwrap();
        assert_eq!((db["status"].as_str(), db["image"].as_str()), (Some("exited"), Some("nginx:1.25")));
        assert_eq!(db["id"].as_str().map(str::len), Some(64));
        assert_eq!(v["images"][0]["tags"], json!(["nginx:1.25"]));
        assert_eq!((&v["volumes"][0]["name"], &v["volumes"][0]["driver"]), (&json!("data"), &json!("local")));
        assert_eq!((&v["networks"][0]["name"], &v["networks"][0]["driver"]), (&json!("bridge"), &json!("bridge")));
        let (_, d) = api.call(Method::GET, &format!("/api/environments/{env}"), None).await;
        assert_eq!(
            (&d["root"], &d["seq"], &d["counts"]["containers"], &d["snapshot_at"]),
            (&v["root"], &json!(1), &json!(3), &json!(50))
        );
    }

    #[tokio::test]
    async fn commands_are_queued_by_name_prefix_or_id_then_listed_sent_and_cancelled() {
        let api = Api::new();
        let env = api.create("ship", None).await;
        let state = with_state(&api, env);
        let id_of = |name: &str| state.containers.iter().find(|c| c.name == name).unwrap().id;
        let path = format!("/api/environments/{env}/commands");
        let post = |body: Value| api.call(Method::POST, &path, Some(body));
        let (status, v) = post(json!({ "action": "container.stop", "target": "web" })).await;
        assert_eq!(status, 201, "{v}");
        let first: CommandView = serde_json::from_value(v).unwrap();
        assert_eq!(
            (first.action.as_str(), first.status.as_str(), first.environment),
            ("container.stop", "queued", env)
        );
        assert_eq!(first.target, id_of("web").to_string());
        for (action, target, expect) in [
            ("container.restart", "ABCD02", id_of("db").to_string()),
            ("container.kill", &id_of("cache").to_string(), id_of("cache").to_string()),
            ("network.remove", "bridge", state.networks.iter().next().unwrap().id.to_string()),
            ("container.start", &"9f".repeat(32), "9f".repeat(32)),
            ("image.pull", "nginx:1.27", "nginx:1.27".into()),
            ("image.remove", "sha256:5500", "sha256:5500".into()),
            ("volume.remove", "data", "data".into()),
        ] {
            let (status, v) = post(json!({ "action": action, "target": target })).await;
            assert_eq!((status, v["target"].as_str()), (201, Some(expect.as_str())), "{action} {target}: {v}");
        }
        // Bad commands: a clear 400, nothing queued.
        for (body, text) in [
            (json!({ "action": "container.start", "target": "abc" }), "at least 4 hex digits"),
            (json!({ "action": "container.start", "target": "abc" }), "no container named"),
            (json!({ "action": "container.start", "target": "abcd" }), "ambiguous"),
            (json!({ "action": "container.start", "target": "nope" }), "last snapshot"),
            (json!({ "action": "network.remove", "target": "web" }), "no network named"),
            (json!({ "action": "container.explode", "target": "web" }), "one of container.start"),
            (json!({ "action": "image.pull", "target": "  " }), "target"),
            (json!({ "action": "image.pull", "target": "a b" }), "no spaces"),
            (json!({ "action": "image.pull", "target": "x".repeat(600) }), "at most 512"),
        ] {
            let (status, v) = post(body.clone()).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert!(err(&v).contains(text), "{body}: {v}");
        }
        let (status, v) = post(json!({ "action": "image.pull" })).await;
        assert_eq!(status, 422, "{v}");
        let (status, v) = api
            .call(Method::POST, "/api/environments/99/commands", Some(json!({ "action": "image.pull", "target": "a" })))
            .await;
        assert_eq!((status, err(&v)), (404, "no environment 99"));

        let (_, list) = api.call(Method::GET, &format!("/api/environments/{env}/commands"), None).await;
        let list: Vec<CommandView> = serde_json::from_value(list).unwrap();
        assert_eq!(list.len(), 8);
        assert_eq!((list[0].action.as_str(), list[7].id), ("volume.remove", first.id), "newest first");

        // Never sent: can be cancelled.
        let (status, v) = api.call(Method::DELETE, &format!("/api/commands/{}", list[0].id), None).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("cancelled")));
        // The agent polls: everything else goes out; a command sent but not
        // yet confirmed can still be cancelled, one confirmed cannot.
        let mut codec = Codec::new(Limits::default()).unwrap();
        // The polls' clock: the commands were queued at the real time.
        let t0 = crate::server::http::now() + 100;
        let secret = api.store(|s| s.environment(env)).unwrap().secret;
        let poll = |counter: u64, req: PollRequest, codec: &mut Codec| {
            let wire = crate::auth::seal_request(env, counter, &secret, &codec.encode(&req.encode()).unwrap());
            let reply = crate::server::poll::handle_with(
                &api.state.store,
                &api.state.secrets,
                codec,
                &wire,
                t0 + counter as i64,
            )
            .unwrap();
            let body = crate::auth::open_reply(counter, &secret, &reply).unwrap();
            PollReply::decode(&codec.decode(body).unwrap()).unwrap()
        };
        let agent = Some(crate::wire::poll::AgentInfo { version: "t".into(), edge_id: "e".into() });
        let reply = poll(1, PollRequest { agent, ..PollRequest::default() }, &mut codec);
        assert_eq!(reply.commands.len(), 7);
        assert_eq!(reply.commands[0].action, Action::Container(ContainerOp::Stop, id_of("web")));
        let (_, v) = api.call(Method::GET, &format!("/api/commands/{}", first.id), None).await;
        assert_eq!((v["status"].as_str(), v["sent_at"].as_i64()), (Some("sent"), Some(t0 + 1)));
        // Its result comes back.
        let result = CommandResult {
            output: Vec::new(),
            phase: String::new(),
            id: first.id,
            status: ResultStatus::Failed,
            error: "no such container".into(),
            finished_at: t0 + 2,
        };
        let last = reply.commands.last().unwrap().id;
        let reply =
            poll(2, PollRequest { results: vec![result], commands_seen: last, ..PollRequest::default() }, &mut codec);
        assert_eq!((reply.results_acked, reply.commands.len()), (vec![first.id], 0));
        let (_, v) = api.call(Method::GET, &format!("/api/commands/{}", first.id), None).await;
        let done: CommandView = serde_json::from_value(v).unwrap();
        assert_eq!(
            (done.status.as_str(), done.error.as_deref(), done.finished_at, done.delivered_at),
            ("failed", Some("no such container"), Some(t0 + 2), Some(t0 + 2))
        );
        let (_, v) = api.call(Method::GET, &format!("/api/commands/{}", list[1].id), None).await;
        assert_eq!(v["status"], "delivered");
        let (status, v) = api.call(Method::DELETE, &format!("/api/commands/{}", list[1].id), None).await;
        assert_eq!(status, 409);
        assert!(err(&v).contains("already delivered to the agent"), "{v}");
        let (status, v) = api.call(Method::GET, "/api/commands/999", None).await;
        assert_eq!((status, err(&v)), (404, "no command 999"));
        let (status, _) = api.call(Method::DELETE, "/api/commands/999", None).await;
        assert_eq!(status, 404);
    }
}
