//! Onboarding many devices (issue #17): fleet join tokens and the waiting
//! room.
//!
//! * `POST /api/fleet-tokens` makes a token (its EDGE_KEY and the one
//!   `docker run` command to flash onto a batch of devices), with an
//!   optional expiry, use count, group and tags its devices are admitted
//!   with, and a rule (`auto_admit`: `off`, `all`, or `tags` with
//!   `auto_tags`); `GET` lists them, `GET …/{id}` shows one with its
//!   command again, `DELETE …/{id}` revokes it.
//! * `GET /api/devices?status=pending` is the waiting room; `POST
//!   /api/devices/{id}/admit` (name, group, tags: each optional) makes a
//!   device an environment, `…/reject` (reason) turns it away, `DELETE`
//!   forgets it (it may ask again).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::access::Caller;
use super::fleet::{MAX_TAGS, check_label, check_name, check_ref, check_tags, check_url, new_secret, to_ref};
use super::types::NameOrId;
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::domain::admission::{self, AdmitError, AdmitWith};
use crate::server::http::AppState;
use crate::server::store::admission::{AutoAdmit, Device, DeviceStatus, FleetTokenRow, NewFleetToken};
use crate::server::store::fleet::Ref;
use crate::server::store::prelude::*;

/// The longest token name.
pub const MAX_TOKEN_NAME: usize = 128;
/// The most devices a token may be limited to (a use count above is none).
pub const MAX_USES: u64 = 1_000_000;
/// The longest a token may live, in seconds (ten years).
pub const MAX_LIFETIME: u64 = 10 * 365 * 86_400;
/// The longest reason a rejection gives.
pub const MAX_REASON: usize = 200;

/// `POST /api/fleet-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFleetToken {
    /// Its name.
    pub name: String,
    /// The server URL as the devices see it.
    pub url: String,
    /// The group its devices are admitted into (unless one asks for
    /// another), which must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<NameOrId>,
    /// Tags its devices are admitted with (new names are made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<NameOrId>,
    /// `off` (the default), `all`, or `tags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_admit: Option<AutoAdmit>,
    /// With `tags`: a device that asks for one of these is admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_tags: Vec<String>,
    /// How many devices may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// Seconds from now until it takes no new device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// A token as the API shows it (never its secret; its EDGE_KEY only on
/// creation and from `GET /api/fleet-tokens/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetTokenView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The server URL its devices reach.
    pub url: String,
    /// Its group's name.
    pub group: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its rule.
    pub auto_admit: AutoAdmit,
    /// The rule's tags.
    pub auto_tags: Vec<String>,
    /// Its use count (`None`: any number).
    pub max_uses: Option<u64>,
    /// Devices that used it.
    pub uses: u64,
    /// When it stops taking new devices.
    pub expires_at: Option<i64>,
    /// When it was made.
    pub created_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// `active`, or why it takes no new device.
    pub state: String,
    /// The EDGE_KEY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_key: Option<String>,
    /// The commands to flash: `linux`, `windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<super::types::DeployCommands>,
}

impl FleetTokenView {
    fn of(t: &FleetTokenRow, now: i64) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            url: t.url.clone(),
            group: t.group.as_ref().map(|g| g.1.clone()),
            tags: t.tags.clone(),
            auto_admit: t.auto_admit,
            auto_tags: t.auto_tags.clone(),
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at: t.expires_at,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            state: admission::closed_to_new(t, now).unwrap_or_else(|| "active".into()),
            edge_key: None,
            commands: None,
        }
    }
}

/// A device as the API shows it (never its key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// Its id.
    pub id: u64,
    /// The token it asked with.
    pub token: u64,
    /// The token's name.
    pub token_name: String,
    /// Its EDGE_ID.
    pub edge_id: String,
    /// Its host's name, as it said.
    pub hostname: String,
    /// Its agent's version, as it said.
    pub agent_version: String,
    /// Its engine, as it said.
    pub engine: String,
    /// The group it asked for (EDGE_GROUP).
    pub group: String,
    /// The tags it asked for (EDGE_TAGS).
    pub tags: Vec<String>,
    /// The address it last asked from.
    pub addr: String,
    /// `pending`, `admitted` or `rejected`.
    pub status: DeviceStatus,
    /// Why it was rejected.
    pub reason: String,
    /// The environment it is now.
    pub environment: Option<u64>,
    /// When it first asked.
    pub first_seen: i64,
    /// When it last asked.
    pub last_seen: i64,
    /// When it was admitted or rejected.
    pub decided_at: Option<i64>,
    /// Who decided.
    pub decided_by: String,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        Self {
            id: d.id,
            token: d.token.0,
            token_name: d.token.1,
            edge_id: d.edge_id,
            hostname: d.hostname,
            agent_version: d.agent_version,
            engine: d.engine,
            group: d.group,
            tags: d.tags,
            addr: d.addr,
            status: d.status,
            reason: d.reason,
            environment: d.environment,
            first_seen: d.first_seen,
            last_seen: d.last_seen,
            decided_at: d.decided_at,
            decided_by: d.decided_by,
        }
    }
}

/// `POST /api/devices/{id}/admit`: each field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitBody {
    /// The environment's name (default: the device's hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its group (default: the one it asked for, else the token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<NameOrId>,
    /// Its tags (default: the token's and those it asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<NameOrId>>,
}

/// `POST /api/devices/{id}/reject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Why, for the device's health output.
    #[serde(default)]
    pub reason: String,
}

/// What an admission made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admitted {
    /// The device.
    pub device: DeviceView,
    /// The environment it is now.
    pub environment: u64,
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            AdmitError::Admitted(..) => Self::new(StatusCode::CONFLICT, e.to_string()),
            AdmitError::Store(e) => e.into(),
        }
    }
}

/// A JSON body that may be left out (an empty body is every field's
/// default).
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("body: {e}")))
}

fn now() -> i64 {
    crate::clock::unix_now()
}

/// A token request's group, tags and rule tags, checked.
type CheckedToken = (Option<Ref>, Vec<String>, Vec<String>);

fn check_token(req: &CreateFleetToken) -> Result<CheckedToken, ApiError> {
    check_name("name", &req.name, MAX_TOKEN_NAME)?;
    let group = req.group.as_ref().map(|g| check_ref("group", g)).transpose()?.as_ref().map(to_ref);
    let tags = check_tags(&req.tags)?;
    let tags = tags
        .into_iter()
        .map(|t| match t {
            Ref::Name(n) => Ok(n),
            Ref::Id(_) => Err(ApiError::invalid("tags: by name (a token's tags may not exist yet)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if req.auto_tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!("auto_tags: at most {MAX_TAGS}")));
    }
    let auto_tags = req.auto_tags.iter().map(|t| check_label("auto_tags", t)).collect::<Result<Vec<_>, _>>()?;
    match (req.auto_admit, auto_tags.is_empty()) {
        (Some(AutoAdmit::Tags), true) => {
            return Err(ApiError::invalid("auto_tags: the tags that admit a device, with auto_admit \"tags\""));
        }
        (Some(AutoAdmit::Off | AutoAdmit::All) | None, false) => {
            return Err(ApiError::invalid("auto_tags: only with auto_admit \"tags\""));
        }
        _ => {}
    }
    if req.max_uses.is_some_and(|n| n == 0 || n > MAX_USES) {
        return Err(ApiError::invalid(format!("max_uses: 1 to {MAX_USES}, or absent for any number")));
    }
    if req.expires_in.is_some_and(|s| s == 0 || s > MAX_LIFETIME) {
        return Err(ApiError::invalid(format!("expires_in: 1 to {MAX_LIFETIME} seconds, or absent for never")));
    }
    Ok((group, tags, auto_tags))
}

/// `POST /api/fleet-tokens`.
async fn create_token(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CreateFleetToken>,
) -> Result<(StatusCode, Json<FleetTokenView>), ApiError> {
    let (group, tags, auto_tags) = check_token(&req)?;
    let url = check_url(&req.url)?;
    let secret = new_secret()?;
    let fingerprint = state.fingerprint;
    let view = with_store(&state, move |tx| {
        let now = now();
        let group = match &group {
            Some(r) => Some(
                tx.groups()?
                    .into_iter()
                    .find(|g| match r {
                        Ref::Id(id) => g.id == *id,
                        Ref::Name(n) => g.name.eq_ignore_ascii_case(n) || n.parse() == Ok(g.id),
                    })
                    .ok_or_else(|| ApiError::invalid("group: no such group"))?
                    .id,
            ),
            None => None,
        };
        let new = NewFleetToken {
            name: req.name.trim().to_owned(),
            secret,
            url,
            group,
            tags,
            auto_admit: req.auto_admit.unwrap_or(AutoAdmit::Off),
            auto_tags,
            max_uses: req.max_uses,
            expires_at: req.expires_in.map(|s| now + s as i64),
        };
        let id = tx.create_fleet_token(&new, now)?;
        shown(tx, id, fingerprint, now)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// A token with its EDGE_KEY and commands.
fn shown(tx: &dyn Transaction, id: u64, fingerprint: [u8; 32], now: i64) -> Result<FleetTokenView, ApiError> {
    let t = tx.fleet_token(id)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no fleet token {id}")))?;
    let (edge_key, linux, windows) = crate::server::domain::deploy::fleet_deploy(tx, &t, fingerprint)?;
    let mut view = FleetTokenView::of(&t, now);
    view.edge_key = Some(edge_key);
    view.commands = Some(super::types::DeployCommands { linux, windows });
    Ok(view)
}

/// `GET /api/fleet-tokens`.
async fn list_tokens(State(state): State<Arc<AppState>>) -> Result<Json<Vec<FleetTokenView>>, ApiError> {
    let now = now();
    let tokens = read_store(&state, move |tx| Ok(tx.fleet_tokens()?)).await?;
    Ok(Json(tokens.iter().map(|t| FleetTokenView::of(t, now)).collect()))
}

/// `GET /api/fleet-tokens/{id}`.
async fn get_token(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<FleetTokenView>, ApiError> {
    let fingerprint = state.fingerprint;
    Ok(Json(read_store(&state, move |tx| shown(tx, id, fingerprint, now())).await?))
}

/// `DELETE /api/fleet-tokens/{id}`: revokes it (it stays listed).
async fn revoke_token(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<FleetTokenView>, ApiError> {
    let now = now();
    let t = with_store(&state, move |tx| {
        if !tx.revoke_fleet_token(id, now)? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no fleet token {id}")));
        }
        Ok(tx.fleet_token(id)?)
    })
    .await?;
    let t = t.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no fleet token {id}")))?;
    Ok(Json(FleetTokenView::of(&t, now)))
}

/// `GET /api/devices[?status=pending|admitted|rejected|decided][&limit=N][&offset=M]`:
/// the last to ask first, at most [`super::fleet::MAX_PAGE`] at a time;
/// how many there are in all is in `X-Total-Count`.
async fn list_devices(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut statuses = Vec::new();
    let (mut limit, mut offset) = (super::fleet::MAX_PAGE, 0);
    let number = |k: &str, v: &str, most: u64| {
        v.parse::<u64>().ok().filter(|n| *n <= most).ok_or_else(|| ApiError::invalid(format!("{k}: 0 to {most}")))
    };
    for (k, v) in super::query_pairs(query.as_deref())? {
        match k.as_str() {
            "status" if v == "decided" => statuses = vec![DeviceStatus::Admitted, DeviceStatus::Rejected],
            "status" => {
                statuses = vec![
                    DeviceStatus::parse(&v)
                        .ok_or_else(|| ApiError::invalid("status: pending, admitted, rejected or decided"))?,
                ];
            }
            "limit" => limit = number("limit", &v, super::fleet::MAX_PAGE)?,
            "offset" => offset = number("offset", &v, i64::MAX as u64)?,
            _ => return Err(ApiError::bad_request("unknown parameter; the list takes status, limit and offset")),
        }
    }
    let (devices, total) = read_store(&state, move |tx| Ok(tx.device_page(&statuses, limit, offset)?)).await?;
    let mut resp = Json(devices.into_iter().map(DeviceView::from).collect::<Vec<_>>()).into_response();
    resp.headers_mut().insert("x-total-count", axum::http::HeaderValue::from(total));
    Ok(resp)
}

fn no_device(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no device {id} in the waiting room"))
}

/// `GET /api/devices/{id}`.
async fn get_device(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<DeviceView>, ApiError> {
    let d = read_store(&state, move |tx| tx.device(id)?.ok_or_else(|| no_device(id))).await?;
    Ok(Json(d.into()))
}

/// Who is deciding, as the audit log names them.
fn decider(caller: Option<&Caller>) -> String {
    caller.map_or_else(|| "-".to_owned(), super::audit::actor_of)
}

/// `POST /api/devices/{id}/admit`.
async fn admit(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    PathId(id): PathId,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Admitted>), ApiError> {
    let body: AdmitBody = optional_json(&body)?;
    let with = AdmitWith {
        name: body.name.as_deref().map(|n| check_name("name", n, super::fleet::MAX_NAME)).transpose()?,
        group: body.group.as_ref().map(|g| check_ref("group", g)).transpose()?.as_ref().map(to_ref),
        tags: body.tags.as_deref().map(check_tags).transpose()?,
    };
    let by = decider(caller.as_ref().map(|c| &c.0));
    let (device, environment) = with_store(&state, move |tx| {
        let env = admission::admit(tx, id, &with, &by, now())?;
        Ok((tx.device(id)?.ok_or_else(|| no_device(id))?, env))
    })
    .await?;
    tracing::info!(device = id, environment, "a device was admitted");
    Ok((StatusCode::CREATED, Json(Admitted { device: device.into(), environment })))
}

/// `POST /api/devices/{id}/reject`.
async fn reject(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    PathId(id): PathId,
    body: axum::body::Bytes,
) -> Result<Json<DeviceView>, ApiError> {
    let reason = optional_json::<RejectBody>(&body)?.reason;
    let reason = reason.trim().to_owned();
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("reason: at most {MAX_REASON} characters, no control characters")));
    }
    let by = decider(caller.as_ref().map(|c| &c.0));
    let device = with_store(&state, move |tx| {
        admission::reject(tx, id, &reason, &by, now())?;
        tx.device(id)?.ok_or_else(|| no_device(id))
    })
    .await?;
    Ok(Json(device.into()))
}

/// `DELETE /api/devices/{id}`: forgets it; it may ask again (and uses its
/// token once more). Its environment, if it has one, stays.
async fn forget(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    let gone = with_store(&state, move |tx| Ok(tx.forget_device(id)?)).await?;
    if gone { Ok(StatusCode::NO_CONTENT) } else { Err(no_device(id)) }
}

/// The routes (behind the API's credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/fleet-tokens", post(create_token).get(list_tokens))
        .route("/api/fleet-tokens/{id}", get(get_token).delete(revoke_token))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{id}", get(get_device).delete(forget))
        .route("/api/devices/{id}/admit", post(admit))
        .route("/api/devices/{id}/reject", post(reject))
}
