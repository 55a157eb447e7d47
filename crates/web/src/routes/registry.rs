//! Enrollment tokens, service identities and the audit log: what the
//! console and the JSON API do with them (shared by both), and the JSON
//! handlers. The domain work is `rampart_provisioning` and the store's;
//! this module maps callers, bodies and refusals onto it, with the
//! signed-in user as the audit actor.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_provisioning::enrollment::{self, TokenError, TokenSpec};
use rampart_provisioning::registration;
use rampart_store::{
    Actor, AuditRecord, AuditReport, AuditSearch, NewService, Service, StoreError,
};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::account::{Caller, principal};
use super::{json_body, origin_of};
use crate::auth::Principal;
use crate::auth::accounts::{self, Origin};
use crate::error::ApiError;
use crate::state::AppState;

/// The audit actor of a console or API request.
fn actor(p: &Principal, origin: &Origin) -> Actor {
    Actor {
        name: p.name.clone(),
        source: origin.ip.clone(),
    }
}

/// Maps a store refusal about tokens or services to a status and code.
fn refusal(e: StoreError) -> ApiError {
    let (status, code) = match &e {
        StoreError::TokenNotFound(_) => (StatusCode::NOT_FOUND, "enroll_token_not_found"),
        StoreError::InvalidTokenState { .. } => (StatusCode::CONFLICT, "enroll_token_state"),
        StoreError::ServiceNotFound(_) => (StatusCode::NOT_FOUND, "service_not_found"),
        StoreError::IdTaken(_) => (StatusCode::CONFLICT, "name_taken"),
        _ => return accounts::store_error(e),
    };
    ApiError::new(status, code, e.to_string())
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server could not complete the request; see its log",
    )
}

/// What a new enrollment token is asked to be (API body and form alike).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NewTokenBody {
    /// How many devices it may register (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
    /// Hours it is accepted (default 24, at most 366 days).
    #[serde(default)]
    pub expires_in_hours: Option<u32>,
    /// Device ids it registers must start with this.
    #[serde(default)]
    pub id_prefix: Option<String>,
    /// The user who owns the devices it registers.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Creates an enrollment token; returns its record and the secret, once.
pub(crate) async fn create_enroll_token(
    state: &AppState,
    p: &Principal,
    b: NewTokenBody,
    origin: &Origin,
) -> Result<(rampart_store::EnrollmentToken, String), ApiError> {
    let blank = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let spec = TokenSpec {
        uses: b.uses.unwrap_or(1),
        valid_for: Duration::from_secs(u64::from(b.expires_in_hours.unwrap_or(24)) * 3600),
        id_prefix: blank(b.id_prefix),
        owner: blank(b.owner),
    };
    match enrollment::create_token(state.store(), &spec, &actor(p, origin)).await {
        Ok(created) => Ok((created.token, created.secret.as_str().to_owned())),
        Err(TokenError::Invalid(m)) => Err(bad("invalid_token_spec", m)),
        Err(TokenError::Store(e)) => Err(refusal(e)),
    }
}

/// Revokes an enrollment token.
pub(crate) async fn revoke_enroll_token(
    state: &AppState,
    p: &Principal,
    id: &str,
    origin: &Origin,
) -> Result<rampart_store::EnrollmentToken, ApiError> {
    state
        .store()
        .revoke_enrollment_token(id, &actor(p, origin))
        .await
        .map_err(refusal)
}

/// A new service identity: its record and its credentials, shown once.
#[derive(Debug)]
pub(crate) struct CreatedService {
    /// The stored service.
    pub service: Service,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The certificate followed by the issuing CA.
    pub certificate_pem: String,
    /// The CA chain to trust the broker with.
    pub ca_pem: String,
}

fn service_name(name: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(name.trim()).map_err(|e| {
        bad(
            "invalid_name",
            format!("'{name}' is not a service name: {e}"),
        )
    })
}

/// Issues a service identity (key generated here, handed over once).
pub(crate) async fn create_service(
    state: &AppState,
    p: &Principal,
    name: &str,
    origin: &Origin,
) -> Result<CreatedService, ApiError> {
    let name = service_name(name)?;
    let store = state.store();
    let taken = store.service(&name).await.map_err(refusal)?.is_some()
        || store.device(&name).await.map_err(refusal)?.is_some();
    if taken {
        return Err(refusal(StoreError::IdTaken(name)));
    }
    let pki = state.pki();
    let (cert, key) = pki
        .issue_service(&name)
        .map_err(|e| internal("cannot issue a service certificate", e))?;
    let service = store
        .create_service(
            NewService {
                id: name,
                serial: cert.serial.clone(),
                fingerprint: cert.fingerprint.clone(),
                not_before: cert.not_before,
                not_after: cert.not_after,
            },
            &actor(p, origin),
        )
        .await
        .map_err(refusal)?;
    Ok(CreatedService {
        service,
        key_pem: key.as_str().to_owned(),
        certificate_pem: registration::chain_pem(&cert.pem, pki.issuing_ca_pem()),
        ca_pem: pki.chain_pem(),
    })
}

fn reason(s: Option<&str>) -> Result<RevocationReason, ApiError> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(RevocationReason::CessationOfOperation),
        Some(s) => RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = RevocationReason::ALL.iter().map(|r| r.as_str()).collect();
                bad(
                    "invalid_reason",
                    format!(
                        "'{s}' is not a revocation reason; use one of {}",
                        all.join(", ")
                    ),
                )
            }),
    }
}

/// Revokes a service's certificate. The server's change feed publishes
/// the CRL and reloads the broker's TLS material.
pub(crate) async fn revoke_service(
    state: &AppState,
    p: &Principal,
    name: &str,
    why: Option<&str>,
    origin: &Origin,
) -> Result<Service, ApiError> {
    let name = service_name(name)?;
    let why = reason(why)?;
    state
        .store()
        .revoke_service(&name, why, &actor(p, origin))
        .await
        .map_err(refusal)
}

/// Which audit rows to show (query string of the API and the page).
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Action, exactly (`user.invite`) or by prefix ending in `.` (`user.`).
    #[serde(default)]
    pub action: Option<String>,
    /// Actor name, exactly.
    #[serde(default)]
    pub actor: Option<String>,
    /// Subject, exactly.
    #[serde(default)]
    pub subject: Option<String>,
    /// Rows at or after this instant (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Rows before this instant (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Rows with a sequence number below this (the previous page's `nextBefore`).
    #[serde(default)]
    pub before: Option<u64>,
    /// Verify the whole chain now, not only the rows added since the last
    /// verification.
    #[serde(default)]
    pub full: Option<bool>,
}

/// One page of the audit log, newest first, with the chain's verification.
#[derive(Debug)]
pub(crate) struct AuditPage {
    /// The rows, newest first.
    pub entries: Vec<AuditRecord>,
    /// The `before` of the next (older) page, if there is one.
    pub next_before: Option<u64>,
    /// Whether the whole chain verifies.
    pub chain: AuditReport,
}

fn instant(what: &str, s: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let rfc = &time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, rfc)
        .or_else(|_| OffsetDateTime::parse(&format!("{s}:00Z"), rfc))
        .map(Some)
        .map_err(|_| {
            bad(
                "invalid_query",
                format!("{what} '{s}' is not a time; use RFC 3339, e.g. 2026-01-31T12:00:00Z"),
            )
        })
}

impl AuditQuery {
    /// The store's search for one page (one row more than asked, to know
    /// whether another page follows).
    fn search(
        &self,
        limit: u32,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> AuditSearch {
        let nonempty = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let action = nonempty(&self.action);
        let (action, action_prefix) = match action {
            Some(a) if a.ends_with('.') => (None, Some(a)),
            other => (other, None),
        };
        AuditSearch {
            before: self.before,
            action,
            action_prefix,
            actor: nonempty(&self.actor),
            subject: nonempty(&self.subject),
            since,
            until,
            limit: limit + 1,
        }
    }
}

/// Reads one page of the audit log, filtered and paged by the store.
pub(crate) async fn audit_page(state: &AppState, q: &AuditQuery) -> Result<AuditPage, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(bad("invalid_query", "limit must be between 1 and 200"));
    }
    let since = instant("since", q.since.as_deref())?;
    let until = instant("until", q.until.as_deref())?;
    let store = state.store();
    let mut entries = store
        .search_audit(&q.search(limit, since, until))
        .await
        .map_err(refusal)?;
    let next_before = (entries.len() > limit as usize)
        .then(|| entries.get(limit as usize - 1).map(|r| r.seq))
        .flatten();
    entries.truncate(limit as usize);
    let chain = state
        .audit_chain()
        .verify(store, state.clock().now(), q.full.unwrap_or(false))
        .await
        .map_err(refusal)?;
    Ok(AuditPage {
        entries,
        next_before,
        chain,
    })
}

type JsonResult = Result<Json<serde_json::Value>, ApiError>;
type Created = Result<(StatusCode, Json<serde_json::Value>), ApiError>;

/// `GET /api/v1/enroll-tokens`.
#[utoipa::path(get, path = "/api/v1/enroll-tokens", tag = "enrollment tokens",
    responses((status = 200, description = "Every enrollment token (never the secret): `{\"enrollTokens\": [...]}`", body = crate::routes::schemas::EnrollTokensBody)))]
pub(super) async fn list_enroll_tokens(State(state): State<AppState>) -> JsonResult {
    let tokens = state.store().enrollment_tokens().await.map_err(refusal)?;
    let now = OffsetDateTime::now_utc();
    let list: Vec<_> = tokens
        .iter()
        .map(|t| json!({ "token": t, "state": t.state(now).as_str(), "usesLeft": t.uses_left() }))
        .collect();
    Ok(Json(json!({ "enrollTokens": list })))
}

/// `POST /api/v1/enroll-tokens`: the token is in the answer, once.
#[utoipa::path(post, path = "/api/v1/enroll-tokens", tag = "enrollment tokens", request_body = NewTokenBody,
    responses((status = 201, description = "`{\"enrollToken\": {...}, \"token\": \"rmp_enr_...\"}`; the token is not shown again", body = crate::routes::schemas::EnrollTokenCreatedBody),
        (status = 400, description = "Invalid scope, malformed JSON or unknown field", body = crate::error::ErrorBody)))]
pub(super) async fn create_enroll_token_api(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Created {
    let p = principal(caller)?;
    let b: NewTokenBody = json_body(&state, body)?;
    let (token, secret) = create_enroll_token(&state, &p, b, &origin_of(client, &headers)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "enrollToken": token, "token": secret })),
    ))
}

/// `DELETE /api/v1/enroll-tokens/{id}`.
#[utoipa::path(delete, path = "/api/v1/enroll-tokens/{id}", tag = "enrollment tokens",
    params(("id" = String, Path, description = "The token's public id")),
    responses((status = 200, description = "`{\"enrollToken\": {...}}`, revoked", body = crate::routes::schemas::EnrollTokenBody),
        (status = 404, description = "No such token", body = crate::error::ErrorBody), (status = 409, description = "Already revoked", body = crate::error::ErrorBody)))]
pub(super) async fn revoke_enroll_token_api(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
) -> JsonResult {
    let p = principal(caller)?;
    let t = revoke_enroll_token(&state, &p, &id, &origin_of(client, &headers)).await?;
    Ok(Json(json!({ "enrollToken": t })))
}

/// `GET /api/v1/services`.
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, description = "`{\"services\": [...]}`, ordered by name", body = crate::routes::schemas::ServicesBody)))]
pub(super) async fn list_services(State(state): State<AppState>) -> JsonResult {
    let services = state.store().list_services().await.map_err(refusal)?;
    Ok(Json(json!({ "services": services })))
}

/// A new service identity.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewServiceBody {
    /// Its name (the certificate's CN; the rules of a device id).
    pub name: String,
}

/// `POST /api/v1/services`: the key and certificate are in the answer, once.
#[utoipa::path(post, path = "/api/v1/services", tag = "services", request_body = NewServiceBody,
    responses((status = 201, description = "`{\"service\", \"keyPem\", \"certificatePem\", \"caPem\"}`; the key is not kept and not shown again", body = crate::routes::schemas::ServiceCreatedBody),
        (status = 409, description = "The name is taken by a service or a device", body = crate::error::ErrorBody)))]
pub(super) async fn create_service_api(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Created {
    let p = principal(caller)?;
    let b: NewServiceBody = json_body(&state, body)?;
    let c = create_service(&state, &p, &b.name, &origin_of(client, &headers)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "service": c.service,
            "keyPem": c.key_pem,
            "certificatePem": c.certificate_pem,
            "caPem": c.ca_pem,
        })),
    ))
}

/// Why a service is revoked.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    /// RFC 5280 reason in kebab case (default `cessation-of-operation`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/services/{name}/revoke`.
#[utoipa::path(post, path = "/api/v1/services/{name}/revoke", tag = "services", request_body = RevokeBody,
    params(("name" = String, Path, description = "The service's name")),
    responses((status = 200, description = "`{\"service\": {...}}`, revoked", body = crate::routes::schemas::ServiceBody),
        (status = 404, description = "No such service", body = crate::error::ErrorBody)))]
pub(super) async fn revoke_service_api(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> JsonResult {
    let p = principal(caller)?;
    // An empty body means the default reason.
    let b: RevokeBody = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => RevokeBody::default(),
        _ => json_body(&state, body)?,
    };
    let s = revoke_service(
        &state,
        &p,
        &name,
        b.reason.as_deref(),
        &origin_of(client, &headers),
    )
    .await?;
    Ok(Json(json!({ "service": s })))
}

/// `GET /api/v1/audit`.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "`{\"entries\": [...newest first], \"nextBefore\": seq|null, \"chain\": {\"ok\", \"rows\", \"first_break\"}}`", body = crate::routes::schemas::AuditBody),
        (status = 400, description = "A malformed filter", body = crate::error::ErrorBody)))]
pub(super) async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> JsonResult {
    let Query(q) = query.map_err(|e| bad("invalid_query", e.body_text()))?;
    let page = audit_page(&state, &q).await?;
    Ok(Json(json!({
        "entries": page.entries,
        "nextBefore": page.next_before,
        "chain": page.chain,
    })))
}
