//! Certificate renewal over the device's authenticated session
//! (DESIGN.md "Identity and trust"; docs/security.md "Renewal").
//!
//! A connected device sends a CSR for a *new* key on
//! `devices/{id}/cert/up`. The server checks it as every CSR is checked,
//! requires its CN to be the publishing device and its key to differ from
//! the one the device is connected with, signs it, and records the
//! certificate as `pending`. The device switches to it by reconnecting;
//! that connection makes it current (the broker's identity check) and
//! puts the old one on the CRL. A device that never uses it loses nothing:
//! its current certificate stays current.
//!
//! A [`crate::limit::RateLimiter`] in front bounds how often a device may
//! ask, so that a device flooding `cert/up` costs neither signatures nor
//! store writes.

use std::time::Duration;

use rampart_pki::{IssuedCertificate, Pki, PkiError};
use rampart_proto::DeviceId;
use rampart_proto::control::{IssuedRenewal, RenewalErrorCode, RenewalRequest};
use rampart_store::{Actor, NewCertificate, Store, StoreError};

/// Why a renewal was refused. Each has the `cert/down` error code the
/// device receives ([`RenewalError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// The payload is not a renewal request.
    #[error("the request is not {{\"csr\": \"<PEM>\"}}: {0}")]
    InvalidRequest(String),
    /// The CSR fails the CA's checks.
    #[error("the CSR was refused: {0}")]
    InvalidCsr(PkiError),
    /// The CSR names another identity.
    #[error("the CSR's CN is '{found}', but the request came from device '{device}'")]
    IdMismatch {
        /// The publishing device.
        device: DeviceId,
        /// The CSR's CN.
        found: String,
    },
    /// The CSR reuses the key of the certificate the device connected with.
    #[error(
        "the CSR's public key is the one of the current certificate; a renewal needs a newly generated key"
    )]
    SameKey,
    /// Too many requests recently.
    #[error("too many renewal requests from '{device}'; try again in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// The device.
        device: DeviceId,
        /// Until the next request is admitted.
        retry_after: Duration,
    },
    /// The device may not renew.
    #[error("'{device}' may not renew its certificate: {why}")]
    NotAllowed {
        /// The device.
        device: DeviceId,
        /// Why.
        why: String,
    },
    /// Rampart cannot sign (external CA without its key) or record.
    #[error("the renewal could not be completed on the server: {0}")]
    Internal(String),
}

impl RenewalError {
    /// The code sent to the device in `cert/down`.
    pub fn code(&self) -> RenewalErrorCode {
        match self {
            RenewalError::InvalidRequest(_) => RenewalErrorCode::InvalidRequest,
            RenewalError::InvalidCsr(_) => RenewalErrorCode::InvalidCsr,
            RenewalError::IdMismatch { .. } => RenewalErrorCode::IdMismatch,
            RenewalError::SameKey => RenewalErrorCode::SameKey,
            RenewalError::RateLimited { .. } => RenewalErrorCode::RateLimited,
            RenewalError::NotAllowed { .. } => RenewalErrorCode::NotAllowed,
            RenewalError::Internal(_) => RenewalErrorCode::Internal,
        }
    }
}

/// A renewal carried out: the certificate is recorded as pending.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The new certificate.
    pub certificate: IssuedCertificate,
    /// The certificate followed by the issuing CA (PEM).
    pub chain: String,
    /// The pending certificate this one replaced, if there was one.
    pub replaced: Option<String>,
}

impl Renewed {
    /// The `cert/down` answer carrying the certificate.
    pub fn answer(&self) -> IssuedRenewal {
        IssuedRenewal {
            certificate: self.certificate.pem.clone(),
            chain: self.chain.clone(),
            serial: self.certificate.serial.clone(),
            not_after: (self.certificate.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }
}

/// What a renewal needs from the server: the registry and the CA.
#[derive(Debug, Clone, Copy)]
pub struct Renewal<'a> {
    /// The registry.
    pub store: &'a dyn Store,
    /// The CA that signs.
    pub pki: &'a Pki,
}

impl Renewal<'_> {
    /// Renews `device`'s certificate from `request`. `connected_key` is the
    /// SHA-256 of the public key of the certificate the device is connected
    /// with (the broker's identity proof); a CSR for that key is refused.
    /// The request is audited as done by `actor` (the device).
    pub async fn renew(
        &self,
        device: &DeviceId,
        connected_key: &str,
        request: &RenewalRequest,
        actor: &Actor,
    ) -> Result<Renewed, RenewalError> {
        let registered = self
            .store
            .device(device)
            .await
            .map_err(|e| RenewalError::Internal(e.to_string()))?
            .ok_or_else(|| RenewalError::NotAllowed {
                device: device.clone(),
                why: "it is not registered".into(),
            })?;
        if !registered.state.may_connect() {
            return Err(RenewalError::NotAllowed {
                device: device.clone(),
                why: format!("it is {}", registered.state),
            });
        }
        let csr = self
            .pki
            .verify_device_csr(&request.csr)
            .map_err(|e| match e {
                PkiError::CannotIssue { .. } => RenewalError::Internal(e.to_string()),
                other => RenewalError::InvalidCsr(other),
            })?;
        if csr.id() != device {
            return Err(RenewalError::IdMismatch {
                device: device.clone(),
                found: csr.id().to_string(),
            });
        }
        // Public keys are not secret: a plain comparison is fine here.
        if csr.public_key_sha256() == connected_key {
            return Err(RenewalError::SameKey);
        }
        let certificate = self
            .pki
            .sign_verified_csr(&csr)
            .map_err(|e| RenewalError::Internal(e.to_string()))?;
        let replaced = self
            .store
            .add_pending_certificate(
                NewCertificate {
                    identity: device.clone(),
                    serial: certificate.serial.clone(),
                    fingerprint: certificate.fingerprint.clone(),
                    not_before: certificate.not_before,
                    not_after: certificate.not_after,
                },
                actor,
            )
            .await
            .map_err(|e| match e {
                StoreError::InvalidState { .. } | StoreError::NotFound(_) => {
                    RenewalError::NotAllowed {
                        device: device.clone(),
                        why: e.to_string(),
                    }
                }
                other => RenewalError::Internal(other.to_string()),
            })?;
        Ok(Renewed {
            chain: crate::registration::chain_pem(&certificate.pem, self.pki.issuing_ca_pem()),
            certificate,
            replaced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    #[test]
    fn every_error_has_its_wire_code() {
        let d = id("d");
        let cases = [
            (RenewalError::InvalidRequest("x".into()), "invalid_request"),
            (
                RenewalError::InvalidCsr(PkiError::CsrSignatureInvalid),
                "invalid_csr",
            ),
            (
                RenewalError::IdMismatch {
                    device: d.clone(),
                    found: "e".into(),
                },
                "id_mismatch",
            ),
            (RenewalError::SameKey, "same_key"),
            (
                RenewalError::RateLimited {
                    device: d.clone(),
                    retry_after: Duration::from_millis(10),
                },
                "rate_limited",
            ),
            (
                RenewalError::NotAllowed {
                    device: d,
                    why: "disabled".into(),
                },
                "not_allowed",
            ),
            (RenewalError::Internal("db".into()), "internal"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code().as_str(), code, "{err}");
        }
    }
}
