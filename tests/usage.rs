//! Data usage, end to end: a real agent reading the real engine polls a
//! real server on 127.0.0.1:0, and what the server records for its
//! environment is exactly what the agent's client counted at its socket
//! (every TLS record, handshakes included) and in poll bodies. A poll that
//! does not authenticate is charged to no environment. The API and the
//! `tern usage` CLI show the figures; shutdown records what open
//! connections carried.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{Deadline, tempdir};
use serde_json::{Value, json};
use tern::agent::client::Client;
use tern::agent::run::{Agent, Outcome, Settings};
use tern::agent::{DockerEngine, store};
use tern::auth::{JoinToken, Secret, seal_request};
use tern::server::api::types::{EnvironmentUsageView, FleetUsageView, UsageView};
use tern::server::store::prelude::*;
use tern::tls::Trust;
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::PollRequest;

/// What the server sends, and the agent never reads, when the agent hangs
/// up: the TLS 1.3 `close_notify` alert the server answers the agent's
/// with (5 B record header, 2 B alert, 1 B content type, 16 B AEAD tag).
/// The agent's client has shut its side by then; the bytes still cross
/// the link, so the server charges them.
const CLOSE_NOTIFY: u64 = 24;

/// A server in this process, on 127.0.0.1:0.
struct TestServer {
    dir: std::path::PathBuf,
    url: String,
    fingerprint: [u8; 32],
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    async fn start(name: &str) -> Self {
        let dir = tempdir(&format!("tern-usage-{name}"));
        let config = common::server_config(&dir);
        let prepared = tern::server::prepare(&config).unwrap();
        let fingerprint = prepared.fingerprint;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tern::server::run(prepared, listener, async {
            let _ = stopped.await;
        }));
        let admin = std::fs::read_to_string(tern::server::admin_token_path(&dir)).unwrap().trim().to_owned();
        Self { dir, url, fingerprint, admin, stop: Some(stop), task: Some(task) }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Trust::Pinned(self.fingerprint), 1 << 20).unwrap()
    }

    /// An API call on its own connection (API connections are never charged).
    async fn get(&self, path: &str) -> (u16, Value) {
        let mut api = self.client();
        let (status, body) = api.api(hyper::Method::GET, path, &self.admin, None).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn create(&self, name: &str) -> JoinToken {
        let mut api = self.client();
        let body = json!({ "name": name, "url": self.url });
        let (status, created) = api.post_json("/api/environments", &self.admin, body.to_string().into()).await.unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
        let created: Value = serde_json::from_slice(&created).unwrap();
        JoinToken::parse(created["edge_key"].as_str().unwrap()).unwrap()
    }

    async fn usage(&self, env: u64) -> EnvironmentUsageView {
        let (status, v) = self.get(&format!("/api/environments/{env}/usage?days=1")).await;
        assert_eq!(status, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn fleet(&self) -> FleetUsageView {
        let (status, v) = self.get("/api/usage").await;
        assert_eq!(status, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    /// Stops the server (which records what open connections carried).
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            self.task.take().unwrap().await.unwrap().unwrap();
        }
    }

    /// Runs `tern usage` with `args` against this server; its stdout.
    async fn cli(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("usage").args(args).args(["--server", &self.url, "--data", self.dir.to_str().unwrap()]);
        for var in ["TERN_SERVER", "TERN_TOKEN", "TERN_DATA", "TERN_SERVER_FINGERPRINT"] {
            cmd.env_remove(var);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        assert!(out.status.success(), "tern usage {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real agent for the local engine (read once: no event follower, so
/// other tests' containers do not change its polls).
async fn agent(token: &JoinToken, name: &str) -> (Agent<DockerEngine, Client>, std::path::PathBuf) {
    let docker = tern::agent::connect().await.unwrap();
    let client = Client::new(&token.url, Trust::Pinned(token.cert_sha256), 1 << 20).unwrap();
    let dir = tempdir(&format!("tern-usage-agent-{name}"));
    let settings = Settings::new(token.environment, token.secret.clone(), format!("edge-{name}"));
    let agent = Agent::new(
        settings,
        DockerEngine::new(docker),
        client,
        store::Store::open(&dir).unwrap(),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    (agent, dir)
}

async fn poll(agent: &mut Agent<DockerEngine, Client>) {
    let outcome = agent.poll_now().await.unwrap();
    assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
}

fn sum<'a>(items: impl Iterator<Item = &'a UsageView>) -> UsageView {
    let mut total = UsageView::default();
    for u in items {
        total.tls_up += u.tls_up;
        total.tls_down += u.tls_down;
        total.body_up += u.body_up;
        total.body_down += u.body_down;
        total.polls += u.polls;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_is_charged_exactly_what_its_agent_counted_on_the_wire() {
    let server = TestServer::start("exact").await;
    let token = server.create("metered").await;
    let env = token.environment;
    let (mut agent, agent_dir) = agent(&token, "exact").await;
    let wire = agent.transport_mut().wire.clone();

    // Three polls on one connection (full handshake), then two on a new
    // one (resumed session), then the agent hangs up.
    for _ in 0..3 {
        poll(&mut agent).await;
    }
    agent.transport_mut().disconnect();
    for _ in 0..2 {
        poll(&mut agent).await;
    }
    assert_eq!((agent.transport_mut().connections, agent.transport_mut().resumed), (2, 1));
    agent.transport_mut().disconnect();

    // The server charges the rest of each connection when it closes: the
    // last reply, the agent's close_notify, and the server's own.
    let deadline = Deadline::new(Duration::from_secs(20));
    let (usage, (sent, received)) = loop {
        let counted = wire.get();
        let usage = server.usage(env).await;
        let expected = (counted.0, counted.1 + 2 * CLOSE_NOTIFY);
        if (usage.total.tls_up, usage.total.tls_down) == expected && wire.get() == counted {
            break (usage, counted);
        }
        deadline.tick(format_args!("the server's figures {:?} to match the agent's {counted:?}", usage.total)).await;
    };
    let stats = agent.stats.clone();
    println!(
        "agent: {sent} B sent, {received} B received at the socket; {} B up, {} B down in {} poll bodies",
        stats.bytes_up, stats.bytes_down, stats.polls
    );
    let expected = UsageView {
        tls_up: sent,
        tls_down: received + 2 * CLOSE_NOTIFY,
        body_up: stats.bytes_up,
        body_down: stats.bytes_down,
        polls: stats.polls,
    };
    assert_eq!(stats.polls, 5);
    assert_eq!(usage.total, expected);
    assert!(sent > stats.bytes_up && received > stats.bytes_down, "the socket carries more than the bodies");
    assert_eq!(usage.today, expected);
    assert_eq!(usage.per_day.len(), 1);
    assert_eq!(usage.per_day[0].usage, expected);
    assert_eq!(usage.per_hour.len(), 7 * 24);
    assert_eq!(sum(usage.per_hour.iter().map(|h| &h.usage)), expected, "each hour of the last week");
    assert_eq!(usage.name, "metered");

    // The fleet view: the same figures; the API calls made on their own
    // connections are charged to no one, not even as unattributed.
    let fleet = server.fleet().await;
    assert_eq!(fleet.days, 30);
    assert_eq!(fleet.environments.len(), 1);
    assert_eq!((fleet.environments[0].id, fleet.environments[0].usage.period), (env, expected));
    assert_eq!((fleet.total.today, fleet.total.period), (expected, expected));
    assert_eq!(fleet.unattributed.period.connections, 0);

    // The CLI: per day and total, in readable units, and the same as JSON.
    let text = server.cli(&[&env.to_string(), "--days", "3"]).await;
    println!("{text}");
    let total_line = text.lines().find(|l| l.starts_with("total, 3 days")).expect(&text);
    let cells: Vec<&str> = total_line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    let human = tern::cli::usage::human;
    assert_eq!(
        cells[1..],
        [
            human(sent),
            human(expected.tls_down),
            human(sent + expected.tls_down),
            human(stats.bytes_up),
            human(stats.bytes_down),
            stats.polls.to_string()
        ]
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("20")).count(), 3, "one line a day:\n{text}");
    let by_name: EnvironmentUsageView =
        serde_json::from_str(&server.cli(&["metered", "--days", "2", "--json"]).await).unwrap();
    assert_eq!((by_name.environment, by_name.days, by_name.total), (env, 2, expected));
    let fleet_text = server.cli(&[]).await;
    println!("{fleet_text}");
    assert!(
        fleet_text.lines().any(|l| l.starts_with("metered (") && l.contains(&human(expected.tls_down))),
        "{fleet_text}"
    );

    let _ = std::fs::remove_dir_all(agent_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_does_not_authenticate_charges_no_environment() {
    let server = TestServer::start("refused").await;
    let token = server.create("victim").await;
    let env = token.environment;
    // A poll naming the environment, sealed with the wrong secret.
    let mut codec = Codec::new(Limits::default()).unwrap();
    let body = codec.encode(&PollRequest::default().encode()).unwrap();
    let mut stranger = server.client();
    let (status, _) =
        stranger.post(tern::wire::POLL_PATH, seal_request(env, 1, &Secret([0; 32]), &body)).await.unwrap();
    assert_eq!(status, 401);
    let (status, _) = stranger.post(tern::wire::POLL_PATH, b"not an envelope".to_vec()).await.unwrap();
    assert_eq!(status, 401);
    stranger.disconnect();

    // Counted, once the connection closes, as one unattributed connection.
    let deadline = Deadline::new(Duration::from_secs(20));
    let fleet = loop {
        let fleet = server.fleet().await;
        let u = fleet.unattributed.period;
        let (sent, received) = stranger.wire.get();
        if (u.tls_up, u.tls_down) == (sent, received + CLOSE_NOTIFY) && u.connections == 1 {
            break fleet;
        }
        deadline.tick(format_args!("unattributed {u:?} to match the stranger's {:?}", stranger.wire.get())).await;
    };
    assert_eq!(fleet.unattributed.today, fleet.unattributed.period);
    assert_eq!(fleet.environments[0].usage.period, UsageView::default());
    let usage = server.usage(env).await;
    assert_eq!(usage.total, UsageView::default());
    assert!(usage.per_hour.iter().all(|h| h.usage == UsageView::default()));
    let text = server.cli(&[]).await;
    assert!(text.contains("not charged to any environment"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_records_what_open_connections_carried() {
    let mut server = TestServer::start("shutdown").await;
    let token = server.create("open").await;
    let env = token.environment;
    let (mut agent, agent_dir) = agent(&token, "shutdown").await;
    poll(&mut agent).await;
    poll(&mut agent).await;
    // The connection is still open: the last reply is not charged yet.
    let before = server.usage(env).await.total;
    let (sent, received) = agent.transport_mut().wire.get();
    assert_eq!(before.tls_up, sent, "every byte from the agent came with a poll");
    assert!(before.tls_down < received, "the last reply is charged later");
    server.stop().await;

    let db = common::open_store(&server.dir);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let total = db.autocommit().usage_report(env, now, 1).unwrap().total;
    assert_eq!((total.tls_up, total.tls_down), (sent, received));
    assert_eq!((total.body_up, total.body_down, total.polls), (agent.stats.bytes_up, agent.stats.bytes_down, 2));
    let _ = std::fs::remove_dir_all(agent_dir);
}

#[tokio::test]
async fn bad_requests_get_a_json_error() {
    let server = TestServer::start("errors").await;
    let token = server.create("one").await;
    for (path, status, text) in [
        ("/api/environments/999/usage".to_owned(), 404, "no environment 999"),
        (format!("/api/environments/{}/usage?days=31", token.environment), 422, "from 1 to 30"),
        (format!("/api/environments/{}/usage?days=0", token.environment), 422, "from 1 to 30"),
        (format!("/api/environments/{}/usage?days=week", token.environment), 400, "whole number"),
        ("/api/usage?days=-1".to_owned(), 422, "from 1 to 30"),
        ("/api/usage?from=yesterday".to_owned(), 400, "unknown query parameter"),
        ("/api/environments/x/usage".to_owned(), 400, "ids are numbers"),
    ] {
        let (got, v) = server.get(&path).await;
        assert_eq!(got, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(text), "{path}: {v}");
    }
    // Without credentials: refused.
    let mut anonymous = server.client();
    let (status, _) = anonymous.api(hyper::Method::GET, "/api/usage", "wrong", None).await.unwrap();
    assert_eq!(status, 401);
}
