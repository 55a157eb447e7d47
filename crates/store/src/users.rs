//! Console users, their sessions, the first-start setup token and API
//! tokens: the [`UserStore`] trait, its records, and the audit rows of every
//! change, shared by both backends.
//!
//! The store keeps only what cannot be used if the database leaks: password
//! hashes (Argon2id PHC strings, made by the caller), SHA-256 hashes of
//! session ids and of setup, invite and API tokens, and TOTP secrets sealed
//! by the caller. It decides nothing about passwords or roles; it records
//! what the web part decided, with its audit row, in one transaction.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::millis::from_ms;
use crate::{Actor, AuditEntry, Result, StoreError};

/// An instance-level role; the order is the order of power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything a console shows, changes nothing.
    Viewer,
    /// Operates the fleet: claims, disables, enables devices.
    Operator,
    /// Administers the instance: users, tokens, services, revocation.
    Admin,
    /// The first user; everything, and cannot be demoted or disabled.
    Owner,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::Owner];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The role named `s` (`owner`, `admin`, `operator`, `viewer`).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn from_column(s: &str) -> Result<Role> {
        Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown role '{s}'")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A console user.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Stable random id.
    pub id: String,
    /// Login name, unique regardless of case.
    pub name: String,
    /// Contact address, if given.
    pub email: Option<String>,
    /// Argon2id PHC string; `None` while an invitation is pending.
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// Instance role.
    pub role: Role,
    /// A disabled user cannot sign in and has no sessions.
    pub disabled: bool,
    /// The TOTP secret as sealed by the web part (never in clear here).
    #[serde(skip)]
    pub totp_secret: Option<Vec<u8>>,
    /// Whether sign-in asks for a TOTP code.
    pub mfa_enabled: bool,
    /// Failed sign-ins since the last success or lockout.
    pub failed_logins: u32,
    /// Sign-in refused until then.
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
    /// An unused invitation expires then.
    #[serde(with = "time::serde::rfc3339::option")]
    pub invite_expires_at: Option<OffsetDateTime>,
    /// Who created the user (an audit actor name).
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes and sealed secrets stay out of logs and panics.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("mfa_enabled", &self.mfa_enabled)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Whether the user still has to accept an invitation.
    pub fn invited(&self) -> bool {
        self.password_hash.is_none()
    }
}

/// A user to create.
#[derive(Clone)]
pub struct NewUser {
    /// Stable random id.
    pub id: String,
    /// Login name.
    pub name: String,
    /// Contact address.
    pub email: Option<String>,
    /// Argon2id PHC string, or `None` for an invitation.
    pub password_hash: Option<String>,
    /// Role.
    pub role: Role,
    /// SHA-256 of the invitation token, with its expiry.
    pub invite: Option<(String, OffsetDateTime)>,
    /// When (the caller's clock).
    pub now: OffsetDateTime,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A change to a user, each with its own audit action.
#[derive(Clone, PartialEq, Eq)]
pub enum UserChange {
    /// New role (`user.role`). The owner's role cannot change, and nobody
    /// becomes owner this way.
    Role(Role),
    /// Disable (ends every session) or enable (`user.disable`, `user.enable`).
    Disabled(bool),
    /// New password hash (`user.password`).
    Password(String),
    /// A TOTP secret being enrolled, not yet required (`user.mfa_enroll`).
    MfaPending(Vec<u8>),
    /// The enrolled secret is confirmed and now required (`user.mfa_enable`).
    MfaEnabled,
    /// The user turned MFA off (`user.mfa_disable`).
    MfaDisabled,
    /// An administrator removed the user's MFA (`user.mfa_reset`).
    MfaReset,
}

impl fmt::Debug for UserChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action())
    }
}

impl UserChange {
    /// The audit action.
    pub fn action(&self) -> &'static str {
        match self {
            UserChange::Role(_) => "user.role",
            UserChange::Disabled(true) => "user.disable",
            UserChange::Disabled(false) => "user.enable",
            UserChange::Password(_) => "user.password",
            UserChange::MfaPending(_) => "user.mfa_enroll",
            UserChange::MfaEnabled => "user.mfa_enable",
            UserChange::MfaDisabled => "user.mfa_disable",
            UserChange::MfaReset => "user.mfa_reset",
        }
    }

    /// Refuses changes that the user's state does not allow.
    pub(crate) fn check(&self, user: &User) -> Result<()> {
        let refuse = |why: &'static str| {
            Err(StoreError::UserState {
                name: user.name.clone(),
                why,
            })
        };
        match self {
            UserChange::Role(Role::Owner) => refuse("nobody becomes owner by a role change"),
            UserChange::Role(_) if user.role == Role::Owner => {
                refuse("the owner's role cannot change")
            }
            UserChange::Disabled(true) if user.role == Role::Owner => {
                refuse("the owner cannot be disabled")
            }
            UserChange::MfaEnabled if user.totp_secret.is_none() => {
                refuse("no TOTP secret is being enrolled; start the enrollment first")
            }
            _ => Ok(()),
        }
    }

    /// Audit details: never the password hash or the secret.
    pub(crate) fn detail(&self, user: &User) -> serde_json::Value {
        match self {
            UserChange::Role(role) => json!({ "from": user.role.as_str(), "to": role.as_str() }),
            _ => json!({}),
        }
    }
}

/// What a lockout policy allows: `max_failures` in a row, then no sign-in
/// for `lockout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failed sign-ins in a row that lock the account.
    pub max_failures: u32,
    /// How long the account stays locked.
    pub lockout: time::Duration,
}

/// The outcome of a counted failed sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    /// Failures in a row so far (0 again once a lockout starts).
    pub failures: u32,
    /// Set when this failure locked the account: until when.
    pub locked_until: Option<OffsetDateTime>,
}

/// A server-side console session.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// SHA-256 hex of the session id held by the cookie.
    #[serde(skip)]
    pub id_hash: String,
    /// Its user.
    pub user_id: String,
    /// The synchronizer token that state-changing requests must echo.
    #[serde(skip)]
    pub csrf_token: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last used.
    #[serde(with = "time::serde::rfc3339")]
    pub last_used_at: OffsetDateTime,
    /// It ends then unless used before.
    #[serde(with = "time::serde::rfc3339")]
    pub idle_expires_at: OffsetDateTime,
    /// It ends then whatever happens.
    #[serde(with = "time::serde::rfc3339")]
    pub absolute_expires_at: OffsetDateTime,
    /// The browser's `User-Agent`, for the sessions list.
    pub user_agent: String,
    /// The client address it started from.
    pub ip: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("created_at", &self.created_at)
            .field("idle_expires_at", &self.idle_expires_at)
            .field("absolute_expires_at", &self.absolute_expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether the session may still be used at `now`.
    pub fn live_at(&self, now: OffsetDateTime) -> bool {
        now < self.idle_expires_at && now < self.absolute_expires_at
    }
}

/// A session to start (the row of [`Session`], created by the caller).
pub type NewSession = Session;

/// An API token (`rmp_api_...`), stored as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    /// Public id, shown in lists and used to revoke.
    pub id: String,
    /// SHA-256 hex of the token.
    #[serde(skip)]
    pub token_hash: String,
    /// What the creator called it.
    pub name: String,
    /// The role it acts with (at most its creator's).
    pub role: Role,
    /// The user who created it.
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Refused after this, if set.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last authenticated request.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiToken {
    /// Whether it authenticates requests at `now`.
    pub fn usable_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// An API token to create.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// Public id.
    pub id: String,
    /// SHA-256 hex of the token.
    pub token_hash: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The creating user's id.
    pub created_by: String,
    /// Optional expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// When (the caller's clock).
    pub now: OffsetDateTime,
}

/// Why the first-start setup was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SetupRefusal {
    /// An owner exists: setup happened already.
    #[error("setup is complete: an owner exists already; sign in instead")]
    Done,
    /// No current token has this hash (wrong, used, or replaced by a newer start).
    #[error(
        "the setup token is not valid (wrong, used, or replaced by a newer start); use the URL printed by the latest start of `rampart serve`"
    )]
    InvalidToken,
    /// The token is past its hour.
    #[error("the setup token expired; restart `rampart serve` to print a new setup URL")]
    Expired,
}

/// Console users and their credentials, implemented by both backends with
/// the same semantics. Every change appends its audit row in the same
/// transaction; times that decide expiry come from the caller's clock.
#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug {
    /// Whether an owner exists (first-start setup is done).
    async fn owner_exists(&self) -> Result<bool>;

    /// Stores a new setup token (its hash) valid until `expires_at`;
    /// every earlier one becomes void. Refused once an owner exists.
    async fn issue_setup_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<()>;

    /// First-start setup in one transaction: checks the token, creates the
    /// owner, voids every setup token and starts the owner's session.
    async fn complete_setup(
        &self,
        token_hash: &str,
        owner: NewUser,
        session: NewSession,
        actor: &Actor,
    ) -> Result<(User, Session)>;

    /// Creates a user (with a password, or invited). A taken name is
    /// [`StoreError::UserNameTaken`].
    async fn create_user(&self, user: NewUser, actor: &Actor) -> Result<User>;

    /// One user by id.
    async fn user(&self, id: &str) -> Result<Option<User>>;

    /// One user by name, regardless of case.
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;

    /// Every user, by name.
    async fn users(&self) -> Result<Vec<User>>;

    /// Sets the invited user's password: the invitation must be current at
    /// `now`; it is then void. Refused as [`StoreError::InviteInvalid`].
    async fn accept_invite(
        &self,
        invite_hash: &str,
        password_hash: &str,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<User>;

    /// Applies `change` to the user `id`, with its audit row.
    async fn update_user(
        &self,
        id: &str,
        change: UserChange,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<User>;

    /// Counts a failed sign-in; the failure that reaches the policy's
    /// limit locks the account and is audited (`user.lockout`).
    async fn record_login_failure(
        &self,
        user_id: &str,
        now: OffsetDateTime,
        policy: LockoutPolicy,
        actor: &Actor,
    ) -> Result<LoginFailure>;

    /// Starts a session after a successful sign-in: failures are reset and
    /// the sign-in audited (`user.login`).
    async fn create_session(&self, session: NewSession, actor: &Actor) -> Result<Session>;

    /// The session whose id hashes to `id_hash`.
    async fn session(&self, id_hash: &str) -> Result<Option<Session>>;

    /// Records a use of the session at `now`, moving its idle expiry.
    async fn touch_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<()>;

    /// Ends one session (sign-out, or found expired). Not audited: it only
    /// removes access.
    async fn end_session(&self, id_hash: &str) -> Result<()>;

    /// Ends every session of the user (`user.logout_everywhere`); returns
    /// how many ended.
    async fn end_all_sessions(&self, user_id: &str, actor: &Actor) -> Result<u64>;

    /// The user's sessions, newest first.
    async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>>;

    /// Stores an API token (its hash), audited (`api_token.create`).
    async fn create_api_token(&self, token: NewApiToken, actor: &Actor) -> Result<ApiToken>;

    /// The token with this hash.
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>>;

    /// Tokens created by `created_by`, or all, oldest first.
    async fn api_tokens(&self, created_by: Option<&str>) -> Result<Vec<ApiToken>>;

    /// Revokes a token (`api_token.revoke`); revoking twice is refused.
    async fn revoke_api_token(
        &self,
        id: &str,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<ApiToken>;

    /// Records that the token authenticated a request at `now`.
    async fn touch_api_token(&self, id: &str, now: OffsetDateTime) -> Result<()>;
}

/// Columns of a `users` row, in [`UserRow`] order.
pub(crate) const USER_COLUMNS: &str = "id, name, email, password_hash, role, disabled, totp_secret, \
     mfa_enabled, failed_logins, locked_until, invite_expires_at, created_by, created_at, updated_at";

/// A `users` row as read by either backend.
#[derive(Debug)]
pub(crate) struct UserRow {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: String,
    pub disabled: bool,
    pub totp_secret: Option<Vec<u8>>,
    pub mfa_enabled: bool,
    pub failed_logins: i64,
    pub locked_until: Option<i64>,
    pub invite_expires_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserRow {
    pub(crate) fn into_user(self) -> Result<User> {
        Ok(User {
            id: self.id,
            name: self.name,
            email: self.email,
            password_hash: self.password_hash,
            role: Role::from_column(&self.role)?,
            disabled: self.disabled,
            totp_secret: self.totp_secret,
            mfa_enabled: self.mfa_enabled,
            failed_logins: u32::try_from(self.failed_logins).unwrap_or(u32::MAX),
            locked_until: self.locked_until.map(from_ms).transpose()?,
            invite_expires_at: self.invite_expires_at.map(from_ms).transpose()?,
            created_by: self.created_by,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

/// Columns of a `user_sessions` row, in [`SessionRow`] order.
pub(crate) const SESSION_COLUMNS: &str = "id_hash, user_id, csrf_token, created_at, last_used_at, \
     idle_expires_at, absolute_expires_at, user_agent, ip";

/// A `user_sessions` row.
#[derive(Debug)]
pub(crate) struct SessionRow {
    pub id_hash: String,
    pub user_id: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub idle_expires_at: i64,
    pub absolute_expires_at: i64,
    pub user_agent: String,
    pub ip: String,
}

impl SessionRow {
    pub(crate) fn into_session(self) -> Result<Session> {
        Ok(Session {
            id_hash: self.id_hash,
            user_id: self.user_id,
            csrf_token: self.csrf_token,
            created_at: from_ms(self.created_at)?,
            last_used_at: from_ms(self.last_used_at)?,
            idle_expires_at: from_ms(self.idle_expires_at)?,
            absolute_expires_at: from_ms(self.absolute_expires_at)?,
            user_agent: self.user_agent,
            ip: self.ip,
        })
    }
}

/// Columns of an `api_tokens` row, in [`ApiTokenRow`] order.
pub(crate) const API_TOKEN_COLUMNS: &str =
    "id, token_hash, name, role, created_by, created_at, expires_at, last_used_at, revoked_at";

/// An `api_tokens` row.
#[derive(Debug)]
pub(crate) struct ApiTokenRow {
    pub id: String,
    pub token_hash: String,
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ApiTokenRow {
    pub(crate) fn into_token(self) -> Result<ApiToken> {
        Ok(ApiToken {
            id: self.id,
            token_hash: self.token_hash,
            name: self.name,
            role: Role::from_column(&self.role)?,
            created_by: self.created_by,
            created_at: from_ms(self.created_at)?,
            expires_at: self.expires_at.map(from_ms).transpose()?,
            last_used_at: self.last_used_at.map(from_ms).transpose()?,
            revoked_at: self.revoked_at.map(from_ms).transpose()?,
        })
    }
}

/// The audit row of an action on a user (or token) `subject`.
pub(crate) fn entry(
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: action.to_owned(),
        subject: Some(subject.to_owned()),
        detail,
    }
}

/// The audit row of a created user.
pub(crate) fn user_created(u: &NewUser, actor: &Actor, action: &str) -> AuditEntry {
    entry(
        actor,
        action,
        &u.name,
        json!({ "id": u.id, "role": u.role.as_str(), "invited": u.password_hash.is_none() }),
    )
}

/// The audit row of a created API token.
pub(crate) fn api_token_created(t: &NewApiToken, actor: &Actor) -> AuditEntry {
    entry(
        actor,
        "api_token.create",
        &t.id,
        json!({ "name": t.name, "role": t.role.as_str(), "created_by": t.created_by }),
    )
}

/// Whether a stored setup token may be used at `now`.
pub(crate) fn check_setup_token(expires_at: Option<i64>, now: OffsetDateTime) -> Result<()> {
    match expires_at {
        None => Err(StoreError::SetupRefused(SetupRefusal::InvalidToken)),
        Some(e) if crate::millis::to_ms(now) >= e => {
            Err(StoreError::SetupRefused(SetupRefusal::Expired))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power_and_round_trip() {
        assert!(Role::Owner > Role::Admin);
        assert!(Role::Admin > Role::Operator);
        assert!(Role::Operator > Role::Viewer);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
