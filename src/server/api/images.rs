//! Images the server holds, pulled from registries (issue #14: what
//! transfers to the edge are built from).
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/images` | `{reference}`: pull it into the server (202, `pulling`; then `held` or `failed` with the reason); again: pull it again (a moving tag) |
//! | `GET /api/images`, `GET /api/images/{id}` | the list; one, with its layers |
//! | `DELETE /api/images/{id}` | forget it (204; its blobs stay while another image shares them) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::types::{HeldImageView, PullImage};
use super::{ApiError, ApiJson, MAX_TARGET_LEN, PathId, read_store, with_store};
use crate::server::domain::registries;
use crate::server::http::{AppState, now};
use crate::server::store::images::ImageRecord;

fn view(r: ImageRecord) -> HeldImageView {
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

/// `POST /api/images`.
pub async fn pull_image(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<PullImage>,
) -> Result<(StatusCode, Json<HeldImageView>), ApiError> {
    let reference = body.reference.trim().to_owned();
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

/// The routes, merged into the API's (behind its credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/images", post(pull_image).get(list_images))
        .route("/api/images/{id}", get(image).delete(delete_image))
}
