//! Images for the transfer tests: deterministic bytes, images built with
//! the classic builder from a local base, held by a server, and the
//! commands that deliver them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Api, Deadline};

/// Deterministic bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
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
pub fn build(dir: &Path, base: &str, blob: &[u8], tag: &str) {
    let ctx = dir.join(tag.replace([':', '/'], "-"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("blob"), blob).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {base}\nCOPY blob /app/blob\n")).unwrap();
    let out =
        Command::new("docker").args(["build", "-q", "-t", tag]).arg(&ctx).env("DOCKER_BUILDKIT", "0").output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

pub async fn held_image(api: &mut Api, reference: &str) -> Value {
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

pub async fn finished(api: &mut Api, command: u64, limit: Duration) -> Value {
    let deadline = Deadline::new(limit);
    loop {
        let c = api.ok("GET", &format!("/api/commands/{command}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed" | "rejected" | "cancelled")) {
            return c;
        }
        deadline.tick(format_args!("command {command}: {c}")).await;
    }
}

pub fn image_id_of(reference: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Bytes that compress about as a program's do (2 to 3 times): words of a
/// shared dictionary (the same in every call, as code shares its idioms),
/// among runs of noise. The same for the same seed, on every machine.
pub fn realistic(len: usize, seed: u64) -> Vec<u8> {
    realistic_with(len, seed, 42)
}

/// [`realistic`] with a dictionary of its own (`dictionary` seeds it):
/// bytes that share nothing with those of another dictionary, as a new
/// base image shares little with the one it replaces.
pub fn realistic_with(len: usize, seed: u64, dictionary: u64) -> Vec<u8> {
    let words: Vec<Vec<u8>> = {
        let pool = noise(2048 * 24, dictionary);
        (0..2048).map(|i| pool[i * 24..i * 24 + 4 + i % 20].to_vec()).collect()
    };
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        let r = next();
        if r % 10 < 7 {
            out.extend_from_slice(&words[(r >> 8) as usize % words.len()]);
        } else {
            let n = 1 + (r >> 8) as usize % 16;
            out.extend((0..n).map(|i| (r >> (16 + i % 6 * 8)) as u8));
        }
    }
    out.truncate(len);
    out
}

/// Builds the prepared context `ctx` (a Dockerfile and its files, every
/// mtime set to one fixed time first, so equal files make equal layers) as
/// `tag`, with the classic builder.
pub fn build_context(ctx: &Path, tag: &str) {
    let touched = Command::new("find")
        .arg(ctx)
        .args(["-exec", "touch", "-h", "-d", "2026-01-01 00:00:00", "{}", "+"])
        .status()
        .unwrap();
    assert!(touched.success());
    let out =
        Command::new("docker").args(["build", "-q", "-t", tag]).arg(ctx).env("DOCKER_BUILDKIT", "0").output().unwrap();
    assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Queues an image's delivery to one environment; returns the command.
pub async fn deliver(api: &mut Api, image: u64, env: u64) -> u64 {
    let path = format!("/api/images/{image}/deliver");
    let queued = api.ok("POST", &path, Some(json!({ "environments": [env] })), 202).await;
    queued[0]["command"].as_u64().unwrap()
}
