//! Operators (migrations 3 and 23): users and their roles, UI sessions and
//! API tokens.
//!
//! Nothing secret is stored in the clear: a password is kept as an
//! argon2id PHC string, a session id and an API token as their blake3
//! hashes. A session's CSRF token is kept as given: it is no credential on
//! its own (it only ever goes with the session cookie).
//!
//! Passwords are hashed and checked by [`hash_password`] and
//! [`verify_password`], outside the store: argon2 takes tens of
//! milliseconds and a few MiB on purpose, and the store's lock must not be
//! held that long (the agents' polls wait on it).

use super::sql::{OptionalExtension, Row, params};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::{StoreError, Tx, sql_id};

/// The admin account's user name, made at the server's first start.
pub const ADMIN: &str = "admin";

/// The name of the API token whose secret is `<data>/admin-token`.
pub const DATA_DIRECTORY_TOKEN: &str = "data-directory admin token";

/// What a user may do. Ordered: each role may do what the one before it
/// may, and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Looks: every read but secrets (join tokens, fleet keys) and the
    /// audit log; changes only its own password and tokens.
    Viewer,
    /// Acts on what runs: commands, stacks, jobs, images and their
    /// delivery.
    Operator,
    /// Everything: environments and onboarding, users, settings,
    /// registries, agent updates, the audit log.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Operator, Self::Admin];

    /// Its name in the API and the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// The role of that name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// A stored role; an unknown one (written by a newer build) gives the
    /// least rights.
    fn stored(name: &str) -> Self {
        Self::parse(name).unwrap_or(Self::Viewer)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its password, as an argon2id PHC string.
    pub password_hash: String,
    /// When it was made.
    pub created_at: i64,
    /// When its password was last set.
    pub password_changed_at: i64,
    /// What it may do.
    pub role: Role,
    /// When it was disabled: it cannot log in, and its tokens are refused.
    pub disabled_at: Option<i64>,
}

/// What changing or deleting a user came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// Done: the user as it is now (as it was, when deleted), and how many
    /// of its sessions ended.
    Done(User, usize),
    /// No such user.
    NotFound,
    /// Refused: no enabled admin would be left (nothing changed).
    LastAdmin,
}

/// A live UI session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The blake3 of its id (the cookie's value).
    pub id_hash: [u8; 32],
    /// Whose it is.
    pub user_id: u64,
    /// Its user's name.
    pub username: String,
    /// Its user's role.
    pub role: Role,
    /// The token every non-GET request of this session must carry in
    /// `X-CSRF-Token`.
    pub csrf: String,
    /// When it began.
    pub created_at: i64,
    /// When it ends unless it is used before.
    pub expires_at: i64,
}

/// An API token, as listed (never its secret: only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id.
    pub id: u64,
    /// What the operator called it.
    pub name: String,
    /// When it was made.
    pub created_at: i64,
    /// When it was last used (to the minute: see [`Store::touch_api_token`]).
    pub last_used_at: Option<i64>,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<i64>,
    /// Whether it is the one in `<data>/admin-token`.
    pub data_directory: bool,
    /// The user who made it: `(id, name, role, disabled)`; `None` for a
    /// token older than users (the data-directory token acts as the admin).
    pub owner: Option<(u64, String, Role, bool)>,
    /// The most it may do, when less than its user may.
    pub role: Option<Role>,
}

impl ApiToken {
    /// What it may do now: the least of its own limit and its user's role;
    /// `None` when it may do nothing (its user is disabled or gone).
    pub fn rights(&self) -> Option<Role> {
        // Whoever holds the data directory holds the server: its token is
        // the admin's whatever becomes of the `admin` account.
        if self.data_directory {
            return Some(Role::Admin);
        }
        let user = match &self.owner {
            Some((_, _, _, true)) => return None,
            Some((_, _, role, false)) => *role,
            None => return None,
        };
        Some(self.role.map_or(user, |r| r.min(user)))
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("password hashing: {0}")]
pub struct HashError(String);

/// `n` random bytes from the system's generator.
///
/// # Panics
/// When the system has no randomness to give (nothing secure can be done
/// then).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system randomness");
    bytes
}

/// The characters of a generated password: letters and digits, without
/// those that look alike (0/O, 1/l/I), so it can be read off a screen.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// How long a generated password is: 24 characters of a 56-letter
/// alphabet, about 139 bits.
pub const GENERATED_PASSWORD_LEN: usize = 24;

/// A fresh random password ([`GENERATED_PASSWORD_LEN`] characters).
pub fn generate_password() -> String {
    let n = PASSWORD_ALPHABET.len();
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    while out.len() < GENERATED_PASSWORD_LEN {
        for b in random_bytes::<32>() {
            // Rejection sampling keeps every character equally likely.
            if usize::from(b) < 256 - 256 % n && out.len() < GENERATED_PASSWORD_LEN {
                out.push(char::from(PASSWORD_ALPHABET[usize::from(b) % n]));
            }
        }
    }
    out
}

/// Hashes a password with argon2id (the crate's default parameters) and a
/// random salt; returns the PHC string.
///
/// # Errors
/// When argon2 refuses the input (it takes any length a request can carry).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| HashError(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (false when the hash
/// does not parse).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The blake3 of a secret (API token or session id), as stored.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(bytes.as_slice()).unwrap_or([0; 32])
}

/// Operators, sessions and API tokens.
pub trait AccessStore {
    /// A user by name.
    ///
    /// # Errors
    /// When the database fails.
    fn user(&self, name: &str) -> Result<Option<User>, StoreError>;

    /// A user by id.
    ///
    /// # Errors
    /// When the database fails.
    fn user_by_id(&self, id: u64) -> Result<Option<User>, StoreError>;

    /// Every user, by name.
    ///
    /// # Errors
    /// When the database fails.
    fn users(&self) -> Result<Vec<User>, StoreError>;

    /// Makes a user unless one of that name exists; returns whether it was
    /// made.
    ///
    /// # Errors
    /// When the database fails.
    fn create_user(&self, name: &str, password_hash: &str, role: Role, now: i64) -> Result<bool, StoreError>;

    /// Sets a user's role and whether it is disabled (`None`: unchanged).
    /// A change of either ends every session of the user. Refused when it
    /// would leave no enabled admin.
    ///
    /// # Errors
    /// When the database fails (then nothing changed).
    fn update_user(
        &self,
        id: u64,
        role: Option<Role>,
        disabled: Option<bool>,
        now: i64,
    ) -> Result<UserChange, StoreError>;

    /// Deletes a user, its sessions and its tokens. Refused when it is the
    /// last enabled admin.
    ///
    /// # Errors
    /// When the database fails (then nothing changed).
    fn delete_user(&self, id: u64) -> Result<UserChange, StoreError>;

    /// Sets a user's password (already hashed) and ends that user's
    /// sessions, all but `keep` (the session that asked for the change).
    /// Returns how many sessions ended, or `None` when there is no such
    /// user.
    ///
    /// # Errors
    /// When the database fails (then nothing changed).
    fn set_password(
        &self,
        user_id: u64,
        password_hash: &str,
        keep: Option<&[u8; 32]>,
        now: i64,
    ) -> Result<Option<usize>, StoreError>;

    /// Sets the admin's password (already hashed), making the admin when
    /// there is none, and ends every admin session: what `tern admin
    /// reset-password` does on the data directory. Returns how many
    /// sessions ended.
    ///
    /// # Errors
    /// When the database fails.
    fn reset_admin_password(&self, password_hash: &str, now: i64) -> Result<usize, StoreError>;

    /// Starts a session for `user_id`.
    ///
    /// # Errors
    /// When the database fails.
    fn create_session(
        &self,
        id_hash: &[u8; 32],
        user_id: u64,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// A session that has not expired by `now`.
    ///
    /// # Errors
    /// When the database fails.
    fn session(&self, id_hash: &[u8; 32], now: i64) -> Result<Option<Session>, StoreError>;

    /// Moves a session's end (as it is used).
    ///
    /// # Errors
    /// When the database fails.
    fn touch_session(&self, id_hash: &[u8; 32], expires_at: i64) -> Result<(), StoreError>;

    /// Ends a session; returns whether there was one.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Forgets the sessions that expired by `now`; returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_expired_sessions(&self, now: i64) -> Result<usize, StoreError>;

    /// Stores a new API token by its hash.
    ///
    /// # Errors
    /// When the database fails (a hash already stored among them).
    fn create_api_token(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        user_id: u64,
        role: Option<Role>,
        now: i64,
    ) -> Result<ApiToken, StoreError>;

    /// Makes sure the token in `<data>/admin-token` is an API token, named
    /// [`DATA_DIRECTORY_TOKEN`]; when the file holds a new one (the old file
    /// was deleted), the previous data-directory token is revoked. Returns
    /// the token's row, which is revoked when an operator revoked it (the
    /// caller then makes a new file).
    ///
    /// # Errors
    /// When the database fails.
    fn ensure_data_directory_token(&self, token_hash: &[u8; 32], now: i64) -> Result<ApiToken, StoreError>;

    /// The API token with this hash, revoked or not.
    ///
    /// # Errors
    /// When the database fails.
    fn api_token_by_hash(&self, token_hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError>;

    /// One API token by id.
    ///
    /// # Errors
    /// When the database fails.
    fn api_token(&self, id: u64) -> Result<Option<ApiToken>, StoreError>;

    /// Every API token, revoked ones too, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Notes that a token was used at `now`. The caller writes at most once
    /// a minute per token (see `last_used_at`), to spare the disk.
    ///
    /// # Errors
    /// When the database fails.
    fn touch_api_token(&self, id: u64, now: i64) -> Result<(), StoreError>;

    /// Revokes a token (revoking it again keeps the first time). Returns
    /// its row, or `None` when there is no such token.
    ///
    /// # Errors
    /// When the database fails.
    fn revoke_api_token(&self, id: u64, now: i64) -> Result<Option<ApiToken>, StoreError>;

    /// The TLS session-ticket keys (sealed) that became or become active
    /// after `since`, oldest first: `(id, sealed key, active from)`.
    ///
    /// # Errors
    /// When the database fails.
    fn ticket_keys(&self, since: i64) -> Result<Vec<(u64, Vec<u8>, i64)>, StoreError>;

    /// Adds a ticket key (sealed), active from `active_from`; drops those
    /// that became active before `prune_before`. Returns its id.
    ///
    /// # Errors
    /// When the database fails.
    fn add_ticket_key(&self, sealed: &[u8], active_from: i64, prune_before: i64, now: i64) -> Result<u64, StoreError>;

    /// A login from `client` at `at`: forgets failures from before
    /// `window_start`, then, unless `client` already has `max_per_client`
    /// failures in the window, records this one as failed until
    /// [`Self::login_succeeded`]. Returns how many failures `client` had
    /// before this one, how many there were overall, and when its oldest
    /// was.
    ///
    /// # Errors
    /// When the database fails.
    fn login_attempt(
        &self,
        client: &str,
        at: i64,
        window_start: i64,
        max_per_client: u64,
    ) -> Result<(u64, u64, Option<i64>), StoreError>;

    /// A login from `client` succeeded: its failures are forgotten.
    ///
    /// # Errors
    /// When the database fails.
    fn login_succeeded(&self, client: &str) -> Result<(), StoreError>;
}

impl AccessStore for Tx<'_> {
    fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {} FROM users WHERE name = ?1", Self::USER_COLUMNS), [name], Self::user_row)
            .optional()?)
    }

    fn user_by_id(&self, id: u64) -> Result<Option<User>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {} FROM users WHERE id = ?1", Self::USER_COLUMNS), [sql_id(id)], Self::user_row)
            .optional()?)
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {} FROM users ORDER BY name", Self::USER_COLUMNS))?;
        Ok(stmt.query_map([], Self::user_row)?.collect::<Result<_, _>>()?)
    }

    fn create_user(&self, name: &str, password_hash: &str, role: Role, now: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO users (name, password_hash, created_at, password_changed_at, role)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![name, password_hash, now, role.as_str()],
        )?;
        Ok(n == 1)
    }

    fn update_user(
        &self,
        id: u64,
        role: Option<Role>,
        disabled: Option<bool>,
        now: i64,
    ) -> Result<UserChange, StoreError> {
        let tx = self.tx()?;
        let Some(before) = tx.user_by_id(id)? else {
            return Ok(UserChange::NotFound);
        };
        let role = role.unwrap_or(before.role);
        let disabled_at = match disabled {
            None => before.disabled_at,
            Some(false) => None,
            Some(true) => before.disabled_at.or(Some(now)),
        };
        if role == before.role && disabled_at == before.disabled_at {
            return Ok(UserChange::Done(before, 0));
        }
        tx.execute(
            "UPDATE users SET role = ?2, disabled_at = ?3 WHERE id = ?1",
            params![sql_id(id), role.as_str(), disabled_at],
        )?;
        if tx.enabled_admins()? == 0 {
            return Ok(UserChange::LastAdmin);
        }
        let ended = tx.execute("DELETE FROM sessions WHERE user_id = ?1", [sql_id(id)])?;
        let after = tx.user_by_id(id)?.ok_or_else(|| StoreError::vanished("user"))?;
        tx.commit()?;
        Ok(UserChange::Done(after, ended))
    }

    fn delete_user(&self, id: u64) -> Result<UserChange, StoreError> {
        let tx = self.tx()?;
        let Some(user) = tx.user_by_id(id)? else {
            return Ok(UserChange::NotFound);
        };
        let ended = tx.execute("DELETE FROM sessions WHERE user_id = ?1", [sql_id(id)])?;
        tx.execute("DELETE FROM api_tokens WHERE user_id = ?1", [sql_id(id)])?;
        tx.execute("DELETE FROM users WHERE id = ?1", [sql_id(id)])?;
        if tx.enabled_admins()? == 0 {
            return Ok(UserChange::LastAdmin);
        }
        tx.commit()?;
        Ok(UserChange::Done(user, ended))
    }

    fn set_password(
        &self,
        user_id: u64,
        password_hash: &str,
        keep: Option<&[u8; 32]>,
        now: i64,
    ) -> Result<Option<usize>, StoreError> {
        let tx = self.tx()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2, password_changed_at = ?3 WHERE id = ?1",
            params![sql_id(user_id), password_hash, now],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let ended = tx.execute(
            "DELETE FROM sessions WHERE user_id = ?1 AND (id_hash <> ?2 OR ?2 IS NULL)",
            params![sql_id(user_id), keep.map(|k| &k[..])],
        )?;
        tx.commit()?;
        Ok(Some(ended))
    }

    fn reset_admin_password(&self, password_hash: &str, now: i64) -> Result<usize, StoreError> {
        if self.create_user(ADMIN, password_hash, Role::Admin, now)? {
            return Ok(0);
        }
        let admin = self.user(ADMIN)?.ok_or_else(|| StoreError::vanished("admin user"))?;
        // The way back in: the account is an enabled admin again.
        let tx = self.tx()?;
        tx.execute("UPDATE users SET role = 'admin', disabled_at = NULL WHERE id = ?1", [sql_id(admin.id)])?;
        let ended = tx.set_password(admin.id, password_hash, None, now)?.unwrap_or(0);
        tx.commit()?;
        Ok(ended)
    }

    fn create_session(
        &self,
        id_hash: &[u8; 32],
        user_id: u64,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&id_hash[..], sql_id(user_id), csrf, now, expires_at],
        )?;
        Ok(())
    }

    fn session(&self, id_hash: &[u8; 32], now: i64) -> Result<Option<Session>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT s.id_hash, s.user_id, u.name, s.csrf, s.created_at, s.expires_at, u.role
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND u.disabled_at IS NULL",
                params![&id_hash[..], now],
                |r| {
                    Ok(Session {
                        id_hash: hash_of(r.get(0)?),
                        user_id: r.get::<i64>(1)? as u64,
                        username: r.get(2)?,
                        csrf: r.get(3)?,
                        created_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        role: Role::stored(&r.get::<String>(6)?),
                    })
                },
            )
            .optional()?)
    }

    fn touch_session(&self, id_hash: &[u8; 32], expires_at: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE sessions SET expires_at = ?2 WHERE id_hash = ?1", params![&id_hash[..], expires_at])?;
        Ok(())
    }

    fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM sessions WHERE id_hash = ?1", [&id_hash[..]])? == 1)
    }

    fn delete_expired_sessions(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?)
    }

    fn create_api_token(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        user_id: u64,
        role: Option<Role>,
        now: i64,
    ) -> Result<ApiToken, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO api_tokens (name, token_hash, created_at, user_id, role) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, &token_hash[..], now, sql_id(user_id), role.map(Role::as_str)],
        )? as u64;
        self.api_token(id)?.ok_or_else(|| StoreError::vanished("API token"))
    }

    fn ensure_data_directory_token(&self, token_hash: &[u8; 32], now: i64) -> Result<ApiToken, StoreError> {
        let tx = self.tx()?;
        if let Some(t) = self.api_token_by_hash(token_hash)? {
            return Ok(t);
        }
        tx.execute("UPDATE api_tokens SET revoked_at = ?1 WHERE data_directory = 1 AND revoked_at IS NULL", [now])?;
        // It acts as the admin: whoever holds the data directory holds
        // the server.
        tx.execute(
            "INSERT INTO api_tokens (name, token_hash, created_at, data_directory, user_id)
             VALUES (?1, ?2, ?3, 1, (SELECT id FROM users WHERE name = ?4))",
            params![DATA_DIRECTORY_TOKEN, &token_hash[..], now, ADMIN],
        )?;
        tx.commit()?;
        self.api_token_by_hash(token_hash)?.ok_or_else(|| StoreError::vanished("data directory's token"))
    }

    fn api_token_by_hash(&self, token_hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {} WHERE t.token_hash = ?1", Self::TOKEN_COLUMNS),
                [&token_hash[..]],
                Self::token_row,
            )
            .optional()?)
    }

    fn api_token(&self, id: u64) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {} WHERE t.id = ?1", Self::TOKEN_COLUMNS), [sql_id(id)], Self::token_row)
            .optional()?)
    }

    fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {} ORDER BY t.id", Self::TOKEN_COLUMNS))?;
        Ok(stmt.query_map([], Self::token_row)?.collect::<Result<_, _>>()?)
    }

    fn touch_api_token(&self, id: u64, now: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1", params![sql_id(id), now])?;
        Ok(())
    }

    fn revoke_api_token(&self, id: u64, now: i64) -> Result<Option<ApiToken>, StoreError> {
        self.conn.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![sql_id(id), now],
        )?;
        self.api_token(id)
    }

    fn ticket_keys(&self, since: i64) -> Result<Vec<(u64, Vec<u8>, i64)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, secret, active_from FROM tls_ticket_keys WHERE active_from >= ?1 ORDER BY active_from, id",
            )?
            .query_map([since], |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?)
    }

    fn add_ticket_key(&self, sealed: &[u8], active_from: i64, prune_before: i64, now: i64) -> Result<u64, StoreError> {
        self.conn.execute("DELETE FROM tls_ticket_keys WHERE active_from < ?1", [prune_before])?;
        let id = self.conn.insert(
            "INSERT INTO tls_ticket_keys (secret, active_from, created_at) VALUES (?1, ?2, ?3)",
            params![sealed, active_from, now],
        )?;
        Ok(id as u64)
    }

    fn login_attempt(
        &self,
        client: &str,
        at: i64,
        window_start: i64,
        max_per_client: u64,
    ) -> Result<(u64, u64, Option<i64>), StoreError> {
        self.conn.execute("DELETE FROM login_failures WHERE at < ?1", [window_start])?;
        let (mine, oldest): (i64, Option<i64>) =
            self.conn.query_row("SELECT COUNT(*), MIN(at) FROM login_failures WHERE client = ?1", [client], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let overall: i64 = self.conn.query_row("SELECT COUNT(*) FROM login_failures", [], |r| r.get(0))?;
        if (mine as u64) < max_per_client {
            self.conn.execute("INSERT INTO login_failures (client, at) VALUES (?1, ?2)", params![client, at])?;
        }
        Ok((mine as u64, overall as u64, oldest))
    }

    fn login_succeeded(&self, client: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM login_failures WHERE client = ?1", [client])?;
        Ok(())
    }
}

impl Tx<'_> {
    const USER_COLUMNS: &'static str = "id, name, password_hash, created_at, password_changed_at, role, disabled_at";

    fn user_row(r: &Row) -> super::sql::Result<User> {
        Ok(User {
            id: r.get::<i64>(0)? as u64,
            name: r.get(1)?,
            password_hash: r.get(2)?,
            created_at: r.get(3)?,
            password_changed_at: r.get(4)?,
            role: Role::stored(&r.get::<String>(5)?),
            disabled_at: r.get(6)?,
        })
    }

    /// How many users are enabled admins.
    fn enabled_admins(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL", [], |r| r.get(0))?)
    }

    /// The columns of a token and its user, then the `FROM` (a `WHERE`
    /// follows).
    const TOKEN_COLUMNS: &'static str = "t.id, t.name, t.created_at, t.last_used_at, t.revoked_at, t.data_directory, \
         t.user_id, u.name, u.role, u.disabled_at, t.role FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id";

    fn token_row(r: &Row) -> super::sql::Result<ApiToken> {
        let user: Option<i64> = r.get(6)?;
        let user_name: Option<String> = r.get(7)?;
        let owner = match (user, user_name) {
            (Some(id), Some(name)) => {
                Some((id as u64, name, Role::stored(&r.get::<String>(8)?), r.get::<Option<i64>>(9)?.is_some()))
            }
            _ => None,
        };
        Ok(ApiToken {
            id: r.get::<i64>(0)? as u64,
            name: r.get(1)?,
            created_at: r.get(2)?,
            last_used_at: r.get(3)?,
            revoked_at: r.get(4)?,
            data_directory: r.get(5)?,
            owner,
            role: r.get::<Option<String>>(10)?.as_deref().map(Role::stored),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;

    #[test]
    fn passwords_are_argon2id_phc_strings_with_their_own_salt() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batter"));
        assert!(!verify_password(&h, ""));
        assert!(!verify_password("not a phc string", "x"));
        assert_ne!(hash_password("correct horse battery").unwrap(), h, "a fresh salt each time");
    }

    #[test]
    fn generated_passwords_are_long_random_and_readable() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.len() >= 20);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)), "{a}");
    }

    #[test]
    fn the_admin_is_made_once_and_its_password_change_ends_other_sessions() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        assert!(s.user(ADMIN).unwrap().is_none());
        assert!(s.create_user(ADMIN, "h1", Role::Admin, 10).unwrap());
        assert!(!s.create_user(ADMIN, "h2", Role::Admin, 11).unwrap(), "never twice");
        let admin = s.user(ADMIN).unwrap().unwrap();
        assert_eq!((admin.password_hash.as_str(), admin.created_at), ("h1", 10));
        assert_eq!(s.user_by_id(admin.id).unwrap(), Some(admin.clone()));

        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        for id in [&a, &b, &c] {
            s.create_session(id, admin.id, "csrf", 20, 100).unwrap();
        }
        let got = s.session(&a, 50).unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.csrf.as_str(), got.expires_at), (ADMIN, "csrf", 100));
        assert!(s.session(&a, 100).unwrap().is_none(), "expired at expires_at");
        assert!(s.session(&[9; 32], 50).unwrap().is_none());
        s.touch_session(&a, 200).unwrap();
        assert_eq!(s.session(&a, 150).unwrap().unwrap().expires_at, 200);

        assert_eq!(s.set_password(admin.id, "h3", Some(&b), 30).unwrap(), Some(2));
        assert!(s.session(&a, 50).unwrap().is_none() && s.session(&c, 50).unwrap().is_none());
        assert!(s.session(&b, 50).unwrap().is_some(), "the session that asked keeps going");
        let admin = s.user(ADMIN).unwrap().unwrap();
        assert_eq!((admin.password_hash.as_str(), admin.password_changed_at), ("h3", 30));
        assert_eq!(s.set_password(99, "h", None, 30).unwrap(), None);

        // The offline reset ends every session.
        assert_eq!(s.reset_admin_password("h4", 40).unwrap(), 1);
        assert!(s.session(&b, 50).unwrap().is_none());
        assert_eq!(s.user(ADMIN).unwrap().unwrap().password_hash, "h4");
        assert!(!s.delete_session(&a).unwrap());
    }

    #[test]
    fn a_reset_on_a_database_without_an_admin_makes_one() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        assert_eq!(s.reset_admin_password("h", 5).unwrap(), 0);
        assert_eq!(s.user(ADMIN).unwrap().unwrap().password_hash, "h");
    }

    #[test]
    fn expired_sessions_are_forgotten() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        s.create_user(ADMIN, "h", Role::Admin, 0).unwrap();
        let id = s.user(ADMIN).unwrap().unwrap().id;
        s.create_session(&[1; 32], id, "x", 0, 10).unwrap();
        s.create_session(&[2; 32], id, "y", 0, 20).unwrap();
        assert_eq!(s.delete_expired_sessions(15).unwrap(), 1);
        assert!(s.session(&[2; 32], 15).unwrap().is_some());
        assert!(s.delete_session(&[2; 32]).unwrap());
        assert!(s.session(&[2; 32], 15).unwrap().is_none());
    }

    #[test]
    fn api_tokens_are_kept_by_hash_listed_without_it_and_revoked() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        s.create_user(ADMIN, "h", Role::Admin, 0).unwrap();
        let admin = s.user(ADMIN).unwrap().unwrap().id;
        let h = secret_hash("tern_abc");
        let t = s.create_api_token("ci", &h, admin, None, 100).unwrap();
        assert_eq!(s.api_token_by_hash(&h).unwrap(), Some(t.clone()));
        assert!(s.api_token_by_hash(&secret_hash("tern_abd")).unwrap().is_none());
        assert!(s.create_api_token("again", &h, admin, None, 101).is_err(), "a hash is stored once");
        s.touch_api_token(t.id, 160).unwrap();
        let other = s.create_api_token("backup", &secret_hash("tern_x"), admin, None, 170).unwrap();
        let list = s.api_tokens().unwrap();
        assert_eq!(
            list.iter().map(|t| (t.name.as_str(), t.last_used_at)).collect::<Vec<_>>(),
            [("ci", Some(160)), ("backup", None)]
        );
        let revoked = s.revoke_api_token(t.id, 200).unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(200));
        assert_eq!(s.revoke_api_token(t.id, 300).unwrap().unwrap().revoked_at, Some(200), "the first time is kept");
        assert_eq!(s.api_token_by_hash(&h).unwrap().unwrap().revoked_at, Some(200));
        assert_eq!(s.api_token(other.id).unwrap().unwrap().revoked_at, None);
        assert!(s.revoke_api_token(99, 300).unwrap().is_none());
    }

    #[test]
    fn the_data_directory_token_is_registered_once_and_a_new_file_replaces_the_old() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        s.create_user(ADMIN, "h", Role::Admin, 0).unwrap();
        let admin = s.user(ADMIN).unwrap().unwrap().id;
        let first = s.ensure_data_directory_token(&secret_hash("one"), 10).unwrap();
        assert_eq!((first.name.as_str(), first.data_directory, first.revoked_at), (DATA_DIRECTORY_TOKEN, true, None));
        assert_eq!(s.ensure_data_directory_token(&secret_hash("one"), 20).unwrap(), first, "a restart changes nothing");
        let ci = s.create_api_token("ci", &secret_hash("ci"), admin, None, 25).unwrap();
        // The file was deleted and the server made a new one.
        let second = s.ensure_data_directory_token(&secret_hash("two"), 30).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(s.api_token(first.id).unwrap().unwrap().revoked_at, Some(30));
        assert_eq!(s.api_token(ci.id).unwrap().unwrap().revoked_at, None, "other tokens are kept");
        // A revoked one stays revoked: the caller makes a new file.
        s.revoke_api_token(second.id, 40).unwrap();
        assert_eq!(s.ensure_data_directory_token(&secret_hash("two"), 50).unwrap().revoked_at, Some(40));
    }

    #[test]
    fn roles_end_sessions_when_changed_limit_tokens_and_never_leave_no_admin() {
        let s_db = Store::scratch().unwrap();
        let s = s_db.autocommit();
        s.create_user(ADMIN, "h", Role::Admin, 0).unwrap();
        let admin = s.user(ADMIN).unwrap().unwrap();
        assert!(s.create_user("ops", "h", Role::Operator, 1).unwrap());
        let ops = s.user("ops").unwrap().unwrap();
        assert_eq!((ops.role, ops.disabled_at), (Role::Operator, None));
        assert_eq!(s.users().unwrap().iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), [ADMIN, "ops"]);

        // A token of the operator's, and one limited to viewing.
        let full = s.create_api_token("full", &secret_hash("a"), ops.id, None, 2).unwrap();
        let view = s.create_api_token("view", &secret_hash("b"), ops.id, Some(Role::Viewer), 2).unwrap();
        assert_eq!((full.rights(), view.rights()), (Some(Role::Operator), Some(Role::Viewer)));
        // A token's limit never lifts it above its user.
        let over = s.create_api_token("over", &secret_hash("c"), ops.id, Some(Role::Admin), 2).unwrap();
        assert_eq!(over.rights(), Some(Role::Operator));

        s.create_session(&[1; 32], ops.id, "x", 3, 100).unwrap();
        assert_eq!(s.session(&[1; 32], 4).unwrap().unwrap().role, Role::Operator);
        // The same role again changes nothing and ends nothing.
        assert!(matches!(s.update_user(ops.id, Some(Role::Operator), None, 5).unwrap(), UserChange::Done(_, 0)));
        assert!(s.session(&[1; 32], 5).unwrap().is_some());
        // A new role ends its sessions; its tokens follow the role.
        let UserChange::Done(u, 1) = s.update_user(ops.id, Some(Role::Viewer), None, 6).unwrap() else { panic!() };
        assert_eq!(u.role, Role::Viewer);
        assert!(s.session(&[1; 32], 6).unwrap().is_none());
        assert_eq!(s.api_token(full.id).unwrap().unwrap().rights(), Some(Role::Viewer));
        // Disabled: no session is found, no token has rights.
        s.create_session(&[2; 32], ops.id, "x", 7, 100).unwrap();
        let UserChange::Done(u, 1) = s.update_user(ops.id, None, Some(true), 8).unwrap() else { panic!() };
        assert_eq!(u.disabled_at, Some(8));
        assert_eq!(s.api_token(full.id).unwrap().unwrap().rights(), None);
        s.create_session(&[3; 32], ops.id, "x", 9, 100).unwrap();
        assert!(s.session(&[3; 32], 9).unwrap().is_none(), "a disabled user's session is not found");
        let UserChange::Done(u, _) = s.update_user(ops.id, None, Some(false), 10).unwrap() else { panic!() };
        assert_eq!(u.disabled_at, None);

        // The last enabled admin can be neither demoted, disabled nor deleted.
        assert_eq!(s.update_user(admin.id, Some(Role::Operator), None, 11).unwrap(), UserChange::LastAdmin);
        assert_eq!(s.update_user(admin.id, None, Some(true), 11).unwrap(), UserChange::LastAdmin);
        assert_eq!(s.delete_user(admin.id).unwrap(), UserChange::LastAdmin);
        assert_eq!(s.user(ADMIN).unwrap().unwrap(), admin, "nothing changed");
        assert_eq!(s.update_user(99, None, Some(true), 11).unwrap(), UserChange::NotFound);
        // With a second admin, the first may go; the reset brings it back.
        s.update_user(ops.id, Some(Role::Admin), None, 12).unwrap();
        assert!(matches!(s.update_user(admin.id, None, Some(true), 13).unwrap(), UserChange::Done(..)));
        s.reset_admin_password("h2", 14).unwrap();
        let back = s.user(ADMIN).unwrap().unwrap();
        assert_eq!((back.role, back.disabled_at), (Role::Admin, None));
        // Deleting a user deletes its tokens.
        assert!(matches!(s.delete_user(ops.id).unwrap(), UserChange::Done(..)));
        assert!(s.api_token(full.id).unwrap().is_none());
        assert!(s.user("ops").unwrap().is_none());
    }
}
