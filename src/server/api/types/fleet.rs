//! The fleet's bodies: environments (create, change, list, detail, deploy
//! commands), groups and tags, the server settings, and an environment's
//! intervals.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::{IntervalsBody, IntervalsView};

// ----- request bodies -----

/// A group or tag in a body: its id (a number) or its name (a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NameOrId {
    /// By id.
    Id(u64),
    /// By name.
    Name(String),
}

impl<'de> Deserialize<'de> for NameOrId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NameOrId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name or a numeric id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NameOrId, E> {
                Ok(NameOrId::Id(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NameOrId, E> {
                Ok(NameOrId::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Host variables to pass through: `"HTTP_PROXY, HTTPS_PROXY"` (as the
/// wizard takes them) or `["HTTP_PROXY", "HTTPS_PROXY"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct EnvVars(pub Vec<String>);

impl<'de> Deserialize<'de> for EnvVars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvVars;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a comma-separated list of variable names, or an array of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvVars, E> {
                Ok(EnvVars(v.split(',').map(str::to_owned).collect()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<EnvVars, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(EnvVars(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Absent: `None`; `null`: `Some(None)`; a value: `Some(Some(v))`.
fn double<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /api/environments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// The environment's name.
    pub name: String,
    /// The server URL as the edge sees it (`https://ops.example.com:9443`).
    pub url: String,
    /// Its own intervals; absent ones follow the server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<IntervalsBody>,
    /// Its group (which must exist), by id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<NameOrId>,
    /// Its tags, by id or name; new names are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<NameOrId>,
    /// Host variables passed through to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<EnvVars>,
    /// Let the agent accept a self-signed server certificate
    /// (`EDGE_INSECURE_POLL=1`).
    #[serde(default)]
    pub allow_self_signed: bool,
    /// The host's Docker volume path, when not `/var/lib/docker/volumes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_path: Option<String>,
    /// Keep TCP timestamps on the agent's connection. By default the Linux
    /// command turns them off (`--sysctl net.ipv4.tcp_timestamps=0`, in the
    /// agent container's network namespace only): 12 bytes less in every
    /// packet. Set it for hosts on Linux before 4.15, whose engine refuses
    /// that option, and for links with round trips over a second, where a
    /// new connection then costs more than it saves (see
    /// [`linux_command`](crate::server::domain::deploy::linux_command)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp_timestamps: bool,
}

/// `PATCH /api/environments/{id}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new server URL (the one the deploy commands' join token carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A group by id or name; `null` for none.
    #[serde(default, deserialize_with = "double", skip_serializing_if = "Option::is_none")]
    pub group: Option<Option<NameOrId>>,
    /// The tags, replacing the current ones (`[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<NameOrId>>,
    /// Host variables passed through (`""` or `[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<EnvVars>,
    /// Self-signed certificates allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_self_signed: Option<bool>,
    /// The Docker volume path; `null` for the default.
    #[serde(default, deserialize_with = "double", skip_serializing_if = "Option::is_none")]
    pub volume_path: Option<Option<String>>,
    /// TCP timestamps kept (see [`CreateEnvironment::tcp_timestamps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_timestamps: Option<bool>,
}

/// `POST /api/groups`, `POST /api/tags`, and their `PATCH`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelBody {
    /// The name.
    pub name: String,
}

/// Default intervals in `PUT /api/settings`: absent ones stay as they are;
/// 0 disables that timer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultIntervalsBody {
    /// Heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<u32>,
    /// State snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<u32>,
    /// Command check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<u32>,
}

/// `PUT /api/settings`: absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// The default intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<DefaultIntervalsBody>,
    /// The server's AGENT_SECRET; `""` or `null` removes it.
    #[serde(default, deserialize_with = "double", skip_serializing_if = "Option::is_none")]
    pub agent_secret: Option<Option<String>>,
}

// ----- replies -----

/// The commands that deploy an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCommands {
    /// For a Linux host (sh).
    pub linux: String,
    /// For a Windows host running Windows containers (PowerShell, one line).
    pub windows: String,
}

/// What creating an environment returns, and `GET .../deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedEnvironment {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The join token (EDGE_KEY), for pre-staging.
    pub edge_key: String,
    /// The EDGE_ID the commands deploy the agent with (`null` for an
    /// environment made before the server generated one).
    #[serde(default)]
    pub edge_id: Option<String>,
    /// The Linux command (the same as `commands.linux`; kept for older
    /// clients).
    pub docker_run: String,
    /// The deploy commands.
    #[serde(default)]
    pub commands: DeployCommands,
    /// When the server requires an AGENT_SECRET: where the commands take it
    /// from (they never carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_secret_note: Option<String>,
}

/// A group in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// What an environment's stored state holds, kept up to date as snapshots
/// arrive (the store's counts, shown as they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCountsView {
    /// Containers.
    pub containers: u64,
    /// Running (restarting included).
    pub running: u64,
    /// Paused.
    pub paused: u64,
    /// Neither running nor paused: created, exited, dead, removing.
    pub stopped: u64,
    /// With an unhealthy health check (whatever their status).
    pub unhealthy: u64,
    /// Images.
    pub images: u64,
    /// Volumes.
    pub volumes: u64,
    /// Networks.
    pub networks: u64,
    /// Compose stacks.
    pub stacks: u64,
}

/// An environment in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its group.
    pub group: Option<GroupRef>,
    /// Its tags, by name.
    pub tags: Vec<String>,
    /// `online` or `offline`.
    pub status: String,
    /// Online while the last poll is at most this old, in seconds.
    pub status_window_s: i64,
    /// The EDGE_ID of the agent bound to it.
    pub edge_id: Option<String>,
    /// The version its agent reported (none before its first poll).
    #[serde(default)]
    pub agent_version: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When its agent last polled.
    pub last_poll_at: Option<i64>,
    /// How long ago, in seconds.
    pub last_poll_age_s: Option<i64>,
    /// When its stored state last changed.
    pub snapshot_at: Option<i64>,
    /// When its stored state was last known to be the host's.
    pub as_of: Option<i64>,
    /// How old the stored state is, in seconds (from `as_of`).
    pub snapshot_age_s: Option<i64>,
    /// What the stored state holds.
    pub counts: FleetCountsView,
    /// Bytes its polls cost at the TLS socket, today (UTC) and over the
    /// last 30 days (see `GET /api/environments/{id}/usage` for detail).
    #[serde(default)]
    pub usage: UsageTotals,
    /// How its agent reaches the server: `session` (a held session, which
    /// delivers commands at once) or `polling`.
    #[serde(default)]
    pub mode: String,
    /// In a held session: its keepalive period in seconds, the longest
    /// silence the agent's path allows (learned from its NAT).
    #[serde(default)]
    pub keepalive_s: Option<u32>,
    /// Why the agent polls rather than holding a session, as it said
    /// (`EDGE_SESSION=off`, or what broke the session).
    #[serde(default)]
    pub mode_note: Option<String>,
}

/// Socket bytes of an environment's polls, up (from the agent) and down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Since the start of today (UTC), up.
    pub today_up: u64,
    /// Since the start of today (UTC), down.
    pub today_down: u64,
    /// The last 30 days, today included, up.
    pub days30_up: u64,
    /// The last 30 days, today included, down.
    pub days30_down: u64,
}

/// An environment in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentFull {
    /// What the list shows.
    #[serde(flatten)]
    pub item: EnvironmentView,
    /// The stored state's sequence number (0: no snapshot yet).
    pub seq: u64,
    /// The stored state's blake3 root digest (64 hex digits).
    pub root: String,
    /// Its own intervals (`null`: the server default).
    pub intervals: IntervalsBody,
    /// The intervals its agent should run with.
    pub effective_intervals: IntervalsView,
    /// The intervals its agent last reported (`null`: not yet).
    pub agent_intervals: Option<IntervalsView>,
    /// The highest command id the agent confirmed it recorded.
    pub commands_seen: u64,
    /// The server URL as its edge sees it.
    pub url: String,
    /// Host variables passed through to the agent.
    pub env_vars: Vec<String>,
    /// Whether the agent accepts a self-signed certificate.
    pub allow_self_signed: bool,
    /// The host's Docker volume path (`null`: the default).
    pub volume_path: Option<String>,
    /// The EDGE_ID its deploy commands carry.
    pub deploy_edge_id: Option<String>,
    /// Whether its Linux deploy command keeps TCP timestamps.
    #[serde(default)]
    pub tcp_timestamps: bool,
}

/// A group or a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// How many environments it holds.
    pub environments: u64,
}

/// `GET /api/settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    /// The default intervals (0: disabled).
    pub intervals: IntervalsView,
    /// Whether the server has an AGENT_SECRET (never shown).
    pub agent_secret_set: bool,
    /// How many environments follow each default (their own interval is
    /// unset), so a change reaches them.
    pub following_defaults: IntervalsView,
}

// ----- environments as the store summarizes them; intervals after a change -----

/// An environment in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentItem {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The EDGE_ID of the agent bound to it.
    pub edge_id: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When its agent last polled.
    pub last_poll_at: Option<i64>,
    /// When its stored state last changed.
    pub snapshot_at: Option<i64>,
}

/// How many objects the stored state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsView {
    /// Containers.
    pub containers: usize,
    /// Images.
    pub images: usize,
    /// Volumes.
    pub volumes: usize,
    /// Networks.
    pub networks: usize,
    /// Compose stacks.
    pub stacks: usize,
}

/// An environment in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub item: EnvironmentItem,
    /// The stored state's sequence number (0: no snapshot yet).
    pub seq: u64,
    /// The stored state's blake3 root digest (64 hex digits), the one the
    /// agent computes over the same state.
    pub root: String,
    /// What the stored state holds.
    pub counts: CountsView,
    /// The environment's own intervals (`null`: the server default).
    pub intervals: IntervalsBody,
    /// The intervals its agent should run with.
    pub effective_intervals: IntervalsView,
    /// The intervals its agent last reported (`null`: not yet).
    pub agent_intervals: Option<IntervalsView>,
    /// The highest command id the agent confirmed it recorded.
    pub commands_seen: u64,
}

/// An environment's intervals after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalsReply {
    /// Its own (`null`: the server default).
    pub intervals: IntervalsBody,
    /// What its agent will run with, from its next poll on.
    pub effective_intervals: IntervalsView,
}
