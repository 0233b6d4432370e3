//! The poll endpoint's logic, apart from HTTP: authenticate, decode, apply
//! the delta, store, answer. The HTTP layer only moves bytes and maps a
//! [`Refusal`] to a status code.

use crate::auth::{RequestEnvelope, seal_reply};
use crate::server::store::{Store, StoreError};
use crate::sync::session::Received;
use crate::wire::codec::{Codec, CodecError};
use crate::wire::poll::{PollReply, PollRequest};

/// Why a poll was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not an envelope, or an unknown environment, or a bad MAC: the
    /// answer does not say which, to a client that proved nothing.
    #[error("unauthenticated poll")]
    Unauthenticated,
    /// A replayed counter.
    #[error("replayed poll")]
    Replay,
    /// Another agent holds this environment (a second agent with the same
    /// token); an operator can reset the binding.
    #[error("environment {0} is bound to another agent (EDGE_ID); reset the binding to move it")]
    BoundToAnother(u64),
    /// The body does not decode.
    #[error("bad body: {0}")]
    BadBody(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<CodecError> for Refusal {
    fn from(e: CodecError) -> Self {
        Self::BadBody(e.to_string())
    }
}

/// Handles one poll: `wire` is the request body as received, the result is
/// the reply body to send.
///
/// # Errors
/// A [`Refusal`]; the stored state, counter and binding are unchanged.
pub fn handle(store: &Store, codec: &mut Codec, wire: &[u8], now: i64) -> Result<Vec<u8>, Refusal> {
    let envelope = RequestEnvelope::parse(wire).map_err(|_| Refusal::Unauthenticated)?;
    let env = match store.environment(envelope.environment) {
        Ok(env) => env,
        Err(StoreError::NotFound(_)) => return Err(Refusal::Unauthenticated),
        Err(e) => return Err(e.into()),
    };
    envelope.verify(&env.secret, env.last_counter).map_err(|e| match e {
        crate::auth::AuthError::Replay { .. } => Refusal::Replay,
        _ => Refusal::Unauthenticated,
    })?;
    // Authenticated from here on. Decode before touching anything.
    let request = PollRequest::decode(&codec.decode(envelope.body)?).map_err(|e| Refusal::BadBody(e.to_string()))?;
    let edge_id = request.agent.as_ref().map(|a| a.edge_id.as_str());
    if !store.accept_poll(env.id, envelope.counter, edge_id, now)? {
        let now_env = store.environment(env.id)?;
        return Err(if envelope.counter <= now_env.last_counter {
            Refusal::Replay
        } else {
            Refusal::BoundToAnother(env.id)
        });
    }
    let mut replica = store.replica(env.id)?;
    let before = replica.current().0;
    let received = replica.receive(request.base, request.delta.as_ref());
    let reply = match received {
        Received::Acked(seq) => {
            // The replica changes exactly when its sequence number moves.
            if seq != before {
                store.save_replica(env.id, &replica, now)?;
            }
            PollReply { acked: seq, ..PollReply::default() }
        }
        Received::Resync => PollReply { acked: replica.current().0, resync: true, ..PollReply::default() },
    };
    Ok(seal_reply(envelope.counter, &env.secret, &codec.encode(&reply.encode())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Secret, open_reply, seal_request};
    use crate::sync::State;
    use crate::sync::session::AgentSync;
    use crate::wire::codec::Limits;
    use crate::wire::poll::AgentInfo;

    struct Agent {
        env: u64,
        secret: Secret,
        counter: u64,
        sync: AgentSync,
        named: bool,
        edge_id: String,
    }

    impl Agent {
        fn poll(&mut self, store: &Store, codec: &mut Codec, current: &State) -> Result<PollReply, Refusal> {
            self.counter += 1;
            let out = self.sync.prepare(current, true);
            let req = PollRequest {
                base: out.base,
                delta: out.delta.clone(),
                agent: (!self.named).then(|| AgentInfo { version: "test".into(), edge_id: self.edge_id.clone() }),
                ..PollRequest::default()
            };
            let wire = seal_request(self.env, self.counter, &self.secret, &codec.encode(&req.encode()).unwrap());
            let reply_wire = handle(store, codec, &wire, 1000 + self.counter as i64)?;
            let body = open_reply(self.counter, &self.secret, &reply_wire).expect("authentic reply");
            let reply = PollReply::decode(&codec.decode(body).unwrap()).unwrap();
            self.named = true;
            self.sync.on_reply(out, reply.acked, reply.resync);
            Ok(reply)
        }
    }

    fn setup() -> (Store, Codec, Agent) {
        let store = Store::in_memory().unwrap();
        let e = store.create_environment("site", Secret([8; 32]), 0).unwrap();
        let agent = Agent {
            env: e.id,
            secret: e.secret,
            counter: 0,
            sync: AgentSync::default(),
            named: false,
            edge_id: "edge-1".into(),
        };
        (store, Codec::new(Limits::default()).unwrap(), agent)
    }

    fn host40(step: usize) -> State {
        let rec = crate::fixture::load(&crate::fixture::dir(), "host40").unwrap();
        rec.steps[step].raw.canonical(&Default::default()).unwrap()
    }

    #[test]
    fn a_real_host_syncs_through_the_poll_handler() {
        let (store, mut codec, mut agent) = setup();
        let s0 = host40(0);
        let r = agent.poll(&store, &mut codec, &s0).unwrap();
        assert_eq!((r.acked, r.resync), (1, false));
        assert_eq!(store.replica(agent.env).unwrap().current().1, &s0);
        // The stopped container: one small delta.
        let s2 = host40(2);
        assert_eq!(agent.poll(&store, &mut codec, &s2).unwrap().acked, 2);
        assert_eq!(store.replica(agent.env).unwrap().current().1, &s2);
        // Nothing changed: acknowledged as is.
        let again = agent.poll(&store, &mut codec, &s2).unwrap();
        assert_eq!((again.acked, again.resync), (2, false));
    }

    #[test]
    fn forged_replayed_and_second_agents_are_refused_and_change_nothing() {
        let (store, mut codec, mut agent) = setup();
        agent.poll(&store, &mut codec, &State::default()).unwrap();
        // Forged: wrong key.
        let body = codec.encode(&PollRequest::default().encode()).unwrap();
        let forged = seal_request(agent.env, 99, &Secret([0; 32]), &body);
        assert!(matches!(handle(&store, &mut codec, &forged, 5), Err(Refusal::Unauthenticated)));
        // Unknown environment, garbage.
        assert!(matches!(
            handle(&store, &mut codec, &seal_request(77, 1, &agent.secret, &body), 5),
            Err(Refusal::Unauthenticated)
        ));
        assert!(matches!(handle(&store, &mut codec, b"\x01", 5), Err(Refusal::Unauthenticated)));
        // Replayed: the agent's own last request again.
        let replay = seal_request(agent.env, agent.counter, &agent.secret, &body);
        assert!(matches!(handle(&store, &mut codec, &replay, 5), Err(Refusal::Replay)));
        // A second agent with the same token.
        let mut other =
            Agent { edge_id: "edge-2".into(), named: false, counter: 50, sync: AgentSync::default(), ..agent };
        assert!(matches!(other.poll(&store, &mut codec, &State::default()), Err(Refusal::BoundToAnother(_))));
        let env = store.environment(other.env).unwrap();
        assert_eq!((env.edge_id.as_deref(), env.last_counter), (Some("edge-1"), 1));
        // An authenticated body that does not decode.
        let bad = seal_request(other.env, 60, &other.secret, b"\x01\x00\xff\xff");
        assert!(matches!(handle(&store, &mut codec, &bad, 5), Err(Refusal::BadBody(_))));
        assert_eq!(store.environment(other.env).unwrap().last_counter, 1, "nothing changed");
    }
}
