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
//!   that does not exist, is refused and queues nothing.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::registry::Registry;
use common::{AgentProcess, Api, Deadline, Objects, Server, docker, tempdir};
use serde_json::{Value, json};

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `docker build` (the classic builder: no BuildKit needed) of `FROM base`
/// plus `blob` at `/app/blob`, tagged `tag`.
fn build(dir: &Path, base: &str, blob: &[u8], tag: &str) {
    let ctx = dir.join(tag.replace([':', '/'], "-"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("blob"), blob).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {base}\nCOPY blob /app/blob\n")).unwrap();
    let out =
        Command::new("docker").args(["build", "-q", "-t", tag]).arg(&ctx).env("DOCKER_BUILDKIT", "0").output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn held(api: &mut Api, reference: &str) -> Value {
    let v = api.ok("POST", "/api/images", Some(json!({ "reference": reference })), 202).await;
    let id = v["id"].as_u64().unwrap();
    let deadline = Deadline::new(Duration::from_secs(60));
    loop {
        let v = api.ok("GET", &format!("/api/images/{id}"), None, 200).await;
        if v["status"] == "held" {
            return v;
        }
        assert_ne!(v["status"], "failed", "{v}");
        deadline.tick(format_args!("image {reference}: {v}")).await;
    }
}

async fn finished(api: &mut Api, command: u64, limit: Duration) -> Value {
    let deadline = Deadline::new(limit);
    loop {
        let c = api.ok("GET", &format!("/api/commands/{command}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed" | "rejected" | "cancelled")) {
            return c;
        }
        deadline.tick(format_args!("command {command}: {c}")).await;
    }
}

fn payload_bytes(output: &str) -> u64 {
    output
        .split(" B of payload")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no payload figure in {output:?}"))
}

fn image_id_of(reference: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_travels_as_a_small_delta_resumes_after_a_restart_and_is_loaded() {
    let prefix = format!("tern-test-xfer-{}", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir("tern-transfers");
    let registry = Registry::start(&prefix);
    // Version 1: the base and 3 MiB of application; version 2: the same
    // with 4 KiB changed; version 3: another 3 MiB (sent whole, against
    // the closest layer, and cut by a restart).
    let v1 = noise(3 << 20, 1);
    let mut v2 = v1.clone();
    v2[1 << 20..(1 << 20) + 4096].copy_from_slice(&noise(4096, 2));
    let v3 = noise(3 << 20, 3);
    let (local1, local2, local3) = (format!("{prefix}-app:1"), format!("{prefix}-app:2"), format!("{prefix}-app:3"));
    build(&dir, &objects.image, &v1, &local1);
    build(&dir, &objects.image, &v2, &local2);
    build(&dir, &objects.image, &v3, &local3);
    let repo = format!("{prefix}/app");
    let (ref1, ref2, ref3) =
        (registry.push(&local1, &repo, "1"), registry.push(&local2, &repo, "2"), registry.push(&local3, &repo, "3"));

    let mut server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let body =
        json!({"name": "private", "url": registry.addr, "username": registry.user, "password": registry.password});
    api.ok("POST", "/api/registries", Some(body), 201).await;
    let _held1 = held(&mut api, &ref1).await;
    let held2 = held(&mut api, &ref2).await;
    let held3 = held(&mut api, &ref3).await;
    // The host has version 1 only.
    docker(&["rmi", &ref2, &local2, &ref3, &local3]);
    assert!(image_id_of(&ref2).is_none() && image_id_of(&ref1).is_some());

    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "xfer", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let key = created["edge_key"].as_str().unwrap().to_owned();
    let agent_data = dir.join("agent");
    let data = agent_data.to_str().unwrap().to_owned();
    let vars = [("EDGE_KEY", key.as_str()), ("DATA_PATH", data.as_str())];
    let mut agent = AgentProcess::start(&vars, &dir.join("agent.log"));

    // Bad deliveries queue nothing.
    let id2 = held2["id"].as_u64().unwrap();
    api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": [env, 999]})), 404).await;
    api.ok("POST", "/api/images/999/deliver", Some(json!({"environments": [env]})), 404).await;
    api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": []})), 422).await;
    let listed = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // Version 2: the base skipped, the application layer as a delta.
    let queued = api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": [env]})), 202).await;
    let command = queued[0]["command"].as_u64().unwrap();
    let c = finished(&mut api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    let output = c["output"].as_str().unwrap_or_default().to_owned();
    assert!(output.contains("1 already here, 1 fetched"), "{output}");
    let payload = payload_bytes(&output);
    assert!(payload < 32 << 10, "a 4 KiB change in 3 MiB cost {payload} B: {output}");
    assert_eq!(image_id_of(&ref2).as_deref(), held2["image_id"].as_str(), "loaded under its id, tagged");
    let sum = docker(&["run", "--rm", "--name", &objects.name("check"), &ref2, "/bin/busybox", "md5sum", "/app/blob"]);
    let want = format!("{:032x}", md5_of(&v2));
    assert!(sum.starts_with(&want), "{sum} vs {want}");

    // Again: already there, nothing fetched.
    let queued = api.ok("POST", &format!("/api/images/{id2}/deliver"), Some(json!({"environments": [env]})), 202).await;
    let c = finished(&mut api, queued[0]["command"].as_u64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert!(c["output"].as_str().unwrap().contains("already on this host"), "{c}");

    // Version 3, at 2 Mbit/s: the agent is killed mid-download, and
    // resumes after its restart from the chunks it kept.
    api.ok("PUT", &format!("/api/environments/{env}/transfer-limits"), Some(json!({"rate_kbit": 2000})), 200).await;
    let id3 = held3["id"].as_u64().unwrap();
    let queued = api.ok("POST", &format!("/api/images/{id3}/deliver"), Some(json!({"environments": [env]})), 202).await;
    let command = queued[0]["command"].as_u64().unwrap();
    let transfers = agent_data.join("transfers");
    let deadline = Deadline::new(Duration::from_secs(60));
    let part = loop {
        let part = std::fs::read_dir(&transfers)
            .ok()
            .and_then(|d| d.filter_map(Result::ok).find(|e| e.path().extension().is_some_and(|x| x == "part")));
        if let Some(p) = part.filter(|p| p.metadata().is_ok_and(|m| m.len() >= 1 << 20)) {
            break p.path();
        }
        deadline.tick("a third of version 3 on the agent's disk").await;
    };
    agent.stop();
    let kept = std::fs::metadata(&part).unwrap().len();
    let mut agent = AgentProcess::start(&vars, &dir.join("agent2.log"));
    let c = finished(&mut api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    let output = c["output"].as_str().unwrap().to_owned();
    let down: u64 = output.split(" B down").next().and_then(|s| s.rsplit(' ').next()).unwrap().parse().unwrap();
    let payload = payload_bytes(&output);
    assert!(
        down < payload - kept + (256 << 10),
        "after the restart the link carried {down} B of a {payload} B payload, {kept} B of which were kept: {output}"
    );
    assert_eq!(image_id_of(&ref3).as_deref(), held3["image_id"].as_str());
    assert!(!part.exists(), "work files go once the image is loaded");

    agent.stop();
    server.stop();
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

fn md5_of(bytes: &[u8]) -> u128 {
    let tmp = std::env::temp_dir().join(format!("tern-md5-{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    let out = Command::new("md5sum").arg(&tmp).output().unwrap();
    let _ = std::fs::remove_file(&tmp);
    u128::from_str_radix(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap(), 16).unwrap()
}
