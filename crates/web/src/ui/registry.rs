//! The pages of enrollment tokens, service identities and the audit log.

use maud::{Markup, html};
use rampart_pki::RevocationReason;
use rampart_store::{EnrollmentToken, Service, ServiceState};
use time::OffsetDateTime;

use super::layout::{Flash, flash, page};
use super::pages::{csrf, when};
use crate::auth::{Action, Principal, authorize};
use crate::routes::registry::{AuditPage, AuditQuery};

/// Everything the enrollment tokens page shows.
#[derive(Debug)]
pub struct EnrollTokensView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// Every token.
    pub tokens: &'a [EnrollmentToken],
    /// Now, for each token's state.
    pub now: OffsetDateTime,
    /// A message.
    pub flash: Option<Flash>,
    /// A token just created, shown once.
    pub secret: Option<String>,
}

/// `/enroll-tokens`.
pub fn enroll_tokens(v: &EnrollTokensView<'_>) -> Markup {
    page(
        "Enrollment tokens",
        Some(v.principal),
        "/enroll-tokens",
        html! {
            h1 { "Enrollment tokens" }
            p.hint.lead { "A device presents a token with its certificate request to register itself (POST /api/v1/enroll). Only a hash of each token is kept." }
            (flash(v.flash.as_ref()))
            @if let Some(secret) = &v.secret {
                div.card #new-token {
                    h2 { "New token" }
                    p { "Copy the token now: it is not shown again." }
                    div.secret { (secret) }
                }
            }
            div.card { div.table-wrap { table {
                thead { tr { th { "Id" } th { "State" } th { "Uses" } th { "Expires" } th { "Id prefix" } th { "Owner" } th { "Created by" } th {} } }
                tbody {
                    @if v.tokens.is_empty() {
                        tr { td colspan="8" { span.hint { "No tokens yet." } } }
                    }
                    @for t in v.tokens.iter().rev() {
                        @let state = t.state(v.now).as_str();
                        tr {
                            td.mono { (t.id) }
                            td { span class={ "badge " (if state == "active" { "on" } else { "off" }) } { (state) } }
                            td { (t.uses_used) " / " (t.uses_allowed) }
                            td { (when(t.expires_at)) }
                            td { (t.id_prefix.as_deref().unwrap_or("any")) }
                            td { (t.owner.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into())) }
                            td { (t.created_by) }
                            td {
                                @if t.revoked_at.is_none() {
                                    form.inline method="post" action={ "/enroll-tokens/" (t.id) "/revoke" } {
                                        (csrf(v.csrf_token))
                                        button.small.secondary type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            } } }
            div.card {
                h2 { "Create a token" }
                form method="post" action="/enroll-tokens" {
                    (csrf(v.csrf_token))
                    div.fields {
                        div {
                            label for="uses" { "Devices it may register" }
                            input #uses type="number" name="uses" min="1" max="1000000" value="1";
                        }
                        div {
                            label for="hours" { "Valid for (hours)" }
                            input #hours type="number" name="expires_in_hours" min="1" max="8784" value="24";
                        }
                        div {
                            label for="prefix" { "Device id prefix (optional)" }
                            input #prefix type="text" name="id_prefix" maxlength="64" placeholder="e.g. sensor-";
                        }
                        div {
                            label for="owner" { "Owner of the devices (optional)" }
                            input #owner type="text" name="owner" maxlength="128";
                        }
                    }
                    button type="submit" { "Create token" }
                }
            }
        },
    )
}

/// A service just created: its credentials, shown once.
#[derive(Debug)]
pub struct ServiceReveal {
    /// Its name.
    pub name: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// Certificate chain, PEM.
    pub certificate_pem: String,
    /// CA bundle, PEM.
    pub ca_pem: String,
}

/// Everything the services page shows.
#[derive(Debug)]
pub struct ServicesView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// Every service.
    pub services: &'a [Service],
    /// A message.
    pub flash: Option<Flash>,
    /// A service just created.
    pub reveal: Option<ServiceReveal>,
}

/// `/services`.
pub fn services(v: &ServicesView<'_>) -> Markup {
    let manage = authorize(Some(v.principal), Action::ManageServices).is_ok();
    page(
        "Services",
        Some(v.principal),
        "/services",
        html! {
            h1 { "Service identities" }
            p.hint.lead { "Back-end services connect to the broker with their own certificate, like devices, and may read and command every device." }
            (flash(v.flash.as_ref()))
            @if let Some(r) = &v.reveal {
                div.card #new-service {
                    h2 { "Credentials of " (r.name) }
                    p { "Copy these now: the private key is not kept and not shown again." }
                    h3 { "Private key" }
                    pre.secret { (r.key_pem) }
                    h3 { "Certificate" }
                    pre.secret { (r.certificate_pem) }
                    h3 { "CA bundle" }
                    pre.secret { (r.ca_pem) }
                }
            }
            div.card { div.table-wrap { table {
                thead { tr { th { "Name" } th { "State" } th { "Certificate expires" } th { "Fingerprint" } th { "Created" } @if manage { th {} } } }
                tbody {
                    @if v.services.is_empty() {
                        tr { td colspan="6" { span.hint { "No services yet." } } }
                    }
                    @for s in v.services {
                        tr {
                            td.mono { (s.id) }
                            td {
                                @if s.state == ServiceState::Active { span.badge.on { "active" } }
                                @else { span.badge.off { "revoked" } }
                            }
                            td { (when(s.not_after)) }
                            td.mono { (s.fingerprint.get(..23).unwrap_or(&s.fingerprint)) "…" }
                            td { (when(s.created_at)) }
                            @if manage {
                                td {
                                    @if s.state == ServiceState::Active {
                                        form.inline method="post" action={ "/services/" (s.id) "/revoke" } {
                                            (csrf(v.csrf_token))
                                            select name="reason" aria-label="Reason" {
                                                @for r in RevocationReason::ALL {
                                                    option value=(r.as_str()) selected[r == RevocationReason::CessationOfOperation] { (r.as_str()) }
                                                }
                                            }
                                            " "
                                            button.small.danger type="submit" { "Revoke" }
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
                    h2 { "Create a service" }
                    form method="post" action="/services" {
                        (csrf(v.csrf_token))
                        label for="service-name" { "Name" }
                        input #service-name type="text" name="name" required maxlength="64" placeholder="e.g. billing-exporter";
                        p.hint { "Letters, digits, '-' and '_'. The name is the certificate's CN and the MQTT client id." }
                        button type="submit" { "Create service" }
                    }
                }
            }
        },
    )
}

/// Everything the audit page shows.
#[derive(Debug)]
pub struct AuditView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// The filter in force.
    pub query: &'a AuditQuery,
    /// The rows, unless the filter was refused.
    pub page: Option<&'a AuditPage>,
    /// A message.
    pub flash: Option<Flash>,
}

fn older_link(q: &AuditQuery, before: u64) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("action", &q.action),
        ("actor", &q.actor),
        ("subject", &q.subject),
        ("since", &q.since),
        ("until", &q.until),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            pairs.push((k, v.to_owned()));
        }
    }
    if let Some(l) = q.limit {
        pairs.push(("limit", l.to_string()));
    }
    pairs.push(("before", before.to_string()));
    let query: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", percent(&v)))
        .collect();
    format!("/audit?{}", query.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/audit`.
pub fn audit(v: &AuditView<'_>) -> Markup {
    let q = v.query;
    let val = |o: &Option<String>| o.clone().unwrap_or_default();
    page(
        "Audit log",
        Some(v.principal),
        "/audit",
        html! {
            h1 { "Audit log" }
            (flash(v.flash.as_ref()))
            @if let Some(p) = v.page {
                @if p.chain.ok {
                    div.flash.ok #chain role="status" {
                        "Chain verified: " (p.chain.rows) " entries, none altered or missing. "
                        a href="/audit?full=true" { "Verify the whole chain again" }
                    }
                } @else {
                    div.flash.error #chain role="alert" {
                        "The chain does NOT verify after " (p.chain.rows) " entries"
                        @if let Some(b) = &p.chain.first_break { ": entry " (b.seq) ": " (b.problem) }
                        ". The log may have been tampered with."
                    }
                }
            }
            div.card {
                form.filters method="get" action="/audit" {
                    div.fields {
                        div { label for="f-action" { "Action" } input #f-action type="text" name="action" value=(val(&q.action)) placeholder="user. or device.revoke"; }
                        div { label for="f-actor" { "Actor" } input #f-actor type="text" name="actor" value=(val(&q.actor)); }
                        div { label for="f-subject" { "Subject" } input #f-subject type="text" name="subject" value=(val(&q.subject)); }
                        div { label for="f-since" { "From (UTC)" } input #f-since type="text" name="since" value=(val(&q.since)) placeholder="2026-01-31T00:00:00Z"; }
                        div { label for="f-until" { "Until (UTC)" } input #f-until type="text" name="until" value=(val(&q.until)) placeholder="2026-02-01T00:00:00Z"; }
                    }
                    button type="submit" { "Filter" }
                    " "
                    a.button.secondary href="/audit" { "Clear" }
                }
            }
            @if let Some(p) = v.page {
                div.card { div.table-wrap { table.audit {
                    thead { tr { th { "#" } th { "When" } th { "Action" } th { "Actor" } th { "Subject" } th { "From" } th { "Detail" } } }
                    tbody {
                        @if p.entries.is_empty() {
                            tr { td colspan="7" { span.hint { "No entries match." } } }
                        }
                        @for r in &p.entries {
                            tr {
                                td { (r.seq) }
                                td { (when(r.at)) }
                                td.mono { (r.action) }
                                td { (r.actor) }
                                td.mono { (r.subject.as_deref().unwrap_or("")) }
                                td { (r.source) }
                                td.mono.detail { (r.detail.to_string()) }
                            }
                        }
                    }
                } } }
                @if let Some(b) = p.next_before {
                    p { a.button.secondary href=(older_link(q, b)) { "Older entries" } }
                }
            }
        },
    )
}
