//! Byte budgets on the recorded 40-container host (`tests/fixtures/host40.json`).
//! Byte counts on a fixed fixture are deterministic, so they are held here;
//! timings live in `benches/`.
//!
//! Two kinds of budget: the targets (ratios to the Portainer-style
//! cost and absolute caps), and the regression budgets in `budgets.toml`
//! (today's figures, 2 % slack), which keep every figure from creeping up.

use std::collections::BTreeMap;

use tern::wire::codec::{Codec, Limits};
use tern_bench::fixture;
use tern_bench::scenarios::{self, Cost};

fn costs() -> Vec<Cost> {
    let rec = fixture::load(&fixture::dir(), "host40").expect("fixture loads");
    let prepared = scenarios::prepare(&rec);
    let mut codec = Codec::new(Limits::default()).unwrap();
    let costs = scenarios::costs(&prepared, &mut codec).unwrap();
    println!("{}", scenarios::table(&costs));
    costs
}

fn find(key: &str) -> Cost {
    costs().into_iter().find(|c| c.key == key).unwrap()
}

#[test]
fn unchanged_state_costs_at_most_8_bytes_of_body() {
    let c = find("unchanged_state");
    assert!(c.tern <= 8, "unchanged state costs {} B of body, budget 8", c.tern);
}

#[test]
fn one_stopped_container_costs_at_most_48_bytes() {
    let c = find("one_container_stopped");
    assert!(c.tern <= 48, "one container stopped costs {} B, budget 48", c.tern);
}

#[test]
fn the_churn_trace_costs_at_most_a_twentieth_of_portainer_style() {
    let c = find("churn_trace");
    assert!(c.polls >= 50, "the churn trace has only {} events", c.polls);
    assert!(c.tern * 20 <= c.portainer, "churn trace {} B > 1/20 of Portainer-style {} B", c.tern, c.portainer);
}

/// Not met: see the README ("What it measures"). The first snapshot carries
/// about 4.6 KB that no encoding can compress (ids, compose config hashes,
/// times, addresses); a third of the Portainer-style bytes leaves 2.4 KB for
/// all the text of ~100 objects. Run with `--ignored` to see where it stands;
/// `budgets.toml` keeps it from getting worse.
#[test]
#[ignore = "budget not met: ~12.3 KB against a 7.0 KB target, see README"]
fn the_first_full_snapshot_costs_at_most_a_third_of_portainer_style() {
    let c = find("first_full_snapshot");
    assert!(c.tern * 3 <= c.portainer, "full snapshot {} B > 1/3 of Portainer-style {} B", c.tern, c.portainer);
}

#[test]
fn no_figure_exceeds_its_regression_budget_by_more_than_2_percent() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/budgets.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let budgets: BTreeMap<String, u64> =
        doc["sync_core"].as_table().unwrap().iter().map(|(k, v)| (k.clone(), v.as_integer().unwrap() as u64)).collect();
    let costs = costs();
    let mut over = Vec::new();
    for c in &costs {
        let budget = *budgets.get(c.key).unwrap_or_else(|| panic!("budgets.toml has no sync_core.{}", c.key));
        println!("{:<24} {:>7} B  budget {:>7} B", c.key, c.tern, budget);
        if c.tern as f64 > budget as f64 * 1.02 {
            over.push(format!("{} is {} B, budget {} B (+2 %)", c.key, c.tern, budget));
        }
    }
    assert!(over.is_empty(), "over budget: {over:?}");
}

#[test]
fn the_unchanged_step_really_is_unchanged_and_the_stop_is_a_stop() {
    let rec = fixture::load(&fixture::dir(), "host40").unwrap();
    let p = scenarios::prepare(&rec);
    assert!(tern::sync::diff(&p.states[0], &p.states[1]).is_empty(), "volatile fields leaked into the state");
    // Portainer's patch for the same interval is never empty.
    assert!(!tern_bench::json_patch::diff(&p.documents[0], &p.documents[1]).0.is_empty());
    let stop = tern::sync::diff(&p.states[1], &p.states[2]);
    assert_eq!(stop.counts(), (0, 1, 0), "{}", p.events[2]);
}
