//! Images the server holds: their bodies.

use serde::{Deserialize, Serialize};

/// `POST /api/images`: pull an image into the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// The image reference (`10.0.0.5:5000/app:1`); a registered
    /// registry's credentials are used.
    pub reference: String,
}

/// An image the server holds, or is pulling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldImageView {
    /// Its id.
    pub id: u64,
    /// The reference it was pulled by.
    pub reference: String,
    /// `pulling`, `held` or `failed`.
    pub status: String,
    /// Why it failed (the registry's or the disk's words).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The image id (`sha256:` of its config), once held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Its layers' `diff_id`s, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// The layers' bytes, uncompressed.
    pub size: u64,
    /// When asked for (Unix seconds).
    pub created_at: i64,
    /// When its status last changed (Unix seconds).
    pub updated_at: i64,
}

/// `POST /api/images/{id}/deliver`: send a held image to environments as
/// transfers (an `image.fetch` command each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverImage {
    /// The environments.
    pub environments: Vec<u64>,
}

/// One environment's `image.fetch` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// The environment.
    pub environment: u64,
    /// The command (`GET /api/environments/{environment}/commands/{command}`).
    pub command: u64,
}

/// An environment's transfer limits (`GET`/`PUT
/// /api/environments/{id}/transfer-limits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLimitsView {
    /// The most a transfer may use of the link, in kbit/s (1000 bits); 0:
    /// no cap.
    #[serde(default)]
    pub rate_kbit: u64,
    /// When transfers may run, `HH:MM-HH:MM` in UTC (it may wrap
    /// midnight); empty: any time.
    #[serde(default)]
    pub window: String,
}
