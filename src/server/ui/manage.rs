//! Managing one environment: rename it, move it to a group, tag it, set
//! its intervals, let another agent take it over, delete it.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use super::settings::{IntervalChoices, IntervalOpts, interval_picker, interval_text};
use super::{ApiFail, FieldAttrs, Nav, Ui, csrf_field, form_error, label_names, page, text_field};
use crate::server::api::types::{EnvironmentFull, IntervalsBody, NameOrId, UpdateEnvironment};
use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/environments/{id}/edit", get(edit_page).post(save))
        .route("/environments/{id}/intervals", post(save_intervals))
        .route("/environments/{id}/reset-binding", post(reset_binding))
        .route("/environments/{id}/reset-counter", post(reset_counter))
        .route("/environments/{id}/rotate-secret", post(rotate_secret))
        .route("/environments/{id}/delete", post(delete))
}

/// What `?saved=` may say (a whitelist: the query is not echoed).
const SAVED: &[(&str, &str)] = &[
    ("details", "Saved the name, group and tags."),
    ("intervals", "Saved the intervals; the agent gets them at its next poll."),
    ("binding", "The binding is reset: the next agent that polls takes the environment."),
    ("counter", "The counter is reset: the agent's next poll is accepted whatever its counter."),
];

/// Which form was refused, with what it held.
enum Refused<'a> {
    Details(&'a DetailsForm, &'a ApiFail),
    Intervals(&'a IntervalsForm, &'a ApiFail),
    Other(&'a ApiFail),
}

#[derive(Debug, Default, Deserialize)]
struct EditQuery {
    saved: Option<String>,
}

async fn edit_page(ui: Ui, Path(id): Path<u64>, axum::extract::Query(q): axum::extract::Query<EditQuery>) -> Response {
    render(&ui, id, None, q.saved.as_deref(), StatusCode::OK).await
}

async fn render(ui: &Ui, id: u64, refused: Option<Refused<'_>>, saved: Option<&str>, status: StatusCode) -> Response {
    let path = format!("/api/environments/{id}");
    let (env, groups) = tokio::join!(ui.get_as::<EnvironmentFull>(&path), label_names(ui, "/api/groups"));
    let env = match env {
        Ok(env) => env,
        Err(e) => return super::fail_page(&e),
    };
    let (details, details_err) = match &refused {
        Some(Refused::Details(f, e)) => ((*f).clone(), Some(*e)),
        _ => (
            DetailsForm {
                csrf: String::new(),
                name: env.item.name.clone(),
                group: env.item.group.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
                tags: env.item.tags.join(", "),
            },
            None,
        ),
    };
    let own = &env.intervals;
    let (intervals, intervals_err) = match &refused {
        Some(Refused::Intervals(f, e)) => ((*f).clone(), Some(*e)),
        _ => (IntervalsForm { csrf: String::new(), choices: IntervalChoices::of_settings(own) }, None),
    };
    let other_err = match &refused {
        Some(Refused::Other(e)) => Some(*e),
        _ => None,
    };
    let eff = &env.effective_intervals;
    let name = env.item.name.clone();
    let pick = |field: &str, label: &str| {
        let (choice, custom) = intervals.choices.get(field);
        let opts = IntervalOpts { offer_default: true, default_seconds: None, hint: None };
        interval_picker(field, label, choice, custom, &opts, intervals_err)
    };
    let body = html! {
        h1 { "Edit " (name) }
        p { a href={ "/environments/" (id) } { "← Back to the environment" } }
        @if let Some(what) = saved.and_then(|w| SAVED.iter().find(|(k, _)| *k == w)).map(|(_, t)| *t) {
            p.notice role="status" { (what) }
        }
        @if let Some(e) = other_err { p.error role="alert" { (e.message) } }
        section id="details" {
            h2 { "Name, group and tags" }
            form.form-narrow method="post" action={ "/environments/" (id) "/edit" } {
                (csrf_field(&ui.csrf))
                (form_error(details_err, &["name", "group", "tags"]))
                (text_field("name", "Name", &details.name, details_err, FieldAttrs { required: true, ..FieldAttrs::default() }))
                div.field {
                    label for="f-group" { "Group" }
                    select id="f-group" name="group" {
                        option value="" selected[details.group.is_empty()] { "No group" }
                        @for g in &groups { option value=(g) selected[*g == details.group] { (g) } }
                    }
                    @if let Some(m) = details_err.and_then(|e| e.for_field("group")) { p.field-error role="alert" { (m) } }
                }
                (text_field("tags", "Tags", &details.tags, details_err, FieldAttrs { hint: Some("Comma-separated; new tags are created."), ..FieldAttrs::default() }))
                button.primary type="submit" { "Save" }
            }
        }
        section id="intervals" {
            h2 { "Intervals" }
            p.hint {
                "Now in effect: ping " (interval_text(eff.ping))
                ", snapshot " (interval_text(eff.snapshot))
                ", command " (interval_text(eff.command)) ". "
                @if let Some(a) = &env.agent_intervals {
                    "The agent last reported running with ping "
                    (interval_text(a.ping)) "; "
                    "a change reaches it at its next poll."
                } @else { "The agent has not reported its intervals yet." }
            }
            form.form-narrow method="post" action={ "/environments/" (id) "/intervals" } {
                (csrf_field(&ui.csrf))
                // A bare "intervals" error (all three disabled) shows here.
                (form_error(intervals_err, &["intervals.ping", "intervals.snapshot", "intervals.command"]))
                (pick("ping", "Ping interval"))
                (pick("snapshot", "Snapshot interval"))
                (pick("command", "Command interval"))
                button.primary type="submit" { "Save intervals" }
            }
        }
        section id="binding" {
            h2 { "Agent binding" }
            @match env.item.edge_id.as_deref() {
                Some(edge) => {
                    p { "Bound to the agent " code { (edge) }
                        @if let Some(v) = env.item.agent_version.as_deref() { " (version " (v) ")" }
                        ". Polls from any other agent are refused. \
                        If that host was replaced, let the next agent that polls take the environment over." }
                    p id="mode" {
                        @if env.item.mode == "session" {
                            "It holds a session: commands reach it as soon as they are queued. Keepalive every "
                            (env.item.keepalive_s.unwrap_or(0)) " s, the longest silence its path's NAT allows (learned by the agent)."
                        } @else {
                            "It polls: commands wait for its next command poll."
                            @if let Some(note) = env.item.mode_note.as_deref() { " Why: " (note) "." }
                        }
                    }
                    form method="post" action={ "/environments/" (id) "/reset-binding" } data-confirm="Let another agent take this environment over?" {
                        (csrf_field(&ui.csrf))
                        button type="submit" { "Reset the binding" }
                    }
                }
                None => p.muted { "No agent has polled yet; the first one to poll with the join token takes the environment." },
            }
        }
        section id="key" {
            h2 { "Join token and counter" }
            p { "Every poll carries a counter that must be above the last one accepted, so a recorded poll cannot be replayed. \
                If the agent's polls are refused as replays though they are not (its counter was pushed past what it can use), \
                reset the counter. A machine in the middle that recorded polls could replay each once after that: \
                where the link is not trusted, rotate the secret instead." }
            form method="post" action={ "/environments/" (id) "/reset-counter" } data-confirm="Accept any counter from this environment's agent again?" {
                (csrf_field(&ui.csrf))
                button type="submit" { "Reset the counter" }
            }
            p { "Rotating the secret gives the environment a new join token: the old one, and every poll sealed with it, \
                is refused at once, so the agent must be redeployed with the new EDGE_KEY (its EDGE_ID and state are kept)." }
            form method="post" action={ "/environments/" (id) "/rotate-secret" } data-confirm="Rotate the secret? The agent stops working until it is redeployed with the new join token." {
                (csrf_field(&ui.csrf))
                button.danger type="submit" { "Rotate the secret" }
            }
        }
        section id="delete" {
            h2 { "Delete" }
            p { "Deletes the environment with its stored state and commands. Its agent's polls are refused from then on." }
            form method="post" action={ "/environments/" (id) "/delete" } data-confirm={ "Delete " (name) "?" } {
                (csrf_field(&ui.csrf))
                button.danger type="submit" { "Delete " (name) }
            }
        }
    };
    (status, page(ui, Nav::Environments, &format!("Edit {name}"), body)).into_response()
}

#[derive(Debug, Clone, Default, Deserialize)]
struct DetailsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tags: String,
}

async fn save(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<DetailsForm>) -> Response {
    let tags = f.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| NameOrId::Name(t.to_owned()));
    let body = UpdateEnvironment {
        name: Some(f.name.clone()),
        group: Some((!f.group.is_empty()).then(|| NameOrId::Name(f.group.clone()))),
        tags: Some(tags.collect()),
        ..UpdateEnvironment::default()
    };
    match ui.send_as(Method::PATCH, &format!("/api/environments/{id}"), &body, &f.csrf).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/edit?saved=details")).into_response(),
        Err(e) => {
            let e = e.conflict_on("name");
            render(&ui, id, Some(Refused::Details(&f, &e)), None, e.status).await
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IntervalsForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    choices: IntervalChoices,
}

async fn save_intervals(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<IntervalsForm>) -> Response {
    // Every timer is sent: `null` puts it back on the default.
    let body = match f.choices.parse() {
        Ok([(_, ping), (_, snapshot), (_, command)]) => IntervalsBody { ping, snapshot, command },
        Err(e) => return render(&ui, id, Some(Refused::Intervals(&f, &e)), None, e.status).await,
    };
    match ui.send_as(Method::PUT, &format!("/api/environments/{id}/intervals"), &body, &f.csrf).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/edit?saved=intervals")).into_response(),
        Err(e) => render(&ui, id, Some(Refused::Intervals(&f, &e)), None, e.status).await,
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn reset_binding(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    match ui.call(Method::POST, &format!("/api/environments/{id}/reset-binding"), None, Some(&f.csrf)).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/edit?saved=binding")).into_response(),
        Err(e) => render(&ui, id, Some(Refused::Other(&e)), None, e.status).await,
    }
}

async fn reset_counter(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    match ui.call(Method::POST, &format!("/api/environments/{id}/reset-counter"), None, Some(&f.csrf)).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/edit?saved=counter")).into_response(),
        Err(e) => render(&ui, id, Some(Refused::Other(&e)), None, e.status).await,
    }
}

/// Rotates the secret, then shows the deploy page with the new join token.
async fn rotate_secret(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    match ui.call(Method::POST, &format!("/api/environments/{id}/rotate-secret"), None, Some(&f.csrf)).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/deploy?rotated=1")).into_response(),
        Err(e) => render(&ui, id, Some(Refused::Other(&e)), None, e.status).await,
    }
}

async fn delete(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    match ui.call(Method::DELETE, &format!("/api/environments/{id}"), None, Some(&f.csrf)).await {
        Ok(_) => Redirect::to("/environments").into_response(),
        Err(e) => render(&ui, id, Some(Refused::Other(&e)), None, e.status).await,
    }
}
