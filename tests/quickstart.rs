//! The README's first command, `tern quickstart`: a server and an agent for
//! the local engine in one process. The environment comes online with the
//! engine's state, and Ctrl-C stops both cleanly; a second start carries on
//! with the same environment.

#![cfg(all(feature = "agent", feature = "server"))]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Deadline, tempdir};
use tern::agent::client::Client;
use tern::tls::Trust;

struct Quickstart(Child);

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts it and returns the server URL and pin it printed.
fn start(data: &std::path::Path) -> (Quickstart, String, [u8; 32]) {
    #[allow(clippy::zombie_processes)] // Quickstart's Drop waits for it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["quickstart", "--listen", "127.0.0.1:0", "--interval", "1", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "quickstart exited before printing its server");
        if let Some(rest) = line.trim().strip_prefix("server") {
            let mut words = rest.split_whitespace();
            let url = words.next().unwrap().to_owned();
            let hex = words.nth(2).unwrap().trim_end_matches(')');
            let pin: Vec<u8> = hex.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
            return (Quickstart(child), url, pin.try_into().unwrap());
        }
    }
}

async fn state(url: &str, pin: [u8; 32], token: &str) -> serde_json::Value {
    let mut client = Client::new(url, Trust::Pinned(pin), 16 << 20).unwrap();
    let (status, body) = client
        .api(hyper::Method::GET, "/api/environments/1/state", token, None)
        .await
        .unwrap_or_else(|e| panic!("GET {url}/api/environments/1/state: {e}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn quickstart_brings_the_local_engine_online_and_stops_on_ctrl_c() {
    let data = tempdir("tern-quickstart");
    for round in 0..2 {
        let (mut child, url, pin) = start(&data);
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
        let deadline = Deadline::new(Duration::from_secs(30));
        loop {
            let s = state(&url, pin, token.trim()).await;
            // The engine always has its default networks.
            if s["seq"].as_u64().unwrap_or(0) > 0 && !s["networks"].as_array().unwrap().is_empty() {
                break;
            }
            deadline.tick(format_args!("round {round}: the local environment's state ({s})")).await;
        }
        // The stored environment follows the port of this run (deploy
        // commands name it).
        let mut client = Client::new(&url, Trust::Pinned(pin), 1 << 20).unwrap();
        let (status, body) = client.api(hyper::Method::GET, "/api/environments/1", token.trim(), None).await.unwrap();
        assert_eq!(status, 200);
        let env: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(env["url"].as_str(), Some(url.as_str()), "round {round}");
        Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap();
        let deadline = Deadline::new(Duration::from_secs(15));
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            deadline.tick("quickstart to exit after Ctrl-C").await;
        };
        assert!(status.success(), "round {round}: {status}");
    }
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(data.with_extension("log"));
}
