//! The layout every console page shares: header with the product name and
//! navigation, the main column, the stylesheet. Later pages (fleet,
//! devices, audit) render their content into [`page`].

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::auth::{Action, Principal, authorize};

/// A navigation entry: label, path, the action it needs.
const NAV: &[(&str, &str, Action)] = &[
    ("Overview", "/", Action::ReadDevices),
    ("Devices", "/devices", Action::ReadDevices),
    ("Claim", "/claim", Action::ClaimDevice),
    ("Firmware", "/firmware", Action::ReadFirmware),
    ("Campaigns", "/campaigns", Action::ReadCampaigns),
    ("Alerts", "/alerts", Action::ReadAlerts),
    ("Account", "/account", Action::ReadOwnAccount),
    ("Users", "/users", Action::ReadUsers),
    (
        "Enroll tokens",
        "/enroll-tokens",
        Action::ManageEnrollmentTokens,
    ),
    ("Services", "/services", Action::ReadServices),
    ("Audit", "/audit", Action::ReadAudit),
];

/// The full page: `title`, the signed-in `principal` (for the navigation,
/// which shows only what they may open), the `current` path, the content.
pub fn page(title: &str, principal: Option<&Principal>, current: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Rampart" }
                link rel="stylesheet" href={ "/static/app.css?v=" (super::stylesheet_version()) };
            }
            body {
                header.top {
                    div.bar {
                        a.brand href="/" { span.mark {} "Rampart" }
                        @if let Some(p) = principal {
                            nav.main aria-label="Main" {
                                @for (label, path, action) in NAV {
                                    @if authorize(Some(p), *action).is_ok() {
                                        a class=[(current == *path).then_some("current")] href=(path) { (label) }
                                    }
                                }
                            }
                            (bell(p, current))
                            span.who { (p.name) " · " (p.role) " · " a href="/logout" { "Sign out" } }
                        }
                    }
                }
                @if principal.is_some() {
                    main { (content) }
                } @else {
                    main.narrow { (content) }
                }
                footer { "Rampart · self-hosted IoT platform" }
            }
        }
    }
}

/// A bell, drawn in the text colour (inline SVG: no image request).
const BELL_ICON: PreEscaped<&str> = PreEscaped(
    r#"<svg class="icon" aria-hidden="true" width="20" height="20" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/><path d="M13.7 21a2 2 0 0 1-3.4 0"/></svg>"#,
);

/// The notifications bell with its unread count (`console.js` then follows
/// `/api/v1/notifications/events`).
fn bell(p: &Principal, current: &str) -> Markup {
    let unread = p.unread_notifications.unwrap_or(0);
    let label = match unread {
        0 => "Notifications, none unread".to_owned(),
        1 => "Notifications, 1 unread".to_owned(),
        n => format!("Notifications, {n} unread"),
    };
    html! {
        a.bell #notify-bell class=[(current == "/notifications").then_some("current")]
            href="/notifications" title=(label) aria-label=(label) {
            (BELL_ICON)
            span.count #notify-badge data-unread=(unread) hidden[unread == 0] {
                @if unread > 99 { "99+" } @else { (unread) }
            }
        }
    }
}

/// A message box above a form: an error or a confirmation.
pub fn flash(message: Option<&Flash>) -> Markup {
    html! {
        @if let Some(f) = message {
            div class={ "flash " (if f.ok { "ok" } else { "error" }) } role="status" { (f.text) }
        }
    }
}

/// A message to show once on a page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// Confirmation (`true`) or error.
    pub ok: bool,
    /// The text.
    pub text: String,
}

impl Flash {
    /// An error message.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            ok: false,
            text: text.into(),
        }
    }

    /// A confirmation.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            ok: true,
            text: text.into(),
        }
    }
}
