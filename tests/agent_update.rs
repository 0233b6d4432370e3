//! The container agent updates itself (issue #14), deployed as an operator
//! deploys it (the generated `docker run` line, the agent image), to an
//! agent image the server holds (`tern image push`):
//!
//! * to a good image (a staged rollout of one): the helper recreates the
//!   agent's container from it
//!   under the same name, with the same volume and settings; the new agent
//!   polls, the old container is gone, and the command says "updated";
//! * to a broken image (its `tern` is not tern: the container keeps
//!   restarting and never polls): after the time given, the helper puts
//!   the old container back, and the command fails "rolled back" with the
//!   reason; the environment is online again on the image it had;
//! * a staged rollout to three agents that cannot update themselves (they
//!   run on the host): the first wave fails, the rollout halts with the
//!   reason, and the rest are never sent the update.
//!
//! The image is `tern-agent:latest` (`scripts/agent-image.sh` builds it).
//! Without it the test is skipped, except in CI (`CI=true`), where `.ci/run`
//! builds it first.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    AgentProcess, Api, Deadline, Objects, Server, agent_image, bridge_gateway, docker, tempdir, tern_cli, tern_ok,
};
use serde_json::json;
use tern::server::domain::deploy::AGENT_IMAGE;

fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, name]).trim().to_owned()
}

/// An agent image `FROM base` with `lines` added.
fn derived(dir: &std::path::Path, base: &str, tag: &str, lines: &str, files: &[(&str, &[u8])]) -> String {
    let ctx = dir.join(tag.replace([':', '/'], "-"));
    std::fs::create_dir_all(&ctx).unwrap();
    for (name, bytes) in files {
        std::fs::write(ctx.join(name), bytes).unwrap();
        Command::new("chmod").arg("755").arg(ctx.join(name)).status().unwrap();
    }
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {base}\n{lines}\n")).unwrap();
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
    let Some(agent_image) = agent_image() else { return };
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
        .replacen("-v tern-agent-data:/data ", &format!("-v {volume}:/data "), 1)
        .replacen(&format!(" {AGENT_IMAGE} agent"), &format!(" {agent_image} agent"), 1);
    let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v1 = inspect(&agent_image, "{{.Id}}");
    wait_online(&mut api, env, &agent, &v1).await;

    // A good new version: the same agent, another image.
    let good = format!("{prefix}-agent:2");
    let v2 = derived(&dir, &agent_image, &good, &format!("LABEL io.tern.test={prefix}"), &[]);
    tern_ok(&server, &["image", "push", &good]);
    // As a staged rollout of one environment: its first wave is all.
    let args =
        ["image", "update-agent", &good, "--env", &env.to_string(), "--first", "50", "--wait", "--timeout", "240"];
    let out = tern_ok(&server, &args);
    assert!(out.contains(" done ") && out.contains("wave 1") && out.contains(" ok"), "{out}");
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
    derived(&dir, &agent_image, &bad, "COPY tern /usr/local/bin/tern", &[("tern", &busybox)]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_halts_when_its_first_wave_fails_and_the_rest_never_get_it() {
    let prefix = format!("tern-test-roll-{}", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir(&prefix);
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let intervals = json!({"ping": 1, "snapshot": 5, "command": 1});
    let mut agents = Vec::new();
    for i in 0..3 {
        let body = json!({"name": format!("host-{i}"), "url": server.url(), "intervals": intervals, "tags": ["fleet"]});
        let created = api.ok("POST", "/api/environments", Some(body), 201).await;
        let key = created["edge_key"].as_str().unwrap().to_owned();
        let data = dir.join(format!("agent-{i}"));
        agents.push(AgentProcess::start(
            &[("EDGE_KEY", &key), ("DATA_PATH", data.to_str().unwrap())],
            &dir.join(format!("agent-{i}.log")),
        ));
    }
    tern_ok(&server, &["image", "push", &objects.image]);
    // Bad rollouts change nothing.
    let held = api.ok("GET", "/api/images", None, 200).await[0]["id"].as_u64().unwrap();
    for (body, code) in [
        (json!({"image": held, "tags": ["fleet"], "first_share": 0}), 422),
        (json!({"image": held, "tags": ["fleet"], "first_share": 100}), 422),
        (json!({"image": held, "first_share": 10}), 422),
        (json!({"image": held, "tags": ["nope"], "first_share": 10}), 422),
        (json!({"image": 999, "tags": ["fleet"], "first_share": 10}), 404),
        (json!({"image": held, "environments": [999], "first_share": 10}), 404),
        (json!({"image": held, "tags": ["fleet"], "first_share": 10, "timeout_s": 5}), 422),
    ] {
        api.ok("POST", "/api/rollouts", Some(body), code).await;
    }
    assert_eq!(api.ok("GET", "/api/rollouts", None, 200).await.as_array().map(Vec::len), Some(0));

    let args =
        ["image", "update-agent", &objects.image, "--tag", "fleet", "--first", "30", "--wait", "--timeout", "120"];
    let e = tern_cli(&server, &args).unwrap_err();
    assert!(e.contains("halted") && e.contains("does not run in a container"), "{e}");
    let list = api.ok("GET", "/api/rollouts", None, 200).await;
    let r = &list[0];
    assert_eq!(r["status"], "halted", "{r}");
    let members = r["environments"].as_array().unwrap();
    assert_eq!(members.iter().filter(|m| m["wave"] == 1).count(), 1, "30 % of 3: one first");
    assert!(members.iter().filter(|m| m["wave"] == 2).all(|m| m["command"].is_null()), "the rest never sent: {r}");
    let shown = tern_ok(&server, &["image", "rollouts", &r["id"].to_string()]);
    assert!(shown.contains("halted") && shown.contains("not sent yet"), "{shown}");
    for mut a in agents {
        a.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
