//! The agent updates itself (issue #14), when it runs in a container, as
//! the generated `docker run` line starts it.
//!
//! 1. The new image comes as any image the server holds does: a transfer,
//!    the layers the host lacks as deltas against the ones it has (the
//!    agent's own image is the nearest base), checked, loaded.
//! 2. The agent starts a short-lived helper container from its **own,
//!    current** image (known to work: it is running), with the same
//!    engine socket, volumes, user and groups, and keeps polling.
//! 3. The helper renames the agent's container aside, stops it, creates
//!    the new one under the old name with the same settings (environment,
//!    command, mounts, restart policy, network, sysctls) and the new
//!    image, and starts it.
//! 4. It then watches the agent's health record (`DATA_PATH/health`, on
//!    the shared data volume): once the new agent has polled, it removes
//!    the old container and is done. If the new agent has not polled
//!    within the command's time (or its container stopped), it removes
//!    the new container, puts the old one back under its name, starts it,
//!    and writes why to `DATA_PATH/update-rollback`.
//!
//! The command's result comes from whichever agent runs next, from its
//! journal (the command was running when its process stopped): the new
//! one finds itself on the new image and reports "updated"; the old one,
//! back, finds the rollback note and reports "rolled back" with the
//! reason. An agent that runs on the host, not in a container, says it
//! cannot update itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::engine_error;
use crate::wire::poll::AgentUpdate;

/// Where the helper says why it put the old agent back.
pub const ROLLBACK_FILE: &str = "update-rollback";

/// How long the new agent has to poll when the command does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The label on the helper container: the agent container it updates.
pub const HELPER_LABEL: &str = "io.tern.agent-update";

/// What the helper leaves for the old agent after a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The update (the server's number for it).
    pub update: u64,
    /// The image that was tried.
    pub image: String,
    /// Why it was put back.
    pub reason: String,
}

/// Reads the rollback note for `update`, if the helper left one.
#[must_use]
pub fn rollback_of(data_path: &Path, update: u64) -> Option<Rollback> {
    let bytes = std::fs::read(data_path.join(ROLLBACK_FILE)).ok()?;
    serde_json::from_slice::<Rollback>(&bytes).ok().filter(|r| r.update == update)
}

/// The id of the container this process runs in, if it runs in one: the
/// engine's record of the container whose hostname file is this one's.
pub(crate) async fn own_container(docker: &Docker) -> Option<bollard::models::ContainerInspectResponse> {
    // The engine mounts /etc/hostname from its containers/<id>/ directory.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let id = mountinfo.lines().find_map(|l| {
        let path = l.split_whitespace().nth(3)?;
        if !path.ends_with("/hostname") {
            return None;
        }
        let dir = path.strip_suffix("/hostname")?;
        let id = dir.rsplit('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    });
    let candidates = id.into_iter().chain(std::env::var("HOSTNAME").ok());
    for c in candidates {
        if let Ok(found) = docker.inspect_container(&c, None).await {
            return Some(found);
        }
    }
    None
}

/// The update as the old agent runs it: (the image is fetched already)
/// starts the helper, then waits to be stopped by it. Returns only when
/// the update cannot go on (an error for the operator), or when the agent
/// already runs the image.
///
/// # Errors
/// Why the update did not start.
pub async fn start(docker: &Docker, command: u64, update: &AgentUpdate) -> Result<Vec<u8>, String> {
    let me = own_container(docker).await.ok_or(
        "this agent does not run in a container (or cannot find its own): only the container agent updates itself",
    )?;
    let id = me.id.clone().unwrap_or_default();
    let own_image = me.image.clone().unwrap_or_default();
    if own_image == update.image.image_id {
        return Ok(format!("this agent already runs {}", update.image.image_id).into_bytes());
    }
    let name = me.name.clone().unwrap_or_default().trim_start_matches('/').to_owned();
    let config = me.config.clone().unwrap_or_default();
    let host = me.host_config.clone().unwrap_or_default();
    let timeout = if update.timeout_s == 0 { DEFAULT_TIMEOUT } else { Duration::from_secs(update.timeout_s.into()) };
    let helper = format!("{name}-update-{command}");
    let mut cmd = vec!["agent".to_owned(), "update-helper".to_owned()];
    cmd.extend([
        "--container".into(),
        id.clone(),
        "--image".into(),
        update.image.image_id.clone(),
        "--timeout".into(),
        timeout.as_secs().to_string(),
        "--command".into(),
        command.to_string(),
    ]);
    let body = ContainerCreateBody {
        image: Some(own_image),
        entrypoint: config.entrypoint.clone(),
        cmd: Some(cmd),
        env: config.env.clone(),
        user: config.user.clone(),
        labels: Some(HashMap::from([(HELPER_LABEL.to_owned(), id.clone())])),
        host_config: Some(bollard::models::HostConfig {
            binds: host.binds.clone(),
            mounts: host.mounts.clone(),
            group_add: host.group_add.clone(),
            auto_remove: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A helper left by an earlier try of this command goes first.
    let _ = docker.remove_container(&helper, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    docker
        .create_container(Some(CreateContainerOptions { name: Some(helper.clone()), ..Default::default() }), body)
        .await
        .map_err(|e| format!("cannot create the update helper: {}", engine_error(e)))?;
    docker
        .start_container(&helper, None)
        .await
        .map_err(|e| format!("cannot start the update helper: {}", engine_error(e)))?;
    tracing::info!(helper = %helper, image = %update.image.image_id, "update helper started; it replaces this agent");
    // The helper stops this process; if it ends first, it failed.
    let mut wait = docker.wait_container(&helper, None::<bollard::query_parameters::WaitContainerOptions>);
    let bound = timeout + Duration::from_secs(120);
    match tokio::time::timeout(bound, wait.next()).await {
        Ok(_) => Err(format!("the update helper {helper} ended without replacing this agent")),
        Err(_) => Err(format!("the update helper {helper} had not replaced this agent after {} s", bound.as_secs())),
    }
}

/// `tern agent update-helper`: what the helper does (see the module doc).
/// Exit code 0 when the new agent polled, 1 when the old one was put back.
pub async fn helper(container: &str, image: &str, timeout: Duration, command: u64, data_path: &Path) -> i32 {
    let docker = match super::connect().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tern update helper: {e}");
            return 2;
        }
    };
    match switch(&docker, container, image, timeout, data_path).await {
        Ok(()) => {
            let _ = std::fs::remove_file(data_path.join(ROLLBACK_FILE));
            println!("the agent now runs {image}");
            0
        }
        Err(reason) => {
            eprintln!("tern update helper: {reason}");
            let note = Rollback { update: command, image: image.to_owned(), reason };
            let path = data_path.join(ROLLBACK_FILE);
            let tmp: PathBuf = path.with_extension("tmp");
            let written = std::fs::write(&tmp, serde_json::to_vec(&note).unwrap_or_default())
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                eprintln!("tern update helper: writing {}: {e}", path.display());
            }
            1
        }
    }
}

/// Replaces `container` by one from `image`; on failure puts it back and
/// says why.
async fn switch(
    docker: &Docker,
    container: &str,
    image: &str,
    timeout: Duration,
    data_path: &Path,
) -> Result<(), String> {
    let old = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| format!("the agent's container: {}", engine_error(e)))?;
    let old_id = old.id.clone().unwrap_or_default();
    let name = old.name.clone().unwrap_or_default().trim_start_matches('/').to_owned();
    let aside = format!("{name}-previous");
    let mut config = old.config.clone().unwrap_or_default();
    let host = old.host_config.clone().unwrap_or_default();
    let restarts = host.restart_policy.as_ref().and_then(|p| p.name).is_some_and(|n| {
        n != bollard::models::RestartPolicyNameEnum::NO && n != bollard::models::RestartPolicyNameEnum::EMPTY
    });
    docker
        .rename_container(&old_id, RenameContainerOptions { name: aside.clone() })
        .await
        .map_err(|e| format!("renaming the agent's container aside: {}", engine_error(e)))?;
    if let Err(e) =
        docker.stop_container(&old_id, Some(StopContainerOptions { t: Some(30), ..Default::default() })).await
    {
        return Err(put_back(docker, &old_id, &name, format!("stopping the agent: {}", engine_error(e))).await);
    }
    let started_at = crate::clock::unix_now();
    // The same container but for its image (and its hostname, which is the
    // engine's to give: the old container's id).
    config.image = Some(image.to_owned());
    config.hostname = None;
    config.domainname = None;
    let body = ContainerCreateBody {
        image: config.image.clone(),
        env: config.env.clone(),
        cmd: config.cmd.clone(),
        entrypoint: config.entrypoint.clone(),
        user: config.user.clone(),
        labels: config.labels.clone(),
        working_dir: config.working_dir.clone(),
        stop_signal: config.stop_signal.clone(),
        healthcheck: config.healthcheck.clone(),
        host_config: Some(host),
        ..Default::default()
    };
    let created = docker
        .create_container(Some(CreateContainerOptions { name: Some(name.clone()), ..Default::default() }), body)
        .await;
    let new_id = match created {
        Ok(c) => c.id,
        Err(e) => {
            let why = format!("creating the new agent's container: {}", engine_error(e));
            return Err(put_back(docker, &old_id, &name, why).await);
        }
    };
    let remove_new = || async {
        let _ =
            docker.remove_container(&new_id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    };
    if let Err(e) = docker.start_container(&new_id, None).await {
        remove_new().await;
        return Err(put_back(docker, &old_id, &name, format!("starting the new agent: {}", engine_error(e))).await);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let why = loop {
        if polled_since(data_path, started_at) {
            let _ = docker
                .remove_container(&aside, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                .await;
            return Ok(());
        }
        let state = docker.inspect_container(&new_id, None).await.ok().and_then(|c| c.state);
        let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let restarting = state.as_ref().and_then(|s| s.restarting).unwrap_or(false);
        // With a restart policy (the generated line's `always`) the engine
        // starts it again: it has its whole time to poll.
        if !running && !restarting && !restarts {
            let code = state.and_then(|s| s.exit_code).unwrap_or(-1);
            break format!("the new agent's container stopped (exit code {code}){}", last_lines(docker, &new_id).await);
        }
        if tokio::time::Instant::now() >= deadline {
            break format!(
                "the new agent had not polled within {} s{}",
                timeout.as_secs(),
                last_lines(docker, &new_id).await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    remove_new().await;
    Err(put_back(docker, &old_id, &name, why).await)
}

/// Puts the old agent's container back under its name and starts it;
/// returns `why`, with what went wrong doing so.
async fn put_back(docker: &Docker, old_id: &str, name: &str, why: String) -> String {
    let mut why = why;
    if let Err(e) = docker.rename_container(old_id, RenameContainerOptions { name: name.to_owned() }).await {
        why.push_str(&format!("; putting the old agent's name back: {}", engine_error(e)));
    }
    if let Err(e) = docker.start_container(old_id, None).await {
        why.push_str(&format!("; starting the old agent again: {}", engine_error(e)));
    }
    why
}

/// Whether the agent's health record shows a run started at or after
/// `since` that has polled.
fn polled_since(data_path: &Path, since: i64) -> bool {
    let Ok(bytes) = std::fs::read(data_path.join(super::health::FILE)) else { return false };
    let Ok(r) = serde_json::from_slice::<super::health::Record>(&bytes) else { return false };
    r.started_at >= since && r.ok_at.is_some_and(|t| t >= r.started_at)
}

/// `: <the container's last log lines>`, or nothing.
async fn last_lines(docker: &Docker, id: &str) -> String {
    let opts = LogsOptions { stdout: true, stderr: true, tail: "3".into(), ..Default::default() };
    let mut stream = docker.logs(id, Some(opts));
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk.into_bytes());
    }
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    if text.is_empty() { String::new() } else { format!(": {}", super::run::clip(text, 400)) }
}
