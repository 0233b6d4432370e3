//! Edge stacks through the API:
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/stacks` | `{name, compose, env?, targets: {environments?, groups?, tags?}}`: create it and queue its deploy on every targeted environment (201) |
//! | `GET /api/stacks` | the list, each with its status and per-status counts |
//! | `GET /api/stacks/{id}` | one, with its compose file, variables, targets and per-environment status |
//! | `PUT /api/stacks/{id}` | `{compose?, env?, targets?}`: a new version, redeployed everywhere (an empty body redeploys as it is) |
//! | `DELETE /api/stacks/{id}` | queue its removal everywhere (202, `removing`); once `removed`, a second `DELETE` purges the record (204) |
//!
//! Targets are environment ids (or names), group and tag names (or ids).
//! The compose file is checked before anything is stored, with the
//! variables it will be deployed with, by the check the agent runs too
//! ([`crate::stack::check_file`]: the typed parse of [`crate::compose`]
//! that the agent's built-in compose deploys from): at most
//! [`MAX_COMPOSE`] bytes, valid YAML (parsed with budgets against alias
//! bombs), a mapping with a non-empty `services` mapping whose services
//! each have an `image` (an edge host has no build context), variable
//! names a stack may set, `${VAR}` interpolation that works (nested at
//! most 16 deep, no missing `${VAR:?}`), and the values of the keys in the
//! built-in compose's subset. Keys outside it are not refused: the host's
//! compose tool reads them.
//! Per-environment status: see [`crate::server::store::stacks`].

use crate::server::domain::prelude::*;
use crate::server::domain::stacks::Removal;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::access::Caller;
use super::teams::{Scope, stack_stays_in_scope};
use super::types::{
    CreateStack, DeploymentView, RefBody, Rollback, StackDetail, StackItem, StackTargetView, StackVersionView,
    TargetsBody, UpdateStack,
};
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::http::AppState;
use crate::server::store::access::Role;
use crate::server::store::stacks::{
    Deployment, NewStack, StackChange, StackError, StackRecord, Target, TargetRef, TargetRefs,
};

/// The largest compose file taken, in bytes.
pub const MAX_COMPOSE: usize = 256 * 1024;

/// The most variables a stack takes.
pub const MAX_VARS: usize = 1000;

/// The most bytes of variables (names and values) a stack takes.
pub const MAX_VARS_BYTES: usize = 64 * 1024;

/// The most targets of each kind.
pub const MAX_TARGETS: usize = 1000;

impl From<StackError> for ApiError {
    fn from(e: StackError) -> Self {
        match e {
            StackError::Store(e) => e.into(),
            StackError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            StackError::NameTaken(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            StackError::UnknownTarget(_) => Self::invalid(e.to_string()),
            StackError::NoVersion(..) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
        }
    }
}

impl From<RefBody> for TargetRef {
    fn from(r: RefBody) -> Self {
        match r {
            RefBody::Id(id) => Self::Id(id),
            RefBody::Name(n) => Self::Name(n),
        }
    }
}

impl TargetsBody {
    /// Checks the sizes and that there is at least one target.
    ///
    /// # Errors
    /// A 422 naming what is wrong.
    pub fn check(self) -> Result<TargetRefs, ApiError> {
        for (kind, list) in [("environments", &self.environments), ("groups", &self.groups), ("tags", &self.tags)] {
            if list.len() > MAX_TARGETS {
                return Err(ApiError::invalid(format!("targets.{kind}: at most {MAX_TARGETS}")));
            }
            if list.iter().any(|r| matches!(r, RefBody::Name(n) if n.trim().is_empty() || n.len() > 256)) {
                return Err(ApiError::invalid(format!("targets.{kind}: a name is 1 to 256 bytes")));
            }
        }
        let refs = TargetRefs {
            environments: self.environments.into_iter().map(Into::into).collect(),
            groups: self.groups.into_iter().map(Into::into).collect(),
            tags: self.tags.into_iter().map(Into::into).collect(),
        };
        if refs.is_empty() {
            return Err(ApiError::invalid("targets: name at least one environment, group or tag"));
        }
        Ok(refs)
    }
}

impl From<Target> for StackTargetView {
    fn from(t: Target) -> Self {
        Self { kind: t.kind.to_owned(), id: t.id, name: t.name }
    }
}

impl From<Deployment> for DeploymentView {
    fn from(d: Deployment) -> Self {
        Self {
            environment: d.environment,
            environment_name: d.environment_name,
            status: d.status.to_owned(),
            error: d.error,
            version: d.version,
            running_version: d.running_version,
            attempt: d.attempt,
            max_attempts: crate::server::domain::stacks::MAX_DEPLOY_ATTEMPTS,
            retry_at: d.retry_at,
            command: d.command,
            queued_at: d.queued_at,
            finished_at: d.finished_at,
        }
    }
}

impl From<&StackRecord> for StackItem {
    fn from(s: &StackRecord) -> Self {
        let mut counts = BTreeMap::new();
        for d in &s.deployments {
            *counts.entry(d.status.to_owned()).or_insert(0) += 1;
        }
        Self {
            id: s.id,
            name: s.name.clone(),
            version: s.version,
            status: s.status().to_owned(),
            counts,
            targets: s.targets.iter().cloned().map(Into::into).collect(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            removed_at: s.removed_at,
        }
    }
}

impl From<StackRecord> for StackDetail {
    fn from(s: StackRecord) -> Self {
        let item = StackItem::from(&s);
        Self {
            item,
            compose: s.compose,
            env: s.env,
            env_hidden: false,
            files_bytes: s.files.values().map(|v| v.len() as u64).sum(),
            files: s.files,
            files_hidden: false,
            window: s.window,
            environments: s.deployments.into_iter().map(Into::into).collect(),
        }
    }
}

/// Checks a stack name (a compose project name).
///
/// # Errors
/// A 422 saying what a name may be.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    crate::stack::check_name(name).map_err(|e| ApiError::invalid(format!("name: {e}")))
}

/// Checks a stack's variables.
///
/// # Errors
/// A 422 naming the bad variable.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_VARS {
        return Err(ApiError::invalid(format!("env: at most {MAX_VARS} variables")));
    }
    let mut bytes = 0;
    for (k, v) in env {
        crate::stack::check_variable(k).map_err(|e| ApiError::invalid(format!("env: {e}")))?;
        if v.contains('\0') {
            return Err(ApiError::invalid(format!("env.{k}: no NUL characters")));
        }
        bytes += k.len() + v.len();
    }
    if bytes > MAX_VARS_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("env: at most {MAX_VARS_BYTES} bytes of names and values"),
        ));
    }
    Ok(())
}

/// Checks a stack's configuration files ([`crate::stack::check_files`]:
/// paths inside the stack's directory, at most 64 files and 1 MiB), and
/// that they are text without NUL.
///
/// # Errors
/// A 413 when they are too large, a 422 naming the bad file otherwise.
pub fn check_files(files: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let total: usize = files.values().map(String::len).sum();
    if total > crate::stack::MAX_FILES_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("files: {total} bytes; at most {} (1 MiB)", crate::stack::MAX_FILES_BYTES),
        ));
    }
    crate::stack::check_files(files).map_err(|e| ApiError::invalid(format!("files: {e}")))?;
    if let Some(path) = files.iter().find_map(|(p, v)| v.contains('\0').then_some(p)) {
        return Err(ApiError::invalid(format!("files: {path}: text without NUL characters")));
    }
    Ok(())
}

/// Checks a deploy window (see [`crate::server::domain::windows`]) and
/// writes it the one way it is stored.
///
/// # Errors
/// A 422 saying what a window is.
pub fn check_window(text: &str) -> Result<String, ApiError> {
    crate::server::domain::windows::normalize(text).map_err(|e| ApiError::invalid(format!("window: {e}")))
}

/// Checks a compose file with the variables it will be deployed with,
/// before it is stored and sent: the agent's own check
/// ([`crate::stack::check_file`], the built-in compose's parse), so what
/// the server takes the agent takes too.
///
/// # Errors
/// A 413 when it is too large, a 422 saying what is wrong otherwise.
pub fn check_compose(compose: &str, env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if compose.len() > MAX_COMPOSE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("compose: {} bytes; at most {MAX_COMPOSE} (256 KiB)", compose.len()),
        ));
    }
    crate::stack::check_file(compose, env).map(drop).map_err(|e| ApiError::invalid(format!("compose: {e}")))
}

/// `POST /api/stacks`.
pub async fn create_stack(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    ApiJson(body): ApiJson<CreateStack>,
) -> Result<(StatusCode, Json<StackDetail>), ApiError> {
    check_name(&body.name)?;
    check_env(&body.env)?;
    check_compose(&body.compose, &body.env)?;
    check_files(&body.files)?;
    let window = check_window(&body.window)?;
    let targets = body.targets.check()?;
    let new = NewStack { name: body.name, compose: body.compose, env: body.env, files: body.files, window, targets };
    let record = with_store(&state, move |store| {
        let id = store.create_stack(&new, crate::server::http::now())?;
        stack_stays_in_scope(store, scope, id)?;
        Ok(store.stack(id)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// `GET /api/stacks`.
pub async fn list_stacks(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Vec<StackItem>>, ApiError> {
    let list = read_store(&state, move |store| {
        super::teams::keep_in_scope(store, scope, store.stacks()?, |s| s.id, |s, user, id| s.stack_in_scope(user, id))
    })
    .await?;
    Ok(Json(list.iter().map(StackItem::from).collect()))
}

/// Empties a stack's variable values (or its files' text) for a caller who
/// may only look (a viewer): they are where a stack's passwords, keys and
/// certificates usually are. Their names stay. Returns whether it did.
fn hide_env(caller: &Caller, env: &mut BTreeMap<String, String>) -> bool {
    if caller.role() >= Role::Operator {
        return false;
    }
    env.values_mut().for_each(String::clear);
    true
}

/// `GET /api/stacks/{id}`.
pub async fn stack(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<StackDetail>, ApiError> {
    let record = read_store(&state, move |store| Ok(store.stack(id)?)).await?;
    let mut detail = StackDetail::from(record);
    detail.env_hidden = hide_env(&caller, &mut detail.env);
    detail.files_hidden = hide_env(&caller, &mut detail.files);
    Ok(Json(detail))
}

/// `PUT /api/stacks/{id}`.
pub async fn update_stack(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateStack>,
) -> Result<Json<StackDetail>, ApiError> {
    if let Some(e) = &body.env {
        check_env(e)?;
    }
    if let Some(f) = &body.files {
        check_files(f)?;
    }
    let window = body.window.as_deref().map(check_window).transpose()?;
    if body.compose.is_some() || body.env.is_some() {
        // The file and the variables it will be deployed with, one of them
        // perhaps as stored.
        let stored = with_store(&state, move |store| Ok(store.stack(id)?)).await?;
        let compose = body.compose.as_deref().unwrap_or(&stored.compose);
        check_compose(compose, body.env.as_ref().unwrap_or(&stored.env))?;
    }
    let targets = body.targets.map(TargetsBody::check).transpose()?;
    let change = StackChange { compose: body.compose, env: body.env, files: body.files, window, targets };
    let record = with_store(&state, move |store| {
        store.update_stack(id, &change, crate::server::http::now())?;
        stack_stays_in_scope(store, scope, id)?;
        Ok(store.stack(id)?)
    })
    .await?;
    Ok(Json(record.into()))
}

/// `DELETE /api/stacks/{id}`.
pub async fn remove_stack(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Response, ApiError> {
    let done = with_store(&state, move |store| match store.remove_stack(id, crate::server::http::now())? {
        Removal::Purged => Ok(None),
        Removal::Removing => Ok(Some(store.stack(id)?)),
    })
    .await?;
    Ok(match done {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(record) => (StatusCode::ACCEPTED, Json(StackDetail::from(record))).into_response(),
    })
}

/// `GET /api/stacks/{id}/versions`: newest first.
pub async fn stack_versions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<Vec<StackVersionView>>, ApiError> {
    let (record, versions) = read_store(&state, move |store| Ok((store.stack(id)?, store.stack_versions(id)?))).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|mut v| {
                let env_hidden = hide_env(&caller, &mut v.env);
                let files_hidden = hide_env(&caller, &mut v.files);
                StackVersionView {
                    current: v.version == record.version,
                    version: v.version,
                    created_at: v.created_at,
                    note: v.note,
                    compose: v.compose,
                    env: v.env,
                    env_hidden,
                    files: v.files,
                    files_hidden,
                }
            })
            .collect(),
    ))
}

/// `POST /api/stacks/{id}/rollback`: an earlier version deployed again, as
/// a new version.
pub async fn rollback_stack(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<Json<StackDetail>, ApiError> {
    let record = with_store(&state, move |store| {
        let current = store.stack(id)?;
        if current.removed_at.is_some() {
            return Err(StackError::NotFound(id).into());
        }
        if body.version == current.version {
            return Err(ApiError::invalid(format!("version: {} is the stack's version already", body.version)));
        }
        // The old file goes through today's checks, as an update's would.
        let old = store.stack_version(id, body.version)?;
        check_compose(&old.compose, &old.env)
            .map_err(|e| ApiError::invalid(format!("version {}: {}", body.version, e.message)))?;
        store.rollback_stack(id, body.version, crate::server::http::now())?;
        Ok(store.stack(id)?)
    })
    .await?;
    Ok(Json(record.into()))
}

/// The stack routes (behind the API's credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/stacks", post(create_stack).get(list_stacks))
        .route("/api/stacks/{id}", get(stack).put(update_stack).delete(remove_stack))
        .route("/api/stacks/{id}/versions", get(stack_versions))
        .route("/api/stacks/{id}/rollback", post(rollback_stack))
        .route("/api/stacks/{id}/history", get(stack_history))
        .route("/api/environments/{id}/variables", get(environment_variables).put(set_environment_variables))
        .route("/api/environments/{id}/window", get(environment_window).put(set_environment_window))
}

/// An environment's deploy window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    /// `HH:MM-HH:MM UTC[+HH:MM]`; `""`: none.
    pub window: String,
}

/// `GET /api/environments/{id}/window`.
pub async fn environment_window(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<WindowBody>, ApiError> {
    let window = read_store(&state, move |store| {
        store.environment(id)?;
        Ok(store.deploy_windows(0, id)?.1)
    })
    .await?;
    Ok(Json(WindowBody { window }))
}

/// `PUT /api/environments/{id}/window`: a stack's deploy here starts only
/// while it (and the stack's own window) is open; the deploys waiting for
/// it are looked at again at once.
pub async fn set_environment_window(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<WindowBody>,
) -> Result<Json<WindowBody>, ApiError> {
    let window = check_window(&body.window)?;
    let stored = window.clone();
    with_store(&state, move |store| {
        if !store.set_deploy_window(None, Some(id), &stored, crate::server::http::now())? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no environment {id}")));
        }
        Ok(())
    })
    .await?;
    Ok(Json(WindowBody { window }))
}

/// One deploy, as `GET /api/stacks/{id}/history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeployView {
    /// The stack version it carried.
    pub version: u32,
    /// Its command (`GET /api/commands/{id}` has its output).
    pub command: u64,
    /// The environment.
    pub environment: u64,
    /// Its name.
    pub environment_name: String,
    /// queued, delivered, ok, failed, rejected or cancelled.
    pub status: String,
    /// The agent's error, when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// When it was queued.
    pub queued_at: i64,
    /// When the agent took it.
    pub delivered_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

/// The most deploys one history answer lists.
pub const MAX_HISTORY: u32 = 1000;

/// `GET /api/stacks/{id}/history?environment=E&limit=N`: the stack's
/// deploys, newest first (every attempt; 100 unless `limit`, at most
/// [`MAX_HISTORY`]).
pub async fn stack_history(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    PathId(id): PathId,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Vec<DeployView>>, ApiError> {
    let (mut environment, mut limit) = (None, 100);
    for (k, v) in super::query_pairs(query.as_deref())? {
        let number = || v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{k}: a number")));
        match k.as_str() {
            "environment" => environment = Some(number()?),
            "limit" => limit = u32::try_from(number()?).unwrap_or(u32::MAX).clamp(1, MAX_HISTORY),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {k:?}; the history takes environment, limit"
                )));
            }
        }
    }
    let list = read_store(&state, move |store| {
        store.stack(id)?;
        let list = store.stack_history(id, environment, limit)?;
        // An environment the stack left may be another team's.
        super::teams::keep_in_scope(
            store,
            scope,
            list,
            |d| d.environment,
            |s, user, env| s.environment_in_scope(user, env),
        )
    })
    .await?;
    Ok(Json(
        list.into_iter()
            .map(|d| DeployView {
                version: d.version,
                command: d.command,
                environment: d.environment,
                environment_name: d.environment_name,
                status: d.status,
                error: d.error,
                queued_at: d.queued_at,
                delivered_at: d.delivered_at,
                finished_at: d.finished_at,
            })
            .collect(),
    ))
}

/// An environment's own values of stack variables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnvironmentVariables {
    /// Name to value (values empty for a viewer: see `env_hidden`).
    pub variables: BTreeMap<String, String>,
    /// The values were left out: the caller is a viewer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_hidden: bool,
}

/// `GET /api/environments/{id}/variables`.
pub async fn environment_variables(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Json<EnvironmentVariables>, ApiError> {
    let mut variables = read_store(&state, move |store| {
        store.environment(id)?;
        Ok(store.environment_variables(id)?)
    })
    .await?;
    let env_hidden = hide_env(&caller, &mut variables);
    Ok(Json(EnvironmentVariables { variables, env_hidden }))
}

/// `PUT /api/environments/{id}/variables`: replaces them. A stack that
/// declares one of these names is deployed on this environment with its
/// value, from its next deploy (an update, a rollback, a retry, a
/// redeploy); what runs now is not redeployed.
pub async fn set_environment_variables(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<BTreeMap<String, String>>,
) -> Result<Json<EnvironmentVariables>, ApiError> {
    check_env(&body)?;
    let variables = with_store(&state, move |store| {
        if !store.set_environment_variables(id, &body)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no environment {id}")));
        }
        Ok(store.environment_variables(id)?)
    })
    .await?;
    Ok(Json(EnvironmentVariables { variables, env_hidden: false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), ApiError>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.message)
    }

    #[test]
    fn compose_files_are_checked_before_anything_is_stored() {
        let none = BTreeMap::new();
        assert!(check_compose("services:\n  web:\n    image: busybox\n    ports: ['80:80']\n", &none).is_ok());
        for (text, want) in [
            ("services: [unclosed", "not valid YAML"),
            ("- a\n- b\n", "must be a mapping"),
            ("version: '3'\n", "no `services`"),
            ("services: {}\n", "no `services`"),
            ("services:\n  web: 3\n", "must be a mapping"),
            ("services:\n  web:\n    build: .\n", "needs an `image`"),
            ("services:\n  'a b':\n    image: x\n", "a name is"),
            ("services:\n  web:\n    image: x\n  web:\n    image: y\n", "YAML"),
        ] {
            let (status, msg) = err(check_compose(text, &none));
            assert_eq!(status, 422, "{text}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
        let big = format!("services:\n  web:\n    image: x\n# {}\n", "x".repeat(MAX_COMPOSE));
        assert_eq!(err(check_compose(&big, &none)).0, 413);
        // What the agent would refuse, the server refuses: interpolation
        // nested too deep (40,000 levels aborted the agent), a required
        // variable missing, a name that would change the compose tool.
        let deep = format!("{}x{}", "${A:-".repeat(40_000), "}".repeat(40_000));
        let (status, msg) = err(check_compose(&format!("services:\n  web:\n    image: \"{deep}\"\n"), &none));
        assert!(status == 422 && msg.contains("nested more than"), "{status} {msg}");
        let (_, msg) = err(check_compose("services:\n  web:\n    image: \"${TAG:?set TAG}\"\n", &none));
        assert!(msg.contains("TAG") && msg.contains("set TAG"), "{msg}");
        let tag = BTreeMap::from([("TAG".to_owned(), "1".to_owned())]);
        assert!(check_compose("services:\n  web:\n    image: \"x:${TAG:?set TAG}\"\n", &tag).is_ok());
        let preload = BTreeMap::from([("LD_PRELOAD".to_owned(), "/data/x.so".to_owned())]);
        let (_, msg) = err(check_compose("services:\n  web:\n    image: x\n", &preload));
        assert!(msg.contains("LD_PRELOAD may not be set"), "{msg}");
    }

    #[test]
    fn names_and_variables_are_checked() {
        assert!(check_name("web-1_a").is_ok());
        for bad in ["", "Web", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert_eq!(err(check_name(bad)).0, 422, "{bad}");
        }
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(check_env(&env("TAG_1", "x")).is_ok());
        for (k, v) in [
            ("1A", "x"),
            ("A-B", "x"),
            ("", "x"),
            ("A", "a\0b"),
            ("LD_PRELOAD", "x"),
            ("PATH", "/tmp"),
            ("DOCKER_HOST", "tcp://x"),
        ] {
            assert_eq!(err(check_env(&env(k, v))).0, 422, "{k}");
        }
        assert_eq!(err(check_env(&env("A", &"x".repeat(MAX_VARS_BYTES)))).0, 413);
        assert!(TargetsBody::default().check().is_err());
    }
}
