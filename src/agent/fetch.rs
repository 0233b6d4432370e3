//! Fetching an image from the server as a transfer (`image.fetch`): the
//! layers the host lacks, each as a delta against a layer it has, in
//! verified chunks, resumable after a link drop; then the image is rebuilt,
//! checked and loaded into the engine.
//!
//! 1. **Offer**: the image's config and layers (`diff_id`s, sizes). The
//!    config's sha256 must be the image id the command named.
//! 2. **Plan**: the agent says which of those layers the host has and the
//!    layer lists of its images of the same repository (the bases); the
//!    server answers with a payload per missing layer and its chunks'
//!    blake3 names.
//! 3. **Disk**: the free space is checked before a byte is fetched.
//! 4. **Download**, on a connection of its own: each payload from the first
//!    chunk not yet on disk; each chunk is checked against its name before
//!    it is kept (a wrong one is fetched again), so a link drop costs at
//!    most the chunk in flight. The download window and rate cap are the
//!    server's to enforce; a "wait until" is slept.
//! 5. **Rebuild**: each base layer is read out of `docker save` of a host
//!    image that has it; each layer is decoded and its sha256 must be its
//!    `diff_id`, else the payload is discarded and the command fails.
//! 6. **Load**: an archive in `docker save`'s format goes to the engine
//!    (`POST /images/load`), holding the layers the host's layer store does
//!    not have at their place; the image must then exist under its id.
//!    Nothing partial is ever loaded: the archive is written only from
//!    checked layers, and the engine checks every `diff_id` again.
//!
//! Work files live in `DATA_PATH/transfers/` and go once the image is
//! loaded (payloads stay until then, so a restart resumes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use crate::auth::{CounterReservation, Secret, open_reply, seal_request};
use crate::tls::{TlsOptions, Trust};
use crate::transfer::{CHUNK_SIZE, decode};
use crate::wire::poll::ImageFetch;
use crate::wire::transfer::{
    Digest, Offer, Piece, TransferReply, TransferRequest, digest_bytes, digest_text, transfer_key,
};

use super::client::Client;

/// How long a download may go without a byte of progress before the
/// command fails (the link is down for longer than a field site's
/// outages usually last; the operator can ask again, and it resumes).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A stalled download (no byte for this long) is cut and resumed.
pub const STALL: Duration = Duration::from_secs(60);

/// Counters reserved at a time on the transfer lane.
const COUNTER_BLOCK: u64 = 64;

/// A chunk that arrives wrong this many times in a row fails the command.
const BAD_CHUNK_TRIES: u32 = 4;

/// The largest sealed reply read whole (a plan of the most pieces).
const MAX_REPLY: usize = 4 << 20;

/// What the agent needs to reach the server for transfers.
#[derive(Debug)]
pub struct Fetcher {
    url: String,
    trust: Trust,
    tls: TlsOptions,
    environment: u64,
    key: Secret,
    key_id: String,
    dir: PathBuf,
    counters: std::sync::Mutex<CounterReservation>,
    /// One transfer at a time: a second waits.
    lane: tokio::sync::Mutex<()>,
    /// Backoff bounds between attempts (shortened by tests).
    pub backoff: (Duration, Duration),
    /// The site's HTTP proxy, if the agent goes through one.
    proxy: Option<super::proxy::Proxy>,
}

/// How a step failed: worth another try (the link), or not.
#[derive(Debug)]
enum Failure {
    Link(String),
    Fatal(String),
    Wait(i64),
}

impl From<super::client::ClientError> for Failure {
    fn from(e: super::client::ClientError) -> Self {
        Failure::Link(e.to_string())
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn hex(d: &Digest) -> String {
    digest_text(d)["sha256:".len()..].to_owned()
}

fn sha256_of(bytes: &[u8]) -> Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("32 bytes")
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed struct of the right type.
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fails, saying so, when `dir`'s file system has less than `need` bytes
/// free (before a byte is fetched).
fn check_disk(dir: &Path, need: u64) -> Result<(), String> {
    match free_bytes(dir) {
        Some(free) if free < need => Err(format!(
            "not enough disk for the transfer in {}: it needs {need} B, {free} B are free; nothing was fetched",
            dir.display()
        )),
        _ => Ok(()),
    }
}

impl Fetcher {
    /// A fetcher for the server at `url`, as the environment whose poll key
    /// is `poll_key`; work files under `data/transfers`.
    ///
    /// # Errors
    /// When the work directory cannot be made.
    pub fn new(
        url: &str,
        trust: Trust,
        tls: TlsOptions,
        environment: u64,
        poll_key: &Secret,
        key_id: &str,
        data: &Path,
    ) -> std::io::Result<Self> {
        let dir = data.join("transfers");
        std::fs::create_dir_all(&dir)?;
        let end = std::fs::read_to_string(dir.join("counter"))
            .ok()
            .and_then(|t| {
                let (id, end) = t.trim().split_once(' ')?;
                (id == key_id).then(|| end.parse().ok()).flatten()
            })
            .unwrap_or(0);
        Ok(Self {
            url: url.to_owned(),
            trust,
            tls,
            environment,
            key: transfer_key(poll_key),
            key_id: key_id.to_owned(),
            dir,
            counters: std::sync::Mutex::new(CounterReservation::resume(end, COUNTER_BLOCK)),
            lane: tokio::sync::Mutex::new(()),
            backoff: (Duration::from_secs(2), Duration::from_secs(300)),
            proxy: None,
        })
    }

    /// Fetches through the site's HTTP proxy, as polls go.
    #[must_use]
    pub fn with_proxy(mut self, proxy: Option<super::proxy::Proxy>) -> Self {
        self.proxy = proxy;
        self
    }

    fn save_counter(&self, end: u64) -> Result<(), Failure> {
        let path = self.dir.join("counter");
        let tmp = self.dir.join("counter.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{} {end}", self.key_id)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Failure::Fatal(format!("the transfer counter cannot be kept on disk: {e}")))
    }

    fn next_counter(&self) -> Result<u64, Failure> {
        let (counter, reserve) = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(end) = reserve {
            self.save_counter(end)?;
        }
        Ok(counter)
    }

    fn jump_above(&self, last: u64) -> Result<(), Failure> {
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.next() <= last {
            *c = CounterReservation::resume(last, COUNTER_BLOCK);
        }
        Ok(())
    }

    fn client(&self) -> Result<Client, Failure> {
        let mut client =
            Client::with_tls(&self.url, self.trust, self.tls, MAX_REPLY).map_err(|e| Failure::Fatal(e.to_string()))?;
        client.set_proxy(self.proxy.clone());
        Ok(client)
    }

    /// A sealed request, and its sealed reply.
    async fn ask(&self, client: &mut Client, request: &TransferRequest) -> Result<TransferReply, Failure> {
        for _ in 0..2 {
            let counter = self.next_counter()?;
            let wire = seal_request(self.environment, counter, &self.key, &request.encode());
            let (status, bytes) = client.post(crate::wire::TRANSFER_PATH, wire).await?;
            let reply = self.open(counter, status, &bytes)?;
            match reply {
                TransferReply::Replayed(last) => self.jump_above(last)?,
                TransferReply::Error(e) => return Err(Failure::Fatal(format!("the server: {e}"))),
                TransferReply::WaitUntil(t) => return Err(Failure::Wait(t)),
                other => return Ok(other),
            }
        }
        Err(Failure::Fatal("the server refused the transfer counter twice".into()))
    }

    fn open(&self, counter: u64, status: u16, bytes: &[u8]) -> Result<TransferReply, Failure> {
        let body = open_reply(counter, &self.key, bytes).map_err(|_| {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            match status {
                401 => Failure::Fatal("the server does not know this agent's key for transfers".into()),
                // A proxy's or a server's passing trouble.
                500..=599 | 408 | 429 => Failure::Link(format!("HTTP {status} {text:?}")),
                _ => Failure::Fatal(format!("an unsealed HTTP {status} reply {text:?}")),
            }
        })?;
        TransferReply::decode(body).map_err(|e| Failure::Fatal(format!("the server's reply: {e}")))
    }

    /// Runs an `image.fetch` command; its output says what the link carried.
    ///
    /// # Errors
    /// Why it failed, for the operator.
    pub async fn fetch(&self, docker: &Docker, f: &ImageFetch) -> Result<Vec<u8>, String> {
        let _one = self.lane.lock().await;
        if docker.inspect_image(&f.image_id).await.is_ok() {
            tag(docker, &f.image_id, &f.reference).await?;
            return Ok(format!("{} is already on this host; tagged {}", f.image_id, f.reference).into_bytes());
        }
        let mut client = self.client().map_err(text)?;
        let mut carried = 0u64;
        let r = self.fetch_with(docker, &mut client, f, &mut carried).await;
        client.close().await;
        let (up, down) = client.wire.get();
        match r {
            Ok(summary) => Ok(format!("{summary}; the link carried {} B up, {} B down", up, down).into_bytes()),
            Err(e) => Err(format!("{e} (the link carried {up} B up, {down} B down)")),
        }
    }

    async fn fetch_with(
        &self,
        docker: &Docker,
        client: &mut Client,
        f: &ImageFetch,
        carried: &mut u64,
    ) -> Result<String, String> {
        let image_id = &f.image_id;
        let mut retry = self.retry();
        let offer = loop {
            match self.offer(client, image_id).await {
                Ok(o) => break o,
                Err(f) => retry.pause(client, f).await?,
            }
        };
        let host = host_images(docker).await?;
        let present: BTreeSet<Digest> = host.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        let have: Vec<u32> =
            offer.layers.iter().enumerate().filter(|(_, (d, _))| present.contains(d)).map(|(i, _)| i as u32).collect();
        let repo = crate::registry::repository_of(&f.reference);
        let repo_images: Vec<Vec<Digest>> = host
            .iter()
            .filter(|(tags, _)| tags.iter().any(|t| crate::registry::repository_of(t) == repo))
            .map(|(_, l)| l.clone())
            .take(crate::wire::transfer::MAX_REPO_IMAGES)
            .collect();
        let request = TransferRequest::Plan { image_id: image_id.clone(), have, repo_images };
        let mut retry = self.retry();
        let pieces = loop {
            match self.ask(client, &request).await {
                Ok(TransferReply::Plan { pieces, .. }) => break pieces,
                Ok(_) => return Err("the server answered a plan with something else".into()),
                Err(f) => retry.pause(client, f).await?,
            }
        };
        // Disk: what is left to fetch, the rebuilt layers and the archive
        // (each at most the layers' size), and the bases read out.
        let left: u64 = pieces.iter().map(|p| p.payload_len.saturating_sub(self.on_disk(&p.payload))).sum::<u64>();
        let layers_len: u64 = offer.layers.iter().map(|(_, s)| *s).sum();
        check_disk(&self.dir, left + 2 * layers_len)?;
        for piece in &pieces {
            let got = self.download(client, piece).await?;
            *carried += got;
        }
        let payload_bytes: u64 = pieces.iter().map(|p| p.payload_len).sum();
        let skipped = offer.layers.len() - pieces.len();
        self.rebuild_and_load(docker, f, &offer, &pieces, &host).await?;
        for p in &pieces {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.zst", p.payload)));
        }
        Ok(format!(
            "loaded {} as {}: {} layers, {skipped} already here, {} fetched as {payload_bytes} B of payload",
            f.image_id,
            f.reference,
            offer.layers.len(),
            pieces.len()
        ))
    }

    async fn offer(&self, client: &mut Client, image_id: &str) -> Result<Offer, Failure> {
        let reply = self.ask(client, &TransferRequest::Offer { image_id: image_id.to_owned() }).await?;
        let TransferReply::Offer(offer) = reply else {
            return Err(Failure::Fatal("the server answered an offer with something else".into()));
        };
        if digest_text(&sha256_of(&offer.config)) != image_id {
            return Err(Failure::Fatal("the server's image config does not match the image id".into()));
        }
        let config: serde_json::Value =
            serde_json::from_slice(&offer.config).map_err(|e| Failure::Fatal(format!("the image config: {e}")))?;
        let diff_ids: Vec<Option<Digest>> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().map(|d| d.as_str().and_then(digest_bytes)).collect())
            .unwrap_or_default();
        if diff_ids.len() != offer.layers.len() || diff_ids.iter().zip(&offer.layers).any(|(a, (b, _))| *a != Some(*b))
        {
            return Err(Failure::Fatal("the server's layers are not the image config's".into()));
        }
        Ok(offer)
    }

    fn retry(&self) -> Retry {
        use backon::BackoffBuilder;
        Retry {
            since: tokio::time::Instant::now(),
            backoff: backon::ExponentialBuilder::default()
                .with_min_delay(self.backoff.0)
                .with_max_delay(self.backoff.1)
                .with_jitter()
                .without_max_times()
                .build(),
            max: self.backoff.1,
        }
    }

    fn on_disk(&self, payload: &str) -> u64 {
        let done = self.dir.join(format!("{payload}.zst"));
        let part = self.dir.join(format!("{payload}.part"));
        std::fs::metadata(&done).or_else(|_| std::fs::metadata(&part)).map_or(0, |m| m.len())
    }

    /// Fetches one payload to `<name>.zst`, resuming a `.part`; returns the
    /// payload bytes received in this run.
    async fn download(&self, client: &mut Client, piece: &Piece) -> Result<u64, String> {
        let done = self.dir.join(format!("{}.zst", piece.payload));
        if std::fs::metadata(&done).is_ok_and(|m| m.len() == piece.payload_len) {
            return Ok(0);
        }
        let part = self.dir.join(format!("{}.part", piece.payload));
        let mut have = verified_prefix(&part, piece).map_err(|e| format!("{}: {e}", part.display()))?;
        let start = have;
        let mut bad = (u64::MAX, 0u32);
        let mut retry = self.retry();
        let on_disk = || std::fs::metadata(&part).map_or(0, |m| m.len());
        while have < piece.payload_len {
            let before = on_disk();
            let r = self.stream_into(client, piece, &part, &mut have).await;
            if on_disk() > before {
                // Progress: the backoff starts again from its shortest.
                retry = self.retry();
            }
            match r {
                Ok(()) => {}
                Err(Failure::Link(e)) if e.starts_with("chunk ") => {
                    let i = have / CHUNK_SIZE as u64;
                    bad = if bad.0 == i { (i, bad.1 + 1) } else { (i, 1) };
                    if bad.1 >= BAD_CHUNK_TRIES {
                        return Err(format!("{e}, {BAD_CHUNK_TRIES} times: the transfer failed"));
                    }
                    tracing::warn!("{e}: refused, fetching it again");
                    client.disconnect();
                }
                Err(f) => {
                    if let Failure::Link(e) = &f {
                        tracing::info!("transfer of {}: {e} at {have} of {} B", piece.payload, piece.payload_len);
                    }
                    retry.pause(client, f).await?;
                }
            }
        }
        std::fs::rename(&part, &done).map_err(|e| format!("{}: {e}", done.display()))?;
        Ok(have - start)
    }

    /// One request for a payload, from the end of what `part` holds: `*have`
    /// bytes of whole chunks that checked out, then the start of the next
    /// chunk (kept across a cut, so a cut costs only its reconnection).
    /// Every byte is appended as it arrives; each chunk is checked once
    /// whole, and one that does not match is cut off again.
    async fn stream_into(
        &self,
        client: &mut Client,
        piece: &Piece,
        part: &Path,
        have: &mut u64,
    ) -> Result<(), Failure> {
        let fatal = |e: std::io::Error| Failure::Fatal(format!("{}: {e}", part.display()));
        let chunk_len = |at: u64| (piece.payload_len - at).min(CHUNK_SIZE as u64) as usize;
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(part).map_err(fatal)?;
        // The chunk begun before: its bytes so far.
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
        {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(*have)).map_err(fatal)?;
            (&mut file).take(chunk_len(*have) as u64).read_to_end(&mut buf).map_err(fatal)?;
            if buf.len() >= chunk_len(*have) {
                // Cannot be (a whole chunk is checked before it counts): start it again.
                buf.clear();
                file.set_len(*have).map_err(fatal)?;
            }
        }
        let counter = self.next_counter()?;
        let offset = *have + buf.len() as u64;
        let request = TransferRequest::Payload { payload: piece.payload.clone(), offset };
        let wire = seal_request(self.environment, counter, &self.key, &request.encode());
        let (status, mut body) = client.post_streaming(crate::wire::TRANSFER_PATH, wire).await?;
        if status != 200 {
            let bytes = tokio::time::timeout(STALL, http_body_util::Limited::new(body, MAX_REPLY).collect())
                .await
                .map_err(|_| Failure::Link("a refusal came too slowly".into()))?
                .map_err(|e| Failure::Link(e.to_string()))?
                .to_bytes();
            return match self.open(counter, status, &bytes)? {
                TransferReply::Replayed(last) => self.jump_above(last),
                TransferReply::WaitUntil(t) => Err(Failure::Wait(t)),
                TransferReply::Error(e) => Err(Failure::Fatal(format!("the server: {e}"))),
                _ => Err(Failure::Fatal("the server answered a payload request with something else".into())),
            };
        }
        loop {
            let frame = match tokio::time::timeout(STALL, body.frame()).await {
                Err(_) => return Err(Failure::Link(format!("no byte for {} s", STALL.as_secs()))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Failure::Link(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            let room = (piece.payload_len - *have) as usize - buf.len();
            if data.len() > room {
                return Err(Failure::Fatal("the server sent more than the payload's length".into()));
            }
            file.write_all(&data).map_err(fatal)?;
            buf.extend_from_slice(&data);
            while *have < piece.payload_len && buf.len() >= chunk_len(*have) {
                let n = chunk_len(*have);
                let i = *have / CHUNK_SIZE as u64;
                if !crate::transfer::is_chunk(&buf[..n], &piece.chunks[i as usize]) {
                    file.set_len(*have).map_err(fatal)?;
                    return Err(Failure::Link(format!("chunk {i} of {} does not match its hash", piece.payload)));
                }
                buf.drain(..n);
                *have += n as u64;
            }
            if *have >= piece.payload_len {
                break;
            }
        }
        file.sync_data().map_err(fatal)?;
        if *have < piece.payload_len {
            return Err(Failure::Link("the payload stopped short".into()));
        }
        Ok(())
    }

    async fn rebuild_and_load(
        &self,
        docker: &Docker,
        f: &ImageFetch,
        offer: &Offer,
        pieces: &[Piece],
        host: &[(Vec<String>, Vec<Digest>)],
    ) -> Result<(), String> {
        let target: Vec<Digest> = offer.layers.iter().map(|(d, _)| *d).collect();
        // The longest prefix of the image's layers some host image has at
        // the same place: the engine's layer store has that chain, and
        // `docker load` does not read those layers' files.
        let chained =
            host.iter().map(|(_, l)| l.iter().zip(&target).take_while(|(a, b)| a == b).count()).max().unwrap_or(0);
        let delivered: BTreeMap<u32, &Piece> = pieces.iter().map(|p| (p.layer, p)).collect();
        // Layers to read out of the host: the bases, and the layers past the
        // chain that the host has elsewhere (skipped by the plan).
        let mut wanted: BTreeSet<Digest> = pieces.iter().filter_map(|p| p.base).collect();
        for (i, d) in target.iter().enumerate().skip(chained) {
            if !delivered.contains_key(&(i as u32)) {
                wanted.insert(*d);
            }
        }
        let work = self.dir.join(format!("{}.work", hex(&sha256_of(f.image_id.as_bytes()))));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let r = async {
            export_layers(docker, host, &wanted, &work).await?;
            let archive = work.join("load.tar");
            let (dir, work2, offer, f2) = (self.dir.clone(), work.clone(), offer.clone(), f.clone());
            let pieces: Vec<Piece> = pieces.to_vec();
            tokio::task::spawn_blocking(move || write_archive(&dir, &work2, &offer, &pieces, chained, &f2, &archive))
                .await
                .map_err(|e| e.to_string())??;
            load(docker, &work.join("load.tar")).await?;
            docker
                .inspect_image(&f.image_id)
                .await
                .map_err(|e| format!("the engine loaded the archive but has no image {}: {e}", f.image_id))?;
            tag(docker, &f.image_id, &f.reference).await
        }
        .await;
        let _ = std::fs::remove_dir_all(&work);
        r
    }
}

/// Waits between attempts: out a closed window, or by backoff after a
/// link failure, until [`GIVE_UP_AFTER`] without progress.
struct Retry {
    since: tokio::time::Instant,
    backoff: backon::ExponentialBackoff,
    max: Duration,
}

impl Retry {
    async fn pause(&mut self, client: &mut Client, failure: Failure) -> Result<(), String> {
        client.disconnect();
        match failure {
            Failure::Fatal(e) => Err(e),
            Failure::Wait(at) => {
                let secs = (at - now_unix()).clamp(1, 24 * 3600) as u64;
                tracing::info!("the download window opens in {secs} s; waiting");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                self.since = tokio::time::Instant::now();
                Ok(())
            }
            Failure::Link(e) => {
                if self.since.elapsed() > GIVE_UP_AFTER {
                    return Err(format!("no progress for {} h: {e}", GIVE_UP_AFTER.as_secs() / 3600));
                }
                let wait = self.backoff.next().unwrap_or(self.max);
                tracing::info!("transfer: {e}; trying again in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }
}

fn text(f: Failure) -> String {
    match f {
        Failure::Link(e) | Failure::Fatal(e) => e,
        Failure::Wait(t) => format!("the download window opens at {t}"),
    }
}

/// The bytes of `part` that are whole chunks matching their names. A
/// chunk cut short (the link dropped, the agent stopped) stays after them,
/// to be finished; the file is cut at the first whole chunk that does not
/// match (damaged on disk, or half-written when the host lost power),
/// which is fetched again.
fn verified_prefix(part: &Path, piece: &Piece) -> std::io::Result<u64> {
    let Ok(mut file) = std::fs::File::open(part) else { return Ok(0) };
    let len = file.metadata()?.len().min(piece.payload_len);
    let mut good = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut keep = len;
    for name in &piece.chunks {
        let n = (piece.payload_len - good).min(CHUNK_SIZE as u64);
        if good + n > len {
            break;
        }
        file.read_exact(&mut buf[..n as usize])?;
        if !crate::transfer::is_chunk(&buf[..n as usize], name) {
            keep = good;
            break;
        }
        good += n;
    }
    drop(file);
    std::fs::OpenOptions::new().write(true).open(part)?.set_len(keep)?;
    Ok(good)
}

/// The host's images: their tags and layers (`diff_id`s), bottom first.
async fn host_images(docker: &Docker) -> Result<Vec<(Vec<String>, Vec<Digest>)>, String> {
    let list = docker
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
        .map_err(|e| format!("the engine's images: {e}"))?;
    let mut out = Vec::with_capacity(list.len());
    for summary in list {
        let Ok(image) = docker.inspect_image(&summary.id).await else { continue };
        let layers =
            image.root_fs.and_then(|r| r.layers).unwrap_or_default().iter().filter_map(|l| digest_bytes(l)).collect();
        out.push((summary.repo_tags, layers));
    }
    Ok(out)
}

/// Reads the `wanted` layers out of `docker save` of host images that have
/// them, into `work/<hex>.tar`, each checked by its sha256 as it streams.
async fn export_layers(
    docker: &Docker,
    host: &[(Vec<String>, Vec<Digest>)],
    wanted: &BTreeSet<Digest>,
    work: &Path,
) -> Result<(), String> {
    let mut missing = wanted.clone();
    for (tags, layers) in host {
        if missing.is_empty() {
            break;
        }
        if !layers.iter().any(|l| missing.contains(l)) {
            continue;
        }
        // An image is saved by a tag or by its top layer's image id; the
        // tags are what `docker save` is sure to take.
        let Some(name) = tags.iter().find(|t| !t.contains("<none>")) else { continue };
        let stream = docker.export_image(name).map(|r| r.map_err(std::io::Error::other));
        let reader = tokio_util::io::StreamReader::new(stream);
        let (want, dir) = (missing.clone(), work.to_path_buf());
        let found = tokio::task::spawn_blocking(move || {
            let bridge = tokio_util::io::SyncIoBridge::new(reader);
            read_layers(bridge, &want, &dir)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading `docker save {name}`: {e}"))?;
        for d in found {
            missing.remove(&d);
        }
    }
    if let Some(d) = missing.first() {
        return Err(format!("the host's layer {} could not be read out of the engine", digest_text(d)));
    }
    Ok(())
}

/// The entries of a `docker save` archive whose sha256 is wanted, written
/// to `dir/<hex>.tar`. Works on both the legacy layout (`<id>/layer.tar`)
/// and the OCI one (`blobs/sha256/<hex>`): an entry is named by its hash.
fn read_layers(archive: impl Read, wanted: &BTreeSet<Digest>, dir: &Path) -> std::io::Result<Vec<Digest>> {
    let mut found = Vec::new();
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular || entry.size() < 1024 {
            continue;
        }
        let tmp = dir.join("entry.tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        drop(out);
        let d: Digest = ctx.finish().as_ref().try_into().expect("32 bytes");
        if wanted.contains(&d) && !found.contains(&d) {
            std::fs::rename(&tmp, dir.join(format!("{}.tar", hex(&d))))?;
            found.push(d);
        } else {
            std::fs::remove_file(&tmp)?;
        }
    }
    Ok(found)
}

/// Decodes every piece against its base, checks each layer's sha256, and
/// writes the archive `docker load` takes.
fn write_archive(
    payloads: &Path,
    work: &Path,
    offer: &Offer,
    pieces: &[Piece],
    chained: usize,
    f: &ImageFetch,
    archive: &Path,
) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut tar =
        tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(archive).map_err(|e| io(archive, e))?));
    let append = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| -> Result<(), String> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).map_err(|e| format!("the archive: {e}"))
    };
    let mut names = Vec::with_capacity(offer.layers.len());
    for (i, (d, len)) in offer.layers.iter().enumerate() {
        let name = format!("{}/layer.tar", hex(d));
        names.push(name.clone());
        if i < chained {
            continue;
        }
        let bytes = match pieces.iter().find(|p| p.layer as usize == i) {
            Some(p) => {
                let payload_path = payloads.join(format!("{}.zst", p.payload));
                let payload = std::fs::read(&payload_path).map_err(|e| io(&payload_path, e))?;
                let base = match &p.base {
                    Some(b) => {
                        let path = work.join(format!("{}.tar", hex(b)));
                        std::fs::read(&path).map_err(|e| io(&path, e))?
                    }
                    None => Vec::new(),
                };
                let layer = decode(&base, &payload, *len);
                let ok = layer.as_ref().is_ok_and(|l| sha256_of(l) == *d);
                if !ok {
                    // Discarded: asked again, it is fetched again whole.
                    let _ = std::fs::remove_file(&payload_path);
                    let why = layer.err().map_or_else(|| "another digest".to_owned(), |e| e.to_string());
                    return Err(format!(
                        "layer {} did not rebuild ({why}); the transfer was discarded and nothing was loaded",
                        digest_text(d)
                    ));
                }
                layer.unwrap_or_default()
            }
            None => {
                let path = work.join(format!("{}.tar", hex(d)));
                std::fs::read(&path).map_err(|e| io(&path, e))?
            }
        };
        append(&mut tar, &name, &bytes)?;
    }
    let config_name = format!("{}.json", hex(&sha256_of(&offer.config)));
    append(&mut tar, &config_name, &offer.config)?;
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [f.reference], "Layers": names }]);
    append(&mut tar, "manifest.json", manifest.to_string().as_bytes())?;
    tar.into_inner().and_then(|mut w| w.flush().map(|()| w)).map_err(|e| format!("the archive: {e}"))?;
    Ok(())
}

/// `docker load` of the archive, streamed from disk.
async fn load(docker: &Docker, archive: &Path) -> Result<(), String> {
    let file = tokio::fs::File::open(archive).await.map_err(|e| format!("{}: {e}", archive.display()))?;
    let body = tokio_util::io::ReaderStream::new(file);
    let options = bollard::query_parameters::ImportImageOptions { quiet: true, ..Default::default() };
    let mut progress = docker.import_image_stream(options, body, None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| format!("the engine refused the image: {e}"))?;
    }
    Ok(())
}

async fn tag(docker: &Docker, image_id: &str, reference: &str) -> Result<(), String> {
    let (repo, tag) = match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (reference, "latest"),
    };
    let options = bollard::query_parameters::TagImageOptions { repo: Some(repo.to_owned()), tag: Some(tag.to_owned()) };
    docker.tag_image(image_id, Some(options)).await.map_err(|e| format!("tagging {reference}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_transfer_that_does_not_fit_on_the_disk_fails_before_it_starts() {
        let d = dir("disk");
        assert!(check_disk(&d, 1).is_ok());
        let e = check_disk(&d, u64::MAX / 2).unwrap_err();
        assert!(e.contains("not enough disk") && e.contains("nothing was fetched"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_chunk_on_disk_is_cut_and_fetched_again_and_one_cut_short_is_finished() {
        let d = dir("prefix");
        let payload: Vec<u8> = (0..CHUNK_SIZE * 2 + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let piece = Piece {
            layer: 0,
            base: None,
            payload: "whole-x".into(),
            payload_len: payload.len() as u64,
            chunks: crate::transfer::chunk_names(&payload),
        };
        let part = d.join("whole-x.part");
        // Two whole chunks and half of the last one: the half stays, to be
        // finished.
        std::fs::write(&part, &payload[..CHUNK_SIZE * 2 + 500]).unwrap();
        assert_eq!(verified_prefix(&part, &piece).unwrap(), 2 * CHUNK_SIZE as u64);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 2 * CHUNK_SIZE as u64 + 500);
        // A flipped byte in the second chunk: only the first stays.
        let mut damaged = payload.clone();
        damaged[CHUNK_SIZE + 10] ^= 1;
        std::fs::write(&part, &damaged).unwrap();
        assert_eq!(verified_prefix(&part, &piece).unwrap(), CHUNK_SIZE as u64);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), CHUNK_SIZE as u64);
        // All of it, whole: kept.
        std::fs::write(&part, &payload).unwrap();
        assert_eq!(verified_prefix(&part, &piece).unwrap(), payload.len() as u64);
        assert_eq!(verified_prefix(&d.join("none.part"), &piece).unwrap(), 0, "nothing yet");
        let _ = std::fs::remove_dir_all(&d);
    }
}
