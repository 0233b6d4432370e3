//! The agent's connection to its server: HTTP/1.1 (hyper) over TLS 1.3
//! (rustls), one connection kept alive and reused while it lasts, and
//! replaced when it does not (a carrier NAT may drop it between polls).
//!
//! Requests carry only what HTTP/1.1 requires: `POST /p`, `host` and
//! `content-length`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::tls::{TlsOptions, Trust, client_config_with};

/// Why a poll could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not `https://host[:port]`.
    #[error("server URL {0:?} is not https://host[:port]")]
    BadUrl(String),
    /// TLS could not be set up.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The connection failed (refused, reset, TLS handshake, timeout).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("http: {0}")]
    Http(String),
    /// The reply was larger than allowed.
    #[error("reply over {0} bytes")]
    TooLarge(usize),
}

/// How long a proxy may take to answer CONNECT.
pub const PROXY_ANSWER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a closing connection waits for the server's side of the close.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A held session on one TLS connection (see `server::http::session`):
/// frames up are written here; frames down are read by a task of their own
/// and queued.
struct SessionConn {
    writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<Counting<TcpStream>>>,
    /// Replies to immediate polls, in order, and the held poll's reply.
    replies: tokio::sync::mpsc::Receiver<(bool, Bytes)>,
    /// The held poll's reply, read while waiting for another.
    held: Option<Bytes>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SessionConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A poll client for one server.
pub struct Client {
    host: String,
    port: u16,
    authority: String,
    connector: tokio_rustls::TlsConnector,
    /// The same, offering a held session (ALPN `tern/1` before
    /// `http/1.1`); `None` when the agent polls (EDGE_SESSION=off).
    session_connector: Option<tokio_rustls::TlsConnector>,
    session: Option<SessionConn>,
    /// The server picked `http/1.1` on a connection that offered a session:
    /// it does not hold sessions.
    pub server_polls_only: bool,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// The task driving the current connection; it closes it when done.
    driver: Option<tokio::task::JoinHandle<()>>,
    /// Set by [`Self::close`]: the driver waits for the server's side of
    /// the close too.
    linger: Arc<std::sync::atomic::AtomicBool>,
    max_reply: usize,
    /// Connections opened so far (a measure of keep-alive's success).
    pub connections: u64,
    /// Connections that resumed a TLS session (no certificate exchange).
    pub resumed: u64,
    /// Bytes through the TCP socket (TLS records, handshakes included),
    /// over every connection: what the link carries above TCP/IP.
    pub wire: Arc<WireBytes>,
    /// The site's HTTP proxy, when the agent must go through one.
    proxy: Option<super::proxy::Proxy>,
}

use crate::meter::Counting;
pub use crate::meter::WireBytes;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `url` (from the join token), with the default TLS
    /// options (X25519 key exchange).
    ///
    /// # Errors
    /// When the URL is not https, or TLS cannot be set up.
    pub fn new(url: &str, trust: Trust, max_reply: usize) -> Result<Self, ClientError> {
        Self::with_tls(url, trust, TlsOptions::default(), max_reply)
    }

    /// A client for `url` with TLS `options` (`EDGE_TLS_PQ=1`: the
    /// post-quantum hybrid key exchange).
    ///
    /// # Errors
    /// When the URL is not https, or TLS cannot be set up.
    pub fn with_tls(url: &str, trust: Trust, options: TlsOptions, max_reply: usize) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || !uri.path().trim_start_matches('/').is_empty() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?.as_str().to_owned();
        let host = uri.host().ok_or_else(bad)?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let config = client_config_with(trust, options)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Ok(Self {
            host,
            port,
            authority,
            connector,
            session_connector: None,
            session: None,
            server_polls_only: false,
            conn: None,
            driver: None,
            linger: Arc::default(),
            max_reply,
            connections: 0,
            resumed: 0,
            wire: Arc::default(),
            proxy: None,
        })
    }

    /// Connects through `proxy` (an HTTP CONNECT tunnel) from now on.
    pub fn set_proxy(&mut self, proxy: Option<super::proxy::Proxy>) {
        self.proxy = proxy;
    }

    /// Offers a held session on the connections it opens from now on
    /// (the same TLS settings, the same session-ticket store, so a new
    /// connection resumes either way).
    pub fn offer_session(&mut self, on: bool) {
        if !on {
            self.session_connector = None;
            self.session = None;
            return;
        }
        if self.session_connector.is_none() {
            let mut config = (*self.connector.config().clone()).clone();
            config.alpn_protocols = vec![crate::wire::SESSION_ALPN.to_vec(), b"http/1.1".to_vec()];
            self.session_connector = Some(tokio_rustls::TlsConnector::from(Arc::new(config)));
        }
    }

    /// True while a held session is open.
    pub fn in_session(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.reader.is_finished())
    }

    /// Opens a connection: a held session when one is offered and the
    /// server picks it (then `Ok(None)`), else HTTP/1.1.
    async fn connect(&mut self) -> Result<Option<SendRequest<Full<Bytes>>>, ClientError> {
        let (to_host, to_port) = match &self.proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => (self.host.as_str(), self.port),
        };
        let tcp = TcpStream::connect((to_host, to_port)).await.map_err(|e| match &self.proxy {
            Some(p) => std::io::Error::new(e.kind(), format!("the proxy {p} ({}): {e}", p.from)),
            None => e,
        })?;
        tcp.set_nodelay(true)?;
        // A pinned certificate is checked by fingerprint, not name; the name
        // is still sent (SNI) for servers behind a proxy.
        let name = ServerName::try_from(self.host.clone()).map_err(|_| ClientError::BadUrl(self.authority.clone()))?;
        let mut tcp = Counting::new(tcp, self.wire.clone());
        // Through a site's proxy: a tunnel first (its bytes count), then
        // TLS to the server inside it, pinned as ever.
        if let Some(p) = &self.proxy {
            // Bounded: a proxy that takes the connection and never answers
            // must not hold a transfer (which has no deadline of its own).
            tokio::time::timeout(PROXY_ANSWER, p.tunnel(&mut tcp, &self.host, self.port))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the proxy {p} did not answer CONNECT within {} s", PROXY_ANSWER.as_secs()),
                    )
                })?
                .map_err(std::io::Error::from)?;
        }
        let offered = self.session_connector.is_some();
        let connector = self.session_connector.as_ref().unwrap_or(&self.connector);
        let tls = connector.connect(name, tcp).await?;
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumed += 1;
        }
        if offered {
            if tls.get_ref().1.alpn_protocol() == Some(crate::wire::SESSION_ALPN) {
                self.connections += 1;
                self.server_polls_only = false;
                self.session = Some(start_session(tls, self.max_reply));
                return Ok(None);
            }
            self.server_polls_only = true;
        }
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let linger = self.linger.clone();
        self.driver = Some(tokio::spawn(async move {
            match conn.without_shutdown().await {
                // No more requests (dropped), or the server closed: our
                // close_notify and FIN. When the agent exits ([`Self::close`]),
                // also the server's, so its connection ends with the same
                // packets every time (exiting under it makes the kernel
                // answer the server's close with resets, or not, by timing).
                Ok(parts) => {
                    let mut tls = parts.io.into_inner();
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        tokio::io::AsyncWriteExt::shutdown(&mut tls).await?;
                        if linger.load(std::sync::atomic::Ordering::Acquire) {
                            let mut buf = [0u8; 256];
                            while tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await? > 0 {}
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                }
                Err(e) => tracing::debug!("connection closed: {e}"),
            }
        }));
        self.connections += 1;
        Ok(Some(send))
    }

    /// An HTTP/1.1 connection, whatever is offered.
    async fn connect_http(&mut self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let offered = self.session_connector.take();
        let r = self.connect().await;
        self.session_connector = offered;
        r?.ok_or_else(|| ClientError::Http("a session where HTTP was asked for".into()))
    }

    /// Drops the kept-alive connection (the next request opens a new one,
    /// resuming the TLS session when it can); it closes in the background.
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.session = None;
    }

    /// Makes sure a held session is open (connecting when none is).
    /// `Ok(false)`: the server answered the offer with HTTP, so polls go
    /// as requests on that connection.
    ///
    /// # Errors
    /// When no connection can be made.
    pub async fn ensure_session(&mut self) -> Result<bool, ClientError> {
        if self.session_connector.is_none() {
            return Ok(false);
        }
        if self.in_session() {
            return Ok(true);
        }
        self.session = None;
        if self.conn.as_ref().is_some_and(|c| !c.is_closed()) && self.server_polls_only {
            return Ok(false);
        }
        match self.connect().await? {
            None => Ok(true),
            Some(send) => {
                self.conn = Some(send);
                Ok(false)
            }
        }
    }

    /// Sends a poll on the held session and returns its reply: one frame
    /// up, and the next frame down that is not the held poll's (kept for
    /// [`Self::held_reply`]).
    ///
    /// # Errors
    /// When the session is not open or breaks.
    pub async fn session_poll(&mut self, wire: &[u8]) -> Result<Bytes, ClientError> {
        self.session_send(wire).await?;
        let s = self.session.as_mut().ok_or_else(|| ClientError::Http("no session".into()))?;
        loop {
            match s.replies.recv().await {
                Some((false, bytes)) => return Ok(bytes),
                Some((true, bytes)) => s.held = Some(bytes),
                None => {
                    self.session = None;
                    return Err(ClientError::Http("the session closed".into()));
                }
            }
        }
    }

    /// Sends a frame up on the held session (a held poll: its reply comes
    /// through [`Self::held_reply`]).
    ///
    /// # Errors
    /// When the session is not open or the write fails.
    pub async fn session_send(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        let s = self.session.as_mut().ok_or_else(|| ClientError::Http("no session".into()))?;
        let mut out = crate::wire::frame::header(wire.len() as u64);
        out.extend_from_slice(wire);
        let written = async {
            tokio::io::AsyncWriteExt::write_all(&mut s.writer, &out).await?;
            tokio::io::AsyncWriteExt::flush(&mut s.writer).await
        }
        .await;
        if let Err(e) = written {
            self.session = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// The held poll's reply, when it comes. Cancel-safe. Pending for ever
    /// without a session.
    ///
    /// # Errors
    /// When the session closes first.
    pub async fn held_reply(&mut self) -> Result<Bytes, ClientError> {
        let Some(s) = self.session.as_mut() else { return std::future::pending().await };
        if let Some(b) = s.held.take() {
            return Ok(b);
        }
        loop {
            match s.replies.recv().await {
                Some((true, bytes)) => return Ok(bytes),
                Some((false, bytes)) if bytes.is_empty() => {
                    self.session = None;
                    return Err(ClientError::Http(
                        "the server does not accept this agent's EDGE_KEY (a wrong or deleted environment, or an \
                         AGENT_SECRET that does not match the server's)"
                            .into(),
                    ));
                }
                // A reply nobody waits for (its poll timed out): dropped.
                Some((false, _)) => {}
                None => {
                    self.session = None;
                    return Err(ClientError::Http("the session closed".into()));
                }
            }
        }
    }

    /// Closes the kept-alive connection and waits (at most [`CLOSE_WAIT`])
    /// until the server has closed its side too: what the agent does before
    /// it exits.
    pub async fn close(&mut self) {
        self.linger.store(true, std::sync::atomic::Ordering::Release);
        self.conn = None;
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, driver).await;
        }
    }

    /// POSTs a poll body; returns the status and the reply body.
    ///
    /// # Errors
    /// When no connection can be made or the exchange fails. A kept-alive
    /// connection that turns out dead is replaced once.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), ClientError> {
        self.post_with(path, None, body).await
    }

    /// POSTs JSON with an `Authorization: Bearer` header (the CLI's API
    /// calls).
    ///
    /// # Errors
    /// As [`Self::post`].
    pub async fn post_json(&mut self, path: &str, bearer: &str, body: Vec<u8>) -> Result<(u16, Bytes), ClientError> {
        self.request(hyper::Method::POST, path, Some(bearer), Some(body)).await
    }

    /// Any API call: `method` on `path` with a bearer token and an optional
    /// JSON body.
    ///
    /// # Errors
    /// As [`Self::post`].
    pub async fn api(
        &mut self,
        method: hyper::Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.request(method, path, Some(bearer), body).await
    }

    /// POSTs a body and returns the status and the reply's body as it
    /// arrives (a transfer's payload: read it to its end before the next
    /// request, or drop it, which closes the connection).
    ///
    /// # Errors
    /// As [`Self::post`].
    pub async fn post_streaming(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, hyper::body::Incoming), ClientError> {
        let body = Bytes::from(body);
        for attempt in 0..2 {
            let mut send = match self.conn.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect_http().await?,
            };
            if send.ready().await.is_err() {
                continue;
            }
            let request = hyper::Request::builder()
                .method(hyper::Method::POST)
                .uri(path)
                .header(hyper::header::HOST, &self.authority)
                .body(Full::new(body.clone()))
                .map_err(|e| ClientError::Http(e.to_string()))?;
            match send.send_request(request).await {
                Ok(response) => {
                    self.conn = Some(send);
                    return Ok((response.status().as_u16(), response.into_body()));
                }
                Err(e) if attempt == 0 && e.is_canceled() => continue,
                Err(e) => return Err(ClientError::Http(e.to_string())),
            }
        }
        Err(ClientError::Http("the connection closed twice".into()))
    }

    async fn post_with(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.request(hyper::Method::POST, path, bearer, Some(body)).await
    }

    async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ClientError> {
        let json = body.is_some() && bearer.is_some();
        let body = Bytes::from(body.unwrap_or_default());
        for attempt in 0..2 {
            let mut send = match self.conn.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect_http().await?,
            };
            if send.ready().await.is_err() {
                continue;
            }
            let mut request =
                hyper::Request::builder().method(method.clone()).uri(path).header(hyper::header::HOST, &self.authority);
            if let Some(token) = bearer {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if json {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let request = request.body(Full::new(body.clone())).map_err(|e| ClientError::Http(e.to_string()))?;
            match send.send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let collected = Limited::new(response.into_body(), self.max_reply)
                        .collect()
                        .await
                        .map_err(|_| ClientError::TooLarge(self.max_reply))?;
                    self.conn = Some(send);
                    return Ok((status, collected.to_bytes()));
                }
                // A reused connection the server already closed: try a new one.
                Err(e) if attempt == 0 && e.is_canceled() => continue,
                Err(e) => return Err(ClientError::Http(e.to_string())),
            }
        }
        Err(ClientError::Http("the connection closed twice".into()))
    }
}

/// Splits a session's connection: frames down are read by a task of their
/// own (at most `max_reply` bytes each) and queued.
fn start_session(tls: tokio_rustls::client::TlsStream<Counting<TcpStream>>, max_reply: usize) -> SessionConn {
    let (mut reader, writer) = tokio::io::split(tls);
    let (tx, replies) = tokio::sync::mpsc::channel(8);
    let reader = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            // Every whole frame in the buffer.
            loop {
                let Ok(Some((value, at))) = crate::wire::frame::parse_header(&buf) else {
                    if buf.len() >= crate::wire::frame::MAX_HEADER {
                        return;
                    }
                    break;
                };
                let len = usize::try_from(value >> 1).unwrap_or(usize::MAX);
                if len > max_reply {
                    tracing::warn!("a session frame of {len} bytes (at most {max_reply}): closing");
                    return;
                }
                if buf.len() < at + len {
                    break;
                }
                let frame = Bytes::copy_from_slice(&buf[at..at + len]);
                buf.drain(..at + len);
                if tx.send((value & 1 == 1, frame)).await.is_err() {
                    return;
                }
            }
            match tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    SessionConn { writer, replies, held: None, reader }
}
