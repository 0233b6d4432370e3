//! Helpers shared by the tests that run the real `tern` binary against the
//! real Docker engine. Everything a test creates carries its prefix and is
//! removed on drop, even when the test fails.

#![allow(dead_code)]

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["server", "--listen", listen, "--data"])
            .arg(data)
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
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
        let bytes: Vec<u8> =
            self.value("certificate sha256 ").split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        bytes.try_into().unwrap()
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
    /// Any call; returns the status and the JSON body (Null when empty).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, bytes) =
            self.client.api(method, path, &self.token, body.map(|b| b.to_string().into_bytes())).await.unwrap();
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
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("agent").env("LOG_LEVEL", "debug").stdout(Stdio::null()).stderr(file);
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
