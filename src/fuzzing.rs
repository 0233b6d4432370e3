//! Entry points for the cargo-fuzz targets in `fuzz/`: each target is one
//! line calling a function here, so the checks live in the crate and are
//! type-checked with it.

use crate::sync::{Delta, State, apply, diff};
use crate::wire::codec::{Codec, Limits};
use crate::wire::poll::{PollReply, PollRequest};

/// Decodes an arbitrary poll body the way the server does. Whatever it
/// holds, decoding ends in a value or an error, never a panic; a value
/// re-encodes to bytes that decode to the same value.
pub fn poll_body(data: &[u8]) {
    let mut codec = Codec::new(Limits { max_encoded: 1 << 20, max_decoded: 4 << 20 }).expect("codec");
    let Ok(body) = codec.decode(data) else { return };
    if let Ok(req) = PollRequest::decode(&body) {
        let again = PollRequest::decode(&req.encode()).expect("re-encoded request decodes");
        assert_eq!(again, req);
        if let Some(delta) = &req.delta {
            // Apply to the empty state as a first contact would.
            let _ = apply(&State::default(), delta);
        }
    }
    if let Ok(reply) = PollReply::decode(&body) {
        // Commands this build cannot read are never encoded (the agent
        // reports each as rejected; see `PollReply::unknown_commands`).
        let again = PollReply::decode(&reply.encode()).expect("re-encoded reply decodes");
        assert_eq!(again, PollReply { unknown_commands: Vec::new(), ..reply.clone() });
    }
}

/// Applies an arbitrary delta to an arbitrary state. Either it is rejected
/// and nothing changed, or the result carries the delta's root, and a fresh
/// diff from the base reproduces it.
pub fn apply_delta(base: &State, delta_bytes: &[u8]) {
    let Ok(delta) = Delta::decode(delta_bytes) else { return };
    let before = base.root();
    match apply(base, &delta) {
        Err(_) => assert_eq!(base.root(), before),
        Ok(next) => {
            if !delta.is_empty() {
                assert_eq!(&next.root()[..delta.root().len()], delta.root());
            }
            let again = apply(base, &diff(base, &next)).expect("own diff applies");
            assert_eq!(again, next);
        }
    }
}

/// `apply(a, diff(a, b)) == b` on arbitrary states.
pub fn round_trip(a: &State, b: &State) {
    let d = diff(a, b);
    let wire = Delta::decode(&d.encode()).expect("own delta decodes");
    assert_eq!(apply(a, &wire).expect("own delta applies"), *b);
}
