//! The JSON API of one's own account: first-start setup, sign-in and
//! sign-out, `me`, sessions, password, MFA, invitations.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{json_body, origin_of};
use crate::auth::accounts::{self, LoginStep, SignedIn};
use crate::auth::session::{clear_cookie, set_cookie};
use crate::auth::{Credential, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// The caller, put there by the guard (present on authorized routes).
pub(crate) type Caller = Extension<Option<Principal>>;

/// The principal of an authorized route; the guard guarantees one.
pub(crate) fn principal(caller: Caller) -> Result<Principal, ApiError> {
    caller.0.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in first: this needs a session or an API token",
        )
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    token: String,
    name: String,
    #[serde(default)]
    email: Option<String>,
    password: String,
}

/// The JSON of a signed-in session, with its cookie.
fn signed_in(state: &AppState, s: SignedIn, status: StatusCode) -> Response {
    let body = json!({
        "user": s.user,
        "csrfToken": s.session.csrf_token,
        "expiresAt": s.session.absolute_expires_at.unix_timestamp(),
    });
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&s.cookie, state.config().session_absolute_timeout),
    );
    r
}

/// `POST /api/v1/setup`: creates the owner with the setup token.
#[utoipa::path(post, path = "/api/v1/setup", tag = "account", request_body = SetupBody, responses((status = 201, description = "The owner is created and signed in (session cookie set)", body = crate::routes::schemas::SignedInBody), (status = 401, description = "Setup token invalid or expired", body = crate::error::ErrorBody), (status = 409, description = "Setup is done", body = crate::error::ErrorBody)))]
pub(super) async fn setup(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: SetupBody = json_body(&state, body)?;
    let origin = origin_of(client, &headers);
    let s = accounts::setup(&state, &b.token, &b.name, b.email, &b.password, &origin).await?;
    Ok(signed_in(&state, s, StatusCode::CREATED))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

/// `POST /api/v1/session`: sign in.
#[utoipa::path(post, path = "/api/v1/session", tag = "account", request_body = LoginBody, responses((status = 200, description = "Signed in; the session cookie is set and the CSRF token returned", body = crate::routes::schemas::SignedInBody), (status = 401, description = "Wrong name, password or code", body = crate::error::ErrorBody), (status = 429, description = "Too many failures; see Retry-After", body = crate::error::ErrorBody)))]
pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: LoginBody = json_body(&state, body)?;
    let origin = origin_of(client, &headers);
    match accounts::login(&state, &b.name, &b.password, b.totp.as_deref(), &origin).await? {
        LoginStep::Done(s) => Ok(signed_in(&state, *s, StatusCode::OK)),
        LoginStep::TotpRequired(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "totp_required",
            "this account uses two-factor authentication: send the current code as \"totp\"",
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = AcceptInviteBody)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    token: String,
    password: String,
}

/// `POST /api/v1/invite`: an invited user sets a password.
#[utoipa::path(post, path = "/api/v1/invite", tag = "account", request_body = InviteBody, responses((status = 200, description = "The invited user has a password now", body = crate::routes::schemas::UserBody), (status = 401, description = "Invitation invalid or expired", body = crate::error::ErrorBody)))]
pub(super) async fn accept_invite(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: InviteBody = json_body(&state, body)?;
    let origin = origin_of(client, &headers);
    let user = accounts::accept_invite(&state, &b.token, &b.password, &origin).await?;
    Ok(Json(json!({ "user": user })))
}

/// `DELETE /api/v1/session`: sign out of this session.
#[utoipa::path(delete, path = "/api/v1/session", tag = "account", responses((status = 204, description = "This session is ended")))]
pub(super) async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    if let Credential::Session { id_hash, .. } = &p.credential {
        state
            .users()
            .end_session(id_hash)
            .await
            .map_err(accounts::store_error)?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

/// `POST /api/v1/session/logout-everywhere`: end every session of mine.
#[utoipa::path(post, path = "/api/v1/session/logout-everywhere", tag = "account", responses((status = 200, description = "Every session of the user is ended", body = crate::routes::schemas::SessionsEndedBody)))]
pub(super) async fn logout_everywhere(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    let n = accounts::logout_everywhere(&state, &p, &origin_of(client, &headers)).await?;
    let mut r = Json(json!({ "sessionsEnded": n })).into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

/// `GET /api/v1/me`.
#[utoipa::path(get, path = "/api/v1/me", tag = "account", responses((status = 200, description = "The caller: user, role, how authenticated", body = crate::routes::schemas::MeBody)))]
pub(super) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let user = state
        .users()
        .user(&p.user_id)
        .await
        .map_err(accounts::store_error)?;
    let csrf = match &p.credential {
        Credential::Session { csrf_token, .. } => Some(csrf_token.clone()),
        Credential::ApiToken { .. } => None,
    };
    Ok(Json(json!({
        "user": user,
        "role": p.role,
        "via": if p.is_session() { "session" } else { "api_token" },
        "csrfToken": csrf,
        "mfaEnrollmentRequired": p.mfa_enrollment_required,
    })))
}

/// `GET /api/v1/me/sessions`.
#[utoipa::path(get, path = "/api/v1/me/sessions", tag = "account", responses((status = 200, description = "The caller's sessions", body = crate::routes::schemas::SessionsBody)))]
pub(super) async fn sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let current = match &p.credential {
        Credential::Session { id_hash, .. } => Some(id_hash.clone()),
        Credential::ApiToken { .. } => None,
    };
    let sessions = state
        .users()
        .sessions_of(&p.user_id)
        .await
        .map_err(accounts::store_error)?;
    let list: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "createdAt": s.created_at.unix_timestamp(),
                "lastUsedAt": s.last_used_at.unix_timestamp(),
                "ip": s.ip,
                "userAgent": s.user_agent,
                "current": current.as_deref() == Some(s.id_hash.as_str()),
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": list })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// `POST /api/v1/me/password`.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "account", request_body = PasswordBody, responses((status = 204, description = "Password changed; other sessions ended"), (status = 400, description = "Weak password or wrong current password", body = crate::error::ErrorBody)))]
pub(super) async fn password(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let p = principal(caller)?;
    let b: PasswordBody = json_body(&state, body)?;
    accounts::change_password(
        &state,
        &p,
        &b.current_password,
        &b.new_password,
        &origin_of(client, &headers),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/me/mfa`: start enrollment; the secret is shown once.
#[utoipa::path(post, path = "/api/v1/me/mfa", tag = "account", responses((status = 200, description = "TOTP enrollment started: otpauth URI, secret, QR code", body = crate::routes::schemas::MfaStartBody)))]
pub(super) async fn mfa_start(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let e = accounts::mfa_start(&state, &p, &origin_of(client, &headers)).await?;
    Ok(Json(json!({
        "secret": e.secret,
        "otpauthUri": e.uri,
        "qrSvg": e.qr_svg,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

/// `POST /api/v1/me/mfa/confirm`.
#[utoipa::path(post, path = "/api/v1/me/mfa/confirm", tag = "account", request_body = CodeBody, responses((status = 204, description = "Two-factor authentication is on"), (status = 400, description = "Wrong code", body = crate::error::ErrorBody)))]
pub(super) async fn mfa_confirm(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let p = principal(caller)?;
    let b: CodeBody = json_body(&state, body)?;
    accounts::mfa_confirm(&state, &p, &b.code, &origin_of(client, &headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/me/mfa/disable`.
#[utoipa::path(post, path = "/api/v1/me/mfa/disable", tag = "account", request_body = CodeBody, responses((status = 204, description = "Two-factor authentication is off"), (status = 400, description = "Wrong code", body = crate::error::ErrorBody)))]
pub(super) async fn mfa_disable(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let p = principal(caller)?;
    let b: CodeBody = json_body(&state, body)?;
    accounts::mfa_disable(&state, &p, &b.code, &origin_of(client, &headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}
