//! The container agent updates itself (issue #14), deployed as an operator
//! deploys it (the generated `docker run` line, the agent image), to an
//! agent image the server holds (`tern image push`):
//!
//! * to a good image: the helper recreates the agent's container from it
//!   under the same name, with the same volume and settings; the new agent
//!   polls, the old container is gone, and the command says "updated";
//! * to a broken image (its `tern` is not tern: the container keeps
//!   restarting and never polls): after the time given, the helper puts
//!   the old container back, and the command fails "rolled back" with the
//!   reason; the environment is online again on the image it had.
//!
//! The image is `tern-agent:latest` (`scripts/agent-image.sh` builds it).
//! Without it the test is skipped, except in CI (`CI=true`), where `.ci/run`
//! builds it first.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Api, Deadline, Objects, Server, docker, tempdir, tern_cli, tern_ok};
use serde_json::json;
use tern::server::domain::deploy::AGENT_IMAGE;

fn image_exists(image: &str) -> bool {
    Command::new("docker").args(["image", "inspect", image]).output().is_ok_and(|o| o.status.success())
}

/// This host as a container on the default bridge network sees it.
fn bridge_gateway(image: &str) -> String {
    let route = docker(&["run", "--rm", image, "/bin/busybox", "ip", "-4", "route", "show", "default"]);
    route.split_whitespace().skip_while(|w| *w != "via").nth(1).expect("a default gateway").to_owned()
}

fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, name]).trim().to_owned()
}

/// An agent image `FROM tern-agent:latest` with `lines` added.
fn derived(dir: &std::path::Path, tag: &str, lines: &str, files: &[(&str, &[u8])]) -> String {
    let ctx = dir.join(tag.replace([':', '/'], "-"));
    std::fs::create_dir_all(&ctx).unwrap();
    for (name, bytes) in files {
        std::fs::write(ctx.join(name), bytes).unwrap();
        Command::new("chmod").arg("755").arg(ctx.join(name)).status().unwrap();
    }
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {AGENT_IMAGE}\n{lines}\n")).unwrap();
    let out =
        Command::new("docker").args(["build", "-q", "-t", tag]).arg(&ctx).env("DOCKER_BUILDKIT", "0").output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
    inspect(tag, "{{.Id}}")
}

async fn wait_online(api: &mut Api, env: u64, agent: &str, image: &str) {
    let deadline = Deadline::new(Duration::from_secs(120));
    loop {
        let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
        let running = inspect(agent, "{{.State.Running}} {{.Image}}");
        if e["status"] == "online" && running == format!("true {image}") {
            return;
        }
        deadline
            .tick(format_args!("environment {env} online with {agent} on {image} ({}, {running})", e["status"]))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_agent_updates_itself_and_a_new_agent_that_never_polls_is_rolled_back() {
    if !image_exists(AGENT_IMAGE) {
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        assert!(!ci, "CI: no {AGENT_IMAGE}; `.ci/run` builds it with scripts/agent-image.sh");
        eprintln!("SKIPPED agent_update: no image {AGENT_IMAGE} (scripts/agent-image.sh builds it)");
        return;
    }
    let prefix = format!("tern-test-upd-{}", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir(&prefix);
    let gateway = bridge_gateway(&objects.image);
    let server = Server::start(&dir.join("server"), &format!("{gateway}:0"));
    let mut api = server.api();
    let intervals = json!({"ping": 1, "snapshot": 5, "command": 1});
    let created = api
        .ok("POST", "/api/environments", Some(json!({"name": "upd", "url": server.url(), "intervals": intervals})), 201)
        .await;
    let env = created["id"].as_u64().unwrap();
    let agent = objects.name("agent");
    let volume = objects.name("data");
    let command = created["commands"]["linux"]
        .as_str()
        .unwrap()
        .replacen("--name tern-agent ", &format!("--name {agent} "), 1)
        .replacen("-v tern-agent-data:/data ", &format!("-v {volume}:/data "), 1);
    let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v1 = inspect(AGENT_IMAGE, "{{.Id}}");
    wait_online(&mut api, env, &agent, &v1).await;

    // A good new version: the same agent, another image.
    let good = format!("{prefix}-agent:2");
    let v2 = derived(&dir, &good, &format!("LABEL io.tern.test={prefix}"), &[]);
    tern_ok(&server, &["image", "push", &good]);
    let out =
        tern_ok(&server, &["image", "update-agent", &good, "--env", &env.to_string(), "--wait", "--timeout", "240"]);
    assert!(out.contains("agent.update") && out.contains(&v2), "{out}");
    wait_online(&mut api, env, &agent, &v2).await;
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(e["agent_version"], env!("CARGO_PKG_VERSION"), "the server shows the agent's version: {e}");
    assert_eq!(inspect(&agent, "{{.HostConfig.RestartPolicy.Name}}"), "always", "the same settings");
    let mounts = inspect(&agent, "{{range .Mounts}}{{.Name}} {{end}}");
    assert!(mounts.contains(&volume), "the same data volume: {mounts}");
    let left = docker(&["ps", "-a", "--filter", &format!("name={agent}-"), "--format", "{{.Names}}"]);
    assert!(left.trim().is_empty(), "the old container and the helper are gone: {left}");

    // A broken one: its `tern` is busybox, which knows no `agent`. The new
    // container restarts and never polls; after 30 s it is rolled back.
    let busybox = std::fs::read("/bin/busybox").expect("a static busybox (apt-get install busybox-static)");
    let bad = format!("{prefix}-agent:bad");
    derived(&dir, &bad, "COPY tern /usr/local/bin/tern", &[("tern", &busybox)]);
    tern_ok(&server, &["image", "push", &bad]);
    let args =
        ["image", "update-agent", &bad, "--env", &env.to_string(), "--poll-within", "30", "--wait", "--timeout", "240"];
    let e = tern_cli(&server, &args).unwrap_err();
    assert!(e.contains("rolled back") && e.contains("had not polled within 30 s"), "{e}");
    wait_online(&mut api, env, &agent, &v2).await;
    let left = docker(&["ps", "-a", "--filter", &format!("name={agent}-"), "--format", "{{.Names}}"]);
    assert!(left.trim().is_empty(), "the broken container is gone: {left}");
    let commands = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    let last = &commands[0];
    assert_eq!((last["action"].as_str(), last["status"].as_str()), (Some("agent.update"), Some("failed")), "{last}");
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}
