//! Firmware bundles and their verification: the one place, shared by the
//! server and the device, that decides whether an image may be installed.
//!
//! Bundle layout (bundle format 1; little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 6 | magic `RMPTFW` |
//! | 2 | bundle format (1) |
//! | 4 | manifest length m (at most [`MAX_MANIFEST_LEN`]) |
//! | m | manifest ([`super::manifest`]) |
//! | 64 | Ed25519 signature over the m manifest bytes |
//! | n | image: exactly the manifest's image size, nothing after it |
//!
//! The signature covers the manifest, and the manifest holds the image's
//! size and SHA-256, so a verified manifest vouches for the image. The
//! header, manifest and signature ([`BundleHead`]) are what a device gets
//! in an offer; the image is streamed after it.

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use super::manifest::{KeyId, MAX_MANIFEST_LEN, Manifest, ManifestError};
use crate::layout::Reader;

/// The first bytes of every bundle.
pub const MAGIC: [u8; 6] = *b"RMPTFW";
/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u16 = 1;
/// Bytes before the manifest: magic, format and manifest length.
pub const HEADER_LEN: usize = 6 + 2 + 4;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A public key a device or server trusts to sign firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its key id (first 8 bytes of SHA-256 of `public_key`).
    pub id: KeyId,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
}

impl TrustedKey {
    /// A trusted key with its id computed.
    pub fn new(public_key: [u8; 32]) -> Self {
        TrustedKey {
            id: KeyId::of(&public_key),
            public_key,
        }
    }
}

/// Why a bundle (or a manifest with its signature) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The bytes do not start with `RMPTFW`: not a firmware bundle.
    NotABundle,
    /// Another bundle format.
    Format(u16),
    /// The bytes end before the bundle does.
    Truncated {
        /// Bytes the bundle needs.
        needed: u64,
        /// Bytes given.
        got: u64,
    },
    /// Bytes follow the image.
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The manifest length field is larger than any manifest.
    ManifestTooLong(u32),
    /// The manifest does not decode.
    Manifest(ManifestError),
    /// No trusted key has the manifest's key id.
    UnknownKey(KeyId),
    /// The trusted key with that id does not verify the signature (a
    /// forged or altered manifest, or a key id collision).
    BadSignature(KeyId),
    /// The image is larger than allowed.
    Oversized {
        /// The image's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The image is for another kind of device.
    WrongDeviceType,
    /// The image's SHA-256 differs from the manifest's: tampered or corrupt.
    HashMismatch,
}

impl VerifyError {
    /// A short stable code for reports, logs and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::NotABundle => "not-a-bundle",
            VerifyError::Format(_) => "unsupported-format",
            VerifyError::Truncated { .. } => "truncated",
            VerifyError::TrailingBytes { .. } => "trailing-bytes",
            VerifyError::ManifestTooLong(_) => "manifest-too-long",
            VerifyError::Manifest(ManifestError::Version(_)) => "bad-version",
            VerifyError::Manifest(_) => "bad-manifest",
            VerifyError::UnknownKey(_) => "unknown-key",
            VerifyError::BadSignature(_) => "bad-signature",
            VerifyError::Oversized { .. } => "oversized",
            VerifyError::WrongDeviceType => "wrong-device-type",
            VerifyError::HashMismatch => "hash-mismatch",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NotABundle => {
                f.write_str("not a firmware bundle (no RMPTFW magic); make one with `rampart firmware sign`")
            }
            VerifyError::Format(v) => write!(
                f,
                "bundle format {v} is not supported (this build reads format {BUNDLE_FORMAT})"
            ),
            VerifyError::Truncated { needed, got } => write!(
                f,
                "bundle is truncated: {got} bytes where {needed} are needed (interrupted copy or download?)"
            ),
            VerifyError::TrailingBytes { extra } => {
                write!(f, "bundle has {extra} unexpected bytes after the image")
            }
            VerifyError::ManifestTooLong(n) => write!(
                f,
                "bundle declares a {n}-byte manifest; at most {MAX_MANIFEST_LEN} bytes are allowed"
            ),
            VerifyError::Manifest(e) => write!(f, "bad manifest: {e}"),
            VerifyError::UnknownKey(id) => write!(
                f,
                "signed by key {id}, which is not trusted (add its public key first)"
            ),
            VerifyError::BadSignature(id) => write!(
                f,
                "the signature does not verify with trusted key {id}: the manifest was altered or not signed by that key"
            ),
            VerifyError::Oversized { size, max } => {
                write!(f, "image is {size} bytes; the limit is {max} bytes")
            }
            VerifyError::WrongDeviceType => f.write_str("image is for another device type"),
            VerifyError::HashMismatch => f.write_str(
                "image SHA-256 does not match the signed manifest: the image was tampered with or corrupted",
            ),
        }
    }
}

impl core::error::Error for VerifyError {}

impl From<ManifestError> for VerifyError {
    fn from(e: ManifestError) -> Self {
        VerifyError::Manifest(e)
    }
}

/// The head of a bundle: its manifest (raw and decoded) and signature, not
/// yet verified.
#[derive(Debug, Clone, Copy)]
pub struct BundleHead<'a> {
    /// The manifest bytes, as signed.
    pub manifest_bytes: &'a [u8],
    /// The decoded manifest.
    pub manifest: Manifest<'a>,
    /// The Ed25519 signature over `manifest_bytes`.
    pub signature: [u8; SIGNATURE_LEN],
    /// Length of the head in the bundle (where the image starts).
    pub len: usize,
}

/// Parses the head of a bundle (header, manifest, signature). The bytes
/// may continue with the image.
pub fn parse_head(bytes: &[u8]) -> Result<BundleHead<'_>, VerifyError> {
    let got = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let truncated = |needed: usize| VerifyError::Truncated {
        needed: u64::try_from(needed).unwrap_or(u64::MAX),
        got,
    };
    let mut r = Reader::new(bytes);
    match r.take::<6>() {
        Some(m) if m == MAGIC => {}
        Some(_) => return Err(VerifyError::NotABundle),
        None if MAGIC.starts_with(bytes) => return Err(truncated(HEADER_LEN)),
        None => return Err(VerifyError::NotABundle),
    }
    let format = r.u16().ok_or_else(|| truncated(HEADER_LEN))?;
    if format != BUNDLE_FORMAT {
        return Err(VerifyError::Format(format));
    }
    let manifest_len = r.u32().ok_or_else(|| truncated(HEADER_LEN))?;
    let m_len = usize::try_from(manifest_len).unwrap_or(usize::MAX);
    if m_len > MAX_MANIFEST_LEN {
        return Err(VerifyError::ManifestTooLong(manifest_len));
    }
    // Both below MAX_MANIFEST_LEN + 76: no overflow.
    let m_end = HEADER_LEN.saturating_add(m_len);
    let head_len = m_end.saturating_add(SIGNATURE_LEN);
    let manifest_bytes = bytes
        .get(HEADER_LEN..m_end)
        .ok_or_else(|| truncated(head_len))?;
    let signature: [u8; SIGNATURE_LEN] = bytes
        .get(m_end..head_len)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| truncated(head_len))?;
    let manifest = Manifest::decode(manifest_bytes)?;
    Ok(BundleHead {
        manifest_bytes,
        manifest,
        signature,
        len: head_len,
    })
}

/// A manifest whose signature verified with a trusted key. Only
/// [`verify_manifest`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct SignedManifest<'a> {
    manifest: Manifest<'a>,
    key: TrustedKey,
}

impl<'a> SignedManifest<'a> {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest<'a> {
        &self.manifest
    }

    /// The trusted key that signed it.
    pub fn key(&self) -> &TrustedKey {
        &self.key
    }
}

/// Checks `signature` over `manifest_bytes` with the trusted key named by
/// the manifest's key id (strict Ed25519 verification: no malleable or
/// small-order signatures).
pub fn verify_manifest<'a>(
    manifest_bytes: &'a [u8],
    signature: &[u8; SIGNATURE_LEN],
    trusted: &[TrustedKey],
) -> Result<SignedManifest<'a>, VerifyError> {
    let manifest = Manifest::decode(manifest_bytes)?;
    let key = trusted
        .iter()
        .find(|k| k.id == manifest.key_id)
        .ok_or(VerifyError::UnknownKey(manifest.key_id))?;
    let bad = VerifyError::BadSignature(manifest.key_id);
    let verifying = VerifyingKey::from_bytes(&key.public_key).map_err(|_| bad)?;
    verifying
        .verify_strict(manifest_bytes, &Signature::from_bytes(signature))
        .map_err(|_| bad)?;
    Ok(SignedManifest {
        manifest,
        key: *key,
    })
}

/// What a verification checks besides the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits<'a> {
    /// Largest image accepted, bytes.
    pub max_image_size: u64,
    /// The device type expected, where one is (a device; an upload for a
    /// given type); `None` accepts any.
    pub device_type: Option<&'a str>,
}

/// A firmware bundle that passed every check: structure, a trusted key's
/// signature over the manifest, the size limit, the device type, and the
/// image's length and SHA-256. Only [`verify_bundle`] makes one, so a
/// function taking a `VerifiedFirmware` cannot be handed anything else.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedFirmware<'a> {
    head: BundleHead<'a>,
    key: TrustedKey,
    image: &'a [u8],
}

impl<'a> VerifiedFirmware<'a> {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest<'a> {
        &self.head.manifest
    }

    /// The manifest bytes, as signed.
    pub fn manifest_bytes(&self) -> &'a [u8] {
        self.head.manifest_bytes
    }

    /// The signature over the manifest bytes.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.head.signature
    }

    /// The trusted key that signed it.
    pub fn key(&self) -> &TrustedKey {
        &self.key
    }

    /// The image.
    pub fn image(&self) -> &'a [u8] {
        self.image
    }
}

/// Verifies a whole bundle. Checks, in order: structure (magic, format,
/// lengths; truncation and trailing bytes), manifest, size limit,
/// signature with a trusted key, device type, image SHA-256.
pub fn verify_bundle<'a>(
    bytes: &'a [u8],
    trusted: &[TrustedKey],
    limits: &Limits<'_>,
) -> Result<VerifiedFirmware<'a>, VerifyError> {
    let head = parse_head(bytes)?;
    let size = head.manifest.image_size;
    if size > limits.max_image_size {
        return Err(VerifyError::Oversized {
            size,
            max: limits.max_image_size,
        });
    }
    let image = bytes.get(head.len..).unwrap_or(&[]);
    let image_len = u64::try_from(image.len()).unwrap_or(u64::MAX);
    if image_len < size {
        let head_len = u64::try_from(head.len).unwrap_or(u64::MAX);
        return Err(VerifyError::Truncated {
            needed: head_len.saturating_add(size),
            got: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        });
    }
    if image_len > size {
        return Err(VerifyError::TrailingBytes {
            extra: image_len.saturating_sub(size),
        });
    }
    let signed = verify_manifest(head.manifest_bytes, &head.signature, trusted)?;
    if let Some(expected) = limits.device_type
        && head.manifest.device_type != expected
    {
        return Err(VerifyError::WrongDeviceType);
    }
    if Sha256::digest(image).as_slice() != head.manifest.image_sha256.as_slice() {
        return Err(VerifyError::HashMismatch);
    }
    Ok(VerifiedFirmware {
        head,
        key: signed.key,
        image,
    })
}

/// Writes a bundle's header (magic, format, manifest length) for a manifest
/// of `manifest_len` bytes; `None` if that is longer than any manifest.
pub fn header(manifest_len: usize) -> Option<[u8; HEADER_LEN]> {
    if manifest_len > MAX_MANIFEST_LEN {
        return None;
    }
    let len = u32::try_from(manifest_len).ok()?.to_le_bytes();
    let f = BUNDLE_FORMAT.to_le_bytes();
    Some([
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], MAGIC[4], MAGIC[5], f[0], f[1], len[0], len[1],
        len[2], len[3],
    ])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ota::semver::Version;
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;
    use std::vec::Vec;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn trusted(k: &SigningKey) -> TrustedKey {
        TrustedKey::new(k.verifying_key().to_bytes())
    }

    /// A signed bundle of `image` for `device_type`.
    pub(crate) fn bundle(
        k: &SigningKey,
        device_type: &str,
        version: &str,
        security_version: u32,
        image: &[u8],
    ) -> Vec<u8> {
        let manifest = Manifest {
            device_type,
            version: Version::parse(version).expect("valid"),
            security_version,
            image_size: image.len() as u64,
            image_sha256: Sha256::digest(image).into(),
            key_id: KeyId::of(&k.verifying_key().to_bytes()),
            created_at_ms: 1_764_000_000_000,
        };
        let mut m = [0u8; MAX_MANIFEST_LEN];
        let n = manifest.encode(&mut m).expect("fits");
        let sig = k.sign(&m[..n]).to_bytes();
        let mut out = Vec::new();
        out.extend_from_slice(&header(n).expect("short"));
        out.extend_from_slice(&m[..n]);
        out.extend_from_slice(&sig);
        out.extend_from_slice(image);
        out
    }

    const LIMITS: Limits<'static> = Limits {
        max_image_size: 1 << 20,
        device_type: Some("sensor"),
    };

    #[test]
    fn a_good_bundle_verifies() {
        let k = key(1);
        let b = bundle(&k, "sensor", "1.2.3", 4, b"firmware image");
        let v = verify_bundle(&b, &[trusted(&key(9)), trusted(&k)], &LIMITS).expect("verifies");
        assert_eq!(v.image(), b"firmware image");
        assert_eq!(v.manifest().security_version, 4);
        assert_eq!(v.manifest().version.as_str(), "1.2.3");
        assert_eq!(v.key().id, KeyId::of(&k.verifying_key().to_bytes()));
        let any_type = Limits {
            device_type: None,
            ..LIMITS
        };
        assert!(verify_bundle(&b, &[trusted(&k)], &any_type).is_ok());
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let k = key(1);
        let keys = [trusted(&k)];
        let b = bundle(&k, "sensor", "1.2.3", 4, b"firmware image");

        let mut tampered = b.clone();
        *tampered.last_mut().expect("image") ^= 1;
        assert_eq!(
            verify_bundle(&tampered, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::HashMismatch)
        );

        let other = bundle(&key(2), "sensor", "1.2.3", 4, b"firmware image");
        let other_id = KeyId::of(&key(2).verifying_key().to_bytes());
        assert_eq!(
            verify_bundle(&other, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::UnknownKey(other_id))
        );

        // A manifest altered after signing (security version byte).
        let mut forged = b.clone();
        let sv_at = HEADER_LEN + 2 + 1 + 6 + 1 + 5;
        forged[sv_at] = 9;
        assert_eq!(
            verify_bundle(&forged, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::BadSignature(keys[0].id))
        );
        let mut bad_sig = b.clone();
        let sig_at = b.len() - 14 - 64;
        bad_sig[sig_at] ^= 0x80;
        assert_eq!(
            verify_bundle(&bad_sig, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::BadSignature(keys[0].id))
        );

        for cut in 0..b.len() {
            let err = verify_bundle(&b[..cut], &keys, &LIMITS)
                .map(|_| ())
                .expect_err("cut");
            assert!(
                matches!(err, VerifyError::Truncated { .. }),
                "{cut}: {err:?}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            verify_bundle(&long, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::TrailingBytes { extra: 1 })
        );

        let small = Limits {
            max_image_size: 4,
            ..LIMITS
        };
        assert_eq!(
            verify_bundle(&b, &keys, &small).map(|_| ()),
            Err(VerifyError::Oversized { size: 14, max: 4 })
        );

        let other_type = Limits {
            device_type: Some("gateway"),
            ..LIMITS
        };
        assert_eq!(
            verify_bundle(&b, &keys, &other_type).map(|_| ()),
            Err(VerifyError::WrongDeviceType)
        );

        let bad_version = bundle_with_raw_version(&k, b"1.2");
        assert_eq!(
            verify_bundle(&bad_version, &keys, &LIMITS)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err("bad-version")
        );

        assert_eq!(
            verify_bundle(b"PK\x03\x04 a zip file", &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::NotABundle)
        );
        let mut v2 = b.clone();
        v2[6] = 2;
        assert_eq!(
            verify_bundle(&v2, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::Format(2))
        );
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(
            verify_bundle(&huge, &keys, &LIMITS).map(|_| ()),
            Err(VerifyError::ManifestTooLong(5000))
        );
    }

    /// A bundle whose manifest carries `version` unchecked.
    fn bundle_with_raw_version(k: &SigningKey, version: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&MANIFEST_FORMAT_LE);
        m.push(6);
        m.extend_from_slice(b"sensor");
        m.push(version.len() as u8);
        m.extend_from_slice(version);
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&<[u8; 32]>::from(Sha256::digest(b"")));
        m.extend_from_slice(&KeyId::of(&k.verifying_key().to_bytes()).0);
        m.extend_from_slice(&0u64.to_le_bytes());
        let sig = k.sign(&m).to_bytes();
        let mut out = Vec::new();
        out.extend_from_slice(&header(m.len()).expect("short"));
        out.extend_from_slice(&m);
        out.extend_from_slice(&sig);
        out
    }

    const MANIFEST_FORMAT_LE: [u8; 2] = crate::ota::manifest::MANIFEST_FORMAT.to_le_bytes();

    proptest! {
        #[test]
        fn bundle_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = [trusted(&key(1))];
            // Random bytes essentially never verify; a panic is the finding.
            let _ = parse_head(&bytes);
            prop_assert!(verify_bundle(&bytes, &keys, &LIMITS).is_err());
        }

        #[test]
        fn edited_bundles_never_verify(
            image in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let k = key(1);
            let mut b = bundle(&k, "sensor", "1.0.0", 1, &image);
            let i = at.index(b.len());
            b[i] ^= flip;
            prop_assert!(verify_bundle(&b, &[trusted(&k)], &LIMITS).is_err());
        }
    }
}
