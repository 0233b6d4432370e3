//! The OpenAPI 3.1 document the server serves at `GET /api/openapi.json`.
//!
//! It is built from [`ENDPOINTS`], one line per operation, rather than from
//! derive macros spread over every handler: the table is the API's table of
//! contents, easy to review, and `tests/openapi.rs` checks it against the
//! routes the code registers, so neither can drift from the other.

use serde_json::{Map, Value, json};

/// One operation: method, path (axum syntax, `{id}`), tag, summary.
pub type Endpoint = (&'static str, &'static str, &'static str, &'static str);

/// Every operation of the API (the agents' poll endpoint `POST /p` is not
/// part of the REST API and is documented in the README).
pub const ENDPOINTS: &[Endpoint] = &[
    ("GET", "/api/openapi.json", "meta", "This document."),
    // Operators and access.
    ("POST", "/api/auth/login", "access", "Log in with a user name and password; sets the session cookie."),
    ("POST", "/api/auth/logout", "access", "End the current session."),
    ("GET", "/api/auth/me", "access", "Who is logged in (session or API token)."),
    ("PUT", "/api/auth/password", "access", "Change the caller's own password."),
    (
        "POST",
        "/api/tokens",
        "access",
        "Create an API token of the caller's, with at most the caller's role (the secret is shown once).",
    ),
    ("GET", "/api/tokens", "access", "List the caller's API tokens (an admin's: every one), never their secrets."),
    ("DELETE", "/api/tokens/{id}", "access", "Revoke an API token (the caller's own; an admin, any)."),
    // Users and roles.
    (
        "POST",
        "/api/users",
        "access",
        "Create a user with a role (viewer, operator, admin); a generated password is shown once (201).",
    ),
    ("GET", "/api/users", "access", "List users and their roles (never a password)."),
    ("GET", "/api/users/{id}", "access", "One user."),
    (
        "PATCH",
        "/api/users/{id}",
        "access",
        "Change a user's role, disable or enable it, or set its password; each ends its sessions.",
    ),
    ("DELETE", "/api/users/{id}", "access", "Delete a user, its sessions and its API tokens."),
    // Teams: the groups of environments users who are not admins see.
    (
        "POST",
        "/api/teams",
        "access",
        "Create a team: users (by name) and the groups of environments they see and act on (201).",
    ),
    ("GET", "/api/teams", "access", "List teams with their members and groups."),
    ("GET", "/api/teams/{id}", "access", "One team."),
    ("PATCH", "/api/teams/{id}", "access", "Rename a team, or replace its members or groups."),
    ("DELETE", "/api/teams/{id}", "access", "Delete a team (its users and groups stay)."),
    (
        "GET",
        "/api/audit",
        "access",
        "The audit log, newest first: every change and login (filters: actor, action, target, since, until; \
         format=jsonl exports).",
    ),
    // Onboarding many devices: fleet join tokens and the waiting room.
    (
        "POST",
        "/api/fleet-tokens",
        "fleet",
        "Create a fleet join token (expiry, use count, group, tags, auto-admit rule); its EDGE_KEY and the one \
         command to flash onto many devices (201).",
    ),
    ("GET", "/api/fleet-tokens", "fleet", "List fleet join tokens (never their secrets), with their state."),
    ("GET", "/api/fleet-tokens/{id}", "fleet", "One fleet join token, with its EDGE_KEY and deploy commands."),
    (
        "DELETE",
        "/api/fleet-tokens/{id}",
        "fleet",
        "Revoke a fleet join token: its devices are refused, waiting or new.",
    ),
    (
        "GET",
        "/api/devices",
        "fleet",
        "The waiting room: devices that asked to join with a fleet token (status=pending|admitted|rejected).",
    ),
    ("GET", "/api/devices/{id}", "fleet", "One device: what it said of itself, and the decision."),
    ("DELETE", "/api/devices/{id}", "fleet", "Forget a device; it may ask again (its environment, if any, stays)."),
    (
        "POST",
        "/api/devices/{id}/admit",
        "fleet",
        "Admit a device: it becomes an environment (name, group, tags optional) and is told in its next request (201).",
    ),
    ("POST", "/api/devices/{id}/reject", "fleet", "Reject a device, with a reason its health output shows."),
    // Images the server holds.
    ("POST", "/api/images", "images", "Pull an image into the server (with a registered registry's credentials)."),
    ("GET", "/api/images", "images", "List the images the server holds or is pulling."),
    ("GET", "/api/images/{id}", "images", "One image: status, image id, layers."),
    ("DELETE", "/api/images/{id}", "images", "Forget an image."),
    (
        "POST",
        "/api/images/{id}/deliver",
        "images",
        "Deliver a held image to environments as a transfer (a delta against what each host has); 202.",
    ),
    (
        "GET",
        "/api/environments/{id}/transfer-limits",
        "images",
        "An environment's rate cap (kbit/s) and download window (UTC).",
    ),
    ("PUT", "/api/environments/{id}/transfer-limits", "images", "Set an environment's rate cap and download window."),
    (
        "POST",
        "/api/rollouts",
        "images",
        "Agents update themselves to a held agent image; staged: a share first, the rest once those updated (201).",
    ),
    ("GET", "/api/rollouts", "images", "Agent updates, newest first."),
    (
        "GET",
        "/api/rollouts/{id}",
        "images",
        "One staged agent update: status, why it halted, each environment's wave and command.",
    ),
    // Images uploaded from an operator's engine (`tern image push`).
    (
        "POST",
        "/api/images/blobs/missing",
        "images",
        "Which of these layers the server lacks, and how much of each upload it kept.",
    ),
    (
        "PATCH",
        "/api/images/blobs/{digest}",
        "images",
        "Append a piece (at most 2 MiB) of a layer's zstd stream at ?offset=N.",
    ),
    (
        "POST",
        "/api/images/blobs/{digest}/done",
        "images",
        "The upload is whole: decoded, checked against its digest, kept (or discarded, 422).",
    ),
    ("POST", "/api/images/push", "images", "Hold an image whose layers the server has, by its config (201)."),
    // Private registries.
    (
        "POST",
        "/api/registries",
        "registries",
        "Register a private registry's credentials (the password is never shown again).",
    ),
    ("GET", "/api/registries", "registries", "List registries (never their passwords)."),
    ("GET", "/api/registries/{id}", "registries", "One registry."),
    ("PATCH", "/api/registries/{id}", "registries", "Rename a registry, change its user or password."),
    ("DELETE", "/api/registries/{id}", "registries", "Forget a registry."),
    // Environments.
    ("POST", "/api/environments", "environments", "Create an environment; returns its join token and deploy commands."),
    ("GET", "/api/environments", "environments", "List environments (filters: group, tag, status, name; paging)."),
    ("GET", "/api/environments/{id}", "environments", "One environment: status, last poll, snapshot age, counts."),
    ("PATCH", "/api/environments/{id}", "environments", "Rename, move to a group, set tags and options."),
    ("DELETE", "/api/environments/{id}", "environments", "Delete an environment and everything stored for it."),
    (
        "GET",
        "/api/environments/{id}/deploy",
        "environments",
        "The join token and the Linux and Windows deploy commands.",
    ),
    (
        "GET",
        "/api/environments/{id}/state",
        "environments",
        "The stored snapshot: host, containers, images, volumes, networks, stacks.",
    ),
    ("GET", "/api/environments/{id}/state/{part}", "environments", "One part of the stored snapshot."),
    (
        "PUT",
        "/api/environments/{id}/intervals",
        "environments",
        "Set the environment's poll intervals (null: the default).",
    ),
    ("POST", "/api/environments/{id}/reset-binding", "environments", "Let another EDGE_ID take the environment."),
    (
        "POST",
        "/api/environments/{id}/reset-counter",
        "environments",
        "Accept any poll counter from the agent again (rotate the secret on an untrusted link instead).",
    ),
    (
        "POST",
        "/api/environments/{id}/rotate-secret",
        "environments",
        "A new secret and join token; the old ones are refused at once. Answers as .../deploy.",
    ),
    (
        "GET",
        "/api/environments/{id}/variables",
        "stacks",
        "An environment's own values of stack variables (names only, for a viewer).",
    ),
    (
        "PUT",
        "/api/environments/{id}/variables",
        "stacks",
        "Replace them: a stack declaring one of these names is deployed here with this value, from its next deploy.",
    ),
    ("GET", "/api/environments/{id}/window", "stacks", "Its deploy window: when a stack's deploy may start here."),
    (
        "PUT",
        "/api/environments/{id}/window",
        "stacks",
        "Set it (\"01:00-05:00 UTC+02:00\"; \"\": none); deploys wait for it and the stack's own window.",
    ),
    ("GET", "/api/environments/{id}/usage", "usage", "Bytes used by one environment: per hour, per day, total."),
    ("GET", "/api/usage", "usage", "Bytes used by every environment, today and over N days."),
    // Groups, tags, settings.
    ("POST", "/api/groups", "groups", "Create a group."),
    ("GET", "/api/groups", "groups", "List groups."),
    ("GET", "/api/groups/{id}", "groups", "One group."),
    ("PATCH", "/api/groups/{id}", "groups", "Rename a group."),
    ("DELETE", "/api/groups/{id}", "groups", "Delete a group (its environments keep running, in no group)."),
    ("POST", "/api/tags", "tags", "Create a tag."),
    ("GET", "/api/tags", "tags", "List tags."),
    ("GET", "/api/tags/{id}", "tags", "One tag."),
    ("PATCH", "/api/tags/{id}", "tags", "Rename a tag."),
    ("DELETE", "/api/tags/{id}", "tags", "Delete a tag."),
    ("GET", "/api/settings", "settings", "Edge compute defaults: intervals, whether an AGENT_SECRET is set."),
    ("PUT", "/api/settings", "settings", "Change the default intervals or the AGENT_SECRET."),
    // Edge stacks.
    (
        "POST",
        "/api/stacks",
        "stacks",
        "Create a stack (compose file, variables, configuration files, targets) and deploy it.",
    ),
    ("GET", "/api/stacks", "stacks", "List stacks with their status and counts of environments by status."),
    (
        "GET",
        "/api/stacks/{id}",
        "stacks",
        "One stack: compose file, variables, configuration files, targets, status per environment.",
    ),
    ("PUT", "/api/stacks/{id}", "stacks", "A new version of a stack, redeployed everywhere."),
    ("DELETE", "/api/stacks/{id}", "stacks", "Remove a stack everywhere (202); once removed, purge it (204)."),
    (
        "POST",
        "/api/environments/{id}/stacks/{name}/logs",
        "stacks",
        "A whole stack's logs: one container.logs command per container of the stack, queued together (201).",
    ),
    (
        "GET",
        "/api/stacks/{id}/versions",
        "stacks",
        "Every version of a stack, newest first, with its file and variables.",
    ),
    (
        "GET",
        "/api/stacks/{id}/history",
        "stacks",
        "A stack's deploys, newest first, every attempt (?environment=E&limit=N): version, status, times, error.",
    ),
    (
        "POST",
        "/api/stacks/{id}/rollback",
        "stacks",
        "Deploy an earlier version again, as a new version, where the stack is.",
    ),
    // Edge jobs.
    ("POST", "/api/jobs", "jobs", "Create a job (a script, once or on a cron schedule) and queue it on its targets."),
    ("GET", "/api/jobs", "jobs", "List jobs."),
    ("GET", "/api/jobs/{id}", "jobs", "One job: its script and, per environment, delivery, last run and exit code."),
    ("PUT", "/api/jobs/{id}", "jobs", "A new version of a job, sent again to its environments."),
    ("DELETE", "/api/jobs/{id}", "jobs", "Stop a job everywhere; its runs stay readable."),
    ("GET", "/api/jobs/{id}/runs", "jobs", "A job's runs with their output, newest first (?environment=E&limit=N)."),
    // Commands.
    (
        "POST",
        "/api/environments/{id}/commands",
        "commands",
        "Queue an action on a container, image, volume or network, or ask for logs.",
    ),
    ("GET", "/api/environments/{id}/commands", "commands", "Command history of an environment, newest first."),
    ("GET", "/api/commands/{id}", "commands", "One command: queued, sent, delivered, done or failed, with its output."),
    ("DELETE", "/api/commands/{id}", "commands", "Cancel a command not yet delivered."),
];

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for &(method, path, tag, summary) in ENDPOINTS {
        let mut op = json!({
            "tags": [tag],
            "summary": summary,
            "responses": {
                "200": { "description": "OK (201 when something was created)", "content": { "application/json": {} } },
                "4XX": { "$ref": "#/components/responses/Error" },
            },
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if matches!(method, "POST" | "PUT" | "PATCH") {
            op["requestBody"] = json!({ "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        if path == "/api/auth/login" {
            op["security"] = json!([]);
        } else {
            // The least role the call needs (see the README's "Users and
            // roles"); a lesser one gets a 403.
            let m = axum::http::Method::from_bytes(method.as_bytes()).unwrap_or(axum::http::Method::POST);
            op["x-tern-role"] = json!(super::access::needs(&m, path).as_str());
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tern",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The tern control server's REST API. Every call but login needs an API token \
                (Authorization: Bearer) or a session cookie with its X-CSRF-Token header on changes. \
                Each operation's x-tern-role is the least role it needs: viewer, operator or admin. \
                Errors are JSON: {\"error\": \"...\"}.",
        },
        "security": [{ "bearer": [] }, { "session": [] }],
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": "tern_session" },
            },
            "responses": {
                "Error": {
                    "description": "Refused: a missing or wrong credential (401), bad input (400, 413, 422), \
                        a role that may not make the call (403, nothing changed), not found (404), a conflict (409), too \
                        many failed logins (429).",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": { "error": { "type": "string" } },
                        "required": ["error"],
                    } } },
                },
            },
        },
        "paths": paths,
    })
}

/// `GET /api/openapi.json`.
pub async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}
