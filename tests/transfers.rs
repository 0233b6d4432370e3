//! Images reach the edge through tern as transfers (issue #14): the server
//! holds two versions of an image pulled from a real registry (Debian's
//! `docker-registry`, htpasswd auth, on 127.0.0.1); a real agent on the
//! real engine, which has version 1, is sent version 2.
//!
//! * the unchanged base layer is skipped, the application layer (3 MiB,
//!   4 KiB changed) travels as a delta of a few KB, and the image is loaded
//!   under its id and tagged, with the new file's bytes;
//! * an image the host already has costs no transfer;
//! * the agent killed mid-download resumes from its verified chunks after
//!   a restart: the link carries the payload about once, not twice;
//! * a delivery of an image the server does not hold, or to an environment
//!   that does not exist, is refused and queues nothing;
//! * a chunk that arrives wrong is refused and fetched again (four times,
//!   then the command fails), and a payload that does not rebuild its
//!   layer's digest is discarded: neither becomes a visible image;
//! * a stack naming an image the server holds gets it as a transfer before
//!   the stack is touched (pre-fetch, then swap: while a rate-capped
//!   fetch runs, the old container runs on), and a moving tag (`:latest`)
//!   pulled again into the server is fetched again on the next deploy.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::images::{build, finished, held_image, image_id_of, noise};
use common::registry::Registry;
use common::{AgentProcess, Api, ComposeProject, Deadline, Objects, Server, docker, tempdir, tern_cli, tern_ok};
use serde_json::{Value, json};

fn payload_bytes(output: &str) -> u64 {
    output
        .split(" B of payload")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no payload figure in {output:?}"))
}

/// Three versions of an image in a private registry and held by a server;
/// an environment whose agent runs on the local engine, which has version 1
/// only. Version 2 is version 1 with 4 KiB changed in its 3 MiB application
/// layer; version 3 has another 3 MiB there.
struct Lab {
    objects: Objects,
    dir: std::path::PathBuf,
    registry: Option<Registry>,
    server: Server,
    api: Api,
    env: u64,
    vars: Vec<(String, String)>,
    agent_data: std::path::PathBuf,
    /// The versions' references, held images and application bytes.
    refs: [String; 3],
    held: [Value; 3],
    blobs: [Vec<u8>; 3],
}

impl Lab {
    async fn new(name: &str) -> Self {
        let prefix = format!("tern-test-{name}-{}", std::process::id());
        let objects = Objects::new(&prefix);
        let dir = tempdir(&format!("tern-{name}"));
        let registry = Registry::start(&prefix);
        // Bytes of this test's own: tests running at once must not share
        // layers (the engine would hold one test's layers for the other).
        let seed = prefix.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let v1 = noise(3 << 20, seed);
        let mut v2 = v1.clone();
        v2[1 << 20..(1 << 20) + 4096].copy_from_slice(&noise(4096, seed + 1));
        let v3 = noise(3 << 20, seed + 2);
        let blobs = [v1, v2, v3];
        let repo = format!("{prefix}/app");
        let mut refs: [String; 3] = Default::default();
        for (i, blob) in blobs.iter().enumerate() {
            let local = format!("{prefix}-app:{}", i + 1);
            build(&dir, &objects.image, blob, &local);
            refs[i] = registry.push(&local, &repo, &(i + 1).to_string());
        }
        let server = Server::start(&dir.join("server"), "127.0.0.1:0");
        let mut api = server.api();
        let body =
            json!({"name": "private", "url": registry.addr, "username": registry.user, "password": registry.password});
        api.ok("POST", "/api/registries", Some(body), 201).await;
        let mut held: [Value; 3] = Default::default();
        for (i, r) in refs.iter().enumerate() {
            held[i] = held_image(&mut api, r).await;
        }
        // The host has version 1 only.
        docker(&["rmi", &refs[1], &format!("{prefix}-app:2"), &refs[2], &format!("{prefix}-app:3")]);
        assert!(image_id_of(&refs[1]).is_none() && image_id_of(&refs[0]).is_some());
        let intervals = json!({"ping": 1, "snapshot": 1, "command": 1});
        let created = api
            .ok(
                "POST",
                "/api/environments",
                Some(json!({"name": name, "url": server.url(), "intervals": intervals})),
                201,
            )
            .await;
        let env = created["id"].as_u64().unwrap();
        let agent_data = dir.join("agent");
        let vars = vec![
            ("EDGE_KEY".to_owned(), created["edge_key"].as_str().unwrap().to_owned()),
            ("DATA_PATH".to_owned(), agent_data.to_str().unwrap().to_owned()),
        ];
        Self { objects, dir, registry: Some(registry), server, api, env, vars, agent_data, refs, held, blobs }
    }

    fn agent(&self, log: &str) -> AgentProcess {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        AgentProcess::start(&vars, &self.dir.join(log))
    }

    fn image(&self, version: usize) -> u64 {
        self.held[version - 1]["id"].as_u64().unwrap()
    }

    fn image_id(&self, version: usize) -> Option<&str> {
        self.held[version - 1]["image_id"].as_str()
    }

    /// Delivers a version; returns its command.
    async fn deliver(&mut self, version: usize) -> u64 {
        let (image, env) = (self.image(version), self.env);
        common::images::deliver(&mut self.api, image, env).await
    }

    async fn rate(&mut self, kbit: u64) {
        let path = format!("/api/environments/{}/transfer-limits", self.env);
        self.api.ok("PUT", &path, Some(json!({"rate_kbit": kbit})), 200).await;
    }

    /// The agent's `.part` file once it holds `at_least` bytes.
    async fn part(&self, at_least: u64) -> std::path::PathBuf {
        let transfers = self.agent_data.join("transfers");
        let deadline = Deadline::new(Duration::from_secs(60));
        loop {
            let part = std::fs::read_dir(&transfers)
                .ok()
                .and_then(|d| d.filter_map(Result::ok).find(|e| e.path().extension().is_some_and(|x| x == "part")));
            if let Some(p) = part.filter(|p| p.metadata().is_ok_and(|m| m.len() >= at_least)) {
                return p.path();
            }
            deadline.tick(format_args!("{at_least} B of a transfer on the agent's disk")).await;
        }
    }

    /// The server's payload of `len` bytes or more (a whole 3 MiB layer), or
    /// the smallest (a delta).
    fn server_payload(&self, large: bool) -> std::path::PathBuf {
        let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(self.server.data.join("transfers"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "zst"))
            .map(|e| (e.metadata().unwrap().len(), e.path()))
            .collect();
        files.sort();
        let f = if large { files.last() } else { files.first() };
        f.unwrap().1.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.server.stop();
        drop(self.registry.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.objects;
    }
}

fn flip(path: &Path, at_end: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() - at_end as usize;
    bytes[i] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_travels_as_a_small_delta_resumes_after_a_restart_and_is_loaded() {
    let mut lab = Lab::new("xfer").await;
    let mut agent = lab.agent("agent.log");
    let env = lab.env;

    // Bad deliveries queue nothing.
    let id2 = lab.image(2);
    let api = &mut lab.api;
    api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": [env, 999]})), 404).await;
    api.ok("POST", "/api/images/999/deliver", Some(json!({"environments": [env]})), 404).await;
    api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": []})), 422).await;
    let listed = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // Version 2: the base skipped, the application layer as a delta.
    let command = lab.deliver(2).await;
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    let output = c["output"].as_str().unwrap_or_default().to_owned();
    assert!(output.contains("1 already here, 1 fetched"), "{output}");
    let payload = payload_bytes(&output);
    assert!(payload < 32 << 10, "a 4 KiB change in 3 MiB cost {payload} B: {output}");
    assert_eq!(image_id_of(&lab.refs[1]).as_deref(), lab.image_id(2), "loaded under its id, tagged");
    let check = lab.objects.name("check");
    let sum = docker(&["run", "--rm", "--name", &check, &lab.refs[1], "/bin/busybox", "md5sum", "/app/blob"]);
    let want = format!("{:032x}", md5_of(&lab.blobs[1]));
    assert!(sum.starts_with(&want), "{sum} vs {want}");

    // Again, by the CLI to a tag the environment has: already there,
    // nothing fetched. A group that does not exist queues nothing.
    lab.api.ok("PATCH", &format!("/api/environments/{env}"), Some(json!({"tags": ["fleet-a"]})), 200).await;
    let e = tern_cli(&lab.server, &["image", "deliver", &lab.refs[1], "--group", "nope"]).unwrap_err();
    assert!(e.contains("422"), "{e}");
    let out = tern_ok(&lab.server, &["image", "deliver", &lab.refs[1], "--tag", "fleet-a", "--wait"]);
    assert!(out.contains("already on this host"), "{out}");
    let listed = lab.api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Version 3, at 2 Mbit/s: the agent is killed mid-download, and
    // resumes after its restart from the chunks it kept.
    lab.rate(2000).await;
    let command = lab.deliver(3).await;
    let part = lab.part(1 << 20).await;
    agent.stop();
    let kept = std::fs::metadata(&part).unwrap().len();
    let mut agent = lab.agent("agent2.log");
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    let output = c["output"].as_str().unwrap().to_owned();
    let payload = payload_bytes(&output);
    let down = down_bytes(&output);
    assert!(
        down < payload - kept + (256 << 10),
        "after the restart the link carried {down} B of a {payload} B payload, {kept} B of which were kept: {output}"
    );
    assert_eq!(image_id_of(&lab.refs[2]).as_deref(), lab.image_id(3));
    assert!(!part.exists(), "work files go once the image is loaded");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_chunk_is_fetched_again_and_a_transfer_that_does_not_rebuild_is_never_loaded() {
    let mut lab = Lab::new("xfer-bad").await;
    let mut agent = lab.agent("agent.log");

    // A chunk that arrives wrong (the server's copy damaged after the plan
    // named its chunks): refused, fetched again, and after four tries the
    // command fails; nothing is loaded.
    lab.rate(4000).await;
    let command = lab.deliver(3).await;
    lab.part(256 << 10).await;
    let payload = lab.server_payload(true);
    flip(&payload, 10);
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "failed", "{c}");
    let error = c["error"].as_str().unwrap();
    assert!(error.contains("does not match its hash, 4 times"), "{error}");
    assert!(agent.log().contains("refused, fetching it again"), "{}", agent.log());
    assert!(image_id_of(&lab.refs[2]).is_none(), "nothing loaded");
    // Mended: asked again, it resumes (only the last chunk travels).
    flip(&payload, 10);
    let command = lab.deliver(3).await;
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    let down = down_bytes(c["output"].as_str().unwrap());
    assert!(down < 512 << 10, "resumed, {down} B down: {c}");
    assert_eq!(image_id_of(&lab.refs[2]).as_deref(), lab.image_id(3));

    // A payload whose chunks check out but which does not rebuild the
    // layer its diff_id names: discarded, reported, nothing loaded.
    lab.rate(0).await;
    let command = lab.deliver(2).await;
    assert_eq!(finished(&mut lab.api, command, Duration::from_secs(120)).await["status"], "ok");
    docker(&["rmi", &lab.refs[1]]);
    let delta = lab.server_payload(false);
    let len = std::fs::metadata(&delta).unwrap().len();
    flip(&delta, len / 2);
    let command = lab.deliver(2).await;
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "failed", "{c}");
    let error = c["error"].as_str().unwrap();
    assert!(error.contains("did not rebuild") && error.contains("nothing was loaded"), "{error}");
    assert!(image_id_of(&lab.refs[1]).is_none(), "nothing loaded");
    // The server builds it again once its copy is gone.
    std::fs::remove_file(&delta).unwrap();
    let command = lab.deliver(2).await;
    let c = finished(&mut lab.api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(image_id_of(&lab.refs[1]).as_deref(), lab.image_id(2));
    agent.stop();
}

fn down_bytes(output: &str) -> u64 {
    output.split(" B down").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap()
}

fn md5_of(bytes: &[u8]) -> u128 {
    let tmp = std::env::temp_dir().join(format!("tern-md5-{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    let out = Command::new("md5sum").arg(&tmp).output().unwrap();
    let _ = std::fs::remove_file(&tmp);
    u128::from_str_radix(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap(), 16).unwrap()
}

/// Points `tag` of the lab's repository at a version (pulled, tagged and
/// pushed, then gone from the host again); returns its reference.
fn point(lab: &Lab, version: usize, tag: &str) -> String {
    let registry = lab.registry.as_ref().unwrap();
    let from = &lab.refs[version - 1];
    let to = format!("{}:{tag}", from.rsplit_once(':').unwrap().0);
    let had = image_id_of(from).is_some();
    registry.client(&["pull", from], None);
    docker(&["tag", from, &to]);
    registry.client(&["push", &to], None);
    docker(&["rmi", &to]);
    if !had {
        docker(&["rmi", from]);
    }
    to
}

/// The stack's deployment on the lab's environment.
async fn deployment(lab: &mut Lab, stack: u64) -> Value {
    let s = lab.api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
    s["environments"].as_array().unwrap().iter().find(|d| d["environment"] == lab.env).cloned().unwrap_or(Value::Null)
}

async fn wait_deployment(lab: &mut Lab, stack: u64, version: u64, want: &str) -> Value {
    let deadline = Deadline::new(Duration::from_secs(120));
    loop {
        let d = deployment(lab, stack).await;
        assert_ne!(d["status"], "failed", "{d}");
        if d["version"] == version && d["status"] == want {
            return d;
        }
        deadline.tick(format_args!("stack {stack} v{version} {want}: {d}")).await;
    }
}

fn stack_container(project: &str) -> String {
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 1, "one container: {names:?}");
    names[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_gets_its_held_images_as_transfers_before_it_is_switched_and_a_moving_tag_is_fetched_again() {
    let mut lab = Lab::new("xfer-stack").await;
    let mut agent = lab.agent("agent.log");
    let project = format!("tern-test-xfer-stack-{}", std::process::id());
    let _project = ComposeProject(project.clone());

    // `:latest` is version 2; the server holds it.
    let latest = point(&lab, 2, "latest");
    let held = held_image(&mut lab.api, &latest).await;
    assert_eq!(held["image_id"].as_str(), lab.image_id(2));
    assert!(image_id_of(&latest).is_none() && image_id_of(&lab.refs[1]).is_none());

    let compose = "services:\n  app:\n    image: ${REF}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done\"]\n";
    let body =
        json!({"name": project, "compose": compose, "env": {"REF": latest}, "targets": {"environments": [lab.env]}});
    let s = lab.api.ok("POST", "/api/stacks", Some(body), 201).await;
    let stack = s["id"].as_u64().unwrap();
    let d = wait_deployment(&mut lab, stack, 1, "running").await;
    let container = stack_container(&project);
    assert_eq!(docker(&["inspect", "--format", "{{.Image}}", &container]).trim(), lab.image_id(2).unwrap());
    // It came as a transfer (a delta against version 1), not a pull.
    let c = lab.api.ok("GET", &format!("/api/commands/{}", d["command"]), None, 200).await;
    let output = c["output"].as_str().unwrap_or_default();
    assert!(output.contains("1 already here, 1 fetched"), "{c}");
    assert!(payload_bytes(output) < 16 << 10, "{c}");

    // `:latest` moves to version 3, pulled again into the server; a
    // redeploy fetches it (3 MiB at 2 Mbit/s: some 12 s), and all that
    // time the container of version 2 runs on, untouched.
    let latest3 = point(&lab, 3, "latest");
    assert_eq!(latest3, latest);
    let again = held_image(&mut lab.api, &latest).await;
    assert_eq!(again["image_id"].as_str(), lab.image_id(3), "the tag moved");
    lab.rate(2000).await;
    let update = json!({"env": {"REF": latest}});
    lab.api.ok("PUT", &format!("/api/stacks/{stack}"), Some(update), 200).await;
    wait_deployment(&mut lab, stack, 2, "fetching").await;
    lab.part(512 << 10).await;
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}} {{.Image}}", &container]).trim(),
        format!("true {}", lab.image_id(2).unwrap()),
        "the old container runs on while the new image travels"
    );
    let d = wait_deployment(&mut lab, stack, 2, "running").await;
    let container = stack_container(&project);
    assert_eq!(docker(&["inspect", "--format", "{{.Image}}", &container]).trim(), lab.image_id(3).unwrap());
    let c = lab.api.ok("GET", &format!("/api/commands/{}", d["command"]), None, 200).await;
    assert!(c["output"].as_str().unwrap_or_default().contains("1 fetched"), "{c}");
    lab.rate(0).await;
    agent.stop();
}
