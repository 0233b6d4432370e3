//! The web UI end to end, as an operator uses it: a real headless Chromium
//! (Debian's `chromium`, driven through `chromedriver` over WebDriver)
//! against the real `tern server`, with a real `tern agent` on this
//! machine's Docker engine.
//!
//! 1. log in;
//! 2. run the add environment wizard and read the generated Linux command;
//! 3. start an agent with the EDGE_KEY (and EDGE_ID) of that command;
//! 4. see the environment come online with its containers;
//! 5. stop a container from the UI: its status goes queued → … → ok live,
//!    and the row's state becomes `exited` without a reload;
//! 6. deploy a stack and see it running on the environment;
//! 7. see the data usage chart;
//!
//! and, along the way: the environment page at phone width does not scroll
//! sideways, every field of the wizard is labelled, the tabs follow the
//! arrow keys, and pages carry the strict Content-Security-Policy.
//!
//! Each page is saved as a PNG in `<target dir>/ui-screenshots/` (the path
//! is printed). Chromium and chromedriver must be installed (`.ci/run`
//! installs them): the test fails, not skips, without them.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{AgentProcess, ComposeProject, Deadline, Objects, Server, docker, tempdir};
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The admin password the server is started with.
const PASSWORD: &str = "ui-e2e-admin-password";
/// The environment the wizard creates.
const ENV_NAME: &str = "ship-ui";
/// One wait (an agent poll, a page refresh).
const WAIT: Duration = Duration::from_secs(60);
/// The whole test.
const WHOLE: Duration = Duration::from_secs(360);

// ----- chromedriver and the browser -----

/// The first of `names` found in `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()))
}

/// `chromedriver` on a free loopback port, in its own process group so
/// that it and the browsers it started are killed together on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start(log: &Path) -> Self {
        let driver = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!("chromedriver is not installed: apt-get install chromium chromium-driver (.ci/run does)")
        });
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Self { child, port };
        let start = Instant::now();
        while !driver.ready() {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!("chromedriver exited with {status}; its log: {}", log.display());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    /// Whether `GET /status` says it is ready.
    fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.contains("\"ready\":true")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new headless browser session.
    async fn session(&self) -> Client {
        let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")
        });
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "timeouts": { "pageLoad": 30_000, "script": 15_000, "implicit": 0 },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--ignore-certificate-errors",
                    "--window-size=1280,900",
                ],
            },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process it
        // started (they stay in its process group).
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- what the test creates, removed on drop -----

/// The server, the agent and the Docker objects; dropped in this order:
/// the agent, the stack's project, the objects (containers, networks,
/// image), the server.
struct Rig {
    agent: Option<AgentProcess>,
    stack: ComposeProject,
    objects: Objects,
    server: Server,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(a) = &self.agent
        {
            let log = a.log();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("bollard")).rev().take(40).collect();
            eprintln!("--- the agent's last log lines ({}):", a.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

// ----- small helpers -----

/// `<target dir>/ui-screenshots`.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(b: &Client, dir: &Path, name: &str) {
    let png = b.screenshot().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot {}", path.display());
}

/// Runs a script in the page; its return value.
async fn js(b: &Client, script: &str) -> Value {
    b.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script {script:?}: {e}"))
}

/// The text of the first element matching `css`, if there is one.
async fn text(b: &Client, css: &str) -> Option<String> {
    let e = b.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok().map(|t| t.trim().to_owned())
}

/// The text content (shown or not) of the first element matching `css`.
async fn content(b: &Client, css: &str) -> String {
    let e = b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    e.prop("textContent").await.unwrap().unwrap_or_default()
}

/// [`content`], or `None` while there is no such element (yet): for loops
/// that wait across a page load, where the element may be looked up
/// between the old page and the new one.
async fn content_now(b: &Client, css: &str) -> Option<String> {
    let e = b.find(Locator::Css(css)).await.ok()?;
    e.prop("textContent").await.ok().flatten()
}

async fn find(b: &Client, css: &str) -> fantoccini::elements::Element {
    match b.find(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => panic!("no {css} on {}: {e}", path_of(b).await),
    }
}

/// The path (and query) the browser is at.
async fn path_of(b: &Client) -> String {
    let u = b.current_url().await.unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

/// Loads `url` again and again until `css` has the text `want`.
async fn reload_until(b: &Client, url: &str, css: &str, want: &str) {
    let deadline = Deadline::new(WAIT);
    loop {
        b.goto(url).await.unwrap();
        let got = text(b, css).await;
        if got.as_deref() == Some(want) {
            return;
        }
        deadline.tick(format!("{css} to read {want:?} on {url} (reads {got:?})")).await;
    }
}

/// The `-e NAME=value` options of a `docker run` command line.
fn env_options(cmd: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = cmd.split_whitespace().filter(|w| *w != "\\" && *w != "`").collect();
    words
        .windows(2)
        .filter(|w| w[0] == "-e" || w[0] == "--env")
        .filter_map(|w| {
            let opt = w[1].trim_matches(|c| c == '"' || c == '\'');
            let (k, v) = opt.split_once('=')?;
            Some((k.to_owned(), v.trim_matches(|c| c == '"' || c == '\'').to_owned()))
        })
        .collect()
}

/// One HTTPS `GET` (pinning the server's certificate); its status and
/// headers, as a browser receives them.
async fn get_headers(server: &Server, path: &str) -> (u16, hyper::HeaderMap) {
    let config =
        tern::tls::client_config_with(tern::tls::Trust::Pinned(server.fingerprint()), Default::default()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header(hyper::header::HOST, server.addr())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let _ = resp.into_body().collect().await;
    (status, headers)
}

// ----- the steps -----

/// A new environment: its id and the generated Linux command.
struct Created {
    id: u64,
    linux: String,
}

/// Step 1: the login page, and logging in as the admin.
async fn log_in(b: &Client, url: &str, shots: &Path) {
    // A page needing a session sends the browser to the login page, and back.
    b.goto(&format!("{url}/environments")).await.unwrap();
    let at = path_of(b).await;
    assert!(at.starts_with("/login"), "without a session /environments goes to the login page, not {at}");
    shot(b, shots, "01-login").await;
    find(b, "#f-username").await.send_keys("admin").await.unwrap();
    find(b, "#f-password").await.send_keys(PASSWORD).await.unwrap();
    find(b, "form[action='/login'] button[type='submit']").await.click().await.unwrap();
    let deadline = Deadline::new(WAIT);
    while path_of(b).await != "/environments" {
        deadline.tick(format!("the login to land on /environments (at {})", path_of(b).await)).await;
    }
    assert!(b.find(Locator::Css("table#environments")).await.is_ok(), "the environments list after login");
}

/// Step 2: the add environment wizard, and its result page.
async fn create_via_wizard(b: &Client, url: &str, shots: &Path) -> Created {
    b.goto(&format!("{url}/environments/new")).await.unwrap();
    find(b, "#f-name").await;
    // Every field is labelled (a <label for>, an enclosing label, or an aria-label).
    let unlabelled = js(
        b,
        "return Array.from(document.querySelectorAll('input, select, textarea'))
            .filter(e => e.type !== 'hidden')
            .filter(e => !(e.id && document.querySelector('label[for=\"' + CSS.escape(e.id) + '\"]'))
                && !e.closest('label') && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
            .map(e => e.outerHTML.slice(0, 120));",
    )
    .await;
    assert_eq!(unlabelled, json!([]), "fields of the wizard without a label");
    let prefilled = find(b, "#f-url").await.prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(prefilled, url, "the server URL is prefilled with the one the browser used");
    find(b, "#f-name").await.send_keys(ENV_NAME).await.unwrap();
    // More settings: every interval "custom", 1 s (the agent then polls
    // fast enough for a test), and a tag.
    find(b, "#more-settings > summary").await.click().await.unwrap();
    for name in ["ping", "snapshot", "command"] {
        let select = find(b, &format!("#f-{name}")).await;
        let custom = select.attr("data-custom").await.unwrap().unwrap_or_else(|| format!("f-{name}_custom"));
        let field = find(b, &format!("#{custom}")).await;
        assert!(!field.is_displayed().await.unwrap(), "#{custom} shows only for a custom interval");
        select.select_by_value("custom").await.unwrap();
        assert!(field.is_displayed().await.unwrap(), "#{custom} shows once custom is chosen");
        field.send_keys("1").await.unwrap();
    }
    find(b, "#f-tags").await.send_keys("ui").await.unwrap();
    shot(b, shots, "02-wizard").await;
    find(b, "#create").await.click().await.unwrap();

    let deadline = Deadline::new(WAIT);
    while b.find(Locator::Css("#join-token")).await.is_err() {
        let err = text(b, ".field-error, .error").await;
        deadline.tick(format!("the wizard's result page (at {}, error {err:?})", path_of(b).await)).await;
    }
    assert!(text(b, "h1").await.unwrap_or_default().starts_with("Environment created"));
    shot(b, shots, "03-wizard-result").await;
    // The agent options: an environment variable to pass through; the
    // command is regenerated with it.
    find(b, "#f-env_vars").await.send_keys("TERN_UI_PROBE").await.unwrap();
    assert!(!find(b, "#f-allow_self_signed").await.is_selected().await.unwrap(), "self-signed is off by default");
    find(b, "#update-command").await.click().await.unwrap();
    let deadline = Deadline::new(WAIT);
    while !content_now(b, "pre#cmd-linux").await.is_some_and(|c| c.contains("-e TERN_UI_PROBE")) {
        deadline.tick(format!("the command to carry -e TERN_UI_PROBE (at {})", path_of(b).await)).await;
    }
    js(b, "document.getElementById('tab-linux').scrollIntoView({block: 'start'}); return true;").await;
    shot(b, shots, "03b-wizard-command").await;
    let linux = content(b, "pre#cmd-linux").await;
    let windows = content(b, "pre#cmd-windows").await;
    let token = content(b, "#join-token").await;
    assert!(linux.contains("docker run"), "the Linux command: {linux}");
    assert!(linux.contains("--sysctl net.ipv4.tcp_timestamps=0"), "TCP timestamps off by default: {linux}");
    assert!(!find(b, "#f-tcp_timestamps").await.is_selected().await.unwrap(), "kept only when asked");
    assert!(windows.contains("docker run"), "the Windows command: {windows}");
    assert!(linux.contains(&format!("EDGE_KEY={}", token.trim())), "the command carries the join token {token}");
    // The tabs: Linux shown first, the arrow key moves to Windows.
    assert!(find(b, "#panel-linux").await.is_displayed().await.unwrap());
    assert!(!find(b, "#panel-windows").await.is_displayed().await.unwrap());
    find(b, "#tab-linux").await.send_keys("\u{e014}").await.unwrap(); // ArrowRight
    assert!(find(b, "#panel-windows").await.is_displayed().await.unwrap(), "ArrowRight shows the Windows tab");
    assert!(!find(b, "#panel-linux").await.is_displayed().await.unwrap());
    assert_eq!(find(b, "#tab-windows").await.attr("aria-selected").await.unwrap().as_deref(), Some("true"));
    shot(b, shots, "03c-wizard-windows").await;
    // Copy buttons are shown (the script ran under the CSP).
    let copy = b.find_all(Locator::Css("button[data-copy]")).await.unwrap();
    assert!(copy.len() >= 3, "a copy button for the token and each command");
    for c in &copy {
        assert_eq!(c.attr("hidden").await.unwrap(), None, "ui.js shows the copy buttons");
    }
    assert_eq!(find(b, "#add-another").await.attr("href").await.unwrap().as_deref(), Some("/environments/new"));
    let close = find(b, "#close").await.attr("href").await.unwrap().unwrap_or_default();
    let id = close
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("#close links to the new environment's page: {close:?}"));
    Created { id, linux }
}

/// The whole walk; `rig` is dropped (and everything it made removed) when
/// it ends, passes or not.
async fn walk(mut rig: Rig, b: Client, shots: PathBuf) {
    let url = rig.server.url();
    let mut api = rig.server.api();

    // The pages carry the strict CSP (a plain request: a page's script
    // cannot read its own headers).
    let (status, headers) = get_headers(&rig.server, "/login").await;
    assert_eq!(status, 200);
    let csp = headers.get("content-security-policy").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "CSP: {csp:?}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "CSP: {csp:?}");
    assert_eq!(headers.get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"));

    // 1. Log in.
    log_in(&b, &url, &shots).await;

    // 2. The wizard; the Linux command it generates.
    let created = create_via_wizard(&b, &url, &shots).await;
    let env = created.id;
    let vars = env_options(&created.linux);
    let var = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let key = var("EDGE_KEY").unwrap_or_else(|| panic!("no -e EDGE_KEY=... in {}", created.linux));
    println!("environment {env}; the Linux command:\n{}", created.linux);
    assert!(created.linux.contains(" tern-agent:latest"), "{}", created.linux);
    assert!(var("EDGE_ID").is_some(), "the command carries an EDGE_ID: {}", created.linux);

    // 3. An agent with that token. The command runs the image
    // tern-agent:latest (scripts/agent-image.sh builds it; tests/agent_image.rs
    // runs the generated command as it is); here the `tern agent` binary
    // runs with the same variables, so that this test does not need the
    // image.
    let intervals = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await["effective_intervals"].clone();
    assert_eq!(intervals, json!({"ping": 1, "snapshot": 1, "command": 1}), "the wizard's custom intervals");
    let web = rig.objects.name("web");
    let side = rig.objects.name("side");
    rig.objects.run_sleeper("web");
    rig.objects.run_sleeper("side");
    let data = rig.dir.join("agent");
    let data_s = data.to_str().unwrap().to_owned();
    let mut agent_vars = vec![
        ("EDGE_KEY".to_owned(), key),
        ("DATA_PATH".to_owned(), data_s),
        ("EDGE_COMPOSE".to_owned(), "builtin".to_owned()),
    ];
    for k in ["EDGE_ID", "EDGE_INSECURE_POLL"] {
        if let Some(v) = var(k) {
            agent_vars.push((k.to_owned(), v));
        }
    }
    let agent_vars: Vec<(&str, &str)> = agent_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    rig.agent = Some(AgentProcess::start(&agent_vars, &rig.dir.join("agent.log")));

    // 4. Online, with its containers.
    let list = format!("{url}/environments");
    reload_until(&b, &list, &format!("tr[data-env='{env}'] span.badge"), "online").await;
    shot(&b, &shots, "04-environments").await;
    find(&b, &format!("tr[data-env='{env}'] a")).await.click().await.unwrap();
    assert_eq!(path_of(&b).await, format!("/environments/{env}"));
    let page = format!("{url}/environments/{env}");
    for name in [&web, &side] {
        reload_until(&b, &page, &format!("tr[data-name='{name}'] span.state"), "running").await;
    }
    shot(&b, &shots, "05-environment").await;

    // 5. Stop a container from the UI. An observer notes every status the
    // live row shows; a marker on `window` survives only without a reload.
    js(
        &b,
        "window.ternNoReload = true; window.ternStatuses = [];
         new MutationObserver(function (records) {
           records.forEach(function (r) {
             if (r.type !== 'attributes' || !r.target.classList.contains('live-cmd')) return;
             var s = r.target.getAttribute('data-status'), l = window.ternStatuses;
             if (s && l[l.length - 1] !== s) l.push(s);
           });
         }).observe(document.getElementById('live'),
                    { subtree: true, attributes: true, attributeFilter: ['data-status'] });
         return true;",
    )
    .await;
    find(&b, &format!("tr[data-name='{web}'] form.cmd button[aria-label='Stop {web}']")).await.click().await.unwrap();
    let deadline = Deadline::new(WAIT);
    let statuses = loop {
        let seen = js(&b, "return window.ternStatuses;").await;
        let last = seen.as_array().and_then(|a| a.last()).and_then(Value::as_str).map(str::to_owned);
        if matches!(last.as_deref(), Some("ok" | "failed" | "rejected" | "cancelled")) {
            break seen;
        }
        deadline.tick(format!("the stop command to end in #live (statuses so far {seen})")).await;
    };
    println!("the live command row showed {statuses}");
    let statuses: Vec<&str> = statuses.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"ok"), "{statuses:?}");
    assert_eq!(text(&b, "#live .live-cmd span.state").await.as_deref(), Some("ok"));
    let deadline = Deadline::new(WAIT);
    loop {
        let state = text(&b, &format!("tr[data-name='{web}'] span.state")).await;
        if state.as_deref() == Some("exited") {
            break;
        }
        deadline.tick(format!("{web}'s row to read exited without a reload (reads {state:?})")).await;
    }
    assert_eq!(js(&b, "return window.ternNoReload === true;").await, json!(true), "the page was not reloaded");
    assert_eq!(rig.objects.status("web").as_deref(), Some("exited"), "docker inspect: the container stopped");
    assert_eq!(text(&b, &format!("tr[data-name='{side}'] span.state")).await.as_deref(), Some("running"));
    shot(&b, &shots, "06-stopped").await;

    // 7. The data usage chart: the agent's polls so far are in it.
    let deadline = Deadline::new(WAIT);
    loop {
        b.goto(&page).await.unwrap();
        if b.find(Locator::Css("svg#usage-chart g.bar")).await.is_ok() {
            break;
        }
        deadline.tick("a bar in the usage chart").await;
    }
    js(&b, "document.getElementById('usage-chart').scrollIntoView({block: 'center'}); return true;").await;
    shot(&b, &shots, "07-usage-chart").await;

    // 6. Deploy a stack to the environment, by name.
    let stack = rig.stack.0.clone();
    b.goto(&format!("{url}/stacks/new")).await.unwrap();
    find(&b, "#f-name").await.send_keys(&stack).await.unwrap();
    let compose = format!(
        "services:\n  app:\n    image: {}\n    command: [\"/bin/busybox\", \"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done\"]\n",
        rig.objects.image
    );
    find(&b, "#f-compose").await.send_keys(&compose).await.unwrap();
    find(&b, "#f-environments").await.send_keys(ENV_NAME).await.unwrap();
    js(&b, "window.scrollTo(0, 0); return true;").await;
    shot(&b, &shots, "08-stack-new").await;
    find(&b, "#deploy").await.click().await.unwrap();
    let deadline = Deadline::new(WAIT);
    while b.find(Locator::Css("table#stack-status")).await.is_err() {
        let err = text(&b, ".field-error, .error").await;
        deadline.tick(format!("the stack's page (at {}, error {err:?})", path_of(&b).await)).await;
    }
    // The status refreshes itself while the deploy is under way.
    let row = format!("table#stack-status tr[data-env-name='{ENV_NAME}'] td.status span.state");
    let deadline = Deadline::new(WAIT);
    loop {
        let got = text(&b, &row).await;
        assert_ne!(got.as_deref(), Some("failed"), "the stack failed: {:?}", text(&b, "table#stack-status").await);
        if got.as_deref() == Some("running") {
            break;
        }
        deadline.tick(format!("{row} to read running without a reload (reads {got:?})")).await;
    }
    let running = docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={stack}"),
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(running.lines().count(), 1, "the stack's one container runs: {running:?}");
    shot(&b, &shots, "09-stack").await;

    // The settings page.
    b.goto(&format!("{url}/settings")).await.unwrap();
    assert_eq!(text(&b, "main h1").await.as_deref(), Some("Settings"));
    shot(&b, &shots, "10-settings").await;

    // The environment page at phone width: nothing scrolls sideways.
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&page).await.unwrap();
    find(&b, &format!("tr[data-name='{web}']")).await;
    shot(&b, &shots, "11-environment-phone").await;
    let widths = js(&b, "return [document.documentElement.scrollWidth, window.innerWidth];").await;
    let (scroll, inner) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(scroll <= inner + 1.0, "at phone width the page scrolls sideways: scrollWidth {scroll} > {inner}");
    b.set_window_size(1280, 900).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_an_environment_watches_it_acts_on_it_and_deploys_a_stack() {
    let started = Instant::now();
    let shots = screenshot_dir();
    println!("screenshots go to {}", shots.display());
    let dir = tempdir("tern-ui-e2e");
    let prefix = format!("tern-ui-e2e-{}", std::process::id());
    // Chromedriver first: a machine without it fails here, before
    // anything is created.
    let driver = Chromedriver::start(&dir.join("chromedriver.log"));
    let browser = driver.session().await;

    let objects = Objects::new(&prefix);
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]);
    let rig = Rig { agent: None, stack: ComposeProject(format!("{prefix}-stack")), objects, server, dir: dir.clone() };

    let task = tokio::spawn(walk(rig, browser.clone(), shots.clone()));
    let abort = task.abort_handle();
    let outcome = tokio::time::timeout(WHOLE, task).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) if e.is_panic() => Some(e.into_panic()),
        Ok(Err(e)) => Some(Box::new(format!("the test's task ended: {e}")) as Box<dyn std::any::Any + Send>),
        Err(_) => {
            abort.abort();
            Some(Box::new(format!("the test took more than {WHOLE:?}")) as Box<dyn std::any::Any + Send>)
        }
    };
    if failure.is_some() {
        // The page as it was when the test failed.
        if let Ok(png) = browser.screenshot().await {
            let path = shots.join("failure.png");
            let _ = std::fs::write(&path, png);
            eprintln!("the page at the failure ({:?}): {}", browser.current_url().await.ok(), path.display());
        }
        eprintln!("chromedriver's log: {}", dir.join("chromedriver.log").display());
    }
    let _ = browser.close().await;
    drop(driver);
    if let Some(panic) = failure {
        std::panic::resume_unwind(panic);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("the UI walk took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn env_options_are_read_from_a_docker_run_command() {
    let cmd = "docker run -d \\\n  -v /var/run/docker.sock:/var/run/docker.sock \\\n  -e EDGE_KEY=tern1_abc \\\n  \
               -e EDGE_ID=4f2a -e EDGE_INSECURE_POLL=1 -e HTTP_PROXY \\\n  --name tern_agent tern-agent:latest";
    let got = env_options(cmd);
    assert_eq!(
        got,
        [("EDGE_KEY", "tern1_abc"), ("EDGE_ID", "4f2a"), ("EDGE_INSECURE_POLL", "1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}
