//! The body codec: what every poll and reply body looks like on the wire.
//!
//! ```text
//! +---------+-------+---------------------------------------------+
//! | version | codec | payload                                     |
//! |  1 byte | 1 byte| raw protobuf (codec 0) or a zstd frame      |
//! +---------+-------+---------------------------------------------+
//! ```
//!
//! * `version` is [`VERSION`]; a reader refuses versions it does not know.
//! * `codec` 0 is a raw body. Codec `n >= 1` is a zstd frame compressed with
//!   the shipped dictionary whose id is `n`, so a newer dictionary can live
//!   beside an older one and each side says which it used.
//! * The frame is sent without its 4-byte magic number (always the same),
//!   without a dictionary id (the codec byte says it) and without a checksum
//!   (the root digest and the MAC cover integrity). It always carries its
//!   content size, which the reader checks against its limit *before*
//!   allocating.
//! * The writer compresses, compares, and sends whichever is smaller, so a
//!   tiny body never grows.

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::{CParameter, DParameter};

/// The version byte of this format.
pub const VERSION: u8 = 1;

/// Codec byte for a body sent as it is.
pub const RAW: u8 = 0;

/// The id of the dictionary new bodies are compressed with.
pub const CURRENT_DICTIONARY: u8 = 1;

/// The first four bytes of every zstd frame, left off on the wire.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The dictionaries this build knows, by id. Never remove one that agents in
/// the field may still use; add new ones with the next id.
const DICTIONARIES: &[(u8, &[u8])] = &[(1, include_bytes!("../../dict/tern-v1-1.zdict"))];

/// Size limits, checked before anything large is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted on the wire, header included.
    pub max_encoded: usize,
    /// Largest body accepted after decompression.
    pub max_decoded: usize,
}

impl Default for Limits {
    /// 4 MiB on the wire and 16 MiB decoded: a full snapshot of a host with a
    /// few thousand containers fits; anything bigger is refused.
    fn default() -> Self {
        Self { max_encoded: 4 << 20, max_decoded: 16 << 20 }
    }
}

/// Why a body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the two header bytes.
    #[error("body is {0} bytes, shorter than the 2-byte header")]
    Truncated(usize),
    /// A version this build does not speak.
    #[error("unsupported body version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// A codec byte naming a dictionary this build does not ship.
    #[error("unknown codec / dictionary id {0}")]
    UnknownDictionary(u8),
    /// The body on the wire is over the limit.
    #[error("encoded body of {size} bytes exceeds the limit of {limit}")]
    EncodedTooLarge {
        /// Bytes received.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The body would decompress to more than the limit.
    #[error("decoded body of {size} bytes exceeds the limit of {limit}")]
    DecodedTooLarge {
        /// Bytes declared by the frame (or produced by encoding).
        size: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The zstd frame does not declare its content size.
    #[error("compressed body does not declare its size")]
    UnknownSize,
    /// zstd could not decompress the frame, or it did not fill the declared size.
    #[error("corrupt compressed body: {0}")]
    Corrupt(String),
    /// zstd failed while compressing (out of memory, bad dictionary).
    #[error("compression failed: {0}")]
    Compress(String),
}

/// Compression level by body size: small bodies (every poll) get the
/// strongest level, which costs microseconds on them; big ones (a first
/// snapshot of a large host) a level that keeps the agent's CPU time low.
fn level_for(len: usize) -> i32 {
    match len {
        0..=65_536 => 19,
        65_537..=1_048_576 => 9,
        _ => 3,
    }
}

/// Encodes and decodes bodies. Holds zstd contexts with the dictionaries
/// loaded, so reuse one per connection or task.
pub struct Codec {
    limits: Limits,
    /// One context per level in use. (Changing the level of a context drops
    /// its dictionary, so each level gets its own.)
    compressors: Vec<(i32, Compressor<'static>)>,
    decompressors: Vec<(u8, Decompressor<'static>)>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn zstd_err(e: std::io::Error) -> CodecError {
    CodecError::Compress(e.to_string())
}

impl Codec {
    /// A codec with the given limits.
    ///
    /// # Errors
    /// When zstd cannot set up its contexts (out of memory).
    pub fn new(limits: Limits) -> Result<Self, CodecError> {
        let mut decompressors = Vec::new();
        for &(id, dict) in DICTIONARIES {
            let mut d = Decompressor::with_dictionary(dict).map_err(zstd_err)?;
            // Bodies are at most a few MiB; refuse frames asking for bigger windows.
            d.set_parameter(DParameter::WindowLogMax(24)).map_err(zstd_err)?;
            decompressors.push((id, d));
        }
        Ok(Self { limits, compressors: Vec::new(), decompressors })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Encodes a body: compressed with the current dictionary, or raw when
    /// that is not smaller.
    ///
    /// # Errors
    /// When the body is over the decoded limit (the peer would refuse it),
    /// or zstd fails.
    pub fn encode(&mut self, body: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.encode_at(body, level_for(body.len()))
    }

    /// [`Self::encode`] at zstd level `level` instead of the one for the
    /// link: for what stays on the agent's disk, where a byte costs
    /// nothing and the CPU time of level 19 would be paid at every change.
    ///
    /// # Errors
    /// As [`Self::encode`].
    pub fn encode_at(&mut self, body: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
        if body.len() > self.limits.max_decoded {
            return Err(CodecError::DecodedTooLarge { size: body.len() as u64, limit: self.limits.max_decoded });
        }
        let mut out = Vec::with_capacity(body.len() + 2);
        out.push(VERSION);
        if !body.is_empty() {
            let frame = self.compressor(level)?.compress(body).map_err(zstd_err)?;
            debug_assert_eq!(frame[..4], ZSTD_MAGIC);
            if frame.len() - ZSTD_MAGIC.len() < body.len() {
                out.push(CURRENT_DICTIONARY);
                out.extend_from_slice(&frame[ZSTD_MAGIC.len()..]);
                return self.check_encoded(out);
            }
        }
        out.push(RAW);
        out.extend_from_slice(body);
        self.check_encoded(out)
    }

    fn compressor(&mut self, level: i32) -> Result<&mut Compressor<'static>, CodecError> {
        let i = match self.compressors.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                let dict = dictionary(CURRENT_DICTIONARY).ok_or(CodecError::UnknownDictionary(CURRENT_DICTIONARY))?;
                let mut c = Compressor::with_dictionary(level, dict).map_err(zstd_err)?;
                for p in
                    [CParameter::ContentSizeFlag(true), CParameter::ChecksumFlag(false), CParameter::DictIdFlag(false)]
                {
                    c.set_parameter(p).map_err(zstd_err)?;
                }
                self.compressors.push((level, c));
                self.compressors.len() - 1
            }
        };
        Ok(&mut self.compressors[i].1)
    }

    fn check_encoded(&self, out: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        if out.len() > self.limits.max_encoded {
            return Err(CodecError::EncodedTooLarge { size: out.len(), limit: self.limits.max_encoded });
        }
        Ok(out)
    }

    /// Decodes a body received from the wire.
    ///
    /// # Errors
    /// On a short or oversized body, an unknown version or dictionary, a
    /// frame without a declared size or over the decoded limit, or corrupt
    /// data. Nothing larger than the declared (and accepted) size is ever
    /// allocated.
    pub fn decode(&mut self, wire: &[u8]) -> Result<Vec<u8>, CodecError> {
        if wire.len() > self.limits.max_encoded {
            return Err(CodecError::EncodedTooLarge { size: wire.len(), limit: self.limits.max_encoded });
        }
        let [version, codec, payload @ ..] = wire else {
            return Err(CodecError::Truncated(wire.len()));
        };
        if *version != VERSION {
            return Err(CodecError::UnsupportedVersion(*version));
        }
        if *codec == RAW {
            if payload.len() > self.limits.max_decoded {
                return Err(CodecError::DecodedTooLarge { size: payload.len() as u64, limit: self.limits.max_decoded });
            }
            return Ok(payload.to_vec());
        }
        let decompressor = self
            .decompressors
            .iter_mut()
            .find(|(id, _)| id == codec)
            .map(|(_, d)| d)
            .ok_or(CodecError::UnknownDictionary(*codec))?;
        let mut frame = Vec::with_capacity(payload.len() + ZSTD_MAGIC.len());
        frame.extend_from_slice(&ZSTD_MAGIC);
        frame.extend_from_slice(payload);
        let size = match zstd::zstd_safe::get_frame_content_size(&frame) {
            Ok(Some(size)) => size,
            Ok(None) => return Err(CodecError::UnknownSize),
            Err(_) => return Err(CodecError::Corrupt("bad frame header".into())),
        };
        if size > self.limits.max_decoded as u64 {
            return Err(CodecError::DecodedTooLarge { size, limit: self.limits.max_decoded });
        }
        // `size` is within the limit, so this allocation is bounded.
        let mut out = Vec::with_capacity(size as usize);
        decompressor.decompress_to_buffer(&frame, &mut out).map_err(|e| CodecError::Corrupt(e.to_string()))?;
        if out.len() as u64 != size {
            return Err(CodecError::Corrupt(format!("frame declared {size} bytes, held {}", out.len())));
        }
        Ok(out)
    }
}

/// The shipped dictionary with this id, if this build has it.
pub fn dictionary(id: u8) -> Option<&'static [u8]> {
    DICTIONARIES.iter().find(|(i, _)| *i == id).map(|(_, d)| *d)
}

/// Trains a dictionary on sample bodies, for `tern dev train-dictionary`.
///
/// # Errors
/// When zstd cannot train on the samples (too few or too small).
pub fn train_dictionary(samples: &[Vec<u8>], max_size: usize) -> std::io::Result<Vec<u8>> {
    zstd::dict::from_samples(samples, max_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> Codec {
        Codec::new(Limits::default()).unwrap()
    }

    #[test]
    fn round_trips_small_and_large_bodies() {
        let mut c = codec();
        for body in [vec![], vec![1u8], b"com.docker.compose.project".repeat(100)] {
            let wire = c.encode(&body).unwrap();
            assert_eq!(wire[0], VERSION);
            assert!(wire.len() <= body.len() + 2, "never grows by more than the header");
            assert_eq!(c.decode(&wire).unwrap(), body);
        }
    }

    #[test]
    fn the_shipped_dictionary_is_used() {
        // A body made of the strings every Docker host repeats: the
        // dictionary (trained on the training host) knows them.
        let body = b"com.docker.compose.project=edge com.docker.compose.service=api \
            com.docker.compose.project.working_dir=/srv/edge com.docker.compose.oneoff=False \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let with_dict = codec().encode(body).unwrap().len() - 2;
        let without = zstd::bulk::compress(body, 19).unwrap().len() - 4;
        assert!(with_dict * 10 < without * 8, "dictionary {with_dict} B vs none {without} B");
    }

    #[test]
    fn incompressible_bodies_go_raw() {
        let mut c = codec();
        let body: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let wire = c.encode(&body).unwrap();
        assert_eq!(wire[1], RAW);
        assert_eq!(wire.len(), body.len() + 2);
    }

    #[test]
    fn refuses_unknown_versions_and_dictionaries() {
        let mut c = codec();
        assert!(matches!(c.decode(&[2, 0]), Err(CodecError::UnsupportedVersion(2))));
        assert!(matches!(c.decode(&[VERSION, 77, 1, 2]), Err(CodecError::UnknownDictionary(77))));
        assert!(matches!(c.decode(&[VERSION]), Err(CodecError::Truncated(1))));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocating() {
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(bomb.len() < 8 << 10);
        let mut wire = vec![VERSION, CURRENT_DICTIONARY];
        wire.extend_from_slice(&bomb[4..]);
        let err = codec().decode(&wire).unwrap_err();
        assert!(matches!(err, CodecError::DecodedTooLarge { size, .. } if size == 64 << 20), "{err}");
    }

    #[test]
    fn a_frame_that_hides_its_size_is_refused() {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &[0u8; 1000]).unwrap();
        let frame = enc.finish().unwrap();
        let mut wire = vec![VERSION, CURRENT_DICTIONARY];
        wire.extend_from_slice(&frame[4..]);
        assert!(matches!(codec().decode(&wire), Err(CodecError::UnknownSize)));
    }

    #[test]
    fn oversized_and_lying_bodies_are_refused() {
        let mut small = Codec::new(Limits { max_encoded: 16, max_decoded: 32 }).unwrap();
        assert!(matches!(small.decode(&[1u8; 17]), Err(CodecError::EncodedTooLarge { .. })));
        assert!(matches!(small.encode(&[0u8; 33]), Err(CodecError::DecodedTooLarge { .. })));
        // A frame that declares more than it holds.
        let mut c = codec();
        let mut wire = c.encode(&b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(4)).unwrap();
        assert_eq!(wire[1], CURRENT_DICTIONARY);
        wire.truncate(wire.len() - 3);
        assert!(matches!(c.decode(&wire), Err(CodecError::Corrupt(_))));
    }
}
