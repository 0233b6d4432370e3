//! The users page (issue #17): users and their roles, a form that adds
//! one (its generated password shown once), and per user a role to set,
//! Disable or Enable, Reset password and Delete. The admin's only: the
//! API refuses anyone else, and the page says so.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::stacks::{button_refused, done, no_such, path_id, split_names};
use super::{ApiFail, FieldAttrs, Nav, Ui, csrf_field, form_error, now, page, text_field, when};
use crate::server::api::teams::{TeamBody, TeamView};
use crate::server::api::types::{CreateUser, NameOrId, UpdateUser, UserChanged, UserView};
use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}/role", post(set_role))
        .route("/users/{id}/disable", post(disable))
        .route("/users/{id}/enable", post(enable))
        .route("/users/{id}/password", post(reset_password))
        .route("/users/{id}/delete", post(delete))
        .route("/teams", post(create_team))
        .route("/teams/{id}", post(save_team))
        .route("/teams/{id}/delete", post(delete_team))
}

/// A team's form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TeamForm {
    csrf: String,
    name: String,
    members: String,
    groups: String,
}

impl TeamForm {
    fn body(&self, name: bool) -> TeamBody {
        TeamBody {
            name: name.then(|| self.name.clone()),
            members: Some(split_names(&self.members)),
            groups: Some(split_names(&self.groups).into_iter().map(NameOrId::Name).collect()),
        }
    }
}

/// The new user form, and the buttons' forms.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserForm {
    csrf: String,
    name: String,
    role: String,
}

const ROLES: [(&str, &str); 3] =
    [("viewer", "viewer: looks"), ("operator", "operator: acts on what runs"), ("admin", "admin: everything")];

/// A one-button form posting to `action` with the session's CSRF token,
/// asking `confirm` first when given.
fn button(ui: &Ui, action: &str, confirm: Option<&str>, id: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(&ui.csrf))
            button type="submit" id=(id) { (label) }
        }
    }
}

fn role_select(id: &str, selected: &str) -> Markup {
    html! {
        select id=(id) name="role" aria-label="Role" {
            @for (value, label) in ROLES {
                option value=(value) selected[selected == value] { (label) }
            }
        }
    }
}

async fn list(ui: Ui) -> Response {
    render(&ui, &UserForm { role: "viewer".into(), ..UserForm::default() }, None, None, StatusCode::OK).await
}

/// The page; `shown` is a password to show once (a new user's, a reset's).
async fn render(
    ui: &Ui,
    f: &UserForm,
    err: Option<&ApiFail>,
    shown: Option<&UserChanged>,
    status: StatusCode,
) -> Response {
    let users: Vec<UserView> = match ui.load_as("/api/users").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let teams: Vec<TeamView> = match ui.load_as("/api/teams").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = now();
    let body = html! {
        h1 { "Users" }
        p.muted { "A viewer looks; an operator also acts on what runs (commands, stacks, jobs, images); an admin \
                   does everything, users and onboarding included. A new role, disabling and a new password each \
                   end the user's sessions; a user's API tokens follow the user." }
        @if let Some(c) = shown {
            @if let Some(p) = &c.password {
                div.notice role="status" id="shown-password" {
                    p { "The password of " strong { (c.user.name) } ", shown this once:" }
                    pre.command { (p) }
                }
            }
        }
        div.scroll { table.list id="users" {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "State" }
                th scope="col" { "Created" } th scope="col" { "Password set" } th scope="col" { "" }
            } }
            tbody { @for u in &users {
                tr data-user=(u.name) {
                    td { (u.name) @if u.name == ui.username { " (you)" } }
                    td {
                        form.inline method="post" action={ "/users/" (u.id) "/role" } {
                            (csrf_field(&ui.csrf))
                            (role_select(&format!("role-{}", u.id), &u.role))
                            button type="submit" id={ "set-role-" (u.id) } { "Set" }
                        }
                    }
                    td { @match u.disabled_at { Some(t) => { "disabled " (when(Some(t), now)) }, None => { "enabled" } } }
                    td { (when(Some(u.created_at), now)) }
                    td { (when(Some(u.password_changed_at), now)) }
                    td {
                        @if u.disabled_at.is_some() {
                            (button(ui, &format!("/users/{}/enable", u.id), None, &format!("enable-{}", u.id), "Enable"))
                        } @else {
                            (button(ui, &format!("/users/{}/disable", u.id),
                                Some(&format!("Disable {}? Their sessions end and their tokens are refused.", u.name)),
                                &format!("disable-{}", u.id), "Disable"))
                        }
                        (button(ui, &format!("/users/{}/password", u.id),
                            Some(&format!("Give {} a new generated password? Their sessions end.", u.name)),
                            &format!("reset-{}", u.id), "Reset password"))
                        (button(ui, &format!("/users/{}/delete", u.id),
                            Some(&format!("Delete {} and their API tokens?", u.name)),
                            &format!("delete-{}", u.id), "Delete"))
                    }
                }
            } }
        } }
        h2 { "New user" }
        form method="post" action="/users" id="new-user" {
            (csrf_field(&ui.csrf))
            (form_error(err, &["name", "role"]))
            (text_field("name", "Name", &f.name, err, FieldAttrs { required: true, placeholder: Some("ops.alice"), autocomplete: Some("off"), ..FieldAttrs::default() }))
            div.field {
                label for="f-role" { "Role" }
                (role_select("f-role", &f.role))
            }
            p.muted { "A password is generated and shown once; the user changes it in Settings." }
            button type="submit" id="create-user" { "Add user" }
        }
        h2 id="teams" { "Teams" }
        p.muted { "A user who is not an admin sees, and acts on, only the environments in the groups of their teams, \
                   and the stacks, jobs, commands and usage of those; a user in no team sees no environment." }
        @if teams.is_empty() {
            p.muted id="no-teams" { "No team yet." }
        } @else {
            div.scroll { table.list id="teams-list" {
                thead { tr {
                    th scope="col" { "Team" } th scope="col" { "Members and groups (comma-separated)" } th scope="col" { "" }
                } }
                tbody { @for t in &teams {
                    tr data-team=(t.name) {
                        td { (t.name) }
                        td {
                            form.inline method="post" action={ "/teams/" (t.id) } {
                                (csrf_field(&ui.csrf))
                                input type="text" name="members" value=(t.members.join(", ")) aria-label="Members";
                                input type="text" name="groups" value=(t.groups.join(", ")) aria-label="Groups";
                                button type="submit" id={ "save-team-" (t.id) } { "Save" }
                            }
                        }
                        td {
                            (button(ui, &format!("/teams/{}/delete", t.id),
                                Some(&format!("Delete the team {}? Its users lose what it gave them.", t.name)),
                                &format!("delete-team-{}", t.id), "Delete"))
                        }
                    }
                } }
            } }
        }
        h3 { "New team" }
        form method="post" action="/teams" id="new-team" {
            (csrf_field(&ui.csrf))
            (text_field("name", "Name", "", None, FieldAttrs { required: true, placeholder: Some("north-ops"), ..FieldAttrs::default() }))
            (text_field("members", "Members", "", None, FieldAttrs { placeholder: Some("alice, bob"), ..FieldAttrs::default() }))
            (text_field("groups", "Groups", "", None, FieldAttrs { placeholder: Some("north, coast"), ..FieldAttrs::default() }))
            button type="submit" id="create-team" { "Add team" }
        }
    };
    (status, page(ui, Nav::Users, "Users", body)).into_response()
}

async fn create(ui: Ui, headers: HeaderMap, axum::Form(f): axum::Form<UserForm>) -> Response {
    let body = CreateUser { name: f.name.clone(), role: f.role.clone(), password: None };
    match ui.send_as(Method::POST, "/api/users", &body, &f.csrf).await {
        Ok(r) if super::wants_json(&headers) => done(&headers, StatusCode::CREATED, r.json, "/users"),
        Ok(r) => match serde_json::from_value::<UserChanged>(r.json) {
            Ok(c) => {
                render(
                    &ui,
                    &UserForm { role: "viewer".into(), ..UserForm::default() },
                    None,
                    Some(&c),
                    StatusCode::CREATED,
                )
                .await
            }
            Err(_) => done(&headers, StatusCode::CREATED, serde_json::Value::Null, "/users"),
        },
        Err(e) if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN => {
            button_refused(&ui, Nav::Users, &headers, &e, "/users")
        }
        Err(e) => {
            let e = e.conflict_on("name");
            render(&ui, &f, Some(&e), None, e.status).await
        }
    }
}

/// A PATCH of one user, from a button.
async fn patch(ui: &Ui, headers: &HeaderMap, id: u64, body: UpdateUser, csrf: &str) -> Response {
    let show = body.password.is_some();
    match ui.send_as(Method::PATCH, &format!("/api/users/{id}"), &body, csrf).await {
        Ok(r) if show && !super::wants_json(headers) => {
            let mut c: UserChanged = match serde_json::from_value(r.json) {
                Ok(c) => c,
                Err(_) => return done(headers, StatusCode::OK, serde_json::Value::Null, "/users"),
            };
            c.password = body.password;
            render(ui, &UserForm { role: "viewer".into(), ..UserForm::default() }, None, Some(&c), StatusCode::OK).await
        }
        Ok(r) => done(headers, StatusCode::OK, r.json, "/users"),
        Err(e) => button_refused(ui, Nav::Users, headers, &e, "/users"),
    }
}

/// A button of a user's row: the change `make` builds from its form.
async fn patch_with(
    ui: Ui,
    id: String,
    headers: HeaderMap,
    f: UserForm,
    make: impl FnOnce(UserForm) -> UpdateUser,
) -> Response {
    let Some(id) = path_id(&id) else { return no_such("user") };
    let csrf = f.csrf.clone();
    patch(&ui, &headers, id, make(f), &csrf).await
}

async fn set_role(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<UserForm>) -> Response {
    patch_with(ui, id, headers, f, |f| UpdateUser { role: Some(f.role), ..UpdateUser::default() }).await
}

async fn disable(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<UserForm>) -> Response {
    patch_with(ui, id, headers, f, |_| UpdateUser { disabled: Some(true), ..UpdateUser::default() }).await
}

async fn enable(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<UserForm>) -> Response {
    patch_with(ui, id, headers, f, |_| UpdateUser { disabled: Some(false), ..UpdateUser::default() }).await
}

async fn reset_password(
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<UserForm>,
) -> Response {
    let password = crate::server::store::access::generate_password();
    patch_with(ui, id, headers, f, |_| UpdateUser { password: Some(password), ..UpdateUser::default() }).await
}

async fn delete(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<UserForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("user") };
    match ui.send(Method::DELETE, &format!("/api/users/{id}"), &serde_json::Value::Null, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, "/users"),
        Err(e) => button_refused(&ui, Nav::Users, &headers, &e, "/users"),
    }
}

async fn create_team(ui: Ui, headers: HeaderMap, axum::Form(f): axum::Form<TeamForm>) -> Response {
    match ui.send_as(Method::POST, "/api/teams", &f.body(true), &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::CREATED, r.json, "/users#teams"),
        Err(e) => button_refused(&ui, Nav::Users, &headers, &e, "/users#teams"),
    }
}

async fn save_team(
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<TeamForm>,
) -> Response {
    let Some(id) = path_id(&id) else { return no_such("team") };
    match ui.send_as(Method::PATCH, &format!("/api/teams/{id}"), &f.body(false), &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, "/users#teams"),
        Err(e) => button_refused(&ui, Nav::Users, &headers, &e, "/users#teams"),
    }
}

async fn delete_team(
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<TeamForm>,
) -> Response {
    let Some(id) = path_id(&id) else { return no_such("team") };
    match ui.send(Method::DELETE, &format!("/api/teams/{id}"), &serde_json::Value::Null, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::NO_CONTENT, r.json, "/users#teams"),
        Err(e) => button_refused(&ui, Nav::Users, &headers, &e, "/users#teams"),
    }
}
