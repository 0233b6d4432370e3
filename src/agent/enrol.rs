//! A device deployed with a fleet join token asks to join, and waits in
//! the server's waiting room until it is admitted (see `crate::enrol` for
//! the exchange and why it is safe, `server::domain::admission` for the
//! rules).
//!
//! What it keeps in `DATA_PATH/enrol.json`: the token's id (a new token
//! starts over), its device key, its request counter, and once admitted,
//! the environment it is. A restart after admission sends nothing here: it
//! polls as that environment straight away.
//!
//! While it waits it asks once an interval (the server says which: its
//! default ping interval), with a request of about 40 bytes; its health
//! record says it is waiting. A refusal (the token expired, used up or
//! revoked; its EDGE_ID taken) or a rejection is written to the health
//! record with the server's words, and asked about again rarely.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::{Client, ClientError};
use super::config::Fleet;
use super::health::Recorder;
use super::store::{Store, StoreError};
use crate::auth::{JoinToken, Secret, open_reply, seal_request};
use crate::enrol::{Description, ENROL_PATH, EnrolReply, EnrolRequest, EnrolState, admitted_secret, device_mac_key};

/// The start of the health record's mode while the device waits.
pub const WAITING: &str = "waiting for admission";

/// The start of its mode when it was refused or rejected.
pub const NOT_ADMITTED: &str = "not admitted";

/// The file in DATA_PATH.
pub const FILE: &str = "enrol.json";

/// How long a device waits when the server gave no interval.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long a refused or rejected device waits before it asks again: an
/// operator may forget it or lift the cause, and asking 24 times a day
/// costs a few KB.
pub const REFUSED_WAIT: Duration = Duration::from_secs(3600);

/// Backoff while the server cannot be reached: 2 s doubling to 10 min,
/// full jitter (as polls back off).
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    /// The fleet token's key id.
    token: String,
    /// The device key, hex.
    device_key: String,
    /// The last counter used.
    counter: u64,
    /// The environment it was admitted as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environment: Option<u64>,
}

/// Why a request did not get an answer the device can trust.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The connection or HTTP failed.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The data directory.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// An answer other than a sealed reply.
    #[error("{0}")]
    Refused(String),
    /// The server does not know the device by its key: it describes
    /// itself next.
    #[error("the server does not know this device (forgotten?): it describes itself again")]
    Unknown,
    /// A reply whose seal does not match: not the server the token names.
    #[error("a reply that is not sealed with the fleet token's key (a server other than the token's, or altered)")]
    BadSeal,
}

/// The device's side of enrolment.
#[derive(Debug)]
pub struct Enrolment {
    fleet: Fleet,
    key: Secret,
    dir: PathBuf,
    saved: Saved,
    device_key: [u8; 32],
    edge_id: String,
    description: Description,
    /// The server has the description (sent on this run).
    described: bool,
    /// The number the server gave it, to ask by (0: none yet).
    device: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Enrolment {
    /// Opens the enrolment kept in `store` for this token, or starts one
    /// with a new device key (written before it is used).
    ///
    /// # Errors
    /// When the file cannot be read or written, or no randomness is had.
    pub fn open(
        store: &Store,
        fleet: &Fleet,
        agent_secret: Option<&str>,
        edge_id: &str,
        mut description: Description,
    ) -> Result<Self, StoreError> {
        let dir = store.dir().to_owned();
        let path = dir.join(FILE);
        let corrupt = |why: String| StoreError::Corrupt { path: path.clone(), why };
        let saved: Saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| corrupt(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let key_id = fleet.token.key_id();
        let (saved, device_key) = match unhex(&saved.device_key) {
            Some(k) if saved.token == key_id => (saved, k),
            _ => {
                let mut k = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| corrupt("no randomness for a device key".into()))?;
                let fresh = Saved { token: key_id, device_key: hex(&k), counter: 0, environment: None };
                Self::save_to(&dir, &fresh)?;
                (fresh, k)
            }
        };
        description.device_key = device_key;
        description.group.clone_from(&fleet.group);
        description.tags.clone_from(&fleet.tags);
        Ok(Self {
            fleet: fleet.clone(),
            key: fleet.token.secret.with_agent_secret(agent_secret),
            dir,
            saved,
            device_key,
            edge_id: edge_id.to_owned(),
            description,
            described: false,
            device: 0,
        })
    }

    fn save_to(dir: &std::path::Path, saved: &Saved) -> Result<(), StoreError> {
        super::store::write_atomic(&dir.join(FILE), &serde_json::to_vec(saved).expect("serializable"))
    }

    /// The environment's join token, once admitted.
    pub fn admitted(&self) -> Option<JoinToken> {
        self.saved.environment.map(|environment| JoinToken {
            url: self.fleet.token.url.clone(),
            environment,
            secret: admitted_secret(&self.device_key, self.fleet.token.id, &self.edge_id),
            cert_sha256: self.fleet.token.cert_sha256,
        })
    }

    /// Asks once.
    ///
    /// # Errors
    /// [`AskError`].
    pub async fn ask(&mut self, client: &mut Client) -> Result<EnrolReply, AskError> {
        // Written before it is used: a counter is never sent twice.
        let counter = self.saved.counter + 1;
        self.saved.counter = counter;
        Self::save_to(&self.dir, &self.saved)?;
        let describe = !self.described;
        let by_number = self.device != 0 && !describe;
        let request = EnrolRequest {
            edge_id: if by_number { String::new() } else { self.edge_id.clone() },
            device: if by_number { self.device } else { 0 },
            description: describe.then(|| self.description.clone()),
        };
        // Described: the token's key. Otherwise the device's own, so only
        // this device can ask about its entry (see `crate::enrol`).
        let key = if describe { self.key.clone() } else { device_mac_key(&self.key, &self.device_key) };
        let wire = seal_request(self.fleet.token.id, counter, &key, &request.encode());
        let (status, body) = client.post(ENROL_PATH, wire).await?;
        if status == 401 && !describe {
            // The server does not know this device by that key (it was
            // forgotten, or the server's data restored): it describes
            // itself on the next request.
            self.described = false;
            self.device = 0;
            return Err(AskError::Unknown);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
            return Err(AskError::Refused(match status {
                401 => "the server does not know this fleet join token, or AGENT_SECRET does not match the \
                        server's (401)"
                    .to_owned(),
                404 => "the server does not take fleet join tokens (404): it is older than this agent".to_owned(),
                409 => "the server saw this request's counter already (409)".to_owned(),
                _ if text.is_empty() => format!("the server answered {status}"),
                _ => format!("the server answered {status}: {text}"),
            }));
        }
        let body = open_reply(counter, &key, &body).map_err(|_| AskError::BadSeal)?;
        let reply =
            EnrolReply::decode(body).map_err(|e| AskError::Refused(format!("a reply that does not decode: {e}")))?;
        self.described = reply.state != EnrolState::Describe;
        if reply.state == EnrolState::Describe {
            self.device = 0;
        } else if reply.device != 0 {
            self.device = reply.device;
        }
        if let EnrolState::Admitted(environment) = reply.state {
            self.saved.environment = Some(environment);
            Self::save_to(&self.dir, &self.saved)?;
        }
        Ok(reply)
    }
}

/// What the device says of itself: the engine host's name, its version and
/// OS, this agent's version.
pub async fn describe(docker: &bollard::Docker) -> Description {
    let info = docker.info().await.ok();
    let hostname = info.as_ref().and_then(|i| i.name.clone()).unwrap_or_default();
    let engine = info.map_or_else(String::new, |i| {
        format!(
            "Docker {} ({}, {})",
            i.server_version.unwrap_or_default(),
            i.operating_system.unwrap_or_default(),
            i.architecture.unwrap_or_default()
        )
    });
    let clip = |s: String| super::run::clip(&s, crate::enrol::MAX_TEXT);
    Description {
        device_key: [0; 32],
        hostname: clip(hostname),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine: clip(engine),
        group: String::new(),
        tags: Vec::new(),
    }
}

/// Asks until the device is admitted; its environment's join token, or
/// `None` when `shutdown` came first. The health record says where it
/// stands all along.
///
/// # Errors
/// When the data directory fails.
pub async fn until_admitted(
    enrolment: &mut Enrolment,
    client: &mut Client,
    health: &mut Recorder,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Option<JoinToken>, StoreError> {
    if let Some(token) = enrolment.admitted() {
        return Ok(Some(token));
    }
    let mut failures = 0u32;
    let mut rng = fastrand::Rng::new();
    let mut told = String::new();
    loop {
        let (before_up, before_down) = client.wire.get();
        let wait = match enrolment.ask(client).await {
            Ok(reply) => {
                failures = 0;
                let (up, down) = client.wire.get();
                let interval = match reply.interval {
                    0 => DEFAULT_WAIT,
                    s => Duration::from_secs(u64::from(s)),
                };
                tracing::debug!(bytes_up = up - before_up, bytes_down = down - before_down, "asked to join");
                let now = crate::clock::unix_now();
                match reply.state {
                    EnrolState::Admitted(environment) => {
                        tracing::info!(environment, "admitted: this device is environment {environment}");
                        health.success(now);
                        return Ok(enrolment.admitted());
                    }
                    EnrolState::Describe => Duration::ZERO,
                    EnrolState::Pending => {
                        let mode = format!(
                            "{WAITING} (fleet join token {}, EDGE_ID {}); asking every {} s",
                            enrolment.fleet.token.id,
                            enrolment.edge_id,
                            interval.as_secs()
                        );
                        if told != mode {
                            tracing::info!(
                                bytes_up = up - before_up,
                                bytes_down = down - before_down,
                                "{mode}: an operator admits it in the waiting room (or a rule of the token does)"
                            );
                            told.clone_from(&mode);
                        }
                        health.success(now);
                        health.waiting(&mode, interval);
                        interval
                    }
                    EnrolState::Rejected(why) | EnrolState::Refused(why) => {
                        let wait = interval.max(REFUSED_WAIT);
                        let why = format!("not admitted: {why}; asking again in {} s", wait.as_secs());
                        tracing::warn!("{why}");
                        health.mode(NOT_ADMITTED);
                        health.failure(&why);
                        told.clear();
                        wait
                    }
                }
            }
            Err(AskError::Store(e)) => return Err(e),
            Err(AskError::Unknown) => {
                tracing::info!("{}", AskError::Unknown);
                Duration::from_secs(1)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let cap = BACKOFF_MIN.saturating_mul(1 << failures.min(16)).min(BACKOFF_MAX);
                let wait = Duration::from_millis(rng.u64(BACKOFF_MIN.as_millis() as u64..=cap.as_millis() as u64));
                let why = format!("asking to join: {e}");
                tracing::warn!("{why}; again in {} s", wait.as_secs());
                health.failure(&why);
                client.disconnect();
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.as_mut() => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            token: crate::enrol::FleetToken {
                url: "https://ops:9443".into(),
                id: 3,
                secret: Secret([2; 32]),
                cert_sha256: [1; 32],
            },
            group: "north".into(),
            tags: vec!["cam".into()],
        }
    }

    #[test]
    fn the_device_key_is_kept_and_a_new_token_starts_over() {
        let dir = std::env::temp_dir().join(format!("tern-enrol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let e = Enrolment::open(&store, &fleet(), None, "cam-1", Description::default()).unwrap();
        assert!(e.admitted().is_none());
        assert_eq!(e.description.group, "north");
        let key = e.device_key;
        let again = Enrolment::open(&store, &fleet(), None, "cam-1", Description::default()).unwrap();
        assert_eq!(again.device_key, key, "kept across restarts");
        let mut saved = again.saved.clone();
        saved.environment = Some(17);
        Enrolment::save_to(&dir, &saved).unwrap();
        let admitted = Enrolment::open(&store, &fleet(), None, "cam-1", Description::default()).unwrap();
        let token = admitted.admitted().unwrap();
        assert_eq!((token.environment, token.secret.clone()), (17, admitted_secret(&key, 3, "cam-1")));
        let mut other = fleet();
        other.token.id = 4;
        let fresh = Enrolment::open(&store, &other, None, "cam-1", Description::default()).unwrap();
        assert!(fresh.admitted().is_none() && fresh.device_key != key, "another token starts over");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
