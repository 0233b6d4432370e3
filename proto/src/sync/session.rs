//! Both ends of state sync over polls, as plain values (no I/O).
//!
//! The agent sends `diff(acked base, current)` with the base's sequence
//! number; the server applies it and answers with the sequence number of
//! the state it now holds. A lost reply costs nothing extra: the server
//! keeps the state before its latest one, so the agent's next delta, still
//! against the old base, applies. Anything else the server cannot place
//! gets a resync, and the server's state stays as it was.

use super::{Delta, State, apply, diff};

/// The server's copy of one agent's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replica {
    seq: u64,
    state: State,
    /// The state before the latest, for an agent that missed our reply.
    prev: Option<(u64, State)>,
}

/// What the server answers a poll's state part with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The server now holds this sequence number.
    Acked(u64),
    /// The delta could not be placed or applied: send everything.
    Resync,
}

impl Replica {
    /// A replica restored from storage.
    pub fn restore(seq: u64, state: State, prev: Option<(u64, State)>) -> Self {
        Self { seq, state, prev }
    }

    /// The current sequence number and state.
    pub fn current(&self) -> (u64, &State) {
        (self.seq, &self.state)
    }

    /// The state kept for an agent that missed a reply.
    pub fn previous(&self) -> Option<(u64, &State)> {
        self.prev.as_ref().map(|(s, st)| (*s, st))
    }

    /// Takes a poll's `base` and its delta. No delta means the poll reports
    /// no state (a heartbeat or command poll): nothing changes. An empty
    /// delta means "nothing changed since `base`".
    pub fn receive(&mut self, base: u64, delta: Option<&Delta>) -> Received {
        let Some(delta) = delta else {
            return Self::receive_nothing(self.seq, self.prev.as_ref().map(|(s, _)| *s), base);
        };
        let empty = State::default();
        let base_state = if base == self.seq {
            &self.state
        } else if let Some((_, prev)) = self.prev.as_ref().filter(|(s, _)| *s == base) {
            prev
        } else if base == 0 {
            &empty
        } else {
            return Received::Resync;
        };
        let Ok(next) = apply(base_state, delta) else { return Received::Resync };
        if next == self.state {
            return Received::Acked(self.seq);
        }
        let old = std::mem::replace(&mut self.state, next);
        self.prev = Some((self.seq, old));
        self.seq += 1;
        Received::Acked(self.seq)
    }
}

impl Replica {
    /// [`Self::receive`] of a poll that reports no state, from the stored
    /// sequence numbers alone (`seq`, and the previous state's): the server
    /// answers most polls without decoding a state.
    #[must_use]
    pub fn receive_nothing(seq: u64, prev_seq: Option<u64>, base: u64) -> Received {
        let known = base == seq || base == 0 || prev_seq == Some(base);
        if known { Received::Acked(seq) } else { Received::Resync }
    }
}

/// The agent's side: the acknowledged base it diffs against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSync {
    base_seq: u64,
    base: State,
}

/// A poll's state part, kept until its reply arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The base's sequence number.
    pub base: u64,
    /// The change since the base when a snapshot is due (empty when nothing
    /// changed); `None` in a poll that reports no state.
    pub delta: Option<Delta>,
    sent: Option<State>,
}

impl AgentSync {
    /// Restores the acknowledged base (from the agent's store).
    pub fn restore(base_seq: u64, base: State) -> Self {
        Self { base_seq, base }
    }

    /// The acknowledged base and its sequence number.
    pub fn base(&self) -> (u64, &State) {
        (self.base_seq, &self.base)
    }

    /// The state part of a poll made now. Without a due snapshot, or with
    /// nothing changed, it carries no delta. However long the agent was
    /// offline, this is one delta against the last acknowledged state.
    pub fn prepare(&self, current: &State, snapshot_due: bool) -> Outgoing {
        if !snapshot_due {
            return Outgoing { base: self.base_seq, delta: None, sent: None };
        }
        Outgoing { base: self.base_seq, delta: Some(diff(&self.base, current)), sent: Some(current.clone()) }
    }

    /// The reply to `out` arrived. Returns true when the base changed (and
    /// should be persisted).
    pub fn on_reply(&mut self, out: Outgoing, acked: u64, resync: bool) -> bool {
        if resync {
            let changed = self.base_seq != 0;
            *self = Self::default();
            return changed;
        }
        let Some(sent) = out.sent else { return false };
        if acked == self.base_seq && sent == self.base {
            return false;
        }
        self.base_seq = acked;
        self.base = sent;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::state::{Container, ContainerStatus, Id};

    fn state(n: u8, status: ContainerStatus) -> State {
        let mut s = State::default();
        for i in 0..n {
            s.containers.insert(Container { id: Id([i; 32]), name: format!("c{i}"), status, ..Container::default() });
        }
        s
    }

    fn poll(agent: &mut AgentSync, server: &mut Replica, current: &State) -> Received {
        let out = agent.prepare(current, true);
        let r = server.receive(out.base, out.delta.as_ref());
        match r {
            Received::Acked(seq) => agent.on_reply(out, seq, false),
            Received::Resync => agent.on_reply(out, 0, true),
        };
        r
    }

    #[test]
    fn first_contact_then_nothing_then_a_change() {
        let (mut a, mut s) = (AgentSync::default(), Replica::default());
        let s1 = state(3, ContainerStatus::Running);
        assert_eq!(poll(&mut a, &mut s, &s1), Received::Acked(1));
        assert_eq!(s.current().1, &s1);
        let out = a.prepare(&s1, true);
        assert!(out.delta.as_ref().is_some_and(Delta::is_empty), "an unchanged state sends an empty delta");
        assert_eq!(poll(&mut a, &mut s, &s1), Received::Acked(1));
        let s2 = state(3, ContainerStatus::Exited);
        assert_eq!(poll(&mut a, &mut s, &s2), Received::Acked(2));
        assert_eq!(s.current().1, &s2);
    }

    #[test]
    fn a_lost_reply_costs_no_resync() {
        let (mut a, mut s) = (AgentSync::default(), Replica::default());
        poll(&mut a, &mut s, &state(2, ContainerStatus::Running));
        // The server applies this one, but its reply is lost.
        let lost = a.prepare(&state(2, ContainerStatus::Exited), true);
        assert_eq!(s.receive(lost.base, lost.delta.as_ref()), Received::Acked(2));
        // The agent's next poll is still against base 1, with a newer state.
        let s3 = state(3, ContainerStatus::Exited);
        assert_eq!(poll(&mut a, &mut s, &s3), Received::Acked(3));
        assert_eq!(s.current().1, &s3);
        assert_eq!(a.base(), (3, &s3));
        // Same when the state did not move on: the server acks what it has.
        let again = a.prepare(&s3, true);
        assert_eq!(s.receive(again.base, again.delta.as_ref()), Received::Acked(3));
    }

    #[test]
    fn a_delta_the_server_cannot_place_asks_for_a_resync_and_changes_nothing() {
        let (mut a, mut s) = (AgentSync::default(), Replica::default());
        poll(&mut a, &mut s, &state(2, ContainerStatus::Running));
        let before = s.clone();
        // An agent whose base the server never had (e.g. restored from an old backup).
        let mut stale = AgentSync::restore(42, state(1, ContainerStatus::Running));
        assert_eq!(poll(&mut stale, &mut s, &state(4, ContainerStatus::Running)), Received::Resync);
        assert_eq!(s, before);
        // The resync sends everything against the empty state, and lands.
        let s4 = state(4, ContainerStatus::Running);
        assert_eq!(poll(&mut stale, &mut s, &s4), Received::Acked(2));
        assert_eq!(s.current().1, &s4);
    }

    #[test]
    fn a_restarted_agent_resends_nothing() {
        let (mut a, mut s) = (AgentSync::default(), Replica::default());
        let s1 = state(5, ContainerStatus::Running);
        poll(&mut a, &mut s, &s1);
        let (seq, base) = a.base();
        let restarted = AgentSync::restore(seq, base.clone());
        assert!(restarted.prepare(&s1, true).delta.unwrap().is_empty());
    }

    #[test]
    fn a_poll_without_a_snapshot_changes_nothing_on_either_side() {
        let (mut a, mut s) = (AgentSync::default(), Replica::default());
        // A fresh agent's heartbeat must not look like an empty host.
        let s1 = state(2, ContainerStatus::Running);
        poll(&mut a, &mut s, &s1);
        let fresh = AgentSync::default();
        let hb = fresh.prepare(&State::default(), false);
        assert_eq!(s.receive(hb.base, hb.delta.as_ref()), Received::Acked(1));
        assert_eq!(s.current().1, &s1);
        let hb = a.prepare(&state(9, ContainerStatus::Running), false);
        assert!(!a.clone().on_reply(hb, 1, false));
    }
}
