//! The collector against the real Docker engine: what `tern snapshot` and
//! the agent read, and that reading twice gives the same root digest.

#![cfg(feature = "agent")]

use std::process::Command;

use tern::agent::CanonicalOptions;
use tern::sync::diff;
use tern::sync::state::{ContainerStatus, MountType};

/// Objects this test creates, removed on drop even when the test fails.
struct Fixture {
    prefix: String,
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Fixture {
    fn new() -> Self {
        let prefix = format!("tern-test-collect-{}", std::process::id());
        // No registry here: import an empty root filesystem as the image. The
        // container is only created, never started, so it needs no binary.
        let empty = tempdir(&prefix);
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -C {} -c . | docker import - {prefix}:1 >/dev/null", empty.display()))
            .status()
            .unwrap();
        assert!(status.success());
        docker(&["network", "create", "--label", "tern.test=1", &format!("{prefix}-net")]);
        docker(&["volume", "create", "--label", "tern.test=1", &format!("{prefix}-vol")]);
        docker(&[
            "create",
            "--name",
            &format!("{prefix}-web"),
            "--network",
            &format!("{prefix}-net"),
            "-v",
            &format!("{prefix}-vol:/data"),
            "-e",
            "DB_PASSWORD=hunter2",
            "-e",
            "MODE=edge",
            "-p",
            "127.0.0.1:18080:80",
            "--restart",
            "on-failure:3",
            "--label",
            &format!("com.docker.compose.project={prefix}"),
            "--label",
            "com.docker.compose.service=web",
            &format!("{prefix}:1"),
            "/bin/serve",
            "--port",
            "80",
        ]);
        Self { prefix }
    }
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let p = &self.prefix;
        for args in [
            vec!["rm", "-f", "-v", &format!("{p}-web")],
            vec!["network", "rm", &format!("{p}-net")],
            vec!["volume", "rm", "-f", &format!("{p}-vol")],
            vec!["image", "rm", "-f", &format!("{p}:1")],
        ] {
            let _ = Command::new("docker").args(&args).output();
        }
        let _ = std::fs::remove_dir_all(tempdir(p));
    }
}

#[tokio::test]
async fn collects_the_real_engine_into_a_stable_canonical_state() {
    let fx = Fixture::new();
    let engine = tern::agent::connect().await.expect("engine reachable");
    let opts = CanonicalOptions::default();
    let first = tern::agent::collect(&engine).await.unwrap().canonical(&opts).unwrap();

    let web = first.containers.iter().find(|c| c.name == format!("{}-web", fx.prefix)).expect("container collected");
    assert_eq!(web.status, ContainerStatus::Created);
    assert_eq!(web.image, format!("{}:1", fx.prefix));
    assert!(web.image_id.is_some());
    assert_eq!(web.command, ["/bin/serve", "--port", "80"]);
    assert!(web.env.contains(&"DB_PASSWORD=<redacted>".to_string()), "{:?}", web.env);
    assert!(web.env.contains(&"MODE=edge".to_string()));
    assert_eq!(web.restart_policy, tern::sync::state::RestartPolicy::OnFailure);
    assert_eq!(web.restart_max_retries, 3);
    assert_eq!(web.ports.len(), 1);
    assert_eq!((web.ports[0].container_port, web.ports[0].host_port), (80, 18080));
    assert_eq!(web.ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    assert!(
        web.mounts.iter().any(|m| m.kind == MountType::Volume
            && m.source == format!("{}-vol", fx.prefix)
            && m.destination == "/data")
    );
    assert!(web.networks.iter().any(|n| n.network == format!("{}-net", fx.prefix)));
    assert!(first.volumes.get(&format!("{}-vol", fx.prefix)).is_some());
    assert!(first.networks.iter().any(|n| n.name == format!("{}-net", fx.prefix)));
    let stack = first.stacks().into_iter().find(|s| s.name == fx.prefix).expect("stack derived from labels");
    assert_eq!(stack.services, ["web"]);
    assert_eq!(first.host.os_type, "linux");
    assert!(first.host.cpus > 0);

    // Reading again with nothing done gives the same state: no volatile field
    // leaked in. (Other tests may change the engine meanwhile, so compare
    // only what this test owns.)
    let second = tern::agent::collect(&engine).await.unwrap().canonical(&opts).unwrap();
    assert_eq!(second.containers.digest(&web.id), first.containers.digest(&web.id));
    assert_eq!(first.host, second.host);

    // Start-free state change: removing the container shows as one removal.
    docker(&["rm", "-v", &format!("{}-web", fx.prefix)]);
    let third = tern::agent::collect(&engine).await.unwrap().canonical(&opts).unwrap();
    assert!(third.containers.get(&web.id).is_none());
    let d = diff(&second, &third);
    assert!(d.counts().0 >= 1);
    assert_eq!(tern::sync::apply(&second, &d).unwrap(), third);
}
