//! TLS session tickets every replica can open: the keys that seal them live
//! in the database (`tls_ticket_keys`, each sealed in turn under the server
//! key), so an agent whose new connection lands on another replica, or on
//! the same server after a restart, still resumes its session: no
//! certificate and no signature cross the link (tests/replicas.rs
//! measures both handshakes across two replicas).
//!
//! A ticket is `key id (4 bytes) ‖ nonce (12) ‖ ChaCha20-Poly1305(state)`,
//! the key id bound as associated data. Keys turn over every [`ROTATE`]:
//! each replica looks at the table every [`REFRESH`], and when the newest
//! key is due to be replaced it adds the next one, active from
//! [`LEAD`] later, so that every replica holds it before any uses it (the
//! writers' lock makes one replica add it, not each). A key opens tickets
//! for [`LIFETIME`] after it stopped sealing new ones and is then
//! dropped: old tickets stop working, which bounds what a stolen key
//! exposes.

use std::sync::{Arc, RwLock};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::secrets::SecretKey;
use super::store::StoreError;
use super::store::pool::Pool;

/// How long a ticket is good for (the hint given to clients, and how long
/// a retired key still opens tickets), in seconds.
pub const LIFETIME: i64 = 12 * 3600;
/// How often the sealing key changes.
pub const ROTATE: i64 = 6 * 3600;
/// How far ahead of its use a new key is published.
pub const LEAD: i64 = 300;
/// How often a replica reads the keys.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// What the keys are sealed for, under the server key.
const OWNER: &str = "tls-ticket-key";

struct Key {
    id: u32,
    key: LessSafeKey,
    active_from: i64,
}

/// The ticketer rustls uses (see the module doc).
pub struct SharedTicketer {
    keys: RwLock<Vec<Key>>,
    now: fn() -> i64,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.keys.read().map(|k| k.iter().map(|k| k.id).collect()).unwrap_or_default();
        write!(f, "SharedTicketer({ids:?})")
    }
}

impl SharedTicketer {
    /// Loads (and, at first start, makes) the keys.
    ///
    /// # Errors
    /// When the store fails.
    pub fn load(pool: &Pool, secrets: &SecretKey) -> Result<Arc<Self>, StoreError> {
        let me = Arc::new(Self { keys: RwLock::new(Vec::new()), now: crate::clock::unix_now });
        me.refresh(pool, secrets)?;
        Ok(me)
    }

    /// Reads the keys again, adding the next one when it is due.
    ///
    /// # Errors
    /// When the store fails.
    pub fn refresh(&self, pool: &Pool, secrets: &SecretKey) -> Result<(), StoreError> {
        let now = (self.now)();
        let since = now - ROTATE - LIFETIME - LEAD;
        let newest = pool.read(|tx| tx.ticket_keys(since))?.last().map(|k| k.2);
        let due = match newest {
            None => Some(now),
            Some(t) if t + ROTATE - LEAD <= now => Some(now.max(t) + LEAD),
            Some(_) => None,
        };
        if let Some(active_from) = due {
            // Under the writers' lock, looked at again: the replica that
            // comes second finds the key the first one added.
            pool.write(|tx| {
                let newest = tx.ticket_keys(since)?.last().map(|k| k.2);
                if newest.is_none_or(|t| t + ROTATE - LEAD <= now) {
                    let mut raw = [0u8; 32];
                    SystemRandom::new().fill(&mut raw).map_err(|_| StoreError::Backend("no randomness".into()))?;
                    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                    // The first key ever is used at once: nothing to wait for.
                    let from = if newest.is_none() { now } else { active_from };
                    tx.add_ticket_key(&secrets.seal(&hex, OWNER), from, since, now)?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        let mut keys = Vec::new();
        for (id, sealed, active_from) in pool.read(|tx| tx.ticket_keys(since))? {
            let Ok(hex) = secrets.open(&sealed, OWNER) else {
                tracing::warn!("TLS ticket key {id} does not open with this server's key (TERN_SECRET_KEY differs?)");
                continue;
            };
            let Some(raw) = super::secrets::parse_hex(&hex) else { continue };
            let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, &raw) else { continue };
            keys.push(Key { id: u32::try_from(id).unwrap_or(u32::MAX), key: LessSafeKey::new(unbound), active_from });
        }
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }

    /// Refreshes every [`REFRESH`] until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, state: Arc<super::http::AppState>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (me, state) = (me.clone(), state.clone());
                let done = tokio::task::spawn_blocking(move || me.refresh(&state.store, &state.secrets)).await;
                if let Ok(Err(e)) = done {
                    tracing::warn!("TLS ticket keys: {e}");
                }
            }
        });
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let now = (self.now)();
        let keys = self.keys.read().ok()?;
        // The newest key already active.
        let key = keys.iter().rev().find(|k| k.active_from <= now)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let id = key.id.to_be_bytes();
        let mut body = plain.to_vec();
        key.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id), &mut body).ok()?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + body.len());
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < 4 + NONCE_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(4);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let id: [u8; 4] = id.try_into().ok()?;
        let keys = self.keys.read().ok()?;
        let key = keys.iter().find(|k| k.id == u32::from_be_bytes(id))?;
        let mut body = body.to_vec();
        let plain =
            key.key.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::from(id), &mut body).ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_sealed_by_one_replica_opens_on_another_and_keys_turn_over() {
        let secrets = SecretKey::ephemeral();
        // Two replicas on one database: two pools on the same store file.
        let dir = std::env::temp_dir().join(format!("tern-tickets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a_pool = Pool::new(Store::open(&dir.join("tern.db")).unwrap());
        let b_pool = Pool::new(Store::open(&dir.join("tern.db")).unwrap());
        let a = SharedTicketer::load(&a_pool, &secrets).unwrap();
        let b = SharedTicketer::load(&b_pool, &secrets).unwrap();
        assert_eq!(a_pool.read(|tx| tx.ticket_keys(0)).unwrap().len(), 1, "the second replica uses the first's key");
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(b.decrypt(&forged), None, "altered");
        assert_eq!(b.decrypt(&ticket[..10]), None, "short");
        // Another server key: the keys do not open, no ticket is made or read.
        let stranger = SharedTicketer::load(&b_pool, &SecretKey::ephemeral()).unwrap();
        assert_eq!(stranger.decrypt(&ticket), None);

        // Time passes: the next key is published ahead of its use, both
        // replicas pick it up, and the old key still opens old tickets
        // until its lifetime ends.
        let later = || crate::clock::unix_now() + ROTATE;
        let a = SharedTicketer { keys: RwLock::new(Vec::new()), now: later };
        a.refresh(&a_pool, &secrets).unwrap();
        assert_eq!(a_pool.read(|tx| tx.ticket_keys(0)).unwrap().len(), 2, "one new key");
        let b = SharedTicketer { keys: RwLock::new(Vec::new()), now: later };
        b.refresh(&b_pool, &secrets).unwrap();
        assert_eq!(b_pool.read(|tx| tx.ticket_keys(0)).unwrap().len(), 2, "not two");
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]), "the old key still opens");
        let much_later = || crate::clock::unix_now() + 2 * ROTATE + LIFETIME + 2 * LEAD;
        let c = SharedTicketer { keys: RwLock::new(Vec::new()), now: much_later };
        c.refresh(&a_pool, &secrets).unwrap();
        assert_eq!(c.decrypt(&ticket), None, "a key past its lifetime is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
