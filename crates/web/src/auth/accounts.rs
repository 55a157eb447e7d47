//! What the console and the API do with accounts, shared by the JSON
//! handlers and the HTML forms: setup, sign-in, password, MFA, sessions,
//! invitations, user changes and API tokens. Each function takes the
//! caller already authorized for its route's action and makes the finer
//! decisions (whose token, which role) through [`super::authz`].

use axum::http::StatusCode;
use rampart_store::{
    Actor, ApiToken, LockoutPolicy, NewApiToken, NewUser, Role, Session, SetupRefusal, StoreError,
    User, UserChange,
};

use super::authz::{self, Action, Principal};
use super::password::{self, PasswordError};
use super::secret;
use super::session;
use super::totp::TotpSecret;
use crate::error::ApiError;
use crate::state::{AppState, WebMetrics};

/// Longest user name.
pub const MAX_NAME: usize = 64;
/// How long a setup token is valid.
pub const SETUP_TOKEN_VALID: time::Duration = time::Duration::hours(1);

/// Where a request comes from, for sessions and the audit log.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Client address.
    pub ip: String,
    /// `User-Agent`.
    pub user_agent: String,
}

impl Origin {
    fn actor(&self, name: &str) -> Actor {
        Actor {
            name: name.to_owned(),
            source: self.ip.clone(),
        }
    }
}

/// Maps a store refusal to the status and code a client can act on.
pub fn store_error(e: StoreError) -> ApiError {
    let (status, code) = match &e {
        StoreError::UserNotFound(_) => (StatusCode::NOT_FOUND, "user_not_found"),
        StoreError::UserNameTaken(_) => (StatusCode::CONFLICT, "name_taken"),
        StoreError::UserState { .. } => (StatusCode::CONFLICT, "user_state"),
        StoreError::SetupRefused(SetupRefusal::Done) => (StatusCode::CONFLICT, "setup_done"),
        StoreError::SetupRefused(SetupRefusal::InvalidToken) => {
            (StatusCode::UNAUTHORIZED, "setup_token_invalid")
        }
        StoreError::SetupRefused(SetupRefusal::Expired) => {
            (StatusCode::UNAUTHORIZED, "setup_token_expired")
        }
        StoreError::InviteInvalid => (StatusCode::UNAUTHORIZED, "invite_invalid"),
        StoreError::ApiTokenNotFound(_) => (StatusCode::NOT_FOUND, "api_token_not_found"),
        StoreError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        _ => return session::internal(e),
    };
    ApiError::new(status, code, e.to_string())
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn weak(e: PasswordError) -> ApiError {
    bad_request("weak_password", e.to_string())
}

fn hash_failed(e: password::HashError) -> ApiError {
    tracing::error!(error = %e, "password hashing failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server could not complete the request; see its log",
    )
}

/// Checks a new user name: 1 to 64 visible characters, no spaces at the ends.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && name.trim() == name
        && name.chars().all(|c| !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(bad_request(
            "invalid_name",
            format!(
                "a user name has 1 to {MAX_NAME} characters, no control characters and no spaces at either end"
            ),
        ))
    }
}

/// Issues a fresh setup token (the earlier ones become void) if no owner
/// exists; returns it in clear, to print once.
pub async fn issue_setup_token(state: &AppState) -> Result<Option<String>, StoreError> {
    let users = state.users();
    if users.owner_exists().await? {
        return Ok(None);
    }
    let token = secret::random_token();
    let now = state.clock().now();
    match users
        .issue_setup_token(
            &secret::hash(&token),
            now,
            now + SETUP_TOKEN_VALID,
            &Actor {
                name: "system".into(),
                source: "serve".into(),
            },
        )
        .await
    {
        Ok(()) => Ok(Some(token)),
        Err(StoreError::SetupRefused(SetupRefusal::Done)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A signed-in session: the cookie value to send once, the user, the row.
#[derive(Debug)]
pub struct SignedIn {
    /// The cookie value.
    pub cookie: String,
    /// The user.
    pub user: User,
    /// The session.
    pub session: Session,
}

/// First-start setup: creates the owner with `password` and signs them in.
pub async fn setup(
    state: &AppState,
    token: &str,
    name: &str,
    email: Option<String>,
    password: &str,
    origin: &Origin,
) -> Result<SignedIn, ApiError> {
    check_name(name)?;
    password::check_policy(password, &[name, email.as_deref().unwrap_or("")]).map_err(weak)?;
    let users = state.users();
    if users.owner_exists().await.map_err(store_error)? {
        return Err(store_error(StoreError::SetupRefused(SetupRefusal::Done)));
    }
    let hash = password::hash(password.to_owned())
        .await
        .map_err(hash_failed)?;
    let now = state.clock().now();
    let owner = NewUser {
        id: secret::random_id(),
        name: name.to_owned(),
        email,
        password_hash: Some(hash),
        role: Role::Owner,
        invite: None,
        now,
    };
    let draft = User {
        id: owner.id.clone(),
        name: owner.name.clone(),
        email: None,
        password_hash: None,
        role: Role::Owner,
        disabled: false,
        totp_secret: None,
        mfa_enabled: false,
        failed_logins: 0,
        locked_until: None,
        invite_expires_at: None,
        created_by: String::new(),
        created_at: now,
        updated_at: now,
    };
    let (cookie, row) = session::new_session(state, &draft, &origin.ip, &origin.user_agent);
    let (user, session) = users
        .complete_setup(&secret::hash(token), owner, row, &origin.actor(name))
        .await
        .map_err(store_error)?;
    tracing::info!(user = %user.name, client_addr = %origin.ip, "owner created by first-start setup");
    WebMetrics::inc(&state.metrics().logins);
    Ok(SignedIn {
        cookie,
        user,
        session,
    })
}

/// The outcome of the password step of a sign-in.
#[derive(Debug)]
pub enum LoginStep {
    /// Signed in.
    Done(Box<SignedIn>),
    /// The password was right; a TOTP code is needed (none was sent).
    TotpRequired(Box<User>),
}

fn login_failed() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "login_failed",
        "the name, password or code is wrong",
    )
}

fn locked(until: time::OffsetDateTime, now: time::OffsetDateTime) -> ApiError {
    let wait = (until - now).max(time::Duration::seconds(1));
    let secs = u64::try_from(wait.whole_seconds()).unwrap_or(1).max(1);
    ApiError {
        retry_after: Some(secs),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "account_locked",
            format!("too many failed sign-ins: this account is locked for {secs} s more"),
        )
    }
}

/// Checks the per-address limit before a sign-in attempt.
pub fn check_ip_throttle(state: &AppState, origin: &Origin) -> Result<(), ApiError> {
    let ip = origin.ip.parse().ok();
    if let Some(ip) = ip
        && let Err(wait) = state
            .login_failures()
            .check(ip, tokio::time::Instant::now())
    {
        WebMetrics::inc(&state.metrics().rate_limited);
        tracing::info!(client_addr = %origin.ip, "sign-in refused: too many failures from this address");
        return Err(ApiError {
            code: "rate_limited",
            ..ApiError::rate_limited(wait)
        });
    }
    Ok(())
}

/// Counts a failed sign-in against the address and, if the user exists,
/// the account (which may lock it).
async fn failure(state: &AppState, user: Option<&User>, origin: &Origin) -> ApiError {
    WebMetrics::inc(&state.metrics().login_failures);
    if let Ok(ip) = origin.ip.parse() {
        state
            .login_failures()
            .charge(ip, tokio::time::Instant::now());
    }
    let Some(user) = user else {
        tracing::info!(client_addr = %origin.ip, reason = "unknown user", "sign-in failed");
        return login_failed();
    };
    tracing::info!(client_addr = %origin.ip, user = %user.name, "sign-in failed");
    let config = state.config();
    let policy = LockoutPolicy {
        max_failures: config.login_max_failures,
        lockout: time::Duration::try_from(config.login_lockout).unwrap_or(time::Duration::MAX),
    };
    let now = state.clock().now();
    match state
        .users()
        .record_login_failure(&user.id, now, policy, &origin.actor(&user.name))
        .await
    {
        Ok(f) => match f.locked_until {
            Some(until) => {
                tracing::warn!(user = %user.name, client_addr = %origin.ip, "account locked after repeated failed sign-ins");
                locked(until, now)
            }
            None => login_failed(),
        },
        Err(e) => store_error(e),
    }
}

/// The password step of a sign-in (and the TOTP step when `totp` is sent).
pub async fn login(
    state: &AppState,
    name: &str,
    password: &str,
    totp: Option<&str>,
    origin: &Origin,
) -> Result<LoginStep, ApiError> {
    check_ip_throttle(state, origin)?;
    let now = state.clock().now();
    let user = if name.len() <= MAX_NAME * 4 {
        state
            .users()
            .user_by_name(name)
            .await
            .map_err(store_error)?
    } else {
        None
    };
    let user = user.filter(|u| !u.disabled);
    if let Some(until) = user.as_ref().and_then(|u| u.locked_until)
        && until > now
    {
        return Err(locked(until, now));
    }
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    let password = password.chars().take(password::MAX_LEN).collect::<String>();
    if !password::verify(password, phc).await {
        return Err(failure(state, user.as_ref(), origin).await);
    }
    let Some(user) = user else {
        return Err(failure(state, None, origin).await);
    };
    if user.mfa_enabled {
        let Some(code) = totp.filter(|c| !c.trim().is_empty()) else {
            return Ok(LoginStep::TotpRequired(Box::new(user)));
        };
        if !totp_ok(state, &user, code) {
            return Err(failure(state, Some(&user), origin).await);
        }
    }
    finish_login(state, user, origin).await
}

/// The TOTP step of a two-step (HTML) sign-in.
pub async fn login_totp(
    state: &AppState,
    ticket: &str,
    code: &str,
    origin: &Origin,
) -> Result<SignedIn, ApiError> {
    check_ip_throttle(state, origin)?;
    let Some(user_id) = state.take_mfa_ticket(ticket) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login_expired",
            "the sign-in took too long; enter your name and password again",
        ));
    };
    let user = state
        .users()
        .user(&user_id)
        .await
        .map_err(store_error)?
        .filter(|u| !u.disabled)
        .ok_or_else(login_failed)?;
    if !totp_ok(state, &user, code) {
        return Err(failure(state, Some(&user), origin).await);
    }
    match finish_login(state, user, origin).await? {
        LoginStep::Done(s) => Ok(*s),
        LoginStep::TotpRequired(_) => Err(login_failed()),
    }
}

async fn finish_login(
    state: &AppState,
    user: User,
    origin: &Origin,
) -> Result<LoginStep, ApiError> {
    let (cookie, session) = session::start(
        state,
        &user,
        &origin.ip,
        &origin.user_agent,
        &origin.actor(&user.name),
    )
    .await?;
    tracing::info!(user = %user.name, client_addr = %origin.ip, "signed in");
    Ok(LoginStep::Done(Box::new(SignedIn {
        cookie,
        user,
        session,
    })))
}

/// Whether `code` is the user's current TOTP code, not used before.
fn totp_ok(state: &AppState, user: &User, code: &str) -> bool {
    let Some(sealed) = &user.totp_secret else {
        return false;
    };
    let secret = match state.sealing_key().open(sealed, &user.id) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(user = %user.name, error = %e, "cannot open a TOTP secret");
            return false;
        }
    };
    let now = state.clock().now().unix_timestamp();
    secret
        .verify(code, now)
        .is_some_and(|step| state.use_totp_step(&user.id, step))
}

async fn me(state: &AppState, p: &Principal) -> Result<User, ApiError> {
    state
        .users()
        .user(&p.user_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::UserNotFound(p.name.clone())))
}

/// Changes the caller's password after checking the current one.
pub async fn change_password(
    state: &AppState,
    p: &Principal,
    current: &str,
    new: &str,
    origin: &Origin,
) -> Result<(), ApiError> {
    let user = me(state, p).await?;
    if !password::verify(current.to_owned(), user.password_hash.clone()).await {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "password_wrong",
            "the current password is wrong",
        ));
    }
    password::check_policy(new, &[&user.name, user.email.as_deref().unwrap_or("")])
        .map_err(weak)?;
    let hash = password::hash(new.to_owned()).await.map_err(hash_failed)?;
    state
        .users()
        .update_user(
            &user.id,
            UserChange::Password(hash),
            state.clock().now(),
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// An MFA enrollment in progress: shown once.
#[derive(Debug)]
pub struct MfaEnrollment {
    /// Base32 secret, for typing in.
    pub secret: String,
    /// `otpauth://` URI.
    pub uri: String,
    /// The URI as a QR code, SVG.
    pub qr_svg: String,
}

/// Starts (or restarts) MFA enrollment: a new secret, stored sealed, not
/// yet required. Refused while MFA is on (disable it first).
pub async fn mfa_start(
    state: &AppState,
    p: &Principal,
    origin: &Origin,
) -> Result<MfaEnrollment, ApiError> {
    let user = me(state, p).await?;
    if user.mfa_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mfa_enabled",
            "two-factor authentication is on already; turn it off first to enrol a new device",
        ));
    }
    let secret = TotpSecret::generate();
    let sealed = state.sealing_key().seal(&secret, &user.id);
    state
        .users()
        .update_user(
            &user.id,
            UserChange::MfaPending(sealed),
            state.clock().now(),
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    let uri = secret.uri("Rampart", &user.name);
    let qr_svg = qrcode::QrCode::new(uri.as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    Ok(MfaEnrollment {
        secret: secret.base32(),
        uri,
        qr_svg,
    })
}

fn code_wrong() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "totp_wrong",
        "the code is wrong or was used already; enter the current 6-digit code of your authenticator app",
    )
}

/// Confirms enrollment with a current code: MFA is required from now on.
pub async fn mfa_confirm(
    state: &AppState,
    p: &Principal,
    code: &str,
    origin: &Origin,
) -> Result<(), ApiError> {
    let user = me(state, p).await?;
    if user.mfa_enabled || user.totp_secret.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mfa_not_enrolling",
            "no enrollment is in progress; start one first",
        ));
    }
    if !totp_ok(state, &user, code) {
        return Err(code_wrong());
    }
    state
        .users()
        .update_user(
            &user.id,
            UserChange::MfaEnabled,
            state.clock().now(),
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Turns the caller's MFA off, proven with a current code. Refused when
/// the instance requires it for the caller's role.
pub async fn mfa_disable(
    state: &AppState,
    p: &Principal,
    code: &str,
    origin: &Origin,
) -> Result<(), ApiError> {
    let user = me(state, p).await?;
    if state.config().require_mfa_for_admins && user.role >= Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "mfa_required",
            "this instance requires two-factor authentication for owners and admins",
        ));
    }
    if !user.mfa_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mfa_not_enabled",
            "two-factor authentication is not on",
        ));
    }
    if !totp_ok(state, &user, code) {
        return Err(code_wrong());
    }
    state
        .users()
        .update_user(
            &user.id,
            UserChange::MfaDisabled,
            state.clock().now(),
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Ends every session of the caller; returns how many.
pub async fn logout_everywhere(
    state: &AppState,
    p: &Principal,
    origin: &Origin,
) -> Result<u64, ApiError> {
    state
        .users()
        .end_all_sessions(&p.user_id, &origin.actor(&p.name))
        .await
        .map_err(store_error)
}

/// Creates an invited user; returns it and the invitation token (once).
pub async fn invite(
    state: &AppState,
    p: &Principal,
    name: &str,
    email: Option<String>,
    role: Role,
    origin: &Origin,
) -> Result<(User, String), ApiError> {
    check_name(name)?;
    authz::may_assign_role(p, None, role).map_err(forbidden)?;
    let token = secret::random_token();
    let now = state.clock().now();
    let expires = now + state.config().invite_valid_for;
    let user = state
        .users()
        .create_user(
            NewUser {
                id: secret::random_id(),
                name: name.to_owned(),
                email,
                password_hash: None,
                role,
                invite: Some((secret::hash(&token), expires)),
                now,
            },
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    Ok((user, token))
}

/// Sets an invited user's password.
pub async fn accept_invite(
    state: &AppState,
    token: &str,
    password: &str,
    origin: &Origin,
) -> Result<User, ApiError> {
    let users = state.users();
    let hash = secret::hash(token);
    password::check_policy(password, &[]).map_err(weak)?;
    let phc = password::hash(password.to_owned())
        .await
        .map_err(hash_failed)?;
    users
        .accept_invite(&hash, &phc, state.clock().now(), &origin.actor("invitee"))
        .await
        .map_err(store_error)
}

fn forbidden(d: authz::Denied) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, d.code(), d.to_string())
}

/// A change an administrator makes to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOp {
    /// New role.
    Role(Role),
    /// Disable (`true`) or enable.
    Disabled(bool),
    /// Remove the user's MFA (lost phone).
    MfaReset,
}

/// Applies `op` to user `id`, as `p` (who must outrank the user).
pub async fn change_user(
    state: &AppState,
    p: &Principal,
    id: &str,
    op: UserOp,
    origin: &Origin,
) -> Result<User, ApiError> {
    let users = state.users();
    let target = users
        .user(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::UserNotFound(id.to_owned())))?;
    if target.id == p.user_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_state",
            "you cannot change your own role, access or MFA here; use the account page, or ask another administrator",
        ));
    }
    let new_role = match op {
        UserOp::Role(r) => r,
        _ => target.role,
    };
    authz::may_assign_role(p, Some(target.role), new_role).map_err(forbidden)?;
    let change = match op {
        UserOp::Role(r) => UserChange::Role(r),
        UserOp::Disabled(d) => UserChange::Disabled(d),
        UserOp::MfaReset => UserChange::MfaReset,
    };
    users
        .update_user(id, change, state.clock().now(), &origin.actor(&p.name))
        .await
        .map_err(store_error)
}

/// Creates an API token for the caller with `role` (at most the caller's);
/// returns it and the token in clear (shown once).
pub async fn create_api_token(
    state: &AppState,
    p: &Principal,
    name: &str,
    role: Option<Role>,
    expires_in_days: Option<u32>,
    origin: &Origin,
) -> Result<(ApiToken, String), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad_request(
            "invalid_name",
            format!("a token name has 1 to {MAX_NAME} characters"),
        ));
    }
    let role = role.unwrap_or(p.role);
    if role > p.role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a token's role cannot be above your own ('{}')", p.role),
        ));
    }
    let now = state.clock().now();
    let expires_at = match expires_in_days {
        Some(0) | None => None,
        Some(d) if d <= 3650 => Some(now + time::Duration::days(i64::from(d))),
        Some(_) => {
            return Err(bad_request(
                "invalid_expiry",
                "expiresInDays must be at most 3650",
            ));
        }
    };
    let token = secret::api_token();
    let created = state
        .users()
        .create_api_token(
            NewApiToken {
                id: secret::random_id(),
                token_hash: secret::hash(&token),
                name: name.to_owned(),
                role,
                created_by: p.user_id.clone(),
                expires_at,
                now,
            },
            &origin.actor(&p.name),
        )
        .await
        .map_err(store_error)?;
    Ok((created, token))
}

/// Revokes token `id`: one's own, or anyone's with `ManageAllApiTokens`.
pub async fn revoke_api_token(
    state: &AppState,
    p: &Principal,
    id: &str,
    origin: &Origin,
) -> Result<ApiToken, ApiError> {
    let users = state.users();
    let mine = users
        .api_tokens(Some(&p.user_id))
        .await
        .map_err(store_error)?
        .iter()
        .any(|t| t.id == id);
    if !mine {
        // Someone else's: only for those who manage every token; anyone
        // else learns nothing about whether it exists.
        if authz::authorize(Some(p), Action::ManageAllApiTokens).is_err() {
            return Err(store_error(StoreError::ApiTokenNotFound(id.to_owned())));
        }
    }
    users
        .revoke_api_token(id, state.clock().now(), &origin.actor(&p.name))
        .await
        .map_err(store_error)
}
