//! The audit log's page: the newest entries, filtered by actor, action and
//! target, a page at a time, and a link exporting the same as JSON lines
//! (the API's `format=jsonl`, with the browser's session).

use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::html;
use serde::Deserialize;

use super::{Nav, Ui, encode, now, page, utc, when};
use crate::server::api::audit::AuditListView;
use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/audit", get(list))
}

/// The page's query.
#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    before: Option<u64>,
}

impl Filter {
    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [("actor", &self.actor), ("action", &self.action), ("target", &self.target)] {
            if !v.trim().is_empty() {
                q.push(format!("{k}={}", encode(v.trim())));
            }
        }
        q.join("&")
    }
}

async fn list(ui: Ui, Query(f): Query<Filter>) -> Response {
    let base = f.query();
    let mut api = format!("/api/audit?limit=100&{base}");
    if let Some(b) = f.before {
        api.push_str(&format!("&before={b}"));
    }
    let view: AuditListView = match ui.load_as(&api).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = now();
    let body = html! {
        div.titlebar {
            h1 { "Audit log" }
            a.button href={ "/api/audit?format=jsonl&" (base) } download="tern-audit.jsonl" id="export" { "Export JSON lines" }
        }
        p.muted { "Every change made through the UI, the API or the CLI, and every login (failed ones too): who, what, \
                   which target, when and from where. Kept " (view.kept_days) " days. Secrets are never recorded." }
        form.filters method="get" action="/audit" {
            label { "Actor " input type="search" name="actor" value=(f.actor) placeholder="user:admin"; }
            label { "Action " input type="search" name="action" value=(f.action) placeholder="login, DELETE"; }
            label { "Target " input type="search" name="target" value=(f.target) placeholder="/api/environments/3"; }
            button type="submit" { "Filter" }
        }
        @if view.entries.is_empty() {
            p.muted { "No entries." }
        } @else {
            div.scroll { table.list id="audit" {
                thead { tr {
                    th scope="col" { "When" }
                    th scope="col" { "Who" }
                    th scope="col" { "What" }
                    th scope="col" { "Target" }
                    th scope="col".num { "Status" }
                    th scope="col" { "From" }
                } }
                tbody { @for e in &view.entries {
                    tr data-status=(e.status) {
                        td { (when(Some(e.at), now)) }
                        td { (e.actor) }
                        td.mono { (e.action) }
                        td.mono { (e.target) }
                        td.num { @if e.status >= 400 { strong { (e.status) } } @else { (e.status) } }
                        td.mono { (e.addr) }
                    }
                } }
            } }
            @if let Some(next) = view.next {
                p { a href={ "/audit?" (base) "&before=" (next) } id="older" { "Older entries" } }
            }
        }
        p.muted { "Times are " (utc(now)) " now." }
    };
    page(&ui, Nav::Audit, "Audit log", body).into_response()
}
