//! The REST API calls a run makes, as an operator's tooling would: the
//! environments (`POST /api/environments`, one call each: the API has no
//! bulk form, so `concurrency` calls run at once on kept-alive
//! connections), and the commands (`POST /api/environments/{id}/commands`).

use std::sync::Arc;

use anyhow::{Context, bail};
use tern::agent::client::Client;
use tern::auth::JoinToken;
use tern::server::api::types::{CommandView, CreateCommand, CreateEnvironment, CreatedEnvironment};
use tern::tls::Trust;
use tokio::sync::Mutex;

use crate::server::Target;

/// An environment made for a simulated agent.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The join token's environment id and secret.
    pub token: JoinToken,
    /// The EDGE_ID to poll with.
    pub edge_id: String,
}

/// A few API clients, each on its own kept-alive connection.
pub struct Api {
    clients: Vec<Mutex<Client>>,
    token: String,
    next: std::sync::atomic::AtomicUsize,
}

impl Api {
    /// `n` clients of `target`'s API.
    ///
    /// # Errors
    /// When a client cannot be set up.
    pub fn new(target: &Target, n: usize) -> anyhow::Result<Arc<Self>> {
        let clients = (0..n.max(1))
            .map(|_| Client::new(&target.url(), Trust::Pinned(target.fingerprint), 16 << 20).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self { clients, token: target.token.clone(), next: Default::default() }))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: &impl serde::Serialize,
        expect: u16,
    ) -> anyhow::Result<T> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        let mut client = self.clients[i].lock().await;
        let (status, bytes) = client
            .api(method.clone(), path, &self.token, Some(serde_json::to_vec(body)?))
            .await
            .context(path.to_owned())?;
        if status != expect {
            bail!("{method} {path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: the reply"))
    }

    /// Creates one environment named `name`, its server URL `url`.
    ///
    /// # Errors
    /// When the API refuses or fails.
    pub async fn create_environment(&self, name: &str, url: &str) -> anyhow::Result<Enrolled> {
        let req = CreateEnvironment { name: name.to_owned(), url: url.to_owned(), ..CreateEnvironment::default() };
        let created: CreatedEnvironment = self.call(hyper::Method::POST, "/api/environments", &req, 201).await?;
        let token = JoinToken::parse(&created.edge_key).context("the join token it returned")?;
        let edge_id = created.edge_id.unwrap_or_else(|| format!("fleet-sim-{}", token.environment));
        Ok(Enrolled { token, edge_id })
    }

    /// Creates `count` environments named `<prefix>-<n>`, `concurrency`
    /// calls at once; in order.
    ///
    /// # Errors
    /// The first failure.
    pub async fn create_environments(
        self: &Arc<Self>,
        prefix: &str,
        url: &str,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<Enrolled>> {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.clamp(1, count.max(1)) {
            let (api, next, prefix, url) = (self.clone(), next.clone(), prefix.to_owned(), url.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut made = Vec::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= count {
                        return Ok::<_, anyhow::Error>(made);
                    }
                    made.push((n, api.create_environment(&format!("{prefix}-{n}"), &url).await?));
                }
            }));
        }
        let mut all = Vec::with_capacity(count);
        for t in tasks {
            all.extend(t.await??);
        }
        all.sort_by_key(|(n, _)| *n);
        Ok(all.into_iter().map(|(_, e)| e).collect())
    }

    /// Queues `action` on `target` (a container's full id) for an
    /// environment; the command's id.
    ///
    /// # Errors
    /// When the API refuses or fails.
    pub async fn queue_command(&self, environment: u64, action: &str, target: &str) -> anyhow::Result<u64> {
        let req = CreateCommand { action: action.to_owned(), target: target.to_owned(), tail: None };
        let path = format!("/api/environments/{environment}/commands");
        let view: CommandView = self.call(hyper::Method::POST, &path, &req, 201).await?;
        Ok(view.id)
    }
}
