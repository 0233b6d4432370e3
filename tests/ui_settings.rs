//! The settings page through its forms, as a browser without a script uses
//! it, against the real `tern server`: the default intervals, the
//! AGENT_SECRET, groups, tags, private registries, API tokens and the
//! admin password. Each
//! change is read back through the API with the admin token; each refusal
//! shows the error next to its field and changes nothing; a form with a
//! wrong CSRF token is a 403 and changes nothing.

#![cfg(feature = "server")]

mod common;

use common::{Server, UiClient, UiReply, input_value, tempdir, text_by_id};
use serde_json::{Value, json};
use tern::agent::client::Client;
use tern::tls::Trust;

const PASSWORD: &str = "correct horse battery staple";

/// A server whose data directory is removed when the test ends, passed
/// or failed.
struct Started(Server);

impl std::ops::Deref for Started {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Started {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.stop();
        let _ = std::fs::remove_dir_all(&self.0.data);
    }
}

fn start(name: &str) -> Started {
    Started(Server::start_with(&tempdir(name), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]))
}

async fn settings(server: &Server) -> Value {
    server.api().ok("GET", "/api/settings", None, 200).await
}

/// A 303 back to the settings page with this flag and section.
fn assert_done(r: &UiReply, flag: &str, section: &str) {
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(format!("/settings?done={flag}#{section}").as_str()));
}

/// The element `id` holds `text` (the error shown next to a field).
fn assert_says(r: &UiReply, id: &str, text: &str) {
    let got = text_by_id(&r.body, id).unwrap_or_else(|| panic!("no #{id} in the page:\n{}", r.body));
    assert!(got.contains(text), "#{id} says {got:?}, not {text:?}");
}

/// A bearer-token call with any token; its status.
async fn bearer_status(server: &Server, token: &str, path: &str) -> u16 {
    let mut c = Client::new(&server.url(), Trust::Pinned(server.fingerprint()), 1 << 20).unwrap();
    c.api(hyper::Method::GET, path, token, None).await.unwrap().0
}

#[tokio::test]
async fn the_page_has_every_section_and_every_form_is_protected() {
    let server = start("tern-ui-settings-page");
    let mut anon = UiClient::new(&server);
    let r = anon.get("/settings").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location.as_deref(), Some("/login?next=%2Fsettings"));

    let mut ui = UiClient::login(&server, PASSWORD).await;
    let r = ui.get("/settings").await;
    assert_eq!(r.status, 200, "{}", r.body);
    for id in ["intervals", "agent-secret", "groups", "tags", "registries", "tokens", "password"] {
        assert!(r.body.contains(&format!("<section class=\"settings\" id=\"{id}\"")), "no section {id}");
        assert!(r.body.contains(&format!("href=\"#{id}\"")), "no link to {id}");
    }
    for id in [
        "f-ping",
        "f-snapshot",
        "f-command",
        "f-agent_secret",
        "f-registry_name",
        "f-registry_url",
        "f-registry_username",
        "f-registry_password",
        "f-current",
        "f-new",
        "f-repeat",
    ] {
        assert!(r.body.contains(&format!("<label for=\"{id}\"")), "no label for #{id}");
        assert!(r.body.contains(&format!(" id=\"{id}\"")), "no #{id}");
    }
    for t in ["ping", "snapshot", "command"] {
        assert!(r.body.contains(&format!("data-custom=\"f-{t}_custom\"")), "{t}: no custom hook");
        assert!(r.body.contains(&format!("<label class=\"sub\" for=\"f-{t}_custom\"")), "{t}: custom input unlabelled");
        for label in ["Disabled", "1 minute", "1 hour", "1 day", "1 week", "Custom"] {
            assert!(r.body.contains(&format!(">{label}</option>")), "no {label}");
        }
    }
    assert!(r.body.contains("name=\"current\" type=\"password\""));
    assert!(r.body.contains("autocomplete=\"current-password\""));
    assert_eq!(
        r.body.matches("autocomplete=\"new-password\"").count(),
        4,
        "new, repeat, the agent secret and a new registry's password"
    );
    // Every form that posts carries the CSRF token; nothing inline.
    let posts = r.body.matches("method=\"post\"").count();
    let csrf = r.body.matches(&format!("name=\"csrf\" value=\"{}\"", ui.csrf)).count();
    assert!(posts >= 8, "{posts} forms");
    assert_eq!(posts, csrf, "a form without the CSRF token");
    assert!(!r.body.contains("<script>") && !r.body.contains(" style=\"") && !r.body.contains(" onclick="));
    // The data-directory token is listed and marked.
    assert!(r.body.contains(">data directory</span>"), "the admin token is not marked");
}

#[tokio::test]
async fn default_intervals_are_set_through_the_form_and_a_bad_value_changes_nothing() {
    let server = start("tern-ui-settings-intervals");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    server
        .api()
        .ok("POST", "/api/environments", Some(json!({ "name": "follower", "url": "https://ops.example:9443" })), 201)
        .await;
    let r = ui.get("/settings").await;
    assert_says(&r, "f-ping-hint", "1 environment follows this default");

    let r = ui
        .submit(
            "/settings/intervals",
            &[
                ("ping", "custom"),
                ("ping_custom", "90"),
                ("snapshot", "3600"),
                ("snapshot_custom", ""),
                ("command", "0"),
                ("command_custom", "12345"),
            ],
        )
        .await;
    assert_done(&r, "intervals", "intervals");
    let want = json!({ "ping": 90, "snapshot": 3600, "command": 0 });
    assert_eq!(settings(&server).await["intervals"], want);
    let r = ui.get(r.location.as_deref().unwrap()).await;
    assert!(r.body.contains("The default intervals were saved"), "no notice");
    assert_eq!(input_value(&r.body, "ping_custom").as_deref(), Some("90"));
    assert!(r.body.contains("<option value=\"custom\" selected>"), "90 s is shown as custom");
    assert!(r.body.contains("<option value=\"3600\" selected>1 hour</option>"));
    assert!(r.body.contains("<option value=\"0\" selected>Disabled</option>"));

    // A custom value that is not a number, or is over a week: the error is
    // next to its field, the form keeps what was typed, nothing changes.
    for (bad, says) in
        [("abc", "not a whole number of seconds"), ("700000", "1 to 604800 seconds"), ("", "type the custom")]
    {
        let r = ui
            .submit(
                "/settings/intervals",
                &[("ping", "60"), ("snapshot", "custom"), ("snapshot_custom", bad), ("command", "60")],
            )
            .await;
        assert_eq!(r.status, 422, "{bad:?}: {}", r.body);
        assert_says(&r, "f-snapshot-error", says);
        assert!(text_by_id(&r.body, "f-ping-error").is_none() && text_by_id(&r.body, "f-command-error").is_none());
        assert!(
            r.body.contains(
                "id=\"f-snapshot\" name=\"snapshot\" data-custom=\"f-snapshot_custom\" aria-invalid=\"true\""
            )
        );
        assert_eq!(input_value(&r.body, "snapshot_custom").as_deref(), Some(bad));
        assert_eq!(settings(&server).await["intervals"], want, "{bad:?} changed something");
    }
    // A choice the form never offers.
    let r = ui.submit("/settings/intervals", &[("ping", "120"), ("snapshot", "60"), ("command", "60")]).await;
    assert_eq!(r.status, 422);
    assert_says(&r, "f-ping-error", "not one of the choices");
    // The API's own refusal (every timer off), above the form.
    let r = ui.submit("/settings/intervals", &[("ping", "0"), ("snapshot", "0"), ("command", "0")]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let section = text_by_id(&r.body, "intervals").unwrap();
    assert!(section.contains("at least one default must be above 0"), "{section}");
    assert_eq!(settings(&server).await["intervals"], want);
}

#[tokio::test]
async fn the_agent_secret_is_set_and_removed_and_never_shown() {
    let server = start("tern-ui-settings-secret");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let r = ui.get("/settings").await;
    assert_says(&r, "agent-secret-status", "No AGENT_SECRET is set");
    assert!(r.body.contains("agents must") || r.body.contains("must also be started with"), "no hint");

    let r = ui.submit("/settings/agent-secret", &[("agent_secret", "   ")]).await;
    assert_eq!(r.status, 422);
    assert_says(&r, "f-agent_secret-error", "type the new secret");
    assert_eq!(settings(&server).await["agent_secret_set"], false);

    let r = ui.submit("/settings/agent-secret", &[("agent_secret", "x\u{7}y")]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_says(&r, "f-agent_secret-error", "no control characters");
    assert_eq!(settings(&server).await["agent_secret_set"], false);

    let secret = "sea-secret-4711-not-in-pages";
    let r = ui.submit("/settings/agent-secret", &[("agent_secret", secret)]).await;
    assert_done(&r, "secret-set", "agent-secret");
    assert_eq!(settings(&server).await["agent_secret_set"], true);
    let r = ui.get("/settings?done=secret-set").await;
    assert_says(&r, "agent-secret-status", "An AGENT_SECRET is set");
    assert!(!r.body.contains(secret), "the secret is shown");
    assert!(r.body.contains("restarted with it"), "no notice");

    let r = ui.submit("/settings/agent-secret/clear", &[]).await;
    assert_done(&r, "secret-cleared", "agent-secret");
    assert_eq!(settings(&server).await["agent_secret_set"], false);
    let r = ui.get("/settings").await;
    assert!(!r.body.contains("/settings/agent-secret/clear"), "nothing to remove");
}

#[tokio::test]
async fn groups_and_tags_are_created_renamed_and_deleted() {
    let server = start("tern-ui-settings-labels");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let mut api = server.api();
    for (kind, one) in [("groups", "group"), ("tags", "tag")] {
        let r = ui.submit(&format!("/settings/{kind}"), &[(&format!("{one}_name"), "Ships")]).await;
        assert_done(&r, &format!("{one}-created"), kind);
        let list = api.ok("GET", &format!("/api/{kind}"), None, 200).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        let id = list[0]["id"].as_u64().unwrap();
        assert_eq!(list[0]["name"], "Ships");

        // A taken name (any case) and an empty one: next to the field, typed text kept.
        let r = ui.submit(&format!("/settings/{kind}"), &[(&format!("{one}_name"), "ships")]).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert_says(&r, &format!("f-{one}_name-error"), "exists already");
        assert_eq!(input_value(&r.body, &format!("{one}_name")).as_deref(), Some("ships"));
        let r = ui.submit(&format!("/settings/{kind}"), &[(&format!("{one}_name"), " ")]).await;
        assert_eq!(r.status, 422);
        assert_says(&r, &format!("f-{one}_name-error"), "1 to 64 characters");
        assert_eq!(api.ok("GET", &format!("/api/{kind}"), None, 200).await.as_array().unwrap().len(), 1);

        // An environment in it: the list counts it, the delete button says so.
        let env = json!({ "name": format!("ship-{one}"), "url": "https://ops.example:9443", "group": if one == "group" { json!("Ships") } else { Value::Null }, "tags": if one == "tag" { json!(["Ships"]) } else { json!([]) } });
        let env = api.ok("POST", "/api/environments", Some(env), 201).await;
        let env_id = env["id"].as_u64().unwrap();
        let r = ui.get("/settings").await;
        let row = text_by_id(&r.body, &format!("{kind}-list")).unwrap();
        assert!(row.contains("Ships 1"), "{row}");
        assert!(r.body.contains(&format!("aria-label=\"Delete the {one} Ships (1 environment)\"")));
        assert!(r.body.contains(&format!(
            "Its 1 environment {}.",
            if one == "group" { "will be in no group" } else { "lose this tag" }
        )));

        // Rename: refused (empty), then done.
        let r = ui.submit(&format!("/settings/{kind}/{id}/rename"), &[("name", "")]).await;
        assert_eq!(r.status, 422);
        assert_says(&r, &format!("f-{one}-{id}-error"), "1 to 64 characters");
        assert_eq!(api.ok("GET", &format!("/api/{kind}/{id}"), None, 200).await["name"], "Ships");
        let r = ui.submit(&format!("/settings/{kind}/{id}/rename"), &[("name", "Fleet A")]).await;
        assert_done(&r, &format!("{one}-renamed"), kind);
        assert_eq!(api.ok("GET", &format!("/api/{kind}/{id}"), None, 200).await["name"], "Fleet A");

        // Delete an unknown one: refused; then this one.
        let r = ui.submit(&format!("/settings/{kind}/999/delete"), &[]).await;
        assert_eq!(r.status, 404, "{}", r.body);
        let r = ui.submit(&format!("/settings/{kind}/{id}/delete"), &[]).await;
        assert_done(&r, &format!("{one}-deleted"), kind);
        assert_eq!(api.ok("GET", &format!("/api/{kind}"), None, 200).await, json!([]));
        let env = api.ok("GET", &format!("/api/environments/{env_id}"), None, 200).await;
        assert_eq!(env["group"], Value::Null);
        assert_eq!(env["tags"], json!([]));
    }
}

#[tokio::test]
async fn an_api_token_is_shown_once_works_and_stops_when_revoked() {
    let server = start("tern-ui-settings-tokens");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let mut api = server.api();
    let before = api.ok("GET", "/api/tokens", None, 200).await.as_array().unwrap().len();

    let r = ui.submit("/settings/tokens", &[("token_name", "")]).await;
    assert_eq!(r.status, 422);
    assert_says(&r, "f-token_name-error", "1 to 128 characters");
    assert_eq!(api.ok("GET", "/api/tokens", None, 200).await.as_array().unwrap().len(), before);

    let r = ui.submit("/settings/tokens", &[("token_name", "backup script")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = text_by_id(&r.body, "new-token").expect("no #new-token");
    assert!(secret.starts_with("tern_"), "{secret}");
    assert!(r.body.contains("<button type=\"button\" data-copy=\"new-token\" hidden>Copy</button>"));
    assert!(r.header("cache-control").is_some_and(|c| c.contains("no-store")));
    assert_eq!(bearer_status(&server, &secret, "/api/settings").await, 200);

    let tokens = api.ok("GET", "/api/tokens", None, 200).await;
    let t = tokens.as_array().unwrap().iter().find(|t| t["name"] == "backup script").unwrap().clone();
    let id = t["id"].as_u64().unwrap();
    // Shown once: the page again lists it, without its secret.
    let r = ui.get("/settings").await;
    assert!(!r.body.contains(&secret), "the secret is shown again");
    assert!(text_by_id(&r.body, "new-token").is_none());
    let list = text_by_id(&r.body, "tokens-list").unwrap();
    assert!(list.contains("backup script") && list.contains("active"), "{list}");

    let r = ui.submit(&format!("/settings/tokens/{id}/revoke"), &[]).await;
    assert_done(&r, "token-revoked", "tokens");
    assert_eq!(bearer_status(&server, &secret, "/api/settings").await, 401);
    let t = api.ok("GET", "/api/tokens", None, 200).await;
    assert!(t.as_array().unwrap().iter().any(|t| t["id"] == id && t["revoked_at"].is_i64()));
    let r = ui.get("/settings").await;
    assert!(r.body.contains(&format!("<tr data-id=\"{id}\" data-revoked=\"true\">")), "not shown revoked");
    assert!(!r.body.contains(&format!("/settings/tokens/{id}/revoke")), "a revoked token offers revoke");

    let r = ui.submit("/settings/tokens/9999/revoke", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no API token 9999"));
}

#[tokio::test]
async fn the_password_is_changed_only_with_the_right_current_one_and_a_matching_repeat() {
    let server = start("tern-ui-settings-password");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let new = "a brand new passphrase 42";

    let r = ui.submit("/settings/password", &[("current", "not the password"), ("new", new), ("repeat", new)]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_says(&r, "f-current-error", "wrong password");
    assert!(r.body.contains("id=\"f-current\" name=\"current\" type=\"password\" value=\"\""), "a password re-filled");

    let r = ui
        .submit("/settings/password", &[("current", PASSWORD), ("new", new), ("repeat", "a brand new passphrase 43")])
        .await;
    assert_eq!(r.status, 422);
    assert_says(&r, "f-repeat-error", "differ");
    assert!(text_by_id(&r.body, "f-current-error").is_none());

    let r = ui.submit("/settings/password", &[("current", PASSWORD), ("new", "short"), ("repeat", "short")]).await;
    assert_eq!(r.status, 422);
    assert_says(&r, "f-new-error", "at least 12 characters");

    // None of those changed it.
    assert_eq!(UiClient::new(&server).try_login("admin", PASSWORD).await.status, 303);

    let r = ui.submit("/settings/password", &[("current", PASSWORD), ("new", new), ("repeat", new)]).await;
    assert_done(&r, "password", "password");
    // This session goes on; the old password no longer logs in; the new one does.
    let r = ui.get("/settings?done=password").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("The password was changed"));
    let old = UiClient::new(&server).try_login("admin", PASSWORD).await;
    assert_eq!(old.status, 401, "{}", old.body);
    assert!(old.body.contains("wrong user name or password"));
    UiClient::login(&server, new).await;
}

#[tokio::test]
async fn a_form_with_a_wrong_csrf_token_is_refused_and_changes_nothing() {
    let server = start("tern-ui-settings-csrf");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let mut api = server.api();
    let settings_before = settings(&server).await;
    let tokens = |v: Value| -> Vec<(Value, Value, Value)> {
        v.as_array().unwrap().iter().map(|t| (t["id"].clone(), t["name"].clone(), t["revoked_at"].clone())).collect()
    };
    let tokens_before = tokens(api.ok("GET", "/api/tokens", None, 200).await);
    api.ok("POST", "/api/groups", Some(json!({ "name": "keep" })), 201).await;
    let gid = api.ok("GET", "/api/groups", None, 200).await[0]["id"].as_u64().unwrap();
    let registry = json!({ "name": "keep", "url": "10.0.0.5:5000", "username": "puller", "password": "pw" });
    let rid = api.ok("POST", "/api/registries", Some(registry), 201).await["id"].as_u64().unwrap();
    let registries_before = api.ok("GET", "/api/registries", None, 200).await;

    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/settings/intervals".into(), vec![("ping", "3600"), ("snapshot", "3600"), ("command", "3600")]),
        ("/settings/agent-secret".into(), vec![("agent_secret", "sneaky")]),
        ("/settings/groups".into(), vec![("group_name", "evil")]),
        (format!("/settings/groups/{gid}/rename"), vec![("name", "evil")]),
        (format!("/settings/groups/{gid}/delete"), vec![]),
        ("/settings/tags".into(), vec![("tag_name", "evil")]),
        ("/settings/tokens".into(), vec![("token_name", "evil")]),
        (
            "/settings/registries".into(),
            vec![
                ("registry_name", "evil"),
                ("registry_url", "evil.example"),
                ("registry_username", "evil"),
                ("registry_password", "evil"),
            ],
        ),
        (format!("/settings/registries/{rid}/password"), vec![("password", "evil")]),
        (format!("/settings/registries/{rid}/delete"), vec![]),
        (
            "/settings/password".into(),
            vec![("current", PASSWORD), ("new", "evil evil evil evil"), ("repeat", "evil evil evil evil")],
        ),
    ];
    for (path, fields) in &forms {
        for csrf in ["wrong", ""] {
            let mut all = vec![("csrf", csrf)];
            all.extend(fields.iter().copied());
            let r = ui.post_form(path, &all).await;
            assert_eq!(r.status, 403, "{path} with csrf {csrf:?}: {}", r.body);
            assert!(r.body.contains("This form has expired"), "{path}: the refusal is not shown: {}", r.body);
        }
        // And with no csrf field at all.
        let r = ui.post_form(path, fields).await;
        assert_eq!(r.status, 403, "{path} without csrf: {}", r.body);
    }
    assert_eq!(settings(&server).await, settings_before);
    assert_eq!(api.ok("GET", "/api/groups", None, 200).await[0]["name"], "keep");
    assert_eq!(api.ok("GET", "/api/tags", None, 200).await, json!([]));
    assert_eq!(tokens(api.ok("GET", "/api/tokens", None, 200).await), tokens_before);
    assert_eq!(api.ok("GET", "/api/registries", None, 200).await, registries_before);
    assert_eq!(UiClient::new(&server).try_login("admin", PASSWORD).await.status, 303, "the password changed");
}

#[tokio::test]
async fn a_registry_is_added_its_password_changed_and_it_is_removed_never_showing_a_password() {
    let server = start("tern-ui-settings-registries");
    let mut ui = UiClient::login(&server, PASSWORD).await;
    let mut api = server.api();
    let secret = "reg-secret-4711-never-in-pages";
    let list = |v: Value| v.as_array().unwrap().clone();

    let r = ui.get("/settings").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let section = text_by_id(&r.body, "registries").unwrap();
    assert!(section.contains("No registry"), "{section}");
    assert!(section.contains("pulls with its credentials") && section.contains("never shown again"), "{section}");
    assert!(r.body.contains(
        "id=\"f-registry_password\" name=\"registry_password\" type=\"password\" value=\"\" required autocomplete=\"new-password\""
    ));

    // A bad address: the error next to the address, what was typed kept
    // (but the password), nothing added.
    let add = |name: &'static str, url: &'static str, password: &'static str| {
        [
            ("registry_name", name),
            ("registry_url", url),
            ("registry_username", "puller"),
            ("registry_password", password),
        ]
    };
    let r = ui.submit("/settings/registries", &add("site", "a b", secret)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_says(&r, "f-registry_url-error", "not a host name or address");
    assert!(text_by_id(&r.body, "f-registry_name-error").is_none());
    assert!(r.body.contains("id=\"f-registry_url\" name=\"registry_url\" type=\"text\" value=\"a b\" required"));
    assert_eq!(input_value(&r.body, "registry_name").as_deref(), Some("site"));
    assert_eq!(input_value(&r.body, "registry_username").as_deref(), Some("puller"));
    assert_eq!(input_value(&r.body, "registry_password").as_deref(), Some(""));
    assert!(!r.body.contains(secret), "the refused form shows the password");
    // No password: next to the password.
    let r = ui.submit("/settings/registries", &add("site", "10.0.0.5:5000", "")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_says(&r, "f-registry_password-error", "1 to");
    assert_eq!(api.ok("GET", "/api/registries", None, 200).await, json!([]));

    // Added: listed by its name, address and user, never its password.
    let r = ui.submit("/settings/registries", &add("site", "https://10.0.0.5:5000/", secret)).await;
    assert_done(&r, "registry-added", "registries");
    let all = list(api.ok("GET", "/api/registries", None, 200).await);
    assert_eq!(all.len(), 1);
    assert_eq!(
        (&all[0]["name"], &all[0]["url"], &all[0]["username"]),
        (&json!("site"), &json!("10.0.0.5:5000"), &json!("puller"))
    );
    let id = all[0]["id"].as_u64().unwrap();
    let r = ui.get(r.location.as_deref().unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("The registry was added"), "no notice");
    let row = text_by_id(&r.body, "registries-list").unwrap();
    assert!(row.contains("site 10.0.0.5:5000 puller"), "{row}");
    assert!(!r.body.contains(secret), "the password is in the page");
    assert!(r.body.contains(&format!(
        "id=\"f-registry-{id}-password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required"
    )));
    assert!(r.body.contains("aria-label=\"Remove the registry site\""));

    // The same address or name again: a conflict next to its field.
    let r = ui.submit("/settings/registries", &add("other", "10.0.0.5:5000", "x")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_says(&r, "f-registry_url-error", "has credentials already");
    let r = ui.submit("/settings/registries", &add("site", "10.0.0.6:5000", "x")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_says(&r, "f-registry_name-error", "exists already");
    assert_eq!(list(api.ok("GET", "/api/registries", None, 200).await).len(), 1);

    // A new password: refused empty (next to the row's input), then set.
    let r = ui.submit(&format!("/settings/registries/{id}/password"), &[("password", "")]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_says(&r, &format!("f-registry-{id}-password-error"), "1 to");
    let renewed = "reg-secret-0815-never-in-pages";
    let r = ui.submit(&format!("/settings/registries/{id}/password"), &[("password", renewed)]).await;
    assert_done(&r, "registry-password", "registries");
    let r = ui.get(r.location.as_deref().unwrap()).await;
    assert!(r.body.contains("password was changed"), "no notice");
    assert!(!r.body.contains(renewed) && !r.body.contains(secret), "a password is in the page");
    let after = list(api.ok("GET", "/api/registries", None, 200).await);
    assert_eq!(
        (&after[0]["name"], &after[0]["username"]),
        (&json!("site"), &json!("puller")),
        "more than the password changed"
    );
    let r = ui.submit("/settings/registries/9999/password", &[("password", "x")]).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no registry 9999"));

    // A form without its CSRF token (or a wrong one) is refused and changes nothing.
    let forms: [(String, Vec<(&str, &str)>); 3] = [
        ("/settings/registries".into(), add("evil", "evil.example", "evil").to_vec()),
        (format!("/settings/registries/{id}/password"), vec![("password", "evil")]),
        (format!("/settings/registries/{id}/delete"), vec![]),
    ];
    let before = api.ok("GET", "/api/registries", None, 200).await;
    for (path, fields) in &forms {
        let r = ui.post_form(path, fields).await;
        assert_eq!(r.status, 403, "{path} without csrf: {}", r.body);
        assert!(r.body.contains("This form has expired"), "{path}: {}", r.body);
        let mut wrong = vec![("csrf", "wrong")];
        wrong.extend(fields.iter().copied());
        assert_eq!(ui.post_form(path, &wrong).await.status, 403, "{path} with a wrong csrf");
    }
    assert_eq!(api.ok("GET", "/api/registries", None, 200).await, before);

    // Removed.
    let r = ui.submit("/settings/registries/9999/delete", &[]).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no registry 9999"));
    let r = ui.submit(&format!("/settings/registries/{id}/delete"), &[]).await;
    assert_done(&r, "registry-removed", "registries");
    assert_eq!(api.ok("GET", "/api/registries", None, 200).await, json!([]));
    let r = ui.get(r.location.as_deref().unwrap()).await;
    assert!(r.body.contains("The registry was removed"), "no notice");
    assert!(text_by_id(&r.body, "registries-list").is_none());
}
