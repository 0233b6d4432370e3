//! The server key that keeps operators' secrets (registry passwords and
//! tokens) encrypted at rest: ChaCha20-Poly1305 (ring), a random nonce per
//! secret, the secret's owner (which registry, which user) as associated
//! data so a ciphertext copied onto another row does not open.
//!
//! The key is 32 random bytes in `secret.key` in the data directory (mode
//! 0600, made at first start), or `TERN_SECRET_KEY` (64 hex digits), which
//! several replicas on one database share. It is never in the database: a
//! copy of the database alone reveals no secret. Losing the key loses the
//! secrets (the registries then have to be given their passwords again),
//! nothing else.

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The file the key is kept in, in the data directory.
pub const KEY_FILE: &str = "secret.key";

/// The variable that gives the key instead of the file.
pub const KEY_VAR: &str = "TERN_SECRET_KEY";

/// A secret that does not open: the key changed, or the bytes were altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stored secret does not open with this server's key (was {KEY_FILE} or {KEY_VAR} changed?)")]
pub struct Unreadable;

/// The server's secret key.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20-Poly1305 key");
        Self { key: LessSafeKey::new(key) }
    }

    /// A key of its own, kept nowhere: for a database in memory (tests).
    ///
    /// # Panics
    /// When the system has no randomness.
    #[must_use]
    pub fn ephemeral() -> Self {
        let mut b = [0u8; 32];
        SystemRandom::new().fill(&mut b).expect("randomness");
        Self::from_bytes(&b)
    }

    /// The key from `TERN_SECRET_KEY` (`var`), else from `secret.key` in
    /// `dir`, made there (mode 0600) when missing.
    ///
    /// # Errors
    /// A malformed variable or file, or when the file cannot be read or
    /// written.
    pub fn load_or_create(dir: &Path, var: Option<String>) -> Result<Self, String> {
        if let Some(hex) = var.filter(|v| !v.trim().is_empty()) {
            return parse_hex(hex.trim())
                .map(|b| Self::from_bytes(&b))
                .ok_or_else(|| format!("{KEY_VAR}: 64 hex digits"));
        }
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return parse_hex(text.trim())
                    .map(|b| Self::from_bytes(&b))
                    .ok_or_else(|| format!("{}: not 64 hex digits", path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let mut b = [0u8; 32];
        SystemRandom::new().fill(&mut b).map_err(|_| "no randomness for the secret key".to_owned())?;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let write = |opts: &std::fs::OpenOptions| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = opts.open(&path)?;
            f.write_all(hex.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        match write(&opts) {
            Ok(()) => Ok(Self::from_bytes(&b)),
            // Another process made it first: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(dir, None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Encrypts `secret` for the owner `owner` (associated data).
    ///
    /// # Panics
    /// When the system has no randomness.
    #[must_use]
    pub fn seal(&self, secret: &str, owner: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("randomness");
        let mut out = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(owner.as_bytes()), &mut out)
            .expect("sealing a secret");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        sealed
    }

    /// Decrypts what [`Self::seal`] made for the same owner.
    ///
    /// # Errors
    /// [`Unreadable`]: another key, another owner, or altered bytes.
    pub fn open(&self, sealed: &[u8], owner: &str) -> Result<String, Unreadable> {
        if sealed.len() < NONCE_LEN {
            return Err(Unreadable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unreadable)?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(owner.as_bytes()), &mut body).map_err(|_| Unreadable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Unreadable)
    }
}

/// 64 hex digits as 32 bytes.
pub(crate) fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_opens_with_its_key_and_owner_only() {
        let k = SecretKey::ephemeral();
        let sealed = k.seal("s3cret", "registry 1 fleet");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"), "not in the clear");
        assert_eq!(k.open(&sealed, "registry 1 fleet").unwrap(), "s3cret");
        assert_eq!(k.open(&sealed, "registry 2 fleet"), Err(Unreadable), "another row's");
        assert_eq!(SecretKey::ephemeral().open(&sealed, "registry 1 fleet"), Err(Unreadable), "another key");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(&bad, "registry 1 fleet"), Err(Unreadable));
        assert_eq!(k.open(&[1, 2], "registry 1 fleet"), Err(Unreadable));
        assert_ne!(k.seal("s3cret", "o"), k.seal("s3cret", "o"), "a nonce each");
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_again() {
        let dir = std::env::temp_dir().join(format!("tern-secret-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = SecretKey::load_or_create(&dir, None).unwrap();
        let sealed = a.seal("x", "o");
        let b = SecretKey::load_or_create(&dir, None).unwrap();
        assert_eq!(b.open(&sealed, "o").unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let hex = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        let c = SecretKey::load_or_create(&dir.join("elsewhere"), Some(hex.trim().into())).unwrap();
        assert_eq!(c.open(&sealed, "o").unwrap(), "x", "the variable gives the same key");
        assert!(SecretKey::load_or_create(&dir, Some("zz".into())).is_err());
        std::fs::write(dir.join(KEY_FILE), "short").unwrap();
        assert!(SecretKey::load_or_create(&dir, None).is_err(), "a damaged key file is an error, not a new key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
