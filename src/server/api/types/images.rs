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
    /// The environments (ids).
    #[serde(default)]
    pub environments: Vec<u64>,
    /// Group names (or ids): every environment in them now.
    #[serde(default)]
    pub groups: Vec<super::RefBody>,
    /// Tag names (or ids): every environment with one now.
    #[serde(default)]
    pub tags: Vec<super::RefBody>,
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

/// `POST /api/images/blobs/missing`: which of these layers (`diff_id`s)
/// the server lacks, before `tern image push` uploads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobQuery {
    /// The layers' `diff_id`s (`sha256:...`).
    pub digests: Vec<String>,
}

/// A layer the server lacks, and how much of its upload it has kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingBlob {
    /// The layer's `diff_id`.
    pub digest: String,
    /// Bytes of its compressed upload the server has (resume from there).
    pub have: u64,
}

/// The answer to a [`BlobQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingBlobs {
    /// The layers the server lacks, in the order asked.
    pub missing: Vec<MissingBlob>,
}

/// `POST /api/images/blobs/{digest}/done`: the upload is whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobDone {
    /// The layer's size, uncompressed (its tar).
    pub size: u64,
}

/// `POST /api/images/push`: an image whose layers the server has, by its
/// config (`tern image push`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushImage {
    /// The reference it is held (and tagged on the hosts) by.
    pub reference: String,
    /// The image's config, byte for byte (its sha256 is the image id).
    pub config: String,
}

/// `POST /api/rollouts`: agents update themselves to a held agent image;
/// staged with `first_share`: that percentage of the environments first,
/// the rest once every one of those updated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// The held agent image's id (`tern image list`).
    pub image: u64,
    /// The environments (ids).
    #[serde(default)]
    pub environments: Vec<u64>,
    /// Group names (or ids): every environment in them now.
    #[serde(default)]
    pub groups: Vec<super::RefBody>,
    /// Tag names (or ids): every environment with one now.
    #[serde(default)]
    pub tags: Vec<super::RefBody>,
    /// The percentage of the environments updated first (1 to 99; at
    /// least one environment); absent, all of them at once.
    #[serde(default)]
    pub first_share: Option<u8>,
    /// Seconds each new agent has to poll (30 to 86400; default 300).
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

/// One environment of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMember {
    /// The environment.
    pub environment: u64,
    /// 1: the first wave; 2: the rest.
    pub wave: u8,
    /// Its `agent.update` command, once sent.
    pub command: Option<u64>,
    /// That command's status.
    pub status: Option<String>,
}

/// A staged agent update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Its id.
    pub id: u64,
    /// The agent image.
    pub reference: String,
    /// Its image id.
    pub image_id: String,
    /// `first` (the first wave updating), `rest`, `done` or `halted`.
    pub status: String,
    /// Why it halted: the environment and its error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Seconds each new agent has to poll (0: the agent's default).
    pub timeout_s: u32,
    /// When it was made.
    pub created_at: i64,
    /// When its status last changed.
    pub updated_at: i64,
    /// Its environments.
    pub environments: Vec<RolloutMember>,
}
