//! Private registries' bodies.

use serde::{Deserialize, Serialize};

/// `POST /api/registries`: a registry and its credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegistry {
    /// A name for operators.
    pub name: String,
    /// The registry as image references name it: `10.0.0.5:5000`,
    /// `registry.example.com` (a scheme and a trailing `/` are dropped);
    /// `docker.io` for Docker Hub.
    pub url: String,
    /// The user.
    pub username: String,
    /// The password or access token: stored encrypted, never shown again.
    pub password: String,
}

impl std::fmt::Debug for CreateRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRegistry")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `PATCH /api/registries/{id}`: what is left out stays.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRegistry {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A new password or token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for UpdateRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateRegistry")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A registry as the API shows it: never its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The registry as references name it.
    pub url: String,
    /// The user.
    pub username: String,
    /// When created (Unix seconds).
    pub created_at: i64,
    /// When last changed (Unix seconds).
    pub updated_at: i64,
}
