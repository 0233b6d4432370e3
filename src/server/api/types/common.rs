//! Bodies more than one area of the API uses: the error body, interval
//! settings, and the targets stacks and jobs are sent to.

use serde::{Deserialize, Serialize};

use crate::wire::poll::Intervals;

/// An error's JSON body: `{"error": message}`, with `field` when the
/// message concerns one field (see [`error_field`](crate::server::api::error_field)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for the operator.
    pub error: String,
    /// The field it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Intervals as an operator sets them, in seconds: absent or `null` follows
/// the server default, 0 disables that timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalsBody {
    /// Heartbeat.
    #[serde(default)]
    pub ping: Option<u32>,
    /// State snapshot.
    #[serde(default)]
    pub snapshot: Option<u32>,
    /// Command check.
    #[serde(default)]
    pub command: Option<u32>,
}

/// Intervals in force, in seconds (0: disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalsView {
    /// Heartbeat.
    pub ping: u32,
    /// State snapshot.
    pub snapshot: u32,
    /// Command check.
    pub command: u32,
}

impl From<Intervals> for IntervalsView {
    fn from(i: Intervals) -> Self {
        Self { ping: i.ping, snapshot: i.snapshot, command: i.command }
    }
}

/// A target in a body: a number is an id, a string a name (or an id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RefBody {
    /// By id.
    Id(u64),
    /// By name.
    Name(String),
}

/// Where a stack or a job goes. Job targets take the same JSON as stack
/// targets; a job resolves its groups and tags to the environments in them
/// when it is created or edited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsBody {
    /// Environment ids (or names).
    #[serde(default)]
    pub environments: Vec<RefBody>,
    /// Group names (or ids): every environment in them (a stack also goes
    /// to environments that join later).
    #[serde(default)]
    pub groups: Vec<RefBody>,
    /// Tag names (or ids): every environment with one (a stack also goes to
    /// environments tagged later).
    #[serde(default)]
    pub tags: Vec<RefBody>,
}
