//! A real private Docker registry on loopback, with htpasswd authentication,
//! for the tests that pull private images through the real Docker engine
//! (no outside registry is reachable here).
//!
//! [`Registry::start`] runs Debian's `docker-registry` (registry 2.8,
//! `/usr/bin/docker-registry`, `.ci/run` installs it with apache2-utils for
//! `htpasswd`) with a configuration of its own: storage in a temporary
//! directory, `http.addr` on `127.0.0.1` and a free port, `auth.htpasswd`
//! with one bcrypt user (`htpasswd -Bbn`). It neither uses nor disturbs the
//! package's own service (port 5000, /etc/docker/registry/config.yml).
//!
//! * Plain HTTP is enough: the engine treats `127.0.0.0/8` as an insecure
//!   registry by default (`docker info`: `InsecureRegistryCIDRs:
//!   ["127.0.0.0/8"]`) and talks HTTP to it, and registry 2.8 accepts
//!   htpasswd basic auth without TLS (checked: `GET /v2/` answers 401 with
//!   `Www-Authenticate: Basic realm=...`, 200 with the credentials; `docker
//!   login`, `push` and an authenticated pull work; the registry logs no
//!   warning about it). No certificate, no engine configuration.
//! * An anonymous pull of a private image fails with the engine's
//!   `Head "http://127.0.0.1:PORT/v2/REPO/manifests/TAG": no basic auth
//!   credentials` (the CLI prefixes `Error response from daemon: `; the API,
//!   `POST /images/create`, answers 500 with that `message`); with wrong
//!   credentials the message is `unauthorized: authentication required`.
//! * [`Registry::push_private`] builds the image with `docker import` (no
//!   registry), pushes it with a client configuration directory of its own
//!   (`DOCKER_CONFIG`, so `~/.docker/config.json` is never touched) and
//!   removes it from the engine again, so a later pull has to go to the
//!   registry.
//! * On drop the registry is killed, its directory removed, and every local
//!   image it made or that names it (`ADDR/...`) removed.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{docker, docker_quiet, tempdir};

/// Where Debian's `docker-registry` package installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A private registry on `127.0.0.1` (see the module's documentation).
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The htpasswd user.
    pub user: String,
    /// Its password.
    pub password: String,
    child: Child,
    dir: PathBuf,
    /// Local image references made by [`Self::push_private`], removed on drop.
    local: Mutex<Vec<String>>,
}

impl Registry {
    /// Starts a registry; panics (with the registry's log) when it does not
    /// answer `GET /v2/` with 401 within 20 s.
    pub fn start(prefix: &str) -> Self {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} (apt-get install docker-registry)");
        let dir = tempdir(&format!("{prefix}-registry"));
        let user = "tern".to_owned();
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let password = format!("pw-{}-{nonce:x}", std::process::id());

        let out = Command::new("htpasswd").args(["-Bbn", &user, &password]).output().expect("htpasswd (apache2-utils)");
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        std::fs::create_dir_all(dir.join("client")).unwrap();

        // The port is free when chosen; another process may take it before
        // the registry binds it, so a registry that exits at once is
        // started again on another port.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            std::fs::write(dir.join("config.yml"), config(&dir, &addr, &format!("{prefix}-{nonce:x}"))).unwrap();
            let log = std::fs::File::create(dir.join("registry.log")).unwrap();
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{REGISTRY_BIN}: {e}"));
            let mut registry = Self {
                addr,
                user: user.clone(),
                password: password.clone(),
                child,
                dir: dir.clone(),
                local: Mutex::new(Vec::new()),
            };
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(exited) => {
                    last_log = registry.log_tail();
                    if !exited {
                        panic!(
                            "the registry at {} did not answer 401 within {START_LIMIT:?}:\n{last_log}",
                            registry.addr
                        );
                    }
                    // Drop kills it and removes the directory: keep the files.
                    let _ = registry.child.wait();
                    registry.dir = PathBuf::new();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("the registry exited at once, three times:\n{last_log}");
    }

    /// Waits until `GET /v2/` answers 401. `Err(true)`: the registry exited;
    /// `Err(false)`: time is up.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let start = Instant::now();
        while start.elapsed() < START_LIMIT {
            if self.child.try_wait().unwrap().is_some() {
                return Err(true);
            }
            if let Some(status) = http_status(&self.addr, "/v2/", None) {
                assert_eq!(status, 401, "GET http://{}/v2/ without credentials:\n{}", self.addr, self.log_tail());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(false)
    }

    /// The last 40 lines of the registry's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET /v2/` with these credentials (or none): its status, or `None`
    /// when the registry does not answer.
    pub fn v2_status(&self, credentials: Option<(&str, &str)>) -> Option<u16> {
        http_status(&self.addr, "/v2/", credentials)
    }

    /// The engine API's `X-Registry-Auth` value for this registry's user:
    /// base64url of `{"username","password","serveraddress"}` (what bollard
    /// sends for `create_image(.., Some(DockerCredentials { .. }))`).
    pub fn registry_auth(&self) -> String {
        registry_auth(&self.user, &self.password, &self.addr)
    }

    /// Builds a small image (a static busybox and `/etc/tern-private`, so it
    /// differs from [`super::Objects`]' image) without any registry, pushes it
    /// as `ADDR/repo:tag` after logging in with a private client
    /// configuration, and removes it from the engine (a later pull must go
    /// to the registry). The local name it is built under is
    /// `<objects_prefix>-private-<repo>:<tag>` (with `/` in `repo` as `-`),
    /// which an [`super::Objects`] with that prefix also removes. Returns
    /// `ADDR/repo:tag`.
    pub fn push_private(&self, objects_prefix: &str, repo: &str, tag: &str) -> String {
        let reference = format!("{}/{repo}:{tag}", self.addr);
        let local = format!("{objects_prefix}-private-{}:{tag}", repo.replace('/', "-"));
        self.local.lock().unwrap().extend([local.clone(), reference.clone()]);

        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("a static busybox (apt-get install busybox-static)");
        let root = self.dir.join(format!("rootfs-{}", local.replace([':', '/'], "-")));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        std::fs::write(root.join("etc/tern-private"), format!("{reference}\n")).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C '{}' -c . | docker import - '{local}'", root.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&root);
        docker(&["tag", &local, &reference]);

        self.client(&["login", &self.addr, "-u", &self.user, "--password-stdin"], Some(&self.password));
        self.client(&["push", &reference], None);

        // Both names, so that the image itself leaves the engine.
        docker(&["rmi", &reference, &local]);
        let gone = Command::new("docker").args(["image", "inspect", &reference]).output().unwrap();
        assert!(!gone.status.success(), "{reference} is still in the engine after docker rmi");
        reference
    }

    /// Pushes the engine's image `local` as `ADDR/repo:tag` (logged in
    /// with the private client configuration); the tag is removed when the
    /// registry is dropped. Returns `ADDR/repo:tag`.
    pub fn push(&self, local: &str, repo: &str, tag: &str) -> String {
        let reference = format!("{}/{repo}:{tag}", self.addr);
        self.local.lock().unwrap().push(reference.clone());
        docker(&["tag", local, &reference]);
        self.client(&["login", &self.addr, "-u", &self.user, "--password-stdin"], Some(&self.password));
        self.client(&["push", &reference], None);
        reference
    }

    /// The docker CLI with this registry's client configuration directory
    /// (`DOCKER_CONFIG`), bounded to 120 s; panics with its output (and the
    /// registry's log) on failure.
    pub fn client(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("timeout")
            .arg("120")
            .arg("docker")
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?} ({:?}): {}{}\nregistry log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut refs = std::mem::take(&mut *self.local.lock().unwrap_or_else(|e| e.into_inner()));
        // Whatever the tests pulled from it, too.
        if let Ok(out) = Command::new("docker").args(["images", "--format", "{{.Repository}}:{{.Tag}}"]).output() {
            let mine = format!("{}/", self.addr);
            refs.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter(|r| r.starts_with(&mine))
                    .map(String::from),
            );
        }
        for r in refs {
            docker_quiet(&["rmi", "-f", &r]);
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The engine API's `X-Registry-Auth` value: base64url (padded, as bollard
/// and the docker CLI send it) of the JSON credentials.
pub fn registry_auth(user: &str, password: &str, server: &str) -> String {
    use base64::Engine as _;
    let json = serde_json::json!({ "username": user, "password": password, "serveraddress": server });
    base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
}

/// The registry's configuration (registry 2.8's `version: 0.1` format).
fn config(dir: &Path, addr: &str, secret: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: {secret}\n\
         auth:\n  htpasswd:\n    realm: tern-test\n    path: {htpasswd}\n",
        storage = dir.join("storage").display(),
        htpasswd = dir.join("htpasswd").display(),
    )
}

/// `GET path` over plain HTTP/1.0 (basic auth when given): the status, or
/// `None` when nothing answers.
fn http_status(addr: &str, path: &str, credentials: Option<(&str, &str)>) -> Option<u16> {
    use base64::Engine as _;
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some((user, password)) = credentials {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Authorization: Basic {basic}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response);
    head.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}
