//! The OpenAPI document lists exactly the routes the server registers, and
//! every one of them refuses a request without a credential (but login).

#![cfg(all(feature = "agent", feature = "server"))]

use std::collections::BTreeSet;

use tern::server::api::openapi::{ENDPOINTS, document};

/// `(METHOD, path)` of every `.route("path", get(..).post(..))` in the
/// server's sources.
fn registered() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let mut files = vec![dir.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".route(") {
            let rest = &text[i + ".route(".len()..];
            // The path: a string literal, or POLL_PATH (not in the REST API).
            let Some(rest) = rest.trim_start().strip_prefix('"') else { continue };
            let end = rest.find('"').unwrap();
            let route = &rest[..end];
            // The document covers the REST API; the web UI's pages
            // (src/server/ui/) are HTML for browsers, not API.
            if !route.starts_with("/api/") {
                continue;
            }
            // The method router up to the closing parenthesis of .route(.
            let mut depth = 1;
            let body: String = rest[end + 1..]
                .chars()
                .take_while(|&c| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    depth > 0
                })
                .collect();
            for method in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{method}(");
                if body
                    .match_indices(&call)
                    .any(|(j, _)| j == 0 || !body[..j].ends_with(char::is_alphanumeric) && !body[..j].ends_with('_'))
                {
                    found.insert((method.to_uppercase(), route.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn the_document_lists_exactly_the_registered_routes() {
    let documented: BTreeSet<(String, String)> =
        ENDPOINTS.iter().map(|(m, p, _, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    let registered = registered();
    let missing: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(missing.is_empty(), "routes missing from the OpenAPI document: {missing:?}");
    assert!(stale.is_empty(), "documented but not registered: {stale:?}");
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in &registered {
        assert!(doc["paths"][path][method.to_lowercase()].is_object(), "{method} {path}");
    }
}

mod common;

#[tokio::test]
async fn every_documented_endpoint_but_login_refuses_a_missing_or_wrong_credential() {
    let dir = common::tempdir("tern-openapi");
    let server = common::Server::start(&dir.join("server"), "127.0.0.1:0");
    let mut client =
        tern::agent::client::Client::new(&server.url(), tern::tls::Trust::Pinned(server.fingerprint()), 1 << 20)
            .unwrap();
    for &(method, path, _, _) in ENDPOINTS {
        let path = path.replace("{id}", "1").replace("{part}", "containers");
        let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| b"{}".to_vec());
        for token in ["", "tern_wrong"] {
            let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
            let (status, reply) = client.api(m, &path, token, body.clone()).await.unwrap();
            if path == "/api/auth/login" {
                assert_ne!(status, 200, "an empty login must not succeed");
                continue;
            }
            assert_eq!(status, 401, "{method} {path} with {token:?}: {}", String::from_utf8_lossy(&reply));
            let json: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            assert!(json["error"].is_string(), "{method} {path}: a JSON error");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
