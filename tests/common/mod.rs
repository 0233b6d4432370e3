//! Helpers shared by the tests that run the real `tern` binary against the
//! real Docker engine. Everything a test creates carries its prefix and is
//! removed on drop, even when the test fails.

#![allow(dead_code)]

pub mod haproxy;
pub mod images;
pub mod proxy;
pub mod registry;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern::agent::client::Client;
use tern::tls::Trust;

/// Runs the docker CLI; panics with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs the docker CLI, ignoring failure (cleanup).
pub fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A fresh temporary directory.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Docker objects named `<prefix>-*`, and an image `<prefix>-img:1` holding
/// a static busybox (no registry here: `docker import` of a one-file root
/// filesystem; `.ci/run` installs Debian's busybox-static).
pub struct Objects {
    /// The name prefix.
    pub prefix: String,
    /// The image reference.
    pub image: String,
}

impl Objects {
    /// Builds the image.
    pub fn new(prefix: &str) -> Self {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("a static busybox (apt-get install busybox-static)");
        let root = tempdir(&format!("{prefix}-rootfs"));
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let image = format!("{prefix}-img:1");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C {} -c . | docker import - {image} >/dev/null", root.display()))
            .status()
            .unwrap();
        assert!(status.success(), "docker import");
        let _ = std::fs::remove_dir_all(&root);
        Self { prefix: prefix.to_owned(), image }
    }

    /// `<prefix>-<name>`.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Starts a container that sleeps, and exits at once on SIGTERM (a
    /// shell as PID 1 with a trap; a bare `sleep` would ignore it and make
    /// every stop wait out Docker's 10 s grace period).
    pub fn run_sleeper(&self, name: &str) -> String {
        let script = "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done";
        docker(&["run", "-d", "--name", &self.name(name), &self.image, "/bin/busybox", "sh", "-c", script])
    }

    /// A container's `.State.Status`, or `None` when it is gone.
    pub fn status(&self, name: &str) -> Option<String> {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{.State.Status}}", &self.name(name)])
            .output()
            .unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        let filter = format!("name={}-", self.prefix);
        let ids = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output().unwrap();
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            docker_quiet(&["rm", "-f", "-v", id]);
        }
        for kind in ["volume", "network"] {
            let out = Command::new("docker").args([kind, "ls", "-q", "--filter", &filter]).output().unwrap();
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                docker_quiet(&[kind, "rm", id]);
            }
        }
        let images = Command::new("docker")
            .args([
                "images",
                "--format",
                "{{.Repository}}:{{.Tag}}",
                "--filter",
                &format!("reference={}-*", self.prefix),
            ])
            .output()
            .unwrap();
        for r in String::from_utf8_lossy(&images.stdout).split_whitespace() {
            docker_quiet(&["rmi", "-f", r]);
        }
    }
}

/// With `TERN_TEST_POSTGRES` set (an admin URL, as `scripts/postgres.sh
/// start` prints), servers keep their data in PostgreSQL: one database per
/// data directory, so that a server restarted on the same directory finds
/// its data again. `None`: SQLite in the data directory.
pub fn test_database(data: &Path) -> Option<String> {
    let admin = std::env::var("TERN_TEST_POSTGRES").ok().filter(|u| !u.is_empty())?;
    let path = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_owned());
    let hash = blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex();
    let name = format!("tern_it_{}", &hash[..16]);
    Some(tern::server::store::postgres::PgPool::ensure_database(&admin, &name).expect("test database"))
}

/// A connection of the test's own to the database of the server on
/// `data` (SQLite's file there, or its PostgreSQL database), to stage what
/// only time or an agent would do.
pub fn open_store(data: &Path) -> tern::server::store::Store {
    use tern::server::store::{Store, postgres::PgPool};
    match test_database(data) {
        Some(url) => Store::postgres(PgPool::connect(&url).unwrap().get().unwrap()),
        None => Store::open(&data.join("tern.db")).unwrap(),
    }
}

/// The configuration of an in-process server on `data`: SQLite there, or
/// PostgreSQL (see [`test_database`]).
pub fn server_config(data: &Path) -> tern::server::ServerConfig {
    tern::server::ServerConfig { database: test_database(data), ..tern::server::ServerConfig::new(data.to_owned()) }
}

/// The engine's root digest, read the way the agent reads it.
pub async fn engine_root() -> String {
    let docker = tern::agent::connect().await.unwrap();
    let state = tern::agent::collect(&docker).await.unwrap().canonical(&Default::default()).unwrap();
    blake3::Hash::from(state.root()).to_hex().to_string()
}

/// Waits until the server's copy of `env` equals the engine (other tests
/// may be changing the engine too, so both sides are re-read until they
/// agree).
pub async fn converged(api: &mut Api, env: u64, limit: Duration) {
    let deadline = Deadline::new(limit);
    loop {
        let summary = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
        let engine = engine_root().await;
        if summary["root"].as_str() == Some(engine.as_str()) {
            return;
        }
        deadline.tick(format_args!("the server's root {} to equal the engine's {engine}", summary["root"])).await;
    }
}

/// How many times the engine did `action` to a container since `since`.
pub fn engine_events(container: &str, since: &str, action: &str) -> usize {
    let until = chrono_now();
    docker(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={container}"),
        "--filter",
        &format!("event={action}"),
        "--format",
        "{{.Action}}",
    ])
    .lines()
    .count()
}

/// Now, in Unix seconds, as `docker events --since` takes it.
pub fn chrono_now() -> String {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string()
}

/// Waits for a command to end; its JSON.
pub async fn wait_command(api: &mut Api, id: u64, limit: Duration) -> serde_json::Value {
    let deadline = Deadline::new(limit);
    loop {
        let c = api.ok("GET", &format!("/api/commands/{id}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed" | "rejected")) {
            return c;
        }
        deadline.tick(format_args!("command {id} to finish ({c})")).await;
    }
}

/// The `up=` figure of each poll an agent logged.
pub fn poll_sizes(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(" poll ") || l.ends_with(" poll"))
        .filter_map(|l| l.split("up=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A certificate fingerprint as `tern server` prints it (`aa:bb:...`).
pub fn parse_fingerprint(hex: &str) -> [u8; 32] {
    let bytes: Vec<u8> = hex.trim().split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Creates an environment named `name` on the server at `url` (its
/// agents poll there, a load balancer say), starts a real `tern agent`
/// for it on this host (data and log in `dir`), and waits until the
/// server holds this engine's state and shows it online.
pub async fn enrol_host_agent(api: &mut Api, url: &str, name: &str, dir: &Path, limit: Duration) -> AgentProcess {
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(serde_json::json!({"name": name, "url": url, "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let data = dir.join(format!("{name}-agent"));
    let vars = [("EDGE_KEY", created["edge_key"].as_str().unwrap()), ("DATA_PATH", data.to_str().unwrap())];
    let agent = AgentProcess::start(&vars, &dir.join(format!("{name}-agent.log")));
    converged(api, env, limit).await;
    let summary = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(summary["status"], "online", "{summary}");
    agent
}

/// `tern server` as a child process.
pub struct Server {
    child: Child,
    /// Its stdout's first lines.
    pub lines: Vec<String>,
    /// The data directory.
    pub data: PathBuf,
}

impl Server {
    /// Starts on `listen` (e.g. `127.0.0.1:0`).
    pub fn start(data: &Path, listen: &str) -> Self {
        Self::start_with(data, listen, &[])
    }

    /// Starts with extra environment variables.
    pub fn start_with(data: &Path, listen: &str, vars: &[(&str, &str)]) -> Self {
        Self::start_as(data, listen, vars, |_| {})
    }

    /// Starts with extra environment variables and whatever `setup` does
    /// to the command (its stderr, limits).
    pub fn start_as(data: &Path, listen: &str, vars: &[(&str, &str)], setup: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["server", "--listen", listen, "--data"]).arg(data);
        if let Some(url) = test_database(data).filter(|_| !vars.iter().any(|(k, _)| *k == "TERN_DATABASE_URL")) {
            cmd.env("TERN_DATABASE_URL", url);
        }
        cmd.envs(vars.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::null());
        setup(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = (0..3)
            .map(|_| {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                l.trim().to_owned()
            })
            .collect();
        Self { child, lines, data: data.to_owned() }
    }

    /// The value of the stdout line starting with `prefix`.
    pub fn value(&self, prefix: &str) -> String {
        self.lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{:?}", self.lines)).to_owned()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.value("listening on ")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The certificate fingerprint it printed.
    pub fn fingerprint(&self) -> [u8; 32] {
        parse_fingerprint(&self.value("certificate sha256 "))
    }

    /// An API client with the admin token.
    pub fn api(&self) -> Api {
        let token = std::fs::read_to_string(tern::server::admin_token_path(&self.data)).unwrap().trim().to_owned();
        Api { client: Client::new(&self.url(), Trust::Pinned(self.fingerprint()), 16 << 20).unwrap(), token }
    }

    /// SIGINT (Ctrl-C), and wait for it to exit; its exit status (None:
    /// it had to be killed).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        signal(&self.child, "INT");
        wait_exit(&mut self.child)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the machine dies, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
}

fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The REST API, as the CLI and UI use it.
pub struct Api {
    client: Client,
    token: String,
}

impl Api {
    /// A client for the API at `url` (a load balancer, say), pinned to
    /// `fingerprint`, with `token`.
    pub fn new(url: &str, fingerprint: [u8; 32], token: &str) -> Self {
        Self { client: Client::new(url, Trust::Pinned(fingerprint), 16 << 20).unwrap(), token: token.to_owned() }
    }

    /// Any call; returns the status and the JSON body (Null when empty).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.send(method, path, body.map(|b| b.to_string().into_bytes())).await
    }

    /// A call with a body of raw bytes (an image upload's piece).
    pub async fn raw(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        self.send(method, path, Some(body)).await
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, serde_json::Value) {
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, bytes) = self.client.api(method, path, &self.token, body).await.unwrap();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, json)
    }

    /// A call that must answer `expect`.
    pub async fn ok(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        expect: u16,
    ) -> serde_json::Value {
        let (status, json) = self.call(method, path, body).await;
        assert_eq!(status, expect, "{method} {path}: {json}");
        json
    }
}

/// `tern agent` as a child process, logging to a file.
pub struct AgentProcess {
    child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts with these environment variables (plus LOG_LEVEL=debug).
    pub fn start(vars: &[(&str, &str)], log: &Path) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_tern")), vars, log)
    }

    /// Starts in the network namespace `netns` (`ip netns exec`, which
    /// execs the agent: the child is the agent itself).
    pub fn start_in(netns: &str, vars: &[(&str, &str)], log: &Path) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_tern")]);
        Self::spawn(cmd, vars, log)
    }

    fn spawn(mut cmd: Command, vars: &[(&str, &str)], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        cmd.arg("agent").env("LOG_LEVEL", "debug").stdout(Stdio::null()).stderr(file);
        // A proxy set on the machine running the tests is not the test's.
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"] {
            cmd.env_remove(name);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Self { child: cmd.spawn().unwrap(), log: log.to_owned() }
    }

    /// SIGTERM (what `docker stop` sends), and wait for it to exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child)
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bounded wait: `tick` sleeps a little, and fails the test once the
/// limit has passed.
pub struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    /// Starts now.
    pub fn new(limit: Duration) -> Self {
        Self { start: Instant::now(), limit }
    }

    /// Sleeps 200 ms, or panics with `what` when the time is up.
    pub async fn tick(&self, what: impl std::fmt::Display) {
        assert!(self.start.elapsed() < self.limit, "timed out after {:?} waiting for {what}", self.limit);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----- a browser-like HTTPS client for the UI's forms -----
//
// (added with tests/ui_settings.rs) `UiClient` talks to the UI as a browser
// without a script does: it pins the server's certificate, keeps the
// cookies the server sets, logs in through the login form (its
// double-submit `login_token`), posts forms `application/x-www-form-urlencoded`
// with an `Origin` of the server, follows no redirect by itself, and keeps
// the session's CSRF token from the `data-csrf` of each page's `<body>`.

/// What the UI answered.
#[derive(Debug, Clone)]
pub struct UiReply {
    /// The status.
    pub status: u16,
    /// The `Location` of a redirect.
    pub location: Option<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl UiReply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A browser-like client of the UI (see the section's comment).
pub struct UiClient {
    authority: String,
    connector: tokio_rustls::TlsConnector,
    cookies: Vec<(String, String)>,
    /// The session's CSRF token, from the last page that carried one.
    pub csrf: String,
}

impl UiClient {
    /// A client with no cookie yet.
    pub fn new(server: &Server) -> Self {
        let config = tern::tls::client_config(Trust::Pinned(server.fingerprint())).unwrap();
        Self {
            authority: server.addr(),
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    /// A client logged in as `admin`; panics when the login is refused.
    pub async fn login(server: &Server, password: &str) -> Self {
        let mut c = Self::new(server);
        let r = c.try_login("admin", password).await;
        assert_eq!(r.status, 303, "login refused: {}", r.body);
        assert!(c.cookie("tern_session").is_some(), "no session cookie after login");
        let page = c.get("/environments").await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!c.csrf.is_empty(), "no data-csrf on the page");
        c
    }

    /// Logs in through the form: `GET /login` (its cookie and hidden
    /// `login_token`), then `POST /login`. The POST's answer (303 on
    /// success).
    pub async fn try_login(&mut self, username: &str, password: &str) -> UiReply {
        let form = self.get("/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = input_value(&form.body, "login_token").expect("no login_token on the login page");
        self.post_form(
            "/login",
            &[("username", username), ("password", password), ("login_token", &token), ("next", "/environments")],
        )
        .await
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> UiReply {
        self.request("GET", path, None).await
    }

    /// `POST path` with these form fields, as they are (add the CSRF token
    /// yourself, or use [`Self::submit`]).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> UiReply {
        let body = fields.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>();
        self.request("POST", path, Some(body.join("&"))).await
    }

    /// `POST path` with these fields and the session's CSRF token.
    pub async fn submit(&mut self, path: &str, fields: &[(&str, &str)]) -> UiReply {
        let csrf = self.csrf.clone();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_form(path, &all).await
    }

    /// An API call with the session's cookie and CSRF token (as the UI's
    /// script makes them), with a JSON body.
    pub async fn api_json(&mut self, method: &str, path: &str, json: &str) -> UiReply {
        self.request_with(method, path, Some(("application/json", json.to_owned())), true).await
    }

    async fn request(&mut self, method: &str, path: &str, form: Option<String>) -> UiReply {
        self.request_with(method, path, form.map(|f| ("application/x-www-form-urlencoded", f)), false).await
    }

    async fn request_with(&mut self, method: &str, path: &str, body: Option<(&str, String)>, api: bool) -> UiReply {
        use http_body_util::BodyExt as _;
        // A browser keeps the fragment (`#section`) to itself.
        let path = path.split('#').next().unwrap_or(path);
        let tcp = tokio::net::TcpStream::connect(&self.authority).await.unwrap();
        let host = self.authority.rsplit_once(':').map_or(self.authority.as_str(), |(h, _)| h).to_owned();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let tls = self.connector.connect(name, tcp).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, if api { "application/json" } else { "text/html" });
        if api {
            req = req.header("x-csrf-token", &self.csrf);
        }
        if !self.cookies.is_empty() {
            let jar = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            req = req.header(hyper::header::COOKIE, jar);
        }
        let body = match body {
            Some((kind, f)) => {
                req = req
                    .header(hyper::header::CONTENT_TYPE, kind)
                    .header(hyper::header::ORIGIN, format!("https://{}", self.authority));
                bytes::Bytes::from(f)
            }
            None => bytes::Bytes::new(),
        };
        let resp = send.send_request(req.body(http_body_util::Full::new(body)).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        for (k, v) in &headers {
            if k == "set-cookie" {
                self.set_cookie(v);
            }
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(csrf) = attr_after(&body, "<body", "data-csrf") {
            self.csrf = csrf;
        }
        let location = headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
        UiReply { status, location, headers, body }
    }

    fn set_cookie(&mut self, header: &str) {
        let first = header.split(';').next().unwrap_or_default();
        let Some((name, value)) = first.split_once('=') else { return };
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        let expired = header.split(';').any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        self.cookies.retain(|(k, _)| *k != name);
        if !expired && !value.is_empty() {
            self.cookies.push((name, value));
        }
    }
}

/// Percent-encodes a form value (everything but unreserved characters).
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Undoes the HTML escapes maud writes.
pub fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The value of attribute `attr` in the first tag that starts with `tag_start`
/// (`<body`, `<input id="f-name"`).
pub fn attr_after(html: &str, tag_start: &str, attr: &str) -> Option<String> {
    let at = html.find(tag_start)?;
    let tag = &html[at..at + html[at..].find('>')?];
    let needle = format!(" {attr}=\"");
    let v = &tag[tag.find(&needle)? + needle.len()..];
    Some(html_unescape(&v[..v.find('"')?]))
}

/// The `value` of the first `<input>` named `name`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let start = html[..at].rfind('<')?;
    attr_after(&html[start..], "<input", "value")
}

/// The text of the element with id `id`: each tag becomes a space (so
/// table cells read `a b`), whitespace is collapsed, escapes are undone.
pub fn text_by_id(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!(" id=\"{id}\""))?;
    let open = html[..at].rfind('<')?;
    let tag: String = html[open + 1..].chars().take_while(char::is_ascii_alphanumeric).collect();
    let content_start = at + html[at..].find('>')? + 1;
    // The matching close tag, counting nested tags of the same name.
    let (mut depth, mut i) = (1usize, content_start);
    let (open_tag, close_tag) = (format!("<{tag}"), format!("</{tag}>"));
    while depth > 0 {
        let next_close = i + html[i..].find(&close_tag)?;
        let nested = html[i..next_close]
            .match_indices(&open_tag)
            .map(|(o, _)| i + o + open_tag.len())
            .find(|&end| html[end..].starts_with([' ', '>']));
        match nested {
            Some(end) => {
                depth += 1;
                i = end;
            }
            None => {
                depth -= 1;
                i = next_close + close_tag.len();
            }
        }
    }
    let inner = &html[content_start..i - close_tag.len()];
    let mut text = String::new();
    let mut in_tag = false;
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(html_unescape(&text.split_whitespace().collect::<Vec<_>>().join(" ")))
}

/// Removes what a compose project left on drop, test failed or not: its
/// containers (with their anonymous volumes) and networks, by compose's
/// label, and its volumes (named `<project>_*`, which an `Objects` prefix
/// does not catch).
pub struct ComposeProject(pub String);

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.0);
        let volumes = format!("name={}_", self.0);
        for (kind, ls, filter) in [
            ("container", &["ps", "-aq"][..], &label),
            ("network", &["network", "ls", "-q"][..], &label),
            ("volume", &["volume", "ls", "-q"][..], &volumes),
        ] {
            let out = Command::new("docker").args(ls).args(["--filter", filter]).output();
            let ids = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for id in ids.split_whitespace() {
                match kind {
                    "container" => docker_quiet(&["rm", "-f", "-v", id]),
                    _ => docker_quiet(&[kind, "rm", id]),
                }
            }
        }
    }
}

/// `tern ARGS --server URL --data DIR` (none of the CLI's variables from
/// the test's environment): stdout, or the failure's stderr.
pub fn tern_cli(server: &Server, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .args(["--server", &server.url(), "--data"])
        .arg(&server.data)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_SERVER")
        .env_remove("TERN_DATA")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// [`tern_cli`] that must succeed: stdout, or a panic with stderr.
pub fn tern_ok(server: &Server, args: &[&str]) -> String {
    tern_cli(server, args).unwrap_or_else(|e| panic!("tern {args:?}: {e}"))
}

/// The agent image to test (`tern-agent:latest`, or the one
/// `TERN_AGENT_IMAGE` names), `None` to skip (outside CI only: `.ci/run`
/// builds it).
pub fn agent_image() -> Option<String> {
    use tern::server::domain::deploy::AGENT_IMAGE;
    let exists = |image: &str| {
        Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(named) = std::env::var("TERN_AGENT_IMAGE").ok().filter(|v| !v.trim().is_empty()) {
        assert!(exists(&named), "TERN_AGENT_IMAGE={named}: no such image in the local engine");
        return Some(named);
    }
    if exists(AGENT_IMAGE) {
        return Some(AGENT_IMAGE.to_owned());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !ci,
        "CI: the image {AGENT_IMAGE} does not exist; `.ci/run` builds it with scripts/agent-image.sh before the tests"
    );
    eprintln!(
        "SKIPPED: no image {AGENT_IMAGE} in the local engine (build it with scripts/agent-image.sh, or \
         name another with TERN_AGENT_IMAGE)"
    );
    None
}

/// This host as a container on the default bridge network sees it: the
/// container's default gateway (the bridge's IPAM config may not name it).
pub fn bridge_gateway(image: &str) -> String {
    let route = docker(&["run", "--rm", image, "/bin/busybox", "ip", "-4", "route", "show", "default"]);
    route
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| {
            panic!("no IPv4 default gateway on the bridge network ({route:?}): a container cannot reach this host")
        })
        .to_owned()
}
