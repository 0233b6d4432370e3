//! Byte budgets on the recorded 40-container host (`tests/fixtures/host40.json`).
//! Byte counts on a fixed fixture are deterministic, so they are held here;
//! timings live in `benches/`.

use tern::fixture;
use tern::scenarios::{self, Cost};
use tern::wire::codec::{Codec, Limits};

fn costs() -> Vec<Cost> {
    let rec = fixture::load(&fixture::dir(), "host40").expect("fixture loads");
    let prepared = scenarios::prepare(&rec);
    let mut codec = Codec::new(Limits::default()).unwrap();
    let costs = scenarios::costs(&prepared, &mut codec).unwrap();
    println!("{}", scenarios::table(&costs));
    costs
}

fn find<'a>(costs: &'a [Cost], prefix: &str) -> &'a Cost {
    costs.iter().find(|c| c.name.starts_with(prefix)).unwrap()
}

#[test]
fn byte_budgets_hold_on_the_recorded_host() {
    let costs = costs();
    let full = find(&costs, "first full snapshot");
    assert!(
        full.tern * 3 <= full.portainer,
        "full snapshot {} B > 1/3 of Portainer-style {} B",
        full.tern,
        full.portainer
    );

    let unchanged = find(&costs, "unchanged state");
    assert!(unchanged.tern <= 8, "unchanged state costs {} B of body, budget 8", unchanged.tern);

    let stopped = find(&costs, "one container stopped");
    assert!(stopped.tern <= 48, "one container stopped costs {} B, budget 48", stopped.tern);

    let churn = find(&costs, "churn trace");
    assert!(churn.polls >= 50, "the churn trace has only {} events", churn.polls);
    assert!(
        churn.tern * 20 <= churn.portainer,
        "churn trace {} B > 1/20 of Portainer-style {} B",
        churn.tern,
        churn.portainer
    );
}

#[test]
fn the_unchanged_step_really_is_unchanged_and_the_stop_is_a_stop() {
    let rec = fixture::load(&fixture::dir(), "host40").unwrap();
    let p = scenarios::prepare(&rec);
    assert!(tern::sync::diff(&p.states[0], &p.states[1]).is_empty(), "volatile fields leaked into the state");
    // Portainer's patch for the same interval is never empty.
    assert!(!json_patch_is_empty(&p.documents[0], &p.documents[1]));
    let stop = tern::sync::diff(&p.states[1], &p.states[2]);
    let (removed, changed, added) = stop.counts();
    assert_eq!((removed, changed, added), (0, 1, 0), "{}", p.events[2]);
}

fn json_patch_is_empty(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    json_patch::diff(a, b).0.is_empty()
}
