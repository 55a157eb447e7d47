//! The pages of first start, sign-in and account management.

use maud::{Markup, PreEscaped, html};
use rampart_store::{ApiToken, Role, Session, User};

use super::layout::{Flash, flash, page};
use crate::auth::{Action, Principal, authorize};
use crate::routes::guard::CSRF_FIELD;

pub(crate) fn when(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

pub(crate) fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

/// `/setup`: create the owner.
pub fn setup(token: &str, message: Option<&Flash>) -> Markup {
    page(
        "Set up",
        None,
        "/setup",
        html! {
            div.card {
                h1 { "Welcome to Rampart" }
                p.hint { "Create the owner account. This link works once and expires one hour after the server printed it." }
                (flash(message))
                form method="post" action="/setup" {
                    input type="hidden" name="token" value=(token);
                    label for="name" { "Your name" }
                    input #name type="text" name="name" required autocomplete="username" maxlength="64";
                    label for="email" { "E-mail (optional)" }
                    input #email type="email" name="email" autocomplete="email";
                    label for="password" { "Password" }
                    input #password type="password" name="password" required minlength="12" autocomplete="new-password";
                    p.hint { "At least 12 characters. A few unrelated words make a strong password." }
                    button type="submit" { "Create owner account" }
                }
            }
        },
    )
}

/// `/login`: name and password.
pub fn login(message: Option<&Flash>) -> Markup {
    page(
        "Sign in",
        None,
        "/login",
        html! {
            div.card {
                h1 { "Sign in" }
                (flash(message))
                form method="post" action="/login" {
                    label for="name" { "Name" }
                    input #name type="text" name="name" required autocomplete="username";
                    label for="password" { "Password" }
                    input #password type="password" name="password" required autocomplete="current-password";
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The second step of `/login`: the TOTP code.
pub fn login_totp(ticket: &str, message: Option<&Flash>) -> Markup {
    page(
        "Sign in",
        None,
        "/login",
        html! {
            div.card {
                h1 { "Two-factor authentication" }
                p.hint { "Enter the 6-digit code from your authenticator app." }
                (flash(message))
                form method="post" action="/login/totp" {
                    input type="hidden" name="ticket" value=(ticket);
                    label for="code" { "Code" }
                    input #code type="text" name="code" required inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code";
                    button type="submit" { "Verify" }
                }
            }
        },
    )
}

/// `/invite`: an invited user sets a password.
pub fn invite(token: &str, message: Option<&Flash>) -> Markup {
    page(
        "Accept invitation",
        None,
        "/invite",
        html! {
            div.card {
                h1 { "Choose your password" }
                (flash(message))
                form method="post" action="/invite" {
                    input type="hidden" name="token" value=(token);
                    label for="password" { "Password" }
                    input #password type="password" name="password" required minlength="12" autocomplete="new-password";
                    p.hint { "At least 12 characters. A few unrelated words make a strong password." }
                    button type="submit" { "Set password" }
                }
            }
        },
    )
}

/// `/logout`: confirm signing out (a GET never changes anything).
pub fn logout(p: &Principal, csrf_token: &str) -> Markup {
    page(
        "Sign out",
        Some(p),
        "/logout",
        html! {
            div.card {
                h1 { "Sign out" }
                p { "Sign out of this browser?" }
                form method="post" action="/logout" {
                    (csrf(csrf_token))
                    button type="submit" { "Sign out" }
                }
            }
        },
    )
}

/// What the account page shows once, after an action.
#[derive(Debug)]
pub enum Reveal {
    /// An MFA enrollment in progress: QR code and secret.
    Mfa {
        /// QR code of the `otpauth://` URI, SVG made by us.
        qr_svg: String,
        /// Base32 secret.
        secret: String,
    },
    /// A new API token.
    Token(String),
}

/// Everything the account page shows.
#[derive(Debug)]
pub struct AccountView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// Their user row.
    pub user: &'a User,
    /// Their sessions.
    pub sessions: &'a [Session],
    /// The current session's id hash.
    pub current_session: &'a str,
    /// Their API tokens.
    pub tokens: &'a [ApiToken],
    /// A message.
    pub flash: Option<Flash>,
    /// Something to show once.
    pub reveal: Option<Reveal>,
}

/// `/account`.
pub fn account(v: &AccountView<'_>) -> Markup {
    let p = v.principal;
    let roles: Vec<Role> = Role::ALL.into_iter().filter(|r| *r <= p.role).collect();
    page(
        "Account",
        Some(p),
        "/account",
        html! {
            h1 { "Account" }
            (flash(v.flash.as_ref()))
            @if p.mfa_enrollment_required {
                div.flash.error { "This instance requires two-factor authentication for your role. Enrol it below to continue." }
            }
            div.grid {
                section.card #mfa {
                    h2 { "Two-factor authentication" }
                    @match &v.reveal {
                        Some(Reveal::Mfa { qr_svg, secret }) => {
                            p { "Scan this code with an authenticator app, then enter the code it shows." }
                            div.qr { (PreEscaped(qr_svg)) }
                            p.hint { "Or type this key: " }
                            div.secret { (secret) }
                            form method="post" action="/account/mfa/confirm" {
                                (csrf(v.csrf_token))
                                label for="code" { "Code" }
                                input #code type="text" name="code" required inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code";
                                button type="submit" { "Turn on" }
                            }
                        }
                        _ => {
                            @if v.user.mfa_enabled {
                                p { span.badge.on { "On" } " Sign-in asks for a code from your authenticator app." }
                                form method="post" action="/account/mfa/disable" {
                                    (csrf(v.csrf_token))
                                    label for="off-code" { "Current code, to turn it off" }
                                    input #off-code type="text" name="code" required inputmode="numeric" pattern="[0-9]{6}" maxlength="6";
                                    button.secondary type="submit" { "Turn off" }
                                }
                            } @else {
                                p { span.badge.off { "Off" } " Protect your account with a second factor." }
                                form method="post" action="/account/mfa" {
                                    (csrf(v.csrf_token))
                                    button type="submit" { "Set up" }
                                }
                            }
                        }
                    }
                }
                section.card {
                    h2 { "Password" }
                    form method="post" action="/account/password" {
                        (csrf(v.csrf_token))
                        label for="current" { "Current password" }
                        input #current type="password" name="current_password" required autocomplete="current-password";
                        label for="new" { "New password" }
                        input #new type="password" name="new_password" required minlength="12" autocomplete="new-password";
                        button type="submit" { "Change password" }
                    }
                }
            }
            @if !p.mfa_enrollment_required {
                section.card {
                    h2 { "Sessions" }
                    div.table-wrap { table {
                        thead { tr { th { "Signed in" } th { "Last used" } th { "From" } th { "Browser" } } }
                        tbody {
                            @for s in v.sessions {
                                tr {
                                    td { (when(s.created_at)) @if s.id_hash == v.current_session { " " span.badge { "this one" } } }
                                    td { (when(s.last_used_at)) }
                                    td { (s.ip) }
                                    td { (s.user_agent) }
                                }
                            }
                        }
                    } }
                    form method="post" action="/account/logout-everywhere" {
                        (csrf(v.csrf_token))
                        button.danger type="submit" { "Sign out everywhere" }
                    }
                }
                @if authorize(Some(p), Action::ManageOwnApiTokens).is_ok() {
                    section.card {
                        h2 { "API tokens" }
                        @if let Some(Reveal::Token(t)) = &v.reveal {
                            div.flash.ok { "Copy the token now: it is not shown again." }
                            div.secret { (t) }
                        }
                        div.table-wrap { table {
                            thead { tr { th { "Name" } th { "Role" } th { "Created" } th { "Last used" } th {} } }
                            tbody {
                                @for t in v.tokens {
                                    tr {
                                        td { (t.name) }
                                        td { (t.role) }
                                        td { (when(t.created_at)) }
                                        td { (t.last_used_at.map(when).unwrap_or_else(|| "never".into())) }
                                        td {
                                            @if t.revoked_at.is_some() {
                                                span.badge.off { "revoked" }
                                            } @else {
                                                form.inline method="post" action={ "/account/api-tokens/" (t.id) "/revoke" } {
                                                    (csrf(v.csrf_token))
                                                    button.small.secondary type="submit" { "Revoke" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        } }
                        form method="post" action="/account/api-tokens" {
                            (csrf(v.csrf_token))
                            label for="token-name" { "New token name" }
                            input #token-name type="text" name="name" required maxlength="64";
                            label for="token-role" { "Role" }
                            select #token-role name="role" {
                                @for r in &roles { option value=(r) selected[*r == p.role] { (r) } }
                            }
                            label for="token-days" { "Expires after (days, 0 = never)" }
                            input #token-days type="number" name="expires_in_days" min="0" max="3650" value="90";
                            button type="submit" { "Create token" }
                        }
                    }
                }
            }
        },
    )
}

/// Everything the users page shows.
#[derive(Debug)]
pub struct UsersView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token (`None` for API-token callers, who see no forms).
    pub csrf_token: &'a str,
    /// Every user.
    pub users: &'a [User],
    /// A message.
    pub flash: Option<Flash>,
    /// A new invitation link, shown once.
    pub invite_link: Option<String>,
}

/// `/users`.
pub fn users(v: &UsersView<'_>) -> Markup {
    let p = v.principal;
    let manage = authorize(Some(p), Action::ManageUsers).is_ok();
    let assignable: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| crate::auth::authz::may_assign_role(p, None, *r).is_ok())
        .collect();
    page(
        "Users",
        Some(p),
        "/users",
        html! {
            h1 { "Users" }
            (flash(v.flash.as_ref()))
            @if let Some(link) = &v.invite_link {
                div.card {
                    h2 { "Invitation link" }
                    p.hint { "Send this link to the new user; it works once. It is not shown again." }
                    div.secret { (link) }
                }
            }
            div.card { div.table-wrap { table {
                thead { tr { th { "Name" } th { "Role" } th { "Status" } th { "MFA" } th { "Created" } @if manage { th { "Actions" } } } }
                tbody {
                    @for u in v.users {
                        tr {
                            td { (u.name) @if let Some(e) = &u.email { br; span.hint { (e) } } }
                            td { (u.role) }
                            td {
                                @if u.disabled { span.badge.off { "disabled" } }
                                @else if u.invited() { span.badge { "invited" } }
                                @else { span.badge.on { "active" } }
                            }
                            td { @if u.mfa_enabled { span.badge.on { "on" } } @else { span.badge { "off" } } }
                            td { (when(u.created_at)) }
                            @if manage {
                                td {
                                    @if u.id != p.user_id && u.role != Role::Owner {
                                        form.inline method="post" action={ "/users/" (u.id) } {
                                            (csrf(v.csrf_token))
                                            select name="op" aria-label="Action" {
                                                @for r in &assignable { @if *r != u.role { option value={ "role:" (r) } { "Make " (r) } } }
                                                @if u.disabled { option value="enable" { "Enable" } } @else { option value="disable" { "Disable" } }
                                                @if u.mfa_enabled { option value="mfa-reset" { "Reset MFA" } }
                                            }
                                            " "
                                            button.small type="submit" { "Apply" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } } }
            @if manage {
                div.card {
                    h2 { "Invite a user" }
                    form method="post" action="/users" {
                        (csrf(v.csrf_token))
                        label for="invite-name" { "Name" }
                        input #invite-name type="text" name="name" required maxlength="64";
                        label for="invite-email" { "E-mail (optional)" }
                        input #invite-email type="email" name="email";
                        label for="invite-role" { "Role" }
                        select #invite-role name="role" {
                            @for r in &assignable { option value=(r) selected[*r == Role::Viewer] { (r) } }
                        }
                        button type="submit" { "Create invitation" }
                    }
                }
            }
        },
    )
}

/// A refusal as a page.
pub fn forbidden(message: &str) -> Markup {
    page(
        "Not allowed",
        None,
        "",
        html! {
            div.card {
                h1 { "Not allowed" }
                p { (message) }
                p { a href="/account" { "Back to your account" } }
            }
        },
    )
}
