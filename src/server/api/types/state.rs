//! An environment's stored state as `GET /api/environments/{id}/state`
//! (and `.../state/{part}`) shows it. Times are seconds since the Unix
//! epoch, `null` for never; ids are 64 hex digits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// The state's views list their fields in alphabetical order, so that they
// serialize byte for byte as the `serde_json::Value` they replaced did.

/// A container's published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// Port inside the container.
    pub container_port: u16,
    /// Host address it is published on, if any.
    pub host_ip: Option<String>,
    /// Host port, `null` when not published.
    pub host_port: Option<u16>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// A container's mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountView {
    /// Path inside the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Host path or volume name.
    pub source: String,
    /// `bind`, `volume`, `tmpfs`, `npipe`, `cluster` or `image`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A container's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNetworkView {
    /// IPv4 address while the container runs.
    pub ipv4: Option<String>,
    /// Global IPv6 address while the container runs.
    pub ipv6: Option<String>,
    /// Name.
    pub name: String,
}

/// A container in a stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    /// Command and arguments.
    pub command: Vec<String>,
    /// When it was created, `null` if unknown.
    pub created: Option<i64>,
    /// Environment, `NAME=value`.
    pub env: Vec<String>,
    /// Last error, `null` for none.
    pub error: Option<String>,
    /// Last exit code.
    pub exit_code: i32,
    /// When it last stopped.
    pub finished_at: Option<i64>,
    /// `starting`, `healthy` or `unhealthy`; `null` without a health check.
    pub health: Option<String>,
    /// Id (64 hex digits).
    pub id: String,
    /// Image as configured.
    pub image: String,
    /// The image's id (64 hex digits), if known.
    pub image_id: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Mounts.
    pub mounts: Vec<MountView>,
    /// Name.
    pub name: String,
    /// Networks.
    pub networks: Vec<ContainerNetworkView>,
    /// Killed for lack of memory.
    pub oom_killed: bool,
    /// Published ports.
    pub ports: Vec<PortView>,
    /// Restarts so far.
    pub restart_count: u32,
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub restart_policy: String,
    /// When it last started.
    pub started_at: Option<i64>,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead` or `unknown`.
    pub status: String,
}

/// An image in a stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    /// When it was created, `null` if unknown.
    pub created: Option<i64>,
    /// Repository digests.
    pub digests: Vec<String>,
    /// Id (64 hex digits).
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Size in bytes.
    pub size: i64,
    /// Tags.
    pub tags: Vec<String>,
}

/// A volume in a stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    /// When it was created, `null` if unknown.
    pub created: Option<i64>,
    /// Driver.
    pub driver: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where it lives on the host.
    pub mountpoint: String,
    /// Name.
    pub name: String,
    /// `local`, `global` or `swarm`.
    pub scope: String,
}

/// A network's address pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    /// Gateway.
    pub gateway: String,
    /// Address range.
    pub ip_range: String,
    /// Subnet.
    pub subnet: String,
}

/// A network in a stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Containers may attach to it.
    pub attachable: bool,
    /// When it was created, `null` if unknown.
    pub created: Option<i64>,
    /// Driver.
    pub driver: String,
    /// IPv6 enabled.
    pub enable_ipv6: bool,
    /// Id (64 hex digits).
    pub id: String,
    /// No outside access.
    pub internal: bool,
    /// Address pools.
    pub ipam: Vec<IpamView>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Name.
    pub name: String,
    /// `local`, `global` or `swarm`.
    pub scope: String,
}

/// A compose stack seen in a stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStateView {
    /// Compose files.
    pub config_files: Vec<String>,
    /// Containers.
    pub containers: Vec<String>,
    /// Name.
    pub name: String,
    /// Services.
    pub services: Vec<String>,
    /// Compose working directory.
    pub working_dir: String,
}

/// The host a stored state describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Docker API version.
    pub api_version: String,
    /// CPU architecture.
    pub architecture: String,
    /// CPUs.
    pub cpus: u32,
    /// The engine's id.
    pub engine_id: String,
    /// Docker engine version.
    pub engine_version: String,
    /// Host name.
    pub hostname: String,
    /// Kernel version.
    pub kernel_version: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Operating system.
    pub operating_system: String,
    /// `linux` or `windows`.
    pub os_type: String,
}

/// An environment's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    /// Containers.
    pub containers: Vec<ContainerView>,
    /// The host.
    pub host: HostView,
    /// Images.
    pub images: Vec<ImageView>,
    /// Networks.
    pub networks: Vec<NetworkView>,
    /// The state's Merkle root, hex.
    pub root: String,
    /// Sequence number of the stored state.
    pub seq: u64,
    /// Compose stacks, from the containers' labels.
    pub stacks: Vec<StackStateView>,
    /// Volumes.
    pub volumes: Vec<VolumeView>,
}

/// `GET /api/environments/{id}/state`: the stored state, with when it was
/// last known to be the host's and its age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentStateView {
    /// The stored state.
    #[serde(flatten)]
    pub state: StateView,
    /// When it was last known to be the host's, `null` for never.
    pub as_of: Option<i64>,
    /// Seconds since `as_of`.
    pub snapshot_age_s: Option<i64>,
    /// The environment's status (as in the fleet list).
    pub status: String,
}

/// `GET /api/environments/{id}/state/{part}`: one part of the stored
/// state (the others absent), with the same `seq`, `root`, `as_of`,
/// `snapshot_age_s` and `status` as the whole. The whole
/// ([`EnvironmentStateView`]) reads as this too, every part present.
/// Fields in alphabetical order: the order the JSON has always had.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePartView {
    /// When it was last known to be the host's, `null` for never.
    pub as_of: Option<i64>,
    /// Containers, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<ContainerView>>,
    /// The host, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostView>,
    /// Images, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageView>>,
    /// Networks, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<NetworkView>>,
    /// The state's Merkle root, hex.
    pub root: String,
    /// Sequence number of the stored state.
    pub seq: u64,
    /// Seconds since `as_of`.
    pub snapshot_age_s: Option<i64>,
    /// Compose stacks, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<Vec<StackStateView>>,
    /// The environment's status (as in the fleet list).
    pub status: String,
    /// Volumes, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<VolumeView>>,
}

impl StatePartView {
    /// `part` (one of the state's list names) of `whole`; `None` for an
    /// unknown part.
    pub fn of(whole: EnvironmentStateView, part: &str) -> Option<Self> {
        let s = whole.state;
        let mut out = Self {
            as_of: whole.as_of,
            root: s.root,
            seq: s.seq,
            snapshot_age_s: whole.snapshot_age_s,
            status: whole.status,
            ..Self::default()
        };
        match part {
            "host" => out.host = Some(s.host),
            "containers" => out.containers = Some(s.containers),
            "images" => out.images = Some(s.images),
            "volumes" => out.volumes = Some(s.volumes),
            "networks" => out.networks = Some(s.networks),
            "stacks" => out.stacks = Some(s.stacks),
            _ => return None,
        }
        Some(out)
    }
}
