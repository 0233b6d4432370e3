//! Access's bodies: login, the caller, the password, API tokens.

use serde::{Deserialize, Serialize};

/// `POST /api/auth/login`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user (`admin`).
    pub username: String,
    /// Its password.
    pub password: String,
}

/// What login returns (the session id goes in the cookie only).
#[derive(Debug, Serialize, Deserialize)]
pub struct LoggedIn {
    /// The user.
    pub username: String,
    /// What every non-GET request of this session carries in `X-CSRF-Token`.
    pub csrf_token: String,
    /// When the session ends unless it is used before (Unix seconds).
    pub expires_at: i64,
}

/// `PUT /api/auth/password`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// The password now.
    pub current: String,
    /// The new one ([`MIN_PASSWORD_LEN`](crate::server::api::access::MIN_PASSWORD_LEN) characters at least).
    pub new: String,
}

/// `POST /api/tokens`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What it is for.
    pub name: String,
}

/// A new API token, with its secret (shown this once).
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The secret, for `Authorization: Bearer`.
    pub token: String,
    /// When it was made.
    pub created_at: i64,
}

/// An API token as listed.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created_at: i64,
    /// When it was last used (to the minute).
    pub last_used_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Whether it is the token in `<data>/admin-token` (revoking it makes
    /// the server write a new one at its next start).
    pub data_directory: bool,
}

/// What `GET /api/auth/me` answers: who is calling, by `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "auth", rename_all = "lowercase")]
pub enum Me {
    /// An API token.
    Token {
        /// The token.
        token: MeToken,
    },
    /// A UI session.
    Session {
        /// What every non-GET request of this session carries in `X-CSRF-Token`.
        csrf_token: String,
        /// When the session ends unless it is used before (Unix seconds).
        expires_at: i64,
        /// The user.
        username: String,
    },
}

/// The API token of [`Me::Token`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeToken {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
}
