//! TLS for the simulated devices: the server is verified against the
//! `--ca` bundle only (no public roots, no insecure mode), and each device
//! presents its own certificate on the MQTT port.

use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use rampart_proto::DeviceId;

/// Why a TLS configuration, key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--ca` file is unreadable or holds no usable certificate.
    #[error("CA bundle {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A PEM certificate or key from the state dir or the server is unusable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which object.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration for '{id}': {source}")]
    Config {
        /// The device.
        id: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// Key or CSR generation failed.
    #[error("key or CSR for '{id}': {source}")]
    Key {
        /// The device.
        id: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
}

/// The trust anchors every simulated device uses to verify the server.
#[derive(Debug, Clone)]
pub struct ServerTrust {
    roots: Arc<RootCertStore>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTrust {
    /// Loads the CA certificates of the PEM file at `path` (`rampart ca export`).
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let err = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err(
                "holds no PEM certificate (give the output of `rampart ca export`)".to_owned(),
            ));
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    /// The HTTPS client configuration for enrollment (no client certificate).
    pub fn https_config(&self) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                id: "enrollment".to_owned(),
                source,
            })?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The MQTT client configuration presenting `chain_pem` with `key_pem`.
    pub fn device_config(
        &self,
        id: &DeviceId,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: format!("certificate of '{id}'"),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: format!("certificate of '{id}'"),
                reason: "no certificate in the PEM".to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: format!("key of '{id}'"),
            reason: e.to_string(),
        })?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(Arc::clone(&self.roots))
                    .with_client_auth_cert(chain, key)
            })
            .map_err(|source| TlsError::Config {
                id: id.to_string(),
                source,
            })?;
        Ok(Arc::new(config))
    }
}

/// A new P-256 key (made on the device; the server never sees it), as PEM.
pub fn new_key(id: &DeviceId) -> Result<String, TlsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map(|k| k.serialize_pem())
        .map_err(|source| TlsError::Key {
            id: id.to_string(),
            source,
        })
}

/// A CSR (PEM) for `key_pem` with CN = the device id.
pub fn csr(id: &DeviceId, key_pem: &str) -> Result<String, TlsError> {
    let key_err = |source| TlsError::Key {
        id: id.to_string(),
        source,
    };
    let key = KeyPair::from_pem(key_pem).map_err(key_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(key_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    params.distinguished_name = dn;
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(key_err)
}

/// What the device reads from a certificate it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertFacts {
    /// Start of validity, Unix ms.
    pub not_before_ms: u64,
    /// End of validity, Unix ms.
    pub not_after_ms: u64,
}

/// Reads the first certificate of `chain_pem`, checks that its CN is `id`,
/// and returns its validity.
pub fn cert_facts(id: &DeviceId, chain_pem: &str) -> Result<CertFacts, TlsError> {
    let err = |reason: String| TlsError::Pem {
        what: format!("certificate for '{id}'"),
        reason,
    };
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| err("no certificate in the PEM".to_owned()))?
        .map_err(|e| err(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| err(format!("not X.509: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if cn != Some(id.as_str()) {
        return Err(err(format!(
            "its CN is {cn:?}, not the device id; refusing to use it"
        )));
    }
    let ms = |t: i64| u64::try_from(t).unwrap_or(0).saturating_mul(1000);
    Ok(CertFacts {
        not_before_ms: ms(cert.validity().not_before.timestamp()),
        not_after_ms: ms(cert.validity().not_after.timestamp()),
    })
}

/// The leaf certificate followed by the chain, without repeating the leaf
/// when the server's chain already starts with it.
pub fn join_chain(certificate: &str, chain: &str) -> String {
    let first = |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).next();
    let same = match (first(certificate), first(chain)) {
        (Some(Ok(a)), Some(Ok(b))) => a == b,
        _ => false,
    };
    if same || chain.trim().is_empty() {
        if same {
            chain.to_owned()
        } else {
            certificate.to_owned()
        }
    } else {
        let mut out = certificate.trim_end().to_owned();
        out.push('\n');
        out.push_str(chain.trim_start());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_the_device_and_keys_are_p256() {
        let id = DeviceId::parse("sim-abc-0001").expect("id");
        let key = new_key(&id).expect("key");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let csr_pem = csr(&id, &key).expect("csr");
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).expect("parse");
        let cn = parsed
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .cloned();
        assert_eq!(
            cn,
            Some(rcgen::DnValue::Utf8String("sim-abc-0001".to_owned()))
        );
        assert!(csr(&id, "not a key").is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().expect("tmp");
        let empty = tmp.path().join("ca.pem");
        std::fs::write(&empty, "nothing here").expect("write");
        let err = ServerTrust::from_file(&empty).expect_err("empty");
        assert!(err.to_string().contains("rampart ca export"), "{err}");
        assert!(ServerTrust::from_file(&tmp.path().join("absent.pem")).is_err());
    }

    #[test]
    fn chains_are_joined_without_repeating_the_leaf() {
        let id = DeviceId::parse("d").expect("id");
        let key = KeyPair::from_pem(&new_key(&id).expect("key")).expect("key");
        let leaf = CertificateParams::new(vec!["a".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let other = CertificateParams::new(vec!["b".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let count = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
        assert_eq!(count(&join_chain(&leaf, &other)), 2);
        let with_leaf = format!("{leaf}{other}");
        assert_eq!(count(&join_chain(&leaf, &with_leaf)), 2);
        assert_eq!(count(&join_chain(&leaf, "")), 1);
    }
}
