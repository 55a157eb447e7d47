//! The HTML pages: GETs render, POSTs are forms (their CSRF token checked
//! by the guard) that act through `auth::accounts` and answer with a page
//! or a redirect.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use rampart_store::Role;
use serde::Deserialize;

use super::account::{Caller, principal};
use super::origin_of;
use crate::auth::accounts::{self, LoginStep, SignedIn, UserOp};
use crate::auth::session::{clear_cookie, set_cookie};
use crate::auth::{Credential, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::layout::Flash;
use crate::ui::pages::{self, AccountView, Reveal, UsersView};

type PageResult = Result<Response, ApiError>;

pub(super) fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A redirect that also sets the session cookie.
fn signed_in_redirect(state: &AppState, s: &SignedIn, to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&s.cookie, state.config().session_absolute_timeout),
    );
    r
}

/// A form body that does not decode, as the refusal the account pages show.
fn unreadable_form(e: &FormRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_form", e.body_text())
}

fn form_error(e: FormRejection) -> Flash {
    Flash::error(format!("the form could not be read: {}", e.body_text()))
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// `GET /setup?token=`.
pub(super) async fn setup_form(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> PageResult {
    if state
        .users()
        .owner_exists()
        .await
        .map_err(accounts::store_error)?
    {
        return Ok(Redirect::to("/login").into_response());
    }
    let token = query.map(|q| q.0.token).unwrap_or_default();
    Ok(html(StatusCode::OK, pages::setup(&token, None)))
}

#[derive(Debug, Deserialize)]
pub(super) struct SetupForm {
    token: String,
    name: String,
    #[serde(default)]
    email: String,
    password: String,
}

/// `POST /setup`.
pub(super) async fn setup_submit(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<SetupForm>, FormRejection>,
) -> PageResult {
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                pages::setup("", Some(&form_error(e))),
            ));
        }
    };
    let email = Some(f.email.trim().to_owned()).filter(|e| !e.is_empty());
    let origin = origin_of(client, &headers);
    match accounts::setup(&state, &f.token, f.name.trim(), email, &f.password, &origin).await {
        Ok(s) => Ok(signed_in_redirect(&state, &s, "/account")),
        Err(e) => Ok(html(
            e.status,
            pages::setup(&f.token, Some(&Flash::error(e.message))),
        )),
    }
}

/// `GET /login`.
pub(super) async fn login_form(caller: Caller) -> Response {
    if caller.0.is_some() {
        return Redirect::to("/account").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
}

/// `POST /login`: the password step.
pub(super) async fn login_submit(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> PageResult {
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                pages::login(Some(&form_error(e))),
            ));
        }
    };
    let origin = origin_of(client, &headers);
    match accounts::login(&state, &f.name, &f.password, None, &origin).await {
        Ok(LoginStep::Done(s)) => Ok(signed_in_redirect(&state, &s, "/account")),
        Ok(LoginStep::TotpRequired(user)) => {
            let ticket = state.issue_mfa_ticket(&user.id);
            Ok(html(StatusCode::OK, pages::login_totp(&ticket, None)))
        }
        Err(e) => Ok(html(e.status, pages::login(Some(&Flash::error(e.message))))),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TotpForm {
    ticket: String,
    code: String,
}

/// `POST /login/totp`: the code step.
pub(super) async fn login_totp(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<TotpForm>, FormRejection>,
) -> PageResult {
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                pages::login(Some(&form_error(e))),
            ));
        }
    };
    let origin = origin_of(client, &headers);
    match accounts::login_totp(&state, &f.ticket, &f.code, &origin).await {
        Ok(s) => Ok(signed_in_redirect(&state, &s, "/account")),
        // A wrong code ends this attempt: start again with the password,
        // so that one ticket is not a free pass to guess codes.
        Err(e) => Ok(html(e.status, pages::login(Some(&Flash::error(e.message))))),
    }
}

/// `GET /invite?token=`.
pub(super) async fn invite_form(query: Result<Query<TokenQuery>, QueryRejection>) -> Response {
    let token = query.map(|q| q.0.token).unwrap_or_default();
    html(StatusCode::OK, pages::invite(&token, None))
}

#[derive(Debug, Deserialize)]
pub(super) struct InviteForm {
    token: String,
    password: String,
}

/// `POST /invite`.
pub(super) async fn invite_submit(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<InviteForm>, FormRejection>,
) -> PageResult {
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return Ok(html(
                StatusCode::BAD_REQUEST,
                pages::invite("", Some(&form_error(e))),
            ));
        }
    };
    let origin = origin_of(client, &headers);
    match accounts::accept_invite(&state, &f.token, &f.password, &origin).await {
        Ok(_) => Ok(html(
            StatusCode::OK,
            pages::login(Some(&Flash::ok("Your password is set. Sign in."))),
        )),
        Err(e) => Ok(html(
            e.status,
            pages::invite(&f.token, Some(&Flash::error(e.message))),
        )),
    }
}

pub(super) fn csrf_of(p: &Principal) -> &str {
    match &p.credential {
        Credential::Session { csrf_token, .. } => csrf_token,
        Credential::ApiToken { .. } => "",
    }
}

/// `GET /logout`: the confirmation form.
pub(super) async fn logout_form(caller: Caller) -> PageResult {
    let p = principal(caller)?;
    Ok(html(StatusCode::OK, pages::logout(&p, csrf_of(&p))))
}

/// `POST /logout`.
pub(super) async fn logout_submit(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    if let Credential::Session { id_hash, .. } = &p.credential {
        state
            .users()
            .end_session(id_hash)
            .await
            .map_err(accounts::store_error)?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

/// Renders the account page with `flash` and `reveal`.
async fn account_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
    reveal: Option<Reveal>,
) -> PageResult {
    let users = state.users();
    let user = users
        .user(&p.user_id)
        .await
        .map_err(accounts::store_error)?
        .ok_or_else(|| {
            accounts::store_error(rampart_store::StoreError::UserNotFound(p.name.clone()))
        })?;
    let sessions = users
        .sessions_of(&p.user_id)
        .await
        .map_err(accounts::store_error)?;
    let tokens = users
        .api_tokens(Some(&p.user_id))
        .await
        .map_err(accounts::store_error)?;
    let current = match &p.credential {
        Credential::Session { id_hash, .. } => id_hash.as_str(),
        Credential::ApiToken { .. } => "",
    };
    let view = AccountView {
        principal: p,
        csrf_token: csrf_of(p),
        user: &user,
        sessions: &sessions,
        current_session: current,
        tokens: &tokens,
        flash,
        reveal,
    };
    Ok(html(status, pages::account(&view)))
}

#[derive(Debug, Deserialize)]
pub(super) struct DoneQuery {
    #[serde(default)]
    done: String,
}

/// `GET /account`.
pub(super) async fn account(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DoneQuery>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let flash = match query.ok().map(|q| q.0.done).as_deref() {
        Some("password") => Some(Flash::ok("Your password is changed.")),
        Some("mfa-on") => Some(Flash::ok("Two-factor authentication is on.")),
        Some("mfa-off") => Some(Flash::ok("Two-factor authentication is off.")),
        Some("revoked") => Some(Flash::ok("The token is revoked.")),
        _ => None,
    };
    account_page(&state, &p, StatusCode::OK, flash, None).await
}

/// The account page again with an error, or a redirect with a message.
async fn after(
    state: &AppState,
    p: &Principal,
    result: Result<(), ApiError>,
    done: &str,
) -> PageResult {
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/account?done={done}")).into_response()),
        Err(e) => account_page(state, p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct PasswordForm {
    current_password: String,
    new_password: String,
}

/// `POST /account/password`.
pub(super) async fn account_password(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<PasswordForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let result = match form {
        Ok(Form(f)) => {
            accounts::change_password(
                &state,
                &p,
                &f.current_password,
                &f.new_password,
                &origin_of(client, &headers),
            )
            .await
        }
        Err(e) => Err(unreadable_form(&e)),
    };
    after(&state, &p, result, "password").await
}

/// `POST /account/mfa`: start enrollment, show the QR code.
pub(super) async fn account_mfa_start(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
) -> PageResult {
    let p = principal(caller)?;
    match accounts::mfa_start(&state, &p, &origin_of(client, &headers)).await {
        Ok(e) => {
            let reveal = Reveal::Mfa {
                qr_svg: e.qr_svg,
                secret: e.secret,
            };
            account_page(&state, &p, StatusCode::OK, None, Some(reveal)).await
        }
        Err(e) => account_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct CodeForm {
    code: String,
}

/// The two steps of a TOTP code form on the account page.
#[derive(Debug, Clone, Copy)]
enum MfaStep {
    Confirm,
    Disable,
}

/// `POST /account/mfa/confirm` and `/account/mfa/disable`: one code, then
/// back to the account page with what happened.
async fn mfa_code(
    state: AppState,
    client: SocketAddr,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<CodeForm>, FormRejection>,
    step: MfaStep,
) -> PageResult {
    let p = principal(caller)?;
    let result = match form {
        Ok(Form(f)) => {
            let origin = origin_of(client, &headers);
            match step {
                MfaStep::Confirm => accounts::mfa_confirm(&state, &p, &f.code, &origin).await,
                MfaStep::Disable => accounts::mfa_disable(&state, &p, &f.code, &origin).await,
            }
        }
        Err(e) => Err(unreadable_form(&e)),
    };
    let done = match step {
        MfaStep::Confirm => "mfa-on",
        MfaStep::Disable => "mfa-off",
    };
    after(&state, &p, result, done).await
}

/// `POST /account/mfa/confirm`.
pub(super) async fn account_mfa_confirm(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<CodeForm>, FormRejection>,
) -> PageResult {
    mfa_code(state, client, headers, caller, form, MfaStep::Confirm).await
}

/// `POST /account/mfa/disable`.
pub(super) async fn account_mfa_disable(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<CodeForm>, FormRejection>,
) -> PageResult {
    mfa_code(state, client, headers, caller, form, MfaStep::Disable).await
}

/// `POST /account/logout-everywhere`.
pub(super) async fn account_logout_everywhere(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
) -> PageResult {
    let p = principal(caller)?;
    accounts::logout_everywhere(&state, &p, &origin_of(client, &headers)).await?;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

/// `POST /account/api-tokens`: the token is shown on the page, once.
pub(super) async fn account_token_create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<TokenForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return account_page(
                &state,
                &p,
                StatusCode::BAD_REQUEST,
                Some(form_error(e)),
                None,
            )
            .await;
        }
    };
    let role = Role::parse(&f.role);
    match accounts::create_api_token(
        &state,
        &p,
        &f.name,
        role,
        f.expires_in_days,
        &origin_of(client, &headers),
    )
    .await
    {
        Ok((_, token)) => {
            account_page(&state, &p, StatusCode::OK, None, Some(Reveal::Token(token))).await
        }
        Err(e) => account_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

/// `POST /account/api-tokens/{id}/revoke`.
pub(super) async fn account_token_revoke(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
) -> PageResult {
    let p = principal(caller)?;
    let result = accounts::revoke_api_token(&state, &p, &id, &origin_of(client, &headers))
        .await
        .map(|_| ());
    after(&state, &p, result, "revoked").await
}

async fn users_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
    invite_link: Option<String>,
) -> PageResult {
    let users = state.users().users().await.map_err(accounts::store_error)?;
    let view = UsersView {
        principal: p,
        csrf_token: csrf_of(p),
        users: &users,
        flash,
        invite_link,
    };
    Ok(html(status, pages::users(&view)))
}

/// `GET /users`.
pub(super) async fn users(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    users_page(&state, &p, StatusCode::OK, None, None).await
}

#[derive(Debug, Deserialize)]
pub(super) struct InviteUserForm {
    name: String,
    #[serde(default)]
    email: String,
    role: String,
}

/// `POST /users`: invite; the link is shown once.
pub(super) async fn users_invite(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<InviteUserForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            return users_page(
                &state,
                &p,
                StatusCode::BAD_REQUEST,
                Some(form_error(e)),
                None,
            )
            .await;
        }
    };
    let Some(role) = Role::parse(&f.role) else {
        return users_page(
            &state,
            &p,
            StatusCode::BAD_REQUEST,
            Some(Flash::error("choose a role")),
            None,
        )
        .await;
    };
    let email = Some(f.email.trim().to_owned()).filter(|e| !e.is_empty());
    match accounts::invite(
        &state,
        &p,
        f.name.trim(),
        email,
        role,
        &origin_of(client, &headers),
    )
    .await
    {
        Ok((user, token)) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let link = format!("https://{host}/invite?token={token}");
            let flash = Flash::ok(format!("{} is invited.", user.name));
            users_page(&state, &p, StatusCode::OK, Some(flash), Some(link)).await
        }
        Err(e) => users_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ChangeForm {
    op: String,
}

/// `POST /users/{id}`: `op` is `role:NAME`, `disable`, `enable` or `mfa-reset`.
pub(super) async fn users_change(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    caller: Caller,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let op = match form.as_ref().map(|f| f.op.as_str()) {
        Ok("disable") => Some(UserOp::Disabled(true)),
        Ok("enable") => Some(UserOp::Disabled(false)),
        Ok("mfa-reset") => Some(UserOp::MfaReset),
        Ok(other) => other
            .strip_prefix("role:")
            .and_then(Role::parse)
            .map(UserOp::Role),
        Err(_) => None,
    };
    let Some(op) = op else {
        return users_page(
            &state,
            &p,
            StatusCode::BAD_REQUEST,
            Some(Flash::error("unknown action")),
            None,
        )
        .await;
    };
    match accounts::change_user(&state, &p, &id, op, &origin_of(client, &headers)).await {
        Ok(u) => {
            users_page(
                &state,
                &p,
                StatusCode::OK,
                Some(Flash::ok(format!("{} is updated.", u.name))),
                None,
            )
            .await
        }
        Err(e) => users_page(&state, &p, e.status, Some(Flash::error(e.message)), None).await,
    }
}
