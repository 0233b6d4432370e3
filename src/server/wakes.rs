//! Wakes: a held agent session learns at once that a command was queued
//! for its environment, without asking the database again and again.
//!
//! A session subscribes to its environment ([`Wakes::subscribe`]) and
//! waits on its [`Subscription`] beside whatever else it waits for. The
//! store's pool wakes an environment when a transaction that queued a
//! command for it commits (`store::pool::Pool::write`). Other server
//! replicas on the same PostgreSQL database hear of it through
//! `NOTIFY tern_wake` (sent in that transaction, so delivered on commit),
//! which each replica's listener (`store::pool::Pool::listen`) forwards
//! here; a listener that lost its connection wakes every subscription when
//! it is back, since it may have missed some.
//!
//! A wake says "look again", nothing more: one that finds nothing new (a
//! command already taken by an earlier look, a wake heard twice, once here
//! and once through PostgreSQL) costs a look and no harm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Each environment's subscriptions: one watch channel per environment
/// that has any, whose value counts the wakes (its receivers are the
/// subscriptions).
type Waiting = Mutex<HashMap<u64, watch::Sender<u64>>>;

/// The held sessions waiting for their environment's commands, by
/// environment (see the module doc).
#[derive(Debug, Default)]
pub struct Wakes {
    /// Shared with every [`Subscription`], which removes its environment's
    /// entry when it is the last one to go.
    waiting: Arc<Waiting>,
}

impl Wakes {
    /// Subscribes to `environment`'s wakes: every [`Self::wake`] of it from
    /// now on (or [`Self::wake_all`]) wakes the subscription, also one
    /// that comes before the subscription is waited on. An environment
    /// may have any number of subscriptions; a wake wakes them all.
    #[must_use]
    pub fn subscribe(&self, environment: u64) -> Subscription {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = waiting.entry(environment).or_insert_with(|| watch::Sender::new(0)).subscribe();
        Subscription { environment, rx, waiting: self.waiting.clone() }
    }

    /// Wakes every subscription of `environment`. Nothing (and nothing
    /// kept) when it has none.
    pub fn wake(&self, environment: u64) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = waiting.get(&environment) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every subscription of every environment (after wakes may
    /// have been missed: PostgreSQL's listener reconnected).
    pub fn wake_all(&self) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for tx in waiting.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How many environments have a subscription now.
    #[must_use]
    pub fn environments(&self) -> usize {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One subscription to an environment's wakes ([`Wakes::subscribe`]);
/// the last of an environment's to be dropped removes its entry.
#[derive(Debug)]
pub struct Subscription {
    environment: u64,
    rx: watch::Receiver<u64>,
    waiting: Arc<Waiting>,
}

impl Subscription {
    /// The environment subscribed to.
    #[must_use]
    pub fn environment(&self) -> u64 {
        self.environment
    }

    /// Resolves once the environment was woken since this subscription was
    /// made or last resolved here: any number of wakes meanwhile resolve
    /// it once. Cancel-safe: dropped unresolved (the other branch of a
    /// `tokio::select!` won), it loses no wake.
    pub async fn woken(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender is dropped only with the last subscription, which
            // is this one: cannot happen. Never resolve rather than spin.
            std::future::pending::<()>().await;
        }
    }

    /// Whether a wake came that [`Self::woken`] has not yet resolved for
    /// (it would resolve at once).
    #[must_use]
    pub fn is_woken(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // Subscriptions are made and dropped under the lock, so the count
        // cannot change under us; this one is still counted.
        if waiting.get(&self.environment).is_some_and(|tx| tx.receiver_count() <= 1) {
            waiting.remove(&self.environment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `sub` resolves within a short while.
    async fn wakes_soon(sub: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), sub.woken()).await.is_ok()
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost_and_many_count_once() {
        let wakes = Wakes::default();
        let mut sub = wakes.subscribe(7);
        assert!(!sub.is_woken());
        wakes.wake(7);
        wakes.wake(7);
        assert!(sub.is_woken());
        assert!(wakes_soon(&mut sub).await, "the wake before the wait");
        assert!(!sub.is_woken());
        assert!(!wakes_soon(&mut sub).await, "two wakes, one resolution");
        wakes.wake(7);
        assert!(wakes_soon(&mut sub).await, "and the next");
    }

    #[tokio::test]
    async fn a_wake_made_while_waiting_resolves_the_wait() {
        let wakes = Arc::new(Wakes::default());
        let mut sub = wakes.subscribe(3);
        let waker = {
            let wakes = wakes.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                wakes.wake(3);
            })
        };
        tokio::time::timeout(Duration::from_secs(5), sub.woken()).await.expect("woken");
        waker.await.unwrap();
    }

    #[tokio::test]
    async fn another_environments_wake_does_not_wake() {
        let wakes = Wakes::default();
        let mut sub = wakes.subscribe(1);
        wakes.wake(2);
        assert!(!sub.is_woken());
        assert!(!wakes_soon(&mut sub).await);
        assert_eq!(wakes.environments(), 1, "a wake of an environment nobody waits for keeps nothing");
    }

    #[tokio::test]
    async fn every_subscription_of_the_environment_is_woken() {
        let wakes = Wakes::default();
        let mut a = wakes.subscribe(5);
        let mut b = wakes.subscribe(5);
        let mut other = wakes.subscribe(6);
        wakes.wake(5);
        assert!(wakes_soon(&mut a).await);
        assert!(wakes_soon(&mut b).await);
        assert!(!wakes_soon(&mut other).await);
        wakes.wake_all();
        assert!(wakes_soon(&mut a).await);
        assert!(wakes_soon(&mut b).await);
        assert!(wakes_soon(&mut other).await, "wake_all wakes every environment's");
    }

    #[tokio::test]
    async fn waiting_in_select_loses_no_wake() {
        let wakes = Wakes::default();
        let mut sub = wakes.subscribe(9);
        // The other branch wins: the wait is dropped unresolved.
        tokio::select! {
            biased;
            () = std::future::ready(()) => {}
            () = sub.woken() => panic!("not woken yet"),
        }
        wakes.wake(9);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => panic!("the wake was lost"),
            () = sub.woken() => {}
        }
    }

    #[test]
    fn the_last_subscription_to_go_removes_its_environment() {
        let wakes = Wakes::default();
        let a = wakes.subscribe(1);
        let b = wakes.subscribe(1);
        let c = wakes.subscribe(2);
        assert_eq!(wakes.environments(), 2);
        drop(a);
        assert_eq!(wakes.environments(), 2, "b still waits");
        drop(c);
        assert_eq!(wakes.environments(), 1);
        wakes.wake(1);
        assert!(b.is_woken());
        drop(b);
        assert_eq!(wakes.environments(), 0);
        assert!(wakes.waiting.lock().unwrap().is_empty());
        // Subscribing again after: a fresh entry, woken as before.
        let d = wakes.subscribe(1);
        assert!(!d.is_woken(), "an earlier wake is not this subscription's");
        wakes.wake(1);
        assert!(d.is_woken());
    }
}
