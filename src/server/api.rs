//! The REST API (JSON). For now: creating an environment, which returns its
//! join token and the `docker run` command that deploys its agent.
//!
//! Authentication: `Authorization: Bearer <admin token>`. The admin token is
//! made at the server's first start and kept in `<data>/admin-token`
//! (mode 0600); the CLI reads it from there when it runs on the server's
//! host, or from `TERN_TOKEN`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::http::AppState;
use super::store::StoreError;
use crate::auth::{JoinToken, Secret};

/// `POST /api/environments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// The environment's name.
    pub name: String,
    /// The server URL as the edge sees it (`https://ops.example.com:9443`).
    pub url: String,
}

/// What creating an environment returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedEnvironment {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The join token (EDGE_KEY), for pre-staging.
    pub edge_key: String,
    /// The command that deploys the agent on a Linux Docker host.
    pub docker_run: String,
}

/// The agent image the generated command runs.
pub const AGENT_IMAGE: &str = "tern-agent:latest";

/// The `docker run` line for an agent with this key.
pub fn docker_run(edge_key: &str) -> String {
    format!(
        "docker run -d --name tern-agent --restart always \\\n  \
         -v /var/run/docker.sock:/var/run/docker.sock \\\n  \
         -v /var/lib/docker/volumes:/var/lib/docker/volumes \\\n  \
         -v tern-agent-data:/data \\\n  \
         -e EDGE_KEY={edge_key} \\\n  \
         {AGENT_IMAGE} agent"
    )
}

type ApiError = (StatusCode, String);

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if state.admin_token_matches(given) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "missing or wrong admin token".into()))
    }
}

/// Creates an environment.
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(req): Json<CreateEnvironment>,
) -> Result<(StatusCode, Json<CreatedEnvironment>), ApiError> {
    authorized(&state, &headers)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.len() > 128 {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "name: 1 to 128 characters".into()));
    }
    if !req.url.starts_with("https://") {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "url: the server URL as the edge sees it, https://host:port".into(),
        ));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()))?;
    let fingerprint = state.fingerprint;
    let shared = state.clone();
    let created = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        shared.with_store(|store| store.create_environment(&name, Secret(secret), now))
    })
    .await
    .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, String::new()))?;
    let env = match created {
        Ok(env) => env,
        Err(e @ StoreError::NameTaken(_)) => return Err((StatusCode::CONFLICT, e.to_string())),
        Err(e) => {
            tracing::error!("create environment: {e}");
            return Err((StatusCode::INTERNAL_SERVER_ERROR, String::new()));
        }
    };
    let edge_key = JoinToken {
        url: req.url.trim_end_matches('/').to_owned(),
        environment: env.id,
        secret: env.secret,
        cert_sha256: fingerprint,
    }
    .encode();
    let docker_run = docker_run(&edge_key);
    Ok((StatusCode::CREATED, Json(CreatedEnvironment { id: env.id, name: env.name, edge_key, docker_run })))
}
