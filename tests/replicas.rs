//! Two server replicas on one PostgreSQL database behind HAProxy (TCP
//! mode; each replica terminates TLS itself with the same certificate),
//! with real agents and the machine's Docker engine:
//!
//! * a TLS session made with one replica resumes on the other (the ticket
//!   keys are shared through the database); the bytes of a full and a
//!   resumed handshake are printed;
//! * agents spread over both replicas; one replica is killed (SIGKILL)
//!   while they poll every second, then started again. No command is lost
//!   or run twice (the engine's own event log counts each restart), every
//!   result is recorded once, and every agent converges.
//!
//! Needs PostgreSQL (`TERN_TEST_POSTGRES`) and HAProxy; CI's PostgreSQL
//! pass has both.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::haproxy::{Haproxy, PROXY_SOURCE, free_port};
use common::{AgentProcess, Api, Deadline, Objects, Server, tempdir, wait_command};
use serde_json::json;
use tern::agent::client::Client;
use tern::tls::Trust;

const WAIT: Duration = Duration::from_secs(90);
const AGENTS: usize = 4;

async fn converged(api: &mut Api, env: u64) {
    common::converged(api, env, WAIT).await;
}

async fn queue_restarts(api: &mut Api, envs: &[(u64, String)]) -> Vec<u64> {
    let mut ids = Vec::new();
    for (env, container) in envs {
        let c = api
            .ok(
                "POST",
                &format!("/api/environments/{env}/commands"),
                Some(json!({"action": "container.restart", "target": container})),
                201,
            )
            .await;
        ids.push(c["id"].as_u64().unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_haproxy_lose_no_command_when_one_is_killed() {
    let Some(admin) = std::env::var("TERN_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: TERN_TEST_POSTGRES is not set (CI's PostgreSQL pass sets it)");
        return;
    };
    let dir = tempdir("tern-replicas");
    let url = tern::server::store::postgres::PgPool::ensure_database(
        &admin,
        &format!("tern_replicas_{}", std::process::id()),
    )
    .unwrap();
    // HAProxy passes each client's address on (PROXY protocol v2).
    let db = [("TERN_DATABASE_URL", url.as_str()), ("TERN_PROXY_PROTOCOL", PROXY_SOURCE)];
    // Replica 1 makes the identity; replica 2 is given the same files (as
    // a shared volume or a copy would): certificate, key, server key.
    let (data1, data2) = (dir.join("r1"), dir.join("r2"));
    let r1 = Server::start_with(&data1, "127.0.0.1:0", &db);
    std::fs::create_dir_all(&data2).unwrap();
    for f in ["cert.pem", "key.pem", "secret.key", "admin-token"] {
        std::fs::copy(data1.join(f), data2.join(f)).unwrap();
    }
    let r2 = Server::start_with(&data2, "127.0.0.1:0", &db);
    assert_eq!(r1.fingerprint(), r2.fingerprint());
    let (addr1, addr2) = (r1.addr(), r2.addr());
    let front = free_port();
    let _haproxy = Haproxy::start(&dir, front, &[addr1.clone(), addr2.clone()], true);
    let front_url = format!("https://127.0.0.1:{front}");
    let token = std::fs::read_to_string(data1.join("admin-token")).unwrap().trim().to_owned();

    // A session made with one replica resumes on the other: HAProxy sends
    // each new connection to the next replica in turn.
    let mut client = Client::new(&front_url, Trust::Pinned(r1.fingerprint()), 1 << 20).unwrap();
    // A connection's handshake: its first request's bytes less those of
    // the same request again on it (the session ticket the server sends
    // after each handshake counts with the handshake).
    let mut handshakes = Vec::new();
    for _ in 0..4 {
        let request = async |client: &mut Client| {
            let before = client.wire.get();
            let (status, _) = client.api(hyper::Method::GET, "/api/environments", &token, None).await.unwrap();
            assert_eq!(status, 200);
            let after = client.wire.get();
            (after.0 - before.0) + (after.1 - before.1)
        };
        let first = request(&mut client).await;
        let again = request(&mut client).await;
        handshakes.push(first - again);
        client.close().await;
    }
    println!(
        "TLS handshake across replicas: full {} B, resumed {:?} B (connections {}, resumed {})",
        handshakes[0],
        &handshakes[1..],
        client.connections,
        client.resumed
    );
    assert_eq!((client.connections, client.resumed), (4, 3), "every later connection resumed, on either replica");
    assert!(handshakes[1..].iter().all(|s| *s < handshakes[0]), "a resumed handshake costs less: {handshakes:?}");

    // Agents, spread over both by HAProxy.
    let mut api = Api::new(&front_url, r1.fingerprint(), &token);
    let objects = Objects::new(&format!("tern-test-replicas-{}", std::process::id()));
    let mut envs = Vec::new();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let created = api
            .ok(
                "POST",
                "/api/environments",
                Some(json!({"name": format!("site-{i}"), "url": front_url,
                            "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
                201,
            )
            .await;
        let env = created["id"].as_u64().unwrap();
        objects.run_sleeper(&format!("web{i}"));
        let data = dir.join(format!("agent{i}"));
        let vars = [("EDGE_KEY", created["edge_key"].as_str().unwrap()), ("DATA_PATH", data.to_str().unwrap())];
        agents.push(AgentProcess::start(&vars, &dir.join(format!("agent{i}.log"))));
        envs.push((env, objects.name(&format!("web{i}"))));
    }
    for (env, _) in &envs {
        converged(&mut api, *env).await;
    }
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();

    // Commands in flight, then replica 1 dies mid-poll (the agents poll
    // every second) and comes back on its address.
    let mut commands = queue_restarts(&mut api, &envs).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r1 = r1;
    r1.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    commands.extend(queue_restarts(&mut api, &envs).await);
    let _r1 = Server::start_with(&data1, &addr1, &db);
    commands.extend(queue_restarts(&mut api, &envs).await);

    for id in &commands {
        let c = wait_command(&mut api, *id, WAIT).await;
        assert_eq!(c["status"], "ok", "{c}");
    }
    // Each container restarted exactly as often as it was asked: no
    // command lost, none run twice.
    for (env, container) in &envs {
        let list = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
        let ours: Vec<_> = list.as_array().unwrap().iter().filter(|c| c["action"] == "container.restart").collect();
        assert_eq!(ours.len(), 3, "{list}");
        assert!(ours.iter().all(|c| c["status"] == "ok" && c["finished_at"].is_i64()));
        let deadline = Deadline::new(WAIT);
        while common::engine_events(container, &since, "restart") < 3 {
            deadline.tick(format_args!("{container} restarted 3 times")).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(common::engine_events(container, &since, "restart"), 3, "{container}: each restart ran once");
        converged(&mut api, *env).await;
    }
    for mut a in agents {
        a.stop();
    }
    let _ = r2;
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}
