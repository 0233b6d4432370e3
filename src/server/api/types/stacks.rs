//! Edge stacks' bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TargetsBody;

/// `POST /api/stacks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStack {
    /// The compose project name.
    pub name: String,
    /// The compose file (YAML).
    pub compose: String,
    /// Variables for `${VAR}` interpolation.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Configuration files shipped with it: their paths relative to the
    /// stack's directory (where `./path` bind mounts find them), and their
    /// text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// When its deploys may start: `HH:MM-HH:MM UTC[+HH:MM]` (empty:
    /// any time).
    #[serde(default)]
    pub window: String,
    /// Where it goes.
    pub targets: TargetsBody,
}

/// `PUT /api/stacks/{id}`: what is left out stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStack {
    /// A new compose file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    /// New variables (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// New configuration files (all of them; `{}` ships none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// A new deploy window (`""`: none). Given alone, it makes no new
    /// version: it moves the deploys waiting for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// New targets (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetsBody>,
}

/// A target as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackTargetView {
    /// `environment`, `group` or `tag`.
    pub kind: String,
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// The stack on one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    /// The environment's id.
    pub environment: u64,
    /// Its name.
    pub environment_name: String,
    /// pending, acknowledged, fetching (its held images, as transfers;
    /// the running stack untouched), deploying, running, failed; removing,
    /// removed; cancelled.
    pub status: String,
    /// The agent's error, when failed.
    pub error: Option<String>,
    /// The stack version last sent there.
    pub version: u32,
    /// The version it runs: its last deploy that ended ok (absent: none
    /// known yet). Below `version` after a failed deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<u32>,
    /// Which attempt of `version` this is (1: the first; a failed deploy
    /// is sent again, up to `max_attempts`).
    #[serde(default = "one")]
    pub attempt: u32,
    /// How many attempts a deploy gets.
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// When a failed deploy is sent again (absent: it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// The command that carries it (`GET /api/commands/{id}`).
    pub command: Option<u64>,
    /// When that command was queued.
    pub queued_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

fn one() -> u32 {
    1
}

/// A stack in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackItem {
    /// Its id.
    pub id: u64,
    /// The compose project name.
    pub name: String,
    /// Bumped by every update.
    pub version: u32,
    /// pending, deploying, running, failed; removing, removed.
    pub status: String,
    /// How many environments are in each status.
    pub counts: BTreeMap<String, u64>,
    /// Its targets.
    pub targets: Vec<StackTargetView>,
    /// When created.
    pub created_at: i64,
    /// When last updated.
    pub updated_at: i64,
    /// When its removal was asked for.
    pub removed_at: Option<i64>,
}

/// One version of a stack (`GET /api/stacks/{id}/versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackVersionView {
    /// Its number.
    pub version: u32,
    /// When it was made.
    pub created_at: i64,
    /// What made it, when not an edit (`rolled back to version 2`).
    pub note: String,
    /// Whether it is the stack's version now.
    pub current: bool,
    /// The compose file.
    pub compose: String,
    /// Its variables (their values empty for a viewer: see `env_hidden`).
    pub env: BTreeMap<String, String>,
    /// The values of `env` were left out: the caller is a viewer, and
    /// variables are where a stack's passwords usually are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_hidden: bool,
    /// Its configuration files (their text empty for a viewer: see
    /// `files_hidden`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The text of `files` was left out (the caller is a viewer: keys and
    /// certificates travel there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_hidden: bool,
}

/// `POST /api/stacks/{id}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The earlier version to deploy again (as a new version).
    pub version: u32,
}

/// One stack in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub item: StackItem,
    /// The compose file.
    pub compose: String,
    /// Its variables (their values empty for a viewer: see `env_hidden`).
    pub env: BTreeMap<String, String>,
    /// The values of `env` were left out (the caller is a viewer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_hidden: bool,
    /// Configuration files shipped with it, by path (their text empty for
    /// a viewer: see `files_hidden`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The bytes of the files' text, which every deploy of this version
    /// carries (before the reply's compression).
    #[serde(default)]
    pub files_bytes: u64,
    /// The text of `files` was left out (the caller is a viewer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_hidden: bool,
    /// Its deploy window (`""`: none); an environment's own applies too.
    #[serde(default)]
    pub window: String,
    /// Per environment.
    pub environments: Vec<DeploymentView>,
}
