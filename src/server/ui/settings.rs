//! The settings page: the edge compute default intervals, the
//! AGENT_SECRET, groups, tags, private registries, API tokens and the
//! admin password.
//!
//! One page, `/settings`, in sections; each section's forms post to their
//! own route, which calls the API (as every UI form does, through [`Ui`])
//! and then either sends the browser back to the section with a notice
//! (`303 /settings?done=<what>#<section>`), or shows the page again with
//! the API's status and its error next to the field it names, keeping
//! what was typed (never a password or a secret). A new API token is the
//! one exception: its secret is shown on the answer to the form that made
//! it, once, and nowhere else.
//!
//! | route | API |
//! |---|---|
//! | `POST /settings/intervals` | `PUT /api/settings` `{intervals}` |
//! | `POST /settings/agent-secret`, `.../agent-secret/clear` | `PUT /api/settings` `{agent_secret}` |
//! | `POST /settings/groups`, `.../groups/{id}/rename`, `.../groups/{id}/delete` | `POST /api/groups`, `PATCH`/`DELETE /api/groups/{id}` |
//! | `POST /settings/tags`, `.../tags/{id}/rename`, `.../tags/{id}/delete` | the same on `/api/tags` |
//! | `POST /settings/registries`, `.../registries/{id}/password`, `.../registries/{id}/delete` | `POST /api/registries`, `PATCH`/`DELETE /api/registries/{id}` |
//! | `POST /settings/tokens`, `.../tokens/{id}/revoke` | `POST /api/tokens`, `DELETE /api/tokens/{id}` |
//! | `POST /settings/password` | `PUT /api/auth/password` |
//!
//! The interval picker ([`interval_field`], [`interval_field_or_default`],
//! [`interval_picker`]) and [`parse_interval`] are shared with the add
//! environment wizard, whose per-environment intervals add a "Default"
//! choice (follow the server's default).

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use serde::Deserialize;

use super::{ApiFail, FieldAttrs, Nav, Ui, csrf_field, encode, fail_page, form_error, now, page, text_field, when};
use crate::server::api::MAX_INTERVAL;
use crate::server::api::types::{
    ChangePassword, CreateRegistry, CreateToken, CreatedToken, DefaultIntervalsBody, IntervalsBody, IntervalsView,
    LabelBody, LabelView, RegistryView, SettingsBody, SettingsView, TokenView, UpdateRegistry,
};
use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/settings", get(show))
        .route("/settings/intervals", post(save_intervals))
        .route("/settings/agent-secret", post(set_secret))
        .route("/settings/agent-secret/clear", post(clear_secret))
        .route("/settings/groups", post(|ui: Ui, Form(f): Form<NameForm>| create_label(ui, GROUPS, f)))
        .route(
            "/settings/groups/{id}/rename",
            post(|ui: Ui, Path(id): Path<u64>, Form(f): Form<NameForm>| rename_label(ui, GROUPS, id, f)),
        )
        .route(
            "/settings/groups/{id}/delete",
            post(|ui: Ui, Path(id): Path<u64>, Form(f): Form<CsrfForm>| delete_label(ui, GROUPS, id, f)),
        )
        .route("/settings/tags", post(|ui: Ui, Form(f): Form<NameForm>| create_label(ui, TAGS, f)))
        .route(
            "/settings/tags/{id}/rename",
            post(|ui: Ui, Path(id): Path<u64>, Form(f): Form<NameForm>| rename_label(ui, TAGS, id, f)),
        )
        .route(
            "/settings/tags/{id}/delete",
            post(|ui: Ui, Path(id): Path<u64>, Form(f): Form<CsrfForm>| delete_label(ui, TAGS, id, f)),
        )
        .route("/settings/registries", post(add_registry))
        .route("/settings/registries/{id}/password", post(set_registry_password))
        .route("/settings/registries/{id}/delete", post(remove_registry))
        .route("/settings/tokens", post(create_token))
        .route("/settings/tokens/{id}/revoke", post(revoke_token))
        .route("/settings/password", post(change_password))
}

// ----- the interval picker (shared with the wizard) -----

/// The choice that follows the server's default (offered only by
/// [`interval_field_or_default`], or [`IntervalOpts::offer_default`]).
pub const INTERVAL_DEFAULT: &str = "default";

/// The choice whose seconds are typed in the custom input.
pub const INTERVAL_CUSTOM: &str = "custom";

/// The preset choices: their seconds (the `<option>` value) and label.
pub const INTERVAL_PRESETS: &[(u32, &str)] =
    &[(0, "Disabled"), (60, "1 minute"), (3600, "1 hour"), (86_400, "1 day"), (604_800, "1 week")];

/// How [`interval_picker`] draws its field.
#[derive(Debug, Clone, Default)]
pub struct IntervalOpts {
    /// Offer "Default" first (the value [`INTERVAL_DEFAULT`], which
    /// [`parse_interval`] reads as `None`: follow the server's default).
    pub offer_default: bool,
    /// The server's default for this timer, shown as "Default (1 minute)".
    pub default_seconds: Option<u32>,
    /// A hint under the field.
    pub hint: Option<String>,
}

/// An interval in words: "disabled", "1 minute", "90 seconds", "2 days".
pub fn interval_text(seconds: u32) -> String {
    let (n, unit) = match seconds {
        0 => return "disabled".to_owned(),
        s if s % 86_400 == 0 => (s / 86_400, "day"),
        s if s % 3600 == 0 => (s / 3600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The choice and custom text that show `seconds`: a preset when one
/// matches (its seconds in the custom box, ready to edit; none for
/// Disabled), else [`INTERVAL_CUSTOM`] with the seconds. `None` is
/// [`INTERVAL_DEFAULT`] when `offer_default`, else "custom" with an empty
/// box (nothing chosen yet).
pub fn interval_choice(seconds: Option<u32>, offer_default: bool) -> (String, String) {
    match seconds {
        None if offer_default => (INTERVAL_DEFAULT.to_owned(), String::new()),
        None => (INTERVAL_CUSTOM.to_owned(), String::new()),
        Some(0) => ("0".to_owned(), String::new()),
        Some(v) if INTERVAL_PRESETS.iter().any(|(p, _)| *p == v) => (v.to_string(), v.to_string()),
        Some(v) => (INTERVAL_CUSTOM.to_owned(), v.to_string()),
    }
}

/// A labelled interval select (`#f-<name>`, form field `<name>`) with
/// Disabled, 1 minute, 1 hour, 1 day, 1 week and Custom, and its custom
/// seconds input (`#f-<name>_custom`, form field `<name>_custom`). The
/// page's script shows the custom input only while "Custom" is chosen;
/// without a script it is always shown, and ignored unless "Custom" is
/// chosen. `seconds: None` means nothing chosen yet (Custom, empty): the
/// server's defaults always have a value. For an environment's own
/// interval, where `None` follows the default, use
/// [`interval_field_or_default`].
///
/// `err` is shown when it names `intervals.<name>`, `<name>` or
/// `<name>_custom` (see [`interval_fail`]).
pub fn interval_field(name: &str, label: &str, seconds: Option<u32>, err: Option<&ApiFail>) -> Markup {
    let (choice, custom) = interval_choice(seconds, false);
    interval_picker(name, label, &choice, &custom, &IntervalOpts::default(), err)
}

/// [`interval_field`] with "Default" as the first choice, selected when
/// `seconds` is `None` (the environment follows the server's default,
/// `default_seconds` when known, shown in the option's label).
pub fn interval_field_or_default(
    name: &str,
    label: &str,
    seconds: Option<u32>,
    default_seconds: Option<u32>,
    err: Option<&ApiFail>,
) -> Markup {
    let (choice, custom) = interval_choice(seconds, true);
    let opts = IntervalOpts { offer_default: true, default_seconds, hint: None };
    interval_picker(name, label, &choice, &custom, &opts, err)
}

/// The interval picker drawn from the form's own values (a choice and the
/// custom text as the operator sent them), to show a refused form again
/// as it was typed. An empty `choice` is "Default" when it is offered.
pub fn interval_picker(
    name: &str,
    label: &str,
    choice: &str,
    custom: &str,
    opts: &IntervalOpts,
    err: Option<&ApiFail>,
) -> Markup {
    let id = format!("f-{name}");
    let custom_id = format!("f-{name}_custom");
    let err_id = format!("{id}-error");
    let hint_id = format!("{id}-hint");
    let message = err.and_then(|e| {
        e.for_field(&format!("intervals.{name}"))
            .or_else(|| e.for_field(name))
            .or_else(|| e.for_field(&format!("{name}_custom")))
    });
    let choice = if choice.is_empty() && opts.offer_default { INTERVAL_DEFAULT } else { choice };
    let described: Vec<&str> = [message.map(|_| err_id.as_str()), opts.hint.as_ref().map(|_| hint_id.as_str())]
        .into_iter()
        .flatten()
        .collect();
    let described = (!described.is_empty()).then(|| described.join(" "));
    let invalid = message.map(|_| "true");
    html! {
        div.field.interval {
            label for=(id) { (label) }
            div.interval-pick {
                select id=(id) name=(name) data-custom=(custom_id) aria-invalid=[invalid]
                    aria-describedby=[described.as_deref()] {
                    @if opts.offer_default {
                        option value=(INTERVAL_DEFAULT) selected[choice == INTERVAL_DEFAULT] {
                            "Default"
                            @if let Some(d) = opts.default_seconds { " (" (interval_text(d)) ")" }
                        }
                    }
                    @for (v, l) in INTERVAL_PRESETS {
                        option value=(v) selected[choice == v.to_string()] { (l) }
                    }
                    option value=(INTERVAL_CUSTOM) selected[choice == INTERVAL_CUSTOM] { "Custom" }
                }
                label.sub for=(custom_id) { "Custom, in seconds" }
                // Text, not `number`: a browser empties a number input it
                // cannot parse (the refused value would vanish), and a
                // hidden input with a bound it breaks blocks the form.
                input.seconds id=(custom_id) name={ (name) "_custom" } type="text" inputmode="numeric"
                    autocomplete="off" size="8" value=(custom)
                    aria-invalid=[invalid.filter(|_| choice == INTERVAL_CUSTOM)]
                    aria-describedby=[message.map(|_| err_id.as_str())];
            }
            @if let Some(m) = message { p.field-error id=(err_id) role="alert" { (m) } }
            @if let Some(h) = &opts.hint { p.hint id=(hint_id) { (h) } }
        }
    }
}

/// The seconds an interval picker's choice means: `Ok(None)` for
/// [`INTERVAL_DEFAULT`] (or an empty choice): follow the server's default;
/// `Ok(Some(0))` for Disabled; a preset's seconds; or, for
/// [`INTERVAL_CUSTOM`], the whole number of seconds typed in `custom`
/// (1 to a week). A caller that offers no "Default" (the server's own
/// defaults) refuses `Ok(None)` itself.
///
/// # Errors
/// What is wrong, in words for the operator: a custom value that is not a
/// whole number of seconds in range, or a choice the picker never offers.
pub fn parse_interval(choice: &str, custom: &str) -> Result<Option<u32>, String> {
    match choice.trim() {
        "" | INTERVAL_DEFAULT => Ok(None),
        INTERVAL_CUSTOM => {
            let text = custom.trim();
            if text.is_empty() {
                return Err("type the custom interval, in seconds".to_owned());
            }
            match text.parse::<u64>() {
                Ok(v) if (1..=u64::from(MAX_INTERVAL)).contains(&v) => Ok(u32::try_from(v).ok()),
                Ok(_) => {
                    Err(format!("a custom interval is 1 to {MAX_INTERVAL} seconds (a week); choose Disabled for none"))
                }
                Err(_) => Err(format!("{text:?} is not a whole number of seconds")),
            }
        }
        c => INTERVAL_PRESETS
            .iter()
            .find(|(v, _)| v.to_string() == c)
            .map(|(v, _)| Some(*v))
            .ok_or_else(|| format!("{c:?} is not one of the choices")),
    }
}

/// A refusal of the interval picker `name` (what [`parse_interval`] said),
/// as an [`ApiFail`] that the picker shows next to itself.
pub fn interval_fail(name: &str, message: impl Into<String>) -> ApiFail {
    ApiFail {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: message.into(),
        field: Some(format!("intervals.{name}")),
    }
}

/// The three timers: form field name, label, what it does.
const TIMERS: &[(&str, &str, &str)] = &[
    ("ping", "Heartbeat (ping)", "how often the agent says it is alive; the online status follows it"),
    ("snapshot", "State snapshot", "how often the agent sends what changed on its host"),
    ("command", "Command check", "how often the agent asks for queued commands"),
];

// ----- the page -----

/// Which form a refusal belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Intervals,
    Secret,
    /// A section's create form (`groups`, `tags`, `tokens`).
    New(&'static str),
    /// A row's form in a section's list.
    Row(&'static str, u64),
    Password,
}

/// What the page shows besides the API's data.
#[derive(Debug, Default)]
struct View {
    /// The `?done=` flag of a form that succeeded.
    done: Option<String>,
    /// A refused form, and why.
    fail: Option<(Part, ApiFail)>,
    /// The intervals as typed, when their form was refused.
    intervals: Option<IntervalsForm>,
    /// The name typed in the refused form.
    typed: String,
    /// A token just made, with its secret.
    new_token: Option<CreatedToken>,
    /// The registry as typed in the refused "Add a registry" form (never
    /// its password).
    registry: Option<RegistryTyped>,
}

impl View {
    fn err(&self, part: Part) -> Option<&ApiFail> {
        self.fail.as_ref().filter(|(p, _)| *p == part).map(|(_, e)| e)
    }

    /// The refusal of a row of `section` that the list no longer holds
    /// (deleted meanwhile, or an unknown id): shown above the list.
    fn orphan(&self, section: &str, mut ids: impl Iterator<Item = u64>) -> Option<&ApiFail> {
        match &self.fail {
            Some((Part::Row(s, id), e)) if *s == section && !ids.any(|i| i == *id) => Some(e),
            _ => None,
        }
    }
}

/// The API's data the page shows.
struct Data {
    settings: SettingsView,
    groups: Vec<LabelView>,
    tags: Vec<LabelView>,
    registries: Vec<RegistryView>,
    tokens: Vec<TokenView>,
}

async fn load(ui: &Ui) -> Result<Data, Response> {
    let (settings, groups, tags, registries, tokens) = tokio::join!(
        ui.get_as::<SettingsView>("/api/settings"),
        ui.get_as::<Vec<LabelView>>("/api/groups"),
        ui.get_as::<Vec<LabelView>>("/api/tags"),
        ui.get_as::<Vec<RegistryView>>("/api/registries"),
        ui.get_as::<Vec<TokenView>>("/api/tokens")
    );
    let fail = |e: ApiFail| fail_page(&e);
    Ok(Data {
        settings: settings.map_err(fail)?,
        groups: groups.map_err(fail)?,
        tags: tags.map_err(fail)?,
        registries: registries.map_err(fail)?,
        tokens: tokens.map_err(fail)?,
    })
}

/// The notice of a `?done=` flag: the section it belongs to, and its text.
fn notice_of(flag: &str) -> Option<(&'static str, &'static str)> {
    Some(match flag {
        "intervals" => {
            ("intervals", "The default intervals were saved. Agents that follow them get them in their next reply.")
        }
        "secret-set" => (
            "agent-secret",
            "The AGENT_SECRET was set. Agents not started with it can no longer poll until they are restarted with it.",
        ),
        "secret-cleared" => ("agent-secret", "The AGENT_SECRET was removed; agents need none now."),
        "group-created" => ("groups", "The group was created."),
        "group-renamed" => ("groups", "The group was renamed."),
        "group-deleted" => ("groups", "The group was deleted; its environments are in no group now."),
        "tag-created" => ("tags", "The tag was created."),
        "tag-renamed" => ("tags", "The tag was renamed."),
        "tag-deleted" => ("tags", "The tag was deleted and taken off its environments."),
        "registry-added" => {
            ("registries", "The registry was added. Its password is stored encrypted and not shown again.")
        }
        "registry-password" => {
            ("registries", "The registry's password was changed: pulls use it from now on, queued commands too.")
        }
        "registry-removed" => ("registries", "The registry was removed; pulls from it go without credentials now."),
        "token-revoked" => ("tokens", "The token was revoked; it no longer works."),
        "password" => ("password", "The password was changed. Your other sessions were logged out."),
        _ => return None,
    })
}

/// Back to the page after a form succeeded.
fn done(flag: &str) -> Response {
    let section = notice_of(flag).map_or("", |(s, _)| s);
    Redirect::to(&format!("/settings?done={}#{section}", encode(flag))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DoneQuery {
    done: Option<String>,
}

async fn show(ui: Ui, Query(q): Query<DoneQuery>) -> Response {
    render(&ui, View { done: q.done, ..View::default() }).await
}

/// The page, with the status of the refusal it shows (200 without).
async fn render(ui: &Ui, view: View) -> Response {
    if let Some((_, e)) = &view.fail
        && e.status == StatusCode::UNAUTHORIZED
    {
        return fail_page(e);
    }
    let data = match load(ui).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let status = view.fail.as_ref().map_or(StatusCode::OK, |(_, e)| e.status);
    let notice = view.done.as_deref().and_then(notice_of);
    let notice_for = |section: &str| {
        html! {
            @if let Some((_, text)) = notice.filter(|(s, _)| *s == section) {
                p.notice role="status" { (text) }
            }
        }
    };
    let now = now();
    let body = html! {
        h1 { "Settings" }
        nav.toc aria-label="Settings sections" {
            a href="#intervals" { "Default intervals" }
            a href="#agent-secret" { "AGENT_SECRET" }
            a href="#groups" { "Groups" }
            a href="#tags" { "Tags" }
            a href="#registries" { "Registries" }
            a href="#tokens" { "API tokens" }
            a href="#password" { "Password" }
        }
        (intervals_section(ui, &data, &view, notice_for("intervals")))
        (secret_section(ui, &data, &view, notice_for("agent-secret")))
        (label_section(ui, GROUPS, &data.groups, &view, notice_for("groups")))
        (label_section(ui, TAGS, &data.tags, &view, notice_for("tags")))
        (registries_section(ui, &data.registries, &view, now, notice_for("registries")))
        (tokens_section(ui, &data.tokens, &view, now, notice_for("tokens")))
        (password_section(ui, &view, notice_for("password")))
    };
    (status, page(ui, Nav::Settings, "Settings", body)).into_response()
}

/// A section with its heading.
fn section(id: &str, title: &str, content: Markup) -> Markup {
    let title_id = format!("{id}-title");
    html! {
        section.settings id=(id) aria-labelledby=(title_id) {
            h2 id=(title_id) { (title) }
            (content)
        }
    }
}

fn plural(n: u64, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

// ----- default intervals -----

/// The three interval pickers of a form as sent (each a choice and its
/// custom text): the settings page, the wizard and an environment's edit
/// page all take them, flattened into their own form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IntervalChoices {
    ping: String,
    ping_custom: String,
    snapshot: String,
    snapshot_custom: String,
    command: String,
    command_custom: String,
}

impl IntervalChoices {
    /// The timers' names, in the API's order.
    pub const NAMES: [&'static str; 3] = ["ping", "snapshot", "command"];

    /// One picker's choice and custom text (`name` is one of [`Self::NAMES`]).
    pub fn get(&self, name: &str) -> (&str, &str) {
        match name {
            "ping" => (&self.ping, &self.ping_custom),
            "snapshot" => (&self.snapshot, &self.snapshot_custom),
            _ => (&self.command, &self.command_custom),
        }
    }

    /// The pickers showing an environment's own intervals (`None`: the
    /// default).
    pub fn of_settings(own: &IntervalsBody) -> Self {
        let one = |v: Option<u32>| interval_choice(v, true);
        let ((ping, ping_custom), (snapshot, snapshot_custom), (command, command_custom)) =
            (one(own.ping), one(own.snapshot), one(own.command));
        Self { ping, ping_custom, snapshot, snapshot_custom, command, command_custom }
    }

    /// Each timer's seconds (`None`: the default), or the first picker's
    /// refusal, shown next to it.
    ///
    /// # Errors
    /// What [`parse_interval`] said, as [`interval_fail`].
    pub fn parse(&self) -> Result<[(&'static str, Option<u32>); 3], ApiFail> {
        let one = |name: &'static str| {
            let (choice, custom) = self.get(name);
            parse_interval(choice, custom).map(|v| (name, v)).map_err(|m| interval_fail(name, m))
        };
        Ok([one("ping")?, one("snapshot")?, one("command")?])
    }

    /// Whether any picker is set to something but the default.
    pub fn any_set(&self) -> bool {
        Self::NAMES.iter().any(|n| !matches!(self.get(n).0, "" | INTERVAL_DEFAULT))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct IntervalsForm {
    csrf: String,
    #[serde(flatten)]
    choices: IntervalChoices,
}

fn intervals_section(ui: &Ui, data: &Data, view: &View, notice: Markup) -> Markup {
    let err = view.err(Part::Intervals);
    let current = &data.settings.intervals;
    let following = &data.settings.following_defaults;
    let fields: Vec<String> = TIMERS.iter().flat_map(|(t, _, _)| [format!("intervals.{t}"), (*t).to_owned()]).collect();
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    section(
        "intervals",
        "Default intervals",
        html! {
            p.hint { "How often an agent polls for each of its three timers, unless its environment sets its own. "
                "A change reaches every agent that follows the default in its next reply. "
                "Longer intervals cost less data; Disabled turns a timer off (one must stay on)." }
            (notice)
            (form_error(err, &fields))
            form.form-narrow method="post" action="/settings/intervals" {
                (csrf_field(&ui.csrf))
                div.row {
                    @for (name, label, what) in TIMERS {
                        @let (choice, custom) = match &view.intervals {
                            Some(f) => { let (c, k) = f.choices.get(name); (c.to_owned(), k.to_owned()) }
                            None => interval_choice(Some(timer(current, name)), false),
                        };
                        @let hint = match timer(following, name) {
                            0 => format!("{}. No environment follows this default; each sets its own.", capital(what)),
                            c => format!("{}. {} this default.", capital(what), follows(u64::from(c))),
                        };
                        (interval_picker(name, label, &choice, &custom, &IntervalOpts { hint: Some(hint), ..IntervalOpts::default() }, err))
                    }
                }
                button.primary type="submit" { "Save intervals" }
            }
        },
    )
}

/// One timer of intervals in force, by its name (one of [`TIMERS`]).
pub fn timer(v: &IntervalsView, name: &str) -> u32 {
    match name {
        "ping" => v.ping,
        "snapshot" => v.snapshot,
        _ => v.command,
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

fn follows(n: u64) -> String {
    if n == 1 { "1 environment follows".to_owned() } else { format!("{n} environments follow") }
}

async fn save_intervals(ui: Ui, Form(f): Form<IntervalsForm>) -> Response {
    let parsed = f.choices.parse().and_then(|all| {
        let mut intervals = DefaultIntervalsBody::default();
        for (name, v) in all {
            let v =
                v.ok_or_else(|| interval_fail(name, "choose an interval (the defaults themselves have no default)"))?;
            match name {
                "ping" => intervals.ping = Some(v),
                "snapshot" => intervals.snapshot = Some(v),
                _ => intervals.command = Some(v),
            }
        }
        Ok(intervals)
    });
    let intervals = match parsed {
        Ok(i) => i,
        Err(fail) => {
            return render(&ui, View { fail: Some((Part::Intervals, fail)), intervals: Some(f), ..View::default() })
                .await;
        }
    };
    let body = SettingsBody { intervals: Some(intervals), agent_secret: None };
    match ui.send_as(Method::PUT, "/api/settings", &body, &f.csrf).await {
        Ok(_) => done("intervals"),
        Err(e) => render(&ui, View { fail: Some((Part::Intervals, e)), intervals: Some(f), ..View::default() }).await,
    }
}

// ----- AGENT_SECRET -----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SecretForm {
    csrf: String,
    agent_secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

fn secret_section(ui: &Ui, data: &Data, view: &View, notice: Markup) -> Markup {
    let err = view.err(Part::Secret);
    let set = data.settings.agent_secret_set;
    section(
        "agent-secret",
        "AGENT_SECRET",
        html! {
            p.hint { "A secret every agent must also be started with (its " code { "AGENT_SECRET" } " variable): it is mixed "
                "into the key that authenticates each poll, so an agent with a join token but without the secret "
                "cannot poll. A change applies at once: every agent must then be restarted with the new value. "
                "The deploy commands include it. It is never shown again once set." }
            (notice)
            p id="agent-secret-status" {
                @if set { span.badge.ok { "set" } " An AGENT_SECRET is set." }
                @else { span.badge.off { "not set" } " No AGENT_SECRET is set: agents need none." }
            }
            (form_error(err, &["agent_secret"]))
            form.form-narrow method="post" action="/settings/agent-secret" {
                (csrf_field(&ui.csrf))
                (text_field("agent_secret", if set { "New AGENT_SECRET" } else { "AGENT_SECRET" }, "", err, FieldAttrs {
                    kind: "password",
                    required: true,
                    autocomplete: Some("new-password"),
                    hint: Some("Up to 256 characters, no control characters."),
                    ..FieldAttrs::default()
                }))
                button.primary type="submit" { @if set { "Replace the secret" } @else { "Set the secret" } }
            }
            @if set {
                form.inline.secret-clear method="post" action="/settings/agent-secret/clear"
                    data-confirm="Remove the AGENT_SECRET? Agents will no longer need it." {
                    (csrf_field(&ui.csrf))
                    button.danger type="submit" { "Remove the secret" }
                }
            }
        },
    )
}

async fn set_secret(ui: Ui, Form(f): Form<SecretForm>) -> Response {
    if f.agent_secret.trim().is_empty() {
        let fail = ApiFail {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "type the new secret (to remove it, use \u{201c}Remove the secret\u{201d})".to_owned(),
            field: Some("agent_secret".to_owned()),
        };
        return render(&ui, View { fail: Some((Part::Secret, fail)), ..View::default() }).await;
    }
    let body = SettingsBody { intervals: None, agent_secret: Some(Some(f.agent_secret)) };
    match ui.send_as(Method::PUT, "/api/settings", &body, &f.csrf).await {
        Ok(_) => done("secret-set"),
        Err(e) => render(&ui, View { fail: Some((Part::Secret, e)), ..View::default() }).await,
    }
}

async fn clear_secret(ui: Ui, Form(f): Form<CsrfForm>) -> Response {
    let body = SettingsBody { intervals: None, agent_secret: Some(None) };
    match ui.send_as(Method::PUT, "/api/settings", &body, &f.csrf).await {
        Ok(_) => done("secret-cleared"),
        Err(e) => render(&ui, View { fail: Some((Part::Secret, e)), ..View::default() }).await,
    }
}

// ----- groups and tags -----

/// Groups and tags have the same forms.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// The API's collection.
    api: &'static str,
    /// The UI's routes.
    route: &'static str,
    /// "group".
    one: &'static str,
    /// The section's id.
    section: &'static str,
    /// The section's title.
    title: &'static str,
    /// The environments list's filter.
    filter: &'static str,
    /// What deleting one does to its environments.
    on_delete: &'static str,
}

const GROUPS: Kind = Kind {
    api: "/api/groups",
    route: "/settings/groups",
    one: "group",
    section: "groups",
    title: "Groups",
    filter: "group",
    on_delete: "will be in no group",
};

const TAGS: Kind = Kind {
    api: "/api/tags",
    route: "/settings/tags",
    one: "tag",
    section: "tags",
    title: "Tags",
    filter: "tag",
    on_delete: "lose this tag",
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NameForm {
    csrf: String,
    #[serde(alias = "group_name", alias = "tag_name", alias = "token_name")]
    name: String,
}

/// A refusal of a one-field form is about that field when the API names
/// none (a taken name is a 409 without a field).
fn onto(mut e: ApiFail, field: &str) -> ApiFail {
    if e.field.is_none() && matches!(e.status, StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY) {
        e.field = Some(field.to_owned());
    }
    e
}

/// An error's message as shown next to its field (without the field's
/// name when it starts with it).
fn shown(e: &ApiFail) -> &str {
    e.field.as_deref().and_then(|f| e.for_field(f)).unwrap_or(&e.message)
}

fn label_section(ui: &Ui, kind: Kind, items: &[LabelView], view: &View, notice: Markup) -> Markup {
    let new_err = view.err(Part::New(kind.section));
    let input = format!("{}_name", kind.one);
    let hint = if kind.one == "group" {
        "An environment is in at most one group. Stacks and jobs can target a group."
    } else {
        "An environment can have many tags. Stacks and jobs can target a tag."
    };
    section(
        kind.section,
        kind.title,
        html! {
            p.hint { (hint) }
            (notice)
            @if let Some(e) = view.orphan(kind.section, items.iter().map(|i| i.id)) { p.error role="alert" { (e.message) } }
            @if items.is_empty() {
                p.muted { "No " (kind.one) " yet." }
            } @else {
                div.scroll {
                    table.list id={ (kind.section) "-list" } {
                        thead { tr {
                            th scope="col" { "Name" }
                            th scope="col".num { "Environments" }
                            th scope="col" { "Rename or delete" }
                        } }
                        tbody {
                            @for item in items {
                                (label_row(ui, kind, item, view))
                            }
                        }
                    }
                }
            }
            h3 { "New " (kind.one) }
            (form_error(new_err, &["name"]))
            form.inline-create method="post" action=(kind.route) {
                (csrf_field(&ui.csrf))
                (text_field(&input, "Name", if new_err.is_some() { &view.typed } else { "" }, new_err, FieldAttrs {
                    required: true,
                    api_field: Some("name"),
                    ..FieldAttrs::default()
                }))
                button.primary type="submit" { "Create " (kind.one) }
            }
        },
    )
}

fn label_row(ui: &Ui, kind: Kind, item: &LabelView, view: &View) -> Markup {
    let id = item.id;
    let name = item.name.as_str();
    let count = item.environments;
    let err = view.err(Part::Row(kind.section, id));
    let input_id = format!("f-{}-{id}", kind.one);
    let err_id = format!("{input_id}-error");
    let message = err.map(shown);
    let value = if err.is_some() { view.typed.as_str() } else { name };
    let confirm = if count == 0 {
        format!("Delete the {} \u{201c}{name}\u{201d}? No environment has it.", kind.one)
    } else {
        format!(
            "Delete the {} \u{201c}{name}\u{201d}? Its {} {}.",
            kind.one,
            plural(count, "environment"),
            kind.on_delete
        )
    };
    html! {
        tr data-id=(id) {
            td { span.tag-name { (name) } }
            td.num {
                @if count > 0 {
                    a href={ "/environments?" (kind.filter) "=" (encode(name)) } { (count) }
                } @else { "0" }
            }
            td.actions {
                form.inline method="post" action={ (kind.route) "/" (id) "/rename" } {
                    (csrf_field(&ui.csrf))
                    label.sr-only for=(input_id) { "New name for the " (kind.one) " " (name) }
                    input id=(input_id) name="name" value=(value) required size="16"
                        aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| err_id.as_str())];
                    button.small type="submit" aria-label={ "Rename the " (kind.one) " " (name) } { "Rename" }
                }
                form.inline method="post" action={ (kind.route) "/" (id) "/delete" } data-confirm=(confirm) {
                    (csrf_field(&ui.csrf))
                    button.small.danger type="submit"
                        aria-label={ "Delete the " (kind.one) " " (name) " (" (plural(count, "environment")) ")" } {
                        "Delete"
                    }
                }
                @if let Some(m) = message { p.field-error.row-error id=(err_id) role="alert" { (m) } }
            }
        }
    }
}

async fn create_label(ui: Ui, kind: Kind, f: NameForm) -> Response {
    match ui.send_as(Method::POST, kind.api, &LabelBody { name: f.name.clone() }, &f.csrf).await {
        Ok(_) => done(&format!("{}-created", kind.one)),
        Err(e) => {
            let fail = onto(e, "name");
            render(&ui, View { fail: Some((Part::New(kind.section), fail)), typed: f.name, ..View::default() }).await
        }
    }
}

async fn rename_label(ui: Ui, kind: Kind, id: u64, f: NameForm) -> Response {
    let body = LabelBody { name: f.name.clone() };
    match ui.send_as(Method::PATCH, &format!("{}/{id}", kind.api), &body, &f.csrf).await {
        Ok(_) => done(&format!("{}-renamed", kind.one)),
        Err(e) => {
            render(&ui, View { fail: Some((Part::Row(kind.section, id), e)), typed: f.name, ..View::default() }).await
        }
    }
}

async fn delete_label(ui: Ui, kind: Kind, id: u64, f: CsrfForm) -> Response {
    match ui.call(Method::DELETE, &format!("{}/{id}", kind.api), None, Some(&f.csrf)).await {
        Ok(_) => done(&format!("{}-deleted", kind.one)),
        Err(e) => {
            // The row's rename box shows its name again, with the error.
            let typed = ui.get_as::<LabelView>(&format!("{}/{id}", kind.api)).await.map(|l| l.name).unwrap_or_default();
            render(&ui, View { fail: Some((Part::Row(kind.section, id), e)), typed, ..View::default() }).await
        }
    }
}

// ----- private registries -----

/// The "Add a registry" form.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RegistryForm {
    csrf: String,
    registry_name: String,
    registry_url: String,
    registry_username: String,
    registry_password: String,
}

impl std::fmt::Debug for RegistryForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryForm")
            .field("registry_name", &self.registry_name)
            .field("registry_url", &self.registry_url)
            .field("registry_username", &self.registry_username)
            .finish_non_exhaustive()
    }
}

/// What the refused "Add a registry" form showed again: never its password.
#[derive(Debug, Clone, Default)]
struct RegistryTyped {
    name: String,
    url: String,
    username: String,
}

/// A registry row's "set a new password" form.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RegistryPasswordForm {
    csrf: String,
    password: String,
}

impl std::fmt::Debug for RegistryPasswordForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryPasswordForm").finish_non_exhaustive()
    }
}

fn registries_section(ui: &Ui, registries: &[RegistryView], view: &View, now: i64, notice: Markup) -> Markup {
    let new_err = view.err(Part::New("registries"));
    let typed = view.registry.clone().unwrap_or_default();
    let (name, url, username) = if new_err.is_some() {
        (typed.name.as_str(), typed.url.as_str(), typed.username.as_str())
    } else {
        ("", "", "")
    };
    section(
        "registries",
        "Registries",
        html! {
            p.hint { "The credentials of private registries. A stack, an image pull or a job whose image reference "
                "names one of these registries (" code { "10.0.0.5:5000/app:1" } ") pulls with its credentials: "
                "the agent gets them with the command that needs them, and keeps them in memory only. "
                "A password is stored encrypted and never shown again; to change it, set a new one." }
            (notice)
            @if let Some(e) = view.orphan("registries", registries.iter().map(|r| r.id)) { p.error role="alert" { (e.message) } }
            @if registries.is_empty() {
                p.muted { "No registry: images are pulled without credentials." }
            } @else {
                div.scroll {
                    table.list id="registries-list" {
                        thead { tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Registry address" }
                            th scope="col" { "User" }
                            th scope="col" { "Updated" }
                            th scope="col" { "New password or remove" }
                        } }
                        tbody {
                            @for r in registries {
                                (registry_row(ui, r, view, now))
                            }
                        }
                    }
                }
            }
            h3 { "Add a registry" }
            (form_error(new_err, &["name", "url", "username", "password"]))
            form.form-narrow method="post" action="/settings/registries" {
                (csrf_field(&ui.csrf))
                div.row {
                    (text_field("registry_name", "Name", name, new_err, FieldAttrs {
                        required: true,
                        api_field: Some("name"),
                        placeholder: Some("the site's registry"),
                        autocomplete: Some("off"),
                        ..FieldAttrs::default()
                    }))
                    (text_field("registry_url", "Registry address", url, new_err, FieldAttrs {
                        required: true,
                        api_field: Some("url"),
                        placeholder: Some("10.0.0.5:5000"),
                        autocomplete: Some("off"),
                        hint: Some("As image references name it: a host, with its port if not 443 (registry.example.com, 10.0.0.5:5000); docker.io for Docker Hub."),
                        ..FieldAttrs::default()
                    }))
                }
                div.row {
                    (text_field("registry_username", "User", username, new_err, FieldAttrs {
                        required: true,
                        api_field: Some("username"),
                        autocomplete: Some("off"),
                        ..FieldAttrs::default()
                    }))
                    (text_field("registry_password", "Password or access token", "", new_err, FieldAttrs {
                        kind: "password",
                        required: true,
                        api_field: Some("password"),
                        autocomplete: Some("new-password"),
                        hint: Some("Stored encrypted; never shown again."),
                        ..FieldAttrs::default()
                    }))
                }
                button.primary type="submit" { "Add the registry" }
            }
        },
    )
}

fn registry_row(ui: &Ui, r: &RegistryView, view: &View, now: i64) -> Markup {
    let id = r.id;
    let name = r.name.as_str();
    let err = view.err(Part::Row("registries", id));
    let input_id = format!("f-registry-{id}-password");
    let err_id = format!("{input_id}-error");
    let message = err.map(shown);
    let confirm = format!(
        "Remove the registry \u{201c}{name}\u{201d} ({})? Pulls from it go without credentials from now on.",
        r.url
    );
    html! {
        tr data-id=(id) {
            td { (name) }
            td { code { (r.url) } }
            td { (r.username) }
            td { (when(Some(r.updated_at), now)) }
            td.actions {
                form.inline method="post" action={ "/settings/registries/" (id) "/password" } {
                    (csrf_field(&ui.csrf))
                    label.sr-only for=(input_id) { "New password for the registry " (name) }
                    input id=(input_id) name="password" type="password" autocomplete="new-password" required size="16"
                        placeholder="new password"
                        aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| err_id.as_str())];
                    button.small type="submit" aria-label={ "Set the new password of the registry " (name) } { "Set password" }
                }
                form.inline method="post" action={ "/settings/registries/" (id) "/delete" } data-confirm=(confirm) {
                    (csrf_field(&ui.csrf))
                    button.small.danger type="submit" aria-label={ "Remove the registry " (name) } { "Remove" }
                }
                @if let Some(m) = message { p.field-error.row-error id=(err_id) role="alert" { (m) } }
            }
        }
    }
}

async fn add_registry(ui: Ui, Form(f): Form<RegistryForm>) -> Response {
    let typed = RegistryTyped { name: f.registry_name, url: f.registry_url, username: f.registry_username };
    let body = CreateRegistry {
        name: typed.name.clone(),
        url: typed.url.clone(),
        username: typed.username.clone(),
        password: f.registry_password,
    };
    match ui.send_as(Method::POST, "/api/registries", &body, &f.csrf).await {
        Ok(_) => done("registry-added"),
        Err(e) => {
            render(&ui, View { fail: Some((Part::New("registries"), e)), registry: Some(typed), ..View::default() })
                .await
        }
    }
}

async fn set_registry_password(ui: Ui, Path(id): Path<u64>, Form(f): Form<RegistryPasswordForm>) -> Response {
    let body = UpdateRegistry { password: Some(f.password), ..UpdateRegistry::default() };
    match ui.send_as(Method::PATCH, &format!("/api/registries/{id}"), &body, &f.csrf).await {
        Ok(_) => done("registry-password"),
        Err(e) => render(&ui, View { fail: Some((Part::Row("registries", id), e)), ..View::default() }).await,
    }
}

async fn remove_registry(ui: Ui, Path(id): Path<u64>, Form(f): Form<CsrfForm>) -> Response {
    match ui.call(Method::DELETE, &format!("/api/registries/{id}"), None, Some(&f.csrf)).await {
        Ok(_) => done("registry-removed"),
        Err(e) => render(&ui, View { fail: Some((Part::Row("registries", id), e)), ..View::default() }).await,
    }
}

// ----- API tokens -----

fn tokens_section(ui: &Ui, tokens: &[TokenView], view: &View, now: i64, notice: Markup) -> Markup {
    let new_err = view.err(Part::New("tokens"));
    section(
        "tokens",
        "API tokens",
        html! {
            p.hint { "An API token lets a script or the " code { "tern" } " command line call the API as the admin: "
                code { "Authorization: Bearer tern_…" } ". Its secret is shown once, when it is made. "
                "Revoking one stops it at once." }
            (notice)
            @if let Some(e) = view.orphan("tokens", tokens.iter().map(|t| t.id)) { p.error role="alert" { (e.message) } }
            @if let Some(t) = &view.new_token {
                div.new-token role="status" {
                    p.notice { "The token \u{201c}" (t.name) "\u{201d} was created. Copy it now: it is not shown again." }
                    div.copyrow {
                        pre id="new-token" { (t.token) }
                        button type="button" data-copy="new-token" hidden { "Copy" }
                    }
                }
            }
            @if tokens.is_empty() {
                p.muted { "No API token." }
            } @else {
                div.scroll {
                    table.list id="tokens-list" {
                        thead { tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Created" }
                            th scope="col" { "Last used" }
                            th scope="col" { "Status" }
                        } }
                        tbody {
                            @for t in tokens {
                                @let id = t.id;
                                @let name = t.name.as_str();
                                @let revoked = t.revoked_at;
                                @let data_dir = t.data_directory;
                                @let err = view.err(Part::Row("tokens", id));
                                tr data-id=(id) data-revoked=[revoked.map(|_| "true")] {
                                    td {
                                        (name)
                                        @if data_dir {
                                            " " span.badge.info title="The token in the server's data directory (admin-token), which the tern command uses on the server's host. Revoked, the server writes a new one at its next start." { "data directory" }
                                        }
                                    }
                                    td { (when(Some(t.created_at), now)) }
                                    td { (when(t.last_used_at, now)) }
                                    td.actions {
                                        @match revoked {
                                            Some(r) => { span.state.failed { "revoked" } " " (when(Some(r), now)) }
                                            None => span.state.ok { "active" },
                                        }
                                        @if revoked.is_none() {
                                            form.inline method="post" action={ "/settings/tokens/" (id) "/revoke" }
                                                data-confirm=(if data_dir {
                                                    format!("Revoke \u{201c}{name}\u{201d}, the data directory's token? The tern command on the server's host stops working until the server restarts and writes a new one.")
                                                } else {
                                                    format!("Revoke the token \u{201c}{name}\u{201d}? It stops working at once.")
                                                }) {
                                                (csrf_field(&ui.csrf))
                                                button.small.danger type="submit" aria-label={ "Revoke the token " (name) } { "Revoke" }
                                            }
                                        }
                                        @if let Some(e) = err { p.field-error.row-error role="alert" { (shown(e)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "New token" }
            (form_error(new_err, &["name"]))
            form.inline-create method="post" action="/settings/tokens" {
                (csrf_field(&ui.csrf))
                (text_field("token_name", "Name", if new_err.is_some() { &view.typed } else { "" }, new_err, FieldAttrs {
                    required: true,
                    api_field: Some("name"),
                    placeholder: Some("what it is for: backup script, CI"),
                    ..FieldAttrs::default()
                }))
                button.primary type="submit" { "Create token" }
            }
        },
    )
}

async fn create_token(ui: Ui, Form(f): Form<NameForm>) -> Response {
    let created =
        match ui.send_as(Method::POST, "/api/tokens", &CreateToken { name: f.name.clone(), role: None }, &f.csrf).await
        {
            Ok(r) => r.parse::<CreatedToken>("/api/tokens"),
            Err(e) => Err(e),
        };
    match created {
        // The secret is in this answer only (pages are sent `no-store`).
        Ok(t) => render(&ui, View { new_token: Some(t), ..View::default() }).await,
        Err(e) => {
            let fail = onto(e, "name");
            render(&ui, View { fail: Some((Part::New("tokens"), fail)), typed: f.name, ..View::default() }).await
        }
    }
}

async fn revoke_token(ui: Ui, Path(id): Path<u64>, Form(f): Form<CsrfForm>) -> Response {
    match ui.call(Method::DELETE, &format!("/api/tokens/{id}"), None, Some(&f.csrf)).await {
        Ok(_) => done("token-revoked"),
        Err(e) => render(&ui, View { fail: Some((Part::Row("tokens", id), e)), ..View::default() }).await,
    }
}

// ----- the admin password -----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    repeat: String,
}

/// The new password's hint, from the API's rule.
static PASSWORD_HINT: LazyLock<String> = LazyLock::new(|| {
    format!("At least {} characters; a passphrase is best.", crate::server::api::access::MIN_PASSWORD_LEN)
});

fn password_section(ui: &Ui, view: &View, notice: Markup) -> Markup {
    let err = view.err(Part::Password);
    let attrs = |autocomplete: &'static str, hint: Option<&'static str>| FieldAttrs {
        kind: "password",
        required: true,
        autocomplete: Some(autocomplete),
        hint,
        ..FieldAttrs::default()
    };
    section(
        "password",
        "Admin password",
        html! {
            p.hint { "The password of " strong { (ui.username) } ". Changing it logs out every other session; this one stays." }
            (notice)
            (form_error(err, &["current", "new", "repeat"]))
            form.form-narrow method="post" action="/settings/password" {
                (csrf_field(&ui.csrf))
                input type="hidden" name="username" value=(ui.username) autocomplete="username";
                (text_field("current", "Current password", "", err, attrs("current-password", None)))
                (text_field("new", "New password", "", err, attrs("new-password", Some(PASSWORD_HINT.as_str()))))
                (text_field("repeat", "Repeat the new password", "", err, attrs("new-password", None)))
                button.primary type="submit" { "Change the password" }
            }
        },
    )
}

async fn change_password(ui: Ui, Form(f): Form<PasswordForm>) -> Response {
    let refuse = |field: &str, message: &str| ApiFail {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: message.to_owned(),
        field: Some(field.to_owned()),
    };
    let fail = if f.current.is_empty() {
        refuse("current", "type your current password")
    } else if f.new != f.repeat {
        refuse("repeat", "the two new passwords differ; type the same one twice")
    } else {
        let body = ChangePassword { current: f.current, new: f.new };
        match ui.send_as(Method::PUT, "/api/auth/password", &body, &f.csrf).await {
            Ok(_) => return done("password"),
            Err(e) => e,
        }
    };
    render(&ui, View { fail: Some((Part::Password, fail)), ..View::default() }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_choices_parse_to_seconds() {
        assert_eq!(parse_interval("default", ""), Ok(None));
        assert_eq!(parse_interval("", "123"), Ok(None));
        assert_eq!(parse_interval("0", ""), Ok(Some(0)));
        assert_eq!(parse_interval("3600", "999"), Ok(Some(3600)));
        assert_eq!(parse_interval("604800", ""), Ok(Some(604_800)));
        assert_eq!(parse_interval("custom", " 90 "), Ok(Some(90)));
        assert_eq!(parse_interval("custom", "604800"), Ok(Some(604_800)));
        for bad in ["", "0", "604801", "-5", "1.5", "abc", "99999999999999999999"] {
            assert!(parse_interval("custom", bad).is_err(), "{bad:?}");
        }
        assert!(parse_interval("120", "").is_err(), "only the offered presets");
        assert!(parse_interval("weekly", "").is_err());
    }

    #[test]
    fn seconds_show_as_a_preset_or_custom() {
        assert_eq!(interval_choice(Some(60), false), ("60".to_owned(), "60".to_owned()));
        assert_eq!(interval_choice(Some(90), false), ("custom".to_owned(), "90".to_owned()));
        assert_eq!(interval_choice(Some(0), false), ("0".to_owned(), String::new()));
        assert_eq!(interval_choice(None, true), ("default".to_owned(), String::new()));
        assert_eq!(interval_choice(None, false), ("custom".to_owned(), String::new()));
        assert_eq!(interval_text(0), "disabled");
        assert_eq!(interval_text(60), "1 minute");
        assert_eq!(interval_text(7200), "2 hours");
        assert_eq!(interval_text(90), "90 seconds");
    }

    #[test]
    fn registries_show_no_password_and_a_conflict_goes_to_its_field() {
        let ui = Ui {
            api: axum::Router::new(),
            cookie: None,
            peer: None,
            username: "admin".to_owned(),
            role: "admin".to_owned(),
            csrf: "tok".to_owned(),
        };
        let r = RegistryView {
            id: 7,
            name: "site".to_owned(),
            url: "10.0.0.5:5000".to_owned(),
            username: "puller".to_owned(),
            created_at: 0,
            updated_at: 0,
        };
        let typed = RegistryTyped { name: "n".to_owned(), url: "a b".to_owned(), username: "u".to_owned() };
        let fail = ApiFail {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "url: \"a b\": not a host name or address".to_owned(),
            field: Some("url".to_owned()),
        };
        let view = View { fail: Some((Part::New("registries"), fail)), registry: Some(typed), ..View::default() };
        let html = registries_section(&ui, &[r], &view, 60, html! {}).into_string();
        assert!(html.contains("id=\"registries-list\""));
        assert!(html.contains("action=\"/settings/registries/7/password\""));
        assert!(html.contains("action=\"/settings/registries/7/delete\""));
        assert!(html.contains("id=\"f-registry_url-error\""));
        assert!(html.contains("value=\"a b\""));
        assert!(html.contains("name=\"registry_password\" type=\"password\" value=\"\""));
        assert_eq!(html.matches("name=\"csrf\" value=\"tok\"").count(), 3);

        // The API names a conflict's field (api::registries), so the shared
        // mechanism puts it by its input.
        let on = |m: &str| crate::server::api::error_field(m).map(str::to_owned);
        assert_eq!(on("url: registry 10.0.0.5:5000 has credentials already").as_deref(), Some("url"));
        assert_eq!(on("name: a registry named \"site\" exists already").as_deref(), Some("name"));
    }

    #[test]
    fn the_picker_offers_default_only_when_asked_and_shows_its_error() {
        let plain = interval_field("ping", "Ping", Some(90), None).into_string();
        assert!(!plain.contains("value=\"default\""));
        assert!(plain.contains("<option value=\"custom\" selected>"));
        assert!(plain.contains("id=\"f-ping_custom\""));
        assert!(plain.contains("data-custom=\"f-ping_custom\""));
        assert!(!plain.contains(" hidden"), "shown without a script");
        // No bound a browser would enforce on the (maybe hidden) custom input.
        assert!(!plain.contains(" min=") && !plain.contains(" pattern=") && !plain.contains("type=\"number\""));
        let with = interval_field_or_default("ping", "Ping", None, Some(60), None).into_string();
        assert!(with.contains("<option value=\"default\" selected>Default (1 minute)</option>"));
        let err = interval_fail("ping", "bad value");
        let shown = interval_field("ping", "Ping", Some(60), Some(&err)).into_string();
        assert!(shown.contains("id=\"f-ping-error\""));
        assert!(shown.contains("bad value"));
        let other = interval_field("snapshot", "Snapshot", Some(60), Some(&err)).into_string();
        assert!(!other.contains("bad value"));
    }
}
