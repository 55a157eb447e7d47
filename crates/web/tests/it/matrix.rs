//! Every route × every role and anonymous, against the expected statuses
//! in ONE table. A route added to the web part without a row here fails
//! the test; a row whose status changes fails it too.
//!
//! Each cell runs on a fresh session (made directly in the store), so
//! routes that end sessions do not disturb the next cell. Requests carry
//! the session's CSRF token, an empty JSON object (API) or a form holding
//! only the CSRF field (pages), and `nonexistent` for path parameters, so
//! that an allowed call answers 200/204/303 or a 400/404 of its own, and a
//! refused one the guard's 401/403/303.

use std::collections::BTreeSet;

use rampart_store::{Actor, NewSession, NewUser, Role, UserStore};
use rampart_web::{ROUTES, Surface};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::{Server, config};
use crate::console::{Req, Session};

/// Columns: anonymous, viewer, operator, admin, owner.
const EXPECTED: &[(&str, &str, [u16; 5])] = &[
    ("GET", "/healthz", [200, 200, 200, 200, 200]),
    ("GET", "/readyz", [200, 200, 200, 200, 200]),
    // Not exposed without web.metrics_token (checked by its own tests).
    ("GET", "/metrics", [404, 404, 404, 404, 404]),
    ("GET", "/static/app.css", [200, 200, 200, 200, 200]),
    ("GET", "/static/console.js", [200, 200, 200, 200, 200]),
    ("POST", "/api/v1/enroll", [400, 400, 400, 400, 400]),
    // Devices only, by client certificate: none here.
    ("GET", "/ota/v1/images/{sha256}", [401, 401, 401, 401, 401]),
    ("GET", "/setup", [303, 303, 303, 303, 303]),
    ("POST", "/setup", [400, 400, 400, 400, 400]),
    ("POST", "/api/v1/setup", [400, 400, 400, 400, 400]),
    ("GET", "/login", [200, 303, 303, 303, 303]),
    ("POST", "/login", [400, 400, 400, 400, 400]),
    ("POST", "/login/totp", [400, 400, 400, 400, 400]),
    ("POST", "/api/v1/session", [400, 400, 400, 400, 400]),
    ("GET", "/invite", [200, 200, 200, 200, 200]),
    ("POST", "/invite", [400, 400, 400, 400, 400]),
    ("POST", "/api/v1/invite", [400, 400, 400, 400, 400]),
    ("DELETE", "/api/v1/session", [401, 204, 204, 204, 204]),
    (
        "POST",
        "/api/v1/session/logout-everywhere",
        [401, 200, 200, 200, 200],
    ),
    ("GET", "/api/v1/me", [401, 200, 200, 200, 200]),
    ("GET", "/api/v1/me/sessions", [401, 200, 200, 200, 200]),
    ("POST", "/api/v1/me/password", [401, 400, 400, 400, 400]),
    ("POST", "/api/v1/me/mfa", [401, 200, 200, 200, 200]),
    ("POST", "/api/v1/me/mfa/confirm", [401, 400, 400, 400, 400]),
    ("POST", "/api/v1/me/mfa/disable", [401, 400, 400, 400, 400]),
    ("GET", "/logout", [303, 200, 200, 200, 200]),
    ("POST", "/logout", [303, 303, 303, 303, 303]),
    ("GET", "/account", [303, 200, 200, 200, 200]),
    ("POST", "/account/password", [303, 400, 400, 400, 400]),
    ("POST", "/account/mfa", [303, 200, 200, 200, 200]),
    ("POST", "/account/mfa/confirm", [303, 400, 400, 400, 400]),
    ("POST", "/account/mfa/disable", [303, 400, 400, 400, 400]),
    (
        "POST",
        "/account/logout-everywhere",
        [303, 303, 303, 303, 303],
    ),
    ("POST", "/account/api-tokens", [303, 400, 400, 400, 400]),
    (
        "POST",
        "/account/api-tokens/{id}/revoke",
        [303, 404, 404, 404, 404],
    ),
    ("GET", "/api/v1/api-tokens", [401, 200, 200, 200, 200]),
    ("POST", "/api/v1/api-tokens", [401, 400, 400, 400, 400]),
    (
        "DELETE",
        "/api/v1/api-tokens/{id}",
        [401, 404, 404, 404, 404],
    ),
    ("GET", "/api/v1/users", [401, 403, 403, 200, 200]),
    ("POST", "/api/v1/users", [401, 403, 403, 400, 400]),
    ("PATCH", "/api/v1/users/{id}", [401, 403, 403, 400, 400]),
    (
        "POST",
        "/api/v1/users/{id}/mfa-reset",
        [401, 403, 403, 404, 404],
    ),
    ("GET", "/users", [303, 403, 403, 200, 200]),
    ("POST", "/users", [303, 403, 403, 400, 400]),
    ("POST", "/users/{id}", [303, 403, 403, 400, 400]),
    // Devices and claims: viewers read, operators claim and disable,
    // admins revoke; `nonexistent` devices and claims are 404.
    ("GET", "/api/v1/devices", [401, 200, 200, 200, 200]),
    ("GET", "/api/v1/devices/{id}", [401, 404, 404, 404, 404]),
    (
        "GET",
        "/api/v1/devices/{id}/telemetry",
        [401, 404, 404, 404, 404],
    ),
    (
        "GET",
        "/api/v1/devices/{id}/telemetry.csv",
        [401, 404, 404, 404, 404],
    ),
    (
        "GET",
        "/api/v1/devices/{id}/presence",
        [401, 404, 404, 404, 404],
    ),
    (
        "GET",
        "/api/v1/devices/{id}/events",
        [401, 404, 404, 404, 404],
    ),
    (
        "POST",
        "/api/v1/devices/{id}/disable",
        [401, 403, 404, 404, 404],
    ),
    (
        "POST",
        "/api/v1/devices/{id}/enable",
        [401, 403, 404, 404, 404],
    ),
    (
        "POST",
        "/api/v1/devices/{id}/revoke",
        [401, 403, 403, 404, 404],
    ),
    ("POST", "/api/v1/claims", [401, 403, 400, 400, 400]),
    ("GET", "/api/v1/claims/{id}", [401, 403, 404, 404, 404]),
    // One's own notifications: everyone signed in.
    ("GET", "/api/v1/notifications", [401, 200, 200, 200, 200]),
    // An event stream: only for Accept: text/event-stream.
    (
        "GET",
        "/api/v1/notifications/events",
        [401, 406, 406, 406, 406],
    ),
    (
        "POST",
        "/api/v1/notifications/read",
        [401, 200, 200, 200, 200],
    ),
    ("GET", "/notifications", [303, 200, 200, 200, 200]),
    ("POST", "/notifications/read", [303, 303, 303, 303, 303]),
    ("GET", "/", [303, 200, 200, 200, 200]),
    ("GET", "/devices", [303, 200, 200, 200, 200]),
    ("GET", "/devices/{id}", [303, 404, 404, 404, 404]),
    ("POST", "/devices/{id}/disable", [303, 403, 404, 404, 404]),
    ("POST", "/devices/{id}/enable", [303, 403, 404, 404, 404]),
    ("POST", "/devices/{id}/revoke", [303, 403, 403, 404, 404]),
    ("GET", "/claim", [303, 403, 200, 200, 200]),
    ("POST", "/claim", [303, 403, 400, 400, 400]),
    ("GET", "/api/v1/enroll-tokens", [401, 403, 403, 200, 200]),
    // An empty body asks for the defaults: one use, 24 hours.
    ("POST", "/api/v1/enroll-tokens", [401, 403, 403, 201, 201]),
    (
        "DELETE",
        "/api/v1/enroll-tokens/{id}",
        [401, 403, 403, 404, 404],
    ),
    ("GET", "/enroll-tokens", [303, 403, 403, 200, 200]),
    ("POST", "/enroll-tokens", [303, 403, 403, 200, 200]),
    (
        "POST",
        "/enroll-tokens/{id}/revoke",
        [303, 403, 403, 404, 404],
    ),
    ("GET", "/api/v1/services", [401, 403, 403, 200, 200]),
    // `{}` lacks the name.
    ("POST", "/api/v1/services", [401, 403, 403, 400, 400]),
    (
        "POST",
        "/api/v1/services/{name}/revoke",
        [401, 403, 403, 404, 404],
    ),
    ("GET", "/services", [303, 403, 403, 200, 200]),
    ("POST", "/services", [303, 403, 403, 400, 400]),
    ("POST", "/services/{name}/revoke", [303, 403, 403, 404, 404]),
    // Viewers and operators do not read the audit log: it names every
    // user, address and action (DESIGN.md "Users and access").
    // Firmware: viewers read, admins upload (`{}` as JSON is the wrong
    // content type: 415 once allowed).
    ("GET", "/api/v1/firmware", [401, 200, 200, 200, 200]),
    ("POST", "/api/v1/firmware", [401, 403, 403, 415, 415]),
    ("GET", "/api/v1/firmware/keys", [401, 200, 200, 200, 200]),
    ("GET", "/api/v1/firmware/{id}", [401, 404, 404, 404, 404]),
    ("GET", "/firmware", [303, 200, 200, 200, 200]),
    // Campaigns: viewers read; admins create, approve and resume;
    // operators also pause and cancel (`{}` lacks the name: 400).
    ("GET", "/api/v1/campaigns", [401, 200, 200, 200, 200]),
    ("POST", "/api/v1/campaigns", [401, 403, 403, 400, 400]),
    ("GET", "/api/v1/campaigns/{id}", [401, 404, 404, 404, 404]),
    (
        "POST",
        "/api/v1/campaigns/{id}/approve",
        [401, 403, 403, 404, 404],
    ),
    (
        "POST",
        "/api/v1/campaigns/{id}/pause",
        [401, 403, 404, 404, 404],
    ),
    (
        "POST",
        "/api/v1/campaigns/{id}/resume",
        [401, 403, 403, 404, 404],
    ),
    (
        "POST",
        "/api/v1/campaigns/{id}/cancel",
        [401, 403, 404, 404, 404],
    ),
    ("GET", "/campaigns", [303, 200, 200, 200, 200]),
    ("POST", "/campaigns", [303, 403, 403, 400, 400]),
    ("GET", "/campaigns/new", [303, 403, 403, 200, 200]),
    ("GET", "/campaigns/{id}", [303, 404, 404, 404, 404]),
    ("POST", "/campaigns/{id}/approve", [303, 403, 403, 404, 404]),
    ("POST", "/campaigns/{id}/pause", [303, 403, 404, 404, 404]),
    ("POST", "/campaigns/{id}/resume", [303, 403, 403, 404, 404]),
    ("POST", "/campaigns/{id}/cancel", [303, 403, 404, 404, 404]),
    ("GET", "/api/v1/audit", [401, 403, 403, 200, 200]),
    ("GET", "/audit", [303, 403, 403, 200, 200]),
    ("GET", "/api/v1/alerts", [401, 200, 200, 200, 200]),
    ("GET", "/api/v1/alerts/{id}", [401, 404, 404, 404, 404]),
    (
        "POST",
        "/api/v1/alerts/{id}/acknowledge",
        [401, 403, 404, 404, 404],
    ),
    ("GET", "/api/v1/alert-channels", [401, 403, 403, 200, 200]),
    ("POST", "/api/v1/alert-channels", [401, 403, 403, 400, 400]),
    (
        "DELETE",
        "/api/v1/alert-channels/{name}",
        [401, 403, 403, 404, 404],
    ),
    ("GET", "/api/v1/alert-rules", [401, 403, 403, 200, 200]),
    ("POST", "/api/v1/alert-rules", [401, 403, 403, 400, 400]),
    (
        "DELETE",
        "/api/v1/alert-rules/{name}",
        [401, 403, 403, 404, 404],
    ),
    (
        "GET",
        "/api/v1/alert-deliveries/dead",
        [401, 403, 403, 200, 200],
    ),
    (
        "POST",
        "/api/v1/alert-deliveries/{id}/retry",
        [401, 403, 403, 404, 404],
    ),
    ("GET", "/alerts", [303, 200, 200, 200, 200]),
    (
        "POST",
        "/alerts/{id}/acknowledge",
        [303, 403, 404, 404, 404],
    ),
    ("GET", "/alert-rules", [303, 403, 403, 200, 200]),
    ("POST", "/alert-rules", [303, 403, 403, 400, 400]),
    (
        "POST",
        "/alert-rules/{name}/remove",
        [303, 403, 403, 200, 200],
    ),
    ("POST", "/alert-channels", [303, 403, 403, 400, 400]),
    (
        "POST",
        "/alert-channels/{name}/remove",
        [303, 403, 403, 200, 200],
    ),
    ("GET", "/alert-deliveries/dead", [303, 403, 403, 200, 200]),
    (
        "POST",
        "/alert-deliveries/{id}/retry",
        [303, 403, 403, 404, 404],
    ),
    ("GET", "/api/v1/openapi.json", [200, 200, 200, 200, 200]),
];

const ROLES: [Option<Role>; 5] = [
    None,
    Some(Role::Viewer),
    Some(Role::Operator),
    Some(Role::Admin),
    Some(Role::Owner),
];

/// A fresh session for the user with `role`, made in the store.
async fn session_of(s: &Server, role: Role, n: usize) -> Session {
    let cookie = format!("matrix-{role}-{n}-cookie-value-long-enough");
    let csrf = format!("csrf-{role}-{n}");
    let now = s.clock.now();
    s.store
        .create_session(
            NewSession {
                id_hash: hex::encode(Sha256::digest(cookie.as_bytes())),
                user_id: format!("user-{role}"),
                csrf_token: csrf.clone(),
                created_at: now,
                last_used_at: now,
                idle_expires_at: now + time::Duration::hours(1),
                absolute_expires_at: now + time::Duration::hours(2),
                user_agent: "matrix".into(),
                ip: "127.0.0.1".into(),
            },
            &Actor::system(),
        )
        .await
        .expect("session");
    Session { cookie, csrf }
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_table_says() {
    let table: BTreeSet<(&str, &str)> = EXPECTED.iter().map(|(m, p, _)| (*m, *p)).collect();
    let routes: BTreeSet<(&str, &str)> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(
        routes.difference(&table).collect::<Vec<_>>(),
        Vec::<&(&str, &str)>::new(),
        "routes without a row in EXPECTED"
    );
    assert_eq!(
        table.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(&str, &str)>::new(),
        "rows in EXPECTED for routes that do not exist"
    );
    assert_eq!(table.len(), EXPECTED.len(), "a route has two rows");

    let s = Server::start(config()).await;
    for role in Role::ALL {
        s.store
            .create_user(
                NewUser {
                    id: format!("user-{role}"),
                    name: format!("{role}-user"),
                    email: None,
                    password_hash: None,
                    role,
                    invite: None,
                    now: s.clock.now(),
                },
                &Actor::system(),
            )
            .await
            .expect("user");
    }
    let mut failures = Vec::new();
    let mut n = 0;
    for (method, path, expected) in EXPECTED {
        let surface = ROUTES
            .iter()
            .find(|r| r.method == *method && r.path == *path)
            .map(|r| r.surface)
            .expect("in the table");
        for (role, want) in ROLES.iter().zip(expected) {
            n += 1;
            let session = match role {
                Some(r) => Some(session_of(&s, *r, n).await),
                None => None,
            };
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let mut req = Req::new(
                method.clone(),
                &path
                    .replace("{id}", "nonexistent")
                    .replace("{name}", "nonexistent")
                    .replace("{sha256}", "nonexistent"),
            );
            if method != Method::GET {
                req = match surface {
                    Surface::Api => req.json(json!({})),
                    Surface::Page => req.form(&[(
                        "csrf_token",
                        session.as_ref().map_or("", |x| x.csrf.as_str()),
                    )]),
                };
            }
            if let Some(session) = &session {
                req = req.session(session);
            }
            let r = req.send(&s).await;
            if r.status != *want {
                failures.push(format!(
                    "{method} {path} as {}: {} (expected {want}) {}",
                    role.map_or("anonymous".to_owned(), |r| r.to_string()),
                    r.status,
                    r.text.chars().take(120).collect::<String>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
