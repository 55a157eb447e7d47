//! What each registry change is allowed to do, and what it records: the
//! decisions both backends make inside their transactions, kept free of I/O
//! so that SQLite and PostgreSQL cannot disagree on a state transition or on
//! the audit detail of a change.

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use serde_json::json;

use crate::{
    Actor, AuditEntry, CertificateRecord, CertificateStatus, ChangeKind, Claim, ClaimStatus,
    Device, DeviceState, NewCertificate, NewClaim, NewDevice, NewService, Result, Service,
    ServiceState, StoreError,
};

/// A change to an identity: its change-feed row and its audit row, which
/// the backend appends in the transaction that makes the change.
#[derive(Debug, Clone)]
pub(crate) struct IdentityChange {
    /// What happened (also the audit action).
    pub kind: ChangeKind,
    /// To whom.
    pub subject: DeviceId,
    /// The audit row's detail.
    pub detail: serde_json::Value,
}

impl IdentityChange {
    /// The audit row recording this change by `actor`.
    pub fn audit_entry(&self, actor: &Actor) -> AuditEntry {
        AuditEntry {
            actor: actor.clone(),
            action: self.kind.as_str().to_owned(),
            subject: Some(self.subject.to_string()),
            detail: self.detail.clone(),
        }
    }
}

/// A device was registered.
pub(crate) fn device_created(d: &NewDevice) -> IdentityChange {
    IdentityChange {
        kind: ChangeKind::DeviceCreated,
        subject: d.id.clone(),
        detail: json!({ "serial": d.serial, "fingerprint": d.fingerprint }),
    }
}

/// A device's certificate is to be revoked: refused when it already is.
pub(crate) fn revoke_device(dev: &Device, reason: RevocationReason) -> Result<IdentityChange> {
    if dev.state == DeviceState::Revoked {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "it is already revoked",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::DeviceRevoked,
        subject: dev.id.clone(),
        detail: json!({ "serial": dev.serial, "reason": reason.to_string() }),
    })
}

/// A device is to be disabled or enabled: the state it moves to. Enabling
/// returns it to `bound` if it has an owner, else `unbound`; a revoked
/// device is final.
pub(crate) fn set_disabled(dev: &Device, disabled: bool) -> Result<(DeviceState, IdentityChange)> {
    if dev.state == DeviceState::Revoked {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "a revoked device cannot be disabled or enabled; register it again",
        });
    }
    let target = match (disabled, dev.state) {
        (true, _) => DeviceState::Disabled,
        (false, DeviceState::Disabled) if dev.owner.is_some() => DeviceState::Bound,
        (false, DeviceState::Disabled) => DeviceState::Unbound,
        (false, state) => state,
    };
    let kind = if disabled {
        ChangeKind::DeviceDisabled
    } else {
        ChangeKind::DeviceEnabled
    };
    let change = IdentityChange {
        kind,
        subject: dev.id.clone(),
        detail: json!({ "from": dev.state.as_str(), "to": target.as_str() }),
    };
    Ok((target, change))
}

/// A device is to be deleted; its certificate is revoked as
/// `cessation-of-operation` so that it stays on the CRL.
pub(crate) fn delete_device(dev: &Device) -> (RevocationReason, IdentityChange) {
    (
        RevocationReason::CessationOfOperation,
        IdentityChange {
            kind: ChangeKind::DeviceDeleted,
            subject: dev.id.clone(),
            detail: json!({ "serial": dev.serial, "state": dev.state.as_str() }),
        },
    )
}

/// A device's claim code is to be replaced: refused once it is revoked.
pub(crate) fn rotate_claim_code(dev: &Device) -> Result<IdentityChange> {
    if dev.state == DeviceState::Revoked {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "a revoked device cannot be claimed",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::ClaimCodeRotated,
        subject: dev.id.clone(),
        detail: json!({}),
    })
}

/// A service identity was registered.
pub(crate) fn service_created(s: &NewService) -> IdentityChange {
    IdentityChange {
        kind: ChangeKind::ServiceCreated,
        subject: s.id.clone(),
        detail: json!({ "serial": s.serial, "fingerprint": s.fingerprint }),
    }
}

/// A service's certificate is to be revoked: refused when it already is.
pub(crate) fn revoke_service(svc: &Service, reason: RevocationReason) -> Result<IdentityChange> {
    if svc.state == ServiceState::Revoked {
        return Err(StoreError::InvalidState {
            id: svc.id.clone(),
            state: "revoked".into(),
            why: "it is already revoked",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::ServiceRevoked,
        subject: svc.id.clone(),
        detail: json!({ "serial": svc.serial, "reason": reason.to_string() }),
    })
}

/// A renewal's certificate is to be recorded as pending for `dev`,
/// replacing the pending certificate `replaced` if there is one. Only a
/// device that may connect gets one.
pub(crate) fn issue_certificate(
    dev: &Device,
    cert: &NewCertificate,
    replaced: Option<&str>,
) -> Result<IdentityChange> {
    if !dev.state.may_connect() {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "only a device that may connect gets a renewed certificate",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::CertificateIssued,
        subject: dev.id.clone(),
        detail: json!({
            "serial": cert.serial,
            "fingerprint": cert.fingerprint,
            "current": dev.serial,
            "replaced_pending": replaced,
        }),
    })
}

/// `cert` is to become `dev`'s current certificate; the current one is
/// superseded (and revoked as `superseded`).
pub(crate) fn activate_certificate(
    dev: &Device,
    cert: &CertificateRecord,
) -> Result<IdentityChange> {
    if cert.identity != dev.id {
        return Err(StoreError::CertificateState {
            serial: cert.serial.clone(),
            status: cert.status.as_str().into(),
            why: "it belongs to another identity",
        });
    }
    if cert.status != CertificateStatus::Pending {
        return Err(StoreError::CertificateState {
            serial: cert.serial.clone(),
            status: cert.status.as_str().into(),
            why: "only a pending certificate can be made current",
        });
    }
    if !dev.state.may_connect() {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "its certificates cannot be activated",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::CertificateActivated,
        subject: dev.id.clone(),
        detail: json!({ "serial": cert.serial, "superseded": dev.serial }),
    })
}

/// A claim of `dev` is to be recorded. `stored_hash` is the device's claim
/// code hash now: it must still be the one the caller verified.
pub(crate) fn start_claim(
    dev: &Device,
    claim: &NewClaim,
    stored_hash: Option<&str>,
) -> Result<IdentityChange> {
    if dev.state != DeviceState::Unbound {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: match dev.state {
                DeviceState::Bound => "it is already claimed",
                _ => "only an unbound device can be claimed",
            },
        });
    }
    if stored_hash != Some(claim.claim_code_hash.as_str()) {
        return Err(StoreError::ClaimCodeChanged(dev.id.clone()));
    }
    Ok(IdentityChange {
        kind: ChangeKind::ClaimRequested,
        subject: dev.id.clone(),
        detail: json!({
            "owner": claim.owner.to_string(),
            "expires_at": crate::millis::to_ms(claim.expires_at),
        }),
    })
}

/// The device confirmed `claim`: it is to be bound to the claim's owner.
pub(crate) fn complete_claim(dev: &Device, claim: &Claim) -> Result<IdentityChange> {
    require_pending(claim, "only a pending claim can bind its device")?;
    if dev.state != DeviceState::Unbound {
        return Err(StoreError::InvalidState {
            id: dev.id.clone(),
            state: dev.state.to_string(),
            why: "only an unbound device can be bound",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::DeviceBound,
        subject: dev.id.clone(),
        detail: json!({ "claim": claim.id, "owner": claim.owner.to_string() }),
    })
}

/// `claim` is to end without binding, as `status` (expired or refused).
pub(crate) fn end_claim(
    claim: &Claim,
    status: ClaimStatus,
    reason: &str,
) -> Result<IdentityChange> {
    require_pending(claim, "it has ended already")?;
    if !matches!(status, ClaimStatus::Expired | ClaimStatus::Refused) {
        return Err(StoreError::ClaimState {
            id: claim.id,
            device: claim.device.clone(),
            status: status.as_str().into(),
            why: "a claim ends as expired or refused; binding completes it",
        });
    }
    Ok(IdentityChange {
        kind: ChangeKind::ClaimFailed,
        subject: claim.device.clone(),
        detail: json!({
            "claim": claim.id,
            "owner": claim.owner.to_string(),
            "status": status.as_str(),
            "reason": reason,
        }),
    })
}

fn require_pending(claim: &Claim, why: &'static str) -> Result<()> {
    if claim.status == ClaimStatus::Pending {
        Ok(())
    } else {
        Err(StoreError::ClaimState {
            id: claim.id,
            device: claim.device.clone(),
            status: claim.status.as_str().into(),
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::Owner;

    fn device(state: DeviceState, owner: Option<Owner>) -> Device {
        let now = OffsetDateTime::UNIX_EPOCH;
        Device {
            id: DeviceId::parse("dev-1").expect("id"),
            state,
            owner,
            serial: "01".into(),
            fingerprint: "ab".into(),
            not_after: now,
            online: false,
            last_seen: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn enabling_returns_to_bound_only_with_an_owner() {
        let owned = device(DeviceState::Disabled, Some(Owner::User("ann".into())));
        let (to, change) = set_disabled(&owned, false).expect("enable");
        assert_eq!(to, DeviceState::Bound);
        assert_eq!(change.kind, ChangeKind::DeviceEnabled);
        assert_eq!(change.detail, json!({ "from": "disabled", "to": "bound" }));
        let (to, _) = set_disabled(&device(DeviceState::Disabled, None), false).expect("enable");
        assert_eq!(to, DeviceState::Unbound);
        let (to, change) = set_disabled(&device(DeviceState::Bound, None), true).expect("disable");
        assert_eq!(to, DeviceState::Disabled);
        assert_eq!(change.kind, ChangeKind::DeviceDisabled);
    }

    #[test]
    fn a_revoked_device_is_final() {
        let revoked = device(DeviceState::Revoked, None);
        for err in [
            set_disabled(&revoked, false).map(|_| ()),
            set_disabled(&revoked, true).map(|_| ()),
            revoke_device(&revoked, RevocationReason::KeyCompromise).map(|_| ()),
            rotate_claim_code(&revoked).map(|_| ()),
        ] {
            assert!(
                matches!(err, Err(StoreError::InvalidState { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn audit_entry_carries_the_change() {
        let change = revoke_device(
            &device(DeviceState::Unbound, None),
            RevocationReason::KeyCompromise,
        )
        .expect("revocable");
        let entry = change.audit_entry(&Actor::system());
        assert_eq!(entry.action, "device.revoke");
        assert_eq!(entry.subject.as_deref(), Some("dev-1"));
        assert_eq!(
            entry.detail["reason"],
            RevocationReason::KeyCompromise.to_string()
        );
    }
}
