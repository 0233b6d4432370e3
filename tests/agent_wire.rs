//! Bytes through the TLS socket per poll, counted by the agent's client
//! under TLS (every record, handshakes included; TCP/IP headers are not
//! counted here, the on-wire benchmark of issue #6 adds them). A real agent
//! reads the real engine and polls a real server on 127.0.0.1:0.
//!
//! Budgets (issue #3):
//! * an idle poll on a kept-alive connection: at most 400 B both ways;
//! * a new connection that resumes the TLS session: at most 2,000 B.

#![cfg(all(feature = "agent", feature = "server"))]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tern::agent::client::Client;
use tern::agent::run::{Agent, Outcome, Settings};
use tern::agent::{DockerEngine, store};
use tern::auth::JoinToken;
use tern::tls::Trust;

const IDLE_KEPT_ALIVE: u64 = 400;
const RESUMED_CONNECTION: u64 = 2_000;

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tern-wire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn idle_and_resumed_polls_stay_within_their_byte_budgets() {
    let dir = tempdir("server");
    let config = tern::server::ServerConfig::new(dir.clone());
    let prepared = tern::server::prepare(&config).unwrap();
    let fingerprint = prepared.fingerprint;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tern::server::run(prepared, listener, async {
        let _ = stopped.await;
    }));

    // The operator's side: create the environment through the API.
    let admin = std::fs::read_to_string(tern::server::admin_token_path(&dir)).unwrap();
    let mut api = Client::new(&url, Trust::Pinned(fingerprint), 1 << 20).unwrap();
    let body = serde_json::json!({ "name": "wire", "url": url });
    let (status, created) = api.post_json("/api/environments", admin.trim(), body.to_string().into()).await.unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let token = JoinToken::parse(created["edge_key"].as_str().unwrap()).unwrap();

    // The agent, reading the real engine. No event follower: the engine is
    // read once, so other tests' containers cannot change the idle polls.
    let docker = tern::agent::connect().await.unwrap();
    let client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let wire = client.wire.clone();
    let agent_dir = tempdir("agent");
    let settings = Settings::new(token.environment, token.secret.clone(), "edge-wire".into());
    let mut agent = Agent::new(
        settings,
        DockerEngine::new(docker),
        client,
        store::Store::open(&agent_dir).unwrap(),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();

    let measure = async |agent: &mut Agent<DockerEngine, Client>| {
        let (s0, r0) = wire.get();
        let outcome = agent.poll_now().await.unwrap();
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        let (s1, r1) = wire.get();
        (s1 - s0, r1 - r0, outcome)
    };

    let first = measure(&mut agent).await;
    let settle = measure(&mut agent).await;
    let idle = measure(&mut agent).await;
    let idle_again = measure(&mut agent).await;
    assert_eq!(agent.transport_mut().connections, 1, "one connection, kept alive");
    agent.transport_mut().disconnect();
    let resumed = measure(&mut agent).await;
    assert_eq!(agent.transport_mut().connections, 2);
    assert_eq!(agent.transport_mut().resumed, 1, "the new connection resumed the TLS session");

    for (name, (up, down, outcome)) in [
        ("first contact, full handshake", &first),
        ("second poll", &settle),
        ("idle poll, kept alive", &idle),
        ("idle poll, kept alive (again)", &idle_again),
        ("idle poll, new resumed connection", &resumed),
    ] {
        println!("{name:<36} {up:>6} B up {down:>6} B down {:>6} B total  {outcome:?}", up + down);
    }
    let idle_total = idle.0 + idle.1;
    assert_eq!(idle_total, idle_again.0 + idle_again.1, "idle polls cost the same every time");
    assert!(idle_total <= IDLE_KEPT_ALIVE, "idle kept-alive poll: {idle_total} B > {IDLE_KEPT_ALIVE} B");
    let resumed_total = resumed.0 + resumed.1;
    assert!(resumed_total <= RESUMED_CONNECTION, "resumed connection: {resumed_total} B > {RESUMED_CONNECTION} B");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&agent_dir);
}

/// Issue #17: a device waiting for admission costs the link no more than
/// an idle poll. Measured the same way, in one run: its requests to join
/// on a kept-alive connection (after the first, which describes it), then,
/// admitted, the same agent's idle polls on the same connection.
#[tokio::test]
async fn a_waiting_device_costs_no_more_than_an_idle_poll() {
    let dir = tempdir("server-fleet");
    let config = tern::server::ServerConfig::new(dir.clone());
    let prepared = tern::server::prepare(&config).unwrap();
    let fingerprint = prepared.fingerprint;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tern::server::run(prepared, listener, async {
        let _ = stopped.await;
    }));
    let admin = std::fs::read_to_string(tern::server::admin_token_path(&dir)).unwrap();
    let mut api = Client::new(&url, Trust::Pinned(fingerprint), 1 << 20).unwrap();
    let body = serde_json::json!({ "name": "batch", "url": url });
    let (status, created) = api.post_json("/api/fleet-tokens", admin.trim(), body.to_string().into()).await.unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let token = tern::enrol::FleetToken::parse(created["edge_key"].as_str().unwrap()).unwrap();

    let agent_dir = tempdir("agent-fleet");
    let store = store::Store::open(&agent_dir).unwrap();
    let fleet = tern::agent::config::Fleet { token: token.clone(), group: "north".into(), tags: vec!["cam".into()] };
    let docker = tern::agent::connect().await.unwrap();
    let description = tern::agent::enrol::describe(&docker).await;
    let mut enrolment =
        tern::agent::enrol::Enrolment::open(&store, &fleet, None, "edge-wire-fleet", description).unwrap();
    let mut client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let wire = client.wire.clone();
    let mut ask = async |client: &mut Client| {
        let (s0, r0) = wire.get();
        let reply = enrolment.ask(client).await.unwrap();
        let (s1, r1) = wire.get();
        (s1 - s0, r1 - r0, reply.state)
    };
    let first = ask(&mut client).await;
    let waiting = ask(&mut client).await;
    let waiting_again = ask(&mut client).await;
    assert_eq!(waiting.2, tern::enrol::EnrolState::Pending);
    assert_eq!(waiting.0 + waiting.1, waiting_again.0 + waiting_again.1, "every wait costs the same");

    let (status, devices) = api.api(hyper::Method::GET, "/api/devices", admin.trim(), None).await.unwrap();
    assert_eq!(status, 200);
    let devices: serde_json::Value = serde_json::from_slice(&devices).unwrap();
    let path = format!("/api/devices/{}/admit", devices[0]["id"]);
    let (status, _) = api.post_json(&path, admin.trim(), Vec::new()).await.unwrap();
    assert_eq!(status, 201);
    let admitted = ask(&mut client).await;
    let tern::enrol::EnrolState::Admitted(environment) = admitted.2 else { panic!("{admitted:?}") };
    let joined = enrolment.admitted().unwrap();
    assert_eq!(joined.environment, environment);

    // The same connection, now polling as the environment.
    let settings = Settings::new(joined.environment, joined.secret.clone(), "edge-wire-fleet".into());
    let mut agent =
        Agent::new(settings, DockerEngine::new(docker), client, store, Arc::new(AtomicBool::new(false))).unwrap();
    let poll = async |agent: &mut Agent<DockerEngine, Client>| {
        let (s0, r0) = wire.get();
        let outcome = agent.poll_now().await.unwrap();
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        let (s1, r1) = wire.get();
        (s1 - s0, r1 - r0)
    };
    let _snapshot = poll(&mut agent).await;
    let _settle = poll(&mut agent).await;
    let idle = poll(&mut agent).await;
    assert_eq!(agent.transport_mut().connections, 1, "one connection, kept alive, all along");

    for (name, (up, down)) in [
        ("asking to join, first (described)", (first.0, first.1)),
        ("waiting for admission, kept alive", (waiting.0, waiting.1)),
        ("the answer that admits it", (admitted.0, admitted.1)),
        ("idle poll as the environment", idle),
    ] {
        println!("{name:<36} {up:>6} B up {down:>6} B down {:>6} B total", up + down);
    }
    let waiting_total = waiting.0 + waiting.1;
    let idle_total = idle.0 + idle.1;
    assert!(waiting_total <= idle_total, "a wait costs {waiting_total} B, an idle poll {idle_total} B");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&agent_dir);
}
