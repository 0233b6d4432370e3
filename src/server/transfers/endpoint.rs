//! The transfer endpoint, `POST /t` (`wire::transfer`): an agent asks what
//! an image is made of (offer), what its host needs of it (plan), and
//! fetches the payloads from an offset (a resumed download picks up at the
//! first chunk it lacks).
//!
//! Requests are sealed as polls are, under the environment's transfer key
//! and counter (a lane of their own: a download beside the polls never
//! makes a poll look replayed). Replies are sealed, except a payload's
//! bytes: the agent checks those chunk by chunk against the names of the
//! sealed plan. A payload is sent at the environment's rate cap, and only
//! inside its download window (else a sealed "wait until").

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode};
use bytes::Bytes;

use crate::auth::{RequestEnvelope, Secret, seal_reply};
use crate::server::http::AppState;
use crate::server::store::StoreError;
use crate::wire::transfer::{Offer, Piece, TransferReply, TransferRequest, digest_bytes, digest_text, transfer_key};

/// The largest transfer request: a plan naming the most images of the most
/// layers, with room for the envelope.
pub const MAX_REQUEST: usize =
    crate::wire::transfer::MAX_REPO_IMAGES * crate::wire::transfer::MAX_LAYERS * 32 + (64 << 10);

/// What a payload is sent in, between rate-cap pauses.
const SEND_PIECE: usize = 16 << 10;

/// Serializes payload builds: 500 agents asking for the same step at once
/// wait for one build, then all find it built.
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn plain(code: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = code;
    r
}

fn sealed(code: StatusCode, counter: u64, key: &Secret, reply: &TransferReply) -> Response<Body> {
    let mut r = Response::new(Body::from(seal_reply(counter, key, &reply.encode())));
    *r.status_mut() = code;
    r
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The endpoint.
pub async fn handler(
    State(state): State<Arc<AppState>>,
    meter: Option<axum::Extension<Arc<crate::meter::ConnMeter>>>,
    request: axum::extract::Request,
) -> Response<Body> {
    let Ok(wire) = axum::body::to_bytes(request.into_body(), MAX_REQUEST).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "a transfer request is at most 576 KiB");
    };
    let Ok(envelope) = RequestEnvelope::parse(&wire) else { return plain(StatusCode::UNAUTHORIZED, "") };
    let environment = envelope.environment;
    // Authenticate on a read: the key, the lane's counter.
    let shared = state.clone();
    let looked = tokio::task::spawn_blocking(move || {
        shared.read_store(|s| -> Result<_, StoreError> {
            let env = s.environment(environment)?;
            let (counter, rate, window) = s.transfer_limits(environment)?;
            Ok((env.secret.with_agent_secret(s.agent_secret()?.as_deref()), counter, rate, window))
        })
    })
    .await;
    let (key, last, rate, window) = match looked {
        Ok(Ok((poll_key, last, rate, window))) => (transfer_key(&poll_key), last, rate, window),
        Ok(Err(StoreError::NotFound(_))) => return plain(StatusCode::UNAUTHORIZED, ""),
        _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, ""),
    };
    let counter = envelope.counter;
    match envelope.verify(&key, last) {
        Ok(()) => {}
        Err(crate::auth::AuthError::Replay { last, .. }) => {
            return sealed(StatusCode::CONFLICT, counter, &key, &TransferReply::Replayed(last));
        }
        Err(_) => return plain(StatusCode::UNAUTHORIZED, ""),
    }
    let shared = state.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        shared.with_store(|s| {
            if !s.accept_transfer(environment, counter)? {
                // A replay that raced past the read, or no agent bound.
                let bound = s.environment(environment)?.edge_id.is_some();
                return Ok::<_, StoreError>(Err(bound
                    .then(|| s.transfer_limits(environment))
                    .transpose()?
                    .map(|l| l.0)));
            }
            let meter = meter.as_ref().map(|m| &*m.0);
            super::super::api::usage::charge_poll(meter, &shared, Some(environment), None, now());
            Ok(Ok(()))
        })
    })
    .await;
    match accepted {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(Some(last)))) => return sealed(StatusCode::CONFLICT, counter, &key, &TransferReply::Replayed(last)),
        Ok(Ok(Err(None))) => {
            let why = TransferReply::Error("no agent has polled as this environment yet".into());
            return sealed(StatusCode::CONFLICT, counter, &key, &why);
        }
        _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, ""),
    }
    let request = match TransferRequest::decode(envelope.body) {
        Ok(r) => r,
        Err(e) => return sealed(StatusCode::BAD_REQUEST, counter, &key, &TransferReply::Error(e.to_string())),
    };
    let fail = |code, text: String| sealed(code, counter, &key, &TransferReply::Error(text));
    match request {
        TransferRequest::Offer { image_id } => match offer(&state, &image_id).await {
            Ok(o) => sealed(StatusCode::OK, counter, &key, &TransferReply::Offer(o)),
            Err((code, text)) => fail(code, text),
        },
        TransferRequest::Plan { image_id, have, repo_images } => {
            match plan(&state, &image_id, &have, &repo_images).await {
                Ok(pieces) => sealed(StatusCode::OK, counter, &key, &TransferReply::Plan { pieces, rate }),
                Err((code, text)) => fail(code, text),
            }
        }
        TransferRequest::Payload { payload, offset } => {
            if let Some(at) = super::window_opens(&window, now()) {
                return sealed(StatusCode::SERVICE_UNAVAILABLE, counter, &key, &TransferReply::WaitUntil(at));
            }
            let path = state.data.join(super::TRANSFERS).join(format!("{payload}.zst"));
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(_) => return fail(StatusCode::NOT_FOUND, format!("no payload {payload}")),
            };
            let len = match file.metadata().await {
                Ok(m) => m.len(),
                Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            if offset > len {
                return fail(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("offset {offset} past the payload's {len} bytes"),
                );
            }
            stream(file, offset, len, rate).await
        }
    }
}

type Failure = (StatusCode, String);

async fn held(state: &Arc<AppState>, image_id: &str) -> Result<crate::server::store::images::ImageRecord, Failure> {
    let shared = state.clone();
    let id = image_id.to_owned();
    match tokio::task::spawn_blocking(move || shared.read_store(|s| s.held_image(&id))).await {
        Ok(Ok(Some(image))) => Ok(image),
        Ok(Ok(None)) => Err((StatusCode::NOT_FOUND, format!("the server does not hold image {image_id}"))),
        _ => Err((StatusCode::INTERNAL_SERVER_ERROR, "the database failed".into())),
    }
}

async fn offer(state: &Arc<AppState>, image_id: &str) -> Result<Offer, Failure> {
    let image = held(state, image_id).await?;
    let data = state.data.clone();
    let id = image_id.to_owned();
    tokio::task::spawn_blocking(move || {
        let gone = |what: &str| (StatusCode::GONE, format!("the server lost {what} of image {id}"));
        let config = crate::server::images::blob_path(&data, &id)
            .and_then(|p| std::fs::read(p).ok())
            .ok_or_else(|| gone("the config"))?;
        let layers = image
            .layers
            .iter()
            .map(|l| {
                let size = crate::server::images::blob_path(&data, l)
                    .and_then(|p| std::fs::metadata(p).ok())
                    .ok_or_else(|| gone("a layer"))?
                    .len();
                Ok((digest_bytes(l).ok_or_else(|| gone("a layer's name"))?, size))
            })
            .collect::<Result<_, Failure>>()?;
        Ok(Offer { config, layers })
    })
    .await
    .unwrap_or_else(|_| Err((StatusCode::INTERNAL_SERVER_ERROR, "the offer failed".into())))
}

async fn plan(
    state: &Arc<AppState>,
    image_id: &str,
    have: &[u32],
    repo_images: &[Vec<crate::wire::transfer::Digest>],
) -> Result<Vec<Piece>, Failure> {
    let image = held(state, image_id).await?;
    let host_layers = have
        .iter()
        .map(|&i| image.layers.get(i as usize).cloned())
        .collect::<Option<_>>()
        .ok_or((StatusCode::BAD_REQUEST, "a layer index past the image's layers".into()))?;
    let host_images: Vec<Vec<String>> = repo_images.iter().map(|l| l.iter().map(digest_text).collect()).collect();
    let data = state.data.clone();
    let _one_build = BUILDING.lock().await;
    let planned = tokio::task::spawn_blocking(move || {
        super::plan(&data, &image, &host_layers, &host_images).map(|p| (p, image.layers))
    })
    .await
    .unwrap_or_else(|_| Err("the plan failed".into()));
    let (plan, layers) = planned.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    if plan.built > 0 {
        tracing::info!(image = %image_id, built = plan.built, bytes = plan.payload_bytes(), "transfer payloads built");
    }
    Ok(plan
        .pieces
        .into_iter()
        .map(|p| Piece {
            layer: layers.iter().position(|l| *l == p.layer).unwrap_or_default() as u32,
            base: p.base.as_deref().and_then(digest_bytes),
            payload: p.payload.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            payload_len: p.payload_len,
            chunks: p.chunks,
        })
        .collect())
}

/// A payload's bytes from `offset`, at most `rate` bytes a second (0: as
/// fast as the link goes).
async fn stream(file: tokio::fs::File, offset: u64, len: u64, rate: u64) -> Response<Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = file;
    if let Err(e) = file.seek(std::io::SeekFrom::Start(offset)).await {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let start = Instant::now();
    let body = futures_util::stream::unfold((file, 0u64, len - offset), move |(mut file, sent, left)| async move {
        if left == 0 {
            return None;
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let want = SEND_PIECE.min(usize::try_from(left).unwrap_or(SEND_PIECE));
        let mut buf = vec![0u8; want];
        match file.read_exact(&mut buf).await {
            Ok(_) => Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (file, sent + want as u64, left - want as u64))),
            Err(e) => Some((Err(e), (file, sent, 0))),
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(axum::http::header::CONTENT_LENGTH, (len - offset).into());
    r
}
