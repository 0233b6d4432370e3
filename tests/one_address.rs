//! Many agents behind one address (issue #18): carrier NAT, a site router,
//! a load balancer. Each test runs the real `tern server` binary.
//!
//! * 2,000 simulated agents (the fleet simulator, real TLS and polls) from
//!   one source address all get in and keep polling, though the server
//!   allows 512 unauthenticated connections per address; 2,000 idle
//!   connections from one address that prove nothing are still held to 512.
//! * Through HAProxy with `send-proxy-v2`, two clients on different
//!   addresses get separate login limits; a direct connection that sends a
//!   PROXY header from an address that is not a trusted proxy is refused,
//!   as is one from the trusted proxy without a header; each refusal is
//!   counted in /metrics, and logged once per interval, not once per
//!   connection.

#![cfg(all(feature = "agent", feature = "server", target_os = "linux"))]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use common::haproxy::{Haproxy, PROXY_SOURCE, free_port};
use common::{Server, tempdir};
use tern::tls::Trust;
use tokio::io::AsyncWriteExt;

/// One request over a new TCP connection made from `source` to `addr`,
/// with `before` written ahead of TLS (a PROXY header); its status, or
/// `None` when the server closed the connection instead.
async fn request_from(
    source: &str,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    before: &[u8],
    (method, path, body): (&str, &str, &str),
) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    let mut tcp = socket.connect(addr).await.ok()?;
    tcp.write_all(before).await.ok()?;
    let config = tern::tls::client_config(Trust::Pinned(fingerprint)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("tern-server").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await.ok()?.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    Some(send.send_request(req).await.ok()?.status().as_u16())
}

/// The value of a Prometheus sample line starting with `name` (labels
/// included), 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn metrics(server: &Server) -> String {
    let token = std::fs::read_to_string(tern::server::admin_token_path(&server.data)).unwrap().trim().to_owned();
    let mut client =
        tern::agent::client::Client::new(&server.url(), Trust::Pinned(server.fingerprint()), 1 << 20).unwrap();
    let (status, body) = client.api(hyper::Method::GET, "/metrics", &token, None).await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_agents_behind_one_address_all_poll_and_a_flood_from_it_is_still_capped() {
    let dir = tempdir("tern-one-address");
    let server = Server::start(&dir.join("data"), "127.0.0.1:0");
    let addr: SocketAddr = server.addr().parse().unwrap();

    // 2,000 connections from 127.0.0.3 that never say anything: 512 are
    // held (each until its handshake limit), the rest refused at once.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    let m = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = metrics(&server).await;
            if sample(&m, "tern_connections_refused_total{reason=\"address\"}") >= 1488.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the excess over 512 is refused");
    assert_eq!(sample(&m, "tern_connections_refused_total{reason=\"address\"}"), 1488.0, "{m}");
    drop(idle);

    // 2,000 agents polling from one address (127.0.0.2), over real TLS
    // with real polls: every one gets in and keeps polling.
    let mut opts = tern_fleet::Options::parse_from([
        "tern-fleet",
        "--server",
        &server.url(),
        "--token",
        std::fs::read_to_string(tern::server::admin_token_path(&server.data)).unwrap().trim(),
        "--fingerprint",
        &server.value("certificate sha256 "),
        "--agents",
        "2000",
        "--interval",
        "20",
        "--duration",
        "20",
        "--change-share",
        "0",
        "--source-addrs",
        "1",
        "--per-address",
        "2000",
        "--seed",
        "18",
    ]);
    opts.server_pid = Some(server.pid());
    let report = tern_fleet::run(&opts).await.expect("the fleet run runs");
    eprintln!("{}", report.table());
    assert_eq!(report.source_addrs, 1);
    assert_eq!(report.first_contact.agents, 2000, "{:?}", report.first_contact.errors);
    assert_eq!(report.error_total, 0, "{:?}", report.errors);
    assert!(
        report.polls.per_second >= report.polls.offered_per_second * 0.95,
        "served {} of {} polls/s",
        report.polls.per_second,
        report.polls.offered_per_second
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_each_client_has_its_own_login_limit_and_a_stray_proxy_header_is_refused() {
    let dir = tempdir("tern-proxy-protocol");
    let log = dir.join("server.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let server = Server::start_as(&dir.join("data"), "127.0.0.1:0", &[("TERN_PROXY_PROTOCOL", PROXY_SOURCE)], |cmd| {
        cmd.stderr(Stdio::from(log_file));
    });
    let (addr, fingerprint): (SocketAddr, _) = (server.addr().parse().unwrap(), server.fingerprint());
    let front = free_port();
    let _haproxy = Haproxy::start(&dir, front, &[server.addr()], true);
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();

    // Wrong passwords through HAProxy from 127.0.0.3: five are checked,
    // the sixth is refused unread. 127.0.0.4's are still checked.
    let wrong = ("POST", "/api/auth/login", r#"{"username":"admin","password":"not it"}"#);
    for i in 0..5 {
        assert_eq!(request_from("127.0.0.3", front, fingerprint, b"", wrong).await, Some(401), "try {i}");
    }
    assert_eq!(request_from("127.0.0.3", front, fingerprint, b"", wrong).await, Some(429));
    assert_eq!(request_from("127.0.0.4", front, fingerprint, b"", wrong).await, Some(401));

    // Direct, from 127.0.0.5 (not a trusted proxy): without a header it is
    // an ordinary client; with one, ten times, it is refused.
    let anonymous = ("GET", "/api/environments", "");
    assert_eq!(request_from("127.0.0.5", addr, fingerprint, b"", anonymous).await, Some(401));
    let forged: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let header = tern::server::http::proxy::header_for(forged, addr);
    for _ in 0..10 {
        assert_eq!(request_from("127.0.0.5", addr, fingerprint, &header, anonymous).await, None);
    }
    // From the trusted proxy's address without a header: refused too.
    assert_eq!(request_from(PROXY_SOURCE, addr, fingerprint, b"", anonymous).await, None);
    // And with one, the client it names is who the server sees.
    assert_eq!(request_from(PROXY_SOURCE, addr, fingerprint, &header, anonymous).await, Some(401));

    let m = metrics(&server).await;
    assert_eq!(sample(&m, "tern_connections_refused_total{reason=\"proxy\"}"), 11.0, "{m}");
    // Eleven refusals within the log's interval: one line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("refusing a connection")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("127.0.0.5") && lines[0].contains("not a trusted proxy"), "{}", lines[0]);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
