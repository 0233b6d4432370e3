//! The simulated agents' connections: what `tern::agent::client::Client`
//! does (TCP, TLS 1.3 with the agent's rustls configuration and pinned
//! certificate, HTTP/1.1 with hyper, `POST /p` with `host` and
//! `content-length` only), plus what a simulator needs and an agent does
//! not: a source address per connection (bound before connect, so 50,000
//! connections can come from 127.0.0.2, 127.0.0.3, ... past one address's
//! ephemeral ports and the server's per-address cap), one TLS
//! configuration shared by every agent, and a count of resumed sessions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;

use crate::stats::ErrorKind;

/// The largest reply read (a reply with 100 commands is far below).
pub const MAX_REPLY: usize = 16 << 20;

/// Opens connections to one server.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    server: SocketAddr,
    name: ServerName<'static>,
    authority: String,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("server", &self.server).finish_non_exhaustive()
    }
}

/// One open connection.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    /// Whether its TLS session was resumed.
    pub resumed: bool,
}

/// A failed exchange: its kind, and what it said (for the first few, in
/// the log).
#[derive(Debug)]
pub struct Failure {
    /// The kind the report counts.
    pub kind: ErrorKind,
    /// What happened.
    pub detail: String,
}

impl Failure {
    fn new(kind: ErrorKind, detail: impl std::fmt::Display) -> Self {
        Self { kind, detail: detail.to_string() }
    }
}

impl Connector {
    /// A connector for `server` (an `https://host:port` URL's address),
    /// trusting `trust` as agents do.
    ///
    /// # Errors
    /// When rustls refuses the configuration.
    pub fn new(server: SocketAddr, trust: tern::tls::Trust) -> anyhow::Result<Self> {
        let config = tern::tls::client_config(trust)?;
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server,
            name: ServerName::IpAddress(server.ip().into()),
            authority: server.to_string(),
        })
    }

    /// Opens a connection from `source` (any local address when `None`).
    ///
    /// # Errors
    /// [`ErrorKind::Connect`], [`ErrorKind::Tls`] or [`ErrorKind::Http`].
    pub async fn connect(&self, source: Option<IpAddr>) -> Result<Conn, Failure> {
        let socket = match self.server {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| Failure::new(ErrorKind::Connect, e))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| Failure::new(ErrorKind::Connect, format!("bind {ip}: {e}")))?;
        }
        let tcp = socket.connect(self.server).await.map_err(|e| Failure::new(ErrorKind::Connect, e))?;
        tcp.set_nodelay(true).map_err(|e| Failure::new(ErrorKind::Connect, e))?;
        let tls = self.tls.connect(self.name.clone(), tcp).await.map_err(|e| Failure::new(ErrorKind::Tls, e))?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Failure::new(ErrorKind::Http, e))?;
        // Drives the connection; ends when `send` is dropped (the client's
        // close) or the server closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send, resumed })
    }

    /// `POST path` with `body` on `conn`; the status and the reply.
    ///
    /// # Errors
    /// [`ErrorKind::Http`] when the exchange fails (the connection is then
    /// unusable).
    pub async fn post(&self, conn: &mut Conn, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), Failure> {
        conn.send.ready().await.map_err(|e| Failure::new(ErrorKind::Http, e))?;
        let request = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::new(ErrorKind::Http, e))?;
        let response = conn.send.send_request(request).await.map_err(|e| Failure::new(ErrorKind::Http, e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| Failure::new(ErrorKind::Http, e))?
            .to_bytes();
        Ok((status, body))
    }
}

impl Conn {
    /// Whether the server closed it (an idle timeout, an eviction).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// The source addresses to spread `agents` connections over: 127.0.0.2
/// and up (127.0.0.1 is left to the API calls), `per_address` connections
/// each (the server's cap per client address is 512, a closing
/// connection still counts for a moment, and one address has about 28,000
/// ephemeral ports). Empty when the server is not on IPv4 loopback (the
/// kernel picks).
pub fn loopback_sources(server: IpAddr, agents: usize, per_address: usize, given: Option<usize>) -> Vec<IpAddr> {
    if !server.is_loopback() || !server.is_ipv4() {
        return Vec::new();
    }
    let n = given.unwrap_or_else(|| agents.div_ceil(per_address.max(1))).clamp(1, 250 * 250);
    (0..n).map(|i| IpAddr::from([127, 0, (i / 250) as u8, (i % 250 + 2) as u8])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_cover_the_fleet_within_the_per_address_cap() {
        let ips = loopback_sources("127.0.0.1".parse().unwrap(), 5_000, 500, None);
        assert_eq!(ips.len(), 10);
        assert_eq!(ips[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ips[9], "127.0.0.11".parse::<IpAddr>().unwrap());
        let many = loopback_sources("127.0.0.1".parse().unwrap(), 200_000, 500, None);
        assert_eq!(many.len(), 400);
        assert_eq!(many[249], "127.0.0.251".parse::<IpAddr>().unwrap());
        assert_eq!(many[250], "127.0.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(loopback_sources("127.0.0.1".parse().unwrap(), 10, 500, Some(3)).len(), 3);
        assert!(loopback_sources("10.0.0.1".parse().unwrap(), 10, 500, None).is_empty());
    }
}
