//! Firmware signing keys and their files.
//!
//! A secret key is written as PEM `PRIVATE KEY` (PKCS#8 v1, RFC 8410), a
//! public key as PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410): the
//! formats `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`
//! use, so keys can be inspected, made or kept with standard tools. The
//! secret key file is created with mode 0600 and never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use ed25519_dalek::Signer;
use rampart_core::ota::KeyId;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::OtaError;

/// DER of a PKCS#8 v1 Ed25519 private key up to the 32-byte seed (RFC 8410 §7).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an Ed25519 SubjectPublicKeyInfo up to the 32-byte key (RFC 8410 §4).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const PRIVATE_LABEL: &str = "PRIVATE KEY";
const PUBLIC_LABEL: &str = "PUBLIC KEY";

/// An Ed25519 firmware signing key (secret; zeroed on drop).
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key that verifies firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// PEM text (PKCS#8).
    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(self.0.as_bytes());
        Zeroizing::new(pem(PRIVATE_LABEL, &der))
    }

    /// Parses PEM text (PKCS#8 Ed25519).
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, OtaError> {
        let der = Zeroizing::new(unpem(
            text,
            PRIVATE_LABEL,
            path,
            "an Ed25519 private key (PEM PKCS#8)",
        )?);
        let seed: [u8; 32] = der
            .strip_prefix(&PKCS8_PREFIX)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| OtaError::KeyFormat {
                path: path.to_owned(),
                expected: "an Ed25519 private key (PEM PKCS#8)",
                why: "the key is not a plain PKCS#8 v1 Ed25519 key".into(),
            })?;
        let seed = Zeroizing::new(seed);
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<Self, OtaError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| OtaError::io("read", path, e))?,
        );
        Self::from_pem(&text, path)
    }
}

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// Its 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Its key id (first 8 bytes of SHA-256).
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.0)
    }

    /// Lowercase hex of the 32 bytes (how the registry stores it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`PublicKey::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        Some(PublicKey(hex::decode(text).ok()?.try_into().ok()?))
    }

    /// PEM text (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        let mut der = Vec::with_capacity(44);
        der.extend_from_slice(&SPKI_PREFIX);
        der.extend_from_slice(&self.0);
        pem(PUBLIC_LABEL, &der)
    }

    /// Parses PEM text (SPKI Ed25519); `path` names it in errors.
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, OtaError> {
        const EXPECTED: &str = "an Ed25519 public key (PEM SubjectPublicKeyInfo)";
        let der = unpem(text, PUBLIC_LABEL, path, EXPECTED)?;
        let key: [u8; 32] = der
            .strip_prefix(&SPKI_PREFIX)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| OtaError::KeyFormat {
                path: path.to_owned(),
                expected: EXPECTED,
                why: "the key is not an Ed25519 public key".into(),
            })?;
        if ed25519_dalek::VerifyingKey::from_bytes(&key).is_err() {
            return Err(OtaError::KeyFormat {
                path: path.to_owned(),
                expected: EXPECTED,
                why: "the 32 bytes are not a point of the curve".into(),
            });
        }
        Ok(PublicKey(key))
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<Self, OtaError> {
        let text = std::fs::read_to_string(path).map_err(|e| OtaError::io("read", path, e))?;
        Self::from_pem(&text, path)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        BASE64.encode(der)
    )
}

fn unpem(
    text: &str,
    label: &str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, OtaError> {
    let fail = |why: String| OtaError::KeyFormat {
        path: path.to_owned(),
        expected,
        why,
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| fail(format!("no '{begin}' ... '{end}' block")))?;
    let b64: String = body.split_whitespace().collect();
    BASE64
        .decode(b64.as_bytes())
        .map_err(|e| fail(format!("bad base64: {e}")))
}

/// The public key file next to a secret key file: `KEY.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes `bytes` to a new file with `mode`, flushed; refuses to overwrite.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), OtaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                OtaError::Exists(path.to_owned())
            } else {
                OtaError::io("create", path, e)
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| OtaError::io("write", path, e))
}

/// Generates a key pair: the secret key to `secret` (mode 0600), the
/// public key to `secret.pub` (0644). Neither file may exist.
pub fn generate_files(secret: &Path) -> Result<(SigningKey, PathBuf), OtaError> {
    let public = public_path(secret);
    for p in [secret, public.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(OtaError::Exists(p.to_owned()));
        }
    }
    let key = SigningKey::generate();
    create_new(secret, key.to_pem().as_bytes(), 0o600)?;
    if let Err(e) = create_new(&public, key.public_key().to_pem().as_bytes(), 0o644) {
        // Leave no secret key without its public half.
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    Ok((key, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_round_trips() {
        let k = SigningKey::generate();
        let p = Path::new("k");
        let back = SigningKey::from_pem(&k.to_pem(), p).expect("parses");
        assert_eq!(back.public_key(), k.public_key());
        let public = PublicKey::from_pem(&k.public_key().to_pem(), p).expect("parses");
        assert_eq!(public, k.public_key());
        assert_eq!(PublicKey::from_hex(&public.to_hex()), Some(public));
        assert!(
            k.public_key()
                .to_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
        );
    }

    #[test]
    fn refuses_other_key_formats() {
        let p = Path::new("k.pub");
        let k = SigningKey::generate();
        // A private key where a public one is expected, and the reverse.
        assert!(matches!(
            PublicKey::from_pem(&k.to_pem(), p),
            Err(OtaError::KeyFormat { .. })
        ));
        assert!(matches!(
            SigningKey::from_pem(&k.public_key().to_pem(), p),
            Err(OtaError::KeyFormat { .. })
        ));
        assert!(matches!(
            PublicKey::from_pem(
                "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n",
                p
            ),
            Err(OtaError::KeyFormat { .. })
        ));
        // An RSA-looking SPKI.
        let rsa = pem(PUBLIC_LABEL, &[0x30, 0x82, 0x01, 0x22, 0x30, 0x0d]);
        assert!(matches!(
            PublicKey::from_pem(&rsa, p),
            Err(OtaError::KeyFormat { .. })
        ));
    }

    #[test]
    fn generate_files_writes_private_modes_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("fw.key");
        let (key, public) = generate_files(&secret).expect("generates");
        assert_eq!(public, dir.path().join("fw.key.pub"));
        let mode = std::fs::metadata(&secret)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            SigningKey::read(&secret).expect("reads").public_key(),
            key.public_key()
        );
        assert_eq!(PublicKey::read(&public).expect("reads"), key.public_key());
        let before = std::fs::read(&secret).expect("read");
        assert!(matches!(generate_files(&secret), Err(OtaError::Exists(_))));
        assert_eq!(std::fs::read(&secret).expect("read"), before);
        // A stray public key blocks too, and no secret key is left behind.
        let other = dir.path().join("other.key");
        std::fs::write(public_path(&other), "x").expect("write");
        assert!(matches!(generate_files(&other), Err(OtaError::Exists(_))));
        assert!(!other.exists());
    }
}
