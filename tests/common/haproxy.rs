//! HAProxy from Debian (`apt-get install haproxy`) in TCP mode in front of
//! `tern server` replicas, as deploy/haproxy.cfg has it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port no one listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The address HAProxy connects to the replicas from when it sends PROXY
/// headers.
pub const PROXY_SOURCE: &str = "127.0.0.2";

/// HAProxy on 127.0.0.1:`front`, round robin over `replicas`, checking each
/// every 300 ms; with `send_proxy`, each connection starts with a PROXY
/// protocol v2 header (`send-proxy-v2`, health checks too) and comes from
/// [`PROXY_SOURCE`]: the replicas run with `--proxy-protocol 127.0.0.2`,
/// and a test's own direct connections (from 127.0.0.1) stay direct.
/// Killed on drop.
pub struct Haproxy(Child);

impl Haproxy {
    pub fn start(dir: &Path, front: u16, replicas: &[String], send_proxy: bool) -> Self {
        let proxy =
            if send_proxy { format!(" send-proxy-v2 check-send-proxy source {PROXY_SOURCE}") } else { String::new() };
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("  server r{} {addr} check inter 300ms fall 2 rise 1{proxy}\n", i + 1))
            .collect();
        let cfg = format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10m\n  timeout server 10m\n\
             frontend tern\n  bind 127.0.0.1:{front}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut child = Command::new("haproxy")
            .args(["-f", path.to_str().unwrap(), "-db", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", front)).is_ok() {
                return Self(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("haproxy did not start");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
