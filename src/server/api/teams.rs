//! Teams (issue #17): which groups of environments a user who is not an
//! admin sees and acts on. The routes are the admin's.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/teams` | `{name, members?, groups?}` (user names; group names or ids) (201) |
//! | `GET /api/teams`, `GET /api/teams/{id}` | teams with their members and groups |
//! | `PATCH /api/teams/{id}` | `{name?, members?, groups?}`: a list given replaces the team's |
//! | `DELETE /api/teams/{id}` | the team (its users and groups stay) |
//!
//! **Scope.** An admin sees the whole fleet. Anyone else sees the
//! environments in the groups of their teams, and of what belongs to
//! environments only what is theirs: the environment's pages, state,
//! commands and usage; the stacks and jobs whose every target is in those
//! groups. A user in no team sees no environment. [`require_scope`] answers
//! 404 for an environment, command, stack or job out of scope (as for one
//! that does not exist: names out of scope are not revealed); lists leave
//! them out; a stack, job or image delivery that would reach an
//! environment out of scope is refused (403) and changes nothing.

use std::sync::Arc;

use axum::extract::{FromRequestParts as _, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::access::Caller;
use super::types::NameOrId;
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::http::{AppState, now};
use crate::server::store::access::Role;
use crate::server::store::prelude::*;
use crate::server::store::teams::{Team, TeamChange};

/// The longest team name, in characters.
pub const MAX_TEAM_NAME: usize = 64;

/// What the caller may see: everything (`None`, an admin) or the groups of
/// this user's teams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(pub Option<u64>);

impl Scope {
    /// The caller's.
    /// By the user's own role, not a token's limit: an admin's token
    /// limited to operating still sees the fleet (and acts as an operator).
    pub fn of(caller: &Caller) -> Self {
        if caller.user_role() == Role::Admin { Self(None) } else { Self(Some(caller.user_id().unwrap_or(0))) }
    }
}

/// `POST /api/teams`, `PATCH /api/teams/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamBody {
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its users, by name (replacing the team's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// Its groups, by name or id (replacing the team's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<NameOrId>>,
}

/// A team as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created_at: i64,
    /// Its users' names.
    pub members: Vec<String>,
    /// Its groups' names.
    pub groups: Vec<String>,
}

impl From<Team> for TeamView {
    fn from(t: Team) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            members: t.members.into_iter().map(|(_, n)| n).collect(),
            groups: t.groups.into_iter().map(|(_, n)| n).collect(),
        }
    }
}

/// The routes (the admin's: see [`super::access::needs`]).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/teams", get(list).post(create))
        .route("/api/teams/{id}", get(show).patch(update).delete(remove))
}

fn check_team_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_TEAM_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("name: 1 to {MAX_TEAM_NAME} characters, no control characters")));
    }
    Ok(name.to_owned())
}

/// A team's members and groups as ids (`None`: unchanged).
type TeamIds = (Option<Vec<u64>>, Option<Vec<u64>>);

/// User names and group references to ids.
fn resolve(
    store: &dyn Transaction,
    members: Option<&[String]>,
    groups: Option<&[NameOrId]>,
) -> Result<TeamIds, ApiError> {
    let members = members
        .map(|names| {
            names
                .iter()
                .map(|n| {
                    store
                        .user(n.trim())?
                        .map(|u| u.id)
                        .ok_or_else(|| ApiError::invalid(format!("members: no user {:?}", n.trim())))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let groups = match groups {
        None => None,
        Some(refs) => {
            let all = store.groups()?;
            Some(
                refs.iter()
                    .map(|r| {
                        let found = match r {
                            NameOrId::Id(id) => all.iter().find(|g| g.id == *id),
                            NameOrId::Name(n) => all.iter().find(|g| g.name.eq_ignore_ascii_case(n.trim())),
                        };
                        found.map(|g| g.id).ok_or_else(|| {
                            let shown = match r {
                                NameOrId::Id(id) => id.to_string(),
                                NameOrId::Name(n) => format!("{n:?}"),
                            };
                            ApiError::invalid(format!("groups: no group {shown}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
    };
    Ok((members, groups))
}

fn no_team(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no team {id}"))
}

async fn save(state: &Arc<AppState>, id: Option<u64>, body: TeamBody) -> Result<TeamView, ApiError> {
    let name = body.name.as_deref().map(check_team_name).transpose()?;
    if id.is_none() && name.is_none() {
        return Err(ApiError::invalid("name: a team needs one"));
    }
    let team = with_store(state, move |store| {
        let (members, groups) = resolve(store, body.members.as_deref(), body.groups.as_deref())?;
        match store.save_team(id, name.as_deref(), members.as_deref(), groups.as_deref(), now())? {
            TeamChange::Done(t) => Ok(t),
            TeamChange::NotFound => Err(no_team(id.unwrap_or_default())),
            TeamChange::NameTaken => Err(ApiError::new(StatusCode::CONFLICT, "name: another team has it")),
        }
    })
    .await?;
    tracing::info!("team {} has {} members and {} groups", team.name, team.members.len(), team.groups.len());
    Ok(team.into())
}

async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TeamBody>,
) -> Result<(StatusCode, Json<TeamView>), ApiError> {
    Ok((StatusCode::CREATED, Json(save(&state, None, body).await?)))
}

async fn update(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<TeamBody>,
) -> Result<Json<TeamView>, ApiError> {
    Ok(Json(save(&state, Some(id), body).await?))
}

async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<TeamView>>, ApiError> {
    Ok(Json(read_store(&state, |s| Ok(s.teams()?)).await?.into_iter().map(Into::into).collect()))
}

async fn show(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<TeamView>, ApiError> {
    Ok(Json(read_store(&state, move |s| s.team(id)?.ok_or_else(|| no_team(id))).await?.into()))
}

async fn remove(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<StatusCode, ApiError> {
    let gone = with_store(&state, move |s| Ok(s.delete_team(id)?)).await?;
    if gone { Ok(StatusCode::NO_CONTENT) } else { Err(no_team(id)) }
}

/// What kind of thing a route acts on that belongs to environments: for
/// the routes under `/api/environments/{id}`, `/api/commands/{id}`,
/// `/api/stacks/{id}` and `/api/jobs/{id}`; its id is the route's `{id}`.
fn scoped_kind(route: &str) -> Option<&'static str> {
    Some(
        [
            ("/api/environments/{id}", "environment"),
            ("/api/commands/{id}", "command"),
            ("/api/stacks/{id}", "stack"),
            ("/api/jobs/{id}", "job"),
        ]
        .into_iter()
        .find(|(prefix, _)| route == *prefix || route.strip_prefix(prefix).is_some_and(|r| r.starts_with('/')))?
        .1,
    )
}

/// The middleware behind the role check: hands handlers the caller's
/// [`Scope`], and answers 404 for an environment, command, stack or job the
/// caller may not see (for an admin it reads nothing).
pub async fn require_scope(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else { return next.run(request).await };
    let scope = Scope::of(caller);
    request.extensions_mut().insert(scope);
    let Some(user) = scope.0 else { return next.run(request).await };
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    if let Some(kind) = scoped_kind(&route) {
        // The id as the handler reads it: percent-decoded (`%31` is 1), so
        // the two cannot disagree; one that does not read as a number is
        // refused here (fail closed), not passed on.
        let (mut parts, body) = request.into_parts();
        let id = axum::extract::RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|p| p.iter().find(|(k, _)| *k == "id").and_then(|(_, v)| v.parse::<u64>().ok()));
        request = Request::from_parts(parts, body);
        let Some(id) = id else {
            return ApiError::new(StatusCode::NOT_FOUND, format!("no such {kind}: ids are numbers")).into_response();
        };
        let seen = read_store(&state, move |s| {
            Ok(match kind {
                "environment" => s.environment_in_scope(user, id)?,
                "command" => s.command_in_scope(user, id)?,
                "stack" => s.stack_in_scope(user, id)?,
                _ => s.job_in_scope(user, id)?,
            })
        })
        .await;
        match seen {
            Ok(Some(true)) => {}
            Ok(_) => return ApiError::new(StatusCode::NOT_FOUND, format!("no {kind} {id}")).into_response(),
            Err(e) => return e.into_response(),
        }
    }
    next.run(request).await
}

/// The refusal of a change that would reach environments out of the
/// caller's scope.
pub fn out_of_scope(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "targets: this {what} would reach environments outside your teams' groups (or name a tag, which may); \
             nothing was changed"
        ),
    )
}

/// Refuses (in the caller's transaction, which then rolls back) a stack
/// the caller could not see once written.
///
/// # Errors
/// [`out_of_scope`], or the store's.
pub fn stack_stays_in_scope(store: &dyn Transaction, scope: Scope, id: u64) -> Result<(), ApiError> {
    match scope.0 {
        Some(user) if store.stack_in_scope(user, id)? != Some(true) => Err(out_of_scope("stack")),
        _ => Ok(()),
    }
}

/// [`stack_stays_in_scope`] for a job.
///
/// # Errors
/// [`out_of_scope`], or the store's.
pub fn job_stays_in_scope(store: &dyn Transaction, scope: Scope, id: u64) -> Result<(), ApiError> {
    match scope.0 {
        Some(user) if store.job_in_scope(user, id)? != Some(true) => Err(out_of_scope("job")),
        _ => Ok(()),
    }
}

/// The items of a list the caller may see (all, for an admin): `id` reads
/// an item's id, `seen` asks the store whether `user` may see it.
///
/// # Errors
/// The store's.
pub fn keep_in_scope<T>(
    store: &dyn Transaction,
    scope: Scope,
    items: Vec<T>,
    id: impl Fn(&T) -> u64,
    seen: impl Fn(&dyn Transaction, u64, u64) -> Result<Option<bool>, crate::server::store::StoreError>,
) -> Result<Vec<T>, ApiError> {
    let Some(user) = scope.0 else { return Ok(items) };
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if seen(store, user, id(&item))? == Some(true) {
            kept.push(item);
        }
    }
    Ok(kept)
}

/// Refuses environments the caller may not see.
///
/// # Errors
/// [`out_of_scope`], or the store's.
pub fn environments_in_scope(store: &dyn Transaction, scope: Scope, ids: &[u64], what: &str) -> Result<(), ApiError> {
    let Some(user) = scope.0 else { return Ok(()) };
    let seen = store.scoped_environments(user)?;
    if ids.iter().all(|id| seen.contains(id)) { Ok(()) } else { Err(out_of_scope(what)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_of_a_route_is_read_from_its_template() {
        assert_eq!(scoped_kind("/api/environments/{id}/state/{part}"), Some("environment"));
        assert_eq!(scoped_kind("/api/environments/{id}"), Some("environment"));
        assert_eq!(scoped_kind("/api/commands/{id}"), Some("command"));
        assert_eq!(scoped_kind("/api/stacks/{id}/versions"), Some("stack"));
        assert_eq!(scoped_kind("/api/jobs/{id}/runs"), Some("job"));
        assert_eq!(scoped_kind("/api/environments"), None);
        assert_eq!(scoped_kind("/api/stacks"), None);
        assert_eq!(scoped_kind("/api/stacksx/{id}"), None);
    }
}
