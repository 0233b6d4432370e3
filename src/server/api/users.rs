//! Users and their roles (issue #17): besides the admin, users who may act
//! (operators) or only look (viewers); what each role may call is
//! [`super::access::needs`]. Every route here is the admin's.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/users` | `{name, role, password?}`: a new user; a password is generated (and shown this once) when none is given (201) |
//! | `GET /api/users` | every user, by name, never a password |
//! | `GET /api/users/{id}` | one user |
//! | `PATCH /api/users/{id}` | `{role?, disabled?, password?}`: any change ends every session of the user |
//! | `DELETE /api/users/{id}` | deletes the user, its sessions and its API tokens |
//!
//! No change may leave the server without an enabled admin: demoting,
//! disabling or deleting the last one is refused (409) and changes nothing.
//! A user's tokens follow the user: a disabled user's are refused, a
//! demoted user's do no more than the new role allows.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::access::{Caller, check_new_password, hash_new_password, parse_role};
use super::types::{CreateUser, UpdateUser, UserChanged, UserView};
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::http::{AppState, now};
use crate::server::store::access::{ADMIN, User, UserChange, generate_password};

/// The longest user name, in characters.
pub const MAX_USER_NAME: usize = 64;

/// The routes (all the admin's: see [`super::access::needs`]).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/users", get(list).post(create))
        .route("/api/users/{id}", get(show).patch(update).delete(remove))
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            name: u.name,
            role: u.role.as_str().to_owned(),
            disabled_at: u.disabled_at,
            created_at: u.created_at,
            password_changed_at: u.password_changed_at,
        }
    }
}

/// A user name: 1 to [`MAX_USER_NAME`] ASCII letters, digits and `.`, `_`,
/// `-`, `@` (it is typed at the login form and shown in the audit log).
///
/// # Errors
/// A 422 saying so.
pub fn check_user_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_USER_NAME {
        return Err(ApiError::invalid(format!("name: 1 to {MAX_USER_NAME} characters")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')) {
        return Err(ApiError::invalid("name: letters, digits and . _ - @ only"));
    }
    Ok(name.to_owned())
}

fn last_admin() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "this would leave no enabled admin: make another user an admin first. Nothing was changed.",
    )
}

fn no_user(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no user {id}"))
}

/// `POST /api/users`.
async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<(StatusCode, [(header::HeaderName, HeaderValue); 1], Json<UserChanged>), ApiError> {
    let name = check_user_name(&req.name)?;
    let role = parse_role("role", &req.role)?;
    let (password, generated) = match req.password {
        Some(p) => {
            check_new_password("password", &p).map_err(ApiError::invalid)?;
            (p, false)
        }
        None => (generate_password(), true),
    };
    let hash = hash_new_password(&state, password.clone()).await?;
    let user = with_store(&state, move |store| {
        if !store.create_user(&name, &hash, role, now())? {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("name: a user {name:?} exists")));
        }
        store.user(&name)?.ok_or_else(ApiError::internal)
    })
    .await?;
    tracing::info!("user {} ({}) created", user.name, user.role);
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(UserChanged { user: user.into(), password: generated.then_some(password), sessions_ended: 0 }),
    ))
}

/// `GET /api/users`.
async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<UserView>>, ApiError> {
    let users = read_store(&state, |store| Ok(store.users()?)).await?;
    Ok(Json(users.into_iter().map(Into::into).collect()))
}

/// `GET /api/users/{id}`.
async fn show(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<UserView>, ApiError> {
    let user = read_store(&state, move |store| store.user_by_id(id)?.ok_or_else(|| no_user(id))).await?;
    Ok(Json(user.into()))
}

/// `PATCH /api/users/{id}`: role, disabled and password in one
/// transaction; refused whole when one part is.
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<UserChanged>, ApiError> {
    if req.password.is_some() && caller.user_id() == Some(id) {
        return Err(ApiError::invalid(
            "password: change your own with PUT /api/auth/password, which asks for the current one",
        ));
    }
    let role = req.role.as_deref().map(|r| parse_role("role", r)).transpose()?;
    let hash = match req.password {
        Some(p) => {
            check_new_password("password", &p).map_err(ApiError::invalid)?;
            Some(hash_new_password(&state, p).await?)
        }
        None => None,
    };
    let (user, ended) = with_store(&state, move |store| {
        let (mut user, mut ended) = match store.update_user(id, role, req.disabled, now())? {
            UserChange::Done(u, n) => (u, n),
            UserChange::NotFound => return Err(no_user(id)),
            UserChange::LastAdmin => return Err(last_admin()),
        };
        if let Some(hash) = hash {
            ended += store.set_password(id, &hash, None, now())?.ok_or_else(|| no_user(id))?;
            user = store.user_by_id(id)?.ok_or_else(|| no_user(id))?;
        }
        Ok((user, ended))
    })
    .await?;
    tracing::info!(
        "user {} is now {}{}; {ended} sessions ended",
        user.name,
        user.role,
        if user.disabled_at.is_some() { ", disabled" } else { "" }
    );
    Ok(Json(UserChanged { user: user.into(), password: None, sessions_ended: ended }))
}

/// `DELETE /api/users/{id}`: the user as it was.
async fn remove(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<UserChanged>, ApiError> {
    let (user, ended) = with_store(&state, move |store| {
        // The server makes `admin` again at its next start when there is
        // none (with a new password): it is disabled instead.
        if store.user_by_id(id)?.is_some_and(|u| u.name == ADMIN) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the admin account is not deleted (the server would make it again at its next start): disable it",
            ));
        }
        match store.delete_user(id)? {
            UserChange::Done(u, n) => Ok((u, n)),
            UserChange::NotFound => Err(no_user(id)),
            UserChange::LastAdmin => Err(last_admin()),
        }
    })
    .await?;
    tracing::info!("user {} deleted; {ended} sessions ended", user.name);
    Ok(Json(UserChanged { user: user.into(), password: None, sessions_ended: ended }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_short_and_plain() {
        assert_eq!(check_user_name(" ops.team@site-1 ").unwrap(), "ops.team@site-1");
        for bad in ["", " ", "a b", "a/b", "ünï", &"x".repeat(65), "a\u{0}b"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
