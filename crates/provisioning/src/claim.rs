//! Claiming a device (DESIGN.md "Claiming"; docs/security.md "Claiming").
//!
//! 1. [`start`]: a user or group presents the device id, the claim code
//!    from the label (and, from a QR code, the certificate fingerprint).
//!    The code is compared with the stored hash in constant time; the
//!    device must be unbound and online. A claim with a fresh 128-bit nonce
//!    is recorded; the change feed tells `serve`, which sends the nonce on
//!    `devices/{id}/bind/down` ([`request_message`]).
//! 2. [`confirm`]: the device answers on `bind/up` with the nonce; checked
//!    in constant time and against the expiry, the device is then bound.
//!
//! The CLI calls [`start`] and waits with [`outcome`]; the web console
//! (issue 8) calls the same functions.

use std::time::Duration;

use rampart_proto::control::{BindErrorCode, BindMessage, ClaimConfirmation};
use rampart_proto::{ClaimCode, DeviceId, QrPayload};
use rampart_store::{
    Actor, Claim, ClaimStatus, Device, DeviceState, NewClaim, Owner, Store, StoreError,
};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Random bytes in a claim nonce (128 bits).
pub const NONCE_BYTES: usize = 16;

/// How claims behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// How long the device has to confirm.
    pub expiry: Duration,
    /// Confirmations with a wrong nonce before the claim is refused.
    pub max_attempts: u32,
}

impl Default for ClaimPolicy {
    fn default() -> Self {
        Self {
            expiry: Duration::from_secs(600),
            max_attempts: 5,
        }
    }
}

/// What a user presents to claim a device.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The device.
    pub device: DeviceId,
    /// The claim code from its label.
    pub code: ClaimCode,
    /// Its certificate fingerprint, when the request came from a QR code.
    pub fingerprint: Option<String>,
    /// Who is to own it.
    pub owner: Owner,
}

impl ClaimRequest {
    /// A request from the content of a label's QR code.
    pub fn from_qr(qr: &str, owner: Owner) -> Result<Self, ClaimError> {
        let payload: QrPayload = serde_json_from_qr(qr)?;
        Ok(Self {
            device: DeviceId::parse(&payload.device_id)
                .map_err(|e| ClaimError::InvalidQr(format!("its deviceId: {e}")))?,
            code: ClaimCode::parse(&payload.claim_code)
                .map_err(|e| ClaimError::InvalidQr(format!("its claimCode: {e}")))?,
            fingerprint: Some(payload.fingerprint.trim().to_ascii_lowercase()),
            owner,
        })
    }
}

fn serde_json_from_qr(qr: &str) -> Result<QrPayload, ClaimError> {
    if qr.len() > 4096 {
        return Err(ClaimError::InvalidQr(
            "it is longer than a label holds".into(),
        ));
    }
    QrPayload::from_json(qr).map_err(|e| ClaimError::InvalidQr(e.to_string()))
}

/// Why a claim could not be started, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The QR content is not a Rampart label.
    #[error(
        "the QR code content is not a Rampart device label ({0}); it must be the JSON {{\"deviceId\", \"fingerprint\", \"claimCode\"}}"
    )]
    InvalidQr(String),
    /// No such device.
    #[error("no device with id '{0}'")]
    UnknownDevice(DeviceId),
    /// The QR code's fingerprint is not the device's certificate.
    #[error(
        "the label's fingerprint does not match the certificate of '{0}': the label belongs to another device or an older certificate"
    )]
    FingerprintMismatch(DeviceId),
    /// The code does not match.
    #[error("wrong claim code for '{0}': check the code on the device's label")]
    WrongCode(DeviceId),
    /// Bound already.
    #[error("'{device}' is already claimed{by}", by = if *.by_requester { " by you" } else { " by another owner" })]
    AlreadyClaimed {
        /// The device.
        device: DeviceId,
        /// Whether the requester owns it.
        by_requester: bool,
    },
    /// Disabled or revoked.
    #[error("'{device}' cannot be claimed: it is {state}")]
    NotClaimable {
        /// The device.
        device: DeviceId,
        /// Its state.
        state: DeviceState,
    },
    /// Not connected: it could not confirm.
    #[error(
        "device offline: '{0}' must be connected to confirm the claim; power it on (or check its network) and try again"
    )]
    Offline(DeviceId),
    /// The device did not confirm in time.
    #[error("the claim of '{0}' expired before the device confirmed it; try again")]
    Expired(DeviceId),
    /// The server refused the device's confirmation, or another claim
    /// replaced this one.
    #[error("the claim of '{device}' was {status}: {reason}")]
    Ended {
        /// The device.
        device: DeviceId,
        /// `refused` or `superseded`.
        status: ClaimStatus,
        /// Why.
        reason: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Starts a claim of `request.device` by `request.owner`, with `nonce`
/// (fresh random bytes from the caller's CSPRNG) and the deadline `now` +
/// `policy.expiry`. See the module documentation for the checks.
pub async fn start(
    store: &dyn Store,
    request: &ClaimRequest,
    policy: &ClaimPolicy,
    nonce: [u8; NONCE_BYTES],
    now: OffsetDateTime,
    actor: &Actor,
) -> Result<Claim, ClaimError> {
    let id = &request.device;
    let device = store
        .device(id)
        .await?
        .ok_or_else(|| ClaimError::UnknownDevice(id.clone()))?;
    match device.state {
        DeviceState::Unbound => {}
        DeviceState::Bound => {
            return Err(ClaimError::AlreadyClaimed {
                device: id.clone(),
                by_requester: device.owner.as_ref() == Some(&request.owner),
            });
        }
        state => {
            return Err(ClaimError::NotClaimable {
                device: id.clone(),
                state,
            });
        }
    }
    if let Some(fp) = &request.fingerprint
        && *fp != device.fingerprint
    {
        return Err(ClaimError::FingerprintMismatch(id.clone()));
    }
    let stored = store.claim_code_hash(id).await?;
    let presented = request.code.hash();
    match &stored {
        Some(hash) if ct_eq(hash, &presented) => {}
        _ => return Err(ClaimError::WrongCode(id.clone())),
    }
    if !device.online {
        return Err(ClaimError::Offline(id.clone()));
    }
    let expires_at = now + policy.expiry;
    let claim = store
        .start_claim(
            NewClaim {
                device: id.clone(),
                owner: request.owner.clone(),
                nonce: hex::encode(nonce),
                expires_at,
                claim_code_hash: presented,
            },
            actor,
        )
        .await
        .map_err(|e| match e {
            StoreError::ClaimCodeChanged(d) => ClaimError::WrongCode(d),
            StoreError::InvalidState { id, state, .. } if state == "bound" => {
                ClaimError::AlreadyClaimed {
                    device: id,
                    by_requester: false,
                }
            }
            other => ClaimError::Store(other),
        })?;
    Ok(claim)
}

/// The `bind/down` message carrying a pending claim's nonce.
pub fn request_message(claim: &Claim) -> BindMessage {
    BindMessage::Claim {
        nonce: claim.nonce.clone(),
        expires_at: unix_ms(claim.expires_at),
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Where a claim stands for whoever waits on it: `Ok(Some(device))` once
/// bound, `Ok(None)` while pending, an error once it failed. A pending
/// claim past its deadline is ended as expired here.
pub async fn outcome(
    store: &dyn Store,
    claim_id: u64,
    now: OffsetDateTime,
    actor: &Actor,
) -> Result<Option<Device>, ClaimError> {
    let claim = store
        .claim(claim_id)
        .await?
        .ok_or(StoreError::ClaimNotFound(claim_id))?;
    match claim.status {
        ClaimStatus::Bound => {
            let device = store
                .device(&claim.device)
                .await?
                .ok_or_else(|| ClaimError::UnknownDevice(claim.device.clone()))?;
            Ok(Some(device))
        }
        ClaimStatus::Pending if now < claim.expires_at => Ok(None),
        ClaimStatus::Pending => {
            match store
                .end_claim(
                    claim.id,
                    ClaimStatus::Expired,
                    BindErrorCode::ClaimExpired.as_str(),
                    actor,
                )
                .await
            {
                // The device may have confirmed meanwhile: look again.
                Err(StoreError::ClaimState { .. }) => {
                    Box::pin(outcome(store, claim_id, now, actor)).await
                }
                Err(e) => Err(e.into()),
                Ok(_) => Err(ClaimError::Expired(claim.device)),
            }
        }
        ClaimStatus::Expired => Err(ClaimError::Expired(claim.device)),
        status @ (ClaimStatus::Refused | ClaimStatus::Superseded) => Err(ClaimError::Ended {
            device: claim.device,
            status,
            reason: match status {
                ClaimStatus::Superseded => "another claim of the device replaced it".into(),
                _ => refusal_text(claim.reason.as_deref()),
            },
        }),
    }
}

fn refusal_text(code: Option<&str>) -> String {
    match code {
        Some("nonce_mismatch") => {
            "the device answered with wrong nonces too often (is it the device on the label?)"
                .into()
        }
        Some("not_delivered") => {
            "the device is connected but did not subscribe to its bind/down topic, so it never received the request".into()
        }
        Some("not_allowed") => "the device was disabled or revoked meanwhile".into(),
        Some(other) => other.to_owned(),
        None => "no reason recorded".into(),
    }
}

/// A refused confirmation: the `bind/down` error the device receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfirmError {
    /// The code.
    pub code: BindErrorCode,
    /// The sentence.
    pub message: String,
}

impl ConfirmError {
    fn new(code: BindErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `bind/down` message.
    pub fn message(&self) -> BindMessage {
        BindMessage::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The device `device` confirms its pending claim with `confirmation` at
/// `now`. On success it is bound; the returned device names its owner.
pub async fn confirm(
    store: &dyn Store,
    device: &DeviceId,
    confirmation: &ClaimConfirmation,
    policy: &ClaimPolicy,
    now: OffsetDateTime,
    actor: &Actor,
) -> Result<Device, ConfirmError> {
    let internal = |e: StoreError| {
        tracing::error!(device_id = %device, error = %e, "claim confirmation failed in the store");
        ConfirmError::new(
            BindErrorCode::Internal,
            "the server could not record the confirmation; send it again",
        )
    };
    let registered = store.device(device).await.map_err(internal)?;
    let Some(registered) = registered else {
        return Err(ConfirmError::new(
            BindErrorCode::NotAllowed,
            "the device is not registered",
        ));
    };
    let claim = store.latest_claim(device).await.map_err(internal)?;
    let claim = match claim {
        Some(c) if c.status == ClaimStatus::Pending => c,
        _ if registered.state == DeviceState::Bound => {
            return Err(ConfirmError::new(
                BindErrorCode::AlreadyBound,
                "the device is already bound; there is nothing to confirm",
            ));
        }
        _ => {
            return Err(ConfirmError::new(
                BindErrorCode::NoPendingClaim,
                "no claim of this device is pending (it ended, or this is a replay)",
            ));
        }
    };
    if now >= claim.expires_at {
        end(
            store,
            &claim,
            ClaimStatus::Expired,
            BindErrorCode::ClaimExpired,
            actor,
        )
        .await
        .map_err(internal)?;
        return Err(ConfirmError::new(
            BindErrorCode::ClaimExpired,
            "the claim expired before this confirmation; the user must start it again",
        ));
    }
    if !ct_eq(&confirmation.nonce, &claim.nonce) {
        let attempts = store
            .count_claim_attempt(claim.id)
            .await
            .map_err(internal)?;
        if attempts >= policy.max_attempts {
            end(
                store,
                &claim,
                ClaimStatus::Refused,
                BindErrorCode::NonceMismatch,
                actor,
            )
            .await
            .map_err(internal)?;
            return Err(ConfirmError::new(
                BindErrorCode::NonceMismatch,
                "wrong nonce; too many wrong nonces, so the claim is refused",
            ));
        }
        return Err(ConfirmError::new(
            BindErrorCode::NonceMismatch,
            "the nonce is not the pending claim's",
        ));
    }
    if !registered.state.may_connect() {
        return Err(ConfirmError::new(
            BindErrorCode::NotAllowed,
            format!("the device is {}", registered.state),
        ));
    }
    store
        .complete_claim(claim.id, actor)
        .await
        .map_err(|e| match e {
            StoreError::ClaimState { .. } => ConfirmError::new(
                BindErrorCode::NoPendingClaim,
                "the claim ended while this confirmation was checked",
            ),
            StoreError::InvalidState { ref state, .. } if state == "bound" => {
                ConfirmError::new(BindErrorCode::AlreadyBound, "the device is already bound")
            }
            StoreError::InvalidState { .. } => {
                ConfirmError::new(BindErrorCode::NotAllowed, e.to_string())
            }
            other => internal(other),
        })
}

/// Ends `claim` as `status` with `code` as its reason; a claim that ended
/// meanwhile (a concurrent confirmation) is left as it is.
async fn end(
    store: &dyn Store,
    claim: &Claim,
    status: ClaimStatus,
    code: BindErrorCode,
    actor: &Actor,
) -> Result<(), StoreError> {
    match store
        .end_claim(claim.id, status, code.as_str(), actor)
        .await
    {
        Ok(_) | Err(StoreError::ClaimState { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `bind/down` message telling the device it is bound.
pub fn bound_message(device: &Device) -> BindMessage {
    BindMessage::Bound {
        owner: device
            .owner
            .as_ref()
            .map(Owner::to_string)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_content_becomes_a_request() {
        let code = ClaimCode::from_random([3; rampart_proto::CLAIM_CODE_BYTES]);
        let qr = QrPayload {
            device_id: "lamp-1".into(),
            fingerprint: "AB".repeat(32),
            claim_code: code.as_str().into(),
        }
        .to_json();
        let r = ClaimRequest::from_qr(&qr, Owner::User("ann".into())).expect("valid QR");
        assert_eq!(r.device.as_str(), "lamp-1");
        assert_eq!(r.code, code);
        assert_eq!(r.fingerprint, Some("ab".repeat(32)));
        for bad in [
            "",
            "not json",
            r#"{"deviceId":"lamp-1"}"#,
            r#"{"deviceId":"a b","fingerprint":"x","claimCode":"y"}"#,
        ] {
            let err = ClaimRequest::from_qr(bad, Owner::User("ann".into())).expect_err(bad);
            assert!(matches!(err, ClaimError::InvalidQr(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn constant_time_comparison_compares() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
