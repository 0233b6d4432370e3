//! Edge jobs end to end: the real `tern server` and `tern agent` binaries,
//! the machine's Docker engine, a helper image built here from a static
//! busybox (`sh` and `chroot` linked to it; no registry).
//!
//! The scripts run the way they do in production: `chroot /host sh -c`,
//! with the host's own shell and tools, and they prove it by writing a file
//! the test then reads on this host (the engine is local). The one
//! difference is `EDGE_JOB_PRIVILEGED=0`: the sandboxed engine this runs
//! on refuses privileged containers ("unable to apply caps"), and chroot
//! into a bind mount needs only the default capabilities.
//!
//! The scheduled job uses a 6-field expression (`*/2 * * * * *`: every two
//! seconds): the cron crate takes a leading seconds field, so the test runs
//! the real scheduler on the real clock instead of waiting minutes.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{AgentProcess, Api, Deadline, Objects, Server, docker, docker_quiet, tempdir};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// The helper image: busybox with `sh` and `chroot` on the PATH.
fn helper_image(objects: &Objects) -> String {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a static busybox (apt-get install busybox-static)");
    let root = tempdir(&format!("{}-helper-rootfs", objects.prefix));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in ["sh", "chroot", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let image = format!("{}-helper:1", objects.prefix);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import -c 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' - {image} >/dev/null",
            root.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "docker import");
    let _ = std::fs::remove_dir_all(&root);
    image
}

/// A server, an environment polling every second, and its agent.
struct Setup {
    _objects: Objects,
    server: Server,
    api: Api,
    env: u64,
    agent: Option<AgentProcess>,
    vars: Vec<(String, String)>,
    dir: std::path::PathBuf,
    edge_id: String,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        let objects = Objects::new(prefix);
        let image = helper_image(&objects);
        let dir = tempdir(prefix);
        let server = Server::start(&dir.join("server"), "127.0.0.1:0");
        let mut api = server.api();
        let created = api
            .ok(
                "POST",
                "/api/environments",
                Some(
                    json!({"name": prefix, "url": server.url(), "intervals": {"ping": 1, "snapshot": 1, "command": 1}}),
                ),
                201,
            )
            .await;
        let env = created["id"].as_u64().unwrap();
        let edge_id = format!("{prefix}-{}", std::process::id());
        let vars = vec![
            ("EDGE_KEY".to_owned(), created["edge_key"].as_str().unwrap().to_owned()),
            ("DATA_PATH".to_owned(), dir.join("agent").to_str().unwrap().to_owned()),
            ("EDGE_ID".to_owned(), edge_id.clone()),
            ("EDGE_JOB_IMAGE".to_owned(), image),
            ("EDGE_JOB_PRIVILEGED".to_owned(), "0".to_owned()),
        ];
        let mut s = Self { _objects: objects, server, api, env, agent: None, vars, dir, edge_id };
        s.start_agent();
        s
    }

    fn start_agent(&mut self) {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.agent = Some(AgentProcess::start(&vars, &self.dir.join("agent.log")));
    }

    fn log(&self) -> String {
        self.agent.as_ref().map(AgentProcess::log).unwrap_or_default()
    }

    /// The helper containers this agent left on the engine.
    fn helpers(&self) -> String {
        docker(&["ps", "-aq", "--filter", &format!("label=tern.job.owner={}", self.edge_id)])
    }

    async fn create(&mut self, body: Value) -> u64 {
        self.api.ok("POST", "/api/jobs", Some(body), 201).await["id"].as_u64().unwrap()
    }

    async fn runs(&mut self, job: u64) -> Vec<Value> {
        let path = format!("/api/jobs/{job}/runs?environment={}&limit=100", self.env);
        self.api.ok("GET", &path, None, 200).await.as_array().unwrap().clone()
    }

    /// Waits for `n` runs of `job` on the server; returns them, newest first.
    async fn wait_runs(&mut self, job: u64, n: usize) -> Vec<Value> {
        let deadline = Deadline::new(WAIT);
        loop {
            let runs = self.runs(job).await;
            if runs.len() >= n {
                return runs;
            }
            let log = self.log();
            deadline.tick(format_args!("{n} run(s) of job {job} (have {runs:?}); agent log:\n{log}")).await;
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=tern.job.owner={}", self.edge_id)])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            docker_quiet(&["rm", "-f", id]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_once_job_runs_on_the_host_and_its_output_arrives() {
    let mut s = Setup::new("tern-test-jobs-once").await;
    let marker = std::env::temp_dir().join(format!("tern-test-jobs-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let env = s.env;

    // Through the CLI, as an operator would: the script from a file.
    let script_file = s.dir.join("job.sh");
    std::fs::write(
        &script_file,
        format!("echo \"hello from $(cat /etc/hostname)\"\necho 42 > {}\necho warning >&2\n", marker.display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["job", "create", "--name", "hello", "--script"])
        .arg(&script_file)
        .args(["--env-id", &env.to_string(), "--server", &s.server.url(), "--data"])
        .arg(&s.server.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "tern job create: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("created, queued on 1 environment(s)"), "{printed}");
    let job = s.api.ok("GET", "/api/jobs", None, 200).await[0]["id"].as_u64().unwrap();

    let runs = s.wait_runs(job, 1).await;
    let run = &runs[0];
    assert_eq!(run["exit_code"], 0, "{run}");
    let output = run["output"].as_str().unwrap();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(output.contains(&format!("hello from {}", hostname.trim())), "{output:?}");
    assert!(output.contains("warning"), "stderr too: {output:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "42", "the script ran on the host");
    let _ = std::fs::remove_file(&marker);
    let detail = s.api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await;
    let e = &detail["environments"][0];
    assert_eq!((e["status"].as_str(), e["delivered"].as_bool(), e["runs"].as_u64()), (Some("ok"), Some(true), Some(1)));
    assert_eq!(e["last_run"]["exit_code"], 0, "{detail}");

    // `tern job runs` prints the output.
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["job", "runs", &job.to_string(), "--env", &env.to_string(), "--server", &s.server.url(), "--data"])
        .arg(&s.server.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "tern job runs: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from"), "{}", String::from_utf8_lossy(&out.stdout));

    // A failing script: its exit code, and the end of its output in the error.
    let failing =
        s.create(json!({"name": "fails", "script": "echo almost; exit 3", "targets": {"environments": [env]}})).await;
    let run = &s.wait_runs(failing, 1).await[0];
    assert_eq!(run["exit_code"], 3, "{run}");
    assert!(run["error"].as_str().unwrap().contains("almost"), "{run}");

    // A script past its timeout is killed: exit code -1.
    let slow = s
        .create(json!({"name": "slow", "script": "sleep 60", "timeout_s": 1, "targets": {"environments": [env]}}))
        .await;
    let run = &s.wait_runs(slow, 1).await[0];
    assert_eq!(run["exit_code"], -1, "{run}");
    assert!(run["error"].as_str().unwrap().contains("timed out after 1 s"), "{run}");

    assert_eq!(s.helpers(), "", "every helper container was removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_job_runs_on_the_agents_clock_survives_a_restart_and_stops_when_deleted() {
    let mut s = Setup::new("tern-test-jobs-cron").await;
    let env = s.env;
    let job = s
        .create(json!({
            "name": "tick",
            "script": "echo tick; echo tock >&2",
            "cron": "*/2 * * * * *",
            "targets": {"environments": [env]},
        }))
        .await;
    let runs = s.wait_runs(job, 2).await;
    let numbers: Vec<u64> = runs.iter().map(|r| r["run"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] > w[1]), "newest first, numbers increasing per run: {numbers:?}");
    for r in &runs {
        assert_eq!((r["exit_code"].as_i64(), r["version"].as_u64()), (Some(0), Some(1)), "{r}");
        let out = r["output"].as_str().unwrap();
        assert!(out.contains("tick") && out.contains("tock"), "{out:?}");
        assert!(r["started_at"].as_i64().unwrap() <= r["finished_at"].as_i64().unwrap());
    }
    let detail = s.api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await;
    let e = &detail["environments"][0];
    assert_eq!(e["delivered"], true, "{detail}");
    assert!(e["runs"].as_u64().unwrap() >= 2 && e["last_run"]["exit_code"] == 0, "{detail}");
    assert!(std::fs::read_to_string(s.dir.join("agent/jobs.json")).unwrap().contains("*/2 * * * * *"));

    // The agent restarts: the schedule was on its disk, and run numbers go on.
    let highest = numbers[0];
    s.agent.take().unwrap().stop();
    s.start_agent();
    let deadline = Deadline::new(WAIT);
    loop {
        let runs = s.runs(job).await;
        if runs[0]["run"].as_u64().unwrap() >= highest + 2 {
            break;
        }
        deadline.tick(format_args!("runs after the restart (have {})", runs.len())).await;
    }
    assert!(s.log().contains("scheduled jobs loaded"), "{}", s.log());

    // Deleted: a JobRemove reaches the agent and the runs stop.
    let gone = s.api.ok("DELETE", &format!("/api/jobs/{job}"), None, 200).await;
    let remove = gone["environments"][0]["command"].as_u64().unwrap();
    let deadline = Deadline::new(WAIT);
    loop {
        let c = s.api.ok("GET", &format!("/api/commands/{remove}"), None, 200).await;
        if c["status"] == "ok" {
            break;
        }
        deadline.tick(format_args!("the JobRemove command ({c})")).await;
    }
    // A run already going when the removal arrived may still report.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = s.runs(job).await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.runs(job).await.len(), after, "no run after the removal");
    assert!(!std::fs::read_to_string(s.dir.join("agent/jobs.json")).unwrap().contains("*/2"));
    let listed = s.api.ok("GET", "/api/jobs", None, 200).await;
    assert_eq!(listed, json!([]), "a deleted job leaves the list");
    assert_eq!(s.helpers(), "", "every helper container was removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_are_refused_with_a_clear_json_error_and_change_nothing() {
    let dir = tempdir("tern-test-jobs-refusals");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut api = server.api();
    let created = api.ok("POST", "/api/environments", Some(json!({"name": "site", "url": server.url()})), 201).await;
    let env = created["id"].as_u64().unwrap();
    let good = json!({"name": "ok", "script": "true", "targets": {"environments": [env]}});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    for (body, status, says) in [
        (with("cron", json!("every five minutes")), 422, "cron: \"every five minutes\" is not a cron expression"),
        (with("cron", json!("61 * * * *")), 422, "cron:"),
        (with("script", json!("x".repeat(64 * 1024 + 1))), 413, "oversized script"),
        (with("script", json!("  ")), 422, "script: empty"),
        (with("targets", json!({"environments": [9999]})), 422, "no environment 9999"),
        (with("targets", json!({"groups": ["nope"]})), 422, "no group \"nope\""),
        (with("targets", json!({"tags": ["nope"]})), 422, "no tag \"nope\""),
        (with("targets", json!({})), 422, "targets: name at least one"),
        (with("timeout_s", json!(1_000_000)), 422, "timeout_s"),
        (with("color", json!("blue")), 422, "unknown field"),
        (json!({"name": "no script"}), 422, "missing field"),
    ] {
        let (got, reply) = api.call("POST", "/api/jobs", Some(body.clone())).await;
        assert_eq!(got, status, "{reply}");
        let error = reply["error"].as_str().unwrap_or_else(|| panic!("a JSON error: {reply}"));
        assert!(error.contains(says), "{error:?} should say {says:?}");
    }
    // Not JSON at all.
    let (got, reply) = api.call("GET", "/api/jobs/notanumber", None).await;
    assert_eq!((got, reply["error"].is_string()), (400, true), "{reply}");
    let (got, reply) = api.call("GET", "/api/jobs/77", None).await;
    assert_eq!((got, reply["error"].as_str()), (404, Some("no job 77")));
    let (got, _) = api.call("PUT", "/api/jobs/77", Some(json!({"script": "true"}))).await;
    assert_eq!(got, 404);
    let (got, _) = api.call("DELETE", "/api/jobs/77", None).await;
    assert_eq!(got, 404);
    // Nothing was stored or queued.
    assert_eq!(api.ok("GET", "/api/jobs", None, 200).await, json!([]));
    assert_eq!(api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await, json!([]));

    // A good one goes through, and a bad edit of it changes nothing.
    let job = api.ok("POST", "/api/jobs", Some(with("cron", json!("*/5 * * * *"))), 201).await;
    let id = job["id"].as_u64().unwrap();
    assert_eq!((job["version"].as_u64(), job["environments"][0]["status"].as_str()), (Some(1), Some("queued")));
    let (got, _) = api.call("PUT", &format!("/api/jobs/{id}"), Some(json!({"cron": "nope"}))).await;
    assert_eq!(got, 422);
    let (got, _) = api.call("PUT", &format!("/api/jobs/{id}"), Some(json!({"targets": {"environments": [5]}}))).await;
    assert_eq!(got, 422);
    let same = api.ok("GET", &format!("/api/jobs/{id}"), None, 200).await;
    assert_eq!((same["version"].as_u64(), same["cron"].as_str()), (Some(1), Some("*/5 * * * *")));
    let edited = api.ok("PUT", &format!("/api/jobs/{id}"), Some(json!({"cron": "0 3 * * *"})), 200).await;
    assert_eq!((edited["version"].as_u64(), edited["cron"].as_str()), (Some(2), Some("0 3 * * *")));
    let commands = api.ok("GET", &format!("/api/environments/{env}/commands"), None, 200).await;
    let statuses: Vec<&str> = commands.as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "cancelled"], "the unsent first version was replaced by the second");
    let (got, reply) = api.call("GET", &format!("/api/jobs/{id}/runs?environment=nowhere"), None).await;
    assert_eq!(got, 404, "{reply}");
}
