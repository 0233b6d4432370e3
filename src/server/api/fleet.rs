//! The fleet's API: environments (create, list with filters and paging,
//! show, change, delete, deploy commands, stored state), groups, tags and
//! the server settings.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/environments` | create one (201): join token, EDGE_ID, Linux and Windows deploy commands |
//! | `GET /api/environments` | the list: `?group=&tag=&status=online\|offline&name=&limit=&offset=`; the total is in `X-Total-Count` |
//! | `GET /api/environments/{id}` | one in detail |
//! | `PATCH /api/environments/{id}` | rename, move, tag, change its deploy options |
//! | `DELETE /api/environments/{id}` | delete it with its state and commands (204) |
//! | `GET /api/environments/{id}/deploy` | its join token and deploy commands again |
//! | `GET /api/environments/{id}/state` | its stored state, with `as_of` and `snapshot_age_s` |
//! | `GET /api/environments/{id}/state/{part}` | one part: `host`, `containers`, `images`, `volumes`, `networks`, `stacks` |
//! | `POST /api/environments/{id}/reset-binding` | let another agent (EDGE_ID) take it over |
//! | `POST /api/environments/{id}/reset-counter` | accept any poll counter from its agent again |
//! | `POST /api/environments/{id}/rotate-secret` | a new secret and join token (the old ones are refused at once) |
//! | `POST /api/groups`, `GET /api/groups`, `GET/PATCH/DELETE /api/groups/{id}` | groups |
//! | `POST /api/tags`, `GET /api/tags`, `GET/PATCH/DELETE /api/tags/{id}` | tags |
//! | `GET /api/settings`, `PUT /api/settings` | default intervals; the AGENT_SECRET (write-only) |
//!
//! Groups must exist before an environment is put in one (a typo must not
//! split the fleet); tags named on an environment are created when new,
//! as a label is typed. Group and tag names are unique regardless of case.
//! Bad field values are 422, unknown ids in a path 404, a taken name 409;
//! a refused request changes nothing.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::types::{
    CreateEnvironment, CreatedEnvironment, DeployCommands, EnvVars, EnvironmentFull, EnvironmentStateView,
    EnvironmentView, GroupRef, LabelBody, LabelView, NameOrId, SettingsBody, SettingsView, StatePartView,
    UpdateEnvironment, UsageTotals,
};
use super::view;
use super::{ApiError, ApiJson, PathId, check_intervals, read_store, read_usage, with_store};
use crate::auth::Secret;
use crate::server::domain::deploy::{self, LINUX_VOLUMES, WINDOWS_VOLUMES, is_windows_path};
use crate::server::http::AppState;
use crate::server::store::IntervalSettings;
use crate::server::store::fleet::{
    EnvironmentChange, FleetError, FleetItem, FleetOptions, Label, NewEnvironment, Ref, Status,
};
use crate::wire::poll::Intervals;

/// The longest name of an environment, group or tag, in characters.
pub const MAX_NAME: usize = 128;

/// The longest group or tag name, in characters.
pub const MAX_LABEL: usize = 64;

/// The most tags an environment carries.
pub const MAX_TAGS: usize = 32;

/// The most host variables passed through to an agent.
pub const MAX_ENV_VARS: usize = 32;

/// The most environments one page of the list holds (and the default).
pub const MAX_PAGE: u64 = 1000;

/// What a deploy command's `-e AGENT_SECRET` means, for the operator.
pub const AGENT_SECRET_NOTE: &str = "This server requires an AGENT_SECRET. The commands pass it as `-e AGENT_SECRET` \
     without its value, so docker takes it from the shell that runs them: set it there first (`export \
     AGENT_SECRET=...` on Linux, `$env:AGENT_SECRET = '...'` in PowerShell), with the secret set in the \
     server's settings (never shown again).";

impl UsageTotals {
    fn of(v: Option<&crate::server::store::usage::TodayAnd30Days>) -> Self {
        v.map_or_else(Self::default, |&((tu, td), (mu, md))| Self {
            today_up: tu,
            today_down: td,
            days30_up: mu,
            days30_down: md,
        })
    }
}

impl From<Label> for LabelView {
    fn from(l: Label) -> Self {
        Self { id: l.id, name: l.name, environments: l.environments }
    }
}

fn view_of(item: FleetItem, now: i64) -> EnvironmentView {
    let c = item.counts;
    EnvironmentView {
        id: item.id,
        name: item.name,
        group: item.group.map(|(id, name)| GroupRef { id, name }),
        tags: item.tags,
        status: item.status.as_str().to_owned(),
        status_window_s: item.window,
        edge_id: item.edge_id,
        agent_version: (!item.agent_version.is_empty()).then_some(item.agent_version),
        created_at: item.created_at,
        last_poll_at: item.last_poll_at,
        last_poll_age_s: item.last_poll_at.map(|t| (now - t).max(0)),
        snapshot_at: item.snapshot_at,
        as_of: item.as_of,
        snapshot_age_s: item.as_of.map(|t| (now - t).max(0)),
        counts: c.into(),
        usage: UsageTotals::default(),
        mode: if item.session_hold > 0 { "session" } else { "polling" }.to_owned(),
        keepalive_s: (item.session_hold > 0).then_some(item.session_hold),
        mode_note: (!item.session_note.is_empty()).then_some(item.session_note),
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let status = match e {
            FleetError::GroupNotFound(_) | FleetError::TagNotFound(_) => StatusCode::NOT_FOUND,
            FleetError::GroupNameTaken(_) | FleetError::TagNameTaken(_) | FleetError::NoUrl(_) => StatusCode::CONFLICT,
            FleetError::UnknownGroup(_) | FleetError::UnknownTag(_) | FleetError::TimersOff(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        // What to do about it, in the API's own terms.
        let message = match &e {
            FleetError::UnknownGroup(_) => format!("{e} (create it first: POST /api/groups)"),
            FleetError::NoUrl(_) => format!("{e}; set it with PATCH"),
            _ => e.to_string(),
        };
        Self::new(status, message)
    }
}

// ----- checks -----

/// A name (environment, group, tag): trimmed, 1 to `max` characters, no
/// control characters.
pub(super) fn check_name(field: &str, name: &str, max: usize) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max {
        return Err(ApiError::invalid(format!("{field}: 1 to {max} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{field}: no control characters")));
    }
    Ok(name.to_owned())
}

/// A group or tag name. Commas are refused too, since the CLI takes lists
/// of tags as `a,b`.
pub(crate) fn check_label(field: &str, name: &str) -> Result<String, ApiError> {
    let name = check_name(field, name, MAX_LABEL)?;
    if name.contains(',') {
        return Err(ApiError::invalid(format!("{field}: no commas")));
    }
    Ok(name)
}

/// The server URL as the edge sees it: `https://host[:port][/path]`.
pub(super) fn check_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim().trim_end_matches('/');
    let bad = || ApiError::invalid("url: the server URL as the edge sees it, https://host:port");
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if host.is_empty() || url.len() > 512 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(url.to_owned())
}

/// Host variable names: shell-safe identifiers, none the commands set or
/// the agent would refuse. Empty items (`"A,,B"`, a trailing comma) are
/// skipped, repeats dropped.
fn check_env_vars(vars: &EnvVars) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for v in &vars.0 {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let shown: String = v.chars().take(40).collect();
        let mut chars = v.chars();
        let ok = v.len() <= 128
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ApiError::invalid(format!(
                "env_vars: {shown:?} is not a variable name (letters, digits and _, not starting with a digit)"
            )));
        }
        if crate::edge_env::SET_BY_DEPLOY.contains(&v) {
            return Err(ApiError::invalid(format!("env_vars: {v} is set by the deploy command itself")));
        }
        if !crate::edge_env::accepted(v) {
            return Err(ApiError::invalid(format!(
                "env_vars: {v} is not a setting the agent knows; it would refuse to start"
            )));
        }
        if !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    }
    if out.len() > MAX_ENV_VARS {
        return Err(ApiError::invalid(format!("env_vars: at most {MAX_ENV_VARS}")));
    }
    Ok(out)
}

/// The host's Docker volume path: absolute, Linux (`/srv/docker/volumes`)
/// or Windows (`D:\docker\volumes`), of characters that need no quoting in
/// a shell: letters, digits, `.`, `_`, `-`, `+`, `@` and the separators.
/// The default path (or empty) is `None`.
fn check_volume_path(path: &str) -> Result<Option<String>, ApiError> {
    let p = path.trim();
    if p.is_empty() {
        return Ok(None);
    }
    let windows = is_windows_path(p);
    let sep = if windows { '\\' } else { '/' };
    let body = if windows { &p[2..] } else { p };
    let safe = body.chars().all(|c| c.is_ascii_alphanumeric() || "._-+@".contains(c) || c == sep);
    if !(windows || p.starts_with('/')) || !safe || p.len() > 512 || body.split(sep).any(|s| s == "..") {
        return Err(ApiError::invalid(
            "volume_path: an absolute path (/srv/docker/volumes or D:\\docker\\volumes) of letters, digits, \
             '.', '_', '-', '+', '@' and separators",
        ));
    }
    let trimmed = if body.len() > 1 { p.trim_end_matches(sep) } else { p };
    if trimmed == LINUX_VOLUMES || trimmed.eq_ignore_ascii_case(WINDOWS_VOLUMES) {
        return Ok(None);
    }
    Ok(Some(trimmed.to_owned()))
}

pub(super) fn check_tags(tags: &[NameOrId]) -> Result<Vec<Ref>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!("tags: at most {MAX_TAGS}")));
    }
    tags.iter().map(|t| Ok(to_ref(&check_ref("tags", t)?))).collect()
}

pub(super) fn check_ref(field: &str, r: &NameOrId) -> Result<NameOrId, ApiError> {
    Ok(match r {
        NameOrId::Id(id) => NameOrId::Id(*id),
        NameOrId::Name(n) => NameOrId::Name(check_label(field, n)?),
    })
}

pub(super) fn to_ref(r: &NameOrId) -> Ref {
    match r {
        NameOrId::Id(id) => Ref::Id(*id),
        NameOrId::Name(n) => Ref::Name(n.clone()),
    }
}

/// The server's AGENT_SECRET: up to 256 characters, no control characters
/// (it goes into a command line).
fn check_agent_secret(secret: &str) -> Result<(), ApiError> {
    if secret.chars().count() > 256 || secret.chars().any(char::is_control) {
        return Err(ApiError::invalid("agent_secret: up to 256 characters, no control characters"));
    }
    Ok(())
}

fn check_default_interval(name: &str, v: u32) -> Result<(), ApiError> {
    if v > super::MAX_INTERVAL {
        return Err(ApiError::invalid(format!(
            "intervals.{name}: at most {} seconds (a week); 0 disables it",
            super::MAX_INTERVAL
        )));
    }
    Ok(())
}

/// A random EDGE_ID, in the UUID form Portainer uses.
fn new_edge_id() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| {
        tracing::error!("new EDGE_ID: no randomness");
        ApiError::internal()
    })?;
    (b[6], b[8]) = ((b[6] & 0x0f) | 0x40, (b[8] & 0x3f) | 0x80);
    let h = view::hex(&b);
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// An environment's join token and deploy commands, from the store.
fn deploy_of(store: &dyn Transaction, id: u64, fingerprint: [u8; 32]) -> Result<CreatedEnvironment, ApiError> {
    let d = deploy::deploy(store, id, fingerprint)?;
    Ok(CreatedEnvironment {
        id,
        name: d.name,
        edge_id: d.edge_id,
        docker_run: d.linux.clone(),
        commands: DeployCommands { linux: d.linux, windows: d.windows },
        edge_key: d.edge_key,
        agent_secret_note: d.agent_secret.then(|| AGENT_SECRET_NOTE.to_owned()),
    })
}

use crate::clock::unix_now as now;
use crate::server::store::prelude::*;

/// 32 random bytes: an environment's secret (a fleet token's too).
pub(super) fn new_secret() -> Result<Secret, ApiError> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(|_| {
        tracing::error!("no randomness for an environment's secret");
        ApiError::internal()
    })?;
    Ok(Secret(secret))
}

fn full_of(store: &dyn Transaction, id: u64, now: i64) -> Result<EnvironmentFull, ApiError> {
    let item = store.fleet_item(id, now)?;
    let (seq, root) = (item.seq, view::hex(&item.root));
    let intervals = store.intervals(id)?;
    let o = store.fleet_options(id)?;
    let usage = UsageTotals::of(store.usage_totals(&[id], now)?.get(&id));
    Ok(EnvironmentFull {
        item: EnvironmentView { usage, ..view_of(item, now) },
        seq,
        root,
        intervals: intervals.into(),
        effective_intervals: intervals.resolve(store.default_intervals()?).into(),
        agent_intervals: store.agent_intervals(id)?.map(Into::into),
        commands_seen: store.commands_seen(id)?,
        url: o.url,
        env_vars: o.env_vars,
        allow_self_signed: o.allow_self_signed,
        volume_path: o.volume_path,
        deploy_edge_id: o.deploy_edge_id,
        tcp_timestamps: o.tcp_timestamps,
    })
}

// ----- handlers: environments -----

/// The environment a `POST /api/environments` body asks for, its fields
/// checked (not its intervals: they are checked against the server's
/// defaults, in the store), with this secret and EDGE_ID.
///
/// # Errors
/// A 422 naming the bad field.
pub(crate) fn new_environment(
    req: CreateEnvironment,
    secret: Secret,
    deploy_edge_id: String,
) -> Result<NewEnvironment, ApiError> {
    let name = check_name("name", &req.name, MAX_NAME)?;
    let url = check_url(&req.url)?;
    let intervals = IntervalSettings::from(req.intervals.unwrap_or_default());
    let group = req.group.as_ref().map(|g| check_ref("group", g)).transpose()?.as_ref().map(to_ref);
    let tags = check_tags(&req.tags)?;
    let env_vars = check_env_vars(&req.env_vars.unwrap_or_default())?;
    let volume_path = req.volume_path.as_deref().map(check_volume_path).transpose()?.flatten();
    Ok(NewEnvironment {
        name,
        secret,
        intervals,
        group,
        tags,
        options: FleetOptions {
            url,
            env_vars,
            allow_self_signed: req.allow_self_signed,
            volume_path,
            deploy_edge_id: Some(deploy_edge_id),
            tcp_timestamps: req.tcp_timestamps,
        },
    })
}

/// `POST /api/environments`: creates an environment.
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> Result<(StatusCode, Json<CreatedEnvironment>), ApiError> {
    let fingerprint = state.fingerprint;
    let created = with_store(&state, move |store| create_environment_in(store, req, fingerprint)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Creates an environment the way `POST /api/environments` does, in the
/// caller's transaction: the handler and `tern quickstart` share it.
///
/// # Errors
/// A 422 naming the bad field, or the store's error.
pub(crate) fn create_environment_in(
    store: &dyn Transaction,
    req: CreateEnvironment,
    fingerprint: [u8; 32],
) -> Result<CreatedEnvironment, ApiError> {
    let new = new_environment(req, new_secret()?, new_edge_id()?)?;
    check_intervals(new.intervals, store.default_intervals()?)?;
    let id = store.create_fleet_environment(&new, now())?;
    if new.group.is_some() || !new.tags.is_empty() {
        joined_labels(store, id)?;
    }
    deploy_of(store, id, fingerprint)
}

/// The one moment an environment can come to be targeted by a stack it
/// does not run yet: it was given a group or tags (at creation, or by a
/// change). Such stacks are queued for it here, in the same transaction as
/// the change, so a poll, a listing or a page never has to look for them.
/// (A stack's own create and update resolve their targets themselves; an
/// environment that leaves a group or tag keeps its stacks, see
/// `store::stacks`.)
///
/// # Errors
/// The store's.
fn joined_labels(store: &dyn Transaction, id: u64) -> Result<(), ApiError> {
    crate::server::domain::stacks::reconcile(store, None, Some(id), now())?;
    Ok(())
}

/// The list's query: `group`, `tag`, `status`, `name`, `limit`, `offset`.
fn parse_filter(query: Option<&str>) -> Result<crate::server::store::fleet::Filter, ApiError> {
    let mut f = crate::server::store::fleet::Filter { limit: Some(MAX_PAGE), ..Default::default() };
    for (k, v) in super::query_pairs(query)? {
        let number = |max: u64| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| ApiError::invalid(format!("{k}: a number from 0 to {max}")))
        };
        match k.as_str() {
            "group" => f.group = Some(Ref::Name(v.trim().to_owned())),
            "tag" => f.tag = Some(Ref::Name(v.trim().to_owned())),
            "status" => {
                f.status = Some(Status::parse(&v).ok_or_else(|| ApiError::invalid("status: online or offline"))?);
            }
            "name" => f.name = Some(v),
            "limit" => f.limit = Some(number(MAX_PAGE)?),
            "offset" => f.offset = number(i64::MAX as u64)?,
            _ => {
                let shown: String = k.chars().take(40).collect();
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {shown:?}; the list takes group, tag, status, name, limit, offset"
                )));
            }
        }
    }
    Ok(f)
}

/// `GET /api/environments`: a page of the list; the total is in
/// `X-Total-Count`.
pub async fn list_environments(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut filter = parse_filter(query.as_deref())?;
    filter.user = scope.0;
    let now = now();
    let (items, usage, total) = read_usage(&state, move |store| {
        let (items, total) = store.fleet(&filter, now)?;
        let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
        Ok((items, store.usage_totals(&ids, now)?, total))
    })
    .await?;
    let list: Vec<EnvironmentView> = items
        .into_iter()
        .map(|i| {
            let u = UsageTotals::of(usage.get(&i.id));
            EnvironmentView { usage: u, ..view_of(i, now) }
        })
        .collect();
    let mut resp = Json(list).into_response();
    resp.headers_mut().insert("x-total-count", HeaderValue::from(total));
    Ok(resp)
}

/// `GET /api/environments/{id}`.
pub async fn environment(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<EnvironmentFull>, ApiError> {
    Ok(Json(read_usage(&state, move |store| full_of(store, id, now())).await?))
}

/// `PATCH /api/environments/{id}`.
pub async fn update_environment(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(req): ApiJson<UpdateEnvironment>,
) -> Result<Json<EnvironmentFull>, ApiError> {
    Ok(Json(
        with_store(&state, move |store| {
            update_environment_in(store, id, &req)?;
            full_of(store, id, now())
        })
        .await?,
    ))
}

/// Changes an environment the way `PATCH /api/environments/{id}` does, in
/// the caller's transaction (`tern quickstart` follows its own port with it).
///
/// # Errors
/// A 422 naming the bad field, or the store's error.
pub(crate) fn update_environment_in(store: &dyn Transaction, id: u64, req: &UpdateEnvironment) -> Result<(), ApiError> {
    let change = environment_change(req)?;
    store.update_environment(id, &change)?;
    if change.group.is_some() || change.tags.is_some() {
        joined_labels(store, id)?;
    }
    Ok(())
}

/// The change a `PATCH /api/environments/{id}` body asks for, checked.
///
/// # Errors
/// A 422 naming the bad field.
pub(crate) fn environment_change(req: &UpdateEnvironment) -> Result<EnvironmentChange, ApiError> {
    Ok(EnvironmentChange {
        name: req.name.as_deref().map(|n| check_name("name", n, MAX_NAME)).transpose()?,
        url: req.url.as_deref().map(check_url).transpose()?,
        group: match &req.group {
            None => None,
            Some(None) => Some(None),
            Some(Some(g)) => Some(Some(to_ref(&check_ref("group", g)?))),
        },
        tags: req.tags.as_deref().map(check_tags).transpose()?,
        env_vars: req.env_vars.as_ref().map(check_env_vars).transpose()?,
        allow_self_signed: req.allow_self_signed,
        volume_path: match &req.volume_path {
            None => None,
            Some(None) => Some(None),
            Some(Some(p)) => Some(check_volume_path(p)?),
        },
        tcp_timestamps: req.tcp_timestamps,
    })
}

/// `DELETE /api/environments/{id}`: the environment, its stored state,
/// its commands: everything. Its agent's polls are refused from now on.
pub async fn delete_environment(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    with_store(&state, move |store| Ok(store.delete_environment(id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/environments/{id}/deploy`.
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<CreatedEnvironment>, ApiError> {
    let fingerprint = state.fingerprint;
    Ok(Json(read_store(&state, move |store| deploy_of(store, id, fingerprint)).await?))
}

/// `POST /api/environments/{id}/reset-counter`: the environment's agent may
/// poll with any counter again (see [`Store::reset_counter`]).
pub async fn reset_counter(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<EnvironmentView>, ApiError> {
    let now = now();
    let item = with_store(&state, move |store| {
        store.reset_counter(id)?;
        Ok(store.fleet_item(id, now)?)
    })
    .await?;
    tracing::warn!("environment {id}: poll counter reset by an operator");
    Ok(Json(view_of(item, now)))
}

/// `POST /api/environments/{id}/rotate-secret`: a new secret and join
/// token; the old ones stop working at once. Answers as `.../deploy` does,
/// with the new token and commands to redeploy the agent with.
pub async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<CreatedEnvironment>, ApiError> {
    let secret = new_secret()?;
    let fingerprint = state.fingerprint;
    // One transaction: when no deploy command can be made (no URL), the
    // old secret stays, rather than a dead token and no new one.
    let created = with_store(&state, move |store| {
        store.rotate_secret(id, &secret)?;
        deploy_of(store, id, fingerprint)
    })
    .await?;
    tracing::warn!("environment {id}: secret rotated by an operator; its agent needs the new EDGE_KEY");
    Ok(Json(created))
}

/// `POST /api/environments/{id}/reset-binding`.
pub async fn reset_binding(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<EnvironmentView>, ApiError> {
    let now = now();
    let item = with_store(&state, move |store| {
        store.reset_binding(id)?;
        Ok(store.fleet_item(id, now)?)
    })
    .await?;
    Ok(Json(view_of(item, now)))
}

/// The parts of a stored state `GET .../state/{part}` serves.
pub const STATE_PARTS: &[&str] = &["host", "containers", "images", "volumes", "networks", "stacks"];

async fn state_view(state: &Arc<AppState>, id: u64) -> Result<EnvironmentStateView, ApiError> {
    let now = now();
    let (replica, item) = read_store(state, move |store| {
        let item = store.fleet_item(id, now)?;
        Ok((store.replica(id)?, item))
    })
    .await?;
    let (seq, current) = replica.current();
    Ok(EnvironmentStateView {
        state: view::state(seq, current),
        as_of: item.as_of,
        snapshot_age_s: item.as_of.map(|t| (now - t).max(0)),
        status: item.status.as_str().into(),
    })
}

/// `GET /api/environments/{id}/state`: the stored state, with when it was
/// last known to be the host's (`as_of`) and its age.
pub async fn environment_state(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    // Through a `Value`, whose keys print in order, as they did before the
    // typed view (`as_of`, `snapshot_age_s` and `status` sit among the state's).
    let v = serde_json::to_value(state_view(&state, id).await?).map_err(|_| ApiError::internal())?;
    Ok(Json(v))
}

/// `GET /api/environments/{id}/state/{part}`: one part, with the same
/// `seq`, `root`, `as_of`, `snapshot_age_s` and `status`.
pub async fn environment_state_part(
    State(state): State<Arc<AppState>>,
    Path((id, part)): Path<(String, String)>,
) -> Result<Json<StatePartView>, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request("bad id: ids are numbers"))?;
    if !STATE_PARTS.contains(&part.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no part {:?}; one of {}", part.chars().take(40).collect::<String>(), STATE_PARTS.join(", ")),
        ));
    }
    let whole = state_view(&state, id).await?;
    Ok(Json(StatePartView::of(whole, &part).ok_or_else(ApiError::internal)?))
}

// ----- handlers: groups and tags -----

/// Groups and tags have the same endpoints.
#[derive(Debug, Clone, Copy)]
enum LabelKind {
    Group,
    Tag,
}

impl LabelKind {
    fn field(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Tag => "tag",
        }
    }
}

async fn label_create(
    state: Arc<AppState>,
    kind: LabelKind,
    body: LabelBody,
) -> Result<(StatusCode, Json<LabelView>), ApiError> {
    let name = check_label("name", &body.name)?;
    let label = with_store(&state, move |store| {
        Ok(match kind {
            LabelKind::Group => store.create_group(&name)?,
            LabelKind::Tag => store.create_tag(&name)?,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(label.into())))
}

async fn label_list(state: Arc<AppState>, kind: LabelKind) -> Result<Json<Vec<LabelView>>, ApiError> {
    let list = read_store(&state, move |store| {
        Ok(match kind {
            LabelKind::Group => store.groups()?,
            LabelKind::Tag => store.tags()?,
        })
    })
    .await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

async fn label_get(state: Arc<AppState>, kind: LabelKind, id: u64) -> Result<Json<LabelView>, ApiError> {
    let label = read_store(&state, move |store| {
        Ok(match kind {
            LabelKind::Group => store.group(id)?,
            LabelKind::Tag => store.tag(id)?,
        })
    })
    .await?;
    Ok(Json(label.into()))
}

async fn label_rename(
    state: Arc<AppState>,
    kind: LabelKind,
    id: u64,
    body: LabelBody,
) -> Result<Json<LabelView>, ApiError> {
    let name = check_label("name", &body.name)?;
    let label = with_store(&state, move |store| {
        Ok(match kind {
            LabelKind::Group => store.rename_group(id, &name)?,
            LabelKind::Tag => store.rename_tag(id, &name)?,
        })
    })
    .await?;
    Ok(Json(label.into()))
}

async fn label_delete(state: Arc<AppState>, kind: LabelKind, id: u64) -> Result<StatusCode, ApiError> {
    with_store(&state, move |store| {
        match kind {
            LabelKind::Group => store.delete_group(id)?,
            LabelKind::Tag => store.delete_tag(id)?,
        }
        Ok(())
    })
    .await?;
    tracing::debug!("deleted {} {id}", kind.field());
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/groups`.
pub async fn create_group(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<LabelBody>,
) -> Result<(StatusCode, Json<LabelView>), ApiError> {
    label_create(state, LabelKind::Group, body).await
}

/// `GET /api/groups`: by name.
pub async fn list_groups(State(state): State<Arc<AppState>>) -> Result<Json<Vec<LabelView>>, ApiError> {
    label_list(state, LabelKind::Group).await
}

/// `GET /api/groups/{id}`.
pub async fn group(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<LabelView>, ApiError> {
    label_get(state, LabelKind::Group, id).await
}

/// `PATCH /api/groups/{id}`: renames it.
pub async fn rename_group(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<LabelBody>,
) -> Result<Json<LabelView>, ApiError> {
    label_rename(state, LabelKind::Group, id, body).await
}

/// `DELETE /api/groups/{id}`: its environments fall back to no group.
pub async fn delete_group(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    label_delete(state, LabelKind::Group, id).await
}

/// `POST /api/tags`.
pub async fn create_tag(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<LabelBody>,
) -> Result<(StatusCode, Json<LabelView>), ApiError> {
    label_create(state, LabelKind::Tag, body).await
}

/// `GET /api/tags`: by name.
pub async fn list_tags(State(state): State<Arc<AppState>>) -> Result<Json<Vec<LabelView>>, ApiError> {
    label_list(state, LabelKind::Tag).await
}

/// `GET /api/tags/{id}`.
pub async fn tag(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<LabelView>, ApiError> {
    label_get(state, LabelKind::Tag, id).await
}

/// `PATCH /api/tags/{id}`: renames it.
pub async fn rename_tag(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<LabelBody>,
) -> Result<Json<LabelView>, ApiError> {
    label_rename(state, LabelKind::Tag, id, body).await
}

/// `DELETE /api/tags/{id}`: taken off every environment.
pub async fn delete_tag(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    label_delete(state, LabelKind::Tag, id).await
}

// ----- handlers: settings -----

fn settings_of(store: &dyn Transaction) -> Result<SettingsView, ApiError> {
    let following = store.environments_following_defaults()?;
    Ok(SettingsView {
        intervals: store.default_intervals()?.into(),
        agent_secret_set: store.agent_secret()?.is_some(),
        following_defaults: following.into(),
    })
}

/// `GET /api/settings`.
pub async fn settings(State(state): State<Arc<AppState>>) -> Result<Json<SettingsView>, ApiError> {
    Ok(Json(read_store(&state, settings_of).await?))
}

/// Checks a `PUT /api/settings` body before the store is read (whether
/// the new defaults leave a timer on is checked against the old ones, in
/// the store).
///
/// # Errors
/// A 422 naming the bad field.
pub(crate) fn check_settings(body: &SettingsBody) -> Result<(), ApiError> {
    if let Some(i) = body.intervals {
        for (name, v) in [("ping", i.ping), ("snapshot", i.snapshot), ("command", i.command)] {
            if let Some(v) = v {
                check_default_interval(name, v)?;
            }
        }
    }
    if let Some(Some(s)) = &body.agent_secret {
        check_agent_secret(s)?;
    }
    Ok(())
}

/// `PUT /api/settings`: the default intervals reach every agent that
/// follows them in its next reply; a new AGENT_SECRET applies at once, so
/// every agent must be redeployed with it.
pub async fn put_settings(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsView>, ApiError> {
    check_settings(&body)?;
    Ok(Json(
        with_store(&state, move |store| {
            if let Some(i) = body.intervals {
                let old = store.default_intervals()?;
                let new = Intervals {
                    ping: i.ping.unwrap_or(old.ping),
                    snapshot: i.snapshot.unwrap_or(old.snapshot),
                    command: i.command.unwrap_or(old.command),
                };
                if new.ping == 0 && new.snapshot == 0 && new.command == 0 {
                    return Err(ApiError::invalid(
                        "intervals: at least one default must be above 0, or agents that follow them never poll again",
                    ));
                }
                if new != old {
                    store.change_default_intervals(new)?;
                }
            }
            if let Some(secret) = &body.agent_secret {
                store.set_agent_secret(secret.as_deref())?;
            }
            settings_of(store)
        })
        .await?,
    ))
}

/// The fleet's routes (the caller puts them behind the API's
/// authentication).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/environments", post(create_environment).get(list_environments))
        .route("/api/environments/{id}", get(environment).patch(update_environment).delete(delete_environment))
        .route("/api/environments/{id}/deploy", get(deploy))
        .route("/api/environments/{id}/state", get(environment_state))
        .route("/api/environments/{id}/state/{part}", get(environment_state_part))
        .route("/api/environments/{id}/reset-binding", post(reset_binding))
        .route("/api/environments/{id}/reset-counter", post(reset_counter))
        .route("/api/environments/{id}/rotate-secret", post(rotate_secret))
        .route("/api/groups", post(create_group).get(list_groups))
        .route("/api/groups/{id}", get(group).patch(rename_group).delete(delete_group))
        .route("/api/tags", post(create_tag).get(list_tags))
        .route("/api/tags/{id}", get(tag).patch(rename_tag).delete(delete_tag))
        .route("/api/settings", get(settings).put(put_settings))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use hyper::service::Service;
    use hyper_util::service::TowerToHyperService;

    use super::*;

    use crate::server::store::Store;
    use crate::wire::codec::Limits;

    const TOKEN: &str = "fleet-token";

    async fn call(service: &TowerToHyperService<Router>, method: &str, path: &str, body: Option<Value>) -> Response {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        service.call(req).await.unwrap()
    }

    #[tokio::test]
    async fn the_list_says_its_total_in_a_header_and_pages_by_id() {
        let state = AppState::new(Store::scratch().unwrap(), Limits::default(), TOKEN, [7; 32]).unwrap();
        let service = TowerToHyperService::new(crate::server::http::router(state));
        for i in 0..7 {
            let body = serde_json::json!({ "name": format!("e{i}"), "url": "https://ops.example.com" });
            assert_eq!(call(&service, "POST", "/api/environments", Some(body)).await.status(), 201);
        }
        let resp = call(&service, "GET", "/api/environments?limit=3&offset=5", None).await;
        assert_eq!(resp.headers()["x-total-count"], "7");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let page: Vec<EnvironmentView> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(page.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["e5", "e6"]);
        let resp = call(&service, "GET", "/api/environments?name=e1", None).await;
        assert_eq!(resp.headers()["x-total-count"], "1");
    }

    #[tokio::test]
    async fn an_environment_given_a_targeted_tag_or_group_gets_the_stack_with_the_change() {
        let state = AppState::new(Store::scratch().unwrap(), Limits::default(), TOKEN, [7; 32]).unwrap();
        let service = TowerToHyperService::new(crate::server::http::router(state));
        let post = |path: &'static str, body: Value| {
            let service = &service;
            async move {
                let resp = call(service, "POST", path, Some(body)).await;
                assert_eq!(resp.status(), 201, "POST {path}");
            }
        };
        post("/api/tags", serde_json::json!({ "name": "gps" })).await;
        post("/api/groups", serde_json::json!({ "name": "ships" })).await;
        for name in ["plain", "later-tag", "later-group"] {
            post("/api/environments", serde_json::json!({ "name": name, "url": "https://ops.example.com" })).await;
        }
        let compose = "services:\n  web:\n    image: busybox\n";
        let targets = serde_json::json!({ "tags": ["gps"], "groups": ["ships"] });
        post("/api/stacks", serde_json::json!({ "name": "nav", "compose": compose, "targets": targets })).await;
        let deployed = || async {
            let resp = call(&service, "GET", "/api/stacks/1", None).await;
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let stack: super::super::types::StackDetail = serde_json::from_slice(&bytes).unwrap();
            stack.environments.iter().map(|d| (d.environment_name.clone(), d.status.clone())).collect::<Vec<_>>()
        };
        assert_eq!(deployed().await, []);
        let patch = |id: u64, body: Value| {
            let service = &service;
            async move {
                assert_eq!(call(service, "PATCH", &format!("/api/environments/{id}"), Some(body)).await.status(), 200)
            }
        };
        patch(2, serde_json::json!({ "tags": ["gps"] })).await;
        patch(3, serde_json::json!({ "group": "ships" })).await;
        post(
            "/api/environments",
            serde_json::json!({ "name": "born-tagged", "url": "https://ops.example.com", "tags": ["gps"] }),
        )
        .await;
        let pending = |n: &str| (n.to_owned(), "pending".to_owned());
        assert_eq!(deployed().await, [pending("later-tag"), pending("later-group"), pending("born-tagged")]);
        // A change that gives no label deploys nothing more, and nothing twice.
        patch(1, serde_json::json!({ "name": "still-plain" })).await;
        patch(2, serde_json::json!({ "tags": ["gps"] })).await;
        assert_eq!(deployed().await.len(), 3);
    }

    #[test]
    fn volume_paths_and_variable_names_are_checked_for_the_shell() {
        assert_eq!(check_volume_path("/srv/docker/volumes/").unwrap().as_deref(), Some("/srv/docker/volumes"));
        assert_eq!(check_volume_path(r"D:\docker\volumes\").unwrap().as_deref(), Some(r"D:\docker\volumes"));
        for default in
            ["", "  ", "/var/lib/docker/volumes", "/var/lib/docker/volumes/", r"c:\programdata\docker\volumes"]
        {
            assert_eq!(check_volume_path(default).unwrap(), None, "{default:?}");
        }
        for bad in ["srv", "/a b", "/a/../b", "/a;b", "/$x", "/a'b", "C:/x", r"C:\a b", r"\\server\share", "/a,b"] {
            assert!(check_volume_path(bad).is_err(), "{bad:?}");
        }
        let vars = |t: &str| check_env_vars(&EnvVars(t.split(',').map(str::to_owned).collect()));
        assert_eq!(vars(" A , _b,,A,EDGE_TLS_PQ ").unwrap(), ["A", "_b", "EDGE_TLS_PQ"]);
        // Every setting the agent reads may come from the host (the list is
        // the agent's own, crate::edge_env: EDGE_POLL_TIMEOUT for a slow link).
        for ok in ["EDGE_POLL_TIMEOUT", "EDGE_COMPOSE", "EDGE_JOB_IMAGE", "LOG_LEVEL", "EDGE_ASYNC"] {
            assert_eq!(vars(ok).unwrap(), [ok]);
        }
        for bad in ["1A", "A-B", "A B", "$A", "EDGE_ID", "DATA_PATH", "AGENT_FOO", "EDGEX", "Ä"] {
            assert!(vars(bad).is_err(), "{bad:?}");
        }
        assert!(check_url("https://ops:9443/").is_ok() && check_url("https://:9443").is_err());
        assert_eq!(new_edge_id().unwrap().len(), 36);
        assert_ne!(new_edge_id().unwrap(), new_edge_id().unwrap());
    }
}
