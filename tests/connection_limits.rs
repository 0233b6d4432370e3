//! The server's port against a hostile client: a connection that never
//! completes its TLS handshake, one that goes idle, and too many from one
//! address are each closed, while a well-behaved client keeps working. The
//! limits are shortened for the test (the defaults are 30 s, 10 min, 512).

#![cfg(all(feature = "agent", feature = "server"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::agent::client::Client;
use tern::server::http::{AppState, ConnectionLimits, router, serve_with};
use tern::server::store::Store;
use tern::tls::{ServerIdentity, Trust};
use tern::wire::codec::Limits;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads until the server closes the connection; returns how long it took
/// (None if it stayed open longer than `limit`).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A server over a fresh data directory on 127.0.0.1:0, with these limits
/// and the admin token "admin"; it stops when `stop` is sent.
struct TestServer {
    dir: std::path::PathBuf,
    addr: std::net::SocketAddr,
    fingerprint: [u8; 32],
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(prefix: &str, limits: ConnectionLimits) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let identity = ServerIdentity::load_or_create(&dir, &["localhost".into()]).unwrap();
        let fingerprint = identity.fingerprint();
        let store = Store::open(&dir.join("tern.db")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Arc::new(identity.server_config().unwrap()),
            router(AppState::new(store, Limits::default(), "admin", fingerprint).unwrap()),
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Self { dir, addr, fingerprint, stop, server }
    }
}

#[tokio::test]
async fn silent_idle_and_excess_connections_are_closed_and_a_good_client_still_gets_in() {
    let limits = ConnectionLimits {
        max: 64,
        per_address: 3,
        handshake: Duration::from_millis(500),
        idle: Duration::from_millis(800),
        ..ConnectionLimits::default()
    };
    let TestServer { dir, addr, fingerprint, stop, server } = TestServer::start("tern-limits", limits).await;

    // A client that connects and never starts TLS is dropped after the
    // handshake limit.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await.expect("a silent connection is closed");
    assert!(took >= Duration::from_millis(400), "not before the limit: {took:?}");

    // A client that completes TLS and a request, then goes idle, is closed
    // after the idle limit; its next request opens a new connection.
    let url = format!("https://localhost:{}", addr.port());
    let mut good = Client::new(&url, Trust::Pinned(fingerprint), 1 << 20).unwrap();
    let (status, _) = good.post(tern::wire::POLL_PATH, vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 401, "an unauthenticated poll, answered");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = good.post(tern::wire::POLL_PATH, vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(good.connections, 2, "the idle connection was closed, and replaced");

    // Three held connections from one address; a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut fourth, Duration::from_millis(400)).await.expect("the fourth is refused");
    assert!(took < Duration::from_millis(400), "{took:?}");
    // Once those go (the handshake limit closes them), a good client gets in again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = good.post(tern::wire::POLL_PATH, vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 401);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads a TLS stream until the server closes it; what it read, or None if
/// it stayed open longer than `limit`.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.ok().map(|()| out)
}

#[tokio::test]
async fn shutdown_answers_the_request_under_way_closes_idle_connections_then_returns() {
    use tokio::io::AsyncWriteExt;
    let TestServer { dir, addr, fingerprint, stop, server } =
        TestServer::start("tern-drain", ConnectionLimits::default()).await;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tern::tls::client_config(Trust::Pinned(fingerprint)).unwrap()));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
    };

    // One connection idle between requests, one in the middle of a request
    // (its headers and half its body sent).
    let mut idle = connect().await;
    let mut busy = connect().await;
    let body = br#"{"name":"drained","url":"https://127.0.0.1:9443"}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let head = format!(
        "POST /api/environments HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer admin\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(first).await.unwrap();
    busy.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.send(()).unwrap();
    // The idle connection is closed at once...
    let closed = read_to_close(&mut idle, Duration::from_secs(3)).await;
    assert_eq!(closed.as_deref(), Some(&[][..]), "the idle connection is closed, with no answer");
    // ... while the server waits for the request under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.is_finished(), "the server returned with a request under way");

    busy.write_all(rest).await.unwrap();
    busy.flush().await.unwrap();
    let answer = read_to_close(&mut busy, Duration::from_secs(5)).await.expect("closed after its answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "the request under way is answered: {answer}");
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server returns once its connections are closed")
        .unwrap()
        .unwrap();
    assert!(answer.contains("\"name\":\"drained\""), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}
