//! Images the server holds, pulled from registries (issue #14: what
//! transfers to the edge are built from).
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/images` | `{reference}`: pull it into the server (202, `pulling`; then `held` or `failed` with the reason); again: pull it again (a moving tag) |
//! | `GET /api/images`, `GET /api/images/{id}` | the list; one, with its layers |
//! | `DELETE /api/images/{id}` | forget it (204; its blobs stay while another image shares them) |
//! | `POST /api/images/{id}/deliver` | `{environments?, groups?, tags?}`: send a held image to them (groups and tags as they are now) as transfers, an `image.fetch` command each (202) |
//! | `GET`, `PUT /api/environments/{id}/transfer-limits` | `{rate_kbit, window}`: an environment's rate cap and download window (UTC) |
//! | `POST /api/rollouts`; `GET /api/rollouts`, `.../{id}` | `{image, environments?, groups?, tags?, first_share?, timeout_s?}`: agents update themselves to a held agent image (`agent::update`), staged with `first_share` (`domain::rollouts`), 201; the list; one, with each environment's wave and command status |
//! | `POST /api/images/push`, `.../blobs/...` | images uploaded from an operator's engine: see [`super::uploads`] |

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::types::{
    CreateRollout, DeliverImage, DeliveryView, HeldImageView, PullImage, RolloutMember, RolloutView, TargetsBody,
    TransferLimitsView,
};
use super::{ApiError, ApiJson, MAX_TARGET_LEN, PathId, read_store, with_store};
use crate::server::domain::registries;
use crate::server::http::{AppState, now};
use crate::server::store::StoreError;
use crate::server::store::images::ImageRecord;
use crate::wire::poll::{Action, ImageFetch};

pub(super) fn view(r: ImageRecord) -> HeldImageView {
    HeldImageView {
        id: r.id,
        reference: r.reference,
        status: r.status,
        error: r.error,
        image_id: r.image_id,
        layers: r.layers,
        size: r.size,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no image {id}"))
}

/// A reference as the operator gave it, trimmed, if it is one.
pub(super) fn check_reference(reference: &str) -> Result<String, ApiError> {
    let reference = reference.trim().to_owned();
    if reference.is_empty()
        || reference.len() > MAX_TARGET_LEN
        || reference.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(format!(
            "reference: an image reference, at most {MAX_TARGET_LEN} bytes, no spaces"
        )));
    }
    if reference.parse::<oci_client::Reference>().is_err() {
        return Err(ApiError::invalid(format!("reference: {reference:?} is not an image reference")));
    }
    Ok(reference)
}

/// `POST /api/images`.
pub async fn pull_image(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<PullImage>,
) -> Result<(StatusCode, Json<HeldImageView>), ApiError> {
    let reference = check_reference(&body.reference)?;
    let shared = state.clone();
    let asked = reference.clone();
    let (id, auth, under_way) = with_store(&state, move |tx| {
        let (id, under_way) = tx.request_image(&asked, now())?;
        Ok((id, registries::credentials_of(tx, &shared.secrets, &asked)?, under_way))
    })
    .await?;
    if !under_way {
        let shared = state.clone();
        tokio::spawn(async move {
            let pulled = crate::server::images::pull(&shared.data, &reference, auth).await;
            if let Err(e) = &pulled {
                tracing::warn!(image = %reference, "pull failed: {e}");
            }
            let done = shared.with_store(|tx| match &pulled {
                Ok(p) => tx.image_held(id, &p.image_id, &p.layers, p.size, now()),
                Err(e) => tx.image_failed(id, e, now()),
            });
            if let Err(e) = done {
                tracing::error!(image = %reference, "recording the pull: {e}");
            }
        });
    }
    let v = read_store(&state, move |tx| tx.image(id)?.map(view).ok_or_else(|| not_found(id))).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// `GET /api/images`.
pub async fn list_images(State(state): State<Arc<AppState>>) -> Result<Json<Vec<HeldImageView>>, ApiError> {
    Ok(Json(read_store(&state, |tx| Ok(tx.images()?.into_iter().map(view).collect())).await?))
}

/// `GET /api/images/{id}`.
pub async fn image(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<HeldImageView>, ApiError> {
    Ok(Json(read_store(&state, move |tx| tx.image(id)?.map(view).ok_or_else(|| not_found(id))).await?))
}

/// `DELETE /api/images/{id}`.
pub async fn delete_image(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    with_store(&state, move |tx| if tx.remove_image(id)? { Ok(StatusCode::NO_CONTENT) } else { Err(not_found(id)) })
        .await
}

/// Most environments one delivery names.
pub const MAX_DELIVERY: usize = 10_000;

/// `POST /api/images/{id}/deliver`.
pub async fn deliver_image(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<DeliverImage>,
) -> Result<(StatusCode, Json<Vec<DeliveryView>>), ApiError> {
    let queued = queue_for(&state, id, body, scope).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// The checked targets of a delivery or a rollout.
struct Targets {
    environments: Vec<u64>,
    labels: Option<crate::server::store::stacks::TargetRefs>,
}

fn check_targets(body: DeliverImage) -> Result<Targets, ApiError> {
    if body.environments.len() > MAX_DELIVERY {
        return Err(ApiError::invalid(format!("environments: at most {MAX_DELIVERY} environment ids")));
    }
    let labels = (!body.groups.is_empty() || !body.tags.is_empty())
        .then(|| TargetsBody { environments: Vec::new(), groups: body.groups, tags: body.tags }.check())
        .transpose()?;
    if body.environments.is_empty() && labels.is_none() {
        return Err(ApiError::invalid("environments: name at least one environment, group or tag"));
    }
    Ok(Targets { environments: body.environments, labels })
}

/// The environments the targets name, now.
fn resolve(tx: &dyn crate::server::store::Transaction, t: Targets) -> Result<Vec<u64>, ApiError> {
    let mut environments = t.environments;
    if let Some(refs) = t.labels {
        let more = tx.resolve_job_targets(&[], &refs.groups, &refs.tags)?.map_err(ApiError::invalid)?;
        environments.extend(more);
    }
    environments.sort_unstable();
    environments.dedup();
    if environments.len() > MAX_DELIVERY {
        return Err(ApiError::invalid(format!("targets: at most {MAX_DELIVERY} environments")));
    }
    Ok(environments)
}

/// The held image `id` as a fetch of it; 404, or 409 when not held.
fn held(tx: &dyn crate::server::store::Transaction, id: u64) -> Result<ImageFetch, ApiError> {
    let image = tx.image(id)?.ok_or_else(|| not_found(id))?;
    match (image.status.as_str(), image.image_id) {
        ("held", Some(image_id)) => Ok(ImageFetch { reference: image.reference, image_id }),
        (status, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("image {id} is {status}, not held: pull it first (`tern image pull --wait`)"),
        )),
    }
}

fn no_environment(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(n) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("environments: no environment {n}; nothing was queued"))
        }
        e => e.into(),
    }
}

/// Queues an `image.fetch` of the held image on every environment `body`
/// names.
async fn queue_for(
    state: &Arc<AppState>,
    id: u64,
    body: DeliverImage,
    scope: super::teams::Scope,
) -> Result<Vec<DeliveryView>, ApiError> {
    let targets = check_targets(body)?;
    with_store(state, move |tx| {
        let environments = resolve(tx, targets)?;
        super::teams::environments_in_scope(tx, scope, &environments, "delivery")?;
        let action = Action::ImageFetch(held(tx, id)?);
        let mut out = Vec::with_capacity(environments.len());
        for environment in environments {
            let command = tx.enqueue_command(environment, &action, now()).map_err(no_environment)?;
            out.push(DeliveryView { environment, command });
        }
        Ok(out)
    })
    .await
}

fn rollout_view(r: crate::server::store::images::RolloutRecord) -> RolloutView {
    RolloutView {
        id: r.id,
        reference: r.reference,
        image_id: r.image_id,
        status: r.status,
        reason: r.reason,
        timeout_s: r.timeout_s,
        created_at: r.created_at,
        updated_at: r.updated_at,
        environments: r
            .members
            .into_iter()
            .map(|(environment, wave, command, status)| RolloutMember { environment, wave, command, status })
            .collect(),
    }
}

/// The most seconds a new agent may be given to poll.
pub const MAX_UPDATE_TIMEOUT: u32 = 24 * 3600;

/// `POST /api/rollouts`.
pub async fn create_rollout(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    // No share: one wave, every environment at once.
    let share = match body.first_share {
        None => 100,
        Some(s) if (1..=99).contains(&s) => s,
        Some(_) => return Err(ApiError::invalid("first_share: the percentage updated first, 1 to 99")),
    };
    let timeout_s = body.timeout_s.unwrap_or(0);
    if timeout_s != 0 && !(30..=MAX_UPDATE_TIMEOUT).contains(&timeout_s) {
        return Err(ApiError::invalid(format!("timeout_s: from 30 to {MAX_UPDATE_TIMEOUT} seconds")));
    }
    let targets =
        check_targets(DeliverImage { environments: body.environments, groups: body.groups, tags: body.tags })?;
    // The helper's rollback note names it: any number unique to this update.
    let (image, update) = (body.image, fastrand::u64(1..));
    let view = with_store(&state, move |tx| {
        let environments = resolve(tx, targets)?;
        if environments.is_empty() {
            return Err(ApiError::invalid("targets: the groups and tags given hold no environment"));
        }
        let fetch = held(tx, image)?;
        let id = crate::server::domain::rollouts::start(tx, fetch, &environments, share, timeout_s, update, now())
            .map_err(no_environment)?;
        tx.rollout(id)?.map(rollout_view).ok_or_else(ApiError::internal)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /api/rollouts`.
pub async fn list_rollouts(State(state): State<Arc<AppState>>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let list = read_store(&state, |tx| {
        let mut out = Vec::new();
        for id in tx.rollout_ids()? {
            out.extend(tx.rollout(id)?.map(rollout_view));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(list))
}

/// `GET /api/rollouts/{id}`.
pub async fn rollout(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<RolloutView>, ApiError> {
    let v = read_store(&state, move |tx| {
        tx.rollout(id)?
            .map(rollout_view)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no rollout {id}")))
    })
    .await?;
    Ok(Json(v))
}

/// `GET /api/environments/{id}/transfer-limits`.
pub async fn transfer_limits(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
) -> Result<Json<TransferLimitsView>, ApiError> {
    let (_, rate, window) = read_store(&state, move |tx| Ok(tx.transfer_limits(id)?)).await?;
    Ok(Json(TransferLimitsView { rate_kbit: rate * 8 / 1000, window }))
}

/// `PUT /api/environments/{id}/transfer-limits`.
pub async fn set_transfer_limits(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<TransferLimitsView>,
) -> Result<Json<TransferLimitsView>, ApiError> {
    let window = body.window.trim().to_owned();
    crate::server::transfers::parse_window(&window).map_err(|e| ApiError::invalid(format!("window: {e}")))?;
    if body.rate_kbit > 10_000_000 {
        return Err(ApiError::invalid("rate_kbit: at most 10000000 (10 Gbit/s); 0 for no cap"));
    }
    let rate = body.rate_kbit * 1000 / 8;
    let kept = window.clone();
    with_store(&state, move |tx| Ok(tx.set_transfer_limits(id, rate, &kept)?)).await?;
    Ok(Json(TransferLimitsView { rate_kbit: body.rate_kbit, window }))
}

/// The routes, merged into the API's (behind its credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/images", post(pull_image).get(list_images))
        .route("/api/images/{id}", get(image).delete(delete_image))
        .route("/api/images/{id}/deliver", post(deliver_image))
        .route("/api/rollouts", post(create_rollout).get(list_rollouts))
        .route("/api/rollouts/{id}", get(rollout))
        .route("/api/images/push", post(super::uploads::push))
        .route("/api/images/blobs/missing", post(super::uploads::missing))
        .route("/api/images/blobs/{digest}", axum::routing::patch(super::uploads::append))
        .route("/api/images/blobs/{digest}/done", post(super::uploads::done))
        .route("/api/environments/{id}/transfer-limits", get(transfer_limits).put(set_transfer_limits))
}
