//! Edge stacks end to end: the real `tern server` and `tern agent`
//! binaries, the machine's Docker engine, HTTPS on 127.0.0.1:0, 1 s
//! intervals.
//!
//! * a stack deployed through the API runs on the engine (its containers
//!   exist, run, and carry compose's labels), and its status reaches the
//!   server ("running"); the agent's state shows the stack;
//! * an update redeploys it (the changed variable is in the container's
//!   environment);
//! * removal removes its containers and network (the named volume stays)
//!   and reports "removed"; a second removal purges the record;
//! * both implementations: the agent's built-in one (`EDGE_COMPOSE=builtin`)
//!   and the host's compose tool (`EDGE_COMPOSE=tool`);
//! * bad input is refused with a 4xx JSON error and changes nothing.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::{AgentProcess, Api, ComposeProject, Deadline, Objects, Server, docker, tempdir, tern_ok as tern};
use serde_json::{Value, json};
use tern::tls::Trust;

const WAIT: Duration = Duration::from_secs(120);

/// Two services (the second after the first), a variable with a default,
/// a named volume, a label; the image is the test's local busybox.
const COMPOSE: &str = r#"
services:
  web:
    image: ${IMAGE}
    command: ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]
    environment:
      GREETING: ${GREETING:-hello}
      PLAIN: "$$literal"
    volumes:
      - data:/data
    labels:
      tern.test: "stacks"
    restart: unless-stopped
  side:
    image: ${IMAGE}
    command: /bin/busybox sh -c "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"
    depends_on: [web]
volumes:
  data: {}
"#;

/// The containers of a compose project (names), by label.
fn project_containers(project: &str, service: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, name])
}

/// Waits until the stack's status on `env` is `want` with `version`;
/// fails at once on "failed".
/// An environment named `name` polling every second, and a real agent for
/// it (data and log in `dir`) deploying stacks with `compose`.
async fn env_with_agent(
    api: &mut Api,
    server: &Server,
    dir: &std::path::Path,
    name: &str,
    compose: &str,
) -> (u64, AgentProcess) {
    let body = json!({"name": name, "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}});
    let created = api.ok("POST", "/api/environments", Some(body), 201).await;
    let key = created["edge_key"].as_str().unwrap().to_owned();
    let data = dir.join("agent").to_str().unwrap().to_owned();
    let agent = AgentProcess::start(
        &[("EDGE_KEY", key.as_str()), ("DATA_PATH", data.as_str()), ("EDGE_COMPOSE", compose)],
        &dir.join("agent.log"),
    );
    (created["id"].as_u64().unwrap(), agent)
}

async fn wait_status(api: &mut Api, stack: u64, env: u64, want: &str, version: u32) -> Value {
    let deadline = Deadline::new(WAIT);
    loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let d = s["environments"].as_array().unwrap().iter().find(|d| d["environment"] == env).cloned();
        if let Some(d) = &d {
            assert_ne!(d["status"], "failed", "the agent failed the stack: {s}");
            if d["status"] == want && d["version"] == version {
                return s;
            }
        }
        deadline.tick(format_args!("stack {stack} to be {want} (version {version}) on environment {env}: {s}")).await;
    }
}

/// Waits until the server's stored state of `env` lists (or no longer
/// lists) the stack.
async fn wait_stored_stack(api: &mut Api, env: u64, name: &str, present: bool) {
    let deadline = Deadline::new(WAIT);
    loop {
        let state = api.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
        let found = state["stacks"].as_array().is_some_and(|l| l.iter().any(|s| s["name"] == name));
        if found == present {
            return;
        }
        deadline.tick(format_args!("the stored state to {} stack {name}", if present { "show" } else { "drop" })).await;
    }
}

/// Deploys, updates and removes a stack with an agent whose
/// `EDGE_COMPOSE` is `mode`; `tool` says containers are named the way the
/// tool names them (compose v1: `<project>_<service>_1`).
async fn a_stack_lives_and_dies(mode: &str) {
    let prefix = format!("tern-test-stk-{}-{mode}", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir(&format!("tern-stacks-{mode}"));
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, mode, mode).await;

    // Deploy.
    let name = prefix.clone();
    let body = json!({
        "name": name,
        "compose": COMPOSE,
        "env": {"IMAGE": objects.image},
        "targets": {"environments": [env]},
    });
    let s = api.ok("POST", "/api/stacks", Some(body), 201).await;
    let stack = s["id"].as_u64().unwrap();
    assert_eq!((s["version"].as_u64(), s["environments"][0]["status"].as_str()), (Some(1), Some("pending")), "{s}");
    let s = wait_status(&mut api, stack, env, "running", 1).await;
    assert_eq!(s["status"], "running", "{s}");
    let web = project_containers(&name, "web");
    let side = project_containers(&name, "side");
    assert_eq!((web.len(), side.len()), (1, 1), "one container per service: {web:?} {side:?}");
    let web = web[0].clone();
    if mode == "builtin" {
        assert_eq!(web, format!("{name}-web-1"), "compose v2's naming");
    }
    assert_eq!(inspect(&web, "{{.State.Status}}"), "running");
    assert_eq!(inspect(&side[0], "{{.State.Status}}"), "running");
    let labels: Value = serde_json::from_str(&inspect(&web, "{{json .Config.Labels}}")).unwrap();
    assert_eq!(labels["com.docker.compose.project"], name.as_str(), "{labels}");
    assert_eq!(labels["com.docker.compose.service"], "web", "{labels}");
    assert_eq!(labels["com.docker.compose.oneoff"], "False", "{labels}");
    assert_eq!(labels["tern.test"], "stacks", "{labels}");
    let container_env = inspect(&web, "{{json .Config.Env}}");
    assert!(container_env.contains("GREETING=hello"), "the default applies: {container_env}");
    assert!(container_env.contains("PLAIN=$literal"), "$$ is a literal $: {container_env}");
    assert_eq!(inspect(&web, "{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");
    assert!(!docker(&["network", "ls", "-q", "--filter", &format!("name={name}_default")]).is_empty());
    assert!(!docker(&["volume", "ls", "-q", "--filter", &format!("name={name}_data")]).is_empty());
    wait_stored_stack(&mut api, env, &name, true).await;
    let web_id = inspect(&web, "{{.Id}}");
    let side_id = inspect(&side[0], "{{.Id}}");

    // Update: a new variable, version 2, redeployed.
    let s = api
        .ok(
            "PUT",
            &format!("/api/stacks/{stack}"),
            Some(json!({"env": {"IMAGE": objects.image, "GREETING": "bonjour"}})),
            200,
        )
        .await;
    assert_eq!(s["version"], 2, "{s}");
    wait_status(&mut api, stack, env, "running", 2).await;
    let web = project_containers(&name, "web");
    assert_eq!(web.len(), 1, "{web:?}");
    let container_env = inspect(&web[0], "{{json .Config.Env}}");
    assert!(container_env.contains("GREETING=bonjour"), "the update is deployed: {container_env}");
    assert_ne!(inspect(&web[0], "{{.Id}}"), web_id, "the changed service was recreated");
    assert_eq!(inspect(&web[0], "{{.State.Status}}"), "running");
    if mode == "builtin" {
        // An unchanged service is left running as it was.
        assert_eq!(inspect(&project_containers(&name, "side")[0], "{{.Id}}"), side_id);
    }

    // Remove: "removing", then "removed"; containers and network gone, the
    // named volume kept (as `docker compose down` does).
    let s = api.ok("DELETE", &format!("/api/stacks/{stack}"), None, 202).await;
    assert_eq!(s["status"], "removing", "{s}");
    assert_eq!(s["environments"][0]["status"], "removing", "{s}");
    // Its name is free at once.
    let (status, v) = api
        .call(
            "POST",
            "/api/stacks",
            Some(json!({"name": name, "compose": COMPOSE, "targets": {"environments": [env]}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let again = v["id"].as_u64().unwrap();
    assert_eq!(api.ok("DELETE", &format!("/api/stacks/{again}"), None, 202).await["status"], "removing");
    let s = wait_status(&mut api, stack, env, "removed", 2).await;
    assert_eq!(s["status"], "removed", "{s}");
    wait_status(&mut api, again, env, "removed", 1).await;
    assert!(project_containers(&name, "web").is_empty() && project_containers(&name, "side").is_empty());
    assert!(docker(&["network", "ls", "-q", "--filter", &format!("name={name}_default")]).is_empty());
    assert!(!docker(&["volume", "ls", "-q", "--filter", &format!("name={name}_data")]).is_empty());
    assert!(!dir.join("agent").join("stacks").join(&name).exists(), "the stack's files are removed");
    wait_stored_stack(&mut api, env, &name, false).await;
    // Removed everywhere: a second DELETE purges the record.
    api.ok("DELETE", &format!("/api/stacks/{stack}"), None, 204).await;
    api.ok("GET", &format!("/api/stacks/{stack}"), None, 404).await;
    let list = api.ok("GET", "/api/stacks", None, 200).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "only the second one is left: {list}");
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_runs_updates_and_is_removed_with_the_builtin_compose() {
    a_stack_lives_and_dies("builtin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_runs_updates_and_is_removed_with_the_hosts_compose_tool() {
    assert!(
        tern::agent::compose::find_tool().await.is_some(),
        "this test needs `docker compose` or `docker-compose` on the host (Debian: apt-get install docker-compose)"
    );
    a_stack_lives_and_dies("tool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_that_cannot_start_reports_the_engines_error() {
    let prefix = format!("tern-test-stk-{}-fail", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir("tern-stacks-fail");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "fail", "builtin").await;
    // No registry is reachable: an image the engine does not have cannot
    // be pulled, and the agent says so.
    let compose = format!("services:\n  a:\n    image: {prefix}-nowhere/none:1\n");
    let s = api
        .ok(
            "POST",
            "/api/stacks",
            Some(json!({"name": prefix, "compose": compose, "targets": {"environments": [env]}})),
            201,
        )
        .await;
    let stack = s["id"].as_u64().unwrap();
    let deadline = Deadline::new(WAIT);
    loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        if s["environments"][0]["status"] == "failed" {
            assert_eq!(s["status"], "failed");
            let error = s["environments"][0]["error"].as_str().unwrap();
            assert!(error.contains("pulling") && error.contains("nowhere"), "{error}");
            break;
        }
        deadline.tick(format_args!("the stack to fail: {s}")).await;
    }
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stacks_are_refused_and_change_nothing() {
    let dir = tempdir("tern-stacks-bad");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api.ok("POST", "/api/environments", Some(json!({"name": "e", "url": server.url()})), 201).await;
    let env = created["id"].as_u64().unwrap();
    let good = "services:\n  web:\n    image: busybox\n";
    let body =
        |name: &str, compose: &str, targets: Value| json!({"name": name, "compose": compose, "targets": targets});
    let to_env = json!({"environments": [env]});
    let oversized = format!("{good}# {}\n", "x".repeat(256 * 1024));
    // 40,000 nested defaults (240 KB) overflowed the agent's stack; the
    // server now refuses what the agent would.
    let nested = format!("services:\n  web:\n    image: \"{}x{}\"\n", "${A:-".repeat(40_000), "}".repeat(40_000));
    let with_env =
        |compose: &str, env: Value| json!({"name": "web", "compose": compose, "env": env, "targets": to_env});
    for (b, status, text) in [
        (body("web", &nested, to_env.clone()), 422, "nested more than 16 deep"),
        (with_env("services:\n  web:\n    image: \"x:${TAG:?give a TAG}\"\n", json!({})), 422, "give a TAG"),
        (with_env(good, json!({"LD_PRELOAD": "/data/evil.so"})), 422, "LD_PRELOAD may not be set"),
        (with_env(good, json!({"DOCKER_HOST": "tcp://elsewhere:2375"})), 422, "DOCKER_HOST may not be set"),
        (with_env(good, json!({"PATH": "/tmp"})), 422, "PATH may not be set"),
        (body("web", "services: [unclosed", to_env.clone()), 422, "not valid YAML"),
        (body("web", "just text", to_env.clone()), 422, "services"),
        (body("web", "services:\n  web:\n    build: .\n", to_env.clone()), 422, "image"),
        (body("Web!", good, to_env.clone()), 422, "compose project name"),
        (body("", good, to_env.clone()), 422, "compose project name"),
        (body("web", good, json!({"environments": [999]})), 422, "no environment 999"),
        (body("web", good, json!({"environments": ["nope"]})), 422, "no environment"),
        (body("web", good, json!({"groups": ["nope"]})), 422, "no group"),
        (body("web", good, json!({"tags": ["nope"]})), 422, "no tag"),
        (body("web", good, json!({})), 422, "at least one"),
        (body("web", good, json!({"hosts": [1]})), 422, "unknown field"),
        (body("web", &oversized, to_env.clone()), 413, "256 KiB"),
        (json!({"name": "web", "compose": good, "env": {"1BAD": "x"}, "targets": to_env}), 422, "variable name"),
        (json!({"name": "web", "targets": to_env}), 422, "compose"),
    ] {
        let (got, v) = api.call("POST", "/api/stacks", Some(b.clone())).await;
        assert_eq!(got, status, "{v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(text), "wanted {text:?} in {v}");
    }
    // Malformed JSON, a missing credential.
    let (got, v) = api.call("POST", "/api/stacks", Some(Value::String("{".into()))).await;
    assert!(got == 400 || got == 415 || got == 422, "{got} {v}");
    assert!(v["error"].is_string(), "{v}");
    let (got, v) = api.call("GET", "/api/stacks/999", None).await;
    assert_eq!((got, v["error"].as_str()), (404, Some("no stack 999")));
    let (got, _) = api.call("PUT", "/api/stacks/999", Some(json!({}))).await;
    assert_eq!(got, 404);
    let (got, _) = api.call("DELETE", "/api/stacks/999", None).await;
    assert_eq!(got, 404);
    let mut anonymous =
        tern::agent::client::Client::new(&server.url(), Trust::Pinned(server.fingerprint()), 1 << 20).unwrap();
    for (method, path) in
        [("GET", "/api/stacks"), ("POST", "/api/stacks"), ("GET", "/api/stacks/1"), ("DELETE", "/api/stacks/1")]
    {
        for token in ["", "wrong"] {
            let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
            let bytes = body("web", good, to_env.clone()).to_string().into_bytes();
            let (got, reply) = anonymous.api(method.clone(), path, token, Some(bytes)).await.unwrap();
            assert_eq!(got, 401, "{method} {path}: {}", String::from_utf8_lossy(&reply));
        }
    }
    // Nothing was stored or queued.
    assert_eq!(api.ok("GET", "/api/stacks", None, 200).await, json!([]));
    let commands = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    assert_eq!(commands, json!([]));
    // An update is checked the same way, and a refused one changes nothing.
    let s = api.ok("POST", "/api/stacks", Some(body("web", good, to_env.clone())), 201).await;
    let id = s["id"].as_u64().unwrap();
    for (b, status) in [
        (json!({"compose": "services: {}"}), 422),
        (json!({"compose": "services:\n  web:\n    image: \"x:${TAG:?give a TAG}\"\n"}), 422),
        (json!({"env": {"COMPOSE_FILE": "/etc/passwd"}}), 422),
        (json!({"compose": oversized}), 413),
        (json!({"targets": {"tags": ["nope"]}}), 422),
        (json!({"version": 7}), 422),
    ] {
        let (got, v) = api.call("PUT", &format!("/api/stacks/{id}"), Some(b)).await;
        assert_eq!(got, status, "{v}");
    }
    let s = api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await;
    assert_eq!((s["version"].as_u64(), s["compose"].as_str()), (Some(1), Some(good)));
    let (got, v) = api.call("POST", "/api/stacks", Some(body("web", good, to_env))).await;
    assert_eq!((got, v["error"].as_str()), (409, Some("a stack named \"web\" exists already")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_shows_updates_and_removes_a_stack() {
    let prefix = format!("tern-test-stk-{}-cli", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir("tern-stacks-cli");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (_, _agent) = env_with_agent(&mut api, &server, &dir, "cli-env", "builtin").await;
    let file = dir.join("compose.yml");
    std::fs::write(&file, COMPOSE).unwrap();
    let file = file.to_str().unwrap();
    let image = format!("IMAGE={}", objects.image);
    let out = tern(
        &server,
        &["stack", "deploy", "--name", &prefix, "--file", file, "--env", &image, "--env-id", "cli-env", "--wait"],
    );
    assert!(out.contains(&format!("{prefix}  version 1  running")), "{out}");
    assert!(out.contains("cli-env") && out.contains("running"), "{out}");
    let list = tern(&server, &["stack", "list"]);
    assert!(list.contains(&prefix) && list.contains("1 running"), "{list}");
    let out = tern(&server, &["stack", "update", &prefix, "--env", &image, "--env", "GREETING=hej", "--wait"]);
    assert!(out.contains("version 2  running"), "{out}");
    let web = project_containers(&prefix, "web");
    assert!(inspect(&web[0], "{{json .Config.Env}}").contains("GREETING=hej"));
    let shown: Value = serde_json::from_str(&tern(&server, &["stack", "show", &prefix, "--json"])).unwrap();
    assert_eq!((shown["version"].as_u64(), shown["environments"][0]["status"].as_str()), (Some(2), Some("running")));
    let out = tern(&server, &["stack", "rm", &prefix, "--wait"]);
    assert!(out.contains("removed"), "{out}");
    assert!(project_containers(&prefix, "web").is_empty());
    let out = tern(&server, &["stack", "rm", &prefix]);
    assert!(out.contains("its record is gone"), "{out}");
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Versions and rollback (issue #17): every update is kept; a rollback
/// deploys an earlier version again as a new version (CLI and API); a
/// rollback to a version whose image is gone fails on the agent before
/// anything of the running version is stopped, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_rolls_back_to_an_earlier_version_and_one_whose_image_is_gone_stops_nothing() {
    let prefix = format!("tern-test-stk-{}-rb", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir("tern-stacks-rollback");
    let password = "a long admin password for rollbacks";
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", password)]);
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "rb-env", "builtin").await;
    // Version 1 runs an image tagged for a registry nobody serves (nothing
    // to pull from): it is on the host now, and will be gone later.
    let old_image = format!("127.0.0.1:9/{prefix}:old");
    docker(&["tag", &objects.image, &old_image]);
    let body =
        json!({"name": prefix, "compose": COMPOSE, "env": {"IMAGE": old_image}, "targets": {"environments": [env]}});
    let stack = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    wait_status(&mut api, stack, env, "running", 1).await;
    // Version 2: the test's image, another greeting.
    let v2 = json!({"env": {"IMAGE": objects.image, "GREETING": "bonjour"}});
    api.ok("PUT", &format!("/api/stacks/{stack}"), Some(v2), 200).await;
    wait_status(&mut api, stack, env, "running", 2).await;
    let web = project_containers(&prefix, "web")[0].clone();
    assert!(inspect(&web, "{{json .Config.Env}}").contains("GREETING=bonjour"));

    let versions = api.ok("GET", &format!("/api/stacks/{stack}/versions"), None, 200).await;
    let list = versions.as_array().unwrap();
    assert_eq!(list.iter().map(|v| v["version"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 1], "{versions}");
    assert_eq!((list[0]["current"].as_bool(), list[1]["current"].as_bool()), (Some(true), Some(false)));
    assert_eq!(list[1]["env"]["IMAGE"], old_image.as_str());
    // Bad rollbacks change nothing.
    api.ok("POST", &format!("/api/stacks/{stack}/rollback"), Some(json!({"version": 9})), 404).await;
    api.ok("POST", &format!("/api/stacks/{stack}/rollback"), Some(json!({"version": 2})), 422).await;
    api.ok("POST", &format!("/api/stacks/{stack}/rollback"), Some(json!({"to": 1})), 422).await;
    assert_eq!(api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await["version"], 2);

    // Version 1's image is gone from the host: the rollback (version 3)
    // fails on the agent, which says so, and version 2 keeps running as it
    // was (the same container).
    let web_id = inspect(&web, "{{.Id}}");
    docker(&["rmi", &old_image]);
    let out = tern(&server, &["stack", "rollback", &prefix, "--to", "1"]);
    assert!(out.contains("version 3"), "{out}");
    let deadline = Deadline::new(WAIT);
    let failed = loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let d = &s["environments"][0];
        if d["status"] == "failed" && d["version"] == 3 {
            break d.clone();
        }
        deadline.tick(format_args!("the rollback to a gone image to fail: {s}")).await;
    };
    assert!(failed["error"].as_str().unwrap_or("").contains(&format!("pulling {old_image}")), "{failed}");
    // Version 3 was sent; version 2 is what runs there, and says so.
    assert_eq!(failed["running_version"], 2, "{failed}");
    let shown = tern(&server, &["stack", "show", &prefix]);
    assert!(shown.lines().any(|l| l.contains("failed") && l.contains(" 3 ") && l.contains(" 2 ")), "{shown}");
    assert_eq!(inspect(&web, "{{.Id}}"), web_id, "nothing was stopped or replaced");
    assert_eq!(inspect(&web, "{{.State.Status}}"), "running");

    // Back to version 2 with the CLI, waiting: version 4, running, its
    // greeting; the history says what each version came from.
    let out = tern(&server, &["stack", "rollback", &prefix, "--to", "2", "--wait"]);
    assert!(out.contains("version 4  running"), "{out}");
    let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
    assert_eq!(s["environments"][0]["running_version"], 4, "{s}");
    let web = project_containers(&prefix, "web")[0].clone();
    assert!(inspect(&web, "{{json .Config.Env}}").contains("GREETING=bonjour"));
    let table = tern(&server, &["stack", "versions", &prefix]);
    assert!(table.contains("4 (current)") && table.contains("rolled back to version 2"), "{table}");
    assert!(table.contains("rolled back to version 1"), "{table}");
    // The UI's versions page offers a rollback to every other version.
    let page = common::UiClient::login(&server, password).await.get(&format!("/stacks/{stack}/versions")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for v in 1..=3 {
        assert!(page.body.contains(&format!("id=\"rollback-{v}\"")), "{}", page.body);
    }
    assert!(!page.body.contains("id=\"rollback-4\""), "not to the current one");

    // A whole stack's logs: one command per container, each line after
    // its container's name.
    let talk = format!("{prefix}-talk");
    let compose = "services:\n  a:\n    image: ${IMAGE}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"echo hello from a; exec /bin/busybox sleep 600\"]\n  \
                   b:\n    image: ${IMAGE}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"echo hello from b; exec /bin/busybox sleep 600\"]\n";
    let body =
        json!({"name": talk, "compose": compose, "env": {"IMAGE": objects.image}, "targets": {"environments": [env]}});
    let talk_id = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    wait_status(&mut api, talk_id, env, "running", 1).await;
    wait_stored_stack(&mut api, env, &talk, true).await;
    let out = tern(&server, &["logs", "rb-env", "--stack", &talk, "--tail", "5"]);
    assert!(out.contains(&format!("{talk}-a-1 | hello from a")), "{out}");
    assert!(out.contains(&format!("{talk}-b-1 | hello from b")), "{out}");
    let none =
        api.ok("POST", &format!("/api/environments/{env}/stacks/no-such-stack/logs"), Some(json!({})), 404).await;
    assert!(none["error"].as_str().unwrap().contains("no stack"), "{none}");
    api.ok("POST", &format!("/api/environments/{env}/stacks/{talk}/logs"), Some(json!({"tail": 0})), 400).await;
}

/// Retries (issue #17): a deploy that fails is sent again on its own, with
/// backoff, and the status says which attempt it is on; once the cause is
/// gone (here: its image arrives on the host), an attempt succeeds and that
/// version runs. The server's first retry delay is shortened to a second
/// to 3 s (`TERN_DEPLOY_RETRY`; 60 s by default): five attempts take about
/// 45 s, room to tag the image after the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deploy_is_retried_with_backoff_and_runs_once_its_image_arrives() {
    let prefix = format!("tern-test-stk-{}-rt", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir("tern-stacks-retry");
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_DEPLOY_RETRY", "3")]);
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "rt-env", "builtin").await;
    // An image tagged for a registry nobody serves, not on the host yet.
    let image = format!("127.0.0.1:9/{prefix}:late");
    let body = json!({"name": prefix, "compose": COMPOSE, "env": {"IMAGE": image}, "targets": {"environments": [env]}});
    let stack = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    // It fails, and is sent again: attempt 2 (or later), with a time.
    let deadline = Deadline::new(WAIT);
    let retrying = loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let d = s["environments"][0].clone();
        if d["attempt"].as_u64() >= Some(2) {
            break d;
        }
        deadline.tick(format_args!("a second attempt: {s}")).await;
    };
    assert_eq!(retrying["max_attempts"], 5, "{retrying}");
    assert_eq!(retrying["version"], 1, "{retrying}");
    assert!(retrying["running_version"].is_null(), "nothing runs yet: {retrying}");
    let shown = tern(&server, &["stack", "show", &prefix]);
    assert!(shown.contains("attempt ") && shown.contains(" of 5"), "{shown}");
    // The image arrives; a later attempt runs it.
    docker(&["tag", &objects.image, &image]);
    let deadline = Deadline::new(WAIT);
    let ran = loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let d = s["environments"][0].clone();
        if d["status"] == "running" {
            break d;
        }
        assert!(d["status"] != "failed" || !d["retry_at"].is_null(), "it gave up: {s}");
        deadline.tick(format_args!("a later attempt to run: {s}")).await;
    };
    assert_eq!(ran["running_version"], 1, "{ran}");
    assert!(ran["attempt"].as_u64().unwrap() >= 2, "{ran}");
    assert!(ran["retry_at"].is_null(), "{ran}");
    assert_eq!(project_containers(&prefix, "web").len(), 1);
    // The environment's deploy history has every attempt: the failed ones
    // with the engine's error, then the one that ran.
    let history = api.ok("GET", &format!("/api/stacks/{stack}/history?environment={env}"), None, 200).await;
    let list = history.as_array().unwrap();
    assert!(list.len() as u64 >= ran["attempt"].as_u64().unwrap(), "one entry an attempt: {history}");
    assert_eq!((list[0]["status"].as_str(), list[0]["version"].as_u64()), (Some("ok"), Some(1)), "{history}");
    assert!(list[1..].iter().all(|d| d["status"] == "failed" && !d["error"].as_str().unwrap().is_empty()), "{history}");
    assert_eq!(api.ok("GET", &format!("/api/stacks/{stack}/history?environment=999"), None, 200).await, json!([]));
    api.ok("GET", &format!("/api/stacks/{stack}/history?limit=x"), None, 400).await;
    api.ok("GET", &format!("/api/stacks/{stack}/history?since=1"), None, 400).await;
    api.ok("GET", "/api/stacks/999/history", None, 404).await;
    let out = tern(&server, &["stack", "history", &prefix, "--env", "rt-env"]);
    assert!(out.contains("rt-env") && out.contains("ok") && out.contains("failed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    docker(&["rmi", &image]);
}

/// A stack variable with a value of the environment's own (issue #17): the
/// environment's value is what the stack's containers get there, from the
/// stack's next deploy; the stack keeps its own; names the stack does not
/// declare are not passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_gives_a_stack_variable_its_own_value() {
    let prefix = format!("tern-test-stk-{}-ev", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir("tern-stacks-env-values");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "ev-env", "builtin").await;
    let vars = format!("/api/environments/{env}/variables");
    // Bad input changes nothing.
    api.ok("PUT", &vars, Some(json!({"1BAD": "x"})), 422).await;
    api.ok("PUT", &vars, Some(json!({"PATH": "/tmp"})), 422).await;
    api.ok("PUT", "/api/environments/999/variables", Some(json!({})), 404).await;
    assert_eq!(api.ok("GET", &vars, None, 200).await["variables"], json!({}));
    let set = api.ok("PUT", &vars, Some(json!({"GREETING": "hej from site 7", "UNUSED": "x"})), 200).await;
    assert_eq!(set["variables"]["GREETING"], "hej from site 7", "{set}");

    let body = json!({"name": prefix, "compose": COMPOSE, "env": {"IMAGE": objects.image, "GREETING": "hello"},
                      "targets": {"environments": [env]}});
    let stack = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    let shown = wait_status(&mut api, stack, env, "running", 1).await;
    assert_eq!(shown["env"]["GREETING"], "hello", "the stack keeps its own value: {shown}");
    let web = project_containers(&prefix, "web")[0].clone();
    let seen = inspect(&web, "{{json .Config.Env}}");
    assert!(seen.contains("GREETING=hej from site 7"), "{seen}");
    assert!(!seen.contains("UNUSED"), "{seen}");

    // Set from the CLI; the stack's next version takes it.
    let out = tern(&server, &["env", "vars", "ev-env", "GREETING=second"]);
    assert!(out.contains("GREETING=second"), "{out}");
    let v2 = json!({"env": {"IMAGE": objects.image, "GREETING": "hello", "V": "2"}});
    api.ok("PUT", &format!("/api/stacks/{stack}"), Some(v2), 200).await;
    wait_status(&mut api, stack, env, "running", 2).await;
    let web = project_containers(&prefix, "web")[0].clone();
    assert!(inspect(&web, "{{json .Config.Env}}").contains("GREETING=second"));
    let out = tern(&server, &["env", "vars", "ev-env", "--clear"]);
    assert!(out.trim().is_empty(), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service that mounts two of its stack's configuration files by
/// relative path, and one that mounts none.
const FILES_COMPOSE: &str = r#"
services:
  web:
    image: ${IMAGE}
    command: ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]
    volumes:
      - ./conf/app.conf:/etc/app.conf:ro
      - type: bind
        source: ./motd
        target: /etc/motd
        read_only: true
  side:
    image: ${IMAGE}
    command: ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_files_ship_with_a_stack_and_its_services_mount_them() {
    files_ship_with_a_stack("builtin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_files_ship_with_a_stack_deployed_by_the_hosts_compose_tool() {
    files_ship_with_a_stack("tool").await;
}

/// Ships a stack's files, changes one and drops one, and rolls back, with
/// an agent whose `EDGE_COMPOSE` is `mode`.
async fn files_ship_with_a_stack(mode: &str) {
    let prefix = format!("tern-test-stk-{}-cf{}", std::process::id(), &mode[..1]);
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir(&format!("tern-stacks-files-{mode}"));
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "cf-env", mode).await;
    let env_vars = json!({"IMAGE": objects.image});
    let with_files = |name: &str, files: Value| {
        json!({"name": name, "compose": FILES_COMPOSE, "env": env_vars, "files": files,
               "targets": {"environments": [env]}})
    };

    // Bad files are refused and leave nothing.
    for (files, status) in [
        (json!({"../escape": "x"}), 422),
        (json!({"/etc/passwd": "x"}), 422),
        (json!({"compose.yml": "x"}), 422),
        (json!({"conf": "x", "conf/app.conf": "y"}), 422),
        (json!({"a": "nul\u{0}"}), 422),
        (json!({"big": "x".repeat(1024 * 1024 + 1)}), 413),
    ] {
        let e = api.ok("POST", "/api/stacks", Some(with_files(&prefix, files.clone())), status).await;
        assert!(e["error"].as_str().is_some_and(|m| m.starts_with("files")), "{files:.60}: {e}");
    }
    assert_eq!(api.ok("GET", "/api/stacks", None, 200).await, json!([]));

    let files = json!({"conf/app.conf": "level=1\n", "motd": "hello from tern\n", "notes/readme.txt": "ops\n"});
    let stack = api.ok("POST", "/api/stacks", Some(with_files(&prefix, files)), 201).await;
    assert_eq!(stack["files_bytes"], 28, "{stack}");
    let id = stack["id"].as_u64().unwrap();
    wait_status(&mut api, id, env, "running", 1).await;
    let web = project_containers(&prefix, "web")[0].clone();
    let side = project_containers(&prefix, "side")[0].clone();
    assert_eq!(
        docker(&["exec", &web, "/bin/busybox", "cat", "/etc/app.conf", "/etc/motd"]),
        "level=1\nhello from tern"
    );
    let stack_dir = dir.join("agent").join("stacks").join(&prefix);
    assert_eq!(std::fs::read_to_string(stack_dir.join("conf/app.conf")).unwrap(), "level=1\n");

    // The CLI ships a changed file, the same motd, and drops the notes: the
    // service that mounts the changed file is made again and reads the new
    // text; the other one runs on.
    std::fs::create_dir_all(dir.join("local/conf")).unwrap();
    std::fs::write(dir.join("local/conf/app.conf"), "level=2\n").unwrap();
    std::fs::write(dir.join("local/motd"), "hello from tern\n").unwrap();
    let arg = format!("{}/", dir.join("local").display());
    let arg = format!("={arg}");
    let out = tern(&server, &["stack", "update", &prefix, "--config", &arg, "--wait"]);
    assert!(out.contains("files (24 B in each deploy): conf/app.conf (8 B), motd (16 B)"), "{out}");
    wait_status(&mut api, id, env, "running", 2).await;
    let web2 = project_containers(&prefix, "web")[0].clone();
    assert_eq!(docker(&["exec", &web2, "/bin/busybox", "cat", "/etc/app.conf"]), "level=2");
    if mode == "builtin" {
        // (the tool cannot be told which services mount a file: it makes
        // them all again)
        assert_eq!(inspect(&side, "{{.State.Running}}"), "true", "the service that mounts no file keeps running");
        assert_eq!(project_containers(&prefix, "side"), vec![side.clone()]);
    }
    assert!(!stack_dir.join("notes").exists(), "a file the new version drops is deleted, and its directory");

    // A rollback brings the files of version 1 back.
    api.ok("POST", &format!("/api/stacks/{id}/rollback"), Some(json!({"version": 1})), 200).await;
    wait_status(&mut api, id, env, "running", 3).await;
    let web3 = project_containers(&prefix, "web")[0].clone();
    assert_eq!(
        docker(&["exec", &web3, "/bin/busybox", "cat", "/etc/app.conf", "/etc/motd"]),
        "level=1\nhello from tern"
    );
    let versions = api.ok("GET", &format!("/api/stacks/{id}/versions"), None, 200).await;
    assert_eq!(versions[1]["files"], json!({"conf/app.conf": "level=2\n", "motd": "hello from tern\n"}), "{versions}");
    assert_eq!(std::fs::read_to_string(stack_dir.join("notes/readme.txt")).unwrap(), "ops\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_for_its_window_and_goes_when_it_opens() {
    let prefix = format!("tern-test-stk-{}-win", std::process::id());
    let objects = Objects::new(&prefix);
    let _project = ComposeProject(prefix.clone());
    let dir = tempdir("tern-stacks-window");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, _agent) = env_with_agent(&mut api, &server, &dir, "win-env", "builtin").await;
    let hour = (tern::clock::unix_now() / 3600).rem_euclid(24);
    let at = |h: i64| format!("{:02}:00", h.rem_euclid(24));
    // Two hours from now for one hour: closed now. Written with an offset
    // it is the same hours.
    let closed = format!("{}-{} UTC+01:00", at(hour + 3), at(hour + 4));
    let body = |window: &str| {
        json!({"name": prefix, "compose": COMPOSE, "env": {"IMAGE": objects.image}, "window": window,
               "targets": {"environments": [env]}})
    };
    for bad in ["1-5", "01:00-01:00", "01:00-02:00 CET"] {
        let e = api.ok("POST", "/api/stacks", Some(body(bad)), 422).await;
        assert!(e["error"].as_str().unwrap().starts_with("window:"), "{e}");
    }
    let created = api.ok("POST", "/api/stacks", Some(body(&closed)), 201).await;
    assert_eq!(created["window"], format!("{}-{} UTC+01:00", at(hour + 3), at(hour + 4)));
    let id = created["id"].as_u64().unwrap();
    let d = &created["environments"][0];
    assert_eq!(d["status"], "waiting", "{created}");
    let opens = d["retry_at"].as_i64().unwrap();
    assert_eq!(opens.rem_euclid(86_400), (hour + 2).rem_euclid(24) * 3600, "it opens at {} UTC", at(hour + 2));
    // The agent polls every second; nothing is deployed meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(project_containers(&prefix, "web").is_empty(), "nothing runs outside the window");
    let shown = tern(&server, &["stack", "show", &prefix]);
    assert!(shown.contains("deploys start only within") && shown.contains("waiting"), "{shown}");

    // The environment's window (open now) and the stack's never meet: it
    // still waits. The stack's window cleared (no new version), the
    // environment's alone is open: it goes within seconds.
    api.ok("PUT", &format!("/api/environments/{env}/window"), Some(json!({"window": "25:00-01:00"})), 422).await;
    let out = tern(&server, &["env", "window", "win-env", &format!("{}-{}", at(hour - 1), at(hour + 2))]);
    assert!(out.contains("deploys start only within"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(project_containers(&prefix, "web").is_empty(), "windows that never meet: nothing runs");
    let out = tern(&server, &["stack", "update", &prefix, "--window", ""]);
    assert!(!out.contains("deploys start only within"), "{out}");
    let s = wait_status(&mut api, id, env, "running", 1).await;
    assert_eq!((s["version"].as_u64(), s["environments"][0]["attempt"].as_u64()), (Some(1), Some(1)), "{s}");
    assert_eq!(project_containers(&prefix, "web").len(), 1);
    let out = tern(&server, &["env", "window", "win-env", "--clear"]);
    assert!(out.contains("no deploy window"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
