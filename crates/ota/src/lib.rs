//! Rampart firmware updates, server and signing side: Ed25519 signing keys
//! and their files, bundle signing, and verification into an owned
//! [`VerifiedFirmware`].
//!
//! # What it owns
//!
//! - [`keys`]: firmware signing keys (secret, offline) and public keys, in
//!   PEM files that OpenSSL reads too (PKCS#8 and SPKI).
//! - [`sign`]: building a signed `RMPTFW` bundle from an image.
//! - [`verify`]: checking a bundle against trusted public keys with
//!   `rampart_core::ota`, the same code a device runs, and keeping the
//!   result as a [`VerifiedFirmware`], the only form firmware can be stored
//!   and offered in.
//! - [`store_image`]: the content-addressed image store in the data dir.
//! - [`download`]: short-lived download tokens bound to a device and an image.
//! - [`campaign`]: rollout decisions (waves, thresholds, timeouts), no I/O.
//!
//! # What it must not do
//!
//! No second implementation of the format or the checks: the layout and
//! every verification step live in `rampart_core::ota`. No database access
//! (the registry of trusted keys and uploads is `rampart-store`), no
//! network, and no secret key ever leaves the file it was written to.

pub mod campaign;
pub mod download;
mod error;
pub mod images;
pub mod keys;

use rampart_core::ota::bundle::{self, TrustedKey};
use rampart_core::ota::manifest::{MAX_MANIFEST_LEN, Manifest};
use rampart_core::ota::{KeyId, Limits, Version};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use error::OtaError;
pub use images::store_image;
pub use keys::{PublicKey, SigningKey};
pub use rampart_core::ota::VerifyError;

/// Default largest image accepted: 16 MiB (the largest ESP32 app partition).
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 16 * 1024 * 1024;

/// A manifest in owned, printable form (`firmware verify`, `firmware list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestInfo {
    /// Which kind of device the image is for.
    pub device_type: String,
    /// Semantic version.
    pub version: String,
    /// Anti-rollback counter.
    pub security_version: u32,
    /// Image size in bytes.
    pub image_size: u64,
    /// SHA-256 of the image, lowercase hex.
    pub image_sha256: String,
    /// Id of the signing key, lowercase hex.
    pub key_id: String,
    /// When it was signed, Unix milliseconds.
    pub created_at_ms: u64,
}

impl ManifestInfo {
    fn of(m: &Manifest<'_>) -> Self {
        ManifestInfo {
            device_type: m.device_type.to_owned(),
            version: m.version.as_str().to_owned(),
            security_version: m.security_version,
            image_size: m.image_size,
            image_sha256: hex::encode(m.image_sha256),
            key_id: m.key_id.to_string(),
            created_at_ms: m.created_at_ms,
        }
    }
}

/// What to put in a bundle's manifest besides what the image gives.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    /// Device type (`[a-z0-9._-]`, 1 to 64 characters).
    pub device_type: &'a str,
    /// Semantic version.
    pub version: &'a str,
    /// Anti-rollback counter.
    pub security_version: u32,
    /// Signing time, Unix milliseconds.
    pub created_at_ms: u64,
}

/// Signs `image` into a bundle: manifest (with the image's size and
/// SHA-256 and the key id), Ed25519 signature over it, then the image.
pub fn sign(image: &[u8], key: &SigningKey, req: &SignRequest<'_>) -> Result<Vec<u8>, OtaError> {
    if !rampart_core::ota::manifest::valid_device_type(req.device_type) {
        return Err(OtaError::Invalid(format!(
            "device type '{}' must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'",
            req.device_type
        )));
    }
    let version = Version::parse(req.version)
        .map_err(|e| OtaError::Invalid(format!("version '{}': {e}", req.version)))?;
    let public = key.public_key();
    let manifest = Manifest {
        device_type: req.device_type,
        version,
        security_version: req.security_version,
        image_size: u64::try_from(image.len()).unwrap_or(u64::MAX),
        image_sha256: Sha256::digest(image).into(),
        key_id: public.id(),
        created_at_ms: req.created_at_ms,
    };
    let mut m = [0u8; MAX_MANIFEST_LEN];
    let n = manifest
        .encode(&mut m)
        .ok_or_else(|| OtaError::Invalid("the manifest does not encode".into()))?;
    let manifest_bytes = m.get(..n).unwrap_or_default();
    let signature = key.sign(manifest_bytes);
    let header =
        bundle::header(n).ok_or_else(|| OtaError::Invalid("the manifest is too long".into()))?;
    let mut out = Vec::with_capacity(header.len() + n + signature.len() + image.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(manifest_bytes);
    out.extend_from_slice(&signature);
    out.extend_from_slice(image);
    Ok(out)
}

/// Reads a bundle's manifest without checking its signature (to name the
/// key it needs in a refusal, or to show what a bundle claims).
pub fn inspect(bundle_bytes: &[u8]) -> Result<ManifestInfo, OtaError> {
    let head = bundle::parse_head(bundle_bytes)?;
    Ok(ManifestInfo::of(&head.manifest))
}

/// A bundle that passed [`rampart_core::ota::verify_bundle`]: signature by a
/// trusted key, size limit, device type (when one was expected), image
/// length and SHA-256. Only [`verify`] makes one, so store and offer code
/// that takes it cannot be handed an unchecked bundle.
#[derive(Debug, Clone)]
pub struct VerifiedFirmware {
    bundle: Vec<u8>,
    info: ManifestInfo,
    manifest_len: usize,
    head_len: usize,
    signed_by: PublicKey,
}

impl VerifiedFirmware {
    /// The manifest.
    pub fn manifest(&self) -> &ManifestInfo {
        &self.info
    }

    /// The manifest bytes, as signed (sent to devices in offers).
    pub fn manifest_bytes(&self) -> &[u8] {
        self.bundle
            .get(bundle::HEADER_LEN..bundle::HEADER_LEN + self.manifest_len)
            .unwrap_or_default()
    }

    /// The signature over [`VerifiedFirmware::manifest_bytes`].
    pub fn signature(&self) -> &[u8] {
        self.bundle
            .get(bundle::HEADER_LEN + self.manifest_len..self.head_len)
            .unwrap_or_default()
    }

    /// The image.
    pub fn image(&self) -> &[u8] {
        self.bundle.get(self.head_len..).unwrap_or_default()
    }

    /// The whole bundle.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }

    /// The trusted key that signed it.
    pub fn signed_by(&self) -> &PublicKey {
        &self.signed_by
    }

    /// The proof in `rampart_core`'s borrowed form (what
    /// `rampart_store::NewFirmware::verified` takes): the bundle verified
    /// again, in place, with the key that signed it. It was verified once
    /// already, so this fails only if memory was corrupted.
    pub fn proof(&self) -> Result<rampart_core::ota::VerifiedFirmware<'_>, OtaError> {
        let keys = [TrustedKey::new(*self.signed_by.bytes())];
        let limits = Limits {
            max_image_size: self.info.image_size,
            device_type: Some(&self.info.device_type),
        };
        Ok(rampart_core::ota::verify_bundle(
            &self.bundle,
            &keys,
            &limits,
        )?)
    }
}

/// Verifies a bundle against trusted public keys: the checks of
/// [`rampart_core::ota::verify_bundle`], which a device repeats.
pub fn verify(
    bundle_bytes: Vec<u8>,
    trusted: &[PublicKey],
    max_image_size: u64,
    device_type: Option<&str>,
) -> Result<VerifiedFirmware, OtaError> {
    let keys: Vec<TrustedKey> = trusted
        .iter()
        .map(|k| TrustedKey::new(*k.bytes()))
        .collect();
    let limits = Limits {
        max_image_size,
        device_type,
    };
    let verified = rampart_core::ota::verify_bundle(&bundle_bytes, &keys, &limits)?;
    let info = ManifestInfo::of(verified.manifest());
    let manifest_len = verified.manifest_bytes().len();
    let head_len = bundle::HEADER_LEN + manifest_len + bundle::SIGNATURE_LEN;
    let signed_by = PublicKey::from_bytes(verified.key().public_key);
    Ok(VerifiedFirmware {
        bundle: bundle_bytes,
        info,
        manifest_len,
        head_len,
        signed_by,
    })
}

/// The key id of a public key, lowercase hex.
pub fn key_id_hex(key: &PublicKey) -> String {
    key.id().to_string()
}

/// Parses a key id printed by [`key_id_hex`].
pub fn parse_key_id(hex_id: &str) -> Option<KeyId> {
    let bytes = hex::decode(hex_id).ok()?;
    Some(KeyId(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SignRequest<'static> {
        SignRequest {
            device_type: "sensor",
            version: "1.4.0",
            security_version: 2,
            created_at_ms: 1_764_000_000_000,
        }
    }

    #[test]
    fn sign_then_verify() {
        let key = SigningKey::generate();
        let b = sign(b"image bytes", &key, &req()).expect("signs");
        let v = verify(b.clone(), &[key.public_key()], 1024, Some("sensor")).expect("verifies");
        assert_eq!(v.image(), b"image bytes");
        assert_eq!(v.manifest().version, "1.4.0");
        assert_eq!(v.manifest().security_version, 2);
        assert_eq!(v.manifest().key_id, key_id_hex(&key.public_key()));
        assert_eq!(v.signature().len(), 64);
        assert_eq!(v.bundle(), &b[..]);
        assert_eq!(inspect(&b).expect("inspects"), *v.manifest());
        let proof = v.proof().expect("proof");
        assert_eq!(proof.image(), b"image bytes");
        assert_eq!(proof.manifest_bytes(), v.manifest_bytes());
        assert_eq!(
            parse_key_id(&v.manifest().key_id),
            Some(key.public_key().id())
        );
    }

    #[test]
    fn refusals() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let b = sign(b"image bytes", &key, &req()).expect("signs");
        let code = |r: Result<VerifiedFirmware, OtaError>| match r {
            Err(OtaError::Verify(e)) => e.code(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            code(verify(b.clone(), &[other.public_key()], 1024, None)),
            "unknown-key"
        );
        assert_eq!(
            code(verify(b.clone(), &[key.public_key()], 4, None)),
            "oversized"
        );
        assert_eq!(
            code(verify(b.clone(), &[key.public_key()], 1024, Some("gw"))),
            "wrong-device-type"
        );
        let mut t = b.clone();
        *t.last_mut().expect("image") ^= 1;
        assert_eq!(
            code(verify(t, &[key.public_key()], 1024, None)),
            "hash-mismatch"
        );
        assert_eq!(
            code(verify(
                b[..b.len() - 1].to_vec(),
                &[key.public_key()],
                1024,
                None
            )),
            "truncated"
        );
        let bad = SignRequest {
            version: "1.4",
            ..req()
        };
        assert!(matches!(sign(b"x", &key, &bad), Err(OtaError::Invalid(_))));
        let bad = SignRequest {
            device_type: "Sensor",
            ..req()
        };
        assert!(matches!(sign(b"x", &key, &bad), Err(OtaError::Invalid(_))));
    }
}
