//! Images the server holds: `POST /api/images` pulls an image from a real
//! registry (Debian's `docker-registry`, htpasswd auth, on 127.0.0.1) into
//! the server's blob store, with a registered registry's credentials.
//!
//! * without credentials the pull fails, saying why; with them it is held:
//!   its layers are in the data directory as the tars their `diff_id`s
//!   name, its config as the image id;
//! * a registry nobody answers at fails clearly too;
//! * `tern image push` uploads an image from the local engine: only the
//!   layers the server lacks, resuming (or starting again) an upload a
//!   link drop left; the server checks each layer against its diff_id and
//!   refuses a bad piece, a bad layer or a config naming a layer it lacks,
//!   keeping nothing of them; the image pushed reaches an agent as a
//!   transfer and is loaded under its id.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::images::{build, finished, image_id_of, noise};
use common::registry::Registry;
use common::{AgentProcess, Api, Deadline, Objects, Server, docker, tempdir, tern_cli, tern_ok as tern};
use serde_json::{Value, json};

async fn settled(api: &mut Api, id: u64) -> Value {
    let deadline = Deadline::new(Duration::from_secs(60));
    loop {
        let v = api.ok("GET", &format!("/api/images/{id}"), None, 200).await;
        if v["status"] != "pulling" {
            return v;
        }
        deadline.tick(format_args!("image {id}: {v}")).await;
    }
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pulls_a_private_image_with_its_registrys_credentials_and_keeps_its_layers() {
    let prefix = format!("tern-test-img-{}", std::process::id());
    let registry = Registry::start(&prefix);
    let reference = registry.push_private(&prefix, &format!("{prefix}/app"), "1");
    let dir = tempdir("tern-images");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();

    let v = api.ok("POST", "/api/images", Some(json!({"reference": reference})), 202).await;
    let id = v["id"].as_u64().unwrap();
    let v = settled(&mut api, id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("Not authorized"), "{v}");

    let body =
        json!({"name": "private", "url": registry.addr, "username": registry.user, "password": registry.password});
    api.ok("POST", "/api/registries", Some(body), 201).await;
    let again = api.ok("POST", "/api/images", Some(json!({"reference": reference})), 202).await;
    assert_eq!(again["id"], id, "the same image, pulled again");
    let v = settled(&mut api, id).await;
    assert_eq!(v["status"], "held", "{v}");
    let layers: Vec<String> = v["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    assert!(!layers.is_empty(), "{v}");
    let blobs = server.data.join("images/sha256");
    for l in &layers {
        let path = blobs.join(l.strip_prefix("sha256:").unwrap());
        assert_eq!(sha256_of(&path), *l, "the layer's tar is what its diff_id names");
    }
    let image_id = v["image_id"].as_str().unwrap();
    assert_eq!(sha256_of(&blobs.join(image_id.strip_prefix("sha256:").unwrap())), image_id);
    assert!(v["size"].as_u64().unwrap() > 0);
    let listed = api.ok("GET", "/api/images", None, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // The CLI: pull again and wait, then list.
    let out = tern(&server, &["image", "pull", &reference, "--wait"]);
    assert!(out.contains(&reference) && out.contains("held"), "{out}");
    let out = tern(&server, &["image", "list"]);
    assert!(out.contains(&reference) && out.contains(&image_id[7..19]), "{out}");

    // Nobody answers: a clear failure, nothing held.
    let v = api.ok("POST", "/api/images", Some(json!({"reference": "127.0.0.1:9/none/app:1"})), 202).await;
    let v = settled(&mut api, v["id"].as_u64().unwrap()).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("127.0.0.1:9"), "{v}");
    // Bad input changes nothing.
    api.ok("POST", "/api/images", Some(json!({"reference": "a b"})), 422).await;
    api.ok("POST", "/api/images", Some(json!({"reference": "UPPER/Case:1"})), 422).await;
    assert_eq!(api.ok("GET", "/api/images", None, 200).await.as_array().unwrap().len(), 2);
    api.ok("DELETE", &format!("/api/images/{id}"), None, 204).await;
    api.ok("DELETE", &format!("/api/images/{id}"), None, 404).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn inspect_layers(image: &str) -> Vec<String> {
    let out = docker(&["image", "inspect", "--format", "{{json .RootFS.Layers}}", image]);
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pushed_from_the_operators_engine_is_held_checked_and_delivered() {
    let prefix = format!("tern-test-push-{}", std::process::id());
    let objects = Objects::new(&prefix);
    let dir = tempdir("tern-push");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let seed = u64::from(std::process::id());
    // Named under the prefix, so the objects guard removes them.
    let (v1, v2) = (format!("{prefix}-app:1"), format!("{prefix}-app:2"));
    build(&dir, &objects.image, &noise(3 << 20, seed), &v1);
    build(&dir, &objects.image, &noise(3 << 20, seed + 1), &v2);

    // All of v1's layers travel; the server holds it under its id.
    let out = tern(&server, &["image", "push", &v1]);
    assert!(out.contains("2 layers: 2 uploaded as") && out.contains("0 already on the server"), "{out}");
    let held = api.ok("GET", "/api/images", None, 200).await;
    let one = &held[0];
    assert_eq!((one["reference"].as_str(), one["status"].as_str()), (Some(v1.as_str()), Some("held")), "{held}");
    assert_eq!(one["image_id"].as_str(), image_id_of(&v1).as_deref());
    let layers: Vec<String> =
        one["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    assert_eq!(layers, inspect_layers(&v1));
    let blobs = server.data.join("images/sha256");
    for l in &layers {
        assert_eq!(sha256_of(&blobs.join(l.strip_prefix("sha256:").unwrap())), *l);
    }

    // v2 shares the base: one layer travels. A piece of garbage left by an
    // upload cut short is found, discarded when it does not check out, and
    // the layer sent again.
    let app2 = inspect_layers(&v2)[1].clone();
    let path = format!("/api/images/blobs/{app2}?offset=0");
    let (code, v) = api.raw("PATCH", &path, b"not a zstd stream".to_vec()).await;
    assert_eq!((code, v["have"].as_u64()), (200, Some(17)), "{v}");
    let out = tern(&server, &["image", "push", &v2, "--as", &format!("{prefix}/app:two")]);
    assert!(out.contains("2 layers: 1 uploaded as") && out.contains("1 already on the server"), "{out}");
    assert!(!server.data.join("images/uploads").join(format!("{}.zst", &app2[7..])).exists());

    // Bad input changes nothing.
    let missing = json!({"digests": ["sha256:".to_owned() + &"0".repeat(64)]});
    let m = api.ok("POST", "/api/images/blobs/missing", Some(missing), 200).await;
    assert_eq!(m["missing"][0]["have"], 0, "{m}");
    api.ok("POST", "/api/images/blobs/missing", Some(json!({"digests": ["sha256:../../etc"]})), 422).await;
    let zero = format!("sha256:{}", "0".repeat(64));
    let (code, _) = api.raw("PATCH", &format!("/api/images/blobs/{zero}?offset=5"), b"x".to_vec()).await;
    assert_eq!(code, 409, "an offset past what the server has");
    let (code, _) = api.raw("PATCH", &format!("/api/images/blobs/{zero}"), b"x".to_vec()).await;
    assert_eq!(code, 400, "no offset");
    let (code, _) = api.raw("PATCH", &format!("/api/images/blobs/{zero}?offset=0"), vec![0; (2 << 20) + 1]).await;
    assert_eq!(code, 413, "a piece too large");
    let (code, _) = api.raw("PATCH", &format!("/api/images/blobs/{zero}?offset=0"), b"junk".to_vec()).await;
    assert_eq!(code, 200);
    let v = api.ok("POST", &format!("/api/images/blobs/{zero}/done"), Some(json!({"size": 4})), 422).await;
    assert!(v["error"].as_str().unwrap().contains("discarded"), "{v}");
    assert!(!blobs.join("0".repeat(64)).exists());
    let config = json!({"rootfs": {"type": "layers", "diff_ids": [zero]}}).to_string();
    let v = api.ok("POST", "/api/images/push", Some(json!({"reference": "x/y:1", "config": config})), 422).await;
    assert!(v["error"].as_str().unwrap().contains("upload it first"), "{v}");
    api.ok("POST", "/api/images/push", Some(json!({"reference": "x/y:1", "config": "{"})), 422).await;
    api.ok("POST", "/api/images/push", Some(json!({"reference": "a b", "config": "{}"})), 422).await;
    assert_eq!(api.ok("GET", "/api/images", None, 200).await.as_array().unwrap().len(), 2);
    let e = tern_cli(&server, &["image", "push", &format!("{prefix}/none:1")]).unwrap_err();
    assert!(e.contains("docker image save"), "{e}");

    // Delivered to an agent whose host lacks it: rebuilt and loaded.
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "push", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let data = dir.join("agent");
    let key = created["edge_key"].as_str().unwrap().to_owned();
    let mut agent =
        AgentProcess::start(&[("EDGE_KEY", &key), ("DATA_PATH", data.to_str().unwrap())], &dir.join("agent.log"));
    let v1_id = image_id_of(&v1).unwrap();
    docker(&["rmi", &v1]);
    let id = held[0]["id"].as_u64().unwrap();
    let command = common::images::deliver(&mut api, id, env).await;
    let c = finished(&mut api, command, Duration::from_secs(120)).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(image_id_of(&v1), Some(v1_id));
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
