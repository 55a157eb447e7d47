//! Certificate signing requests: decoding, key policy, proof of possession.
//!
//! Only three things are taken from a CSR: the common name (which must be a
//! valid device id), the public key (which must be of an accepted type and
//! size), and the proof that the requester holds the private key (the CSR's
//! self-signature). Requested extensions, SANs and other subject attributes
//! are ignored: the CA decides what goes into a certificate.

use rampart_proto::DeviceId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::PkiError;
use crate::certificate::pem_blocks;

/// Largest CSR PEM accepted; real ones are well under 2 KiB.
const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (what the signature verifier supports).
const MAX_RSA_BITS: usize = 8192;

/// A CSR whose key type, self-signature and common name have been checked:
/// only [`crate::Pki::verify_device_csr`] makes one, and only it can be signed.
#[derive(Debug)]
pub struct VerifiedCsr {
    /// The requested identity (the CSR's CN).
    pub(crate) id: DeviceId,
    /// The requester's public key, ready to be certified.
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
    /// SHA-256 of the public key's DER SubjectPublicKeyInfo, lowercase hex.
    pub(crate) public_key_sha256: String,
}

impl VerifiedCsr {
    /// The identity the CSR asks for (its common name).
    pub fn id(&self) -> &DeviceId {
        &self.id
    }

    /// SHA-256 of its public key's DER SubjectPublicKeyInfo, lowercase hex:
    /// compare with a certificate's key to refuse a reused key.
    pub fn public_key_sha256(&self) -> &str {
        &self.public_key_sha256
    }
}

/// Decodes and checks a PEM CSR; see the module documentation for what is taken from it.
pub(crate) fn verify(csr_pem: &str) -> Result<VerifiedCsr, PkiError> {
    const EXPECTED: &str = "certificate signing request (CSR)";
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(PkiError::MalformedPem {
            expected: EXPECTED,
            reason: format!(
                "input is {} bytes, at most {MAX_CSR_PEM_BYTES} are accepted",
                csr_pem.len()
            ),
        });
    }
    let blocks = pem_blocks(
        csr_pem,
        &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
        EXPECTED,
    )?;
    let [der] = blocks.as_slice() else {
        return Err(PkiError::MalformedPem {
            expected: EXPECTED,
            reason: format!("found {} CSRs; give exactly one", blocks.len()),
        });
    };
    let csr = match X509CertificationRequest::from_der(der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(PkiError::MalformedCsr {
                reason: "trailing bytes after the request".to_owned(),
            });
        }
        Err(e) => {
            return Err(PkiError::MalformedCsr {
                reason: format!("it does not decode as PKCS#10 ({e})"),
            });
        }
    };
    let info = &csr.certification_request_info;

    // Key policy first: a weak key is refused with a message about the key,
    // not about a signature the verifier would not even try.
    check_key(&info.subject_pki)?;
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => PkiError::MalformedCsr {
            reason: format!(
                "its signature algorithm {} is not supported; sign it with SHA-256 or SHA-384",
                csr.signature_algorithm.algorithm.to_id_string()
            ),
        },
        _ => PkiError::CsrSignatureInvalid,
    })?;

    let common_names: Vec<_> = info.subject.iter_common_name().collect();
    let [cn] = common_names.as_slice() else {
        return Err(PkiError::CsrCommonNameCount {
            found: common_names.len(),
        });
    };
    let cn = match cn.as_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(cn.as_slice()).into_owned(),
    };
    let id = DeviceId::parse(&cn).map_err(|source| PkiError::CsrInvalidCommonName {
        cn: cn.chars().take(80).collect(),
        source,
    })?;

    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|e| {
        PkiError::MalformedCsr {
            reason: format!("its public key cannot be re-encoded ({e})"),
        }
    })?;
    Ok(VerifiedCsr {
        id,
        public_key,
        public_key_sha256: crate::fingerprint_sha256(info.subject_pki.raw),
    })
}

/// Accepts ECDSA P-256 and P-384, Ed25519, and RSA of 2048 to 8192 bits.
pub(crate) fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), PkiError> {
    let refuse = |found: String| Err(PkiError::UnsupportedCsrKey { found });
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => refuse(format!("ECDSA on curve {}", curve_name(&c.to_id_string()))),
            None => refuse("ECDSA with explicit (unnamed) curve parameters".to_owned()),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_bits(rsa.modulus),
            _ => return refuse("RSA with a malformed public key".to_owned()),
        };
        return if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            Ok(())
        } else if bits < MIN_RSA_BITS {
            refuse(format!("RSA {bits} bits"))
        } else {
            refuse(format!(
                "RSA {bits} bits, more than the {MAX_RSA_BITS} supported"
            ))
        };
    }
    refuse(key_type_name(&algorithm.to_id_string()))
}

/// Bit length of a big-endian unsigned modulus (DER may prefix a zero byte).
fn rsa_bits(modulus: &[u8]) -> usize {
    let significant: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(start) => modulus.get(start..).unwrap_or_default(),
        None => &[],
    };
    match significant.first() {
        Some(&top) => significant.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

fn curve_name(oid: &str) -> String {
    let name = match oid {
        "1.3.132.0.35" => "secp521r1 (P-521)",
        "1.3.132.0.10" => "secp256k1",
        "1.2.840.10045.3.1.1" => "prime192v1 (P-192)",
        "1.3.132.0.33" => "secp224r1 (P-224)",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        "1.2.156.10197.1.301" => "SM2",
        _ => return oid.to_owned(),
    };
    name.to_owned()
}

fn key_type_name(oid: &str) -> String {
    let name = match oid {
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519 (a key-agreement key, which cannot sign)",
        "1.3.101.111" => "X448 (a key-agreement key, which cannot sign)",
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        "1.2.840.10040.4.1" => "DSA",
        _ => return format!("of an unknown type (OID {oid})"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

    use super::*;

    fn csr_for(cn: Option<&str>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .serialize_request(key)
            .and_then(|csr| csr.pem())
            .expect("csr")
    }

    #[test]
    fn accepts_p384_and_ed25519() {
        for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).expect("keygen");
            let csr = verify(&csr_for(Some("dev-1"), &key)).expect("accepted");
            assert_eq!(csr.id.as_str(), "dev-1");
        }
    }

    #[test]
    fn verified_csr_hashes_the_public_key() {
        let key = KeyPair::generate().expect("keygen");
        let a = verify(&csr_for(Some("dev-1"), &key)).expect("accepted");
        let b = verify(&csr_for(Some("dev-1"), &key)).expect("accepted");
        assert_eq!(a.id.as_str(), "dev-1");
        assert_eq!(
            a.public_key_sha256, b.public_key_sha256,
            "same key, same hash"
        );
        assert_eq!(
            a.public_key_sha256,
            crate::fingerprint_sha256(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        let other = KeyPair::generate().expect("keygen");
        let c = verify(&csr_for(Some("dev-1"), &other)).expect("accepted");
        assert_ne!(a.public_key_sha256, c.public_key_sha256);
    }

    #[test]
    fn refuses_missing_common_name() {
        let key = KeyPair::generate().expect("keygen");
        let err = verify(&csr_for(None, &key)).expect_err("no CN");
        assert!(
            matches!(err, PkiError::CsrCommonNameCount { found: 0 }),
            "{err}"
        );
    }

    #[test]
    fn refuses_two_csrs_in_one_input() {
        let key = KeyPair::generate().expect("keygen");
        let one = csr_for(Some("dev-1"), &key);
        let err = verify(&format!("{one}{one}")).expect_err("two CSRs");
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn refuses_oversized_input() {
        let err = verify(&"A".repeat(MAX_CSR_PEM_BYTES + 1)).expect_err("too big");
        assert!(matches!(err, PkiError::MalformedPem { .. }), "{err}");
    }

    #[test]
    fn counts_rsa_bits() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x01, 0xff]), 9);
        assert_eq!(rsa_bits(&[0, 0]), 0);
        let mut modulus = vec![0u8; 257];
        modulus[1] = 0xc1;
        assert_eq!(rsa_bits(&modulus), 2048);
    }

    #[test]
    fn names_unusual_keys() {
        assert_eq!(curve_name("1.3.132.0.35"), "secp521r1 (P-521)");
        assert_eq!(key_type_name("1.3.101.113"), "Ed448");
        assert!(key_type_name("1.2.3").contains("OID 1.2.3"));
    }
}
