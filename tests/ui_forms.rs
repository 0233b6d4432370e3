//! The stacks and jobs pages of the web UI, against the real `tern server`
//! binary (no agent, no browser: a cookie-keeping HTTPS client posts the
//! forms as a browser without JavaScript would). A bad compose file, bad
//! variables, unknown targets, a taken name, a bad cron expression or
//! timeout come back as the form again (422, 409) with the values kept and
//! the API's message next to the field it concerns, and change nothing; a
//! good form redirects to the new stack or job; a form without the
//! session's CSRF token is refused (403) and changes nothing.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use common::{Server, UiClient, UiReply, attr_after, html_unescape, tempdir, text_by_id};
use serde_json::json;

const PASSWORD: &str = "a long admin password for the forms";

/// The form again, with `id` (the error next to its field) saying `want`.
fn field_error(page: &UiReply, status: u16, id: &str, want: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    let text = text_by_id(&page.body, id).unwrap_or_else(|| panic!("no #{id} in {}", page.body));
    assert!(text.contains(want), "#{id}: {text:?}, want {want:?}");
}

/// The text of the `<tag id=id>` (a textarea, a pre) as it is: whitespace
/// kept, escapes undone.
fn raw_text(page: &UiReply, tag: &str, id: &str) -> String {
    let at = page.body.find(&format!(" id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    assert!(page.body[..at].rfind('<').is_some_and(|o| page.body[o + 1..].starts_with(tag)), "#{id} is a {tag}");
    let start = at + page.body[at..].find('>').unwrap() + 1;
    let end = start + page.body[start..].find(&format!("</{tag}>")).unwrap();
    html_unescape(&page.body[start..end])
}

/// The value of the (first) input named `name`.
fn input_value_of(page: &UiReply, name: &str) -> String {
    common::input_value(&page.body, name).unwrap_or_else(|| panic!("no input {name}"))
}

fn textarea(page: &UiReply, id: &str) -> String {
    raw_text(page, "textarea", id)
}

/// The value of the input with this id.
fn input_by_id(page: &UiReply, id: &str) -> Option<String> {
    attr_after(&page.body, &format!("<input id=\"{id}\""), "value")
}

/// Whether an element has this id.
fn has_id(page: &UiReply, id: &str) -> bool {
    page.body.contains(&format!(" id=\"{id}\""))
}

#[tokio::test]
async fn stack_and_job_forms_show_api_errors_by_their_field_and_refuse_a_missing_csrf_token() {
    let data = tempdir("tern-ui-forms");
    let server = Server::start_with(&data, "127.0.0.1:0", &[("TERN_ADMIN_PASSWORD", PASSWORD)]);
    let mut api = server.api();
    let ship = api
        .ok("POST", "/api/environments", Some(json!({ "name": "ship-1", "url": "https://ops.example.com:9443" })), 201)
        .await;
    let ship_id = ship["id"].as_u64().unwrap();
    api.ok("POST", "/api/groups", Some(json!({ "name": "North Sea" })), 201).await;
    api.ok("POST", "/api/tags", Some(json!({ "name": "diesel" })), 201).await;

    // No session: to the login page.
    let r = UiClient::new(&server).get("/stacks/new").await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/login?next=%2Fstacks%2Fnew")));
    let mut b = UiClient::login(&server, PASSWORD).await;

    // ----- stacks -----
    let form = b.get("/stacks/new").await;
    assert_eq!(form.status, 200);
    for id in ["f-name", "f-compose", "f-env", "f-environments", "f-groups", "f-tags", "deploy"] {
        assert!(has_id(&form, id), "#{id} in the new stack form");
    }
    for label in ["f-name", "f-compose", "f-env", "f-environments", "f-groups", "f-tags"] {
        assert!(form.body.contains(&format!("<label for=\"{label}\">")), "a label for #{label}");
    }
    assert!(form.body.contains("<option value=\"North Sea\">"), "groups suggested");
    assert!(form.body.contains("<option value=\"diesel\">"), "tags suggested");
    assert!(form.body.contains("<option value=\"ship-1\">"), "a small fleet's environments suggested");
    let csrf = input_value_of(&form, "csrf");
    let good = "services:\n  web:\n    image: nginx:${TAG}\n";

    // A compose file that is not YAML: the form again, its values kept, the
    // error next to the compose file; nothing stored.
    let bad_yaml = "services: [unclosed\n";
    let r = b
        .post_form(
            "/stacks/new",
            &[("csrf", &csrf), ("name", "web"), ("compose", bad_yaml), ("env", "TAG=1.25"), ("environments", "ship-1")],
        )
        .await;
    field_error(&r, 422, "f-compose-error", "not valid YAML");
    assert!(r.body.contains("aria-describedby=\"f-compose-error\""), "the textarea points at its error");
    assert_eq!(textarea(&r, "f-compose"), bad_yaml);
    assert_eq!(input_by_id(&r, "f-name").as_deref(), Some("web"));
    assert_eq!(input_by_id(&r, "f-environments").as_deref(), Some("ship-1"));
    assert_eq!(textarea(&r, "f-env"), "TAG=1.25");
    assert!(!has_id(&r, "f-name-error"), "only the compose field is in error");
    // A service without an image.
    let r = b
        .post_form(
            "/stacks/new",
            &[
                ("csrf", &csrf),
                ("name", "web"),
                ("compose", "services:\n  web:\n    build: .\n"),
                ("environments", "ship-1"),
            ],
        )
        .await;
    field_error(&r, 422, "f-compose-error", "needs an `image`");
    // A bad name, a bad variable line, unknown targets, no target.
    let r = b
        .post_form(
            "/stacks/new",
            &[("csrf", &csrf), ("name", "Web App"), ("compose", good), ("environments", "ship-1")],
        )
        .await;
    field_error(&r, 422, "f-name-error", "not a compose project name");
    let r = b
        .post_form(
            "/stacks/new",
            &[
                ("csrf", &csrf),
                ("name", "web"),
                ("compose", good),
                ("env", "TAG=1\nno equals sign"),
                ("groups", "North Sea"),
            ],
        )
        .await;
    field_error(&r, 422, "f-env-error", "line 2");
    let r = b
        .post_form(
            "/stacks/new",
            &[("csrf", &csrf), ("name", "web"), ("compose", good), ("env", "1TAG=x"), ("groups", "North Sea")],
        )
        .await;
    field_error(&r, 422, "f-env-error", "not a variable name");
    let r = b
        .post_form(
            "/stacks/new",
            &[("csrf", &csrf), ("name", "web"), ("compose", good), ("environments", "ship-1, nowhere")],
        )
        .await;
    field_error(&r, 422, "f-targets-error", "nowhere");
    let r = b.post_form("/stacks/new", &[("csrf", &csrf), ("name", "web"), ("compose", good)]).await;
    field_error(&r, 422, "f-targets-error", "at least one");
    // A configuration file whose path leaves the stack's directory: the
    // error over the files, the row kept.
    let r = b
        .post_form(
            "/stacks/new",
            &[
                ("csrf", &csrf),
                ("name", "web"),
                ("compose", good),
                ("environments", "ship-1"),
                ("file_path_0", "../x.conf"),
                ("file_text_0", "a=1"),
            ],
        )
        .await;
    field_error(&r, 422, "f-files-error", "../x.conf");
    assert_eq!(input_by_id(&r, "f-file_path_0").as_deref(), Some("../x.conf"));
    assert_eq!(textarea(&r, "f-file_text_0"), "a=1");
    let r = b
        .post_form(
            "/stacks/new",
            &[("csrf", &csrf), ("name", "web"), ("compose", good), ("environments", "ship-1"), ("window", "1-5")],
        )
        .await;
    field_error(&r, 422, "f-window-error", "HH:MM-HH:MM");
    assert_eq!(input_by_id(&r, "f-window").as_deref(), Some("1-5"));
    assert_eq!(api.ok("GET", "/api/stacks", None, 200).await, json!([]), "refused forms stored nothing");

    // Without the CSRF field, or with another: 403, nothing stored.
    let fields = [("name", "web"), ("compose", good), ("environments", "ship-1")];
    let r = b.post_form("/stacks/new", &fields).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = b.post_form("/stacks/new", &[&[("csrf", "not the token")][..], &fields].concat()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(api.ok("GET", "/api/stacks", None, 200).await, json!([]), "refused forms stored nothing");

    // A good one (CRLF line ends, as browsers send a textarea): to its page.
    let r = b
        .post_form(
            "/stacks/new",
            &[
                ("csrf", &csrf),
                ("name", "web"),
                ("compose", &good.replace('\n', "\r\n")),
                ("env", "# the tag\r\nTAG=1.25\r\n"),
                ("environments", "ship-1"),
                ("groups", "North Sea"),
                ("tags", ""),
                ("file_path_0", " conf/site.conf "),
                ("file_text_0", "listen 80;\r\n"),
                ("file_path_1", ""),
                ("file_text_1", ""),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let stacks = api.ok("GET", "/api/stacks", None, 200).await;
    let id = stacks[0]["id"].as_u64().unwrap();
    assert_eq!(r.location.as_deref(), Some(format!("/stacks/{id}").as_str()));
    let stack = api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await;
    assert_eq!(stack["compose"], good, "stored with LF line ends");
    assert_eq!(stack["env"], json!({ "TAG": "1.25" }));
    assert_eq!(stack["files"], json!({ "conf/site.conf": "listen 80;\n" }), "an empty row ships nothing");
    let targets: Vec<(&str, &str)> = stack["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["kind"].as_str().unwrap(), t["name"].as_str().unwrap()))
        .collect();
    assert_eq!(targets, [("environment", "ship-1"), ("group", "North Sea")]);

    // Its page: the per-environment status, refreshing itself while pending.
    let p = b.get(&format!("/stacks/{id}")).await;
    assert_eq!(p.status, 200);
    assert_eq!(input_by_id(&p, "f-file_path_0").as_deref(), Some("conf/site.conf"), "its file, to edit");
    assert_eq!(input_by_id(&p, "f-file_path_1").as_deref(), Some(""), "and a row for one more");
    let row = p.body.find("<tr data-env-name=\"ship-1\"").expect("ship-1's row");
    assert!(p.body[..row].contains("id=\"stack-status\""), "in #stack-status");
    assert!(p.body[row..].contains("<td class=\"status\">"), "{}", &p.body[row..]);
    assert!(p.body[row..].contains("<span class=\"state pending\">pending</span>"), "{}", &p.body[row..]);
    assert!(p.body.contains(&format!("data-refresh-url=\"/stacks/{id}/status?")), "it refreshes");
    assert!(p.body.contains("data-pending"), "while pending");
    assert_eq!(raw_text(&p, "pre", "compose-file"), good);
    assert_eq!(textarea(&p, "f-compose"), good, "the edit form holds the file");
    assert_eq!(input_by_id(&p, "f-groups").as_deref(), Some("North Sea"));
    let fragment = b.get(&format!("/stacks/{id}/status")).await;
    assert_eq!(fragment.status, 200);
    assert!(fragment.body.contains("tr data-env-name=\"ship-1\"") && !fragment.body.contains("<html"));
    let list = b.get("/stacks").await;
    assert!(has_id(&list, "stacks") && list.body.contains(&format!("href=\"/stacks/{id}\"")), "{}", list.body);
    assert!(b.get("/stacks/999").await.status == 404 && b.get("/stacks/x").await.status == 404);

    // The name is taken now: said next to the name.
    let r = b
        .post_form("/stacks/new", &[("csrf", &csrf), ("name", "web"), ("compose", good), ("environments", "ship-1")])
        .await;
    field_error(&r, 409, "f-name-error", "exists already");

    // Edit: a bad file is refused next to its field, version unchanged; a
    // good one redeploys (version 2); without the token, 403.
    let edit = format!("/stacks/{id}/edit");
    let r = b
        .post_form(&edit, &[("csrf", &csrf), ("compose", "services: {}\n"), ("env", ""), ("environments", "ship-1")])
        .await;
    field_error(&r, 422, "f-compose-error", "no `services`");
    assert_eq!(textarea(&r, "f-compose"), "services: {}\n");
    let new = "services:\n  web:\n    image: nginx:${TAG}\n  db:\n    image: postgres\n";
    let r = b.post_form(&edit, &[("compose", new), ("env", "TAG=2"), ("environments", "ship-1")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await["version"], 1);
    let r = b.post_form(&edit, &[("csrf", &csrf), ("compose", new), ("env", "TAG=2"), ("tags", "diesel")]).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some(format!("/stacks/{id}#status").as_str())), "{}", r.body);
    let stack = api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await;
    assert_eq!((stack["version"].as_u64(), stack["compose"].as_str()), (Some(2), Some(new)));
    assert_eq!(stack["targets"][0]["name"], "diesel");

    // Remove: not without the token; then removing.
    let remove = format!("/stacks/{id}/remove");
    assert_eq!(b.post_form(&remove, &[]).await.status, 403);
    assert!(api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await["removed_at"].is_null());
    let r = b.post_form(&remove, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(api.ok("GET", &format!("/api/stacks/{id}"), None, 200).await["removed_at"].is_i64());

    // ----- jobs -----
    let form = b.get("/jobs/new").await;
    assert_eq!(form.status, 200);
    for id in
        ["f-name", "f-script", "f-cron", "f-image", "f-timeout_s", "f-environments", "f-groups", "f-tags", "create"]
    {
        assert!(has_id(&form, id), "#{id} in the new job form");
    }
    assert!(form.body.contains("UTC") && form.body.contains("Empty: run once"), "the cron hint");
    let script = "df -h /\necho done\n";
    let r = b
        .post_form(
            "/jobs/new",
            &[
                ("csrf", &csrf),
                ("name", "disk"),
                ("script", script),
                ("cron", "every five minutes"),
                ("environments", "ship-1"),
            ],
        )
        .await;
    field_error(&r, 422, "f-cron-error", "not a cron expression");
    assert_eq!(input_by_id(&r, "f-cron").as_deref(), Some("every five minutes"));
    assert_eq!(textarea(&r, "f-script"), script);
    let r = b
        .post_form(
            "/jobs/new",
            &[
                ("csrf", &csrf),
                ("name", "disk"),
                ("script", script),
                ("cron", "61 * * * *"),
                ("environments", "ship-1"),
            ],
        )
        .await;
    field_error(&r, 422, "f-cron-error", "not a cron expression");
    let r = b
        .post_form(
            "/jobs/new",
            &[("csrf", &csrf), ("name", "disk"), ("script", script), ("timeout_s", "soon"), ("environments", "ship-1")],
        )
        .await;
    field_error(&r, 422, "f-timeout_s-error", "not a number of seconds");
    let r = b
        .post_form("/jobs/new", &[("csrf", &csrf), ("name", "disk"), ("script", "  "), ("environments", "ship-1")])
        .await;
    field_error(&r, 422, "f-script-error", "empty");
    let r = b.post_form("/jobs/new", &[("csrf", &csrf), ("name", "disk"), ("script", script), ("tags", "nope")]).await;
    field_error(&r, 422, "f-tags-error", "no tag");
    let fields = [("name", "disk"), ("script", script), ("cron", "*/30 * * * *"), ("environments", "ship-1")];
    assert_eq!(b.post_form("/jobs/new", &fields).await.status, 403);
    assert_eq!(api.ok("GET", "/api/jobs", None, 200).await, json!([]), "refused forms stored nothing");

    let r = b
        .post_form(
            "/jobs/new",
            &[
                ("csrf", &csrf),
                ("name", "disk"),
                ("script", &script.replace('\n', "\r\n")),
                ("cron", "*/30 * * * *"),
                ("environments", "ship-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let jobs = api.ok("GET", "/api/jobs", None, 200).await;
    let job = jobs[0]["id"].as_u64().unwrap();
    assert_eq!(r.location.as_deref(), Some(format!("/jobs/{job}").as_str()));
    let detail = api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await;
    assert_eq!((detail["script"].as_str(), detail["cron"].as_str()), (Some(script), Some("*/30 * * * *")));
    assert_eq!(detail["environments"][0]["environment"], ship_id);

    // The environment page's sections: stack variables and the deploy
    // window, each saved through its form and back to its section.
    let r =
        b.post_form(&format!("/environments/{ship_id}/window"), &[("csrf", &csrf), ("window", "01:00-02:00")]).await;
    assert_eq!(r.location, Some(format!("/environments/{ship_id}#window")), "{}", r.body);
    let w = api.ok("GET", &format!("/api/environments/{ship_id}/window"), None, 200).await;
    assert_eq!(w["window"], "01:00-02:00 UTC");
    let vars = [("csrf", csrf.as_str()), ("variables", "SITE=7\n")];
    let r = b.post_form(&format!("/environments/{ship_id}/variables"), &vars).await;
    assert_eq!(r.location, Some(format!("/environments/{ship_id}#variables")), "{}", r.body);
    let v = api.ok("GET", &format!("/api/environments/{ship_id}/variables"), None, 200).await;
    assert_eq!(v["variables"], json!({ "SITE": "7" }));

    let p = b.get(&format!("/jobs/{job}")).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("<tr data-env-name=\"ship-1\""), "{}", p.body);
    assert!(has_id(&p, "job-envs") && has_id(&p, "runs"));
    assert!(p.body.contains("No run has reported yet."));
    assert_eq!(raw_text(&p, "pre", "job-script"), script);
    assert!(b.get(&format!("/jobs/{job}/live")).await.body.contains("id=\"job-envs\""));
    assert_eq!(b.get(&format!("/jobs/{job}?environment=nowhere")).await.status, 404, "an unknown environment's runs");
    let list = b.get("/jobs").await;
    assert!(has_id(&list, "jobs") && list.body.contains(&format!("href=\"/jobs/{job}\"")));

    // Edit: a bad cron is refused (version unchanged); a good edit keeps the
    // environments when no target is given.
    let edit = format!("/jobs/{job}/edit");
    let r = b.post_form(&edit, &[("csrf", &csrf), ("name", "disk"), ("script", script), ("cron", "* * *")]).await;
    field_error(&r, 422, "f-cron-error", "not a cron expression");
    assert_eq!(api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await["version"], 1);
    let r = b.post_form(&edit, &[("csrf", &csrf), ("name", "disk space"), ("script", script), ("cron", "")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let detail = api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await;
    assert_eq!((detail["version"].as_u64(), detail["name"].as_str()), (Some(2), Some("disk space")));
    assert!(detail["cron"].is_null(), "an empty schedule: run once");
    assert_eq!(detail["environments"].as_array().unwrap().len(), 1);

    // Delete: not without the token; then deleted, its page still there.
    let delete = format!("/jobs/{job}/delete");
    assert_eq!(b.post_form(&delete, &[("csrf", "")]).await.status, 403);
    assert!(api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await["removed_at"].is_null());
    let r = b.post_form(&delete, &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some(format!("/jobs/{job}").as_str())));
    assert!(api.ok("GET", &format!("/api/jobs/{job}"), None, 200).await["removed_at"].is_i64());
    let p = b.get(&format!("/jobs/{job}")).await;
    assert!(p.status == 200 && p.body.contains("deleted") && !has_id(&p, "f-script"), "no edit form once deleted");

    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
