//! Edge jobs: the list, the new job form (a script, a cron schedule or
//! none to run once, targets), and a job's page: per environment whether
//! the agent has it and its last run, the runs with their output (all, or
//! one environment's), an edit form and deletion. Every read and change
//! goes through the jobs API (`/api/jobs`); its errors are shown next to
//! their field.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::stacks::{
    ROWS, TokenForm, button_refused, done, form_fail, no_such, pager, path_id, refused, target_lists, targets_body,
    targets_fieldset, unix_lines,
};
use super::{ApiFail, FieldAttrs, Nav, Ui, csrf_field, encode, form_error, now, page, text_field, utc, when};
use crate::server::api::types::{CreateJob, JobDetail, JobItem, JobTargetView, RunView, UpdateJob};
use crate::server::http::AppState;

/// Runs listed when the page does not ask for more, and the most it may
/// ask (the API's limits).
const RUNS: usize = 20;
const MAX_RUNS: usize = 100;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/new", get(new_page).post(create))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/live", get(live_fragment))
        .route("/jobs/{id}/edit", post(edit))
        .route("/jobs/{id}/delete", post(delete))
}

const CRON_HINT: &str = "5 fields (minute hour day month weekday, e.g. */30 * * * *), or 6 with a leading seconds \
                         field; in UTC, on each agent's clock. Empty: run once, when each agent receives it.";

fn schedule(job: &JobItem) -> Markup {
    html! {
        @match job.cron.as_deref() {
            Some(c) => { code { (c) } " UTC" },
            None => span.muted { "once" },
        }
    }
}

// ----- the list -----

async fn list(ui: Ui) -> Response {
    let jobs: Vec<JobItem> = match ui.load_as("/api/jobs").await {
        Ok(jobs) => jobs,
        Err(r) => return r,
    };
    let now = now();
    let body = html! {
        div.titlebar {
            h1 { "Jobs" }
            a.button.primary href="/jobs/new" id="new-job" { "New job" }
        }
        @if jobs.is_empty() {
            p.muted { "No job yet. A job is a shell script run on the hosts of environments, once or on a cron schedule, \
                       with its output collected." }
        } @else {
            div.scroll { table.list id="jobs" {
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Schedule" }
                    th scope="col" { "Image" }
                    th scope="col".num { "Version" }
                    th scope="col" { "Updated" }
                } }
                tbody { @for j in &jobs {
                    tr data-job=(j.name) {
                        td { a href={ "/jobs/" (j.id) } { (j.name) } }
                        td { (schedule(j)) }
                        td { @match j.image.as_deref() { Some(i) => span.mono { (i) }, None => span.muted { "default" } } }
                        td.num { (j.version) }
                        td { (when(Some(j.updated_at), now)) }
                    }
                } }
            } }
        }
    };
    page(&ui, Nav::Jobs, "Jobs", body).into_response()
}

// ----- the form -----

/// What the job form holds (kept when the API refuses it).
#[derive(Debug, Default, Deserialize)]
struct JobForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    script: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    timeout_s: String,
    #[serde(default)]
    environments: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    tags: String,
}

impl JobForm {
    /// The form of a job as the API shows it; its targets left empty
    /// (they are kept unless some are given).
    fn of(job: &JobDetail) -> Self {
        Self {
            name: job.item.name.clone(),
            script: job.script.clone(),
            cron: job.item.cron.clone().unwrap_or_default(),
            image: job.item.image.clone().unwrap_or_default(),
            timeout_s: job.item.timeout_s.map(|t| t.to_string()).unwrap_or_default(),
            ..Self::default()
        }
    }

    /// The timeout: None when empty.
    fn timeout(&self) -> Result<Option<u32>, ApiFail> {
        let t = self.timeout_s.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse().map(Some).map_err(|_| ApiFail {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "timeout_s: {:?} is not a number of seconds; leave it empty for the agent's default (1 hour)",
                t.chars().take(40).collect::<String>()
            ),
            field: Some("timeout_s".to_owned()),
        })
    }

    fn has_targets(&self) -> bool {
        [&self.environments, &self.groups, &self.tags].iter().any(|t| !t.trim().is_empty())
    }

    /// The body of `POST /api/jobs`.
    fn create_body(&self) -> Result<CreateJob, ApiFail> {
        Ok(CreateJob {
            name: self.name.trim().to_owned(),
            script: unix_lines(&self.script),
            cron: Some(self.cron.trim().to_owned()),
            image: Some(self.image.trim().to_owned()),
            timeout_s: self.timeout()?,
            targets: targets_body(&self.environments, &self.groups, &self.tags),
        })
    }

    /// The body of `PUT /api/jobs/{id}`: targets only when some are
    /// given, and 0 for "the agent's default" timeout.
    fn update_body(&self) -> Result<UpdateJob, ApiFail> {
        Ok(UpdateJob {
            name: Some(self.name.trim().to_owned()),
            script: Some(unix_lines(&self.script)),
            cron: Some(self.cron.trim().to_owned()),
            image: Some(self.image.trim().to_owned()),
            timeout_s: Some(self.timeout()?.unwrap_or(0)),
            targets: self.has_targets().then(|| targets_body(&self.environments, &self.groups, &self.tags)),
        })
    }
}

const FIELDS: &[&str] = &["name", "script", "cron", "image", "timeout_s", "targets"];

fn job_fields(f: &JobForm, err: Option<&ApiFail>, lists: &Markup, targets_note: &str) -> Markup {
    html! {
        (text_field("name", "Name", &f.name, err, FieldAttrs {
            required: true,
            autocomplete: Some("off"),
            ..FieldAttrs::default()
        }))
        (text_field("script", "Script", &f.script, err, FieldAttrs {
            required: true,
            multiline: true,
            hint: Some("A shell script, run on each host with the host's own sh (chroot). Up to 64 KiB; its \
                        output (stdout and stderr, the last 64 KiB) is collected."),
            ..FieldAttrs::default()
        }))
        (text_field("cron", "Schedule (cron)", &f.cron, err, FieldAttrs {
            placeholder: Some("*/30 * * * *"),
            autocomplete: Some("off"),
            hint: Some(CRON_HINT),
            ..FieldAttrs::default()
        }))
        div.row {
            (text_field("image", "Helper image", &f.image, err, FieldAttrs {
                placeholder: Some("busybox:latest"),
                autocomplete: Some("off"),
                hint: Some("Needs sh and chroot. Empty: the agent's EDGE_JOB_IMAGE (busybox:latest)."),
                ..FieldAttrs::default()
            }))
            (text_field("timeout_s", "Timeout (seconds)", &f.timeout_s, err, FieldAttrs {
                kind: "number",
                placeholder: Some("3600"),
                hint: Some("A run past it is killed. Empty: 1 hour. At most a day."),
                ..FieldAttrs::default()
            }))
        }
        (targets_fieldset("Run on", [&f.environments, &f.groups, &f.tags], err, lists, Some(targets_note)))
    }
}

fn new_form(ui: &Ui, f: &JobForm, err: Option<&ApiFail>, lists: &Markup) -> Markup {
    let body = html! {
        h1 { "New job" }
        p { a href="/jobs" { "← Jobs" } }
        form.form-wide method="post" action="/jobs/new" {
            (csrf_field(&ui.csrf))
            (form_error(err, FIELDS))
            (job_fields(f, err, lists,
                "At least one environment, group or tag. Groups and tags are resolved to the environments in them now; \
                 environments that join later do not get the job."))
            button.primary type="submit" id="create" { "Create" }
        }
    };
    page(ui, Nav::Jobs, "New job", body)
}

async fn new_page(ui: Ui) -> Response {
    let lists = target_lists(&ui).await;
    new_form(&ui, &JobForm::default(), None, &lists).into_response()
}

async fn create(ui: Ui, headers: HeaderMap, axum::Form(f): axum::Form<JobForm>) -> Response {
    let result = match f.create_body() {
        Ok(body) => ui.send_as(Method::POST, "/api/jobs", &body, &f.csrf).await.map_err(form_fail),
        Err(e) => Err(e),
    };
    let result = result.and_then(|r| {
        let json = r.json.clone();
        r.parse::<JobDetail>("/api/jobs").map(|job| (job.item.id, json))
    });
    match result {
        Ok((id, json)) => done(&headers, StatusCode::CREATED, json, &format!("/jobs/{id}")),
        Err(e) => {
            let lists = target_lists(&ui).await;
            refused(&headers, &e, || new_form(&ui, &f, Some(&e), &lists))
        }
    }
}

// ----- one job -----

#[derive(Debug, Default, Deserialize)]
struct LiveQuery {
    /// Runs of this environment only (an id or a name).
    #[serde(default)]
    environment: String,
    /// How many runs.
    limit: Option<usize>,
    /// The page of the environments table.
    page: Option<usize>,
}

impl LiveQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(RUNS).clamp(1, MAX_RUNS)
    }

    fn query(&self, page_no: usize) -> String {
        format!("environment={}&limit={}&page={page_no}", encode(self.environment.trim()), self.limit())
    }
}

/// Whether a job's delivery to an environment is still under way: its
/// command not yet with the agent, or a run-once job still running.
fn in_progress(job: &JobItem, target: &JobTargetView) -> bool {
    match target.status.as_deref() {
        Some("queued" | "sent") => true,
        Some("delivered") => job.cron.is_none() && job.removed_at.is_none(),
        _ => false,
    }
}

/// A run's exit code: ok when 0.
fn exit_code(code: i64) -> Markup {
    let class = if code == 0 { "ok" } else { "failed" };
    html! { span.state.(class) title="exit code" { (code) } }
}

/// The runs of the job, newest first, as the API listed them.
async fn load_runs(ui: &Ui, id: u64, q: &LiveQuery) -> Result<Vec<RunView>, ApiFail> {
    let mut path = format!("/api/jobs/{id}/runs?limit={}", q.limit());
    if !q.environment.trim().is_empty() {
        path.push_str(&format!("&environment={}", encode(q.environment.trim())));
    }
    ui.get_as(&path).await
}

/// Per environment, then the runs: the part of the page that refreshes
/// itself while the job is on its way (`data-pending`).
fn live_part(id: u64, job: &JobDetail, q: &LiveQuery, runs: &Result<Vec<RunView>, ApiFail>) -> Markup {
    let targets = &job.environments;
    let pending = targets.iter().any(|t| in_progress(&job.item, t));
    let names: HashMap<u64, &str> = targets.iter().map(|t| (t.environment, t.name.as_str())).collect();
    let page_no = q.page.unwrap_or(1).clamp(1, targets.len().div_ceil(ROWS).max(1));
    let now = now();
    let runs_link = |env: u64| format!("/jobs/{id}?environment={env}&limit={}#runs", q.limit());
    html! {
        div.job-live data-pending[pending] {
            h2 id="environments" { "Per environment" }
            @if pending { p.muted { "Under way: this part refreshes itself." } }
            @if targets.is_empty() {
                p.muted { "No environment." }
            } @else {
                div.scroll { table.list id="job-envs" {
                    thead { tr {
                        th scope="col" { "Environment" }
                        th scope="col" { "Status" }
                        th scope="col".num { "Version" }
                        th scope="col" { "Last run" }
                        th scope="col".num { "Exit code" }
                        th scope="col".num { "Runs" }
                        th scope="col" { "Error" }
                    } }
                    tbody { @for t in targets.iter().skip((page_no - 1) * ROWS).take(ROWS) {
                        @let env = t.environment;
                        @let status = if t.removed { "removed" } else { t.status.as_deref().unwrap_or("none") };
                        @let last = t.last_run.as_ref();
                        tr data-env-name=(t.name) data-env=(env) {
                            td { a href={ "/environments/" (env) } { (t.name) } }
                            td.status {
                                @match t.command {
                                    Some(c) => a href={ "/environments/" (env) "/commands/" (c) } title="the command that carries it" {
                                        span.state.(status) { (status) }
                                    },
                                    None => span.state.(status) { (status) },
                                }
                            }
                            td.num { (t.version) }
                            td { @if let Some(l) = last { (when(Some(l.finished_at), now)) } @else { span.muted { "none yet" } } }
                            td.num { @if let Some(l) = last { (exit_code(l.exit_code.into())) } }
                            td.num {
                                @if t.runs > 0 { a href=(runs_link(env)) aria-label={ "Runs on " (t.name) } { (t.runs) } }
                                @else { "0" }
                            }
                            td {
                                @let (error, _) = split_error(t.error.as_deref());
                                @let (last_error, _) = split_error(last.and_then(|l| l.error.as_deref()));
                                @if let Some(e) = error { span.error { (e) } " " }
                                @if let Some(e) = last_error.filter(|e| error != Some(e)) { span.error { (e) } }
                            }
                        }
                    } }
                } }
                (pager(page_no, targets.len(), |p| format!("/jobs/{id}?{}#environments", q.query(p))))
            }
            h2 id="runs" {
                "Runs"
                @if !q.environment.trim().is_empty() { " on " (q.environment.trim()) }
            }
            @match runs {
                Err(e) => p.error role="alert" { (e.message) },
                Ok(runs) if runs.is_empty() => p.muted { "No run has reported yet." },
                Ok(runs) => {
                    p.muted { "Newest first; " (runs.len()) " shown." }
                    @for r in runs {
                        @let env = r.environment;
                        @let env_name = names.get(&env).copied().map_or_else(|| env.to_string(), str::to_owned);
                        article.run data-env-name=(env_name) {
                            h3 {
                                a href=(runs_link(env)) { (env_name) } " · "
                                @if r.run == 0 { "the run" } @else { "run " (r.run) }
                                " · " (when(Some(r.finished_at), now))
                            }
                            p {
                                "Exit code " (exit_code(r.exit_code.into()))
                                " · version " (r.version)
                                @if let Some(t) = r.started_at { " · started " (utc(t)) }
                                " · finished " (utc(r.finished_at))
                            }
                            @let output = r.output.as_deref().filter(|o| !o.is_empty());
                            @let (error, tail) = split_error(r.error.as_deref());
                            @if let Some(e) = error { p.error { (e) } }
                            @if r.truncated {
                                p.hint { "The start of the output was cut: its last 64 KiB are kept." }
                            }
                            @match (output, tail) {
                                (Some(o), _) => pre.output { (o) },
                                (None, Some(tail)) => {
                                    p.hint { "The end of its output (a failed run-once job reports only its last lines):" }
                                    pre.output { (tail) }
                                },
                                (None, None) => p.muted { "(no output)" },
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A failed run-once job's error, `exit code N; last output: ...` (the
/// agent's form): the reason, and the output's last lines it carries.
fn split_error(error: Option<&str>) -> (Option<&str>, Option<&str>) {
    match error.map(|e| e.split_once("; last output: ")) {
        Some(Some((head, tail))) => (Some(head), Some(tail)),
        Some(None) => (error, None),
        None => (None, None),
    }
}

async fn load_job(ui: &Ui, id: &str) -> Result<(u64, JobDetail), Response> {
    let id = path_id(id).ok_or_else(|| no_such("job"))?;
    Ok((id, ui.load_as(&format!("/api/jobs/{id}")).await?))
}

#[allow(clippy::too_many_arguments)]
fn job_view(
    ui: &Ui,
    id: u64,
    job: &JobDetail,
    q: &LiveQuery,
    runs: &Result<Vec<RunView>, ApiFail>,
    form: &JobForm,
    err: Option<&ApiFail>,
    lists: &Markup,
) -> Markup {
    let now = now();
    let item = &job.item;
    let name = item.name.as_str();
    let removed = item.removed_at.is_some();
    let env_count = job.environments.iter().filter(|t| !t.removed).count();
    let body = html! {
        div.titlebar {
            h1 { "Job " (name) @if removed { " " span.state.removed { "deleted" } } }
        }
        p { a href="/jobs" { "← Jobs" } }
        dl.host {
            dt { "Schedule" } dd { (schedule(item)) @if item.cron.is_none() { " (when each agent receives it)" } }
            dt { "Image" } dd { @match item.image.as_deref() { Some(i) => span.mono { (i) }, None => span.muted { "the agent's default (EDGE_JOB_IMAGE)" } } }
            dt { "Timeout" } dd { @match item.timeout_s { Some(t) => { (t) " s" }, None => span.muted { "the agent's default (1 hour)" } } }
            dt { "Version" } dd { (item.version) }
            dt { "Created" } dd { (when(Some(item.created_at), now)) " (" (utc(item.created_at)) ")" }
            dt { "Updated" } dd { (when(Some(item.updated_at), now)) }
            @if removed { dt { "Deleted" } dd { (when(item.removed_at, now)) ": its runs stay readable." } }
        }
        h2 { "Script" }
        pre.command id="job-script" { (job.script) }
        section.live {
            form.filters method="get" action={ "/jobs/" (id) "#runs" } role="search" {
                div.field {
                    label for="q-environment" { "Runs of one environment" }
                    input id="q-environment" name="environment" type="text" value=(q.environment) list="dl-environments"
                        placeholder="name or id; empty: all" autocomplete="off"
                        aria-invalid=[runs.as_ref().err().map(|_| "true")];
                }
                div.field {
                    label for="q-limit" { "How many" }
                    select id="q-limit" name="limit" {
                        @for l in [RUNS, MAX_RUNS] { option value=(l) selected[l == q.limit()] { "the last " (l) } }
                    }
                }
                button type="submit" { "Show" }
                a.button href={ "/jobs/" (id) "?" (q.query(q.page.unwrap_or(1))) "#runs" } { "Refresh" }
            }
            div data-refresh-url={ "/jobs/" (id) "/live?" (q.query(q.page.unwrap_or(1))) } {
                (live_part(id, job, q, runs))
            }
        }
        @if !removed {
            section.edit id="edit" {
                h2 { "Edit" }
                p.hint { "Saving makes a new version and sends it to every environment again; a run-once job runs again." }
                form.form-wide method="post" action={ "/jobs/" (id) "/edit" } {
                    (csrf_field(&ui.csrf))
                    (form_error(err, FIELDS))
                    (job_fields(form, err, lists, &format!(
                        "Leave these empty to keep the {env_count} environment{} it runs on; what is given replaces them \
                         (groups and tags resolved now).", if env_count == 1 { "" } else { "s" })))
                    button.primary type="submit" id="save" { "Save" }
                }
            }
            section.danger-zone {
                h2 { "Delete" }
                form method="post" action={ "/jobs/" (id) "/delete" } data-confirm={ "Delete job " (name) " everywhere?" } {
                    (csrf_field(&ui.csrf))
                    p.hint { "Every agent stops it; its runs stay readable here." }
                    button.danger type="submit" id="delete" { "Delete the job" }
                }
            }
        }
    };
    page(ui, Nav::Jobs, &format!("Job {name}"), body)
}

async fn job_page(ui: Ui, Path(id): Path<String>, Query(q): Query<LiveQuery>) -> Response {
    let (id, job) = match load_job(&ui, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (runs, lists) = tokio::join!(load_runs(&ui, id, &q), target_lists(&ui));
    let status = match &runs {
        Err(e) if e.status == StatusCode::UNAUTHORIZED => return super::fail_page(e),
        Err(e) => e.status,
        Ok(_) => StatusCode::OK,
    };
    (status, job_view(&ui, id, &job, &q, &runs, &JobForm::of(&job), None, &lists)).into_response()
}

/// Per environment and the runs alone, which the page's script swaps in
/// every few seconds while the job is on its way.
async fn live_fragment(ui: Ui, Path(id): Path<String>, Query(q): Query<LiveQuery>) -> Response {
    let (id, job) = match load_job(&ui, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let runs = load_runs(&ui, id, &q).await;
    live_part(id, &job, &q, &runs).into_response()
}

async fn edit(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<JobForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("job") };
    let result = match f.update_body() {
        Ok(body) => ui.send_as(Method::PUT, &format!("/api/jobs/{id}"), &body, &f.csrf).await.map_err(form_fail),
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => done(&headers, StatusCode::OK, r.json, &format!("/jobs/{id}#environments")),
        Err(e) => {
            let job: JobDetail = match ui.load_as(&format!("/api/jobs/{id}")).await {
                Ok(job) => job,
                Err(r) => return r,
            };
            let q = LiveQuery::default();
            let (runs, lists) = tokio::join!(load_runs(&ui, id, &q), target_lists(&ui));
            refused(&headers, &e, || job_view(&ui, id, &job, &q, &runs, &f, Some(&e), &lists))
        }
    }
}

async fn delete(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<TokenForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("job") };
    match ui.call(Method::DELETE, &format!("/api/jobs/{id}"), None, Some(&f.csrf)).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, &format!("/jobs/{id}")),
        Err(e) => button_refused(&ui, Nav::Jobs, &headers, &e, &format!("/jobs/{id}")),
    }
}
