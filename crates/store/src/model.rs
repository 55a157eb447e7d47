//! The records the store keeps, as the rest of Rampart sees them.

use std::fmt;
use std::str::FromStr;

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Who did something, and from where: the "who" and "where" of an audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// A user name, `cli:<os user>`, `system`, or a device id.
    pub name: String,
    /// Where the request came from: `cli@host`, an IP address, `serve`.
    pub source: String,
}

impl Actor {
    /// Rampart itself (background tasks, first start).
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            source: "rampart".into(),
        }
    }
}

pub use rampart_pki::IdentityKind;

/// A device's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Registered, not yet claimed by a user.
    Unbound,
    /// Claimed by a user or group.
    Bound,
    /// Blocked by an operator; reversible.
    Disabled,
    /// Certificate revoked; final.
    Revoked,
}

impl DeviceState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeviceState; 4] = [
        DeviceState::Unbound,
        DeviceState::Bound,
        DeviceState::Disabled,
        DeviceState::Revoked,
    ];

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Unbound => "unbound",
            DeviceState::Bound => "bound",
            DeviceState::Disabled => "disabled",
            DeviceState::Revoked => "revoked",
        }
    }

    /// Whether a device in this state may connect.
    pub fn may_connect(self) -> bool {
        matches!(self, DeviceState::Unbound | DeviceState::Bound)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown device state '{s}' (expected unbound, bound, disabled or revoked)")
            })
    }
}

/// Who a device belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "lowercase")]
pub enum Owner {
    /// A user account.
    User(String),
    /// A group of an organization.
    Group(String),
}

/// Longest owner name accepted.
pub const MAX_OWNER_NAME: usize = 128;

/// Why a string is not an owner (`user:NAME` or `group:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "owner '{given}' is not valid: {why}; write user:NAME or group:NAME (NAME up to 128 printable characters)"
)]
pub struct OwnerError {
    /// What was given (shortened).
    pub given: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Owner {
    /// `user` or `group`, as stored in `owner_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::User(_) => "user",
            Owner::Group(_) => "group",
        }
    }

    /// The user or group name.
    pub fn name(&self) -> &str {
        match self {
            Owner::User(n) | Owner::Group(n) => n,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

impl FromStr for Owner {
    type Err = OwnerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| OwnerError {
            given: s.chars().take(64).collect(),
            why,
        };
        let (kind, name) = s.split_once(':').ok_or_else(|| err("it has no ':'"))?;
        if name.is_empty() {
            return Err(err("the name is empty"));
        }
        if name.chars().count() > MAX_OWNER_NAME {
            return Err(err("the name is too long"));
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("the name holds spaces or control characters"));
        }
        match kind {
            "user" => Ok(Owner::User(name.to_owned())),
            "group" => Ok(Owner::Group(name.to_owned())),
            _ => Err(err("the kind is neither 'user' nor 'group'")),
        }
    }
}

/// Status of one issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    /// Issued by a renewal and not yet used: accepted at CONNECT besides
    /// the current one, and made current by the first connection with it.
    Pending,
    /// The identity's registered certificate.
    Current,
    /// Replaced by a renewal.
    Superseded,
    /// Revoked; on the CRL.
    Revoked,
}

impl CertificateStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Pending => "pending",
            CertificateStatus::Current => "current",
            CertificateStatus::Superseded => "superseded",
            CertificateStatus::Revoked => "revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "current" => Some(Self::Current),
            "superseded" => Some(Self::Superseded),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// What the store needs to know about an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The identity it was issued to.
    pub identity: DeviceId,
    /// Device or service certificate.
    pub kind: IdentityKind,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Current, superseded or revoked.
    pub status: CertificateStatus,
    /// Why it was revoked, when it was.
    pub revocation_reason: Option<RevocationReason>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Its id (the certificate CN).
    pub id: DeviceId,
    /// Serial number of its certificate (lowercase hex).
    pub serial: String,
    /// SHA-256 fingerprint of its certificate.
    pub fingerprint: String,
    /// Certificate validity start.
    pub not_before: OffsetDateTime,
    /// Certificate validity end.
    pub not_after: OffsetDateTime,
    /// Hash of the claim code printed on its label.
    pub claim_code_hash: String,
}

/// A certificate issued to an existing device by a renewal.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// The device it was issued to (its CN).
    pub identity: DeviceId,
    /// Serial number (lowercase hex).
    pub serial: String,
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimStatus {
    /// Sent to the device, waiting for its confirmation.
    Pending,
    /// Confirmed: the device is bound to the claim's owner.
    Bound,
    /// Not confirmed in time.
    Expired,
    /// Ended by the server (too many wrong nonces, device not claimable).
    Refused,
    /// Replaced by a newer claim for the same device.
    Superseded,
}

impl ClaimStatus {
    /// Every status.
    pub const ALL: [ClaimStatus; 5] = [
        ClaimStatus::Pending,
        ClaimStatus::Bound,
        ClaimStatus::Expired,
        ClaimStatus::Refused,
        ClaimStatus::Superseded,
    ];

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimStatus::Pending => "pending",
            ClaimStatus::Bound => "bound",
            ClaimStatus::Expired => "expired",
            ClaimStatus::Refused => "refused",
            ClaimStatus::Superseded => "superseded",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for ClaimStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim to record: the caller has checked the claim code, the device's
/// state and that it is online, and made the nonce.
#[derive(Clone)]
pub struct NewClaim {
    /// The device to bind.
    pub device: DeviceId,
    /// Who it is to belong to.
    pub owner: Owner,
    /// The challenge the device must send back (lowercase hex).
    pub nonce: String,
    /// Until when the device may confirm.
    pub expires_at: OffsetDateTime,
    /// The claim code hash the caller verified: the claim is refused if the
    /// code was rotated in the meantime.
    pub claim_code_hash: String,
}

impl fmt::Debug for NewClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClaim")
            .field("device", &self.device)
            .field("owner", &self.owner)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A claim of a device by a user or group (DESIGN.md "Claiming").
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// Its number.
    pub id: u64,
    /// The device.
    pub device: DeviceId,
    /// Who claims it.
    pub owner: Owner,
    /// The challenge sent to the device (lowercase hex).
    #[serde(skip)]
    pub nonce: String,
    /// Where it stands.
    pub status: ClaimStatus,
    /// Why it ended, when it ended without binding (an error code).
    pub reason: Option<String>,
    /// Confirmations with a wrong nonce so far.
    pub attempts: u32,
    /// When it was started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Until when the device may confirm.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("id", &self.id)
            .field("device", &self.device)
            .field("owner", &self.owner)
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl NewDevice {
    /// The device `cert` names, registered with its certificate and the
    /// hash of its claim code.
    pub fn from_certificate(
        cert: &rampart_pki::IssuedCertificate,
        claim_code_hash: String,
    ) -> Self {
        Self {
            id: cert.id.clone(),
            serial: cert.serial.clone(),
            fingerprint: cert.fingerprint.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            claim_code_hash,
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Its id.
    pub id: DeviceId,
    /// Lifecycle state.
    pub state: DeviceState,
    /// Owner once claimed.
    pub owner: Option<Owner>,
    /// Serial of its registered (or last revoked) certificate.
    pub serial: String,
    /// That certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// That certificate's expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Connected to the broker right now.
    pub online: bool,
    /// Last time the broker heard from it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change of state.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A service identity's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// May connect.
    Active,
    /// Certificate revoked; final.
    Revoked,
}

impl ServiceState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Active => "active",
            ServiceState::Revoked => "revoked",
        }
    }
}

/// A service to register: the certificate Rampart issued for it.
#[derive(Debug, Clone)]
pub struct NewService {
    /// Its name (the certificate CN).
    pub id: DeviceId,
    /// Certificate serial (lowercase hex).
    pub serial: String,
    /// Certificate fingerprint.
    pub fingerprint: String,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

/// A registered service identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Its name.
    pub id: DeviceId,
    /// Active or revoked.
    pub state: ServiceState,
    /// Serial of its certificate.
    pub serial: String,
    /// That certificate's fingerprint.
    pub fingerprint: String,
    /// That certificate's expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices in this state.
    pub state: Option<DeviceState>,
    /// Only ids containing this text.
    pub search: Option<String>,
    /// At most this many (all when `None`).
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: u32,
}

/// A revoked certificate, as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial, lowercase hex.
    pub serial: String,
    /// The identity it belonged to.
    pub identity: String,
    /// Why.
    pub reason: RevocationReason,
    /// When.
    pub revoked_at: OffsetDateTime,
    /// The end of the certificate's validity: a CRL need not list it once
    /// a CRL issued after this has listed it (RFC 5280 §3.3).
    pub not_after: OffsetDateTime,
}

/// What kind of change a change-feed row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// A device was registered.
    DeviceCreated,
    /// A device's certificate was revoked.
    DeviceRevoked,
    /// A device was disabled.
    DeviceDisabled,
    /// A device was enabled again.
    DeviceEnabled,
    /// A device was deleted.
    DeviceDeleted,
    /// A device's claim code changed.
    ClaimCodeRotated,
    /// A service identity was registered.
    ServiceCreated,
    /// A service identity's certificate was revoked.
    ServiceRevoked,
    /// A renewal issued a pending certificate (a pending one it replaced
    /// went on the CRL).
    CertificateIssued,
    /// A device connected with its pending certificate: it is current now,
    /// and the previous one is superseded and on the CRL.
    CertificateActivated,
    /// A claim was started: the device is to be sent its nonce.
    ClaimRequested,
    /// The device confirmed a claim and is bound to its owner.
    DeviceBound,
    /// A claim ended without binding (expired, refused).
    ClaimFailed,
    /// An alert rule or channel was added or removed.
    AlertConfigChanged,
    /// A campaign's status changed (subject: its number).
    CampaignChanged,
}

impl ChangeKind {
    const ALL: [ChangeKind; 15] = [
        ChangeKind::DeviceCreated,
        ChangeKind::DeviceRevoked,
        ChangeKind::DeviceDisabled,
        ChangeKind::DeviceEnabled,
        ChangeKind::DeviceDeleted,
        ChangeKind::ClaimCodeRotated,
        ChangeKind::ServiceCreated,
        ChangeKind::ServiceRevoked,
        ChangeKind::CertificateIssued,
        ChangeKind::CertificateActivated,
        ChangeKind::ClaimRequested,
        ChangeKind::DeviceBound,
        ChangeKind::ClaimFailed,
        ChangeKind::AlertConfigChanged,
        ChangeKind::CampaignChanged,
    ];

    /// Name stored in the feed (and used as the audit action).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::DeviceCreated => "device.create",
            ChangeKind::DeviceRevoked => "device.revoke",
            ChangeKind::DeviceDisabled => "device.disable",
            ChangeKind::DeviceEnabled => "device.enable",
            ChangeKind::DeviceDeleted => "device.delete",
            ChangeKind::ClaimCodeRotated => "device.claim-code.rotate",
            ChangeKind::ServiceCreated => "service.create",
            ChangeKind::ServiceRevoked => "service.revoke",
            ChangeKind::CertificateIssued => "device.certificate.issue",
            ChangeKind::CertificateActivated => "device.certificate.activate",
            ChangeKind::ClaimRequested => "device.claim.request",
            ChangeKind::DeviceBound => "device.claim.bind",
            ChangeKind::ClaimFailed => "device.claim.fail",
            ChangeKind::AlertConfigChanged => "alert.config",
            ChangeKind::CampaignChanged => "campaign.status",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a live session of the subject must be re-checked (and cut).
    pub fn affects_sessions(self) -> bool {
        matches!(
            self,
            ChangeKind::DeviceRevoked
                | ChangeKind::DeviceDisabled
                | ChangeKind::DeviceDeleted
                | ChangeKind::ServiceRevoked
        )
    }

    /// Whether the change put a certificate on the CRL (a running server
    /// then publishes a new CRL and reloads its TLS configuration).
    pub fn revokes_certificates(self) -> bool {
        matches!(
            self,
            ChangeKind::DeviceRevoked
                | ChangeKind::DeviceDeleted
                | ChangeKind::ServiceRevoked
                | ChangeKind::CertificateIssued
                | ChangeKind::CertificateActivated
        )
    }
}

/// One change-feed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Position in the feed.
    pub seq: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened.
    pub kind: ChangeKind,
    /// To which identity.
    pub subject: String,
}
