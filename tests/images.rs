//! Images the server holds: `POST /api/images` pulls an image from a real
//! registry (Debian's `docker-registry`, htpasswd auth, on 127.0.0.1) into
//! the server's blob store, with a registered registry's credentials.
//!
//! * without credentials the pull fails, saying why; with them it is held:
//!   its layers are in the data directory as the tars their `diff_id`s
//!   name, its config as the image id;
//! * a registry nobody answers at fails clearly too.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::registry::Registry;
use common::{Api, Deadline, Server, tempdir, tern_ok as tern};
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
