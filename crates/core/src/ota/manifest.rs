//! The firmware manifest: what a signature vouches for.
//!
//! Layout (manifest format 1; little-endian, no padding; the signature
//! covers exactly these bytes):
//!
//! | bytes | field |
//! |---|---|
//! | 2 | manifest format (1) |
//! | 1 + n | device type: length n (1..=64), then `[a-z0-9._-]` |
//! | 1 + n | version: length n (1..=64), then a semantic version |
//! | 4 | security version (anti-rollback counter) |
//! | 8 | image size in bytes |
//! | 32 | SHA-256 of the image |
//! | 8 | key id: first 8 bytes of SHA-256 of the signing public key |
//! | 8 | created at, Unix milliseconds |
//!
//! Decoding refuses trailing bytes, so one manifest has exactly one
//! encoding and the signed bytes are the decoded fields, nothing more.

use core::fmt;

use sha2::{Digest, Sha256};

use super::semver::{MAX_VERSION_LEN, SemverError, Version};
use crate::layout::{Reader, Writer};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u16 = 1;
/// Longest device type.
pub const MAX_DEVICE_TYPE_LEN: usize = 64;
/// Longest encoded manifest.
pub const MAX_MANIFEST_LEN: usize =
    2 + 1 + MAX_DEVICE_TYPE_LEN + 1 + MAX_VERSION_LEN + 4 + 8 + 32 + 8 + 8;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;

/// A key id: the first 8 bytes of SHA-256 of the Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The key id of an Ed25519 public key.
    pub fn of(public_key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(public_key);
        let mut id = [0u8; KEY_ID_LEN];
        for (dst, src) in id.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    /// Lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A decoded manifest, borrowing its strings from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// Which kind of device the image is for (e.g. `esp32c3-dht11`).
    pub device_type: &'a str,
    /// The image's version.
    pub version: Version<'a>,
    /// Monotonic anti-rollback counter: a device refuses an image whose
    /// security version is below the minimum it has confirmed.
    pub security_version: u32,
    /// Image length in bytes.
    pub image_size: u64,
    /// SHA-256 of the image.
    pub image_sha256: [u8; 32],
    /// Which key signed the manifest.
    pub key_id: KeyId,
    /// When the bundle was signed, Unix milliseconds.
    pub created_at_ms: u64,
}

/// Why manifest bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes end before the manifest does.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// Another manifest format.
    Format(u16),
    /// The device type is empty, too long or has characters outside `[a-z0-9._-]`.
    DeviceType,
    /// The version is not a semantic version.
    Version(SemverError),
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::Truncated => f.write_str("manifest is truncated"),
            ManifestError::TrailingBytes => f.write_str("manifest has trailing bytes"),
            ManifestError::Format(v) => write!(
                f,
                "manifest format {v} is not supported (this build reads format {MANIFEST_FORMAT})"
            ),
            ManifestError::DeviceType => f.write_str(
                "manifest device type must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'",
            ),
            ManifestError::Version(e) => write!(f, "manifest version: {e}"),
        }
    }
}

impl core::error::Error for ManifestError {}

/// Whether `s` is a valid device type.
pub fn valid_device_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DEVICE_TYPE_LEN
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn text<'a>(r: &mut Reader<'a>, bytes: &'a [u8]) -> Result<&'a str, ManifestError> {
    let len = usize::from(r.u8().ok_or(ManifestError::Truncated)?);
    let start = r.pos();
    let end = start.checked_add(len).ok_or(ManifestError::Truncated)?;
    let slice = bytes.get(start..end).ok_or(ManifestError::Truncated)?;
    r.skip(len).ok_or(ManifestError::Truncated)?;
    // Non-UTF-8 cannot be a device type or a version; the caller reports which.
    Ok(core::str::from_utf8(slice).unwrap_or("\u{fffd}"))
}

impl<'a> Manifest<'a> {
    /// Decodes a manifest; the bytes must hold exactly one.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let mut r = Reader::new(bytes);
        let format = r.u16().ok_or(ManifestError::Truncated)?;
        if format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(format));
        }
        let device_type = text(&mut r, bytes)?;
        let version = text(&mut r, bytes)?;
        let security_version = r.u32().ok_or(ManifestError::Truncated)?;
        let image_size = r.u64().ok_or(ManifestError::Truncated)?;
        let image_sha256 = r.take::<32>().ok_or(ManifestError::Truncated)?;
        let key_id = KeyId(r.take::<KEY_ID_LEN>().ok_or(ManifestError::Truncated)?);
        let created_at_ms = r.u64().ok_or(ManifestError::Truncated)?;
        if r.pos() != bytes.len() {
            return Err(ManifestError::TrailingBytes);
        }
        if !valid_device_type(device_type) {
            return Err(ManifestError::DeviceType);
        }
        let version = Version::parse(version).map_err(ManifestError::Version)?;
        Ok(Manifest {
            device_type,
            version,
            security_version,
            image_size,
            image_sha256,
            key_id,
            created_at_ms,
        })
    }

    /// Encodes into `buf` (at least [`MAX_MANIFEST_LEN`] is always enough);
    /// returns the length, or `None` if `buf` is too small or a field is
    /// invalid (device type or version).
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        if !valid_device_type(self.device_type) {
            return None;
        }
        let version = self.version.as_str();
        let dt_len = u8::try_from(self.device_type.len()).ok()?;
        let v_len = u8::try_from(version.len()).ok()?;
        let mut w = Writer::new(buf);
        let ok = w.u16(MANIFEST_FORMAT)
            && w.u8(dt_len)
            && w.put(self.device_type.as_bytes())
            && w.u8(v_len)
            && w.put(version.as_bytes())
            && w.u32(self.security_version)
            && w.u64(self.image_size)
            && w.put(&self.image_sha256)
            && w.put(&self.key_id.0)
            && w.u64(self.created_at_ms);
        ok.then(|| w.pos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest<'static> {
        Manifest {
            device_type: "esp32c3-dht11",
            version: Version::parse("1.4.0-rc.1+abc").expect("valid"),
            security_version: 3,
            image_size: 123_456,
            image_sha256: [7; 32],
            key_id: KeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            created_at_ms: 1_764_000_000_000,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let mut buf = [0u8; MAX_MANIFEST_LEN];
        let n = m.encode(&mut buf).expect("fits");
        let back = Manifest::decode(&buf[..n]).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(back.version.as_str(), "1.4.0-rc.1+abc");
    }

    #[test]
    fn refuses_truncation_trailing_bytes_and_bad_fields() {
        let m = sample();
        let mut buf = [0u8; MAX_MANIFEST_LEN + 1];
        let n = m.encode(&mut buf).expect("fits");
        for cut in 0..n {
            assert_eq!(
                Manifest::decode(&buf[..cut]),
                Err(ManifestError::Truncated),
                "{cut}"
            );
        }
        assert_eq!(
            Manifest::decode(&buf[..n + 1]),
            Err(ManifestError::TrailingBytes)
        );
        let mut other = buf;
        other[0] = 2;
        assert_eq!(Manifest::decode(&other[..n]), Err(ManifestError::Format(2)));
        let mut upper = buf;
        upper[3] = b'E';
        assert_eq!(
            Manifest::decode(&upper[..n]),
            Err(ManifestError::DeviceType)
        );
        // The version starts after the format (2), the length (1), the
        // device type (13) and its own length (1).
        let mut bad_version = buf;
        bad_version[17] = b'x';
        assert_eq!(
            Manifest::decode(&bad_version[..n]),
            Err(ManifestError::Version(SemverError))
        );
        let mut small = [0u8; 10];
        assert_eq!(m.encode(&mut small), None);
    }

    #[test]
    fn key_id_is_the_hash_prefix() {
        let id = KeyId::of(&[0u8; 32]);
        // SHA-256 of 32 zero bytes starts 66687aadf862bd77.
        assert_eq!(std::format!("{id}"), "66687aadf862bd77");
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = Manifest::decode(&bytes) {
                let mut buf = [0u8; MAX_MANIFEST_LEN];
                let n = m.encode(&mut buf).expect("a decoded manifest encodes");
                prop_assert_eq!(&buf[..n], &bytes[..]);
            }
        }

        #[test]
        fn decode_inverts_encode(
            dt in "[a-z0-9._-]{1,64}",
            major in 0u64..1000, minor in 0u64..1000, patch in 0u64..1000,
            sv in any::<u32>(), size in any::<u64>(), sha in any::<[u8; 32]>(),
            key in any::<[u8; 8]>(), created in any::<u64>(),
        ) {
            let version = std::format!("{major}.{minor}.{patch}");
            let m = Manifest {
                device_type: &dt,
                version: Version::parse(&version).expect("valid"),
                security_version: sv,
                image_size: size,
                image_sha256: sha,
                key_id: KeyId(key),
                created_at_ms: created,
            };
            let mut buf = [0u8; MAX_MANIFEST_LEN];
            let n = m.encode(&mut buf).expect("fits");
            prop_assert_eq!(Manifest::decode(&buf[..n]), Ok(m));
        }
    }
}
