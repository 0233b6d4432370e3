//! The byte scenarios the benches and the budget test measure, on a
//! recorded host: what tern sends, and what Portainer's async agent would
//! send for the same change, both at the body level (no HTTP, no TLS).
//!
//! A recording's steps are: 0 baseline, 1 the same host later with nothing
//! done, 2 one container stopped, 3 one image pulled, 4.. a churn trace.

use serde_json::Value;

use crate::baseline;
use crate::fixture::Recording;
use tern::agent::CanonicalOptions;
use tern::sync::{State, diff};
use tern::wire::codec::{Codec, CodecError};
use tern::wire::poll::PollRequest;

/// Bytes of one scenario, both ways of sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// Scenario key, as in `budgets.toml`.
    pub key: &'static str,
    /// Scenario name.
    pub name: String,
    /// Poll bodies tern sends (codec output, all polls summed).
    pub tern: usize,
    /// Bodies Portainer's async agent sends (gzip'd JSON or JSON Patch).
    pub portainer: usize,
    /// How many polls the scenario spans.
    pub polls: usize,
}

impl Cost {
    /// Portainer bytes per tern byte.
    pub fn ratio(&self) -> f64 {
        self.portainer as f64 / self.tern.max(1) as f64
    }
}

/// The canonical states and Portainer documents of every step.
pub struct Prepared {
    /// Step events.
    pub events: Vec<String>,
    /// Canonical state per step.
    pub states: Vec<State>,
    /// Portainer snapshot document per step.
    pub documents: Vec<Value>,
}

/// Builds the states and documents once.
///
/// # Panics
/// When the recording holds ids that are not Docker ids (a broken fixture).
pub fn prepare(rec: &Recording) -> Prepared {
    let opts = CanonicalOptions::default();
    Prepared {
        events: rec.steps.iter().map(|s| s.event.clone()).collect(),
        states: rec.steps.iter().map(|s| s.raw.canonical(&opts).expect("fixture is a real engine's")).collect(),
        documents: rec.steps.iter().map(|s| baseline::snapshot(&s.json)).collect(),
    }
}

/// The poll body tern sends to move the server from `base` to `current`.
///
/// # Errors
/// When the codec refuses the body (over its limits).
pub fn poll_body(codec: &mut Codec, seq: u64, base: &State, current: &State) -> Result<Vec<u8>, CodecError> {
    // A snapshot poll always carries its delta, empty when nothing changed,
    // so the server can tell it from a heartbeat (see sync::session).
    let delta = Some(diff(base, current));
    codec.encode(&PollRequest { base: seq, delta, ..PollRequest::default() }.encode())
}

/// The first index of the churn trace.
pub const CHURN_START: usize = 4;

/// Costs of the standard scenarios.
///
/// # Errors
/// When the codec refuses a body.
pub fn costs(p: &Prepared, codec: &mut Codec) -> Result<Vec<Cost>, CodecError> {
    let step = |codec: &mut Codec, key: &'static str, name: &str, from: usize, to: usize| -> Result<Cost, CodecError> {
        Ok(Cost {
            key,
            name: name.into(),
            // The server acknowledged `from` as sequence number from + 1.
            tern: poll_body(codec, from as u64 + 1, &p.states[from], &p.states[to])?.len(),
            portainer: baseline::patch_bytes(&p.documents[from], &p.documents[to]),
            polls: 1,
        })
    };
    let mut out = vec![Cost {
        key: "first_full_snapshot",
        name: "first full snapshot".into(),
        tern: poll_body(codec, 0, &State::default(), &p.states[0])?.len(),
        portainer: baseline::full_bytes(&p.documents[0]),
        polls: 1,
    }];
    out.push(step(codec, "unchanged_state", "unchanged state", 0, 1)?);
    out.push(step(codec, "one_container_stopped", "one container stopped", 1, 2)?);
    out.push(step(codec, "one_image_pulled", "one image pulled", 2, 3)?);
    let mut churn = Cost { key: "churn_trace", name: String::new(), tern: 0, portainer: 0, polls: 0 };
    for i in CHURN_START..p.states.len() {
        let c = step(codec, "", "", i - 1, i)?;
        churn.tern += c.tern;
        churn.portainer += c.portainer;
        churn.polls += 1;
    }
    churn.name = format!("churn trace ({} events)", churn.polls);
    out.push(churn);
    Ok(out)
}

/// The costs as a table, for the bench output and the test log.
pub fn table(costs: &[Cost]) -> String {
    let mut s = format!("{:<28} {:>12} {:>16} {:>8}\n", "scenario", "tern bytes", "portainer bytes", "ratio");
    for c in costs {
        s.push_str(&format!("{:<28} {:>12} {:>16} {:>7.1}x\n", c.name, c.tern, c.portainer, c.ratio()));
    }
    s
}
