//! Operators and access, against the real `tern server` binary on
//! 127.0.0.1:0: the admin account made at first start, login sessions with
//! their cookie and CSRF token, failed logins rate-limited, API tokens,
//! the data directory's admin token, every endpoint refusing a missing or
//! wrong credential, password changes, and the `tern token` / `tern admin`
//! CLI.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tern::server::api::access::{MAX_FAILURES_PER_CLIENT, SESSION_COOKIE};
use tern::tls::{TlsOptions, Trust, client_config_with};

const PASSWORD: &str = "a long admin password";

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tern-access-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `tern server` as a child process.
struct Server {
    child: Child,
    out: BufReader<ChildStdout>,
    lines: Vec<String>,
    data: PathBuf,
}

impl Server {
    /// Starts it with these variables (and no admin password from the
    /// environment the tests run in), reading its first `lines` stdout lines.
    fn start(data: &Path, vars: &[(&str, &str)], lines: usize) -> Self {
        // SQLite in the data directory, or PostgreSQL in CI's second pass.
        let db = common::test_database(data);
        #[allow(clippy::zombie_processes)] // Drop waits for it.
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .envs(db.iter().map(|u| ("TERN_DATABASE_URL", u.as_str())))
            .env_remove("TERN_ADMIN_PASSWORD")
            .env_remove("TERN_ADMIN_PASSWORD_FILE")
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = (0..lines)
            .map(|_| {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                l.trim().to_owned()
            })
            .collect();
        Self { child, out, lines, data: data.to_owned() }
    }

    fn value(&self, prefix: &str) -> String {
        self.lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{:?}", self.lines)).to_owned()
    }

    fn addr(&self) -> SocketAddr {
        self.value("listening on ").parse().unwrap()
    }

    fn pin(&self) -> [u8; 32] {
        tern::cli::parse_fingerprint(&self.value("certificate sha256 ")).unwrap()
    }

    fn http(&self) -> Http {
        Http::new(self.addr(), self.pin(), None)
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap().trim().to_owned()
    }

    /// Ctrl-C; returns what it printed after the lines read at start.
    fn stop(mut self) -> String {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut rest = String::new();
        let _ = self.child.kill();
        let _ = self.out.read_to_string(&mut rest);
        rest
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client that sends any header and shows every reply header (a
/// browser's view of the API), one connection a request, from a chosen
/// local address.
struct Http {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    local: Option<IpAddr>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_else(|| panic!("not an error body: {self:?}"))
    }
}

impl Http {
    fn new(addr: SocketAddr, pin: [u8; 32], local: Option<IpAddr>) -> Self {
        let config = client_config_with(Trust::Pinned(pin), TlsOptions::default()).unwrap();
        Self { addr, tls: tokio_rustls::TlsConnector::from(Arc::new(config)), local }
    }

    /// From another loopback address (another client, as the server sees it).
    fn from(&self, local: &str) -> Self {
        Self { addr: self.addr, tls: self.tls.clone(), local: Some(local.parse().unwrap()) }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        let tcp = match self.local {
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(self.addr).await.unwrap()
            }
            None => tokio::net::TcpStream::connect(self.addr).await.unwrap(),
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.tls.connect(name, tcp).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder().method(method).uri(path).header(header::HOST, "localhost");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default().to_owned()))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    async fn bearer(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {token}");
        self.send(method, path, &[("authorization", &auth)], body.map(|b| b.to_string()).as_deref()).await
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        let body = json!({ "username": username, "password": password }).to_string();
        self.send("POST", "/api/auth/login", &[], Some(&body)).await
    }

    /// Logs in; returns the session.
    async fn session(&self, password: &str) -> Session {
        let r = self.login("admin", password).await;
        assert_eq!(r.status, 200, "{r:?}");
        let cookie = r.headers[header::SET_COOKIE].to_str().unwrap();
        let id = cookie.split(';').next().unwrap().strip_prefix(&format!("{SESSION_COOKIE}=")).unwrap();
        Session { cookie: format!("{SESSION_COOKIE}={id}"), csrf: r.body["csrf_token"].as_str().unwrap().to_owned() }
    }
}

/// A logged-in browser: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    /// A request with the cookie, and with the CSRF token when `csrf`.
    async fn call(&self, http: &Http, csrf: bool, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut headers = vec![("cookie", self.cookie.as_str())];
        if csrf {
            headers.push(("x-csrf-token", self.csrf.as_str()));
        }
        http.send(method, path, &headers, body.map(|b| b.to_string()).as_deref()).await
    }
}

#[tokio::test]
async fn first_start_makes_the_admin_with_the_password_from_the_environment_or_its_file() {
    let data = tempdir("env-password");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    assert_eq!(http.login("admin", PASSWORD).await.status, 200);
    assert_eq!(http.login("admin", "another password").await.status, 401);
    let rest = server.stop();
    assert!(!rest.contains("admin password"), "a given password is not printed: {rest}");

    // Later starts keep the admin as it is, whatever the variables say.
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", "a different long password")], 3);
    let http = server.http();
    assert_eq!(http.login("admin", "a different long password").await.status, 401);
    assert_eq!(http.login("admin", PASSWORD).await.status, 200);
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();

    // From a file (a Docker secret), its newline dropped.
    let data = tempdir("file-password");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("password");
    std::fs::write(&file, "the password in a file\n").unwrap();
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD_FILE", file.to_str().unwrap())], 3);
    assert_eq!(server.http().login("admin", "the password in a file").await.status, 200);
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();

    // A password too short: the server says so and does not start.
    let data = tempdir("short-password");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("TERN_ADMIN_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_ADMIN_PASSWORD: at least 12 characters"));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn a_generated_admin_password_is_printed_once_at_first_start() {
    let data = tempdir("generated");
    let server = Server::start(&data, &[], 4);
    let password = server.value("admin password ");
    assert!(password.len() >= 20, "{password}");
    assert_eq!(server.http().login("admin", &password).await.status, 200);
    server.stop();
    let again = Server::start(&data, &[], 3);
    assert_eq!(again.http().login("admin", &password).await.status, 200);
    let rest = again.stop();
    assert!(!rest.contains("admin password"), "printed again: {rest}");
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn login_sets_a_secure_httponly_strict_cookie_and_a_session_reads_but_writes_only_with_its_csrf_token() {
    let data = tempdir("session");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let r = http.login("admin", PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.headers[header::SET_COOKIE].to_str().unwrap();
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("tern_session=") && attrs[0].len() > "tern_session=".len() + 40, "{cookie}");
    for want in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&want), "{want} in {cookie}");
    }
    assert!(attrs.iter().any(|a| a.strip_prefix("Max-Age=").is_some_and(|v| v.parse::<u64>().unwrap() > 0)));
    assert_eq!(r.body["username"], "admin");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert!(r.body["csrf_token"].as_str().unwrap().len() >= 32);
    assert!(r.body["expires_at"].as_i64().unwrap() > 0);
    assert!(!r.body.to_string().contains(attrs[0].trim_start_matches("tern_session=")), "the id is in the cookie only");
    let session = http.session(PASSWORD).await;

    // GET needs no CSRF token.
    let r = session.call(&http, false, "GET", "/api/environments", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let me = session.call(&http, false, "GET", "/api/auth/me", None).await;
    assert_eq!((me.body["auth"].as_str(), me.body["username"].as_str()), (Some("session"), Some("admin")));
    assert_eq!(me.body["csrf_token"].as_str(), Some(session.csrf.as_str()));
    // Anything else does, and nothing happens without it.
    let body = json!({ "name": "ship", "url": "https://ops.example.com:9443" });
    let r = session.call(&http, false, "POST", "/api/environments", Some(body.clone())).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("X-CSRF-Token"), "{r:?}");
    let wrong = Session { cookie: session.cookie.clone(), csrf: "wrong".into() };
    assert_eq!(wrong.call(&http, true, "POST", "/api/environments", Some(body.clone())).await.status, 403);
    let r = session.call(&http, false, "GET", "/api/environments", None).await;
    assert_eq!(r.body, json!([]), "nothing was created");
    let r = session.call(&http, true, "POST", "/api/environments", Some(body)).await;
    assert_eq!(r.status, 201, "{r:?}");

    // Logout (itself a POST: CSRF needed) ends the session and clears the cookie.
    assert_eq!(session.call(&http, false, "POST", "/api/auth/logout", None).await.status, 403);
    let r = session.call(&http, true, "POST", "/api/auth/logout", None).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let r = session.call(&http, false, "GET", "/api/environments", None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.error().is_empty());
    // A bearer token cannot log out.
    let r = http.bearer(&server.admin_token(), "POST", "/api/auth/logout", None).await;
    assert_eq!(r.status, 400, "{r:?}");
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn failed_logins_get_401_then_429_per_client_without_blocking_another() {
    let data = tempdir("rate");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let (a, b) = (http.from("127.0.0.2"), http.from("127.0.0.3"));
    // Unknown users and wrong passwords answer the same.
    let r = a.login("root", PASSWORD).await;
    assert_eq!((r.status, r.error()), (401, "wrong user name or password"));
    for _ in 1..MAX_FAILURES_PER_CLIENT {
        let r = a.login("admin", "wrong password!").await;
        assert_eq!((r.status, r.error()), (401, "wrong user name or password"));
    }
    // Blocked, even with the right password.
    for password in ["wrong password!", PASSWORD] {
        let r = a.login("admin", password).await;
        assert_eq!(r.status, 429, "{r:?}");
        let retry: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
        assert!(r.error().contains("too many failed logins"), "{r:?}");
    }
    // Another client is not blocked, and its success does not clear the first one's count.
    assert_eq!(b.login("admin", "wrong password!").await.status, 401);
    assert_eq!(b.login("admin", PASSWORD).await.status, 200);
    assert_eq!(a.login("admin", PASSWORD).await.status, 429);
    // Bad bodies are no attempts.
    let r = b.send("POST", "/api/auth/login", &[], Some("{\"username\": 1}")).await;
    assert_eq!(r.status, 422, "{r:?}");
    let r = b.send("POST", "/api/auth/login", &[], Some(&format!("\"{}\"", "x".repeat(10_000)))).await;
    assert_eq!(r.status, 413, "{r:?}");
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn failed_logins_from_many_addresses_do_not_lock_the_admin_out() {
    // Twelve addresses with five wrong tries each (the server-wide count's
    // 60) once made the server refuse the right password from a clean
    // address for 15 minutes.
    let data = tempdir("lockout");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    for a in 0..12 {
        let attacker = http.from(&format!("127.0.1.{}", a + 1));
        for _ in 0..MAX_FAILURES_PER_CLIENT {
            assert_eq!(attacker.login("admin", "wrong password!").await.status, 401);
        }
        assert_eq!(attacker.login("admin", "wrong password!").await.status, 429, "each attacker is refused");
    }
    // The admin, from a clean address, logs in at once.
    let admin = http.from("127.0.2.1");
    let started = std::time::Instant::now();
    let r = admin.login("admin", PASSWORD).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "not slowed down: {:?}", started.elapsed());
    // A clean address that then fails is slowed down, not refused.
    let slowed = http.from("127.0.2.2");
    assert_eq!(slowed.login("admin", "wrong password!").await.status, 401);
    let started = std::time::Instant::now();
    assert_eq!(slowed.login("admin", PASSWORD).await.status, 200);
    assert!(started.elapsed() >= tern::server::api::access::OVERLOAD_DELAY, "{:?}", started.elapsed());
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn api_tokens_are_created_used_listed_without_their_secret_and_revoked_at_once() {
    let data = tempdir("tokens");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let admin = server.admin_token();
    let r = http.bearer(&admin, "POST", "/api/tokens", Some(json!({ "name": "ci" }))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_u64().unwrap();
    assert!(token.starts_with("tern_") && token.len() == 48, "{token}");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    for bad in [json!({ "name": "" }), json!({ "name": "x".repeat(200) }), json!({ "nom": "x" }), json!({})] {
        let r = http.bearer(&admin, "POST", "/api/tokens", Some(bad.clone())).await;
        assert_eq!(r.status, 422, "{bad}: {r:?}");
    }

    // It works, as a bearer token with no CSRF token.
    let r = http.bearer(&token, "POST", "/api/environments", Some(json!({ "name": "a", "url": "https://x:1" }))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let me = http.bearer(&token, "GET", "/api/auth/me", None).await;
    assert_eq!((me.body["auth"].as_str(), me.body["token"]["id"].as_u64()), (Some("token"), Some(id)));

    // The list: every token, never a secret; last use noted.
    let r = http.bearer(&token, "GET", "/api/tokens", None).await;
    assert_eq!(r.status, 200);
    let text = r.body.to_string();
    assert!(!text.contains(&token) && !text.contains(&admin) && !text.contains("\"token\""), "{text}");
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 2, "the data-directory token and ci: {text}");
    assert_eq!(list[0]["name"], "data-directory admin token");
    assert_eq!(list[0]["data_directory"], true);
    let ci = list.iter().find(|t| t["id"] == id).unwrap();
    assert_eq!((ci["name"].as_str(), ci["revoked_at"].is_null()), (Some("ci"), true));
    assert!(ci["last_used_at"].as_i64().unwrap() >= ci["created_at"].as_i64().unwrap());

    // Revoked: refused at once.
    let r = http.bearer(&admin, "DELETE", &format!("/api/tokens/{id}"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["revoked_at"].as_i64().is_some());
    let r = http.bearer(&token, "GET", "/api/environments", None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(http.bearer(&admin, "DELETE", "/api/tokens/99", None).await.status, 404);
    assert_eq!(http.bearer(&admin, "DELETE", "/api/tokens/x", None).await.status, 400);
    let r = http.bearer(&admin, "GET", "/api/tokens", None).await;
    assert!(r.body.as_array().unwrap().iter().any(|t| t["id"] == id && t["revoked_at"].is_i64()), "still listed");
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

/// Every endpoint but login, from the OpenAPI table (which `tests/openapi.rs`
/// holds to the routes the server registers), with its path parameters
/// filled in.
fn endpoints() -> Vec<(&'static str, String)> {
    tern::server::api::openapi::ENDPOINTS
        .iter()
        .filter(|(_, path, _, _)| *path != "/api/auth/login")
        .map(|&(method, path, _, _)| {
            let path: Vec<&str> = path
                .split('/')
                .map(|seg| match seg {
                    "{part}" => "containers",
                    s if s.starts_with('{') => "1",
                    s => s,
                })
                .collect();
            (method, path.join("/"))
        })
        .collect()
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_wrong_or_revoked_credential_before_reading_the_body() {
    let data = tempdir("every");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let admin = server.admin_token();
    let r = http.bearer(&admin, "POST", "/api/tokens", Some(json!({ "name": "gone" }))).await;
    let revoked = r.body["token"].as_str().unwrap().to_owned();
    http.bearer(&admin, "DELETE", &format!("/api/tokens/{}", r.body["id"]), None).await;
    let r = http.bearer(&admin, "POST", "/api/tokens", Some(json!({ "name": "checker" }))).await;
    let checker = r.body["token"].as_str().unwrap().to_owned();
    let session = http.session(PASSWORD).await;
    http.send("POST", "/api/auth/logout", &[("cookie", &session.cookie), ("x-csrf-token", &session.csrf)], None).await;

    let wrong_bearer = format!("Bearer {}", "tern_".to_owned() + &"A".repeat(43));
    let revoked_bearer = format!("Bearer {revoked}");
    let admin_basic = format!("Basic {admin}");
    let cases: [(&str, Vec<(&str, &str)>); 7] = [
        ("none", vec![]),
        ("wrong token", vec![("authorization", wrong_bearer.as_str())]),
        ("revoked token", vec![("authorization", revoked_bearer.as_str())]),
        ("empty bearer", vec![("authorization", "Bearer ")]),
        ("another scheme", vec![("authorization", admin_basic.as_str())]),
        ("unknown session", vec![("cookie", "tern_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]),
        ("ended session", vec![("cookie", session.cookie.as_str()), ("x-csrf-token", session.csrf.as_str())]),
    ];
    let mut checked = 0;
    for (method, path) in endpoints() {
        // The right credential gets past the check (whatever the handler
        // says next; `DELETE /api/tokens/1` revokes the data-directory token).
        let r = http.send(method, &path, &[("authorization", &format!("Bearer {checker}"))], Some("{not json")).await;
        assert_ne!(r.status, 401, "{method} {path}: {r:?}");
        if r.body["error"] == "no such endpoint" || r.status == 405 {
            // Documented, not registered yet: `tests/openapi.rs` says so.
            continue;
        }
        for (what, headers) in &cases {
            let r = http.send(method, &path, headers, Some("{not json")).await;
            assert_eq!(r.status, 401, "{method} {path} with {what}: {r:?}");
            assert!(!r.error().is_empty());
        }
        checked += 1;
    }
    assert!(checked >= 17, "only {checked} endpoints answered");
    // Nothing was created by any of them.
    let r = http.bearer(&checker, "GET", "/api/environments", None).await;
    assert_eq!(r.body, json!([]));
    // Login and the agents' poll endpoint need no API credential.
    assert_eq!(http.login("admin", PASSWORD).await.status, 200);
    let r = http.send("POST", tern::wire::POLL_PATH, &[], None).await;
    assert!(!r.body["error"].is_string(), "the poll endpoint's own refusal, not the API's: {r:?}");
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn the_data_directory_admin_token_works_and_a_revoked_one_is_replaced_at_the_next_start() {
    let data = tempdir("admin-token");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let first = server.admin_token();
    assert_eq!(http.bearer(&first, "GET", "/api/environments", None).await.status, 200);
    let list = http.bearer(&first, "GET", "/api/tokens", None).await.body;
    let row = &list.as_array().unwrap()[0];
    assert_eq!(
        (row["name"].as_str(), row["data_directory"].as_bool()),
        (Some("data-directory admin token"), Some(true))
    );
    // A restart keeps it, as one row.
    server.stop();
    let server = Server::start(&data, &[], 3);
    let http = server.http();
    assert_eq!(server.admin_token(), first);
    let list = http.bearer(&first, "GET", "/api/tokens", None).await.body;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Revoked (say it leaked): refused at once, and a new one is written at the next start.
    let r = http.bearer(&first, "DELETE", &format!("/api/tokens/{}", row["id"]), None).await;
    assert_eq!((r.status, r.body["data_directory"].as_bool()), (200, Some(true)));
    assert_eq!(http.bearer(&first, "GET", "/api/environments", None).await.status, 401);
    server.stop();
    let server = Server::start(&data, &[], 3);
    let http = server.http();
    let second = server.admin_token();
    assert_ne!(second, first);
    assert_eq!(http.bearer(&second, "GET", "/api/environments", None).await.status, 200);
    assert_eq!(http.bearer(&first, "GET", "/api/environments", None).await.status, 401);
    // A deleted file is replaced too, and the old token ends with it.
    server.stop();
    std::fs::remove_file(data.join("admin-token")).unwrap();
    let server = Server::start(&data, &[], 3);
    let http = server.http();
    let third = server.admin_token();
    assert_eq!(http.bearer(&third, "GET", "/api/environments", None).await.status, 200);
    assert_eq!(http.bearer(&second, "GET", "/api/environments", None).await.status, 401);
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn a_password_change_ends_the_other_sessions_but_not_the_one_that_asked() {
    let data = tempdir("password");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let (mine, other) = (http.session(PASSWORD).await, http.session(PASSWORD).await);
    let new = "the new admin password";
    for (body, status, text) in [
        (json!({ "current": PASSWORD, "new": "too short" }), 422, "at least 12"),
        (json!({ "current": "not the password", "new": new }), 403, "wrong password"),
        (json!({ "current": PASSWORD }), 422, "missing field"),
    ] {
        let r = mine.call(&http, true, "PUT", "/api/auth/password", Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert!(r.error().contains(text), "{body}: {r:?}");
    }
    assert_eq!(http.login("admin", new).await.status, 401, "nothing changed");
    let r = mine.call(&http, true, "PUT", "/api/auth/password", Some(json!({ "current": PASSWORD, "new": new }))).await;
    assert_eq!((r.status, r.body["sessions_ended"].as_u64()), (200, Some(1)), "{r:?}");
    assert_eq!(mine.call(&http, false, "GET", "/api/auth/me", None).await.status, 200);
    assert_eq!(other.call(&http, false, "GET", "/api/auth/me", None).await.status, 401);
    assert_eq!(http.login("admin", PASSWORD).await.status, 401);
    assert_eq!(http.login("admin", new).await.status, 200);
    // With an API token, it is the admin's password, and every session ends.
    let admin = server.admin_token();
    let r = http.bearer(&admin, "PUT", "/api/auth/password", Some(json!({ "current": new, "new": PASSWORD }))).await;
    assert_eq!((r.status, r.body["sessions_ended"].as_u64()), (200, Some(2)), "{r:?}");
    assert_eq!(mine.call(&http, false, "GET", "/api/auth/me", None).await.status, 401);
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

fn tern(args: &[&str], data: &Path, vars: &[(&str, &str)]) -> (bool, String, String) {
    // The server's database, as its Server::start gave it.
    let db = if data.exists() { common::test_database(data) } else { None };
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .arg("--data")
        .arg(data)
        .envs(db.iter().map(|u| ("TERN_DATABASE_URL", u.as_str())))
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_ADMIN_PASSWORD")
        .env_remove("TERN_ADMIN_PASSWORD_FILE")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_tokens_and_resets_the_admin_password_offline() {
    let data = tempdir("cli");
    let server = Server::start(&data, &[("TERN_ADMIN_PASSWORD", PASSWORD)], 3);
    let http = server.http();
    let url = format!("https://{}", server.addr());
    let (ok, out, err) = tern(&["token", "create", "--name", "backup job", "--server", &url], &data, &[]);
    assert!(ok, "{err}");
    let token = out.lines().find(|l| l.starts_with("tern_")).unwrap_or_else(|| panic!("{out}")).to_owned();
    assert_eq!(http.bearer(&token, "GET", "/api/environments", None).await.status, 200);
    let (ok, out, err) = tern(&["token", "list", "--server", &url], &data, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("backup job") && out.contains("data-directory admin token") && !out.contains(&token), "{out}");
    let id = out.lines().find(|l| l.contains("backup job")).unwrap().split_whitespace().next().unwrap().to_owned();
    let (ok, out, err) = tern(&["token", "revoke", &id, "--server", &url], &data, &[]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    assert_eq!(http.bearer(&token, "GET", "/api/environments", None).await.status, 401);
    let (ok, _, err) = tern(&["token", "revoke", "99", "--server", &url], &data, &[]);
    assert!(!ok && err.contains("no API token 99"), "{err}");

    // The lost password, reset on the data directory while the server runs.
    let session = http.session(PASSWORD).await;
    let (ok, out, err) = tern(&["admin", "reset-password"], &data, &[]);
    assert!(ok, "{err}");
    let generated = out.lines().find_map(|l| l.strip_prefix("admin password ")).unwrap().to_owned();
    assert!(generated.len() >= 20);
    assert_eq!(session.call(&http, false, "GET", "/api/auth/me", None).await.status, 401, "sessions ended");
    assert_eq!(http.login("admin", PASSWORD).await.status, 401);
    assert_eq!(http.login("admin", &generated).await.status, 200);
    let (ok, out, err) =
        tern(&["admin", "reset-password"], &data, &[("TERN_ADMIN_PASSWORD", "chosen by the operator")]);
    assert!(ok && !out.contains("chosen by the operator"), "{out}{err}");
    assert_eq!(http.login("admin", "chosen by the operator").await.status, 200);
    let (ok, _, err) = tern(&["admin", "reset-password"], &data, &[("TERN_ADMIN_PASSWORD", "short")]);
    assert!(!ok && err.contains("at least 12"), "{err}");
    let (ok, _, err) = tern(&["admin", "reset-password"], &data.join("nothing-here"), &[]);
    assert!(!ok && err.contains("no server database"), "{err}");
    drop(server);
    std::fs::remove_dir_all(&data).unwrap();
}

/// `tern quickstart`'s banner, up to its last line.
fn quickstart_banner(data: &Path) -> String {
    #[allow(clippy::zombie_processes)] // killed and waited for below
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["quickstart", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("TERN_ADMIN_PASSWORD")
        .env_remove("TERN_ADMIN_PASSWORD_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Ctrl-C stops both.") {
        assert!(out.read_line(&mut banner).unwrap() > 0, "quickstart exited: {banner}");
    }
    let _ = child.kill();
    let _ = child.wait();
    banner
}

#[test]
fn quickstart_shows_the_generated_admin_password_in_its_first_banner_only() {
    let data = tempdir("quickstart");
    let first = quickstart_banner(&data);
    let password = first
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin        user admin, password "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{first}"));
    assert!(password.len() >= 20, "{first}");
    let again = quickstart_banner(&data);
    assert!(!again.contains(password) && !again.contains("user admin, password"), "{again}");
    std::fs::remove_dir_all(&data).unwrap();
}
