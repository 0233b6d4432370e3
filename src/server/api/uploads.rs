//! Images uploaded from an operator's engine (`tern image push`), for
//! images that are in no registry the server can reach.
//!
//! An upload is resumable, as a transfer to the edge is: the operator's
//! link may be slow too. The CLI asks which layers the server lacks (and
//! how much of each upload it kept), sends each missing layer's tar
//! zstd-compressed in pieces of at most [`PIECE`] bytes appended at an
//! offset the server checks, then says it is whole: the server decodes it,
//! at most the size the CLI declared (no decompression bomb fills the
//! disk), checks its sha256 against the layer's `diff_id`, and only then
//! puts it in the blob store. Last, the image's config (its sha256 is the
//! image id) makes it held, once every layer it names is there.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/images/blobs/missing` | `{digests}` → `{missing: [{digest, have}]}` |
//! | `PATCH /api/images/blobs/{digest}?offset=N` | a piece of the layer's zstd stream, appended at `N` (409 elsewhere) |
//! | `POST /api/images/blobs/{digest}/done` | `{size}`: decode, check, keep (422 and the upload discarded if it does not match) |
//! | `POST /api/images/push` | `{reference, config}` → 201, the image held |

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

use super::types::{BlobDone, BlobQuery, HeldImageView, MissingBlob, MissingBlobs, PushImage};
use super::{ApiError, ApiJson, with_store};
use crate::server::http::{AppState, now};
use crate::server::images::blob_path;
use crate::wire::transfer::{MAX_CONFIG, MAX_LAYERS};

/// Where uploads under way are kept, under the data directory.
pub const UPLOADS: &str = "images/uploads";

/// The most bytes one piece carries.
pub const PIECE: usize = 2 << 20;

/// The largest layer an upload may be (uncompressed, and compressed).
pub const MAX_LAYER: u64 = 64 << 30;

/// One upload changes at a time: an append checks the offset, then writes.
static UPLOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bad_digest(digest: &str) -> ApiError {
    ApiError::invalid(format!(
        "digest: {:?} is not a layer digest (sha256: and 64 lowercase hex digits)",
        digest.chars().take(80).collect::<String>()
    ))
}

fn upload_path(data: &Path, digest: &str) -> Option<PathBuf> {
    let blob = blob_path(data, digest)?;
    let hex = blob.file_name()?.to_str()?.to_owned();
    Some(data.join(UPLOADS).join(format!("{hex}.zst")))
}

fn io(e: std::io::Error) -> ApiError {
    tracing::error!("image upload: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the server's disk: {e}"))
}

/// `POST /api/images/blobs/missing`.
pub async fn missing(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<BlobQuery>,
) -> Result<Json<MissingBlobs>, ApiError> {
    if body.digests.len() > MAX_LAYERS {
        return Err(ApiError::invalid(format!("digests: at most {MAX_LAYERS}")));
    }
    let mut missing = Vec::new();
    for digest in body.digests {
        let blob = blob_path(&state.data, &digest).ok_or_else(|| bad_digest(&digest))?;
        if blob.exists() {
            continue;
        }
        let have = upload_path(&state.data, &digest).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        missing.push(MissingBlob { digest, have });
    }
    Ok(Json(MissingBlobs { missing }))
}

/// `?offset=N`.
#[derive(Debug, serde::Deserialize)]
pub struct Offset {
    offset: u64,
}

/// `PATCH /api/images/blobs/{digest}?offset=N`.
pub async fn append(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(digest): axum::extract::Path<String>,
    query: Result<axum::extract::Query<Offset>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<MissingBlob>, ApiError> {
    let axum::extract::Query(Offset { offset }) =
        query.map_err(|_| ApiError::bad_request("offset: ?offset=N, the bytes of the upload the server has"))?;
    let path = upload_path(&state.data, &digest).ok_or_else(|| bad_digest(&digest))?;
    if body.len() > PIECE {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("a piece is at most {PIECE} bytes")));
    }
    let _one = UPLOADING.lock().await;
    let have = std::fs::metadata(&path).map_or(0, |m| m.len());
    if offset != have {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("offset {offset}: the server has {have} bytes of this upload; send from there"),
        ));
    }
    if have + body.len() as u64 > MAX_LAYER {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("a layer is at most {MAX_LAYER} bytes")));
    }
    let dir = state.data.join(UPLOADS);
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if let Err(e) = f.write_all(&body).and_then(|()| f.sync_data()) {
            // Nothing half-written stays: cut back to where it was.
            let _ = f.set_len(have);
            return Err(e);
        }
        Ok(have + body.len() as u64)
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(io)?;
    Ok(Json(MissingBlob { digest, have: written }))
}

/// Decodes an upload into the blob store if it is the layer it says.
fn keep(data: &Path, digest: &str, size: u64) -> Result<(), String> {
    let upload = upload_path(data, digest).ok_or("digest")?;
    let blob = blob_path(data, digest).ok_or("digest")?;
    let tmp = blob.with_extension("upload");
    let r = (|| -> Result<(), String> {
        std::fs::create_dir_all(blob.parent().ok_or("blob dir")?).map_err(|e| e.to_string())?;
        let file = std::fs::File::open(&upload).map_err(|_| "nothing was uploaded for it".to_owned())?;
        let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| e.to_string())?;
        // One byte past the declared size tells a longer stream.
        let mut input = decoder.take(size + 1);
        let mut out = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(|e| format!("it does not decode as zstd: {e}"))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            len += n as u64;
        }
        if len != size {
            return Err(format!(
                "it decodes to {}, not the {size} bytes declared",
                if len > size { "more" } else { "fewer" }
            ));
        }
        let got = super::view::hex(hash.finish().as_ref());
        if format!("sha256:{got}") != digest {
            return Err(format!("its tar is sha256:{got}, not {digest}"));
        }
        out.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &blob).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&upload);
    r
}

/// `POST /api/images/blobs/{digest}/done`.
pub async fn done(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(digest): axum::extract::Path<String>,
    ApiJson(body): ApiJson<BlobDone>,
) -> Result<StatusCode, ApiError> {
    let blob = blob_path(&state.data, &digest).ok_or_else(|| bad_digest(&digest))?;
    if body.size > MAX_LAYER {
        return Err(ApiError::invalid(format!("size: a layer is at most {MAX_LAYER} bytes")));
    }
    let _one = UPLOADING.lock().await;
    if blob.exists() {
        if let Some(p) = upload_path(&state.data, &digest) {
            let _ = std::fs::remove_file(p);
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    let data = state.data.clone();
    let kept = digest.clone();
    tokio::task::spawn_blocking(move || keep(&data, &kept, body.size))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| ApiError::invalid(format!("layer {digest}: {e}; the upload was discarded, send it again")))?;
    Ok(StatusCode::CREATED)
}

/// `POST /api/images/push`.
pub async fn push(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<PushImage>,
) -> Result<(StatusCode, Json<HeldImageView>), ApiError> {
    let reference = super::images::check_reference(&body.reference)?;
    if body.config.len() > MAX_CONFIG {
        return Err(ApiError::invalid(format!("config: at most {MAX_CONFIG} bytes")));
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&body.config).map_err(|e| ApiError::invalid(format!("config: not JSON: {e}")))?;
    let layers: Vec<String> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| ApiError::invalid("config: no rootfs.diff_ids: not an image config"))?
        .iter()
        .map(|d| d.as_str().map(str::to_owned).ok_or_else(|| ApiError::invalid("config: a diff_id is not text")))
        .collect::<Result<_, _>>()?;
    if layers.len() > MAX_LAYERS {
        return Err(ApiError::invalid(format!("config: at most {MAX_LAYERS} layers")));
    }
    let mut size = 0;
    for l in &layers {
        let blob = blob_path(&state.data, l).ok_or_else(|| bad_digest(l))?;
        size += std::fs::metadata(&blob)
            .map_err(|_| ApiError::invalid(format!("config: layer {l} is not on the server: upload it first")))?
            .len();
    }
    let image_id = format!(
        "sha256:{}",
        super::view::hex(ring::digest::digest(&ring::digest::SHA256, body.config.as_bytes()).as_ref())
    );
    let config = blob_path(&state.data, &image_id).ok_or_else(ApiError::internal)?;
    crate::server::images::write_atomic(&config, body.config.as_bytes())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let asked = reference.clone();
    let v = with_store(&state, move |tx| {
        let (id, under_way) = tx.request_image(&asked, now())?;
        if under_way {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("reference: a pull of {asked} is under way; wait for it, then push"),
            ));
        }
        tx.image_held(id, &image_id, &layers, size, now())?;
        tx.image(id)?.ok_or_else(ApiError::internal)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(super::images::view(v))))
}
