//! Commands' bodies: what `POST /api/environments/{id}/commands` takes and
//! what the command endpoints answer.

use serde::{Deserialize, Serialize};

/// `POST /api/environments/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCommand {
    /// `container.start`, `image.pull`, ... (see [`ACTIONS`](crate::server::api::view::ACTIONS)).
    pub action: String,
    /// A container or network: its full id (taken as it is), a unique id
    /// prefix of 4 hex digits or more, or its name (both resolved against
    /// the stored state); an image reference; a volume name.
    pub target: String,
    /// For `container.logs`: how many lines from the end (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
}

/// `POST /api/environments/{id}/stacks/{name}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackLogsRequest {
    /// Lines from the end of each container's log (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
}

/// One container's share of a stack's logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackLogsPart {
    /// Its compose service.
    pub service: String,
    /// The container's name.
    pub container: String,
    /// The `container.logs` command fetching its lines.
    pub command: CommandView,
}

/// The answer: one `container.logs` command per container of the stack,
/// queued together (they travel in the same poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackLogsView {
    /// The stack.
    pub stack: String,
    /// By service, then container name.
    pub parts: Vec<StackLogsPart>,
}

/// A command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandView {
    /// Its id.
    pub id: u64,
    /// The environment it is for.
    pub environment: u64,
    /// What it does (see [`ACTIONS`](crate::server::api::view::ACTIONS)).
    pub action: String,
    /// What it acts on: a 64-hex id for containers and networks, the
    /// reference for images, the name for volumes.
    pub target: String,
    /// `queued`, `sent`, `delivered`, `ok`, `failed`, `rejected` or
    /// `cancelled`.
    pub status: String,
    /// The engine's error text, when it failed or was rejected.
    pub error: Option<String>,
    /// When it was queued.
    pub created_at: i64,
    /// When it was last sent to the agent.
    pub sent_at: Option<i64>,
    /// When the agent confirmed it recorded it.
    pub delivered_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// What it printed (`container.logs`), in `GET /api/commands/{id}` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}
