//! The JSON API of users (administrators) and API tokens.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rampart_store::Role;
use serde::Deserialize;
use serde_json::json;

use super::account::{Caller, principal};
use super::{json_body, origin_of};
use crate::auth::accounts::{self, UserOp};
use crate::auth::{Action, authorize};
use crate::error::ApiError;
use crate::state::AppState;

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_role",
            format!("'{s}' is not a role; use owner, admin, operator or viewer"),
        )
    })
}

/// `GET /api/v1/users`.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, description = "{\"users\": [{\"user\", \"invited\"}]}", body = crate::routes::schemas::UsersBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = state.users().users().await.map_err(accounts::store_error)?;
    let list: Vec<_> = users
        .iter()
        .map(|u| json!({ "user": u, "invited": u.invited() }))
        .collect();
    Ok(Json(json!({ "users": list })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    name: String,
    #[serde(default)]
    email: Option<String>,
    role: String,
}

/// `POST /api/v1/users`: invite; the invitation token is shown once.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = InviteBody, responses((status = 201, description = "Invited; the invitation token is shown once", body = crate::routes::schemas::InvitedBody), (status = 400, description = "Invalid name or role", body = crate::error::ErrorBody), (status = 409, description = "Name taken", body = crate::error::ErrorBody)))]
pub(super) async fn invite(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let p = principal(caller)?;
    let b: InviteBody = json_body(&state, body)?;
    let (user, token) = accounts::invite(
        &state,
        &p,
        &b.name,
        b.email,
        role(&b.role)?,
        &origin_of(client, &headers),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "user": user,
            "inviteToken": token,
            "invitePath": format!("/invite?token={token}"),
        })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// `PATCH /api/v1/users/{id}`: role, disabled.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = ChangeBody, params(("id" = String, Path, description = "User id")), responses((status = 200, description = "The changed user", body = crate::routes::schemas::UserBody), (status = 403, description = "Role not assignable by the caller", body = crate::error::ErrorBody), (status = 404, description = "No such user", body = crate::error::ErrorBody)))]
pub(super) async fn change(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let b: ChangeBody = json_body(&state, body)?;
    let origin = origin_of(client, &headers);
    let mut ops = Vec::new();
    if let Some(r) = &b.role {
        ops.push(UserOp::Role(role(r)?));
    }
    if let Some(d) = b.disabled {
        ops.push(UserOp::Disabled(d));
    }
    if ops.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "send \"role\" and/or \"disabled\"",
        ));
    }
    let mut user = None;
    for op in ops {
        user = Some(accounts::change_user(&state, &p, &id, op, &origin).await?);
    }
    Ok(Json(json!({ "user": user })))
}

/// `POST /api/v1/users/{id}/mfa-reset`.
#[utoipa::path(post, path = "/api/v1/users/{id}/mfa-reset", tag = "users", params(("id" = String, Path, description = "User id")), responses((status = 200, description = "The user's second factor is removed", body = crate::routes::schemas::UserBody), (status = 404, description = "No such user", body = crate::error::ErrorBody)))]
pub(super) async fn mfa_reset(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let user = accounts::change_user(
        &state,
        &p,
        &id,
        UserOp::MfaReset,
        &origin_of(client, &headers),
    )
    .await?;
    Ok(Json(json!({ "user": user })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/api-tokens` (`?all=true`: everyone's, for administrators).
#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "api tokens", params(("all" = Option<bool>, Query, description = "Everyone's tokens (administrators)")), responses((status = 200, description = "{\"apiTokens\": [...]}", body = crate::routes::schemas::ApiTokensBody)))]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let of = if q.all {
        authorize(Some(&p), Action::ManageAllApiTokens)
            .map_err(|d| ApiError::new(StatusCode::FORBIDDEN, d.code(), d.to_string()))?;
        None
    } else {
        Some(p.user_id.as_str())
    };
    let tokens = state
        .users()
        .api_tokens(of)
        .await
        .map_err(accounts::store_error)?;
    Ok(Json(json!({ "apiTokens": tokens })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateTokenBody {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

/// `POST /api/v1/api-tokens`: the token is in the answer, once.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "api tokens", request_body = CreateTokenBody, responses((status = 201, description = "{\"apiToken\", \"token\"}: the token is shown once", body = crate::routes::schemas::ApiTokenCreatedBody), (status = 400, description = "Invalid name, role or expiry", body = crate::error::ErrorBody)))]
pub(super) async fn create_token(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let p = principal(caller)?;
    let b: CreateTokenBody = json_body(&state, body)?;
    let r = b.role.as_deref().map(role).transpose()?;
    let (created, token) = accounts::create_api_token(
        &state,
        &p,
        &b.name,
        r,
        b.expires_in_days,
        &origin_of(client, &headers),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "apiToken": created, "token": token })),
    ))
}

/// `DELETE /api/v1/api-tokens/{id}`.
#[utoipa::path(delete, path = "/api/v1/api-tokens/{id}", tag = "api tokens", params(("id" = String, Path, description = "Token id")), responses((status = 200, description = "The revoked token", body = crate::routes::schemas::ApiTokenBody), (status = 404, description = "No such token (or not yours)", body = crate::error::ErrorBody)))]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = principal(caller)?;
    let t = accounts::revoke_api_token(&state, &p, &id, &origin_of(client, &headers)).await?;
    Ok(Json(json!({ "apiToken": t })))
}
