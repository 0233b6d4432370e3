//! Loads the engine recordings in `tests/fixtures/` (made by
//! `scripts/make-fixtures.sh` against a real engine): a manifest of steps,
//! each naming the raw API responses recorded after one event. The responses
//! are stored gzip'd, byte for byte as the engine sent them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use tern::agent::RawSnapshot;

/// Why a recording could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file is not the JSON it should be.
    #[error("parsing {path}: {source}")]
    Json {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    description: String,
    steps: Vec<ManifestStep>,
}

#[derive(Deserialize)]
struct ManifestStep {
    event: String,
    containers: Vec<String>,
    containers_list: String,
    images: String,
    volumes: String,
    networks: String,
    info: String,
    version: String,
}

/// One recorded step: the host after an event.
#[derive(Debug, Clone)]
pub struct Step {
    /// What happened ("baseline", "restart shop-api-1", ...).
    pub event: String,
    /// The engine's responses, typed.
    pub raw: RawSnapshot,
    /// The engine's responses as JSON, as Portainer's agent would send them.
    pub json: RawJson,
}

/// The untyped engine responses of one step.
#[derive(Debug, Clone)]
pub struct RawJson {
    /// `/containers/{id}/json` for each container.
    pub inspects: Vec<Value>,
    /// `/containers/json?all=1`.
    pub containers_list: Value,
    /// `/images/json`.
    pub images: Value,
    /// `/volumes`.
    pub volumes: Value,
    /// `/networks`.
    pub networks: Value,
    /// `/info`.
    pub info: Value,
    /// `/version`.
    pub version: Value,
}

/// A whole recording.
#[derive(Debug, Clone)]
pub struct Recording {
    /// What host this is.
    pub description: String,
    /// Steps in order.
    pub steps: Vec<Step>,
}

/// The `tests/fixtures` directory of this source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Reads a JSON file; `.gz` files (the stored engine responses) are
/// decompressed first.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FixtureError> {
    let io = |source| FixtureError::Io { path: path.into(), source };
    let mut bytes = std::fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes.as_slice()), &mut raw).map_err(io)?;
        bytes = raw;
    }
    serde_json::from_slice(&bytes).map_err(|source| FixtureError::Json { path: path.into(), source })
}

/// Loads `<dir>/<name>.json` and the objects it names.
///
/// # Errors
/// When a file is missing or not the expected JSON.
pub fn load(dir: &Path, name: &str) -> Result<Recording, FixtureError> {
    let manifest: Manifest = read_json(&dir.join(format!("{name}.json")))?;
    let objects = dir.join("objects");
    let obj = |f: &str| read_json::<Value>(&objects.join(f));
    fn typed<T: serde::de::DeserializeOwned>(objects: &Path, v: &Value, f: &str) -> Result<T, FixtureError> {
        serde_json::from_value(v.clone()).map_err(|source| FixtureError::Json { path: objects.join(f), source })
    }
    let mut steps = Vec::with_capacity(manifest.steps.len());
    for s in manifest.steps {
        let inspects = s.containers.iter().map(|f| obj(f)).collect::<Result<Vec<_>, _>>()?;
        let json = RawJson {
            containers_list: obj(&s.containers_list)?,
            images: obj(&s.images)?,
            volumes: obj(&s.volumes)?,
            networks: obj(&s.networks)?,
            info: obj(&s.info)?,
            version: obj(&s.version)?,
            inspects,
        };
        let raw = RawSnapshot {
            containers: json
                .inspects
                .iter()
                .zip(&s.containers)
                .map(|(v, f)| typed(&objects, v, f))
                .collect::<Result<_, _>>()?,
            images: typed(&objects, &json.images, &s.images)?,
            volumes: typed::<Option<Vec<_>>>(
                &objects,
                json.volumes.get("Volumes").unwrap_or(&Value::Null),
                &s.volumes,
            )?
            .unwrap_or_default(),
            networks: typed(&objects, &json.networks, &s.networks)?,
            info: typed(&objects, &json.info, &s.info)?,
            version: typed(&objects, &json.version, &s.version)?,
        };
        steps.push(Step { event: s.event, raw, json });
    }
    Ok(Recording { description: manifest.description, steps })
}
