//! `tern server` as an operator runs it: the real binary, a data directory,
//! port 0 on 127.0.0.1.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::process::Command;

use common::Server;
use tern::agent::client::Client;
use tern::tls::Trust;

#[tokio::test]
async fn the_server_starts_serves_its_pinned_port_and_keeps_its_identity() {
    let data = std::env::temp_dir().join(format!("tern-server-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut server = Server::start(&data, "127.0.0.1:0");
    let addr = server.addr();
    let pin = server.fingerprint();
    let sqlite = common::test_database(&data).is_none();
    assert!(data.join("tern.db").exists() == sqlite && data.join("cert.pem").exists() && data.join("key.pem").exists());
    // Secrets are the server's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "the data directory");
        if sqlite {
            assert_eq!(mode(&data.join("tern.db")), 0o600, "the database");
        }
        assert_eq!(mode(&data.join("key.pem")), 0o600, "the key");
    }

    // The port speaks pinned TLS and refuses an unauthenticated poll.
    let port = addr.rsplit(':').next().unwrap();
    let mut client = Client::new(&format!("https://127.0.0.1:{port}"), Trust::Pinned(pin), 1 << 16).unwrap();
    let (status, _) = client.post(tern::wire::POLL_PATH, vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 401);

    // `tern env add` through the API, authenticated by the admin token in
    // the data directory, pinning the certificate found there.
    let env_add = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["env", "add", "--name", name, "--server", &format!("https://127.0.0.1:{port}"), "--data"])
            .arg(&data)
            .env_remove("TERN_TOKEN")
            .output()
            .unwrap()
    };
    let out = env_add("ship-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("EDGE_KEY=")).expect("prints the join token");
    assert!(text.contains("docker run -d --name tern-agent"), "{text}");
    assert!(text.contains(&format!("-e EDGE_KEY={key}")));
    let token = tern::auth::JoinToken::parse(key).unwrap();
    assert_eq!(token.cert_sha256, pin);
    assert_eq!(token.url, format!("https://127.0.0.1:{port}"));
    let dup = env_add("ship-1");
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists already"));

    // The token works: an agent's first poll is accepted.
    let mut codec = tern::wire::codec::Codec::new(Default::default()).unwrap();
    let req = tern::wire::poll::PollRequest {
        agent: Some(tern::wire::poll::AgentInfo { version: "test".into(), edge_id: "e1".into() }),
        ..Default::default()
    };
    let wire = tern::auth::seal_request(token.environment, 1, &token.secret, &codec.encode(&req.encode()).unwrap());
    let (status, body) = client.post(tern::wire::POLL_PATH, wire).await.unwrap();
    assert_eq!(status, 200);
    tern::auth::open_reply(1, &token.secret, &body).expect("an authentic reply");
    assert!(server.stop().is_some_and(|s| s.success()), "Ctrl-C stops the server cleanly");

    // A restart keeps the certificate, so deployed agents still trust it.
    let mut again = Server::start(&data, "127.0.0.1:0");
    assert_eq!(again.fingerprint(), pin);
    assert!(again.stop().is_some_and(|s| s.success()));
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn log_format_json_writes_one_json_object_a_line() {
    let data = std::env::temp_dir().join(format!("tern-server-json-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut server = Server::start_as(&data.join("data"), "127.0.0.1:0", &[("LOG_FORMAT", "json")], |cmd| {
        cmd.stderr(file);
    });
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["level"], "INFO", "{text}");
    assert!(first["fields"]["message"].as_str().unwrap().starts_with("database "), "{text}");
    for line in text.lines().filter(|l| !l.starts_with("tern: ")) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let _ = std::fs::remove_dir_all(&data);
}
