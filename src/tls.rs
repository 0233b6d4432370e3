//! TLS for the poll connection: TLS 1.3 only, rustls with the ring provider.
//!
//! * The server's identity is a self-signed ECDSA P-256 certificate made at
//!   first start and kept in its data directory (or one the user supplies).
//!   Its SHA-256 fingerprint goes into every join token.
//! * The agent pins that fingerprint, so a self-signed server is trusted
//!   without `EDGE_INSECURE_POLL`; with `EDGE_INSECURE_POLL=1` any
//!   certificate is accepted (the poll MACs still keep a machine in the
//!   middle from injecting commands).
//! * Key exchange is X25519 (the ring provider's first group). The
//!   post-quantum hybrid adds about 2.3 KB to every connection, resumed ones
//!   too, so it is not the default.
//! * The server sends one session ticket per connection, not rustls's two:
//!   the agent keeps one connection at a time.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{0}: no usable PEM certificate or key")]
    Pem(std::path::PathBuf),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate could not be generated.
    #[error("generating the certificate: {0}")]
    Generate(String),
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The fingerprint of the first certificate in a PEM file (what `tern env
/// add` pins when it runs on the server's host; the key is not needed).
///
/// # Errors
/// When the file holds no certificate.
pub fn fingerprint_of_pem(path: &Path) -> Result<[u8; 32], TlsError> {
    let cert = CertificateDer::from_pem_file(path).map_err(|_| TlsError::Pem(path.to_owned()))?;
    Ok(fingerprint(&cert))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate chain and key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// Loads `cert.pem` and `key.pem` from `dir`, or makes a self-signed
    /// ECDSA P-256 certificate for `names` and keeps it there.
    ///
    /// # Errors
    /// When the files cannot be read or written, or hold no certificate.
    #[cfg(feature = "server")]
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() {
            let generated =
                rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Generate(e.to_string()))?;
            let io = |path: &Path| {
                let path = path.to_owned();
                move |source| TlsError::Io { path, source }
            };
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            write_private(&key, generated.signing_key.serialize_pem().as_bytes()).map_err(io(&key))?;
            std::fs::write(&cert, generated.cert.pem()).map_err(io(&cert))?;
        }
        Self::load(&cert, &key)
    }

    /// Loads a user-supplied certificate chain and key (PEM).
    ///
    /// # Errors
    /// When the files cannot be read or hold no certificate or key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|_| TlsError::Pem(cert.to_owned()))?
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem(cert.to_owned()))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(cert.to_owned()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::Pem(key.to_owned()))?;
        Ok(Self { chain, key })
    }

    /// The fingerprint agents pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.chain[0])
    }

    /// The rustls server configuration.
    ///
    /// # Errors
    /// When rustls refuses the key.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.send_tls13_tickets = 1;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(feature = "server")]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(bytes)
}

/// How the agent decides to trust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The certificate's SHA-256 must be this (from the join token).
    Pinned([u8; 32]),
    /// `EDGE_INSECURE_POLL=1`: any certificate.
    Insecure,
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trust {
            Trust::Insecure => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(pin) if fingerprint(end_entity) == pin => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(_) => {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (the client offers 1.3 only).
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The handshake signature is always checked: the pin only replaces
        // the chain of trust, not the proof that the server holds the key.
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The agent's rustls configuration.
///
/// # Errors
/// When rustls refuses the configuration.
pub fn client_config(trust: Trust) -> Result<ClientConfig, TlsError> {
    if trust == Trust::Insecure {
        tracing::warn!("EDGE_INSECURE_POLL=1: accepting ANY server certificate; polls stay authenticated by MAC");
    }
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tern-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Serves `n` connections that echo one byte.
    async fn serve(identity: &ServerIdentity, n: usize) -> std::net::SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config().unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..n {
                let (tcp, _) = listener.accept().await.unwrap();
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.shutdown().await;
                    }
                }
            }
        });
        addr
    }

    async fn connect(config: Arc<ClientConfig>, addr: std::net::SocketAddr) -> Result<bool, std::io::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("tern-server").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        Ok(resumed)
    }

    #[tokio::test]
    async fn a_pinned_self_signed_server_is_trusted_and_resumed_and_a_wrong_pin_is_not() {
        let dir = tempdir("pin");
        let id = ServerIdentity::load_or_create(&dir, &["tern-server".into()]).unwrap();
        let again = ServerIdentity::load_or_create(&dir, &["tern-server".into()]).unwrap();
        assert_eq!(id.fingerprint(), again.fingerprint(), "the identity is kept, not regenerated");
        assert_eq!(fingerprint_of_pem(&dir.join("cert.pem")).unwrap(), id.fingerprint());

        let addr = serve(&id, 4).await;
        let pinned = Arc::new(client_config(Trust::Pinned(id.fingerprint())).unwrap());
        assert!(!connect(pinned.clone(), addr).await.unwrap(), "first connection: full handshake");
        assert!(connect(pinned, addr).await.unwrap(), "second connection: resumed");
        let wrong = Arc::new(client_config(Trust::Pinned([0; 32])).unwrap());
        assert!(connect(wrong, addr).await.is_err(), "a wrong pin is refused");
        let insecure = Arc::new(client_config(Trust::Insecure).unwrap());
        assert!(connect(insecure, addr).await.is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
