//! TLS for the poll connection: TLS 1.3 only, rustls with the ring provider.
//!
//! * The server's identity is a self-signed ECDSA P-256 certificate made at
//!   first start and kept in its data directory (or one the user supplies).
//!   Its SHA-256 fingerprint goes into every join token.
//! * The agent pins that fingerprint, so a self-signed server is trusted
//!   without `EDGE_INSECURE_POLL`; with `EDGE_INSECURE_POLL=1` any
//!   certificate is accepted (the poll MACs still keep a machine in the
//!   middle from injecting commands).
//! * Key exchange is X25519 by default: the agent offers that one group and
//!   one 32-byte key share. The post-quantum hybrid X25519MLKEM768 ([`pq`],
//!   ML-KEM-768 from the pure-Rust `ml-kem` crate, since ring has none) is an
//!   option ([`TlsOptions::post_quantum`], `EDGE_TLS_PQ=1`): it adds about
//!   2.3 KB to every connection, resumed ones too, so it is not the default.
//!   The server accepts either, whichever the client offers, without a
//!   HelloRetryRequest.
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

/// The server's provider: ring, plus X25519MLKEM768. The server takes the
/// first group in the client's list that it supports, so a client that
/// offers only X25519 gets X25519, and one that offers the hybrid first
/// gets the hybrid.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups.insert(0, pq::X25519MLKEM768);
    Arc::new(provider)
}

/// The agent's provider: ring, with only the groups it offers.
fn client_provider(options: TlsOptions) -> Arc<rustls::crypto::CryptoProvider> {
    let x25519 = rustls::crypto::ring::kx_group::X25519;
    let kx_groups = if options.post_quantum { vec![pq::X25519MLKEM768, x25519] } else { vec![x25519] };
    Arc::new(rustls::crypto::CryptoProvider { kx_groups, ..rustls::crypto::ring::default_provider() })
}

/// The agent's TLS choices beyond trust.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `EDGE_TLS_PQ=1`: offer the post-quantum hybrid X25519MLKEM768 first
    /// (its 1,216-byte key share in the ClientHello), X25519 as a fallback
    /// group. Costs about 2.3 KB per handshake (the server answers with a
    /// 1,120-byte share). Off: X25519 alone, one 32-byte share.
    pub post_quantum: bool,
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
            Trust::Pinned(pin) => {
                // Say what the operator needs to fix, in the agent's log.
                let hex = |f: &[u8; 32]| f.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                let why = format!(
                    "the server's certificate (sha256 {}) is not the one pinned in EDGE_KEY ({}); a server with a \
                     new certificate needs a new EDGE_KEY (or EDGE_INSECURE_POLL=1)",
                    hex(&fingerprint(end_entity)),
                    hex(&pin)
                );
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                    std::sync::Arc::new(std::io::Error::other(why)),
                ))))
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

/// The agent's rustls configuration, with the default [`TlsOptions`]
/// (X25519 only).
///
/// # Errors
/// When rustls refuses the configuration.
pub fn client_config(trust: Trust) -> Result<ClientConfig, TlsError> {
    client_config_with(trust, TlsOptions::default())
}

/// The agent's rustls configuration with `options` (the post-quantum
/// hybrid, when asked for).
///
/// # Errors
/// When rustls refuses the configuration.
pub fn client_config_with(trust: Trust, options: TlsOptions) -> Result<ClientConfig, TlsError> {
    if trust == Trust::Insecure {
        tracing::warn!("EDGE_INSECURE_POLL=1: accepting ANY server certificate; polls stay authenticated by MAC");
    }
    let provider = client_provider(options);
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub mod pq {
    //! X25519MLKEM768, the hybrid of draft-ietf-tls-ecdhe-mlkem (codepoint
    //! 0x11EC), built on rustls's public key-exchange traits: ML-KEM-768 from
    //! the RustCrypto `ml-kem` crate (ring has no ML-KEM) and X25519 from
    //! rustls's ring provider.
    //!
    //! For this group the ML-KEM part comes first everywhere:
    //!
    //! * client share: ML-KEM-768 encapsulation key (1,184 B) || X25519 public key (32 B);
    //! * server share: ML-KEM-768 ciphertext (1,088 B) || X25519 public key (32 B);
    //! * shared secret: ML-KEM shared secret (32 B) || X25519 shared secret (32 B).
    //!
    //! The server encapsulates to the client's key
    //! ([`SupportedKxGroup::start_and_complete`]); the client decapsulates.
    //! A share of the wrong length, an encapsulation key that fails the
    //! FIPS 203 modulus check or a bad X25519 key is an error
    //! (`InvalidKeyShare`), never a panic. Randomness (the 64-byte key seed,
    //! the 32-byte encapsulation message) comes from ring's `SystemRandom`,
    //! and the secrets are zeroed after use.

    use ml_kem::array::Array;
    use ml_kem::{B32, Decapsulate, DecapsulationKey, EncapsulationKey, KeyExport, MlKem768, Seed};
    use ring::rand::SecureRandom;
    use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
    use rustls::ffdhe_groups::FfdheGroup;
    use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};
    use zeroize::Zeroize;

    /// Bytes of an ML-KEM-768 encapsulation key.
    pub const MLKEM768_ENCAPSULATION_KEY_LEN: usize = 1184;
    /// Bytes of an ML-KEM-768 ciphertext.
    pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
    /// Bytes of an X25519 public key.
    pub const X25519_LEN: usize = 32;
    /// Bytes of the client's key share (1,216).
    pub const CLIENT_SHARE_LEN: usize = MLKEM768_ENCAPSULATION_KEY_LEN + X25519_LEN;
    /// Bytes of the server's key share (1,120).
    pub const SERVER_SHARE_LEN: usize = MLKEM768_CIPHERTEXT_LEN + X25519_LEN;
    /// Bytes of the shared secret (64).
    pub const SECRET_LEN: usize = 64;

    /// The X25519MLKEM768 key-exchange group, for a rustls `CryptoProvider`'s
    /// `kx_groups`. TLS 1.3 only.
    pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

    /// The classical half.
    const X25519: &dyn SupportedKxGroup = rustls::crypto::ring::kx_group::X25519;

    #[derive(Debug)]
    struct X25519MlKem768;

    fn invalid_share() -> Error {
        Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)
    }

    fn random(buf: &mut [u8]) -> Result<(), Error> {
        ring::rand::SystemRandom::new().fill(buf).map_err(|_| Error::FailedToGetRandomBytes)
    }

    /// Splits a peer's share into its ML-KEM part (`mlkem_len` bytes, first)
    /// and its X25519 part (the last 32 bytes); any other length is an error.
    fn split(share: &[u8], mlkem_len: usize) -> Result<(&[u8], &[u8]), Error> {
        if share.len() != mlkem_len + X25519_LEN {
            return Err(invalid_share());
        }
        Ok(share.split_at(mlkem_len))
    }

    /// ML-KEM secret || X25519 secret, handed to rustls (which zeroes it on drop).
    fn combine(mlkem: &mut [u8], x25519: &SharedSecret) -> SharedSecret {
        let mut secret = Vec::with_capacity(SECRET_LEN);
        secret.extend_from_slice(mlkem);
        secret.extend_from_slice(x25519.secret_bytes());
        mlkem.zeroize();
        SharedSecret::from(secret)
    }

    impl SupportedKxGroup for X25519MlKem768 {
        /// The client's side: a fresh ML-KEM-768 key pair and X25519 key.
        fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
            let mut seed = Seed::default();
            random(&mut seed)?;
            let decapsulation = DecapsulationKey::<MlKem768>::from_seed(seed);
            seed.zeroize();
            let classical = X25519.start()?;
            let mut share = Vec::with_capacity(CLIENT_SHARE_LEN);
            share.extend_from_slice(&decapsulation.encapsulation_key().to_bytes());
            share.extend_from_slice(classical.pub_key());
            debug_assert_eq!(share.len(), CLIENT_SHARE_LEN);
            Ok(Box::new(Active { decapsulation, classical, share }))
        }

        /// The server's side: encapsulate to the client's ML-KEM key, answer
        /// its X25519 key, in one step (a KEM has no independent server key).
        fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
            let (mlkem, x25519) = split(client_share, MLKEM768_ENCAPSULATION_KEY_LEN)?;
            let key: &Array<u8, _> = mlkem.try_into().map_err(|_| invalid_share())?;
            let encapsulation = EncapsulationKey::<MlKem768>::new(key).map_err(|_| invalid_share())?;
            let classical = X25519.start_and_complete(x25519)?;
            let mut m = B32::default();
            random(&mut m)?;
            let (ciphertext, mut mlkem_secret) = encapsulation.encapsulate_deterministic(&m);
            m.zeroize();
            let mut share = Vec::with_capacity(SERVER_SHARE_LEN);
            share.extend_from_slice(&ciphertext);
            share.extend_from_slice(&classical.pub_key);
            Ok(CompletedKeyExchange {
                group: NamedGroup::X25519MLKEM768,
                pub_key: share,
                secret: combine(&mut mlkem_secret, &classical.secret),
            })
        }

        fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
            None
        }

        fn name(&self) -> NamedGroup {
            NamedGroup::X25519MLKEM768
        }

        fn usable_for_version(&self, version: ProtocolVersion) -> bool {
            version == ProtocolVersion::TLSv1_3
        }
    }

    /// The client's half-done exchange.
    struct Active {
        decapsulation: DecapsulationKey<MlKem768>,
        classical: Box<dyn ActiveKeyExchange>,
        share: Vec<u8>,
    }

    impl ActiveKeyExchange for Active {
        /// Decapsulates the server's ciphertext and completes X25519.
        fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
            let (mlkem, x25519) = split(server_share, MLKEM768_CIPHERTEXT_LEN)?;
            let ciphertext: &Array<u8, _> = mlkem.try_into().map_err(|_| invalid_share())?;
            let classical = self.classical.complete(x25519)?;
            let mut mlkem_secret = self.decapsulation.decapsulate(ciphertext);
            Ok(combine(&mut mlkem_secret, &classical))
        }

        fn pub_key(&self) -> &[u8] {
            &self.share
        }

        fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
            None
        }

        fn group(&self) -> NamedGroup {
            NamedGroup::X25519MLKEM768
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use ml_kem::Ciphertext;

        fn is_invalid_share<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)))
        }

        #[test]
        fn the_hybrid_round_trips_with_mlkem_first() {
            let client = X25519MLKEM768.start().unwrap();
            assert_eq!(client.group(), NamedGroup::X25519MLKEM768);
            let client_share = client.pub_key().to_vec();
            assert_eq!(client_share.len(), CLIENT_SHARE_LEN);
            let server = X25519MLKEM768.start_and_complete(&client_share).unwrap();
            assert_eq!(server.group, NamedGroup::X25519MLKEM768);
            assert_eq!(server.pub_key.len(), SERVER_SHARE_LEN);
            let client_secret = client.complete(&server.pub_key).unwrap();
            assert_eq!(client_secret.secret_bytes().len(), SECRET_LEN);
            assert_eq!(client_secret.secret_bytes(), server.secret.secret_bytes());

            // Two exchanges never share a secret or a key.
            let other = X25519MLKEM768.start().unwrap();
            assert_ne!(other.pub_key(), &client_share[..]);
        }

        /// The layout, checked against the two halves done separately: the
        /// client's share is an ML-KEM key then an X25519 key, the server's
        /// an ML-KEM ciphertext then an X25519 key, and the secret is the
        /// ML-KEM secret then the X25519 secret.
        #[test]
        fn shares_and_secret_follow_the_draft_layout() {
            let client = X25519MLKEM768.start().unwrap();
            let (ek, x) = client.pub_key().split_at(MLKEM768_ENCAPSULATION_KEY_LEN);
            let ek = EncapsulationKey::<MlKem768>::new(ek.try_into().unwrap()).expect("ML-KEM key first");
            let classical = X25519.start_and_complete(x).expect("X25519 key last");
            let (ct, k) = ek.encapsulate_deterministic(&B32::from([7u8; 32]));
            let server_share = [ct.as_slice(), &classical.pub_key].concat();
            let secret = client.complete(&server_share).unwrap();
            let expected = [k.as_slice(), classical.secret.secret_bytes()].concat();
            assert_eq!(secret.secret_bytes(), &expected[..]);
        }

        #[test]
        fn truncated_oversized_or_malformed_shares_are_errors() {
            let good = X25519MLKEM768.start().unwrap().pub_key().to_vec();
            for len in [0, 1, X25519_LEN, MLKEM768_ENCAPSULATION_KEY_LEN, CLIENT_SHARE_LEN - 1] {
                assert!(is_invalid_share(X25519MLKEM768.start_and_complete(&good[..len])), "client share of {len} B");
            }
            let mut long = good.clone();
            long.push(0);
            assert!(is_invalid_share(X25519MLKEM768.start_and_complete(&long)), "client share of 1,217 B");
            // An encapsulation key whose coefficients are not reduced mod q
            // fails the FIPS 203 input check.
            let mut unreduced = good.clone();
            unreduced[..MLKEM768_ENCAPSULATION_KEY_LEN].fill(0xff);
            assert!(is_invalid_share(X25519MLKEM768.start_and_complete(&unreduced)));
            // An all-zero X25519 key (small order) is refused by ring.
            let mut zero_x = good.clone();
            zero_x[MLKEM768_ENCAPSULATION_KEY_LEN..].fill(0);
            assert!(X25519MLKEM768.start_and_complete(&zero_x).is_err());

            let server = X25519MLKEM768.start_and_complete(&good).unwrap().pub_key;
            for len in [0, X25519_LEN, MLKEM768_CIPHERTEXT_LEN, SERVER_SHARE_LEN - 1, SERVER_SHARE_LEN + 1] {
                let client = X25519MLKEM768.start().unwrap();
                let share = if len <= server.len() { server[..len].to_vec() } else { [&server[..], &[0]].concat() };
                assert!(is_invalid_share(client.complete(&share)), "server share of {len} B");
            }
            let client = X25519MLKEM768.start().unwrap();
            let mut zero_x = server.clone();
            zero_x[MLKEM768_CIPHERTEXT_LEN..].fill(0);
            assert!(client.complete(&zero_x).is_err());
            // A forged ciphertext is not an error (ML-KEM rejects it
            // implicitly), but the two sides end with different secrets.
            let client = X25519MLKEM768.start().unwrap();
            let completed = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
            let mut forged = completed.pub_key.clone();
            forged[0] ^= 1;
            let _: &Ciphertext<MlKem768> = forged[..MLKEM768_CIPHERTEXT_LEN].try_into().unwrap();
            let secret = client.complete(&forged).unwrap();
            assert_ne!(secret.secret_bytes(), completed.secret.secret_bytes());
        }
    }
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

    /// One handshake and a one-byte echo; the group and kind of handshake.
    async fn handshake(
        config: Arc<ClientConfig>,
        addr: std::net::SocketAddr,
    ) -> (Option<rustls::NamedGroup>, Option<rustls::HandshakeKind>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("tern-server").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.unwrap();
        let conn = tls.get_ref().1;
        (conn.negotiated_key_exchange_group().map(|g| g.name()), conn.handshake_kind())
    }

    #[tokio::test]
    async fn the_server_takes_x25519_from_default_clients_and_the_hybrid_from_pq_clients_without_retry() {
        use rustls::{HandshakeKind, NamedGroup};
        let dir = tempdir("pq");
        let id = ServerIdentity::load_or_create(&dir, &["tern-server".into()]).unwrap();
        let addr = serve(&id, 4).await;
        let trust = Trust::Pinned(id.fingerprint());
        let default = Arc::new(client_config(trust).unwrap());
        let pq = Arc::new(client_config_with(trust, TlsOptions { post_quantum: true }).unwrap());
        assert_eq!(handshake(default.clone(), addr).await, (Some(NamedGroup::X25519), Some(HandshakeKind::Full)));
        assert_eq!(
            handshake(pq.clone(), addr).await,
            (Some(NamedGroup::X25519MLKEM768), Some(HandshakeKind::Full)),
            "the hybrid's key share is taken at once, no HelloRetryRequest"
        );
        // Resumption does a key exchange too (psk_dhe_ke), in the same group.
        assert_eq!(handshake(default, addr).await, (Some(NamedGroup::X25519), Some(HandshakeKind::Resumed)));
        assert_eq!(handshake(pq, addr).await, (Some(NamedGroup::X25519MLKEM768), Some(HandshakeKind::Resumed)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_pq_client_falls_back_to_x25519_on_a_server_without_the_hybrid() {
        use rustls::{HandshakeKind, NamedGroup};
        let dir = tempdir("pq-fallback");
        let id = ServerIdentity::load_or_create(&dir, &["tern-server".into()]).unwrap();
        let classical_only = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(id.chain.clone(), id.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(classical_only));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
            tls.write_all(&b).await.unwrap();
            let _ = tls.shutdown().await;
        });
        let pq =
            Arc::new(client_config_with(Trust::Pinned(id.fingerprint()), TlsOptions { post_quantum: true }).unwrap());
        assert_eq!(
            handshake(pq, addr).await,
            (Some(NamedGroup::X25519), Some(HandshakeKind::FullWithHelloRetryRequest))
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
