//! From the Docker engine's API types (bollard's models) to the canonical
//! [`State`]. This is the only place that knows the engine's JSON shapes.
//!
//! What is left out, and why:
//! * the `Status` text ("Up 3 minutes"), `SystemTime`, counters in `Info`,
//!   health check logs, PIDs, sizes of writable layers: they change on their
//!   own, and sending them would make every poll non-empty;
//! * sub-second precision of timestamps: one second is what an operator
//!   reads, and nanoseconds would make restarts cost more bytes;
//! * the values of secret-looking environment variables, unless configured.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum, ImageSummary, Network as DockerNetwork,
    RestartPolicyNameEnum, SystemInfo, SystemVersion, Volume as DockerVolume,
};
use serde::Deserialize;

use crate::sync::state::{
    Attachment, Container, ContainerStatus, Health, Host, Id, Image, InvalidObject, IpamPool, Mount, MountType,
    Network, Port, Protocol, RestartPolicy, State, Table, Timestamp, Volume,
};

/// Everything the collector reads from the engine for one snapshot, in the
/// engine's own types.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSnapshot {
    /// `GET /containers/{id}/json` for every container.
    pub containers: Vec<ContainerInspectResponse>,
    /// `GET /images/json`.
    pub images: Vec<ImageSummary>,
    /// `GET /volumes`, the `Volumes` list.
    pub volumes: Vec<DockerVolume>,
    /// `GET /networks`.
    pub networks: Vec<DockerNetwork>,
    /// `GET /info`.
    pub info: SystemInfo,
    /// `GET /version`.
    pub version: SystemVersion,
}

pub use crate::sync::redact::REDACTED;

/// How the canonical state is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalOptions {
    /// Redact the values of environment variables and command arguments
    /// that hold credentials (see [`crate::sync::redact`]). On by default.
    pub redact_secrets: bool,
}

impl Default for CanonicalOptions {
    fn default() -> Self {
        Self { redact_secrets: true }
    }
}

impl CanonicalOptions {
    fn env(&self, entry: &str) -> String {
        if self.redact_secrets { crate::sync::redact::env_entry(entry) } else { entry.to_owned() }
    }

    fn args(&self, args: &[String]) -> Vec<String> {
        if self.redact_secrets { crate::sync::redact::arguments(args) } else { args.to_vec() }
    }

    fn labels(&self, labels: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
        let mut out = sorted_map(labels);
        if self.redact_secrets {
            for (k, v) in &mut out {
                *v = crate::sync::redact::label(k, v);
            }
        }
        out
    }
}

/// Parses an RFC 3339 time to whole seconds; Docker's zero time
/// (`0001-01-01T00:00:00Z`), an empty or unparsable text give 0.
pub fn seconds(text: Option<&str>) -> Timestamp {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return 0 };
    match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.year() > 1 => t.unix_timestamp(),
        _ => 0,
    }
}

fn sorted_map(map: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn parse_ip(text: Option<&str>) -> Option<IpAddr> {
    text.filter(|t| !t.is_empty()).and_then(|t| t.parse().ok())
}

fn status(s: Option<ContainerStateStatusEnum>) -> ContainerStatus {
    use ContainerStateStatusEnum as S;
    match s {
        Some(S::CREATED) => ContainerStatus::Created,
        Some(S::RUNNING) => ContainerStatus::Running,
        Some(S::PAUSED) => ContainerStatus::Paused,
        Some(S::RESTARTING) => ContainerStatus::Restarting,
        Some(S::REMOVING) => ContainerStatus::Removing,
        Some(S::EXITED) => ContainerStatus::Exited,
        Some(S::DEAD) => ContainerStatus::Dead,
        _ => ContainerStatus::Unknown,
    }
}

/// `"8080/tcp"` to (8080, Tcp).
fn port_key(key: &str) -> Option<(u16, Protocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match proto {
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => Protocol::Tcp,
    };
    Some((port.parse().ok()?, protocol))
}

/// Converts one inspected container.
///
/// # Errors
/// When the engine gave an id that is not 64 hex digits.
pub fn container(c: &ContainerInspectResponse, opts: &CanonicalOptions) -> Result<Container, InvalidObject> {
    let state = c.state.as_ref();
    let config = c.config.as_ref();
    let host_config = c.host_config.as_ref();

    let mut command: Vec<String> = c.path.iter().cloned().collect();
    command.extend(opts.args(c.args.as_deref().unwrap_or_default()));

    // Ports: configured bindings (stable across stops), plus exposed ports
    // that are not published.
    let mut ports = Vec::new();
    if let Some(bindings) = host_config.and_then(|h| h.port_bindings.as_ref()) {
        for (key, list) in bindings {
            let Some((container_port, protocol)) = port_key(key) else { continue };
            let list = list.as_deref().unwrap_or_default();
            if list.is_empty() {
                ports.push(Port { container_port, protocol, host_ip: None, host_port: 0 });
            }
            for b in list {
                ports.push(Port {
                    container_port,
                    protocol,
                    host_ip: parse_ip(b.host_ip.as_deref()).filter(|ip| !ip.is_unspecified()),
                    host_port: b.host_port.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0),
                });
            }
        }
    }
    for key in config.and_then(|c| c.exposed_ports.as_ref()).into_iter().flatten() {
        if let Some((container_port, protocol)) = port_key(key)
            && !ports.iter().any(|p| p.container_port == container_port && p.protocol == protocol)
        {
            ports.push(Port { container_port, protocol, host_ip: None, host_port: 0 });
        }
    }
    ports.sort();
    ports.dedup();

    let mut mounts: Vec<Mount> = c
        .mounts
        .iter()
        .flatten()
        .map(|m| {
            let kind = match m.typ.as_deref() {
                Some("volume") => MountType::Volume,
                Some("tmpfs") => MountType::Tmpfs,
                Some("npipe") => MountType::Npipe,
                Some("cluster") => MountType::Cluster,
                Some("image") => MountType::Image,
                _ => MountType::Bind,
            };
            let source = match kind {
                MountType::Volume => m.name.clone().or_else(|| m.source.clone()),
                _ => m.source.clone(),
            };
            Mount {
                kind,
                source: source.unwrap_or_default(),
                destination: m.destination.clone().unwrap_or_default(),
                read_only: !m.rw.unwrap_or(true),
            }
        })
        .collect();
    for (dest, options) in host_config.and_then(|h| h.tmpfs.as_ref()).into_iter().flatten() {
        if !mounts.iter().any(|m| &m.destination == dest) {
            let read_only = options.split(',').any(|o| o == "ro");
            mounts.push(Mount { kind: MountType::Tmpfs, source: String::new(), destination: dest.clone(), read_only });
        }
    }
    mounts.sort_by(|a, b| a.destination.cmp(&b.destination).then_with(|| a.cmp(b)));

    let mut networks: Vec<Attachment> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .map(|(name, e)| Attachment {
            network: name.clone(),
            ipv4: match parse_ip(e.ip_address.as_deref()) {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            },
            ipv6: match parse_ip(e.global_ipv6_address.as_deref()) {
                Some(IpAddr::V6(v6)) => Some(v6),
                _ => None,
            },
        })
        .collect();
    networks.sort();

    let (restart_policy, restart_max_retries) = match host_config.and_then(|h| h.restart_policy.as_ref()) {
        Some(p) => (
            match p.name {
                Some(RestartPolicyNameEnum::ALWAYS) => RestartPolicy::Always,
                Some(RestartPolicyNameEnum::UNLESS_STOPPED) => RestartPolicy::UnlessStopped,
                Some(RestartPolicyNameEnum::ON_FAILURE) => RestartPolicy::OnFailure,
                _ => RestartPolicy::No,
            },
            p.maximum_retry_count.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        ),
        None => (RestartPolicy::No, 0),
    };

    let health = match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::None,
    };

    Ok(Container {
        id: Id::parse(c.id.as_deref().unwrap_or_default())?,
        name: c.name.as_deref().unwrap_or_default().trim_start_matches('/').to_owned(),
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        image_id: c.image.as_deref().map(Id::parse).transpose()?,
        command,
        created: seconds(c.created.as_deref()),
        status: status(state.and_then(|s| s.status)),
        started_at: seconds(state.and_then(|s| s.started_at.as_deref())),
        finished_at: seconds(state.and_then(|s| s.finished_at.as_deref())),
        exit_code: state.and_then(|s| s.exit_code).unwrap_or(0).clamp(i32::MIN.into(), i32::MAX.into()) as i32,
        health,
        restart_count: c.restart_count.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        error: state.and_then(|s| s.error.clone()).unwrap_or_default(),
        oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
        labels: opts.labels(config.and_then(|c| c.labels.as_ref())),
        env: config.and_then(|c| c.env.as_ref()).into_iter().flatten().map(|e| opts.env(e)).collect(),
        ports,
        mounts,
        networks,
        restart_policy,
        restart_max_retries,
    })
}

/// Converts one image.
///
/// # Errors
/// When the image id is not a sha256 id.
pub fn image(i: &ImageSummary) -> Result<Image, InvalidObject> {
    let mut tags: Vec<String> = i.repo_tags.iter().filter(|t| *t != "<none>:<none>").cloned().collect();
    tags.sort();
    let mut digests: Vec<String> = i.repo_digests.iter().filter(|t| *t != "<none>@<none>").cloned().collect();
    digests.sort();
    Ok(Image {
        id: Id::parse(&i.id)?,
        tags,
        digests,
        size: i.size,
        created: i.created,
        labels: sorted_map(Some(&i.labels)),
    })
}

/// Converts one volume.
pub fn volume(v: &DockerVolume) -> Volume {
    Volume {
        name: v.name.clone(),
        driver: v.driver.clone(),
        mountpoint: v.mountpoint.clone(),
        labels: sorted_map(Some(&v.labels)),
        created: seconds(v.created_at.as_deref()),
        scope: v.scope.map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// Converts one network.
///
/// # Errors
/// When the network id is not 64 hex digits.
pub fn network(n: &DockerNetwork) -> Result<Network, InvalidObject> {
    Ok(Network {
        id: Id::parse(n.id.as_deref().unwrap_or_default())?,
        name: n.name.clone().unwrap_or_default(),
        driver: n.driver.clone().unwrap_or_default(),
        scope: n.scope.clone().unwrap_or_default(),
        ipam: n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .into_iter()
            .flatten()
            .map(|c| IpamPool {
                subnet: c.subnet.clone().unwrap_or_default(),
                gateway: c.gateway.clone().unwrap_or_default(),
                ip_range: c.ip_range.clone().unwrap_or_default(),
            })
            .collect(),
        labels: sorted_map(n.labels.as_ref()),
        internal: n.internal.unwrap_or(false),
        attachable: n.attachable.unwrap_or(false),
        created: seconds(n.created.as_deref()),
        enable_ipv6: n.enable_ipv6.unwrap_or(false),
    })
}

/// The host, from `/info` and `/version`.
pub fn host(info: &SystemInfo, version: &SystemVersion) -> Host {
    Host {
        hostname: info.name.clone().unwrap_or_default(),
        engine_version: version.version.clone().or_else(|| info.server_version.clone()).unwrap_or_default(),
        api_version: version.api_version.clone().unwrap_or_default(),
        operating_system: info.operating_system.clone().unwrap_or_default(),
        os_type: info.os_type.clone().unwrap_or_default(),
        kernel_version: info.kernel_version.clone().unwrap_or_default(),
        architecture: info.architecture.clone().unwrap_or_default(),
        cpus: info.ncpu.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
        engine_id: info.id.clone().unwrap_or_default(),
    }
}

impl RawSnapshot {
    /// The canonical state of this snapshot.
    ///
    /// # Errors
    /// When the engine returned an id that is not a Docker id.
    pub fn canonical(&self, opts: &CanonicalOptions) -> Result<State, InvalidObject> {
        Ok(State {
            host: host(&self.info, &self.version),
            containers: self.containers.iter().map(|c| container(c, opts)).collect::<Result<Table<_>, _>>()?,
            images: self.images.iter().map(image).collect::<Result<Table<_>, _>>()?,
            volumes: self.volumes.iter().map(volume).collect(),
            networks: self.networks.iter().map(network).collect::<Result<Table<_>, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_by_default_and_kept_when_asked() {
        let opts = CanonicalOptions::default();
        assert_eq!(opts.env("POSTGRES_PASSWORD=hunter2"), "POSTGRES_PASSWORD=<redacted>");
        assert_eq!(opts.env("aws_secret_access_key=x"), "aws_secret_access_key=<redacted>");
        assert_eq!(opts.env("API_TOKEN=abc"), "API_TOKEN=<redacted>");
        assert_eq!(opts.env("PATH=/usr/bin"), "PATH=/usr/bin");
        assert_eq!(opts.env("DB_PASS=w1k1"), "DB_PASS=<redacted>");
        assert_eq!(opts.args(&["--password=x".to_owned()]), ["--password=<redacted>"]);
        let keep = CanonicalOptions { redact_secrets: false };
        assert_eq!(keep.env("POSTGRES_PASSWORD=hunter2"), "POSTGRES_PASSWORD=hunter2");
    }

    #[test]
    fn times_are_whole_seconds_and_zero_time_is_zero() {
        assert_eq!(seconds(Some("2023-11-28T04:42:56.987654321Z")), 1_701_146_576);
        assert_eq!(seconds(Some("2023-11-28T05:42:56+01:00")), 1_701_146_576);
        assert_eq!(seconds(Some("0001-01-01T00:00:00Z")), 0);
        assert_eq!(seconds(Some("garbage")), 0);
        assert_eq!(seconds(None), 0);
    }
}
