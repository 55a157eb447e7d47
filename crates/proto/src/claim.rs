//! Claim codes and the label QR payload (DESIGN.md "Claiming").
//!
//! A claim code is 160 random bits, written as 32 lowercase base32
//! characters so that a person can also type it. The server keeps only its
//! SHA-256 (the code is high-entropy, so a slow password hash adds nothing);
//! the label carries it in a QR code next to the device id and the
//! certificate fingerprint. The fingerprint alone is public and never
//! suffices to claim a device.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Random bytes in a claim code.
pub const CLAIM_CODE_BYTES: usize = 20;

/// A claim code as printed on a device label.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimCode(String);

impl fmt::Debug for ClaimCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimCode(<redacted>)")
    }
}

/// Why a string is not a claim code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a claim code is {len} base32 characters (a-z, 2-7)", len = encoded_len())]
pub struct ClaimCodeError;

const fn encoded_len() -> usize {
    (CLAIM_CODE_BYTES * 8).div_ceil(5)
}

fn base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    // The specification is fixed and valid; `encoding()` cannot fail for it.
    spec.encoding().unwrap_or(data_encoding::BASE32_NOPAD)
}

impl ClaimCode {
    /// A claim code from fresh random bytes (the caller's CSPRNG).
    pub fn from_random(bytes: [u8; CLAIM_CODE_BYTES]) -> Self {
        Self(base32().encode(&bytes))
    }

    /// Parses a typed or scanned code (case-insensitive, surrounding space ignored).
    pub fn parse(s: &str) -> Result<Self, ClaimCodeError> {
        let s = s.trim().to_ascii_lowercase();
        match base32().decode(s.as_bytes()) {
            Ok(b) if b.len() == CLAIM_CODE_BYTES => Ok(Self(s)),
            _ => Err(ClaimCodeError),
        }
    }

    /// The code as printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the server stores: `sha256:` and the hex digest.
    pub fn hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

/// The JSON a device label's QR code encodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QrPayload {
    /// The device id.
    pub device_id: String,
    /// SHA-256 fingerprint of its certificate.
    pub fingerprint: String,
    /// Its claim code.
    pub claim_code: String,
}

/// Why a text is not a label's QR payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QrPayloadError(String);

impl QrPayload {
    /// Parses the text a label's QR code holds.
    pub fn from_json(text: &str) -> Result<Self, QrPayloadError> {
        serde_json::from_str(text.trim()).map_err(|e| QrPayloadError(e.to_string()))
    }

    /// The payload as compact JSON.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_hash_stably() {
        let code = ClaimCode::from_random([0xA5; CLAIM_CODE_BYTES]);
        assert_eq!(code.as_str().len(), 32);
        let typed =
            ClaimCode::parse(&format!("  {}\n", code.as_str().to_uppercase())).expect("typed code");
        assert_eq!(typed, code);
        assert_eq!(typed.hash(), code.hash());
        assert!(code.hash().starts_with("sha256:"));
        assert_ne!(
            ClaimCode::from_random([0; CLAIM_CODE_BYTES]).hash(),
            code.hash()
        );
    }

    #[test]
    fn refuses_malformed_codes() {
        for bad in [
            "",
            "short",
            "0000000000000000000000000000000!",
            &"a".repeat(40),
        ] {
            assert_eq!(ClaimCode::parse(bad), Err(ClaimCodeError), "{bad}");
        }
    }

    #[test]
    fn qr_payload_uses_design_field_names() {
        let p = QrPayload {
            device_id: "greenhouse-1".into(),
            fingerprint: "ab".into(),
            claim_code: "cd".into(),
        };
        assert_eq!(
            p.to_json(),
            r#"{"deviceId":"greenhouse-1","fingerprint":"ab","claimCode":"cd"}"#
        );
    }
}
