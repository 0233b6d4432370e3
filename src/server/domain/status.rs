//! The status rules, each stated once: whether an environment is online,
//! and what a stack's deployment and a stack as a whole are doing. Pure
//! functions of what the store holds; the store calls them to keep the
//! figures it filters and pages on (an environment's status window), the
//! API and the UI read their results.
//!
//! **Online.** An environment is *online* while its last accepted poll is
//! at most `2 × smallest + 20` seconds old, where `smallest` is the smallest
//! enabled interval among its effective ones (its own, else the server
//! defaults). While a change of intervals has not reached the agent yet
//! (its reported intervals differ), the larger of the two smallest values
//! counts, so that shortening an interval does not mark the agent offline
//! before it has heard of the change. An environment that never polled is
//! offline. While the agent holds a session (issue #16), its polls are the
//! session's keepalives, at most `hold` seconds apart (the keepalive period
//! it learned from its path's NAT): the window is then `2 × hold + 20`, so
//! one lost keepalive and the reconnect after it do not mark it offline.
//!
//! **A stack on one environment** is read off the last command sent to it
//! for the stack (a `StackDeploy`, or a `StackRemove` once it is being
//! removed):
//!
//! | command | deploying | removing |
//! |---|---|---|
//! | queued, sent | pending | removing |
//! | delivered | acknowledged | removing |
//! | phase `fetching images` (its held images, as transfers) | fetching | |
//! | phase `deploying` / `removing` | deploying | removing |
//! | ok | running | removed |
//! | failed, rejected | failed (with the error) | failed (with the error) |
//! | cancelled | cancelled | cancelled |
//!
//! A deploy with no command yet, due later (`retry_at`), is `waiting`: its
//! deploy window is closed (see [`super::windows`]).

use crate::server::store::stacks::StackRecord;
use crate::wire::poll::Intervals;

/// Stands for "disabled" in the status rule: far larger than any
/// interval, so it never wins a MIN.
const OFF: i64 = 1 << 40;

/// The slack of the status rule, in seconds.
pub const STATUS_SLACK: i64 = 20;

/// The smallest enabled interval of a set, if any is enabled.
fn smallest(i: Intervals) -> Option<u32> {
    [i.ping, i.snapshot, i.command].into_iter().filter(|&v| v > 0).min()
}

/// The status rule's window for an environment's effective intervals and
/// the agent's reported ones (see the module doc: "Online"), in seconds: the rule's
/// only statement. The store keeps each environment's window in its row
/// (`refresh_status_windows`, whenever an input changes), so the
/// SQL that filters, counts and pages by status compares a time with it
/// and states no rule of its own.
pub fn status_window(effective: Intervals, reported: Option<Intervals>, session_hold: u32) -> i64 {
    let own = smallest(effective).map_or(OFF, i64::from);
    let agent = reported.map_or(0, |r| smallest(r).map_or(OFF, i64::from));
    if session_hold > 0 {
        // A held session: its keepalives are the agent's polls.
        return 2 * i64::from(session_hold) + STATUS_SLACK;
    }
    2 * own.max(agent) + STATUS_SLACK
}

/// A deployment whose deploy window is closed.
pub const WAITING: &str = "waiting";

/// The phase an agent reports while it fetches a stack's images from the
/// server, before it touches the running stack.
pub const FETCHING_IMAGES: &str = crate::wire::poll::PHASE_FETCHING_IMAGES;

/// The status of a stack on one environment (see the module doc) from its
/// last command's status and phase, and whether that command removes it.
#[must_use]
pub fn deployment_status(removing: bool, status: Option<&str>, phase: Option<&str>) -> &'static str {
    match (status, removing) {
        (None, _) => "unknown",
        (Some("ok"), false) => "running",
        (Some("ok"), true) => "removed",
        (Some("failed" | "rejected"), _) => "failed",
        (Some("cancelled"), _) => "cancelled",
        (Some(_), true) => "removing",
        (Some("delivered"), false) if phase == Some(FETCHING_IMAGES) => "fetching",
        (Some("delivered"), false) if phase.is_some_and(|p| !p.is_empty()) => "deploying",
        (Some("delivered"), false) => "acknowledged",
        // Queued, sent (not yet recorded by the agent).
        (Some(_), false) => "pending",
    }
}

impl StackRecord {
    /// The stack's overall status: `removing` / `removed` once its removal
    /// was asked for; else `pending` (nowhere yet), `failed` (somewhere),
    /// `running` (everywhere), or `deploying`.
    pub fn status(&self) -> &'static str {
        let all = |s: &str| self.deployments.iter().all(|d| d.status == s);
        let any = |s: &str| self.deployments.iter().any(|d| d.status == s);
        if self.removed_at.is_some() {
            return if all("removed") { "removed" } else { "removing" };
        }
        if self.deployments.is_empty() {
            "pending"
        } else if any("failed") {
            "failed"
        } else if all("running") {
            "running"
        } else {
            "deploying"
        }
    }
}
