//! The simulated hosts' states: the recorded fixture hosts
//! (`tests/fixtures`, host40 and train), every step made canonical once,
//! then given to each simulated agent with fresh ids.
//!
//! An agent holds no `State`: it holds which recording, which step and its
//! salt, and builds the states it needs when it has something to send (its
//! first contact, a change). So 50,000 agents cost a few dozen bytes each
//! here, and every delta they send is the one a real agent with that host
//! would send.
//!
//! Fresh ids: every container, image and network id is XORed with the
//! agent's 32-byte salt (a bijection, so an image id and the containers
//! that name it still agree, and each step's ids stay those of the step
//! before), and the host gets its own name and engine id.

use std::sync::Arc;

use tern::agent::CanonicalOptions;
use tern::sync::state::{Container, Id, Image, Network};
use tern::sync::{Delta, State, diff};
use tern_bench::fixture;

/// Why the fixtures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StatesError {
    /// A recording is missing or broken.
    #[error("{0}")]
    Fixture(#[from] fixture::FixtureError),
    /// A recorded engine response does not make a canonical state.
    #[error("recording {0}: {1}")]
    Canonical(String, String),
}

/// Every step of the recorded hosts, canonical.
#[derive(Debug)]
pub struct Catalogue {
    recordings: Vec<Vec<State>>,
}

/// Where an agent's host is in its recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Which recording.
    pub recording: usize,
    /// Which step of it.
    pub step: usize,
    /// Moving towards the end of the recording (true) or back.
    pub forward: bool,
}

impl Catalogue {
    /// Loads `host40` and `train` from `tests/fixtures`.
    ///
    /// # Errors
    /// When a recording cannot be read.
    pub fn load() -> Result<Arc<Self>, StatesError> {
        Self::load_names(&["host40", "train"])
    }

    /// Loads the named recordings.
    ///
    /// # Errors
    /// When a recording cannot be read.
    pub fn load_names(names: &[&str]) -> Result<Arc<Self>, StatesError> {
        let opts = CanonicalOptions::default();
        let mut recordings = Vec::new();
        for name in names {
            let rec = fixture::load(&fixture::dir(), name)?;
            let states = rec
                .steps
                .iter()
                .map(|s| s.raw.canonical(&opts).map_err(|e| StatesError::Canonical((*name).to_owned(), e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            recordings.push(states);
        }
        Ok(Arc::new(Self { recordings }))
    }

    /// A catalogue of given states (tests).
    pub fn of(recordings: Vec<Vec<State>>) -> Arc<Self> {
        Arc::new(Self { recordings })
    }

    /// How many recordings.
    pub fn len(&self) -> usize {
        self.recordings.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.recordings.is_empty()
    }

    /// A starting point for agent `n`: recordings in turn, a step drawn at
    /// random (so a fleet is not 5,000 copies of one moment).
    pub fn start(&self, n: usize, rng: &mut fastrand::Rng) -> Host {
        let recording = n % self.recordings.len();
        Host { recording, step: rng.usize(..self.recordings[recording].len()), forward: rng.bool() }
    }

    /// The next step whose state differs: one recorded event later (or
    /// earlier, walking back from either end, so every change is one
    /// recorded event). A recording's "nothing happened" step is passed
    /// over.
    pub fn next(&self, h: Host) -> Host {
        let mut next = self.step(h);
        for _ in 0..self.recordings[h.recording].len() {
            if self.recorded(next) != self.recorded(h) {
                break;
            }
            next = self.step(next);
        }
        next
    }

    fn step(&self, h: Host) -> Host {
        let last = self.recordings[h.recording].len() - 1;
        if last == 0 {
            return h;
        }
        let forward = if h.step == last {
            false
        } else if h.step == 0 {
            true
        } else {
            h.forward
        };
        let step = if forward { h.step + 1 } else { h.step - 1 };
        Host { step, forward, ..h }
    }

    /// The recorded state at `h` (the fixture's own ids).
    pub fn recorded(&self, h: Host) -> &State {
        &self.recordings[h.recording][h.step]
    }

    /// The state at `h` as the agent salted `salt` holds it.
    pub fn state(&self, h: Host, salt: &[u8; 32], name: &str) -> State {
        fresh(self.recorded(h), salt, name)
    }

    /// The ids of the containers at `h`, as the agent salted `salt` holds
    /// them (a command's targets), without building the state.
    pub fn container_ids(&self, h: Host, salt: &[u8; 32]) -> Vec<Id> {
        self.recorded(h).containers.iter().map(|c| salted(c.id, salt)).collect()
    }

    /// The delta an agent at `current` sends against its acknowledged
    /// `base` (`None`: the server holds nothing yet, a first contact or
    /// after a resync). The same base and current: the explicit empty
    /// delta of an unchanged snapshot, without building anything.
    pub fn delta(&self, base: Option<Host>, current: Host, salt: &[u8; 32], name: &str) -> Delta {
        match base {
            Some(b) if b.recording == current.recording && b.step == current.step => Delta::default(),
            Some(b) => diff(&self.state(b, salt, name), &self.state(current, salt, name)),
            None => diff(&State::default(), &self.state(current, salt, name)),
        }
    }
}

impl Host {
    /// The same host at another step.
    pub fn with_step(self, step: usize) -> Self {
        Self { step, ..self }
    }
}

/// An id with the agent's salt.
pub fn salted(id: Id, salt: &[u8; 32]) -> Id {
    let mut out = id.0;
    out.iter_mut().zip(salt).for_each(|(b, s)| *b ^= s);
    Id(out)
}

/// `state` with fresh ids (see the module's notes) and host name `name`.
pub fn fresh(state: &State, salt: &[u8; 32], name: &str) -> State {
    let mut host = state.host.clone();
    host.hostname = name.to_owned();
    host.engine_id = salted(Id::default(), salt).to_string()[..36].to_owned();
    State {
        host,
        containers: state
            .containers
            .iter()
            .map(|c| Container { id: salted(c.id, salt), image_id: c.image_id.map(|i| salted(i, salt)), ..c.clone() })
            .collect(),
        images: state.images.iter().map(|i| Image { id: salted(i.id, salt), ..i.clone() }).collect(),
        volumes: state.volumes.clone(),
        networks: state.networks.iter().map(|n| Network { id: salted(n.id, salt), ..n.clone() }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Arc<Catalogue> {
        Catalogue::load_names(&["host40"]).unwrap()
    }

    #[test]
    fn an_unchanged_state_is_the_empty_delta_a_real_diff_gives() {
        let c = catalogue();
        let h = Host { recording: 0, step: 5, forward: true };
        let s = c.state(h, &[7; 32], "a");
        assert_eq!(diff(&s, &s), Delta::default());
        assert_eq!(c.delta(Some(h), h, &[7; 32], "a"), Delta::default());
    }

    #[test]
    fn fresh_ids_differ_per_agent_and_keep_the_states_shape_and_references() {
        let c = catalogue();
        let h = Host { recording: 0, step: 0, forward: true };
        let (a, b) = (c.state(h, &[1; 32], "a"), c.state(h, &[2; 32], "b"));
        let recorded = c.recorded(h);
        assert_eq!(a.containers.len(), recorded.containers.len());
        assert_eq!(a.images.len(), recorded.images.len());
        assert!(a.containers.iter().zip(b.containers.iter()).all(|(x, y)| x.id != y.id));
        // Every image a container names is still in the state.
        let named = a.containers.iter().filter_map(|c| c.image_id).filter(|i| a.images.get(i).is_some()).count();
        let recorded_named =
            recorded.containers.iter().filter_map(|c| c.image_id).filter(|i| recorded.images.get(i).is_some()).count();
        assert_eq!(named, recorded_named);
        assert!(named > 0);
        // The agent's command targets are its containers.
        let ids = c.container_ids(h, &[1; 32]);
        assert!(ids.iter().all(|id| a.containers.get(id).is_some()));
    }

    #[test]
    fn a_change_is_one_recorded_event_and_the_walk_turns_at_both_ends() {
        let c = catalogue();
        let last = c.recordings[0].len() - 1;
        let end = Host { recording: 0, step: last, forward: true };
        assert_eq!(c.next(end), Host { recording: 0, step: last - 1, forward: false });
        let start = Host { recording: 0, step: 2, forward: false };
        assert_eq!(c.next(start), Host { recording: 0, step: 1, forward: false });
        // Step 1 of host40 is the same host later, nothing done: passed over.
        assert_eq!(c.recorded(Host { recording: 0, step: 0, forward: true }), c.recorded(start.with_step(1)));
        let zero = Host { recording: 0, step: 0, forward: false };
        assert_eq!(c.next(zero), Host { recording: 0, step: 2, forward: true });
        assert_eq!(
            c.next(Host { recording: 0, step: 1, forward: false }),
            Host { recording: 0, step: 2, forward: true }
        );
        // Applying the delta of one step to the state before it gives the state after it.
        let (a, b) = (Host { recording: 0, step: 2, forward: true }, Host { recording: 0, step: 3, forward: true });
        let d = c.delta(Some(a), b, &[9; 32], "x");
        assert!(!d.is_empty());
        let applied = tern::sync::apply(&c.state(a, &[9; 32], "x"), &d).unwrap();
        assert_eq!(applied, c.state(b, &[9; 32], "x"));
    }
}
