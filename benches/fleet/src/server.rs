//! The server under test: `tern server` started here (`--spawn`: a
//! temporary data directory, 127.0.0.1 port 0 unless told otherwise,
//! extra arguments passed through, such as a later `--database URL`), or
//! one already running (its URL, admin token and certificate).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to reach the server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// The certificate's SHA-256, pinned as agents pin it.
    pub fingerprint: [u8; 32],
    /// An admin API token.
    pub token: String,
    /// Its process, when known (CPU and memory readings).
    pub pid: Option<u32>,
    /// Its data directory, when known (database growth).
    pub data: Option<PathBuf>,
}

impl Target {
    /// `https://addr`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// A `tern server` this process started; stopped (SIGTERM, then SIGKILL)
/// and its temporary directory removed on drop.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// Where it is.
    pub target: Target,
    /// The temporary directory (data and log), removed on drop unless kept.
    pub dir: PathBuf,
    /// Keep the directory.
    pub keep: bool,
}

/// Starts `binary server --listen listen --data <dir>/data [args...]`,
/// its log (stderr) in `<dir>/server.log`.
///
/// # Errors
/// When it cannot start or does not say where it listens within 60 s.
pub fn spawn(binary: &Path, listen: &str, args: &[String], dir: &Path, keep: bool) -> anyhow::Result<Spawned> {
    let data = dir.join("data");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = Command::new(binary)
        .args(["server", "--listen", listen, "--data"])
        .arg(&data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the lines it prints at start, then drains the rest.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens any more, it keeps draining.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                bail!(
                    "{} did not start: {}",
                    binary.display(),
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                );
            }
        };
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.trim().parse::<SocketAddr>().context("the listen address it printed")?);
        } else if let Some(f) = line.strip_prefix("certificate sha256 ") {
            fingerprint = Some(parse_fingerprint(f)?);
        }
    }
    let token = std::fs::read_to_string(tern::server::admin_token_path(&data))
        .context("reading the admin token")?
        .trim()
        .to_owned();
    let target = Target {
        addr: addr.expect("set above"),
        fingerprint: fingerprint.expect("set above"),
        token,
        pid: Some(child.id()),
        data: Some(data),
    };
    Ok(Spawned { child, target, dir: dir.to_owned(), keep })
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `aa:bb:...` (as `tern server` prints it) or 64 plain hex digits.
///
/// # Errors
/// When it is not 32 bytes of hex.
pub fn parse_fingerprint(text: &str) -> anyhow::Result<[u8; 32]> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        bail!("a certificate fingerprint is 32 bytes of hex, not {text:?}");
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| format!("fingerprint {text:?}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_with_or_without_colons() {
        let plain = "00".repeat(31) + "ff";
        let mut want = [0u8; 32];
        want[31] = 0xff;
        assert_eq!(parse_fingerprint(&plain).unwrap(), want);
        let colons = vec!["00"; 31].join(":") + ":ff";
        assert_eq!(parse_fingerprint(&colons).unwrap(), want);
        assert!(parse_fingerprint("00:11").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
