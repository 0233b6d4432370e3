//! The transfer endpoint's messages ([`crate::wire::TRANSFER_PATH`]): how
//! an agent learns what an image is made of, asks for what it lacks, and
//! fetches the payloads, as hand-written types validated at decode.
//!
//! A request travels in the poll envelope (`auth`), sealed under
//! [`transfer_key`] with the environment's *transfer* counter: a lane of
//! its own, so a download running beside the polls never makes one of
//! them look replayed, and a poll cannot be replayed as a transfer
//! request, nor the reverse. Replies are sealed the same way, except a
//! payload's bytes, which the agent checks chunk by chunk against the
//! names in the sealed plan.

use prost::Message;

use super::pb;
use crate::auth::Secret;

/// Most layers an image may have (Docker's own limit is 127).
pub const MAX_LAYERS: usize = 256;

/// Most images of one repository a host names as candidate bases.
pub const MAX_REPO_IMAGES: usize = 64;

/// Most chunks one piece may have: 16 Ki chunks of 256 KiB, a 4 GiB
/// payload.
pub const MAX_CHUNKS: usize = 16 * 1024;

/// The largest image config accepted (Docker's are a few KB; labels and
/// history can make one larger).
pub const MAX_CONFIG: usize = 1 << 20;

/// The longest payload name (`<64 hex>-<64 hex>`, or `whole-<64 hex>`).
pub const MAX_NAME: usize = 160;

/// Why a transfer message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferWireError {
    /// Not a protobuf encoding of the message.
    #[error("undecodable transfer message: {0}")]
    Decode(String),
    /// Decodes, but a field is out of bounds or malformed.
    #[error("invalid transfer message: {0}")]
    Invalid(&'static str),
}

/// The key transfer requests and replies are sealed with: derived from the
/// environment's poll key, so both ends have it and nothing else does.
#[must_use]
pub fn transfer_key(poll_key: &Secret) -> Secret {
    Secret(blake3::derive_key("tern v1 transfer lane", &poll_key.0))
}

/// A layer or image digest, `sha256:` and 64 lowercase hex digits.
pub type Digest = [u8; 32];

/// `sha256:<hex>` as 32 bytes, or `None` when it is not that.
#[must_use]
pub fn digest_bytes(text: &str) -> Option<Digest> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// 32 bytes as `sha256:<hex>`.
#[must_use]
pub fn digest_text(d: &Digest) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn digests(bytes: &[u8], max: usize, what: &'static str) -> Result<Vec<Digest>, TransferWireError> {
    if !bytes.len().is_multiple_of(32) || bytes.len() / 32 > max {
        return Err(TransferWireError::Invalid(what));
    }
    Ok(bytes.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect())
}

fn image_id(text: String) -> Result<String, TransferWireError> {
    digest_bytes(&text).map(|_| text).ok_or(TransferWireError::Invalid("image id is not sha256:<hex>"))
}

/// What the agent asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferRequest {
    /// What the image (by id) is made of.
    Offer {
        /// `sha256:<hex>`.
        image_id: String,
    },
    /// What this host needs of it.
    Plan {
        /// `sha256:<hex>`.
        image_id: String,
        /// Indices of the offer's layers the host has.
        have: Vec<u32>,
        /// The layer lists of the host's images of the same repository.
        repo_images: Vec<Vec<Digest>>,
    },
    /// A payload's bytes from `offset` to its end.
    Payload {
        /// Its name, from the plan.
        payload: String,
        /// Where to start (a resumed download: a chunk boundary).
        offset: u64,
    },
}

impl TransferRequest {
    /// The protobuf encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        use pb::transfer_request::Kind;
        let kind = match self {
            Self::Offer { image_id } => Kind::Offer(pb::OfferRequest { image_id: image_id.clone() }),
            Self::Plan { image_id, have, repo_images } => Kind::Plan(pb::PlanRequest {
                image_id: image_id.clone(),
                have: have.clone(),
                repo_images: repo_images.iter().map(|l| l.concat()).collect(),
            }),
            Self::Payload { payload, offset } => {
                Kind::Payload(pb::PayloadRequest { payload: payload.clone(), offset: *offset })
            }
        };
        pb::TransferRequest { kind: Some(kind) }.encode_to_vec()
    }

    /// Decodes and validates a request.
    ///
    /// # Errors
    /// When it does not decode, or breaks a bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, TransferWireError> {
        use pb::transfer_request::Kind;
        let r = pb::TransferRequest::decode(bytes).map_err(|e| TransferWireError::Decode(e.to_string()))?;
        Ok(match r.kind {
            Some(Kind::Offer(o)) => Self::Offer { image_id: image_id(o.image_id)? },
            Some(Kind::Plan(p)) => {
                if p.have.len() > MAX_LAYERS || p.repo_images.len() > MAX_REPO_IMAGES {
                    return Err(TransferWireError::Invalid("too many layers or images"));
                }
                Self::Plan {
                    image_id: image_id(p.image_id)?,
                    have: p.have,
                    repo_images: p
                        .repo_images
                        .iter()
                        .map(|l| digests(l, MAX_LAYERS, "an image's layers"))
                        .collect::<Result<_, _>>()?,
                }
            }
            Some(Kind::Payload(p)) => {
                if p.payload.is_empty()
                    || p.payload.len() > MAX_NAME
                    || !p.payload.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(TransferWireError::Invalid("payload name"));
                }
                Self::Payload { payload: p.payload, offset: p.offset }
            }
            None => return Err(TransferWireError::Invalid("no request")),
        })
    }
}

/// What an image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The image config, as the server holds it (its sha256 is the id).
    pub config: Vec<u8>,
    /// The layers (diff_ids), bottom first, with their sizes.
    pub layers: Vec<(Digest, u64)>,
}

/// One layer the host lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the offer's layers.
    pub layer: u32,
    /// The host's layer it is a delta against.
    pub base: Option<Digest>,
    /// The payload's name.
    pub payload: String,
    /// Its size.
    pub payload_len: u64,
    /// Its chunks' blake3 names.
    pub chunks: Vec<[u8; 32]>,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferReply {
    /// To [`TransferRequest::Offer`].
    Offer(Offer),
    /// To [`TransferRequest::Plan`]: the pieces, and the rate cap (bytes a
    /// second, 0: none) the agent keeps to.
    Plan {
        /// Bottom first.
        pieces: Vec<Piece>,
        /// Bytes a second; 0: no cap.
        rate: u64,
    },
    /// Refused, and why.
    Error(String),
    /// Not now: the download window opens then (unix seconds).
    WaitUntil(i64),
    /// The counter was not above this, the last the server accepted on the
    /// transfer lane.
    Replayed(u64),
}

impl TransferReply {
    /// The protobuf encoding (the config compressed).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        use pb::transfer_reply::Kind;
        let kind = match self {
            Self::Offer(o) => Kind::Offer(pb::Offer {
                config: zstd::bulk::compress(&o.config, 9).unwrap_or_default(),
                layers: o.layers.iter().flat_map(|(d, _)| d.iter().copied()).collect(),
                sizes: o.layers.iter().map(|(_, s)| *s).collect(),
            }),
            Self::Plan { pieces, rate } => Kind::Plan(pb::Plan {
                pieces: pieces
                    .iter()
                    .map(|p| pb::Piece {
                        layer: p.layer,
                        base: p.base.map(|b| b.to_vec()).unwrap_or_default(),
                        payload: p.payload.clone(),
                        payload_len: p.payload_len,
                        chunks: p.chunks.concat(),
                    })
                    .collect(),
                rate: *rate,
            }),
            Self::Error(e) => Kind::Error(e.clone()),
            Self::WaitUntil(t) => Kind::WaitUntil(*t),
            Self::Replayed(c) => Kind::Replayed(*c),
        };
        pb::TransferReply { kind: Some(kind) }.encode_to_vec()
    }

    /// Decodes and validates a reply.
    ///
    /// # Errors
    /// When it does not decode, or breaks a bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, TransferWireError> {
        use pb::transfer_reply::Kind;
        let r = pb::TransferReply::decode(bytes).map_err(|e| TransferWireError::Decode(e.to_string()))?;
        Ok(match r.kind {
            Some(Kind::Offer(o)) => {
                let layers = digests(&o.layers, MAX_LAYERS, "layers")?;
                if layers.len() != o.sizes.len() {
                    return Err(TransferWireError::Invalid("layers and sizes differ in number"));
                }
                let config = zstd::bulk::decompress(&o.config, MAX_CONFIG)
                    .map_err(|_| TransferWireError::Invalid("config does not decompress within 1 MiB"))?;
                Self::Offer(Offer { config, layers: layers.into_iter().zip(o.sizes).collect() })
            }
            Some(Kind::Plan(p)) => {
                if p.pieces.len() > MAX_LAYERS {
                    return Err(TransferWireError::Invalid("too many pieces"));
                }
                let pieces = p
                    .pieces
                    .into_iter()
                    .map(|p| {
                        let base = match p.base.len() {
                            0 => None,
                            32 => Some(p.base.as_slice().try_into().expect("32 bytes")),
                            _ => return Err(TransferWireError::Invalid("base")),
                        };
                        let chunks = digests(&p.chunks, MAX_CHUNKS, "chunks")?;
                        let size = crate::transfer::CHUNK_SIZE as u64;
                        if p.payload.is_empty()
                            || p.payload.len() > MAX_NAME
                            || chunks.len() as u64 != p.payload_len.div_ceil(size)
                        {
                            return Err(TransferWireError::Invalid("a piece's payload"));
                        }
                        Ok(Piece { layer: p.layer, base, payload: p.payload, payload_len: p.payload_len, chunks })
                    })
                    .collect::<Result<_, _>>()?;
                Self::Plan { pieces, rate: p.rate }
            }
            Some(Kind::Error(e)) => Self::Error(e),
            Some(Kind::WaitUntil(t)) => Self::WaitUntil(t),
            Some(Kind::Replayed(c)) => Self::Replayed(c),
            None => return Err(TransferWireError::Invalid("no reply")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let d = digest_bytes(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(digest_text(&d), format!("sha256:{}", "ab".repeat(32)));
        assert!(digest_bytes("sha256:AB").is_none() && digest_bytes(&"ab".repeat(32)).is_none());
        let id = digest_text(&d);
        for r in [
            TransferRequest::Offer { image_id: id.clone() },
            TransferRequest::Plan { image_id: id.clone(), have: vec![0, 2], repo_images: vec![vec![d, d]] },
            TransferRequest::Payload { payload: "whole-ab".into(), offset: 262_144 },
        ] {
            assert_eq!(TransferRequest::decode(&r.encode()).unwrap(), r);
        }
        let bad = TransferRequest::Payload { payload: "../../etc/passwd".into(), offset: 0 };
        assert!(TransferRequest::decode(&bad.encode()).is_err());
        assert!(TransferRequest::decode(&TransferRequest::Offer { image_id: "nginx".into() }.encode()).is_err());
        let offer = TransferReply::Offer(Offer { config: b"{\"rootfs\":{}}".to_vec(), layers: vec![(d, 10)] });
        assert_eq!(TransferReply::decode(&offer.encode()).unwrap(), offer);
        let piece = Piece {
            layer: 1,
            base: Some(d),
            payload: "x-y".into(),
            payload_len: 300_000,
            chunks: vec![[1; 32], [2; 32]],
        };
        let plan = TransferReply::Plan { pieces: vec![piece.clone()], rate: 32_000 };
        assert_eq!(TransferReply::decode(&plan.encode()).unwrap(), plan);
        // A piece whose chunk list does not cover its length.
        let short = TransferReply::Plan { pieces: vec![Piece { chunks: vec![[1; 32]], ..piece }], rate: 0 };
        assert!(TransferReply::decode(&short.encode()).is_err());
        // A config bomb: more than 1 MiB once decompressed.
        let bomb = pb::TransferReply {
            kind: Some(pb::transfer_reply::Kind::Offer(pb::Offer {
                config: zstd::bulk::compress(&vec![0u8; MAX_CONFIG + 1], 3).unwrap(),
                layers: vec![],
                sizes: vec![],
            })),
        };
        assert!(TransferReply::decode(&bomb.encode_to_vec()).is_err());
        assert_ne!(transfer_key(&Secret([1; 32])), Secret([1; 32]));
    }
}
