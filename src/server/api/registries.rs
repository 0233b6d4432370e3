//! Private registries: the credentials agents pull with.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/registries` | register one (201); its password is never shown again |
//! | `GET /api/registries` | the list |
//! | `GET /api/registries/{id}` | one |
//! | `PATCH /api/registries/{id}` | rename it, change its user or password |
//! | `DELETE /api/registries/{id}` | forget it (204) |
//!
//! A stack, an image pull or a job whose image reference names a
//! registered registry (`10.0.0.5:5000/app:1`) pulls with its
//! credentials: they travel in the reply that carries the command, and only
//! there (`domain::registries`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::fleet::check_name;
use super::types::{CreateRegistry, RegistryView, UpdateRegistry};
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::registry::parse_registry;
use crate::server::domain::registries;
use crate::server::http::{AppState, now};
use crate::server::store::registries::{RegistryError, RegistryRecord};

/// The longest name or user, in characters.
const MAX_NAME: usize = 128;

/// The longest password or token, in bytes (the wire's own limit).
const MAX_PASSWORD: usize = crate::wire::poll::MAX_REGISTRY_FIELD;

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(e) => e.into(),
            RegistryError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            // Named by their field, so a form shows each by its input.
            RegistryError::NameTaken(_) => Self::new(StatusCode::CONFLICT, format!("name: {e}")),
            RegistryError::ServerTaken(_) => Self::new(StatusCode::CONFLICT, format!("url: {e}")),
        }
    }
}

fn view(r: RegistryRecord) -> RegistryView {
    RegistryView {
        id: r.id,
        name: r.name,
        url: r.server,
        username: r.username,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.is_empty() || password.len() > MAX_PASSWORD || password.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("password: 1 to {MAX_PASSWORD} bytes, no control characters")));
    }
    Ok(())
}

/// `POST /api/registries`.
pub async fn create_registry(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateRegistry>,
) -> Result<(StatusCode, Json<RegistryView>), ApiError> {
    let name = check_name("name", &body.name, MAX_NAME)?;
    let server = parse_registry(&body.url).map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    let username = check_name("username", &body.username, MAX_NAME)?;
    check_password(&body.password)?;
    let shared = state.clone();
    let created = with_store(&state, move |tx| {
        let id = registries::create(tx, &shared.secrets, &name, &server, &username, &body.password, now())?;
        Ok(view(tx.registry(id)?))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/registries`.
pub async fn list_registries(State(state): State<Arc<AppState>>) -> Result<Json<Vec<RegistryView>>, ApiError> {
    let list = read_store(&state, |tx| Ok(tx.registries()?.into_iter().map(view).collect())).await?;
    Ok(Json(list))
}

/// `GET /api/registries/{id}`.
pub async fn registry(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<RegistryView>, ApiError> {
    Ok(Json(read_store(&state, move |tx| Ok(view(tx.registry(id)?))).await?))
}

/// `PATCH /api/registries/{id}`.
pub async fn update_registry(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateRegistry>,
) -> Result<Json<RegistryView>, ApiError> {
    let name = body.name.as_deref().map(|n| check_name("name", n, MAX_NAME)).transpose()?;
    let username = body.username.as_deref().map(|u| check_name("username", u, MAX_NAME)).transpose()?;
    if let Some(p) = &body.password {
        check_password(p)?;
    }
    let shared = state.clone();
    let updated = with_store(&state, move |tx| {
        let (name, user, password) = (name.as_deref(), username.as_deref(), body.password.as_deref());
        registries::update(tx, &shared.secrets, id, name, user, password, now())?;
        Ok(view(tx.registry(id)?))
    })
    .await?;
    Ok(Json(updated))
}

/// `DELETE /api/registries/{id}`.
pub async fn delete_registry(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    with_store(&state, move |tx| {
        if tx.remove_registry(id)? { Ok(StatusCode::NO_CONTENT) } else { Err(RegistryError::NotFound(id).into()) }
    })
    .await
}

/// The routes, merged into the API's (behind its credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/registries", post(create_registry).get(list_registries))
        .route("/api/registries/{id}", get(registry).patch(update_registry).delete(delete_registry))
}
