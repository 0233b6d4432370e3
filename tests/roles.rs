//! Users and roles (issue #17, item 4), on the real server: every route of
//! the OpenAPI document walked as a viewer, an operator, an admin and a
//! token limited below its user, allowed against refused; what a refusal
//! leaves (nothing changed, an audit entry); disabled users and role
//! changes ending sessions and tokens; the last admin kept; the CLI and
//! the UI's users page.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use common::{Api, Server, UiClient};
use serde_json::{Value, json};
use tern::server::api::openapi::{ENDPOINTS, document};

/// The least role each call needs, written here on its own (not read from
/// the server's table), so the test and the server can disagree. Every
/// read is named (a new route must be placed here, so no read that shows a
/// secret reaches viewers unnoticed); the viewer's and the operator's
/// writes are named, and every other write is the admin's.
fn expected(method: &str, path: &str) -> &'static str {
    const ADMIN_READS: &[&str] = &[
        "/api/audit",
        "/api/users",
        "/api/users/{id}",
        "/api/teams",
        "/api/teams/{id}",
        "/api/environments/{id}/deploy",
        "/api/fleet-tokens/{id}",
        "/api/fleet-tokens",
        "/api/devices",
        "/api/devices/{id}",
        "/api/rollouts",
        "/api/rollouts/{id}",
    ];
    const VIEWER_READS: &[&str] = &[
        "/api/openapi.json",
        "/api/auth/me",
        "/api/tokens",
        "/api/images",
        "/api/images/{id}",
        "/api/environments/{id}/transfer-limits",
        "/api/registries",
        "/api/registries/{id}",
        "/api/environments",
        "/api/environments/{id}",
        "/api/environments/{id}/state",
        "/api/environments/{id}/state/{part}",
        "/api/environments/{id}/usage",
        "/api/environments/{id}/variables",
        "/api/environments/{id}/window",
        "/api/usage",
        "/api/groups",
        "/api/groups/{id}",
        "/api/tags",
        "/api/tags/{id}",
        "/api/settings",
        "/api/stacks",
        "/api/stacks/{id}",
        "/api/stacks/{id}/versions",
        "/api/stacks/{id}/history",
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/runs",
        "/api/environments/{id}/commands",
        "/api/commands/{id}",
    ];
    const VIEWER_WRITES: &[&str] = &["/api/auth/logout", "/api/auth/password", "/api/tokens", "/api/tokens/{id}"];
    const OPERATOR_WRITES: &[&str] = &[
        "/api/environments/{id}/commands",
        "/api/commands/{id}",
        "/api/environments/{id}/stacks/{name}/logs",
        "/api/environments/{id}/intervals",
        "/api/environments/{id}/variables",
        "/api/environments/{id}/window",
        "/api/environments/{id}/transfer-limits",
        "/api/stacks",
        "/api/stacks/{id}",
        "/api/stacks/{id}/rollback",
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/images",
        "/api/images/{id}",
        "/api/images/{id}/deliver",
        "/api/images/blobs/missing",
        "/api/images/blobs/{digest}",
        "/api/images/blobs/{digest}/done",
        "/api/images/push",
    ];
    if method == "GET" {
        if ADMIN_READS.contains(&path) {
            return "admin";
        }
        assert!(VIEWER_READS.contains(&path), "GET {path} is new: decide who may read it, here and in access::needs");
        return "viewer";
    }
    if VIEWER_WRITES.contains(&path) {
        "viewer"
    } else if OPERATOR_WRITES.contains(&path) {
        "operator"
    } else {
        "admin"
    }
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "operator" => 1,
        "admin" => 2,
        other => panic!("no role {other:?}"),
    }
}

/// A user made through the API, with a password given, and a token of
/// its own (limited to `limit`, when given).
async fn user_with_token(admin: &mut Api, server: &Server, name: &str, role: &str, limit: Option<&str>) -> Api {
    let made =
        admin.ok("POST", "/api/users", Some(json!({ "name": name, "role": role, "password": PASSWORD })), 201).await;
    assert_eq!(made["user"]["role"], role, "{made}");
    assert!(made.get("password").is_none(), "a given password is not echoed: {made}");
    // The user makes its own token, logged in through the UI's session.
    let mut ui = UiClient::new(server);
    let r = ui.try_login(name, PASSWORD).await;
    assert_eq!(r.status, 303, "{name} logs in: {}", r.body);
    let page = ui.get("/settings").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&format!("{name} ({role})")), "the header names the user and role");
    let mut body = json!({ "name": format!("{name}-token") });
    if let Some(l) = limit {
        body["role"] = json!(l);
    }
    // Tokens are made through the API with the admin's help here (the UI
    // makes tokens without a limit): a token is the caller's own, so the
    // user's first token comes from a session. The session's CSRF token is
    // the page's.
    let made = ui_api(&mut ui, "POST", "/api/tokens", &body).await;
    assert_eq!(made.0, 201, "{}", made.1);
    assert_eq!(made.1["user"], name);
    Api::new(&server.url(), server.fingerprint(), made.1["token"].as_str().unwrap())
}

/// An API call with a UI session's cookie and CSRF token: (status, JSON).
async fn ui_api(ui: &mut UiClient, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = ui.api_json(method, path, &body.to_string()).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

const PASSWORD: &str = "a long enough password";

#[tokio::test]
async fn every_route_is_allowed_or_refused_by_role_as_documented() {
    let dir = common::tempdir("tern-roles");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut admin = server.api();

    let viewer = user_with_token(&mut admin, &server, "vera", "viewer", None).await;
    let operator = user_with_token(&mut admin, &server, "otto", "operator", None).await;
    // An operator's token limited to viewing does what a viewer does.
    let limited = user_with_token(&mut admin, &server, "olga", "operator", Some("viewer")).await;
    let mut callers = [("viewer", viewer), ("operator", operator), ("viewer", limited), ("admin", server.api())];

    let doc = document();
    let mut walked = 0;
    for &(method, path, _, _) in ENDPOINTS {
        if path == "/api/auth/login" {
            continue;
        }
        let need = expected(method, path);
        assert_eq!(
            doc["paths"][path][method.to_lowercase()]["x-tern-role"],
            need,
            "{method} {path}: the document's x-tern-role"
        );
        // Ids no row has, so an allowed call finds nothing to change.
        let concrete = path
            .replace("{id}", "999999")
            .replace("{part}", "containers")
            .replace("{name}", "none")
            .replace("{digest}", "sha256:0000000000000000000000000000000000000000000000000000000000000000");
        let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}));
        for (role, api) in &mut callers {
            // Logging out a token is a 400, not a way to end the walk.
            let (status, reply) = api.call(method, &concrete, body.clone()).await;
            assert_ne!(status, 401, "{method} {path} as {role}: {reply}");
            let refused = status == 403 && reply["error"].as_str().is_some_and(|e| e.contains("role"));
            if rank(role) < rank(need) {
                assert!(refused, "{method} {path} must be refused to a {role}: {status} {reply}");
                assert!(
                    reply["error"].as_str().unwrap().contains(&format!("needs the {need} role")),
                    "the refusal says what is needed: {reply}"
                );
            } else {
                assert!(!refused, "{method} {path} must be allowed to a {role}: {status} {reply}");
            }
            walked += 1;
        }
    }
    assert_eq!(walked, 4 * (ENDPOINTS.len() - 1), "every route but login, as each caller");

    // A refusal changes nothing, and is in the audit log.
    let (_, viewer) = &mut callers[0];
    let (status, _) = viewer.call("POST", "/api/groups", Some(json!({ "name": "vera-was-here" }))).await;
    assert_eq!(status, 403);
    let groups = admin.ok("GET", "/api/groups", None, 200).await;
    assert!(!groups.to_string().contains("vera-was-here"), "{groups}");
    let audit = admin.ok("GET", "/api/audit?actor=vera&action=POST%20/api/groups", None, 200).await;
    assert_eq!(audit["entries"][0]["status"], 403, "{audit}");
    let actor = audit["entries"][0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("token:vera-token#") && actor.ends_with(" user:vera"), "{audit}");

    // Each sees its own tokens; the admin sees every one, with its user.
    let mine = viewer.ok("GET", "/api/tokens", None, 200).await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["user"], "vera");
    let all = admin.ok("GET", "/api/tokens", None, 200).await;
    assert!(all.as_array().unwrap().len() >= 4, "{all}");
    let otto_token = all.as_array().unwrap().iter().find(|t| t["user"] == "otto").unwrap()["id"].as_u64().unwrap();
    let (status, _) = viewer.call("DELETE", &format!("/api/tokens/{otto_token}"), None).await;
    assert_eq!(status, 404, "another user's token is not the viewer's to revoke");
    // No token is made with more than its maker may do.
    let (_, operator) = &mut callers[1];
    let (status, reply) = operator.call("POST", "/api/tokens", Some(json!({ "name": "up", "role": "admin" }))).await;
    assert_eq!(status, 422, "{reply}");
    assert!(reply["error"].as_str().unwrap().starts_with("role: at most your own (operator)"), "{reply}");
    let me = operator.ok("GET", "/api/auth/me", None, 200).await;
    assert_eq!((me["username"].as_str(), me["role"].as_str()), (Some("otto"), Some("operator")), "{me}");
    // A token limited to looking cannot revoke its own user's full token.
    let full = operator.ok("POST", "/api/tokens", Some(json!({ "name": "otto-full" })), 201).await;
    let look = operator.ok("POST", "/api/tokens", Some(json!({ "name": "otto-look", "role": "viewer" })), 201).await;
    let mut look = Api::new(&server.url(), server.fingerprint(), look["token"].as_str().unwrap());
    let (status, reply) = look.call("DELETE", &format!("/api/tokens/{}", full["id"]), None).await;
    assert_eq!(status, 403, "{reply}");
    // Nor the data directory's, even as an operator.
    let dd = all.as_array().unwrap().iter().find(|t| t["data_directory"] == true).unwrap()["id"].as_u64().unwrap();
    assert_eq!(operator.call("DELETE", &format!("/api/tokens/{dd}"), None).await.0, 404);

    // A stack's variable values are an operator's to read, not a viewer's
    // (both in a team that sees the environment's group).
    admin.ok("POST", "/api/groups", Some(json!({ "name": "north" })), 201).await;
    let env = admin
        .ok("POST", "/api/environments", Some(json!({ "name": "site", "url": server.url(), "group": "north" })), 201)
        .await["id"]
        .as_u64()
        .unwrap();
    admin
        .ok(
            "POST",
            "/api/teams",
            Some(json!({ "name": "field", "members": ["vera", "otto"], "groups": ["north"] })),
            201,
        )
        .await;
    let compose = "services:\n  web:\n    image: ${IMAGE}\n";
    let body = json!({ "name": "web", "compose": compose, "env": { "IMAGE": "x:1", "DB_PASSWORD": "s3cret" },
                        "files": { "tls/key.pem": "PRIVATE-k3y" }, "targets": { "environments": [env] } });
    let stack = operator.ok("POST", "/api/stacks", Some(body), 201).await["id"].as_u64().unwrap();
    for path in [format!("/api/stacks/{stack}"), format!("/api/stacks/{stack}/versions")] {
        let (_, viewer) = &mut callers[0];
        let seen = viewer.ok("GET", &path, None, 200).await.to_string();
        assert!(
            !seen.contains("s3cret") && seen.contains("DB_PASSWORD") && seen.contains("\"env_hidden\":true"),
            "{seen}"
        );
        // A stack's files too: keys and certificates travel there.
        assert!(
            !seen.contains("PRIVATE-k3y") && seen.contains("tls/key.pem") && seen.contains("\"files_hidden\":true"),
            "{seen}"
        );
        let (_, operator) = &mut callers[1];
        let seen = operator.ok("GET", &path, None, 200).await.to_string();
        assert!(seen.contains("s3cret") && seen.contains("PRIVATE-k3y"), "{seen}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn disabling_or_a_new_role_ends_sessions_and_the_last_admin_stays() {
    let dir = common::tempdir("tern-roles-change");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut admin = server.api();
    let mut otto = user_with_token(&mut admin, &server, "otto", "operator", None).await;
    let users = admin.ok("GET", "/api/users", None, 200).await;
    let id = |name: &str| users.as_array().unwrap().iter().find(|u| u["name"] == name).unwrap()["id"].as_u64().unwrap();
    let (otto_id, admin_id) = (id("otto"), id("admin"));

    // A session of otto's, then a new role: the session ends, the token
    // does what the new role allows.
    let mut ui = UiClient::new(&server);
    assert_eq!(ui.try_login("otto", PASSWORD).await.status, 303);
    assert_eq!(ui.get("/stacks").await.status, 200);
    let changed = admin.ok("PATCH", &format!("/api/users/{otto_id}"), Some(json!({ "role": "viewer" })), 200).await;
    // Two: this one, and the one that made otto's token.
    assert_eq!(changed["sessions_ended"], 2, "{changed}");
    let r = ui.get("/stacks").await;
    assert_eq!(r.status, 303, "the ended session goes back to the login page: {}", r.body);
    let (status, reply) = otto.call("POST", "/api/stacks", Some(json!({}))).await;
    assert_eq!(status, 403, "the token follows the role: {reply}");

    // Disabled: no login, no token, no session.
    assert_eq!(ui.try_login("otto", PASSWORD).await.status, 303);
    admin.ok("PATCH", &format!("/api/users/{otto_id}"), Some(json!({ "disabled": true })), 200).await;
    assert_eq!(ui.get("/stacks").await.status, 303, "a disabled user's session ends");
    let r = UiClient::new(&server).try_login("otto", PASSWORD).await;
    assert_ne!(r.status, 303, "a disabled user cannot log in");
    assert!(r.body.contains("wrong user name or password"), "and is told no more than a wrong password: {}", r.body);
    let (status, _) = otto.call("GET", "/api/environments", None).await;
    assert_eq!(status, 401, "a disabled user's token is refused");
    admin.ok("PATCH", &format!("/api/users/{otto_id}"), Some(json!({ "disabled": false })), 200).await;
    otto.ok("GET", "/api/environments", None, 200).await;

    // The last enabled admin can be neither demoted, disabled nor deleted.
    for body in [json!({ "role": "operator" }), json!({ "disabled": true })] {
        let (status, reply) = admin.call("PATCH", &format!("/api/users/{admin_id}"), Some(body)).await;
        assert_eq!(status, 409, "{reply}");
    }
    assert_eq!(admin.call("DELETE", &format!("/api/users/{admin_id}"), None).await.0, 409);
    admin.ok("GET", "/api/users", None, 200).await;
    // The admin's own password is changed with the current one.
    let (status, reply) = admin
        .call("PATCH", &format!("/api/users/{admin_id}"), Some(json!({ "password": "a new long password" })))
        .await;
    assert_eq!(status, 422, "{reply}");
    // Bad input changes nothing.
    for body in [json!({ "role": "root" }), json!({ "password": "short" }), json!({ "colour": "red" })] {
        let (status, _) = admin.call("PATCH", &format!("/api/users/{otto_id}"), Some(body.clone())).await;
        assert!(status == 422 || status == 400, "{body}: {status}");
    }
    for body in [
        json!({ "name": "bad name", "role": "viewer" }),
        json!({ "name": "x", "role": "superuser" }),
        json!({ "name": "otto", "role": "viewer" }),
    ] {
        let (status, _) = admin.call("POST", "/api/users", Some(body.clone())).await;
        assert!(status == 422 || status == 409, "{body}: {status}");
    }
    let users = admin.ok("GET", "/api/users", None, 200).await;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert_eq!(users.as_array().unwrap().iter().find(|u| u["name"] == "otto").unwrap()["role"], "viewer");

    // A password reset by the admin: the old one stops working.
    admin
        .ok("PATCH", &format!("/api/users/{otto_id}"), Some(json!({ "password": "another long password" })), 200)
        .await;
    assert_ne!(UiClient::new(&server).try_login("otto", PASSWORD).await.status, 303);
    assert_eq!(UiClient::new(&server).try_login("otto", "another long password").await.status, 303);

    // Deleting a user deletes its tokens.
    admin.ok("DELETE", &format!("/api/users/{otto_id}"), None, 200).await;
    assert_eq!(otto.call("GET", "/api/environments", None).await.0, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn users_are_managed_from_the_cli_and_the_ui() {
    let dir = common::tempdir("tern-roles-cli");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let cli = |args: &[&str], vars: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .args(["--server", &server.url(), "--data"])
            .arg(&server.data)
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_USER_PASSWORD")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&["user", "create", "ada", "--role", "operator"], &[]);
    assert!(ok, "{out}");
    let password =
        out.lines().find_map(|l| l.strip_prefix("password ")).expect("a generated password, shown").to_owned();
    assert!(password.len() >= 20, "{out}");
    let (ok, out) = cli(&["user", "create", "bob", "--role", "viewer"], &[("TERN_USER_PASSWORD", PASSWORD)]);
    assert!(ok && !out.contains("password "), "a given password is not printed: {out}");
    let (ok, out) = cli(&["user", "list"], &[]);
    assert!(ok && out.contains("ada") && out.contains("operator") && out.contains("bob"), "{out}");
    let (ok, out) = cli(&["user", "set", "bob", "--disable"], &[]);
    assert!(ok && out.contains("disabled"), "{out}");
    let (ok, out) = cli(&["user", "set", "admin", "--role", "viewer"], &[]);
    assert!(!ok && out.contains("no enabled admin"), "{out}");
    let (ok, out) = cli(&["user", "set", "ada", "--role", "admin"], &[]);
    assert!(ok, "{out}");
    server.api().ok("POST", "/api/groups", Some(json!({ "name": "coast" })), 201).await;
    let (ok, out) = cli(&["team", "create", "coastal", "--members", "bob", "--groups", "coast"], &[]);
    assert!(ok && out.contains("members: bob") && out.contains("groups: coast"), "{out}");
    let (ok, out) = cli(&["team", "set", "coastal", "--members", "ada,bob"], &[]);
    assert!(ok && out.contains("members: ada,bob"), "{out}");
    let (ok, out) = cli(&["team", "create", "x", "--groups", "nowhere"], &[]);
    assert!(!ok && out.contains("no group"), "{out}");

    // The generated password logs in; the viewer's forms are refused with
    // the role's message, and the users page is the admin's.
    let mut ada = UiClient::new(&server);
    assert_eq!(ada.try_login("ada", &password).await.status, 303);
    let page = ada.get("/users").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("bob") && page.body.contains("disabled"), "{}", page.body);
    assert!(page.body.contains("data-team=\"coastal\""), "the team is on the page");
    let r = ada.submit("/teams", &[("name", "inland"), ("members", "ada"), ("groups", "coast")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(ada.get("/users").await.body.contains("data-team=\"inland\""));
    let made = ada.submit("/users", &[("name", "cleo"), ("role", "viewer")]).await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert!(made.body.contains("id=\"shown-password\""), "the new user's password is shown once");
    let cleo_password =
        made.body.split("<pre class=\"command\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    let mut cleo = UiClient::new(&server);
    assert_eq!(cleo.try_login("cleo", &cleo_password).await.status, 303);
    assert_eq!(cleo.get("/environments").await.status, 200);
    let users_page = cleo.get("/users").await;
    assert_eq!(users_page.status, 403, "{}", users_page.body);
    assert!(!cleo.get("/environments").await.body.contains("href=\"/users\""), "no Users link for a viewer");
    let r = cleo.submit("/settings/groups", &[("name", "cleos-group")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("needs the admin role"), "{}", r.body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_team_sees_and_acts_on_its_groups_environments_only() {
    let dir = common::tempdir("tern-teams");
    let server = Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut admin = server.api();
    for g in ["north", "south"] {
        admin.ok("POST", "/api/groups", Some(json!({ "name": g })), 201).await;
    }
    let env = |name: &str, group: Option<&str>| {
        let mut body = json!({ "name": name, "url": server.url() });
        if let Some(g) = group {
            body["group"] = json!(g);
        }
        body
    };
    let mut ids = Vec::new();
    for (name, group) in [("n1", Some("north")), ("s1", Some("south")), ("loose", None)] {
        ids.push(admin.ok("POST", "/api/environments", Some(env(name, group)), 201).await["id"].as_u64().unwrap());
    }
    let (n1, s1, loose) = (ids[0], ids[1], ids[2]);
    let mut otto = user_with_token(&mut admin, &server, "otto", "operator", None).await;

    // In no team: no environment at all.
    let seen = otto.ok("GET", "/api/environments", None, 200).await;
    assert_eq!(seen.as_array().unwrap().len(), 0, "{seen}");
    let team = admin
        .ok("POST", "/api/teams", Some(json!({ "name": "north-ops", "members": ["otto"], "groups": ["north"] })), 201)
        .await;
    assert_eq!((team["members"][0].as_str(), team["groups"][0].as_str()), (Some("otto"), Some("north")), "{team}");

    // The list, one environment, its state and usage: north only.
    let seen = otto.ok("GET", "/api/environments", None, 200).await;
    let names: Vec<&str> = seen.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1"]);
    otto.ok("GET", &format!("/api/environments/{n1}"), None, 200).await;
    for id in [s1, loose] {
        for path in [
            format!("/api/environments/{id}"),
            format!("/api/environments/{id}/state"),
            format!("/api/environments/{id}/usage"),
        ] {
            let (status, reply) = otto.call("GET", &path, None).await;
            assert_eq!(status, 404, "{path}: {reply}");
            assert_eq!(reply["error"], format!("no environment {id}"), "out of scope reads as not there");
        }
        let (status, _) = otto
            .call(
                "POST",
                &format!("/api/environments/{id}/commands"),
                Some(json!({ "action": "container.stop", "target": "x" })),
            )
            .await;
        assert_eq!(status, 404);
    }
    // An id spelled with %-escapes is the same id to the check as to the
    // handler.
    let escaped = |id: u64| id.to_string().bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    for path in [format!("/api/environments/{}", escaped(s1)), format!("/api/environments/{}/state", escaped(s1))] {
        assert_eq!(otto.call("GET", &path, None).await.0, 404, "{path}");
    }
    otto.ok("GET", &format!("/api/environments/{}", escaped(n1)), None, 200).await;
    assert_eq!(otto.call("GET", "/api/environments/x1", None).await.0, 404, "an id that is no number is refused");
    let usage = otto.ok("GET", "/api/usage", None, 200).await;
    let listed: Vec<u64> =
        usage["environments"].as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(listed.iter().all(|id| *id == n1), "{usage}");
    // A command the admin queued on the south is not the operator's.
    let c = admin
        .ok(
            "POST",
            &format!("/api/environments/{s1}/commands"),
            Some(json!({ "action": "image.pull", "target": "busybox:1" })),
            201,
        )
        .await["id"]
        .as_u64()
        .unwrap();
    assert_eq!(otto.call("GET", &format!("/api/commands/{c}"), None).await.0, 404);
    assert_eq!(otto.call("DELETE", &format!("/api/commands/{c}"), None).await.0, 404);
    let mine = otto
        .ok(
            "POST",
            &format!("/api/environments/{n1}/commands"),
            Some(json!({ "action": "image.pull", "target": "busybox:1" })),
            201,
        )
        .await["id"]
        .as_u64()
        .unwrap();
    otto.ok("GET", &format!("/api/commands/{mine}"), None, 200).await;

    // Stacks and jobs: only targets inside the team's groups; a refused one
    // leaves nothing behind.
    let compose = "services:\n  web:\n    image: busybox\n";
    let stack = |targets: Value| json!({ "name": "web", "compose": compose, "targets": targets });
    for targets in
        [json!({ "environments": [s1] }), json!({ "groups": ["south"] }), json!({ "environments": [n1, loose] })]
    {
        let (status, reply) = otto.call("POST", "/api/stacks", Some(stack(targets.clone()))).await;
        assert_eq!(status, 403, "{targets}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains("outside your teams' groups"), "{reply}");
    }
    assert_eq!(admin.ok("GET", "/api/stacks", None, 200).await.as_array().unwrap().len(), 0, "nothing was made");
    let ours = otto.ok("POST", "/api/stacks", Some(stack(json!({ "groups": ["north"] }))), 201).await;
    let ours = ours["id"].as_u64().unwrap_or_else(|| panic!("{ours}"));
    let theirs = admin
        .ok(
            "POST",
            "/api/stacks",
            Some(json!({ "name": "db", "compose": compose, "targets": { "groups": ["south"] } })),
            201,
        )
        .await["id"]
        .as_u64()
        .unwrap();
    // A stack whose every target is gone is the admin's, not everyone's.
    let gone = admin.ok("POST", "/api/environments", Some(env("gone", None)), 201).await["id"].as_u64().unwrap();
    let orphan = admin
        .ok(
            "POST",
            "/api/stacks",
            Some(json!({ "name": "orphan", "compose": compose, "targets": { "environments": [gone] } })),
            201,
        )
        .await["id"]
        .as_u64()
        .unwrap();
    admin.call("DELETE", &format!("/api/environments/{gone}"), None).await;
    assert_eq!(otto.call("GET", &format!("/api/stacks/{orphan}"), None).await.0, 404);
    let listed = otto.ok("GET", "/api/stacks", None, 200).await;
    assert_eq!(listed.as_array().unwrap().iter().map(|s| s["id"].as_u64().unwrap()).collect::<Vec<_>>(), [ours]);
    assert_eq!(otto.call("GET", &format!("/api/stacks/{theirs}"), None).await.0, 404);
    assert_eq!(otto.call("DELETE", &format!("/api/stacks/{theirs}"), None).await.0, 404);
    // Moving its own stack to the south is refused, and changes nothing.
    let (status, _) =
        otto.call("PUT", &format!("/api/stacks/{ours}"), Some(json!({ "targets": { "groups": ["south"] } }))).await;
    assert_eq!(status, 403);
    let kept = admin.ok("GET", &format!("/api/stacks/{ours}"), None, 200).await;
    assert!(!kept["targets"].to_string().contains("south"), "{kept}");
    let job = |envs: Vec<u64>| json!({ "name": "j", "script": "true", "targets": { "environments": envs } });
    assert_eq!(otto.call("POST", "/api/jobs", Some(job(vec![s1]))).await.0, 403);
    otto.ok("POST", "/api/jobs", Some(job(vec![n1])), 201).await;
    admin.ok("POST", "/api/jobs", Some(job(vec![s1])), 201).await;
    assert_eq!(otto.ok("GET", "/api/jobs", None, 200).await.as_array().unwrap().len(), 1);

    // The admin sees all of it; the UI's list is the API's.
    assert_eq!(admin.ok("GET", "/api/environments", None, 200).await.as_array().unwrap().len(), 3);
    let mut ui = UiClient::new(&server);
    assert_eq!(ui.try_login("otto", PASSWORD).await.status, 303);
    let page = ui.get("/environments").await;
    assert!(page.body.contains(">n1<") && !page.body.contains(">s1<"), "{}", page.body);
    assert_eq!(ui.get(&format!("/environments/{s1}")).await.status, 404);

    // Out of the team: nothing again.
    let team_id = team["id"].as_u64().unwrap();
    admin.ok("PATCH", &format!("/api/teams/{team_id}"), Some(json!({ "members": [] })), 200).await;
    assert_eq!(otto.ok("GET", "/api/environments", None, 200).await.as_array().unwrap().len(), 0);
    // Bad input changes nothing.
    for body in [
        json!({ "name": "x", "members": ["nobody"] }),
        json!({ "name": "x", "groups": ["nowhere"] }),
        json!({ "name": "north-ops" }),
    ] {
        let (status, reply) = admin.call("POST", "/api/teams", Some(body.clone())).await;
        assert!(status == 422 || status == 409, "{body}: {status} {reply}");
    }
    assert_eq!(admin.ok("GET", "/api/teams", None, 200).await.as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
