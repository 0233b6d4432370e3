//! The server image (issue #15), run the way its README section says:
//! `docker run -v DATA:/data -p 9443 tern-server:latest`, as its non-root
//! user, on SQLite in the data volume. A real agent on this host (the
//! test's `tern agent`) is enrolled through the containerised server's API
//! and comes online with this engine's state; the server's data directory
//! holds what it should (certificate, key, server key, database, token),
//! owned by the image's user.
//!
//! The image is `tern-server:latest` (`scripts/agent-image.sh --server`
//! builds it) or the one `TERN_SERVER_IMAGE` names. Without it the test is
//! skipped, except in CI (`CI=true`), where it must exist (`.ci/run`
//! builds it).

#![cfg(all(feature = "agent", feature = "server", target_os = "linux"))]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::{Api, Deadline, docker, docker_quiet, tempdir};

const WAIT: Duration = Duration::from_secs(90);

/// The image's user (the Dockerfile's `USER`).
const SERVER_UID: u32 = 65532;

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        docker_quiet(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_image_serves_an_agent_from_its_data_volume() {
    let image = std::env::var("TERN_SERVER_IMAGE").unwrap_or_else(|_| "tern-server:latest".into());
    let present = Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "{image} is missing: .ci/run builds it (scripts/agent-image.sh --server)"
        );
        eprintln!("skipped: no {image} (scripts/agent-image.sh --server builds it)");
        return;
    }
    let dir = tempdir("tern-server-image");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A directory the image's user owns, as a new named volume would be.
    std::os::unix::fs::chown(&data, Some(SERVER_UID), Some(SERVER_UID)).expect("the test runs as root (CI does)");
    let name = format!("tern-test-server-image-{}", std::process::id());
    let mount = format!("{}:/data", data.display());
    docker(&["run", "-d", "--name", &name, "-v", &mount, "-p", "127.0.0.1::9443", &image]);
    let _container = Container(name.clone());

    // Its address on this host, and the certificate it printed.
    let port = docker(&["port", &name, "9443/tcp"]);
    let addr = port.lines().next().unwrap().trim().to_owned();
    let url = format!("https://{addr}");
    let deadline = Deadline::new(WAIT);
    let fingerprint = loop {
        let logs = Command::new("docker").args(["logs", &name]).output().unwrap();
        let out = String::from_utf8_lossy(&logs.stdout).into_owned();
        if let Some(hex) = out.lines().find_map(|l| l.strip_prefix("certificate sha256 ")) {
            break common::parse_fingerprint(hex);
        }
        deadline.tick(format_args!("the server in {name} to start: {out}")).await;
    };
    for file in ["cert.pem", "key.pem", "secret.key", "admin-token", "tern.db"] {
        let meta = std::fs::metadata(data.join(file)).unwrap_or_else(|e| panic!("/data/{file}: {e}"));
        assert_eq!(meta.uid(), SERVER_UID, "/data/{file} belongs to the image's user");
    }
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
    let mut api = Api::new(&url, fingerprint, &token);

    // An agent on this host, enrolled through the containerised server.
    let _agent = common::enrol_host_agent(&mut api, &url, "from-image", &dir, WAIT).await;
    std::fs::remove_dir_all(&dir).ok();
}
