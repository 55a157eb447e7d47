//! The console pages of enrollment tokens, service identities and the
//! audit log: forms (CSRF checked by the guard) acting through
//! `registry`, answered with the page again and a message.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::account::{Caller, principal};
use super::origin_of;
use super::pages::{csrf_of, html};
use super::registry::{self, AuditQuery, NewTokenBody};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::layout::Flash;
use crate::ui::registry::{self as ui, AuditView, EnrollTokensView, ServiceReveal, ServicesView};

type PageResult = Result<Response, ApiError>;

async fn tokens_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
    secret: Option<String>,
) -> PageResult {
    let tokens = state
        .store()
        .enrollment_tokens()
        .await
        .map_err(crate::auth::accounts::store_error)?;
    let view = EnrollTokensView {
        principal: p,
        csrf_token: csrf_of(p),
        tokens: &tokens,
        now: time::OffsetDateTime::now_utc(),
        flash,
        secret,
    };
    Ok(html(status, ui::enroll_tokens(&view)))
}

/// `GET /enroll-tokens`.
pub(super) async fn enroll_tokens(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    tokens_page(&state, &p, StatusCode::OK, None, None).await
}

/// The create form: empty fields mean the defaults.
#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    uses: String,
    #[serde(default)]
    expires_in_hours: String,
    #[serde(default)]
    id_prefix: String,
    #[serde(default)]
    owner: String,
}

fn number(what: &str, s: &str) -> Result<Option<u32>, Flash> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| Flash::error(format!("{what} must be a whole number")))
}

/// `POST /enroll-tokens`: the token is shown on the page, once.
pub(super) async fn enroll_token_create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<TokenForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let body = form
        .map_err(|e| Flash::error(format!("the form could not be read: {}", e.body_text())))
        .and_then(|Form(f)| {
            Ok(NewTokenBody {
                uses: number("Uses", &f.uses)?,
                expires_in_hours: number("Hours", &f.expires_in_hours)?,
                id_prefix: Some(f.id_prefix),
                owner: Some(f.owner),
            })
        });
    let body = match body {
        Ok(b) => b,
        Err(flash) => {
            return tokens_page(&state, &p, StatusCode::BAD_REQUEST, Some(flash), None).await;
        }
    };
    match registry::create_enroll_token(&state, &p, body, &origin_of(client, &headers)).await {
        Ok((t, secret)) => {
            let flash = Flash::ok(format!("Token {} is created.", t.id));
            tokens_page(&state, &p, StatusCode::OK, Some(flash), Some(secret)).await
        }
        Err(e) => tokens_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

/// `POST /enroll-tokens/{id}/revoke`.
pub(super) async fn enroll_token_revoke(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
) -> PageResult {
    let p = principal(caller)?;
    match registry::revoke_enroll_token(&state, &p, &id, &origin_of(client, &headers)).await {
        Ok(t) => {
            let flash = Flash::ok(format!("Token {} is revoked.", t.id));
            tokens_page(&state, &p, StatusCode::OK, Some(flash), None).await
        }
        Err(e) => tokens_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

async fn services_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
    reveal: Option<ServiceReveal>,
) -> PageResult {
    let services = state
        .store()
        .list_services()
        .await
        .map_err(crate::auth::accounts::store_error)?;
    let view = ServicesView {
        principal: p,
        csrf_token: csrf_of(p),
        services: &services,
        flash,
        reveal,
    };
    Ok(html(status, ui::services(&view)))
}

/// `GET /services`.
pub(super) async fn services(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    services_page(&state, &p, StatusCode::OK, None, None).await
}

#[derive(Debug, Deserialize)]
pub(super) struct ServiceForm {
    #[serde(default)]
    name: String,
}

/// `POST /services`: the key and certificate are shown on the page, once.
pub(super) async fn service_create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<ServiceForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let name = form.map(|f| f.0.name).unwrap_or_default();
    match registry::create_service(&state, &p, &name, &origin_of(client, &headers)).await {
        Ok(c) => {
            let flash = Flash::ok(format!("Service {} is created.", c.service.id));
            let reveal = ServiceReveal {
                name: c.service.id.to_string(),
                key_pem: c.key_pem,
                certificate_pem: c.certificate_pem,
                ca_pem: c.ca_pem,
            };
            services_page(&state, &p, StatusCode::OK, Some(flash), Some(reveal)).await
        }
        Err(e) => services_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    reason: String,
}

/// `POST /services/{name}/revoke`.
pub(super) async fn service_revoke(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    caller: Caller,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let why = form.map(|f| f.0.reason).unwrap_or_default();
    match registry::revoke_service(&state, &p, &name, Some(&why), &origin_of(client, &headers))
        .await
    {
        Ok(s) => {
            let flash = Flash::ok(format!("Service {} is revoked.", s.id));
            services_page(&state, &p, StatusCode::OK, Some(flash), None).await
        }
        Err(e) => services_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

/// `GET /audit`: filterable, newest first, with the chain's verification.
pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let (q, flash) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (AuditQuery::default(), Some(Flash::error(e.body_text()))),
    };
    match registry::audit_page(&state, &q).await {
        Ok(page) => Ok(html(
            StatusCode::OK,
            ui::audit(&AuditView {
                principal: &p,
                query: &q,
                page: Some(&page),
                flash,
            }),
        )),
        Err(e) => Ok(html(
            e.status,
            ui::audit(&AuditView {
                principal: &p,
                query: &q,
                page: None,
                flash: Some(Flash::error(e.message)),
            }),
        )),
    }
}
