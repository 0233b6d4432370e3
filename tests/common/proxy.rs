//! A TCP relay on 127.0.0.1 that counts the bytes it carries each way and
//! can cut every connection through it at once (a link drop): what the
//! image benchmarks measure `docker pull` and tern's transfers with, side
//! by side, at the same place (TCP payload: HTTP, and TLS where there is).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay.
pub struct Relay {
    /// Where clients connect (`127.0.0.1:PORT`).
    pub addr: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let target = target.to_owned();
        let (u, d) = (up.clone(), down.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, u, d, mut cuts) = (target.clone(), u.clone(), d.clone(), cuts.clone());
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = async { tokio::join!(pump(cr, sw, u), pump(sr, cw, d)) } => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, down, cut, task }
    }

    /// Bytes relayed so far: (client to target, target to client).
    pub fn counts(&self) -> (u64, u64) {
        (self.up.load(Ordering::SeqCst), self.down.load(Ordering::SeqCst))
    }

    /// Both ways together.
    pub fn total(&self) -> u64 {
        let (u, d) = self.counts();
        u + d
    }

    /// Drops every connection open through the relay (new ones go on).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, n: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                if to.write_all(&buf[..k]).await.is_err() {
                    break;
                }
                n.fetch_add(k as u64, Ordering::SeqCst);
            }
        }
    }
    let _ = to.shutdown().await;
}
