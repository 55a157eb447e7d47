//! Enrollment tokens as the store keeps them, and the rule that decides
//! whether one may be used: checked once by the caller before any work (so
//! that a refused request costs nothing) and again inside the transaction
//! that registers the device (so that two requests racing for the last use
//! cannot both win). Both backends call the same [`EnrollmentToken::check_use`].
//!
//! The token itself never reaches the store: only its hash, which is what
//! a request is looked up by.

use std::fmt;
use std::sync::Arc;

use rampart_pki::{IssuedCertificate, PkiError};
use rampart_proto::DeviceId;
use serde::Serialize;
use time::OffsetDateTime;

use serde_json::json;

use crate::lifecycle::IdentityChange;
use crate::millis::{from_ms, to_ms};
use crate::records::owner_from_columns;
use crate::{Actor, AuditEntry, ChangeKind, Device, DeviceState, Owner, Result, StoreError};

/// An enrollment token: who may register devices with it, how often, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentToken {
    /// Its public id: what `enroll-token list` shows and `revoke` takes.
    pub id: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// After this instant it is refused.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// How many devices it may register.
    pub uses_allowed: u32,
    /// How many it has registered.
    pub uses_used: u32,
    /// Device ids it may register must start with this.
    pub id_prefix: Option<String>,
    /// Devices it registers belong to this owner.
    pub owner: Option<Owner>,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who created it (the audit actor's name).
    pub created_by: String,
    /// When it last registered a device.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Where a token stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Usable.
    Active,
    /// Revoked by an operator; final.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Every use taken.
    UsedUp,
}

impl TokenState {
    /// The state's name as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used-up",
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token may not register a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentRefusal {
    /// No token has this hash.
    #[error("the enrollment token is not known; ask the operator for a valid token")]
    UnknownToken,
    /// The token was revoked.
    #[error("enrollment token {id} was revoked; ask the operator for a new token")]
    Revoked {
        /// The token's id.
        id: String,
    },
    /// The token is past its expiry.
    #[error("enrollment token {id} expired at {expired_at}; ask the operator for a new token")]
    Expired {
        /// The token's id.
        id: String,
        /// When it expired.
        expired_at: OffsetDateTime,
    },
    /// Every use of the token is taken.
    #[error(
        "enrollment token {id} has registered all the {uses} devices it allows; ask the operator for a new token"
    )]
    UsedUp {
        /// The token's id.
        id: String,
        /// Its number of uses.
        uses: u32,
    },
    /// The requested id is outside the token's scope.
    #[error("enrollment token {token} only registers ids starting with '{prefix}', not '{id}'")]
    PrefixMismatch {
        /// The token's id.
        token: String,
        /// The prefix it requires.
        prefix: String,
        /// The id asked for.
        id: DeviceId,
    },
}

impl EnrollmentRefusal {
    /// A stable machine-readable name of the refusal, for logs and audit rows.
    pub fn code(&self) -> &'static str {
        match self {
            EnrollmentRefusal::UnknownToken => "token_unknown",
            EnrollmentRefusal::Revoked { .. } => "token_revoked",
            EnrollmentRefusal::Expired { .. } => "token_expired",
            EnrollmentRefusal::UsedUp { .. } => "token_used_up",
            EnrollmentRefusal::PrefixMismatch { .. } => "id_prefix_mismatch",
        }
    }
}

impl EnrollmentToken {
    /// Its state at `now`; a revoked token stays revoked whatever else holds.
    pub fn state(&self, now: OffsetDateTime) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if now >= self.expires_at {
            TokenState::Expired
        } else if self.uses_used >= self.uses_allowed {
            TokenState::UsedUp
        } else {
            TokenState::Active
        }
    }

    /// Uses not yet taken.
    pub fn uses_left(&self) -> u32 {
        self.uses_allowed.saturating_sub(self.uses_used)
    }

    /// Whether the token may register a device at `now`, and, when `id` is
    /// given, that one.
    pub fn check_use(
        &self,
        id: Option<&DeviceId>,
        now: OffsetDateTime,
    ) -> Result<(), EnrollmentRefusal> {
        let token = self.id.clone();
        match self.state(now) {
            TokenState::Active => {}
            TokenState::Revoked => return Err(EnrollmentRefusal::Revoked { id: token }),
            TokenState::Expired => {
                return Err(EnrollmentRefusal::Expired {
                    id: token,
                    expired_at: self.expires_at,
                });
            }
            TokenState::UsedUp => {
                return Err(EnrollmentRefusal::UsedUp {
                    id: token,
                    uses: self.uses_allowed,
                });
            }
        }
        if let (Some(id), Some(prefix)) = (id, &self.id_prefix)
            && !id.as_str().starts_with(prefix.as_str())
        {
            return Err(EnrollmentRefusal::PrefixMismatch {
                token,
                prefix: prefix.clone(),
                id: id.clone(),
            });
        }
        Ok(())
    }
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    /// Its public id.
    pub id: String,
    /// Hash of the token (the token itself is never stored).
    pub token_hash: String,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// How many devices it may register (at least 1).
    pub uses_allowed: u32,
    /// Required id prefix.
    pub id_prefix: Option<String>,
    /// Owner of the devices it registers.
    pub owner: Option<Owner>,
}

/// Issues the device's certificate; called inside the enrollment
/// transaction once every check passed, so that no certificate is ever
/// signed for a refused request.
pub type IssueCertificate = Arc<dyn Fn() -> Result<IssuedCertificate, PkiError> + Send + Sync>;

/// One use of a token: register `id` with the certificate `issue` makes.
#[derive(Clone)]
pub struct Enrollment {
    /// Hash of the presented token.
    pub token_hash: String,
    /// The device id asked for (the CSR's CN).
    pub id: DeviceId,
    /// Hash of the new device's claim code.
    pub claim_code_hash: String,
    /// Signs the certificate; must return one for `id`.
    pub issue: IssueCertificate,
    /// SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo, hex).
    pub public_key_sha256: String,
    /// How long after enrolling the same request (same token, same key,
    /// device never connected) is answered again instead of refused as
    /// [`StoreError::IdTaken`]: the first answer may have been lost.
    pub repeat_window: std::time::Duration,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrollment")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a successful enrollment made.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The registered device (`unbound`, owned by the token's owner if any).
    pub device: Device,
    /// Its certificate.
    pub certificate: IssuedCertificate,
    /// The token after this use.
    pub token: EnrollmentToken,
    /// Whether this repeated an earlier enrollment whose answer was lost:
    /// the same certificate, a new claim code, no use counted.
    pub repeated: bool,
}

/// What an enrollment answered, kept to answer a repeat of it.
#[derive(Debug, Clone)]
pub(crate) struct EnrollmentAnswer {
    pub token_id: String,
    pub public_key_sha256: String,
    pub certificate_pem: String,
    pub enrolled_at: i64,
}

/// Whether `e`, for an id that exists, repeats the enrollment that made
/// it, so that the same certificate may be handed out again: the same
/// token (still neither revoked nor expired; used up is fine, its last use
/// may be this device) and the same key, within the window, and the device
/// is as enrolled: `unbound`, never seen, still on that certificate. Once
/// the device has connected it had its answer, and a repeat is refused.
pub(crate) fn is_repeat(
    e: &Enrollment,
    token: &EnrollmentToken,
    check: &std::result::Result<(), EnrollmentRefusal>,
    answer: &EnrollmentAnswer,
    device: &Device,
    certificate: &IssuedCertificate,
    now_ms: i64,
) -> bool {
    let window_ms = i64::try_from(e.repeat_window.as_millis()).unwrap_or(i64::MAX);
    !e.repeat_window.is_zero()
        && matches!(check, Ok(()) | Err(EnrollmentRefusal::UsedUp { .. }))
        && answer.token_id == token.id
        && answer.public_key_sha256 == e.public_key_sha256
        && now_ms.saturating_sub(answer.enrolled_at) <= window_ms
        && device.state == DeviceState::Unbound
        && device.last_seen.is_none()
        && device.serial == certificate.serial
}

/// The certificate an enrollment answered, as kept.
pub(crate) fn stored_certificate(answer: &EnrollmentAnswer) -> Result<IssuedCertificate> {
    IssuedCertificate::from_pem(&answer.certificate_pem)
        .map_err(|e| StoreError::Corrupt(format!("a stored enrollment answer: {e}")))
}

/// The audit row of a repeated enrollment.
pub(crate) fn enrollment_repeated(
    t: &EnrollmentToken,
    cert: &IssuedCertificate,
    actor: &Actor,
) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "device.enroll-repeated".into(),
        subject: Some(cert.id.to_string()),
        detail: json!({
            "serial": cert.serial,
            "enrollment_token": t.id,
            "why": "the same token and key asked again before the device first connected; \
                    the same certificate was answered with a new claim code",
        }),
    }
}

/// The audit row of a token's creation: everything but the hash.
pub(crate) fn token_created(t: &NewEnrollmentToken, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "enrollment-token.create".into(),
        subject: Some(t.id.clone()),
        detail: json!({
            "uses": t.uses_allowed,
            "expires_at": to_ms(t.expires_at),
            "id_prefix": t.id_prefix,
            "owner": t.owner,
        }),
    }
}

/// A token is to be revoked: refused when it already is.
pub(crate) fn token_revoked(
    t: &EnrollmentToken,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<AuditEntry> {
    if t.revoked_at.is_some() {
        return Err(StoreError::InvalidTokenState {
            id: t.id.clone(),
            state: t.state(now),
            why: "it is already revoked",
        });
    }
    Ok(AuditEntry {
        actor: actor.clone(),
        action: "enrollment-token.revoke".into(),
        subject: Some(t.id.clone()),
        detail: json!({ "uses_used": t.uses_used, "uses_allowed": t.uses_allowed }),
    })
}

/// The change-feed and audit rows of a device registered with token `t`:
/// the feed announces it as any new device, the audit row says how it came
/// (`device.enroll`, with the token's id).
pub(crate) fn device_enrolled(
    t: &EnrollmentToken,
    cert: &IssuedCertificate,
    actor: &Actor,
) -> (IdentityChange, AuditEntry) {
    let change = IdentityChange {
        kind: ChangeKind::DeviceCreated,
        subject: cert.id.clone(),
        detail: json!({
            "serial": cert.serial,
            "fingerprint": cert.fingerprint,
            "enrollment_token": t.id,
            "owner": t.owner,
        }),
    };
    let mut audit = change.audit_entry(actor);
    audit.action = "device.enroll".into();
    (change, audit)
}

/// Checks the certificate `issue` returned names the device asked for.
pub(crate) fn issued_for(enrollment: &Enrollment) -> Result<IssuedCertificate> {
    let cert = (enrollment.issue)().map_err(StoreError::Issue)?;
    if cert.id != enrollment.id {
        return Err(StoreError::Corrupt(format!(
            "the certificate issued for '{}' names '{}'",
            enrollment.id, cert.id
        )));
    }
    Ok(cert)
}

/// Refuses the enrollment when counting the use matched no row: unreachable
/// while the transaction holds the token (write lock, row lock), but
/// refused rather than over-used should that ever break.
pub(crate) fn use_counted(counted: bool, token: &EnrollmentToken) -> Result<()> {
    if counted {
        return Ok(());
    }
    Err(EnrollmentRefusal::UsedUp {
        id: token.id.clone(),
        uses: token.uses_allowed,
    }
    .into())
}

/// An `enrollment_tokens` row as both backends read it.
#[derive(Debug)]
pub(crate) struct TokenRow {
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_allowed: i64,
    pub uses_used: i64,
    pub id_prefix: Option<String>,
    pub owner_type: Option<String>,
    pub owner_id: Option<String>,
    pub revoked_at: Option<i64>,
    pub created_by: String,
    pub last_used_at: Option<i64>,
}

/// The columns [`TokenRow`] is read from, in order.
pub(crate) const TOKEN_COLUMNS: &str = "id, created_at, expires_at, uses_allowed, uses_used, \
     id_prefix, owner_type, owner_id, revoked_at, created_by, last_used_at";

impl TokenRow {
    /// The token, or why the row is damaged.
    pub fn into_token(self) -> Result<EnrollmentToken> {
        let count = |what: &str, n: i64| {
            u32::try_from(n).map_err(|_| {
                StoreError::Corrupt(format!("enrollment token {} has {what} = {n}", self.id))
            })
        };
        Ok(EnrollmentToken {
            created_at: from_ms(self.created_at)?,
            expires_at: from_ms(self.expires_at)?,
            uses_allowed: count("uses_allowed", self.uses_allowed)?,
            uses_used: count("uses_used", self.uses_used)?,
            owner: owner_from_columns(
                ("enrollment token", &self.id),
                self.owner_type.as_deref(),
                self.owner_id,
            )?,
            id_prefix: self.id_prefix,
            revoked_at: self.revoked_at.map(from_ms).transpose()?,
            created_by: self.created_by,
            last_used_at: self.last_used_at.map(from_ms).transpose()?,
            id: self.id,
        })
    }
}

/// The owner columns of a token or device.
pub(crate) fn owner_columns(owner: Option<&Owner>) -> (Option<&'static str>, Option<&str>) {
    match owner {
        Some(Owner::User(u)) => (Some("user"), Some(u.as_str())),
        Some(Owner::Group(g)) => (Some("group"), Some(g.as_str())),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn token(uses_allowed: u32, uses_used: u32, prefix: Option<&str>) -> EnrollmentToken {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        EnrollmentToken {
            id: "t1".into(),
            created_at: t0,
            expires_at: t0 + Duration::hours(1),
            uses_allowed,
            uses_used,
            id_prefix: prefix.map(str::to_owned),
            owner: None,
            revoked_at: None,
            created_by: "cli:test".into(),
            last_used_at: None,
        }
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("id")
    }

    #[test]
    fn an_active_token_allows_ids_in_its_scope_only() {
        let t = token(2, 1, Some("gh-"));
        let now = t.created_at;
        assert_eq!(t.state(now), TokenState::Active);
        assert_eq!(t.uses_left(), 1);
        assert_eq!(t.check_use(None, now), Ok(()));
        assert_eq!(t.check_use(Some(&id("gh-1")), now), Ok(()));
        let refused = t.check_use(Some(&id("other-1")), now).expect_err("scope");
        assert_eq!(refused.code(), "id_prefix_mismatch");
        // Without a prefix every valid id is in scope.
        assert_eq!(token(1, 0, None).check_use(Some(&id("x")), now), Ok(()));
    }

    #[test]
    fn expiry_uses_and_revocation_refuse_in_that_precedence() {
        let mut t = token(1, 1, None);
        let before = t.created_at;
        assert_eq!(t.state(before), TokenState::UsedUp);
        assert_eq!(
            t.check_use(None, before).map_err(|r| r.code()),
            Err("token_used_up")
        );
        // Expiry is reached exactly at expires_at.
        assert_eq!(t.state(t.expires_at), TokenState::Expired);
        assert_eq!(
            t.check_use(None, t.expires_at).map_err(|r| r.code()),
            Err("token_expired")
        );
        t.revoked_at = Some(before);
        assert_eq!(t.state(t.expires_at), TokenState::Revoked);
        assert_eq!(
            t.check_use(None, before).map_err(|r| r.code()),
            Err("token_revoked")
        );
    }
}
