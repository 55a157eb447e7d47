//! Enrollment tokens (AWS IoT "fleet provisioning by claim"): an operator
//! creates a token; a device presents it with its CSR and registers itself.
//!
//! A token is `rmp_enr_` followed by 160 random bits in base32: the prefix
//! makes a leaked token recognisable to secret scanners and people. Only
//! its SHA-256 is stored: the token is high-entropy, so a slow password
//! hash would add nothing, and a lookup by hash needs no per-row salt.
//!
//! Checks run cheapest first and nothing is signed for a refused request:
//! the token's form, then the stored token (without a lock), then the CSR,
//! then the store's transaction re-checks the token and the id and only
//! then issues the certificate ([`Store::enroll_device`]). Every refusal is
//! audited with the source address and the token's id, never the token.
//!
//! A device whose answer was lost (a timeout, a dropped connection) asks
//! again with the same key. Within a short window, and while the device
//! has never connected, that repeat is answered with the same certificate
//! and a new claim code, without counting a use; otherwise its id is taken.
//! Repeating needs the token and a CSR signed by the device's key, and it
//! stops at the device's first connection, so it gives nothing a holder of
//! the token could not get by enrolling a new id.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rampart_pki::{Pki, PkiError};
use rampart_proto::DeviceId;
use rampart_store::{
    Actor, AuditEntry, Enrollment, EnrollmentRefusal, EnrollmentToken, NewEnrollmentToken, Owner,
    Store, StoreError,
};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::registration::{Registration, new_claim_code};

/// What every enrollment token starts with.
pub const TOKEN_PREFIX: &str = "rmp_enr_";

/// Random bytes in a token (160 bits).
const TOKEN_BYTES: usize = 20;

/// Random bytes in a token's public id.
const TOKEN_ID_BYTES: usize = 8;

/// Longest owner name accepted.
const MAX_OWNER_LEN: usize = 128;

/// Longest validity a token may be given.
pub const MAX_VALIDITY: Duration = Duration::from_secs(366 * 86_400);

/// Most uses one token may allow.
pub const MAX_USES: u32 = 1_000_000;

/// An enrollment token in clear: shown once when created, presented by
/// devices. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentSecret(Zeroizing<String>);

impl fmt::Debug for EnrollmentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentSecret(<redacted>)")
    }
}

/// Why a presented string is not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an enrollment token is '{TOKEN_PREFIX}' followed by 32 base32 characters")]
pub struct MalformedToken;

impl EnrollmentSecret {
    /// A new token from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::rng().fill_bytes(bytes.as_mut());
        let body = data_encoding::BASE32_NOPAD
            .encode(bytes.as_ref())
            .to_ascii_lowercase();
        Self(Zeroizing::new(format!("{TOKEN_PREFIX}{body}")))
    }

    /// Checks the form of a presented token (surrounding space ignored);
    /// whether it exists is the store's to say.
    pub fn parse(s: &str) -> Result<Self, MalformedToken> {
        let s = s.trim();
        let body = s.strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken)?;
        match data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()) {
            Ok(b) if b.len() == TOKEN_BYTES && body == body.to_ascii_lowercase() => {
                Ok(Self(Zeroizing::new(s.to_owned())))
            }
            _ => Err(MalformedToken),
        }
    }

    /// The token as shown to the operator.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store keeps and looks tokens up by: `sha256:` and the hex digest.
    pub fn hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

/// What an operator asks for when creating a token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// How many devices it may register (1 to [`MAX_USES`]).
    pub uses: u32,
    /// How long it is accepted from now (up to [`MAX_VALIDITY`]).
    pub valid_for: Duration,
    /// Ids it registers must start with this.
    pub id_prefix: Option<String>,
    /// The user who owns the devices it registers.
    pub owner: Option<String>,
}

/// Why a token could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is not acceptable as given.
    #[error("{0}")]
    Invalid(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token just created: the secret, shown once, and its stored record.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The token in clear.
    pub secret: EnrollmentSecret,
    /// What the store keeps.
    pub token: EnrollmentToken,
}

impl TokenSpec {
    /// Refuses uses, validity, prefix or owner outside what is accepted.
    fn validate(&self) -> Result<(), TokenError> {
        let invalid = |m: String| Err(TokenError::Invalid(m));
        if self.uses == 0 || self.uses > MAX_USES {
            return invalid(format!(
                "uses must be between 1 and {MAX_USES}, not {}",
                self.uses
            ));
        }
        if self.valid_for.is_zero() || self.valid_for > MAX_VALIDITY {
            return invalid(format!(
                "expiry must be more than 0s and at most {}",
                rampart_span::format(MAX_VALIDITY)
            ));
        }
        if let Some(prefix) = &self.id_prefix {
            // A prefix is the start of an id, so it obeys the id's rules.
            DeviceId::parse(prefix).map_err(|e| {
                TokenError::Invalid(format!(
                    "id prefix '{prefix}' cannot start a device id: {e}"
                ))
            })?;
        }
        if let Some(owner) = &self.owner {
            let ok = !owner.is_empty()
                && owner.len() <= MAX_OWNER_LEN
                && owner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'));
            if !ok {
                return invalid(format!(
                    "owner '{owner}' is not a user name: 1 to {MAX_OWNER_LEN} letters, digits and . _ - @ +"
                ));
            }
        }
        Ok(())
    }
}

/// Creates a token: stores its hash with its scope, audited.
pub async fn create_token(
    store: &dyn Store,
    spec: &TokenSpec,
    actor: &Actor,
) -> Result<CreatedToken, TokenError> {
    spec.validate()?;
    let secret = EnrollmentSecret::generate();
    let mut id = [0u8; TOKEN_ID_BYTES];
    rand::rng().fill_bytes(&mut id);
    let token = store
        .create_enrollment_token(
            NewEnrollmentToken {
                id: hex::encode(id),
                token_hash: secret.hash(),
                expires_at: OffsetDateTime::now_utc() + spec.valid_for,
                uses_allowed: spec.uses,
                id_prefix: spec.id_prefix.clone(),
                owner: spec.owner.clone().map(Owner::User),
            },
            actor,
        )
        .await?;
    Ok(CreatedToken { secret, token })
}

/// Why an enrollment was refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No token, a malformed one, an unknown one or a revoked one.
    #[error("{0}")]
    TokenInvalid(String),
    /// The token is past its expiry.
    #[error("{0}")]
    TokenExpired(EnrollmentRefusal),
    /// The token has registered all the devices it allows.
    #[error("{0}")]
    TokenUsedUp(EnrollmentRefusal),
    /// The requested id is outside the token's scope.
    #[error("{0}")]
    IdPrefixMismatch(EnrollmentRefusal),
    /// The requested id is registered already.
    #[error("id '{0}' is already registered; the device must ask for another id")]
    IdTaken(DeviceId),
    /// The CSR fails the CA's checks.
    #[error("{0}")]
    InvalidCsr(PkiError),
    /// Something on the server failed (store, CA); not the client's fault.
    #[error("enrollment failed on the server: {0}")]
    Internal(String),
}

impl EnrollError {
    /// The stable machine-readable code of the refusal, as the API returns it.
    pub fn code(&self) -> &'static str {
        match self {
            EnrollError::TokenInvalid(_) => "token_invalid",
            EnrollError::TokenExpired(_) => "token_expired",
            EnrollError::TokenUsedUp(_) => "token_used_up",
            EnrollError::IdPrefixMismatch(_) => "id_prefix_mismatch",
            EnrollError::IdTaken(_) => "id_taken",
            EnrollError::InvalidCsr(_) => "invalid_csr",
            EnrollError::Internal(_) => "internal",
        }
    }

    /// Whether the client caused it (a refusal), as opposed to a server fault.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, EnrollError::Internal(_))
    }

    fn from_refusal(r: EnrollmentRefusal) -> Self {
        match r {
            EnrollmentRefusal::UnknownToken | EnrollmentRefusal::Revoked { .. } => {
                // Unknown and revoked read the same to the client: a revoked
                // token's holder learns nothing about its history.
                EnrollError::TokenInvalid(
                    "the enrollment token is not valid; ask the operator for a valid token".into(),
                )
            }
            r @ EnrollmentRefusal::Expired { .. } => EnrollError::TokenExpired(r),
            r @ EnrollmentRefusal::UsedUp { .. } => EnrollError::TokenUsedUp(r),
            r @ EnrollmentRefusal::PrefixMismatch { .. } => EnrollError::IdPrefixMismatch(r),
        }
    }

    fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::EnrollmentRefused(r) => Self::from_refusal(r),
            StoreError::IdTaken(id) => EnrollError::IdTaken(id),
            StoreError::Issue(e) => EnrollError::Internal(e.to_string()),
            other => EnrollError::Internal(other.to_string()),
        }
    }
}

/// One enrollment request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct EnrollRequest<'a> {
    /// The bearer token presented, if any.
    pub token: Option<&'a str>,
    /// The CSR (PEM PKCS#10) whose CN is the requested device id.
    pub csr_pem: &'a str,
    /// Where the request came from (an IP address), for the audit log.
    pub source: &'a str,
    /// How long after enrolling the same request (same token and key,
    /// device never connected) is answered again: a device whose answer
    /// was lost asks again, and must not find its own id taken.
    pub repeat_window: Duration,
}

/// What an accepted enrollment answers.
#[derive(Debug, Clone)]
pub struct EnrollOutcome {
    /// The device, its certificate and its claim code.
    pub registration: Registration,
    /// Whether this repeated an earlier enrollment whose answer was lost
    /// (the same certificate, a new claim code, no use of the token).
    pub repeated: bool,
}

/// Registers the device a CSR asks for, if the token allows it. See the
/// module documentation for the order of checks.
pub async fn enroll(
    store: &dyn Store,
    pki: &Arc<Pki>,
    request: EnrollRequest<'_>,
) -> Result<EnrollOutcome, EnrollError> {
    let mut attempt = Attempt {
        source: request.source,
        token_id: None,
        device: None,
    };
    let result = attempt.run(store, pki, request).await;
    match &result {
        Ok(outcome) => tracing::info!(
            device_id = %outcome.registration.device.id,
            client_addr = request.source,
            token_id = attempt.token_id.as_deref().unwrap_or(""),
            serial = %outcome.registration.certificate.serial,
            repeated = outcome.repeated,
            "device enrolled"
        ),
        Err(e) => {
            if e.is_refusal() {
                tracing::info!(
                    client_addr = request.source,
                    token_id = attempt.token_id.as_deref().unwrap_or(""),
                    device_id = attempt.device.as_ref().map_or("", DeviceId::as_str),
                    reason = e.code(),
                    "enrollment refused: {e}"
                );
            } else {
                tracing::error!(
                    client_addr = request.source,
                    token_id = attempt.token_id.as_deref().unwrap_or(""),
                    "enrollment failed: {e}"
                );
            }
            let entry = refusal_entry(
                request.source,
                e.code(),
                &e.to_string(),
                attempt.token_id.as_deref(),
                attempt.device.as_ref(),
            );
            if let Err(audit) = store.record_audit(entry).await {
                tracing::error!(error = %audit, "cannot audit a refused enrollment");
            }
        }
    }
    result
}

/// Audits a request refused before it reached [`enroll`] (a body that is
/// not the expected JSON, or too large): `code` names the refusal.
pub async fn audit_refused_request(
    store: &dyn Store,
    source: &str,
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    store
        .record_audit(refusal_entry(source, code, message, None, None))
        .await
        .map(|_| ())
}

/// The audit row of a refused enrollment.
fn refusal_entry(
    source: &str,
    code: &str,
    message: &str,
    token_id: Option<&str>,
    device: Option<&DeviceId>,
) -> AuditEntry {
    AuditEntry {
        actor: actor(source, token_id),
        action: "device.enroll-refused".into(),
        subject: device.map(DeviceId::to_string),
        detail: json!({ "code": code, "reason": message, "enrollment_token": token_id }),
    }
}

/// Who enrolls: the token (by id) from the source address.
fn actor(source: &str, token_id: Option<&str>) -> Actor {
    Actor {
        name: token_id.map_or_else(
            || "unauthenticated".to_owned(),
            |id| format!("enrollment-token:{id}"),
        ),
        source: source.to_owned(),
    }
}

/// What is known about an attempt as it goes, for its log line and audit row.
struct Attempt<'a> {
    source: &'a str,
    token_id: Option<String>,
    device: Option<DeviceId>,
}

impl Attempt<'_> {
    async fn run(
        &mut self,
        store: &dyn Store,
        pki: &Arc<Pki>,
        request: EnrollRequest<'_>,
    ) -> Result<EnrollOutcome, EnrollError> {
        let secret = match request.token.map(EnrollmentSecret::parse) {
            Some(Ok(secret)) => secret,
            Some(Err(e)) => return Err(EnrollError::TokenInvalid(e.to_string())),
            None => {
                return Err(EnrollError::TokenInvalid(
                    "no enrollment token; send it as 'Authorization: Bearer <token>'".into(),
                ));
            }
        };
        let hash = secret.hash();
        // Cheap refusals first, before any CSR is parsed: most abuse stops here.
        let token = store
            .enrollment_token_by_hash(&hash)
            .await
            .map_err(EnrollError::from_store)?
            .ok_or_else(|| EnrollError::from_refusal(EnrollmentRefusal::UnknownToken))?;
        self.token_id = Some(token.id.clone());
        match token.check_use(None, OffsetDateTime::now_utc()) {
            // A used-up token may still answer a repeat of its last use;
            // the store decides once it knows the id and the key.
            Ok(()) | Err(EnrollmentRefusal::UsedUp { .. }) => {}
            Err(refusal) => return Err(EnrollError::from_refusal(refusal)),
        }

        let csr = pki
            .verify_device_csr(request.csr_pem)
            .map_err(|e| match e {
                PkiError::CannotIssue { .. } => EnrollError::Internal(e.to_string()),
                other => EnrollError::InvalidCsr(other),
            })?;
        let id = csr.id().clone();
        self.device = Some(id.clone());
        if let Err(refusal @ EnrollmentRefusal::PrefixMismatch { .. }) =
            token.check_use(Some(&id), OffsetDateTime::now_utc())
        {
            return Err(EnrollError::from_refusal(refusal));
        }
        let public_key_sha256 = csr.public_key_sha256().to_owned();

        let code = new_claim_code();
        let signer = Arc::clone(pki);
        let csr = Arc::new(csr);
        let enrolled = store
            .enroll_device(
                Enrollment {
                    token_hash: hash,
                    id,
                    claim_code_hash: code.hash(),
                    issue: Arc::new(move || signer.sign_verified_csr(&csr)),
                    public_key_sha256,
                    repeat_window: request.repeat_window,
                },
                &actor(self.source, Some(&token.id)),
            )
            .await
            .map_err(EnrollError::from_store)?;
        Ok(EnrollOutcome {
            registration: Registration::new(enrolled.device, enrolled.certificate, code, pki),
            repeated: enrolled.repeated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_round_trip() {
        let a = EnrollmentSecret::generate();
        let b = EnrollmentSecret::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(TOKEN_PREFIX));
        assert_eq!(a.as_str().len(), TOKEN_PREFIX.len() + 32);
        let parsed = EnrollmentSecret::parse(&format!(" {}\n", a.as_str())).expect("parses");
        assert_eq!(parsed, a);
        assert_eq!(parsed.hash(), a.hash());
        assert_ne!(a.hash(), b.hash());
        assert!(a.hash().starts_with("sha256:"));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = EnrollmentSecret::generate();
        let body = &good.as_str()[TOKEN_PREFIX.len()..];
        for bad in [
            String::new(),
            body.to_owned(),
            format!("rmp_xyz_{body}"),
            format!("{TOKEN_PREFIX}{}", &body[1..]),
            format!("{TOKEN_PREFIX}{body}a"),
            format!("{TOKEN_PREFIX}{}", body.to_ascii_uppercase()),
            format!("{TOKEN_PREFIX}{}1", &body[1..]),
        ] {
            assert_eq!(EnrollmentSecret::parse(&bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn token_specs_are_checked() {
        let ok = TokenSpec {
            uses: 5,
            valid_for: Duration::from_secs(3600),
            id_prefix: Some("gh-".into()),
            owner: Some("ann@example.com".into()),
        };
        assert!(ok.validate().is_ok());
        let too_long = TokenSpec {
            valid_for: MAX_VALIDITY + Duration::from_secs(1),
            ..ok.clone()
        };
        // The limit is said in days, not as humantime's "1year 18h".
        assert!(
            matches!(too_long.validate(), Err(TokenError::Invalid(m)) if m.ends_with("at most 366days")),
            "{:?}",
            too_long.validate()
        );
        for bad in [
            TokenSpec {
                uses: 0,
                ..ok.clone()
            },
            TokenSpec {
                valid_for: Duration::ZERO,
                ..ok.clone()
            },
            TokenSpec {
                valid_for: MAX_VALIDITY + Duration::from_secs(1),
                ..ok.clone()
            },
            TokenSpec {
                id_prefix: Some("a/b".into()),
                ..ok.clone()
            },
            TokenSpec {
                owner: Some("ann smith".into()),
                ..ok.clone()
            },
            TokenSpec {
                owner: Some(String::new()),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(TokenError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refusals_map_to_the_api_codes() {
        let cases = [
            (EnrollmentRefusal::UnknownToken, "token_invalid"),
            (
                EnrollmentRefusal::Revoked { id: "t".into() },
                "token_invalid",
            ),
            (
                EnrollmentRefusal::Expired {
                    id: "t".into(),
                    expired_at: OffsetDateTime::UNIX_EPOCH,
                },
                "token_expired",
            ),
            (
                EnrollmentRefusal::UsedUp {
                    id: "t".into(),
                    uses: 1,
                },
                "token_used_up",
            ),
            (
                EnrollmentRefusal::PrefixMismatch {
                    token: "t".into(),
                    prefix: "a".into(),
                    id: DeviceId::parse("b").expect("id"),
                },
                "id_prefix_mismatch",
            ),
        ];
        for (refusal, code) in cases {
            assert_eq!(EnrollError::from_refusal(refusal).code(), code);
        }
        let taken = EnrollError::from_store(StoreError::IdTaken(DeviceId::parse("x").expect("id")));
        assert_eq!(taken.code(), "id_taken");
        assert!(EnrollError::from_store(StoreError::Busy).code() == "internal");
    }
}
