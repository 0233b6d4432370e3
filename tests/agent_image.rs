//! The agent image, deployed the way an operator deploys it: the real
//! `tern server`, an environment created through the API, and the Linux
//! command the API generates for it, run with `sh -c` as it is (the engine
//! socket mounted, the socket's group added, the data volume, the image's
//! non-root user).
//!
//! * the environment comes online with this host's containers;
//! * a command (container.stop) runs through the containerised agent;
//! * a stack deploys with the built-in compose implementation (the image
//!   has no compose tool, and `EDGE_COMPOSE=auto` falls back to it), or,
//!   for the compose variant (tern-agent:compose), with the docker-compose
//!   it bundles;
//! * the container's health becomes `healthy` through the image's
//!   HEALTHCHECK (`tern agent health`);
//! * the agent runs as uid 65532, with the socket's group.
//!
//! The image is `tern-agent:latest` (`scripts/agent-image.sh` builds it) or
//! the one `TERN_AGENT_IMAGE` names. Without it the test is skipped, except
//! in CI (`CI=true`), where the image must exist (`.ci/run` builds it).

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Api, Deadline, Objects, Server, agent_image as image, bridge_gateway, docker, tempdir};
use serde_json::{Value, json};
use tern::server::domain::deploy::AGENT_IMAGE;

const WAIT: Duration = Duration::from_secs(90);

/// The image's user (the Dockerfile's `USER`).
const AGENT_UID: &str = "65532";

fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, name])
}

/// Replaces `from` (which must occur exactly once) in the command.
fn replace_once(command: &str, from: &str, to: &str) -> String {
    assert_eq!(command.matches(from).count(), 1, "{from:?} once in the generated command:\n{command}");
    command.replacen(from, to, 1)
}

/// A line of `/proc/<pid>/status`, e.g. `VmRSS`.
fn proc_status(pid: &str, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
}

async fn wait_command(api: &mut Api, env: u64, action: &str, target: &str) -> Value {
    let body = json!({"action": action, "target": target});
    let id =
        api.ok("POST", &format!("/api/environments/{env}/commands"), Some(body), 201).await["id"].as_u64().unwrap();
    let deadline = Deadline::new(WAIT);
    loop {
        let c = api.ok("GET", &format!("/api/commands/{id}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed" | "rejected")) {
            return c;
        }
        deadline.tick(format_args!("command {id} to finish ({c})")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_command_runs_the_image_as_a_non_root_agent() {
    let Some(image) = image() else { return };
    deploy_and_check(&image, Compose::BuiltIn).await;
}

/// The image variant that bundles Debian's docker-compose
/// (`scripts/agent-image.sh --compose`): the same checks, but its stacks
/// deploy with the bundled tool, `EDGE_COMPOSE=auto`'s first choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_variant_deploys_stacks_with_its_bundled_compose_tool() {
    let Some(image) = compose_image() else { return };
    deploy_and_check(&image, Compose::Bundled).await;
}

/// The compose variant, tern-agent:compose (or `TERN_AGENT_COMPOSE_IMAGE`),
/// `None` to skip (outside CI only).
fn compose_image() -> Option<String> {
    let image = std::env::var("TERN_AGENT_COMPOSE_IMAGE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| format!("{}:compose", AGENT_IMAGE.split(':').next().unwrap_or(AGENT_IMAGE)));
    let exists = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if !exists {
        assert!(!ci, "CI: the image {image} does not exist; `.ci/run` builds it with scripts/agent-image.sh --compose");
        eprintln!("SKIPPED: no image {image} in the local engine (build it with scripts/agent-image.sh --compose)");
        return None;
    }
    Some(image)
}

/// Which compose implementation the image's agent deploys stacks with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compose {
    /// The built-in one: the image has no compose tool.
    BuiltIn,
    /// The docker-compose (v1) the image bundles.
    Bundled,
}

async fn deploy_and_check(image: &str, compose_impl: Compose) {
    let image = image.to_owned();
    let started = std::time::Instant::now();
    let prefix = format!("tern-test-img-{}", std::process::id());
    // Removes, on drop, every container, volume and network named
    // `<prefix>-*`: the agent's container and data volume, the sleeper, the
    // stack's container and network; and the test's busybox image.
    let objects = Objects::new(&prefix);
    let web = objects.name("web");
    objects.run_sleeper("web");
    let dir = tempdir(&prefix);

    // The agent in its container must reach the server through the URL in
    // its join token. The generated command puts the container on the
    // default bridge network, where 127.0.0.1 is the container itself; so
    // the server listens on the bridge's gateway address (this host as
    // the bridge sees it, reachable from here too) and that is the URL the
    // environment is given, as an operator gives the address the edge
    // sees. The command's network is left as generated: no --network host.
    let gateway = bridge_gateway(&objects.image);
    let server = Server::start(&dir.join("server"), &format!("{gateway}:0"));
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "image", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let generated = created["commands"]["linux"].as_str().unwrap().to_owned();

    // The command as generated, but for a unique container and volume
    // name (other tests, or a real agent, may run on this engine), and
    // the image when TERN_AGENT_IMAGE names another.
    let agent = objects.name("agent");
    let volume = objects.name("data");
    let mut command = replace_once(&generated, "--name tern-agent ", &format!("--name {agent} "));
    command = replace_once(&command, "-v tern-agent-data:/data ", &format!("-v {volume}:/data "));
    if image != AGENT_IMAGE {
        command = replace_once(&command, &format!(" {AGENT_IMAGE} agent"), &format!(" {image} agent"));
    }
    println!("running:\n{command}");
    let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    assert!(out.status.success(), "the generated command failed: {}", String::from_utf8_lossy(&out.stderr));
    let logs = || {
        let out = Command::new("docker").args(["logs", "--tail", "40", &agent]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };

    // Online, with this host's containers.
    let deadline = Deadline::new(WAIT);
    loop {
        let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
        let state = api.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
        let names: Vec<&str> = state["containers"]
            .as_array()
            .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        if e["status"] == "online" && names.contains(&web.as_str()) && names.contains(&agent.as_str()) {
            assert_eq!(state["host"]["hostname"].as_str().map(str::is_empty), Some(false), "{}", state["host"]);
            break;
        }
        assert_eq!(inspect(&agent, "{{.State.Status}}"), "running", "the agent's container stopped:\n{}", logs());
        deadline
            .tick(format_args!("environment {env} online with {web} and {agent} ({}):\n{}", e["status"], logs()))
            .await;
    }
    println!("online after {:.1} s", started.elapsed().as_secs_f64());

    // Not root: the image's user, with the socket's group.
    assert_eq!(inspect(&agent, "{{.Config.User}}"), format!("{AGENT_UID}:{AGENT_UID}"));
    let top = docker(&["top", &agent, "-o", "pid,euid,egid,comm"]);
    let row: Vec<&str> = top.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(1..4), Some(&[AGENT_UID, AGENT_UID, "tern"][..]), "docker top:\n{top}");
    let pid = inspect(&agent, "{{.State.Pid}}");
    let socket_gid = std::fs::metadata("/var/run/docker.sock").map(|m| std::os::unix::fs::MetadataExt::gid(&m));
    if let (Some(groups), Ok(gid)) = (proc_status(&pid, "Groups"), socket_gid) {
        assert!(groups.split_whitespace().any(|g| g == gid.to_string()), "groups {groups:?} lack the socket's {gid}");
    }

    // TCP timestamps off in the agent container's own network namespace
    // (the command's --sysctl), so its connection to the server carries no
    // timestamp option: `ss` shows `ts` for a connection that has one.
    let in_agent_netns = |args: &[&str]| {
        let out = Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).args(args).output().unwrap();
        assert!(out.status.success(), "nsenter {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(in_agent_netns(&["cat", "/proc/sys/net/ipv4/tcp_timestamps"]).trim(), "0");
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let ss = in_agent_netns(&["ss", "-tnoi", "state", "established", "dport", &format!("= :{port}")]);
    assert!(ss.contains(&format!(":{port}")), "the agent's connection to the server:\n{ss}");
    assert!(!ss.split_whitespace().any(|w| w == "ts"), "no TCP timestamps on the agent's connection:\n{ss}");

    // A command through the containerised agent.
    let c = wait_command(&mut api, env, "container.stop", &web).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(objects.status("web").as_deref(), Some("exited"));

    // A stack: with no compose tool in the image, `auto` uses the built-in
    // implementation (compose v2's container names); the compose variant's
    // bundled docker-compose (v1) names it `<project>_web_1`.
    let stack_name = objects.name("stack");
    // Its configuration file, mounted by relative path: the agent writes it
    // in its data volume, and the engine finds it where that volume is on
    // the host.
    let compose = "services:\n  web:\n    image: ${IMAGE}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'exit 0' \
                   TERM; while :; do /bin/busybox sleep 1; done\"]\n    volumes:\n      - ./conf/app.conf:/etc/app.conf:ro\n";
    let body = json!({
        "name": stack_name,
        "compose": compose,
        "env": {"IMAGE": objects.image},
        "files": {"conf/app.conf": "shipped=yes\n"},
        "targets": {"environments": [env]},
    });
    let stack = api.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    let deadline = Deadline::new(WAIT);
    loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let status = s["environments"][0]["status"].as_str().unwrap_or_default().to_owned();
        assert_ne!(status, "failed", "the agent failed the stack: {s}\n{}", logs());
        if status == "running" {
            break;
        }
        deadline.tick(format_args!("stack {stack} to run: {s}")).await;
    }
    let stack_web = match compose_impl {
        Compose::BuiltIn => format!("{stack_name}-web-1"),
        Compose::Bundled => format!("{stack_name}_web_1"),
    };
    assert_eq!(docker(&["exec", &stack_web, "/bin/busybox", "cat", "/etc/app.conf"]), "shipped=yes");
    match compose_impl {
        Compose::BuiltIn => {
            assert_eq!(inspect(&format!("{stack_name}-web-1"), "{{.State.Status}}"), "running");
            assert!(logs().contains("built-in"), "the agent's log names the built-in implementation:\n{}", logs());
        }
        Compose::Bundled => {
            assert_eq!(inspect(&format!("{stack_name}_web_1"), "{{.State.Status}}"), "running");
            assert!(
                logs().contains("with the compose tool") && logs().contains("docker-compose"),
                "the agent's log names the bundled tool:\n{}",
                logs()
            );
        }
    }

    // Healthy, by the image's HEALTHCHECK (every 30 s, so the first check
    // comes 30 s after the start).
    let deadline = Deadline::new(WAIT);
    loop {
        let health = inspect(&agent, "{{json .State.Health}}");
        let h: Value = serde_json::from_str(&health).unwrap();
        if h["Status"] == "healthy" {
            let last = h["Log"].as_array().and_then(|l| l.last()).cloned().unwrap_or_default();
            assert_eq!(last["ExitCode"], 0, "{h}");
            let output = last["Output"].as_str().unwrap_or_default();
            assert!(
                output.starts_with("healthy: a successful poll within the last ")
                    && output.contains("3 × the 1 s ping interval"),
                "{output:?}"
            );
            println!("health: {}", output.trim());
            break;
        }
        assert_ne!(h["Status"], "unhealthy", "{h}\n{}", logs());
        deadline.tick(format_args!("{agent} to be healthy ({})", h["Status"])).await;
    }

    // What it costs in memory (VmRSS of the agent's process, read here).
    let polls = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    println!(
        "agent: uid {AGENT_UID}, VmRSS {} after {:.0} s ({} containers on this host), seq {}",
        proc_status(&pid, "VmRSS").unwrap_or_else(|| "unknown".into()),
        started.elapsed().as_secs_f64(),
        docker(&["ps", "-aq"]).lines().count(),
        polls["seq"],
    );
    assert!(!logs().contains(" ERROR "), "{}", logs());
    api.ok("DELETE", &format!("/api/stacks/{stack}"), None, 202).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
