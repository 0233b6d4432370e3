//! The add environment wizard, as the seed describes it: name and server
//! URL; "More settings" with the three intervals, group and tags; Create;
//! then the join token for pre-staging, the environment variables and
//! "Allow self-signed certs", and the generated command for Linux and
//! Windows with a copy button; "Add another environment" and Close.
//!
//! The second step is an environment's deploy page
//! (`/environments/{id}/deploy`), so an operator can come back to the
//! command of any environment later, and change its options there.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::html;
use serde::Deserialize;

use super::settings::{IntervalChoices, IntervalOpts, interval_picker, timer};
use super::{ApiFail, FieldAttrs, Nav, Ui, csrf_field, form_error, label_names, page, text_field};
use crate::server::api::types::{
    CreateEnvironment, CreatedEnvironment, EnvVars, EnvironmentFull, IntervalsBody, NameOrId, SettingsView,
    UpdateEnvironment,
};
use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/environments/new", get(new_page).post(create))
        .route("/environments/{id}/deploy", get(deploy_page).post(update_options))
}

/// What the create form holds (kept when the API refuses it).
#[derive(Debug, Default, Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
    #[serde(flatten)]
    intervals: IntervalChoices,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tags: String,
}

/// The server's URL as the browser reached it: what an edge host most
/// likely reaches too (the operator corrects it when not).
fn default_url(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).map_or_else(String::new, |h| format!("https://{h}"))
}

async fn new_page(ui: Ui, headers: HeaderMap) -> Response {
    let form = CreateForm { url: default_url(&headers), ..CreateForm::default() };
    render_new(&ui, &form, None, StatusCode::OK).await
}

async fn render_new(ui: &Ui, f: &CreateForm, err: Option<&ApiFail>, status: StatusCode) -> Response {
    let (groups, settings) = tokio::join!(label_names(ui, "/api/groups"), ui.get_as::<SettingsView>("/api/settings"));
    let defaults = settings.ok().map(|s| s.intervals);
    // "More settings" opens by itself when one of its fields needs fixing.
    let more_open = err.is_some_and(|e| ["intervals", "group", "tags"].iter().any(|f| e.for_field(f).is_some()))
        || !f.group.is_empty()
        || !f.tags.is_empty()
        || f.intervals.any_set();
    let pick = |name: &str, label: &str| {
        let (choice, custom) = f.intervals.get(name);
        let opts = IntervalOpts {
            offer_default: true,
            default_seconds: defaults.as_ref().map(|d| timer(d, name)),
            hint: None,
        };
        interval_picker(name, label, choice, custom, &opts, err)
    };
    let body = html! {
        h1 { "Add environment" }
        p.muted { "An edge agent polls this server over HTTPS; the host needs no inbound port." }
        form.form-narrow method="post" action="/environments/new" novalidate {
            (csrf_field(&ui.csrf))
            // A bare "intervals" error (all three disabled) shows here.
            (form_error(err, &["name", "url", "intervals.ping", "intervals.snapshot", "intervals.command", "group", "tags"]))
            (text_field("name", "Name", &f.name, err, FieldAttrs { required: true, placeholder: Some("ship-12"), ..FieldAttrs::default() }))
            (text_field("url", "Server URL", &f.url, err, FieldAttrs {
                kind: "url",
                required: true,
                hint: Some("The URL and port of this server as the edge host sees it: https://host:port."),
                ..FieldAttrs::default()
            }))
            details id="more-settings" open[more_open] {
                summary { "More settings" }
                p.hint { "How often the agent checks in (ping), sends its state (snapshot) and asks for commands. \
                    The defaults are in Settings; any one may be disabled, not all three." }
                (pick("ping", "Ping interval"))
                (pick("snapshot", "Snapshot interval"))
                (pick("command", "Command interval"))
                div.field {
                    label for="f-group" { "Group" }
                    select id="f-group" name="group" aria-invalid=[err.and_then(|e| e.for_field("group")).map(|_| "true")] {
                        option value="" selected[f.group.is_empty()] { "No group" }
                        @for g in &groups { option value=(g) selected[*g == f.group] { (g) } }
                    }
                    @if let Some(m) = err.and_then(|e| e.for_field("group")) { p.field-error id="f-group-error" role="alert" { (m) } }
                }
                (text_field("tags", "Tags", &f.tags, err, FieldAttrs {
                    hint: Some("Comma-separated; new tags are created."),
                    ..FieldAttrs::default()
                }))
            }
            button.primary id="create" type="submit" { "Create" }
            " "
            a.button href="/environments" { "Cancel" }
        }
    };
    (status, page(ui, Nav::Environments, "Add environment", body)).into_response()
}

/// The intervals the form sets (`None`: the default).
fn intervals_of(f: &CreateForm) -> Result<IntervalsBody, ApiFail> {
    let [(_, ping), (_, snapshot), (_, command)] = f.intervals.parse()?;
    Ok(IntervalsBody { ping, snapshot, command })
}

async fn create(ui: Ui, axum::Form(f): axum::Form<CreateForm>) -> Response {
    let intervals = match intervals_of(&f) {
        Ok(v) => v,
        Err(e) => return render_new(&ui, &f, Some(&e), e.status).await,
    };
    let tags = f.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| NameOrId::Name(t.to_owned()));
    let body = CreateEnvironment {
        name: f.name.clone(),
        url: f.url.trim().to_owned(),
        intervals: Some(intervals),
        group: (!f.group.is_empty()).then(|| NameOrId::Name(f.group.clone())),
        tags: tags.collect(),
        ..CreateEnvironment::default()
    };
    let created = match ui.send_as(Method::POST, "/api/environments", &body, &f.csrf).await {
        Ok(r) => r.parse::<CreatedEnvironment>("/api/environments"),
        Err(e) => Err(e),
    };
    match created {
        Ok(env) => Redirect::to(&format!("/environments/{}/deploy?created=1", env.id)).into_response(),
        Err(e) => {
            let e = e.conflict_on("name");
            render_new(&ui, &f, Some(&e), e.status).await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeployQuery {
    created: Option<u8>,
    updated: Option<u8>,
    rotated: Option<u8>,
}

async fn deploy_page(
    ui: Ui,
    Path(id): Path<u64>,
    axum::extract::Query(q): axum::extract::Query<DeployQuery>,
) -> Response {
    let notice = if q.rotated.is_some() {
        Some(
            "The secret was rotated: the old join token no longer works. Redeploy the agent with the command below \
             (its EDGE_ID and state are kept).",
        )
    } else {
        q.updated.map(|_| "The command below now carries your changes.")
    };
    render_deploy(&ui, id, q.created.is_some(), notice, None, None).await
}

/// The deploy options form as it was sent (kept when refused).
#[derive(Debug, Default, Deserialize)]
struct OptionsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    env_vars: String,
    allow_self_signed: Option<String>,
    #[serde(default)]
    volume_path: String,
    tcp_timestamps: Option<String>,
}

async fn render_deploy(
    ui: &Ui,
    id: u64,
    created: bool,
    notice: Option<&str>,
    sent: Option<&OptionsForm>,
    err: Option<&ApiFail>,
) -> Response {
    let paths =
        [format!("/api/environments/{id}"), format!("/api/environments/{id}/deploy"), "/api/settings".to_owned()];
    let (env, deploy, settings) = tokio::join!(
        ui.get_as::<EnvironmentFull>(&paths[0]),
        ui.get_as::<CreatedEnvironment>(&paths[1]),
        ui.get_as::<SettingsView>(&paths[2])
    );
    let env = match env {
        Ok(env) => env,
        Err(e) => return super::fail_page(&e),
    };
    let deploy = match deploy {
        Ok(d) => d,
        Err(e) => return super::fail_page(&e),
    };
    let secret_set = settings.is_ok_and(|s| s.agent_secret_set);
    let env_vars = sent.map_or_else(|| env.env_vars.join(", "), |f| f.env_vars.clone());
    let self_signed = sent.map_or(env.allow_self_signed, |f| f.allow_self_signed.is_some());
    let volume_path = sent.map_or_else(|| env.volume_path.clone().unwrap_or_default(), |f| f.volume_path.clone());
    let timestamps = sent.map_or(env.tcp_timestamps, |f| f.tcp_timestamps.is_some());
    let name = env.item.name.clone();
    let body = html! {
        h1 { @if created { "Environment created: " } @else { "Deploy: " } (name) }
        @if created { p.notice role="status" { "Created. Run the command below on the edge host, or pre-stage the join token." } }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        section {
            h2 { "Join token" }
            p.hint { "For pre-staging: the agent needs only this (as EDGE_KEY) to find, trust and join this server." }
            div.copyrow {
                pre.command id="join-token" { (deploy.edge_key) }
                button type="button" data-copy="join-token" hidden { "Copy" }
            }
        }
        section {
            h2 { "Agent options" }
            form.form-narrow method="post" action={ "/environments/" (id) "/deploy" } {
                (csrf_field(&ui.csrf))
                (form_error(err, &["env_vars", "allow_self_signed", "volume_path", "tcp_timestamps"]))
                (text_field("env_vars", "Environment variables", &env_vars, err, FieldAttrs {
                    hint: Some("Comma-separated names of host variables passed to the agent (it uses HTTPS_PROXY, HTTP_PROXY and NO_PROXY itself) and offered to its stacks, e.g. HTTP_PROXY, HTTPS_PROXY."),
                    ..FieldAttrs::default()
                }))
                div.check {
                    input id="f-allow_self_signed" name="allow_self_signed" type="checkbox" value="1" checked[self_signed];
                    label for="f-allow_self_signed" { "Allow self-signed certs" }
                }
                p.hint { "Adds EDGE_INSECURE_POLL=1. The join token already pins this server's certificate, so the agent trusts it either way." }
                (text_field("volume_path", "Docker volume path", &volume_path, err, FieldAttrs {
                    placeholder: Some("/var/lib/docker/volumes"),
                    hint: Some("Only when the host keeps Docker volumes somewhere else."),
                    ..FieldAttrs::default()
                }))
                div.check {
                    input id="f-tcp_timestamps" name="tcp_timestamps" type="checkbox" value="1" checked[timestamps];
                    label for="f-tcp_timestamps" { "Keep TCP timestamps" }
                }
                p.hint { "By default the Linux command turns them off in the agent's container (--sysctl net.ipv4.tcp_timestamps=0): 12 bytes less in every packet, about a tenth of an idle poll. Check this for hosts on Linux before 4.15, where Docker refuses that option, and for links with round trips over a second (geostationary satellite), where a new connection then costs more than it saves." }
                button id="update-command" type="submit" { "Update the command" }
            }
        }
        section {
            h2 { "Command" }
            @if secret_set { p.warning { "This server requires an AGENT_SECRET. The command passes it as " code { "-e AGENT_SECRET" } " without its value, so docker takes it from the shell that runs it: set it there first (" code { "export AGENT_SECRET=..." } " on Linux, " code { "$env:AGENT_SECRET = '...'" } " in PowerShell), with the secret set in Settings." } }
            div role="tablist" aria-label="Platform" {
                button type="button" role="tab" id="tab-linux" aria-controls="panel-linux" aria-selected="true" { "Linux" }
                button type="button" role="tab" id="tab-windows" aria-controls="panel-windows" aria-selected="false" tabindex="-1" { "Windows" }
            }
            div role="tabpanel" id="panel-linux" aria-labelledby="tab-linux" {
                div.copyrow {
                    pre.command id="cmd-linux" { (deploy.commands.linux) }
                    button type="button" data-copy="cmd-linux" hidden { "Copy" }
                }
            }
            div role="tabpanel" id="panel-windows" aria-labelledby="tab-windows" {
                div.copyrow {
                    pre.command id="cmd-windows" { (deploy.commands.windows) }
                    button type="button" data-copy="cmd-windows" hidden { "Copy" }
                }
            }
        }
        p {
            a.button id="add-another" href="/environments/new" { "Add another environment" }
            " "
            a.button.primary id="close" href={ "/environments/" (id) } { "Close" }
        }
    };
    page(ui, Nav::Environments, &format!("Deploy {name}"), body).into_response()
}

async fn update_options(ui: Ui, Path(id): Path<u64>, axum::Form(f): axum::Form<OptionsForm>) -> Response {
    let path = f.volume_path.trim();
    let body = UpdateEnvironment {
        // As the API reads the comma-separated text the form holds.
        env_vars: Some(EnvVars(f.env_vars.split(',').map(str::to_owned).collect())),
        allow_self_signed: Some(f.allow_self_signed.is_some()),
        volume_path: Some((!path.is_empty()).then(|| path.to_owned())),
        tcp_timestamps: Some(f.tcp_timestamps.is_some()),
        ..UpdateEnvironment::default()
    };
    match ui.send_as(Method::PATCH, &format!("/api/environments/{id}"), &body, &f.csrf).await {
        Ok(_) => Redirect::to(&format!("/environments/{id}/deploy?updated=1")).into_response(),
        Err(e) => {
            let mut r = render_deploy(&ui, id, false, None, Some(&f), Some(&e)).await;
            *r.status_mut() = e.status;
            r
        }
    }
}
