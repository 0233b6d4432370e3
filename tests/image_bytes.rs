//! The bytes to move an image from version 1 to version 2 (issue #14's
//! benchmark), tern against `docker pull` from the same registry, side by
//! side in one run, both counted as TCP payload through a relay on
//! 127.0.0.1 (HTTP for the registry, which here is plain HTTP; TLS and
//! HTTP for tern, whose figure also holds every poll of the agent while the
//! transfer runs: the less flattering count).
//!
//! The host is the local engine with version 1 (built here, pushed to a
//! real `docker-registry` with htpasswd auth, held by a real server), and
//! without version 2. Cases, on deterministic bytes that compress about as
//! programs do:
//! * (a) one 4 KiB file changed in a 50 MiB layer;
//! * (b) a 5 MiB application layer rebuilt with small changes (40 edits
//!   and an insertion that shifts everything after it);
//! * (c) a new 20 MiB base layer, under an unchanged application layer;
//! * and (c) again at a rate cap, cut five times at spread points;
//! * (d) the agent updated to a build with a one-line change: in CI, where
//!   `.ci/run` builds the agent twice (the second time with a build note,
//!   `TERN_AGENT_UPDATE` names the two binaries), the payload that moves
//!   the agent image's binary layer from one to the other, against the
//!   image's size (target: ≤ 1/20). Outside CI without them it is skipped.
//!
//! Targets (the issue's), on the count with polls: (a) ≤ 1/100 of `docker
//! pull`, (b) ≤ 1/10, (c) no worse, five cuts ≤ 1.05× the uninterrupted
//! transfer. Budgets in `budgets.toml` (`[images]`) hold the transfer
//! connection's own bytes (the polls' share moves with timing), within
//! 2 %. The table goes
//! to stderr (`cargo nextest run --test image_bytes --no-capture`).

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::images::{build_context, deliver, finished, held_image, image_id_of, noise, realistic, realistic_with};
use common::proxy::Relay;
use common::registry::Registry;
use common::{AgentProcess, Deadline, Objects, Server, docker, tempdir};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The two contexts of a case, `<case>-1` and `<case>-2`, under `dir`.
fn contexts(dir: &Path, case: &str, base: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (c1, c2) = (dir.join(format!("{case}-1")), dir.join(format!("{case}-2")));
    match case {
        "a" => {
            for c in [&c1, &c2] {
                for i in 0..50 {
                    write(&c.join(format!("big/lib{i:02}.so")), &realistic(MIB, 100 + i));
                }
                write(&c.join("Dockerfile"), format!("FROM {base}\nCOPY big/ /opt/big/\n").as_bytes());
            }
            write(&c1.join("big/app.conf"), &noise(4096, 1));
            write(&c2.join("big/app.conf"), &noise(4096, 2));
        }
        "b" => {
            let v1 = realistic(5 * MIB, 7);
            let mut v2 = v1.clone();
            for k in 0..40u64 {
                let at = (k as usize * 131_071 + 4_099) % (v2.len() - 16);
                v2[at..at + 16].copy_from_slice(&noise(16, 1000 + k));
            }
            let insert = noise(200, 2000);
            v2.splice(MIB..MIB, insert);
            for (c, bytes) in [(&c1, &v1), (&c2, &v2)] {
                write(&c.join("app.bin"), bytes);
                write(&c.join("Dockerfile"), format!("FROM {base}\nCOPY app.bin /app/app.bin\n").as_bytes());
            }
        }
        "c" => {
            // Another dictionary: the new base shares nothing with the old.
            for (c, seed, dictionary) in [(&c1, 200, 42), (&c2, 300, 43)] {
                for i in 0..20 {
                    write(&c.join(format!("base/part{i:02}")), &realistic_with(MIB, seed + i, dictionary));
                }
                write(&c.join("app.bin"), &realistic(MIB, 8));
                let dockerfile = format!("FROM {base}\nCOPY base/ /opt/base/\nCOPY app.bin /app/app.bin\n");
                write(&c.join("Dockerfile"), dockerfile.as_bytes());
            }
        }
        _ => unreachable!(),
    }
    (c1, c2)
}

/// The registry's layers of a reference: (digest, compressed size).
fn layers(registry: &Registry, reference: &str) -> Vec<(String, u64)> {
    let out = registry.client(&["manifest", "inspect", "--insecure", reference], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let layers = v["layers"].as_array().unwrap().iter();
    layers.map(|l| (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap())).collect()
}

/// The transfer connection's bytes, both ways, from a command's output.
fn carried(output: &str) -> u64 {
    let figure = |unit: &str| -> u64 {
        let before = output.split(unit).next().unwrap_or_default();
        before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{unit} in {output:?}"))
    };
    figure(" B up") + figure(" B down")
}

struct Case {
    pull: u64,
    /// The whole link while the transfer ran, polls included.
    tern: u64,
    /// The transfer's own connection (the command's output says it).
    transfer: u64,
    /// What `docker pull` had to fetch: the compressed layers version 2 has
    /// and version 1 does not.
    new_layers: u64,
    output: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_image_to_its_next_version_costs_a_fraction_of_docker_pull() {
    let prefix = format!("tern-test-imgbytes-{}", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir("tern-image-bytes");
    let registry = Registry::start(&prefix);
    // docker pull through one relay, the agent's link through another.
    let pull_relay = Relay::start(&registry.addr).await;
    registry.client(&["login", &pull_relay.addr, "-u", &registry.user, "--password-stdin"], Some(&registry.password));
    let mut server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let link = Relay::start(&server.addr()).await;
    let mut api = server.api();
    let body =
        json!({"name": "private", "url": registry.addr, "username": registry.user, "password": registry.password});
    api.ok("POST", "/api/registries", Some(body), 201).await;
    let intervals = json!({"ping": 60, "snapshot": 60, "command": 1});
    let url = format!("https://{}", link.addr);
    let created = api
        .ok("POST", "/api/environments", Some(json!({"name": "bench", "url": url, "intervals": intervals})), 201)
        .await;
    let env = created["id"].as_u64().unwrap();
    let agent_data = dir.join("agent");
    let vars = [("EDGE_KEY", created["edge_key"].as_str().unwrap()), ("DATA_PATH", agent_data.to_str().unwrap())];
    let mut agent = AgentProcess::start(&vars, &dir.join("agent.log"));

    let mut cases: BTreeMap<&str, Case> = BTreeMap::new();
    let mut held_c2 = Value::Null;
    for case in ["a", "b", "c"] {
        let (c1, c2) = contexts(&dir, case, &objects.image);
        let (local1, local2) = (format!("{prefix}-{case}:1"), format!("{prefix}-{case}:2"));
        build_context(&c1, &local1);
        build_context(&c2, &local2);
        let repo = format!("{prefix}/{case}");
        let (ref1, ref2) = (registry.push(&local1, &repo, "1"), registry.push(&local2, &repo, "2"));
        held_image(&mut api, &ref1).await;
        let held2 = held_image(&mut api, &ref2).await;
        let (layers1, layers2) = (layers(&registry, &ref1), layers(&registry, &ref2));
        let new_layers: u64 = layers2.iter().filter(|l| !layers1.contains(l)).map(|(_, s)| s).sum();
        docker(&["rmi", &ref2, &local2]);
        assert!(image_id_of(&ref2).is_none());

        // docker pull, through its relay.
        let pulled = format!("{}/{repo}:2", pull_relay.addr);
        let before = pull_relay.total();
        registry.client(&["pull", &pulled], None);
        let pull = pull_relay.total() - before;
        docker(&["rmi", &pulled]);
        assert!(
            pull < new_layers + (64 << 10),
            "case {case}: docker pull moved {pull} B for {new_layers} B of new layers: it fetched what it had"
        );

        // tern: the whole link while the transfer runs, polls included.
        let before = link.total();
        let command = deliver(&mut api, held2["id"].as_u64().unwrap(), env).await;
        let c = finished(&mut api, command, Duration::from_secs(300)).await;
        assert_eq!(c["status"], "ok", "case {case}: {c}\n{}", agent.log());
        let tern = link.total() - before;
        assert_eq!(image_id_of(&ref2).as_deref(), held2["image_id"].as_str(), "case {case}");
        let output = c["output"].as_str().unwrap_or_default().to_owned();
        let transfer = carried(&output);
        cases.insert(case, Case { pull, tern, transfer, new_layers, output });
        if case == "c" {
            held_c2 = held2;
            docker(&["rmi", &ref2]);
        }
    }

    // (c) again, at 8 Mbit/s, the link cut five times at spread points.
    let limits = format!("/api/environments/{env}/transfer-limits");
    api.ok("PUT", &limits, Some(json!({"rate_kbit": 8000})), 200).await;
    let uninterrupted = cases["c"].tern;
    let before = link.total();
    let command = deliver(&mut api, held_c2["id"].as_u64().unwrap(), env).await;
    let mut rng = fastrand::Rng::with_seed(14);
    let mut cuts = 0;
    let deadline = Deadline::new(Duration::from_secs(300));
    let c = loop {
        let at = before + uninterrupted * (cuts + 1) / 6;
        let jitter = rng.u64(..uninterrupted / 12);
        if cuts < 5 && link.total() >= at + jitter {
            link.cut();
            cuts += 1;
        }
        let c = api.ok("GET", &format!("/api/commands/{command}"), None, 200).await;
        if matches!(c["status"].as_str(), Some("ok" | "failed")) {
            break c;
        }
        deadline.tick(format_args!("the cut transfer: {c}")).await;
    };
    assert_eq!(c["status"], "ok", "{c}\n{}", agent.log());
    assert_eq!(cuts, 5, "the transfer ended before five cuts: {c}");
    let cut = link.total() - before;
    agent.stop();
    server.stop();

    // The table, the targets, the budgets.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/budgets.toml")).unwrap();
    // Only [images]: other sections hold other kinds of figures.
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let budget = |key: &str| doc["images"][key].as_integer().map(|v| v as u64).expect("an integer budget");
    eprintln!("| case | docker pull | its new layers | tern, polls included | the transfer alone | tern / pull |");
    eprintln!("|---|---:|---:|---:|---:|---:|");
    for (name, c) in &cases {
        eprintln!(
            "| ({name}) | {} | {} | {} | {} | 1/{:.0} |",
            c.pull,
            c.new_layers,
            c.tern,
            c.transfer,
            c.pull as f64 / c.tern as f64
        );
    }
    eprintln!("| (c) cut five times | | | {cut} | | {:.4}× uninterrupted |", cut as f64 / uninterrupted as f64);
    let mut failures = Vec::new();
    for (name, c) in &cases {
        let target = match *name {
            "a" => c.pull / 100,
            "b" => c.pull / 10,
            _ => c.pull,
        };
        if c.tern > target {
            failures.push(format!("({name}) {} B > target {target} B ({})", c.tern, c.output));
        }
        let b = budget(&format!("{name}_transfer"));
        if c.transfer * 100 > b * 102 {
            failures.push(format!("({name}) the transfer's {} B > budget {b} B + 2 %", c.transfer));
        }
    }
    if cut * 100 > uninterrupted * 105 {
        failures.push(format!("five cuts cost {cut} B, over 1.05 × {uninterrupted} B"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    drop(link);
    drop(pull_relay);
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_agent_update_with_a_one_line_change_costs_at_most_a_twentieth_of_its_image() {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let Some(dir) = std::env::var_os("TERN_AGENT_UPDATE") else {
        assert!(!ci, "CI: .ci/run builds the agent twice and sets TERN_AGENT_UPDATE");
        eprintln!("SKIPPED (d): TERN_AGENT_UPDATE names no two agent builds (see .ci/run)");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let (from, to) = (std::fs::read(dir.join("from")).unwrap(), std::fs::read(dir.join("to")).unwrap());
    assert_ne!(from, to, "the two builds differ");
    // The image's other layers are the same in both: only the binary's
    // layer travels, as a delta against the running agent's.
    let payload = tern::transfer::encode(&from, &to).unwrap();
    assert_eq!(tern::transfer::decode(&from, &payload, to.len() as u64).unwrap(), to);
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", tern::server::domain::deploy::AGENT_IMAGE])
        .output()
        .unwrap();
    let image: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the agent image (.ci/run builds it)");
    let differ = from.iter().zip(&to).filter(|(a, b)| a != b).count();
    eprintln!(
        "| (d) agent update, one line changed | image {image} B | binary {} B, {differ} bytes differ | payload {} B | 1/{} of the image |",
        to.len(),
        payload.len(),
        image / payload.len() as u64
    );
    assert!(payload.len() as u64 * 20 <= image, "(d): {} B of payload for a {image} B image", payload.len());
}
