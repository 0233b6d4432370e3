//! The waiting room's page (issue #17): devices that asked to join with a
//! fleet join token, with Admit and Reject; those decided, with Forget;
//! the fleet tokens, with Revoke and a form that makes one (its page shows
//! the EDGE_KEY and the one command to flash onto a batch of devices).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::stacks::{ROWS, button_refused, done, no_such, pager, path_id, split_names};
use super::{FieldAttrs, Nav, Ui, csrf_field, form_error, now, page, text_field, utc, when};
use crate::server::api::admission::{AdmitBody, CreateFleetToken, DeviceView, FleetTokenView, RejectBody};
use crate::server::api::types::NameOrId;
use crate::server::http::AppState;
use crate::server::store::admission::{AutoAdmit, DeviceStatus};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/devices", get(list))
        .route("/devices/{id}/admit", post(admit))
        .route("/devices/{id}/reject", post(reject))
        .route("/devices/{id}/forget", post(forget))
        .route("/fleet-tokens", post(create_token))
        .route("/fleet-tokens/{id}", get(token_page))
        .route("/fleet-tokens/{id}/revoke", post(revoke))
}

/// The token form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenForm {
    csrf: String,
    name: String,
    url: String,
    group: String,
    tags: String,
    auto_admit: String,
    auto_tags: String,
    max_uses: String,
    expires_days: String,
}

/// `?page=N` of the devices that wait.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PageQuery {
    page: Option<usize>,
}

async fn list(ui: Ui, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let url =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).map_or_else(String::new, |h| format!("https://{h}"));
    let form = TokenForm { url, ..TokenForm::default() };
    render_page(&ui, &form, None, StatusCode::OK, q.page.unwrap_or(1)).await
}

fn device_row(ui: &Ui, d: &DeviceView, now: i64, pending: bool) -> Markup {
    html! {
        tr data-device=(d.id) {
            td.mono { (d.edge_id) }
            td { (d.hostname) }
            td { (d.agent_version) }
            td { (d.engine) }
            td { (d.group) }
            td { (d.tags.join(", ")) }
            td { (d.token_name) }
            td.mono { (d.addr) }
            td { (when(Some(d.last_seen), now)) }
            @if pending {
                td {
                    form.inline method="post" action={ "/devices/" (d.id) "/admit" } {
                        (csrf_field(&ui.csrf))
                        input type="text" name="name" placeholder=(d.hostname) aria-label="Environment name (default: its hostname)";
                        input type="text" name="group" placeholder=(if d.group.is_empty() { "group" } else { d.group.as_str() })
                            aria-label="Group (default: the one it asked for, else the token's)";
                        input type="text" name="tags" placeholder="tags" aria-label="Tags, comma-separated (default: the token's and those it asked for)";
                        button type="submit" id={ "admit-" (d.id) } { "Admit" }
                    }
                    form.inline method="post" action={ "/devices/" (d.id) "/reject" }
                        data-confirm={ "Reject " (d.edge_id) "?" } {
                        (csrf_field(&ui.csrf))
                        input type="text" name="reason" placeholder="reason (optional)" aria-label="Reason";
                        button type="submit" id={ "reject-" (d.id) } { "Reject" }
                    }
                }
            } @else {
                td {
                    @match (d.status, d.environment) {
                        (DeviceStatus::Admitted, Some(e)) => { a href={ "/environments/" (e) } { "admitted" } }
                        (DeviceStatus::Admitted, None) => { "admitted (environment deleted)" }
                        _ => { "rejected" @if !d.reason.is_empty() { ": " (d.reason) } }
                    }
                    " by " (d.decided_by)
                }
                td {
                    form.inline method="post" action={ "/devices/" (d.id) "/forget" }
                        data-confirm={ "Forget " (d.edge_id) "? It may ask again." } {
                        (csrf_field(&ui.csrf))
                        button type="submit" id={ "forget-" (d.id) } { "Forget" }
                    }
                }
            }
        }
    }
}

fn device_head(last: &str) -> Markup {
    html! { thead { tr {
        th scope="col" { "EDGE_ID" } th scope="col" { "Hostname" } th scope="col" { "Agent" }
        th scope="col" { "Engine" } th scope="col" { "Group asked" } th scope="col" { "Tags asked" }
        th scope="col" { "Token" } th scope="col" { "From" } th scope="col" { "Last asked" }
        th scope="col" { (last) } @if last != "Actions" { th scope="col" { "" } }
    } } }
}

async fn render(ui: &Ui, f: &TokenForm, err: Option<&super::ApiFail>, status: StatusCode) -> Response {
    render_page(ui, f, err, status, 1).await
}

/// A page of devices (and its total) from the API.
async fn devices(ui: &Ui, path: &str) -> Result<(Vec<DeviceView>, usize), Response> {
    let reply = ui.get(path).await.map_err(|e| super::fail_page(&e))?;
    let total = usize::try_from(reply.total()).unwrap_or(usize::MAX);
    reply.parse::<Vec<DeviceView>>(path).map(|d| (d, total)).map_err(|e| super::fail_page(&e))
}

/// The page: the devices that wait, [`ROWS`] to a page (a batch of
/// hundreds flashed at once pages), the newest decided ones, the tokens.
async fn render_page(
    ui: &Ui,
    f: &TokenForm,
    err: Option<&super::ApiFail>,
    status: StatusCode,
    page_no: usize,
) -> Response {
    let page_no = page_no.max(1);
    let first = (page_no - 1).saturating_mul(ROWS);
    let waiting = format!("/api/devices?status=pending&limit={ROWS}&offset={first}");
    let decided = format!("/api/devices?status=decided&limit={ROWS}");
    let (pending, decided) = tokio::join!(devices(ui, &waiting), devices(ui, &decided));
    let ((pending, waiting_total), (decided, decided_total)) = match (pending, decided) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let tokens: Vec<FleetTokenView> = match ui.load_as("/api/fleet-tokens").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = now();
    let body = html! {
        h1 { "Waiting room" }
        p.muted { "Devices deployed with a fleet join token ask to join here. Nothing they send is trusted until \
                   they are admitted: admitting one makes it an environment, which it learns on its next request." }
        h2 { "Waiting (" (waiting_total) ")" }
        @if pending.is_empty() {
            p.muted id="no-pending" { "No device is waiting." }
        } @else {
            div.scroll { table.list id="pending" {
                (device_head("Actions"))
                tbody { @for d in &pending { (device_row(ui, d, now, true)) } }
            } }
            (pager(page_no, waiting_total, |p| format!("/devices?page={p}")))
        }
        @if !decided.is_empty() {
            h2 { "Decided" }
            @if decided_total > decided.len() {
                p.muted { "The newest " (decided.len()) " of " (decided_total) " (tern device list --status decided \
                           has them all)." }
            }
            div.scroll { table.list id="decided" {
                (device_head("Decision"))
                tbody { @for d in &decided { (device_row(ui, d, now, false)) } }
            } }
        }
        h2 id="tokens" { "Fleet join tokens" }
        @if tokens.is_empty() {
            p.muted { "None yet." }
        } @else {
            div.scroll { table.list id="fleet-tokens" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col".num { "Used" } th scope="col" { "Auto-admit" }
                    th scope="col" { "Expires" } th scope="col" { "State" } th scope="col" { "" }
                } }
                tbody { @for t in &tokens {
                    tr data-token=(t.id) {
                        td { a href={ "/fleet-tokens/" (t.id) } { (t.name) } }
                        td.num { (t.uses) @if let Some(m) = t.max_uses { " of " (m) } }
                        td { (rule(t)) }
                        td { @match t.expires_at { Some(at) => { (utc(at)) }, None => { "never" } } }
                        td { (t.state) }
                        td { @if t.revoked_at.is_none() {
                            form.inline method="post" action={ "/fleet-tokens/" (t.id) "/revoke" }
                                data-confirm={ "Revoke " (t.name) "? Its devices that wait are refused too." } {
                                (csrf_field(&ui.csrf))
                                button type="submit" id={ "revoke-" (t.id) } { "Revoke" }
                            }
                        } }
                    }
                } }
            } }
        }
        h3 { "New fleet join token" }
        form method="post" action="/fleet-tokens" id="new-token" {
            (csrf_field(&ui.csrf))
            (form_error(err, &["name", "url", "group", "tags", "auto_tags", "max_uses", "expires_in"]))
            (text_field("name", "Name", &f.name, err, FieldAttrs { required: true, placeholder: Some("batch-2026-12"), ..FieldAttrs::default() }))
            (text_field("url", "Server URL", &f.url, err, FieldAttrs { kind: "url", required: true, ..FieldAttrs::default() }))
            (text_field("group", "Group", &f.group, err, FieldAttrs { hint: Some("Its devices are admitted into it, unless one asks for another with EDGE_GROUP."), ..FieldAttrs::default() }))
            (text_field("tags", "Tags", &f.tags, err, FieldAttrs { placeholder: Some("field, solar"), ..FieldAttrs::default() }))
            div.field {
                label for="f-auto_admit" { "Admit automatically" }
                select id="f-auto_admit" name="auto_admit" {
                    option value="off" selected[f.auto_admit.is_empty() || f.auto_admit == "off"] { "No: the operator admits each device" }
                    option value="all" selected[f.auto_admit == "all"] { "Every device" }
                    option value="tags" selected[f.auto_admit == "tags"] { "A device asking for one of these tags:" }
                }
            }
            (text_field("auto_tags", "Tags that admit", &f.auto_tags, err, FieldAttrs { placeholder: Some("trusted"), ..FieldAttrs::default() }))
            (text_field("max_uses", "Devices at most", &f.max_uses, err, FieldAttrs { kind: "number", hint: Some("Empty: any number."), ..FieldAttrs::default() }))
            (text_field("expires_days", "Expires after (days)", &f.expires_days, err, FieldAttrs { kind: "number", api_field: Some("expires_in"), hint: Some("Empty: never."), ..FieldAttrs::default() }))
            button type="submit" id="create-token" { "Create token" }
        }
    };
    (status, page(ui, Nav::Devices, "Waiting room", body)).into_response()
}

fn rule(t: &FleetTokenView) -> String {
    match t.auto_admit {
        AutoAdmit::Off => "no".into(),
        AutoAdmit::All => "every device".into(),
        AutoAdmit::Tags => format!("tags: {}", t.auto_tags.join(", ")),
    }
}

async fn create_token(ui: Ui, headers: HeaderMap, axum::Form(f): axum::Form<TokenForm>) -> Response {
    let number = |field: &str, text: &str| -> Result<Option<u64>, String> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse().map(Some).map_err(|_| format!("{field}: a whole number"))
    };
    let parsed = number("max_uses", &f.max_uses)
        .and_then(|m| Ok((m, number("expires_in", &f.expires_days)?.map(|d| d.saturating_mul(86_400)))));
    let (max_uses, expires_in) = match parsed {
        Ok(v) => v,
        Err(message) => {
            let field = crate::server::api::error_field(&message).map(str::to_owned);
            let e = super::ApiFail { status: StatusCode::UNPROCESSABLE_ENTITY, message, field };
            return render(&ui, &f, Some(&e), StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    let auto_admit = match f.auto_admit.as_str() {
        "all" => Some(AutoAdmit::All),
        "tags" => Some(AutoAdmit::Tags),
        _ => None,
    };
    let body = CreateFleetToken {
        name: f.name.clone(),
        url: f.url.trim().to_owned(),
        group: Some(f.group.trim()).filter(|g| !g.is_empty()).map(|g| NameOrId::Name(g.to_owned())),
        tags: split_names(&f.tags).into_iter().map(NameOrId::Name).collect(),
        auto_admit,
        auto_tags: if auto_admit == Some(AutoAdmit::Tags) { split_names(&f.auto_tags) } else { Vec::new() },
        max_uses,
        expires_in,
    };
    match ui.send_as(Method::POST, "/api/fleet-tokens", &body, &f.csrf).await {
        Ok(r) => {
            let id = r.json.get("id").and_then(serde_json::Value::as_u64).unwrap_or_default();
            done(&headers, StatusCode::CREATED, r.json, &format!("/fleet-tokens/{id}"))
        }
        Err(e) if super::wants_json(&headers) || e.status == StatusCode::UNAUTHORIZED => {
            button_refused(&ui, Nav::Devices, &headers, &e, "/devices")
        }
        Err(e) => render(&ui, &f, Some(&e), e.status).await,
    }
}

async fn token_page(ui: Ui, Path(id): Path<String>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("token") };
    let t: FleetTokenView = match ui.load_as(&format!("/api/fleet-tokens/{id}")).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = html! {
        p { a href="/devices" { "← Waiting room" } }
        h1 { "Fleet join token " (t.name) }
        p { "State: " strong { (t.state) } ". Used by " (t.uses) @if let Some(m) = t.max_uses { " of " (m) } " devices. \
             Admit automatically: " (rule(&t)) "." }
        @if let Some(c) = &t.commands {
            h2 { "On each device" }
            p.muted { "The same command for every device of the batch: each makes its own EDGE_ID and key, and asks to \
                       join. Add " code { "-e EDGE_GROUP=site-a -e EDGE_TAGS=solar,cam" } " to ask for a group and tags." }
            pre.command id="fleet-command" { (c.linux) }
            details { summary { "Windows" } pre.command { (c.windows) } }
        }
        @if let Some(k) = &t.edge_key {
            details { summary { "EDGE_KEY" } pre.command id="fleet-key" { (k) } }
        }
    };
    page(&ui, Nav::Devices, &format!("Fleet join token {}", t.name), body).into_response()
}

/// A button's form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ButtonForm {
    csrf: String,
    reason: String,
    name: String,
    group: String,
    tags: String,
}

async fn admit(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<ButtonForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("device") };
    // What is left empty is the device's ask, or the token's.
    let body = AdmitBody {
        name: Some(f.name.trim().to_owned()).filter(|n| !n.is_empty()),
        group: Some(f.group.trim()).filter(|g| !g.is_empty()).map(|g| NameOrId::Name(g.to_owned())),
        tags: Some(split_names(&f.tags)).filter(|t| !t.is_empty()).map(|t| t.into_iter().map(NameOrId::Name).collect()),
    };
    match ui.send_as(Method::POST, &format!("/api/devices/{id}/admit"), &body, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::CREATED, r.json, "/devices"),
        Err(e) => button_refused(&ui, Nav::Devices, &headers, &e, "/devices"),
    }
}

async fn reject(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<ButtonForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("device") };
    let body = RejectBody { reason: f.reason };
    match ui.send_as(Method::POST, &format!("/api/devices/{id}/reject"), &body, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, "/devices"),
        Err(e) => button_refused(&ui, Nav::Devices, &headers, &e, "/devices"),
    }
}

async fn forget(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<ButtonForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("device") };
    match ui.send(Method::DELETE, &format!("/api/devices/{id}"), &serde_json::Value::Null, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::NO_CONTENT, r.json, "/devices"),
        Err(e) => button_refused(&ui, Nav::Devices, &headers, &e, "/devices"),
    }
}

async fn revoke(ui: Ui, Path(id): Path<String>, headers: HeaderMap, axum::Form(f): axum::Form<ButtonForm>) -> Response {
    let Some(id) = path_id(&id) else { return no_such("token") };
    match ui.send(Method::DELETE, &format!("/api/fleet-tokens/{id}"), &serde_json::Value::Null, &f.csrf).await {
        Ok(r) => done(&headers, StatusCode::OK, r.json, "/devices#tokens"),
        Err(e) => button_refused(&ui, Nav::Devices, &headers, &e, "/devices"),
    }
}
