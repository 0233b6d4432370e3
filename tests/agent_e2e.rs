//! The whole thing, as an operator runs it: the real `tern server` and
//! `tern agent` binaries, the machine's Docker engine, HTTPS on 127.0.0.1:0.
//!
//! * the server's stored state converges to the engine's (root digests
//!   equal) as containers are created, stopped and removed;
//! * every command type runs once, and its result reaches the server;
//! * an agent restart resends no full state;
//! * a server restart loses no queued command.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::{
    AgentProcess, Api, Deadline, Objects, Server, chrono_now, docker, engine_events, poll_sizes, tempdir, wait_command,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn converged(api: &mut Api, env: u64) {
    common::converged(api, env, WAIT).await;
}

/// The status of a container in the server's stored state (None: absent).
async fn stored_status(api: &mut Api, env: u64, name: &str) -> Option<String> {
    let state = api.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
    state["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .map(|c| c["status"].as_str().unwrap().to_owned())
}

async fn wait_stored(api: &mut Api, env: u64, name: &str, want: Option<&str>) {
    let deadline = Deadline::new(WAIT);
    loop {
        let got = stored_status(api, env, name).await;
        if got.as_deref() == want {
            return;
        }
        deadline.tick(format_args!("{name} to be {want:?} on the server (is {got:?})")).await;
    }
}

/// Queues a command and waits for its end; returns the command's JSON.
async fn command(api: &mut Api, env: u64, action: &str, target: &str) -> Value {
    let queued = api
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": action, "target": target})),
            201,
        )
        .await;
    let id = queued["id"].as_u64().unwrap();
    wait_command(api, id, WAIT).await
}

fn edge_key(created: &Value) -> String {
    created["edge_key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_keeps_a_real_server_in_sync_and_runs_every_command_once() {
    let objects = Objects::new(&format!("tern-test-e2e-{}", std::process::id()));
    let dir = tempdir("tern-e2e-agent");
    let mut server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "e2e", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let key = edge_key(&created);
    let agent_data = dir.join("agent");
    let agent_data_s = agent_data.to_str().unwrap().to_owned();
    let vars = [("EDGE_KEY", key.as_str()), ("DATA_PATH", agent_data_s.as_str())];

    let web = objects.name("web");
    objects.run_sleeper("web");
    let mut agent = AgentProcess::start(&vars, &dir.join("agent.log"));
    wait_stored(&mut api, env, &web, Some("running")).await;
    converged(&mut api, env).await;

    // Each container command, checked against the engine itself, and
    // counted in the engine's event log: it ran exactly once.
    let since = chrono_now();
    for (action, status, event) in [
        ("container.pause", "paused", "pause"),
        ("container.unpause", "running", "unpause"),
        ("container.restart", "running", "restart"),
        ("container.kill", "exited", "kill"),
        ("container.start", "running", "start"),
        ("container.stop", "exited", "stop"),
    ] {
        let c = command(&mut api, env, action, &web).await;
        assert_eq!(c["status"], "ok", "{action}: {c}");
        assert_eq!(objects.status("web").as_deref(), Some(status), "{action}");
        wait_stored(&mut api, env, &web, Some(status)).await;
        assert!(!c["delivered_at"].is_null(), "{c}");
        let _ = event;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for event in ["pause", "unpause", "restart"] {
        assert_eq!(engine_events(&web, &since, event), 1, "{event} ran once");
    }

    // The last lines of a container's logs come back in a later poll.
    let talker = objects.name("talker");
    docker(&[
        "run",
        "-d",
        "--name",
        &talker,
        &objects.image,
        "/bin/busybox",
        "sh",
        "-c",
        "echo first; /bin/busybox sleep 1; echo second >&2; /bin/busybox sleep 1; echo third; trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done",
    ]);
    wait_stored(&mut api, env, &talker, Some("running")).await;
    // The three lines are a second apart, so their order in the log is sure.
    let deadline = Deadline::new(WAIT);
    while !docker(&["logs", &talker]).contains("third") {
        deadline.tick("the talker's third line").await;
    }
    let queued = api
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": "container.logs", "target": talker, "tail": 2})),
            201,
        )
        .await;
    let c = wait_command(&mut api, queued["id"].as_u64().unwrap(), WAIT).await;
    assert_eq!(c["status"], "ok", "{c}");
    let output = c["output"].as_str().unwrap();
    assert!(output.contains("second") && output.contains("third") && !output.contains("first"), "{output:?}");

    // Remove (force, with volumes).
    let c = command(&mut api, env, "container.remove", &web).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(objects.status("web"), None);
    wait_stored(&mut api, env, &web, None).await;

    // Images, volumes, networks.
    let spare = format!("{}-img:spare", objects.prefix);
    docker(&["tag", &objects.image, &spare]);
    let c = command(&mut api, env, "image.remove", &spare).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert!(docker(&["images", "-q", &spare]).is_empty());
    let c = command(&mut api, env, "image.pull", &format!("{}-nowhere/none:1", objects.prefix)).await;
    assert_eq!(c["status"], "failed", "no registry is reachable: {c}");
    assert!(!c["error"].as_str().unwrap().is_empty());
    let vol = objects.name("vol");
    docker(&["volume", "create", &vol]);
    let net = objects.name("net");
    docker(&["network", "create", &net]);
    converged(&mut api, env).await;
    let c = command(&mut api, env, "volume.remove", &vol).await;
    assert_eq!(c["status"], "ok", "{c}");
    let c = command(&mut api, env, "network.remove", &net).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert!(docker(&["volume", "ls", "-q", "--filter", &format!("name={vol}")]).is_empty());
    assert!(docker(&["network", "ls", "-q", "--filter", &format!("name={net}")]).is_empty());
    converged(&mut api, env).await;

    // An agent restart resends no full state: its first poll after the
    // restart is a few bytes, against the base it kept.
    assert!(agent.stop().is_some_and(|s| s.success()), "SIGTERM stops the agent cleanly");
    let before = poll_sizes(&agent.log()).len();
    let full = poll_sizes(&agent.log())[0];
    let mut agent = AgentProcess::start(&vars, &dir.join("agent.log"));
    let deadline = Deadline::new(WAIT);
    while poll_sizes(&agent.log()).len() <= before {
        deadline.tick("a poll after the agent restart").await;
    }
    let after = poll_sizes(&agent.log())[before];
    println!("first contact {full} B; first poll after an agent restart {after} B");
    assert!(after < 120 && after * 3 < full, "first poll after a restart: {after} B (first contact was {full} B)");
    converged(&mut api, env).await;

    // A server restart loses no queued command: queue one while the server
    // can't deliver it (agent stopped), restart the server on the same port.
    agent.stop();
    objects.run_sleeper("late");
    let late = objects.name("late");
    // The server has not seen "late" yet: target it by its id.
    let late_id = docker(&["inspect", "--format", "{{.Id}}", &late]);
    let queued = api
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": "container.stop", "target": late_id})),
            201,
        )
        .await;
    let addr = server.addr();
    server.stop();
    let server = Server::start(&dir.join("server"), &addr);
    let mut api = server.api();
    let _agent = AgentProcess::start(&vars, &dir.join("agent.log"));
    let c = wait_command(&mut api, queued["id"].as_u64().unwrap(), WAIT).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(objects.status("late").as_deref(), Some("exited"));
    converged(&mut api, env).await;
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}
