//! TLS for the web part: the Rampart server certificate, no client
//! certificate (browsers and enrolling devices have none yet), reloadable
//! without a restart like the broker's acceptor.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

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

/// The acceptor in use, swapped atomically when the certificate changes.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<TlsAcceptor>>,
    tls12: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("tls12", &self.tls12)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// An acceptor presenting `chain_pem` (server certificate, then its
    /// issuers) with `key_pem`; TLS 1.3, and 1.2 too when `tls12`.
    pub fn new(chain_pem: &str, key_pem: &str, tls12: bool) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(acceptor(chain_pem, key_pem, tls12)?)),
            tls12,
        })
    }

    /// Replaces the certificate; connections in progress keep the old one.
    pub fn reload(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        self.current
            .store(Arc::new(acceptor(chain_pem, key_pem, self.tls12)?));
        Ok(())
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.current.load_full()
    }
}

fn acceptor(chain_pem: &str, key_pem: &str, tls12: bool) -> Result<TlsAcceptor, TlsError> {
    let pem_err = |what: &'static str| {
        move |e: rustls_pki_types::pem::Error| TlsError::Pem {
            what,
            why: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(pem_err("server certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "server certificate",
            why: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("server key"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    // HTTP/2 first for browsers; HTTP/1.1 for small device stacks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
