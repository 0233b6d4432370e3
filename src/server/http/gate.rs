//! Who may hold a connection: the server-wide cap (sized below the
//! process's open-file limit), the cap per client address, and which
//! connection gives way when the server is full.
//!
//! * A client address is its IPv4 address, or its IPv6 /64 (one host
//!   usually holds a whole /64, so counting exact IPv6 addresses would let
//!   one host open connections without end); see [`address_key`].
//! * Past the per-address cap a new connection from that address is closed
//!   at once: an address's own excess is its own problem. The same holds
//!   per prefix (an IPv4 /24, an IPv6 /64: a site's or a carrier's block;
//!   see [`prefix_key`]) with a cap of its own.
//! * Both caps count connections that have not yet carried a poll that
//!   authenticated: once one has ([`Authenticate::mark`]), the connection
//!   is an agent's, and no longer counts against its address or prefix
//!   (it still takes a slot of the server-wide cap). So a thousand agents
//!   behind one carrier NAT or load balancer all get in, while a flood of
//!   connections that prove nothing is still capped per address.
//! * Past the server-wide cap, the newcomer does not simply lose: the
//!   address holding the most connections still in their TLS handshake
//!   gives up its oldest one (if it is not the newcomer's own), or, when no
//!   connection is handshaking, its oldest idle kept-alive one (closed
//!   gracefully, as an idle timeout would: an agent reconnects with a
//!   resumed session). So a flood from a few addresses cannot keep a good
//!   client from another address out, and nothing that is mid-request is
//!   cut.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a newcomer waits for the slot an eviction frees.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// The key connections and failed logins are counted by: an IPv4 address
/// (IPv4-mapped IPv6 as IPv4), or an IPv6 address's /64; no address (a
/// request from in process) counts as one client.
pub fn address_key(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        None => IpAddr::from([0u8; 4]),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        Some(v4) => v4,
    }
}

/// The key of the per-prefix cap: an IPv4 address's /24 (IPv4-mapped
/// IPv6 as IPv4), an IPv6 address's /64.
pub fn prefix_key(ip: IpAddr) -> IpAddr {
    match address_key(Some(ip)) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        v6 => v6,
    }
}

/// The per-client caps (`usize::MAX`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Unauthenticated connections from one address key ([`address_key`]).
    pub per_address: usize,
    /// Unauthenticated connections from one prefix ([`prefix_key`]).
    pub per_prefix: usize,
}

/// What a connection is doing, as far as eviction cares.
#[derive(Debug)]
enum Phase {
    /// In its TLS handshake: nothing invested yet, the first to go.
    Handshake,
    /// Serving HTTP; `requests` counts the requests under way, so an idle
    /// one (0) can be closed gracefully.
    Serving { requests: Arc<AtomicUsize> },
}

#[derive(Debug)]
struct Entry {
    key: IpAddr,
    prefix: IpAddr,
    /// Counted against its address's and prefix's caps: until a poll on it
    /// authenticates.
    counted: bool,
    phase: Phase,
    close: Arc<Notify>,
    /// Asked to close already: not asked again for another newcomer.
    evicted: bool,
}

#[derive(Debug, Default)]
struct Table {
    /// Open connections by admission order (the oldest first).
    open: BTreeMap<u64, Entry>,
    /// Unauthenticated connections per address key.
    per_address: HashMap<IpAddr, usize>,
    /// Unauthenticated connections per prefix.
    per_prefix: HashMap<IpAddr, usize>,
    next: u64,
}

/// The connection caps, shared by the accept loop and every connection.
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    caps: Caps,
    table: Mutex<Table>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its address holds its share already: (held, cap).
    #[error(
        "its address holds {0} connections that have not authenticated, the cap (--max-connections-per-address) is {1}"
    )]
    Address(usize, usize),
    /// Its prefix holds its share already: (prefix, held, cap).
    #[error(
        "its prefix {0} holds {1} connections that have not authenticated, the cap (--max-connections-per-prefix) is {2}"
    )]
    Prefix(IpAddr, usize, usize),
    /// The server is full and nothing could give way.
    #[error("{0} connections are open and none could give way")]
    Full(usize),
}

/// One admitted connection: its slot, given back on drop.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    id: u64,
    _slot: OwnedSemaphorePermit,
    /// Notified when this connection should close (evicted).
    pub close: Arc<Notify>,
}

impl Gate {
    /// A gate for at most `max` connections, `per_address` unauthenticated
    /// ones from one address key (no prefix cap).
    pub fn new(max: usize, per_address: usize) -> Arc<Self> {
        Self::with_caps(max, Caps { per_address, per_prefix: usize::MAX })
    }

    /// A gate for at most `max` connections within `caps`.
    pub fn with_caps(max: usize, caps: Caps) -> Arc<Self> {
        Arc::new(Self { slots: Arc::new(Semaphore::new(max.max(1))), caps, table: Mutex::default() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a connection from `ip`, evicting another when the server is
    /// full (see the module's notes); waits at most [`EVICTION_WAIT`] for
    /// the slot an eviction frees.
    ///
    /// # Errors
    /// [`Refused`] when it may not have a connection.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let (key, prefix) = (address_key(Some(ip)), prefix_key(ip));
        // Counted from the start, so a burst from one address cannot pass
        // its cap while its connections wait for slots.
        let id = {
            let mut t = self.table();
            let held = t.per_address.get(&key).copied().unwrap_or(0);
            if held >= self.caps.per_address {
                return Err(Refused::Address(held, self.caps.per_address));
            }
            let in_prefix = t.per_prefix.get(&prefix).copied().unwrap_or(0);
            if in_prefix >= self.caps.per_prefix {
                return Err(Refused::Prefix(prefix, in_prefix, self.caps.per_prefix));
            }
            *t.per_address.entry(key).or_insert(0) += 1;
            *t.per_prefix.entry(prefix).or_insert(0) += 1;
            t.next += 1;
            t.next
        };
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if self.evict_for(key) => {
                tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned()).await.ok().and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            Self::release(&mut self.table(), key, prefix);
            return Err(Refused::Full(self.table().open.len()));
        };
        let close = Arc::new(Notify::new());
        let entry = Entry { key, prefix, counted: true, phase: Phase::Handshake, close: close.clone(), evicted: false };
        self.table().open.insert(id, entry);
        Ok(Admission { gate: self.clone(), id, _slot: slot, close })
    }

    /// One unauthenticated connection less for `key` and `prefix`.
    fn release(t: &mut Table, key: IpAddr, prefix: IpAddr) {
        for (map, k) in [(&mut t.per_address, key), (&mut t.per_prefix, prefix)] {
            if let Some(n) = map.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
    }

    /// Asks one connection of another address to close so `key` gets its
    /// slot: the oldest handshaking one of the address with the most
    /// handshaking, else the oldest idle one of the address with the most
    /// connections. True when one was asked.
    fn evict_for(&self, key: IpAddr) -> bool {
        let mut t = self.table();
        let handshaking = |e: &Entry| !e.evicted && matches!(e.phase, Phase::Handshake);
        let idle = |e: &Entry| {
            !e.evicted && matches!(&e.phase, Phase::Serving { requests } if requests.load(Ordering::Acquire) == 0)
        };
        for candidate in [&handshaking as &dyn Fn(&Entry) -> bool, &idle] {
            let mut counts: HashMap<IpAddr, usize> = HashMap::new();
            for e in t.open.values().filter(|e| candidate(e)) {
                *counts.entry(e.key).or_default() += 1;
            }
            let Some((&top, _)) = counts.iter().filter(|(k, _)| **k != key).max_by_key(|(_, n)| **n) else {
                continue;
            };
            if let Some(e) = t.open.values_mut().find(|e| e.key == top && candidate(e)) {
                e.evicted = true;
                e.close.notify_one();
                return true;
            }
        }
        false
    }
}

impl Admission {
    /// The TLS handshake is done: from now on the connection serves
    /// requests, counted in `requests`.
    pub fn serving(&self, requests: Arc<AtomicUsize>) {
        if let Some(e) = self.gate.table().open.get_mut(&self.id) {
            e.phase = Phase::Serving { requests };
        }
    }
}

impl Admission {
    /// A poll on this connection authenticated (see the module's notes):
    /// it no longer counts against its address's and prefix's caps.
    /// Returns true the first time.
    pub fn authenticated(&self) -> bool {
        let mut t = self.gate.table();
        let Some(e) = t.open.get_mut(&self.id).filter(|e| e.counted) else { return false };
        e.counted = false;
        let (key, prefix) = (e.key, e.prefix);
        Gate::release(&mut t, key, prefix);
        true
    }
}

/// A handle on a connection's [`Admission`] for its requests (in their
/// extensions): the poll handler marks the connection an agent's.
#[derive(Debug, Clone)]
pub struct Authenticate(pub Arc<Admission>);

impl Authenticate {
    /// See [`Admission::authenticated`].
    pub fn mark(&self) -> bool {
        self.0.authenticated()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut t = self.gate.table();
        if let Some(e) = t.open.remove(&self.id).filter(|e| e.counted) {
            Gate::release(&mut t, e.key, e.prefix);
        }
    }
}

/// Raises the process's soft limit on open files to its hard limit (a
/// server holds a socket per connection; distributions often start
/// services at 1,024) and returns the limit now in force, `None` where it
/// cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write `lim`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Files kept free of connections: the database and its journal, the
/// blocking pool's work, sockets accepted only to be closed, compose and
/// log files.
pub const RESERVED_FILES: usize = 64;

/// The connection cap for an open-file limit: `wanted`, or less so that
/// connections never take the last [`RESERVED_FILES`] files.
pub fn cap_for(wanted: usize, open_files: Option<u64>) -> usize {
    match open_files {
        Some(n) => wanted.min((n as usize).saturating_sub(RESERVED_FILES).max(8)),
        None => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        assert_eq!(address_key(Some(ip("2001:db8:1:2:aaaa::1"))), ip("2001:db8:1:2::"));
        assert_eq!(address_key(Some(ip("2001:db8:1:2:ffff::9"))), ip("2001:db8:1:2::"));
        assert_ne!(address_key(Some(ip("2001:db8:1:3::1"))), ip("2001:db8:1:2::"));
        assert_eq!(address_key(Some(ip("::ffff:192.0.2.9"))), ip("192.0.2.9"));
        assert_eq!(address_key(Some(ip("192.0.2.9"))), ip("192.0.2.9"));
        assert_eq!(address_key(None), ip("0.0.0.0"));
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        assert_eq!(cap_for(8192, Some(1_048_576)), 8192);
        assert_eq!(cap_for(8192, Some(256)), 256 - RESERVED_FILES);
        assert_eq!(cap_for(8192, Some(10)), 8);
        assert_eq!(cap_for(8192, None), 8192);
    }

    #[tokio::test]
    async fn one_ipv6_host_is_one_address_and_its_excess_is_refused() {
        let gate = Gate::new(100, 2);
        let _a = gate.admit(ip("2001:db8::1")).await.unwrap();
        let _b = gate.admit(ip("2001:db8::2")).await.unwrap();
        assert_eq!(gate.admit(ip("2001:db8::3")).await.unwrap_err(), Refused::Address(2, 2));
        let _c = gate.admit(ip("2001:db8:0:1::3")).await.unwrap();
        drop(_a);
        let _d = gate.admit(ip("2001:db8::4")).await.unwrap();
    }

    #[test]
    fn prefixes_are_ipv4_slash_24_and_ipv6_slash_64() {
        assert_eq!(prefix_key(ip("192.0.2.9")), ip("192.0.2.0"));
        assert_eq!(prefix_key(ip("::ffff:192.0.2.200")), ip("192.0.2.0"));
        assert_ne!(prefix_key(ip("192.0.3.9")), ip("192.0.2.0"));
        assert_eq!(prefix_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    }

    #[tokio::test]
    async fn authenticated_connections_leave_their_address_and_prefix_caps() {
        let gate = Gate::with_caps(100, Caps { per_address: 2, per_prefix: 3 });
        let a = gate.admit(ip("192.0.2.1")).await.unwrap();
        let b = gate.admit(ip("192.0.2.1")).await.unwrap();
        assert_eq!(gate.admit(ip("192.0.2.1")).await.unwrap_err(), Refused::Address(2, 2));
        // Another address of the same /24 gets one, then the prefix is full.
        let c = gate.admit(ip("192.0.2.2")).await.unwrap();
        assert_eq!(gate.admit(ip("192.0.2.3")).await.unwrap_err(), Refused::Prefix(ip("192.0.2.0"), 3, 3));
        // Agents: their connections stop counting, once each.
        assert!(a.authenticated());
        assert!(!a.authenticated());
        assert!(b.authenticated());
        let many: Vec<Admission> = futures_util::future::join_all((0..2).map(|_| gate.admit(ip("192.0.2.1"))))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for m in &many {
            assert!(m.authenticated());
        }
        // Dropping an authenticated connection gives back no cap it no longer holds.
        drop((a, b, many));
        let d = gate.admit(ip("192.0.2.1")).await.unwrap();
        let e = gate.admit(ip("192.0.2.4")).await.unwrap();
        assert_eq!(gate.admit(ip("192.0.2.5")).await.unwrap_err(), Refused::Prefix(ip("192.0.2.0"), 3, 3));
        drop((c, d));
        assert_eq!(gate.table().per_prefix[&ip("192.0.2.0")], 1);
        assert_eq!(gate.table().per_address.keys().collect::<Vec<_>>(), vec![&ip("192.0.2.4")]);
        drop(e);
        assert!(gate.table().per_address.is_empty() && gate.table().per_prefix.is_empty());
    }

    #[tokio::test]
    async fn a_full_server_makes_the_biggest_handshaking_address_give_way() {
        let gate = Gate::new(4, 10);
        let flood: Vec<_> = futures_util::future::join_all((0..4).map(|_| gate.admit(ip("192.0.2.1")))).await;
        let flood: Vec<Admission> = flood.into_iter().map(Result::unwrap).collect();
        // The flood's own next connection finds no one else to evict.
        assert!(matches!(gate.admit(ip("192.0.2.1")).await, Err(Refused::Full(4))));
        // A good client: the flood's oldest is asked to close; when it does,
        // the client gets its slot.
        let closes: Vec<_> = flood.iter().map(|a| a.close.clone()).collect();
        let watcher = tokio::spawn(async move {
            closes[0].notified().await;
        });
        let gate2 = gate.clone();
        let client = tokio::spawn(async move { gate2.admit(ip("198.51.100.7")).await });
        tokio::time::timeout(Duration::from_secs(1), watcher).await.expect("the oldest was asked to close").unwrap();
        let mut flood = flood.into_iter();
        drop(flood.next());
        let client = client.await.unwrap().expect("admitted");
        // Once serving, with a request under way, it is not evicted; idle, it may be.
        let requests = Arc::new(AtomicUsize::new(1));
        client.serving(requests.clone());
        let rest: Vec<Admission> = flood.collect();
        for a in &rest {
            a.serving(Arc::new(AtomicUsize::new(1)));
        }
        assert!(!gate.evict_for(ip("203.0.113.1")), "nothing handshaking or idle");
        requests.store(0, Ordering::Release);
        assert!(gate.evict_for(ip("203.0.113.1")), "an idle one gives way");
    }
}
