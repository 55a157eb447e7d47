//! Sessions and API tokens on the request side: the session cookie, who a
//! request comes from, starting a session after sign-in.
//!
//! The cookie is `__Host-rampart_session` (the `__Host-` prefix makes the
//! browser refuse it unless it is `Secure`, has `Path=/` and no `Domain`),
//! `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's
//! request carries it). It holds 256 random bits; the store keeps only
//! their SHA-256, so a database leak does not hand out sessions.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use rampart_store::{Actor, ApiToken, NewSession, Role, Session, User};
use time::OffsetDateTime;

use super::authz::{Credential, Principal};
use super::secret;
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "__Host-rampart_session";

/// A session is written back (last use, idle expiry) at most this often.
const TOUCH_EVERY: time::Duration = time::Duration::seconds(30);

/// `Set-Cookie` for a new session, living at most `max_age`.
pub fn set_cookie(value: &str, max_age: std::time::Duration) -> HeaderValue {
    let text = format!(
        "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| clear_cookie())
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-rampart_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// The session cookie's value, if the request has one.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The bearer token of `Authorization`, if that header is there; a header
/// of another scheme is an empty token (refused as invalid, not ignored).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().unwrap_or_default().trim();
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    Some(if scheme.eq_ignore_ascii_case("bearer") {
        token.trim()
    } else {
        ""
    })
}

/// What authentication found on a request.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The caller, if the credential was good.
    pub principal: Option<Principal>,
    /// A session cookie came, but its session is gone or expired.
    pub stale_session: bool,
}

/// The caller of a request with `headers`: an API token if `Authorization`
/// is there (a bad one is refused, never treated as anonymous), otherwise
/// the session cookie's session if it is live.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Found, ApiError> {
    // Other bearer tokens (enrollment tokens) belong to their route.
    if let Some(token) = bearer(headers)
        && token.starts_with(secret::API_TOKEN_PREFIX)
    {
        return api_token(state, token).await.map(|p| Found {
            principal: Some(p),
            stale_session: false,
        });
    }
    let Some(cookie) = cookie_value(headers) else {
        return Ok(Found::default());
    };
    let id_hash = secret::hash(cookie);
    let now = state.clock().now();
    let users = state.users();
    let Some(session) = users.session(&id_hash).await.map_err(internal)? else {
        return Ok(Found {
            principal: None,
            stale_session: true,
        });
    };
    let user = users.user(&session.user_id).await.map_err(internal)?;
    let Some(user) = user.filter(|u| !u.disabled && session.live_at(now)) else {
        users.end_session(&id_hash).await.map_err(internal)?;
        return Ok(Found {
            principal: None,
            stale_session: true,
        });
    };
    if now - session.last_used_at >= TOUCH_EVERY {
        let idle = now + state.config().session_idle_timeout;
        users
            .touch_session(&id_hash, now, idle)
            .await
            .map_err(internal)?;
    }
    let principal = Principal {
        mfa_enrollment_required: mfa_enrollment_required(state, &user),
        user_id: user.id,
        name: user.name,
        role: user.role,
        credential: Credential::Session {
            id_hash,
            csrf_token: session.csrf_token,
        },
        unread_notifications: None,
    };
    Ok(Found {
        principal: Some(principal),
        stale_session: false,
    })
}

/// Whether `user` must enrol MFA before doing anything else.
pub fn mfa_enrollment_required(state: &AppState, user: &User) -> bool {
    state.config().require_mfa_for_admins && user.role >= Role::Admin && !user.mfa_enabled
}

fn token_invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "token_invalid",
        "the API token is not valid (wrong, revoked or expired); create a new one on the account page",
    )
}

async fn api_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let now = state.clock().now();
    let users = state.users();
    let found: Option<ApiToken> = users
        .api_token_by_hash(&secret::hash(token))
        .await
        .map_err(internal)?;
    let t = found
        .filter(|t| t.usable_at(now))
        .ok_or_else(token_invalid)?;
    let creator = users
        .user(&t.created_by)
        .await
        .map_err(internal)?
        .filter(|u| !u.disabled)
        .ok_or_else(token_invalid)?;
    if t.last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY) {
        users.touch_api_token(&t.id, now).await.map_err(internal)?;
    }
    Ok(Principal {
        user_id: creator.id,
        name: creator.name,
        // A token never outranks its creator as the creator is now.
        role: t.role.min(creator.role),
        credential: Credential::ApiToken { id: t.id },
        mfa_enrollment_required: false,
        unread_notifications: None,
    })
}

/// A new session for `user`: the cookie value (to send once) and the row.
pub async fn start(
    state: &AppState,
    user: &User,
    ip: &str,
    user_agent: &str,
    actor: &Actor,
) -> Result<(String, Session), ApiError> {
    let (cookie, row) = new_session(state, user, ip, user_agent);
    let session = state
        .users()
        .create_session(row, actor)
        .await
        .map_err(internal)?;
    crate::state::WebMetrics::inc(&state.metrics().logins);
    Ok((cookie, session))
}

/// A session row for `user` starting now, and its cookie value.
pub fn new_session(
    state: &AppState,
    user: &User,
    ip: &str,
    user_agent: &str,
) -> (String, NewSession) {
    let cookie = secret::random_token();
    let now: OffsetDateTime = state.clock().now();
    let config = state.config();
    let row = NewSession {
        id_hash: secret::hash(&cookie),
        user_id: user.id.clone(),
        csrf_token: secret::random_token(),
        created_at: now,
        last_used_at: now,
        idle_expires_at: now + config.session_idle_timeout,
        absolute_expires_at: now + config.session_absolute_timeout,
        user_agent: user_agent.chars().take(200).collect(),
        ip: ip.to_owned(),
    };
    (cookie, row)
}

/// A store error as a 500 that says nothing of the database to the client
/// but logs it.
pub fn internal(e: rampart_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store error while authenticating");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server could not complete the request; see its log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_value(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-rampart_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("rampart_session=x"),
        );
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn the_cookie_has_every_protective_attribute() {
        let c = set_cookie("v", std::time::Duration::from_secs(60));
        let c = c.to_str().expect("text");
        for attr in [
            "__Host-rampart_session=v",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=60",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!c.contains("Domain"));
    }
}
