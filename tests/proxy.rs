//! The agent through a site's HTTP proxy (issue #17), with the real `tern
//! server` and `tern agent`, the machine's Docker engine and Debian's
//! `tinyproxy`:
//!
//! * the agent runs in a network namespace of its own, from which the
//!   server (on the host's loopback) cannot be reached at all; tinyproxy,
//!   with Basic credentials, listens on the namespace's link and is the
//!   only way out;
//! * with `HTTPS_PROXY=http://user:password@proxy:port` the agent comes
//!   online, holds its session through the tunnel and runs a command;
//! * without the proxy, with wrong credentials, or with `NO_PROXY` naming
//!   the server, it cannot reach the server, and its log says why.
//!
//! Needs root (network namespaces) and `tinyproxy` (`.ci/run` installs it).

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{AgentProcess, Deadline, Objects, Server, tempdir, wait_command};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A namespace joined to the host by a veth pair: the host's end
/// `10.79.N.1`, the namespace's `10.79.N.2`, and no route anywhere else.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Self {
        let n = std::process::id() % 200 + 20;
        let name = format!("tern-test-px{}", std::process::id());
        let host_if = format!("tpx{}h", std::process::id() % 100_000);
        let ns_if = format!("tpx{}n", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let me = Self { name, host_if, host_ip: format!("10.79.{n}.1") };
        ip(&["link", "add", &me.host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &me.name]);
        ip(&["addr", "add", &format!("{}/30", me.host_ip), "dev", &me.host_if]);
        ip(&["link", "set", &me.host_if, "up"]);
        ip(&["-n", &me.name, "addr", "add", &format!("10.79.{n}.2/30"), "dev", &ns_if]);
        ip(&["-n", &me.name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &me.name, "link", "set", "lo", "up"]);
        me
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// tinyproxy on `listen`, wanting `user:password`, allowing the
/// namespace's subnet, logging each connection to `dir/tinyproxy.log`.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path, listen: &str) -> Self {
        let port = {
            let l = std::net::TcpListener::bind((listen, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        let subnet = format!("{}/30", listen.rsplit_once('.').unwrap().0.to_owned() + ".0");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen {listen}\nTimeout 600\nMaxClients 20\nAllow {subnet}\nBasicAuth fielduser \
                 s3cret-pass\nLogFile \"{}\"\nLogLevel Connect\nPidFile \"{}\"\n",
                log.display(),
                dir.join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (apt-get install tinyproxy)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((listen, port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tinyproxy did not listen on {listen}:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_log(agent: &AgentProcess, needle: &str) {
    let deadline = Deadline::new(WAIT);
    while !agent.log().contains(needle) {
        deadline.tick(format_args!("{needle:?} in the agent's log:\n{}", agent.log())).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_only_way_out_is_a_proxy_comes_online_through_it_and_acts() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (network namespaces); run as root, as CI does");
    let dir = tempdir("proxy");
    let ns = Netns::new();
    let proxy = Tinyproxy::start(&dir, &ns.host_ip);
    // The server on the host's loopback: from the namespace, 127.0.0.1 is
    // the namespace's own, where nothing listens.
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": "behind-proxy", "url": server.url(), "intervals": {"ping": 2, "snapshot": 1, "command": 3600}})),
            201,
        )
        .await;
    let env = created["id"].as_u64().unwrap();
    let key = created["edge_key"].as_str().unwrap().to_owned();
    let data = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let via = format!("http://fielduser:s3cret%2Dpass@{}:{}", ns.host_ip, proxy.port);

    // No proxy: nowhere to go.
    let (d, log) = (data("a0"), dir.join("a0.log"));
    let mut alone = AgentProcess::start_in(&ns.name, &[("EDGE_KEY", &key), ("DATA_PATH", &d)], &log);
    wait_log(&alone, "poll failed").await;
    alone.stop();
    // The proxy with wrong credentials: the proxy's refusal, named.
    let wrong = format!("http://fielduser:guess@{}:{}", ns.host_ip, proxy.port);
    let (d, log) = (data("a1"), dir.join("a1.log"));
    let mut refused =
        AgentProcess::start_in(&ns.name, &[("EDGE_KEY", &key), ("DATA_PATH", &d), ("HTTPS_PROXY", &wrong)], &log);
    wait_log(&refused, "(it refused the credentials)").await;
    assert!(!refused.log().contains("guess"), "the password is not logged: {}", refused.log());
    refused.stop();
    // NO_PROXY naming the server: straight there, which fails here.
    let (d, log) = (data("a2"), dir.join("a2.log"));
    let mut bypass = AgentProcess::start_in(
        &ns.name,
        &[("EDGE_KEY", &key), ("DATA_PATH", &d), ("HTTPS_PROXY", &via), ("NO_PROXY", "localhost,127.0.0.0/8")],
        &log,
    );
    wait_log(&bypass, "poll failed").await;
    assert!(!bypass.log().contains("through the proxy"), "{}", bypass.log());
    bypass.stop();
    let before = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert!(before["last_poll_at"].is_null(), "no agent has reached the server yet: {before}");

    // Through the proxy, as a site sets it (lower case too).
    let (d, log) = (data("a3"), dir.join("a3.log"));
    // EDGE_HOST_VARS as the generated command sets it when the wizard's
    // list holds https_proxy: the stacks may use it too.
    let agent = AgentProcess::start_in(
        &ns.name,
        &[
            ("EDGE_KEY", &key),
            ("DATA_PATH", &d),
            ("https_proxy", &via),
            ("EDGE_HOST_VARS", "https_proxy"),
            // Set on the host, not listed: no stack sees it.
            ("SITE", "north-sea"),
            ("EDGE_COMPOSE", "builtin"),
        ],
        &log,
    );
    wait_log(&agent, "through the proxy").await;
    let deadline = Deadline::new(WAIT);
    loop {
        let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
        if e["status"] == "online" && e["mode"] == "session" {
            break;
        }
        deadline.tick(format_args!("the environment online in a held session ({e})")).await;
    }
    assert!(proxy.log().contains("CONNECT"), "the tunnel went through tinyproxy: {}", proxy.log());
    // A command reaches it through the tunnel at once (command interval an
    // hour), and its result comes back.
    let objects = Objects::new(&format!("tern-test-proxy-{}", std::process::id()));
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
    let queued = api
        .ok(
            "POST",
            &format!("/api/environments/{env}/commands"),
            Some(json!({"action": "container.stop", "target": web})),
            201,
        )
        .await;
    let c = wait_command(&mut api, queued["id"].as_u64().unwrap(), WAIT).await;
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(objects.status("web").as_deref(), Some("exited"), "{c}");

    // A stack's service gets the site's proxy from the host's variable,
    // which the server never sees; the stack's own value would win.
    let stack_name = objects.name("st");
    let compose = "services:\n  app:\n    image: ${IMAGE}\n    command: [\"/bin/busybox\", \"sleep\", \"600\"]\n    \
                   environment:\n      HTTPS_PROXY: ${https_proxy}\n      SITE: ${SITE:-unset}\n";
    let s = api
        .ok(
            "POST",
            "/api/stacks",
            Some(json!({"name": stack_name, "compose": compose, "env": {"IMAGE": objects.image}, "targets": {"environments": [env]}})),
            201,
        )
        .await;
    let stack = s["id"].as_u64().unwrap();
    let deadline = Deadline::new(WAIT);
    loop {
        let s = api.ok("GET", &format!("/api/stacks/{stack}"), None, 200).await;
        let status = s["environments"][0]["status"].as_str().unwrap_or("").to_owned();
        assert_ne!(status, "failed", "{s}");
        if status == "running" {
            break;
        }
        deadline.tick(format_args!("the stack running ({s})")).await;
    }
    let app = format!("{stack_name}-app-1");
    let out = Command::new("docker").args(["inspect", "--format", "{{json .Config.Env}}", &app]).output().unwrap();
    let container_env = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(container_env.contains(&format!("HTTPS_PROXY={via}")), "{container_env}");
    assert!(container_env.contains("SITE=unset"), "only the listed variables: {container_env}");
    assert!(!container_env.contains("EDGE_KEY"), "{container_env}");
    drop(agent);
}
