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
    /// The user's role.
    #[serde(default)]
    pub role: String,
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
    /// The most it may do (`viewer`, `operator`, `admin`), at most the
    /// caller's own; absent: as much as its user, whatever that becomes.
    #[serde(default)]
    pub role: Option<String>,
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
    /// Its user.
    pub user: String,
    /// Its limit, when it has one.
    pub role: Option<String>,
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
    /// Its user (absent for a token older than users).
    #[serde(default)]
    pub user: Option<String>,
    /// Its limit, when it has one (it never does more than its user).
    #[serde(default)]
    pub role: Option<String>,
}

/// What `GET /api/auth/me` answers: who is calling, by `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "auth", rename_all = "lowercase")]
pub enum Me {
    /// An API token.
    Token {
        /// The token.
        token: MeToken,
        /// Its user.
        username: String,
        /// What it may do now (the least of its limit and its user's role).
        role: String,
    },
    /// A UI session.
    Session {
        /// What every non-GET request of this session carries in `X-CSRF-Token`.
        csrf_token: String,
        /// When the session ends unless it is used before (Unix seconds).
        expires_at: i64,
        /// The user.
        username: String,
        /// The user's role.
        role: String,
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

/// `POST /api/users`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Its name: 1 to 64 letters, digits and `.`, `_`, `-`, `@`.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Its password (at least 12 characters); absent: one is generated and
    /// returned this once.
    #[serde(default)]
    pub password: Option<String>,
}

/// `PATCH /api/users/{id}`: what is given changes. A new role, or
/// disabling, ends every session of the user; so does a new password.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `viewer`, `operator` or `admin`.
    #[serde(default)]
    pub role: Option<String>,
    /// Disabled users cannot log in and their tokens are refused.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A new password, set by an admin (the user's own change is `PUT
    /// /api/auth/password`).
    #[serde(default)]
    pub password: Option<String>,
}

/// A user as listed (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// When it was disabled.
    pub disabled_at: Option<i64>,
    /// When it was made.
    pub created_at: i64,
    /// When its password was last set.
    pub password_changed_at: i64,
}

/// What creating a user, or changing one, answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserChanged {
    /// The user.
    pub user: UserView,
    /// The generated password, shown this once (when none was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How many of its sessions ended.
    pub sessions_ended: usize,
}
