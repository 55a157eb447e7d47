//! Console authentication end to end over HTTPS: first-start setup,
//! sign-in, throttling and lockout, TOTP, session expiry (on an injected
//! clock), sign-out everywhere, CSRF, CORS, security headers, API tokens,
//! user administration, pages and bad input.

use std::time::Duration;

use rampart_store::UserStore;
use rampart_web::WebConfig;
use rampart_web::auth::TotpSecret;
use reqwest::Method;
use serde_json::json;

use crate::common::{Server, config};
use crate::console::{PASSWORD, Req, Session};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn actions(s: &Server) -> Vec<String> {
    s.audit_actions().await
}

#[tokio::test]
async fn setup_token_flow_refuses_wrong_old_expired_and_reused_tokens() {
    let s = Server::start(config()).await;
    let setup = |token: &str, password: &str| {
        Req::post("/api/v1/setup")
            .json(json!({ "token": token, "name": "owner", "password": password }))
    };
    // Before setup, the form is served.
    let r = Req::get("/setup?token=abc").send(&s).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Create owner account"), "{}", r.text);

    let r = setup("wrong", PASSWORD).send(&s).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "setup_token_invalid"),
        "{}",
        r.text
    );
    let first = s.setup_token().await;
    let second = s.setup_token().await;
    let r = setup(&first, PASSWORD).send(&s).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "setup_token_invalid"),
        "an earlier token still works"
    );
    s.clock.advance(Duration::from_secs(3601));
    let r = setup(&second, PASSWORD).send(&s).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "setup_token_expired"),
        "{}",
        r.text
    );
    let current = s.setup_token().await;
    for weak in ["short", "password1234", "owner owner owner"] {
        let r = setup(&current, weak).send(&s).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "weak_password"),
            "{weak}: {}",
            r.text
        );
    }
    assert!(!s.store.owner_exists().await.expect("owner"));

    let r = setup(&current, PASSWORD).send(&s).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cookie = r.header("set-cookie").to_owned();
    for attr in [
        "__Host-rampart_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert_eq!(r.body["user"]["role"], "owner");
    assert!(r.body["user"].get("password_hash").is_none(), "{}", r.text);
    let owner = Session::from_reply(&r);
    let me = Req::get("/api/v1/me").session(&owner).send(&s).await;
    assert_eq!(
        (me.status, me.body["user"]["name"].as_str()),
        (200, Some("owner"))
    );

    // Used up, and no second setup whatever the token.
    let r = setup(&current, PASSWORD).send(&s).await;
    assert_eq!((r.status, r.code()), (409, "setup_done"));
    assert_eq!(
        rampart_web::auth::issue_setup_token(&s.state)
            .await
            .expect("issue"),
        None
    );
    let r = Req::get("/setup?token=x").send(&s).await;
    assert_eq!((r.status, r.header("location")), (303, "/login"));
    let users = s.store.users().await.expect("users");
    assert_eq!(users.len(), 1);
    let log = actions(&s).await;
    assert!(log.contains(&"user.setup_owner".to_owned()), "{log:?}");
}

#[tokio::test]
async fn setup_through_the_html_form_signs_the_owner_in() {
    let s = Server::start(config()).await;
    let token = s.setup_token().await;
    let r = Req::get(&format!("/setup?token={token}")).send(&s).await;
    assert!(
        r.text.contains(&format!("value=\"{token}\"")),
        "the form carries the token"
    );
    let r = Req::post("/setup")
        .form(&[
            ("token", &token),
            ("name", "Olga"),
            ("email", ""),
            ("password", PASSWORD),
        ])
        .send(&s)
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, "/account"),
        "{}",
        r.text
    );
    let cookie = r.session_cookie().expect("cookie");
    let page = Req::get("/account").cookie(&cookie).send(&s).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Olga"), "{}", page.text);
    // The same token again: refused, shown on the form.
    let r = Req::post("/setup")
        .form(&[
            ("token", &token),
            ("name", "Mallory"),
            ("password", PASSWORD),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 409);
    assert!(r.text.contains("setup is complete"), "{}", r.text);
}

#[tokio::test]
async fn login_succeeds_fails_and_locks_the_account_after_repeated_failures() {
    let s = Server::start(WebConfig {
        login_max_failures: 3,
        login_lockout: Duration::from_secs(900),
        login_failure_burst: 0,
        ..config()
    })
    .await;
    s.owner().await;
    let r = s.login("owner", PASSWORD, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.session_cookie().is_some());
    let r = s.login("nobody", PASSWORD, None).await;
    assert_eq!((r.status, r.code()), (401, "login_failed"));
    for _ in 0..2 {
        let r = s.login("OWNER", "wrong password!", None).await;
        assert_eq!((r.status, r.code()), (401, "login_failed"));
    }
    let r = s.login("owner", "wrong password!", None).await;
    assert_eq!((r.status, r.code()), (429, "account_locked"), "{}", r.text);
    assert_eq!(r.header("retry-after"), "900");
    // Locked: even the right password is refused, and no session starts.
    let r = s.login("owner", PASSWORD, None).await;
    assert_eq!((r.status, r.code()), (429, "account_locked"));
    assert!(r.session_cookie().is_none());
    s.clock.advance(Duration::from_secs(901));
    let r = s.login("owner", PASSWORD, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let log = actions(&s).await;
    assert_eq!(
        log.iter().filter(|a| *a == "user.lockout").count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let s = Server::start(WebConfig {
        login_failure_burst: 2,
        login_failure_refill: Duration::from_secs(3600),
        login_max_failures: 0,
        ..config()
    })
    .await;
    s.owner().await;
    for _ in 0..2 {
        assert_eq!(s.login("owner", "not the password", None).await.status, 401);
    }
    let r = s.login("owner", PASSWORD, None).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.text);
    assert!(
        r.header("retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s > 3000)
    );
}

/// The current code of the secret in `enroll`'s answer, at the server's clock.
fn code(secret: &TotpSecret, s: &Server) -> String {
    secret.code_at(s.clock.now().unix_timestamp())
}

fn secret_of(r: &crate::console::Reply) -> TotpSecret {
    let b32 = r.body["secret"].as_str().expect("secret");
    TotpSecret::from_bytes(
        data_encoding::BASE32_NOPAD
            .decode(b32.as_bytes())
            .expect("base32"),
    )
}

#[tokio::test]
async fn totp_enrollment_and_sign_in_with_a_second_factor() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/me/mfa").session(&owner).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["otpauthUri"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://totp/Rampart:owner?secret="))
    );
    assert!(r.body["qrSvg"].as_str().is_some_and(|q| q.contains("<svg")));
    let secret = secret_of(&r);
    // The sealed secret in the store is not the secret.
    let stored = s
        .store
        .user_by_name("owner")
        .await
        .expect("get")
        .expect("owner");
    let sealed = stored.totp_secret.expect("sealed");
    assert!(!sealed.windows(20).any(|w| {
        w == data_encoding::BASE32_NOPAD
            .decode(r.body["secret"].as_str().unwrap_or("").as_bytes())
            .unwrap_or_default()
            .as_slice()
    }));

    let r = Req::post("/api/v1/me/mfa/confirm")
        .session(&owner)
        .json(json!({ "code": "000000" }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (400, "totp_wrong"));
    let r = Req::post("/api/v1/me/mfa/confirm")
        .session(&owner)
        .json(json!({ "code": code(&secret, &s) }))
        .send(&s)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    s.clock.advance(Duration::from_secs(30));
    let r = s.login("owner", PASSWORD, None).await;
    assert_eq!((r.status, r.code()), (401, "totp_required"));
    assert!(r.session_cookie().is_none());
    let r = s.login("owner", PASSWORD, Some("123456")).await;
    assert_eq!((r.status, r.code()), (401, "login_failed"));
    let now_code = code(&secret, &s);
    let r = s.login("owner", PASSWORD, Some(&now_code)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The same code twice: a replay, refused.
    let r = s.login("owner", PASSWORD, Some(&now_code)).await;
    assert_eq!((r.status, r.code()), (401, "login_failed"));

    // The two-step HTML sign-in.
    s.clock.advance(Duration::from_secs(30));
    let r = Req::post("/login")
        .form(&[("name", "owner"), ("password", PASSWORD)])
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.session_cookie().is_none());
    let ticket = r
        .text
        .split("name=\"ticket\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("ticket in the form")
        .to_owned();
    let r = Req::post("/login/totp")
        .form(&[("ticket", &ticket), ("code", &code(&secret, &s))])
        .send(&s)
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, "/account"),
        "{}",
        r.text
    );
    assert!(r.session_cookie().is_some());
    let log = actions(&s).await;
    assert!(log.contains(&"user.mfa_enable".to_owned()), "{log:?}");
}

#[tokio::test]
async fn admins_must_enrol_mfa_when_the_instance_requires_it() {
    let s = Server::start(WebConfig {
        require_mfa_for_admins: true,
        ..config()
    })
    .await;
    let owner = s.owner().await;
    let me = Req::get("/api/v1/me").session(&owner).send(&s).await;
    assert_eq!(me.body["mfaEnrollmentRequired"], true);
    let r = Req::get("/api/v1/users").session(&owner).send(&s).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "mfa_enrollment_required"),
        "{}",
        r.text
    );
    let r = Req::get("/users").session(&owner).send(&s).await;
    assert_eq!((r.status, r.header("location")), (303, "/account#mfa"));
    let r = Req::post("/api/v1/me/mfa").session(&owner).send(&s).await;
    let secret = secret_of(&r);
    let r = Req::post("/api/v1/me/mfa/confirm")
        .session(&owner)
        .json(json!({ "code": code(&secret, &s) }))
        .send(&s)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = Req::get("/api/v1/users").session(&owner).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // And it cannot be turned off again.
    s.clock.advance(Duration::from_secs(30));
    let r = Req::post("/api/v1/me/mfa/disable")
        .session(&owner)
        .json(json!({ "code": code(&secret, &s) }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "mfa_required"));
}

#[tokio::test]
async fn sessions_expire_when_idle_and_at_their_absolute_limit() {
    let s = Server::start(WebConfig {
        session_idle_timeout: Duration::from_secs(600),
        session_absolute_timeout: Duration::from_secs(3600),
        ..config()
    })
    .await;
    let owner = s.owner().await;
    let me = |sess: &Session| Req::get("/api/v1/me").session(sess);
    // Idle: 9 minutes is fine, 10 more without a request is not.
    s.clock.advance(Duration::from_secs(540));
    assert_eq!(me(&owner).send(&s).await.status, 200);
    s.clock.advance(Duration::from_secs(600));
    let r = me(&owner).send(&s).await;
    assert_eq!((r.status, r.code()), (401, "session_expired"), "{}", r.text);

    // Absolute: used every 9 minutes, it still ends after an hour.
    let r = s.login("owner", PASSWORD, None).await;
    let fresh = Session::from_reply(&r);
    for _ in 0..6 {
        s.clock.advance(Duration::from_secs(540));
        assert_eq!(me(&fresh).send(&s).await.status, 200);
    }
    s.clock
        .advance(Duration::from_secs(600 - 1) - Duration::from_secs(540) + Duration::from_secs(1));
    // 6 × 540 s + 60 s = 3300 s: still live.
    assert_eq!(me(&fresh).send(&s).await.status, 200);
    s.clock.advance(Duration::from_secs(300));
    let r = me(&fresh).send(&s).await;
    assert_eq!((r.status, r.code()), (401, "session_expired"));
    // An expired session is removed from the store.
    assert!(
        s.store
            .sessions_of(
                &s.store
                    .user_by_name("owner")
                    .await
                    .expect("get")
                    .expect("u")
                    .id
            )
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn logout_and_logout_everywhere_end_sessions() {
    let s = Server::start(config()).await;
    let a = s.owner().await;
    let b = Session::from_reply(&s.login("owner", PASSWORD, None).await);
    let c = Session::from_reply(&s.login("owner", PASSWORD, None).await);
    let r = Req::get("/api/v1/me/sessions").session(&a).send(&s).await;
    assert_eq!(r.body["sessions"].as_array().map(Vec::len), Some(3));
    let r = Req::new(Method::DELETE, "/api/v1/session")
        .session(&c)
        .send(&s)
        .await;
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(
        Req::get("/api/v1/me").session(&c).send(&s).await.status,
        401
    );
    assert_eq!(
        Req::get("/api/v1/me").session(&a).send(&s).await.status,
        200
    );
    let r = Req::post("/api/v1/session/logout-everywhere")
        .session(&b)
        .send(&s)
        .await;
    assert_eq!(
        (r.status, r.body["sessionsEnded"].as_u64()),
        (200, Some(2)),
        "{}",
        r.text
    );
    for sess in [&a, &b] {
        let r = Req::get("/api/v1/me").session(sess).send(&s).await;
        assert_eq!((r.status, r.code()), (401, "session_expired"));
    }
    assert!(
        actions(&s)
            .await
            .contains(&"user.logout_everywhere".to_owned())
    );
}

#[tokio::test]
async fn csrf_missing_forged_or_cross_origin_is_refused_and_changes_nothing() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let create = || {
        Req::post("/api/v1/api-tokens")
            .cookie(&owner.cookie)
            .json(json!({ "name": "ci" }))
    };
    let host = s.addr.to_string();
    let cases = [
        ("missing", create()),
        ("forged", create().csrf(Some("forged-token"))),
        (
            "other session's",
            create().csrf(Some(
                &Session::from_reply(&s.login("owner", PASSWORD, None).await).csrf,
            )),
        ),
        (
            "foreign origin",
            create()
                .csrf(Some(&owner.csrf))
                .header("origin", "https://evil.example"),
        ),
        (
            "cross-site fetch",
            create()
                .csrf(Some(&owner.csrf))
                .header("sec-fetch-site", "cross-site"),
        ),
    ];
    for (what, req) in cases {
        let r = req.send(&s).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "csrf_refused"),
            "{what}: {}",
            r.text
        );
    }
    // Forms too: without the hidden field the form is refused.
    let r = Req::post("/account/api-tokens")
        .cookie(&owner.cookie)
        .form(&[("name", "ci")])
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "csrf_refused"));
    let r = Req::post("/account/api-tokens")
        .cookie(&owner.cookie)
        .form(&[("name", "ci"), ("csrf_token", "nope")])
        .send(&s)
        .await;
    assert_eq!(r.status, 403);
    assert!(
        s.store.api_tokens(None).await.expect("list").is_empty(),
        "a refused request changed something"
    );
    assert!(!actions(&s).await.contains(&"api_token.create".to_owned()));

    // With the token (header, or hidden field, from our own origin) it works.
    let r = create()
        .csrf(Some(&owner.csrf))
        .header("origin", &format!("https://{host}"))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = Req::post("/account/api-tokens")
        .cookie(&owner.cookie)
        .form(&[
            ("name", "form"),
            ("role", "viewer"),
            ("expires_in_days", "30"),
            ("csrf_token", &owner.csrf),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("rmp_api_"), "the new token is shown once");
    assert_eq!(s.store.api_tokens(None).await.expect("list").len(), 2);
}

#[tokio::test]
async fn cors_is_denied_by_default_and_allowed_only_for_configured_origins_with_tokens() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/api-tokens")
        .session(&owner)
        .json(json!({ "name": "t" }))
        .send(&s)
        .await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    let preflight_from = |origin: &str| {
        Req::new(Method::OPTIONS, "/api/v1/me")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
    };
    let preflight = || preflight_from("https://tools.example");
    let r = preflight().send(&s).await;
    assert_eq!((r.status, r.code()), (403, "cors_denied"));
    assert_eq!(r.header("access-control-allow-origin"), "");
    let r = Req::get("/api/v1/me")
        .bearer(&token)
        .header("origin", "https://tools.example")
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "",
        "allowed by default"
    );

    let s = Server::start(WebConfig {
        cors_allowed_origins: vec!["https://tools.example".into()],
        ..config()
    })
    .await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/api-tokens")
        .session(&owner)
        .json(json!({ "name": "t" }))
        .send(&s)
        .await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    let r = preflight().send(&s).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://tools.example"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "");
    let r = Req::get("/api/v1/me")
        .bearer(&token)
        .header("origin", "https://tools.example")
        .send(&s)
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://tools.example"
    );
    // Cookies from that origin get nothing: no CORS header, and a change is refused.
    let r = Req::get("/api/v1/me")
        .cookie(&owner.cookie)
        .header("origin", "https://tools.example")
        .send(&s)
        .await;
    assert_eq!(r.header("access-control-allow-origin"), "");
    let r = Req::post("/api/v1/session/logout-everywhere")
        .session(&owner)
        .header("origin", "https://tools.example")
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "csrf_refused"));
    let r = preflight_from("https://other.example").send(&s).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let s = Server::start(config()).await;
    for req in [
        Req::get("/healthz"),
        Req::get("/no/such/page"),
        Req::get("/login"),
        Req::get("/api/v1/me"),
        Req::get("/static/app.css"),
        Req::post("/api/v1/session").raw("{"),
    ] {
        let r = req.send(&s).await;
        assert_eq!(r.header("content-security-policy"), CSP, "{}", r.status);
        assert_eq!(
            r.header("strict-transport-security"),
            "max-age=63072000; includeSubDomains"
        );
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("referrer-policy"), "same-origin");
        assert_eq!(r.header("x-frame-options"), "DENY");
    }
}

#[tokio::test]
async fn a_viewer_calling_an_admin_route_gets_403_with_a_clear_message() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let viewer = s.user(&owner, "vera", "viewer").await;
    let r = Req::get("/api/v1/users").session(&viewer).send(&s).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("viewer") && message.contains("admin") && message.contains("list users"),
        "{message}"
    );
    let r = Req::post("/api/v1/users")
        .session(&viewer)
        .json(json!({ "name": "x", "role": "admin" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 403);
    assert!(s.store.user_by_name("x").await.expect("get").is_none());
    let r = Req::get("/users").session(&viewer).send(&s).await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("may not list users"), "{}", r.text);
}

#[tokio::test]
async fn api_tokens_authenticate_with_their_role_until_revoked() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/api-tokens")
        .session(&owner)
        .json(json!({ "name": "reader", "role": "viewer", "expiresInDays": 1 }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().expect("token").to_owned();
    let id = r.body["apiToken"]["id"].as_str().expect("id").to_owned();
    assert!(token.starts_with("rmp_api_"));
    assert!(
        !r.body["apiToken"].to_string().contains(&token),
        "the listing holds the secret"
    );
    let me = Req::get("/api/v1/me").bearer(&token).send(&s).await;
    assert_eq!(
        (me.status, me.body["role"].as_str(), me.body["via"].as_str()),
        (200, Some("viewer"), Some("api_token"))
    );
    let r = Req::get("/api/v1/users").bearer(&token).send(&s).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    // No CSRF for tokens; but a token cannot touch the account.
    let r = Req::post("/api/v1/me/password")
        .bearer(&token)
        .json(json!({ "currentPassword": PASSWORD, "newPassword": "another fine long phrase 7" }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "token_not_allowed"));
    let r = Req::post("/api/v1/api-tokens")
        .session(&owner)
        .json(json!({ "name": "x", "role": "owner" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "the owner may make an owner token");
    // A viewer cannot mint a token above its role.
    let viewer = s.user(&owner, "vic", "viewer").await;
    let r = Req::post("/api/v1/api-tokens")
        .session(&viewer)
        .json(json!({ "name": "x", "role": "admin" }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    // ... nor revoke someone else's.
    let r = Req::new(Method::DELETE, &format!("/api/v1/api-tokens/{id}"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (404, "api_token_not_found"));
    let r = Req::new(Method::DELETE, &format!("/api/v1/api-tokens/{id}"))
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = Req::get("/api/v1/me").bearer(&token).send(&s).await;
    assert_eq!((r.status, r.code()), (401, "token_invalid"));
    let r = Req::get("/api/v1/me")
        .bearer("rmp_api_guessed")
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (401, "token_invalid"));
    // Expiry, on the injected clock.
    let r = Req::post("/api/v1/api-tokens")
        .session(&owner)
        .json(json!({ "name": "short", "expiresInDays": 1 }))
        .send(&s)
        .await;
    let short = r.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        Req::get("/api/v1/me").bearer(&short).send(&s).await.status,
        200
    );
    s.clock.advance(Duration::from_secs(86_400));
    assert_eq!(
        Req::get("/api/v1/me").bearer(&short).send(&s).await.status,
        401
    );
}

#[tokio::test]
async fn administrators_invite_change_disable_and_reset_users() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let admin = s.user(&owner, "ada", "admin").await;
    let op = s.user(&admin, "otto", "operator").await;
    let otto = s
        .store
        .user_by_name("otto")
        .await
        .expect("get")
        .expect("otto");
    // An admin cannot create admins or touch the owner.
    let r = Req::post("/api/v1/users")
        .session(&admin)
        .json(json!({ "name": "eve", "role": "admin" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let owner_id = s
        .store
        .user_by_name("owner")
        .await
        .expect("get")
        .expect("o")
        .id;
    let r = Req::new(Method::PATCH, &format!("/api/v1/users/{owner_id}"))
        .session(&admin)
        .json(json!({ "disabled": true }))
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Role change, then disable: the operator's session ends.
    let r = Req::new(Method::PATCH, &format!("/api/v1/users/{}", otto.id))
        .session(&admin)
        .json(json!({ "role": "viewer" }))
        .send(&s)
        .await;
    assert_eq!(
        (r.status, r.body["user"]["role"].as_str()),
        (200, Some("viewer")),
        "{}",
        r.text
    );
    let r = Req::new(Method::PATCH, &format!("/api/v1/users/{}", otto.id))
        .session(&admin)
        .json(json!({ "disabled": true }))
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        Req::get("/api/v1/me").session(&op).send(&s).await.status,
        401
    );
    assert_eq!(s.login("otto", PASSWORD, None).await.status, 401);
    let r = Req::post(&format!("/api/v1/users/{}/mfa-reset", otto.id))
        .session(&admin)
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    // An invitation works once.
    let r = Req::post("/api/v1/users")
        .session(&owner)
        .json(json!({ "name": "ivy", "role": "operator" }))
        .send(&s)
        .await;
    let token = r.body["inviteToken"].as_str().expect("token").to_owned();
    let accept =
        || Req::post("/api/v1/invite").json(json!({ "token": token, "password": PASSWORD }));
    assert_eq!(accept().send(&s).await.status, 200);
    let r = accept().send(&s).await;
    assert_eq!((r.status, r.code()), (401, "invite_invalid"));
    let r = Req::get("/api/v1/users").session(&admin).send(&s).await;
    assert_eq!(r.body["users"].as_array().map(Vec::len), Some(4));
    let log = actions(&s).await;
    for a in [
        "user.create",
        "user.role",
        "user.disable",
        "user.mfa_reset",
        "user.invite_accepted",
    ] {
        assert!(log.contains(&a.to_owned()), "{a} not audited: {log:?}");
    }
}

#[tokio::test]
async fn pages_use_the_layout_without_inline_script_or_style() {
    let s = Server::start(config()).await;
    let r = Req::get("/account").send(&s).await;
    assert_eq!((r.status, r.header("location")), (303, "/login"));
    let owner = s.owner().await;
    for path in ["/login", "/account", "/users", "/logout"] {
        let r = Req::get(path).cookie(&owner.cookie).send(&s).await;
        let ok = if path == "/login" { 303 } else { 200 };
        assert_eq!(r.status, ok, "{path}");
        if r.status == 200 {
            assert!(r.text.contains("/static/app.css?v="), "{path}");
            assert!(
                !r.text.contains("<script") && !r.text.contains("style="),
                "{path} has inline code"
            );
            assert!(
                r.text.contains(&owner.csrf) || path == "/login",
                "{path} lacks the CSRF field"
            );
        }
    }
    let css = Req::get("/static/app.css").send(&s).await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));
    let etag = css.header("etag").to_owned();
    let again = Req::get("/static/app.css")
        .header("if-none-match", &etag)
        .send(&s)
        .await;
    assert_eq!(again.status, 304);
    // Sign out through the form.
    let r = Req::post("/logout")
        .cookie(&owner.cookie)
        .form(&[("csrf_token", &owner.csrf)])
        .send(&s)
        .await;
    assert_eq!((r.status, r.header("location")), (303, "/login"));
    assert_eq!(
        Req::get("/api/v1/me").session(&owner).send(&s).await.status,
        401
    );
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let s = Server::start(WebConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let owner = s.owner().await;
    let cases = [
        (
            Req::post("/api/v1/session").raw("{"),
            400,
            "invalid_json",
            "EOF",
        ),
        (
            Req::post("/api/v1/session").raw("[]"),
            400,
            "invalid_json",
            "expected struct",
        ),
        (
            Req::post("/api/v1/session")
                .json(json!({ "name": "owner", "password": PASSWORD, "remember": true })),
            400,
            "invalid_json",
            "unknown field `remember`",
        ),
        (
            Req::post("/api/v1/session")
                .raw(json!({ "name": "x".repeat(5000), "password": "p" }).to_string()),
            413,
            "payload_too_large",
            "4096",
        ),
        (
            Req::post("/api/v1/users")
                .session(&owner)
                .json(json!({ "name": "x", "role": "root" })),
            400,
            "invalid_role",
            "root",
        ),
        (
            Req::post("/api/v1/users")
                .session(&owner)
                .json(json!({ "name": " padded", "role": "viewer" })),
            400,
            "invalid_name",
            "spaces",
        ),
    ];
    for (req, status, code, says) in cases {
        let r = req.send(&s).await;
        assert_eq!((r.status, r.code()), (status, code), "{}", r.text);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(s.store.users().await.expect("users").len(), 1);
}

#[tokio::test]
async fn a_password_change_needs_the_current_password_and_a_strong_new_one() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let change = |current: &str, new: &str| {
        Req::post("/api/v1/me/password")
            .session(&owner)
            .json(json!({ "currentPassword": current, "newPassword": new }))
    };
    let r = change("not my password", "amber canyon falcon 1984")
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (403, "password_wrong"));
    let r = change(PASSWORD, "owner12345678").send(&s).await;
    assert_eq!((r.status, r.code()), (400, "weak_password"), "{}", r.text);
    let r = change(PASSWORD, "amber canyon falcon 1984").send(&s).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(s.login("owner", PASSWORD, None).await.status, 401);
    assert_eq!(
        s.login("owner", "amber canyon falcon 1984", None)
            .await
            .status,
        200
    );
    let log = actions(&s).await;
    assert_eq!(
        log.iter().filter(|a| *a == "user.password").count(),
        1,
        "{log:?}"
    );
    // HEAD follows GET's rule.
    let r = Req::new(Method::HEAD, "/api/v1/users").send(&s).await;
    assert_eq!(r.status, 401);
    let r = Req::new(Method::HEAD, "/api/v1/users")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
}
