//! TLS for the transport (Spark 4's `spark.ssl.rpc.*`) with rustls and its
//! `ring` provider, as connection bootstraps: the TLS session sits between the socket and
//! framing on both sides.
//!
//! - [`TlsConf`]: PEM certificate chain and private key, what to trust (a CA bundle, or the
//!   development-only [`TlsTrust::TrustAll`]), optional client certificates (mutual TLS), the
//!   protocol (TLSv1.3 by default) and the handshake bound.
//! - [`TlsServerBootstrap`] / [`TlsClientBootstrap`]: run the handshake on every connection.
//!
//! The client checks the server's certificate against the trusted CAs and the host name it
//! connected to (an IP address needs an IP SAN). Spark itself checks no host names and trusts
//! everything when no trust store is set; here trusting everything must be asked for.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::bootstrap::{BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
use crate::error::TransportError;

/// Which TLS versions are allowed (`spark.ssl.rpc.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsProtocol {
    /// TLSv1.3 only (Spark's default).
    #[default]
    Tls13,
    /// TLSv1.2 and TLSv1.3.
    Tls12,
}

impl TlsProtocol {
    /// Parse Spark's protocol names (`TLSv1.3`, `TLSv1.2`, `TLS`; case-insensitive).
    pub fn parse(s: &str) -> Option<TlsProtocol> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tlsv1.3" | "tls1.3" => Some(TlsProtocol::Tls13),
            "tlsv1.2" | "tls1.2" | "tls" => Some(TlsProtocol::Tls12),
            _ => None,
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS12_UP: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            TlsProtocol::Tls13 => &TLS13_ONLY,
            TlsProtocol::Tls12 => &TLS12_UP,
        }
    }
}

/// What a TLS client (and a server asking for client certificates) trusts.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// Certificates chaining to these CA certificates.
    Roots(Vec<CertificateDer<'static>>),
    /// Any certificate (handshake signatures are still checked). For development only: it gives
    /// encryption without knowing who the peer is. Spark's behaviour without a trust store.
    TrustAll,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsTrust::Roots(r) => write!(f, "Roots({} certificates)", r.len()),
            TlsTrust::TrustAll => f.write_str("TrustAll"),
        }
    }
}

/// TLS settings of one side (an RpcEnv uses the same for its server and its clients).
#[derive(Clone)]
pub struct TlsConf {
    /// This side's certificate chain (leaf first); required by servers, and by clients that
    /// present a client certificate.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of the chain's leaf.
    pub private_key: Option<Arc<PrivateKeyDer<'static>>>,
    /// What to trust.
    pub trust: TlsTrust,
    /// Servers require and verify client certificates (mutual TLS) against `trust`'s roots.
    pub require_client_auth: bool,
    /// Allowed versions.
    pub protocol: TlsProtocol,
    /// IANA names of the allowed cipher suites (`spark.ssl.rpc.enabledAlgorithms`); empty for
    /// the provider's defaults.
    pub cipher_suites: Vec<String>,
    /// Bound of the handshake.
    pub handshake_timeout: Duration,
}

impl fmt::Debug for TlsConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConf")
            .field("cert_chain", &self.cert_chain.len())
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("trust", &self.trust)
            .field("require_client_auth", &self.require_client_auth)
            .field("protocol", &self.protocol)
            .field("cipher_suites", &self.cipher_suites)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Default for TlsConf {
    fn default() -> Self {
        TlsConf {
            cert_chain: Vec::new(),
            private_key: None,
            trust: TlsTrust::Roots(Vec::new()),
            require_client_auth: false,
            protocol: TlsProtocol::Tls13,
            cipher_suites: Vec::new(),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

fn config_error(reason: impl Into<String>) -> TransportError {
    TransportError::SecurityConfig {
        reason: reason.into(),
    }
}

/// Read every certificate of a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Read the private key of a PEM file (PKCS#8, PKCS#1 or SEC1; not encrypted).
pub fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        config_error(format!(
            "cannot read a private key from {}: {e} (encrypted keys are not supported)",
            path.display()
        ))
    })
}

impl TlsConf {
    /// Settings with this side's identity from PEM files.
    pub fn with_identity_pem(
        mut self,
        cert_chain: &Path,
        private_key: &Path,
    ) -> Result<Self, TransportError> {
        self.cert_chain = read_pem_certs(cert_chain)?;
        self.private_key = Some(Arc::new(read_pem_key(private_key)?));
        Ok(self)
    }

    /// Trust the CA certificates of a PEM bundle.
    pub fn with_ca_pem(mut self, bundle: &Path) -> Result<Self, TransportError> {
        self.trust = TlsTrust::Roots(read_pem_certs(bundle)?);
        Ok(self)
    }

    /// Trust any certificate (development only; see [`TlsTrust::TrustAll`]).
    pub fn trust_all(mut self) -> Self {
        self.trust = TlsTrust::TrustAll;
        self
    }

    fn provider(&self) -> Result<Arc<CryptoProvider>, TransportError> {
        let mut p = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            p.cipher_suites.retain(|s| {
                s.suite()
                    .as_str()
                    .is_some_and(|n| self.cipher_suites.iter().any(|w| w.eq_ignore_ascii_case(n)))
            });
            if p.cipher_suites.is_empty() {
                return Err(config_error(format!(
                    "none of the cipher suites {:?} is supported",
                    self.cipher_suites
                )));
            }
        }
        Ok(Arc::new(p))
    }

    fn roots(&self) -> Result<Option<RootCertStore>, TransportError> {
        match &self.trust {
            TlsTrust::TrustAll => Ok(None),
            TlsTrust::Roots(certs) => {
                let mut store = RootCertStore::empty();
                for c in certs {
                    store
                        .add(c.clone())
                        .map_err(|e| config_error(format!("bad CA certificate: {e}")))?;
                }
                Ok(Some(store))
            }
        }
    }

    fn identity(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        match (&self.private_key, self.cert_chain.is_empty()) {
            (Some(k), false) => Some((self.cert_chain.clone(), k.clone_key())),
            _ => None,
        }
    }

    /// The rustls server configuration.
    pub fn server_config(&self) -> Result<ServerConfig, TransportError> {
        let provider = self.provider()?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.protocol.versions())
            .map_err(|e| config_error(e.to_string()))?;
        let builder = if self.require_client_auth {
            let roots = self.roots()?.ok_or_else(|| {
                config_error("client certificates are required but no CA is trusted to check them")
            })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| config_error(format!("cannot verify client certificates: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (chain, key) = self.identity().ok_or_else(|| {
            config_error("a TLS server needs a certificate chain and a private key")
        })?;
        builder
            .with_single_cert(chain, key)
            .map_err(|e| config_error(format!("bad certificate or key: {e}")))
    }

    /// The rustls client configuration.
    pub fn client_config(&self) -> Result<ClientConfig, TransportError> {
        let provider = self.provider()?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.protocol.versions())
            .map_err(|e| config_error(e.to_string()))?;
        let builder =
            match self.roots()? {
                Some(roots) if roots.is_empty() => return Err(config_error(
                    "no CA certificate to trust: give a CA bundle (ssl.rpc.trustStore) or choose \
                     the development-only trust-all mode (ssl.rpc.trustAll=true)",
                )),
                Some(roots) => builder.with_root_certificates(roots),
                None => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(TrustAll(provider))),
            };
        match self.identity() {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error(format!("bad client certificate or key: {e}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct TrustAll(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_failed(peer: SocketAddr, reason: impl Into<String>) -> TransportError {
    TransportError::Tls {
        peer,
        reason: reason.into(),
    }
}

/// The server side of TLS: every accepted connection does the handshake first.
#[derive(Clone)]
pub struct TlsServerBootstrap {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl fmt::Debug for TlsServerBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerBootstrap").finish_non_exhaustive()
    }
}

impl TlsServerBootstrap {
    /// A bootstrap from `conf` (needs a certificate chain and key).
    pub fn new(conf: &TlsConf) -> Result<Self, TransportError> {
        Ok(TlsServerBootstrap {
            acceptor: TlsAcceptor::from(Arc::new(conf.server_config()?)),
            timeout: conf.handshake_timeout,
        })
    }
}

impl ServerBootstrap for TlsServerBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.acceptor.accept(io)).await {
                Ok(Ok(s)) => Ok(Box::new(s) as BoxedIo),
                Ok(Err(e)) => Err(tls_failed(peer, e.to_string())),
                Err(_) => Err(tls_failed(
                    peer,
                    format!("no handshake within {} ms", self.timeout.as_millis()),
                )),
            }
        })
    }
}

/// The client side of TLS: every connection a client factory opens does the handshake first.
#[derive(Clone)]
pub struct TlsClientBootstrap {
    connector: TlsConnector,
    timeout: Duration,
}

impl fmt::Debug for TlsClientBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientBootstrap").finish_non_exhaustive()
    }
}

impl TlsClientBootstrap {
    /// A bootstrap from `conf` (needs something to trust).
    pub fn new(conf: &TlsConf) -> Result<Self, TransportError> {
        Ok(TlsClientBootstrap {
            connector: TlsConnector::from(Arc::new(conf.client_config()?)),
            timeout: conf.handshake_timeout,
        })
    }

    async fn handshake(
        &self,
        name: ServerName<'static>,
        peer: SocketAddr,
        io: BoxedIo,
    ) -> Result<BoxedIo, TransportError> {
        match tokio::time::timeout(self.timeout, self.connector.connect(name, io)).await {
            Ok(Ok(s)) => Ok(Box::new(s) as BoxedIo),
            Ok(Err(e)) => Err(tls_failed(peer, e.to_string())),
            Err(_) => Err(tls_failed(
                peer,
                format!("no handshake within {} ms", self.timeout.as_millis()),
            )),
        }
    }
}

impl ClientBootstrap for TlsClientBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(self.handshake(ServerName::IpAddress(peer.ip().into()), peer, io))
    }

    fn bootstrap_to<'a>(
        &'a self,
        host: &'a str,
        peer: SocketAddr,
        io: BoxedIo,
    ) -> BootstrapFuture<'a> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match ServerName::try_from(host.to_string()) {
            Ok(name) => Box::pin(self.handshake(name, peer, io)),
            Err(_) => self.bootstrap(peer, io),
        }
    }
}
