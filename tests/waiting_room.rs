//! Onboarding many devices (issue #17, item 1), end to end: a real server,
//! real `tern agent` processes on this host's engine, each deployed with
//! the same fleet join token, as a batch of flashed devices would be.
//!
//! * a device waits in the waiting room, showing what it said of itself
//!   (EDGE_ID, hostname, agent version, engine, the group and tags it asks
//!   for), and can neither act nor read anything while it waits;
//! * admitted, it polls as its own environment (a secret both ends derive,
//!   never sent) and comes online; restarted, it sends no request to join;
//! * a token's rule admits a device by its tags, and says so in the audit
//!   log; a used-up, expired or revoked token and a rejection are refused,
//!   and the device's health output says why.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AgentProcess, Api, Deadline, Server, tempdir};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn start_device(data: &Path, key: &str, edge_id: &str, extra: &[(&str, &str)]) -> AgentProcess {
    let mut vars = vec![("EDGE_KEY", key), ("EDGE_ID", edge_id), ("DATA_PATH", data.to_str().unwrap())];
    vars.extend_from_slice(extra);
    let log = data.with_extension("log");
    AgentProcess::start(&vars, &log)
}

async fn device_of(api: &mut Api, edge_id: &str) -> Option<Value> {
    let list = api.ok("GET", "/api/devices", None, 200).await;
    list.as_array().unwrap().iter().find(|d| d["edge_id"] == edge_id).cloned()
}

async fn wait_device(api: &mut Api, edge_id: &str, status: &str) -> Value {
    let deadline = Deadline::new(LIMIT);
    loop {
        if let Some(d) = device_of(api, edge_id).await.filter(|d| d["status"] == status) {
            return d;
        }
        deadline.tick(format_args!("device {edge_id} to be {status}")).await;
    }
}

/// `tern agent health` for a data path: (healthy, its line).
fn health(data: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["agent", "health", "--data-path"])
        .arg(data)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn wait_health(data: &Path, healthy: bool, says: &str) -> String {
    let deadline = Deadline::new(LIMIT);
    loop {
        let (ok, line) = health(data);
        if ok == healthy && line.contains(says) {
            return line;
        }
        deadline.tick(format_args!("health {healthy} saying {says:?}; last: {line}")).await;
    }
}

async fn online(api: &mut Api, env: u64) {
    let deadline = Deadline::new(LIMIT);
    loop {
        let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
        if e["status"] == "online" && e["snapshot_at"].is_number() {
            return;
        }
        deadline.tick(format_args!("environment {env} online with a snapshot: {e}")).await;
    }
}

fn cli(server: &Server, args: &[&str]) -> (bool, String) {
    let token = std::fs::read_to_string(tern::server::admin_token_path(&server.data)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .args(["--server", &server.url(), "--data"])
        .arg(&server.data)
        .env("TERN_TOKEN", token.trim())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_is_admitted_and_polls_as_environments_and_bad_tokens_are_refused_with_why() {
    let dir = tempdir("waiting-room");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let url = server.url();
    // Devices ask (and agents poll) every second here.
    api.ok("PUT", "/api/settings", Some(json!({"intervals": {"ping": 1, "snapshot": 1, "command": 1}})), 200).await;
    let run = format!("wr{}", std::process::id());
    // The group device A asks for exists (a device's ask never makes one).
    api.ok("POST", "/api/groups", Some(json!({"name": "north"})), 201).await;

    // The operator makes one token for a batch, with the CLI.
    let (ok, out) =
        cli(&server, &["fleet-token", "create", "batch", "--url", &url, "--tags", "field", "--max-uses", "3"]);
    assert!(ok, "{out}");
    assert!(out.contains("EDGE_KEY=tern1f_") && out.contains("docker run"), "{out}");
    assert!(!out.contains("EDGE_ID="), "one command for every device: {out}");
    let tokens = api.ok("GET", "/api/fleet-tokens", None, 200).await;
    let batch = tokens[0]["id"].as_u64().unwrap();
    let shown = api.ok("GET", &format!("/api/fleet-tokens/{batch}"), None, 200).await;
    let key = shown["edge_key"].as_str().unwrap().to_owned();
    assert!(shown["commands"]["linux"].as_str().unwrap().contains(&key));

    // Device A asks to join and waits, described.
    let a_id = format!("{run}-a");
    let a_data = dir.join("a");
    let mut a = start_device(&a_data, &key, &a_id, &[("EDGE_GROUP", "north"), ("EDGE_TAGS", "cam,solar")]);
    let d = wait_device(&mut api, &a_id, "pending").await;
    assert!(!d["hostname"].as_str().unwrap().is_empty(), "{d}");
    assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(d["engine"].as_str().unwrap().starts_with("Docker "), "{d}");
    assert_eq!((d["group"].as_str(), d["tags"].clone()), (Some("north"), json!(["cam", "solar"])));
    assert_eq!(d["token_name"], "batch");
    let line = wait_health(&a_data, true, "waiting for admission").await;
    assert!(line.contains(&a_id), "{line}");
    let (ok, out) = cli(&server, &["device", "list"]);
    assert!(ok && out.contains(&a_id) && out.contains("north"), "{out}");

    // Waiting, it is no environment: it cannot act or read. A poll sealed
    // with the fleet token's key, naming the token's id as an environment,
    // or with the secret it will derive, naming the id it may get, is
    // refused unread.
    let list = api.ok("GET", "/api/environments", None, 200).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    let fleet = tern::enrol::FleetToken::parse(&key).unwrap();
    let mut probe =
        tern::agent::client::Client::new(&url, tern::tls::Trust::Pinned(fleet.cert_sha256), 1 << 20).unwrap();
    for (env, secret) in [(fleet.id, fleet.secret.clone()), (1, tern::auth::Secret([0; 32]))] {
        let wire = tern::auth::seal_request(env, 1, &secret, b"\x01");
        let (status, _) = probe.post(tern::wire::POLL_PATH, wire).await.unwrap();
        assert_eq!(status, 401, "a poll as environment {env} with the token's key");
    }
    // A request to join under another key is not sealed with the token's.
    let forged = tern::auth::seal_request(fleet.id, 1, &tern::auth::Secret([9; 32]), b"\x0a\x01x");
    let (status, _) = probe.post(tern::enrol::ENROL_PATH, forged).await.unwrap();
    assert_eq!(status, 401);

    // The operator admits it (the API; the UI and CLI call the same).
    let admitted = api.ok("POST", &format!("/api/devices/{}/admit", d["id"]), None, 201).await;
    let env_a = admitted["environment"].as_u64().unwrap();
    online(&mut api, env_a).await;
    let e = api.ok("GET", &format!("/api/environments/{env_a}"), None, 200).await;
    assert_eq!(e["edge_id"], a_id.as_str(), "{e}");
    assert_eq!(e["group"]["name"], "north", "{e}");
    assert_eq!(e["tags"], json!(["cam", "field", "solar"]), "{e}");
    wait_health(&a_data, true, "a successful poll").await;
    assert!(a.log().contains("admitted: this device is environment"), "{}", a.log());
    // Restarted, it is that environment at once: no request to join.
    a.stop();
    let asked = device_of(&mut api, &a_id).await.unwrap()["last_seen"].clone();
    let before = a.log().len();
    let a = start_device(&a_data, &key, &a_id, &[("EDGE_GROUP", "north"), ("EDGE_TAGS", "cam,solar")]);
    let deadline = Deadline::new(LIMIT);
    while !a.log()[before..].contains("agent starting") {
        deadline.tick("the restarted agent to start").await;
    }
    online(&mut api, env_a).await;
    assert!(!a.log()[before..].contains("waiting for admission"), "{}", &a.log()[before..]);
    assert_eq!(device_of(&mut api, &a_id).await.unwrap()["last_seen"], asked, "no request to join after a restart");

    // A token whose rule admits by tag, and one that is used up.
    let auto = api
        .ok(
            "POST",
            "/api/fleet-tokens",
            Some(json!({"name": "auto", "url": url, "auto_admit": "tags", "auto_tags": ["trusted"], "max_uses": 1})),
            201,
        )
        .await;
    let auto_key = auto["edge_key"].as_str().unwrap().to_owned();
    let b_id = format!("{run}-b");
    let b_data = dir.join("b");
    let _b = start_device(&b_data, &auto_key, &b_id, &[("EDGE_TAGS", "trusted")]);
    let b = wait_device(&mut api, &b_id, "admitted").await;
    assert_eq!(b["decided_by"], "rule:auto");
    online(&mut api, b["environment"].as_u64().unwrap()).await;
    let audit = api.ok("GET", "/api/audit?actor=rule:auto", None, 200).await;
    assert_eq!(audit["entries"][0]["action"], "admit (rule)", "{audit}");
    let c_data = dir.join("c");
    let _c = start_device(&c_data, &auto_key, &format!("{run}-c"), &[("EDGE_TAGS", "trusted")]);
    let line = wait_health(&c_data, false, "used up").await;
    assert!(line.contains("not admitted: the fleet join token \"auto\" is used up (1 of 1 devices)"), "{line}");

    // A rejected device is told why.
    let r_id = format!("{run}-r");
    let r_data = dir.join("r");
    let _r = start_device(&r_data, &key, &r_id, &[]);
    let r = wait_device(&mut api, &r_id, "pending").await;
    let (ok, out) = cli(&server, &["device", "reject", &r["id"].to_string(), "--reason", "not one of ours"]);
    assert!(ok, "{out}");
    wait_health(&r_data, false, "the operator rejected this device: not one of ours").await;

    // Revoked: its waiting device is refused too.
    let w_id = format!("{run}-w");
    let w_data = dir.join("w");
    let _w = start_device(&w_data, &key, &w_id, &[]);
    wait_device(&mut api, &w_id, "pending").await;
    let tokens = api.ok("GET", "/api/fleet-tokens", None, 200).await;
    let used = tokens.as_array().unwrap().iter().find(|t| t["id"] == batch).unwrap()["uses"].clone();
    assert_eq!(used, 3, "A, R and W used the batch token: {tokens}");
    let (ok, out) = cli(&server, &["fleet-token", "revoke", &batch.to_string()]);
    assert!(ok && out.contains("revoked"), "{out}");
    wait_health(&w_data, false, "was revoked").await;

    // Expired: a new device is refused.
    let short =
        api.ok("POST", "/api/fleet-tokens", Some(json!({"name": "short", "url": url, "expires_in": 1})), 201).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let x_data = dir.join("x");
    let _x = start_device(&x_data, short["edge_key"].as_str().unwrap(), &format!("{run}-x"), &[]);
    wait_health(&x_data, false, "expired at").await;

    // A fleet token with EDGE_INSECURE_POLL=1 does not start, and says why.
    let y_data = dir.join("y");
    let mut y = start_device(&y_data, &key, &format!("{run}-y"), &[("EDGE_INSECURE_POLL", "1")]);
    let deadline = Deadline::new(LIMIT);
    let status = loop {
        if let Some(s) = y.exited() {
            break s;
        }
        deadline.tick("the agent with EDGE_INSECURE_POLL=1 to exit").await;
    };
    assert_eq!(status.code(), Some(2));
    assert!(y.log().contains("not with a fleet join token"), "{}", y.log());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The UI's Waiting room page, as a browser without a script uses it: a
/// token made through its form (a bad one comes back with the error by its
/// field), its page with the command to flash, a waiting device admitted
/// with its button, the token revoked with its.
#[tokio::test]
async fn the_waiting_room_page_makes_tokens_and_admits_devices() {
    const PASSWORD: &str = "a long admin password for the waiting room";
    let dir = tempdir("waiting-room-ui");
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]);
    let mut api = server.api();
    let mut b = common::UiClient::login(&server, PASSWORD).await;
    let page = b.get("/devices").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"no-pending\"") && page.body.contains("id=\"new-token\""), "{}", page.body);

    let url = server.url();
    let r = b.submit("/fleet-tokens", &[("name", ""), ("url", &url), ("auto_admit", "off")]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(common::text_by_id(&r.body, "f-name-error").is_some_and(|t| t.contains("1 to 128")), "{}", r.body);
    assert_eq!(api.ok("GET", "/api/fleet-tokens", None, 200).await, json!([]), "nothing made");
    let r =
        b.submit("/fleet-tokens", &[("name", "site-a"), ("url", &url), ("auto_admit", "off"), ("max_uses", "5")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location.clone().unwrap();
    let shown = b.get(&to).await;
    let command = common::text_by_id(&shown.body, "fleet-command").unwrap();
    assert!(command.contains("EDGE_KEY=tern1f_") && !command.contains("EDGE_ID"), "{command}");
    let id: u64 = to.rsplit('/').next().unwrap().parse().unwrap();
    let token = api.ok("GET", &format!("/api/fleet-tokens/{id}"), None, 200).await;
    assert_eq!(token["max_uses"], 5);

    // A device asks to join (the agent's own code, in process).
    let fleet_token = tern::enrol::FleetToken::parse(token["edge_key"].as_str().unwrap()).unwrap();
    let store = tern::agent::store::Store::open(dir.join("device")).unwrap();
    let fleet = tern::agent::config::Fleet { token: fleet_token.clone(), group: String::new(), tags: vec![] };
    let description = tern::enrol::Description { hostname: "cam-9".into(), ..Default::default() };
    let mut device = tern::agent::enrol::Enrolment::open(&store, &fleet, None, "cam-9-id", description).unwrap();
    let pin = tern::tls::Trust::Pinned(fleet_token.cert_sha256);
    let mut client = tern::agent::client::Client::new(&url, pin, 1 << 20).unwrap();
    assert_eq!(device.ask(&mut client).await.unwrap().state, tern::enrol::EnrolState::Pending);
    // Forgotten, it is a stranger under its own key: told so (401), it
    // describes itself again and is back in the waiting room.
    let first = api.ok("GET", "/api/devices?status=pending", None, 200).await[0]["id"].as_u64().unwrap();
    assert_eq!(device.ask(&mut client).await.unwrap().state, tern::enrol::EnrolState::Pending);
    api.ok("DELETE", &format!("/api/devices/{first}"), None, 204).await;
    let e = device.ask(&mut client).await.unwrap_err();
    assert!(matches!(e, tern::agent::enrol::AskError::Unknown), "{e}");
    assert_eq!(device.ask(&mut client).await.unwrap().state, tern::enrol::EnrolState::Pending);

    let page = b.get("/devices").await;
    let listed = api.ok("GET", "/api/devices?status=pending", None, 200).await;
    let dev = listed[0]["id"].as_u64().unwrap();
    assert!(dev > first, "a new entry, a new number (never reused)");
    assert!(page.body.contains(&format!("id=\"admit-{dev}\"")) && page.body.contains("cam-9"), "{}", page.body);
    // Admitted from the page with a name and tags of the operator's.
    let r = b
        .submit(&format!("/devices/{dev}/admit"), &[("name", "cam-nine"), ("group", ""), ("tags", "cam, field")])
        .await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/devices")), "{}", r.body);
    let d = api.ok("GET", &format!("/api/devices/{dev}"), None, 200).await;
    assert_eq!((d["status"].as_str(), d["decided_by"].as_str()), (Some("admitted"), Some("user:admin")), "{d}");
    let env = d["environment"].as_u64().unwrap();
    assert_eq!(device.ask(&mut client).await.unwrap().state, tern::enrol::EnrolState::Admitted(env));
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(e["name"], "cam-nine", "{e}");
    assert_eq!(e["tags"], json!(["cam", "field"]), "{e}");

    let r = b.submit(&format!("/fleet-tokens/{id}/revoke"), &[]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let token = api.ok("GET", &format!("/api/fleet-tokens/{id}"), None, 200).await;
    assert!(token["revoked_at"].is_number() && token["state"].as_str().unwrap().contains("revoked"), "{token}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_waiting_room_lists_a_batch_a_page_at_a_time() {
    const PASSWORD: &str = "a long admin password for the waiting room";
    let dir = tempdir("waiting-room-pages");
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]);
    let mut api = server.api();
    let url = server.url();
    let body = json!({"name": "batch", "url": url, "auto_admit": "off"});
    let token = api.ok("POST", "/api/fleet-tokens", Some(body), 201).await;
    let fleet_token = tern::enrol::FleetToken::parse(token["edge_key"].as_str().unwrap()).unwrap();
    let pin = tern::tls::Trust::Pinned(fleet_token.cert_sha256);
    let mut client = tern::agent::client::Client::new(&url, pin, 1 << 20).unwrap();
    // Three devices of a batch ask to join (the agent's own code, in process).
    for n in 0..3 {
        let store = tern::agent::store::Store::open(dir.join(format!("device-{n}"))).unwrap();
        let fleet = tern::agent::config::Fleet { token: fleet_token.clone(), group: String::new(), tags: vec![] };
        let description = tern::enrol::Description { hostname: format!("cam-{n}"), ..Default::default() };
        let mut device =
            tern::agent::enrol::Enrolment::open(&store, &fleet, None, &format!("cam-{n}-id"), description).unwrap();
        assert_eq!(device.ask(&mut client).await.unwrap().state, tern::enrol::EnrolState::Pending);
    }
    let page = |limit: u64, offset: u64| format!("/api/devices?status=pending&limit={limit}&offset={offset}");
    let first = api.ok("GET", &page(2, 0), None, 200).await;
    let second = api.ok("GET", &page(2, 2), None, 200).await;
    let names = |v: &Value| {
        v.as_array().unwrap().iter().map(|d| d["hostname"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (mut seen, rest) = (names(&first), names(&second));
    assert_eq!((seen.len(), rest.len()), (2, 1), "{first} {second}");
    seen.extend(rest);
    seen.sort();
    assert_eq!(seen, ["cam-0", "cam-1", "cam-2"], "every device once over the pages");
    assert_eq!(api.ok("GET", "/api/devices?status=decided", None, 200).await, json!([]));
    api.ok("GET", "/api/devices?limit=1001", None, 422).await;
    api.ok("GET", "/api/devices?status=maybe", None, 422).await;
    api.ok("GET", "/api/devices?page=2", None, 400).await;
    // The page counts them all (the API's X-Total-Count) and the CLI pages.
    let mut b = common::UiClient::login(&server, PASSWORD).await;
    let shown = b.get("/devices").await;
    assert!(shown.body.contains("Waiting (3)"), "{}", shown.body);
    let (ok, out) = cli(&server, &["device", "list", "--limit", "1", "--offset", "1"]);
    assert!(ok && out.lines().count() == 2, "a header and one device: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
