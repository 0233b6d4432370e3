//! Field-level diff and merge of encoded protobuf messages.
//!
//! Every object message is encoded with its fields in ascending number order
//! (see `proto/`). A change to an object is sent as the records of the fields
//! that changed (itself a valid encoding of the message with only those
//! fields set) plus the numbers of the fields that became empty. This works
//! for every message type without per-type code, and the merge result is
//! decoded and validated by the caller before it is trusted.

use std::collections::BTreeMap;

/// Why an encoded message could not be split into fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A varint ran past the end of the buffer or past 10 bytes.
    #[error("truncated or overlong varint")]
    BadVarint,
    /// Field number 0 or above 2^29 - 1.
    #[error("invalid field number {0}")]
    BadFieldNumber(u64),
    /// A wire type protobuf does not define, or the deprecated groups.
    #[error("unsupported wire type {0}")]
    BadWireType(u8),
    /// A record's value ran past the end of the buffer.
    #[error("truncated field value")]
    Truncated,
}

/// The largest field number protobuf allows.
const MAX_FIELD: u64 = (1 << 29) - 1;

/// Reads a protobuf varint at `pos`, advancing it.
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, FieldError> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(FieldError::BadVarint)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(FieldError::BadVarint)
}

/// The records of an encoded message, in order: each field number with its
/// value's bytes (a length-delimited value without its length; the varint
/// or fixed bytes otherwise). Stops at the first malformed record.
pub(crate) fn records(buf: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), FieldError>> {
    let mut pos = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if pos >= buf.len() || failed {
            return None;
        }
        let r = (|| {
            let key = read_varint(buf, &mut pos)?;
            let number = key >> 3;
            if number == 0 || number > MAX_FIELD {
                return Err(FieldError::BadFieldNumber(number));
            }
            let (start, len) = match (key & 7) as u8 {
                0 => {
                    let start = pos;
                    read_varint(buf, &mut pos)?;
                    (start, pos - start)
                }
                1 => (pos, 8),
                2 => {
                    let len = usize::try_from(read_varint(buf, &mut pos)?).map_err(|_| FieldError::Truncated)?;
                    (pos, len)
                }
                5 => (pos, 4),
                other => return Err(FieldError::BadWireType(other)),
            };
            let end = start.checked_add(len).filter(|&e| e <= buf.len()).ok_or(FieldError::Truncated)?;
            pos = end;
            // `number` fits in u32: it is at most MAX_FIELD.
            Ok((number as u32, &buf[start..end]))
        })();
        failed = r.is_err();
        Some(r)
    })
}

/// Groups the records of `buf` by field number, keeping each field's
/// records in their original order.
fn group(buf: &[u8]) -> Result<BTreeMap<u32, Vec<u8>>, FieldError> {
    let mut fields: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let number = key >> 3;
        if number == 0 || number > MAX_FIELD {
            return Err(FieldError::BadFieldNumber(number));
        }
        let len = match (key & 7) as u8 {
            0 => {
                read_varint(buf, &mut pos)?;
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(buf, &mut pos)?).map_err(|_| FieldError::Truncated)?,
            5 => 4,
            other => return Err(FieldError::BadWireType(other)),
        };
        let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or(FieldError::Truncated)?;
        pos = end;
        // `number` fits in u32: it is at most MAX_FIELD.
        fields.entry(number as u32).or_default().extend_from_slice(&buf[start..end]);
    }
    Ok(fields)
}

/// A field-level change from one encoding of a message to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPatch {
    /// Records of the fields that changed to a non-empty value.
    pub set: Vec<u8>,
    /// Numbers of the fields that became empty, ascending.
    pub cleared: Vec<u32>,
}

impl FieldPatch {
    /// True when the two encodings were equal.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.cleared.is_empty()
    }
}

/// The change that turns encoding `old` into encoding `new`.
///
/// # Errors
/// When either buffer is not a well-formed protobuf encoding.
pub fn diff(old: &[u8], new: &[u8]) -> Result<FieldPatch, FieldError> {
    let old = group(old)?;
    let new = group(new)?;
    let mut patch = FieldPatch::default();
    for (number, records) in &new {
        if old.get(number) != Some(records) {
            patch.set.extend_from_slice(records);
        }
    }
    patch.cleared = old.keys().filter(|n| !new.contains_key(n)).copied().collect();
    Ok(patch)
}

/// Applies a patch to the encoding `old`: the fields in `set` replace the
/// old ones, the fields in `cleared` are dropped. The result has its fields
/// in ascending number order.
///
/// # Errors
/// When `old` or `patch.set` is not a well-formed protobuf encoding.
pub fn merge(old: &[u8], patch: &FieldPatch) -> Result<Vec<u8>, FieldError> {
    let mut fields = group(old)?;
    for number in &patch.cleared {
        fields.remove(number);
    }
    fields.extend(group(&patch.set)?);
    let mut out = Vec::with_capacity(old.len() + patch.set.len());
    for records in fields.values() {
        out.extend_from_slice(records);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb;
    use prost::Message;

    fn container(name: &str, status: i32, exit: i32, labels: &[(&str, &str)]) -> pb::Container {
        pb::Container {
            id: vec![7; 32],
            name: name.into(),
            status,
            exit_code: exit,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            command: vec!["sh".into(), "-c".into(), "sleep 1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn equal_encodings_give_an_empty_patch() {
        let a = container("web", 2, 0, &[("a", "b")]).encode_to_vec();
        assert!(diff(&a, &a).unwrap().is_empty());
    }

    #[test]
    fn a_patch_carries_only_changed_fields() {
        let a = container("web", 2, 0, &[("a", "b")]);
        let b = container("web", 6, 137, &[("a", "b")]);
        let (ea, eb) = (a.encode_to_vec(), b.encode_to_vec());
        let patch = diff(&ea, &eb).unwrap();
        assert!(patch.cleared.is_empty());
        let only = pb::Container::decode(patch.set.as_slice()).unwrap();
        assert_eq!(only, pb::Container { status: 6, exit_code: 137, ..Default::default() });
        assert_eq!(merge(&ea, &patch).unwrap(), eb);
    }

    #[test]
    fn fields_that_become_empty_are_cleared() {
        let a = container("web", 6, 1, &[("a", "b"), ("c", "d")]);
        let b = container("web", 2, 0, &[]);
        let (ea, eb) = (a.encode_to_vec(), b.encode_to_vec());
        let patch = diff(&ea, &eb).unwrap();
        assert_eq!(patch.cleared, vec![10, 15]);
        assert_eq!(merge(&ea, &patch).unwrap(), eb);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(group(&[0x80]), Err(FieldError::BadVarint));
        assert_eq!(group(&[0x0a, 0x05, 1]), Err(FieldError::Truncated));
        assert_eq!(group(&[0x0b]), Err(FieldError::BadWireType(3)));
        assert_eq!(group(&[0x00]), Err(FieldError::BadFieldNumber(0)));
        assert_eq!(
            group(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FieldError::Truncated)
        );
    }
}
