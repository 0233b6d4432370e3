//! `diff(base, current)` and `apply(base, delta)`.
//!
//! A delta names objects of the base by their position in the base's key
//! order, so it never repeats a 32-byte id for an object both sides hold.
//! Changed objects carry only their changed fields (see [`crate::wire::fields`]).
//! Every non-empty delta carries the first [`ROOT_LEN`] bytes of the root
//! digest the receiver must reach; a receiver that reaches another digest
//! rejects the delta and keeps its state.

use prost::Message;

use super::state::{Entry, InvalidObject, Object, State, Table};
use crate::wire::fields::{self, FieldError, FieldPatch};
use crate::wire::pb;

/// Bytes of the root digest a delta carries. 64 bits: a random divergence
/// goes unnoticed with probability 2^-64 per delta (a fleet of 5,000 hosts
/// polling every minute sends about 2^31 deltas a year). Forgery is the
/// MAC's job, not this digest's. Every byte here is paid on every non-empty
/// poll, so it is kept to what detection needs.
pub const ROOT_LEN: usize = 8;

/// A state delta, ready to encode. Build one with [`diff`], check and use
/// one with [`apply`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta(pub(crate) pb::Delta);

/// Why a delta was rejected. The base state is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The bytes are not an encoded delta.
    #[error("undecodable delta: {0}")]
    Decode(String),
    /// A changed field list or object encoding is malformed.
    #[error("malformed patch: {0}")]
    Field(#[from] FieldError),
    /// An object in the delta is invalid.
    #[error("invalid object: {0}")]
    Object(#[from] InvalidObject),
    /// A position past the end of the base's objects.
    #[error("{kind}: position {index} is past the {len} objects of the base")]
    IndexOutOfRange {
        /// Which kind.
        kind: &'static str,
        /// The position.
        index: u32,
        /// How many objects the base holds.
        len: usize,
    },
    /// Positions not strictly ascending, or one both removed and changed.
    #[error("{0}: positions are not strictly ascending and disjoint")]
    NotAscending(&'static str),
    /// A patch changed an object's key.
    #[error("{0}: a patch may not change an object's key")]
    KeyChanged(&'static str),
    /// An added object whose key already exists.
    #[error("{0}: added object already exists")]
    Duplicate(&'static str),
    /// A non-empty delta without its root digest.
    #[error("delta carries changes but no root digest")]
    MissingRoot,
    /// The state after applying does not have the digest the sender said.
    #[error("root digest mismatch: the sender holds a different state (resync needed)")]
    RootMismatch,
}

impl Delta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        let d = &self.0;
        d.host.is_none() && [&d.containers, &d.images, &d.volumes, &d.networks].iter().all(|k| k.is_none())
    }

    /// The root digest prefix the receiver must reach (empty for an empty delta).
    pub fn root(&self) -> &[u8] {
        &self.0.root
    }

    /// The protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }

    /// Decodes a delta; its contents are checked by [`apply`].
    ///
    /// # Errors
    /// When the bytes are not an encoded delta.
    pub fn decode(bytes: &[u8]) -> Result<Self, ApplyError> {
        let d = pb::Delta::decode(bytes).map_err(|e| ApplyError::Decode(e.to_string()))?;
        // Only the empty delta, which encodes to no bytes at all, goes
        // without a root. Bytes that decode to no root are a damaged delta
        // (a flipped length can turn the root and what follows into
        // fields this build skips), not "nothing changed": applied to any
        // base unchecked, they would leave the receiver on a state the
        // sender does not hold.
        if !bytes.is_empty() && d.root.is_empty() {
            return Err(ApplyError::MissingRoot);
        }
        Ok(Self(d))
    }

    /// Counts of (removed, changed, added) objects over all kinds.
    pub fn counts(&self) -> (usize, usize, usize) {
        let d = &self.0;
        [&d.containers, &d.images, &d.volumes, &d.networks]
            .iter()
            .flat_map(|k| k.as_ref())
            .fold((0, usize::from(d.host.is_some()), 0), |(r, c, a), k| {
                (r + k.removed.len(), c + k.changed.len(), a + k.added.len())
            })
    }
}

fn patch_of(old: &[u8], new: &[u8]) -> FieldPatch {
    // Both are our own canonical encodings, so they are well formed.
    fields::diff(old, new).expect("canonical encodings are well formed")
}

fn diff_table<T: Object>(base: &Table<T>, current: &Table<T>) -> Option<pb::KindDelta> {
    let mut out = pb::KindDelta::default();
    let mut cur = current.entries.iter().peekable();
    for (index, (key, old)) in base.entries.iter().enumerate() {
        // Everything in `current` before this key is new.
        while let Some((_, e)) = cur.next_if(|(k, _)| *k < key) {
            out.added.push(e.encoded.clone());
        }
        match cur.next_if(|(k, _)| *k == key) {
            Some((_, new)) if new.digest != old.digest => {
                let p = patch_of(&old.encoded, &new.encoded);
                out.changed.push(pb::Patch { index: index as u32, set: p.set, cleared: p.cleared });
            }
            Some(_) => {}
            None => out.removed.push(index as u32),
        }
    }
    out.added.extend(cur.map(|(_, e)| e.encoded.clone()));
    (out != pb::KindDelta::default()).then_some(out)
}

/// The delta that turns `base` into `current`. Empty when they are equal.
pub fn diff(base: &State, current: &State) -> Delta {
    let (old_host, new_host) = (base.host.encode(), current.host.encode());
    let host = (old_host != new_host).then(|| {
        let p = patch_of(&old_host, &new_host);
        pb::Patch { index: 0, set: p.set, cleared: p.cleared }
    });
    let mut delta = Delta(pb::Delta {
        root: Vec::new(),
        host,
        containers: diff_table(&base.containers, &current.containers),
        images: diff_table(&base.images, &current.images),
        volumes: diff_table(&base.volumes, &current.volumes),
        networks: diff_table(&base.networks, &current.networks),
    });
    if !delta.is_empty() {
        delta.0.root = current.root()[..ROOT_LEN].to_vec();
    }
    delta
}

fn kind_name<T: Object>() -> &'static str {
    match T::KIND {
        super::state::Kind::Host => "host",
        super::state::Kind::Container => "containers",
        super::state::Kind::Image => "images",
        super::state::Kind::Volume => "volumes",
        super::state::Kind::Network => "networks",
    }
}

fn check_ascending<T: Object>(indices: impl Iterator<Item = u32>, len: usize) -> Result<(), ApplyError> {
    let kind = kind_name::<T>();
    let mut last: Option<u32> = None;
    for index in indices {
        if index as usize >= len {
            return Err(ApplyError::IndexOutOfRange { kind, index, len });
        }
        if last.is_some_and(|l| l >= index) {
            return Err(ApplyError::NotAscending(kind));
        }
        last = Some(index);
    }
    Ok(())
}

fn apply_table<T: Object>(base: &Table<T>, delta: Option<&pb::KindDelta>) -> Result<Table<T>, ApplyError> {
    let Some(d) = delta else { return Ok(base.clone()) };
    let kind = kind_name::<T>();
    let len = base.len();
    check_ascending::<T>(d.removed.iter().copied(), len)?;
    check_ascending::<T>(d.changed.iter().map(|p| p.index), len)?;
    // Disjoint: merge-walk the two ascending lists.
    let mut removed = d.removed.iter().peekable();
    for p in &d.changed {
        while removed.next_if(|&&r| r < p.index).is_some() {}
        if removed.peek() == Some(&&p.index) {
            return Err(ApplyError::NotAscending(kind));
        }
    }

    let mut out = Table::default();
    let mut removed = d.removed.iter().peekable();
    let mut changed = d.changed.iter().peekable();
    for (index, (key, entry)) in base.entries.iter().enumerate() {
        let index = index as u32;
        if removed.next_if(|&&r| r == index).is_some() {
            continue;
        }
        match changed.next_if(|p| p.index == index) {
            None => {
                out.entries.insert(key.clone(), entry.clone());
            }
            Some(p) => {
                let patch = FieldPatch { set: p.set.clone(), cleared: p.cleared.clone() };
                let merged = Entry::<T>::received(fields::merge(&entry.encoded, &patch)?)?;
                if merged.value.key() != *key {
                    return Err(ApplyError::KeyChanged(kind));
                }
                out.insert_entry(merged);
            }
        }
    }
    for bytes in &d.added {
        let added = Entry::<T>::received(bytes.clone())?;
        if out.entries.contains_key(&added.value.key()) {
            return Err(ApplyError::Duplicate(kind));
        }
        out.insert_entry(added);
    }
    Ok(out)
}

/// Applies a delta to `base` and returns the new state, or an error and no
/// state at all: `base` is never modified.
///
/// # Errors
/// When the delta is malformed, does not fit the base, or leads to a state
/// whose root digest is not the one the delta carries.
pub fn apply(base: &State, delta: &Delta) -> Result<State, ApplyError> {
    let d = &delta.0;
    if delta.is_empty() {
        if !d.root.is_empty() && (d.root.len() != ROOT_LEN || d.root != base.root()[..ROOT_LEN]) {
            return Err(ApplyError::RootMismatch);
        }
        return Ok(base.clone());
    }
    if d.root.len() != ROOT_LEN {
        return Err(ApplyError::MissingRoot);
    }
    let host = match &d.host {
        None => base.host.clone(),
        Some(p) => {
            let patch = FieldPatch { set: p.set.clone(), cleared: p.cleared.clone() };
            super::state::Host::decode(&fields::merge(&base.host.encode(), &patch)?)?
        }
    };
    let next = State {
        host,
        containers: apply_table(&base.containers, d.containers.as_ref())?,
        images: apply_table(&base.images, d.images.as_ref())?,
        volumes: apply_table(&base.volumes, d.volumes.as_ref())?,
        networks: apply_table(&base.networks, d.networks.as_ref())?,
    };
    if next.root()[..ROOT_LEN] != d.root[..] {
        return Err(ApplyError::RootMismatch);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::state::{Container, Id, Kind, object_digest};

    #[test]
    fn fields_from_a_newer_peer_survive_and_keep_the_digest() {
        let base = State::default();
        let c = Container { id: Id([1; 32]), name: "web".into(), ..Container::default() };
        // A newer agent's encoding: today's fields plus field 99 (a string).
        let mut newer = c.encode();
        newer.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
        let mut d = pb::Delta {
            containers: Some(pb::KindDelta { added: vec![newer.clone()], ..Default::default() }),
            ..Default::default()
        };
        let mut sender = State::default();
        sender.containers.insert_entry(Entry::received(newer.clone()).unwrap());
        d.root = sender.root()[..ROOT_LEN].to_vec();
        let got = apply(&base, &Delta(d)).expect("a newer object is accepted");
        assert_eq!(got.containers.get(&c.id), Some(&c));
        assert_eq!(got.containers.digest(&c.id), Some(&object_digest(Kind::Container, &newer)));
        assert_eq!(got.root(), sender.root());
    }

    #[test]
    fn bytes_that_decode_to_no_root_are_refused_not_taken_for_no_change() {
        // Field 99 (unknown here), empty: what a damaged root and the
        // fields after it can decode to.
        assert!(matches!(Delta::decode(&[0x9a, 0x06, 0]), Err(ApplyError::MissingRoot)));
        assert!(Delta::decode(&[]).is_ok_and(|d| d.is_empty()), "the empty delta is no bytes");
        // An empty delta's root, when present, is checked whole.
        let mut s = State::default();
        s.containers.insert(Container { id: Id([3; 32]), ..Container::default() });
        let short = pb::Delta { root: s.root()[..1].to_vec(), ..Default::default() };
        assert_eq!(apply(&s, &Delta(short)), Err(ApplyError::RootMismatch));
        let full = pb::Delta { root: s.root()[..ROOT_LEN].to_vec(), ..Default::default() };
        assert_eq!(apply(&s, &Delta(full)).unwrap(), s);
    }

    #[test]
    fn an_empty_delta_applies_to_any_base_unchanged() {
        let mut s = State::default();
        s.containers.insert(Container { id: Id([2; 32]), ..Container::default() });
        assert_eq!(apply(&s, &diff(&s, &s)).unwrap(), s);
    }
}

impl State {
    /// The whole state as bytes: the delta from the empty state. Both
    /// stores keep states this way, so loading one re-checks its root digest.
    pub fn to_snapshot(&self) -> Vec<u8> {
        diff(&State::default(), self).encode()
    }

    /// The inverse of [`State::to_snapshot`].
    ///
    /// # Errors
    /// When the bytes are not a snapshot, or do not reach the digest they carry.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, ApplyError> {
        apply(&State::default(), &Delta::decode(bytes)?)
    }
}

/// Helpers for tests that tamper with deltas. Not part of the API.
#[doc(hidden)]
pub mod testing {
    use super::Delta;

    /// Drops the `i`-th part of a delta: the host patch first, then per kind
    /// its removals, patches and additions.
    pub fn drop_part(delta: &Delta, mut i: usize) -> Delta {
        let mut d = delta.0.clone();
        if d.host.is_some() {
            if i == 0 {
                d.host = None;
                return Delta(d);
            }
            i -= 1;
        }
        let mut done = false;
        for k in [&mut d.containers, &mut d.images, &mut d.volumes, &mut d.networks].into_iter().flatten() {
            for (which, len) in [k.removed.len(), k.changed.len(), k.added.len()].into_iter().enumerate() {
                if !done && i < len {
                    match which {
                        0 => drop(k.removed.remove(i)),
                        1 => drop(k.changed.remove(i)),
                        _ => drop(k.added.remove(i)),
                    }
                    done = true;
                } else if !done {
                    i -= len;
                }
            }
        }
        Delta(d)
    }
}
