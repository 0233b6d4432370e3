//! The canonical state of a Docker host: sorted, deterministic, without the
//! fields that change on their own (status text, system time, live stats).
//!
//! Each object is kept together with its canonical protobuf encoding and the
//! blake3 digest of that encoding, computed once when it is inserted, so
//! digests, diffs and snapshots never re-encode an unchanged object.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message;

use crate::wire::pb;

/// Seconds since the Unix epoch; 0 means "never" (Docker's zero time).
pub type Timestamp = i64;

/// A 32-byte Docker id (container, image or network), kept raw. It is
/// written as 64 hex digits, as Docker does.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Parses 64 hex digits, with or without a `sha256:` prefix.
    ///
    /// # Errors
    /// When the text is not exactly 64 hex digits after the prefix.
    pub fn parse(text: &str) -> Result<Self, InvalidObject> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let bad = || InvalidObject::BadId(text.chars().take(80).collect());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidObject> {
        <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| InvalidObject::BadIdLength(bytes.len()))
    }

    /// The first 12 hex digits, as `docker ps` shows them.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Why an object received from the wire is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObject {
    /// A Docker id that is not 64 hex digits.
    #[error("invalid id {0:?}")]
    BadId(String),
    /// A raw id that is not 32 bytes.
    #[error("id of {0} bytes, expected 32")]
    BadIdLength(usize),
    /// An IP address that is not 4 or 16 bytes.
    #[error("IP address of {0} bytes")]
    BadIp(usize),
    /// An enum value this build does not know.
    #[error("unknown {what} value {value}")]
    UnknownEnum {
        /// Which enum.
        what: &'static str,
        /// The value received.
        value: i32,
    },
    /// A port number above 65535.
    #[error("port {0} out of range")]
    BadPort(u32),
    /// An endpoint naming a network the container is not on.
    #[error("endpoint refers to network #{0}, which the container does not list")]
    BadEndpoint(u32),
    /// The bytes are not a valid encoding of the object's message.
    #[error("undecodable object: {0}")]
    Decode(String),
}

fn ip_from_bytes(bytes: &[u8]) -> Result<Option<IpAddr>, InvalidObject> {
    match bytes.len() {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))))),
        16 => Ok(Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))))),
        n => Err(InvalidObject::BadIp(n)),
    }
}

fn ip_to_bytes(ip: Option<IpAddr>) -> Vec<u8> {
    match ip {
        None => Vec::new(),
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
    }
}

/// A time relative to `base` for the wire: 0 for never, else offset + 1.
fn after(base: Timestamp, t: Timestamp) -> i64 {
    if t == 0 { 0 } else { t.wrapping_sub(base).wrapping_add(1) }
}

/// The inverse of [`after`].
fn at(base: Timestamp, wire: i64) -> Timestamp {
    if wire == 0 { 0 } else { base.wrapping_add(wire).wrapping_sub(1) }
}

fn port(value: u32) -> Result<u16, InvalidObject> {
    u16::try_from(value).map_err(|_| InvalidObject::BadPort(value))
}

/// Declares a Rust enum mirroring a protobuf enum, with checked conversion.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident from $pb:ident { $($(#[$vm:meta])* $variant:ident = $pbv:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[allow(missing_docs)]
        pub enum $name {
            #[default]
            $($(#[$vm])* $variant),+
        }
        impl $name {
            fn to_wire(self) -> i32 {
                match self { $(Self::$variant => pb::$pb::$pbv as i32),+ }
            }
            fn from_wire(value: i32) -> Result<Self, InvalidObject> {
                match pb::$pb::try_from(value) {
                    $(Ok(pb::$pb::$pbv) => Ok(Self::$variant),)+
                    #[allow(unreachable_patterns)]
                    _ => Err(InvalidObject::UnknownEnum { what: stringify!($name), value }),
                }
            }
        }
    };
}

wire_enum!(
    /// A container's state, as the engine's `State.Status` says.
    ContainerStatus from ContainerStatus {
        /// A status this build could not map (a newer engine).
        Unknown = Unspecified, Created = Created, Running = Running, Paused = Paused,
        Restarting = Restarting, Removing = Removing, Exited = Exited, Dead = Dead,
    }
);

wire_enum!(
    /// A container's health check status.
    Health from HealthStatus {
        /// No health check configured.
        None = None, Starting = Starting, Healthy = Healthy, Unhealthy = Unhealthy,
    }
);

wire_enum!(
    /// A container's restart policy.
    RestartPolicy from RestartPolicy {
        /// Never restart (Docker's default).
        No = No, Always = Always, UnlessStopped = UnlessStopped, OnFailure = OnFailure,
    }
);

wire_enum!(
    /// A port's protocol.
    Protocol from Protocol {
        /// TCP (Docker's default).
        Tcp = Tcp, Udp = Udp, Sctp = Sctp,
    }
);

wire_enum!(
    /// What kind of mount.
    MountType from MountType {
        /// A host path.
        Bind = Bind, Volume = Volume, Tmpfs = Tmpfs, Npipe = Npipe, Cluster = Cluster, Image = Image,
    }
);

/// A port a container exposes, and where it is published on the host.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Port inside the container.
    pub container_port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Host address it is published on; `None` for all addresses or unpublished.
    pub host_ip: Option<IpAddr>,
    /// Host port; 0 when only exposed.
    pub host_port: u16,
}

/// A mount in a container.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mount {
    /// Bind, volume, tmpfs...
    pub kind: MountType,
    /// The volume name for volumes, the host path for binds.
    pub source: String,
    /// The path inside the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A container's attachment to a network.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    /// The network's name.
    pub network: String,
    /// IPv4 address while the container runs.
    pub ipv4: Option<Ipv4Addr>,
    /// Global IPv6 address while the container runs.
    pub ipv6: Option<Ipv6Addr>,
}

/// A container.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// The container id.
    pub id: Id,
    /// Name without the leading `/`.
    pub name: String,
    /// The image as configured (`nginx:1.25`).
    pub image: String,
    /// The id of the image it runs.
    pub image_id: Option<Id>,
    /// Path and arguments, as the engine runs them.
    pub command: Vec<String>,
    /// Creation time.
    pub created: Timestamp,
    /// Running, exited...
    pub status: ContainerStatus,
    /// Last start.
    pub started_at: Timestamp,
    /// Last exit.
    pub finished_at: Timestamp,
    /// Exit code of the last run.
    pub exit_code: i32,
    /// Health check status.
    pub health: Health,
    /// Restarts by the engine's restart policy.
    pub restart_count: u32,
    /// The engine's error text for the last start, if any.
    pub error: String,
    /// Killed for running out of memory.
    pub oom_killed: bool,
    /// Labels (including the compose labels stacks are derived from).
    pub labels: BTreeMap<String, String>,
    /// `KEY=VALUE` pairs, secret values redacted.
    pub env: Vec<String>,
    /// Exposed and published ports, sorted.
    pub ports: Vec<Port>,
    /// Mounts, sorted by destination.
    pub mounts: Vec<Mount>,
    /// Networks, sorted by name.
    pub networks: Vec<Attachment>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Retries for `on-failure`.
    pub restart_max_retries: u32,
}

/// An image.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// The image id (sha256 of its config).
    pub id: Id,
    /// `repo:tag` names.
    pub tags: Vec<String>,
    /// `repo@sha256:...` digests.
    pub digests: Vec<String>,
    /// Size in bytes.
    pub size: i64,
    /// Build time.
    pub created: Timestamp,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A volume.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Volume {
    /// The volume's name (its key).
    pub name: String,
    /// Volume driver.
    pub driver: String,
    /// Where it lives on the host.
    pub mountpoint: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time.
    pub created: Timestamp,
    /// `local` or `global`.
    pub scope: String,
}

/// One IPAM pool of a network.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct IpamPool {
    /// CIDR subnet.
    pub subnet: String,
    /// Gateway address.
    pub gateway: String,
    /// Sub-range containers get addresses from.
    pub ip_range: String,
}

/// A network.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The network id.
    pub id: Id,
    /// Its name.
    pub name: String,
    /// bridge, overlay, host...
    pub driver: String,
    /// local, swarm, global.
    pub scope: String,
    /// Address pools.
    pub ipam: Vec<IpamPool>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// No outside connectivity.
    pub internal: bool,
    /// Standalone containers may attach.
    pub attachable: bool,
    /// Creation time.
    pub created: Timestamp,
    /// IPv6 enabled.
    pub enable_ipv6: bool,
}

/// The Docker host itself.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Host {
    /// The engine host's name.
    pub hostname: String,
    /// Engine version (`24.0.7`).
    pub engine_version: String,
    /// Engine API version (`1.43`).
    pub api_version: String,
    /// Operating system description.
    pub operating_system: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub architecture: String,
    /// Number of CPUs.
    pub cpus: u32,
    /// Total memory.
    pub memory_bytes: u64,
    /// The engine's own id.
    pub engine_id: String,
}

/// A compose project, derived from its containers' labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stack {
    /// `com.docker.compose.project`.
    pub name: String,
    /// `com.docker.compose.project.working_dir`.
    pub working_dir: String,
    /// `com.docker.compose.project.config_files`, split on commas.
    pub config_files: Vec<String>,
    /// Service names, sorted.
    pub services: Vec<String>,
    /// The stack's containers, sorted.
    pub containers: Vec<Id>,
}

/// The kinds of object a state holds, with their digest domain tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The host.
    Host = 1,
    /// Containers.
    Container = 2,
    /// Images.
    Image = 3,
    /// Volumes.
    Volume = 4,
    /// Networks.
    Network = 5,
}

/// An object kept in a [`Table`]: convertible to and from its wire message.
pub trait Object: Clone + PartialEq + fmt::Debug {
    /// What identifies the object within its kind.
    type Key: Ord + Clone + fmt::Debug;
    /// Its wire message.
    #[doc(hidden)]
    type Proto: Message + Default;
    /// Its kind.
    const KIND: Kind;
    /// Its key.
    fn key(&self) -> Self::Key;
    #[doc(hidden)]
    fn to_proto(&self) -> Self::Proto;
    #[doc(hidden)]
    fn from_proto(p: Self::Proto) -> Result<Self, InvalidObject>;

    /// Its canonical encoding.
    fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Decodes and validates an encoded object.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding or hold invalid values.
    fn decode(bytes: &[u8]) -> Result<Self, InvalidObject> {
        Self::from_proto(Self::Proto::decode(bytes).map_err(|e| InvalidObject::Decode(e.to_string()))?)
    }
}

/// A blake3 digest.
pub type Digest = [u8; 32];

/// The digest of one encoded object of a kind.
pub fn object_digest(kind: Kind, encoded: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[kind as u8]);
    h.update(encoded);
    *h.finalize().as_bytes()
}

#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    pub(crate) value: T,
    pub(crate) encoded: Vec<u8>,
    pub(crate) digest: Digest,
}

impl<T: Object> Entry<T> {
    fn new(value: T) -> Self {
        let encoded = value.encode();
        let digest = object_digest(T::KIND, &encoded);
        Self { value, encoded, digest }
    }

    /// An entry for an encoding received from a peer. The bytes are kept as
    /// received (after they decode and validate), so fields added by a newer
    /// peer survive and the digest is the one the peer computed: an older
    /// server does not fall into a resync loop with a newer agent.
    pub(crate) fn received(encoded: Vec<u8>) -> Result<Self, InvalidObject> {
        let value = T::decode(&encoded)?;
        let digest = object_digest(T::KIND, &encoded);
        Ok(Self { value, encoded, digest })
    }
}

/// The objects of one kind, sorted by key, each with its encoding and digest.
#[derive(Debug, Clone)]
pub struct Table<T: Object> {
    pub(crate) entries: BTreeMap<T::Key, Entry<T>>,
}

impl<T: Object> Default for Table<T> {
    fn default() -> Self {
        Self { entries: BTreeMap::new() }
    }
}

impl<T: Object> PartialEq for Table<T> {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|((ka, a), (kb, b))| ka == kb && a.digest == b.digest)
    }
}

impl<T: Object> Table<T> {
    /// Inserts or replaces an object; returns the one it replaced.
    pub fn insert(&mut self, value: T) -> Option<T> {
        self.entries.insert(value.key(), Entry::new(value)).map(|e| e.value)
    }

    pub(crate) fn insert_entry(&mut self, entry: Entry<T>) {
        self.entries.insert(entry.value.key(), entry);
    }

    /// Removes an object.
    pub fn remove(&mut self, key: &T::Key) -> Option<T> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// The object with this key.
    pub fn get(&self, key: &T::Key) -> Option<&T> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The digest of the object with this key.
    pub fn digest(&self, key: &T::Key) -> Option<&Digest> {
        self.entries.get(key).map(|e| &e.digest)
    }

    /// Objects in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.entries.values().map(|e| &e.value)
    }

    /// How many objects.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(feature = "arbitrary")]
impl<'a, T: Object + arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for Table<T> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(u.arbitrary_iter::<T>()?.collect::<arbitrary::Result<Vec<T>>>()?.into_iter().collect())
    }
}

impl<T: Object> FromIterator<T> for Table<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut t = Self::default();
        iter.into_iter().for_each(|v| {
            t.insert(v);
        });
        t
    }
}

/// The whole canonical state of a host.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The host (engine and machine).
    pub host: Host,
    /// Containers by id.
    pub containers: Table<Container>,
    /// Images by id.
    pub images: Table<Image>,
    /// Volumes by name.
    pub volumes: Table<Volume>,
    /// Networks by id.
    pub networks: Table<Network>,
}

/// The root digest of the empty state.
pub fn empty_root() -> Digest {
    State::default().root()
}

impl State {
    /// The root digest: blake3 over the host's digest and, per kind, the
    /// count and the digests of its objects in key order. Two sides hold the
    /// same state exactly when their roots agree.
    pub fn root(&self) -> Digest {
        let mut h = blake3::Hasher::new_derive_key("tern v1 state root");
        h.update(&object_digest(Kind::Host, &self.host.encode()));
        fn kind<T: Object>(h: &mut blake3::Hasher, t: &Table<T>) {
            h.update(&[T::KIND as u8]);
            h.update(&(t.len() as u64).to_le_bytes());
            for e in t.entries.values() {
                h.update(&e.digest);
            }
        }
        kind(&mut h, &self.containers);
        kind(&mut h, &self.images);
        kind(&mut h, &self.volumes);
        kind(&mut h, &self.networks);
        *h.finalize().as_bytes()
    }

    /// The compose stacks, derived from the containers' compose labels.
    pub fn stacks(&self) -> Vec<Stack> {
        let mut stacks: BTreeMap<&str, Stack> = BTreeMap::new();
        for c in self.containers.iter() {
            let Some(project) = c.labels.get("com.docker.compose.project") else { continue };
            let s = stacks.entry(project).or_insert_with(|| Stack { name: project.clone(), ..Stack::default() });
            if let Some(dir) = c.labels.get("com.docker.compose.project.working_dir") {
                s.working_dir.clone_from(dir);
            }
            if let Some(files) = c.labels.get("com.docker.compose.project.config_files") {
                s.config_files = files.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect();
            }
            if let Some(service) = c.labels.get("com.docker.compose.service")
                && !s.services.contains(service)
            {
                s.services.push(service.clone());
            }
            s.containers.push(c.id);
        }
        let mut out: Vec<Stack> = stacks.into_values().collect();
        for s in &mut out {
            s.services.sort();
            s.containers.sort();
        }
        out
    }
}

impl Object for Host {
    type Key = ();
    type Proto = pb::Host;
    const KIND: Kind = Kind::Host;
    fn key(&self) {}
    fn to_proto(&self) -> pb::Host {
        pb::Host {
            hostname: self.hostname.clone(),
            engine_version: self.engine_version.clone(),
            api_version: self.api_version.clone(),
            operating_system: self.operating_system.clone(),
            os_type: self.os_type.clone(),
            kernel_version: self.kernel_version.clone(),
            architecture: self.architecture.clone(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            engine_id: self.engine_id.clone(),
        }
    }
    fn from_proto(p: pb::Host) -> Result<Self, InvalidObject> {
        Ok(Self {
            hostname: p.hostname,
            engine_version: p.engine_version,
            api_version: p.api_version,
            operating_system: p.operating_system,
            os_type: p.os_type,
            kernel_version: p.kernel_version,
            architecture: p.architecture,
            cpus: p.cpus,
            memory_bytes: p.memory_bytes,
            engine_id: p.engine_id,
        })
    }
}

impl Object for Container {
    type Key = Id;
    type Proto = pb::Container;
    const KIND: Kind = Kind::Container;
    fn key(&self) -> Id {
        self.id
    }
    fn to_proto(&self) -> pb::Container {
        let running: Vec<pb::Endpoint> = self
            .networks
            .iter()
            .enumerate()
            .filter(|(_, a)| a.ipv4.is_some() || a.ipv6.is_some())
            .map(|(i, a)| pb::Endpoint {
                network: i as u32,
                ipv4: ip_to_bytes(a.ipv4.map(IpAddr::V4)),
                ipv6: ip_to_bytes(a.ipv6.map(IpAddr::V6)),
            })
            .collect();
        pb::Container {
            id: self.id.0.to_vec(),
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.map(|i| i.0.to_vec()).unwrap_or_default(),
            command: self.command.clone(),
            created: self.created,
            status: self.status.to_wire(),
            started_after: after(self.created, self.started_at),
            finished_after: after(self.created, self.finished_at),
            exit_code: self.exit_code,
            health: self.health.to_wire(),
            restart_count: self.restart_count,
            error: self.error.clone(),
            oom_killed: self.oom_killed,
            labels: self.labels.clone(),
            env: self.env.clone(),
            ports: self
                .ports
                .iter()
                .map(|p| pb::Port {
                    container_port: p.container_port.into(),
                    protocol: p.protocol.to_wire(),
                    host_ip: ip_to_bytes(p.host_ip),
                    host_port: p.host_port.into(),
                })
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|m| pb::Mount {
                    r#type: m.kind.to_wire(),
                    source: m.source.clone(),
                    destination: m.destination.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            networks: self.networks.iter().map(|a| a.network.clone()).collect(),
            endpoints: running,
            restart_policy: self.restart_policy.to_wire(),
            restart_max_retries: self.restart_max_retries,
        }
    }
    fn from_proto(p: pb::Container) -> Result<Self, InvalidObject> {
        let mut networks: Vec<Attachment> =
            p.networks.into_iter().map(|network| Attachment { network, ipv4: None, ipv6: None }).collect();
        for e in p.endpoints {
            let a = networks.get_mut(e.network as usize).ok_or(InvalidObject::BadEndpoint(e.network))?;
            match ip_from_bytes(&e.ipv4)? {
                Some(IpAddr::V4(v4)) => a.ipv4 = Some(v4),
                None => {}
                Some(IpAddr::V6(_)) => return Err(InvalidObject::BadIp(16)),
            }
            match ip_from_bytes(&e.ipv6)? {
                Some(IpAddr::V6(v6)) => a.ipv6 = Some(v6),
                None => {}
                Some(IpAddr::V4(_)) => return Err(InvalidObject::BadIp(4)),
            }
        }
        Ok(Self {
            id: Id::from_bytes(&p.id)?,
            name: p.name,
            image: p.image,
            image_id: if p.image_id.is_empty() { None } else { Some(Id::from_bytes(&p.image_id)?) },
            command: p.command,
            created: p.created,
            status: ContainerStatus::from_wire(p.status)?,
            started_at: at(p.created, p.started_after),
            finished_at: at(p.created, p.finished_after),
            exit_code: p.exit_code,
            health: Health::from_wire(p.health)?,
            restart_count: p.restart_count,
            error: p.error,
            oom_killed: p.oom_killed,
            labels: p.labels,
            env: p.env,
            ports: p
                .ports
                .into_iter()
                .map(|x| {
                    Ok(Port {
                        container_port: port(x.container_port)?,
                        protocol: Protocol::from_wire(x.protocol)?,
                        host_ip: ip_from_bytes(&x.host_ip)?,
                        host_port: port(x.host_port)?,
                    })
                })
                .collect::<Result<_, InvalidObject>>()?,
            mounts: p
                .mounts
                .into_iter()
                .map(|m| {
                    Ok(Mount {
                        kind: MountType::from_wire(m.r#type)?,
                        source: m.source,
                        destination: m.destination,
                        read_only: m.read_only,
                    })
                })
                .collect::<Result<_, InvalidObject>>()?,
            networks,
            restart_policy: RestartPolicy::from_wire(p.restart_policy)?,
            restart_max_retries: p.restart_max_retries,
        })
    }
}

impl Object for Image {
    type Key = Id;
    type Proto = pb::Image;
    const KIND: Kind = Kind::Image;
    fn key(&self) -> Id {
        self.id
    }
    fn to_proto(&self) -> pb::Image {
        pb::Image {
            id: self.id.0.to_vec(),
            tags: self.tags.clone(),
            digests: self.digests.clone(),
            size: self.size,
            created: self.created,
            labels: self.labels.clone(),
        }
    }
    fn from_proto(p: pb::Image) -> Result<Self, InvalidObject> {
        Ok(Self {
            id: Id::from_bytes(&p.id)?,
            tags: p.tags,
            digests: p.digests,
            size: p.size,
            created: p.created,
            labels: p.labels,
        })
    }
}

impl Object for Volume {
    type Key = String;
    type Proto = pb::Volume;
    const KIND: Kind = Kind::Volume;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn to_proto(&self) -> pb::Volume {
        pb::Volume {
            name: self.name.clone(),
            driver: self.driver.clone(),
            mountpoint: self.mountpoint.clone(),
            labels: self.labels.clone(),
            created: self.created,
            scope: self.scope.clone(),
        }
    }
    fn from_proto(p: pb::Volume) -> Result<Self, InvalidObject> {
        Ok(Self {
            name: p.name,
            driver: p.driver,
            mountpoint: p.mountpoint,
            labels: p.labels,
            created: p.created,
            scope: p.scope,
        })
    }
}

impl Object for Network {
    type Key = Id;
    type Proto = pb::Network;
    const KIND: Kind = Kind::Network;
    fn key(&self) -> Id {
        self.id
    }
    fn to_proto(&self) -> pb::Network {
        pb::Network {
            id: self.id.0.to_vec(),
            name: self.name.clone(),
            driver: self.driver.clone(),
            scope: self.scope.clone(),
            ipam: self
                .ipam
                .iter()
                .map(|p| pb::IpamConfig {
                    subnet: p.subnet.clone(),
                    gateway: p.gateway.clone(),
                    ip_range: p.ip_range.clone(),
                })
                .collect(),
            labels: self.labels.clone(),
            internal: self.internal,
            attachable: self.attachable,
            created: self.created,
            enable_ipv6: self.enable_ipv6,
        }
    }
    fn from_proto(p: pb::Network) -> Result<Self, InvalidObject> {
        Ok(Self {
            id: Id::from_bytes(&p.id)?,
            name: p.name,
            driver: p.driver,
            scope: p.scope,
            ipam: p
                .ipam
                .into_iter()
                .map(|c| IpamPool { subnet: c.subnet, gateway: c.gateway, ip_range: c.ip_range })
                .collect(),
            labels: p.labels,
            internal: p.internal,
            attachable: p.attachable,
            created: p.created,
            enable_ipv6: p.enable_ipv6,
        })
    }
}
