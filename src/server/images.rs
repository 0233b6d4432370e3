//! Images the server holds: pulled from a registry (with the registry's
//! credentials, `domain::registries`) by a maintained OCI client
//! (`oci-client`), and kept in a content-addressed blob store in the data
//! directory, `images/sha256/<hex>`: each layer as the uncompressed tar its
//! `diff_id` names (verified while it is written), the config by the image
//! id. A layer shared by several images is stored and fetched once. These
//! are what transfers to the edge are built from (deltas against the
//! layers a host has: `tern_proto::transfer`).
//!
//! Registries on loopback are spoken to over plain HTTP, as the Docker
//! engine does (`127.0.0.0/8` is an insecure registry by default); every
//! other one over HTTPS.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// Where the blobs go, under the data directory.
pub const BLOBS: &str = "images/sha256";

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `sha256:...` of the config: the image id the engine shows.
    pub image_id: String,
    /// The layers' `diff_id`s, bottom first.
    pub layers: Vec<String>,
    /// The layers' bytes, uncompressed.
    pub size: u64,
}

/// The blob store of a data directory.
#[must_use]
pub fn blobs(data: &Path) -> PathBuf {
    data.join(BLOBS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of a blob by its `sha256:<hex>` digest, if well formed.
#[must_use]
pub fn blob_path(data: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| blobs(data).join(hex))
}

/// Whether a registry is spoken to over plain HTTP: loopback only.
fn insecure(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Pulls `reference` into the blob store of `data`, with `auth` (user,
/// password) when given.
///
/// # Errors
/// What the operator reads: the registry's refusal, a digest that does not
/// match, the disk's error. Nothing half-written stays in the store.
pub async fn pull(data: &Path, reference: &str, auth: Option<(String, String)>) -> Result<Pulled, String> {
    // reqwest's rustls takes the process's provider: ring, as the server's
    // own TLS (installed once; a second install changes nothing).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image: Reference = reference.parse().map_err(|e| format!("{reference:?}: {e}"))?;
    let registry = image.resolve_registry().to_owned();
    let protocol =
        if insecure(&registry) { ClientProtocol::HttpsExcept(vec![registry.clone()]) } else { ClientProtocol::Https };
    let client = Client::new(ClientConfig { protocol, ..ClientConfig::default() });
    let auth = auth.map_or(RegistryAuth::Anonymous, |(u, p)| RegistryAuth::Basic(u, p));
    let (manifest, _digest, config) =
        client.pull_manifest_and_config(&image, &auth).await.map_err(|e| format!("{registry}: {e}"))?;
    let parsed: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("the image's config: {e}"))?;
    let diff_ids: Vec<String> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "the image's config names {} layers, its manifest {}",
            diff_ids.len(),
            manifest.layers.len()
        ));
    }
    let dir = blobs(data);
    tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut size = 0;
    for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        let path = blob_path(data, diff_id).ok_or_else(|| format!("a layer's diff_id {diff_id:?} is not sha256"))?;
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            size += meta.len();
            continue;
        }
        size += fetch_layer(&client, &image, layer, &path, diff_id).await?;
    }
    let image_id = format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, config.as_bytes()).as_ref()));
    let config_path = blob_path(data, &image_id).ok_or("the config's digest")?;
    write_atomic(&config_path, config.as_bytes()).await?;
    Ok(Pulled { image_id, layers: diff_ids, size })
}

/// Fetches one layer (as the registry sends it: gzip'd tar, or plain tar),
/// writes its uncompressed tar to `path` if its sha256 is `diff_id`.
async fn fetch_layer(
    client: &Client,
    image: &Reference,
    layer: &oci_client::manifest::OciDescriptor,
    path: &Path,
    diff_id: &str,
) -> Result<u64, String> {
    let fetched = path.with_extension("fetched");
    let unpacked = path.with_extension("tar");
    let cleanup = || async {
        let _ = tokio::fs::remove_file(&fetched).await;
        let _ = tokio::fs::remove_file(&unpacked).await;
    };
    let r = async {
        let file = tokio::fs::File::create(&fetched).await.map_err(|e| format!("{}: {e}", fetched.display()))?;
        client.pull_blob(image, layer, file).await.map_err(|e| format!("layer {}: {e}", layer.digest))?;
        let input = BufReader::new(tokio::fs::File::open(&fetched).await.map_err(|e| e.to_string())?);
        let mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if layer.media_type.contains("gzip") {
            Box::new(async_compression::tokio::bufread::GzipDecoder::new(input))
        } else {
            Box::new(input)
        };
        let mut out = tokio::fs::File::create(&unpacked).await.map_err(|e| format!("{}: {e}", unpacked.display()))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| format!("layer {}: {e}", layer.digest))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
            len += n as u64;
        }
        out.sync_all().await.map_err(|e| e.to_string())?;
        let got = format!("sha256:{}", hex(hash.finish().as_ref()));
        if got != diff_id {
            return Err(format!("layer {}: its tar is {got}, not the {diff_id} the image names", layer.digest));
        }
        tokio::fs::rename(&unpacked, path).await.map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(len)
    }
    .await;
    cleanup().await;
    r
}

/// Writes `bytes` to `path` whole or not at all (its directory made).
///
/// # Errors
/// The disk's.
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await.map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_well_formed_digests_only() {
        let d = Path::new("/data");
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(blob_path(d, &good).unwrap(), Path::new("/data/images/sha256").join("a".repeat(64)));
        for bad in ["sha256:../../etc/passwd", "sha256:ABC", "md5:abc", &format!("sha256:{}", "A".repeat(64))] {
            assert!(blob_path(d, bad).is_none(), "{bad}");
        }
        assert!(insecure("127.0.0.1:5000") && insecure("localhost:5000") && !insecure("registry.example.com"));
    }
}
