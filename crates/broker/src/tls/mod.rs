//! TLS for the broker: rustls with a required client certificate checked
//! against Rampart's CA and current CRL, reloadable without a restart.

mod stream;

pub(crate) use stream::{TlsStream, accept};

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

/// The PEM material a TLS configuration is built from.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Server certificate followed by its chain.
    pub server_chain_pem: String,
    /// Server private key.
    pub server_key_pem: String,
    /// Trust anchors for client certificates (issuing CA and root).
    pub client_ca_pem: String,
    /// The current CRL, if one is published.
    pub crl_pem: Option<String>,
    /// Also offer TLS 1.2.
    pub tls12: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("tls12", &self.tls12)
            .field("crl", &self.crl_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input does not hold what it should.
    #[error("{what}: {why}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration: TLS 1.3 (and 1.2 if asked), client
/// certificate required, chain checked against the CA, end-entity checked
/// against the CRL.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_err = |what: &'static str| {
        move |e: rustls_pki_types::pem::Error| TlsError::Pem {
            what,
            why: e.to_string(),
        }
    };
    let rampart_pki::ServerIdentity { chain, key } =
        rampart_pki::server_identity(&m.server_chain_pem, &m.server_key_pem).map_err(|e| {
            TlsError::Pem {
                what: "server identity",
                why: e.to_string(),
            }
        })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(m.client_ca_pem.as_bytes()) {
        let cert = cert.map_err(pem_err("client CA"))?;
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "client CA",
            why: e.to_string(),
        })?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = match &m.crl_pem {
        Some(pem) => CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem_err("CRL"))?,
        None => Vec::new(),
    };
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        // Our CRL is signed by the issuing CA and lists leaf certificates;
        // the CA certificates themselves are managed out of band.
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if m.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    // Devices reconnect often; resumption saves them a full handshake.
    // Stateless tickets (sealed with keys that live in this config and
    // rotate every 6 hours) keep nothing per device on the server: a
    // fleet of any size resumes in constant memory, where the stateful
    // cache this replaced held about 2 KiB per ticket (the client's
    // certificate chain), two tickets per connection, and covered 2,048
    // devices. A certificate or CRL reload builds a new config with new
    // keys, so no session outlives a revocation; the identity is checked
    // against the registry at every CONNECT anyway.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The server configuration in use, swapped atomically when certificates
/// or the CRL change.
#[derive(Clone)]
pub struct ReloadableConfig {
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ReloadableConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadableConfig")
    }
}

impl ReloadableConfig {
    /// Builds the first configuration.
    pub fn new(m: &TlsMaterial) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(ArcSwap::new(server_config(m)?)),
        })
    }

    /// Replaces the configuration; connections in progress keep the old
    /// one.
    pub fn reload(&self, m: &TlsMaterial) -> Result<(), TlsError> {
        self.current.store(server_config(m)?);
        Ok(())
    }

    /// The configuration for a new connection.
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }
}
