//! Transfers: what a host needs to get an image the server holds, given the
//! layers it has. Layers the host has are skipped; each other layer goes as
//! a delta against the most similar layer the host has and the server
//! holds (`tern_proto::transfer`), else compressed whole. A payload is
//! built once per (base, target) pair and kept in the data directory
//! (`transfers/`), so the 500 hosts that need the same step cost one
//! computation; it is cut into blake3-named chunks, which the agent
//! fetches and checks one by one.
//!
//! **The base.** For a layer at position *i* of the new image, the
//! candidates are the layers at position *i* of the images of the same
//! repository that the host has (the previous versions: a rebuilt
//! application layer sits where it sat), else any layer of those images;
//! the [`TRIED`] closest in size are kept. One candidate is the base. Of
//! several, size says little (two versions of a layer are often the same
//! size to the byte), so the delta is built against each and the smallest
//! wins; the choice is kept (`<layer>-<candidates>.base`), so the next host
//! with the same candidates costs nothing, and the losing payloads built
//! for it are deleted. A layer nothing resembles is sent whole.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::server::images::blob_path;
use crate::server::store::images::ImageRecord;
use crate::transfer;

pub mod endpoint;

/// Where payloads go, under the data directory.
pub const TRANSFERS: &str = "transfers";

/// A download window: a deploy window's format
/// ([`crate::server::domain::windows`]: `HH:MM-HH:MM`, in UTC unless an
/// offset follows, wrapping midnight when it ends before it starts); the
/// empty text is "any time". Returns it as the window.
///
/// # Errors
/// Text that is not that, or a window of no length.
pub fn parse_window(text: &str) -> Result<Option<crate::server::domain::windows::Window>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    crate::server::domain::windows::Window::parse(text).map(Some)
}

/// When the window opens next, if it is closed at `now` (unix seconds);
/// `None` while it is open, or for no window (or one that does not parse:
/// the API refuses those before they are kept).
#[must_use]
pub fn window_opens(window: &str, now: i64) -> Option<i64> {
    let w = parse_window(window).ok()??;
    crate::server::domain::windows::next_open(&[w], now).filter(|t| *t != now)
}

/// One layer's part of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The layer it makes (`diff_id`).
    pub layer: String,
    /// The host's layer it is a delta against, if any.
    pub base: Option<String>,
    /// The layer's size (its tar), which decoding must produce exactly.
    pub len: u64,
    /// The payload's file.
    pub payload: PathBuf,
    /// The payload's size: what the link carries.
    pub payload_len: u64,
    /// The payload's chunks' names.
    pub chunks: Vec<[u8; 32]>,
}

/// What a host needs for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The image (`sha256:` of its config).
    pub image_id: String,
    /// Layers the host has already.
    pub skipped: Vec<String>,
    /// The others, bottom first.
    pub pieces: Vec<Piece>,
    /// Payloads this plan had to compute (0 when every one was built
    /// before, for another host).
    pub built: usize,
}

impl Plan {
    /// The bytes the link carries for it (payloads; the manifest and the
    /// chunk requests come on top).
    #[must_use]
    pub fn payload_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.payload_len).sum()
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// How many candidate bases a layer's delta is built against, at most.
pub const TRIED: usize = 3;

/// The candidate bases for layer `i` (of `len` bytes) among the host's
/// images of the same repository (their layer lists), by the rule in the
/// module doc: closest in size first, then by digest, so the order is the
/// same whatever order the host listed its images in.
fn candidates(data: &Path, i: usize, len: u64, host_images: &[Vec<String>], layer: &str) -> Vec<String> {
    let size = |l: &String| blob_path(data, l).and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let closest = |candidates: Vec<&String>| {
        let mut c: Vec<(u64, String)> = candidates
            .into_iter()
            .filter(|l| *l != layer)
            .filter_map(|l| size(l).map(|s| (s.abs_diff(len), l.clone())))
            .collect();
        c.sort();
        c.dedup();
        c.into_iter().take(TRIED).map(|(_, l)| l).collect::<Vec<_>>()
    };
    let at_place = closest(host_images.iter().filter_map(|layers| layers.get(i)).collect());
    if at_place.is_empty() { closest(host_images.iter().flatten().collect()) } else { at_place }
}

/// A payload's name: its base (or `whole`) and its layer.
fn payload_name(base: Option<&str>, layer: &str) -> String {
    format!("{}-{}", base.map_or("whole", hex_of), hex_of(layer))
}

/// The payload that makes `layer` (at `target_path`) from `base`: read if
/// built before, else built and kept. Returns its bytes, its file and
/// whether this call built it.
fn payload(
    dir: &Path,
    data: &Path,
    base: Option<&str>,
    layer: &str,
    target_path: &Path,
) -> Result<(Vec<u8>, PathBuf, bool), String> {
    let name = payload_name(base, layer);
    let path = dir.join(format!("{name}.zst"));
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((bytes, path, false));
    }
    let target = std::fs::read(target_path).map_err(|e| format!("layer {layer}: {e}"))?;
    let base_bytes = match base {
        Some(b) => std::fs::read(blob_path(data, b).ok_or("base")?).map_err(|e| format!("layer {b}: {e}"))?,
        None => Vec::new(),
    };
    let bytes = transfer::encode(&base_bytes, &target).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((bytes, path, true))
}

/// The base `layer` goes against, of `candidates`, with its payload (see
/// the module doc). Returns (base, bytes, file, payloads built).
fn choose(
    dir: &Path,
    data: &Path,
    layer: &str,
    target_path: &Path,
    candidates: &[String],
) -> Result<(Option<String>, Vec<u8>, PathBuf, usize), String> {
    if candidates.len() <= 1 {
        let base = candidates.first().cloned();
        let (bytes, path, built) = payload(dir, data, base.as_deref(), layer, target_path)?;
        return Ok((base, bytes, path, usize::from(built)));
    }
    let set = blake3::hash(candidates.join(",").as_bytes()).to_hex();
    let choice = dir.join(format!("{}-{}.base", hex_of(layer), &set[..32]));
    if let Some(base) = std::fs::read_to_string(&choice).ok().filter(|b| candidates.contains(b)) {
        let (bytes, path, built) = payload(dir, data, Some(&base), layer, target_path)?;
        return Ok((Some(base), bytes, path, usize::from(built)));
    }
    let mut tried = Vec::new();
    for base in candidates {
        let (bytes, path, built) = payload(dir, data, Some(base), layer, target_path)?;
        tried.push((bytes.len(), base.clone(), bytes, path, built));
    }
    tried.sort_by_key(|t| t.0);
    let built = tried.iter().filter(|t| t.4).count();
    let mut tried = tried.into_iter();
    let (_, base, bytes, path, _) = tried.next().expect("two candidates or more");
    // The losers built now: no host was told of them.
    for (_, _, _, loser, fresh) in tried {
        if fresh {
            let _ = std::fs::remove_file(loser);
        }
    }
    let tmp = dir.join(format!("{}-{}.{}.tmp", hex_of(layer), &set[..32], std::process::id()));
    std::fs::write(&tmp, &base)
        .and_then(|()| std::fs::rename(&tmp, &choice))
        .map_err(|e| format!("{}: {e}", choice.display()))?;
    Ok((Some(base), bytes, path, built))
}

/// Plans (and builds, where not built yet) the transfer of `image` to a
/// host that has `host_layers`, whose images of the same repository that
/// the server holds have these layer lists (`host_images`).
///
/// # Errors
/// The disk's, or a layer the server does not hold.
pub fn plan(
    data: &Path,
    image: &ImageRecord,
    host_layers: &BTreeSet<String>,
    host_images: &[Vec<String>],
) -> Result<Plan, String> {
    let image_id = image.image_id.clone().ok_or_else(|| format!("image {} is not held", image.reference))?;
    let dir = data.join(TRANSFERS);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut plan = Plan { image_id, skipped: Vec::new(), pieces: Vec::new(), built: 0 };
    for (i, layer) in image.layers.iter().enumerate() {
        if host_layers.contains(layer) {
            plan.skipped.push(layer.clone());
            continue;
        }
        let target_path = blob_path(data, layer).ok_or_else(|| format!("layer {layer:?}"))?;
        let len = std::fs::metadata(&target_path).map_err(|e| format!("layer {layer}: {e}"))?.len();
        let candidates = candidates(data, i, len, host_images, layer);
        let (base, bytes, payload, built) = choose(&dir, data, layer, &target_path, &candidates)?;
        plan.built += built;
        plan.pieces.push(Piece {
            layer: layer.clone(),
            base,
            len,
            payload_len: bytes.len() as u64,
            chunks: transfer::chunk_names(&bytes),
            payload,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_open_inside_its_hours_and_says_when_it_opens_outside() {
        let day = 20_000 * 86_400;
        let at = |h: i64, m: i64| day + h * 3600 + m * 60;
        assert_eq!(window_opens("", at(12, 0)), None);
        assert_eq!(window_opens("01:00-05:00", at(3, 0)), None);
        assert_eq!(window_opens("01:00-05:00", at(0, 30)), Some(at(1, 0)));
        assert_eq!(window_opens("01:00-05:00", at(5, 0)), Some(at(25, 0)), "the end is outside");
        assert_eq!(window_opens("22:00-04:00", at(23, 0)), None, "wraps midnight");
        assert_eq!(window_opens("22:00-04:00", at(1, 0)), None);
        assert_eq!(window_opens("22:00-04:00", at(12, 0)), Some(at(22, 0)));
        for bad in ["1:00-5:00", "01:00", "25:00-01:00", "01:00-01:00", "ab:cd-01:00"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    fn digest(bytes: &[u8]) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    fn put(data: &Path, bytes: &[u8]) -> String {
        let d = digest(bytes);
        let p = blob_path(data, &d).unwrap();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        d
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn a_host_gets_only_what_it_lacks_as_deltas_built_once_for_every_host() {
        let data = std::env::temp_dir().join(format!("tern-transfers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let base_layer = noise(1 << 20, 1);
        let app_v1 = noise(2 << 20, 2);
        let mut app_v2 = app_v1.clone();
        app_v2[100_000..104_096].copy_from_slice(&noise(4096, 3));
        let fresh = noise(300_000, 4);
        let (l0, l1, l2, l3) = (put(&data, &base_layer), put(&data, &app_v1), put(&data, &app_v2), put(&data, &fresh));
        let v2 = ImageRecord {
            id: 2,
            reference: "10.0.0.5:5000/app:2".into(),
            status: "held".into(),
            error: String::new(),
            image_id: Some(put(&data, b"{\"config\":2}")),
            layers: vec![l0.clone(), l2.clone(), l3.clone()],
            size: 0,
            created_at: 0,
            updated_at: 0,
        };
        let host: BTreeSet<String> = [l0.clone(), l1.clone()].into();
        let v1_layers = vec![l0.clone(), l1.clone()];
        let plan = plan(&data, &v2, &host, std::slice::from_ref(&v1_layers)).unwrap();
        assert_eq!(plan.skipped, std::slice::from_ref(&l0));
        assert_eq!(plan.pieces.len(), 2);
        let app = &plan.pieces[0];
        assert_eq!(
            (app.layer.as_str(), app.base.as_deref()),
            (l2.as_str(), Some(l1.as_str())),
            "v1's layer at its place"
        );
        assert!(app.payload_len < 16 << 10, "a 4 KiB change: {} bytes", app.payload_len);
        let payload = std::fs::read(&app.payload).unwrap();
        assert_eq!(transfer::decode(&app_v1, &payload, app.len).unwrap(), app_v2);
        assert!(payload.chunks(transfer::CHUNK_SIZE).zip(&app.chunks).all(|(c, n)| transfer::is_chunk(c, n)));
        // The new layer has no counterpart: the closest in size (v1's base
        // layer) is tried, and whatever it is, it decodes to the layer.
        let new = &plan.pieces[1];
        let base_bytes = new.base.as_ref().map(|b| std::fs::read(blob_path(&data, b).unwrap()).unwrap());
        let decoded =
            transfer::decode(base_bytes.as_deref().unwrap_or(&[]), &std::fs::read(&new.payload).unwrap(), new.len);
        assert_eq!(decoded.unwrap(), fresh);
        // One delta for the application layer; for the new one, a delta
        // against each of the host's two layers (the smaller kept).
        assert_eq!(plan.built, 3);
        // Another host with the same layers: nothing computed again.
        let again = super::plan(&data, &v2, &host, &[v1_layers]).unwrap();
        assert_eq!((again.built, again.payload_bytes()), (0, plan.payload_bytes()));
        // A host with nothing: every layer whole.
        let bare = super::plan(&data, &v2, &BTreeSet::new(), &[]).unwrap();
        assert!(bare.skipped.is_empty() && bare.pieces.iter().all(|p| p.base.is_none()));
        assert!(bare.payload_bytes() > plan.payload_bytes());
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn of_two_bases_the_same_size_the_one_that_makes_the_smaller_delta_wins_in_any_order() {
        let data = std::env::temp_dir().join(format!("tern-transfers-choice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let v1 = noise(1 << 20, 11);
        let v3 = noise(1 << 20, 13);
        let mut v2 = v1.clone();
        v2[500_000..504_096].copy_from_slice(&noise(4096, 12));
        let (l1, l2, l3) = (put(&data, &v1), put(&data, &v2), put(&data, &v3));
        let image = ImageRecord {
            id: 2,
            reference: "10.0.0.5:5000/app:2".into(),
            status: "held".into(),
            error: String::new(),
            image_id: Some(put(&data, b"{\"config\":2}")),
            layers: vec![l2.clone()],
            size: 0,
            created_at: 0,
            updated_at: 0,
        };
        let host: BTreeSet<String> = [l1.clone(), l3.clone()].into();
        let first = plan(&data, &image, &host, &[vec![l3.clone()], vec![l1.clone()]]).unwrap();
        assert_eq!(first.pieces[0].base.as_deref(), Some(l1.as_str()), "the version it was made from");
        assert_eq!(first.built, 2, "a delta against each");
        assert!(first.payload_bytes() < 16 << 10, "{}", first.payload_bytes());
        let loser = data.join(TRANSFERS).join(format!("{}.zst", payload_name(Some(&l3), &l2)));
        assert!(!loser.exists(), "the losing payload is not kept");
        // The host listing its images the other way round: the same base,
        // from the choice kept, nothing computed.
        let again = plan(&data, &image, &host, &[vec![l1.clone()], vec![l3.clone()]]).unwrap();
        assert_eq!((again.pieces[0].base.as_deref(), again.built), (Some(l1.as_str()), 0));
        // Its payload gone: built again against the same base.
        std::fs::remove_file(&again.pieces[0].payload).unwrap();
        let rebuilt = plan(&data, &image, &host, &[vec![l3], vec![l1.clone()]]).unwrap();
        assert_eq!((rebuilt.pieces[0].base.as_deref(), rebuilt.built), (Some(l1.as_str()), 1));
        let _ = std::fs::remove_dir_all(&data);
    }
}
