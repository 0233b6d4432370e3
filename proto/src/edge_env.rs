//! The agent's environment variables, as both sides must agree on them:
//! what `tern agent` reads (`agent/config.rs`), what the generated deploy
//! commands set themselves, and what an operator may pass through them
//! from the host (`server/api/fleet.rs`). Any other `EDGE*` or `AGENT_*`
//! variable makes the agent refuse to start, as a typo.

/// Variables the agent reads.
pub const KNOWN: &[&str] = &[
    "EDGE_KEY",
    "EDGE_ID",
    "EDGE_INSECURE_POLL",
    "EDGE_TLS_PQ",
    "AGENT_SECRET",
    "DATA_PATH",
    "DOCKER_HOST",
    "LOG_LEVEL",
    "EDGE_COMPOSE",
    "EDGE_JOB_IMAGE",
    "EDGE_JOB_PRIVILEGED",
    "EDGE_JOB_CHROOT",
    "EDGE_POLL_TIMEOUT",
    "EDGE_SESSION",
    "EDGE_SESSION_KEEPALIVE",
    "EDGE_HOST_VARS",
    "EDGE_GROUP",
    "EDGE_TAGS",
];

/// Variables from Portainer's edge agent command that tern accepts and
/// ignores, so a copied `docker run` line works: tern is always an edge
/// agent, and always asynchronous.
pub const PORTAINER_NO_OPS: &[&str] = &["EDGE", "EDGE_ASYNC"];

/// Variables the deploy commands set themselves, so they cannot be passed
/// through from the host.
pub const SET_BY_DEPLOY: &[&str] =
    &["EDGE_KEY", "EDGE_ID", "EDGE_INSECURE_POLL", "AGENT_SECRET", "DATA_PATH", "EDGE_HOST_VARS"];

/// Whether `name` is in the agent's own namespace (`EDGE*`, `AGENT_*`).
pub fn is_agents(name: &str) -> bool {
    name.starts_with("EDGE") || name.starts_with("AGENT_")
}

/// Whether the agent starts with `name` set: a variable outside its
/// namespace, one it reads, or one of Portainer's it ignores.
pub fn accepted(name: &str) -> bool {
    !is_agents(name) || KNOWN.contains(&name) || PORTAINER_NO_OPS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_accepts_what_it_reads_and_portainers_no_ops_and_nothing_else_of_its_own() {
        for ok in ["EDGE_KEY", "EDGE_POLL_TIMEOUT", "EDGE", "EDGE_ASYNC", "DOCKER_HOST", "HTTP_PROXY", "TZ"] {
            assert!(accepted(ok), "{ok}");
        }
        for typo in ["EDGE_KEYS", "EDGEX", "AGENT_FOO", "EDGE_POLL_TIMEOT"] {
            assert!(!accepted(typo), "{typo}");
        }
        assert!(SET_BY_DEPLOY.iter().all(|v| KNOWN.contains(v)), "the deploy commands set only what the agent reads");
    }
}
