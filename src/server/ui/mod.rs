//! The web UI: server-rendered HTML (maud), a little hand-written
//! JavaScript and CSS compiled into the binary, served on the server's one
//! port. Nothing comes from a CDN, so the UI works on a site with no
//! internet.
//!
//! **The UI is a client of the API.** Every page reads, and every form
//! acts, through the REST API, called in process with the browser's own
//! session cookie and the CSRF token its form carried ([`Ui`]). The UI
//! therefore can do exactly what the API allows, no more, and refuses what
//! it refuses with the same messages: an API error names its field
//! (`"name: 1 to 128 characters"`), and the form shows it next to that
//! field.
//!
//! **Security.** The session cookie is the API's (`Secure`, `HttpOnly`,
//! `SameSite=Strict`). Every form that changes something carries the
//! session's CSRF token, which the API checks; the login form, which has no
//! session yet, carries a double-submit token. A request whose `Origin`
//! names another site is refused. Every page is sent with a strict
//! Content-Security-Policy (scripts and styles from this server only, no
//! inline script, style or event handler), `X-Frame-Options: DENY`,
//! `nosniff` and `no-store`.
//!
//! **Bytes.** Operators may sit behind a metered link too: pages carry no
//! framework, the CSS and JS (a few KB) are cached for a year under a name
//! that holds their digest, and the live parts of a page poll small JSON
//! only while the page is visible.
//!
//! | path | page |
//! |---|---|
//! | `/login` | log in |
//! | `/environments` | the fleet: filters, paging |
//! | `/environments/new` | the add environment wizard |
//! | `/environments/{id}` | one environment: host, state by tab, actions, usage chart, command history |
//! | `/stacks`, `/stacks/new`, `/stacks/{id}` | edge stacks |
//! | `/jobs`, `/jobs/new`, `/jobs/{id}` | edge jobs |
//! | `/settings` | default intervals, AGENT_SECRET, groups, tags, registries, API tokens, password |
//! | `/users` | users and their roles: add, change the role, disable, reset the password, delete (the admin's) |

pub mod audit;
pub mod chart;
pub mod devices;
pub mod envs;
pub mod jobs;
pub mod manage;
pub mod settings;
pub mod stacks;
pub mod users;
pub mod wizard;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceExt as _;

use super::api::types::{ErrorBody, LabelView, Login, Me};
use super::http::AppState;

/// The API router the UI calls in process.
#[derive(Clone)]
pub struct UiApi(pub Router);

/// The Content-Security-Policy of every UI response: nothing inline,
/// nothing from elsewhere, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// What a form refused for its CSRF token says.
pub const STALE_FORM: &str = "This form has expired: you logged in again since the page was loaded, or it did not \
     come from this page. Nothing was changed; reload the page and try again.";

/// The login form's double-submit cookie.
const LOGIN_COOKIE: &str = "tern_login";

/// The digest-named path of an asset (cached for a year: a new build
/// that changes it changes its name).
fn asset_path(ext: &str, text: &str) -> String {
    format!("/static/ui.{}.{ext}", &blake3::hash(text.as_bytes()).to_hex().as_str()[..12])
}

fn css_path() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| asset_path("css", CSS))
}

fn js_path() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| asset_path("js", JS))
}

/// The UI's routes. `api` is the API router (with its state) the pages
/// call in process.
pub fn routes(api: Router, state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/environments") }))
        // Open to anyone: its body is small (a name, a password, a token).
        .route("/login", get(login_page).post(login_submit).layer(axum::extract::DefaultBodyLimit::max(16 * 1024)))
        .route("/logout", post(logout))
        .route("/static/{name}", get(asset))
        // Browsers ask for it on every page: an empty answer they keep,
        // instead of a 404 each time.
        .route(
            "/favicon.ico",
            get(|| async {
                (StatusCode::NO_CONTENT, [(header::CACHE_CONTROL, "public, max-age=31536000, immutable")])
            }),
        )
        .merge(envs::routes())
        .merge(wizard::routes())
        .merge(manage::routes())
        .merge(stacks::routes())
        .merge(jobs::routes())
        .merge(settings::routes())
        .merge(audit::routes())
        .merge(devices::routes())
        .merge(users::routes())
        // Every handler checks the session before it reads a body, so a
        // stranger's request is answered (and its room given back) at once.
        .route_layer(axum::middleware::from_fn_with_state(state, crate::server::http::body_budget))
        .layer(axum::Extension(UiApi(api)))
        .layer(axum::middleware::from_fn(guard))
        // Pages, fragments and assets are text: gzip cuts them to a
        // fifth or less for a browser that accepts it. Only the UI's
        // routes: the agents' poll bodies are zstd already, and every
        // header byte of a poll is paid.
        .layer(tower_http::compression::CompressionLayer::new())
}

/// Every UI response gets the security headers; a request that changes
/// something and comes from another site's page is refused.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD && !same_origin(request.headers()) {
        return secured(error_page(StatusCode::FORBIDDEN, "This form was sent from another site; it was refused."));
    }
    let revalidate = (request.method() == Method::GET).then(|| request.headers().get(header::IF_NONE_MATCH).cloned());
    let resp = next.run(request).await;
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    match revalidate {
        Some(if_none_match) if resp.status() == StatusCode::OK && html => secured(tagged(resp, if_none_match).await),
        _ => secured(resp),
    }
}

/// Gives an HTML answer an `ETag` (its blake3), and answers 304 with no
/// body when the browser already has it: the page's script re-fetches
/// parts that refresh themselves with `If-None-Match`, so an unchanged
/// part costs a few header bytes.
async fn tagged(resp: Response, if_none_match: Option<HeaderValue>) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "The page could not be read.");
    };
    let tag = format!("W/\"{}\"", &blake3::hash(&bytes).to_hex().as_str()[..20]);
    let Ok(value) = HeaderValue::try_from(tag) else { return Response::from_parts(parts, Body::from(bytes)) };
    if if_none_match.as_ref() == Some(&value) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, value);
        return r;
    }
    parts.headers.insert(header::ETAG, value);
    Response::from_parts(parts, Body::from(bytes))
}

/// Whether a request's `Origin` (when it has one) is this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    origin.to_str().ok().and_then(|o| o.strip_prefix("https://")).is_some_and(|o| o.eq_ignore_ascii_case(host))
}

fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = if format!("/static/{name}") == css_path() {
        (CSS, "text/css; charset=utf-8")
    } else if format!("/static/{name}") == js_path() {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return error_page(StatusCode::NOT_FOUND, "No such file.");
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], body)
        .into_response()
}

// ----- calling the API -----

/// An API answer that is not a success.
#[derive(Debug, Clone)]
pub struct ApiFail {
    /// Its status.
    pub status: StatusCode,
    /// Its message.
    pub message: String,
    /// The field it concerns, when the message names one.
    pub field: Option<String>,
}

impl ApiFail {
    /// A conflict that names no field (a taken name) concerns `field`.
    #[must_use]
    pub fn conflict_on(mut self, field: &str) -> Self {
        if self.status == StatusCode::CONFLICT && self.field.is_none() {
            self.field = Some(field.to_owned());
        }
        self
    }

    /// The message, when it concerns `field` (or a sub-field of it),
    /// without the field's name it starts with.
    pub fn for_field(&self, field: &str) -> Option<&str> {
        let f = self.field.as_deref()?;
        // Next to its field, the message goes without the field's name.
        let shown = self.message.split_once(": ").map_or(self.message.as_str(), |(_, m)| m);
        (f == field || f.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))).then_some(shown)
    }
}

/// A successful API answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its headers (`X-Total-Count`).
    pub headers: HeaderMap,
    /// Its JSON body (`null` when empty).
    pub json: Value,
}

impl Reply {
    /// The body as the API's typed view `T`, for the reply to `path`.
    ///
    /// # Errors
    /// A 500 naming `path` when the body is not a `T`.
    pub fn parse<T: DeserializeOwned>(self, path: &str) -> Result<T, ApiFail> {
        serde_json::from_value(self.json).map_err(|e| {
            tracing::error!("ui: the API's reply to GET {path} is not what the page reads: {e}");
            ApiFail {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("the server's reply to {path} is not what this page reads"),
                field: None,
            }
        })
    }

    /// The `X-Total-Count` header of a list (0 when absent).
    pub fn total(&self) -> u64 {
        self.headers.get("x-total-count").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
    }
}

/// A logged-in operator's request: who it is, and a handle to call the
/// API as them. Pages take it as an extractor; without a session, the
/// browser is sent to the login page.
pub struct Ui {
    api: Router,
    cookie: Option<HeaderValue>,
    peer: Option<ConnectInfo<SocketAddr>>,
    /// The operator.
    pub username: String,
    /// The operator's role (`viewer`, `operator`, `admin`): pages leave
    /// out what it may not use (the API refuses it anyway).
    pub role: String,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl Ui {
    /// Whether the operator is an admin.
    pub fn admin(&self) -> bool {
        self.role == "admin"
    }
}

impl FromRequestParts<Arc<AppState>> for Ui {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, Response> {
        let Some(UiApi(api)) = parts.extensions.get::<UiApi>().cloned() else {
            return Err(error_page(StatusCode::INTERNAL_SERVER_ERROR, "The UI is not set up."));
        };
        let mut ui = Self {
            api,
            cookie: parts.headers.get(header::COOKIE).cloned(),
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            username: String::new(),
            role: String::new(),
            csrf: String::new(),
        };
        let back = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let to_login = || Redirect::to(&format!("/login?next={}", encode(&back))).into_response();
        if ui.cookie.is_none() {
            return Err(to_login());
        }
        match ui.get_as::<Me>("/api/auth/me").await {
            Ok(Me::Session { username, csrf_token, role, .. }) => {
                ui.username = username;
                ui.role = role;
                ui.csrf = csrf_token;
                Ok(ui)
            }
            Ok(Me::Token { .. }) => Err(to_login()),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(to_login()),
            Err(e) => Err(error_page(e.status, &e.message)),
        }
    }
}

impl Ui {
    /// Calls the API as this operator. `csrf` is the token the submitted
    /// form carried (the API checks it); GETs need none.
    ///
    /// # Errors
    /// The API's error, with the field it concerns.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        csrf: Option<&str>,
    ) -> Result<Reply, ApiFail> {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c.clone());
        }
        if let Some(t) = csrf {
            req = req.header(super::api::access::CSRF_HEADER, t);
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).map_err(|e| ApiFail {
            status: StatusCode::BAD_REQUEST,
            message: format!("bad request: {e}"),
            field: None,
        })?;
        if let Some(p) = self.peer {
            req.extensions_mut().insert(p);
        }
        let resp = self.api.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap_or_default();
        let json: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if status.is_success() {
            return Ok(Reply { headers, json });
        }
        let (mut message, field) = match serde_json::from_value::<ErrorBody>(json) {
            Ok(b) => (b.error, b.field),
            Err(_) => (format!("the API answered {status}"), None),
        };
        if status == StatusCode::FORBIDDEN && message.contains("X-CSRF-Token") {
            // A form loaded before the operator logged in again (a new
            // session, a new token): say so in their words.
            message = STALE_FORM.to_owned();
        }
        Err(ApiFail { status, message, field })
    }

    /// `GET path`.
    ///
    /// # Errors
    /// The API's error.
    pub async fn get(&self, path: &str) -> Result<Reply, ApiFail> {
        self.call(Method::GET, path, None, None).await
    }

    /// `GET path`, read as the API's typed view `T` (a reply that is not
    /// a `T` is a 500 naming the path: the page and the API disagree).
    ///
    /// # Errors
    /// The API's error, or that one.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFail> {
        self.get(path).await?.parse(path)
    }

    /// [`Self::get_as`] for a page: a failure becomes the page's answer.
    ///
    /// # Errors
    /// The response to send instead.
    pub async fn load_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, Response> {
        self.get_as(path).await.map_err(|e| fail_page(&e))
    }

    /// A change with a typed request body, under the form's CSRF token.
    ///
    /// # Errors
    /// The API's error.
    pub async fn send_as<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        csrf: &str,
    ) -> Result<Reply, ApiFail> {
        let body = serde_json::to_value(body).map_err(|e| ApiFail {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("this request cannot be written: {e}"),
            field: None,
        })?;
        self.send(method, path, &body, csrf).await
    }

    /// A change: `method path` with a JSON body, under the form's CSRF token.
    ///
    /// # Errors
    /// The API's error.
    pub async fn send(&self, method: Method, path: &str, body: &Value, csrf: &str) -> Result<Reply, ApiFail> {
        self.call(method, path, Some(body), Some(csrf)).await
    }

    /// `GET path` for a page: an API failure becomes the page's answer
    /// (the login page when the session ended).
    ///
    /// # Errors
    /// The response to send instead.
    pub async fn load(&self, path: &str) -> Result<Reply, Response> {
        self.get(path).await.map_err(|e| fail_page(&e))
    }
}

/// The names in a list the API gives (groups, tags): the options of a
/// `<select>` or a `<datalist>`; none when the API fails (a page still
/// shows, without suggestions).
pub async fn label_names(ui: &Ui, path: &str) -> Vec<String> {
    ui.get_as::<Vec<LabelView>>(path).await.map(|a| a.into_iter().map(|l| l.name).collect()).unwrap_or_default()
}

/// The response for an API failure while loading a page.
pub fn fail_page(e: &ApiFail) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        Redirect::to("/login").into_response()
    } else {
        error_page(e.status, &e.message)
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ----- the layout -----

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Environments.
    Environments,
    /// Stacks.
    Stacks,
    /// Jobs.
    Jobs,
    /// The waiting room and fleet tokens.
    Devices,
    /// The audit log.
    Audit,
    /// Users and roles.
    Users,
    /// Settings.
    Settings,
    /// None (login, errors).
    None,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · tern" }
            link rel="stylesheet" href=(css_path());
            script src=(js_path()) defer {}
        }
    }
}

/// A whole page for a logged-in operator.
pub fn page(ui: &Ui, nav: Nav, title: &str, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-csrf=(ui.csrf) {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    a.brand href="/environments" { "tern" }
                    nav aria-label="Main" {
                        (item(Nav::Environments, "/environments", "Environments"))
                        (item(Nav::Stacks, "/stacks", "Stacks"))
                        (item(Nav::Jobs, "/jobs", "Jobs"))
                        @if ui.admin() {
                            (item(Nav::Devices, "/devices", "Waiting room"))
                            (item(Nav::Audit, "/audit", "Audit"))
                            (item(Nav::Users, "/users", "Users"))
                        }
                        (item(Nav::Settings, "/settings", "Settings"))
                    }
                    form.logout method="post" action="/logout" {
                        (csrf_field(&ui.csrf))
                        span.user { (ui.username) @if !ui.role.is_empty() { " (" (ui.role) ")" } }
                        button type="submit" { "Log out" }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// A page with no session (login, errors).
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/environments" { "tern" } }
                main id="main" { (body) }
            }
        }
    }
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    (
        status,
        bare(
            title,
            html! {
                h1 { (title) }
                p.error role="alert" { (message) }
                p { a href="/environments" { "Back to the environments" } }
            },
        ),
    )
        .into_response()
}

/// The hidden CSRF field every form that changes something carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A labelled text input with its error, if the API named it.
pub fn text_field(name: &str, label: &str, value: &str, err: Option<&ApiFail>, attrs: FieldAttrs) -> Markup {
    let id = format!("f-{}", name.replace('.', "-"));
    let message = err.and_then(|e| e.for_field(attrs.api_field.unwrap_or(name)));
    let err_id = format!("{id}-error");
    html! {
        div.field {
            label for=(id) { (label) }
            @if attrs.multiline {
                textarea id=(id) name=(name) rows="12" required[attrs.required]
                    aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| &err_id)] { (value) }
            } @else {
                input id=(id) name=(name) type=(attrs.kind) value=(value) required[attrs.required]
                    placeholder=[attrs.placeholder] autocomplete=[attrs.autocomplete]
                    aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| &err_id)];
            }
            @if let Some(m) = message { p.field-error id=(err_id) role="alert" { (m) } }
            @if let Some(h) = attrs.hint { p.hint { (h) } }
        }
    }
}

/// How [`text_field`] draws its input.
#[derive(Debug, Clone, Copy)]
pub struct FieldAttrs {
    /// The input's type.
    pub kind: &'static str,
    /// Whether it must be filled.
    pub required: bool,
    /// A textarea instead.
    pub multiline: bool,
    /// A placeholder.
    pub placeholder: Option<&'static str>,
    /// A hint under it.
    pub hint: Option<&'static str>,
    /// The API's name of the field, when not the form's.
    pub api_field: Option<&'static str>,
    /// The `autocomplete` attribute.
    pub autocomplete: Option<&'static str>,
}

impl Default for FieldAttrs {
    fn default() -> Self {
        Self {
            kind: "text",
            required: false,
            multiline: false,
            placeholder: None,
            hint: None,
            api_field: None,
            autocomplete: None,
        }
    }
}

/// An API error that concerns no field of the form, shown above it.
pub fn form_error(err: Option<&ApiFail>, fields: &[&str]) -> Markup {
    let shown = err.filter(|e| !fields.iter().any(|f| e.for_field(f).is_some()));
    html! { @if let Some(e) = shown { p.error role="alert" { (e.message) } } }
}

// ----- small formatting -----

/// "4 minutes ago" for an age in seconds.
pub fn ago(age: i64) -> String {
    let age = age.max(0);
    let (n, unit) = match age {
        0..=9 => return "just now".to_owned(),
        10..=59 => (age, "second"),
        60..=3599 => (age / 60, "minute"),
        3600..=86_399 => (age / 3600, "hour"),
        _ => (age / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// "1.2 MB" (decimal units, as data plans count).
pub fn bytes(n: u64) -> String {
    match n {
        0..=999 => format!("{n} B"),
        1000..=999_999 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// A UTC time, `2026-11-28 10:04 UTC`.
pub fn utc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t).map_or_else(
        |_| t.to_string(),
        |d| format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", d.year(), u8::from(d.month()), d.day(), d.hour(), d.minute()),
    )
}

/// A `<time>` showing how long ago `t` was, with the exact time on hover.
pub fn when(t: Option<i64>, now: i64) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(t) title=(utc(t)) { (ago(now - t)) },
            None => span.muted { "never" },
        }
    }
}

/// Seconds since the Unix epoch.
pub use crate::clock::unix_now as now;

/// Whether the browser asked for JSON (the page's script) rather than a page.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

// ----- login -----

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path on this server is a place to go back to.
///
/// A browser strips tabs and newlines from a URL and reads a backslash as `/`,
/// so `/\t/evil.example` would leave the site: any whitespace, control
/// character or backslash, a second leading `/`, or anything but a plain
/// path and query sends the operator to the environments instead.
fn safe_next(next: Option<&str>) -> String {
    let ok = |n: &str| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.starts_with("/login")
            && n.len() <= 2048
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
    };
    match next {
        Some(n) if ok(n) => n.to_owned(),
        _ => "/environments".to_owned(),
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

fn login_form(next: &str, token: &str, username: &str, error: Option<&str>) -> Markup {
    bare(
        "Log in",
        html! {
            section.login {
                h1 { "Log in" }
                @if let Some(e) = error { p.error role="alert" id="login-error" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="login_token" value=(token);
                    input type="hidden" name="next" value=(next);
                    div.field {
                        label for="f-username" { "User name" }
                        input id="f-username" name="username" value=(username) autocomplete="username" required autofocus;
                    }
                    div.field {
                        label for="f-password" { "Password" }
                        input id="f-password" name="password" type="password" autocomplete="current-password" required
                            aria-describedby=[error.map(|_| "login-error")];
                    }
                    button.primary type="submit" { "Log in" }
                }
                p.hint { "The admin password was printed once when the server first started; "
                    code { "tern admin reset-password" } " sets a new one." }
            }
        },
    )
}

fn login_response(status: StatusCode, next: &str, username: &str, error: Option<&str>) -> Response {
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        super::store::access::random_bytes::<24>(),
    );
    let cookie = format!("{LOGIN_COOKIE}={token}; Secure; HttpOnly; SameSite=Strict; Path=/login; Max-Age=3600");
    let mut r = (status, login_form(next, &token, username, error)).into_response();
    if let Ok(v) = HeaderValue::try_from(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    login_response(StatusCode::OK, &safe_next(q.next.as_deref()), "", None)
}

/// The TCP peer, when known (the login rate limit counts by it).
struct Peer(Option<ConnectInfo<SocketAddr>>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned()))
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    login_token: String,
    next: Option<String>,
}

async fn login_submit(
    axum::Extension(UiApi(api)): axum::Extension<UiApi>,
    Peer(peer): Peer,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let expected = cookie_value(&headers, LOGIN_COOKIE);
    if expected.as_deref() != Some(form.login_token.as_str()) || form.login_token.is_empty() {
        return login_response(
            StatusCode::FORBIDDEN,
            &next,
            &form.username,
            Some("The login form expired or did not come from this page; try again."),
        );
    }
    let body = Login { username: form.username.clone(), password: form.password };
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
        .unwrap_or_default();
    if let Some(p) = peer {
        req.extensions_mut().insert(p);
    }
    let resp = api.oneshot(req).await.unwrap_or_else(|e| match e {});
    if resp.status().is_success() {
        let mut r = Redirect::to(&next).into_response();
        for c in resp.headers().get_all(header::SET_COOKIE) {
            r.headers_mut().append(header::SET_COOKIE, c.clone());
        }
        return r;
    }
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap_or_default();
    let message =
        serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(|_| format!("login failed ({status})"), |b| b.error);
    login_response(status, &next, &form.username, Some(&message))
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(ui: Ui, axum::Form(form): axum::Form<CsrfForm>) -> Response {
    match ui.call(Method::POST, "/api/auth/logout", None, Some(&form.csrf)).await {
        Ok(r) => {
            let mut resp = Redirect::to("/login").into_response();
            for c in r.headers.get_all(header::SET_COOKIE) {
                resp.headers_mut().append(header::SET_COOKIE, c.clone());
            }
            resp
        }
        Err(e) => error_page(e.status, &e.message),
    }
}

/// The markup of a raw SVG or HTML string made by this module (never
/// from input).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_path_on_this_server_is_a_place_to_go_after_login() {
        for good in ["/environments", "/environments/3?tab=images", "/stacks/1"] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\t/evil.example",
            "/\u{0}/evil.example",
            "/\n",
            "/\\evil.example",
            "/ /x",
            "/login?next=/x",
            "",
            "environments",
        ] {
            assert_eq!(safe_next(Some(bad)), "/environments", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/environments");
    }
}
