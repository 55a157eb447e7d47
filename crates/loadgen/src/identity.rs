//! Client identities: a directory of `<id>.crt` / `<id>.key` PEM pairs and
//! the `ca.crt` trust bundle, as `rampart device create --out DIR` and
//! `rampart service create NAME --out DIR` write them. The identity (the
//! certificate CN, used as MQTT client id) is the file stem: Rampart names
//! the files after the CN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::LoadgenError;

/// One client identity: certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// The identity (certificate CN), also the MQTT client id.
    pub id: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A directory of identities with its CA bundle.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
    roots: Arc<RootCertStore>,
}

fn identity_err(path: &Path, reason: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Identity {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl CertDir {
    /// Open a directory holding `ca.crt` and `<id>.crt`/`<id>.key` pairs.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LoadgenError> {
        let dir = dir.into();
        let ca = dir.join("ca.crt");
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&ca).map_err(|e| identity_err(&ca, e))?;
        for cert in certs {
            let cert = cert.map_err(|e| identity_err(&ca, e))?;
            roots.add(cert).map_err(|e| identity_err(&ca, e))?;
        }
        if roots.is_empty() {
            return Err(identity_err(&ca, "no certificate in the CA bundle"));
        }
        Ok(CertDir {
            dir,
            roots: Arc::new(roots),
        })
    }

    /// Identity names with both a `.crt` and a `.key`, sorted, without `ca`.
    pub fn ids(&self) -> Result<Vec<String>, LoadgenError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| identity_err(&self.dir, e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| identity_err(&self.dir, e))?.path();
            if path.extension().is_some_and(|e| e == "crt")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && stem != "ca"
                && path.with_extension("key").is_file()
            {
                ids.push(stem.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Device identities: every identity except `exclude` (the subscriber),
    /// at least `n` of them, the first `n` in sorted order.
    pub fn device_ids(&self, n: usize, exclude: &str) -> Result<Vec<String>, LoadgenError> {
        let ids: Vec<String> = self.ids()?.into_iter().filter(|i| i != exclude).collect();
        if ids.len() < n {
            return Err(LoadgenError::Config(format!(
                "{n} device identities needed, {} found in {}",
                ids.len(),
                self.dir.display()
            )));
        }
        Ok(ids.into_iter().take(n).collect())
    }

    /// Load one identity's certificate chain and key.
    pub fn load(&self, id: &str) -> Result<Identity, LoadgenError> {
        let crt = self.dir.join(format!("{id}.crt"));
        let key_path = self.dir.join(format!("{id}.key"));
        let chain = CertificateDer::pem_file_iter(&crt)
            .map_err(|e| identity_err(&crt, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| identity_err(&crt, e))?;
        if chain.is_empty() {
            return Err(identity_err(&crt, "no certificate in the file"));
        }
        let key =
            PrivateKeyDer::from_pem_file(&key_path).map_err(|e| identity_err(&key_path, e))?;
        Ok(Identity {
            id: id.to_string(),
            chain,
            key,
        })
    }

    /// A rustls client configuration presenting `identity`. Without
    /// `resumption` every connection makes a full handshake.
    pub fn client_config(
        &self,
        identity: &Identity,
        resumption: bool,
    ) -> Result<Arc<ClientConfig>, LoadgenError> {
        let tls_err = |source| LoadgenError::TlsConfig {
            id: identity.id.clone(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(tls_err)?;
        if !resumption {
            config.resumption = Resumption::disabled();
        }
        Ok(Arc::new(config))
    }
}
