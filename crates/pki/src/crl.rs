//! Certificate revocation lists: revocation reasons and the CRL contents.
//!
//! Which serials are revoked is the store's knowledge; this module turns that
//! list into RFC 5280 §5 CRL parameters for the issuing CA to sign.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::PkiError;

/// Longest serial accepted: RFC 5280 §4.1.2.2 allows 20 octets (plus a sign octet).
const MAX_SERIAL_BYTES: usize = 21;

/// Why a certificate was revoked; a subset of RFC 5280 §5.3.1 `CRLReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given (encoded by leaving the reason code out, as RFC 5280 §5.3.1 asks).
    Unspecified,
    /// The private key is known or suspected to be compromised.
    KeyCompromise,
    /// The subject's name or other information changed.
    AffiliationChanged,
    /// Replaced by a newer certificate (e.g. after renewal).
    Superseded,
    /// The device or service was decommissioned.
    CessationOfOperation,
    /// The subject's rights were withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in RFC 5280 code order.
    pub const ALL: [Self; 6] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The kebab-case name, as parsed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
            Self::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    /// The RFC 5280 §5.3.1 `CRLReason` code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason code extension to write, if any.
    fn extension(self) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        match self {
            // RFC 5280 §5.3.1: "the reason code CRL entry extension SHOULD be
            // absent instead of using the unspecified (0) reasonCode value".
            Self::Unspecified => None,
            Self::KeyCompromise => Some(R::KeyCompromise),
            Self::AffiliationChanged => Some(R::AffiliationChanged),
            Self::Superseded => Some(R::Superseded),
            Self::CessationOfOperation => Some(R::CessationOfOperation),
            Self::PrivilegeWithdrawn => Some(R::PrivilegeWithdrawn),
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| PkiError::UnknownRevocationReason {
                given: s.chars().take(64).collect(),
            })
    }
}

/// One revoked certificate, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSerial {
    /// Serial number in hex, as in [`crate::IssuedCertificate::serial`] (colons allowed).
    pub serial: String,
    /// Why it was revoked.
    pub reason: RevocationReason,
    /// When it was revoked (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

/// CRL parameters for the issuing CA whose subject key identifier is `issuer_key_id`.
pub(crate) fn params(
    revoked: &[RevokedSerial],
    crl_number: u64,
    validity: std::time::Duration,
    now: OffsetDateTime,
    issuer_key_id: Option<Vec<u8>>,
) -> Result<CertificateRevocationListParams, PkiError> {
    let validity = time::Duration::try_from(validity)
        .ok()
        .filter(|d| d.is_positive())
        .ok_or_else(|| PkiError::InvalidCrl {
            reason: "validity must be longer than zero and shorter than a few millennia".to_owned(),
        })?;
    let next_update = now
        .checked_add(validity)
        .ok_or_else(|| PkiError::InvalidCrl {
            reason: "validity reaches past the year 9999".to_owned(),
        })?;
    let revoked_certs = revoked
        .iter()
        .map(|entry| {
            Ok(RevokedCertParams {
                serial_number: parse_serial(&entry.serial)?,
                revocation_time: entry.revoked_at,
                reason_code: entry.reason.extension(),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    Ok(CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The authority key identifier must equal the issuer's subject key
        // identifier, or path builders (OpenSSL's among them) skip this CRL.
        key_identifier_method: issuer_key_id.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified),
    })
}

/// Serial bytes from hex (upper or lower case, colons allowed).
pub(crate) fn parse_serial(serial: &str) -> Result<SerialNumber, PkiError> {
    let invalid = |reason| PkiError::InvalidSerial {
        serial: serial.chars().take(80).collect(),
        reason,
    };
    let digits: String = serial.trim().chars().filter(|&c| c != ':').collect();
    if digits.is_empty() {
        return Err(invalid("it is empty"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(padded).map_err(|_| invalid("it is not hexadecimal"))?;
    if bytes.len() > MAX_SERIAL_BYTES {
        return Err(invalid("it is longer than 20 bytes"));
    }
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_text_and_serde() {
        for reason in RevocationReason::ALL {
            assert_eq!(
                reason
                    .to_string()
                    .parse::<RevocationReason>()
                    .expect("parses"),
                reason
            );
        }
        assert_eq!(
            "key-compromise"
                .parse::<RevocationReason>()
                .expect("parses"),
            RevocationReason::KeyCompromise
        );
        let err = "stolen".parse::<RevocationReason>().expect_err("unknown");
        assert!(
            err.to_string()
                .contains("key-compromise, affiliation-changed"),
            "{err}"
        );
    }

    #[test]
    fn reason_codes_follow_rfc_5280() {
        let codes: Vec<u8> = RevocationReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, [0, 1, 3, 4, 5, 9]);
        for reason in RevocationReason::ALL {
            assert_eq!(
                reason.extension().map(|r| r as u8),
                (reason.code() != 0).then_some(reason.code())
            );
        }
    }

    #[test]
    fn serials_parse_in_common_spellings() {
        assert_eq!(parse_serial("0a:FF").expect("ok").to_bytes(), [0x0a, 0xff]);
        assert_eq!(parse_serial("aff").expect("ok").to_bytes(), [0x0a, 0xff]);
        assert!(parse_serial("").is_err());
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial(&"ab".repeat(22)).is_err());
    }

    #[test]
    fn validity_must_be_positive() {
        let now = OffsetDateTime::now_utc();
        let err = params(&[], 1, std::time::Duration::ZERO, now, None).expect_err("zero");
        assert!(matches!(err, PkiError::InvalidCrl { .. }));
    }
}
