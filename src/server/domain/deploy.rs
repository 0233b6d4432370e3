//! An environment's join token and the commands that deploy its agent:
//! `docker run` for a Linux host and for a Windows one, from the options
//! the environment was created with. The only place that writes them; the
//! API shows them, the wizard and quickstart print them.

use crate::auth::JoinToken;
use crate::server::store::{StoreError, Transaction};

/// The agent image the generated commands run.
pub const AGENT_IMAGE: &str = "tern-agent:latest";

/// The engine's socket on a Linux host, mounted at the same path.
pub const LINUX_SOCKET: &str = "/var/run/docker.sock";

/// Where Docker keeps volumes on a Linux host, and where the agent's
/// container always sees them.
pub const LINUX_VOLUMES: &str = "/var/lib/docker/volumes";

/// The `docker run --sysctl` that turns TCP timestamps off in the agent
/// container's network namespace (see [`linux_command`]).
pub const NO_TCP_TIMESTAMPS: &str = "net.ipv4.tcp_timestamps=0";

/// Where Docker keeps volumes on a Windows host, and where the agent's
/// (Windows) container sees them.
pub const WINDOWS_VOLUMES: &str = r"C:\ProgramData\docker\volumes";

/// The Docker engine's named pipe on Windows.
pub const WINDOWS_PIPE: &str = r"\\.\pipe\docker_engine";

/// Whether a volume path is a Windows one (`C:\...`).
pub fn is_windows_path(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\'
}

/// What a deploy command carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions<'a> {
    /// The join token.
    pub edge_key: &'a str,
    /// The EDGE_ID to deploy with.
    pub edge_id: Option<&'a str>,
    /// `EDGE_INSECURE_POLL=1`.
    pub insecure_poll: bool,
    /// The server requires an AGENT_SECRET. The commands never carry it:
    /// they pass `-e AGENT_SECRET`, which docker fills from the shell that
    /// runs them (a deploy command is copied, pasted, logged and shared).
    pub agent_secret: bool,
    /// Host variables passed through.
    pub env_vars: &'a [String],
    /// The host's Docker volume path (checked by the API: `api::fleet`).
    pub volume_path: Option<&'a str>,
    /// Leave TCP timestamps on (see [`linux_command`]).
    pub tcp_timestamps: bool,
}

/// The `-e` options. Every value in them is checked to need no quoting
/// (a join token is base64url, an EDGE_ID and variable names are checked
/// when stored), and no secret but the join token is in them.
fn env_args(o: &DeployOptions<'_>) -> Vec<String> {
    let mut args = vec![format!("-e EDGE_KEY={}", o.edge_key)];
    if let Some(id) = o.edge_id {
        args.push(format!("-e EDGE_ID={id}"));
    }
    if o.insecure_poll {
        args.push("-e EDGE_INSECURE_POLL=1".into());
    }
    if o.agent_secret {
        // No value: docker takes the shell's (see `DeployOptions::agent_secret`).
        args.push("-e AGENT_SECRET".into());
    }
    // No value: docker takes the host's.
    args.extend(o.env_vars.iter().map(|v| format!("-e {v}")));
    // And the agent offers them to its stacks' `${VAR}` (not its own
    // settings, which a passthrough list may hold too).
    let offered: Vec<&str> = o.env_vars.iter().map(String::as_str).filter(|v| !crate::edge_env::is_agents(v)).collect();
    if !offered.is_empty() {
        args.push(format!("-e EDGE_HOST_VARS={}", offered.join(",")));
    }
    args
}

/// The Linux command: the engine socket, the volume path (host side as
/// given, container side `/var/lib/docker/volumes`), a data volume. The
/// image runs as a non-root user (uid 65532); the command adds the
/// socket's group to it, read by the edge host's shell when the command
/// runs (`--group-add "$(stat -c %g /var/run/docker.sock)"`), so the agent
/// reaches the engine without root.
///
/// Unless `tcp_timestamps`, it also turns TCP timestamps off in the agent
/// container's own network namespace (the host's are untouched). The
/// timestamp option is 12 bytes of every TCP packet: a kept-alive idle
/// poll is three packets, so 36 of its 348 bytes on the wire, and every
/// packet of a snapshot or a reconnection pays it too. What timestamps buy
/// (PAWS, RTT samples on retransmitted segments) hardly matters for one
/// small exchange a minute, with one exception measured on the emulated
/// links: with a round trip over a second (geostationary satellite, 1.2 s)
/// the SYN is retransmitted after the initial 1 s timeout, and without
/// timestamps the handshake then gives no RTT sample, so early timers fire
/// before replies can arrive: a new connection cost 2,606 to 3,183 B
/// instead of 2,399. Linux has no per-socket switch, and the agent runs
/// unprivileged, so it is a `docker run` option; engines on kernels before
/// 4.15 (where the setting was not per namespace) refuse it.
/// `tcp_timestamps` keeps them, for both cases.
pub fn linux_command(o: &DeployOptions<'_>) -> String {
    let volumes = o.volume_path.filter(|p| !is_windows_path(p)).unwrap_or(LINUX_VOLUMES);
    let mut lines = vec![
        "docker run -d --name tern-agent --restart always".to_owned(),
        format!("--group-add \"$(stat -c %g {LINUX_SOCKET})\""),
    ];
    if !o.tcp_timestamps {
        lines.push(format!("--sysctl {NO_TCP_TIMESTAMPS}"));
    }
    lines.extend([
        format!("-v {LINUX_SOCKET}:{LINUX_SOCKET}"),
        format!("-v {volumes}:{LINUX_VOLUMES}"),
        "-v tern-agent-data:/data".to_owned(),
    ]);
    lines.extend(env_args(o));
    lines.push(format!("{AGENT_IMAGE} agent"));
    lines.join(" \\\n  ")
}

/// The Windows command (Windows containers; one line, for PowerShell):
/// the engine's named pipe, the volume path (host side as given, container
/// side `C:\ProgramData\docker\volumes`: a Windows container cannot mount
/// at a Linux path), a data volume at `C:\data`.
pub fn windows_command(o: &DeployOptions<'_>) -> String {
    let volumes = o.volume_path.filter(|p| is_windows_path(p)).unwrap_or(WINDOWS_VOLUMES);
    let mut args = vec![
        "docker run -d --name tern-agent --restart always".to_owned(),
        format!("-v {WINDOWS_PIPE}:{WINDOWS_PIPE}"),
        format!("-v {volumes}:{WINDOWS_VOLUMES}"),
        r"-v tern-agent-data:C:\data".to_owned(),
        r"-e DATA_PATH=C:\data".to_owned(),
    ];
    args.extend(env_args(o));
    args.push(format!("{AGENT_IMAGE} agent"));
    args.join(" ")
}

/// The `docker run` line for an agent with this key alone (the Linux
/// command with every option at its default).
pub fn docker_run(edge_key: &str) -> String {
    linux_command(&DeployOptions { edge_key, ..DeployOptions::default() })
}

/// What an environment's agent is deployed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// The environment's name.
    pub name: String,
    /// The join token (EDGE_KEY).
    pub edge_key: String,
    /// The EDGE_ID the commands carry (`None` for an environment made
    /// before the server generated one).
    pub edge_id: Option<String>,
    /// The server requires an AGENT_SECRET (the commands take it from the
    /// shell that runs them).
    pub agent_secret: bool,
    /// The Linux command.
    pub linux: String,
    /// The Windows command.
    pub windows: String,
}

/// An environment's join token and deploy commands, from the store and
/// the server's certificate fingerprint.
///
/// # Errors
/// `FleetError::NoUrl` for an environment created before the server kept
/// its URL, or when the database fails.
pub fn deploy(tx: &(impl Transaction + ?Sized), id: u64, fingerprint: [u8; 32]) -> Result<Deploy, StoreError> {
    let env = tx.environment(id)?;
    let o = tx.fleet_options(id)?;
    if o.url.is_empty() {
        return Err(crate::server::store::fleet::FleetError::NoUrl(id).into());
    }
    let agent_secret = tx.agent_secret()?.is_some();
    let edge_key =
        JoinToken { url: o.url.clone(), environment: id, secret: env.secret, cert_sha256: fingerprint }.encode();
    let d = DeployOptions {
        edge_key: &edge_key,
        edge_id: o.deploy_edge_id.as_deref(),
        insecure_poll: o.allow_self_signed,
        agent_secret,
        env_vars: &o.env_vars,
        volume_path: o.volume_path.as_deref(),
        tcp_timestamps: o.tcp_timestamps,
    };
    let (linux, windows) = (linux_command(&d), windows_command(&d));
    Ok(Deploy { name: env.name, edge_key, edge_id: o.deploy_edge_id, agent_secret, linux, windows })
}

/// A fleet join token's EDGE_KEY and its deploy commands (Linux,
/// Windows): no EDGE_ID (each device makes its own and keeps it in its
/// data volume), so one command can be flashed onto a batch of devices;
/// a device asks for a group or tags with `-e EDGE_GROUP=… -e EDGE_TAGS=…`
/// added to it.
///
/// # Errors
/// When the database fails.
pub fn fleet_deploy(
    tx: &(impl Transaction + ?Sized),
    token: &crate::server::store::admission::FleetTokenRow,
    fingerprint: [u8; 32],
) -> Result<(String, String, String), StoreError> {
    let edge_key = crate::enrol::FleetToken {
        url: token.url.clone(),
        id: token.id,
        secret: token.secret.clone(),
        cert_sha256: fingerprint,
    }
    .encode();
    let d = DeployOptions { edge_key: &edge_key, agent_secret: tx.agent_secret()?.is_some(), ..Default::default() };
    let (linux, windows) = (linux_command(&d), windows_command(&d));
    Ok((edge_key, linux, windows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_linux_command_is_the_one_older_clients_know() {
        assert_eq!(
            docker_run("tern1_key"),
            "docker run -d --name tern-agent --restart always \\\n  \
             --group-add \"$(stat -c %g /var/run/docker.sock)\" \\\n  \
             --sysctl net.ipv4.tcp_timestamps=0 \\\n  \
             -v /var/run/docker.sock:/var/run/docker.sock \\\n  \
             -v /var/lib/docker/volumes:/var/lib/docker/volumes \\\n  \
             -v tern-agent-data:/data \\\n  \
             -e EDGE_KEY=tern1_key \\\n  \
             tern-agent:latest agent"
        );
        let kept = linux_command(&DeployOptions { edge_key: "k", tcp_timestamps: true, ..DeployOptions::default() });
        assert!(!kept.contains("--sysctl") && kept.contains("--group-add"), "{kept}");
        let secret = linux_command(&DeployOptions { edge_key: "k", agent_secret: true, ..DeployOptions::default() });
        assert!(secret.contains("-e AGENT_SECRET \\\n"), "the name alone: docker takes the shell's value\n{secret}");
    }

    #[test]
    fn passed_through_variables_are_offered_to_stacks_but_not_the_agents_own() {
        let vars = ["HTTP_PROXY".to_owned(), "EDGE_SESSION".to_owned(), "SITE".to_owned()];
        let cmd = linux_command(&DeployOptions { edge_key: "k", env_vars: &vars, ..DeployOptions::default() });
        assert!(
            cmd.contains(
                "-e HTTP_PROXY \\\n  -e EDGE_SESSION \\\n  -e SITE \\\n  -e EDGE_HOST_VARS=HTTP_PROXY,SITE \\\n"
            ),
            "{cmd}"
        );
        let only_own = ["EDGE_SESSION".to_owned()];
        let cmd = linux_command(&DeployOptions { edge_key: "k", env_vars: &only_own, ..DeployOptions::default() });
        assert!(!cmd.contains("EDGE_HOST_VARS"), "{cmd}");
    }
}
