//! TLS for the web part: the Rampart server certificate, no client
//! certificate (browsers and enrolling devices have none yet), reloadable
//! without a restart like the broker's acceptor.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration cannot be built: the certificate or key is not
/// usable.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up HTTPS: {0}")]
pub struct TlsError(String);

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
    let rampart_pki::ServerIdentity { chain, key } =
        rampart_pki::server_identity(chain_pem, key_pem).map_err(|e| TlsError(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(e.to_string()))?;
    // HTTP/2 first for browsers; HTTP/1.1 for small device stacks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
