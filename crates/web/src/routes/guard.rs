//! What stands in front of every handler: security headers on every
//! response, CORS, and for every route its entry in the route table:
//! authentication, CSRF protection and the authorization decision.
//!
//! CSRF: a state-changing request authenticated by the session cookie must
//! carry the session's synchronizer token, in `X-CSRF-Token` or in the
//! form field `csrf_token`; and any state-changing request not made with
//! an API token is refused if the browser says it comes from elsewhere
//! (`Origin` other than this server, `Sec-Fetch-Site` other than
//! `same-origin` or `none`). `SameSite=Strict` is a third line.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{Access, Surface, find_route};
use crate::auth::authz::{Credential, Denied, authorize};
use crate::auth::secret;
use crate::auth::session::{self, Found};
use crate::error::ApiError;
use crate::state::{AppState, WebMetrics};

/// The Content-Security-Policy of every response: our own scripts,
/// styles and images only, no framing, no `<base>`, forms to ourselves.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";

/// Adds the security headers to every response, errors and 404s included.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(
        h,
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=63072000; includeSubDomains",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: under it Chromium sends `Origin: null` with a
    // same-origin form POST, which the CSRF check must refuse. `same-origin`
    // still sends nothing (no setup or invitation token) to other sites.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("permissions-policy"),
        "camera=(self), microphone=(), geolocation=()",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// CORS: nothing cross-origin unless `web.cors_allowed_origins` names the
/// origin, and then only API requests made with an API token (never
/// cookies: no `Access-Control-Allow-Credentials`).
pub(crate) async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().is_some_and(|o| {
        state
            .config()
            .cors_allowed_origins
            .iter()
            .any(|a| a.as_bytes() == o.as_bytes())
    });
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = origin.filter(|_| allowed) else {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cors_denied",
                "cross-origin requests are not allowed from this origin; an administrator can list it in web.cors_allowed_origins",
            )
            .into_response();
        };
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return r;
    }
    let with_token = request.headers().contains_key(header::AUTHORIZATION)
        && request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    if let Some(origin) = origin.filter(|_| allowed && with_token) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Whether the method changes state (RFC 9110 §9.2.1: not safe).
fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a request the browser marks as coming from another site.
/// `host` is this request's `Host` (HTTP/1.1) or `:authority` (HTTP/2).
fn check_origin(headers: &HeaderMap, host: &str) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        if site != b"same-origin" && site != b"none" {
            return Err("the request comes from another site (Sec-Fetch-Site)");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = format!("https://{host}");
        if host.is_empty() || origin.as_bytes() != ours.as_bytes() {
            return Err("the request comes from another origin (Origin)");
        }
    }
    Ok(())
}

fn csrf_refused(state: &AppState, client: SocketAddr, why: &str) -> Response {
    WebMetrics::inc(&state.metrics().csrf_refused);
    tracing::warn!(client_addr = %client, reason = why, "CSRF check refused a request");
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_refused",
        format!("{why}; reload the page and try again (API clients: send the session's CSRF token in X-CSRF-Token, or use an API token)"),
    )
    .into_response()
}

/// The `csrf_token` field of a URL-encoded form (the token is base64url,
/// so it needs no percent-decoding when it is genuine).
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Authenticates, checks CSRF and authorizes per the route table, then
/// hands the caller (`Option<Principal>`) to the handler.
pub(crate) async fn guard(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let Some(route) = matched.and_then(|m| find_route(&method, m.as_str())) else {
        // Fail closed: a route outside the table serves nobody.
        tracing::error!(%method, path = request.uri().path(), "route without an access rule");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_access_rule",
            "this route has no access rule; it is refused until it gets one",
        )
        .into_response();
    };
    let Found {
        principal,
        stale_session,
    } = match session::authenticate(&state, request.headers()).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let by_token = matches!(
        principal.as_ref().map(|p| &p.credential),
        Some(Credential::ApiToken { .. })
    );
    let mut request = request;
    if unsafe_method(&method) && !by_token {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        if let Err(why) = check_origin(request.headers(), &host) {
            return csrf_refused(&state, client, why);
        }
        if let (Access::Action(_), Some(Credential::Session { csrf_token, .. })) =
            (route.access, principal.as_ref().map(|p| &p.credential))
        {
            let header_token = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let sent = match header_token {
                Some(t) => Some(t),
                None => {
                    let (parts, body) = request.into_parts();
                    let limit = state.config().max_body_bytes;
                    let bytes = match axum::body::to_bytes(body, limit).await {
                        Ok(b) => b,
                        Err(_) => {
                            return ApiError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "payload_too_large",
                                format!("the request body is larger than {limit} bytes"),
                            )
                            .into_response();
                        }
                    };
                    let field = form_field(&bytes, CSRF_FIELD).map(str::to_owned);
                    request = Request::from_parts(parts, Body::from(bytes));
                    field
                }
            };
            match sent {
                Some(t) if secret::same(&t, csrf_token) => {}
                Some(_) => return csrf_refused(&state, client, "the CSRF token is wrong"),
                None => return csrf_refused(&state, client, "the CSRF token is missing"),
            }
        }
    }
    if let Access::Action(action) = route.access
        && let Err(denied) = authorize(principal.as_ref(), action)
    {
        tracing::info!(
            client_addr = %client,
            %method,
            path = route.path,
            user = principal.as_ref().map_or("", |p| p.name.as_str()),
            reason = denied.code(),
            "request refused by authorization"
        );
        return refusal(route.surface, denied, stale_session);
    }
    let mut principal = principal;
    if route.surface == Surface::Page
        && let Some(p) = principal.as_mut()
    {
        // The header's badge; a failure costs the badge, not the page.
        p.unread_notifications = match state.notifications().unread_notifications(&p.user_id).await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(user = %p.name, error = %e, "cannot count unread notifications");
                None
            }
        };
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The answer to a refused request: JSON for the API; for pages, a
/// redirect to sign-in or a short HTML page.
fn refusal(surface: Surface, denied: Denied, stale_session: bool) -> Response {
    match (surface, denied) {
        (Surface::Page, Denied::Unauthenticated) => Redirect::to("/login").into_response(),
        (Surface::Page, Denied::MfaEnrollmentRequired) => {
            Redirect::to("/account#mfa").into_response()
        }
        (Surface::Page, d) => (
            StatusCode::FORBIDDEN,
            axum::response::Html(crate::ui::pages::forbidden(&d.to_string()).into_string()),
        )
            .into_response(),
        (Surface::Api, Denied::Unauthenticated) if stale_session => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "your session has ended (expired, signed out, or signed out everywhere); sign in again",
        )
        .into_response(),
        (Surface::Api, Denied::Unauthenticated) => {
            ApiError::new(StatusCode::UNAUTHORIZED, denied.code(), denied.to_string())
                .into_response()
        }
        (Surface::Api, d) => {
            ApiError::new(StatusCode::FORBIDDEN, d.code(), d.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_origins_and_sites_are_refused() {
        let mut h = HeaderMap::new();
        let host = "rampart.local:8443";
        assert!(check_origin(&h, host).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://rampart.local:8443"),
        );
        assert!(check_origin(&h, host).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(check_origin(&h, host).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&h, host).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&h, host).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_origin(&h, host).is_ok());
    }

    #[test]
    fn the_csrf_field_is_read_from_a_form() {
        assert_eq!(
            form_field(b"a=1&csrf_token=xyz&b=2", "csrf_token"),
            Some("xyz")
        );
        assert_eq!(form_field(b"a=1", "csrf_token"), None);
        assert_eq!(form_field(&[0xff, 0xfe], "csrf_token"), None);
    }
}
