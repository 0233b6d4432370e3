//! The server's embedded database (SQLite, WAL): environments, each agent's
//! reconstructed state, the command queue and command results, and the
//! server-wide settings. The only module that touches the database.
//!
//! **Traits per area, on an explicit transaction.** What the rest of the
//! server may do with its data is six traits: [`FleetStore`],
//! [`CommandStore`], [`StackStore`], [`JobStore`], [`AccessStore`],
//! [`UsageStore`] ([`Transaction`] is all of them). Their methods are
//! methods of a transaction: the poll, the API, the UI and quickstart get
//! one from [`pool::Pool`] (`write`: committed when the work returns `Ok`,
//! rolled back on `Err`; `read`: one snapshot) and never see SQLite. The
//! SQLite implementation is [`Tx`]; a PostgreSQL one implements the same
//! traits on its own transaction type (issue #15). The traits are
//! synchronous, as the work runs on blocking threads; their errors are
//! [`StoreError`] and the areas' own enums, which name no HTTP route.
//!
//! A command's life: `queued` when an operator asks for it; included in
//! every reply (`sent_at` is stamped each time) until the agent reports
//! through `commands_seen` that it recorded it, then `delivered`; then `ok`,
//! `failed` or `rejected` when its result arrives. A command can be
//! `cancelled` until it is delivered; one already sent may still run if its
//! reply reached the agent, and its result is then recorded.
//!
//! Schema changes are numbered migrations, applied in order at open and
//! recorded in `PRAGMA user_version`; a database from a newer build is
//! refused rather than guessed at.

pub mod access;
pub mod admission;
pub mod audit;
mod commands;
pub mod copy;
pub mod fleet;
pub mod images;
pub mod jobs;
pub mod pool;
pub mod postgres;
pub mod registries;
pub mod sql;
pub mod sqlite;
pub mod stacks;
pub mod teams;
pub mod usage;

use std::path::Path;

use sql::{Connection, OptionalExtension, Row, params};

use crate::auth::Secret;
use crate::sync::State;
use crate::sync::session::Replica;
use crate::wire::poll::{Action, Command, CommandResult, Intervals, ResultStatus};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed: its own message. Which database it
    /// is stays inside the store (this enum names no backend), so the API
    /// answers a PostgreSQL failure as it does a SQLite one.
    #[error("database: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The database was written by a newer build.
    #[error("database schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A reading connection found a schema other than this build's (the
    /// writer migrates; another process changed the file since).
    #[error("database schema version {found} is not this build's {supported}")]
    OtherSchema {
        /// The version found.
        found: i64,
        /// This build's.
        supported: i64,
    },
    /// A stored value does not decode.
    #[error("corrupt stored {what} for environment {environment}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Whose.
        environment: u64,
    },
    /// No such environment.
    #[error("no environment {0}")]
    NotFound(u64),
    /// The name is taken.
    #[error("an environment named {0:?} exists already")]
    NameTaken(String),
    /// No such command.
    #[error("no command {0}")]
    CommandNotFound(u64),
    /// The command cannot be cancelled: the agent may already run it.
    #[error("command {0} was already delivered to the agent (or has ended); it can no longer be cancelled")]
    AlreadyDelivered(u64),
    /// A server setting holds a value this build cannot read.
    #[error("corrupt setting {0:?}")]
    CorruptSetting(&'static str),
    /// Groups, tags, environment options (see `fleet.rs`).
    #[error("{0}")]
    Fleet(fleet::FleetError),
}

impl From<sql::Error> for StoreError {
    fn from(e: sql::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        sqlite::from(e).into()
    }
}

impl StoreError {
    /// A row this transaction just wrote is not there: the database broke
    /// its promise.
    fn vanished(what: &str) -> Self {
        Self::Backend(format!("the {what} just written cannot be read back").into())
    }
}

/// The most output bytes kept per command (the agent's cap too).
pub const MAX_OUTPUT_LEN: usize = 64 * 1024;

/// Migrations, in order. Never edit one that has shipped; add another, here
/// and to PostgreSQL's (`postgres::MIGRATIONS`, one for one).
const MIGRATIONS: &[&str] = &[
    // 1: environments, replicas, commands.
    "CREATE TABLE environments (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        secret BLOB NOT NULL,
        edge_id TEXT,
        last_counter INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        last_poll_at INTEGER,
        snapshot_at INTEGER
    );
    CREATE TABLE replicas (
        environment INTEGER PRIMARY KEY REFERENCES environments(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        state BLOB NOT NULL,
        prev_seq INTEGER,
        prev_state BLOB
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        action BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued','delivered','ok','failed','rejected','cancelled')),
        error TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        delivered_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX commands_due ON commands(environment, status);",
    // 2: per-environment intervals (NULL: the server default; 0: disabled),
    // the intervals the agent last reported (NULL: unknown), the highest
    // command id the agent recorded, when a command was last sent, and the
    // server-wide settings.
    "ALTER TABLE environments ADD COLUMN ping_interval INTEGER;
    ALTER TABLE environments ADD COLUMN snapshot_interval INTEGER;
    ALTER TABLE environments ADD COLUMN command_interval INTEGER;
    ALTER TABLE environments ADD COLUMN agent_ping INTEGER;
    ALTER TABLE environments ADD COLUMN agent_snapshot INTEGER;
    ALTER TABLE environments ADD COLUMN agent_command INTEGER;
    ALTER TABLE environments ADD COLUMN commands_seen INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE commands ADD COLUMN sent_at INTEGER;
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 3: operators (see `access.rs`): the admin account (argon2id PHC
    // string), UI sessions (only the blake3 of the session id is kept, with
    // its CSRF token; `expires_at` slides with use up to `created_at` plus
    // the session lifetime), and API tokens (only the blake3 of the token
    // is kept; revoked ones stay listed; `data_directory` marks the one
    // whose secret is in `<data>/admin-token`).
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        password_changed_at INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER,
        data_directory INTEGER NOT NULL DEFAULT 0
    );",
    // 4: the fleet (see `fleet.rs`): groups and tags (names unique
    // regardless of case), and what an environment was created with (the
    // URL the edge sees, host variables passed through to the agent,
    // self-signed certificates allowed, the host's Docker volume path, the
    // EDGE_ID its deploy commands carry); and what its stored state holds
    // (object and container counts, sequence number, root digest, when it
    // was last known current), written where the replica is saved so the
    // list never decodes a state.
    "CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE
    );
    CREATE TABLE tags (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE
    );
    CREATE TABLE environment_tags (
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        tag INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
        PRIMARY KEY (environment, tag)
    ) WITHOUT ROWID;
    CREATE INDEX environment_tags_by_tag ON environment_tags(tag);
    ALTER TABLE environments ADD COLUMN group_id INTEGER REFERENCES groups(id) ON DELETE SET NULL;
    ALTER TABLE environments ADD COLUMN url TEXT NOT NULL DEFAULT '';
    ALTER TABLE environments ADD COLUMN env_vars TEXT NOT NULL DEFAULT '';
    ALTER TABLE environments ADD COLUMN allow_self_signed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN volume_path TEXT;
    ALTER TABLE environments ADD COLUMN deploy_edge_id TEXT;
    ALTER TABLE environments ADD COLUMN state_seq INTEGER;
    ALTER TABLE environments ADD COLUMN state_root BLOB;
    ALTER TABLE environments ADD COLUMN state_as_of INTEGER;
    ALTER TABLE environments ADD COLUMN n_containers INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_running INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_paused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_stopped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_unhealthy INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_images INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_volumes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_networks INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN n_stacks INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX environments_by_group ON environments(group_id);",
    // 5: data usage (see `usage.rs`): per environment and hour (the
    // hour's first second, Unix time), bytes at the TLS socket both ways
    // (up: from the agent), poll body bytes both ways, and polls; per hour,
    // the socket bytes of connections on which no poll authenticated. Kept
    // 30 days.
    "CREATE TABLE usage_hourly (
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        hour INTEGER NOT NULL,
        tls_up INTEGER NOT NULL DEFAULT 0,
        tls_down INTEGER NOT NULL DEFAULT 0,
        body_up INTEGER NOT NULL DEFAULT 0,
        body_down INTEGER NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (environment, hour)
    ) WITHOUT ROWID;
    CREATE INDEX usage_hourly_by_hour ON usage_hourly(hour);
    CREATE TABLE usage_unattributed (
        hour INTEGER PRIMARY KEY,
        tls_up INTEGER NOT NULL DEFAULT 0,
        tls_down INTEGER NOT NULL DEFAULT 0,
        connections INTEGER NOT NULL DEFAULT 0
    );",
    // 6: what a command printed (a container's logs), apart from the
    // command rows so listing history never reads it.
    "CREATE TABLE command_outputs (
        command INTEGER PRIMARY KEY REFERENCES commands(id) ON DELETE CASCADE,
        output BLOB NOT NULL
    );",
    // 7: the current step of a long command ("deploying", "removing"),
    // from the agent's progress results.
    "ALTER TABLE commands ADD COLUMN phase TEXT;",
    // 8: edge stacks (see `stacks.rs`): the stack (its name unique among
    // those not being removed; `env` a JSON object; `version` bumped by
    // every update), its targets (one of environment, group or tag per
    // row), and per environment the last command sent for it.
    "CREATE TABLE stacks (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        compose TEXT NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        removed_at INTEGER
    );
    CREATE UNIQUE INDEX stacks_live_name ON stacks(name) WHERE removed_at IS NULL;
    CREATE TABLE stack_targets (
        stack INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
        environment INTEGER REFERENCES environments(id) ON DELETE CASCADE,
        group_id INTEGER REFERENCES groups(id) ON DELETE CASCADE,
        tag INTEGER REFERENCES tags(id) ON DELETE CASCADE,
        CHECK ((environment IS NOT NULL) + (group_id IS NOT NULL) + (tag IS NOT NULL) = 1)
    );
    CREATE INDEX stack_targets_by_stack ON stack_targets(stack);
    CREATE INDEX stack_targets_by_environment ON stack_targets(environment) WHERE environment IS NOT NULL;
    CREATE INDEX stack_targets_by_group ON stack_targets(group_id) WHERE group_id IS NOT NULL;
    CREATE INDEX stack_targets_by_tag ON stack_targets(tag) WHERE tag IS NOT NULL;
    CREATE TABLE stack_deployments (
        stack INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        command INTEGER REFERENCES commands(id) ON DELETE SET NULL,
        removing INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (stack, environment)
    ) WITHOUT ROWID;
    CREATE INDEX stack_deployments_by_environment ON stack_deployments(environment);",
    // 9: edge jobs (see `jobs.rs`): jobs (kept when deleted, for their
    // runs), the environments each was sent to with the command that
    // carried it, every command a job queued, and the runs of scheduled
    // jobs (one per job, environment and agent-assigned run number).
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        script TEXT NOT NULL,
        image TEXT NOT NULL DEFAULT '',
        cron TEXT NOT NULL DEFAULT '',
        timeout_s INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        removed_at INTEGER
    );
    CREATE TABLE job_targets (
        job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        command INTEGER REFERENCES commands(id) ON DELETE SET NULL,
        removed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job, environment)
    ) WITHOUT ROWID;
    CREATE INDEX job_targets_by_environment ON job_targets(environment);
    CREATE TABLE job_commands (
        command INTEGER PRIMARY KEY REFERENCES commands(id) ON DELETE CASCADE,
        job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        environment INTEGER NOT NULL,
        once INTEGER NOT NULL
    );
    CREATE INDEX job_commands_by_job ON job_commands(job, environment);
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY,
        job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        run INTEGER NOT NULL,
        version INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        exit_code INTEGER NOT NULL,
        output BLOB NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        received_at INTEGER NOT NULL,
        UNIQUE (job, environment, run)
    );",
    // 10: whether an environment's Linux deploy command keeps TCP
    // timestamps (see `domain::deploy::linux_command`). Off for new ones; the
    // environments made before keep them, so that their command, run
    // again on a host whose engine refuses the new option (Linux before
    // 4.15), still starts the agent.
    "ALTER TABLE environments ADD COLUMN tcp_timestamps INTEGER NOT NULL DEFAULT 0;
    UPDATE environments SET tcp_timestamps = 1;",
    // 11: the status rule's window, in seconds, for the environment's
    // effective and reported intervals: computed in Rust
    // ([`fleet::status_window`], the rule's one statement) whenever one
    // of them changes, so the SQL that filters and counts by status only
    // compares a time with it. 0 until computed (at open).
    "ALTER TABLE environments ADD COLUMN status_window INTEGER NOT NULL DEFAULT 0;",
    // 12: private registries and their credentials, the password or token
    // sealed under the server key (`registries`, `server::secrets`).
    "CREATE TABLE registries (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL COLLATE NOCASE UNIQUE,
        server TEXT NOT NULL UNIQUE,
        username TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 13: images the server holds (`images`): pulled from a registry into
    // the data directory's blob store; its layers by diff_id.
    "CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        reference TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        image_id TEXT,
        layers TEXT NOT NULL DEFAULT '[]',
        size INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 14: image transfers (`server::transfers`): the counter of the
    // agent's transfer lane, and the operator's rate cap (bytes a second,
    // 0: none) and download window (`HH:MM-HH:MM` UTC, '': any time).
    "ALTER TABLE environments ADD COLUMN transfer_counter INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE environments ADD COLUMN transfer_rate INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE environments ADD COLUMN transfer_window TEXT NOT NULL DEFAULT '';",
    // 15: the version its agent reported (on first contact and after an
    // update), shown with the environment.
    "ALTER TABLE environments ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';",
    // 16: staged agent updates (`domain::rollouts`): a share of the
    // environments first, the rest once every one of those updated.
    "CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        reference TEXT NOT NULL,
        image_id TEXT NOT NULL,
        update_no INTEGER NOT NULL,
        timeout_s INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE rollout_members (
        rollout INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        wave INTEGER NOT NULL,
        command INTEGER REFERENCES commands(id) ON DELETE SET NULL,
        PRIMARY KEY (rollout, environment)
    ) WITHOUT ROWID;
    CREATE INDEX rollout_members_by_command ON rollout_members(command);",
    // 17: what several server replicas on one database must share (issue
    // #15): the keys TLS session tickets are sealed with (sealed in turn
    // under the server key; `server::tickets`), so a connection resumes on
    // any replica, and failed logins (`api::access::LoginLimiter`), so the
    // limits hold across replicas.
    "CREATE TABLE tls_ticket_keys (
        id INTEGER PRIMARY KEY,
        secret BLOB NOT NULL,
        active_from INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE login_failures (
        client TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX login_failures_by_client ON login_failures(client, at);
    CREATE INDEX login_failures_by_time ON login_failures(at);",
    // 18: the held session (issue #16): the keepalive period of the session
    // the agent holds (0: it polls), and why it polls when it fell back.
    "ALTER TABLE environments ADD COLUMN session_hold INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE environments ADD COLUMN session_note TEXT NOT NULL DEFAULT '';",
    // 19: the audit log (issue #17; `store::audit`): who did what to which
    // target, when, from where, and how it ended.
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        status INTEGER NOT NULL,
        addr TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at);",
    // 20: every version of a stack (issue #17; `store::stacks`), kept for
    // its history and for rollbacks; the versions stacks are at now are
    // the first rows.
    "CREATE TABLE stack_versions (
        stack INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        compose TEXT NOT NULL,
        env TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (stack, version)
    ) WITHOUT ROWID;
    INSERT INTO stack_versions (stack, version, compose, env, created_at)
        SELECT id, version, compose, env, updated_at FROM stacks;",
    // 21: onboarding many devices (issue #17; `store::admission`): fleet
    // join tokens (the secret every device flashed with one shares; what
    // its devices are admitted with; its rule; its limits) and the devices
    // that asked to join with one (what each said of itself, the key it
    // is bound to, and the operator's or the rule's decision). A device's
    // number is never used again (AUTOINCREMENT): a forgotten device that
    // still asks by it finds no other's entry.
    "CREATE TABLE fleet_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        secret BLOB NOT NULL,
        url TEXT NOT NULL,
        group_id INTEGER REFERENCES groups(id) ON DELETE SET NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        auto_admit TEXT NOT NULL DEFAULT 'off',
        auto_tags TEXT NOT NULL DEFAULT '[]',
        max_uses INTEGER,
        uses INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token INTEGER NOT NULL REFERENCES fleet_tokens(id) ON DELETE CASCADE,
        edge_id TEXT NOT NULL,
        device_key BLOB NOT NULL,
        hostname TEXT NOT NULL DEFAULT '',
        agent_version TEXT NOT NULL DEFAULT '',
        engine TEXT NOT NULL DEFAULT '',
        group_name TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        addr TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'pending',
        reason TEXT NOT NULL DEFAULT '',
        environment INTEGER REFERENCES environments(id) ON DELETE SET NULL,
        last_counter INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        decided_at INTEGER,
        decided_by TEXT NOT NULL DEFAULT '',
        UNIQUE (token, edge_id)
    );",
    // 22: deploys (issue #17): the stack version each environment runs
    // (the version of its last deploy that ended ok, apart from the version
    // last sent: a failed deploy leaves the earlier one running; NULL: none
    // known), which attempt of the version last sent is on its way, and
    // when a failed one is tried again (`domain::stacks::after_result`).
    // Which stack version each deploy command carries, so an ok result for
    // an older command still counts once a newer one was sent.
    "ALTER TABLE stack_deployments ADD COLUMN running_version INTEGER;
    ALTER TABLE stack_deployments ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE stack_deployments ADD COLUMN retry_at INTEGER;
    CREATE INDEX stack_deployments_retry ON stack_deployments(retry_at) WHERE retry_at IS NOT NULL;
    CREATE TABLE stack_commands (
        command INTEGER PRIMARY KEY REFERENCES commands(id) ON DELETE CASCADE,
        stack INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
        version INTEGER NOT NULL
    );
    UPDATE stack_deployments SET running_version = version
        WHERE removing = 0 AND command IN (SELECT id FROM commands WHERE status = 'ok');",
    // 23: users with roles (issue #17; `store::access`): a user is an
    // admin, an operator or a viewer, and may be disabled (its sessions end
    // and its tokens are refused). An API token belongs to the user who
    // made it and may carry fewer rights than they have (`role`; NULL: as
    // many as the user). The admin made every token there was.
    "ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'viewer';
    UPDATE users SET role = 'admin' WHERE name = 'admin';
    ALTER TABLE users ADD COLUMN disabled_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN user_id INTEGER REFERENCES users(id) ON DELETE CASCADE;
    ALTER TABLE api_tokens ADD COLUMN role TEXT;
    UPDATE api_tokens SET user_id = (SELECT id FROM users WHERE name = 'admin');",
    // 24: teams (issue #17; `store::teams`): users, and the groups of
    // environments those users may see and act on (an admin sees all).
    "CREATE TABLE teams (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE team_members (
        team INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (team, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX team_members_by_user ON team_members(user_id);
    CREATE TABLE team_groups (
        team INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        PRIMARY KEY (team, group_id)
    ) WITHOUT ROWID;",
    // 25: stack variables with a value of an environment's own (issue
    // #17; `store::stacks`): a stack declaring the name is deployed there
    // with it.
    "CREATE TABLE environment_variables (
        environment INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (environment, name)
    ) WITHOUT ROWID;",
    // 26: configuration files shipped with a stack (issue #17;
    // `store::stacks`): a JSON object of path to text, kept per version.
    "ALTER TABLE stacks ADD COLUMN files TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE stack_versions ADD COLUMN files TEXT NOT NULL DEFAULT '{}';",
    // 27: deploy windows (issue #17; `domain::windows`), a stack's and an
    // environment's: `HH:MM-HH:MM UTC[+HH:MM]`, empty for none.
    "ALTER TABLE stacks ADD COLUMN deploy_window TEXT NOT NULL DEFAULT '';
    ALTER TABLE environments ADD COLUMN deploy_window TEXT NOT NULL DEFAULT '';",
];

/// The interval every timer runs at when neither the environment nor the
/// server settings say otherwise, in seconds (Portainer's default).
pub const DEFAULT_INTERVAL: u32 = 60;

/// The longest error text kept from a command result; the rest is cut.
pub const MAX_ERROR_LEN: usize = 4096;

const SETTING_PING: &str = "interval.ping";
const SETTING_SNAPSHOT: &str = "interval.snapshot";
const SETTING_COMMAND: &str = "interval.command";
const SETTING_AGENT_SECRET: &str = "agent_secret";

/// An environment's own intervals, in seconds: `None` follows the server
/// default, 0 disables that timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalSettings {
    /// Heartbeat.
    pub ping: Option<u32>,
    /// State snapshot.
    pub snapshot: Option<u32>,
    /// Command check.
    pub command: Option<u32>,
}

impl IntervalSettings {
    /// These settings over `defaults`.
    pub fn resolve(self, defaults: Intervals) -> Intervals {
        Intervals {
            ping: self.ping.unwrap_or(defaults.ping),
            snapshot: self.snapshot.unwrap_or(defaults.snapshot),
            command: self.command.unwrap_or(defaults.command),
        }
    }
}

/// Where a command is in its life (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// Waiting for the agent's next poll.
    Queued,
    /// Included in a reply, not yet confirmed recorded by the agent (stored
    /// as `queued` with a `sent_at`); sent again with every reply until then.
    Sent,
    /// The agent recorded it (its `commands_seen` reached it).
    Delivered,
    /// It ran and worked.
    Ok,
    /// It ran and the engine refused or failed; see the error text.
    Failed,
    /// The agent did not understand it.
    Rejected,
    /// Cancelled before it was ever sent.
    Cancelled,
}

impl CommandStatus {
    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    fn from_row(status: &str, sent_at: Option<i64>) -> Option<Self> {
        Some(match status {
            "queued" if sent_at.is_some() => Self::Sent,
            "queued" => Self::Queued,
            "delivered" => Self::Delivered,
            "ok" => Self::Ok,
            "failed" => Self::Failed,
            "rejected" => Self::Rejected,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A command as stored, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// Its id (unique across environments, increasing).
    pub id: u64,
    /// The environment it is for.
    pub environment: u64,
    /// What to do.
    pub action: Action,
    /// Where it is in its life.
    pub status: CommandStatus,
    /// The engine's error text, when it failed or was rejected.
    pub error: String,
    /// When it was queued.
    pub created_at: i64,
    /// When it was last included in a reply.
    pub sent_at: Option<i64>,
    /// When the agent confirmed it recorded it (or its result came).
    pub delivered_at: Option<i64>,
    /// When it ended, by the agent's clock.
    pub finished_at: Option<i64>,
}

/// An environment as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentInfo {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The EDGE_ID bound at first poll.
    pub edge_id: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When its agent last polled (accepted polls only).
    pub last_poll_at: Option<i64>,
    /// When its stored state last changed.
    pub snapshot_at: Option<i64>,
}

/// How many objects a state holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Containers.
    pub containers: usize,
    /// Images.
    pub images: usize,
    /// Volumes.
    pub volumes: usize,
    /// Networks.
    pub networks: usize,
    /// Compose stacks (derived from the containers).
    pub stacks: usize,
}

/// An environment in detail, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSummary {
    /// What the list shows.
    pub info: EnvironmentInfo,
    /// The sequence number of the stored state (0: none yet).
    pub seq: u64,
    /// The stored state's blake3 root digest, as the agent computes it.
    pub root: [u8; 32],
    /// What the stored state holds.
    pub counts: ObjectCounts,
    /// The environment's own intervals.
    pub intervals: IntervalSettings,
    /// The intervals the agent should run with.
    pub effective: Intervals,
    /// The intervals the agent last reported it runs with.
    pub agent_intervals: Option<Intervals>,
    /// The highest command id the agent recorded as received.
    pub commands_seen: u64,
}

/// A command row before its action and status are decoded.
struct RawCommand {
    id: u64,
    environment: u64,
    action: Vec<u8>,
    status: String,
    error: String,
    created_at: i64,
    sent_at: Option<i64>,
    delivered_at: Option<i64>,
    finished_at: Option<i64>,
}

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// A u64 from the wire as an SQLite integer: values above `i64::MAX` can
/// name nothing stored, so they saturate.
fn sql_id(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An environment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The MAC key its agent uses.
    pub secret: Secret,
    /// The EDGE_ID bound at first poll.
    pub edge_id: Option<String>,
    /// The highest poll counter accepted.
    pub last_counter: u64,
}

/// A connection to the database, SQLite's or PostgreSQL's.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// Transactions open on `conn` ([`Tx`]): an inner one is a savepoint
    /// inside the outer, so a whole poll is one transaction even though
    /// each store call makes its own.
    depth: std::cell::Cell<u32>,
    /// The environments a command was queued for since
    /// [`Store::take_queued`] last emptied it ([`CommandStore::enqueue_command`]):
    /// whose held sessions [`pool::Pool`] wakes when its transaction
    /// commits. Each environment once.
    queued: std::cell::RefCell<Vec<u64>>,
    /// A reading connection ([`Store::open_reader`]): it refuses writes,
    /// and its transactions begin deferred, on a WAL snapshot.
    reader: bool,
}

/// A transaction on the store's connection: the outermost is `BEGIN` ...
/// `COMMIT`, one opened inside another a savepoint that commits with it.
/// Dropped without [`Tx::commit`], it rolls back (to its savepoint), so an
/// error anywhere leaves nothing half-written.
///
/// The storage traits ([`FleetStore`], [`CommandStore`], [`StackStore`],
/// [`JobStore`], [`AccessStore`], [`UsageStore`]; [`Transaction`] is all
/// of them) are implemented on it: every read and write names the
/// transaction it is part of. [`pool::Pool`] hands one out per unit of
/// work and commits it when the work succeeds.
pub struct Tx<'a> {
    store: &'a Store,
    conn: &'a Connection,
    /// 0: the outermost; otherwise the savepoint's number.
    level: u32,
    done: bool,
    /// [`Store::autocommit`]: no transaction of its own.
    autocommit: bool,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// Everything the server stores, on one transaction: what the domain and
/// the API work through, whatever the backend. SQLite's is [`Tx`].
pub trait Transaction:
    Atomic
    + FleetStore
    + CommandStore
    + StackStore
    + JobStore
    + AccessStore
    + AuditStore
    + AdmissionStore
    + UsageStore
    + RegistryStore
    + ImageStore
    + TeamStore
{
}

impl<
    T: Atomic
        + FleetStore
        + CommandStore
        + StackStore
        + JobStore
        + AccessStore
        + AuditStore
        + AdmissionStore
        + UsageStore
        + RegistryStore
        + ImageStore
        + TeamStore
        + ?Sized,
> Transaction for T
{
}

/// Units inside a transaction: the domain's operations of several writes
/// (a stack and every command it queues) apply whole or not at all, also
/// where no one else opened a transaction around them (tools, tests).
pub trait Atomic {
    /// Makes the rest of this transaction wait for any other that asked
    /// for `area`: for what a poll's transaction reads then writes beyond
    /// its own environment (PostgreSQL runs polls of different
    /// environments side by side; SQLite writes one at a time anyway).
    ///
    /// # Errors
    /// When the database fails.
    fn serialize(&self, area: Area) -> Result<(), StoreError>;

    /// Opens a nested unit (SQLite and PostgreSQL: a savepoint). Released
    /// into the transaction around it by [`Nested::release`]; dropped
    /// without, everything written since is rolled back.
    ///
    /// # Errors
    /// When the database fails.
    fn savepoint(&self) -> Result<Box<dyn Nested + '_>, StoreError>;
}

/// What [`Atomic::serialize`] waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Staged agent updates (`domain::rollouts`), advanced by results.
    Rollouts,
}

/// A unit opened by [`Atomic::savepoint`].
pub trait Nested {
    /// Keeps what was written in it (as part of the transaction around it).
    ///
    /// # Errors
    /// When the database fails; it is then rolled back.
    fn release(self: Box<Self>) -> Result<(), StoreError>;
}

impl Atomic for Tx<'_> {
    fn savepoint(&self) -> Result<Box<dyn Nested + '_>, StoreError> {
        Ok(Box::new(self.tx()?))
    }

    fn serialize(&self, area: Area) -> Result<(), StoreError> {
        let key = match area {
            Area::Rollouts => 1,
        };
        Ok(self.conn.db().lock(key)?)
    }
}

impl Nested for Tx<'_> {
    fn release(self: Box<Self>) -> Result<(), StoreError> {
        (*self).commit()
    }
}

pub use access::AccessStore;
pub use admission::AdmissionStore;
pub use audit::AuditStore;
pub use commands::CommandStore;
pub use fleet::FleetStore;
pub use images::ImageStore;
pub use jobs::JobStore;
pub use registries::RegistryStore;
pub use stacks::StackStore;
pub use teams::TeamStore;
pub use usage::UsageStore;

/// The storage traits, for `use store::prelude::*` where work is done on a
/// [`Transaction`] (its methods are the traits').
pub mod prelude {
    pub use super::{
        AccessStore, AdmissionStore, Atomic, AuditStore, CommandStore, FleetStore, ImageStore, JobStore, RegistryStore,
        StackStore, TeamStore, Transaction, UsageStore,
    };
}

impl Tx<'_> {
    /// A savepoint inside this transaction: an operation of several
    /// statements that must apply whole or not at all.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn tx(&self) -> Result<Tx<'_>, StoreError> {
        self.store.tx()
    }

    /// Commits (the outermost), or releases the savepoint into the
    /// transaction around it.
    ///
    /// # Errors
    /// When SQLite fails; the transaction is then rolled back.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.autocommit {
            return Ok(());
        }
        let sql = if self.level == 0 { "COMMIT".to_owned() } else { format!("RELEASE tern_sp{}", self.level) };
        self.store.conn.execute_batch(&sql)?;
        self.done = true;
        self.store.depth.set(self.level);
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let sql = if self.level == 0 {
                "ROLLBACK".to_owned()
            } else {
                format!("ROLLBACK TO tern_sp{0}; RELEASE tern_sp{0}", self.level)
            };
            if let Err(e) = self.store.conn.execute_batch(&sql) {
                tracing::error!("rollback: {e}");
            }
            self.store.depth.set(self.level);
        }
    }
}

fn decode_state(bytes: &[u8], environment: u64) -> Result<State, StoreError> {
    State::from_snapshot(bytes).map_err(|_| StoreError::Corrupt { what: "state", environment })
}

impl Store {
    /// Opens (or creates) the database at `path` and migrates it.
    ///
    /// # Errors
    /// When SQLite fails or the schema is newer than this build.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        // It holds every environment's secret: the server's alone (SQLite
        // gives its -wal and -shm files the same mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        Self::migrate(conn)
    }

    /// An in-memory database, for tests.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::migrate(rusqlite::Connection::open_in_memory()?)
    }

    /// A fresh, empty database for tests: in memory, or, when
    /// `TERN_TEST_POSTGRES` names a PostgreSQL server (an admin URL, as
    /// `scripts/postgres.sh` prints), a new database there, so that the
    /// same tests run on both backends.
    ///
    /// # Errors
    /// When the database cannot be made.
    pub fn scratch() -> Result<Self, StoreError> {
        match std::env::var("TERN_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => {
                let pg = postgres::PgPool::scratch(&url, "tern_unit")?;
                let store = Self::postgres(pg.get()?);
                store.backfill()?;
                Ok(store)
            }
            _ => Self::in_memory(),
        }
    }

    /// A store on a connection of PostgreSQL's pool (which migrated the
    /// database when it connected).
    #[must_use]
    pub fn postgres(conn: postgres::Pg) -> Self {
        Self {
            conn: Connection::new(Box::new(conn)),
            depth: std::cell::Cell::new(0),
            queued: std::cell::RefCell::default(),
            reader: false,
        }
    }

    /// A store whose every statement fails with `why` (see
    /// `pool::Unavailable`).
    fn unavailable(why: String) -> Self {
        Self {
            conn: Connection::new(Box::new(pool::Unavailable(why))),
            depth: std::cell::Cell::new(0),
            queued: std::cell::RefCell::default(),
            reader: true,
        }
    }

    /// Which database this is.
    #[must_use]
    pub fn dialect(&self) -> sql::Dialect {
        self.conn.dialect()
    }

    /// Brings the counts and status windows up to this build's rules
    /// (after migrating; on PostgreSQL once per replica start).
    ///
    /// # Errors
    /// When the database fails.
    pub fn backfill(&self) -> Result<(), StoreError> {
        let tx = self.tx()?;
        tx.backfill_counts()?;
        tx.refresh_status_windows(None)?;
        tx.commit()
    }

    fn migrate(mut conn: rusqlite::Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew { found: version, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        let store = Self {
            conn: Connection::new(Box::new(sqlite::Sqlite::new(conn)?)),
            depth: std::cell::Cell::new(0),
            queued: std::cell::RefCell::default(),
            reader: false,
        };
        store.backfill()?;
        Ok(store)
    }

    /// Opens a reading connection to the database at `path`, which
    /// [`Store::open`] has created and migrated. It refuses every write
    /// (`PRAGMA query_only`), so a handler wrongly sent to a reader fails
    /// loudly instead of racing the writer; [`Store::tx`] on it begins a
    /// deferred transaction: one consistent WAL snapshot that neither waits
    /// for the writer nor holds it up.
    ///
    /// # Errors
    /// When SQLite fails, or the schema is not exactly this build's.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "query_only", "ON")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version != supported {
            return Err(StoreError::OtherSchema { found: version, supported });
        }
        Ok(Self {
            conn: Connection::new(Box::new(sqlite::Sqlite::new(conn)?)),
            depth: std::cell::Cell::new(0),
            queued: std::cell::RefCell::default(),
            reader: true,
        })
    }

    /// The file this store is on (`None`: in memory).
    #[must_use]
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.conn.path()
    }

    /// Opens a transaction, or a savepoint inside the one open: see [`Tx`].
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn tx(&self) -> Result<Tx<'_>, StoreError> {
        self.begin(self.reader)
    }

    /// Opens a transaction that only reads (`BEGIN DEFERRED`: one WAL
    /// snapshot), or a savepoint inside the one open.
    ///
    /// # Errors
    /// When SQLite fails.
    pub fn read_tx(&self) -> Result<Tx<'_>, StoreError> {
        self.begin(true)
    }

    /// A write transaction of `scope` (see `pool::Pool::write_in`), or a
    /// savepoint inside the one open.
    ///
    /// # Errors
    /// When the database fails.
    pub fn tx_in(&self, scope: sql::Scope) -> Result<Tx<'_>, StoreError> {
        if self.depth.get() > 0 || self.reader {
            return self.tx();
        }
        self.conn.db().begin_write(scope)?;
        self.depth.set(1);
        Ok(Tx { store: self, conn: &self.conn, level: 0, done: false, autocommit: false })
    }

    fn begin(&self, read: bool) -> Result<Tx<'_>, StoreError> {
        let level = self.depth.get();
        if level == 0 {
            self.conn.db().begin(read)?;
        } else {
            self.conn.execute_batch(&format!("SAVEPOINT tern_sp{level}"))?;
        }
        self.depth.set(level + 1);
        Ok(Tx { store: self, conn: &self.conn, level, done: false, autocommit: false })
    }

    /// Notes that a command was queued for `environment` (see
    /// [`Store::take_queued`]).
    fn queued_for(&self, environment: u64) {
        let mut queued = self.queued.borrow_mut();
        if !queued.contains(&environment) {
            queued.push(environment);
        }
    }

    /// The environments a command was queued for since this was last
    /// called, each once; empties the list. [`pool::Pool`] calls it before
    /// a transaction (dropping what an earlier one, rolled back, left) and
    /// after it commits (the environments to wake). A command queued in a
    /// savepoint that was rolled back inside a committed transaction is
    /// counted all the same: a wake that finds nothing is harmless.
    pub(crate) fn take_queued(&self) -> Vec<u64> {
        self.queued.take()
    }

    /// The storage traits on this connection without a transaction of
    /// their own: each call is atomic by itself (the calls of several
    /// statements make their own), as SQLite's autocommit is. For tests
    /// and one-off tools on a database no server holds (`tern admin`); a
    /// server's work goes through [`pool::Pool`], one transaction each.
    #[must_use]
    pub fn autocommit(&self) -> Tx<'_> {
        Tx { store: self, conn: &self.conn, level: self.depth.get(), done: true, autocommit: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::commands::MAX_REPLY_ACTION_BYTES;
    use std::collections::BTreeMap;

    use crate::sync::diff;
    use crate::sync::session::Received;
    use crate::sync::state::{Container, Id};

    #[test]
    fn environments_bind_to_the_first_edge_id_and_refuse_replays() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("ship-1", Secret([1; 32]), 100).unwrap();
        assert!(matches!(s.create_environment("ship-1", Secret([2; 32]), 100), Err(StoreError::NameTaken(_))));
        assert!(!s.accept_poll(e.id, 1, None, 101).unwrap(), "the first poll must name its agent");
        assert!(s.accept_poll(e.id, 1, Some("edge-a"), 101).unwrap());
        assert!(!s.accept_poll(e.id, 1, Some("edge-a"), 102).unwrap(), "replayed counter");
        assert!(!s.accept_poll(e.id, 2, Some("edge-b"), 102).unwrap(), "another agent with the same token");
        assert!(s.accept_poll(e.id, 2, None, 103).unwrap());
        s.reset_binding(e.id).unwrap();
        assert!(s.accept_poll(e.id, 3, Some("edge-b"), 104).unwrap(), "an operator reset lets a new agent in");
        let got = s.environment(e.id).unwrap();
        assert_eq!((got.edge_id.as_deref(), got.last_counter), (Some("edge-b"), 3));
        assert!(matches!(s.environment(99), Err(StoreError::NotFound(99))));
    }

    #[test]
    fn replicas_survive_a_server_restart() {
        let dir = std::env::temp_dir().join(format!("tern-server-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        let mut replica = Replica::default();
        let id = {
            let s_db = Store::open(&path).unwrap();
            let s = s_db.autocommit();
            let e = s.create_environment("site", Secret([3; 32]), 1).unwrap();
            let mut state = State::default();
            state.containers.insert(Container { id: Id([4; 32]), name: "db".into(), ..Container::default() });
            assert_eq!(replica.receive(0, Some(&diff(&State::default(), &state))), Received::Acked(1));
            s.save_replica(e.id, &replica, 2).unwrap();
            e.id
        };
        let s_db = Store::open(&path).unwrap();
        let s = s_db.autocommit();
        assert_eq!(s.replica(id).unwrap(), replica);
        assert_eq!(s.replica(id + 1).unwrap(), Replica::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-server-store-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 99, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdb(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tern-server-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.db");
        (dir, path)
    }

    fn stop(id: u8) -> Action {
        Action::Container(crate::wire::poll::ContainerOp::Stop, Id([id; 32]))
    }

    fn result(id: u64, status: ResultStatus, error: &str) -> CommandResult {
        CommandResult { output: Vec::new(), phase: String::new(), id, status, error: error.into(), finished_at: 0 }
    }

    #[test]
    fn a_reply_carries_at_most_its_bytes_of_actions_and_the_rest_follow() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("site", Secret([1; 32]), 0).unwrap();
        // Three deploys of 1 MiB each (a compose file and its files, of
        // random bytes: keys hardly compress): two fit in the budget, the
        // third waits; a lone one larger than the budget still goes. What
        // the budget lets through encodes within the reply's limit.
        let deploy = |n: usize| {
            let random: Vec<u8> = (0..1 << 20).map(|_| fastrand::u8(..)).collect();
            Action::StackDeploy(crate::wire::poll::StackSpec {
                name: format!("s{n}"),
                files: BTreeMap::from([("big".to_owned(), random)]),
                ..Default::default()
            })
        };
        let ids: Vec<u64> = (0..3).map(|n| s.enqueue_command(e.id, &deploy(n), 10).unwrap()).collect();
        let due = s.commands_due(e.id, 11, 100).unwrap();
        let first: Vec<u64> = due.iter().map(|c| c.id).collect();
        assert_eq!(first, ids[..2]);
        let reply = crate::wire::poll::PollReply { commands: due, ..Default::default() };
        let limits = crate::wire::codec::Limits::default();
        let encoded = crate::wire::codec::Codec::new(limits).unwrap().encode(&reply.encode());
        assert!(encoded.is_ok_and(|b| b.len() <= limits.max_encoded), "a full reply encodes within the limit");
        s.mark_seen(e.id, ids[1], 12).unwrap();
        let next: Vec<u64> = s.commands_due(e.id, 13, 100).unwrap().iter().map(|c| c.id).collect();
        assert_eq!(next, ids[2..]);
        let huge = Action::StackDeploy(crate::wire::poll::StackSpec {
            files: BTreeMap::from([("big".to_owned(), vec![b'x'; MAX_REPLY_ACTION_BYTES + 1])]),
            ..Default::default()
        });
        s.mark_seen(e.id, ids[2], 14).unwrap();
        let h = s.enqueue_command(e.id, &huge, 15).unwrap();
        assert_eq!(s.commands_due(e.id, 16, 100).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![h]);
    }

    #[test]
    fn a_command_goes_queued_sent_delivered_then_ends_with_its_result() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("site", Secret([1; 32]), 0).unwrap();
        let id = s.enqueue_command(e.id, &stop(7), 10).unwrap();
        let c = s.command(id).unwrap();
        assert_eq!(
            (c.status, c.environment, c.action.clone(), c.created_at, c.sent_at),
            (CommandStatus::Queued, e.id, stop(7), 10, None)
        );
        // Sent with every reply until the agent confirms it.
        assert_eq!(s.commands_due(e.id, 11, 100).unwrap(), vec![Command { id, action: stop(7) }]);
        assert_eq!(s.commands_due(e.id, 12, 100).unwrap().len(), 1, "sent again: the agent may have lost the reply");
        let c = s.command(id).unwrap();
        assert_eq!((c.status, c.sent_at), (CommandStatus::Sent, Some(12)));
        s.mark_seen(e.id, id, 14).unwrap();
        let c = s.command(id).unwrap();
        assert_eq!((c.status, c.delivered_at), (CommandStatus::Delivered, Some(14)));
        assert!(matches!(s.cancel_command(id, 14), Err(StoreError::AlreadyDelivered(i)) if i == id));
        assert!(s.commands_due(e.id, 15, 100).unwrap().is_empty(), "never sent again once recorded");
        // The result ends it, once.
        let done = CommandResult {
            output: Vec::new(),
            phase: String::new(),
            id,
            status: ResultStatus::Ok,
            error: String::new(),
            finished_at: 16,
        };
        assert!(s.store_result(e.id, &done, 17).unwrap());
        assert!(!s.store_result(e.id, &result(id, ResultStatus::Failed, "late"), 18).unwrap(), "idempotent");
        let c = s.command(id).unwrap();
        assert_eq!((c.status, c.error.as_str(), c.finished_at), (CommandStatus::Ok, "", Some(16)));
    }

    #[test]
    fn results_for_unknown_or_foreign_commands_change_nothing() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let a = s.create_environment("a", Secret([1; 32]), 0).unwrap();
        let b = s.create_environment("b", Secret([2; 32]), 0).unwrap();
        let id = s.enqueue_command(a.id, &stop(1), 1).unwrap();
        assert!(!s.store_result(b.id, &result(id, ResultStatus::Ok, ""), 2).unwrap(), "another environment's");
        assert!(!s.store_result(a.id, &result(id + 1, ResultStatus::Ok, ""), 2).unwrap(), "unknown");
        assert!(!s.store_result(a.id, &result(u64::MAX, ResultStatus::Ok, ""), 2).unwrap());
        assert_eq!(s.command(id).unwrap().status, CommandStatus::Queued);
        // A result may come before commands_seen reached the server: it was delivered.
        let long = "x".repeat(MAX_ERROR_LEN + 10);
        assert!(s.store_result(a.id, &result(id, ResultStatus::Failed, &long), 3).unwrap());
        let c = s.command(id).unwrap();
        assert_eq!(
            (c.status, c.error.len(), c.delivered_at, c.finished_at),
            (CommandStatus::Failed, MAX_ERROR_LEN, Some(3), Some(3))
        );
        assert!(matches!(s.enqueue_command(99, &stop(1), 1), Err(StoreError::NotFound(99))));
        assert!(matches!(s.command(999), Err(StoreError::CommandNotFound(999))));
        assert!(matches!(s.commands(99, 10), Err(StoreError::NotFound(99))));
    }

    #[test]
    fn a_command_not_yet_delivered_can_be_cancelled_and_is_never_sent_again() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("site", Secret([1; 32]), 0).unwrap();
        let first = s.enqueue_command(e.id, &stop(1), 1).unwrap();
        let second = s.enqueue_command(e.id, &Action::ImagePull("nginx:1.25".into()), 2).unwrap();
        s.cancel_command(first, 3).unwrap();
        s.cancel_command(first, 4).unwrap();
        assert_eq!(s.command(first).unwrap().finished_at, Some(3), "cancelling again changes nothing");
        assert_eq!(s.commands_due(e.id, 5, 100).unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![second]);
        // A result for a cancelled command is recorded: it ran.
        assert!(s.store_result(e.id, &result(first, ResultStatus::Ok, ""), 6).unwrap());
        assert_eq!(s.command(first).unwrap().status, CommandStatus::Ok);
        assert!(matches!(s.cancel_command(first, 7), Err(StoreError::AlreadyDelivered(_))));
        // Sent but not confirmed: cancelled, and never sent again.
        assert_eq!(s.command(second).unwrap().status, CommandStatus::Sent);
        s.cancel_command(second, 8).unwrap();
        assert!(s.commands_due(e.id, 9, 100).unwrap().is_empty());
        assert!(matches!(s.cancel_command(77, 7), Err(StoreError::CommandNotFound(77))));
        let listed: Vec<_> = s.commands(e.id, 100).unwrap().iter().map(|c| (c.id, c.status)).collect();
        assert_eq!(listed, vec![(second, CommandStatus::Cancelled), (first, CommandStatus::Ok)], "newest first");
        assert_eq!(s.commands(e.id, 1).unwrap().len(), 1);
    }

    #[test]
    fn commands_seen_only_rises_and_never_past_what_was_sent() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("site", Secret([1; 32]), 0).unwrap();
        let ids: Vec<u64> = (0..5).map(|i| s.enqueue_command(e.id, &stop(i), 1).unwrap()).collect();
        assert_eq!(s.commands_due(e.id, 2, 2).unwrap().len(), 2, "at most `limit`, oldest first");
        // A confused agent claims more than it was sent: capped at what it got.
        s.mark_seen(e.id, u64::MAX, 3).unwrap();
        let due: Vec<u64> = s.commands_due(e.id, 4, 100).unwrap().iter().map(|c| c.id).collect();
        assert_eq!(due, ids[2..]);
        s.mark_seen(e.id, ids[3], 5).unwrap();
        s.mark_seen(e.id, ids[0], 6).unwrap();
        let status: Vec<_> = ids.iter().map(|&i| s.command(i).unwrap().status).collect();
        use CommandStatus::*;
        assert_eq!(status, [Delivered, Delivered, Delivered, Delivered, Sent]);
        assert_eq!(s.environment_summary(e.id).unwrap().commands_seen, ids[3]);
        assert_eq!(s.command(ids[0]).unwrap().delivered_at, Some(3), "a lower commands_seen changes nothing");
    }

    #[test]
    fn queued_commands_and_settings_survive_a_server_restart() {
        let (dir, path) = tempdb("commands");
        let (env, id) = {
            let s_db = Store::open(&path).unwrap();
            let s = s_db.autocommit();
            let e = s.create_environment("site", Secret([3; 32]), 1).unwrap();
            let id = s.enqueue_command(e.id, &Action::VolumeRemove("data".into()), 2).unwrap();
            s.set_agent_secret(Some("s3cret")).unwrap();
            s.set_default_intervals(Intervals { ping: 30, snapshot: 300, command: 15 }).unwrap();
            (e.id, id)
        };
        let s_db = Store::open(&path).unwrap();
        let s = s_db.autocommit();
        assert_eq!(
            s.commands_due(env, 3, 100).unwrap(),
            vec![Command { id, action: Action::VolumeRemove("data".into()) }]
        );
        assert_eq!(s.agent_secret().unwrap().as_deref(), Some("s3cret"));
        assert_eq!(s.effective_intervals(env).unwrap(), Intervals { ping: 30, snapshot: 300, command: 15 });
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn intervals_are_the_environments_own_else_the_server_defaults() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let sixty = Intervals { ping: 60, snapshot: 60, command: 60 };
        assert_eq!(s.default_intervals().unwrap(), sixty);
        let own = IntervalSettings { ping: Some(0), snapshot: Some(600), command: None };
        let e = s.create_environment_with("ship", Secret([1; 32]), own, 0).unwrap();
        let plain = s.create_environment("yard", Secret([2; 32]), 0).unwrap();
        assert_eq!(s.intervals(e.id).unwrap(), own);
        assert_eq!(s.effective_intervals(e.id).unwrap(), Intervals { ping: 0, snapshot: 600, command: 60 });
        assert_eq!(s.effective_intervals(plain.id).unwrap(), sixty);
        s.set_default_intervals(Intervals { ping: 120, snapshot: 900, command: 30 }).unwrap();
        assert_eq!(s.effective_intervals(e.id).unwrap(), Intervals { ping: 0, snapshot: 600, command: 30 });
        s.set_intervals(e.id, IntervalSettings::default()).unwrap();
        assert_eq!(s.effective_intervals(e.id).unwrap(), Intervals { ping: 120, snapshot: 900, command: 30 });
        assert!(matches!(s.set_intervals(99, own), Err(StoreError::NotFound(99))));
        assert!(matches!(s.effective_intervals(99), Err(StoreError::NotFound(99))));
        // What the agent runs with is unknown until it says.
        assert_eq!(s.agent_intervals(e.id).unwrap(), None);
        s.set_agent_intervals(e.id, sixty).unwrap();
        assert_eq!(s.agent_intervals(e.id).unwrap(), Some(sixty));
        assert!(matches!(s.set_agent_intervals(99, sixty), Err(StoreError::NotFound(99))));
        s.conn.execute("UPDATE settings SET value = 'soon' WHERE key = ?1", [SETTING_PING]).unwrap();
        assert!(matches!(s.default_intervals(), Err(StoreError::CorruptSetting(SETTING_PING))));
    }

    #[test]
    fn the_agent_secret_is_optional_and_empty_means_none() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        assert_eq!(s.agent_secret().unwrap(), None);
        s.set_agent_secret(Some("one")).unwrap();
        s.set_agent_secret(Some("two")).unwrap();
        assert_eq!(s.agent_secret().unwrap().as_deref(), Some("two"));
        s.set_agent_secret(Some("")).unwrap();
        assert_eq!(s.agent_secret().unwrap(), None);
        s.set_agent_secret(Some("three")).unwrap();
        s.set_agent_secret(None).unwrap();
        assert_eq!(s.agent_secret().unwrap(), None);
    }

    #[test]
    fn the_summary_shows_the_stored_state_its_root_and_counts() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        let e = s.create_environment("site", Secret([1; 32]), 5).unwrap();
        let empty = s.environment_summary(e.id).unwrap();
        assert_eq!(
            (empty.seq, empty.root, empty.counts),
            (0, crate::sync::state::empty_root(), ObjectCounts::default())
        );
        assert_eq!((empty.info.name.as_str(), empty.info.created_at, empty.info.last_poll_at), ("site", 5, None));
        let mut state = State::default();
        state.containers.insert(Container { id: Id([4; 32]), name: "db".into(), ..Container::default() });
        let mut replica = Replica::default();
        replica.receive(0, Some(&diff(&State::default(), &state)));
        s.save_replica(e.id, &replica, 9).unwrap();
        assert!(s.accept_poll(e.id, 1, Some("edge-1"), 9).unwrap());
        let sum = s.environment_summary(e.id).unwrap();
        assert_eq!((sum.seq, sum.root, sum.counts.containers, sum.counts.images), (1, state.root(), 1, 0));
        assert_eq!(
            (sum.info.edge_id.as_deref(), sum.info.snapshot_at, sum.info.last_poll_at),
            (Some("edge-1"), Some(9), Some(9))
        );
        assert_eq!(s.environment_info(e.id).unwrap(), sum.info);
        assert_eq!(s.environments().unwrap(), vec![sum.info]);
        assert!(matches!(s.environment_info(99), Err(StoreError::NotFound(99))));
        assert!(matches!(s.environment_summary(99), Err(StoreError::NotFound(99))));
    }

    #[test]
    fn a_database_of_schema_1_is_migrated_and_keeps_its_data() {
        let (dir, path) = tempdb("v1");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO environments (name, secret, created_at) VALUES ('old', ?1, 1)", [&[5u8; 32][..]])
                .unwrap();
            conn.execute(
                "INSERT INTO commands (environment, action, status, created_at) VALUES (1, ?1, 'queued', 2)",
                [stop(1).encode()],
            )
            .unwrap();
        }
        let s_db = Store::open(&path).unwrap();
        let s = s_db.autocommit();
        assert_eq!(s.environment(1).unwrap().name, "old");
        assert_eq!(s.effective_intervals(1).unwrap(), s.default_intervals().unwrap());
        assert_eq!(s.commands_due(1, 3, 100).unwrap().len(), 1, "the command queued before the upgrade is sent");
        assert!(s.fleet_options(1).unwrap().tcp_timestamps, "an older environment's command keeps TCP timestamps");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
