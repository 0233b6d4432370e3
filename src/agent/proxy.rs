//! The agent's way out through a site's HTTP proxy: `HTTPS_PROXY`,
//! `HTTP_PROXY` and `NO_PROXY`, as the host's other tools read them, for
//! its connection to the server (issue #17).
//!
//! The agent asks the proxy for a tunnel (`CONNECT host:port`) and then
//! speaks TLS to the server inside it, so the proxy sees only the server's
//! name and the TLS records: the certificate pin of the join token still
//! applies end to end, and a proxy that answers in the server's place
//! fails the pin. A held session runs in the tunnel as well as polls do.
//!
//! Which variable: the server is always `https://`, so `HTTPS_PROXY`
//! (or `https_proxy`) names the proxy. When only `HTTP_PROXY` is set, it
//! is used too: sites that have one proxy often set only that name, and
//! an agent whose only way out is that proxy would otherwise fail with a
//! connection error that does not say why. The proxy itself is spoken to
//! in plain HTTP (`http://host:port`, the usual form); credentials in the
//! URL go as `Proxy-Authorization: Basic`.

use std::net::IpAddr;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most a proxy's answer to CONNECT may hold before its blank line.
const MAX_ANSWER: usize = 8 << 10;

/// A proxy that carries the agent's connections to its server.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or address (no brackets).
    pub host: String,
    /// Port (default 80 when the URL names none).
    pub port: u16,
    /// `Proxy-Authorization` value, from `user:password@` in the URL.
    auth: Option<String>,
    /// The variable it came from, for the log.
    pub from: &'static str,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|_| "****"))
            .field("from", &self.from)
            .finish()
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a proxy setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is invalid: {why}")]
pub struct ProxyError {
    /// The variable.
    pub name: &'static str,
    /// Its value, credentials masked.
    pub value: String,
    /// What is wrong.
    pub why: &'static str,
}

/// The proxy the environment names for a connection to `server_host`, if
/// any: `None` when no proxy is set or `NO_PROXY` lists the server.
///
/// # Errors
/// A proxy URL that is not `http://[user:password@]host[:port]`.
pub fn from_env(
    env: &std::collections::BTreeMap<String, String>,
    server_host: &str,
    server_port: u16,
) -> Result<Option<Proxy>, ProxyError> {
    let get = |names: [&'static str; 2]| {
        names.into_iter().find_map(|n| env.get(n).map(|v| (n, v.trim())).filter(|(_, v)| !v.is_empty()))
    };
    let Some((name, value)) = get(["HTTPS_PROXY", "https_proxy"]).or_else(|| get(["HTTP_PROXY", "http_proxy"])) else {
        return Ok(None);
    };
    // NO_PROXY first: a proxy the server bypasses is not used, so its URL
    // does not matter.
    if let Some((_, no)) = get(["NO_PROXY", "no_proxy"])
        && bypassed(no, server_host, server_port)
    {
        return Ok(None);
    }
    parse(name, value).map(Some)
}

/// The server's host and port in a join token's `https://host[:port]`.
pub fn server_of(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_host_port(rest)?;
    let port = match port {
        None => 443,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_owned(), port))
}

/// `http://[user:password@]host[:port][/]`; a bare `host:port` is read as
/// `http://host:port`, as curl does.
fn parse(name: &'static str, value: &str) -> Result<Proxy, ProxyError> {
    let bad = |why| ProxyError { name, value: mask(value), why };
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(bad("a proxy spoken to over TLS (https://) is not supported; use http://host:port"));
        }
        Some(_) => return Err(bad("only an HTTP proxy (http://host:port) is supported")),
        None => value,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(bad("use http://[user:password@]host[:port], with no path"));
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = split_host_port(hostport).ok_or_else(|| bad("use http://[user:password@]host[:port]"))?;
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| bad("the port is not 1 to 65535"))?,
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) {
        return Err(bad("the host is not a name or an address"));
    }
    let auth = match userinfo {
        None => None,
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| bad("the credentials are not UTF-8 once percent-decoded"))
            };
            let plain = format!("{}:{}", decode(user)?, decode(pass)?);
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(plain)))
        }
    };
    Ok(Proxy { host: host.to_owned(), port, auth, from: name })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; a bare IPv6 address has no port.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':')?))),
        };
    }
    if s.matches(':').count() > 1 {
        return Some((s, None));
    }
    Some(match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

/// The URL with its password hidden, for errors and logs.
fn mask(value: &str) -> String {
    match (value.find("://"), value.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://****@{}", &value[..s], &value[at + 1..]),
        (None, Some(at)) => format!("****@{}", &value[at + 1..]),
        _ => value.to_owned(),
    }
}

/// Whether `NO_PROXY` lists the server: `*`; a name, matching it and its
/// subdomains (`example.com` and `.example.com` both match
/// `a.example.com`); an address; a network (`10.0.0.0/8`); any of them
/// with `:port`, matching that port only.
pub fn bypassed(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host.trim_matches(['[', ']']).trim_end_matches('.').to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    no_proxy.split([',', ' ']).map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let (name, entry_port) = match split_host_port(entry) {
            Some((n, Some(p))) => match p.parse::<u16>() {
                Ok(p) => (n, Some(p)),
                Err(_) => return false,
            },
            Some((n, None)) => (n, None),
            None => return false,
        };
        if entry_port.is_some_and(|p| p != port) {
            return false;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some((net, bits)) = name.split_once('/') {
            return match (ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                (Some(ip), Ok(net), Ok(bits)) => in_network(ip, net, bits),
                _ => false,
            };
        }
        if let (Some(ip), Ok(e)) = (ip, name.parse::<IpAddr>()) {
            return ip == e;
        }
        let name = name.strip_prefix("*.").or_else(|| name.strip_prefix('.')).unwrap_or(&name);
        host == name || host.strip_suffix(name).is_some_and(|head| head.ends_with('.'))
    })
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Why the proxy did not open a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Reading or writing failed.
    #[error("proxy {proxy}: {source}")]
    Io {
        /// The proxy.
        proxy: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The proxy answered, but not with a tunnel.
    #[error("proxy {proxy} refused the tunnel to {target}: {answer}")]
    Refused {
        /// The proxy.
        proxy: String,
        /// Where the tunnel was to go.
        target: String,
        /// Its status line, or what was wrong with its answer.
        answer: String,
    },
}

impl From<TunnelError> for std::io::Error {
    fn from(e: TunnelError) -> Self {
        match e {
            TunnelError::Io { source, .. } if source.kind() != std::io::ErrorKind::Other => {
                Self::new(source.kind(), format!("through the proxy: {source}"))
            }
            e => Self::other(e.to_string()),
        }
    }
}

impl Proxy {
    /// Asks the proxy, on `stream` (a connection to it), for a tunnel to
    /// `host:port`; on success the stream carries the tunnel. Reads the
    /// answer a byte at a time up to its blank line, so nothing of the
    /// server's first bytes is taken, and at most [`MAX_ANSWER`] bytes.
    ///
    /// # Errors
    /// A proxy that refuses (407 without or with wrong credentials, 403 for
    /// a port it does not allow, 502 when it cannot reach the server), or
    /// answers with something that is not HTTP.
    pub async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        host: &str,
        port: u16,
    ) -> Result<(), TunnelError> {
        let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let io = |source| TunnelError::Io { proxy: self.to_string(), source };
        let refused = |answer: String| TunnelError::Refused { proxy: self.to_string(), target: target.clone(), answer };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.auth {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut answer = Vec::with_capacity(128);
        loop {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await.map_err(io)? == 0 {
                return Err(refused(if answer.is_empty() {
                    "it closed the connection without an answer".into()
                } else {
                    "it closed the connection mid-answer".into()
                }));
            }
            answer.push(b[0]);
            if answer.ends_with(b"\r\n\r\n") || answer.ends_with(b"\n\n") {
                break;
            }
            if answer.len() >= MAX_ANSWER {
                return Err(refused(format!("its answer has no end within {MAX_ANSWER} bytes")));
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&answer) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => {
                let head = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
                return Err(refused(format!("not an HTTP answer: {head:?}")));
            }
        }
        let code = parsed.code.unwrap_or(0);
        if (200..300).contains(&code) {
            return Ok(());
        }
        let reason = parsed.reason.unwrap_or("").chars().filter(|c| !c.is_control()).take(80).collect::<String>();
        // 407 is the standard answer; some proxies (tinyproxy) send 401.
        let hint = match code {
            401 | 407 if self.auth.is_none() => " (it wants credentials: http://user:password@host:port)",
            401 | 407 => " (it refused the credentials)",
            _ => "",
        };
        Err(refused(format!("{code} {reason}{hint}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn https_proxy_first_then_http_proxy_and_no_proxy_bypasses() {
        let p = from_env(&env(&[("HTTPS_PROXY", "http://squid:3128")]), "srv", 443).unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.from), ("squid", 3128, "HTTPS_PROXY"));
        let p = from_env(&env(&[("HTTP_PROXY", "http://a:1"), ("https_proxy", "b:2")]), "srv", 443).unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.from), ("b", 2, "https_proxy"));
        let p = from_env(&env(&[("http_proxy", "http://a")]), "srv", 443).unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("a", 80));
        assert_eq!(from_env(&env(&[]), "srv", 443).unwrap(), None);
        assert_eq!(from_env(&env(&[("HTTPS_PROXY", " ")]), "srv", 443).unwrap(), None);
        let e = env(&[("HTTPS_PROXY", "http://squid:3128"), ("NO_PROXY", "localhost,.corp.example")]);
        assert_eq!(from_env(&e, "tern.corp.example", 443).unwrap(), None);
        let odd = env(&[("HTTPS_PROXY", "socks5://x:1"), ("NO_PROXY", "*")]);
        assert_eq!(from_env(&odd, "srv", 443).unwrap(), None, "a bypassed proxy's URL does not matter");
        assert!(from_env(&e, "tern.example", 443).unwrap().is_some());
    }

    #[test]
    fn the_servers_host_and_port_come_from_the_join_tokens_url() {
        assert_eq!(server_of("https://tern.example"), Some(("tern.example".into(), 443)));
        assert_eq!(server_of("https://10.0.0.1:9443/"), Some(("10.0.0.1".into(), 9443)));
        assert_eq!(server_of("https://[fd00::1]:9443"), Some(("fd00::1".into(), 9443)));
        assert_eq!(server_of("http://x"), None);
    }

    #[test]
    fn bad_proxy_urls_are_refused_with_the_password_masked() {
        for bad in [
            "https://squid:3128",
            "socks5://squid:1080",
            "http://squid:0",
            "http://squid:99999",
            "http://squid:3128/path",
            "http://",
            "http://sq uid:1",
        ] {
            let e = parse("HTTPS_PROXY", bad).unwrap_err();
            assert!(e.to_string().starts_with("HTTPS_PROXY="), "{e}");
        }
        let e = parse("HTTPS_PROXY", "https://me:hunter2@squid:3128").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let p = parse("HTTPS_PROXY", "http://me%40site:p%3Ass@squid:3128/").unwrap();
        assert_eq!(
            p.auth.as_deref(),
            Some(format!("Basic {}", base64::prelude::BASE64_STANDARD.encode("me@site:p:ss")).as_str())
        );
        assert!(!format!("{p:?}").contains("Basic"));
        let p = parse("HTTPS_PROXY", "http://[fd00::1]:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.to_string().as_str()), ("fd00::1", 3128, "[fd00::1]:3128"));
    }

    #[test]
    fn no_proxy_matches_names_suffixes_addresses_networks_and_ports() {
        assert!(bypassed("*", "anything", 1));
        assert!(bypassed("example.com", "example.com", 443));
        assert!(bypassed("example.com", "a.example.com", 443));
        assert!(bypassed(".example.com", "a.b.example.com", 443));
        assert!(bypassed("*.example.com", "a.example.com", 443));
        assert!(!bypassed("example.com", "badexample.com", 443));
        assert!(!bypassed("a.example.com", "example.com", 443));
        assert!(bypassed("EXAMPLE.com.", "example.COM", 443));
        assert!(bypassed("10.1.2.3", "10.1.2.3", 443));
        assert!(bypassed("10.0.0.0/8", "10.200.0.1", 443));
        assert!(!bypassed("10.0.0.0/8", "11.0.0.1", 443));
        assert!(bypassed("0.0.0.0/0", "192.0.2.1", 443));
        assert!(bypassed("fd00::/8", "[fd12::1]", 443));
        assert!(bypassed("::1", "::1", 443));
        assert!(bypassed("srv:8443", "srv", 8443));
        assert!(!bypassed("srv:8443", "srv", 443));
        assert!(bypassed("a, b ,srv", "srv", 1));
        assert!(!bypassed("", "srv", 1));
        assert!(!bypassed("10.0.0.0/99,srv:x", "10.0.0.1", 1));
    }

    async fn answer(reply: &'static [u8], auth: Option<&str>) -> (Result<(), TunnelError>, String) {
        let (mut ours, mut theirs) = tokio::io::duplex(64 << 10);
        let proxy = Proxy { host: "squid".into(), port: 3128, auth: auth.map(str::to_owned), from: "HTTPS_PROXY" };
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                if theirs.read(&mut b).await.unwrap() == 0 {
                    break;
                }
                got.push(b[0]);
            }
            theirs.write_all(reply).await.unwrap();
            drop(theirs);
            String::from_utf8(got).unwrap()
        });
        let r = proxy.tunnel(&mut ours, "tern.example", 8443).await;
        (r, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_tunnel_is_asked_for_and_refusals_say_why() {
        let (r, asked) = answer(b"HTTP/1.1 200 Connection established\r\n\r\n", None).await;
        r.unwrap();
        assert_eq!(asked, "CONNECT tern.example:8443 HTTP/1.1\r\nHost: tern.example:8443\r\n\r\n");
        let (r, asked) = answer(b"HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n", Some("Basic eA==")).await;
        r.unwrap();
        assert!(asked.contains("Proxy-Authorization: Basic eA==\r\n"));
        let (r, _) = answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", None).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("407 Proxy Authentication Required (it wants credentials"), "{e}");
        let (r, _) = answer(b"HTTP/1.1 403 Forbidden\r\n\r\n", None).await;
        assert!(r.unwrap_err().to_string().ends_with("refused the tunnel to tern.example:8443: 403 Forbidden"));
        let (r, _) = answer(b"SSH-2.0-OpenSSH\r\n\r\n", None).await;
        assert!(r.unwrap_err().to_string().contains("not an HTTP answer"));
        let (r, _) = answer(b"", None).await;
        assert!(r.unwrap_err().to_string().contains("without an answer"));
        let endless: &'static [u8] = Box::leak(
            [b"HTTP/1.1 200 OK\r\n".as_slice(), &b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(400)]
                .concat()
                .into_boxed_slice(),
        );
        let (r, _) = answer(endless, None).await;
        assert!(r.unwrap_err().to_string().contains("no end within 8192 bytes"));
    }
}
