//! `tern server` as an operator runs it: the real binary, a data directory,
//! port 0 on 127.0.0.1.

#![cfg(all(feature = "agent", feature = "server"))]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern::agent::client::Client;
use tern::tls::Trust;

struct Server {
    child: Child,
    lines: Vec<String>,
}

impl Server {
    fn start(data: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = (0..3)
            .map(|_| {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                l.trim().to_owned()
            })
            .collect();
        Self { child, lines }
    }

    fn value(&self, prefix: &str) -> String {
        self.lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{:?}", self.lines)).to_owned()
    }

    /// Ctrl-C, and the server exits by itself, in bounded time.
    fn interrupt(&mut self) -> bool {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        false
    }
}

impl Drop for Server {
    /// A failing test must not leave the server running (nor its pipes open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fingerprint(hex: &str) -> [u8; 32] {
    let bytes: Vec<u8> = hex.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

#[tokio::test]
async fn the_server_starts_serves_its_pinned_port_and_keeps_its_identity() {
    let data = std::env::temp_dir().join(format!("tern-server-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut server = Server::start(&data);
    let addr = server.value("listening on ");
    let pin = fingerprint(&server.value("certificate sha256 "));
    assert!(data.join("tern.db").exists() && data.join("cert.pem").exists() && data.join("key.pem").exists());
    // Secrets are the server's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "the data directory");
        assert_eq!(mode(&data.join("tern.db")), 0o600, "the database");
        assert_eq!(mode(&data.join("key.pem")), 0o600, "the key");
    }

    // The port speaks pinned TLS and refuses an unauthenticated poll.
    let port = addr.rsplit(':').next().unwrap();
    let mut client = Client::new(&format!("https://127.0.0.1:{port}"), Trust::Pinned(pin), 1 << 16).unwrap();
    let (status, _) = client.post("/p", vec![1, 2, 3]).await.unwrap();
    assert_eq!(status, 401);

    // `tern env add` through the API, authenticated by the admin token in
    // the data directory, pinning the certificate found there.
    let env_add = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["env", "add", "--name", name, "--server", &format!("https://127.0.0.1:{port}"), "--data"])
            .arg(&data)
            .env_remove("TERN_TOKEN")
            .output()
            .unwrap()
    };
    let out = env_add("ship-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("EDGE_KEY=")).expect("prints the join token");
    assert!(text.contains("docker run -d --name tern-agent"), "{text}");
    assert!(text.contains(&format!("-e EDGE_KEY={key}")));
    let token = tern::auth::JoinToken::parse(key).unwrap();
    assert_eq!(token.cert_sha256, pin);
    assert_eq!(token.url, format!("https://127.0.0.1:{port}"));
    let dup = env_add("ship-1");
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists already"));

    // The token works: an agent's first poll is accepted.
    let mut codec = tern::wire::codec::Codec::new(Default::default()).unwrap();
    let req = tern::wire::poll::PollRequest {
        agent: Some(tern::wire::poll::AgentInfo { version: "test".into(), edge_id: "e1".into() }),
        ..Default::default()
    };
    let wire = tern::auth::seal_request(token.environment, 1, &token.secret, &codec.encode(&req.encode()).unwrap());
    let (status, body) = client.post("/p", wire).await.unwrap();
    assert_eq!(status, 200);
    tern::auth::open_reply(1, &token.secret, &body).expect("an authentic reply");
    assert!(server.interrupt(), "Ctrl-C stops the server cleanly");

    // A restart keeps the certificate, so deployed agents still trust it.
    let mut again = Server::start(&data);
    assert_eq!(fingerprint(&again.value("certificate sha256 ")), pin);
    assert!(again.interrupt());
    std::fs::remove_dir_all(&data).unwrap();
}
