//! TLS for the web part: the Rampart server certificate, and an
//! *optional* client certificate checked against Rampart's CA (and CRL),
//! reloadable without a restart like the broker's acceptor.
//!
//! Browsers, API clients and enrolling devices present no certificate and
//! are served as before; a device downloading firmware presents its own,
//! which the download route then checks against the registry (docs/ota.md
//! §4). A certificate that is presented but does not verify (another CA,
//! expired, on the CRL) fails the handshake, as it would at the broker.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration cannot be built: the certificate or key is not
/// usable.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up HTTPS: {0}")]
pub struct TlsError(String);

/// What client certificates are checked against: Rampart's client CA
/// bundle (issuing CA and root) and its current CRL, if published.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTrust {
    /// Trust anchors for client certificates, PEM.
    pub ca_pem: String,
    /// The current CRL, PEM.
    pub crl_pem: Option<String>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("crl", &self.crl_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The peer's verified leaf certificate (DER), put into every request of
/// a connection that presented one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

/// The acceptor in use, swapped atomically when the certificate changes.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<TlsAcceptor>>,
    clients: Arc<ArcSwap<Option<ClientTrust>>>,
    tls12: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("tls12", &self.tls12)
            .field("client_certificates", &self.clients.load().is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// An acceptor presenting `chain_pem` (server certificate, then its
    /// issuers) with `key_pem`; TLS 1.3, and 1.2 too when `tls12`. It asks
    /// for no client certificate.
    pub fn new(chain_pem: &str, key_pem: &str, tls12: bool) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(acceptor(
                chain_pem, key_pem, tls12, None,
            )?)),
            clients: Arc::new(ArcSwap::from_pointee(None)),
            tls12,
        })
    }

    /// [`ServerTls::new`] that also asks every client for an optional
    /// certificate, verified against `trust`.
    pub fn with_client_trust(
        chain_pem: &str,
        key_pem: &str,
        tls12: bool,
        trust: ClientTrust,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(acceptor(
                chain_pem,
                key_pem,
                tls12,
                Some(&trust),
            )?)),
            clients: Arc::new(ArcSwap::from_pointee(Some(trust))),
            tls12,
        })
    }

    /// Replaces the certificate, keeping the client trust; connections in
    /// progress keep the old one.
    pub fn reload(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let trust = self.clients.load_full();
        self.current.store(Arc::new(acceptor(
            chain_pem,
            key_pem,
            self.tls12,
            Option::as_ref(&trust),
        )?));
        Ok(())
    }

    /// Replaces the certificate and the client trust (a new CRL, a new
    /// CA); connections in progress keep the old ones.
    pub fn reload_with_client_trust(
        &self,
        chain_pem: &str,
        key_pem: &str,
        trust: ClientTrust,
    ) -> Result<(), TlsError> {
        let next = acceptor(chain_pem, key_pem, self.tls12, Some(&trust))?;
        self.clients.store(Arc::new(Some(trust)));
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.current.load_full()
    }
}

/// The optional client verifier of `trust`: chain to its CA, end-entity
/// certificate not on its CRL; no certificate at all is allowed.
fn client_verifier(
    trust: &ClientTrust,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError(format!("client CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("client CA: {e}")))?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = match &trust.crl_pem {
        Some(pem) => CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError(format!("CRL: {e}")))?,
        None => Vec::new(),
    };
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated();
    if !crls.is_empty() {
        // As at the broker: the CRL lists leaf certificates and is signed
        // by the issuing CA; CA certificates are managed out of band.
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    verifier.build().map_err(|e| TlsError(e.to_string()))
}

fn acceptor(
    chain_pem: &str,
    key_pem: &str,
    tls12: bool,
    clients: Option<&ClientTrust>,
) -> Result<TlsAcceptor, TlsError> {
    let rampart_pki::ServerIdentity { chain, key } =
        rampart_pki::server_identity(chain_pem, key_pem).map_err(|e| TlsError(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match clients {
        Some(trust) => builder.with_client_cert_verifier(client_verifier(trust, &provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(e.to_string()))?;
    // HTTP/2 first for browsers; HTTP/1.1 for small device stacks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
