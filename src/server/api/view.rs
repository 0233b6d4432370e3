//! What the store and the synced state hold, as the API's types
//! ([`super::types`]) show it to operators: the conversions from the
//! store's records, the typed view of a stored state ([`state`]), and the
//! command actions the API takes by name ([`ACTIONS`]). Times are seconds
//! since the Unix epoch, `null` for never; ids are 64 hex digits.

use super::types::{
    CommandView, ContainerNetworkView, ContainerView, CountsView, EnvironmentDetail, EnvironmentItem, FleetCountsView,
    HostView, ImageView, IntervalsBody, IpamView, MountView, NetworkView, PortView, StackStateView, StateView,
    VolumeView,
};
use crate::server::store::fleet::FleetCounts;
use crate::server::store::{CommandRecord, EnvironmentInfo, EnvironmentSummary, IntervalSettings};
use crate::sync::State;
use crate::sync::state::{ContainerStatus, Health, MountType, Protocol, RestartPolicy, Timestamp};
use crate::wire::poll::{Action, ContainerOp};

impl From<IntervalsBody> for IntervalSettings {
    fn from(b: IntervalsBody) -> Self {
        Self { ping: b.ping, snapshot: b.snapshot, command: b.command }
    }
}

impl From<IntervalSettings> for IntervalsBody {
    fn from(s: IntervalSettings) -> Self {
        Self { ping: s.ping, snapshot: s.snapshot, command: s.command }
    }
}

impl From<FleetCounts> for FleetCountsView {
    fn from(c: FleetCounts) -> Self {
        Self {
            containers: c.containers,
            running: c.running,
            paused: c.paused,
            stopped: c.stopped,
            unhealthy: c.unhealthy,
            images: c.images,
            volumes: c.volumes,
            networks: c.networks,
            stacks: c.stacks,
        }
    }
}

impl From<EnvironmentInfo> for EnvironmentItem {
    fn from(e: EnvironmentInfo) -> Self {
        Self {
            id: e.id,
            name: e.name,
            edge_id: e.edge_id,
            created_at: e.created_at,
            last_poll_at: e.last_poll_at,
            snapshot_at: e.snapshot_at,
        }
    }
}

impl From<EnvironmentSummary> for EnvironmentDetail {
    fn from(s: EnvironmentSummary) -> Self {
        Self {
            item: s.info.into(),
            seq: s.seq,
            root: hex(&s.root),
            counts: CountsView {
                containers: s.counts.containers,
                images: s.counts.images,
                volumes: s.counts.volumes,
                networks: s.counts.networks,
                stacks: s.counts.stacks,
            },
            intervals: s.intervals.into(),
            effective_intervals: s.effective.into(),
            agent_intervals: s.agent_intervals.map(Into::into),
            commands_seen: s.commands_seen,
        }
    }
}

impl From<CommandRecord> for CommandView {
    fn from(c: CommandRecord) -> Self {
        Self {
            id: c.id,
            environment: c.environment,
            action: action_name(&c.action).to_owned(),
            target: action_target(&c.action),
            status: c.status.as_str().to_owned(),
            error: (!c.error.is_empty()).then_some(c.error),
            created_at: c.created_at,
            sent_at: c.sent_at,
            delivered_at: c.delivered_at,
            finished_at: c.finished_at,
            output: None,
        }
    }
}

/// The action names the API takes, each with what its target names.
pub const ACTIONS: &[(&str, Kind)] = &[
    ("container.start", Kind::Container(ContainerOp::Start)),
    ("container.stop", Kind::Container(ContainerOp::Stop)),
    ("container.restart", Kind::Container(ContainerOp::Restart)),
    ("container.kill", Kind::Container(ContainerOp::Kill)),
    ("container.pause", Kind::Container(ContainerOp::Pause)),
    ("container.unpause", Kind::Container(ContainerOp::Unpause)),
    ("container.remove", Kind::Container(ContainerOp::Remove)),
    ("image.pull", Kind::ImagePull),
    ("image.remove", Kind::ImageRemove),
    ("volume.remove", Kind::VolumeRemove),
    ("network.remove", Kind::NetworkRemove),
    ("container.logs", Kind::ContainerLogs),
];

/// An action before its target is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// On a container (id, prefix or name).
    Container(ContainerOp),
    /// Pull an image (reference).
    ImagePull,
    /// Remove an image (reference or id).
    ImageRemove,
    /// Remove a volume (name).
    VolumeRemove,
    /// Remove a network (id, prefix or name).
    NetworkRemove,
    /// A container's last log lines (id, prefix or name).
    ContainerLogs,
}

/// The API's name of an action.
pub fn action_name(action: &Action) -> &'static str {
    let kind = match action {
        Action::Container(op, _) => Kind::Container(*op),
        Action::ImagePull(_) => Kind::ImagePull,
        Action::ImageRemove(_) => Kind::ImageRemove,
        Action::VolumeRemove(_) => Kind::VolumeRemove,
        Action::NetworkRemove(_) => Kind::NetworkRemove,
        Action::ContainerLogs(..) => Kind::ContainerLogs,
        // Queued by the stacks and jobs APIs, not by name here.
        Action::StackDeploy(_) => return "stack.deploy",
        Action::StackRemove(_) => return "stack.remove",
        Action::Job(j) if j.cron.is_empty() => return "job.run",
        Action::Job(_) => return "job.schedule",
        Action::JobRemove(_) => return "job.remove",
        Action::ImageFetch(_) => return "image.fetch",
        Action::AgentUpdate(_) => return "agent.update",
    };
    ACTIONS.iter().find(|(_, k)| *k == kind).map_or("unknown", |(name, _)| name)
}

fn action_target(action: &Action) -> String {
    match action {
        Action::Container(_, id) | Action::NetworkRemove(id) | Action::ContainerLogs(id, _) => id.to_string(),
        Action::ImagePull(r) | Action::ImageRemove(r) | Action::VolumeRemove(r) | Action::StackRemove(r) => r.clone(),
        Action::StackDeploy(st) => st.name.clone(),
        Action::Job(j) => j.job.to_string(),
        Action::JobRemove(job) => job.to_string(),
        Action::ImageFetch(f) => f.reference.clone(),
        Action::AgentUpdate(u) => u.image.reference.clone(),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn time(t: Timestamp) -> Option<Timestamp> {
    (t != 0).then_some(t)
}

fn status(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Unknown => "unknown",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Paused => "paused",
        ContainerStatus::Restarting => "restarting",
        ContainerStatus::Removing => "removing",
        ContainerStatus::Exited => "exited",
        ContainerStatus::Dead => "dead",
    }
}

fn health(h: Health) -> Option<&'static str> {
    match h {
        Health::None => None,
        Health::Starting => Some("starting"),
        Health::Healthy => Some("healthy"),
        Health::Unhealthy => Some("unhealthy"),
    }
}

fn restart_policy(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::No => "no",
        RestartPolicy::Always => "always",
        RestartPolicy::UnlessStopped => "unless-stopped",
        RestartPolicy::OnFailure => "on-failure",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn mount_type(m: MountType) -> &'static str {
    match m {
        MountType::Bind => "bind",
        MountType::Volume => "volume",
        MountType::Tmpfs => "tmpfs",
        MountType::Npipe => "npipe",
        MountType::Cluster => "cluster",
        MountType::Image => "image",
    }
}

/// An environment's stored state, as its typed view.
pub fn state(seq: u64, state: &State) -> StateView {
    let h = &state.host;
    let containers = state
        .containers
        .iter()
        .map(|c| ContainerView {
            id: c.id.to_string(),
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.map(|i| i.to_string()),
            status: status(c.status).into(),
            health: health(c.health).map(Into::into),
            created: time(c.created),
            started_at: time(c.started_at),
            finished_at: time(c.finished_at),
            exit_code: c.exit_code,
            restart_count: c.restart_count,
            restart_policy: restart_policy(c.restart_policy).into(),
            oom_killed: c.oom_killed,
            error: (!c.error.is_empty()).then(|| c.error.clone()),
            command: c.command.clone(),
            labels: c.labels.clone(),
            env: c.env.clone(),
            ports: c
                .ports
                .iter()
                .map(|p| PortView {
                    container_port: p.container_port,
                    protocol: protocol(p.protocol).into(),
                    host_ip: p.host_ip.map(|ip| ip.to_string()),
                    host_port: (p.host_port != 0).then_some(p.host_port),
                })
                .collect(),
            mounts: c
                .mounts
                .iter()
                .map(|m| MountView {
                    kind: mount_type(m.kind).into(),
                    source: m.source.clone(),
                    destination: m.destination.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            networks: c
                .networks
                .iter()
                .map(|n| ContainerNetworkView {
                    name: n.network.clone(),
                    ipv4: n.ipv4.map(|ip| ip.to_string()),
                    ipv6: n.ipv6.map(|ip| ip.to_string()),
                })
                .collect(),
        })
        .collect();
    let images = state
        .images
        .iter()
        .map(|i| ImageView {
            id: i.id.to_string(),
            tags: i.tags.clone(),
            digests: i.digests.clone(),
            size: i.size,
            created: time(i.created),
            labels: i.labels.clone(),
        })
        .collect();
    let volumes = state
        .volumes
        .iter()
        .map(|v| VolumeView {
            name: v.name.clone(),
            driver: v.driver.clone(),
            mountpoint: v.mountpoint.clone(),
            scope: v.scope.clone(),
            created: time(v.created),
            labels: v.labels.clone(),
        })
        .collect();
    let networks = state
        .networks
        .iter()
        .map(|n| NetworkView {
            id: n.id.to_string(),
            name: n.name.clone(),
            driver: n.driver.clone(),
            scope: n.scope.clone(),
            internal: n.internal,
            attachable: n.attachable,
            enable_ipv6: n.enable_ipv6,
            created: time(n.created),
            ipam: n
                .ipam
                .iter()
                .map(|p| IpamView {
                    subnet: p.subnet.clone(),
                    gateway: p.gateway.clone(),
                    ip_range: p.ip_range.clone(),
                })
                .collect(),
            labels: n.labels.clone(),
        })
        .collect();
    let stacks = state
        .stacks()
        .into_iter()
        .map(|s| StackStateView {
            name: s.name,
            working_dir: s.working_dir,
            config_files: s.config_files,
            services: s.services,
            containers: s.containers.iter().map(ToString::to_string).collect(),
        })
        .collect();
    StateView {
        seq,
        root: hex(&state.root()),
        host: HostView {
            hostname: h.hostname.clone(),
            engine_version: h.engine_version.clone(),
            api_version: h.api_version.clone(),
            operating_system: h.operating_system.clone(),
            os_type: h.os_type.clone(),
            kernel_version: h.kernel_version.clone(),
            architecture: h.architecture.clone(),
            cpus: h.cpus,
            memory_bytes: h.memory_bytes,
            engine_id: h.engine_id.clone(),
        },
        containers,
        images,
        volumes,
        networks,
        stacks,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::sync::state::{Attachment, Container, Id, Image, IpamPool, Mount, Network, Port, Volume};

    /// The `json!` code [`state`] replaced, kept to check the typed view against.
    fn state_json_reference(seq: u64, state: &State) -> Value {
        let h = &state.host;
        let containers: Vec<Value> = state
            .containers
            .iter()
            .map(|c| {
                json!({
                    "id": c.id.to_string(),
                    "name": c.name,
                    "image": c.image,
                    "image_id": c.image_id.map(|i| i.to_string()),
                    "status": status(c.status),
                    "health": health(c.health),
                    "created": time(c.created),
                    "started_at": time(c.started_at),
                    "finished_at": time(c.finished_at),
                    "exit_code": c.exit_code,
                    "restart_count": c.restart_count,
                    "restart_policy": restart_policy(c.restart_policy),
                    "oom_killed": c.oom_killed,
                    "error": (!c.error.is_empty()).then_some(&c.error),
                    "command": c.command,
                    "labels": c.labels,
                    "env": c.env,
                    "ports": c.ports.iter().map(|p| json!({
                        "container_port": p.container_port,
                        "protocol": protocol(p.protocol),
                        "host_ip": p.host_ip.map(|ip| ip.to_string()),
                        "host_port": (p.host_port != 0).then_some(p.host_port),
                    })).collect::<Vec<_>>(),
                    "mounts": c.mounts.iter().map(|m| json!({
                        "type": mount_type(m.kind),
                        "source": m.source,
                        "destination": m.destination,
                        "read_only": m.read_only,
                    })).collect::<Vec<_>>(),
                    "networks": c.networks.iter().map(|n| json!({
                        "name": n.network,
                        "ipv4": n.ipv4.map(|ip| ip.to_string()),
                        "ipv6": n.ipv6.map(|ip| ip.to_string()),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let images: Vec<Value> = state
            .images
            .iter()
            .map(|i| {
                json!({
                    "id": i.id.to_string(),
                    "tags": i.tags,
                    "digests": i.digests,
                    "size": i.size,
                    "created": time(i.created),
                    "labels": i.labels,
                })
            })
            .collect();
        let volumes: Vec<Value> = state
            .volumes
            .iter()
            .map(|v| {
                json!({
                    "name": v.name,
                    "driver": v.driver,
                    "mountpoint": v.mountpoint,
                    "scope": v.scope,
                    "created": time(v.created),
                    "labels": v.labels,
                })
            })
            .collect();
        let networks: Vec<Value> = state
            .networks
            .iter()
            .map(|n| {
                json!({
                    "id": n.id.to_string(),
                    "name": n.name,
                    "driver": n.driver,
                    "scope": n.scope,
                    "internal": n.internal,
                    "attachable": n.attachable,
                    "enable_ipv6": n.enable_ipv6,
                    "created": time(n.created),
                    "ipam": n.ipam.iter().map(|p| json!({
                        "subnet": p.subnet,
                        "gateway": p.gateway,
                        "ip_range": p.ip_range,
                    })).collect::<Vec<_>>(),
                    "labels": n.labels,
                })
            })
            .collect();
        let stacks: Vec<Value> = state
            .stacks()
            .into_iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "working_dir": s.working_dir,
                    "config_files": s.config_files,
                    "services": s.services,
                    "containers": s.containers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "seq": seq,
            "root": hex(&state.root()),
            "host": {
                "hostname": h.hostname,
                "engine_version": h.engine_version,
                "api_version": h.api_version,
                "operating_system": h.operating_system,
                "os_type": h.os_type,
                "kernel_version": h.kernel_version,
                "architecture": h.architecture,
                "cpus": h.cpus,
                "memory_bytes": h.memory_bytes,
                "engine_id": h.engine_id,
            },
            "containers": containers,
            "images": images,
            "volumes": volumes,
            "networks": networks,
            "stacks": stacks,
        })
    }

    fn sample() -> State {
        let mut s = State::default();
        s.host.hostname = "ship-1".into();
        s.host.engine_version = "27.0.1".into();
        s.host.cpus = 4;
        s.host.memory_bytes = 8 << 30;
        let id = |first: u8| Id([first; 32]);
        let mut labels = BTreeMap::new();
        labels.insert("com.docker.compose.project".into(), "shop".into());
        labels.insert("com.docker.compose.service".into(), "web".into());
        labels.insert("com.docker.compose.project.working_dir".into(), "/srv/shop".into());
        labels.insert("com.docker.compose.project.config_files".into(), "/srv/shop/compose.yaml".into());
        s.containers.insert(Container {
            id: id(1),
            name: "web".into(),
            image: "nginx:1.25".into(),
            image_id: Some(id(5)),
            command: vec!["nginx".into(), "-g".into()],
            created: 1_700_000_000,
            status: ContainerStatus::Running,
            started_at: 1_700_000_010,
            health: Health::Healthy,
            restart_count: 2,
            labels,
            env: vec!["A=1".into()],
            ports: vec![
                Port {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: Some("0.0.0.0".parse().unwrap()),
                    host_port: 8080,
                },
                Port { container_port: 53, protocol: Protocol::Udp, host_ip: None, host_port: 0 },
            ],
            mounts: vec![Mount {
                kind: MountType::Volume,
                source: "data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            networks: vec![Attachment {
                network: "bridge".into(),
                ipv4: Some("172.17.0.2".parse().unwrap()),
                ipv6: None,
            }],
            restart_policy: RestartPolicy::UnlessStopped,
            ..Container::default()
        });
        s.containers.insert(Container {
            id: id(2),
            name: "db".into(),
            image: "postgres".into(),
            status: ContainerStatus::Exited,
            finished_at: 1_700_000_100,
            exit_code: 137,
            oom_killed: true,
            error: "killed".into(),
            ..Container::default()
        });
        s.images.insert(Image {
            id: id(5),
            tags: vec!["nginx:1.25".into()],
            digests: vec!["nginx@sha256:00".into()],
            size: 1234,
            created: 1_600_000_000,
            ..Image::default()
        });
        s.volumes.insert(Volume {
            name: "data".into(),
            driver: "local".into(),
            scope: "local".into(),
            ..Volume::default()
        });
        s.networks.insert(Network {
            id: id(6),
            name: "bridge".into(),
            driver: "bridge".into(),
            scope: "local".into(),
            ipam: vec![IpamPool {
                subnet: "172.17.0.0/16".into(),
                gateway: "172.17.0.1".into(),
                ip_range: String::new(),
            }],
            internal: false,
            attachable: true,
            enable_ipv6: true,
            created: 1_650_000_000,
            ..Network::default()
        });
        s
    }

    #[test]
    fn state_view_serializes_as_the_json_it_replaced() {
        for s in [State::default(), sample()] {
            let view = state(7, &s);
            let typed = serde_json::to_value(&view).unwrap();
            assert_eq!(typed, state_json_reference(7, &s));
            assert_eq!(serde_json::to_string(&view).unwrap(), state_json_reference(7, &s).to_string());
            let back: StateView = serde_json::from_value(typed).unwrap();
            assert_eq!(back, view);
        }
        assert!(!state(7, &sample()).stacks.is_empty(), "the sample has a stack");
    }
}
