//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): a load
//! balancer in TCP mode tells the server, in a binary header before the
//! TLS handshake, which client address the connection really comes from.
//! Every per-client rule then applies to that address: the connection caps
//! ([`super::gate`]), the login limiter, the logs.
//!
//! Only proxies the operator named (`--proxy-protocol`) are believed, and
//! from them the header is required. A connection from anywhere else that
//! starts with a PROXY header (version 1 or 2) is refused and logged: it is
//! either a load balancer the server was not told about, or a client
//! trying to choose its own address.
//!
//! The header is parsed with the `ppp` crate, after at most
//! [`MAX_HEADER`] bytes were read, within the handshake's time limit.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most header bytes read: the 16 fixed bytes, the addresses (36 for
/// IPv6) and room for the TLVs HAProxy adds (unique id, ALPN, SSL facts).
pub const MAX_HEADER: usize = 1024;

/// The addresses whose connections carry a PROXY header (`--proxy-protocol
/// 10.0.0.5,10.1.0.0/16`): single addresses or networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(Vec<(IpAddr, u8)>);

/// Why a PROXY header was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection closed or failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a version 2 header (a trusted proxy must send one).
    #[error("a trusted proxy sent no PROXY protocol v2 header ({0})")]
    Malformed(String),
    /// It says it is longer than [`MAX_HEADER`].
    #[error("a PROXY header of {0} bytes is over the {MAX_HEADER} allowed")]
    TooLong(usize),
}

impl std::str::FromStr for Trusted {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (addr, len) = match part.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (part, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| format!("{part:?} is not an IP address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("{part:?}: the prefix length must be 0 to {max}"))?,
            };
            nets.push((ip, len));
        }
        if nets.is_empty() {
            return Err("name at least one proxy address".into());
        }
        Ok(Self(nets))
    }
}

impl Trusted {
    /// None: no connection may carry a PROXY header.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `ip` is one of the trusted proxies.
    #[must_use]
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, len)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// Whether any proxy is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the connection's first bytes are a PROXY header of either
/// version (waits for the first byte; a TLS ClientHello starts with 0x16).
///
/// # Errors
/// When the socket fails.
pub async fn sends_header(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    // Version 2 starts "\r\n\r\n\0\r\nQUIT\n", version 1 "PROXY ".
    Ok(n == 1 && (first[0] == b'\r' || first[0] == b'P'))
}

/// Reads a version 2 header off `tcp` and returns the client address it
/// names: `None` for a LOCAL header (the proxy's own health check) or one
/// without an internet address. Nothing past the header is read.
///
/// # Errors
/// [`ProxyError`].
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = vec![0u8; 16];
    tcp.read_exact(&mut buf).await?;
    if &buf[..12] != ppp::v2::PROTOCOL_PREFIX {
        return Err(ProxyError::Malformed(if buf.starts_with(b"PROXY ") {
            "version 1: configure send-proxy-v2".into()
        } else {
            "no PROXY signature".into()
        }));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > MAX_HEADER {
        return Err(ProxyError::TooLong(16 + len));
    }
    buf.resize(16 + len, 0);
    tcp.read_exact(&mut buf[16..]).await?;
    client_of(&buf)
}

/// The client address a whole version 2 header names (see [`read_header`]).
///
/// # Errors
/// [`ProxyError::Malformed`].
pub fn client_of(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let header = ppp::v2::Header::try_from(header).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// A version 2 PROXY header for a TCP connection from `client` to
/// `server` (what HAProxy's `send-proxy-v2` sends): for tests and tools.
///
/// # Panics
/// When `client` and `server` are of different families.
#[must_use]
pub fn header_for(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let addresses: ppp::v2::Addresses = (client, server).into();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .build()
    .expect("a header of two addresses fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let t: Trusted = "127.0.0.1, 10.1.0.0/16,2001:db8::/32".parse().unwrap();
        assert!(t.trusts("127.0.0.1".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.2".parse().unwrap()));
        assert!(t.trusts("10.1.200.3".parse().unwrap()));
        assert!(!t.trusts("10.2.0.1".parse().unwrap()));
        assert!(t.trusts("2001:db8:5::1".parse().unwrap()));
        assert!(!t.trusts("2001:db9::1".parse().unwrap()));
        assert!(Trusted::none().is_empty() && !Trusted::none().trusts("127.0.0.1".parse().unwrap()));
        let all: Trusted = "0.0.0.0/0".parse().unwrap();
        assert!(all.trusts("203.0.113.9".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "host.example", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Trusted>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_header_names_its_client_and_a_local_one_none() {
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let server: SocketAddr = "10.0.0.2:9443".parse().unwrap();
        assert_eq!(client_of(&header_for(client, server)).unwrap(), Some(client));
        let v6: SocketAddr = "[2001:db8::7]:1234".parse().unwrap();
        assert_eq!(client_of(&header_for(v6, "[2001:db8::1]:9443".parse().unwrap())).unwrap(), Some(v6));
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(client_of(&local).unwrap(), None);
        assert!(client_of(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").is_err());
    }

    #[tokio::test]
    async fn a_header_is_read_off_the_socket_and_nothing_after_it() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut sent = header_for(client, addr);
        sent.extend_from_slice(b"\x16\x03\x01 and the TLS that follows");
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&sent).await.unwrap();
            c
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        assert!(sends_header(&tcp).await.unwrap());
        assert_eq!(read_header(&mut tcp).await.unwrap(), Some(client));
        let mut next = [0u8; 3];
        tcp.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"\x16\x03\x01");
        drop(writer.await.unwrap());

        // Oversized, version 1 and plain TLS.
        for (bytes, what) in [
            ([ppp::v2::PROTOCOL_PREFIX, &[0x21, 0x11, 0xff, 0xff]].concat(), "over"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "version 1"),
        ] {
            let w = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&bytes).await.unwrap();
                c
            });
            let (mut tcp, _) = listener.accept().await.unwrap();
            assert!(sends_header(&tcp).await.unwrap());
            let e = read_header(&mut tcp).await.unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
            drop(w.await.unwrap());
        }
        let w = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"\x16\x03\x01").await.unwrap();
            c
        });
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(!sends_header(&tcp).await.unwrap());
        drop(w.await.unwrap());
    }
}
