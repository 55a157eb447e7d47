//! The routes, and what wraps every one: the route table with each
//! route's access rule, security headers, CORS, the body limit, JSON
//! 404/405, logging.
//!
//! The router is built from [`ROUTES`] and nothing else, so a route cannot
//! exist without its access rule; the guard (see `guard`) looks the rule
//! up for every request and refuses a route it does not find.

mod account;
mod alert_pages;
mod alerts;
mod campaign_pages;
pub(crate) mod campaigns;
mod console;
mod devices;
mod enroll;
mod firmware;
mod firmware_pages;
pub(crate) mod guard;
mod notifications;
pub mod openapi;
mod ota;
mod pages;
pub(crate) mod registry;
mod registry_pages;
pub(crate) mod schemas;
mod users;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

use crate::auth::Action;
use crate::auth::accounts::Origin;
use crate::error::{ApiError, ErrorCode};
use crate::state::{AppState, WebMetrics};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (the handler may still refuse).
    Public,
    /// A principal authorized for this action.
    Action(Action),
}

/// What a route answers with, which decides how a refusal looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// JSON; refusals are `{"error":{...}}` with 401 or 403.
    Api,
    /// HTML; anonymous callers are sent to `/login`.
    Page,
}

/// One route: method, path pattern, access rule, surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern as axum writes it (`/api/v1/users/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// JSON or HTML.
    pub surface: Surface,
}

const fn api(method: &'static str, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        surface: Surface::Api,
    }
}

const fn page(method: &'static str, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        surface: Surface::Page,
    }
}

use Access::Public;
const fn act(a: Action) -> Access {
    Access::Action(a)
}

/// Every route of the web part with its access rule.
pub const ROUTES: &[RouteSpec] = &[
    api("GET", "/healthz", Public),
    api("GET", "/readyz", Public),
    // Checks its own bearer token (web.metrics_token), for scrapers.
    api("GET", "/metrics", Public),
    page("GET", "/static/app.css", Public),
    page("GET", "/static/console.js", Public),
    api("POST", "/api/v1/enroll", Public),
    // Firmware images for devices: the handler checks the download token
    // and the device's TLS client certificate (docs/ota.md §4).
    api("GET", "/ota/v1/images/{sha256}", Public),
    // First start and sign-in.
    page("GET", "/setup", Public),
    page("POST", "/setup", Public),
    api("POST", "/api/v1/setup", Public),
    page("GET", "/login", Public),
    page("POST", "/login", Public),
    page("POST", "/login/totp", Public),
    api("POST", "/api/v1/session", Public),
    page("GET", "/invite", Public),
    page("POST", "/invite", Public),
    api("POST", "/api/v1/invite", Public),
    // One's own account.
    api("DELETE", "/api/v1/session", act(Action::ManageOwnAccount)),
    api(
        "POST",
        "/api/v1/session/logout-everywhere",
        act(Action::ManageOwnAccount),
    ),
    api("GET", "/api/v1/me", act(Action::ReadOwnAccount)),
    api("GET", "/api/v1/me/sessions", act(Action::ReadOwnAccount)),
    api("POST", "/api/v1/me/password", act(Action::ManageOwnAccount)),
    api("POST", "/api/v1/me/mfa", act(Action::ManageOwnAccount)),
    api(
        "POST",
        "/api/v1/me/mfa/confirm",
        act(Action::ManageOwnAccount),
    ),
    api(
        "POST",
        "/api/v1/me/mfa/disable",
        act(Action::ManageOwnAccount),
    ),
    page("GET", "/logout", act(Action::ReadOwnAccount)),
    page("POST", "/logout", act(Action::ManageOwnAccount)),
    page("GET", "/account", act(Action::ReadOwnAccount)),
    page("POST", "/account/password", act(Action::ManageOwnAccount)),
    page("POST", "/account/mfa", act(Action::ManageOwnAccount)),
    page(
        "POST",
        "/account/mfa/confirm",
        act(Action::ManageOwnAccount),
    ),
    page(
        "POST",
        "/account/mfa/disable",
        act(Action::ManageOwnAccount),
    ),
    page(
        "POST",
        "/account/logout-everywhere",
        act(Action::ManageOwnAccount),
    ),
    page(
        "POST",
        "/account/api-tokens",
        act(Action::ManageOwnApiTokens),
    ),
    page(
        "POST",
        "/account/api-tokens/{id}/revoke",
        act(Action::ManageOwnApiTokens),
    ),
    // API tokens.
    api("GET", "/api/v1/api-tokens", act(Action::ManageOwnApiTokens)),
    api(
        "POST",
        "/api/v1/api-tokens",
        act(Action::ManageOwnApiTokens),
    ),
    api(
        "DELETE",
        "/api/v1/api-tokens/{id}",
        act(Action::ManageOwnApiTokens),
    ),
    // Users.
    api("GET", "/api/v1/users", act(Action::ReadUsers)),
    api("POST", "/api/v1/users", act(Action::ManageUsers)),
    api("PATCH", "/api/v1/users/{id}", act(Action::ManageUsers)),
    api(
        "POST",
        "/api/v1/users/{id}/mfa-reset",
        act(Action::ManageUsers),
    ),
    page("GET", "/users", act(Action::ReadUsers)),
    page("POST", "/users", act(Action::ManageUsers)),
    page("POST", "/users/{id}", act(Action::ManageUsers)),
    // Devices and claims.
    api("GET", "/api/v1/devices", act(Action::ReadDevices)),
    api("GET", "/api/v1/devices/{id}", act(Action::ReadDevices)),
    api(
        "GET",
        "/api/v1/devices/{id}/telemetry",
        act(Action::ReadDevices),
    ),
    api(
        "GET",
        "/api/v1/devices/{id}/telemetry.csv",
        act(Action::ReadDevices),
    ),
    api(
        "GET",
        "/api/v1/devices/{id}/presence",
        act(Action::ReadDevices),
    ),
    api(
        "GET",
        "/api/v1/devices/{id}/events",
        act(Action::ReadDevices),
    ),
    api(
        "POST",
        "/api/v1/devices/{id}/disable",
        act(Action::DisableDevice),
    ),
    api(
        "POST",
        "/api/v1/devices/{id}/enable",
        act(Action::DisableDevice),
    ),
    api(
        "POST",
        "/api/v1/devices/{id}/revoke",
        act(Action::RevokeDevice),
    ),
    api("POST", "/api/v1/claims", act(Action::ClaimDevice)),
    api("GET", "/api/v1/claims/{id}", act(Action::ClaimDevice)),
    page("GET", "/", act(Action::ReadDevices)),
    page("GET", "/devices", act(Action::ReadDevices)),
    page("GET", "/devices/{id}", act(Action::ReadDevices)),
    page("POST", "/devices/{id}/disable", act(Action::DisableDevice)),
    page("POST", "/devices/{id}/enable", act(Action::DisableDevice)),
    page("POST", "/devices/{id}/revoke", act(Action::RevokeDevice)),
    page("GET", "/claim", act(Action::ClaimDevice)),
    page("POST", "/claim", act(Action::ClaimDevice)),
    // Enrollment tokens.
    api(
        "GET",
        "/api/v1/enroll-tokens",
        act(Action::ManageEnrollmentTokens),
    ),
    api(
        "POST",
        "/api/v1/enroll-tokens",
        act(Action::ManageEnrollmentTokens),
    ),
    api(
        "DELETE",
        "/api/v1/enroll-tokens/{id}",
        act(Action::ManageEnrollmentTokens),
    ),
    page("GET", "/enroll-tokens", act(Action::ManageEnrollmentTokens)),
    page(
        "POST",
        "/enroll-tokens",
        act(Action::ManageEnrollmentTokens),
    ),
    page(
        "POST",
        "/enroll-tokens/{id}/revoke",
        act(Action::ManageEnrollmentTokens),
    ),
    // Service identities.
    api("GET", "/api/v1/services", act(Action::ReadServices)),
    api("POST", "/api/v1/services", act(Action::ManageServices)),
    api(
        "POST",
        "/api/v1/services/{name}/revoke",
        act(Action::ManageServices),
    ),
    page("GET", "/services", act(Action::ReadServices)),
    page("POST", "/services", act(Action::ManageServices)),
    page(
        "POST",
        "/services/{name}/revoke",
        act(Action::ManageServices),
    ),
    // Firmware (issue 9): viewers read, admins upload.
    api("GET", "/api/v1/firmware", act(Action::ReadFirmware)),
    api("POST", "/api/v1/firmware", act(Action::UploadFirmware)),
    api("GET", "/api/v1/firmware/keys", act(Action::ReadFirmware)),
    api("GET", "/api/v1/firmware/{id}", act(Action::ReadFirmware)),
    page("GET", "/firmware", act(Action::ReadFirmware)),
    // Campaigns: viewers read; admins start updates (create, approve,
    // resume); operators may stop them too (pause, cancel).
    api("GET", "/api/v1/campaigns", act(Action::ReadCampaigns)),
    api("POST", "/api/v1/campaigns", act(Action::StartCampaigns)),
    api("GET", "/api/v1/campaigns/{id}", act(Action::ReadCampaigns)),
    api(
        "POST",
        "/api/v1/campaigns/{id}/approve",
        act(Action::StartCampaigns),
    ),
    api(
        "POST",
        "/api/v1/campaigns/{id}/pause",
        act(Action::StopCampaigns),
    ),
    api(
        "POST",
        "/api/v1/campaigns/{id}/resume",
        act(Action::StartCampaigns),
    ),
    api(
        "POST",
        "/api/v1/campaigns/{id}/cancel",
        act(Action::StopCampaigns),
    ),
    page("GET", "/campaigns", act(Action::ReadCampaigns)),
    page("POST", "/campaigns", act(Action::StartCampaigns)),
    page("GET", "/campaigns/new", act(Action::StartCampaigns)),
    page("GET", "/campaigns/{id}", act(Action::ReadCampaigns)),
    page(
        "POST",
        "/campaigns/{id}/approve",
        act(Action::StartCampaigns),
    ),
    page("POST", "/campaigns/{id}/pause", act(Action::StopCampaigns)),
    page(
        "POST",
        "/campaigns/{id}/resume",
        act(Action::StartCampaigns),
    ),
    page("POST", "/campaigns/{id}/cancel", act(Action::StopCampaigns)),
    // Audit log.
    api("GET", "/api/v1/audit", act(Action::ReadAudit)),
    page("GET", "/audit", act(Action::ReadAudit)),
    // One's own notifications: reading them includes marking them read,
    // which API tokens may do too (it changes nothing but the inbox).
    api("GET", "/api/v1/notifications", act(Action::ReadOwnAccount)),
    api(
        "GET",
        "/api/v1/notifications/events",
        act(Action::ReadOwnAccount),
    ),
    api(
        "POST",
        "/api/v1/notifications/read",
        act(Action::ReadOwnAccount),
    ),
    page("GET", "/notifications", act(Action::ReadOwnAccount)),
    page("POST", "/notifications/read", act(Action::ReadOwnAccount)),
    // Alerts (issue 10): viewers read, operators acknowledge, admins
    // manage channels, rules and dead letters.
    api("GET", "/api/v1/alerts", act(Action::ReadAlerts)),
    api("GET", "/api/v1/alerts/{id}", act(Action::ReadAlerts)),
    api(
        "POST",
        "/api/v1/alerts/{id}/acknowledge",
        act(Action::AcknowledgeAlerts),
    ),
    api("GET", "/api/v1/alert-channels", act(Action::ManageAlerts)),
    api("POST", "/api/v1/alert-channels", act(Action::ManageAlerts)),
    api(
        "DELETE",
        "/api/v1/alert-channels/{name}",
        act(Action::ManageAlerts),
    ),
    api("GET", "/api/v1/alert-rules", act(Action::ManageAlerts)),
    api("POST", "/api/v1/alert-rules", act(Action::ManageAlerts)),
    api(
        "DELETE",
        "/api/v1/alert-rules/{name}",
        act(Action::ManageAlerts),
    ),
    api(
        "GET",
        "/api/v1/alert-deliveries/dead",
        act(Action::ManageAlerts),
    ),
    api(
        "POST",
        "/api/v1/alert-deliveries/{id}/retry",
        act(Action::ManageAlerts),
    ),
    page("GET", "/alerts", act(Action::ReadAlerts)),
    page(
        "POST",
        "/alerts/{id}/acknowledge",
        act(Action::AcknowledgeAlerts),
    ),
    page("GET", "/alert-rules", act(Action::ManageAlerts)),
    page("POST", "/alert-rules", act(Action::ManageAlerts)),
    page(
        "POST",
        "/alert-rules/{name}/remove",
        act(Action::ManageAlerts),
    ),
    page("POST", "/alert-channels", act(Action::ManageAlerts)),
    page(
        "POST",
        "/alert-channels/{name}/remove",
        act(Action::ManageAlerts),
    ),
    page("GET", "/alert-deliveries/dead", act(Action::ManageAlerts)),
    page(
        "POST",
        "/alert-deliveries/{id}/retry",
        act(Action::ManageAlerts),
    ),
    // The API's own description.
    api("GET", "/api/v1/openapi.json", Public),
];

/// The table row of a request, by method and matched path (`HEAD` is
/// served, and ruled, as `GET`).
pub(crate) fn find_route(method: &Method, path: &str) -> Option<&'static RouteSpec> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES.iter().find(|r| r.path == path && r.method == method)
}

/// The handler of a table row.
fn endpoint(spec: &RouteSpec) -> Option<MethodRouter<AppState>> {
    Some(match (spec.method, spec.path) {
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(crate::metrics::readyz),
        ("GET", "/metrics") => get(crate::metrics::metrics_https),
        ("GET", "/static/app.css") => get(crate::ui::stylesheet),
        ("POST", "/api/v1/enroll") => post(enroll::enroll),
        ("GET", "/ota/v1/images/{sha256}") => get(ota::image),
        ("GET", "/setup") => get(pages::setup_form),
        ("POST", "/setup") => post(pages::setup_submit),
        ("POST", "/api/v1/setup") => post(account::setup),
        ("GET", "/login") => get(pages::login_form),
        ("POST", "/login") => post(pages::login_submit),
        ("POST", "/login/totp") => post(pages::login_totp),
        ("POST", "/api/v1/session") => post(account::login),
        ("GET", "/invite") => get(pages::invite_form),
        ("POST", "/invite") => post(pages::invite_submit),
        ("POST", "/api/v1/invite") => post(account::accept_invite),
        ("DELETE", "/api/v1/session") => delete(account::logout),
        ("POST", "/api/v1/session/logout-everywhere") => post(account::logout_everywhere),
        ("GET", "/api/v1/me") => get(account::me),
        ("GET", "/api/v1/me/sessions") => get(account::sessions),
        ("POST", "/api/v1/me/password") => post(account::password),
        ("POST", "/api/v1/me/mfa") => post(account::mfa_start),
        ("POST", "/api/v1/me/mfa/confirm") => post(account::mfa_confirm),
        ("POST", "/api/v1/me/mfa/disable") => post(account::mfa_disable),
        ("GET", "/logout") => get(pages::logout_form),
        ("POST", "/logout") => post(pages::logout_submit),
        ("GET", "/account") => get(pages::account),
        ("POST", "/account/password") => post(pages::account_password),
        ("POST", "/account/mfa") => post(pages::account_mfa_start),
        ("POST", "/account/mfa/confirm") => post(pages::account_mfa_confirm),
        ("POST", "/account/mfa/disable") => post(pages::account_mfa_disable),
        ("POST", "/account/logout-everywhere") => post(pages::account_logout_everywhere),
        ("POST", "/account/api-tokens") => post(pages::account_token_create),
        ("POST", "/account/api-tokens/{id}/revoke") => post(pages::account_token_revoke),
        ("GET", "/api/v1/api-tokens") => get(users::list_tokens),
        ("POST", "/api/v1/api-tokens") => post(users::create_token),
        ("DELETE", "/api/v1/api-tokens/{id}") => delete(users::revoke_token),
        ("GET", "/api/v1/users") => get(users::list),
        ("POST", "/api/v1/users") => post(users::invite),
        ("PATCH", "/api/v1/users/{id}") => patch(users::change),
        ("POST", "/api/v1/users/{id}/mfa-reset") => post(users::mfa_reset),
        ("GET", "/users") => get(pages::users),
        ("POST", "/users") => post(pages::users_invite),
        ("POST", "/users/{id}") => post(pages::users_change),
        ("GET", "/static/console.js") => get(crate::ui::console_script),
        ("GET", "/api/v1/devices") => get(devices::list),
        ("GET", "/api/v1/devices/{id}") => get(devices::show),
        ("GET", "/api/v1/devices/{id}/telemetry") => get(devices::telemetry),
        ("GET", "/api/v1/devices/{id}/telemetry.csv") => get(devices::telemetry_csv),
        ("GET", "/api/v1/devices/{id}/presence") => get(devices::presence),
        ("GET", "/api/v1/devices/{id}/events") => get(devices::events),
        ("POST", "/api/v1/devices/{id}/disable") => post(devices::disable),
        ("POST", "/api/v1/devices/{id}/enable") => post(devices::enable),
        ("POST", "/api/v1/devices/{id}/revoke") => post(devices::revoke),
        ("POST", "/api/v1/claims") => post(devices::claim_start),
        ("GET", "/api/v1/claims/{id}") => get(devices::claim_show),
        ("GET", "/") => get(console::fleet),
        ("GET", "/devices") => get(console::devices),
        ("GET", "/devices/{id}") => get(console::device),
        ("POST", "/devices/{id}/disable") => post(console::disable),
        ("POST", "/devices/{id}/enable") => post(console::enable),
        ("POST", "/devices/{id}/revoke") => post(console::revoke),
        ("GET", "/claim") => get(console::claim_form),
        ("POST", "/claim") => post(console::claim_submit),
        ("GET", "/api/v1/enroll-tokens") => get(registry::list_enroll_tokens),
        ("POST", "/api/v1/enroll-tokens") => post(registry::create_enroll_token_api),
        ("DELETE", "/api/v1/enroll-tokens/{id}") => delete(registry::revoke_enroll_token_api),
        ("GET", "/enroll-tokens") => get(registry_pages::enroll_tokens),
        ("POST", "/enroll-tokens") => post(registry_pages::enroll_token_create),
        ("POST", "/enroll-tokens/{id}/revoke") => post(registry_pages::enroll_token_revoke),
        ("GET", "/api/v1/services") => get(registry::list_services),
        ("POST", "/api/v1/services") => post(registry::create_service_api),
        ("POST", "/api/v1/services/{name}/revoke") => post(registry::revoke_service_api),
        ("GET", "/services") => get(registry_pages::services),
        ("POST", "/services") => post(registry_pages::service_create),
        ("POST", "/services/{name}/revoke") => post(registry_pages::service_revoke),
        ("GET", "/api/v1/firmware") => get(firmware::list),
        ("POST", "/api/v1/firmware") => post(firmware::upload),
        ("GET", "/api/v1/firmware/keys") => get(firmware::keys),
        ("GET", "/api/v1/firmware/{id}") => get(firmware::show),
        ("GET", "/firmware") => get(firmware_pages::firmware),
        ("GET", "/api/v1/campaigns") => get(campaigns::list),
        ("POST", "/api/v1/campaigns") => post(campaigns::create),
        ("GET", "/api/v1/campaigns/{id}") => get(campaigns::show),
        ("POST", "/api/v1/campaigns/{id}/approve") => post(campaigns::approve),
        ("POST", "/api/v1/campaigns/{id}/pause") => post(campaigns::pause),
        ("POST", "/api/v1/campaigns/{id}/resume") => post(campaigns::resume),
        ("POST", "/api/v1/campaigns/{id}/cancel") => post(campaigns::cancel),
        ("GET", "/campaigns") => get(campaign_pages::list),
        ("POST", "/campaigns") => post(campaign_pages::create),
        ("GET", "/campaigns/new") => get(campaign_pages::new_form),
        ("GET", "/campaigns/{id}") => get(campaign_pages::show),
        ("POST", "/campaigns/{id}/approve") => post(campaign_pages::approve),
        ("POST", "/campaigns/{id}/pause") => post(campaign_pages::pause),
        ("POST", "/campaigns/{id}/resume") => post(campaign_pages::resume),
        ("POST", "/campaigns/{id}/cancel") => post(campaign_pages::cancel),
        ("GET", "/api/v1/audit") => get(registry::audit),
        ("GET", "/audit") => get(registry_pages::audit),
        ("GET", "/api/v1/notifications") => get(notifications::list),
        ("GET", "/api/v1/notifications/events") => get(notifications::events),
        ("POST", "/api/v1/notifications/read") => post(notifications::mark_read),
        ("GET", "/notifications") => get(notifications::page),
        ("POST", "/notifications/read") => post(notifications::page_mark_read),
        ("GET", "/api/v1/alerts") => get(alerts::list),
        ("GET", "/api/v1/alerts/{id}") => get(alerts::show),
        ("POST", "/api/v1/alerts/{id}/acknowledge") => post(alerts::acknowledge),
        ("GET", "/api/v1/alert-channels") => get(alerts::list_channels),
        ("POST", "/api/v1/alert-channels") => post(alerts::create_channel),
        ("DELETE", "/api/v1/alert-channels/{name}") => delete(alerts::delete_channel),
        ("GET", "/api/v1/alert-rules") => get(alerts::list_rules),
        ("POST", "/api/v1/alert-rules") => post(alerts::create_rule),
        ("DELETE", "/api/v1/alert-rules/{name}") => delete(alerts::delete_rule),
        ("GET", "/api/v1/alert-deliveries/dead") => get(alerts::list_dead),
        ("POST", "/api/v1/alert-deliveries/{id}/retry") => post(alerts::retry),
        ("GET", "/alerts") => get(alert_pages::alerts),
        ("POST", "/alerts/{id}/acknowledge") => post(alert_pages::acknowledge),
        ("GET", "/alert-rules") => get(alert_pages::rules),
        ("POST", "/alert-rules") => post(alert_pages::rule_create),
        ("POST", "/alert-rules/{name}/remove") => post(alert_pages::rule_remove),
        ("POST", "/alert-channels") => post(alert_pages::channel_create),
        ("POST", "/alert-channels/{name}/remove") => post(alert_pages::channel_remove),
        ("GET", "/alert-deliveries/dead") => get(alert_pages::dead),
        ("POST", "/alert-deliveries/{id}/retry") => post(alert_pages::retry),
        ("GET", "/api/v1/openapi.json") => get(openapi::document),
        _ => return None,
    })
}

/// Every route of the web part, with its middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().max_body_bytes;
    let mut router = Router::new();
    // A firmware upload carries a whole bundle: its own, larger limit.
    let upload_limit = firmware::upload_limit(
        state
            .ota()
            .map_or(rampart_ota::DEFAULT_MAX_IMAGE_SIZE, |o| o.max_image_size),
    );
    for spec in ROUTES {
        match endpoint(spec) {
            Some(handler) if (spec.method, spec.path) == ("POST", "/api/v1/firmware") => {
                router = router.route(
                    spec.path,
                    handler.layer(DefaultBodyLimit::max(upload_limit)),
                );
            }
            Some(handler) => router = router.route(spec.path, handler),
            None => {
                tracing::error!(
                    method = spec.method,
                    path = spec.path,
                    "route table row without a handler"
                );
            }
        }
    }
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard::cors))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .layer(middleware::from_fn(guard::security_headers))
        .with_state(state)
}

/// `GET /healthz`: the server answers; nothing else is promised.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Where a request comes from, for sessions and the audit log.
pub(crate) fn origin_of(client: SocketAddr, headers: &HeaderMap) -> Origin {
    Origin {
        ip: client.ip().to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
    }
}

/// A JSON body of type `T`: too large, malformed, of the wrong shape or
/// with unknown fields is a 4xx JSON error saying which.
pub(crate) fn json_body<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes =
        body.map_err(|r| ApiError::from_body_rejection(&r, state.config().max_body_bytes))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// One structured line per request: who, what, the outcome, how long.
/// Never the query string or headers, which may carry secrets.
async fn log_request(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    WebMetrics::inc(&state.metrics().requests);
    state.metrics().count_response(response.status().as_u16());
    let status = response.status().as_u16();
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(client_addr = %client, %method, path, status, code, elapsed_ms, "request");
    } else {
        tracing::info!(client_addr = %client, %method, path, status, code, elapsed_ms, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_follows_the_rule_of_get() {
        let get = find_route(&Method::GET, "/api/v1/users").map(|r| r.access);
        assert_eq!(
            find_route(&Method::HEAD, "/api/v1/users").map(|r| r.access),
            get
        );
        assert!(get.is_some());
        assert_eq!(find_route(&Method::PUT, "/api/v1/users"), None);
    }

    #[test]
    fn every_table_row_has_a_handler_and_appears_once() {
        for (i, spec) in ROUTES.iter().enumerate() {
            assert!(endpoint(spec).is_some(), "{spec:?} has no handler");
            assert!(
                !ROUTES[..i]
                    .iter()
                    .any(|r| r.method == spec.method && r.path == spec.path),
                "{spec:?} twice"
            );
        }
    }
}
