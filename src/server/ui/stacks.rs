//! Edge stacks: the list, the new stack form, and a stack's page: its
//! per-environment status (refreshing itself while a deploy or removal is
//! under way), its compose file, an edit form that redeploys, and removal.
//! Every read and every change goes through the stacks API
//! (`/api/stacks`), whose errors the forms show next to their field.
//!
//! Targets are typed, not ticked: three inputs take comma-separated
//! environment, group and tag names (or ids), with the group and tag names
//! offered by `<datalist>`s. A fleet of 5,000 environments makes a list of
//! checkboxes unusable, and a group or tag is usually what one means.
//! The helpers for them are shared with the jobs pages.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ApiFail, FieldAttrs, Nav, Ui, csrf_field, encode, error_page, fail_page, form_error, label_names, now, page,
    text_field, utc, wants_json, when,
};
use crate::server::api::types::{
    CreateStack, DeploymentView, EnvironmentView, RefBody, Rollback, StackDetail, StackItem, StackTargetView,
    StackVersionView, TargetsBody, UpdateStack,
};
use crate::server::http::AppState;

/// Rows of a per-environment table shown on one page.
pub const ROWS: usize = 500;

/// The most environment names offered as suggestions; a larger fleet gets
/// none (its operators target groups and tags, or type names).
const ENV_SUGGESTIONS: u64 = 500;

/// The stack statuses (per environment) that will not change by themselves.
pub fn final_status(status: &str) -> bool {
    matches!(status, "running" | "failed" | "removed" | "cancelled" | "unknown")
}

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stacks", get(list))
        .route("/stacks/new", get(new_page).post(create))
        .route("/stacks/{id}", get(stack_page))
        .route("/stacks/{id}/status", get(status_fragment))
        .route("/stacks/{id}/edit", post(edit))
        .route("/stacks/{id}/redeploy", post(redeploy))
        .route("/stacks/{id}/remove", post(remove))
        .route("/stacks/{id}/versions", get(versions_page))
        .route("/stacks/{id}/rollback", post(rollback))
}

// ----- helpers shared with the jobs pages -----

/// A numeric id from the path (None: not a number).
pub(super) fn path_id(text: &str) -> Option<u64> {
    text.parse().ok()
}

/// The page for a path whose id is not a number.
pub(super) fn no_such(what: &str) -> Response {
    error_page(StatusCode::NOT_FOUND, &format!("No such {what}: ids are numbers."))
}

/// The names in a comma-separated list, trimmed, empty ones dropped.
pub(super) fn split_names(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// A name as a list item: its id instead when it holds a comma.
pub(super) fn list_item(name: &str, id: u64) -> String {
    if name.contains(',') { id.to_string() } else { name.to_owned() }
}

/// Text from a form's textarea, with the browser's CRLF line ends made LF
/// (a shell script or YAML file must not carry `\r`).
pub(super) fn unix_lines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// The targets of the API's bodies, from the three inputs (each a name,
/// or an id the API takes as one).
pub(super) fn targets_body(environments: &str, groups: &str, tags: &str) -> TargetsBody {
    let refs = |text: &str| split_names(text).into_iter().map(RefBody::Name).collect();
    TargetsBody { environments: refs(environments), groups: refs(groups), tags: refs(tags) }
}

/// The `<datalist>`s of group, tag and (for a small fleet) environment
/// names the target inputs suggest from.
pub(super) async fn target_lists(ui: &Ui) -> Markup {
    let envs_path = format!("/api/environments?limit={ENV_SUGGESTIONS}");
    let (groups, tags, envs) =
        tokio::join!(label_names(ui, "/api/groups"), label_names(ui, "/api/tags"), ui.get(&envs_path));
    let envs: Vec<String> = envs
        .ok()
        .filter(|r| {
            r.headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|t| t <= ENV_SUGGESTIONS)
        })
        .and_then(|r| r.parse::<Vec<EnvironmentView>>(&envs_path).ok())
        .map(|list| list.iter().map(|e| list_item(&e.name, e.id)).collect())
        .unwrap_or_default();
    html! {
        datalist id="dl-environments" { @for e in &envs { option value=(e) {} } }
        datalist id="dl-groups" { @for g in &groups { option value=(g) {} } }
        datalist id="dl-tags" { @for t in &tags { option value=(t) {} } }
    }
}

/// One target input (`environments`, `groups` or `tags`): labelled, with
/// its suggestions and the API's error about it.
fn target_input(name: &str, label: &str, value: &str, err: Option<&ApiFail>, hint: &str) -> Markup {
    let id = format!("f-{name}");
    let err_id = format!("{id}-error");
    let message = err.and_then(|e| e.for_field(&format!("targets.{name}")));
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(name) type="text" value=(value) list={ "dl-" (name) } autocomplete="off"
                aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| &err_id)];
            @if let Some(m) = message { p.field-error id=(err_id) role="alert" { (m) } }
            p.hint { (hint) }
        }
    }
}

/// The targets fieldset: environments, groups and tags, each a
/// comma-separated list, and the API's error about targets as a whole.
pub(super) fn targets_fieldset(
    legend: &str,
    values: [&str; 3],
    err: Option<&ApiFail>,
    lists: &Markup,
    note: Option<&str>,
) -> Markup {
    let whole = err.filter(|e| e.field.as_deref() == Some("targets")).and_then(|e| e.for_field("targets"));
    html! {
        fieldset.targets aria-describedby=[whole.map(|_| "f-targets-error")] {
            legend { (legend) }
            @if let Some(note) = note { p.hint { (note) } }
            @if let Some(m) = whole { p.field-error id="f-targets-error" role="alert" { (m) } }
            div.row {
                (target_input("environments", "Environments", values[0], err,
                    "Names or ids, separated by commas (an environment whose name holds a comma: its id)."))
                (target_input("groups", "Groups", values[1], err, "Group names, separated by commas."))
                (target_input("tags", "Tags", values[2], err, "Tag names, separated by commas."))
            }
            (lists)
        }
    }
}

/// An API failure as a form shows it: a 409 on a create is about the name
/// (the only thing that can be taken), a 403 is the form's token.
pub(super) fn form_fail(mut e: ApiFail) -> ApiFail {
    if e.field.is_none() && e.status == StatusCode::CONFLICT && e.message.contains("named") {
        e.field = Some("name".to_owned());
        e.message = format!("name: {}", e.message);
    } else if e.status == StatusCode::FORBIDDEN {
        e.message = "This form could not be checked (it expired, or did not come from this server's page): \
                     nothing was changed. Send it again from this page."
            .to_owned();
    }
    e
}

/// What a form's script gets when the API refused the form.
#[derive(Serialize)]
struct FormRefused<'a> {
    error: &'a str,
    field: Option<&'a str>,
}

/// A form's answer when the API refused it: JSON for a script, or the
/// form again with its values and the error. An ended session goes to the
/// login page.
pub(super) fn refused(headers: &HeaderMap, e: &ApiFail, form_page: impl FnOnce() -> Markup) -> Response {
    if wants_json(headers) {
        let body = FormRefused { error: &e.message, field: e.field.as_deref() };
        return (e.status, axum::Json(body)).into_response();
    }
    if e.status == StatusCode::UNAUTHORIZED {
        return fail_page(e);
    }
    (e.status, form_page()).into_response()
}

/// A form's answer when the API took it: JSON for a script, or a redirect.
pub(super) fn done(headers: &HeaderMap, status: StatusCode, json: Value, to: &str) -> Response {
    if wants_json(headers) {
        return if json.is_null() { status.into_response() } else { (status, axum::Json(json)).into_response() };
    }
    Redirect::to(to).into_response()
}

/// "Showing 1–500 of 5,000" and the links to the other pages of a table
/// of `total` rows cut into pages of [`ROWS`]; `link` makes a page's URL.
pub(super) fn pager(page_no: usize, total: usize, link: impl Fn(usize) -> String) -> Markup {
    let pages = total.div_ceil(ROWS).max(1);
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← Previous" } }
                span { "Rows " ((page_no - 1) * ROWS + 1) "–" ((page_no * ROWS).min(total)) " of " (total) }
                @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next →" } }
            }
        }
    }
}

// ----- the list -----

fn targets_text(targets: &[StackTargetView]) -> Markup {
    html! {
        @for t in targets {
            span.target { span.muted { (t.kind) " " } (t.name) } " "
        }
    }
}

fn counts_text(counts: &BTreeMap<String, u64>) -> Markup {
    html! {
        @if counts.is_empty() { span.muted { "no environment yet" } }
        @for (i, (status, count)) in counts.iter().enumerate() {
            @if i > 0 { ", " }
            (count) " " span.state.(status) { (status) }
        }
    }
}

async fn list(ui: Ui) -> Response {
    let stacks: Vec<StackItem> = match ui.load_as("/api/stacks").await {
        Ok(stacks) => stacks,
        Err(r) => return r,
    };
    let now = now();
    let body = html! {
        div.titlebar {
            h1 { "Stacks" }
            a.button.primary href="/stacks/new" id="new-stack" { "New stack" }
        }
        @if stacks.is_empty() {
            p.muted { "No stack yet. A stack is a compose file deployed to environments, groups or tags." }
        } @else {
            div.scroll { table.list id="stacks" {
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Status" }
                    th scope="col" { "Targets" }
                    th scope="col" { "Environments" }
                    th scope="col".num { "Version" }
                    th scope="col" { "Updated" }
                } }
                tbody { @for k in &stacks {
                    tr data-stack=(k.name) {
                        td { a href={ "/stacks/" (k.id) } { (k.name) } }
                        td { span.state.(k.status) { (k.status) } }
                        td { (targets_text(&k.targets)) }
                        td { (counts_text(&k.counts)) }
                        td.num { (k.version) }
                        td { (when(Some(k.updated_at), now)) }
                    }
                } }
            } }
        }
    };
    page(&ui, Nav::Stacks, "Stacks", body).into_response()
}

// ----- the form -----

/// What the stack form holds (kept when the API refuses it).
#[derive(Debug, Default, Deserialize)]
struct StackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    compose: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    environments: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    window: String,
    /// The configuration files' rows: `file_path_N` and `file_text_N`.
    #[serde(flatten)]
    rows: BTreeMap<String, String>,
}

impl StackForm {
    /// The form of a stack as the API shows it.
    fn of(stack: &StackDetail) -> Self {
        let mut by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for t in &stack.item.targets {
            by_kind.entry(t.kind.as_str()).or_default().push(list_item(&t.name, t.id));
        }
        let joined = |k: &str| by_kind.get(k).map(|v| v.join(", ")).unwrap_or_default();
        let env = stack.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let mut rows = BTreeMap::new();
        for (i, (path, text)) in stack.files.iter().enumerate() {
            rows.insert(format!("file_path_{i}"), path.clone());
            rows.insert(format!("file_text_{i}"), text.clone());
        }
        Self {
            rows,
            window: stack.window.clone(),
            csrf: String::new(),
            name: stack.item.name.clone(),
            compose: stack.compose.clone(),
            env,
            environments: joined("environment"),
            groups: joined("group"),
            tags: joined("tag"),
        }
    }

    /// The variables: one `NAME=value` a line; blank lines and lines
    /// starting with `#` are skipped.
    fn variables(&self) -> Result<BTreeMap<String, String>, ApiFail> {
        let mut vars = BTreeMap::new();
        for (i, line) in unix_lines(&self.env).lines().enumerate() {
            let bad = |what: String| ApiFail {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("env: line {}: {what}", i + 1),
                field: Some("env".to_owned()),
            };
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, value)) = trimmed.split_once('=') else {
                return Err(bad("write NAME=value".to_owned()));
            };
            let name = name.trim();
            if vars.insert(name.to_owned(), value.to_owned()).is_some() {
                return Err(bad(format!("{name} is given twice")));
            }
        }
        Ok(vars)
    }

    fn targets(&self) -> TargetsBody {
        targets_body(&self.environments, &self.groups, &self.tags)
    }

    /// The configuration files' rows as the form holds them (path, text),
    /// in order; the page adds an empty one for a new file.
    fn file_rows(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in 0..=crate::stack::MAX_FILES {
            let path = self.rows.get(&format!("file_path_{i}"));
            let text = self.rows.get(&format!("file_text_{i}"));
            if path.is_none() && text.is_none() {
                break;
            }
            out.push((path.cloned().unwrap_or_default(), text.cloned().unwrap_or_default()));
        }
        out
    }

    /// The configuration files: the rows with a path (a row whose path was
    /// emptied drops its file). The API checks the paths.
    fn files(&self) -> Result<BTreeMap<String, String>, ApiFail> {
        let mut files = BTreeMap::new();
        for (path, text) in self.file_rows() {
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            if files.insert(path.to_owned(), unix_lines(&text)).is_some() {
                return Err(ApiFail {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    message: format!("files: {path} is given twice"),
                    field: Some("files".to_owned()),
                });
            }
        }
        Ok(files)
    }
}

/// The configuration files' fieldset: a path and a text per file, and an
/// empty row for one more.
fn files_fieldset(f: &StackForm, err: Option<&ApiFail>) -> Markup {
    let mut rows = f.file_rows();
    if rows.last().is_none_or(|(p, t)| !p.trim().is_empty() || !t.is_empty()) {
        rows.push((String::new(), String::new()));
    }
    let whole = err.and_then(|e| e.for_field("files"));
    html! {
        fieldset.files id="files" aria-describedby=[whole.map(|_| "f-files-error")] {
            legend { "Configuration files" }
            p.hint { "Shipped with the stack into its directory on the host, where a relative bind mount finds                       them (./nginx.conf:/etc/nginx/nginx.conf:ro). Text, at most 64 files and 1 MiB; every deploy                       carries them. Empty a path to drop its file. Optional." }
            @if let Some(m) = whole { p.field-error id="f-files-error" role="alert" { (m) } }
            @for (i, (path, text)) in rows.iter().enumerate() {
                div.file-row {
                    (text_field(&format!("file_path_{i}"), "Path", path, None, FieldAttrs {
                        autocomplete: Some("off"),
                        placeholder: Some("conf/nginx.conf"),
                        ..FieldAttrs::default()
                    }))
                    (text_field(&format!("file_text_{i}"), "Text", text, None, FieldAttrs {
                        multiline: true,
                        ..FieldAttrs::default()
                    }))
                }
            }
        }
    }
}

/// The fields of the form; `edit` leaves the name (fixed once created) out.
fn stack_fields(f: &StackForm, err: Option<&ApiFail>, lists: &Markup, edit: bool) -> Markup {
    html! {
        @if !edit {
            (text_field("name", "Name", &f.name, err, FieldAttrs {
                required: true,
                autocomplete: Some("off"),
                hint: Some("The compose project name: lowercase letters, digits, '-' and '_'."),
                ..FieldAttrs::default()
            }))
        }
        (text_field("compose", "Compose file", &f.compose, err, FieldAttrs {
            required: true,
            multiline: true,
            hint: Some("YAML with a services mapping; each service needs an image (an edge host has no build \
                        context). ${VAR} is taken from the variables below."),
            ..FieldAttrs::default()
        }))
        (text_field("env", "Variables", &f.env, err, FieldAttrs {
            multiline: true,
            hint: Some("One NAME=value a line, for ${NAME} in the compose file. Optional."),
            ..FieldAttrs::default()
        }))
        (files_fieldset(f, err))
        (text_field("window", "Deploy window", &f.window, err, FieldAttrs {
            autocomplete: Some("off"),
            placeholder: Some("01:00-05:00 UTC+02:00"),
            hint: Some("When its deploys may start on an environment: HH:MM-HH:MM, then UTC or UTC+HH:MM. A \
                        deploy queued outside it waits (and one not yet sent when it closes waits for the next); an \
                        environment's own window applies too. Empty: any time."),
            ..FieldAttrs::default()
        }))
        (targets_fieldset("Deploy to", [&f.environments, &f.groups, &f.tags], err, lists,
            Some("At least one environment, group or tag. Environments that join a targeted group or get a \
                  targeted tag later get the stack too.")))
    }
}

fn new_form(ui: &Ui, f: &StackForm, err: Option<&ApiFail>, lists: &Markup) -> Markup {
    let body = html! {
        h1 { "New stack" }
        p { a href="/stacks" { "← Stacks" } }
        form.form-wide method="post" action="/stacks/new" {
            (csrf_field(&ui.csrf))
            (form_error(err, &["name", "compose", "env", "files", "window", "targets"]))
            (stack_fields(f, err, lists, false))
            button.primary type="submit" id="deploy" { "Deploy" }
        }
    };
    page(ui, Nav::Stacks, "New stack", body)
}

async fn new_page(ui: Ui) -> Response {
    let lists = target_lists(&ui).await;
    new_form(&ui, &StackForm::default(), None, &lists).into_response()
}

async fn create(ui: Ui, headers: HeaderMap, axum::Form(f): axum::Form<StackForm>) -> Response {
    let result = match f.variables().and_then(|env| Ok((env, f.files()?))) {
        Ok((env, files)) => {
            let body = CreateStack {
                name: f.name.trim().to_owned(),
                compose: unix_lines(&f.compose),
                env,
                files,
                window: f.window.trim().to_owned(),
                targets: f.targets(),
            };
            ui.send_as(Method::POST, "/api/stacks", &body, &f.csrf).await.map_err(form_fail)
        }
        Err(e) => Err(e),
    };
    let result = result.and_then(|r| {
        let json = r.json.clone();
        r.parse::<StackDetail>("/api/stacks").map(|stack| (stack.item.id, json))
    });
    match result {
        Ok((id, json)) => done(&headers, StatusCode::CREATED, json, &format!("/stacks/{id}")),
        Err(e) => {
            let lists = target_lists(&ui).await;
            refused(&headers, &e, || new_form(&ui, &f, Some(&e), &lists))
        }
    }
}

// ----- one stack -----

#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    #[serde(default)]
    status: String,
    page: Option<usize>,
}

impl StatusQuery {
    fn query(&self, page_no: usize) -> String {
        format!("status={}&page={page_no}", encode(&self.status))
    }
}

/// The per-environment status: a summary and the table (one page of it,
/// of the chosen status). `data-pending` says it is still changing.
fn status_part(id: u64, stack: &StackDetail, q: &StatusQuery) -> Markup {
    let all = &stack.environments;
    let now = now();
    // A deploy due later (a retry, one waiting for its window) keeps the
    // page asking: the page's script stops for good once nothing is.
    let pending = all.iter().any(|d| !final_status(&d.status) || d.retry_at.is_some());
    let rows: Vec<&DeploymentView> = all.iter().filter(|d| q.status.is_empty() || d.status == q.status).collect();
    let page_no = q.page.unwrap_or(1).clamp(1, rows.len().div_ceil(ROWS).max(1));
    html! {
        div.stack-status data-pending[pending] {
            p id="stack-counts" {
                "Stack " span.state.(stack.item.status) { (stack.item.status) } ", version " (stack.item.version) ": "
                (counts_text(&stack.item.counts))
                @if pending { span.muted { " (updating…)" } }
            }
            @if all.is_empty() {
                p.muted { "No environment is targeted yet: the groups and tags given hold none. Environments that \
                           join them get the stack." }
            } @else if rows.is_empty() {
                p.muted { "No environment is " (q.status) "." }
            } @else {
                div.scroll { table.list id="stack-status" {
                    thead { tr {
                        th scope="col" { "Environment" }
                        th scope="col" { "Status" }
                        th scope="col".num { "Sent" }
                        th scope="col".num { "Runs" }
                        th scope="col" { "Queued" }
                        th scope="col" { "Finished" }
                        th scope="col" { "Error" }
                    } }
                    tbody { @for d in rows.iter().skip((page_no - 1) * ROWS).take(ROWS) {
                        @let env = d.environment;
                        @let status = d.status.as_str();
                        tr data-env-name=(d.environment_name) data-env=(env) {
                            td { a href={ "/environments/" (env) "?tab=stacks" } { (d.environment_name) } }
                            td.status {
                                @match d.command {
                                    Some(c) => a href={ "/environments/" (env) "/commands/" (c) } title="the command that carries it" {
                                        span.state.(status) { (status) }
                                    },
                                    None => span.state.(status) { (status) },
                                }
                                @if d.attempt > 1 || d.retry_at.is_some() {
                                    " " span.muted.attempt {
                                        @if d.attempt > 1 { "attempt " (d.attempt) " of " (d.max_attempts) }
                                        @if let Some(at) = d.retry_at { @if d.attempt > 1 { "; " } "sent again at " time datetime=(at) { (utc(at)) } }
                                    }
                                }
                            }
                            td.num { (d.version) }
                            td.num.running { @match d.running_version {
                                Some(v) if v != d.version => strong title="the last version that deployed ok here; the one sent since has not (yet)" { (v) },
                                Some(v) => (v),
                                None => "—",
                            } }
                            td { (when(d.queued_at, now)) }
                            td { @if d.finished_at.is_some() { (when(d.finished_at, now)) } }
                            td { @if let Some(e) = d.error.as_deref() { span.error { (e) } } }
                        }
                    } }
                } }
                (pager(page_no, rows.len(), |p| format!("/stacks/{id}?{}#status", q.query(p))))
            }
        }
    }
}

async fn load_stack(ui: &Ui, id: &str) -> Result<(u64, StackDetail), Response> {
    let id = path_id(id).ok_or_else(|| no_such("stack"))?;
    Ok((id, ui.load_as(&format!("/api/stacks/{id}")).await?))
}

/// The statuses a filter offers: those some environment is in.
fn statuses(stack: &StackDetail) -> Vec<String> {
    stack.item.counts.keys().cloned().collect()
}

fn stack_view(
    ui: &Ui,
    id: u64,
    stack: &StackDetail,
    q: &StatusQuery,
    form: &StackForm,
    err: Option<&ApiFail>,
    lists: &Markup,
) -> Markup {
    let now = now();
    let item = &stack.item;
    let name = item.name.as_str();
    let status = item.status.as_str();
    let removed = item.removed_at.is_some();
    let env_count = stack.environments.len();
    let body = html! {
        div.titlebar {
            h1 { "Stack " (name) }
        }
        p { a href="/stacks" { "← Stacks" } }
        dl.host {
            dt { "Targets" } dd { (targets_text(&item.targets)) }
            dt { "Version" } dd { (item.version) }
            dt { "Created" } dd { (when(Some(item.created_at), now)) " (" (utc(item.created_at)) ")" }
            dt { "Updated" } dd { (when(Some(item.updated_at), now)) }
            @if removed { dt { "Removal asked" } dd { (when(item.removed_at, now)) } }
        }
        section id="status" {
            h2 { "Status per environment" }
            @if env_count > ROWS || !q.status.is_empty() {
                form.filters method="get" action={ "/stacks/" (id) } {
                    div.field {
                        label for="q-status" { "Status" }
                        select id="q-status" name="status" {
                            option value="" selected[q.status.is_empty()] { "Any status" }
                            @for st in statuses(stack) { option value=(st) selected[st == q.status] { (st) } }
                        }
                    }
                    button type="submit" { "Show" }
                }
            }
            div data-refresh-url={ "/stacks/" (id) "/status?" (q.query(q.page.unwrap_or(1))) } {
                (status_part(id, stack, q))
            }
        }
        section.compose {
            h2 { "Compose file" }
            pre.command id="compose-file" { (stack.compose) }
            @if !stack.env.is_empty() {
                h3 { "Variables" }
                dl.host id="stack-env" { @for (k, v) in &stack.env { dt.mono { (k) } dd.mono { (v) } } }
            }
        }
        @if !removed {
            section.edit id="edit" {
                h2 { "Edit and redeploy" }
                p.hint { "Saving makes a new version and deploys it to every targeted environment; environments the \
                          new targets leave get a removal." }
                form.form-wide method="post" action={ "/stacks/" (id) "/edit" } {
                    (csrf_field(&ui.csrf))
                    (form_error(err, &["compose", "env", "files", "window", "targets"]))
                    (stack_fields(form, err, lists, true))
                    button.primary type="submit" id="save" { "Save and redeploy" }
                }
            }
        }
        p { a href={ "/stacks/" (id) "/versions" } id="versions" { "Versions and rollback (version " (stack.item.version) " now)" } }
        section.danger-zone {
            h2 { "Redeploy or remove" }
            div.actions {
                @if !removed {
                    form method="post" action={ "/stacks/" (id) "/redeploy" } {
                        (csrf_field(&ui.csrf))
                        button type="submit" id="redeploy" { "Redeploy as it is" }
                    }
                }
                form method="post" action={ "/stacks/" (id) "/remove" }
                    data-confirm={ @if status == "removed" { "Forget the record of stack " (name) "?" } @else { "Remove stack " (name) " from every environment?" } } {
                    (csrf_field(&ui.csrf))
                    @if status == "removed" {
                        button.danger type="submit" id="remove" { "Forget the record" }
                    } @else if removed {
                        button.danger type="submit" id="remove" { "Remove again (retries the failed environments)" }
                    } @else {
                        button.danger type="submit" id="remove" { "Remove from every environment" }
                    }
                }
            }
        }
    };
    page(ui, Nav::Stacks, &format!("Stack {name}"), body)
}

async fn stack_page(ui: Ui, Path(id): Path<String>, Query(q): Query<StatusQuery>) -> Response {
    let (id, stack) = match load_stack(&ui, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let lists = target_lists(&ui).await;
    stack_view(&ui, id, &stack, &q, &StackForm::of(&stack), None, &lists).into_response()
}

/// The per-environment status alone, which the page's script swaps in
/// every few seconds while a deploy is under way.
async fn status_fragment(ui: Ui, Path(id): Path<String>, Query(q): Query<StatusQuery>) -> Response {
    match load_stack(&ui, &id).await {
        Ok((id, stack)) => status_part(id, &stack, &q).into_response(),
        Err(r) => r,
    }
}

async fn edit(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<StackForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("stack") };
    let result = match f.variables().and_then(|env| Ok((env, f.files()?))) {
        Ok((env, files)) => {
            let body = UpdateStack {
                compose: Some(unix_lines(&f.compose)),
                env: Some(env),
                files: Some(files),
                window: Some(f.window.trim().to_owned()),
                targets: Some(f.targets()),
            };
            ui.send_as(Method::PUT, &format!("/api/stacks/{id}"), &body, &f.csrf).await.map_err(form_fail)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => done(&headers, StatusCode::OK, r.json, &format!("/stacks/{id}#status")),
        Err(e) => {
            let stack: StackDetail = match ui.load_as(&format!("/api/stacks/{id}")).await {
                Ok(stack) => stack,
                Err(r) => return r,
            };
            let lists = target_lists(&ui).await;
            refused(&headers, &e, || stack_view(&ui, id, &stack, &StatusQuery::default(), &f, Some(&e), &lists))
        }
    }
}

/// A form that carries only its CSRF token.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    pub(super) csrf: String,
}

/// The answer to a one-button form the API refused: JSON, or a page
/// saying why, with a way back to `back`.
pub(super) fn button_refused(ui: &Ui, nav: Nav, headers: &HeaderMap, e: &ApiFail, back: &str) -> Response {
    if wants_json(headers) || e.status == StatusCode::UNAUTHORIZED {
        return refused(headers, e, || html! {});
    }
    let e = form_fail(e.clone());
    let title = e.status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (e.message) }
        p { a href=(back) { "← Back" } }
    };
    (e.status, page(ui, nav, title, body)).into_response()
}

async fn redeploy(
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<TokenForm>,
) -> Response {
    let Some(id) = path_id(&id) else { return no_such("stack") };
    match ui.send_as(Method::PUT, &format!("/api/stacks/{id}"), &UpdateStack::default(), &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, &format!("/stacks/{id}#status")),
        Err(e) => button_refused(&ui, Nav::Stacks, &headers, &e, &format!("/stacks/{id}")),
    }
}

async fn remove(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<TokenForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("stack") };
    match ui.call(Method::DELETE, &format!("/api/stacks/{id}"), None, Some(&f.csrf)).await {
        Ok(r) if r.json.is_null() => done(&headers, StatusCode::NO_CONTENT, Value::Null, "/stacks"),
        Ok(r) => done(&headers, StatusCode::ACCEPTED, r.json, &format!("/stacks/{id}#status")),
        Err(e) => button_refused(&ui, Nav::Stacks, &headers, &e, &format!("/stacks/{id}")),
    }
}

/// A stack's versions, newest first, each with its variables and file,
/// and a button deploying an earlier one again (as a new version).
async fn versions_page(ui: Ui, Path(id): Path<String>) -> Response {
    let (id, stack) = match load_stack(&ui, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let versions: Vec<StackVersionView> = match ui.load_as(&format!("/api/stacks/{id}/versions")).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let history: Vec<crate::server::api::stacks::DeployView> =
        match ui.load_as(&format!("/api/stacks/{id}/history?limit=100")).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let now = now();
    let removed = stack.item.removed_at.is_some();
    let name = &stack.item.name;
    let body = html! {
        p { a href={ "/stacks/" (id) } { "← " (name) } }
        h1 { "Versions of " (name) }
        p.muted { "Every update is a version. A rollback deploys an earlier version again, as a new version, on \
                   every environment the stack is on; the environments' status shows it arrive." }
        div.scroll { table.list id="stack-versions" {
            thead { tr {
                th scope="col".num { "Version" }
                th scope="col" { "Made" }
                th scope="col" { "Variables" }
                th scope="col" { "Note" }
                th scope="col" { "File" }
                th scope="col" { "" }
            } }
            tbody { @for v in &versions {
                tr data-version=(v.version) {
                    td.num { (v.version) @if v.current { " " span.badge.ok { "current" } } }
                    td { (when(Some(v.created_at), now)) }
                    td.mono { @for (k, val) in &v.env { (k) "=" (val) br; } }
                    td { (v.note) }
                    td { details { summary { (v.compose.lines().count()) " lines" } pre { (v.compose) } } }
                    td {
                        @if !v.current && !removed {
                            form method="post" action={ "/stacks/" (id) "/rollback" }
                                data-confirm={ "Deploy version " (v.version) " of " (name) " again, everywhere it is?" } {
                                (csrf_field(&ui.csrf))
                                input type="hidden" name="version" value=(v.version);
                                button type="submit" id={ "rollback-" (v.version) } { "Roll back to this" }
                            }
                        }
                    }
                }
            } }
        } }
        h2 id="history" { "Deploy history" }
        p.muted { "Every deploy on every environment, newest first (the last 100), retries included." }
        @if history.is_empty() {
            p.muted { "No deploy yet." }
        } @else {
            div.scroll { table.list id="deploy-history" {
                thead { tr {
                    th scope="col" { "Environment" } th scope="col".num { "Version" } th scope="col" { "Status" }
                    th scope="col" { "Queued" } th scope="col" { "Ended" } th scope="col" { "Error" }
                } }
                tbody { @for d in &history {
                    tr data-command=(d.command) {
                        td { a href={ "/environments/" (d.environment) } { (d.environment_name) } }
                        td.num { (d.version) }
                        td { a href={ "/environments/" (d.environment) "/commands/" (d.command) } { (d.status) } }
                        td { (when(Some(d.queued_at), now)) }
                        td { (when(d.finished_at, now)) }
                        td.mono { (d.error) }
                    }
                } }
            } }
        }
    };
    page(&ui, Nav::Stacks, &format!("Versions of {name}"), body).into_response()
}

/// The rollback button's form.
#[derive(Debug, Default, Deserialize)]
struct RollbackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: u32,
}

async fn rollback(
    ui: Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<RollbackForm>,
) -> Response {
    let Some(id) = path_id(&id) else { return no_such("stack") };
    let body = Rollback { version: f.version };
    match ui.send_as(Method::POST, &format!("/api/stacks/{id}/rollback"), &body, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, &format!("/stacks/{id}#status")),
        Err(e) => button_refused(&ui, Nav::Stacks, &headers, &e, &format!("/stacks/{id}/versions")),
    }
}
