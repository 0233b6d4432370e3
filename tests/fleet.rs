//! The fleet simulator's short budgeted run (issue #15), held to
//! `budgets.toml` (`[fleet]`): a `tern server` of its own (this build's
//! binary, SQLite in a temporary directory, 127.0.0.1 port 0) and a small
//! fleet of simulated agents over real TLS with the real poll protocol
//! (`tern_fleet`, benches/fleet), with state changes, commands queued
//! through the API and a share of agents reconnecting for every poll.
//!
//! It prints the simulator's report, then each budgeted figure against its
//! budget, and fails when the server did not keep up with the offered
//! polls, when p99 is over its ceiling, on any error, or when a command
//! queued through the API was not answered.

#![cfg(all(feature = "agent", feature = "server", target_os = "linux"))]

use std::path::PathBuf;

use clap::Parser;

fn budget(table: &toml::Table, key: &str) -> f64 {
    match table.get(key) {
        Some(toml::Value::Integer(i)) => *i as f64,
        Some(toml::Value::Float(f)) => *f,
        _ => panic!("budgets.toml has no number fleet.{key}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fleet_run_holds_its_budget() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/budgets.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let b = doc["fleet"].as_table().expect("budgets.toml has [fleet]");
    let arg = |k: &str| budget(b, k).to_string();
    let mut opts = tern_fleet::Options::parse_from([
        "tern-fleet",
        "--spawn",
        "--agents",
        &arg("agents"),
        "--interval",
        &arg("interval_s"),
        "--duration",
        &arg("duration_s"),
        "--change-share",
        &arg("change_share"),
        "--command-rate",
        &arg("command_rate"),
        "--reconnect-share",
        &arg("reconnect_share"),
        "--seed",
        "15",
    ]);
    opts.tern = Some(PathBuf::from(env!("CARGO_BIN_EXE_tern")));
    let report = tern_fleet::run(&opts).await.expect("the fleet run runs");
    eprintln!("{}", report.table());

    let min_share = budget(b, "min_served_share");
    let max_p99 = budget(b, "max_p99_ms");
    let max_errors = budget(b, "max_errors");
    let min_changes = budget(b, "min_changes");
    let p = &report.polls;
    let rows = [
        ("polls/s served (min)", p.per_second, p.offered_per_second * min_share),
        ("p99 ms (max)", p.latency.p99_ms, max_p99),
        ("errors (max)", report.error_total as f64, max_errors),
        ("state changes sent (min)", p.changes as f64, min_changes),
        ("commands unanswered (max)", report.commands.unanswered as f64, 0.0),
    ];
    eprintln!("{:<28} {:>10} {:>10}", "figure", "measured", "budget");
    for (k, v, limit) in rows {
        eprintln!("{k:<28} {v:>10.2} {limit:>10.2}");
    }
    let mut failures = Vec::new();
    if p.per_second < p.offered_per_second * min_share {
        failures.push(format!(
            "served {:.1} polls/s of {:.1} offered (budget: at least {:.0} %)",
            p.per_second,
            p.offered_per_second,
            min_share * 100.0
        ));
    }
    if p.latency.p99_ms > max_p99 {
        failures.push(format!("p99 {:.2} ms over {max_p99} ms", p.latency.p99_ms));
    }
    if report.error_total as f64 > max_errors {
        failures.push(format!("errors: {:?}", report.errors));
    }
    if report.first_contact.agents != report.agents {
        failures.push(format!("only {} of {} agents made first contact", report.first_contact.agents, report.agents));
    }
    if (p.changes as f64) < min_changes {
        failures.push(format!("only {} state changes sent", p.changes));
    }
    if report.commands.queued == 0 || report.commands.results == 0 || report.commands.unanswered > 0 {
        failures.push(format!("commands: {:?}", report.commands));
    }
    assert!(failures.is_empty(), "over budget: {failures:#?}");
}
