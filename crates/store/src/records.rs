//! Rows as both backends read them, and their conversion into the model.
//!
//! Each backend fetches columns into these plain shapes (text and Unix
//! milliseconds, exactly as stored); the checks that turn them into model
//! types, and report a damaged row as [`StoreError::Corrupt`], live here once
//! so that SQLite and PostgreSQL cannot drift apart in what they accept.

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;

use crate::millis::from_ms;
use crate::model::IdentityKind;
use crate::{
    CertificateRecord, CertificateStatus, Change, ChangeKind, Claim, ClaimStatus, Device, Owner,
    Result, RevokedCertificate, Service, ServiceState, StoreError, StoredSubscription,
};

/// A `devices` row joined with its certificate.
#[derive(Debug)]
pub(crate) struct DeviceRow {
    pub id: String,
    pub state: String,
    pub owner_type: Option<String>,
    pub owner_id: Option<String>,
    pub serial: String,
    pub fingerprint: String,
    pub not_after: i64,
    pub online: bool,
    pub last_seen: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeviceRow {
    /// The device, or why the row is damaged.
    pub fn into_device(self) -> Result<Device> {
        let owner = owner_from_columns(
            ("device", &self.id),
            self.owner_type.as_deref(),
            self.owner_id,
        )?;
        Ok(Device {
            id: DeviceId::parse(&self.id)
                .map_err(|e| StoreError::Corrupt(format!("stored device id: {e}")))?,
            state: self.state.parse().map_err(StoreError::Corrupt)?,
            owner,
            serial: self.serial,
            fingerprint: self.fingerprint,
            not_after: from_ms(self.not_after)?,
            online: self.online,
            last_seen: self.last_seen.map(from_ms).transpose()?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

/// The owner held in the `owner_type`, `owner_id` columns of the row of
/// `kind` (device, enrollment token) named `name`.
pub(crate) fn owner_from_columns(
    (kind, name): (&str, &str),
    owner_type: Option<&str>,
    owner_id: Option<String>,
) -> Result<Option<Owner>> {
    match (owner_type, owner_id) {
        (Some("user"), Some(id)) => Ok(Some(Owner::User(id))),
        (Some("group"), Some(id)) => Ok(Some(Owner::Group(id))),
        (None, None) => Ok(None),
        (t, _) => Err(StoreError::Corrupt(format!(
            "{kind} {name} has owner type {t:?}"
        ))),
    }
}

/// A `services` row joined with its certificate.
#[derive(Debug)]
pub(crate) struct ServiceRow {
    pub id: String,
    pub state: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_after: i64,
    pub created_at: i64,
}

impl ServiceRow {
    /// The service, or why the row is damaged.
    pub fn into_service(self) -> Result<Service> {
        Ok(Service {
            state: match self.state.as_str() {
                "active" => ServiceState::Active,
                "revoked" => ServiceState::Revoked,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "service {} has state '{other}'",
                        self.id
                    )));
                }
            },
            id: DeviceId::parse(&self.id)
                .map_err(|e| StoreError::Corrupt(format!("service id: {e}")))?,
            serial: self.serial,
            fingerprint: self.fingerprint,
            not_after: from_ms(self.not_after)?,
            created_at: from_ms(self.created_at)?,
        })
    }
}

/// A `certificates` row.
#[derive(Debug)]
pub(crate) struct CertificateRow {
    pub serial: String,
    pub identity: String,
    pub kind: String,
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    pub status: String,
    pub revocation_reason: Option<String>,
    pub revoked_at: Option<i64>,
}

impl CertificateRow {
    /// The certificate record, or why the row is damaged.
    pub fn into_record(self) -> Result<CertificateRecord> {
        let serial = self.serial;
        let corrupt = |what: &str| StoreError::Corrupt(format!("certificate {serial}: {what}"));
        Ok(CertificateRecord {
            identity: DeviceId::parse(&self.identity).map_err(|e| corrupt(&e.to_string()))?,
            kind: match self.kind.as_str() {
                "device" => IdentityKind::Device,
                "service" => IdentityKind::Service,
                _ => return Err(corrupt("unknown kind")),
            },
            fingerprint: self.fingerprint,
            not_before: from_ms(self.not_before)?,
            not_after: from_ms(self.not_after)?,
            status: CertificateStatus::parse(&self.status)
                .ok_or_else(|| corrupt("unknown status"))?,
            revocation_reason: revocation_reason(self.revocation_reason, &serial)?,
            revoked_at: self.revoked_at.map(from_ms).transpose()?,
            serial,
        })
    }
}

/// A revoked certificate as the CRL query reads it.
#[derive(Debug)]
pub(crate) struct RevokedRow {
    pub serial: String,
    pub identity: String,
    pub reason: Option<String>,
    pub revoked_at: Option<i64>,
    pub not_after: i64,
}

impl RevokedRow {
    /// The CRL entry; a missing reason is `unspecified` (RFC 5280 §5.3.1).
    pub fn into_revoked(self) -> Result<RevokedCertificate> {
        Ok(RevokedCertificate {
            reason: revocation_reason(self.reason, &self.serial)?
                .unwrap_or(RevocationReason::Unspecified),
            revoked_at: from_ms(self.revoked_at.unwrap_or(0))?,
            not_after: from_ms(self.not_after)?,
            serial: self.serial,
            identity: self.identity,
        })
    }
}

fn revocation_reason(s: Option<String>, serial: &str) -> Result<Option<RevocationReason>> {
    s.map(|r| {
        r.parse().map_err(|_| {
            StoreError::Corrupt(format!("certificate {serial} has revocation reason '{r}'"))
        })
    })
    .transpose()
}

/// A `claims` row.
#[derive(Debug)]
pub(crate) struct ClaimRow {
    pub id: i64,
    pub device: String,
    pub owner_type: String,
    pub owner_id: String,
    pub nonce: String,
    pub status: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub finished_at: Option<i64>,
}

impl ClaimRow {
    /// The claim, or why the row is damaged.
    pub fn into_claim(self) -> Result<Claim> {
        let id = self.id;
        let corrupt = |what: String| StoreError::Corrupt(format!("claim {id}: {what}"));
        let owner = match self.owner_type.as_str() {
            "user" => Owner::User(self.owner_id),
            "group" => Owner::Group(self.owner_id),
            other => return Err(corrupt(format!("owner type '{other}'"))),
        };
        Ok(Claim {
            id: u64::try_from(id).map_err(|_| corrupt("negative id".into()))?,
            device: DeviceId::parse(&self.device).map_err(|e| corrupt(e.to_string()))?,
            owner,
            nonce: self.nonce,
            status: ClaimStatus::parse(&self.status)
                .ok_or_else(|| corrupt(format!("status '{}'", self.status)))?,
            reason: self.reason,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            created_at: from_ms(self.created_at)?,
            expires_at: from_ms(self.expires_at)?,
            finished_at: self.finished_at.map(from_ms).transpose()?,
        })
    }
}

/// A `changes` row.
#[derive(Debug)]
pub(crate) struct ChangeRow {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub subject: String,
}

impl ChangeRow {
    /// The change, or why the row is damaged.
    pub fn into_change(self) -> Result<Change> {
        Ok(Change {
            seq: u64::try_from(self.seq)
                .map_err(|_| StoreError::Corrupt(format!("change seq {}", self.seq)))?,
            at: from_ms(self.at)?,
            kind: ChangeKind::parse(&self.kind).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown change kind '{}'", self.kind))
            })?,
            subject: self.subject,
        })
    }
}

/// The `LIKE` pattern matching ids that contain `text`: `%`, `_` and the
/// backslash itself are escaped with a backslash, the escape character of
/// both backends' queries.
pub(crate) fn contains_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// A persistent session's subscriptions as stored: a JSON array.
pub(crate) fn subscriptions_json(subscriptions: &[StoredSubscription]) -> Result<String> {
    serde_json::to_string(subscriptions).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Back from [`subscriptions_json`].
pub(crate) fn parse_subscriptions(client: &str, json: &str) -> Result<Vec<StoredSubscription>> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("subscriptions of {client}: {e}")))
}

/// A queued delivery's subscription identifiers as stored: a JSON array.
pub(crate) fn subscription_ids_json(ids: &[u32]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

/// Back from [`subscription_ids_json`]; unreadable ids are dropped, as the
/// delivery itself is still worth making.
pub(crate) fn parse_subscription_ids(json: &str) -> Vec<u32> {
    serde_json::from_str(json).unwrap_or_default()
}
