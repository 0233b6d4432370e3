//! Binary deltas of image layers, and the chunks a transfer travels in:
//! what the server computes and the agent applies, so both use this one
//! implementation.
//!
//! **Delta.** A changed layer goes as zstd with the most similar layer the
//! host already has as a *reference prefix* (zstd's `--patch-from`): the
//! new layer's bytes that occur in the old one cost a few bytes of match
//! each, wherever they are, because the window covers both and long-distance
//! matching finds the far ones. Against bsdiff it needs no suffix sort (of
//! a 50 MB layer: gigabytes of memory), decodes at zstd speed, and a layer
//! with nothing to refer to is simply compressed whole, by the same code.
//!
//! **Chunks.** A transfer's payload is cut into [`CHUNK_SIZE`] pieces, each
//! named by its blake3 hash: the agent fetches them by name, checks each
//! one, keeps those it has across a link drop, and so loses at most the one
//! in flight. The rebuilt layer is then checked against its sha256 digest
//! (the image config's `diff_id`) before anything is loaded.
//!
//! **Bounds.** Decoding never produces more than the size the manifest
//! states (a corrupt or hostile payload cannot become a decompression
//! bomb), and refuses a window larger than [`MAX_WINDOW_LOG`].

use std::io::{Read, Write};

/// A chunk's size: small enough that a chunk lost in a link drop costs
/// little, large enough that its name (32 bytes) and request are noise.
pub const CHUNK_SIZE: usize = 256 << 10;

/// The largest zstd window (2 GiB): a reference layer and its new version
/// together must fit in it.
pub const MAX_WINDOW_LOG: u32 = 31;

/// The zstd level of deltas and whole layers: with long-distance matching,
/// level 9 finds the far matches a delta lives on; higher levels cost much
/// more CPU on the server for a few percent (`benches/transfer.rs`).
pub const LEVEL: i32 = 9;

/// What went wrong reading a transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The payload does not decode (corrupt, or made against another base).
    #[error("the delta does not decode: {0}")]
    Corrupt(String),
    /// It decodes to another size than stated.
    #[error("the delta decodes to {got} bytes, not the {want} stated")]
    Size {
        /// Stated.
        want: u64,
        /// Found (at most one more than stated: decoding stops there).
        got: u64,
    },
    /// The layers are too large for one window.
    #[error("layers of {0} bytes together are too large for a delta")]
    TooLarge(u64),
}

/// The window that covers `base` and a target of `len` bytes.
fn window_log(base: usize, len: usize) -> Result<u32, TransferError> {
    let total = (base as u64).saturating_add(len as u64).max(1 << 10);
    let log = 64 - (total - 1).leading_zeros();
    if log > MAX_WINDOW_LOG {
        return Err(TransferError::TooLarge(total));
    }
    Ok(log.max(10))
}

/// `target` compressed, with `base` (possibly empty) as its reference
/// prefix.
///
/// # Errors
/// [`TransferError::TooLarge`] past [`MAX_WINDOW_LOG`]; zstd's own errors.
pub fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>, TransferError> {
    let err = |e: std::io::Error| TransferError::Corrupt(e.to_string());
    let log = window_log(base.len(), target.len())?;
    let mut out = Vec::with_capacity(target.len() / 4 + 64);
    {
        let mut enc = zstd::stream::write::Encoder::with_ref_prefix(&mut out, LEVEL, base).map_err(err)?;
        enc.window_log(log).map_err(err)?;
        enc.long_distance_matching(true).map_err(err)?;
        enc.set_pledged_src_size(Some(target.len() as u64)).map_err(err)?;
        enc.include_checksum(false).map_err(err)?;
        enc.write_all(target).map_err(err)?;
        enc.finish().map_err(err)?;
    }
    Ok(out)
}

/// The target of [`encode`] from its payload and the same `base`, which
/// must be exactly `len` bytes long.
///
/// # Errors
/// [`TransferError::Corrupt`] or [`TransferError::Size`]: nothing past
/// `len` bytes (plus one, to tell) is ever produced.
pub fn decode(base: &[u8], payload: &[u8], len: u64) -> Result<Vec<u8>, TransferError> {
    let err = |e: std::io::Error| TransferError::Corrupt(e.to_string());
    let log = window_log(base.len(), usize::try_from(len).map_err(|_| TransferError::TooLarge(len))?)?;
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(payload, base).map_err(err)?;
    dec.window_log_max(log).map_err(err)?;
    let mut out = Vec::with_capacity(usize::try_from(len.min(1 << 30)).unwrap_or(0));
    dec.take(len.saturating_add(1)).read_to_end(&mut out).map_err(err)?;
    if out.len() as u64 != len {
        return Err(TransferError::Size { want: len, got: out.len() as u64 });
    }
    Ok(out)
}

/// A payload's chunks' names: the blake3 hash of each [`CHUNK_SIZE`]
/// piece, in order.
#[must_use]
pub fn chunk_names(payload: &[u8]) -> Vec<[u8; 32]> {
    payload.chunks(CHUNK_SIZE).map(|c| *blake3::hash(c).as_bytes()).collect()
}

/// Whether `bytes` is the chunk named `name`.
#[must_use]
pub fn is_chunk(bytes: &[u8], name: &[u8; 32]) -> bool {
    bytes.len() <= CHUNK_SIZE && blake3::hash(bytes).as_bytes() == name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that do not compress (like a layer of binaries), from a seed.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn a_small_change_in_a_large_layer_costs_a_small_delta() {
        let old = noise(8 << 20, 1);
        let mut new = old.clone();
        new[3_000_000..3_004_096].copy_from_slice(&noise(4096, 2));
        let delta = encode(&old, &new).unwrap();
        assert!(delta.len() < 8 * 1024, "{} bytes for a 4 KiB change in 8 MiB", delta.len());
        assert_eq!(decode(&old, &delta, new.len() as u64).unwrap(), new);
        // Moved content is found too (an inserted file shifts the rest).
        let mut shifted = noise(1000, 3);
        shifted.extend_from_slice(&old);
        let delta = encode(&old, &shifted).unwrap();
        assert!(delta.len() < 4 * 1024, "{} bytes for 1000 inserted bytes", delta.len());
        assert_eq!(decode(&old, &delta, shifted.len() as u64).unwrap(), shifted);
        // No base: compressed whole.
        let whole = encode(&[], &new).unwrap();
        assert_eq!(decode(&[], &whole, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn a_wrong_base_a_wrong_size_or_corrupt_bytes_are_refused_never_overproduced() {
        let old = noise(1 << 20, 4);
        let mut new = old.clone();
        new[10..20].fill(0);
        let delta = encode(&old, &new).unwrap();
        let other = noise(1 << 20, 5);
        assert_ne!(decode(&other, &delta, new.len() as u64).ok(), Some(new.clone()), "another base");
        assert!(matches!(decode(&old, &delta, 100), Err(TransferError::Size { want: 100, got: 101 })));
        assert!(matches!(decode(&old, &delta, new.len() as u64 + 5), Err(TransferError::Size { .. })));
        let mut bad = delta.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert_ne!(decode(&old, &bad, new.len() as u64).ok(), Some(new.clone()));
        assert!(decode(&old, b"not zstd", 10).is_err());
        // A bomb: a tiny payload that would decode to 64 MiB, stating a
        // small size, is refused (its window alone is too large for it) and
        // decodes no further; stated at its size, it decodes.
        let zeros = encode(&[], &vec![0u8; 64 << 20]).unwrap();
        assert!(zeros.len() < 64 << 10);
        assert!(decode(&[], &zeros, 1000).is_err());
        let small = encode(&[], &[0u8; 4000]).unwrap();
        assert!(matches!(decode(&[], &small, 3000), Err(TransferError::Size { want: 3000, got: 3001 })));
        assert_eq!(decode(&[], &zeros, 64 << 20).unwrap().len(), 64 << 20);
    }

    #[test]
    fn chunks_are_named_by_their_hash_and_checked() {
        let payload = noise(CHUNK_SIZE * 2 + 7, 6);
        let names = chunk_names(&payload);
        assert_eq!(names.len(), 3);
        let last = &payload[2 * CHUNK_SIZE..];
        assert!(is_chunk(last, &names[2]));
        assert!(!is_chunk(last, &names[1]));
        let mut bad = last.to_vec();
        bad[0] ^= 1;
        assert!(!is_chunk(&bad, &names[2]));
    }
}
