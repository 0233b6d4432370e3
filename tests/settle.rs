//! What the agent tells the server after a restart interrupted a command
//! (issue #12, item 10), against the real engine: the engine is asked what
//! became of it, for every kind of command it can answer for.

#![cfg(feature = "agent")]

mod common;

use common::{Objects, docker};
use tern::agent::journal::Settled;
use tern::sync::state::Id;
use tern::wire::poll::{Action, ContainerOp};

fn id_of(name: &str, kind: &str) -> Id {
    Id::parse(&docker(&[kind, "inspect", "--format", "{{.Id}}", name])).unwrap()
}

#[tokio::test]
async fn interrupted_commands_are_settled_from_the_engine() {
    let objects = Objects::new(&format!("tern-test-settle-{}", std::process::id()));
    let engine = tern::agent::connect().await.unwrap();
    let now = tern::clock::unix_now();
    let settle = |action: Action, at: i64| {
        let engine = engine.clone();
        async move { tern::agent::settle(&engine, &action, at).await }
    };
    let done = |s: &Settled| *s == Settled::Done;
    let not_done = |s: &Settled| matches!(s, Settled::NotDone(_));

    // A running container: a start took effect, a stop did not (watched up
    // to 30 s, so the stop is judged on a container that just stopped).
    objects.run_sleeper("c");
    let c = id_of(&objects.name("c"), "container");
    assert!(done(&settle(Action::Container(ContainerOp::Start, c), now).await));
    assert!(done(&settle(Action::Container(ContainerOp::Restart, c), now - 5).await), "started since");
    docker(&["stop", &objects.name("c")]);
    assert!(done(&settle(Action::Container(ContainerOp::Stop, c), now).await));
    docker(&["rm", &objects.name("c")]);
    assert!(done(&settle(Action::Container(ContainerOp::Remove, c), now).await), "gone");
    assert!(not_done(&settle(Action::Container(ContainerOp::Start, c), now).await), "gone, so not started");

    // Images, volumes, networks: by their presence.
    assert!(done(&settle(Action::ImagePull(objects.image.clone()), now).await));
    assert!(not_done(&settle(Action::ImageRemove(objects.image.clone()), now).await));
    let missing = format!("{}-never:1", objects.prefix);
    assert!(done(&settle(Action::ImageRemove(missing.clone()), now).await));
    let volume = objects.name("vol");
    docker(&["volume", "create", &volume]);
    assert!(not_done(&settle(Action::VolumeRemove(volume.clone()), now).await));
    docker(&["volume", "rm", &volume]);
    assert!(done(&settle(Action::VolumeRemove(volume), now).await));
    let network = objects.name("net");
    docker(&["network", "create", &network]);
    let n = id_of(&network, "network");
    assert!(not_done(&settle(Action::NetworkRemove(n), now).await));
    docker(&["network", "rm", &network]);
    assert!(done(&settle(Action::NetworkRemove(n), now).await));
    // What the engine cannot answer for.
    assert_eq!(settle(Action::StackRemove("x".into()), now).await, Settled::Unknown);
}
