//! Bytes counted at the TCP socket, under TLS: every TLS record, handshakes
//! and alerts included (TCP/IP headers are not). The agent's client counts
//! its connections with [`Counting`]; the server counts each accepted
//! connection the same way and charges it, through a [`ConnMeter`], to the
//! environment whose agent polls on it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes counted at the socket, under TLS.
#[derive(Debug, Default)]
pub struct WireBytes {
    /// Written to the socket.
    pub sent: AtomicU64,
    /// Read from the socket.
    pub received: AtomicU64,
}

impl WireBytes {
    /// (sent, received) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// A stream that counts the bytes through it into a [`WireBytes`].
#[derive(Debug)]
pub struct Counting<S> {
    inner: S,
    wire: Arc<WireBytes>,
}

impl<S> Counting<S> {
    /// Counts `inner`'s bytes into `wire`.
    pub fn new(inner: S, wire: Arc<WireBytes>) -> Self {
        Self { inner, wire }
    }

    /// The stream counted.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.wire.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wire.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "server")]
pub use self::server::{ConnMeter, Meters, UsageSink};

#[cfg(feature = "server")]
mod server {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::WireBytes;

    /// Where a connection's socket bytes are charged. Blocking (it writes
    /// to the database): call it from a blocking task.
    pub trait UsageSink: Send + Sync {
        /// Charges bytes counted at the socket (`up`: received by the
        /// server) to `environment`, or, with `None`, to the server-wide
        /// figure of connections no environment answers for.
        fn charge_wire(&self, environment: Option<u64>, up: u64, down: u64, connections: u64);
    }

    #[derive(Default)]
    struct Marks {
        /// The environment whose agent polls on this connection.
        environment: Option<u64>,
        /// Set by the first poll on the connection, authenticated or not.
        sink: Option<Arc<dyn UsageSink>>,
        /// What was charged so far.
        up: u64,
        down: u64,
        /// Whether the connection was counted in the unattributed figure.
        counted: bool,
    }

    /// One server connection's byte count and whom it is charged to. The
    /// server puts it in every request's extensions; the poll handler ties
    /// the connection to the environment of a poll that authenticates,
    /// and charges it what was counted since the last charge. What is left
    /// when the connection closes (the last reply, the closing alerts) is
    /// charged then, or at shutdown.
    ///
    /// A connection on which no poll was made (API calls only, or a failed
    /// handshake) is charged to no one, not even the unattributed figure.
    #[derive(Default)]
    pub struct ConnMeter {
        wire: Arc<WireBytes>,
        marks: Mutex<Marks>,
    }

    impl std::fmt::Debug for ConnMeter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
            f.debug_struct("ConnMeter")
                .field("wire", &self.wire)
                .field("environment", &marks.environment)
                .finish_non_exhaustive()
        }
    }

    impl ConnMeter {
        /// The counters for [`super::Counting`].
        pub fn wire(&self) -> Arc<WireBytes> {
            self.wire.clone()
        }

        /// The environment the connection is charged to, if any.
        pub fn environment(&self) -> Option<u64> {
            self.marks.lock().unwrap_or_else(PoisonError::into_inner).environment
        }

        /// A poll on this connection authenticated as `environment`'s: the
        /// connection is charged to it from now on. Returns (up, down)
        /// counted since the last charge, which the caller charges to
        /// `environment` (everything before, the handshake included, goes
        /// to the first environment that polls on the connection).
        pub fn attribute(&self, environment: u64, sink: Arc<dyn UsageSink>) -> (u64, u64) {
            let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
            if marks.environment.is_none() {
                crate::server::metrics::get().agent(1);
            }
            marks.environment = Some(environment);
            marks.sink = Some(sink);
            self.take(&mut marks)
        }

        /// A poll on this connection did not authenticate: unless a later
        /// one does, the connection is counted as unattributed.
        pub fn refused(&self, sink: Arc<dyn UsageSink>) {
            let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
            if marks.sink.is_none() {
                marks.sink = Some(sink);
            }
        }

        fn take(&self, marks: &mut Marks) -> (u64, u64) {
            let (down, up) = self.wire.get();
            let delta = (up - marks.up, down - marks.down);
            (marks.up, marks.down) = (up, down);
            crate::server::metrics::get().agent_bytes(delta.0, delta.1);
            delta
        }

        /// Charges what was counted since the last charge to the
        /// connection's environment, or to the unattributed figure when no
        /// poll on it authenticated (blocking: it writes to the database).
        /// Nothing when no poll was made on it.
        pub fn flush(&self) {
            let (sink, environment, (up, down), new) = {
                let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(sink) = marks.sink.clone() else { return };
                let delta = self.take(&mut marks);
                let new = marks.environment.is_none() && !std::mem::replace(&mut marks.counted, true);
                (sink, marks.environment, delta, new)
            };
            if up > 0 || down > 0 || new {
                sink.charge_wire(environment, up, down, u64::from(new));
            }
        }
    }

    /// The connections a server has open, so that shutdown can charge
    /// what each has not yet charged.
    #[derive(Debug, Default)]
    pub struct Meters {
        next: AtomicU64,
        live: Mutex<HashMap<u64, Arc<ConnMeter>>>,
    }

    impl Meters {
        /// A meter for a new connection, and its key for [`Self::close`].
        pub fn open(&self) -> (u64, Arc<ConnMeter>) {
            let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let meter = Arc::new(ConnMeter::default());
            self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(key, meter.clone());
            crate::server::metrics::get().connection(1);
            (key, meter)
        }

        /// The connection closed: charges what is left (blocking).
        pub fn close(&self, key: u64) {
            let meter = self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            if let Some(meter) = meter {
                let metrics = crate::server::metrics::get();
                metrics.connection(-1);
                if meter.environment().is_some() {
                    metrics.agent(-1);
                }
                meter.flush();
            }
        }

        /// The connection closed before any request (a failed handshake):
        /// nothing to charge.
        pub fn forget(&self, key: u64) {
            if self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&key).is_some() {
                crate::server::metrics::get().connection(-1);
            }
        }

        /// Charges what every open connection has not yet charged
        /// (blocking), as at shutdown. The connections stay open and
        /// counted.
        pub fn flush_all(&self) {
            let live: Vec<Arc<ConnMeter>> =
                self.live.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
            for meter in live {
                meter.flush();
            }
        }

        /// How many connections are open.
        pub fn open_connections(&self) -> usize {
            self.live.lock().unwrap_or_else(PoisonError::into_inner).len()
        }
    }
}
