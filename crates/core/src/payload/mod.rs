//! Wire formats between a device and Rampart (`docs/payloads.md`).
//!
//! Uplinks are encoded into a caller-provided `&mut [u8]`; each encoder
//! returns the length written or [`EncodeError::BufferTooSmall`]. Output is
//! deterministic: the same reading always gives the same bytes, so a resend
//! after a reconnect is recognised by the server as a replay and not flagged
//! as a sequence conflict. Non-finite numbers are never emitted.
//!
//! Downlinks are parsed from the received bytes without allocating: the
//! results borrow from the payload ([`json::JsonStr`] keeps escapes until
//! the host asks for the text).
//!
//! | topic | direction | here |
//! |---|---|---|
//! | `devices/{id}/telemetry/up` | up | [`encode_reading`], [`encode_batch`] (JSON or CBOR) |
//! | `devices/{id}/state/up` | up | [`encode_state`] |
//! | `devices/{id}/state/down` | down | [`parse_state_request`] |
//! | `devices/{id}/bind/down` | down | [`parse_bind`] |
//! | `devices/{id}/bind/up` | up | [`encode_claim_confirmation`] |
//! | `devices/{id}/cert/up` | up | [`encode_renewal_request`] |
//! | `devices/{id}/cert/down` | down | [`parse_certificate`] |
//! | `devices/{id}/cmd/down` | down | [`parse_command`] |
//! | `devices/{id}/cmd/up` | up | [`encode_command_result`] |
//! | `devices/{id}/ota/down` | down | [`parse_ota`] |
//! | `devices/{id}/ota/up` | up | [`encode_ota_report`] |

use core::fmt;

pub mod downlink;
pub mod json;
mod out;
pub mod telemetry;
pub mod uplink;

pub use downlink::{
    BindMessage, CertificateMessage, Command, DownlinkError, OtaMessage, OtaOffer, StateRequest,
    parse_bind, parse_certificate, parse_command, parse_ota, parse_state_request,
};
pub use telemetry::{Encoded, MetricNames, NameTableError, encode_batch, encode_reading};
pub use uplink::{
    CommandStatus, OtaReport, OtaStatus, ReportedState, StateValue, encode_claim_confirmation,
    encode_command_result, encode_ota_report, encode_renewal_request, encode_state,
};

use crate::BufferTooSmall;

/// Largest payload the server accepts (`docs/payloads.md`): 64 KiB.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most readings the server accepts in one batch.
pub const MAX_BATCH: usize = 1000;

/// Telemetry wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON text (RFC 8259).
    Json,
    /// CBOR (RFC 8949); the server recognises it by its first byte, or by
    /// the MQTT 5 content type `application/cbor`.
    Cbor,
}

/// Why an uplink could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// A reading names a metric index beyond the name table.
    UnknownMetric(u8),
    /// A batch with no readings (the server refuses empty batches).
    NoReadings,
    /// A NaN or infinite number in a reported-state field.
    NotFinite,
    /// A reported-state field named twice, or named like a built-in field.
    DuplicateField,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall => BufferTooSmall.fmt(f),
            EncodeError::UnknownMetric(i) => {
                write!(
                    f,
                    "metric index {i} is not in the device's metric-name table"
                )
            }
            EncodeError::NoReadings => f.write_str("a batch needs at least one reading"),
            EncodeError::NotFinite => {
                f.write_str("a reported value is NaN or infinite; report a finite number or null")
            }
            EncodeError::DuplicateField => f.write_str(
                "a reported-state field appears twice (or reuses fw, type, uptimeMs or rssi)",
            ),
        }
    }
}

impl core::error::Error for EncodeError {}

impl From<BufferTooSmall> for EncodeError {
    fn from(_: BufferTooSmall) -> Self {
        EncodeError::BufferTooSmall
    }
}

/// Hex characters in a claim nonce.
pub const NONCE_LEN: usize = 32;

/// A claim nonce from the server: 32 lowercase hex characters (128 bits),
/// echoed back to confirm a claim (DESIGN.md "Claiming").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// Validates 32 lowercase hex characters.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; NONCE_LEN] = s.as_bytes().try_into().ok()?;
        Self::from_ascii(bytes)
    }

    /// From 32 ASCII bytes (persisted form), validated.
    pub fn from_ascii(bytes: [u8; NONCE_LEN]) -> Option<Self> {
        bytes
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(Self(bytes))
    }

    /// The 32 ASCII hex bytes.
    pub fn as_ascii(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    /// The nonce as text.
    pub fn as_str(&self) -> &str {
        // Validated ASCII on construction.
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.as_str())
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_32_lowercase_hex() {
        let n = Nonce::parse("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(n.as_str(), "0123456789abcdef0123456789abcdef");
        assert_eq!(Nonce::from_ascii(*n.as_ascii()), Some(n));
        assert_eq!(Nonce::parse("0123456789ABCDEF0123456789abcdef"), None);
        assert_eq!(Nonce::parse("0123456789abcdef0123456789abcde"), None);
        assert_eq!(Nonce::parse("0123456789abcdef0123456789abcdef0"), None);
        assert_eq!(Nonce::parse("0123456789abcdef0123456789abcdeg"), None);
    }
}
