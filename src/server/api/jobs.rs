//! Edge jobs through the API:
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/jobs` | `{name, script, cron?, image?, timeout_s?, targets: {environments?, groups?, tags?}}`: store it and queue it on every targeted environment (201) |
//! | `GET /api/jobs` | the jobs (deleted ones left out) |
//! | `GET /api/jobs/{id}` | one, with its script and, per environment, whether the agent has it, its last run and exit code |
//! | `GET /api/jobs/{id}/runs?environment=E&limit=N` | its runs, newest first, with their output |
//! | `PUT /api/jobs/{id}` | a new version (fields left out keep their value; `targets` replaces the environments); sent again everywhere |
//! | `DELETE /api/jobs/{id}` | stop it everywhere (a `JobRemove` per environment); its runs stay readable |
//!
//! Targets are environment ids (or names), group and tag names (or ids),
//! resolved to environments when the job is created or edited. A job with
//! a `cron` expression (5 fields, or 6 with a leading seconds field; UTC)
//! is kept by each agent and runs on the agent's clock, link or no link;
//! without one it runs once, when the agent receives it, and its output is
//! its command's result. Everything is checked before anything is stored:
//! a bad cron expression, an oversized script (over [`MAX_SCRIPT`] bytes:
//! 413) or a target that names nothing change nothing.

use crate::server::domain::prelude::*;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::types::{CreateJob, JobDetail, JobItem, JobTargetView, RunView, TargetsBody, UpdateJob};
use super::{ApiError, ApiJson, PathId, read_store, with_store};
use crate::server::http::AppState;
use crate::server::store::CommandStatus;
use crate::server::store::jobs::{JobRecord, JobRunRecord, JobTarget, NewJob};

/// The largest script taken, in bytes.
pub const MAX_SCRIPT: usize = 64 * 1024;

/// The longest a run may be given before it is killed: a day.
pub const MAX_TIMEOUT: u32 = 24 * 3600;

/// Runs listed when the query does not say, and the most it may ask.
pub const RUNS_LISTED: usize = 20;

/// The most runs one listing returns.
pub const MAX_RUNS_LISTED: usize = 100;

use crate::server::store::prelude::*;
use crate::server::store::stacks::{TargetRef, TargetRefs};

impl CreateJob {
    /// The job and its targets, checked.
    ///
    /// # Errors
    /// A 422 (413 for an oversized script) naming the bad field.
    pub(crate) fn check(self) -> Result<(NewJob, TargetRefs), ApiError> {
        let job = check_job(NewJob {
            name: self.name,
            script: self.script,
            image: self.image.unwrap_or_default(),
            cron: self.cron.unwrap_or_default(),
            timeout_s: self.timeout_s.unwrap_or(0),
        })?;
        Ok((job, self.targets.check()?))
    }
}

impl From<&JobRecord> for JobItem {
    fn from(j: &JobRecord) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            id: j.id,
            name: j.job.name.clone(),
            cron: some(&j.job.cron),
            image: some(&j.job.image),
            timeout_s: (j.job.timeout_s > 0).then_some(j.job.timeout_s),
            version: j.version,
            created_at: j.created_at,
            updated_at: j.updated_at,
            removed_at: j.removed_at,
        }
    }
}

impl RunView {
    fn new(r: JobRunRecord, with_output: bool) -> Self {
        Self {
            environment: r.environment,
            run: r.run,
            version: r.version,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            error: (!r.error.is_empty()).then_some(r.error),
            truncated: r.truncated,
            output: with_output.then(|| String::from_utf8_lossy(&r.output).into_owned()),
        }
    }
}

impl From<JobTarget> for JobTargetView {
    fn from(t: JobTarget) -> Self {
        let delivered = matches!(
            t.command_status,
            Some(CommandStatus::Delivered | CommandStatus::Ok | CommandStatus::Failed | CommandStatus::Rejected)
        );
        Self {
            environment: t.environment,
            name: t.environment_name,
            version: t.version,
            command: t.command,
            status: t.command_status.map(|s| s.as_str().to_owned()),
            delivered,
            removed: t.removed,
            error: (!t.command_error.is_empty()).then_some(t.command_error),
            last_run: t.last_run.map(|r| RunView::new(r, false)),
            runs: t.runs,
        }
    }
}

// ----- checks -----

/// Checks a cron expression: empty is fine (run once).
pub fn check_cron(expr: &str) -> Result<String, ApiError> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Ok(String::new());
    }
    if expr.len() > 256 {
        return Err(ApiError::invalid("cron: at most 256 bytes"));
    }
    let cron = crate::cron::parse(expr).map_err(|e| {
        ApiError::invalid(format!(
            "cron: {expr:?} is not a cron expression ({e}); use 5 fields (minute hour day month weekday, e.g. \
             \"*/5 * * * *\"), or 6 with a leading seconds field"
        ))
    })?;
    let now = chrono::DateTime::from_timestamp(super::super::http::now(), 0).unwrap_or_default();
    if cron.find_next_occurrence(&now, false).is_err() {
        return Err(ApiError::invalid(format!("cron: {expr:?} never matches a future time")));
    }
    Ok(expr.to_owned())
}

/// Checks a job's fields (a new one, or an edited one with the fields
/// left out taken from the stored one).
///
/// # Errors
/// A 422 (413 for an oversized script) naming the bad field.
pub(crate) fn check_job(job: NewJob) -> Result<NewJob, ApiError> {
    let name = job.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("name: 1 to 128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name: no control characters"));
    }
    if job.script.len() > MAX_SCRIPT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("script: oversized script ({} bytes); at most {MAX_SCRIPT} bytes", job.script.len()),
        ));
    }
    if job.script.trim().is_empty() {
        return Err(ApiError::invalid("script: empty"));
    }
    if job.script.contains('\0') {
        return Err(ApiError::invalid("script: no NUL characters"));
    }
    let image = job.image.trim();
    if image.len() > 256 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid("image: an image reference (up to 256 bytes, no spaces)"));
    }
    if job.timeout_s > MAX_TIMEOUT {
        return Err(ApiError::invalid(format!("timeout_s: at most {MAX_TIMEOUT} seconds (a day)")));
    }
    Ok(NewJob {
        name: name.to_owned(),
        script: job.script,
        image: image.to_owned(),
        cron: check_cron(&job.cron)?,
        timeout_s: job.timeout_s,
    })
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}"))
}

fn detail(store: &dyn Transaction, id: u64) -> Result<JobDetail, ApiError> {
    let job = store.job(id)?.ok_or_else(|| not_found(id))?;
    let environments = store.job_targets(id)?.into_iter().map(Into::into).collect();
    Ok(JobDetail { item: JobItem::from(&job), script: job.job.script, environments })
}

/// Resolves targets to environments (at least one).
fn resolve(store: &dyn Transaction, refs: &TargetRefs) -> Result<Vec<u64>, ApiError> {
    let envs = store.resolve_job_targets(&refs.environments, &refs.groups, &refs.tags)?.map_err(ApiError::invalid)?;
    if envs.is_empty() {
        return Err(ApiError::invalid("targets: the groups and tags given hold no environment"));
    }
    Ok(envs)
}

// ----- handlers -----

/// `POST /api/jobs`.
pub async fn create_job(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<(StatusCode, Json<JobDetail>), ApiError> {
    let (job, refs) = body.check()?;
    let view = with_store(&state, move |store| {
        let envs = resolve(store, &refs)?;
        let id = store.create_job(&job, &envs, super::super::http::now())?;
        super::teams::job_stays_in_scope(store, scope, id)?;
        detail(store, id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /api/jobs`.
pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
) -> Result<Json<Vec<JobItem>>, ApiError> {
    let jobs = read_store(&state, move |store| {
        super::teams::keep_in_scope(store, scope, store.jobs()?, |j| j.id, |s, user, id| s.job_in_scope(user, id))
    })
    .await?;
    Ok(Json(jobs.iter().map(JobItem::from).collect()))
}

/// `GET /api/jobs/{id}`.
pub async fn job(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<JobDetail>, ApiError> {
    Ok(Json(read_store(&state, move |store| detail(store, id)).await?))
}

/// `PUT /api/jobs/{id}`.
pub async fn update_job(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateJob>,
) -> Result<Json<JobDetail>, ApiError> {
    let refs = body.targets.map(TargetsBody::check).transpose()?;
    let view = with_store(&state, move |store| {
        let current = store.job(id)?.ok_or_else(|| not_found(id))?;
        if current.removed_at.is_some() {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("job {id} was deleted; create a new one")));
        }
        let job = check_job(NewJob {
            name: body.name.unwrap_or(current.job.name),
            script: body.script.unwrap_or(current.job.script),
            image: body.image.unwrap_or(current.job.image),
            cron: body.cron.unwrap_or(current.job.cron),
            timeout_s: body.timeout_s.unwrap_or(current.job.timeout_s),
        })?;
        let envs = refs.as_ref().map(|r| resolve(store, r)).transpose()?;
        store.update_job(id, &job, envs.as_deref(), super::super::http::now())?.ok_or_else(|| not_found(id))?;
        super::teams::job_stays_in_scope(store, scope, id)?;
        detail(store, id)
    })
    .await?;
    Ok(Json(view))
}

/// `DELETE /api/jobs/{id}`.
pub async fn delete_job(State(state): State<Arc<AppState>>, PathId(id): PathId) -> Result<Json<JobDetail>, ApiError> {
    let view = with_store(&state, move |store| {
        if !store.remove_job(id, super::super::http::now())? {
            return Err(not_found(id));
        }
        detail(store, id)
    })
    .await?;
    Ok(Json(view))
}

/// `GET /api/jobs/{id}/runs?environment=E&limit=N`.
pub async fn job_runs(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let mut environment = None;
    let mut limit = RUNS_LISTED;
    for (k, v) in super::query_pairs(query.as_deref())? {
        match (k.as_str(), v) {
            ("environment", v) => environment = Some(v),
            ("limit", v) => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_RUNS_LISTED).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("limit: from 1 to {MAX_RUNS_LISTED}")))?;
            }
            (k, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {:?}; environment and limit are known",
                    k.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    let runs = read_store(&state, move |store| {
        store.job(id)?.ok_or_else(|| not_found(id))?;
        let env = match environment {
            None => None,
            Some(e) => {
                let r = vec![TargetRef::Name(e)];
                let found = store.resolve_job_targets(&r, &[], &[])?;
                Some(
                    found.map_err(|e| {
                        ApiError::new(StatusCode::NOT_FOUND, e.replace("targets.environments", "environment"))
                    })?[0],
                )
            }
        };
        Ok(store.job_runs(id, env, limit)?)
    })
    .await?;
    Ok(Json(runs.into_iter().map(|r| RunView::new(r, true)).collect()))
}

/// The routes, merged into the API's (behind its credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/jobs", post(create_job).get(list_jobs))
        .route("/api/jobs/{id}", get(job).put(update_job).delete(delete_job))
        .route("/api/jobs/{id}/runs", get(job_runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(script: &str, cron: &str) -> NewJob {
        NewJob { name: "disk".into(), script: script.into(), cron: cron.into(), ..NewJob::default() }
    }

    #[test]
    fn jobs_are_checked_before_anything_is_stored() {
        assert_eq!(check_job(job("df -h", " */5 * * * * ")).unwrap().cron, "*/5 * * * *");
        assert_eq!(check_job(job("df -h", "*/10 * * * * *")).unwrap().cron, "*/10 * * * * *");
        assert_eq!(check_job(job("df -h", "")).unwrap().cron, "");
        let e = check_job(job("df -h", "every five minutes")).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.starts_with("cron: \"every five minutes\" is not a cron expression"), "{}", e.message);
        assert_eq!(check_job(job("df -h", "61 * * * *")).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = check_job(job(&"x".repeat(MAX_SCRIPT + 1), "")).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("oversized script"));
        assert!(check_job(job(&"x".repeat(MAX_SCRIPT), "")).is_ok());
        assert!(check_job(job("  ", "")).is_err());
        assert!(check_job(job("a\0b", "")).is_err());
        assert!(check_job(NewJob { name: " ".into(), ..job("x", "") }).is_err());
        assert!(check_job(NewJob { image: "a b".into(), ..job("x", "") }).is_err());
        assert!(check_job(NewJob { timeout_s: MAX_TIMEOUT + 1, ..job("x", "") }).is_err());
        assert!(TargetsBody::default().check().is_err(), "at least one target");
        assert_eq!(super::super::query_decode("ship%2D1+a").unwrap(), "ship-1 a");
        assert!(super::super::query_decode("x%2").is_err() && super::super::query_decode("%zz").is_err());
    }
}
