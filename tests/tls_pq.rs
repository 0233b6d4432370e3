//! The post-quantum hybrid key exchange (X25519MLKEM768, `EDGE_TLS_PQ=1`)
//! against the real server on 127.0.0.1:0, next to the default X25519: the
//! group each client negotiates, that both get an answer from the poll
//! endpoint, and the bytes through the socket each handshake costs (counted
//! by the agent's client under TLS, TCP/IP headers not included).

#![cfg(all(feature = "agent", feature = "server"))]

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, NamedGroup};
use tern::agent::client::Client;
use tern::tls::{TlsOptions, Trust, client_config_with};

/// What the hybrid adds to a handshake: the client's ML-KEM-768
/// encapsulation key (1,184 B) in its key share, one more entry in
/// supported_groups (2 B), and the server's ML-KEM-768 ciphertext (1,088 B)
/// in its key share.
const HYBRID_EXTRA: u64 = 1184 + 2 + 1088;

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tern-tls-pq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A bare TLS handshake with the agent's configuration: the group and the
/// kind of handshake the connection got.
async fn negotiate(
    addr: std::net::SocketAddr,
    trust: Trust,
    options: TlsOptions,
) -> (Option<NamedGroup>, Option<HandshakeKind>) {
    let config = Arc::new(client_config_with(trust, options).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let conn = tls.get_ref().1;
    (conn.negotiated_key_exchange_group().map(|g| g.name()), conn.handshake_kind())
}

/// Bytes (sent, received) through the client's socket for one POST of
/// garbage to the poll path, which the server refuses with 401.
async fn refused_poll(client: &mut Client) -> (u64, u64) {
    let (s0, r0) = client.wire.get();
    let (status, _) = client.post(tern::wire::POLL_PATH, vec![0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    assert_eq!(status, 401, "garbage on the poll path is refused, after a complete handshake");
    let (s1, r1) = client.wire.get();
    (s1 - s0, r1 - r0)
}

#[tokio::test]
async fn default_clients_get_x25519_and_pq_clients_get_the_hybrid_from_the_real_server() {
    let dir = tempdir("server");
    let config = tern::server::ServerConfig::new(dir.clone());
    let prepared = tern::server::prepare(&config).unwrap();
    let trust = Trust::Pinned(prepared.fingerprint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tern::server::run(prepared, listener, async {
        let _ = stopped.await;
    }));

    let default = TlsOptions::default();
    let pq = TlsOptions { post_quantum: true };
    assert_eq!(negotiate(addr, trust, default).await, (Some(NamedGroup::X25519), Some(HandshakeKind::Full)));
    assert_eq!(
        negotiate(addr, trust, pq).await,
        (Some(NamedGroup::X25519MLKEM768), Some(HandshakeKind::Full)),
        "the server takes the hybrid's key share at once (no HelloRetryRequest)"
    );

    let mut measured = Vec::new();
    for (name, options) in [("X25519 (default)", default), ("X25519MLKEM768 (EDGE_TLS_PQ=1)", pq)] {
        let mut client = Client::with_tls(&url, trust, options, 1 << 16).unwrap();
        let full = refused_poll(&mut client).await;
        client.disconnect();
        let resumed = refused_poll(&mut client).await;
        assert_eq!((client.connections, client.resumed), (2, 1), "{name}: the second connection resumed");
        measured.push((name, full, resumed));
    }

    println!("{:<32} {:>22} {:>22}", "key exchange", "full handshake + 401", "resumed + 401");
    for (name, (fu, fd), (ru, rd)) in &measured {
        println!("{name:<32} {fu:>5} up {fd:>5} down {:>5} B {ru:>4} up {rd:>5} down {:>5} B", fu + fd, ru + rd);
    }
    let total = |(up, down): (u64, u64)| up + down;
    let (_, default_full, default_resumed) = measured[0];
    let (_, pq_full, pq_resumed) = measured[1];
    let extra_full = total(pq_full) - total(default_full);
    let extra_resumed = total(pq_resumed) - total(default_resumed);
    println!("the hybrid costs {extra_full} B more per full handshake, {extra_resumed} B more per resumed one");
    assert_eq!(pq_full.0 - default_full.0, 1184 + 2, "up: the encapsulation key and one more group");
    // The server's ECDSA signature (DER) is 70 to 72 bytes: a full
    // handshake's download varies by a byte or two from one to the next.
    let down = pq_full.1 as i64 - default_full.1 as i64;
    assert!((1088 - 3..=1088 + 3).contains(&down), "down: the ciphertext, {down} B");
    assert!(extra_full.abs_diff(HYBRID_EXTRA) <= 3, "{extra_full} B");
    assert_eq!(extra_resumed, HYBRID_EXTRA, "a resumed handshake exchanges keys too");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
