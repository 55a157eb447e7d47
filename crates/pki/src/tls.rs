//! The server identity in the form TLS libraries take: the broker and the
//! web part present the same certificate chain and key, decoded once here.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;

/// A server certificate chain and its private key, DER-encoded.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The server certificate, then its issuers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Decodes a PEM certificate chain (at least one certificate) and key.
pub fn server_identity(chain_pem: &str, key_pem: &str) -> Result<ServerIdentity, PkiError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::MalformedPem {
            expected: "server certificate chain",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PkiError::MalformedPem {
            expected: "server certificate chain",
            reason: "no certificate found".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::MalformedPem {
            expected: "server private key",
            reason: e.to_string(),
        })?;
    Ok(ServerIdentity { chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_chain_and_key_and_refuses_garbage() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let id = server_identity(&cert.pem(), &key.serialize_pem()).expect("decodes");
        assert_eq!(id.chain.len(), 1);
        for (chain, k) in [
            ("", key.serialize_pem()),
            ("garbage", key.serialize_pem()),
            (&cert.pem() as &str, "garbage".to_owned()),
        ] {
            assert!(matches!(
                server_identity(chain, &k),
                Err(PkiError::MalformedPem { .. })
            ));
        }
    }
}
