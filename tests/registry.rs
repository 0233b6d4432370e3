//! Private registries end to end: the real `tern server` and `tern agent`
//! binaries, the machine's Docker engine, and a real registry (Debian's
//! `docker-registry`) with htpasswd authentication on 127.0.0.1.
//!
//! * a stack whose image is private fails, saying the registry wants
//!   credentials; once the registry is registered (`tern registry add`,
//!   the password on standard input), the next version deploys, with the
//!   built-in compose and with the host's compose tool;
//! * an `image.pull` of a private image works the same way;
//! * the password is in no reply of the API, not in the server's database
//!   in the clear, and nowhere in the agent's `DATA_PATH` or its log.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::registry::Registry;
use common::{AgentProcess, Api, ComposeProject, Deadline, Objects, Server, tempdir};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn compose(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: {image}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done\"]\n"
    )
}

/// The stack's status on its one environment: (status, version, error).
async fn deployment(api: &mut Api, stack: u64) -> (String, u64, String) {
    let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
    let d = &s["environments"][0];
    (
        d["status"].as_str().unwrap_or_default().to_owned(),
        d["version"].as_u64().unwrap_or_default(),
        d["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn wait_deployment(api: &mut Api, stack: u64, version: u64, done: &[&str]) -> (String, String) {
    let deadline = Deadline::new(WAIT);
    loop {
        let (status, v, error) = deployment(api, stack).await;
        if v == version && done.contains(&status.as_str()) {
            return (status, error);
        }
        deadline.tick(format_args!("stack {stack} version {version}: {status} {error}")).await;
    }
}

async fn wait_command(api: &mut Api, id: u64) -> Value {
    let deadline = Deadline::new(WAIT);
    loop {
        let c = api.ok("GET", &format!("/api/commands/{id}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed" | "rejected")) {
            return c;
        }
        deadline.tick(format_args!("command {id}: {c}")).await;
    }
}

/// Every file under `dir` (recursively) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_holding(&p, needle));
        } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            found.push(p.display().to_string());
        }
    }
    found
}

/// `tern registry add` with the password on standard input.
fn add_registry(server: &Server, registry: &Registry) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["registry", "add", "--name", "private", "--url", &format!("http://{}/", registry.addr)])
        .args(["--username", &registry.user, "--password-stdin", "--server", &server.url(), "--data"])
        .arg(&server.data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", registry.password).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tern registry add: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn private_images_deploy_with_credentials(mode: &str) {
    let prefix = format!("tern-test-reg-{}-{mode}", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let registry = Registry::start(&prefix);
    let v1 = registry.push_private(&prefix, &format!("{prefix}/app"), "1");
    let v2 = registry.push_private(&prefix, &format!("{prefix}/app"), "2");
    let dir = tempdir(&format!("tern-registry-{mode}"));
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": mode, "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let key = created["edge_key"].as_str().unwrap().to_owned();
    let data = dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    let agent = AgentProcess::start(
        &[("EDGE_KEY", key.as_str()), ("DATA_PATH", data_s.as_str()), ("EDGE_COMPOSE", mode)],
        &dir.join("agent.log"),
    );

    // Without credentials: a clear failure.
    let body = json!({"name": prefix, "compose": compose(&v1), "targets": {"environments": [env]}});
    let stack = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    let (status, error) = wait_deployment(&mut api, stack, 1, &["failed", "running"]).await;
    assert_eq!(status, "failed", "a private image without credentials");
    assert!(error.contains("no basic auth credentials"), "the registry's reason: {error}");

    // Registered (the CLI; the password never on its command line): the
    // next version deploys.
    let added = add_registry(&server, &registry);
    assert!(added.contains(&registry.addr) && !added.contains(&registry.password), "{added}");
    let listed = api.ok("GET", "/api/registries", None, 200).await;
    assert_eq!(listed[0]["url"], registry.addr.as_str(), "{listed}");
    assert!(!listed.to_string().contains(&registry.password), "never shown: {listed}");
    api.ok("PUT", &format!("/api/stacks/{stack}"), Some(json!({"compose": compose(&v1)})), 200).await;
    let (status, error) = wait_deployment(&mut api, stack, 2, &["failed", "running"]).await;
    assert_eq!(status, "running", "{error}");
    let running = docker_ps(&prefix);
    assert_eq!(running.len(), 1, "{running:?}");

    // An image pull of another private tag.
    let body = json!({"action": "image.pull", "target": v2});
    let id =
        api.ok("POST", &format!("/api/environments/{env}/commands"), Some(body), 201).await["id"].as_u64().unwrap();
    let c = wait_command(&mut api, id).await;
    assert_eq!(c["status"], "ok", "{c}");
    common::docker(&["image", "inspect", &v2]);

    // The password is nowhere in the clear but in the registry's own files.
    let password = registry.password.as_bytes();
    assert_eq!(files_holding(&server.data, password), Vec::<String>::new(), "the server's data directory");
    assert_eq!(files_holding(&data, password), Vec::<String>::new(), "the agent's DATA_PATH");
    assert!(!agent.log().contains(&registry.password), "the agent's log");
    drop(agent);
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}

fn docker_ps(project: &str) -> Vec<String> {
    common::docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_deploys_with_registered_credentials_and_fails_clearly_without_builtin() {
    private_images_deploy_with_credentials("builtin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_deploys_with_registered_credentials_and_fails_clearly_without_compose_tool() {
    private_images_deploy_with_credentials("tool").await;
}
