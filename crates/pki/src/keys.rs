//! Private keys: generation, PKCS#8 PEM encoding and passphrase encryption.
//!
//! Keys are stored as standard PKCS#8 (`PRIVATE KEY`), or when a passphrase
//! is set as encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`, PBES2 with scrypt and
//! AES-256-CBC), so `openssl pkey -in ca.key -passin ...` reads them. Imported
//! keys may also be SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`), as
//! Vault and older OpenSSL commands write them; they are rewrapped as PKCS#8.

use pkcs8::der::Encode;
use pkcs8::der::asn1::{AnyRef, OctetStringRef};
use pkcs8::der::pem::{self, LineEnding};
use pkcs8::pkcs5::{self, pbes2, scrypt};
use pkcs8::{
    AlgorithmIdentifierRef, EncryptedPrivateKeyInfoRef, ObjectIdentifier, PrivateKeyInfoRef,
};
use rand::Rng;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::der_parser;
use zeroize::Zeroizing;

use crate::PkiError;

const PKCS8_LABEL: &str = "PRIVATE KEY";
const ENCRYPTED_PKCS8_LABEL: &str = "ENCRYPTED PRIVATE KEY";
const SEC1_LABEL: &str = "EC PRIVATE KEY";
const PKCS1_LABEL: &str = "RSA PRIVATE KEY";

// scrypt N = 2^14, r = 8, p = 1 (16 MiB): OpenSSL's own `-scrypt` default.
// OpenSSL 3 refuses to decrypt anything above its 32 MiB scrypt memory limit,
// which N = 2^15 with r = 8 just exceeds.
const SCRYPT_LOG_N: u8 = 14;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Generates an ECDSA P-256 key, the one key type every Rampart part and device speaks.
pub(crate) fn generate() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::crypto("generate an ECDSA P-256 key", e))
}

/// PKCS#8 PEM of `key`, encrypted with `passphrase` when given.
pub(crate) fn to_pem(
    key: &KeyPair,
    passphrase: Option<&str>,
) -> Result<Zeroizing<String>, PkiError> {
    let Some(passphrase) = passphrase else {
        return pem::encode_string(PKCS8_LABEL, LineEnding::LF, key.serialized_der())
            .map(Zeroizing::new)
            .map_err(|e| PkiError::crypto("encode a private key as PEM", e));
    };
    let info = PrivateKeyInfoRef::try_from(key.serialized_der())
        .map_err(|e| PkiError::crypto("read a generated private key", e))?;
    let mut rng = rand::rng();
    let salt: [u8; 16] = rng.random();
    let iv: [u8; 16] = rng.random();
    let cost = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
        .map_err(|e| PkiError::crypto("set up scrypt", e))?;
    let scheme = pbes2::Parameters::generate_scrypt_aes256cbc(cost, &salt, iv)
        .map_err(|e| PkiError::crypto("set up key encryption", e))?;
    info.encrypt_with_params(scheme, passphrase.as_bytes())
        .and_then(|doc| Ok(doc.to_pem(ENCRYPTED_PKCS8_LABEL, LineEnding::LF)?))
        .map_err(|e| PkiError::crypto("encrypt a private key", e))
}

/// Whether a stored key PEM is passphrase-encrypted.
pub(crate) fn is_encrypted(pem: &str) -> bool {
    pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
}

/// Reads a private key PEM; `what` names it in errors ("ca.key in ...", "the supplied key").
pub(crate) fn from_pem(
    pem: &str,
    passphrase: Option<&str>,
    what: &str,
) -> Result<KeyPair, PkiError> {
    let unusable = |reason: String| PkiError::UnusableKey {
        key: what.to_owned(),
        reason,
    };
    if pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(unusable(
            "it uses the legacy OpenSSL PEM encryption; convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -in OLD -out NEW`"
                .to_owned(),
        ));
    }
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .find(|block| {
            block
                .as_ref()
                .map_or(true, |b| b.label.ends_with("PRIVATE KEY"))
        })
        .ok_or_else(|| unusable("no '-----BEGIN PRIVATE KEY-----' block found".to_owned()))?
        .map_err(|e| unusable(format!("the PEM encoding is broken ({e})")))?;
    let label = block.label;
    let der = Zeroizing::new(block.contents);
    let pkcs8 = match label.as_str() {
        PKCS8_LABEL => der,
        ENCRYPTED_PKCS8_LABEL => decrypt(&der, passphrase, what)?,
        SEC1_LABEL => sec1_to_pkcs8(&der).map_err(unusable)?,
        PKCS1_LABEL => wrap_pkcs8(RSA_ENCRYPTION, AnyRef::NULL, &der).map_err(unusable)?,
        other => {
            return Err(unusable(format!(
                "a '{other}' PEM block is not supported; give a PKCS#8 'PRIVATE KEY'"
            )));
        }
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| {
        unusable(format!(
            "it is not an ECDSA P-256/P-384, Ed25519 or RSA (2048 to 8192 bits) key ({e})"
        ))
    })
}

fn decrypt(
    der: &[u8],
    passphrase: Option<&str>,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let Some(passphrase) = passphrase else {
        return Err(PkiError::PassphraseRequired {
            key: what.to_owned(),
        });
    };
    let info = EncryptedPrivateKeyInfoRef::try_from(der).map_err(|e| PkiError::UnusableKey {
        key: what.to_owned(),
        reason: format!("the encrypted key is damaged ({e})"),
    })?;
    match info.decrypt(passphrase.as_bytes()) {
        Ok(doc) => Ok(Zeroizing::new(doc.as_bytes().to_vec())),
        Err(pkcs8::Error::EncryptedPrivateKey(
            e @ (pkcs5::Error::UnsupportedAlgorithm { .. } | pkcs5::Error::NoPbes1CryptSupport),
        )) => Err(PkiError::UnusableKey {
            key: what.to_owned(),
            reason: format!(
                "its encryption scheme is not supported ({e}); re-encrypt it with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
            ),
        }),
        // A wrong passphrase shows as a padding error, or rarely as garbage
        // that happens to have valid padding and then fails to decode.
        Err(_) => Err(PkiError::WrongPassphrase {
            key: what.to_owned(),
        }),
    }
}

/// Rewraps a SEC1 `ECPrivateKey` (RFC 5915) as PKCS#8.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let broken = |e: &dyn std::fmt::Display| format!("the EC private key is damaged ({e})");
    let (_, key) = der_parser::parse_der(sec1).map_err(|e| broken(&e))?;
    let fields = key.as_sequence().map_err(|e| broken(&e))?;
    let scalar = fields
        .get(1)
        .ok_or_else(|| broken(&"no private key field"))?
        .as_slice()
        .map_err(|e| broken(&e))?;
    // The curve follows from the scalar's size; ring checks it against the
    // optional curve parameter inside the structure.
    let curve = match scalar.len() {
        32 => SECP256R1,
        48 => SECP384R1,
        n => {
            return Err(format!(
                "EC keys of {} bits are not supported; use P-256 or P-384",
                n * 8
            ));
        }
    };
    wrap_pkcs8(ID_EC_PUBLIC_KEY, AnyRef::from(&curve), sec1)
}

fn wrap_pkcs8(
    algorithm: ObjectIdentifier,
    parameters: AnyRef<'_>,
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let private_key = OctetStringRef::new(key).map_err(|e| e.to_string())?;
    let info = PrivateKeyInfoRef::new(
        AlgorithmIdentifierRef {
            oid: algorithm,
            parameters: Some(parameters),
        },
        private_key,
    );
    info.to_der().map(Zeroizing::new).map_err(|e| e.to_string())
}

/// Whether `key` is the private half of the public key `spki_key_bits`
/// (the subjectPublicKey BIT STRING contents of a certificate).
pub(crate) fn matches_public_key(key: &KeyPair, spki_key_bits: &[u8]) -> bool {
    key.public_key_raw() == spki_key_bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_key_round_trips() {
        let key = generate().expect("keygen");
        let pem = to_pem(&key, None).expect("pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = from_pem(&pem, None, "k").expect("parse");
        assert_eq!(back.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn encrypted_key_needs_the_right_passphrase() {
        let key = generate().expect("keygen");
        let pem = to_pem(&key, Some("correct horse")).expect("pem");
        assert!(is_encrypted(&pem));
        let back = from_pem(&pem, Some("correct horse"), "k").expect("decrypt");
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert!(matches!(
            from_pem(&pem, None, "k"),
            Err(PkiError::PassphraseRequired { .. })
        ));
        assert!(matches!(
            from_pem(&pem, Some("battery staple"), "k"),
            Err(PkiError::WrongPassphrase { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = from_pem("hello", None, "the supplied key").expect_err("not a key");
        assert!(err.to_string().contains("the supplied key"), "{err}");
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            from_pem(cert_only, None, "k"),
            Err(PkiError::UnusableKey { .. })
        ));
    }
}
