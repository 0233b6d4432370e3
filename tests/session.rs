//! The held session (issue #16), with the real `tern server` and `tern
//! agent` binaries and the machine's Docker engine:
//!
//! * a command reaches the agent as soon as it is queued, though its
//!   command interval is an hour: the held poll is answered with it;
//! * the keepalive period grows while holds survive, and the server shows
//!   the mode and the period;
//! * an idle session costs its budget (`budgets.toml`, `[session]`) per
//!   keepalive, in TLS bytes both ways as the server meters them;
//! * `EDGE_SESSION=off` polls; the default holds a session (the
//!   replicas test starts its agent without EDGE_SESSION).

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::{Duration, Instant};

use common::{AgentProcess, Api, Deadline, Objects, Server, tempdir, wait_command};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn environment(api: &mut Api, env: u64) -> Value {
    api.ok("GET", &format!("/api/environments/{env}"), None, 200).await
}

/// An environment whose agent would fetch commands once an hour if it
/// polled.
async fn hourly(api: &mut Api, server: &Server, name: &str) -> (u64, String) {
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(
                json!({"name": name, "url": server.url(), "intervals": {"ping": 3600, "snapshot": 1, "command": 3600}}),
            ),
            201,
        )
        .await;
    (created["id"].as_u64().unwrap(), created["edge_key"].as_str().unwrap().to_owned())
}

async fn wait_mode(api: &mut Api, env: u64, mode: &str) -> Value {
    let deadline = Deadline::new(WAIT);
    loop {
        let e = environment(api, env).await;
        if e["mode"] == mode && e["status"] == "online" {
            return e;
        }
        deadline.tick(format_args!("environment {env} to be online in mode {mode} ({e})")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reaches_a_held_session_at_once_and_the_keepalive_grows() {
    let objects = Objects::new(&format!("tern-test-session-{}", std::process::id()));
    let dir = tempdir("tern-session");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, key) = hourly(&mut api, &server, "held").await;
    let data = dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    let agent = AgentProcess::start(
        &[
            ("EDGE_KEY", key.as_str()),
            ("DATA_PATH", data_s.as_str()),
            ("EDGE_SESSION", "on"),
            ("EDGE_SESSION_KEEPALIVE", "1"),
        ],
        &dir.join("agent.log"),
    );
    let e = wait_mode(&mut api, env, "session").await;
    assert!(e["keepalive_s"].as_u64().unwrap() >= 1, "{e}");

    // Holds of 1, 2, 4 s survive on loopback: the period doubles.
    let deadline = Deadline::new(WAIT);
    loop {
        let e = environment(&mut api, env).await;
        if e["keepalive_s"].as_u64().unwrap_or(0) >= 8 {
            assert_eq!(e["status"], "online", "{e}");
            break;
        }
        deadline.tick(format_args!("the keepalive to grow ({e}); agent log:\n{}", agent.log())).await;
    }
    let learned: Value = serde_json::from_slice(&std::fs::read(data.join("keepalive.json")).unwrap()).unwrap();
    assert!(learned["good"].as_u64().unwrap() >= 4, "kept in DATA_PATH: {learned}");
    let health: Value = serde_json::from_slice(&std::fs::read(data.join("health")).unwrap()).unwrap();
    assert!(health["mode"].as_str().unwrap().starts_with("session, keepalive"), "{health}");

    // A command, with the command interval at an hour: pushed in the held
    // poll's reply.
    let web = objects.name("web");
    objects.run_sleeper("web");
    let deadline = Deadline::new(WAIT);
    loop {
        let state = api.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
        if state["containers"].as_array().unwrap().iter().any(|c| c["name"] == web.as_str()) {
            break;
        }
        deadline.tick("the container in the stored state").await;
    }
    for action in ["container.pause", "container.unpause"] {
        let started = Instant::now();
        let queued = api
            .ok(
                "POST",
                &format!("/api/environments/{env}/commands"),
                Some(json!({"action": action, "target": web})),
                201,
            )
            .await;
        let c = wait_command(&mut api, queued["id"].as_u64().unwrap(), WAIT).await;
        let took = started.elapsed();
        assert_eq!(c["status"], "ok", "{c}");
        // Queued to result: the push, the command, and the result's short
        // delay (2 s, so the state change rides with it). Polling would
        // have waited up to the hour.
        assert!(took < Duration::from_secs(10), "{action} took {took:?}: {c}");
        let delivered = c["delivered_at"].as_i64().unwrap() - c["created_at"].as_i64().unwrap();
        assert!(delivered <= 2, "{action} delivered {delivered} s after it was queued: {c}");
    }
    drop(agent);
    common::docker_quiet(&["rm", "-f", &web]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_session_off_polls() {
    let dir = tempdir("tern-session-off");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "polls", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let (env, key) = (created["id"].as_u64().unwrap(), created["edge_key"].as_str().unwrap().to_owned());
    let data = dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    let _agent = AgentProcess::start(
        &[("EDGE_KEY", key.as_str()), ("DATA_PATH", data_s.as_str()), ("EDGE_SESSION", "off")],
        &dir.join("agent.log"),
    );
    let e = wait_mode(&mut api, env, "polling").await;
    assert!(e["keepalive_s"].is_null(), "{e}");
    assert!(e["mode_note"].is_null(), "polling as configured: {e}");
}

/// TLS bytes (both ways) and polls the server metered for `env`.
async fn metered(api: &mut Api, env: u64) -> (u64, u64) {
    let u = api.ok("GET", &format!("/api/environments/{env}/usage?days=1"), None, 200).await;
    let t = &u["total"];
    (t["tls_up"].as_u64().unwrap() + t["tls_down"].as_u64().unwrap(), t["polls"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_costs_its_budget_per_keepalive() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/budgets.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let budget = doc["session"]["idle_keepalive_tls"].as_integer().expect("budgets.toml: session.idle_keepalive_tls");
    let dir = tempdir("tern-session-budget");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    // The ping interval caps the keepalive: 2 s, so the cycles come fast.
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(
                // No snapshot after first contact: other tests change the same engine.
                json!({"name": "idle", "url": server.url(), "intervals": {"ping": 2, "snapshot": 3600, "command": 3600}}),
            ),
            201,
        )
        .await;
    let (env, key) = (created["id"].as_u64().unwrap(), created["edge_key"].as_str().unwrap().to_owned());
    let data = dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    let agent = AgentProcess::start(
        &[
            ("EDGE_KEY", key.as_str()),
            ("DATA_PATH", data_s.as_str()),
            ("EDGE_SESSION", "on"),
            ("EDGE_SESSION_KEEPALIVE", "2"),
        ],
        &dir.join("agent.log"),
    );
    wait_mode(&mut api, env, "session").await;
    // Past first contact and the first hold.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (bytes0, polls0) = metered(&mut api, env).await;
    let deadline = Deadline::new(WAIT);
    let (bytes1, polls1) = loop {
        let (b, p) = metered(&mut api, env).await;
        if p >= polls0 + 5 {
            break (b, p);
        }
        deadline.tick(format_args!("5 keepalives ({p} polls, from {polls0}); agent log:\n{}", agent.log())).await;
    };
    // Each poll is a keepalive: the held poll up and its reply down (the
    // reply's bytes are metered when the next poll arrives, so whole cycles
    // are counted from one poll's arrival to another's).
    let per = (bytes1 - bytes0) / (polls1 - polls0);
    println!("idle session: {per} TLS bytes per keepalive (budget {budget})");
    assert!(per as f64 <= budget as f64 * 1.02, "{per} TLS bytes per keepalive, budget {budget} (+2 %)");
    assert!(per > 0);
}

/// A command queued on one replica reaches a session held by another:
/// PostgreSQL's `NOTIFY tern_wake`, heard by every replica's `LISTEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_on_one_replica_reaches_a_session_held_by_another() {
    let Some(admin) = std::env::var("TERN_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: TERN_TEST_POSTGRES is not set (CI's PostgreSQL pass sets it)");
        return;
    };
    let dir = tempdir("tern-session-replicas");
    let url = tern::server::store::postgres::PgPool::ensure_database(
        &admin,
        &format!("tern_session_replicas_{}", std::process::id()),
    )
    .unwrap();
    let db = [("TERN_DATABASE_URL", url.as_str())];
    let (data1, data2) = (dir.join("r1"), dir.join("r2"));
    let r1 = Server::start_with(&data1, "127.0.0.1:0", &db);
    std::fs::create_dir_all(&data2).unwrap();
    for f in ["cert.pem", "key.pem", "secret.key", "admin-token"] {
        std::fs::copy(data1.join(f), data2.join(f)).unwrap();
    }
    let r2 = Server::start_with(&data2, "127.0.0.1:0", &db);
    let mut api1 = r1.api();
    let mut api2 = r2.api();
    // The agent holds its session on replica 1.
    let (env, key) = hourly(&mut api1, &r1, "held-on-1").await;
    let data = dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    // No EDGE_SESSION: a session is the default.
    let _agent =
        AgentProcess::start(&[("EDGE_KEY", key.as_str()), ("DATA_PATH", data_s.as_str())], &dir.join("agent.log"));
    wait_mode(&mut api1, env, "session").await;
    let objects = Objects::new(&format!("tern-test-session-rep-{}", std::process::id()));
    let web = objects.name("web");
    objects.run_sleeper("web");
    let deadline = Deadline::new(WAIT);
    loop {
        let state = api2.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
        if state["containers"].as_array().unwrap().iter().any(|c| c["name"] == web.as_str()) {
            break;
        }
        deadline.tick("the container in the stored state").await;
    }
    // Queued on replica 2.
    let started = Instant::now();
    let queued = api2
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": "container.pause", "target": web})),
            201,
        )
        .await;
    let c = wait_command(&mut api2, queued["id"].as_u64().unwrap(), WAIT).await;
    assert_eq!(c["status"], "ok", "{c}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?} with the command interval at an hour: {c}");
    let delivered = c["delivered_at"].as_i64().unwrap() - c["created_at"].as_i64().unwrap();
    assert!(delivered <= 2, "delivered {delivered} s after it was queued: {c}");
    common::docker_quiet(&["rm", "-f", &web]);
}
