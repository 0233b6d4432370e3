//! The fleet (migration 4): groups and tags, what an environment was
//! created with (the URL its edge sees, the host variables passed through to
//! its agent, whether self-signed certificates are allowed, the host's
//! Docker volume path, the EDGE_ID its deploy command carries), and the
//! figures the environment list shows: object and container counts, the
//! stored state's sequence number and root, kept in the environment's row
//! where the replica is saved, so that listing thousands of environments
//! never decodes a stored state.
//!
//! **Status.** The online/offline rule is the domain's
//! ([`crate::server::domain::status`]); the store keeps each
//! environment's window (what the rule computes from its intervals) in its
//! row, refreshed whenever an input changes, so the SQL that filters,
//! counts and pages by status compares a time with it and states no rule.
//!
//! Group and tag names are unique regardless of case.

use super::sql::ToSql;
use super::sql::{Connection, OptionalExtension, Row, params};

use super::*;
use crate::auth::Secret;
use crate::server::domain::status::status_window;
use crate::sync::State;
use crate::wire::poll::Intervals;

/// What went wrong with groups, tags and environment options. The texts
/// say what is wrong, not which request to make about it: that is the API
/// layer's to add (`api::fleet`), for whatever backend holds the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// No group with this id (in a path).
    #[error("no group {0}")]
    GroupNotFound(u64),
    /// No tag with this id (in a path).
    #[error("no tag {0}")]
    TagNotFound(u64),
    /// A group named in a body or a filter does not exist.
    #[error("no group {0:?}")]
    UnknownGroup(String),
    /// A tag named by id in a body, or in a filter, does not exist.
    #[error("no tag {0:?}")]
    UnknownTag(String),
    /// The group name is taken.
    #[error("a group named {0:?} exists already")]
    GroupNameTaken(String),
    /// The tag name is taken.
    #[error("a tag named {0:?} exists already")]
    TagNameTaken(String),
    /// The environment was created before the server kept its URL.
    #[error("environment {0} has no server URL (it was created before the server kept one)")]
    NoUrl(u64),
    /// New default intervals would disable every timer of some environments.
    #[error("these defaults would leave {0} environment(s) with every interval disabled, never polling again")]
    TimersOff(u64),
}

impl From<FleetError> for StoreError {
    fn from(e: FleetError) -> Self {
        Self::Fleet(e)
    }
}

/// A group or tag as given by an operator: its id, or its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// By id.
    Id(u64),
    /// By name (case-insensitive). A name of digits that names nothing is
    /// tried as an id, so `?group=3` works from a query string.
    Name(String),
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// Online or offline (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Polled within its window.
    Online,
    /// Not polled within its window, or never.
    Offline,
}

impl Status {
    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }

    /// Parses `online` or `offline`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// The counts kept in an environment's row, from its stored state (the API
/// shows them as they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetCounts {
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

impl FleetCounts {
    /// Counts what a state holds.
    pub fn of(state: &State) -> Self {
        use crate::sync::state::{ContainerStatus, Health};
        let mut c = Self {
            containers: state.containers.len() as u64,
            images: state.images.len() as u64,
            volumes: state.volumes.len() as u64,
            networks: state.networks.len() as u64,
            stacks: state.stacks().len() as u64,
            ..Self::default()
        };
        for container in state.containers.iter() {
            match container.status {
                ContainerStatus::Running | ContainerStatus::Restarting => c.running += 1,
                ContainerStatus::Paused => c.paused += 1,
                _ => c.stopped += 1,
            }
            if container.health == Health::Unhealthy {
                c.unhealthy += 1;
            }
        }
        c
    }
}

/// A group or a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// How many environments are in the group, or carry the tag.
    pub environments: u64,
}

/// An environment as the fleet list shows it (one row, no state decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetItem {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its group: id and name.
    pub group: Option<(u64, String)>,
    /// Its tags' names, sorted.
    pub tags: Vec<String>,
    /// Online or offline, as of the `now` the list was made at.
    pub status: Status,
    /// The poll window of the status rule, in seconds.
    pub window: i64,
    /// The EDGE_ID bound at first poll.
    pub edge_id: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When its agent last polled.
    pub last_poll_at: Option<i64>,
    /// When its stored state last changed.
    pub snapshot_at: Option<i64>,
    /// When the server last knew its stored state to be the host's: the
    /// last snapshot poll it acknowledged (see [`Store::confirm_snapshot`]),
    /// or the last change.
    pub as_of: Option<i64>,
    /// What its stored state holds.
    pub counts: FleetCounts,
    /// The stored state's sequence number (0: none yet).
    pub seq: u64,
    /// The stored state's root digest.
    pub root: [u8; 32],
    /// The version its agent reported ('' before it did).
    pub agent_version: String,
    /// The keepalive period of the session its agent holds, in seconds (0:
    /// it polls).
    pub session_hold: u32,
    /// Why its agent polls rather than holding a session, as it said.
    pub session_note: String,
}

/// What an environment was created with, for its deploy commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// The server URL as its edge sees it (empty for an environment created
    /// before the server kept it).
    pub url: String,
    /// Host variables passed through to the agent.
    pub env_vars: Vec<String>,
    /// Whether the agent accepts a self-signed certificate.
    pub allow_self_signed: bool,
    /// The host's Docker volume path, when not the default.
    pub volume_path: Option<String>,
    /// The EDGE_ID its deploy commands carry.
    pub deploy_edge_id: Option<String>,
    /// Whether the agent's connection keeps TCP timestamps (by default its
    /// Linux command turns them off).
    pub tcp_timestamps: bool,
}

/// A new environment with everything it may be created with.
#[derive(Debug, Clone)]
pub struct NewEnvironment {
    /// Its name (unique).
    pub name: String,
    /// Its secret (MAC key).
    pub secret: Secret,
    /// Its own intervals.
    pub intervals: IntervalSettings,
    /// Its group, which must exist.
    pub group: Option<Ref>,
    /// Its tags; names that do not exist yet are created.
    pub tags: Vec<Ref>,
    /// The rest.
    pub options: FleetOptions,
}

/// A change to an environment: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChange {
    /// A new name.
    pub name: Option<String>,
    /// A new server URL.
    pub url: Option<String>,
    /// A new group (`Some(None)`: none).
    pub group: Option<Option<Ref>>,
    /// Its tags, replacing the current ones (new names are created).
    pub tags: Option<Vec<Ref>>,
    /// Host variables passed through.
    pub env_vars: Option<Vec<String>>,
    /// Self-signed certificates allowed.
    pub allow_self_signed: Option<bool>,
    /// The Docker volume path (`Some(None)`: the default).
    pub volume_path: Option<Option<String>>,
    /// TCP timestamps kept.
    pub tcp_timestamps: Option<bool>,
}

/// Which environments to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// In this group.
    pub group: Option<Ref>,
    /// With this tag.
    pub tag: Option<Ref>,
    /// Online or offline.
    pub status: Option<Status>,
    /// Whose name contains this (ASCII case-insensitive).
    pub name: Option<String>,
    /// Only those this user may see through their teams' groups
    /// (`store::teams`); `None`: all.
    pub user: Option<u64>,
    /// At most this many (`None`: all).
    pub limit: Option<u64>,
    /// Skipping this many first.
    pub offset: u64,
}

/// The environments of [`Store::fleet`], with their status window and
/// whether they are online at `:now`.
const FLEET_CTE: &str = "WITH f AS (
    SELECT e.*, e.status_window AS win,
        (e.last_poll_at IS NOT NULL AND :now - e.last_poll_at <= e.status_window) AS online
    FROM environments e
)";

fn fleet_columns(dialect: super::sql::Dialect) -> String {
    // An environment's tags as a JSON array, in name order: the two
    // databases spell the aggregate differently.
    let tags = match dialect {
        super::sql::Dialect::Sqlite => {
            "(SELECT json_group_array(name) FROM
                (SELECT t.name FROM environment_tags et JOIN tags t ON t.id = et.tag
                 WHERE et.environment = f.id ORDER BY t.name COLLATE NOCASE))"
        }
        super::sql::Dialect::Postgres => {
            "COALESCE((SELECT json_agg(t.name ORDER BY t.name) FROM environment_tags et JOIN tags t ON t.id = et.tag
                 WHERE et.environment = f.id), '[]')"
        }
    };
    format!("{FLEET_COLUMNS_HEAD}, {tags}, {FLEET_COLUMNS_TAIL}")
}

const FLEET_COLUMNS_HEAD: &str =
    "f.id, f.name, f.group_id, g.name, f.edge_id, f.created_at, f.last_poll_at, f.snapshot_at,
    COALESCE(f.state_as_of, f.snapshot_at), f.online, f.win";

const FLEET_COLUMNS_TAIL: &str = "f.n_containers, f.n_running, f.n_paused, f.n_stopped, f.n_unhealthy,
    f.n_images, f.n_volumes, f.n_networks, f.n_stacks, f.state_seq, f.state_root, f.agent_version,
    f.session_hold, f.session_note";

/// Groups and tags share their code: which table, and how environments
/// belong to one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Group,
    Tag,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Self::Group => "groups",
            Self::Tag => "tags",
        }
    }

    fn members(self) -> &'static str {
        match self {
            Self::Group => "(SELECT COUNT(*) FROM environments WHERE group_id = x.id)",
            Self::Tag => "(SELECT COUNT(*) FROM environment_tags WHERE tag = x.id)",
        }
    }

    fn not_found(self, id: u64) -> FleetError {
        match self {
            Self::Group => FleetError::GroupNotFound(id),
            Self::Tag => FleetError::TagNotFound(id),
        }
    }

    fn unknown(self, r: &Ref) -> FleetError {
        match self {
            Self::Group => FleetError::UnknownGroup(r.to_string()),
            Self::Tag => FleetError::UnknownTag(r.to_string()),
        }
    }

    fn taken(self, name: &str) -> FleetError {
        match self {
            Self::Group => FleetError::GroupNameTaken(name.to_owned()),
            Self::Tag => FleetError::TagNameTaken(name.to_owned()),
        }
    }
}

fn is_constraint(e: &super::sql::Error) -> bool {
    matches!(e, super::sql::Error::Constraint(_))
}

/// The id a reference names, if it names one.
fn find(conn: &Connection, kind: Kind, r: &Ref) -> Result<Option<u64>, StoreError> {
    let by_id = |id: u64| -> Result<Option<u64>, StoreError> {
        let sql = format!("SELECT id FROM {} WHERE id = ?1", kind.table());
        Ok(conn.query_row(&sql, [sql_id(id)], |r| r.get::<i64>(0)).optional()?.map(|v| v as u64))
    };
    match r {
        Ref::Id(id) => by_id(*id),
        Ref::Name(name) => {
            let sql = format!("SELECT id FROM {} WHERE name = ?1", kind.table());
            match conn.query_row(&sql, [name], |r| r.get::<i64>(0)).optional()? {
                Some(id) => Ok(Some(id as u64)),
                None => match name.parse::<u64>() {
                    Ok(id) => by_id(id),
                    Err(_) => Ok(None),
                },
            }
        }
    }
}

/// A default interval's stored setting, [`DEFAULT_INTERVAL`] when unset.
fn default_interval(key: &'static str, stored: Option<String>) -> Result<u32, StoreError> {
    match stored {
        None => Ok(DEFAULT_INTERVAL),
        Some(v) => v.parse().map_err(|_| StoreError::CorruptSetting(key)),
    }
}

/// The id a reference names, or [`FleetError::UnknownGroup`] / `UnknownTag`.
fn resolve(conn: &Connection, kind: Kind, r: &Ref) -> Result<u64, StoreError> {
    find(conn, kind, r)?.ok_or_else(|| kind.unknown(r).into())
}

/// Replaces an environment's tags; names that exist nowhere are created.
fn set_tags(conn: &Connection, env: u64, tags: &[Ref]) -> Result<(), StoreError> {
    let mut ids = Vec::with_capacity(tags.len());
    for t in tags {
        let id = match (find(conn, Kind::Tag, t)?, t) {
            (Some(id), _) => id,
            (None, Ref::Name(name)) => conn.insert("INSERT INTO tags (name) VALUES (?1)", [name])? as u64,
            (None, Ref::Id(_)) => return Err(Kind::Tag.unknown(t).into()),
        };
        ids.push(id);
    }
    conn.execute("DELETE FROM environment_tags WHERE environment = ?1", [sql_id(env)])?;
    for id in ids {
        conn.execute(
            "INSERT INTO environment_tags (environment, tag) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            [sql_id(env), sql_id(id)],
        )?;
    }
    Ok(())
}

/// Records what a state holds in its environment's row (called where the
/// replica is saved, in the same transaction).
pub(super) fn save_counts(conn: &Connection, id: u64, seq: u64, state: &State, now: i64) -> Result<(), StoreError> {
    let c = FleetCounts::of(state);
    conn.execute(
        "UPDATE environments SET n_containers = ?2, n_running = ?3, n_paused = ?4, n_stopped = ?5,
            n_unhealthy = ?6, n_images = ?7, n_volumes = ?8, n_networks = ?9, n_stacks = ?10,
            state_seq = ?11, state_root = ?12, state_as_of = ?13
         WHERE id = ?1",
        params![
            sql_id(id),
            c.containers as i64,
            c.running as i64,
            c.paused as i64,
            c.stopped as i64,
            c.unhealthy as i64,
            c.images as i64,
            c.volumes as i64,
            c.networks as i64,
            c.stacks as i64,
            seq as i64,
            &state.root()[..],
            now
        ],
    )?;
    Ok(())
}

/// Named parameters as [`Connection`] takes them.
fn refs<'a>(v: &'a [(&'static str, Box<dyn ToSql>)]) -> Vec<(&'static str, &'a dyn ToSql)> {
    v.iter().map(|(k, b)| (*k, b.as_ref())).collect()
}

fn split_vars(text: &str) -> Vec<String> {
    text.split(',').filter(|v| !v.is_empty()).map(str::to_owned).collect()
}

/// Environments, their counters, replicas and intervals, the server's
/// settings, groups and tags: the fleet's storage, on one transaction.
pub trait FleetStore {
    /// Creates an environment with a fresh secret, following the server's
    /// default intervals.
    ///
    /// # Errors
    /// When the name is taken or the database fails.
    fn create_environment(&self, name: &str, secret: Secret, now: i64) -> Result<Environment, StoreError>;

    /// Creates an environment with a fresh secret and its own intervals.
    ///
    /// # Errors
    /// When the name is taken or the database fails.
    fn create_environment_with(
        &self,
        name: &str,
        secret: Secret,
        intervals: IntervalSettings,
        now: i64,
    ) -> Result<Environment, StoreError>;

    /// Looks an environment up.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn environment(&self, id: u64) -> Result<Environment, StoreError>;

    /// [`Self::environment`] and the server's [`Self::agent_secret`], in
    /// one query: what authenticates a poll.
    ///
    /// # Errors
    /// As [`Self::environment`].
    fn poll_credentials(&self, id: u64) -> Result<(Environment, Option<String>), StoreError>;

    /// Records an accepted poll: raises the counter only if it is higher
    /// (so two racing requests cannot both pass), binds the EDGE_ID if none
    /// is bound, and stamps the poll time. Returns false when the counter
    /// was not higher (a replay) or another EDGE_ID is bound.
    ///
    /// # Errors
    /// When the database fails.
    /// An agent names itself (`edge_id`) on its first poll after a start;
    /// later polls may leave it out, but only once the environment is bound.
    fn accept_poll(&self, id: u64, counter: u64, edge_id: Option<&str>, now: i64) -> Result<bool, StoreError>;

    /// Records the version the environment's agent reports.
    ///
    /// # Errors
    /// When the database fails.
    fn set_agent_version(&self, id: u64, version: &str) -> Result<(), StoreError>;

    /// Records how the agent reaches the server: a held session with this
    /// keepalive period in seconds, or polling (`hold` 0) and why (`note`,
    /// kept to 200 characters). The status window follows (see
    /// [`status_window`]). Writes only when something changed.
    ///
    /// # Errors
    /// When the database fails.
    fn set_session(&self, id: u64, hold: u32, note: &str) -> Result<(), StoreError>;

    /// Raises the accepted counter to `counter` (if it is higher) without
    /// accepting a poll: a body that did not match its authentic header
    /// uses its counter up.
    ///
    /// # Errors
    /// When the database fails.
    fn burn_counter(&self, id: u64, counter: u64) -> Result<(), StoreError>;

    /// Sets the accepted counter back to 0, so an agent whose counter the
    /// server holds as seen (pushed too high by an old agent's bug or a
    /// restored database) can poll again. A machine in the middle that
    /// recorded polls could replay each once after it: on a link that is not
    /// trusted, [`Self::rotate_secret`] instead.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn reset_counter(&self, id: u64) -> Result<(), StoreError>;

    /// Gives the environment a new secret (so a new join token) and sets
    /// its counter back to 0: polls sealed with the old secret, the
    /// agent's and any recorded ones, are refused from now on. The binding
    /// stays: the agent redeployed with the new token keeps its EDGE_ID.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn rotate_secret(&self, id: u64, secret: &Secret) -> Result<(), StoreError>;

    /// Unbinds the EDGE_ID, so another agent may take the environment over.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn reset_binding(&self, id: u64) -> Result<(), StoreError>;

    /// The stored replica of an environment's state (empty before its first
    /// snapshot).
    ///
    /// # Errors
    /// When the database fails or a stored state is corrupt.
    fn replica(&self, id: u64) -> Result<Replica, StoreError>;

    /// The stored replica's sequence number and its previous state's, if
    /// any ((0, None): none yet), without decoding either state.
    ///
    /// # Errors
    /// When the database fails.
    fn replica_seqs(&self, id: u64) -> Result<(u64, Option<u64>), StoreError>;

    /// Stores a replica after a poll changed it.
    ///
    /// # Errors
    /// When the database fails.
    fn save_replica(&self, id: u64, replica: &Replica, now: i64) -> Result<(), StoreError>;

    /// Every environment, by id.
    ///
    /// # Errors
    /// When the database fails.
    fn environments(&self) -> Result<Vec<EnvironmentInfo>, StoreError>;

    /// One environment as the list shows it.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn environment_info(&self, id: u64) -> Result<EnvironmentInfo, StoreError>;

    /// An environment in detail: its row, its intervals, and what its stored
    /// state holds (the state is decoded, so this costs more than a lookup).
    ///
    /// # Errors
    /// When it does not exist, the database fails or the stored state is corrupt.
    fn environment_summary(&self, id: u64) -> Result<EnvironmentSummary, StoreError>;

    // ----- intervals and settings -----

    /// Sets an environment's own intervals (all `None`: follow the server
    /// defaults).
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn set_intervals(&self, id: u64, intervals: IntervalSettings) -> Result<(), StoreError>;

    /// An environment's own intervals.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn intervals(&self, id: u64) -> Result<IntervalSettings, StoreError>;

    /// Records the intervals the agent reported it runs with.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn set_agent_intervals(&self, id: u64, intervals: Intervals) -> Result<(), StoreError>;

    /// The intervals the agent last reported (`None` until it has).
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn agent_intervals(&self, id: u64) -> Result<Option<Intervals>, StoreError>;

    /// The intervals an environment's agent should run with: its own where
    /// set, the server defaults elsewhere.
    ///
    /// # Errors
    /// When it does not exist or the database fails.
    fn effective_intervals(&self, id: u64) -> Result<Intervals, StoreError>;

    /// [`Self::effective_intervals`] and [`Self::agent_intervals`] in one
    /// query: what every poll asks.
    ///
    /// # Errors
    /// When it does not exist, the database fails or a stored default is
    /// not a number of seconds.
    fn poll_intervals(&self, id: u64) -> Result<(Intervals, Option<Intervals>), StoreError>;

    /// The server-wide default intervals ([`DEFAULT_INTERVAL`] each until
    /// set).
    ///
    /// # Errors
    /// When the database fails or a stored value is not a number of seconds.
    fn default_intervals(&self) -> Result<Intervals, StoreError>;

    /// Sets the server-wide default intervals.
    ///
    /// # Errors
    /// When the database fails.
    fn set_default_intervals(&self, intervals: Intervals) -> Result<(), StoreError>;

    /// The server's `AGENT_SECRET`, when it has one: every agent must then
    /// hold the same (see [`Secret::with_agent_secret`]).
    ///
    /// # Errors
    /// When the database fails.
    fn agent_secret(&self) -> Result<Option<String>, StoreError>;

    /// Sets or (with `None` or an empty text) removes the server's
    /// `AGENT_SECRET`.
    ///
    /// # Errors
    /// When the database fails.
    fn set_agent_secret(&self, secret: Option<&str>) -> Result<(), StoreError>;

    /// Records that the agent's snapshot poll confirmed the stored state
    /// unchanged: the state is as of `now` (its age restarts).
    ///
    /// # Errors
    /// When the database fails.
    fn confirm_snapshot(&self, id: u64, now: i64) -> Result<(), StoreError>;

    /// Creates an environment with its options, group and tags, all or
    /// nothing.
    ///
    /// # Errors
    /// [`StoreError::NameTaken`], [`FleetError::UnknownGroup`],
    /// [`FleetError::UnknownTag`] (a tag id), or when the database fails.
    fn create_fleet_environment(&self, new: &NewEnvironment, now: i64) -> Result<u64, StoreError>;

    /// Changes an environment, all or nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::NameTaken`],
    /// [`FleetError::UnknownGroup`], [`FleetError::UnknownTag`], or when
    /// the database fails.
    fn update_environment(&self, id: u64, change: &EnvironmentChange) -> Result<(), StoreError>;

    /// Deletes an environment and everything that is its: stored state,
    /// commands and their results, tags, data usage.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or when the database fails.
    fn delete_environment(&self, id: u64) -> Result<(), StoreError>;

    /// What an environment was created with.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or when the database fails.
    fn fleet_options(&self, id: u64) -> Result<FleetOptions, StoreError>;

    /// The environments `filter` selects, by id, as of `now`, and how many
    /// it selects without its limit and offset. One query on the
    /// environments' rows: no stored state is decoded.
    ///
    /// # Errors
    /// [`FleetError::UnknownGroup`] / [`FleetError::UnknownTag`] for a
    /// filter naming none, or when the database fails.
    fn fleet(&self, filter: &Filter, now: i64) -> Result<(Vec<FleetItem>, u64), StoreError>;

    /// One environment as the fleet list shows it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or when the database fails.
    fn fleet_item(&self, id: u64, now: i64) -> Result<FleetItem, StoreError>;

    /// The highest command id the agent confirmed it recorded.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or when the database fails.
    fn commands_seen(&self, id: u64) -> Result<u64, StoreError>;

    /// The fleet in four figures, for the metrics: environments, those
    /// online at `now`, commands not yet confirmed by their agent, and
    /// when the oldest of those was queued.
    ///
    /// # Errors
    /// When the database fails.
    fn fleet_gauges(&self, now: i64) -> Result<(i64, i64, i64, Option<i64>), StoreError>;

    /// How many environments follow each default interval (their own is
    /// unset), as intervals-shaped counts.
    ///
    /// # Errors
    /// When the database fails.
    fn environments_following_defaults(&self) -> Result<Intervals, StoreError>;

    /// How many environments would have every timer disabled under these
    /// default intervals.
    ///
    /// # Errors
    /// When the database fails.
    fn environments_without_timers(&self, defaults: Intervals) -> Result<u64, StoreError>;

    /// Sets the default intervals, unless that would leave an environment
    /// with every timer disabled (or the defaults themselves all disabled).
    ///
    /// # Errors
    /// [`FleetError::TimersOff`], or when the database fails.
    fn change_default_intervals(&self, defaults: Intervals) -> Result<(), StoreError>;

    /// Creates a group.
    ///
    /// # Errors
    /// [`FleetError::GroupNameTaken`], or when the database fails.
    fn create_group(&self, name: &str) -> Result<Label, StoreError>;

    /// Every group, by name.
    ///
    /// # Errors
    /// When the database fails.
    fn groups(&self) -> Result<Vec<Label>, StoreError>;

    /// One group.
    ///
    /// # Errors
    /// [`FleetError::GroupNotFound`], or when the database fails.
    fn group(&self, id: u64) -> Result<Label, StoreError>;

    /// Renames a group.
    ///
    /// # Errors
    /// [`FleetError::GroupNotFound`], [`FleetError::GroupNameTaken`], or
    /// when the database fails.
    fn rename_group(&self, id: u64, name: &str) -> Result<Label, StoreError>;

    /// Deletes a group; its environments fall back to no group.
    ///
    /// # Errors
    /// [`FleetError::GroupNotFound`], or when the database fails.
    fn delete_group(&self, id: u64) -> Result<(), StoreError>;

    /// Creates a tag.
    ///
    /// # Errors
    /// [`FleetError::TagNameTaken`], or when the database fails.
    fn create_tag(&self, name: &str) -> Result<Label, StoreError>;

    /// Every tag, by name.
    ///
    /// # Errors
    /// When the database fails.
    fn tags(&self) -> Result<Vec<Label>, StoreError>;

    /// One tag.
    ///
    /// # Errors
    /// [`FleetError::TagNotFound`], or when the database fails.
    fn tag(&self, id: u64) -> Result<Label, StoreError>;

    /// Renames a tag.
    ///
    /// # Errors
    /// [`FleetError::TagNotFound`], [`FleetError::TagNameTaken`], or when
    /// the database fails.
    fn rename_tag(&self, id: u64, name: &str) -> Result<Label, StoreError>;

    /// Deletes a tag, taking it off every environment.
    ///
    /// # Errors
    /// [`FleetError::TagNotFound`], or when the database fails.
    fn delete_tag(&self, id: u64) -> Result<(), StoreError>;
}

impl FleetStore for Tx<'_> {
    fn create_environment(&self, name: &str, secret: Secret, now: i64) -> Result<Environment, StoreError> {
        self.create_environment_with(name, secret, IntervalSettings::default(), now)
    }

    fn create_environment_with(
        &self,
        name: &str,
        secret: Secret,
        intervals: IntervalSettings,
        now: i64,
    ) -> Result<Environment, StoreError> {
        let tx = self.tx()?;
        let r = self.conn.insert(
            "INSERT INTO environments (name, secret, created_at, ping_interval, snapshot_interval, command_interval)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, &secret.0[..], now, intervals.ping, intervals.snapshot, intervals.command],
        );
        let id = match r {
            Err(super::sql::Error::Constraint(_)) => {
                return Err(StoreError::NameTaken(name.to_owned()));
            }
            r => r? as u64,
        };
        self.refresh_status_windows(Some(id))?;
        tx.commit()?;
        Ok(Environment { id, name: name.to_owned(), secret, edge_id: None, last_counter: 0 })
    }

    fn environment(&self, id: u64) -> Result<Environment, StoreError> {
        Ok(self.environment_and(id, "NULL")?.0)
    }

    fn poll_credentials(&self, id: u64) -> Result<(Environment, Option<String>), StoreError> {
        let (env, agent_secret) = self.environment_and(id, "(SELECT value FROM settings WHERE key = ?2)")?;
        Ok((env, agent_secret.filter(|s| !s.is_empty())))
    }

    fn set_agent_version(&self, id: u64, version: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE environments SET agent_version = ?2 WHERE id = ?1 AND agent_version != ?2",
            params![id as i64, version],
        )?;
        Ok(())
    }

    fn set_session(&self, id: u64, hold: u32, note: &str) -> Result<(), StoreError> {
        let note: String = note.chars().filter(|c| !c.is_control()).take(200).collect();
        let tx = self.tx()?;
        let n = self.conn.execute(
            "UPDATE environments SET session_hold = ?2, session_note = ?3
             WHERE id = ?1 AND (session_hold != ?2 OR session_note != ?3)",
            params![sql_id(id), i64::from(hold), note],
        )?;
        if n > 0 {
            self.refresh_status_windows(Some(id))?;
        }
        tx.commit()
    }

    fn accept_poll(&self, id: u64, counter: u64, edge_id: Option<&str>, now: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE environments SET last_counter = ?2, edge_id = COALESCE(edge_id, ?3), last_poll_at = ?4
             WHERE id = ?1 AND last_counter < ?2
               AND ((CAST(?3 AS TEXT) IS NULL AND edge_id IS NOT NULL) OR (CAST(?3 AS TEXT) IS NOT NULL AND (edge_id IS NULL OR edge_id = ?3)))",
            params![id as i64, counter as i64, edge_id, now],
        )?;
        Ok(n == 1)
    }

    fn burn_counter(&self, id: u64, counter: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE environments SET last_counter = ?2 WHERE id = ?1 AND last_counter < ?2",
            params![id as i64, counter as i64],
        )?;
        Ok(())
    }

    fn reset_counter(&self, id: u64) -> Result<(), StoreError> {
        match self
            .conn
            .execute("UPDATE environments SET last_counter = 0, transfer_counter = 0 WHERE id = ?1", [id as i64])?
        {
            0 => Err(StoreError::NotFound(id)),
            _ => Ok(()),
        }
    }

    fn rotate_secret(&self, id: u64, secret: &Secret) -> Result<(), StoreError> {
        match self.conn.execute(
            "UPDATE environments SET secret = ?2, last_counter = 0, transfer_counter = 0 WHERE id = ?1",
            params![id as i64, &secret.0[..]],
        )? {
            0 => Err(StoreError::NotFound(id)),
            _ => Ok(()),
        }
    }

    fn reset_binding(&self, id: u64) -> Result<(), StoreError> {
        match self.conn.execute("UPDATE environments SET edge_id = NULL WHERE id = ?1", [id as i64])? {
            0 => Err(StoreError::NotFound(id)),
            _ => Ok(()),
        }
    }

    fn replica_seqs(&self, id: u64) -> Result<(u64, Option<u64>), StoreError> {
        let row = self
            .conn
            .query_row("SELECT seq, prev_seq FROM replicas WHERE environment = ?1", [id as i64], |r| {
                Ok((r.get::<i64>(0)?, r.get::<Option<i64>>(1)?))
            })
            .optional()?;
        Ok(row.map_or((0, None), |(s, p)| (s as u64, p.map(|p| p as u64))))
    }

    fn replica(&self, id: u64) -> Result<Replica, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq, state, prev_seq, prev_state FROM replicas WHERE environment = ?1",
                [id as i64],
                |r| {
                    Ok((r.get::<i64>(0)?, r.get::<Vec<u8>>(1)?, r.get::<Option<i64>>(2)?, r.get::<Option<Vec<u8>>>(3)?))
                },
            )
            .optional()?;
        let Some((seq, state, prev_seq, prev_state)) = row else { return Ok(Replica::default()) };
        let prev = match (prev_seq, prev_state) {
            (Some(s), Some(b)) => Some((s as u64, decode_state(&b, id)?)),
            _ => None,
        };
        Ok(Replica::restore(seq as u64, decode_state(&state, id)?, prev))
    }

    fn save_replica(&self, id: u64, replica: &Replica, now: i64) -> Result<(), StoreError> {
        let (seq, state) = replica.current();
        let prev = replica.previous();
        let tx = self.tx()?;
        tx.execute(
            "INSERT INTO replicas (environment, seq, state, prev_seq, prev_state) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(environment) DO UPDATE SET seq = ?2, state = ?3, prev_seq = ?4, prev_state = ?5",
            params![
                id as i64,
                seq as i64,
                state.to_snapshot(),
                prev.map(|(s, _)| s as i64),
                prev.map(|(_, st)| st.to_snapshot())
            ],
        )?;
        tx.execute("UPDATE environments SET snapshot_at = ?2 WHERE id = ?1", params![id as i64, now])?;
        fleet::save_counts(&tx, id, seq, state, now)?;
        tx.commit()?;
        Ok(())
    }

    fn environments(&self) -> Result<Vec<EnvironmentInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, edge_id, created_at, last_poll_at, snapshot_at FROM environments ORDER BY id")?;
        let rows = stmt.query_map([], Self::info_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn environment_info(&self, id: u64) -> Result<EnvironmentInfo, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, edge_id, created_at, last_poll_at, snapshot_at FROM environments WHERE id = ?1",
                [sql_id(id)],
                Self::info_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
    }

    fn environment_summary(&self, id: u64) -> Result<EnvironmentSummary, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, name, edge_id, created_at, last_poll_at, snapshot_at,
                        ping_interval, snapshot_interval, command_interval,
                        agent_ping, agent_snapshot, agent_command, commands_seen
                 FROM environments WHERE id = ?1",
                [sql_id(id)],
                |r| {
                    let intervals = IntervalSettings {
                        ping: opt_u32(r.get(6)?),
                        snapshot: opt_u32(r.get(7)?),
                        command: opt_u32(r.get(8)?),
                    };
                    let agent = Self::agent_intervals_of(r.get(9)?, r.get(10)?, r.get(11)?);
                    Ok((Self::info_row(r)?, intervals, agent, r.get::<i64>(12)? as u64))
                },
            )
            .optional()?;
        let (info, intervals, agent_intervals, commands_seen) = row.ok_or(StoreError::NotFound(id))?;
        let replica = self.replica(id)?;
        let (seq, state) = replica.current();
        Ok(EnvironmentSummary {
            info,
            seq,
            root: state.root(),
            counts: ObjectCounts {
                containers: state.containers.len(),
                images: state.images.len(),
                volumes: state.volumes.len(),
                networks: state.networks.len(),
                stacks: state.stacks().len(),
            },
            intervals,
            effective: intervals.resolve(self.default_intervals()?),
            agent_intervals,
            commands_seen,
        })
    }

    fn set_intervals(&self, id: u64, intervals: IntervalSettings) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let n = self.conn.execute(
            "UPDATE environments SET ping_interval = ?2, snapshot_interval = ?3, command_interval = ?4 WHERE id = ?1",
            params![sql_id(id), intervals.ping, intervals.snapshot, intervals.command],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        self.refresh_status_windows(Some(id))?;
        tx.commit()
    }

    fn intervals(&self, id: u64) -> Result<IntervalSettings, StoreError> {
        self.conn
            .query_row(
                "SELECT ping_interval, snapshot_interval, command_interval FROM environments WHERE id = ?1",
                [sql_id(id)],
                |r| {
                    Ok(IntervalSettings {
                        ping: opt_u32(r.get(0)?),
                        snapshot: opt_u32(r.get(1)?),
                        command: opt_u32(r.get(2)?),
                    })
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
    }

    fn set_agent_intervals(&self, id: u64, intervals: Intervals) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let n = self.conn.execute(
            "UPDATE environments SET agent_ping = ?2, agent_snapshot = ?3, agent_command = ?4 WHERE id = ?1",
            params![sql_id(id), intervals.ping, intervals.snapshot, intervals.command],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        self.refresh_status_windows(Some(id))?;
        tx.commit()
    }

    fn agent_intervals(&self, id: u64) -> Result<Option<Intervals>, StoreError> {
        self.conn
            .query_row(
                "SELECT agent_ping, agent_snapshot, agent_command FROM environments WHERE id = ?1",
                [sql_id(id)],
                |r| Ok(Self::agent_intervals_of(r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
    }

    fn effective_intervals(&self, id: u64) -> Result<Intervals, StoreError> {
        Ok(self.intervals(id)?.resolve(self.default_intervals()?))
    }

    fn poll_intervals(&self, id: u64) -> Result<(Intervals, Option<Intervals>), StoreError> {
        type Found = (IntervalSettings, Option<Intervals>, [Option<String>; 3]);
        let found: Option<Found> = self
            .conn
            .query_row(
                "SELECT ping_interval, snapshot_interval, command_interval, agent_ping, agent_snapshot, agent_command,
                    (SELECT value FROM settings WHERE key = ?2), (SELECT value FROM settings WHERE key = ?3),
                    (SELECT value FROM settings WHERE key = ?4)
                 FROM environments WHERE id = ?1",
                params![sql_id(id), SETTING_PING, SETTING_SNAPSHOT, SETTING_COMMAND],
                |r| {
                    let own = IntervalSettings {
                        ping: opt_u32(r.get(0)?),
                        snapshot: opt_u32(r.get(1)?),
                        command: opt_u32(r.get(2)?),
                    };
                    let agent = Self::agent_intervals_of(r.get(3)?, r.get(4)?, r.get(5)?);
                    Ok((own, agent, [r.get(6)?, r.get(7)?, r.get(8)?]))
                },
            )
            .optional()?;
        let (own, agent, [ping, snapshot, command]) = found.ok_or(StoreError::NotFound(id))?;
        let defaults = Intervals {
            ping: default_interval(SETTING_PING, ping)?,
            snapshot: default_interval(SETTING_SNAPSHOT, snapshot)?,
            command: default_interval(SETTING_COMMAND, command)?,
        };
        Ok((own.resolve(defaults), agent))
    }

    fn default_intervals(&self) -> Result<Intervals, StoreError> {
        let get = |key: &'static str| default_interval(key, self.setting(key)?);
        Ok(Intervals { ping: get(SETTING_PING)?, snapshot: get(SETTING_SNAPSHOT)?, command: get(SETTING_COMMAND)? })
    }

    fn set_default_intervals(&self, intervals: Intervals) -> Result<(), StoreError> {
        let tx = self.tx()?;
        self.set_setting(SETTING_PING, Some(&intervals.ping.to_string()))?;
        self.set_setting(SETTING_SNAPSHOT, Some(&intervals.snapshot.to_string()))?;
        self.set_setting(SETTING_COMMAND, Some(&intervals.command.to_string()))?;
        self.refresh_status_windows(None)?;
        tx.commit()?;
        Ok(())
    }

    fn agent_secret(&self) -> Result<Option<String>, StoreError> {
        Ok(self.setting(SETTING_AGENT_SECRET)?.filter(|s| !s.is_empty()))
    }

    fn set_agent_secret(&self, secret: Option<&str>) -> Result<(), StoreError> {
        self.set_setting(SETTING_AGENT_SECRET, secret.filter(|s| !s.is_empty()))
    }

    fn confirm_snapshot(&self, id: u64, now: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE environments SET state_as_of = ?2 WHERE id = ?1", params![sql_id(id), now])?;
        Ok(())
    }

    fn create_fleet_environment(&self, new: &NewEnvironment, now: i64) -> Result<u64, StoreError> {
        let tx = self.tx()?;
        let group = new.group.as_ref().map(|g| resolve(&tx, Kind::Group, g)).transpose()?;
        let env = self.create_environment_with(&new.name, new.secret.clone(), new.intervals, now)?;
        let o = &new.options;
        tx.execute(
            "UPDATE environments SET group_id = ?2, url = ?3, env_vars = ?4, allow_self_signed = ?5,
                volume_path = ?6, deploy_edge_id = ?7, tcp_timestamps = ?8 WHERE id = ?1",
            params![
                sql_id(env.id),
                group.map(sql_id),
                o.url,
                o.env_vars.join(","),
                o.allow_self_signed,
                o.volume_path,
                o.deploy_edge_id,
                o.tcp_timestamps
            ],
        )?;
        set_tags(&tx, env.id, &new.tags)?;
        tx.commit()?;
        Ok(env.id)
    }

    fn update_environment(&self, id: u64, change: &EnvironmentChange) -> Result<(), StoreError> {
        let tx = self.tx()?;
        self.environment(id)?;
        let set = |column: &str, value: &dyn ToSql| -> Result<(), super::sql::Error> {
            tx.execute(&format!("UPDATE environments SET {column} = ?2 WHERE id = ?1"), params![sql_id(id), value])
                .map(drop)
        };
        if let Some(name) = &change.name {
            match set("name", name) {
                Err(e) if is_constraint(&e) => return Err(StoreError::NameTaken(name.clone())),
                r => r?,
            }
        }
        if let Some(url) = &change.url {
            set("url", url)?;
        }
        if let Some(group) = &change.group {
            let group = group.as_ref().map(|g| resolve(&tx, Kind::Group, g)).transpose()?;
            set("group_id", &group.map(sql_id))?;
        }
        if let Some(tags) = &change.tags {
            set_tags(&tx, id, tags)?;
        }
        if let Some(vars) = &change.env_vars {
            set("env_vars", &vars.join(","))?;
        }
        if let Some(allow) = change.allow_self_signed {
            set("allow_self_signed", &allow)?;
        }
        if let Some(path) = &change.volume_path {
            set("volume_path", path)?;
        }
        if let Some(keep) = change.tcp_timestamps {
            set("tcp_timestamps", &keep)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_environment(&self, id: u64) -> Result<(), StoreError> {
        let tx = self.tx()?;
        // Explicit, so nothing depends on foreign keys being enforced.
        for sql in [
            "DELETE FROM replicas WHERE environment = ?1",
            "DELETE FROM commands WHERE environment = ?1",
            "DELETE FROM environment_tags WHERE environment = ?1",
        ] {
            tx.execute(sql, [sql_id(id)])?;
        }
        let n = tx.execute("DELETE FROM environments WHERE id = ?1", [sql_id(id)])?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        tx.commit()?;
        Ok(())
    }

    fn fleet_options(&self, id: u64) -> Result<FleetOptions, StoreError> {
        self.conn
            .query_row(
                "SELECT url, env_vars, allow_self_signed, volume_path, deploy_edge_id, tcp_timestamps
                 FROM environments WHERE id = ?1",
                [sql_id(id)],
                |r| {
                    Ok(FleetOptions {
                        url: r.get(0)?,
                        env_vars: split_vars(&r.get::<String>(1)?),
                        allow_self_signed: r.get(2)?,
                        volume_path: r.get(3)?,
                        deploy_edge_id: r.get(4)?,
                        tcp_timestamps: r.get(5)?,
                    })
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))
    }

    fn fleet(&self, filter: &Filter, now: i64) -> Result<(Vec<FleetItem>, u64), StoreError> {
        self.fleet_where(filter, None, now)
    }

    fn fleet_item(&self, id: u64, now: i64) -> Result<FleetItem, StoreError> {
        let (mut items, _) = self.fleet_where(&Filter::default(), Some(id), now)?;
        items.pop().ok_or(StoreError::NotFound(id))
    }

    fn fleet_gauges(&self, now: i64) -> Result<(i64, i64, i64, Option<i64>), StoreError> {
        let (envs, online): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COUNT(CASE WHEN last_poll_at IS NOT NULL AND ?1 - last_poll_at <= status_window
                                        THEN 1 END)
             FROM environments",
            [now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (queued, oldest): (i64, Option<i64>) =
            self.conn.query_row("SELECT COUNT(*), MIN(created_at) FROM commands WHERE status = 'queued'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok((envs, online, queued, oldest))
    }

    fn commands_seen(&self, id: u64) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT commands_seen FROM environments WHERE id = ?1", [sql_id(id)], |r| r.get::<i64>(0))
            .optional()?
            .map(|v| v as u64)
            .ok_or(StoreError::NotFound(id))
    }

    fn environments_following_defaults(&self) -> Result<Intervals, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) - COUNT(ping_interval), COUNT(*) - COUNT(snapshot_interval),
                    COUNT(*) - COUNT(command_interval) FROM environments",
            [],
            |r| Ok(Intervals { ping: r.get(0)?, snapshot: r.get(1)?, command: r.get(2)? }),
        )?)
    }

    fn environments_without_timers(&self, defaults: Intervals) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM environments WHERE COALESCE(ping_interval, ?1) = 0
                AND COALESCE(snapshot_interval, ?2) = 0 AND COALESCE(command_interval, ?3) = 0",
            params![defaults.ping, defaults.snapshot, defaults.command],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn change_default_intervals(&self, defaults: Intervals) -> Result<(), StoreError> {
        // One connection, used by one caller at a time: nothing comes
        // between the check and the change.
        let off = self.environments_without_timers(defaults)?;
        if off > 0 {
            return Err(FleetError::TimersOff(off).into());
        }
        self.set_default_intervals(defaults)
    }

    fn create_group(&self, name: &str) -> Result<Label, StoreError> {
        self.label_create(Kind::Group, name)
    }

    fn groups(&self) -> Result<Vec<Label>, StoreError> {
        self.label_list(Kind::Group)
    }

    fn group(&self, id: u64) -> Result<Label, StoreError> {
        self.label(Kind::Group, id)
    }

    fn rename_group(&self, id: u64, name: &str) -> Result<Label, StoreError> {
        self.label_rename(Kind::Group, id, name)
    }

    fn delete_group(&self, id: u64) -> Result<(), StoreError> {
        self.label_delete(Kind::Group, id)
    }

    fn create_tag(&self, name: &str) -> Result<Label, StoreError> {
        self.label_create(Kind::Tag, name)
    }

    fn tags(&self) -> Result<Vec<Label>, StoreError> {
        self.label_list(Kind::Tag)
    }

    fn tag(&self, id: u64) -> Result<Label, StoreError> {
        self.label(Kind::Tag, id)
    }

    fn rename_tag(&self, id: u64, name: &str) -> Result<Label, StoreError> {
        self.label_rename(Kind::Tag, id, name)
    }

    fn delete_tag(&self, id: u64) -> Result<(), StoreError> {
        self.label_delete(Kind::Tag, id)
    }
}

impl Tx<'_> {
    fn info_row(r: &Row) -> super::sql::Result<EnvironmentInfo> {
        Ok(EnvironmentInfo {
            id: r.get::<i64>(0)? as u64,
            name: r.get(1)?,
            edge_id: r.get(2)?,
            created_at: r.get(3)?,
            last_poll_at: r.get(4)?,
            snapshot_at: r.get(5)?,
        })
    }

    fn agent_intervals_of(ping: Option<i64>, snapshot: Option<i64>, command: Option<i64>) -> Option<Intervals> {
        Some(Intervals { ping: opt_u32(ping)?, snapshot: opt_u32(snapshot)?, command: opt_u32(command)? })
    }

    /// An environment's row, and the text `extra` selects beside it (a
    /// scalar subquery, given [`SETTING_AGENT_SECRET`] as `?2`).
    fn environment_and(&self, id: u64, extra: &str) -> Result<(Environment, Option<String>), StoreError> {
        let sql = format!("SELECT id, name, secret, edge_id, last_counter, {extra} FROM environments WHERE id = ?1");
        let params: &[&dyn ToSql] =
            if extra.contains("?2") { params![id as i64, SETTING_AGENT_SECRET] } else { params![id as i64] };
        self.conn
            .prepare_cached(&sql)?
            .query_row(params, |r| {
                let secret: Vec<u8> = r.get(2)?;
                Ok((r.get::<i64>(0)?, r.get(1)?, secret, r.get(3)?, r.get::<i64>(4)?, r.get::<Option<String>>(5)?))
            })
            .optional()?
            .ok_or(StoreError::NotFound(id))
            .and_then(|(id, name, secret, edge_id, last_counter, extra)| {
                let secret = <[u8; 32]>::try_from(secret.as_slice())
                    .map_err(|_| StoreError::Corrupt { what: "secret", environment: id as u64 })?;
                let env = Environment {
                    id: id as u64,
                    name,
                    secret: Secret(secret),
                    edge_id,
                    last_counter: last_counter as u64,
                };
                Ok((env, extra))
            })
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                [key, v],
            )?,
            None => self.conn.execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// Fills the counts of environments whose stored state is newer than
    /// their counts (a database from before migration 4). A state that no
    /// longer decodes is logged and left for its next snapshot.
    ///
    /// # Errors
    /// When SQLite fails.
    pub(super) fn backfill_counts(&self) -> Result<(), StoreError> {
        let stale: Vec<(i64, i64, Vec<u8>, Option<i64>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT r.environment, r.seq, r.state, e.snapshot_at FROM replicas r
                 JOIN environments e ON e.id = r.environment WHERE e.state_seq IS DISTINCT FROM r.seq",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?
        };
        for (id, seq, bytes, snapshot_at) in stale {
            match State::from_snapshot(&bytes) {
                Ok(state) => save_counts(self.conn, id as u64, seq as u64, &state, snapshot_at.unwrap_or(0))?,
                Err(e) => tracing::warn!("environment {id}: stored state does not decode ({e}); counts left empty"),
            }
        }
        Ok(())
    }

    /// Computes the status window ([`status_window`], the domain's rule) of one environment,
    /// or of all, from their intervals and the server's defaults, and
    /// stores it where it changed. Called in the transaction of every
    /// change to an input, and at open.
    ///
    /// # Errors
    /// When SQLite fails or a default is corrupt.
    pub(super) fn refresh_status_windows(&self, id: Option<u64>) -> Result<(), StoreError> {
        let defaults = self.default_intervals()?;
        let tx = self.tx()?;
        let rows: Vec<(i64, IntervalSettings, Option<Intervals>, i64, i64)> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, ping_interval, snapshot_interval, command_interval,
                        agent_ping, agent_snapshot, agent_command, status_window, session_hold
                 FROM environments WHERE id = ?1 OR ?1 IS NULL",
            )?;
            stmt.query_map([id.map(sql_id)], |r| {
                let own = IntervalSettings {
                    ping: super::opt_u32(r.get(1)?),
                    snapshot: super::opt_u32(r.get(2)?),
                    command: super::opt_u32(r.get(3)?),
                };
                Ok((r.get(0)?, own, Self::agent_intervals_of(r.get(4)?, r.get(5)?, r.get(6)?), r.get(7)?, r.get(8)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut update = self.conn.prepare("UPDATE environments SET status_window = ?2 WHERE id = ?1")?;
        for (id, own, reported, stored, hold) in rows {
            let window = status_window(own.resolve(defaults), reported, u32::try_from(hold).unwrap_or(0));
            if window != stored {
                update.execute(params![id, window])?;
            }
        }
        drop(update);
        tx.commit()
    }

    fn fleet_where(&self, filter: &Filter, id: Option<u64>, now: i64) -> Result<(Vec<FleetItem>, u64), StoreError> {
        let mut named: Vec<(&str, Box<dyn ToSql>)> = vec![(":now", Box::new(now))];
        let mut wheres = Vec::new();
        if let Some(id) = id {
            wheres.push("f.id = :id");
            named.push((":id", Box::new(sql_id(id))));
        }
        if let Some(g) = &filter.group {
            wheres.push("f.group_id = :group");
            named.push((":group", Box::new(sql_id(resolve(self.conn, Kind::Group, g)?))));
        }
        if let Some(t) = &filter.tag {
            wheres.push("EXISTS (SELECT 1 FROM environment_tags et WHERE et.environment = f.id AND et.tag = :tag)");
            named.push((":tag", Box::new(sql_id(resolve(self.conn, Kind::Tag, t)?))));
        }
        if let Some(s) = filter.status {
            wheres.push("f.online = :online");
            named.push((":online", Box::new(s == Status::Online)));
        }
        if let Some(u) = filter.user {
            wheres.push(
                "f.group_id IN (SELECT tg.group_id FROM team_groups tg JOIN team_members tm ON tm.team = tg.team
                                WHERE tm.user_id = :scope_user)",
            );
            named.push((":scope_user", Box::new(sql_id(u))));
        }
        if let Some(n) = &filter.name {
            wheres.push("instr(lower(f.name), lower(:name)) > 0");
            named.push((":name", Box::new(n.clone())));
        }
        let where_sql = if wheres.is_empty() { String::new() } else { format!("WHERE {}", wheres.join(" AND ")) };
        let total: i64 =
            self.conn
                .query_row(&format!("{FLEET_CTE} SELECT COUNT(*) FROM f {where_sql}"), &*refs(&named), |r| r.get(0))?;
        named.push((":limit", Box::new(filter.limit.map_or(i64::MAX, sql_id))));
        named.push((":offset", Box::new(sql_id(filter.offset))));
        let sql = format!(
            "{FLEET_CTE} SELECT {} FROM f LEFT JOIN groups g ON g.id = f.group_id {where_sql}
             ORDER BY f.id LIMIT :limit OFFSET :offset",
            fleet_columns(self.conn.dialect())
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(&*refs(&named), |r| {
            let group = match (r.get::<Option<i64>>(2)?, r.get::<Option<String>>(3)?) {
                (Some(id), Some(name)) => Some((id as u64, name)),
                _ => None,
            };
            let tags: String = r.get(11)?;
            let n = |i: usize| r.get::<i64>(i).map(|v| v as u64);
            let root: Option<Vec<u8>> = r.get(22)?;
            Ok(FleetItem {
                id: r.get::<i64>(0)? as u64,
                name: r.get(1)?,
                group,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                edge_id: r.get(4)?,
                created_at: r.get(5)?,
                last_poll_at: r.get(6)?,
                snapshot_at: r.get(7)?,
                as_of: r.get(8)?,
                status: if r.get::<bool>(9)? { Status::Online } else { Status::Offline },
                window: r.get(10)?,
                counts: FleetCounts {
                    containers: n(12)?,
                    running: n(13)?,
                    paused: n(14)?,
                    stopped: n(15)?,
                    unhealthy: n(16)?,
                    images: n(17)?,
                    volumes: n(18)?,
                    networks: n(19)?,
                    stacks: n(20)?,
                },
                seq: r.get::<Option<i64>>(21)?.map_or(0, |v| v as u64),
                root: root.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()).unwrap_or_else(empty_root),
                agent_version: r.get(23)?,
                session_hold: u32::try_from(r.get::<i64>(24)?).unwrap_or(0),
                session_note: r.get(25)?,
            })
        })?;
        let items = rows.collect::<Result<Vec<_>, _>>()?;
        Ok((items, total as u64))
    }

    // ----- groups and tags -----

    fn label_create(&self, kind: Kind, name: &str) -> Result<Label, StoreError> {
        match self.conn.insert(&format!("INSERT INTO {} (name) VALUES (?1)", kind.table()), [name]) {
            Err(e) if is_constraint(&e) => Err(kind.taken(name).into()),
            r => {
                let id = r?;
                Ok(Label { id: id as u64, name: name.to_owned(), environments: 0 })
            }
        }
    }

    fn label_list(&self, kind: Kind) -> Result<Vec<Label>, StoreError> {
        let sql =
            format!("SELECT x.id, x.name, {} FROM {} x ORDER BY x.name COLLATE NOCASE", kind.members(), kind.table());
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(Label { id: r.get::<i64>(0)? as u64, name: r.get(1)?, environments: r.get::<i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn label(&self, kind: Kind, id: u64) -> Result<Label, StoreError> {
        let sql = format!("SELECT x.id, x.name, {} FROM {} x WHERE x.id = ?1", kind.members(), kind.table());
        self.conn
            .query_row(&sql, [sql_id(id)], |r| {
                Ok(Label { id: r.get::<i64>(0)? as u64, name: r.get(1)?, environments: r.get::<i64>(2)? as u64 })
            })
            .optional()?
            .ok_or_else(|| kind.not_found(id).into())
    }

    fn label_rename(&self, kind: Kind, id: u64, name: &str) -> Result<Label, StoreError> {
        match self
            .conn
            .execute(&format!("UPDATE {} SET name = ?2 WHERE id = ?1", kind.table()), params![sql_id(id), name])
        {
            Err(e) if is_constraint(&e) => Err(kind.taken(name).into()),
            Ok(0) => Err(kind.not_found(id).into()),
            r => {
                r?;
                self.label(kind, id)
            }
        }
    }

    fn label_delete(&self, kind: Kind, id: u64) -> Result<(), StoreError> {
        let tx = self.tx()?;
        match kind {
            Kind::Group => tx.execute("UPDATE environments SET group_id = NULL WHERE group_id = ?1", [sql_id(id)])?,
            Kind::Tag => tx.execute("DELETE FROM environment_tags WHERE tag = ?1", [sql_id(id)])?,
        };
        if tx.execute(&format!("DELETE FROM {} WHERE id = ?1", kind.table()), [sql_id(id)])? == 0 {
            return Err(kind.not_found(id).into());
        }
        tx.commit()?;
        Ok(())
    }
}

fn empty_root() -> [u8; 32] {
    crate::sync::state::empty_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sync::session::Replica;
    use crate::sync::state::{Container, ContainerStatus, Health, Id, Image, Network};

    fn state() -> State {
        let mut s = State::default();
        for (n, status, health, project) in [
            (1, ContainerStatus::Running, Health::Healthy, Some("shop")),
            (2, ContainerStatus::Restarting, Health::Unhealthy, Some("shop")),
            (3, ContainerStatus::Exited, Health::Unhealthy, None),
            (4, ContainerStatus::Paused, Health::None, None),
            (5, ContainerStatus::Dead, Health::None, Some("db")),
        ] {
            let mut c = Container { id: Id([n; 32]), name: format!("c{n}"), status, health, ..Container::default() };
            if let Some(p) = project {
                c.labels.insert("com.docker.compose.project".into(), p.into());
            }
            s.containers.insert(c);
        }
        s.images.insert(Image { id: Id([9; 32]), ..Image::default() });
        s.networks.insert(Network { id: Id([8; 32]), name: "bridge".into(), ..Network::default() });
        s
    }

    fn replica_of(s: &State) -> Replica {
        let mut r = Replica::default();
        r.receive(0, Some(&crate::sync::diff(&State::default(), s)));
        r
    }

    fn new_env(name: &str, group: Option<&str>, tags: &[&str]) -> NewEnvironment {
        NewEnvironment {
            name: name.into(),
            secret: Secret([1; 32]),
            intervals: IntervalSettings::default(),
            group: group.map(|g| Ref::Name(g.into())),
            tags: tags.iter().map(|t| Ref::Name((*t).into())).collect(),
            options: FleetOptions {
                url: "https://ops.example.com".into(),
                env_vars: vec![],
                allow_self_signed: false,
                volume_path: None,
                deploy_edge_id: None,
                tcp_timestamps: false,
            },
        }
    }

    const EXPECTED: FleetCounts = FleetCounts {
        containers: 5,
        running: 2,
        paused: 1,
        stopped: 2,
        unhealthy: 2,
        images: 1,
        volumes: 0,
        networks: 1,
        stacks: 2,
    };

    #[test]
    fn counts_are_kept_where_the_replica_is_saved() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let id = s.create_fleet_environment(&new_env("site", None, &[]), 1).unwrap();
        let empty = s.fleet_item(id, 2).unwrap();
        assert_eq!((empty.counts, empty.seq, empty.root, empty.as_of), (FleetCounts::default(), 0, empty_root(), None));
        let st = state();
        assert_eq!(FleetCounts::of(&st), EXPECTED);
        s.save_replica(id, &replica_of(&st), 10).unwrap();
        let item = s.fleet_item(id, 11).unwrap();
        assert_eq!(
            (item.counts, item.seq, item.root, item.snapshot_at, item.as_of),
            (EXPECTED, 1, st.root(), Some(10), Some(10))
        );
        // A snapshot poll that found nothing changed restarts the age only.
        s.confirm_snapshot(id, 20).unwrap();
        let item = s.fleet_item(id, 21).unwrap();
        assert_eq!((item.snapshot_at, item.as_of, item.counts), (Some(10), Some(20), EXPECTED));
    }

    #[test]
    fn a_database_from_before_the_fleet_gets_its_counts_at_open() {
        let dir = std::env::temp_dir().join(format!("tern-fleet-backfill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        let st = state();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::super::MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO environments (name, secret, created_at, snapshot_at) VALUES ('old', ?1, 1, 7)",
                [&[5u8; 32][..]],
            )
            .unwrap();
            conn.execute("INSERT INTO replicas (environment, seq, state) VALUES (1, 4, ?1)", [st.to_snapshot()])
                .unwrap();
            conn.execute(
                "INSERT INTO environments (name, secret, created_at) VALUES ('corrupt', ?1, 1)",
                [&[6u8; 32][..]],
            )
            .unwrap();
            conn.execute("INSERT INTO replicas (environment, seq, state) VALUES (2, 1, ?1)", [vec![0u8, 0xff]])
                .unwrap();
        }
        let s_db = Store::open(&path).unwrap();
        let s = s_db.autocommit();
        let item = s.fleet_item(1, 8).unwrap();
        assert_eq!((item.counts, item.seq, item.root, item.as_of), (EXPECTED, 4, st.root(), Some(7)));
        assert_eq!(s.fleet_options(1).unwrap().url, "", "no URL was kept before");
        let corrupt = s.fleet_item(2, 8).unwrap();
        assert_eq!(corrupt.counts, FleetCounts::default(), "a corrupt state is left for its next snapshot");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_status_sql_states_the_same_rule_as_status_window() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let own = |p, sn, c| IntervalSettings { ping: p, snapshot: sn, command: c };
        let cases = [
            (own(None, None, None), None),
            (own(Some(0), Some(3600), Some(600)), None),
            (own(Some(30), None, Some(0)), Some(Intervals { ping: 600, snapshot: 600, command: 600 })),
            (own(Some(3600), None, None), Some(Intervals { ping: 5, snapshot: 0, command: 0 })),
            (own(Some(0), Some(0), None), Some(Intervals { ping: 0, snapshot: 0, command: 0 })),
        ];
        for defaults in
            [Intervals { ping: 60, snapshot: 60, command: 60 }, Intervals { ping: 0, snapshot: 900, command: 0 }]
        {
            s.set_default_intervals(defaults).unwrap();
            for (i, (intervals, reported)) in cases.iter().enumerate() {
                let name = format!("{}-{i}", defaults.snapshot);
                let id = s.create_environment_with(&name, Secret([1; 32]), *intervals, 0).unwrap().id;
                if let Some(r) = reported {
                    s.set_agent_intervals(id, *r).unwrap();
                }
                let want = status_window(intervals.resolve(defaults), *reported, 0);
                let item = s.fleet_item(id, 1000).unwrap();
                assert_eq!(item.window, want, "{intervals:?} {reported:?} over {defaults:?}");
                // Never polled: offline. Polled at the window's edge: online; one second more: offline.
                assert_eq!(item.status, Status::Offline);
                assert!(s.accept_poll(id, 1, Some("e"), 1000).unwrap());
                assert_eq!(s.fleet_item(id, 1000 + want).unwrap().status, Status::Online);
                assert_eq!(s.fleet_item(id, 1001 + want).unwrap().status, Status::Offline);
            }
        }
        assert_eq!(status_window(Intervals { ping: 60, snapshot: 60, command: 60 }, None, 0), 140);
        assert_eq!(status_window(Intervals { ping: 0, snapshot: 300, command: 3600 }, None, 0), 620);
        assert_eq!(
            status_window(Intervals { ping: 60, snapshot: 60, command: 60 }, None, 1500),
            3020,
            "a held session's keepalives are its polls"
        );
        assert_eq!(
            status_window(
                Intervals { ping: 60, snapshot: 0, command: 0 },
                Some(Intervals { ping: 600, snapshot: 0, command: 0 }),
                0
            ),
            1220,
            "while the agent still runs with a longer interval, that counts"
        );
    }

    #[test]
    fn five_thousand_environments_list_in_one_query_without_decoding_a_state() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        s.create_group("even").unwrap();
        s.create_tag("solar").unwrap();
        let tx = &s.conn;
        for i in 0..5000u64 {
            let group = (i % 2 == 0).then(|| Ref::Name("even".into()));
            let tags = if i % 10 == 0 { vec![Ref::Name("solar".into())] } else { vec![] };
            let id = s.create_fleet_environment(
                &NewEnvironment { group, tags, ..new_env(&format!("site-{i}"), None, &[]) },
                0,
            );
            // Every stored state is garbage: decoding one would fail the list.
            tx.execute(
                "INSERT INTO replicas (environment, seq, state) VALUES (?1, 1, ?2)",
                params![id.unwrap() as i64, vec![0u8, 0xff]],
            )
            .unwrap();
            if i % 3 == 0 {
                tx.execute(
                    "UPDATE environments SET last_poll_at = 990, n_containers = 7 WHERE id = ?1",
                    [i as i64 + 1],
                )
                .unwrap();
            }
        }
        let start = std::time::Instant::now();
        let (page, total) = s.fleet(&Filter { limit: Some(100), offset: 200, ..Filter::default() }, 1000).unwrap();
        let all = start.elapsed();
        assert_eq!((page.len(), total, page[0].name.as_str()), (100, 5000, "site-200"));
        let start = std::time::Instant::now();
        let filter = Filter {
            group: Some(Ref::Name("EVEN".into())),
            tag: Some(Ref::Name("solar".into())),
            status: Some(Status::Online),
            name: Some("SITE-1".into()),
            user: None,
            limit: Some(1000),
            offset: 0,
        };
        let (found, total) = s.fleet(&filter, 1000).unwrap();
        let filtered = start.elapsed();
        // Even, a multiple of 10, of 3 (polled), with "site-1" in the name.
        let want: Vec<String> = (0..5000)
            .filter(|i| i % 30 == 0 && format!("site-{i}").contains("site-1"))
            .map(|i| format!("site-{i}"))
            .collect();
        assert_eq!(found.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), want);
        assert_eq!(total as usize, want.len());
        assert!(found.iter().all(|e| e.counts.containers == 7 && e.tags == ["solar"] && e.group.is_some()));
        println!("5,000 environments: a page of 100 in {all:?}, filtered in {filtered:?}");
        assert!(all.as_millis() < 1000 && filtered.as_millis() < 1000, "{all:?} {filtered:?}");
        // The filters use the indexes (SQLite's plan; PostgreSQL plans by
        // its statistics, and on a table this small may well scan).
        if s.conn.dialect() != super::super::sql::Dialect::Sqlite {
            return;
        }
        let plan: Vec<String> = s
            .conn
            .prepare("EXPLAIN QUERY PLAN SELECT 1 FROM environment_tags WHERE tag = 1")
            .unwrap()
            .query_map([], |r| r.get::<String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("environment_tags_by_tag")), "{plan:?}");
    }

    #[test]
    fn groups_and_tags_are_unique_regardless_of_case_and_deleting_one_frees_its_environments() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let g = s.create_group("Yards").unwrap();
        assert!(matches!(s.create_group("yards"), Err(StoreError::Fleet(FleetError::GroupNameTaken(_)))));
        let id = s.create_fleet_environment(&new_env("a", Some("YARDS"), &["x", "Y"]), 0).unwrap();
        let item = s.fleet_item(id, 0).unwrap();
        assert_eq!((item.group, item.tags), (Some((g.id, "Yards".into())), vec!["x".to_owned(), "Y".to_owned()]));
        assert_eq!(s.group(g.id).unwrap().environments, 1);
        assert_eq!(
            s.tags().unwrap().iter().map(|t| (t.name.as_str(), t.environments)).collect::<Vec<_>>(),
            [("x", 1), ("Y", 1)]
        );
        s.delete_group(g.id).unwrap();
        let y = s.tags().unwrap()[1].id;
        s.delete_tag(y).unwrap();
        let item = s.fleet_item(id, 0).unwrap();
        assert_eq!((item.group, item.tags), (None, vec!["x".to_owned()]));
        assert!(matches!(s.delete_group(g.id), Err(StoreError::Fleet(FleetError::GroupNotFound(_)))));
        assert!(matches!(s.rename_tag(99, "z"), Err(StoreError::Fleet(FleetError::TagNotFound(99)))));
        // All or nothing: a change that fails half-way leaves no trace.
        let change = EnvironmentChange {
            name: Some("b".into()),
            tags: Some(vec![Ref::Name("fresh".into()), Ref::Id(99)]),
            ..EnvironmentChange::default()
        };
        assert!(matches!(s.update_environment(id, &change), Err(StoreError::Fleet(FleetError::UnknownTag(_)))));
        assert_eq!((s.fleet_item(id, 0).unwrap().name.as_str(), s.tags().unwrap().len()), ("a", 1));
        assert!(matches!(
            s.create_fleet_environment(&new_env("c", Some("nowhere"), &["fresh"]), 0),
            Err(StoreError::Fleet(FleetError::UnknownGroup(_)))
        ));
        assert!(matches!(
            s.create_fleet_environment(&new_env("a", None, &["fresh"]), 0),
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!((s.fleet(&Filter::default(), 0).unwrap().1, s.tags().unwrap().len()), (1, 1), "nothing created");
        assert!(matches!(s.delete_environment(99), Err(StoreError::NotFound(99))));
    }
}
