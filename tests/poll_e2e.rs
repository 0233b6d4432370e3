//! A real agent-side poll of the real Docker engine's state against a real
//! server over TLS on 127.0.0.1:0: authenticated, pinned, applied, stored.

#![cfg(all(feature = "agent", feature = "server"))]

use std::sync::Arc;

use tern::agent::client::Client;
use tern::auth::{Secret, open_reply, seal_request};
use tern::server::http::{AppState, POLL_PATH, router, serve};
use tern::server::store::Store;
use tern::server::store::prelude::*;
use tern::sync::State;
use tern::sync::session::AgentSync;
use tern::tls::{ServerIdentity, Trust};
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::{AgentInfo, PollReply, PollRequest};

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tern-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn an_agent_syncs_the_real_engine_to_a_real_server_over_pinned_tls() {
    let dir = tempdir();
    let identity = ServerIdentity::load_or_create(&dir, &["localhost".into()]).unwrap();
    let store = Store::open(&dir.join("tern.db")).unwrap();
    let env = store.autocommit().create_environment("local", Secret([42; 32]), 0).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(identity.server_config().unwrap()),
        router(AppState::new(store, Limits::default(), "admin", identity.fingerprint()).unwrap()),
        async {
            let _ = stopped.await;
        },
    ));

    let docker = tern::agent::connect().await.unwrap();
    let state = tern::agent::collect(&docker).await.unwrap().canonical(&Default::default()).unwrap();

    let url = format!("https://localhost:{}", addr.port());
    let mut client = Client::new(&url, Trust::Pinned(identity.fingerprint()), 1 << 20).unwrap();
    let mut codec = Codec::new(Limits::default()).unwrap();
    let mut sync = AgentSync::default();
    let mut sizes = Vec::new();
    for (counter, agent) in [(1u64, true), (2, false)] {
        let out = sync.prepare(&state, true);
        let req = PollRequest {
            base: out.base,
            delta: out.delta.clone(),
            agent: agent.then(|| AgentInfo { version: "test".into(), edge_id: "edge-e2e".into() }),
            ..PollRequest::default()
        };
        let wire = seal_request(env.id, counter, &env.secret, &codec.encode(&req.encode()).unwrap());
        sizes.push(wire.len());
        let (status, body) = client.post(POLL_PATH, wire).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let reply =
            PollReply::decode(&codec.decode(open_reply(counter, &env.secret, &body).unwrap()).unwrap()).unwrap();
        assert!(!reply.resync);
        assert_eq!(reply.acked, 1);
        sync.on_reply(out, reply.acked, reply.resync);
    }
    assert_eq!(client.connections, 1, "the second poll reused the kept-alive connection");
    assert!(sizes[1] <= 8 + 2 + 16, "an unchanged poll is a few bytes of body: {sizes:?}");

    // A replayed poll is refused over the wire too.
    let replay = seal_request(env.id, 2, &env.secret, &codec.encode(&PollRequest::default().encode()).unwrap());
    assert_eq!(client.post(POLL_PATH, replay).await.unwrap().0, 409);
    // A client pinning another certificate does not get through.
    let mut wrong = Client::new(&url, Trust::Pinned([0; 32]), 1 << 20).unwrap();
    assert!(wrong.post(POLL_PATH, vec![1, 2, 3]).await.is_err());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // The server's stored state is the engine's, and survives a restart.
    let reopened = Store::open(&dir.join("tern.db")).unwrap();
    assert_eq!(reopened.autocommit().replica(env.id).unwrap().current().1, &state);
    assert_ne!(state, State::default());
    std::fs::remove_dir_all(&dir).unwrap();
}
