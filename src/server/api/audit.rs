//! The audit log (issue #17): every state-changing API call, the UI's
//! included (its forms call the API in process), and every login, failed
//! ones too, recorded with who, what, which target, when, from where and
//! how it ended. Bodies are never recorded, so no secret is.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/audit?actor=&action=&target=&since=&until=&before=&limit=` | entries, newest first (JSON) |
//! | `GET /api/audit?format=jsonl&...` | the same as JSON lines, for export |
//!
//! `actor`, `action` and `target` match as substrings without case;
//! `since` and `until` are unix seconds; `before` is an entry id (the next
//! page: the last id of this one); `limit` is 1 to 1,000 (100 by default,
//! and 100,000 for `jsonl`). Entries are kept `TERN_AUDIT_DAYS` days (365
//! by default), pruned at most once an hour as entries are written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::access::Caller;
use super::{ApiError, read_store, with_store};
use crate::server::http::AppState;
use crate::server::store::audit::{AuditEntry, AuditFilter};

/// Days kept when `TERN_AUDIT_DAYS` is not set.
pub const DEFAULT_DAYS: i64 = 365;

/// One entry, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    /// Its id.
    pub id: u64,
    /// Unix seconds.
    pub at: i64,
    /// `user:NAME` or `token:NAME`.
    pub actor: String,
    /// `METHOD /route/{template}`, or `login`.
    pub action: String,
    /// The path acted on.
    pub target: String,
    /// The HTTP status it ended with.
    pub status: u16,
    /// The client's address.
    pub addr: String,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self { id: e.id, at: e.at, actor: e.actor, action: e.action, target: e.target, status: e.status, addr: e.addr }
    }
}

/// `GET /api/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditListView {
    /// Newest first.
    pub entries: Vec<AuditView>,
    /// `before` for the next page, when there may be one.
    pub next: Option<u64>,
    /// How many days entries are kept.
    pub kept_days: i64,
}

/// How many days entries are kept (`TERN_AUDIT_DAYS`, 1 to 36,500).
pub fn kept_days() -> i64 {
    static DAYS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *DAYS.get_or_init(|| match std::env::var("TERN_AUDIT_DAYS") {
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(d) if (1..=36_500).contains(&d) => d,
            _ => {
                tracing::warn!("TERN_AUDIT_DAYS={v:?} is not 1 to 36500 days; keeping {DEFAULT_DAYS}");
                DEFAULT_DAYS
            }
        },
        Err(_) => DEFAULT_DAYS,
    })
}

/// The actor of a login attempt that did not succeed: the name as typed,
/// which proves nothing (so it is not `user:`).
pub const FAILED_LOGIN_ACTOR: &str = "unverified:";

/// Who a caller is, for the log.
pub fn actor_of(caller: &Caller) -> String {
    match caller {
        // The token's id and user too: its name is free text, and need
        // not be unique.
        Caller::Token { id, name, username, .. } => format!("token:{name}#{id} user:{username}"),
        Caller::Session { username, .. } => format!("user:{username}"),
    }
}

/// The client's address, or `-`.
pub fn addr_of(request: &Request) -> String {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "-".to_owned(), |c| c.0.ip().to_string())
}

/// Records `entry` (and prunes, at most once an hour); a failure is
/// logged, never the caller's: the action happened either way.
pub async fn record(state: &Arc<AppState>, entry: AuditEntry) {
    static PRUNED_AT: AtomicI64 = AtomicI64::new(0);
    let now = entry.at;
    let prune = PRUNED_AT.load(Ordering::Relaxed) + 3600 <= now;
    if prune {
        PRUNED_AT.store(now, Ordering::Relaxed);
    }
    let before = now - kept_days() * 86_400;
    let what = format!("{} {} by {}", entry.action, entry.target, entry.actor);
    let r = with_store(state, move |tx| {
        tx.audit_append(&entry)?;
        if prune {
            tx.audit_prune(before)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = r {
        tracing::error!("the audit log could not record {what}: {}", e.message);
    }
}

/// The middleware: every call but a read (GET, HEAD, OPTIONS) is recorded
/// once it has been answered, with its status. Behind the credential
/// check, so the caller is known.
pub async fn middleware(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| path.clone(), |m| m.as_str().to_owned());
    let action = format!("{} {route}", request.method());
    let actor = request.extensions().get::<Caller>().map_or_else(|| "-".to_owned(), actor_of);
    let addr = addr_of(&request);
    // On a task of its own: a client that hangs up mid-request drops this
    // future, but not the change it asked for (its store work goes on), so
    // neither may it drop the entry.
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        let entry = AuditEntry {
            id: 0,
            at: crate::clock::unix_now(),
            actor,
            action,
            target: path,
            status: response.status().as_u16(),
            addr,
        };
        record(&state, entry).await;
        response
    });
    task.await.unwrap_or_else(|e| {
        tracing::error!("api handler panicked: {e}");
        ApiError::internal().into_response()
    })
}

/// The routes (behind the API's credential check).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/audit", get(list))
}

fn query_filter(query: Option<&str>) -> Result<(AuditFilter, bool), ApiError> {
    let mut f = AuditFilter { limit: 100, ..AuditFilter::default() };
    let mut jsonl = false;
    let mut limit = None;
    for (k, v) in form_urlencoded(query.unwrap_or("")) {
        let int =
            |v: &str| v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("{k}: {v:?} is not a whole number")));
        match k.as_str() {
            "actor" => f.actor = Some(v),
            "action" => f.action = Some(v),
            "target" => f.target = Some(v),
            "since" => f.since = Some(int(&v)?),
            "until" => f.until = Some(int(&v)?),
            "before" => f.before_id = Some(int(&v)?.max(0) as u64),
            "limit" => limit = Some(int(&v)?),
            "format" => match v.as_str() {
                "json" => jsonl = false,
                "jsonl" => jsonl = true,
                _ => return Err(ApiError::bad_request(format!("format: {v:?} is not json or jsonl"))),
            },
            _ => return Err(ApiError::bad_request(format!("unknown parameter {k:?}"))),
        }
    }
    let max = if jsonl { 100_000 } else { 1000 };
    f.limit = match limit {
        None if jsonl => max,
        None => 100,
        Some(l) if (1..=i64::from(max)).contains(&l) => l as u32,
        Some(l) => return Err(ApiError::bad_request(format!("limit: {l} is not 1 to {max}"))),
    };
    Ok((f, jsonl))
}

fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

/// `GET /api/audit`.
async fn list(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (filter, jsonl) = query_filter(query.as_deref())?;
    let limit = filter.limit;
    let entries = read_store(&state, move |tx| Ok(tx.audit_list(&filter)?)).await?;
    if jsonl {
        let mut body = String::new();
        for e in entries {
            body.push_str(&serde_json::to_string(&AuditView::from(e)).unwrap_or_default());
            body.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response());
    }
    let next = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id)).flatten();
    Ok((
        StatusCode::OK,
        Json(AuditListView { entries: entries.into_iter().map(Into::into).collect(), next, kept_days: kept_days() }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked() {
        let (f, jsonl) = query_filter(Some("actor=user%3Aadmin&since=10&limit=5")).unwrap();
        assert_eq!((f.actor.as_deref(), f.since, f.limit, jsonl), (Some("user:admin"), Some(10), 5, false));
        let (f, jsonl) = query_filter(Some("format=jsonl")).unwrap();
        assert_eq!((f.limit, jsonl), (100_000, true));
        assert_eq!(query_filter(None).unwrap().0.limit, 100);
        for bad in ["limit=0", "limit=1001", "since=soon", "format=xml", "who=me"] {
            assert!(query_filter(Some(bad)).is_err(), "{bad}");
        }
    }
}
