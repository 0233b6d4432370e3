//! The Portainer async agent's cost model, for side-by-side figures.
//!
//! Portainer's async Edge agent (2.23) sends its Docker snapshot as gzip'd
//! JSON: on first contact the whole snapshot (containers with their inspect
//! `Env`, images, volumes, networks, info, version); afterwards an RFC 6902
//! JSON Patch against the previous snapshot, gzip'd. This module rebuilds
//! those bodies from the same engine responses tern's state is built from.

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use serde_json::{Map, Value};

use crate::fixture::RawJson;

/// The snapshot document Portainer's agent would build from these responses.
pub fn snapshot(json: &RawJson) -> Value {
    let containers: Vec<Value> = json
        .containers_list
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let mut c = c.clone();
                    let env = json
                        .inspects
                        .iter()
                        .find(|i| i.get("Id") == c.get("Id"))
                        .and_then(|i| i.pointer("/Config/Env"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    if let Some(obj) = c.as_object_mut() {
                        obj.insert("Env".into(), env);
                    }
                    c
                })
                .collect()
        })
        .unwrap_or_default();
    let mut raw = Map::new();
    raw.insert("Containers".into(), Value::Array(containers));
    raw.insert("Volumes".into(), json.volumes.clone());
    raw.insert("Networks".into(), json.networks.clone());
    raw.insert("Images".into(), json.images.clone());
    raw.insert("Info".into(), json.info.clone());
    raw.insert("Version".into(), json.version.clone());
    Value::Object(raw)
}

/// gzip at level 9, as Portainer's agent compresses its bodies.
pub fn gzip9(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Bytes of the first-contact body: the gzip'd snapshot.
pub fn full_bytes(snapshot: &Value) -> usize {
    gzip9(&serde_json::to_vec(snapshot).expect("a Value serializes")).len()
}

/// Bytes of a later snapshot body: the gzip'd RFC 6902 patch from `prev`.
pub fn patch_bytes(prev: &Value, current: &Value) -> usize {
    let patch = json_patch::diff(prev, current);
    gzip9(&serde_json::to_vec(&patch).expect("a patch serializes")).len()
}
