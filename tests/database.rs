//! Moving a running installation's database: `tern server migrate-db`
//! (SQLite into PostgreSQL) and `tern server backup` / `restore`, with the
//! real server, a real agent and the machine's Docker engine. In both, the
//! agent is not redeployed: its environment, counter, state and the
//! command queued for it carry across, and its first poll afterwards is
//! an ordinary small one (no full state resent).
//!
//! The move to PostgreSQL needs a PostgreSQL server (`TERN_TEST_POSTGRES`,
//! as `scripts/postgres.sh start` prints; CI's PostgreSQL pass has one).
//! The backup test runs on whichever backend the suite runs on.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{AgentProcess, Api, Deadline, Objects, Server, poll_sizes, tempdir, wait_command};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn tern(args: &[&str], vars: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern")).args(args).envs(vars.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tern {args:?}: {text}");
    text
}

/// An environment with 1 s intervals and its agent running, synced with
/// a container of its own.
async fn enrolled(server: &Server, objects: &Objects, dir: &Path) -> (u64, Vec<(String, String)>, AgentProcess) {
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "moved", "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let vars = vec![
        ("EDGE_KEY".to_owned(), created["edge_key"].as_str().unwrap().to_owned()),
        ("DATA_PATH".to_owned(), dir.join("agent").to_str().unwrap().to_owned()),
    ];
    objects.run_sleeper("web");
    let agent = start_agent(&vars, dir);
    wait_stored(&mut api, env, &objects.name("web")).await;
    (env, vars, agent)
}

fn start_agent(vars: &[(String, String)], dir: &Path) -> AgentProcess {
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    AgentProcess::start(&refs, &dir.join("agent.log"))
}

async fn wait_stored(api: &mut Api, env: u64, name: &str) {
    let deadline = Deadline::new(WAIT);
    loop {
        let state = api.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
        let found = state["containers"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == name));
        if found {
            return;
        }
        deadline.tick(format_args!("{name} on the server")).await;
    }
}

/// Stops the agent and queues a stop of its container: the command the
/// move must carry.
async fn queue_while_away(server: &Server, env: u64, objects: &Objects, agent: &mut AgentProcess) -> u64 {
    assert!(agent.stop().is_some_and(|s| s.success()));
    let queued = server
        .api()
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": "container.stop", "target": objects.name("web")})),
            201,
        )
        .await;
    queued["id"].as_u64().unwrap()
}

/// After the move: the agent (started again on its own data, not
/// redeployed) is accepted, its first poll is small, and the queued
/// command runs once.
async fn carries_on(server: &Server, env: u64, command: u64, objects: &Objects, vars: &[(String, String)], dir: &Path) {
    let before = poll_sizes(&std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()).len();
    let full = poll_sizes(&std::fs::read_to_string(dir.join("agent.log")).unwrap())[0];
    let mut agent = start_agent(vars, dir);
    let mut api = server.api();
    let c = wait_command(&mut api, command, WAIT).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(objects.status("web").as_deref(), Some("exited"));
    let log = agent.log();
    let after = poll_sizes(&log)[before];
    println!("first contact {full} B; first poll after the move {after} B");
    // The server knew the agent's state after the move: it never asked for
    // all of it again. (Bytes alone cannot say: the agent watches the
    // whole engine, and tests running beside this one change it, so its
    // first poll may carry their containers' changes.)
    let polls: Vec<&str> = log.lines().filter(|l| l.contains(" poll ") || l.ends_with(" poll")).collect();
    assert!(polls[before..].iter().all(|l| l.contains("resync=")), "each poll logs resync: {:?}", &polls[before..]);
    assert!(
        polls[before..].iter().all(|l| !l.contains("resync=true")),
        "the server asked for the agent's whole state after the move: {:?}",
        &polls[before..]
    );
    assert!(after < full, "the agent resent its state: {after} B (first contact {full} B)");
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(e["name"], "moved");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_moves_to_postgresql_and_its_agent_notices_nothing() {
    let Some(admin) = std::env::var("TERN_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: TERN_TEST_POSTGRES is not set (CI's PostgreSQL pass sets it)");
        return;
    };
    let objects = Objects::new(&format!("tern-test-migrate-{}", std::process::id()));
    let dir = tempdir("tern-migrate-db");
    let data = dir.join("server");
    // The installation as it is today: SQLite in its data directory.
    let mut server = Server::start_with(&data, "127.0.0.1:0", &[("TERN_DATABASE_URL", "")]);
    assert!(data.join("tern.db").exists());
    let (env, vars, mut agent) = enrolled(&server, &objects, &dir).await;
    let command = queue_while_away(&server, env, &objects, &mut agent).await;
    let addr = server.addr();
    server.stop();

    let name = format!("tern_migrate_{}", std::process::id());
    let url = tern::server::store::postgres::PgPool::ensure_database(&admin, &name).unwrap();
    let db = data.join("tern.db");
    let out = tern(&["server", "migrate-db", "--from", &format!("sqlite:{}", db.display()), "--to", &url], &[]);
    println!("{out}");
    assert!(out.contains("environments 1") && out.contains("commands 1"), "{out}");
    // A second run finds the target full and changes nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["server", "migrate-db", "--from", &format!("sqlite:{}", db.display()), "--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // The same data directory (certificate, key), now on PostgreSQL.
    std::fs::rename(&db, data.join("tern.db.migrated")).unwrap();
    let server = Server::start_with(&data, &addr, &[("TERN_DATABASE_URL", &url)]);
    assert!(!data.join("tern.db").exists(), "the server runs on PostgreSQL");
    carries_on(&server, env, command, &objects, &vars, &dir).await;
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_server_and_the_agent_carries_on() {
    let objects = Objects::new(&format!("tern-test-backup-{}", std::process::id()));
    let dir = tempdir("tern-backup");
    let data = dir.join("server");
    let mut server = Server::start(&data, "127.0.0.1:0");
    let (env, vars, mut agent) = enrolled(&server, &objects, &dir).await;
    let command = queue_while_away(&server, env, &objects, &mut agent).await;

    // Online: the server keeps running while the backup is written.
    let file = dir.join("tern.backup");
    let source_db = common::test_database(&data);
    let source_vars: Vec<(&str, &str)> = source_db.iter().map(|u| ("TERN_DATABASE_URL", u.as_str())).collect();
    let out = tern(&["server", "backup", file.to_str().unwrap(), "--data", data.to_str().unwrap()], &source_vars);
    println!("{out}");
    assert!(out.contains("environments 1"), "{out}");
    let refused = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["server", "backup", file.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .envs(source_vars.iter().copied())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a backup never overwrites a file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "it holds secrets");
    }
    let addr = server.addr();
    server.stop();

    // A new machine: a new data directory (and, on PostgreSQL, a new
    // database), restored from the file alone.
    let restored = dir.join("restored");
    let target_db = common::test_database(&restored);
    let target_vars: Vec<(&str, &str)> = target_db.iter().map(|u| ("TERN_DATABASE_URL", u.as_str())).collect();
    let out = tern(&["server", "restore", file.to_str().unwrap(), "--data", restored.to_str().unwrap()], &target_vars);
    println!("{out}");
    for f in ["cert.pem", "key.pem", "secret.key", "admin-token"] {
        assert_eq!(std::fs::read(restored.join(f)).unwrap(), std::fs::read(data.join(f)).unwrap(), "{f}");
    }
    let again = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["server", "restore", file.to_str().unwrap(), "--data", restored.to_str().unwrap()])
        .envs(target_vars.iter().copied())
        .output()
        .unwrap();
    assert!(!again.status.success(), "a restore never mixes into an installation");
    let server = Server::start(&restored, &addr);
    carries_on(&server, env, command, &objects, &vars, &dir).await;
    drop(objects);
    let _ = std::fs::remove_dir_all(&dir);
}
