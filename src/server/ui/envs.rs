//! The environments list and one environment's page: its host, its state by
//! tab with each row's actions, the data usage chart and the command
//! history.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, Ui, ago, bytes, csrf_field, encode, error_page, label_names, now, page, utc, wants_json, when};
use crate::server::api::types::{
    CommandView, ContainerView, CreateCommand, EnvironmentFull, EnvironmentStateView, EnvironmentUsageView,
    EnvironmentView, ErrorBody, ImageView, NetworkView, StackStateView, StateView, VolumeView,
};
use crate::server::http::AppState;

/// Rows per page of the list (the API's page size).
pub const PAGE: u64 = 100;

/// The tabs of an environment's page, with the state part each shows.
pub const TABS: &[(&str, &str)] = &[
    ("containers", "Containers"),
    ("images", "Images"),
    ("volumes", "Volumes"),
    ("networks", "Networks"),
    ("stacks", "Stacks"),
];

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/environments", get(list))
        .route("/environments/{id}", get(environment))
        .route("/environments/{id}/part", get(part))
        .route("/environments/{id}/commands", post(command))
        .route("/environments/{id}/variables", post(save_variables))
        .route("/environments/{id}/window", post(save_window))
        .route("/environments/{id}/commands/{cid}", get(command_page))
        .route("/environments/{id}/commands/{cid}/cancel", post(cancel))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    status: String,
    page: Option<u64>,
}

fn select(id: &str, name: &str, label: &str, options: &[String], current: &str, any: &str) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                option value="" selected[current.is_empty()] { (any) }
                @for o in options { option value=(o) selected[o == current] { (o) } }
            }
        }
    }
}

async fn list(ui: Ui, Query(q): Query<ListQuery>) -> Response {
    // Bounded, so that the offset cannot overflow (a page past the end is
    // just empty).
    let page_no = q.page.unwrap_or(1).clamp(1, u64::from(u32::MAX));
    let mut query = format!("/api/environments?limit={PAGE}&offset={}", (page_no - 1) * PAGE);
    for (k, v) in [("name", &q.name), ("group", &q.group), ("tag", &q.tag), ("status", &q.status)] {
        if !v.trim().is_empty() {
            query.push_str(&format!("&{k}={}", encode(v.trim())));
        }
    }
    let (reply, groups, tags) =
        tokio::join!(ui.get(&query), label_names(&ui, "/api/groups"), label_names(&ui, "/api/tags"));
    let filter_error = reply.as_ref().err().filter(|e| e.status != StatusCode::UNAUTHORIZED).map(|e| e.message.clone());
    let (items, total) = match reply {
        Ok(r) => {
            let total = r.total();
            (r.parse::<Vec<EnvironmentView>>(&query).unwrap_or_default(), total)
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => return super::fail_page(&e),
        Err(_) => (Vec::new(), 0),
    };
    let now = now();
    let first = (page_no - 1) * PAGE;
    let pages = total.div_ceil(PAGE).max(1);
    let link = |p: u64| {
        format!(
            "/environments?name={}&group={}&tag={}&status={}&page={p}",
            encode(&q.name),
            encode(&q.group),
            encode(&q.tag),
            encode(&q.status)
        )
    };
    let statuses = ["online".to_owned(), "offline".to_owned()];
    let body = html! {
        div.titlebar {
            h1 { "Environments" }
            a.button.primary href="/environments/new" { "Add environment" }
        }
        form.filters method="get" action="/environments" role="search" {
            div.field {
                label for="q-name" { "Name" }
                input id="q-name" name="name" type="search" value=(q.name) placeholder="part of a name";
            }
            (select("q-group", "group", "Group", &groups, &q.group, "Any group"))
            (select("q-tag", "tag", "Tag", &tags, &q.tag, "Any tag"))
            (select("q-status", "status", "Status", &statuses, &q.status, "Any status"))
            button type="submit" { "Filter" }
        }
        @if let Some(e) = filter_error { p.error role="alert" { (e) } }
        p.muted id="env-count" {
            @if total == 0 { "No environment matches." }
            @else { "Showing " (first + 1) "–" (first + items.len() as u64) " of " (total) }
        }
        div.scroll {
            table.list id="environments" {
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Status" }
                    th scope="col" { "Last check-in" }
                    th scope="col" { "Snapshot" }
                    th scope="col" { "Group" }
                    th scope="col" { "Tags" }
                    th scope="col" title="running / stopped / unhealthy" { "Containers" }
                    th scope="col".num { "Today" }
                    th scope="col".num { "30 days" }
                } }
                tbody {
                    @for e in &items {
                        @let c = &e.counts;
                        @let u = &e.usage;
                        tr data-env=(e.id) {
                            td { a href={ "/environments/" (e.id) } { (e.name) } }
                            td { (status_badge(&e.status)) }
                            td { (when(e.last_poll_at, now)) }
                            td { @match e.snapshot_age_s { Some(a) => (ago(a)), None => span.muted { "none yet" } } }
                            td { (e.group.as_ref().map_or("", |g| g.name.as_str())) }
                            td { @for t in &e.tags { span.tag { (t) } " " } }
                            td.counts {
                                span.running title="running" { (c.running) } " / "
                                span.stopped title="stopped" { (c.stopped) } " / "
                                span.unhealthy.bad[c.unhealthy > 0] title="unhealthy" { (c.unhealthy) }
                            }
                            td.num { (bytes(u.today_up + u.today_down)) }
                            td.num { (bytes(u.days30_up + u.days30_down)) }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← Previous" } }
                span { "Page " (page_no) " of " (pages) }
                @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next →" } }
            }
        }
    };
    page(&ui, Nav::Environments, "Environments", body).into_response()
}

/// An online/offline badge.
pub fn status_badge(status: &str) -> Markup {
    html! { span.badge.(if status == "online" { "ok" } else { "off" }) { (status) } }
}

#[derive(Debug, Default, Deserialize)]
struct EnvQuery {
    tab: Option<String>,
    cmd: Option<u64>,
}

fn tab_of(q: Option<&str>) -> &'static str {
    TABS.iter().find(|(t, _)| Some(*t) == q).map_or("containers", |(t, _)| t)
}

async fn environment(ui: Ui, Path(id): Path<u64>, Query(q): Query<EnvQuery>) -> Response {
    let tab = tab_of(q.tab.as_deref());
    let paths = [
        format!("/api/environments/{id}"),
        format!("/api/environments/{id}/state"),
        format!("/api/environments/{id}/usage?days=7"),
        format!("/api/environments/{id}/commands"),
    ];
    let (env, st, usage, cmds) = tokio::join!(
        ui.get_as::<EnvironmentFull>(&paths[0]),
        ui.get_as::<EnvironmentStateView>(&paths[1]),
        ui.get_as::<EnvironmentUsageView>(&paths[2]),
        ui.get_as::<Vec<CommandView>>(&paths[3])
    );
    let env = match env {
        Ok(r) => r,
        Err(e) => return super::fail_page(&e),
    };
    let st = match st {
        Ok(r) => r.state,
        Err(e) => return super::fail_page(&e),
    };
    let usage = usage.ok();
    let cmds = cmds.unwrap_or_default();
    let vars = ui
        .get_as::<crate::server::api::stacks::EnvironmentVariables>(&format!("/api/environments/{id}/variables"))
        .await
        .ok();
    let window =
        ui.get_as::<crate::server::api::stacks::WindowBody>(&format!("/api/environments/{id}/window")).await.ok();
    let now = now();
    let h = &st.host;
    let name = env.item.name.clone();
    let body = html! {
        div.titlebar {
            h1 { (name) " " (status_badge(&env.item.status)) }
        }
        section.envinfo data-live-env=(id) data-seq=(env.seq) data-tab=(tab) {
            p id="as-of" {
                @match env.item.snapshot_age_s {
                    Some(a) => { "As of " strong { (ago(a)) } }
                    None => { "No snapshot yet: the agent has not reported. Start it with the command on the " a href={ "/environments/" (id) "/deploy" } { "deploy page" } "." }
                }
                " · last check-in " (when(env.item.last_poll_at, now))
            }
            @if !h.hostname.is_empty() {
                dl.host {
                    dt { "Host" } dd { (h.hostname) }
                    dt { "Engine" } dd { "Docker " (h.engine_version) " (API " (h.api_version) ")" }
                    dt { "System" } dd { (h.operating_system) ", " (h.kernel_version) ", " (h.architecture) }
                    dt { "CPUs, memory" } dd { (h.cpus) " CPUs, " (bytes(h.memory_bytes)) }
                    dt { "Group" } dd { (env.item.group.as_ref().map_or("none", |g| g.name.as_str())) }
                    dt { "Tags" } dd { @for t in &env.item.tags { span.tag { (t) } " " } }
                }
            }
            p {
                a href={ "/environments/" (id) "/deploy" } { "Deploy command and join token" }
                " · " a href={ "/environments/" (id) "/edit" } { "Edit, intervals, delete" }
            }
        }
        div id="live" aria-live="polite" {
            @if let Some(c) = q.cmd { div.live-cmd data-command-id=(c) { "Command " (c) ": …" } }
        }
        nav.tabs aria-label="State" {
            @for (t, label) in TABS {
                a href={ "/environments/" (id) "?tab=" (t) } aria-current=[(*t == tab).then_some("page")] {
                    (label) " " span.muted { (count(&st, t)) }
                }
            }
        }
        div id="state-table" { (state_table(&ui, id, tab, &st)) }
        section.usage {
            h2 { "Data usage" }
            (super::chart::usage_section(usage.as_ref(), now))
        }
        section.history {
            h2 { "Command history" }
            (history(&ui, id, &cmds, &names_by_id(&st), now))
        }
        @if let Some(v) = &vars {
            section.variables id="variables" {
                h2 { "Stack variables" }
                p.muted { "This environment's own values: a stack that declares one of these names is deployed here \
                           with this value instead of its own, from the stack's next deploy." }
                @if v.env_hidden {
                    p { @for k in v.variables.keys() { code { (k) } " " } }
                } @else {
                    form method="post" action={ "/environments/" (id) "/variables" } id="env-variables" {
                        (super::csrf_field(&ui.csrf))
                        textarea name="variables" rows="4" aria-label="NAME=value, one a line" {
                            @for (k, value) in &v.variables { (k) "=" (value) "\n" }
                        }
                        button type="submit" id="save-variables" { "Save" }
                    }
                }
            }
        }
        @if let Some(w) = &window {
            section.window id="window" {
                h2 { "Deploy window" }
                p.muted { "When a stack's deploy may start here (a stack's own window applies too): HH:MM-HH:MM, \
                           then UTC or UTC+HH:MM. A deploy queued outside it waits for it. Empty: any time." }
                form method="post" action={ "/environments/" (id) "/window" } id="env-window" {
                    (super::csrf_field(&ui.csrf))
                    input type="text" name="window" value=(w.window) placeholder="01:00-05:00 UTC+02:00"
                        aria-label="Deploy window" autocomplete="off";
                    button type="submit" id="save-window" { "Save" }
                }
            }
        }
    };
    page(&ui, Nav::Environments, &name, body).into_response()
}

/// One tab's table, alone: what the page's script swaps in when the state
/// changes.
async fn part(ui: Ui, Path(id): Path<u64>, Query(q): Query<EnvQuery>) -> Response {
    let tab = tab_of(q.tab.as_deref());
    match ui.get_as::<EnvironmentStateView>(&format!("/api/environments/{id}/state")).await {
        Ok(r) => state_table(&ui, id, tab, &r.state).into_response(),
        Err(e) => (e.status, e.message).into_response(),
    }
}

/// The action buttons of one row: one form (one CSRF token, one target)
/// with a submit button per action; the button pressed names the action.
/// A destructive one asks first (`data-confirm`, read by ui.js).
fn actions(ui: &Ui, id: u64, tab: &str, target: &str, what: &str, acts: &[(&str, &str)]) -> Markup {
    html! {
        form.cmd method="post" action={ "/environments/" (id) "/commands" } {
            (csrf_field(&ui.csrf))
            input type="hidden" name="target" value=(target);
            input type="hidden" name="tab" value=(tab);
            @for (act, label) in acts {
                @let danger = act.ends_with(".remove") || *act == "container.kill";
                button.small.danger[danger] type="submit" name="action" value=(act)
                    aria-label={ (label) " " (what) } data-confirm=[danger.then(|| format!("{label} {what}?"))] { (label) }
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// How many rows a tab of the state has.
fn count(st: &StateView, tab: &str) -> usize {
    match tab {
        "containers" => st.containers.len(),
        "images" => st.images.len(),
        "volumes" => st.volumes.len(),
        "networks" => st.networks.len(),
        "stacks" => st.stacks.len(),
        _ => 0,
    }
}

fn state_table(ui: &Ui, id: u64, tab: &str, st: &StateView) -> Markup {
    // By name, as an operator looks for them (the state is ordered by id).
    let mut containers: Vec<&ContainerView> = st.containers.iter().collect();
    containers.sort_by_cached_key(|v| v.name.clone());
    let mut images: Vec<&ImageView> = st.images.iter().collect();
    images.sort_by_cached_key(|v| v.tags.first().cloned().unwrap_or_else(|| format!("~{}", v.id)));
    let mut volumes: Vec<&VolumeView> = st.volumes.iter().collect();
    volumes.sort_by_cached_key(|v| v.name.clone());
    let mut networks: Vec<&NetworkView> = st.networks.iter().collect();
    networks.sort_by_cached_key(|v| v.name.clone());
    let mut stacks: Vec<&StackStateView> = st.stacks.iter().collect();
    stacks.sort_by_cached_key(|v| v.name.clone());
    // An unknown tab shows the stacks, as before.
    let rows = match tab {
        "containers" | "images" | "volumes" | "networks" => count(st, tab),
        _ => stacks.len(),
    };
    if rows == 0 {
        return html! { p.muted { "None." } };
    }
    html! {
        div.scroll { table.list id={ "t-" (tab) } {
            @match tab {
                "containers" => {
                    thead { tr { th { "Name" } th { "State" } th { "Image" } th { "Ports" } th { "Actions" } } }
                    tbody { @for c in &containers {
                        @let name = c.name.as_str();
                        @let status = c.status.as_str();
                        tr data-name=(name) {
                            td { (name) br; span.muted.mono { (short(&c.id)) } }
                            td { span.state.(status) { (status) }
                                 @if let Some(h) = &c.health { " " span.state.(h) { (h) } } }
                            td { (c.image) }
                            td { @for p in &c.ports {
                                @if let Some(hp) = p.host_port { (hp) "→" }
                                (p.container_port) "/" (p.protocol) " " } }
                            td.actions {
                                @let acts: &[(&str, &str)] = match status {
                                    "running" => &[("container.stop", "Stop"), ("container.restart", "Restart"), ("container.pause", "Pause"),
                                        ("container.kill", "Kill"), ("container.logs", "Logs"), ("container.remove", "Remove")],
                                    "paused" => &[("container.unpause", "Resume"), ("container.logs", "Logs"), ("container.remove", "Remove")],
                                    _ => &[("container.start", "Start"), ("container.logs", "Logs"), ("container.remove", "Remove")],
                                };
                                (actions(ui, id, tab, name, name, acts))
                            }
                        }
                    } }
                }
                "images" => {
                    thead { tr { th { "Tags" } th { "Id" } th.num { "Size" } th { "Actions" } } }
                    tbody { @for i in &images {
                        @let tags = &i.tags;
                        @let reference = tags.first().map_or(i.id.as_str(), String::as_str);
                        tr {
                            td { @if tags.is_empty() { span.muted { "untagged" } } @for t in tags { (t) br; } }
                            td.mono { (short(i.id.trim_start_matches("sha256:"))) }
                            // The size as the page read it before (`as_u64`): a
                            // negative one (never sent) as 0.
                            td.num { (bytes(u64::try_from(i.size).unwrap_or_default())) }
                            td.actions {
                                @if tags.is_empty() {
                                    (actions(ui, id, tab, reference, reference, &[("image.remove", "Remove")]))
                                } @else {
                                    (actions(ui, id, tab, reference, reference, &[("image.pull", "Pull"), ("image.remove", "Remove")]))
                                }
                            }
                        }
                    } }
                }
                "volumes" => {
                    thead { tr { th { "Name" } th { "Driver" } th { "Actions" } } }
                    tbody { @for v in &volumes {
                        tr {
                            td.mono { (v.name) }
                            td { (v.driver) }
                            td.actions { (actions(ui, id, tab, &v.name, &v.name, &[("volume.remove", "Remove")])) }
                        }
                    } }
                }
                "networks" => {
                    thead { tr { th { "Name" } th { "Driver" } th { "Subnet" } th { "Actions" } } }
                    tbody { @for w in &networks {
                        tr {
                            td { (w.name) }
                            td { (w.driver) }
                            td { @for p in &w.ipam { (p.subnet) " " } }
                            td.actions {
                                @if !["bridge", "host", "none"].contains(&w.name.as_str()) {
                                    (actions(ui, id, tab, &w.name, &w.name, &[("network.remove", "Remove")]))
                                }
                            }
                        }
                    } }
                }
                _ => {
                    thead { tr { th { "Name" } th { "Services" } th { "Containers" } th { "Directory" } } }
                    tbody { @for k in &stacks {
                        tr {
                            td { (k.name) }
                            td { @for v in &k.services { (v) " " } }
                            td { (k.containers.len()) }
                            td.mono { (k.working_dir) }
                        }
                    } }
                }
            }
        } }
    }
}

/// Whether a command's status is final.
pub fn finished(status: &str) -> bool {
    matches!(status, "ok" | "failed" | "rejected" | "cancelled")
}

fn history(ui: &Ui, id: u64, rows: &[CommandView], names: &std::collections::HashMap<&str, &str>, now: i64) -> Markup {
    if rows.is_empty() {
        return html! { p.muted { "No command yet." } };
    }
    html! {
        div.scroll { table.list id="history" {
            thead { tr { th { "Queued" } th { "Command" } th { "Target" } th { "Status" } th { span.sr-only { "Cancel" } } } }
            tbody { @for c in rows.iter().take(50) {
                @let status = c.status.as_str();
                tr data-command-id=[(!finished(status)).then_some(c.id)] {
                    td { (when(Some(c.created_at), now)) }
                    td { a href={ "/environments/" (id) "/commands/" (c.id) } { (c.action) } }
                    td.mono { (names.get(c.target.as_str()).copied().unwrap_or_else(|| short_target(&c.target))) }
                    td.status { span.state.(status) { (status) } @if let Some(e) = &c.error { " " span.error { (e) } } }
                    td {
                        // Until the agent confirms it has it (a host that
                        // is offline for days): take it back.
                        @if matches!(status, "queued" | "sent") {
                            form method="post" action={ "/environments/" (id) "/commands/" (c.id) "/cancel" } {
                                (csrf_field(&ui.csrf))
                                button.small type="submit" aria-label={ "Cancel command " (c.id) } { "Cancel" }
                            }
                        }
                    }
                }
            } }
        } }
    }
}

/// Container and network names by id: commands store the id the API
/// resolved, the operator knows the name.
fn names_by_id(st: &StateView) -> std::collections::HashMap<&str, &str> {
    st.containers
        .iter()
        .map(|o| (o.id.as_str(), o.name.as_str()))
        .chain(st.networks.iter().map(|o| (o.id.as_str(), o.name.as_str())))
        .collect()
}

fn short_target(t: &str) -> &str {
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) { &t[..12] } else { t }
}

#[derive(Debug, Deserialize)]
struct CommandForm {
    csrf: String,
    action: String,
    target: String,
    tab: Option<String>,
}

/// Queues a command: JSON for the page's script, or back to the page.
async fn command(ui: Ui, Path(id): Path<u64>, headers: HeaderMap, axum::Form(f): axum::Form<CommandForm>) -> Response {
    let tail = (f.action == "container.logs").then_some(200);
    let body = CreateCommand { action: f.action, target: f.target, tail };
    let path = format!("/api/environments/{id}/commands");
    let result = ui.send_as(Method::POST, &path, &body, &f.csrf).await;
    if wants_json(&headers) {
        return match result {
            // The API's reply, passed on as it came.
            Ok(r) => (StatusCode::CREATED, axum::Json(r.json)).into_response(),
            Err(e) => (e.status, axum::Json(ErrorBody { error: e.message, field: None })).into_response(),
        };
    }
    match result {
        Ok(r) => {
            // 0, as before, should the reply not be a command.
            let cid = r.parse::<CommandView>(&path).map_or(0, |c| c.id);
            Redirect::to(&format!("/environments/{id}?tab={}&cmd={cid}", tab_of(f.tab.as_deref()))).into_response()
        }
        Err(e) => error_page(e.status, &e.message),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Cancels a command the agent has not confirmed yet.
async fn cancel(ui: Ui, Path((id, cid)): Path<(u64, u64)>, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    match ui.get_as::<CommandView>(&format!("/api/commands/{cid}")).await {
        Ok(c) if c.environment == id => {}
        Ok(_) => return error_page(StatusCode::NOT_FOUND, "No such command on this environment."),
        Err(e) => return super::fail_page(&e),
    }
    match ui.call(Method::DELETE, &format!("/api/commands/{cid}"), None, Some(&f.csrf)).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}#history")).into_response(),
        Err(e) => error_page(e.status, &e.message),
    }
}

/// One command, with its output.
async fn command_page(ui: Ui, Path((id, cid)): Path<(u64, u64)>) -> Response {
    let c = match ui.get_as::<CommandView>(&format!("/api/commands/{cid}")).await {
        Ok(c) if c.environment == id => c,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, "No such command on this environment."),
        Err(e) => return super::fail_page(&e),
    };
    let now = now();
    let status = c.status.as_str();
    let body = html! {
        h1 { "Command " (cid) }
        p { a href={ "/environments/" (id) } { "← Back to the environment" } }
        dl.host data-command-id=[(!finished(status)).then_some(cid)] {
            dt { "Command" } dd { (c.action) }
            dt { "Target" } dd.mono { (c.target) }
            dt { "Status" } dd.status { span.state.(status) { (status) } }
            @if let Some(e) = &c.error { dt { "Error" } dd.error { (e) } }
            dt { "Queued" } dd { (when(Some(c.created_at), now)) " (" (utc(c.created_at)) ")" }
            dt { "Delivered" } dd { (when(c.delivered_at, now)) }
            dt { "Finished" } dd { (when(c.finished_at, now)) }
        }
        @if let Some(o) = &c.output {
            h2 { "Output" }
            pre.output { (o) }
        }
    };
    page(&ui, Nav::Environments, &format!("Command {cid}"), body).into_response()
}

/// The stack variables form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct VariablesForm {
    csrf: String,
    variables: String,
}

async fn save_variables(
    ui: Ui,
    Path(id): Path<u64>,
    headers: axum::http::HeaderMap,
    axum::Form(f): axum::Form<VariablesForm>,
) -> Response {
    let mut map = std::collections::BTreeMap::new();
    for line in f.variables.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    put_section(&ui, &headers, id, "variables", &map, &f.csrf).await
}

/// PUTs one of the environment page's sections (`variables`, `window`)
/// to `/api/environments/{id}/{section}` and goes back to it.
async fn put_section(
    ui: &Ui,
    headers: &axum::http::HeaderMap,
    id: u64,
    section: &str,
    body: &impl serde::Serialize,
    csrf: &str,
) -> Response {
    let back = format!("/environments/{id}#{section}");
    match ui.send_as(axum::http::Method::PUT, &format!("/api/environments/{id}/{section}"), body, csrf).await {
        Ok(r) => super::stacks::done(headers, StatusCode::OK, r.json, &back),
        Err(e) => super::stacks::button_refused(ui, Nav::Environments, headers, &e, &back),
    }
}

/// The deploy window form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WindowForm {
    csrf: String,
    window: String,
}

async fn save_window(
    ui: Ui,
    Path(id): Path<u64>,
    headers: axum::http::HeaderMap,
    axum::Form(f): axum::Form<WindowForm>,
) -> Response {
    let body = crate::server::api::stacks::WindowBody { window: f.window.trim().to_owned() };
    put_section(&ui, &headers, id, "window", &body, &f.csrf).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;
    use crate::auth::Secret;
    use crate::server::store::access::secret_hash;
    use crate::server::store::fleet::{FleetOptions, NewEnvironment, Ref};
    use crate::server::store::prelude::*;
    use crate::server::store::usage::Usage;
    use crate::server::store::{IntervalSettings, Store};
    use crate::wire::codec::Limits;

    const COOKIE: &str = "tern_session=test-session";

    /// A router over an in-memory store with `n` environments (the first
    /// page's with 30 days of usage), and a session cookie for it.
    fn fleet(n: u64) -> Router {
        let store_db = Store::scratch().unwrap();
        let store = store_db.autocommit();
        let now = now();
        store.create_user("admin", "$argon2id$unused", crate::server::store::access::Role::Admin, now).unwrap();
        let user = store.user("admin").unwrap().unwrap();
        store.create_session(&secret_hash("test-session"), user.id, "csrf-1", now, now + 3600).unwrap();
        store.create_group("north").unwrap();
        for i in 0..n {
            let id = store
                .create_fleet_environment(
                    &NewEnvironment {
                        name: format!("site-{i:04}"),
                        secret: Secret([1; 32]),
                        intervals: IntervalSettings::default(),
                        group: (i % 2 == 0).then(|| Ref::Name("north".into())),
                        tags: if i % 10 == 0 { vec![Ref::Name("solar".into())] } else { vec![] },
                        options: FleetOptions {
                            url: "https://ops.example.com".into(),
                            env_vars: vec![],
                            allow_self_signed: false,
                            volume_path: None,
                            deploy_edge_id: None,
                            tcp_timestamps: false,
                        },
                    },
                    now,
                )
                .unwrap();
            if i < PAGE {
                for day in 0..30 {
                    let usage = Usage { tls_up: 1000, tls_down: 500, body_up: 10, body_down: 5, polls: 1 };
                    store.record_usage(id, now - day * 86_400, &usage).unwrap();
                }
            }
        }
        drop(store);
        let state = AppState::new(store_db, Limits::default(), "token", [7; 32]).unwrap();
        crate::server::http::router(state)
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder().uri(path).header("cookie", COOKIE).body(Body::empty()).unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_list_pages_5000_environments_quickly_with_their_usage() {
        let router = fleet(5000);
        let start = std::time::Instant::now();
        let (status, html) = get(&router, "/environments").await;
        let first = start.elapsed();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(html.matches("<tr data-env=").count(), 100);
        assert!(html.contains("Showing 1–100 of 5000"), "{html}");
        assert!(html.contains("Page 1 of 50"));
        // Today's 1.5 kB, and 30 days of it: 45 kB.
        assert!(html.contains("<td class=\"num\">1.5 kB</td><td class=\"num\">45.0 kB</td>"), "{html}");
        let start = std::time::Instant::now();
        let (status, html) =
            get(&router, "/environments?name=site-49&group=north&tag=solar&status=offline&page=1").await;
        let filtered = start.elapsed();
        assert_eq!(status, StatusCode::OK);
        // Even, a multiple of 10, named site-49x0.
        assert_eq!(html.matches("<tr data-env=").count(), 10, "{html}");
        let (_, last) = get(&router, "/environments?page=50").await;
        assert!(last.contains("site-4999") && last.contains("rel=\"prev\"") && !last.contains("rel=\"next\""));
        println!("5,000 environments: the first page in {first:?}, a filtered one in {filtered:?}");
        // A debug build, on a 2-core machine: generous bounds, catching a
        // per-environment query (seconds), not jitter.
        assert!(first.as_millis() < 2000 && filtered.as_millis() < 2000, "{first:?} {filtered:?}");
    }

    #[tokio::test]
    async fn pages_send_a_browser_without_a_session_to_login_and_carry_the_csp() {
        let router = fleet(1);
        let req = axum::http::Request::builder().uri("/environments/1?tab=images").body(Body::empty()).unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()["location"], "/login?next=%2Fenvironments%2F1%3Ftab%3Dimages");
        assert_eq!(resp.headers()["content-security-policy"], super::super::CSP);
        let (status, html) = get(&router, "/environments/1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("No snapshot yet"));
        assert!(html.contains("data-csrf=\"csrf-1\""));
        // Nothing inline for the CSP to refuse: scripts come by src, no
        // event handler attribute, no style attribute.
        assert!(html.split("<script").skip(1).all(|t| t.starts_with(" src=")), "{html}");
        let attrs = html.split(' ').filter(|w| {
            w.starts_with("on") && w.split_once('=').is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase()))
        });
        assert_eq!(attrs.count(), 0, "{html}");
        assert!(!html.contains(" style="), "{html}");
    }

    async fn post(router: &Router, path: &str, form: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri(path)
            .header("cookie", COOKIE)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_error_about_all_the_intervals_shows_above_them_in_the_wizard_and_the_edit_page() {
        let router = fleet(1);
        let off = "ping=0&snapshot=0&command=0";
        let (status, html) =
            post(&router, "/environments/new", &format!("csrf=csrf-1&name=x&url=https%3A%2F%2Fops.example.com&{off}"))
                .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(html.contains("role=\"alert\"") && html.contains("at least one must be above 0"), "{html}");
        let (status, html) = post(&router, "/environments/1/intervals", &format!("csrf=csrf-1&{off}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(html.contains("role=\"alert\"") && html.contains("at least one must be above 0"), "{html}");
        // A taken name is shown by the name field.
        let (status, html) =
            post(&router, "/environments/new", "csrf=csrf-1&name=site-0000&url=https%3A%2F%2Fops.example.com").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(html.contains("id=\"f-name-error\""), "{html}");
    }

    #[tokio::test]
    async fn a_queued_command_can_be_cancelled_from_the_history() {
        let router = fleet(1);
        let (status, _) =
            post(&router, "/environments/1/commands", "csrf=csrf-1&action=image.pull&target=busybox%3Alatest").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, html) = get(&router, "/environments/1").await;
        assert!(html.contains("/environments/1/commands/1/cancel") && html.contains(">queued<"), "{html}");
        let (status, _) = post(&router, "/environments/1/commands/1/cancel", "csrf=wrong").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = post(&router, "/environments/1/commands/1/cancel", "csrf=csrf-1").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, html) = get(&router, "/environments/1").await;
        assert!(html.contains(">cancelled<") && !html.contains("/commands/1/cancel"), "{html}");
    }

    #[tokio::test]
    async fn an_unchanged_part_costs_a_304_and_a_page_far_past_the_end_is_just_empty() {
        let router = fleet(1);
        let req = |etag: Option<&str>| {
            let mut r = axum::http::Request::builder().uri("/environments/1/part?tab=images").header("cookie", COOKIE);
            if let Some(t) = etag {
                r = r.header("if-none-match", t);
            }
            r.body(Body::empty()).unwrap()
        };
        let first = router.clone().oneshot(req(None)).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let again = router.clone().oneshot(req(Some(&etag))).await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(axum::body::to_bytes(again.into_body(), 1024).await.unwrap().is_empty());
        let other = router.clone().oneshot(req(Some("W/\"other\""))).await.unwrap();
        assert_eq!(other.status(), StatusCode::OK);
        let (status, html) = get(&router, "/environments?page=200000000000000000").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(html.matches("<tr data-env=").count(), 0);
    }

    #[tokio::test]
    async fn pages_and_assets_go_gzipped_to_a_browser_that_asks() {
        let router = fleet(300);
        let fetch = |path: String, gzip: bool| {
            let router = router.clone();
            async move {
                let mut req = axum::http::Request::builder().uri(path).header("cookie", COOKIE);
                if gzip {
                    req = req.header("accept-encoding", "gzip");
                }
                let resp = router.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let enc = resp.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
                (enc, axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap().len())
            }
        };
        for path in
            ["/environments".to_owned(), super::super::css_path().to_owned(), super::super::js_path().to_owned()]
        {
            let (plain_enc, plain) = fetch(path.clone(), false).await;
            let (enc, gz) = fetch(path.clone(), true).await;
            assert_eq!((plain_enc, enc.as_deref()), (None, Some("gzip")), "{path}");
            println!("{path}: {plain} B, {gz} B gzip'd");
            assert!(gz * 3 < plain, "{path}: {gz} of {plain}");
        }
    }

    #[tokio::test]
    async fn a_command_form_with_a_wrong_csrf_token_is_refused_and_queues_nothing() {
        let router = fleet(1);
        let post = |csrf: &str, origin: &str| {
            axum::http::Request::builder()
                .method("POST")
                .uri("/environments/1/commands")
                .header("cookie", COOKIE)
                .header("host", "ops.example.com")
                .header("origin", origin.to_owned())
                .header("accept", "application/json")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}&action=image.pull&target=busybox%3Alatest")))
                .unwrap()
        };
        let resp = router.clone().oneshot(post("wrong", "https://ops.example.com")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let resp = router.clone().oneshot(post("csrf-1", "https://evil.example.net")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "another site's form");
        let (_, html) = get(&router, "/environments/1").await;
        assert!(html.contains("No command yet."));
        let resp = router.clone().oneshot(post("csrf-1", "https://ops.example.com")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let (_, html) = get(&router, "/environments/1").await;
        assert!(html.contains("image.pull") && html.contains("busybox:latest"), "{html}");
    }
}
