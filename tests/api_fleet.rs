//! The fleet through the REST API of a real server on 127.0.0.1:0 (TLS,
//! pinned, the admin token from its data directory): environments created
//! with every option and their deploy commands, the list's filters, paging
//! and status rule, changes and deletion, groups and tags, settings that
//! reach agents through the poll handler, and bad input that changes
//! nothing. The last test drives the real `tern` binary.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tern_cli as tern;
use serde_json::{Value, json};
use tern::agent::client::Client;
use tern::auth::JoinToken;
use tern::server::store::Store;
use tern::server::store::prelude::*;
use tern::sync::State;
use tern::sync::session::Replica;
use tern::sync::state::{Container, ContainerStatus, Health, Id, Image};
use tern::tls::Trust;
use tern::wire::codec::Codec;
use tern::wire::poll::{AgentInfo, Intervals, PollReply, PollRequest};

/// A server in this process, on its own data directory.
struct Fleet {
    client: Client,
    token: String,
    data: PathBuf,
    fingerprint: [u8; 32],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    codec: Codec,
    counters: std::collections::HashMap<u64, u64>,
}

impl Fleet {
    async fn start(name: &str) -> Self {
        let data = std::env::temp_dir().join(format!("tern-api-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let config = common::server_config(&data);
        let prepared = tern::server::prepare(&config).unwrap();
        let fingerprint = prepared.fingerprint;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tern::server::run(prepared, listener, async {
            let _ = stopped.await;
        }));
        let token = std::fs::read_to_string(tern::server::admin_token_path(&data)).unwrap().trim().to_owned();
        Self {
            client: Client::new(&url, Trust::Pinned(fingerprint), 16 << 20).unwrap(),
            token,
            data,
            fingerprint,
            stop: Some(stop),
            server: Some(server),
            codec: Codec::new(Default::default()).unwrap(),
            counters: Default::default(),
        }
    }

    /// Any call with a raw body; the status and the JSON reply.
    async fn raw(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, bytes) =
            self.client.api(method, path, &self.token, body.map(|b| b.as_bytes().to_vec())).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string()).as_deref()).await
    }

    /// A call that must answer `expect`.
    async fn ok(&mut self, method: &str, path: &str, body: Option<Value>, expect: u16) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, expect, "{method} {path}: {v}");
        v
    }

    async fn create(&mut self, body: Value) -> Value {
        self.ok("POST", "/api/environments", Some(body), 201).await
    }

    async fn list(&mut self, query: &str) -> Vec<Value> {
        let v = self.ok("GET", &format!("/api/environments{query}"), None, 200).await;
        v.as_array().unwrap().clone()
    }

    async fn names(&mut self, query: &str) -> Vec<String> {
        self.list(query).await.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect()
    }

    /// A second connection to the server's database, to stage what only
    /// time or an agent would do (SQLite in WAL mode, or PostgreSQL: both
    /// see each other).
    fn store(&self) -> Store {
        common::open_store(&self.data)
    }

    /// One poll by the agent holding `edge_key` (and the server's
    /// AGENT_SECRET when given): the opened reply, or the refusal status.
    async fn poll(&mut self, edge_key: &str, agent_secret: Option<&str>, req: PollRequest) -> Result<PollReply, u16> {
        let token = JoinToken::parse(edge_key).unwrap();
        let key = token.secret.with_agent_secret(agent_secret);
        let counter = self.counters.entry(token.environment).or_insert(0);
        *counter += 1;
        let counter = *counter;
        let req = PollRequest {
            agent: Some(AgentInfo { version: "test".into(), edge_id: format!("edge-{}", token.environment) }),
            ..req
        };
        let wire =
            tern::auth::seal_request(token.environment, counter, &key, &self.codec.encode(&req.encode()).unwrap());
        let (status, body) = self.client.post(tern::wire::POLL_PATH, wire).await.unwrap();
        if status != 200 {
            return Err(status);
        }
        let body = tern::auth::open_reply(counter, &key, &body).expect("an authentic reply");
        Ok(PollReply::decode(&self.codec.decode(body).unwrap()).unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn err(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id: {v}"))
}

/// The arguments sh makes of a command line, with `docker` replaced by a
/// function that prints them one a line.
fn sh_argv(command: &str) -> Vec<String> {
    let script = format!("docker() {{ printf '%s\\n' \"$@\"; }}\n{command}");
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn an_environment_is_created_with_every_option_and_both_deploy_commands_carry_them() {
    let mut f = Fleet::start("create").await;
    let north = f.ok("POST", "/api/groups", Some(json!({ "name": "North Sea" })), 201).await;
    f.ok("PUT", "/api/settings", Some(json!({ "agent_secret": "s3cr3t pass'word" })), 200).await;
    let c = f
        .create(json!({
            "name": "ship-1",
            "url": "https://ops.example.com:9443/",
            "intervals": { "ping": 0, "snapshot": 3600, "command": 604800 },
            "group": "north sea",
            "tags": ["diesel", "2G"],
            "env_vars": "HTTP_PROXY, https_proxy,,HTTP_PROXY",
            "allow_self_signed": true,
            "volume_path": "/srv/docker/volumes/",
        }))
        .await;
    let env = id(&c);
    let key = c["edge_key"].as_str().unwrap();
    let token = JoinToken::parse(key).unwrap();
    assert_eq!(
        (token.url.as_str(), token.environment, token.cert_sha256),
        ("https://ops.example.com:9443", env, f.fingerprint)
    );
    let edge_id = c["edge_id"].as_str().unwrap();
    assert_eq!((edge_id.len(), &edge_id[14..15], edge_id.matches('-').count()), (36, "4", 4), "{edge_id}");
    let linux = c["commands"]["linux"].as_str().unwrap();
    assert_eq!(
        linux,
        format!(
            "docker run -d --name tern-agent --restart always \\\n  \
             --group-add \"$(stat -c %g /var/run/docker.sock)\" \\\n  \
             --sysctl net.ipv4.tcp_timestamps=0 \\\n  \
             -v /var/run/docker.sock:/var/run/docker.sock \\\n  \
             -v /srv/docker/volumes:/var/lib/docker/volumes \\\n  \
             -v tern-agent-data:/data \\\n  \
             -e EDGE_KEY={key} \\\n  \
             -e EDGE_ID={edge_id} \\\n  \
             -e EDGE_INSECURE_POLL=1 \\\n  \
             -e AGENT_SECRET \\\n  \
             -e HTTP_PROXY \\\n  \
             -e https_proxy \\\n  \
             -e EDGE_HOST_VARS=HTTP_PROXY,https_proxy \\\n  \
             tern-agent:latest agent"
        )
    );
    assert_eq!(c["docker_run"], linux, "docker_run stays the Linux command");
    // The secret is never in a command (they are copied, pasted, logged):
    // docker takes it from the shell that runs it, as the note says.
    let argv = sh_argv(linux);
    assert!(argv.contains(&"AGENT_SECRET".to_owned()), "{argv:?}");
    assert!(!c.to_string().contains("s3cr3t"), "{c}");
    assert!(c["agent_secret_note"].as_str().unwrap().contains("export AGENT_SECRET="), "{c}");
    assert_eq!(argv.last().map(String::as_str), Some("agent"));
    // The socket's group, read by the edge host's shell: one argument.
    let group = argv.iter().position(|a| a == "--group-add").map(|i| argv[i + 1].as_str());
    if let Ok(socket) = std::fs::metadata("/var/run/docker.sock") {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(group, Some(socket.gid().to_string().as_str()), "{argv:?}");
    }
    assert_eq!(
        c["commands"]["windows"].as_str().unwrap(),
        format!(
            r"docker run -d --name tern-agent --restart always -v \\.\pipe\docker_engine:\\.\pipe\docker_engine -v C:\ProgramData\docker\volumes:C:\ProgramData\docker\volumes -v tern-agent-data:C:\data -e DATA_PATH=C:\data -e EDGE_KEY={key} -e EDGE_ID={edge_id} -e EDGE_INSECURE_POLL=1 -e AGENT_SECRET -e HTTP_PROXY -e https_proxy -e EDGE_HOST_VARS=HTTP_PROXY,https_proxy tern-agent:latest agent"
        )
    );
    // Stored: shown in detail, and the deploy commands come back the same.
    let d = f.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(d["group"], json!({ "id": id(&north), "name": "North Sea" }));
    assert_eq!(d["tags"], json!(["2G", "diesel"]));
    assert_eq!(d["env_vars"], json!(["HTTP_PROXY", "https_proxy"]));
    assert_eq!((&d["allow_self_signed"], &d["volume_path"]), (&json!(true), &json!("/srv/docker/volumes")));
    assert_eq!(d["intervals"], json!({ "ping": 0, "snapshot": 3600, "command": 604800 }));
    assert_eq!(d["effective_intervals"], json!({ "ping": 0, "snapshot": 3600, "command": 604800 }));
    assert_eq!((&d["url"], &d["deploy_edge_id"], &d["edge_id"]), (&json!(token.url), &json!(edge_id), &Value::Null));
    assert_eq!(
        (&d["status"], &d["status_window_s"], &d["last_poll_at"]),
        (&json!("offline"), &json!(7220), &Value::Null)
    );
    assert_eq!((&d["seq"], &d["counts"]["containers"]), (&json!(0), &json!(0)));
    let again = f.ok("GET", &format!("/api/environments/{env}/deploy"), None, 200).await;
    assert_eq!(again, c);
    // New tag names were created; the group had to exist.
    let tags = f.ok("GET", "/api/tags", None, 200).await;
    assert_eq!(
        tags.as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap(), t["environments"].as_u64()))
            .collect::<Vec<_>>(),
        [("2G", Some(1)), ("diesel", Some(1))]
    );

    // A Windows volume path goes into the Windows command only; the Linux
    // one keeps its default.
    let w = f
        .create(json!({ "name": "win-1", "url": "https://ops.example.com", "volume_path": "D:\\docker\\volumes" }))
        .await;
    let (wl, ww) = (w["commands"]["linux"].as_str().unwrap(), w["commands"]["windows"].as_str().unwrap());
    assert!(wl.contains("-v /var/lib/docker/volumes:/var/lib/docker/volumes"), "{wl}");
    assert!(ww.contains(r"-v D:\docker\volumes:C:\ProgramData\docker\volumes"), "{ww}");
    assert!(!wl.contains("EDGE_INSECURE_POLL") && !ww.contains("EDGE_INSECURE_POLL"));
    // Without a server AGENT_SECRET, no AGENT_SECRET in the commands.
    f.ok("PUT", "/api/settings", Some(json!({ "agent_secret": null })), 200).await;
    let plain = f.create(json!({ "name": "plain", "url": "https://ops.example.com" })).await;
    let pl = plain["commands"]["linux"].as_str().unwrap();
    assert!(!pl.contains("AGENT_SECRET") && !plain["commands"]["windows"].as_str().unwrap().contains("AGENT_SECRET"));
    assert!(plain.get("agent_secret_note").is_none(), "{plain}");
    let argv = sh_argv(pl);
    assert_eq!(argv[..4], ["run", "-d", "--name", "tern-agent"]);
    assert!(argv.contains(&format!("EDGE_ID={}", plain["edge_id"].as_str().unwrap())));
    f.stop().await;
}

#[tokio::test]
async fn the_list_filters_by_group_tag_status_and_name_and_pages_without_decoding_states() {
    let mut f = Fleet::start("list").await;
    let g1 = id(&f.ok("POST", "/api/groups", Some(json!({ "name": "yards" })), 201).await);
    f.ok("POST", "/api/groups", Some(json!({ "name": "ships" })), 201).await;
    let mut keys = Vec::new();
    for i in 0..12 {
        let group = if i % 2 == 0 { json!("yards") } else { json!("ships") };
        let tags = if i % 3 == 0 { json!(["solar"]) } else { json!([]) };
        let c = f
            .create(
                json!({ "name": format!("site-{i}"), "url": "https://ops.example.com", "group": group, "tags": tags }),
            )
            .await;
        keys.push(c["edge_key"].as_str().unwrap().to_owned());
    }
    assert_eq!(f.list("").await.len(), 12);
    assert_eq!(f.names("?group=yards").await, ["site-0", "site-2", "site-4", "site-6", "site-8", "site-10"]);
    assert_eq!(f.names(&format!("?group={g1}")).await, f.names("?group=YARDS").await, "by id or name, any case");
    assert_eq!(f.names("?tag=solar").await, ["site-0", "site-3", "site-6", "site-9"]);
    assert_eq!(f.names("?name=SITE-1").await, ["site-1", "site-10", "site-11"]);
    assert_eq!(f.names("?group=yards&tag=solar&name=6").await, ["site-6"]);
    assert_eq!(f.names("?name=site%2D1%30").await, ["site-10"], "%-escapes");
    // Paging, by id.
    assert_eq!(f.names("?limit=5").await, ["site-0", "site-1", "site-2", "site-3", "site-4"]);
    assert_eq!(f.names("?limit=5&offset=10").await, ["site-10", "site-11"]);
    assert!(f.names("?limit=0").await.is_empty());
    assert!(f.names("?offset=99").await.is_empty());
    // Status: two agents poll.
    for i in [4, 7] {
        let key = keys[i].clone();
        f.poll(&key, None, PollRequest::default()).await.unwrap();
    }
    assert_eq!(f.names("?status=online").await, ["site-4", "site-7"]);
    assert_eq!(f.names("?status=offline&group=ships").await, ["site-1", "site-3", "site-5", "site-9", "site-11"]);
    let online = f.list("?status=online&limit=1").await;
    let e = &online[0];
    assert_eq!((&e["edge_id"], &e["status"]), (&json!("edge-5"), &json!("online")));
    assert!(e["last_poll_age_s"].as_i64().unwrap() < 5 && e["last_poll_at"].as_i64().unwrap() > now() - 5);

    // Counts come from the environment's row, kept where the state is
    // saved: the list reads no stored state, so a corrupt one does not
    // stop it.
    let mut state = State::default();
    for (n, status, health) in [
        (1, ContainerStatus::Running, Health::Healthy),
        (2, ContainerStatus::Running, Health::Unhealthy),
        (3, ContainerStatus::Exited, Health::None),
        (4, ContainerStatus::Paused, Health::None),
        (5, ContainerStatus::Created, Health::None),
    ] {
        state.containers.insert(Container {
            id: Id([n; 32]),
            name: format!("c{n}"),
            status,
            health,
            ..Container::default()
        });
    }
    state.images.insert(Image { id: Id([9; 32]), tags: vec!["x:1".into()], ..Image::default() });
    let mut replica = Replica::default();
    replica.receive(0, Some(&tern::sync::diff(&State::default(), &state)));
    let store = f.store();
    let site0 = id(&f.list("?name=site-0").await[0]);
    store.autocommit().save_replica(site0, &replica, now()).unwrap();
    let e = &f.list("?name=site-0").await[0];
    assert_eq!(
        e["counts"],
        json!({ "containers": 5, "running": 2, "paused": 1, "stopped": 2, "unhealthy": 1,
                "images": 1, "volumes": 0, "networks": 0, "stacks": 0 })
    );
    assert!(e["snapshot_age_s"].as_i64().unwrap() < 5);
    drop(store);
    let db = f.store();
    db.autocommit()
        .execute(
            "UPDATE replicas SET state = ?2 WHERE environment = ?1",
            tern::sql_params![site0 as i64, vec![0u8, 0xff]],
        )
        .unwrap();
    drop(db);
    assert_eq!(f.list("?name=site-0").await[0]["counts"]["containers"], 5, "listing never decodes a state");

    // Bad filters: a clear error.
    for (query, status, text) in [
        ("?group=docks", 422, "no group \"docks\""),
        ("?tag=wind", 422, "no tag \"wind\""),
        ("?status=sleeping", 422, "online or offline"),
        ("?limit=5000", 422, "limit: a number from 0 to 1000"),
        ("?offset=-1", 422, "offset"),
        ("?colour=red", 400, "unknown parameter \"colour\""),
        ("?name=%zz", 400, "%-escape"),
    ] {
        let (got, v) = f.call("GET", &format!("/api/environments{query}"), None).await;
        assert_eq!(got, status, "{query}: {v}");
        assert!(err(&v).contains(text), "{query}: {v}");
    }
    f.stop().await;
}

#[tokio::test]
async fn status_is_online_while_the_last_poll_is_within_twice_the_smallest_interval_plus_20_s() {
    let mut f = Fleet::start("status").await;
    let mut ids = std::collections::BTreeMap::new();
    for (name, intervals) in [
        ("default-recent", json!(null)),
        ("default-late", json!(null)),
        ("slow-recent", json!({ "ping": 0, "snapshot": 3600, "command": 600 })),
        ("slow-late", json!({ "ping": 0, "snapshot": 3600, "command": 600 })),
        ("pending-change", json!({ "ping": 60 })),
        ("never", json!(null)),
    ] {
        let mut body = json!({ "name": name, "url": "https://ops.example.com" });
        if !intervals.is_null() {
            body["intervals"] = intervals;
        }
        ids.insert(name, id(&f.create(body).await));
    }
    let store = f.store();
    let t = now();
    for (name, ago) in [
        ("default-recent", 120),
        ("default-late", 160),
        ("slow-recent", 1150),
        ("slow-late", 1300),
        ("pending-change", 1150),
    ] {
        assert!(store.autocommit().accept_poll(ids[name], 1, Some("edge"), t - ago).unwrap());
    }
    // Its agent still runs with 10 minutes: it has not polled since the
    // operator shortened its interval, and must not look offline for it.
    store
        .autocommit()
        .set_agent_intervals(ids["pending-change"], Intervals { ping: 600, snapshot: 600, command: 600 })
        .unwrap();
    let status = async |f: &mut Fleet| -> Vec<(String, String, i64)> {
        f.list("")
            .await
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["status"].as_str().unwrap().into(),
                    e["status_window_s"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let on_off = |v: &[(String, String, i64)]| v.iter().map(|(n, s, w)| format!("{n} {s} {w}")).collect::<Vec<_>>();
    assert_eq!(
        on_off(&status(&mut f).await),
        [
            "default-recent online 140",
            "default-late offline 140",
            "slow-recent online 1220",
            "slow-late offline 1220",
            "pending-change online 1220",
            "never offline 140",
        ]
    );
    let never = f.ok("GET", &format!("/api/environments/{}", ids["never"]), None, 200).await;
    assert_eq!((&never["last_poll_at"], &never["last_poll_age_s"]), (&Value::Null, &Value::Null));
    // The rule follows the server defaults: a 30 s ping makes the window
    // 80 s for those that use it.
    f.ok("PUT", "/api/settings", Some(json!({ "intervals": { "ping": 30 } })), 200).await;
    let after = on_off(&status(&mut f).await);
    assert_eq!(after[..2], ["default-recent offline 80", "default-late offline 80"]);
    assert_eq!(after[2], "slow-recent online 1220", "its own intervals: unchanged");
    assert_eq!(f.names("?status=online").await, ["slow-recent", "pending-change"]);
    drop(store);
    f.stop().await;
}

#[tokio::test]
async fn environments_are_renamed_moved_tagged_changed_and_deleted_with_everything_theirs() {
    let mut f = Fleet::start("change").await;
    let yards = id(&f.ok("POST", "/api/groups", Some(json!({ "name": "yards" })), 201).await);
    let ships = id(&f.ok("POST", "/api/groups", Some(json!({ "name": "ships" })), 201).await);
    let c = f.create(json!({ "name": "ship-1", "url": "https://ops.example.com", "group": "yards" })).await;
    let env = id(&c);
    f.create(json!({ "name": "ship-2", "url": "https://ops.example.com" })).await;
    let path = format!("/api/environments/{env}");
    let d = f.ok("PATCH", &path, Some(json!({ "name": "  trawler-1 " })), 200).await;
    assert_eq!(d["name"], "trawler-1");
    let d = f.ok("PATCH", &path, Some(json!({ "group": ships })), 200).await;
    assert_eq!(d["group"], json!({ "id": ships, "name": "ships" }));
    let d = f.ok("PATCH", &path, Some(json!({ "group": "YARDS" })), 200).await;
    assert_eq!(d["group"]["id"], yards);
    let d = f.ok("PATCH", &path, Some(json!({ "group": null })), 200).await;
    assert_eq!(d["group"], Value::Null);
    let d = f.ok("PATCH", &path, Some(json!({ "tags": ["b", "a", "B"] })), 200).await;
    assert_eq!(d["tags"], json!(["a", "b"]), "names are case-insensitive: B is b");
    let d = f
        .ok(
            "PATCH",
            &path,
            Some(json!({ "env_vars": ["NO_PROXY"], "allow_self_signed": true, "volume_path": "/data/docker",
                         "url": "https://new.example.com:8443" })),
            200,
        )
        .await;
    assert_eq!(
        (&d["env_vars"], &d["allow_self_signed"], &d["volume_path"], &d["url"], &d["name"]),
        (
            &json!(["NO_PROXY"]),
            &json!(true),
            &json!("/data/docker"),
            &json!("https://new.example.com:8443"),
            &json!("trawler-1")
        )
    );
    let deploy = f.ok("GET", &format!("{path}/deploy"), None, 200).await;
    assert_eq!(JoinToken::parse(deploy["edge_key"].as_str().unwrap()).unwrap().url, "https://new.example.com:8443");
    assert!(deploy["docker_run"].as_str().unwrap().contains("-v /data/docker:/var/lib/docker/volumes"));
    assert!(deploy["docker_run"].as_str().unwrap().contains("--sysctl net.ipv4.tcp_timestamps=0"));
    assert_eq!(d["tcp_timestamps"], json!(false), "off unless asked");
    // Kept: the Linux command leaves the sysctl out (hosts before Linux 4.15).
    let d = f.ok("PATCH", &path, Some(json!({ "tcp_timestamps": true })), 200).await;
    assert_eq!(d["tcp_timestamps"], json!(true));
    let deploy = f.ok("GET", &format!("{path}/deploy"), None, 200).await;
    assert!(!deploy["docker_run"].as_str().unwrap().contains("--sysctl"), "{}", deploy["docker_run"]);
    assert!(deploy["docker_run"].as_str().unwrap().contains("-v /data/docker:/var/lib/docker/volumes"));
    assert_eq!(deploy["edge_id"], c["edge_id"], "the EDGE_ID stays");
    let d = f.ok("PATCH", &path, Some(json!({ "tags": [], "env_vars": "", "volume_path": null })), 200).await;
    assert_eq!((&d["tags"], &d["env_vars"], &d["volume_path"]), (&json!([]), &json!([]), &Value::Null));
    assert_eq!(
        f.ok("PATCH", &path, Some(json!({})), 200).await["name"],
        "trawler-1",
        "an empty change changes nothing"
    );

    // Its agent polls with a state, commands are queued; delete takes all.
    let key = c["edge_key"].as_str().unwrap().to_owned();
    let mut state = State::default();
    state.containers.insert(Container { id: Id([1; 32]), name: "web".into(), ..Container::default() });
    let delta = tern::sync::diff(&State::default(), &state);
    let r = f.poll(&key, None, PollRequest { base: 0, delta: Some(delta), ..PollRequest::default() }).await.unwrap();
    assert_eq!(r.acked, 1);
    f.ok("POST", &format!("{path}/commands"), Some(json!({ "action": "image.pull", "target": "busybox:1" })), 201)
        .await;
    f.ok("PATCH", &path, Some(json!({ "tags": ["a"], "group": "ships" })), 200).await;
    assert_eq!(f.ok("DELETE", &path, None, 204).await, Value::Null);
    for p in [path.clone(), format!("{path}/state"), format!("{path}/deploy"), format!("{path}/commands")] {
        let (status, v) = f.call("GET", &p, None).await;
        assert_eq!((status, err(&v)), (404, format!("no environment {env}").as_str()), "{p}");
    }
    let store = f.store();
    assert_eq!(store.autocommit().replica(env).unwrap(), Replica::default(), "its stored state is gone");
    assert!(store.autocommit().commands(env, 10).is_err());
    assert_eq!(f.ok("GET", &format!("/api/groups/{ships}"), None, 200).await["environments"], 0);
    assert_eq!(f.ok("GET", "/api/tags", None, 200).await[0]["environments"], 0);
    assert_eq!(f.poll(&key, None, PollRequest::default()).await.unwrap_err(), 401, "its agent is refused");
    assert_eq!(f.names("").await, ["ship-2"]);
    let (status, _) = f.call("DELETE", &path, None).await;
    assert_eq!(status, 404);
    // Reset the binding: the list item comes back.
    let other = id(&f.list("").await[0]);
    let v = f.ok("POST", &format!("/api/environments/{other}/reset-binding"), None, 200).await;
    assert_eq!((&v["name"], &v["edge_id"], &v["status"]), (&json!("ship-2"), &Value::Null, &json!("offline")));
    drop(store);
    f.stop().await;
}

#[tokio::test]
async fn groups_and_tags_are_created_listed_renamed_and_deleted() {
    let mut f = Fleet::start("labels").await;
    for (kind, other) in [("groups", "tags"), ("tags", "groups")] {
        let base = format!("/api/{kind}");
        let b = f.ok("POST", &base, Some(json!({ "name": " Beta " })), 201).await;
        assert_eq!((&b["name"], &b["environments"]), (&json!("Beta"), &json!(0)));
        let a = f.ok("POST", &base, Some(json!({ "name": "alpha" })), 201).await;
        let (status, v) = f.call("POST", &base, Some(json!({ "name": "BETA" }))).await;
        assert_eq!(status, 409, "{v}");
        assert!(err(&v).contains("named \"BETA\" exists already"), "{v}");
        let list = f.ok("GET", &base, None, 200).await;
        assert_eq!(
            list.as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect::<Vec<_>>(),
            ["alpha", "Beta"]
        );
        let r = f.ok("PATCH", &format!("{base}/{}", id(&a)), Some(json!({ "name": "Alpha" })), 200).await;
        assert_eq!(r["name"], "Alpha", "a change of case only is allowed");
        let (status, _) = f.call("PATCH", &format!("{base}/{}", id(&a)), Some(json!({ "name": "beta" }))).await;
        assert_eq!(status, 409);
        for (method, body) in [("GET", None), ("PATCH", Some(json!({ "name": "x" }))), ("DELETE", None)] {
            let (status, v) = f.call(method, &format!("{base}/999"), body).await;
            assert_eq!(status, 404, "{method} {base}/999: {v}");
            assert!(err(&v).ends_with("999"), "{v}");
        }
        let (status, v) = f.call("GET", &format!("{base}/abc"), None).await;
        assert_eq!(status, 400, "{v}");
        let _ = other;
    }
    // An environment in a group, with tags; deleting them leaves it with
    // none.
    let e = f
        .create(json!({ "name": "site", "url": "https://ops.example.com", "group": "alpha", "tags": ["alpha", "beta", "new"] }))
        .await;
    let env = id(&e);
    let groups = f.ok("GET", "/api/groups", None, 200).await;
    assert_eq!(groups[0]["environments"], 1);
    let alpha_group = id(&groups[0]);
    let tags = f.ok("GET", "/api/tags", None, 200).await;
    assert_eq!(tags.as_array().unwrap().len(), 3, "new was created: {tags}");
    f.ok("DELETE", &format!("/api/groups/{alpha_group}"), None, 204).await;
    let beta_tag = id(&tags[1]);
    f.ok("DELETE", &format!("/api/tags/{beta_tag}"), None, 204).await;
    let d = f.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!((&d["group"], &d["tags"]), (&Value::Null, &json!(["Alpha", "new"])));
    f.stop().await;
}

#[tokio::test]
async fn a_settings_change_reaches_only_the_agents_that_follow_the_defaults_through_the_poll_handler() {
    let mut f = Fleet::start("settings").await;
    let s = f.ok("GET", "/api/settings", None, 200).await;
    assert_eq!(
        s,
        json!({ "intervals": { "ping": 60, "snapshot": 60, "command": 60 }, "agent_secret_set": false,
                "following_defaults": { "ping": 0, "snapshot": 0, "command": 0 } })
    );
    let follows = f.create(json!({ "name": "follows", "url": "https://ops.example.com" })).await;
    let own = f
        .create(json!({ "name": "own", "url": "https://ops.example.com",
                        "intervals": { "ping": 120, "snapshot": 600, "command": 120 } }))
        .await;
    let half =
        f.create(json!({ "name": "half", "url": "https://ops.example.com", "intervals": { "snapshot": 600 } })).await;
    let keys: Vec<String> =
        [&follows, &own, &half].iter().map(|c| c["edge_key"].as_str().unwrap().to_owned()).collect();
    // First contact: each is told its intervals, then reports them.
    let mut running = Vec::new();
    for key in &keys {
        let told = f.poll(key, None, PollRequest::default()).await.unwrap().intervals.expect("told at first contact");
        let r = f.poll(key, None, PollRequest { intervals: Some(told), ..PollRequest::default() }).await.unwrap();
        assert_eq!(r.intervals, None, "nothing to say once the agent runs with them");
        running.push(told);
    }
    assert_eq!(running[0], Intervals { ping: 60, snapshot: 60, command: 60 });
    assert_eq!(running[1], Intervals { ping: 120, snapshot: 600, command: 120 });
    // The operator changes the defaults.
    let s = f.ok("PUT", "/api/settings", Some(json!({ "intervals": { "ping": 30, "snapshot": 300 } })), 200).await;
    assert_eq!(s["intervals"], json!({ "ping": 30, "snapshot": 300, "command": 60 }));
    assert_eq!(s["following_defaults"], json!({ "ping": 2, "snapshot": 1, "command": 2 }));
    let next: Vec<Option<Intervals>> = {
        let mut out = Vec::new();
        for (key, r) in keys.iter().zip(&running) {
            out.push(
                f.poll(key, None, PollRequest { intervals: Some(*r), ..PollRequest::default() })
                    .await
                    .unwrap()
                    .intervals,
            );
        }
        out
    };
    assert_eq!(
        next,
        [
            Some(Intervals { ping: 30, snapshot: 300, command: 60 }),
            None,
            Some(Intervals { ping: 30, snapshot: 600, command: 60 }),
        ],
        "only the defaults it follows change for each"
    );
    // An AGENT_SECRET: write-only, and agents must then hold it.
    let s = f.ok("PUT", "/api/settings", Some(json!({ "agent_secret": "s3cret" })), 200).await;
    assert_eq!((&s["agent_secret_set"], s.get("agent_secret")), (&json!(true), None));
    assert!(!f.ok("GET", "/api/settings", None, 200).await.to_string().contains("s3cret"));
    assert_eq!(f.poll(&keys[0], None, PollRequest::default()).await.unwrap_err(), 403);
    f.poll(&keys[0], Some("s3cret"), PollRequest::default()).await.unwrap();
    let deploy = f.ok("GET", &format!("/api/environments/{}/deploy", id(&follows)), None, 200).await;
    assert!(deploy["docker_run"].as_str().unwrap().contains("-e AGENT_SECRET \\\n"), "{deploy}");
    assert!(!deploy.to_string().contains("s3cret"), "the secret is write-only, in the deploy output too: {deploy}");
    let s = f.ok("PUT", "/api/settings", Some(json!({ "agent_secret": "" })), 200).await;
    assert_eq!(s["agent_secret_set"], false);
    f.poll(&keys[0], None, PollRequest::default()).await.unwrap();
    f.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let mut f = Fleet::start("bad").await;
    f.ok("POST", "/api/groups", Some(json!({ "name": "yards" })), 201).await;
    f.ok("POST", "/api/tags", Some(json!({ "name": "solar" })), 201).await;
    let e = f
        .create(json!({ "name": "ship-1", "url": "https://ops.example.com", "group": "yards", "tags": ["solar"],
                        "intervals": { "ping": 0, "snapshot": 0 } }))
        .await;
    let env = id(&e);
    f.create(json!({ "name": "ship-2", "url": "https://ops.example.com" })).await;
    let snapshot = async |f: &mut Fleet| -> Vec<Value> {
        let mut all = Vec::new();
        for p in ["/api/environments", "/api/groups", "/api/tags", "/api/settings"] {
            all.push(f.ok("GET", p, None, 200).await);
        }
        for e in f.list("").await {
            all.push(f.ok("GET", &format!("/api/environments/{}", id(&e)), None, 200).await);
        }
        all
    };
    let before = snapshot(&mut f).await;
    let ok = |name: &str| json!({ "name": name, "url": "https://ops.example.com" });
    let with = |field: &str, value: Value| {
        let mut b = ok("new");
        b[field] = value;
        b
    };
    let envp = format!("/api/environments/{env}");
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        // Malformed and mistyped bodies.
        ("POST", "/api/environments".into(), Some("{\"name\":".into()), 400, ""),
        ("POST", "/api/environments".into(), Some("[]".into()), 422, ""),
        (
            "POST",
            "/api/environments".into(),
            Some(json!({ "name": 5, "url": "https://a" }).to_string()),
            422,
            "invalid type",
        ),
        ("POST", "/api/environments".into(), Some(with("colour", json!("red")).to_string()), 422, "unknown field"),
        (
            "POST",
            "/api/environments".into(),
            Some(with("group", json!(true)).to_string()),
            422,
            "a name or a numeric id",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("allow_self_signed", json!("yes")).to_string()),
            422,
            "invalid type",
        ),
        // Field values.
        ("POST", "/api/environments".into(), Some(ok("ship-1").to_string()), 409, "exists already"),
        ("POST", "/api/environments".into(), Some(ok(" ").to_string()), 422, "name: 1 to 128"),
        ("POST", "/api/environments".into(), Some(json!({ "name": "x", "url": "http://a" }).to_string()), 422, "url"),
        ("POST", "/api/environments".into(), Some(json!({ "name": "x", "url": "https://" }).to_string()), 422, "url"),
        (
            "POST",
            "/api/environments".into(),
            Some(with("intervals", json!({ "ping": 604801 })).to_string()),
            422,
            "at most 604800",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("intervals", json!({ "ping": "1h" })).to_string()),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("intervals", json!({ "ping": 0, "snapshot": 0, "command": 0 })).to_string()),
            422,
            "at least one",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!("HTTP-PROXY")).to_string()),
            422,
            "\"HTTP-PROXY\" is not a variable name",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!("1ABC")).to_string()),
            422,
            "not a variable name",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!("A;rm -rf /")).to_string()),
            422,
            "not a variable name",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!("HOME,EDGE_KEY")).to_string()),
            422,
            "EDGE_KEY is set by the deploy command",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!(["EDGE_INSECURE"])).to_string()),
            422,
            "not a setting the agent knows",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("env_vars", json!((0..33).map(|i| format!("V{i}")).collect::<Vec<_>>())).to_string()),
            422,
            "at most 32",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("volume_path", json!("relative/path")).to_string()),
            422,
            "volume_path",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("volume_path", json!("/srv/with space")).to_string()),
            422,
            "volume_path",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("volume_path", json!("/srv/../etc")).to_string()),
            422,
            "volume_path",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("volume_path", json!("/srv/$HOME")).to_string()),
            422,
            "volume_path",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("volume_path", json!("C:/docker")).to_string()),
            422,
            "volume_path",
        ),
        (
            "POST",
            "/api/environments".into(),
            Some(with("group", json!("docks")).to_string()),
            422,
            "no group \"docks\"",
        ),
        ("POST", "/api/environments".into(), Some(with("group", json!(999)).to_string()), 422, "no group \"999\""),
        (
            "POST",
            "/api/environments".into(),
            Some(with("tags", json!(["fresh", 999])).to_string()),
            422,
            "no tag \"999\"",
        ),
        ("POST", "/api/environments".into(), Some(with("tags", json!(["a,b"])).to_string()), 422, "no commas"),
        // Changes.
        ("PATCH", "/api/environments/999".into(), Some(json!({ "name": "x" }).to_string()), 404, "no environment 999"),
        ("PATCH", envp.clone(), Some("{".into()), 400, ""),
        ("PATCH", envp.clone(), Some(json!({ "name": "ship-2" }).to_string()), 409, "exists already"),
        ("PATCH", envp.clone(), Some(json!({ "name": "renamed", "group": "docks" }).to_string()), 422, "no group"),
        ("PATCH", envp.clone(), Some(json!({ "name": "renamed", "tags": ["fresh", 999] }).to_string()), 422, "no tag"),
        (
            "PATCH",
            envp.clone(),
            Some(json!({ "env_vars": "AGENT_SECRET" }).to_string()),
            422,
            "set by the deploy command",
        ),
        ("PATCH", envp.clone(), Some(json!({ "edge_id": "x" }).to_string()), 422, "unknown field"),
        ("PATCH", envp.clone(), Some(json!({ "url": "ftp://x" }).to_string()), 422, "url"),
        ("DELETE", "/api/environments/999".into(), None, 404, "no environment 999"),
        ("GET", "/api/environments/999/deploy".into(), None, 404, "no environment 999"),
        ("GET", "/api/environments/999/state".into(), None, 404, "no environment 999"),
        ("GET", "/api/environments/999/state/containers".into(), None, 404, "no environment 999"),
        ("GET", format!("{envp}/state/secrets"), None, 404, "no part \"secrets\""),
        ("GET", "/api/environments/x/state/containers".into(), None, 400, "ids are numbers"),
        // Settings.
        ("PUT", "/api/settings".into(), Some("nope".into()), 400, ""),
        (
            "PUT",
            "/api/settings".into(),
            Some(json!({ "intervals": { "ping": 0, "snapshot": 0, "command": 0 } }).to_string()),
            422,
            "at least one",
        ),
        (
            "PUT",
            "/api/settings".into(),
            Some(json!({ "intervals": { "ping": 604801 } }).to_string()),
            422,
            "at most 604800",
        ),
        (
            "PUT",
            "/api/settings".into(),
            Some(json!({ "intervals": { "command": 0 } }).to_string()),
            422,
            "would leave 1 environment",
        ),
        (
            "PUT",
            "/api/settings".into(),
            Some(json!({ "agent_secret": "a\nb" }).to_string()),
            422,
            "no control characters",
        ),
        ("PUT", "/api/settings".into(), Some(json!({ "admin": true }).to_string()), 422, "unknown field"),
        // Groups and tags.
        ("POST", "/api/groups".into(), Some(json!({ "name": "" }).to_string()), 422, "name: 1 to 64"),
        ("POST", "/api/groups".into(), Some(json!({ "name": "YARDS" }).to_string()), 409, "exists already"),
        ("POST", "/api/tags".into(), Some(json!({ "name": "x".repeat(65) }).to_string()), 422, "1 to 64"),
        ("POST", "/api/tags".into(), Some(json!({ "name": "bad\u{7}" }).to_string()), 422, "control"),
        ("PATCH", "/api/groups/999".into(), Some(json!({ "name": "x" }).to_string()), 404, "no group 999"),
        ("DELETE", "/api/tags/999".into(), None, 404, "no tag 999"),
    ];
    for (method, path, body, status, text) in cases {
        let (got, v) = f.raw(method, &path, body.as_deref()).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {v}");
        assert!(!err(&v).is_empty() && err(&v).contains(text), "{method} {path} {body:?}: {v}");
    }
    assert_eq!(snapshot(&mut f).await, before, "nothing changed");
    f.stop().await;
}

#[tokio::test]
async fn the_stored_state_is_served_whole_or_by_part_with_its_age() {
    let mut f = Fleet::start("state").await;
    let c = f.create(json!({ "name": "ship", "url": "https://ops.example.com" })).await;
    let env = id(&c);
    let v = f.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
    assert_eq!(
        (&v["seq"], &v["as_of"], &v["snapshot_age_s"], &v["status"]),
        (&json!(0), &Value::Null, &Value::Null, &json!("offline"))
    );
    let mut state = State::default();
    state.host.hostname = "ship".into();
    state.containers.insert(Container { id: Id([1; 32]), name: "web".into(), ..Container::default() });
    let delta = tern::sync::diff(&State::default(), &state);
    let key = c["edge_key"].as_str().unwrap().to_owned();
    f.poll(&key, None, PollRequest { base: 0, delta: Some(delta), ..PollRequest::default() }).await.unwrap();
    let v = f.ok("GET", &format!("/api/environments/{env}/state"), None, 200).await;
    assert_eq!((&v["seq"], &v["status"], &v["host"]["hostname"]), (&json!(1), &json!("online"), &json!("ship")));
    assert!(v["as_of"].as_i64().unwrap() >= now() - 5 && v["snapshot_age_s"].as_i64().unwrap() < 5, "{v}");
    // A snapshot stored five minutes ago is five minutes old.
    let store = f.store();
    let replica = store.autocommit().replica(env).unwrap();
    store.autocommit().save_replica(env, &replica, now() - 300).unwrap();
    let part = f.ok("GET", &format!("/api/environments/{env}/state/containers"), None, 200).await;
    let mut keys: Vec<&str> = part.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["as_of", "containers", "root", "seq", "snapshot_age_s", "status"]);
    assert_eq!(part["containers"][0]["name"], "web");
    assert!((299..310).contains(&part["snapshot_age_s"].as_i64().unwrap()), "{part}");
    let host = f.ok("GET", &format!("/api/environments/{env}/state/host"), None, 200).await;
    assert_eq!(host["host"]["hostname"], "ship");
    for p in ["images", "volumes", "networks", "stacks"] {
        let v = f.ok("GET", &format!("/api/environments/{env}/state/{p}"), None, 200).await;
        assert!(v[p].is_array(), "{p}: {v}");
    }
    let d = f.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!((&d["seq"], &d["root"]), (&json!(1), &json!(blake3::Hash::from(state.root()).to_hex().to_string())));
    drop(store);
    f.stop().await;
}

fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{table}"))
}

#[test]
fn the_cli_adds_lists_changes_and_sets_through_the_real_binaries() {
    let data = common::tempdir("tern-cli-fleet");
    // A given admin password: the server then prints no fourth line (a
    // generated password) into a pipe the helper stops reading after three.
    let server = common::Server::start_with(&data, "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", "fleet-test-password-1")]);
    let t = |args: &[&str]| tern(&server, args).unwrap_or_else(|e| panic!("tern {args:?}: {e}"));
    assert!(t(&["group", "add", "North Sea"]).contains("group 1 (North Sea) created"));
    let out = t(&[
        "env",
        "add",
        "--name",
        "ship-1",
        "--url",
        "https://ops.example.com:9443",
        "--group",
        "north sea",
        "--tag",
        "diesel,2G",
        "--env-vars",
        "HTTP_PROXY",
        "--allow-self-signed",
        "--volume-path",
        "/srv/docker/volumes",
        "--snapshot",
        "1h",
        "--ping",
        "off",
    ]);
    let key = out.lines().find_map(|l| l.strip_prefix("EDGE_KEY=")).expect("the join token");
    let edge_id = out.lines().find_map(|l| l.strip_prefix("EDGE_ID=")).expect("the EDGE_ID");
    assert!(out.contains("Linux:") && out.contains("Windows (PowerShell):"), "{out}");
    for part in [
        format!("-e EDGE_KEY={key}"),
        format!("-e EDGE_ID={edge_id}"),
        "-e EDGE_INSECURE_POLL=1".into(),
        "-e HTTP_PROXY".into(),
        "-v /srv/docker/volumes:/var/lib/docker/volumes".into(),
        r"-v \\.\pipe\docker_engine:\\.\pipe\docker_engine".into(),
    ] {
        assert!(out.contains(&part), "{part} in\n{out}");
    }
    assert_eq!(JoinToken::parse(key).unwrap().url, "https://ops.example.com:9443");
    t(&["env", "add", "--name", "yard"]);
    let list = t(&["env", "list"]);
    assert!(list.starts_with("ID  NAME"), "{list}");
    assert!(list.lines().next().unwrap().contains("STATUS") && list.lines().next().unwrap().contains("SNAPSHOT"));
    let ship = row(&list, "ship-1");
    assert!(ship.contains("North Sea") && ship.contains("2G,diesel") && ship.contains("offline"), "{ship}");
    assert!(ship.contains("never") && ship.contains("0 running, 0 stopped"), "{ship}");
    assert!(row(&list, "yard").contains(" - "), "{list}");
    let grouped = t(&["env", "list", "--group", "North Sea"]);
    assert_eq!(grouped.lines().count(), 2, "{grouped}");
    assert_eq!(t(&["env", "list", "--tag", "2g", "--status", "offline", "--name", "SHIP"]).lines().count(), 2);
    assert_eq!(t(&["env", "list", "--status", "online"]).lines().count(), 1, "only the header");
    let e = tern(&server, &["env", "list", "--group", "docks"]).unwrap_err();
    assert!(e.contains("no group \"docks\""), "{e}");

    let s = t(&["settings", "set", "--ping", "2m", "--command", "1h", "--agent-secret", "s3cret"]);
    assert!(s.contains("ping:         2 min     (followed by 1 environments)"), "{s}");
    assert!(s.contains("snapshot:     60 s      (followed by 1 environments)"), "{s}");
    assert!(s.contains("command:      1 h       (followed by 2 environments)"), "{s}");
    assert!(s.contains("agent secret: set"), "{s}");
    assert_eq!(t(&["settings", "show"]), s);
    assert!(tern(&server, &["settings", "set", "--ping", "soon"]).unwrap_err().contains("interval \"soon\""));
    assert!(tern(&server, &["settings", "set"]).unwrap_err().contains("nothing to set"));

    let show = t(&["env", "show", "ship-1"]);
    for line in [
        "group:            North Sea",
        "tags:             2G,diesel",
        "intervals:        ping off, snapshot 1 h, command 1 h (default)",
        "env vars:         HTTP_PROXY",
        "self-signed:      allowed",
        "volume path:      /srv/docker/volumes",
    ] {
        assert!(show.contains(line), "{line} in\n{show}");
    }
    let deploy = t(&["env", "deploy", "yard"]);
    assert!(deploy.contains("-e AGENT_SECRET \\\n") && !deploy.contains("s3cret"), "{deploy}");
    assert!(deploy.contains("export AGENT_SECRET="), "the CLI says where the secret comes from: {deploy}");
    assert!(t(&["env", "rename", "yard", "depot"]).contains("renamed to depot"));
    assert!(t(&["env", "move", "depot", "--group", "1"]).contains("is in group North Sea"));
    assert!(t(&["env", "tag", "depot", "red", "blue"]).contains("tags: blue,red"));
    assert!(t(&["env", "tag", "depot", "--remove", "RED"]).contains("tags: blue"));
    assert_eq!(row(&t(&["env", "list", "--tag", "blue"]), "depot").split_whitespace().next(), Some("2"));
    assert!(t(&["env", "move", "depot", "--no-group"]).contains("is in group -"));
    let tags = t(&["tag", "list"]);
    assert!(tags.contains("red") && row(&tags, "blue").ends_with('1'), "{tags}");
    assert!(t(&["tag", "rename", "red", "crimson"]).contains("renamed to crimson"));
    assert!(t(&["tag", "rm", "crimson"]).contains("deleted"));
    assert!(t(&["env", "reset-binding", "depot"]).contains("the next agent to poll binds it"));
    let state = t(&["env", "state", "depot"]);
    assert!(state.starts_with("as of never (seq 0), offline") && state.contains("containers 0"), "{state}");
    assert!(t(&["env", "state", "depot", "containers"]).contains("NAME  STATUS  HEALTH  IMAGE  ID"));
    let queued = t(&["cmd", "depot", "image.pull", "busybox:1"]);
    assert!(queued.contains("image.pull busybox:1 queued"), "{queued}");
    let history = t(&["commands", "depot"]);
    assert!(history.contains("image.pull") && history.contains("queued"), "{history}");
    assert!(t(&["env", "rm", "depot"]).contains("environment 2 deleted"));
    assert!(tern(&server, &["env", "show", "depot"]).unwrap_err().contains("no environment named \"depot\""));
    let json: Value = serde_json::from_str(&t(&["env", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    drop(server);
    let _ = std::fs::remove_dir_all(Path::new(&data));
}
