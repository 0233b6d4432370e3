//! The server and agent against a hostile peer, each test a defect found by
//! a review as an attacker would try it (issue #12), reproduced against the
//! real `tern server` binary:
//!
//! 1. a flood of idle connections under a low open-file limit made the
//!    accept loop spin and log millions of lines, and kept good clients out;
//! 2. a small authenticated poll that decodes into millions of results held
//!    the store (and so every agent and the UI) for half a minute;
//! 3. an unauthenticated 409 injected by a machine in the middle moved the
//!    agent's counter past what the server stores, locking it out for good;
//! 5. slow 4 MiB poll bodies from strangers were buffered whole: hundreds
//!    of MiB of server memory.
//!
//! (4, the login lockout, is in `tests/api_access.rs`.)

#![cfg(all(feature = "agent", feature = "server", target_os = "linux"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{AgentProcess, Api, Deadline, Server, tempdir};
use serde_json::json;
use tern::agent::client::Client;
use tern::auth::{JoinToken, seal_request};
use tern::tls::Trust;
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::{PollReply, RefusalCode};
use tokio::io::AsyncWriteExt;

async fn create(api: &mut Api, name: &str, url: &str) -> (u64, JoinToken) {
    let created = api
        .ok(
            "POST",
            "/api/environments",
            Some(json!({"name": name, "url": url, "intervals": {"ping": 1, "snapshot": 1, "command": 1}})),
            201,
        )
        .await;
    (created["id"].as_u64().unwrap(), JoinToken::parse(created["edge_key"].as_str().unwrap()).unwrap())
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A TLS connection to `addr` from the local address `from`, pinned to `pin`.
async fn tls_from(
    from: &str,
    addr: &str,
    pin: [u8; 32],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    let tcp = socket.connect(addr.parse().unwrap()).await?;
    let config = Arc::new(tern::tls::client_config(Trust::Pinned(pin)).unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

#[tokio::test]
async fn a_connection_flood_under_a_low_file_limit_logs_little_and_a_good_client_gets_in() {
    let dir = tempdir("tern-hard-flood");
    let log = dir.join("server.log");
    let log_file = std::fs::File::create(&log).unwrap();
    // The file limit as a small distribution default might set it, soft and hard.
    let server = Server::start_as(&dir.join("data"), "127.0.0.1:0", &[], |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.stderr(log_file);
        // SAFETY: setrlimit is async-signal-safe, and touches nothing else.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let addr = server.addr();
    // 300 idle TCP connections from one address, as the report made them.
    let mut flood = Vec::new();
    for _ in 0..300 {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(c) => flood.push(c),
            Err(e) => panic!("connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A good client, from another address, is served at once.
    let started = Instant::now();
    let mut good = tls_from("127.0.0.2", &addr, server.fingerprint()).await.expect("a handshake");
    let token = std::fs::read_to_string(tern::server::admin_token_path(&server.data)).unwrap();
    let request = format!(
        "GET /api/environments HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        token.trim()
    );
    good.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut good, &mut reply).await.ok();
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
    assert!(started.elapsed() < Duration::from_secs(5), "served in {:?}", started.elapsed());
    // The flood goes on (each of its connections reconnects once) while the
    // log stays small: the report saw 441 MB in 6 s.
    drop(flood);
    let mut again = Vec::new();
    for _ in 0..300 {
        if let Ok(c) = tokio::net::TcpStream::connect(&addr).await {
            again.push(c);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = std::fs::metadata(&log).unwrap().len();
    println!("log after two floods of 300 connections: {logged} bytes");
    assert!(logged < 16 * 1024, "{logged} bytes of log:\n{}", std::fs::read_to_string(&log).unwrap());
    drop(again);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_oversized_poll_is_refused_before_the_store_and_the_api_stays_fast() {
    let dir = tempdir("tern-hard-bomb");
    let server = Server::start(&dir.join("data"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, token) = create(&mut api, "bomb", &server.url()).await;
    // 2.79 million results (id 1, ok): 16.7 MB of protobuf, a kilobyte or
    // two once compressed, as the report made it.
    let raw: Vec<u8> = [0x1a, 0x04, 0x08, 0x01, 0x10, 0x01].repeat(2_790_000);
    let mut codec = Codec::new(Limits::default()).unwrap();
    let body = codec.encode(&raw).unwrap();
    assert!(body.len() < 4096, "{} bytes on the wire", body.len());
    // The agent's first poll binds it; its next carries the results.
    let mut agent = Client::new(&server.url(), Trust::Pinned(server.fingerprint()), 1 << 20).unwrap();
    let hello = tern::wire::poll::PollRequest {
        agent: Some(tern::wire::poll::AgentInfo { version: "test".into(), edge_id: "bomb".into() }),
        ..Default::default()
    };
    let first = seal_request(env, 1, &token.secret, &codec.encode(&hello.encode()).unwrap());
    assert_eq!(agent.post(tern::wire::POLL_PATH, first).await.unwrap().0, 200);
    let polled = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await["last_poll_at"].clone();
    let wire = seal_request(env, 2, &token.secret, &body);
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let r = agent.post(tern::wire::POLL_PATH, wire).await.unwrap();
        (r, started.elapsed())
    });
    // Meanwhile, the API answers as fast as ever.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        api.ok("GET", "/api/environments", None, 200).await;
        slowest = slowest.max(started.elapsed());
    }
    let ((status, sealed), took) = poll.await.unwrap();
    println!("oversized poll refused in {took:?}; slowest API call meanwhile {slowest:?}");
    assert_eq!(status, 413);
    let opened = tern::auth::open_reply(2, &token.secret, &sealed).expect("a sealed refusal");
    let refused = PollReply::decode(&codec.decode(opened).unwrap()).unwrap().refused.unwrap();
    assert_eq!(refused.code, RefusalCode::TooLarge);
    // Counting stops at the first limit passed: the work is bounded by the
    // limits, not by what the agent sent.
    assert!(refused.detail.contains("more than 256 command results"), "{refused:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // Nothing of it was stored: the environment's last poll is the first.
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(e["last_poll_at"], polled, "{e}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn slow_poll_bodies_from_strangers_are_never_buffered() {
    let dir = tempdir("tern-hard-slow");
    let server = Server::start(&dir.join("data"), "127.0.0.1:0");
    let mut api = server.api();
    let (env, token) = create(&mut api, "victim", &server.url()).await;
    let before = rss(server.pid());
    // 100 connections each announcing a 4 MiB poll for a real environment,
    // sealed with a wrong key, sending all of its body but its last bytes,
    // and holding it there.
    let (addr, pin) = (server.addr(), server.fingerprint());
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let (addr, answered) = (addr.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let from = format!("127.0.3.{}", i % 100 + 1);
            let Ok(mut tls) = tls_from(&from, &addr, pin).await else { return };
            let body = vec![0u8; 4 << 20];
            let wire = seal_request(env, 10 + i, &tern::auth::Secret([7; 32]), &body);
            let head = format!(
                "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
                tern::wire::POLL_PATH,
                wire.len()
            );
            if tls.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for chunk in wire[..wire.len() - 16].chunks(256 * 1024) {
                if tls.write_all(chunk).await.is_err() {
                    answered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            // The last bytes, a byte a second.
            for b in &wire[wire.len() - 16..] {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tls.write_all(&[*b]).await.is_err() {
                    answered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    let mut peak = before;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss(server.pid()));
    }
    for t in &tasks {
        t.abort();
    }
    println!(
        "server memory {} MiB before, {} MiB at its peak under 100 slow 4 MiB bodies; {} senders cut off",
        before >> 20,
        peak >> 20,
        answered.load(Ordering::Relaxed)
    );
    // The report saw 164 -> 536 MiB.
    assert!(peak < before + (48 << 20), "{} MiB -> {} MiB", before >> 20, peak >> 20);
    // And the real agent's key still works.
    let mut codec = Codec::new(Limits::default()).unwrap();
    let hello = tern::wire::poll::PollRequest {
        agent: Some(tern::wire::poll::AgentInfo { version: "test".into(), edge_id: "good".into() }),
        ..Default::default()
    };
    let body = codec.encode(&hello.encode()).unwrap();
    let mut agent = Client::new(&server.url(), Trust::Pinned(pin), 1 << 20).unwrap();
    let (status, _) = agent.post(tern::wire::POLL_PATH, seal_request(env, 1, &token.secret, &body)).await.unwrap();
    assert_eq!(status, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A machine in the middle: terminates the agent's TLS with its own
/// certificate (the agent runs with EDGE_INSECURE_POLL=1), forwards polls
/// to the real server, and answers the `inject_at`-th poll itself.
async fn proxy(
    upstream: String,
    pin: [u8; 32],
    inject_at: usize,
    injected: (u16, &'static str),
    dir: &std::path::Path,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use http_body_util::{BodyExt, Full};
    let identity = tern::tls::ServerIdentity::load_or_create(dir, &["localhost".into()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config().unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = Arc::new(tokio::sync::Mutex::new(Client::new(&upstream, Trust::Pinned(pin), 16 << 20).unwrap()));
    let (seen, accepted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, a) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, client, seen, accepted) = (acceptor.clone(), client.clone(), s.clone(), a.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (client, seen, accepted) = (client.clone(), seen.clone(), accepted.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                        let (status, bytes) = if n == inject_at {
                            (injected.0, bytes::Bytes::from_static(injected.1.as_bytes()))
                        } else {
                            let r = client.lock().await.post(&path, body.to_vec()).await;
                            let (status, bytes) = r.unwrap_or((502, bytes::Bytes::new()));
                            if n > inject_at && status == 200 {
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            (status, bytes)
                        };
                        let mut r = hyper::Response::new(Full::new(bytes));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://localhost:{}", addr.port()), seen, accepted)
}

#[tokio::test]
async fn an_injected_counter_hint_through_a_proxy_changes_nothing() {
    let dir = tempdir("tern-hard-mitm");
    let server = Server::start(&dir.join("data"), "127.0.0.1:0");
    let mut api = server.api();
    let text = "replayed poll; last accepted counter 9223372036854775806";
    let (url, seen, accepted) = proxy(server.url(), server.fingerprint(), 3, (409, text), &dir.join("mitm")).await;
    let (env, token) = create(&mut api, "mitm", &url).await;
    let data = dir.join("agent");
    let agent = AgentProcess::start(
        &[
            ("EDGE_KEY", &token.encode()),
            ("EDGE_INSECURE_POLL", "1"),
            ("DATA_PATH", data.to_str().unwrap()),
            ("EDGE_ID", "mitm-1"),
        ],
        &dir.join("agent.log"),
    );
    // The injected answer comes third; then three polls must get through.
    let deadline = Deadline::new(Duration::from_secs(60));
    while accepted.load(Ordering::SeqCst) < 3 {
        deadline
            .tick(format_args!("polls after the injection ({} seen)\n{}", seen.load(Ordering::SeqCst), agent.log()))
            .await;
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("meta.json")).unwrap()).unwrap();
    let end = meta["counter_end"].as_u64().unwrap();
    assert!(end < 1000, "the agent's counter stayed where it was: {end}");
    assert!(!agent.log().contains("jumping above it"), "{}", agent.log());
    let e = api.ok("GET", &format!("/api/environments/{env}"), None, 200).await;
    assert_eq!(e["status"], "online", "{e}");
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_agent_of_the_old_envelope_is_told_to_upgrade() {
    let dir = tempdir("tern-hard-old");
    let server = Server::start(&dir.join("data"), "127.0.0.1:0");
    let mut client = Client::new(&server.url(), Trust::Pinned(server.fingerprint()), 1 << 20).unwrap();
    let (status, text) = client.post("/p", vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 426);
    assert!(String::from_utf8_lossy(&text).contains("tern agent 0.2"), "{}", String::from_utf8_lossy(&text));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
