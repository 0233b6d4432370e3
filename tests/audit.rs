//! The audit log (issue #17), with the real `tern server`: through the
//! API, the UI and the CLI, every change and every login (failed ones
//! too) is recorded with who, what, which target, when, from where and its
//! status; reads are not; no secret sent in a body is ever in it; it can
//! be filtered and exported as JSON lines.

#![cfg(feature = "server")]

mod common;

use std::process::Command;

use common::{Server, UiClient, tempdir};
use serde_json::{Value, json};

const PASSWORD: &str = "a long admin password for the audit";

fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .args(["--server", &server.url(), "--data"])
        .arg(&server.data)
        .env_remove("TERN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "tern {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_and_logins_are_recorded_filtered_and_exported_without_secrets() {
    let dir = tempdir("tern-audit");
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]);
    let mut api = server.api();

    // A failed login, then a good one, through the UI's form.
    let mut browser = UiClient::new(&server);
    let r = browser.try_login("admin", "not the password").await;
    assert_ne!(r.status, 303, "{}", r.body);
    let mut browser = UiClient::login(&server, PASSWORD).await;

    // Changes through the API (the data directory's token): one that
    // works, one refused, and one carrying a secret.
    let env = api
        .ok("POST", "/api/environments", Some(json!({"name": "ship-1", "url": "https://ops.example.com:9443"})), 201)
        .await;
    let id = env["id"].as_u64().unwrap();
    api.ok("POST", "/api/environments", Some(json!({"name": "", "url": "https://ops.example.com:9443"})), 422).await;
    api.ok("PUT", "/api/settings", Some(json!({"agent_secret": "s3cr3t-value"})), 200).await;
    // Reads are not recorded.
    api.ok("GET", &format!("/api/environments/{id}"), None, 200).await;
    // A change through the UI: its form calls the API as the logged-in user.
    let r = browser.submit(&format!("/environments/{id}/delete"), &[]).await;
    assert!(r.status == 303 || r.status == 200, "{} {}", r.status, r.body);

    let all = api.ok("GET", "/api/audit", None, 200).await;
    let entries = all["entries"].as_array().unwrap().clone();
    let find = |action: &str, status: u64| -> Value {
        entries
            .iter()
            .find(|e| e["action"] == action && e["status"] == status)
            .cloned()
            .unwrap_or_else(|| panic!("no {action} {status} in {entries:#?}"))
    };
    let failed = find("login", 401);
    // The name as typed proves nothing: not `user:` until the password is right.
    assert_eq!((failed["actor"].as_str(), failed["addr"].as_str()), (Some("unverified:admin"), Some("127.0.0.1")));
    assert_eq!(find("login", 200)["actor"], "user:admin");
    find("login", 200);
    let created = find("POST /api/environments", 201);
    assert!(created["actor"].as_str().unwrap().starts_with("token:"), "{created}");
    assert_eq!(created["target"], "/api/environments");
    find("POST /api/environments", 422);
    find("PUT /api/settings", 200);
    let deleted = find("DELETE /api/environments/{id}", 204);
    assert_eq!(
        (deleted["actor"].as_str(), deleted["target"].as_str()),
        (Some("user:admin"), Some(&*format!("/api/environments/{id}")))
    );
    assert!(!entries.iter().any(|e| e["action"].as_str().unwrap().starts_with("GET")), "reads are not recorded");
    assert_eq!(all["kept_days"], 365);
    // Newest first.
    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // Filters and pages.
    let logins = api.ok("GET", "/api/audit?action=login", None, 200).await;
    assert_eq!(logins["entries"].as_array().unwrap().len(), 2, "{logins}");
    let page = api.ok("GET", "/api/audit?limit=2", None, 200).await;
    let next = page["next"].as_u64().expect("a next page");
    let rest = api.ok("GET", &format!("/api/audit?before={next}"), None, 200).await;
    assert_eq!(rest["entries"].as_array().unwrap().len() + 2, entries.len());
    api.ok("GET", "/api/audit?limit=0", None, 400).await;

    // The CLI: a table, and every entry as JSON lines, none with the secret.
    let table = cli(&server, &["audit", "--action", "login"]);
    assert!(table.starts_with("WHEN") && table.contains("user:admin") && table.contains("401"), "{table}");
    let lines = cli(&server, &["audit", "--jsonl"]);
    let exported: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(exported.len() >= entries.len(), "{lines}");
    assert!(!lines.contains("s3cr3t") && !lines.contains(PASSWORD) && !lines.contains("not the password"), "{lines}");
    let since = cli(&server, &["audit", "--since", "1h", "--actor", "token:"]);
    assert!(since.contains("POST /api/environments") && !since.contains("login"), "{since}");

    // The UI's page, and its export link.
    let page = browser.get("/audit?action=DELETE").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("DELETE /api/environments/{id}") && !page.body.contains(">login<"), "{}", page.body);
    assert!(page.body.contains("/api/audit?format=jsonl&amp;action=DELETE"), "{}", page.body);
    let export = browser.get("/api/audit?format=jsonl&action=DELETE").await;
    assert_eq!(export.status, 200);
    assert_eq!(export.body.lines().count(), 1, "{}", export.body);
}
