//! Join tokens and the authenticated envelope every poll and reply travels
//! in. No I/O.
//!
//! ```text
//! request:  [environment varint][counter varint][header tag 8][body tag 8][body...]
//! reply:    [tag 16][body...]
//! ```
//!
//! * The **header tag** is a keyed blake3 MAC (key: the environment's
//!   secret) over the environment, the counter and the body's length (which
//!   the server knows from `Content-Length` before it reads the body). The
//!   server checks it, and that the counter is above the highest it
//!   accepted, **before it reads the body**: a client that does not hold the
//!   key cannot make the server buffer a byte of body, however slowly it
//!   sends it.
//! * The **body tag** is a MAC under another derived key over the header,
//!   the header tag and the body. The counter is monotonic and persisted by
//!   the agent; the server keeps the highest it accepted and refuses
//!   anything not above it, so a replayed or altered poll is refused.
//! * Each tag is 8 bytes, 16 together: the same bytes on the wire as the
//!   single 16-byte tag they replaced (every byte here is paid on every
//!   poll). A stranger must match both, 2^-128 a try. Someone who holds a
//!   genuine header (a machine in the middle of an agent running with
//!   `EDGE_INSECURE_POLL=1`) could try other bodies under it, 2^-64 a try,
//!   but gets **one** try per genuine poll: a body tag that does not match
//!   under an authentic header burns its counter at the server (see
//!   `server::poll`), so the next attempt needs the agent's next poll. At
//!   one poll a minute that is 2^64 minutes per expected forgery.
//! * The reply tag covers the request's counter and the reply body under a
//!   different context, so a reply cannot be replayed onto another poll and
//!   a machine in the middle cannot inject commands, even when the agent
//!   runs with `EDGE_INSECURE_POLL=1`. It stays 16 bytes: it is what keeps
//!   commands from being forged.
//! * Counters and environment ids above `i64::MAX` are refused as they are
//!   parsed: the server stores them as SQL integers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use crate::wire::pb;

/// Bytes of the reply's MAC tag on the wire.
pub const TAG_LEN: usize = 16;

/// Bytes of each of the request's two tags (header and body).
pub const REQUEST_TAG_LEN: usize = 8;

/// The longest request header: two 10-byte varints and the two tags. The
/// server reads at most this much before it has authenticated the request.
pub const MAX_REQUEST_HEADER: usize = 10 + 10 + 2 * REQUEST_TAG_LEN;

/// The prefix of an EDGE_KEY, naming its format.
pub const TOKEN_PREFIX: &str = "tern1_";

const HEADER_CONTEXT: &str = "tern v2 poll request header";
const BODY_CONTEXT: &str = "tern v2 poll request body";
const REPLY_CONTEXT: &str = "tern v1 poll reply";

/// A 32-byte secret whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

const AGENT_SECRET_CONTEXT: &str = "tern v1 agent secret";

impl Secret {
    /// The MAC key of an environment whose server has an `AGENT_SECRET`: the
    /// environment's secret mixed with it, so that a leaked EDGE_KEY alone
    /// cannot poll. Without one (`None` or empty) the key is the
    /// environment's secret itself. Both ends derive it the same way; a
    /// mismatch shows as a bad MAC, which the server then tells apart
    /// (see `server::poll`).
    pub fn with_agent_secret(&self, agent_secret: Option<&str>) -> Secret {
        match agent_secret.filter(|s| !s.is_empty()) {
            None => self.clone(),
            Some(s) => {
                let mut h = blake3::Hasher::new_derive_key(AGENT_SECRET_CONTEXT);
                h.update(&self.0);
                h.update(s.as_bytes());
                Secret(*h.finalize().as_bytes())
            }
        }
    }
}

/// Why a token or an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The EDGE_KEY does not start with the known prefix.
    #[error("not a tern join token (it should start with {TOKEN_PREFIX})")]
    TokenPrefix,
    /// The EDGE_KEY is not valid base64url or protobuf, or misses a field.
    #[error("malformed join token: {0}")]
    TokenMalformed(&'static str),
    /// The envelope is shorter than its header.
    #[error("truncated envelope")]
    Truncated,
    /// An environment id or counter above `i64::MAX` (the server stores
    /// them as SQL integers; no honest agent gets near).
    #[error("environment id or counter out of range")]
    OutOfRange,
    /// The tag does not match: wrong key, or altered bytes.
    #[error("bad MAC")]
    BadMac,
    /// The counter is not above the last accepted one: a replay.
    #[error("replayed poll (counter {got}, last accepted {last})")]
    Replay {
        /// The counter received.
        got: u64,
        /// The highest counter accepted before.
        last: u64,
    },
}

/// The join token: everything an agent needs to find, trust and
/// authenticate to its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Server URL as seen from the edge.
    pub url: String,
    /// Environment id.
    pub environment: u64,
    /// The environment's secret.
    pub secret: Secret,
    /// SHA-256 of the server certificate (DER).
    pub cert_sha256: [u8; 32],
}

impl JoinToken {
    /// A short, non-secret name of the token's environment and secret
    /// (16 hex digits): the agent keeps it with its poll counter, to know a
    /// new token (a rotated secret) from the one the counter belongs to.
    pub fn key_id(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("tern v1 join token id");
        h.update(&self.environment.to_le_bytes());
        h.update(&self.secret.0);
        h.finalize().as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The EDGE_KEY text.
    pub fn encode(&self) -> String {
        let bytes = pb::JoinToken {
            url: self.url.clone(),
            environment: self.environment,
            secret: self.secret.0.to_vec(),
            cert_sha256: self.cert_sha256.to_vec(),
        }
        .encode_to_vec();
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses an EDGE_KEY.
    ///
    /// # Errors
    /// When the text is not a token this build understands.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let b64 = text.trim().strip_prefix(TOKEN_PREFIX).ok_or(AuthError::TokenPrefix)?;
        if b64.len() > 4096 {
            return Err(AuthError::TokenMalformed("too long"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| AuthError::TokenMalformed("not base64url"))?;
        let t = pb::JoinToken::decode(bytes.as_slice()).map_err(|_| AuthError::TokenMalformed("not a token"))?;
        if !(t.url.starts_with("https://") || t.url.starts_with("http://")) {
            return Err(AuthError::TokenMalformed("server URL must be http(s)://"));
        }
        if t.environment == 0 {
            return Err(AuthError::TokenMalformed("no environment id"));
        }
        Ok(Self {
            url: t.url,
            environment: t.environment,
            secret: Secret(t.secret.try_into().map_err(|_| AuthError::TokenMalformed("secret is not 32 bytes"))?),
            cert_sha256: t
                .cert_sha256
                .try_into()
                .map_err(|_| AuthError::TokenMalformed("fingerprint is not 32 bytes"))?,
        })
    }
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, AuthError> {
    crate::wire::fields::read_varint(buf, pos).map_err(|_| AuthError::Truncated)
}

fn tag<const N: usize>(context: &str, secret: &Secret, parts: &[&[u8]]) -> [u8; N] {
    let key = blake3::derive_key(context, &secret.0);
    let mut h = blake3::Hasher::new_keyed(&key);
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&h.finalize().as_bytes()[..N]);
    out
}

fn header_tag(secret: &Secret, header: &[u8], body_len: usize) -> [u8; REQUEST_TAG_LEN] {
    tag(HEADER_CONTEXT, secret, &[header, &(body_len as u64).to_le_bytes()])
}

fn body_tag(secret: &Secret, header: &[u8], header_tag: &[u8], body: &[u8]) -> [u8; REQUEST_TAG_LEN] {
    tag(BODY_CONTEXT, secret, &[header, header_tag, body])
}

/// Seals a poll body: the agent's side.
pub fn seal_request(environment: u64, counter: u64, secret: &Secret, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + MAX_REQUEST_HEADER);
    prost::encoding::encode_varint(environment, &mut out);
    prost::encoding::encode_varint(counter, &mut out);
    let header_len = out.len();
    let h = header_tag(secret, &out[..header_len], body.len());
    let b = body_tag(secret, &out[..header_len], &h, body);
    out.extend_from_slice(&h);
    out.extend_from_slice(&b);
    out.extend_from_slice(body);
    out
}

/// A request's header: what the server reads, and authenticates, before
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The environment the agent claims.
    pub environment: u64,
    /// Its counter.
    pub counter: u64,
    /// The two varints as they came.
    varints: Vec<u8>,
    header_tag: [u8; REQUEST_TAG_LEN],
    body_tag: [u8; REQUEST_TAG_LEN],
}

impl RequestHeader {
    /// Parses the header at the start of `prefix` (the first bytes of a
    /// request; [`MAX_REQUEST_HEADER`] are always enough). Returns the
    /// header and its length in bytes: the body starts there.
    ///
    /// # Errors
    /// [`AuthError::Truncated`] when `prefix` ends before the header does
    /// (the request is shorter than its header when `prefix` is all of it),
    /// [`AuthError::OutOfRange`] for an id or counter above `i64::MAX`.
    pub fn parse(prefix: &[u8]) -> Result<(Self, usize), AuthError> {
        let mut pos = 0;
        let environment = read_varint(prefix, &mut pos)?;
        let counter = read_varint(prefix, &mut pos)?;
        let varints = prefix[..pos].to_vec();
        let tags = prefix.get(pos..pos + 2 * REQUEST_TAG_LEN).ok_or(AuthError::Truncated)?;
        if environment > i64::MAX as u64 || counter > i64::MAX as u64 {
            return Err(AuthError::OutOfRange);
        }
        let (h, b) = tags.split_at(REQUEST_TAG_LEN);
        let header = Self {
            environment,
            counter,
            varints,
            header_tag: h.try_into().expect("8 bytes"),
            body_tag: b.try_into().expect("8 bytes"),
        };
        Ok((header, pos + 2 * REQUEST_TAG_LEN))
    }

    /// Checks the header tag for a body of `body_len` bytes, and that the
    /// counter is above `last_counter`. Cheap, and needs no body.
    ///
    /// # Errors
    /// [`AuthError::BadMac`] for a wrong key, an altered header or another
    /// body length; [`AuthError::Replay`] for an old counter.
    pub fn verify(&self, secret: &Secret, body_len: usize, last_counter: u64) -> Result<(), AuthError> {
        if !constant_time_eq(&header_tag(secret, &self.varints, body_len), &self.header_tag) {
            return Err(AuthError::BadMac);
        }
        if self.counter <= last_counter {
            return Err(AuthError::Replay { got: self.counter, last: last_counter });
        }
        Ok(())
    }

    /// Checks the body tag (after [`Self::verify`] passed).
    ///
    /// # Errors
    /// [`AuthError::BadMac`] when the body is not the one the header was
    /// sealed with.
    pub fn verify_body(&self, secret: &Secret, body: &[u8]) -> Result<(), AuthError> {
        if !constant_time_eq(&body_tag(secret, &self.varints, &self.header_tag, body), &self.body_tag) {
            return Err(AuthError::BadMac);
        }
        Ok(())
    }
}

/// A whole request envelope in one buffer, before its MACs are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEnvelope<'a> {
    /// The header.
    pub header: RequestHeader,
    /// The environment the agent claims.
    pub environment: u64,
    /// Its counter.
    pub counter: u64,
    /// The body (codec bytes).
    pub body: &'a [u8],
}

impl<'a> RequestEnvelope<'a> {
    /// Splits an envelope held whole.
    ///
    /// # Errors
    /// When it is shorter than its header, or its numbers are out of range.
    pub fn parse(wire: &'a [u8]) -> Result<Self, AuthError> {
        let (header, len) = RequestHeader::parse(wire)?;
        Ok(Self { environment: header.environment, counter: header.counter, header, body: &wire[len..] })
    }

    /// Checks both tags and that the counter is above `last_counter`.
    ///
    /// # Errors
    /// [`AuthError::BadMac`] for a wrong key or altered bytes,
    /// [`AuthError::Replay`] for an old counter.
    pub fn verify(&self, secret: &Secret, last_counter: u64) -> Result<(), AuthError> {
        self.header.verify(secret, self.body.len(), last_counter)?;
        self.header.verify_body(secret, self.body)
    }
}

/// Seals a reply to the request with this counter: the server's side.
pub fn seal_reply(counter: u64, secret: &Secret, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + TAG_LEN);
    out.extend_from_slice(&tag::<TAG_LEN>(REPLY_CONTEXT, secret, &[&counter.to_le_bytes(), body]));
    out.extend_from_slice(body);
    out
}

/// Opens a reply to the request with this counter: the agent's side.
///
/// # Errors
/// When it is truncated or its MAC does not match.
pub fn open_reply<'a>(counter: u64, secret: &Secret, wire: &'a [u8]) -> Result<&'a [u8], AuthError> {
    let (t, body) = wire.split_at_checked(TAG_LEN).ok_or(AuthError::Truncated)?;
    if !constant_time_eq(&tag::<TAG_LEN>(REPLY_CONTEXT, secret, &[&counter.to_le_bytes(), body]), t) {
        return Err(AuthError::BadMac);
    }
    Ok(body)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hands out poll counters that never repeat, across restarts, while
/// writing to disk only once per `block` polls: the agent persists the end
/// of a reserved block before using any counter in it, and after a restart
/// starts above the persisted end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterReservation {
    next: u64,
    reserved_to: u64,
    block: u64,
}

impl CounterReservation {
    /// Starts after a persisted reservation end (0 on first start).
    pub fn resume(persisted_end: u64, block: u64) -> Self {
        Self { next: persisted_end + 1, reserved_to: persisted_end, block: block.max(1) }
    }

    /// The counter [`Self::take`] gives next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The next counter, and `Some(end)` when a new block end must be
    /// persisted (durably) *before* the counter is used.
    pub fn take(&mut self) -> (u64, Option<u64>) {
        let c = self.next;
        self.next += 1;
        if c > self.reserved_to {
            self.reserved_to = c + self.block - 1;
            (c, Some(self.reserved_to))
        } else {
            (c, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            url: "https://ops.example.com:9443".into(),
            environment: 42,
            secret: Secret([9; 32]),
            cert_sha256: [7; 32],
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_get_a_clear_error() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with("tern1_"));
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        assert_eq!(JoinToken::parse("abc"), Err(AuthError::TokenPrefix));
        assert_eq!(JoinToken::parse("tern1_!!!"), Err(AuthError::TokenMalformed("not base64url")));
        let mut short = t.clone();
        short.environment = 0;
        assert_eq!(JoinToken::parse(&short.encode()), Err(AuthError::TokenMalformed("no environment id")));
        assert!(!format!("{t:?}").contains("9, 9"), "the secret does not leak into Debug");
    }

    #[test]
    fn a_sealed_request_verifies_and_costs_few_bytes() {
        let s = Secret([1; 32]);
        let wire = seal_request(42, 7, &s, b"body");
        assert_eq!(wire.len(), 1 + 1 + 2 * REQUEST_TAG_LEN + 4, "16 bytes of tags, as the one tag before");
        let env = RequestEnvelope::parse(&wire).unwrap();
        assert_eq!((env.environment, env.counter, env.body), (42, 7, &b"body"[..]));
        env.verify(&s, 6).unwrap();
    }

    #[test]
    fn the_header_is_authenticated_before_the_body_is_read() {
        let s = Secret([1; 32]);
        let wire = seal_request(300, 1 << 40, &s, &[7; 1000]);
        // The server holds only the first bytes and the body's length.
        let (header, len) = RequestHeader::parse(&wire[..MAX_REQUEST_HEADER]).unwrap();
        assert_eq!((header.environment, header.counter, len), (300, 1 << 40, 2 + 6 + 16));
        header.verify(&s, 1000, 0).unwrap();
        // A stranger's header fails without any body; so does a lie about the body's length.
        assert_eq!(header.verify(&Secret([2; 32]), 1000, 0), Err(AuthError::BadMac));
        assert_eq!(header.verify(&s, 999, 0), Err(AuthError::BadMac));
        assert_eq!(header.verify(&s, 1000, 1 << 40), Err(AuthError::Replay { got: 1 << 40, last: 1 << 40 }));
        // The body is then checked against the header it came with.
        header.verify_body(&s, &wire[len..]).unwrap();
        let mut other = wire[len..].to_vec();
        other[500] ^= 1;
        assert_eq!(header.verify_body(&s, &other), Err(AuthError::BadMac));
        // Too few bytes for a header, and numbers the server cannot store.
        assert_eq!(RequestHeader::parse(&wire[..len - 1]).map(|_| ()), Err(AuthError::Truncated));
        for (env, counter) in [(1, i64::MAX as u64 + 1), (i64::MAX as u64 + 1, 1), (1, u64::MAX)] {
            let big = seal_request(env, counter, &s, b"x");
            assert_eq!(RequestHeader::parse(&big).map(|_| ()), Err(AuthError::OutOfRange));
        }
        assert!(RequestHeader::parse(&seal_request(i64::MAX as u64, i64::MAX as u64, &s, b"")).is_ok());
    }

    #[test]
    fn altered_forged_and_replayed_requests_are_refused() {
        let s = Secret([1; 32]);
        let wire = seal_request(42, 7, &s, b"body");
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            let ok = RequestEnvelope::parse(&bad).and_then(|e| e.verify(&s, 0));
            assert!(ok.is_err(), "flipping byte {i} went unnoticed");
        }
        let env = RequestEnvelope::parse(&wire).unwrap();
        assert_eq!(env.verify(&Secret([2; 32]), 0), Err(AuthError::BadMac));
        assert_eq!(env.verify(&s, 7), Err(AuthError::Replay { got: 7, last: 7 }));
        assert_eq!(RequestEnvelope::parse(&wire[..5]), Err(AuthError::Truncated));
    }

    #[test]
    fn replies_are_bound_to_their_request() {
        let s = Secret([3; 32]);
        let wire = seal_reply(7, &s, b"commands");
        assert_eq!(open_reply(7, &s, &wire), Ok(&b"commands"[..]));
        assert_eq!(open_reply(8, &s, &wire), Err(AuthError::BadMac), "replayed onto another poll");
        assert_eq!(open_reply(7, &Secret([4; 32]), &wire), Err(AuthError::BadMac), "forged without the secret");
        let mut bad = wire.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(open_reply(7, &s, &bad), Err(AuthError::BadMac));
    }

    #[test]
    fn counters_never_repeat_across_restarts() {
        let mut r = CounterReservation::resume(0, 100);
        assert_eq!(r.take(), (1, Some(100)));
        assert_eq!(r.take(), (2, None));
        // Crash after using 2 with 100 persisted: resume starts at 101.
        let mut r = CounterReservation::resume(100, 100);
        assert_eq!(r.take(), (101, Some(200)));
        for _ in 102..=200 {
            assert_eq!(r.take().1, None);
        }
        assert_eq!(r.take(), (201, Some(300)));
    }
}
