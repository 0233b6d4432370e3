//! Everything the server must refuse, refused with a clear error and no
//! change: a wrong secret, a wrong EDGE_ID, a missing or wrong AGENT_SECRET,
//! a certificate that does not match the pin (real `tern agent` processes,
//! their logs read as an operator would), and a replayed or tampered poll
//! (sent by hand through the real client).

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::time::Duration;

use common::{AgentProcess, Api, Deadline, Server, tempdir};
use serde_json::{Value, json};
use tern::agent::client::Client;
use tern::auth::{JoinToken, Secret, seal_request};
use tern::tls::Trust;
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::{AgentInfo, PollReply, PollRequest, RefusalCode};

async fn create(api: &mut Api, name: &str, url: &str) -> (u64, JoinToken) {
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": name, "url": url, "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    (created["id"].as_u64().unwrap(), JoinToken::parse(created["edge_key"].as_str().unwrap()).unwrap())
}

async fn summary(api: &mut Api, env: u64) -> Value {
    let mut s = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    // Only what a refused poll must not touch.
    json!({"edge_id": s["edge_id"].take(), "seq": s["seq"].take(), "root": s["root"].take(), "last_poll_at": s["last_poll_at"].take()})
}

/// Waits until the agent's log shows `text` (and returns the log).
async fn logged(agent: &AgentProcess, text: &str) -> String {
    let deadline = Deadline::new(Duration::from_secs(30));
    loop {
        let log = agent.log();
        if log.contains(text) {
            return log;
        }
        deadline.tick(format_args!("{text:?} in the agent's log:\n{log}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_ids_and_pins_are_refused_with_a_clear_error_and_change_nothing() {
    let dir = tempdir("tern-refusals");
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("AGENT_SECRET", "s3cret")]);
    let mut api = server.api();
    let (env, token) = create(&mut api, "refusals", &server.url()).await;
    let untouched = summary(&mut api, env).await;
    let data = |n: &str| dir.join(n).to_str().unwrap().to_owned();

    // AGENT_SECRET missing: the server says so (403), nothing changes.
    let key = token.encode();
    let d = data("a1");
    let mut agent = AgentProcess::start(&[("EDGE_KEY", &key), ("DATA_PATH", &d)], &dir.join("a1.log"));
    logged(&agent, "AGENT_SECRET").await;
    agent.stop();
    assert_eq!(summary(&mut api, env).await, untouched);

    // AGENT_SECRET wrong: indistinguishable from a forgery (401); the
    // agent's message names both causes.
    let mut agent =
        AgentProcess::start(&[("EDGE_KEY", &key), ("DATA_PATH", &d), ("AGENT_SECRET", "guess")], &dir.join("a2.log"));
    logged(&agent, "does not accept this agent's EDGE_KEY").await;
    agent.stop();
    assert_eq!(summary(&mut api, env).await, untouched);

    // A wrong environment secret in the token.
    let mut forged = token.clone();
    forged.secret = Secret([7; 32]);
    let mut agent = AgentProcess::start(
        &[("EDGE_KEY", &forged.encode()), ("DATA_PATH", &d), ("AGENT_SECRET", "s3cret")],
        &dir.join("a3.log"),
    );
    logged(&agent, "does not accept this agent's EDGE_KEY").await;
    agent.stop();
    assert_eq!(summary(&mut api, env).await, untouched);

    // A certificate that does not match the pin: the agent refuses the
    // server, and sends it nothing.
    let mut pinned_elsewhere = token.clone();
    pinned_elsewhere.cert_sha256 = [9; 32];
    let mut agent = AgentProcess::start(
        &[("EDGE_KEY", &pinned_elsewhere.encode()), ("DATA_PATH", &d), ("AGENT_SECRET", "s3cret")],
        &dir.join("a4.log"),
    );
    logged(&agent, "is not the one pinned in EDGE_KEY").await;
    agent.stop();
    assert_eq!(summary(&mut api, env).await, untouched);

    // The right agent binds the environment to its EDGE_ID...
    let good =
        [("EDGE_KEY", key.as_str()), ("DATA_PATH", d.as_str()), ("AGENT_SECRET", "s3cret"), ("EDGE_ID", "site-a")];
    let mut agent = AgentProcess::start(&good, &dir.join("a5.log"));
    let deadline = Deadline::new(Duration::from_secs(30));
    while summary(&mut api, env).await["edge_id"] != "site-a" {
        deadline.tick("the environment to bind to site-a").await;
    }
    agent.stop();
    let bound = summary(&mut api, env).await;

    // ...and a second agent with the same token is refused until an
    // operator resets the binding.
    let d2 = data("b");
    let other =
        [("EDGE_KEY", key.as_str()), ("DATA_PATH", d2.as_str()), ("AGENT_SECRET", "s3cret"), ("EDGE_ID", "site-b")];
    let mut agent = AgentProcess::start(&other, &dir.join("b.log"));
    logged(&agent, "bound to another agent").await;
    assert_eq!(summary(&mut api, env).await, bound);
    api.ok("POST", &format!("/api/environments/{env}/reset-binding"), None, 200).await;
    let deadline = Deadline::new(Duration::from_secs(30));
    while summary(&mut api, env).await["edge_id"] != "site-b" {
        deadline.tick("the environment to bind to site-b after the reset").await;
    }
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn replayed_and_tampered_polls_are_refused_and_change_nothing() {
    let dir = tempdir("tern-replay");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, token) = create(&mut api, "replay", &server.url()).await;
    let mut client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let mut codec = Codec::new(Limits::default()).unwrap();
    let request = PollRequest {
        agent: Some(AgentInfo { version: "test".into(), edge_id: "by-hand".into() }),
        ..PollRequest::default()
    };
    let body = codec.encode(&request.encode()).unwrap();
    let wire = seal_request(token.environment, 1, &token.secret, &body);
    let (status, _) = client.post(tern::wire::POLL_PATH, wire.clone()).await.unwrap();
    assert_eq!(status, 200);
    let accepted = summary(&mut api, env).await;

    let (status, sealed) = client.post(tern::wire::POLL_PATH, wire.clone()).await.unwrap();
    assert_eq!(status, 409, "a replay");
    // The refusal is sealed with the environment's key, so the agent can
    // trust the counter it names.
    let opened = tern::auth::open_reply(1, &token.secret, &sealed).expect("a sealed refusal");
    let refused = PollReply::decode(&codec.decode(opened).unwrap()).unwrap().refused.expect("a refusal");
    assert_eq!((refused.code, refused.last_counter), (RefusalCode::Replay, 1));
    assert!(refused.detail.contains("replay"), "{refused:?}");

    let mut tampered = seal_request(token.environment, 2, &token.secret, &body);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let (status, _) = client.post(tern::wire::POLL_PATH, tampered).await.unwrap();
    assert_eq!(status, 401, "a tampered body");

    // An oversized body is refused before it is read: a 413, or the server
    // closing the connection while the client still writes.
    match client.post(tern::wire::POLL_PATH, vec![0; 32 << 20]).await {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(e) => assert!(e.to_string().contains("body"), "{e}"),
    }
    assert_eq!(summary(&mut api, env).await, accepted);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tern_cli(server: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .args(["--server", &server.url(), "--data"])
        .arg(&server.data)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_SERVER")
        .env_remove("TERN_DATA")
        .output()
        .unwrap();
    assert!(out.status.success(), "tern {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn an_operator_resets_the_counter_and_rotates_the_secret_and_the_agent_follows() {
    let dir = tempdir("tern-rotate");
    let password = "a long admin password for rotation";
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", password)]);
    let mut api = server.api();
    let (env, token) = create(&mut api, "rotate", &server.url()).await;
    let mut client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let mut codec = Codec::new(Limits::default()).unwrap();
    let hello = PollRequest {
        agent: Some(AgentInfo { version: "test".into(), edge_id: "by-hand".into() }),
        ..PollRequest::default()
    };
    let body = codec.encode(&hello.encode()).unwrap();
    let poll = |counter: u64, secret: &Secret| seal_request(env, counter, secret, &body);
    // Counter 5 is accepted, so 1 is a replay until the counter is reset.
    assert_eq!(client.post(tern::wire::POLL_PATH, poll(5, &token.secret)).await.unwrap().0, 200);
    assert_eq!(client.post(tern::wire::POLL_PATH, poll(1, &token.secret)).await.unwrap().0, 409);
    assert!(tern_cli(&server, &["env", "reset-counter", "rotate"]).contains("whatever its counter"));
    assert_eq!(client.post(tern::wire::POLL_PATH, poll(1, &token.secret)).await.unwrap().0, 200);
    api.ok("POST", "/api/environments/99/reset-counter", None, 404).await;

    // The real agent polls with the token; then the secret is rotated.
    api.ok("POST", &format!("/api/environments/{env}/reset-binding"), None, 200).await;
    let data = dir.join("agent");
    let d = data.to_str().unwrap().to_owned();
    let mut agent = AgentProcess::start(
        &[("EDGE_KEY", &token.encode()), ("DATA_PATH", &d), ("EDGE_ID", "ship")],
        &dir.join("a.log"),
    );
    let deadline = Deadline::new(Duration::from_secs(30));
    while summary(&mut api, env).await["edge_id"] != "ship" {
        deadline.tick("the agent's first poll").await;
    }
    // Through the UI: the edit page has both forms; rotating shows the deploy page.
    let mut ui = common::UiClient::login(&server, password).await;
    let edit = ui.get(&format!("/environments/{env}/edit")).await;
    assert!(edit.body.contains("/reset-counter") && edit.body.contains("/rotate-secret"), "{}", edit.body);
    let r = ui.submit(&format!("/environments/{env}/rotate-secret"), &[]).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some(&*format!("/environments/{env}/deploy?rotated=1"))));
    let page = ui.get(&format!("/environments/{env}/deploy?rotated=1")).await;
    assert!(page.body.contains("The secret was rotated"), "{}", page.body);
    let deploy = api.ok("GET", &format!("/api/environments/{env}/deploy"), None, 200).await;
    let new_key = deploy["edge_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, token.encode());
    assert!(page.body.contains(&new_key), "the deploy page shows the new join token");
    // The old secret is refused at once, the running agent's polls too.
    assert_eq!(client.post(tern::wire::POLL_PATH, poll(100, &token.secret)).await.unwrap().0, 401);
    logged(&agent, "does not accept this agent's EDGE_KEY").await;
    // Redeployed with the new token and the same data directory: its
    // counter starts again, and it polls as the same EDGE_ID.
    agent.stop();
    let before = summary(&mut api, env).await["last_poll_at"].clone();
    let agent =
        AgentProcess::start(&[("EDGE_KEY", &new_key), ("DATA_PATH", &d), ("EDGE_ID", "ship")], &dir.join("b.log"));
    while summary(&mut api, env).await["last_poll_at"] == before {
        deadline.tick(format_args!("a poll with the new token\n{}", agent.log())).await;
    }
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!((e["edge_id"].as_str(), e["status"].as_str()), (Some("ship"), Some("online")), "{e}");
    assert!(agent.log().contains("a new EDGE_KEY: the poll counter starts again"), "{}", agent.log());
    assert!(!agent.log().contains("replayed"), "no refused poll on the way: {}", agent.log());
    // The CLI rotates too, and prints the new token and commands.
    let out = tern_cli(&server, &["env", "rotate-secret", &env.to_string()]);
    assert!(out.contains("old EDGE_KEY no longer works") && out.contains("EDGE_KEY=tern1_"), "{out}");
    assert!(!out.contains(&new_key), "another new one");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_agent_secret_stays_out_of_process_lists_and_deploy_commands() {
    let dir = tempdir("tern-secret-cli");
    let log = dir.join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    // Given on the command line: it works, with a warning.
    let server = Server::start_as(&dir.join("server"), "127.0.0.1:0", &[], |cmd| {
        cmd.args(["--agent-secret", "from-argv"]).env_remove("AGENT_SECRET").stderr(file);
    });
    let mut api = server.api();
    assert_eq!(api.ok("GET", "/api/settings", None, 200).await["agent_secret_set"], true);
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(warned.contains("--agent-secret on the command line shows the secret"), "{warned}");
    // Set again from standard input, never in an argument.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["settings", "set", "--agent-secret", "-", "--server", &server.url(), "--data"])
        .arg(&server.data)
        .env_remove("TERN_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from-stdin\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (env, token) = create(&mut api, "stdin", &server.url()).await;
    let deploy = api.ok("GET", &format!("/api/environments/{env}/deploy"), None, 200).await.to_string();
    assert!(!deploy.contains("from-stdin") && !deploy.contains("from-argv"), "{deploy}");
    // The agent's key is the one read from standard input.
    let mut client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let mut codec = Codec::new(Limits::default()).unwrap();
    let hello = PollRequest {
        agent: Some(AgentInfo { version: "test".into(), edge_id: "stdin".into() }),
        ..PollRequest::default()
    };
    let body = codec.encode(&hello.encode()).unwrap();
    let key = token.secret.with_agent_secret(Some("from-stdin"));
    assert_eq!(client.post(tern::wire::POLL_PATH, seal_request(env, 1, &key, &body)).await.unwrap().0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
