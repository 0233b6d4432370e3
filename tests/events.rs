//! Which engine events make the agent re-read the engine, against the real
//! engine: a health check probe's `exec_*` events do not (and change
//! nothing the agent reports), the `health_status` event of a changed
//! health and a stop do.

#![cfg(feature = "agent")]

mod common;

use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use common::{Objects, docker};
use futures_util::StreamExt;
use tern::agent::CanonicalOptions;
use tern::agent::changes_state;

/// The next event, within 20 s.
async fn next<S>(events: &mut S) -> bollard::models::EventMessage
where
    S: futures_util::Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("no event within 20 s (a health probe makes exec_* events every second): {other:?}"),
    }
}

#[tokio::test]
async fn health_probes_are_not_changes_and_change_nothing_reported() {
    let objects = Objects::new(&format!("tern-test-events-{}", std::process::id()));
    let engine = tern::agent::connect().await.expect("the Docker engine");
    let name = objects.name("probed");
    // Events from a second before the container exists, so none is missed
    // however late the stream is opened.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    // The probe runs through `/bin/sh -c`, which the image lacks: the
    // container makes it first.
    let script = "/bin/busybox ln -s /bin/busybox /bin/sh; trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done";
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--health-cmd",
        "/bin/busybox true",
        "--health-interval",
        "1s",
        &objects.image,
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ]);
    let filters = std::collections::HashMap::from([("container".to_owned(), vec![id.clone()])]);
    let options = EventsOptions { since: Some(since.to_string()), filters: Some(filters), ..Default::default() };
    let mut events = engine.events(Some(options));

    // Up to healthy: the status change is an event that counts.
    let mut inert = Vec::new();
    loop {
        let e = next(&mut events).await;
        let action = e.action.clone().unwrap_or_default();
        if action.starts_with("health_status") {
            assert_eq!(action, "health_status: healthy");
            assert!(changes_state(&e), "{e:?}");
            break;
        }
        if action.starts_with("exec_") {
            inert.push(action);
        }
    }

    // Healthy from here: the state the agent reports, then three more
    // probes (each an exec_create, exec_start and exec_die), then the state
    // again, identical, and none of those events counted as a change.
    let read = || async {
        let raw = tern::agent::collect(&engine).await.unwrap();
        let state = raw.canonical(&CanonicalOptions::default()).unwrap();
        let c = state.containers.iter().find(|c| c.name == name).expect("the container").clone();
        (state.containers.digest(&c.id).copied(), c)
    };
    let before = read().await;
    let mut dies = 0;
    while dies < 3 {
        let e = next(&mut events).await;
        let action = e.action.clone().unwrap_or_default();
        assert!(!changes_state(&e), "a probe's event counted as a change: {e:?}");
        assert!(action.starts_with("exec_"), "only the probe's events while healthy: {e:?}");
        dies += usize::from(action == "exec_die");
        inert.push(action);
    }
    let after = read().await;
    assert_eq!(before, after, "a health probe changed what the agent reports");
    assert!(inert.iter().any(|a| a.starts_with("exec_create")), "{inert:?}");

    // A stop counts.
    docker(&["stop", "-t", "0", &name]);
    let mut counted = false;
    while !counted {
        let e = next(&mut events).await;
        if matches!(e.action.as_deref(), Some("die" | "stop" | "kill")) {
            counted = changes_state(&e);
            assert!(counted, "{e:?}");
        }
    }
}
