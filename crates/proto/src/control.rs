//! The control topics' payloads: certificate renewal on
//! `devices/{id}/cert/{up,down}` and claim confirmation on
//! `devices/{id}/bind/{up,down}` (DESIGN.md "Topics", "Claiming";
//! docs/payloads.md). JSON only: these messages are rare and small.
//!
//! Decoding is strict (unknown fields refused, sizes bounded before any
//! parsing), because the server acts on what a device sends here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest `cert/up` payload accepted: a CSR for an RSA 8192-bit key is
/// under 3 KiB of PEM, so 16 KiB leaves room without inviting abuse.
pub const MAX_RENEWAL_REQUEST_BYTES: usize = 16 * 1024;

/// Largest `bind/up` payload accepted.
pub const MAX_CLAIM_CONFIRMATION_BYTES: usize = 1024;

/// Why a control payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPayloadError {
    /// Over the size limit of its topic.
    #[error("payload is {len} bytes, at most {max} are accepted on this topic")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the expected JSON document.
    #[error("payload is not the expected JSON document: {0}")]
    Malformed(String),
}

fn decode<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
    max: usize,
) -> Result<T, ControlPayloadError> {
    if payload.len() > max {
        return Err(ControlPayloadError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    serde_json::from_slice(payload).map_err(|e| {
        // serde_json's message names the field and position, not the data.
        ControlPayloadError::Malformed(e.to_string())
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Structs of strings and integers always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `devices/{id}/cert/up`: the device asks for a new certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    /// A PKCS#10 CSR (PEM) for a new key, CN = the device id.
    pub csr: String,
}

impl fmt::Debug for RenewalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewalRequest")
            .field("csr_len", &self.csr.len())
            .finish()
    }
}

impl RenewalRequest {
    /// Decodes a `cert/up` payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ControlPayloadError> {
        decode(payload, MAX_RENEWAL_REQUEST_BYTES)
    }

    /// The payload a device sends.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// Why a renewal was refused: the `code` of a `cert/down` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalErrorCode {
    /// The payload is not `{"csr": "<PEM>"}` (or too large).
    InvalidRequest,
    /// The CSR fails the CA's checks (format, key type, signature).
    InvalidCsr,
    /// The CSR's CN is not the publishing device's id.
    IdMismatch,
    /// The CSR's key is the current certificate's: a renewal needs a new key.
    SameKey,
    /// Too many renewals from this device recently.
    RateLimited,
    /// The device may not renew (disabled, revoked).
    NotAllowed,
    /// The server failed; try again later.
    Internal,
}

impl RenewalErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalErrorCode::InvalidRequest => "invalid_request",
            RenewalErrorCode::InvalidCsr => "invalid_csr",
            RenewalErrorCode::IdMismatch => "id_mismatch",
            RenewalErrorCode::SameKey => "same_key",
            RenewalErrorCode::RateLimited => "rate_limited",
            RenewalErrorCode::NotAllowed => "not_allowed",
            RenewalErrorCode::Internal => "internal",
        }
    }
}

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlError<C> {
    /// What went wrong, for programs.
    pub code: C,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// `devices/{id}/cert/down`: the answer to a renewal request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RenewalAnswer {
    /// The new certificate, pending until the device connects with it.
    Issued(IssuedRenewal),
    /// The request was refused.
    Refused {
        /// Why.
        error: ControlError<RenewalErrorCode>,
    },
}

/// A renewed certificate as sent to the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuedRenewal {
    /// The new leaf certificate (PEM).
    pub certificate: String,
    /// The leaf followed by the issuing CA (PEM), for TLS stacks that send a chain.
    pub chain: String,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// End of its validity, Unix milliseconds.
    pub not_after: i64,
}

impl RenewalAnswer {
    /// A refusal with `code` and a sentence for people.
    pub fn refused(code: RenewalErrorCode, message: impl Into<String>) -> Self {
        RenewalAnswer::Refused {
            error: ControlError {
                code,
                message: message.into(),
            },
        }
    }

    /// The `cert/down` payload.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a `cert/down` payload (what a device does).
    pub fn decode(payload: &[u8]) -> Result<Self, ControlPayloadError> {
        decode(payload, 64 * 1024)
    }
}

/// `devices/{id}/bind/up`: the device confirms a claim with its nonce.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConfirmation {
    /// The nonce of the claim request, as received.
    pub nonce: String,
}

impl fmt::Debug for ClaimConfirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimConfirmation(<nonce>)")
    }
}

impl ClaimConfirmation {
    /// Decodes a `bind/up` payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ControlPayloadError> {
        decode(payload, MAX_CLAIM_CONFIRMATION_BYTES)
    }

    /// The payload a device sends.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// Why a claim confirmation was refused: the `code` of a `bind/down` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindErrorCode {
    /// The payload is not `{"nonce": "<hex>"}` (or too large).
    InvalidRequest,
    /// The claim expired before the confirmation came.
    ClaimExpired,
    /// The nonce is not the pending claim's.
    NonceMismatch,
    /// No claim of this device is pending (a replayed or late confirmation).
    NoPendingClaim,
    /// The device is bound already.
    AlreadyBound,
    /// The device may not be claimed (disabled, revoked).
    NotAllowed,
    /// Too many confirmations from this device recently.
    RateLimited,
    /// The server failed; try again later.
    Internal,
}

impl BindErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            BindErrorCode::InvalidRequest => "invalid_request",
            BindErrorCode::ClaimExpired => "claim_expired",
            BindErrorCode::NonceMismatch => "nonce_mismatch",
            BindErrorCode::NoPendingClaim => "no_pending_claim",
            BindErrorCode::AlreadyBound => "already_bound",
            BindErrorCode::NotAllowed => "not_allowed",
            BindErrorCode::RateLimited => "rate_limited",
            BindErrorCode::Internal => "internal",
        }
    }
}

/// `devices/{id}/bind/down`: what the server tells a device about claims.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BindMessage {
    /// A user or group claims the device: confirm with this nonce on
    /// `bind/up` before `expires_at`.
    Claim {
        /// 128 random bits, 32 lowercase hex characters.
        nonce: String,
        /// Deadline, Unix milliseconds.
        #[serde(rename = "expiresAt")]
        expires_at: i64,
    },
    /// The confirmation was accepted: the device belongs to `owner` now.
    Bound {
        /// `user:NAME` or `group:NAME`.
        owner: String,
    },
    /// The confirmation was refused.
    Error {
        /// Why, for programs.
        code: BindErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl fmt::Debug for BindMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindMessage::Claim { expires_at, .. } => f
                .debug_struct("Claim")
                .field("expires_at", expires_at)
                .finish_non_exhaustive(),
            BindMessage::Bound { owner } => f.debug_struct("Bound").field("owner", owner).finish(),
            BindMessage::Error { code, message } => f
                .debug_struct("Error")
                .field("code", code)
                .field("message", message)
                .finish(),
        }
    }
}

impl BindMessage {
    /// The `bind/down` payload.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a `bind/down` payload (what a device does).
    pub fn decode(payload: &[u8]) -> Result<Self, ControlPayloadError> {
        decode(payload, 4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renewal_payloads_have_the_documented_shape() {
        let issued = RenewalAnswer::Issued(IssuedRenewal {
            certificate: "C".into(),
            chain: "CH".into(),
            serial: "0a".into(),
            not_after: 1_700_000_000_000,
        });
        assert_eq!(
            String::from_utf8(issued.encode()).expect("utf-8"),
            r#"{"certificate":"C","chain":"CH","serial":"0a","notAfter":1700000000000}"#
        );
        let refused = RenewalAnswer::refused(RenewalErrorCode::SameKey, "make a new key");
        assert_eq!(
            String::from_utf8(refused.encode()).expect("utf-8"),
            r#"{"error":{"code":"same_key","message":"make a new key"}}"#
        );
        for answer in [issued, refused] {
            assert_eq!(RenewalAnswer::decode(&answer.encode()), Ok(answer));
        }
        let req = RenewalRequest::decode(br#"{"csr":"PEM"}"#).expect("decodes");
        assert_eq!(req.csr, "PEM");
    }

    #[test]
    fn bind_payloads_have_the_documented_shape() {
        let cases = [
            (
                BindMessage::Claim {
                    nonce: "00ff".into(),
                    expires_at: 5,
                },
                r#"{"type":"claim","nonce":"00ff","expiresAt":5}"#,
            ),
            (
                BindMessage::Bound {
                    owner: "user:ann".into(),
                },
                r#"{"type":"bound","owner":"user:ann"}"#,
            ),
            (
                BindMessage::Error {
                    code: BindErrorCode::NonceMismatch,
                    message: "m".into(),
                },
                r#"{"type":"error","code":"nonce_mismatch","message":"m"}"#,
            ),
        ];
        for (message, json) in cases {
            assert_eq!(String::from_utf8(message.encode()).expect("utf-8"), json);
            assert_eq!(BindMessage::decode(json.as_bytes()), Ok(message));
        }
        assert_eq!(
            ClaimConfirmation::decode(br#"{"nonce":"ab"}"#)
                .expect("decodes")
                .nonce,
            "ab"
        );
    }

    #[test]
    fn refuses_oversized_and_malformed_payloads() {
        let huge = format!(r#"{{"csr":"{}"}}"#, "A".repeat(MAX_RENEWAL_REQUEST_BYTES));
        assert!(matches!(
            RenewalRequest::decode(huge.as_bytes()),
            Err(ControlPayloadError::TooLarge { .. })
        ));
        for bad in [
            &b"not json"[..],
            br#"{"csr":1}"#,
            br#"{"csr":"x","extra":true}"#,
            br#"[]"#,
            b"",
        ] {
            assert!(
                matches!(
                    RenewalRequest::decode(bad),
                    Err(ControlPayloadError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(ClaimConfirmation::decode(br#"{"nonce":null}"#).is_err());
        assert!(ClaimConfirmation::decode(&[b' '; MAX_CLAIM_CONFIRMATION_BYTES + 1]).is_err());
    }

    proptest! {
        /// The bounded fuzz run of CI: whatever decodes comes back
        /// unchanged through its encoder, whatever does not is an error.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = RenewalRequest::decode(&bytes) {
                prop_assert_eq!(RenewalRequest::decode(&r.encode()), Ok(r));
            }
            if let Ok(c) = ClaimConfirmation::decode(&bytes) {
                prop_assert_eq!(ClaimConfirmation::decode(&c.encode()), Ok(c));
            }
            if let Ok(m) = BindMessage::decode(&bytes) {
                prop_assert_eq!(BindMessage::decode(&m.encode()), Ok(m));
            }
            if let Ok(a) = RenewalAnswer::decode(&bytes) {
                prop_assert_eq!(RenewalAnswer::decode(&a.encode()), Ok(a));
            }
        }

        #[test]
        fn claim_messages_round_trip(nonce in "[0-9a-f]{32}", expires_at in any::<i64>()) {
            let m = BindMessage::Claim { nonce, expires_at };
            prop_assert_eq!(BindMessage::decode(&m.encode()), Ok(m));
        }
    }
}
