//! The alert pages: alerts (firing first) with their acknowledgement,
//! rules and channels with their forms, dead letters with their retry; and
//! the alert table the device page shows.

use std::net::IpAddr;

use maud::{Markup, html};
use rampart_store::{Alert, AlertChannel, AlertRule, AlertState, Delivery, RuleScope};

use super::layout::{Flash, flash, page};
use super::pages::{csrf, when};
use crate::alert_config::{ChannelRequest, RuleRequest};
use crate::auth::{Action, Principal, authorize};

/// The examples of the expression help text.
pub const EXPRESSION_EXAMPLES: [&str; 4] = [
    "temperature > 30 for 5m",
    "offline for 10m",
    "no-telemetry for 15m",
    "cert-expires within 30d",
];

/// Whether a subject is a device id (not a source address or a campaign),
/// so that it links to the device page.
pub fn is_device_subject(subject: &str) -> bool {
    !subject.contains(':')
        && subject.parse::<IpAddr>().is_err()
        && rampart_proto::DeviceId::parse(subject).is_ok()
}

fn state_badge(a: &Alert) -> Markup {
    html! {
        @match a.state {
            AlertState::Firing => span.badge.off { "firing" },
            AlertState::Resolved => span.badge.on { "resolved" },
            AlertState::Closed => span.badge { "closed" },
        }
    }
}

fn value(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

/// A table of alerts; `csrf_token` set when the caller may acknowledge.
pub fn alert_table(alerts: &[Alert], csrf_token: Option<&str>, empty: &str) -> Markup {
    html! {
        div.table-wrap { table.alerts {
            thead { tr { th { "Id" } th { "State" } th { "Rule" } th { "Subject" } th { "Fired" } th { "Resolved" } th { "Acknowledged" } } }
            tbody {
                @if alerts.is_empty() {
                    tr { td colspan="7" { span.hint { (empty) } } }
                }
                @for a in alerts {
                    tr {
                        td { (a.id) }
                        td { (state_badge(a)) }
                        td { strong { (a.rule) } br; code { (a.expr) } }
                        td.mono {
                            @if is_device_subject(&a.subject) {
                                a href={ "/devices/" (a.subject) } { (a.subject) }
                            } @else { (a.subject) }
                        }
                        td { (when(a.fired_at)) @if a.fired_value.is_some() { br; span.hint { (value(a.fired_value)) } } }
                        td { @if let Some(t) = a.resolved_at { (when(t)) } }
                        td {
                            @if let (Some(t), Some(by)) = (a.acked_at, &a.acked_by) {
                                (by) br; span.hint { (when(t)) }
                            } @else if let Some(token) = csrf_token {
                                @if a.state != AlertState::Closed {
                                    form.inline method="post" action={ "/alerts/" (a.id) "/acknowledge" } {
                                        (csrf(token))
                                        button.small.secondary type="submit" { "Acknowledge" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        } }
    }
}

/// Everything the alerts page shows.
#[derive(Debug)]
pub struct AlertsView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// The state filter (`all`, `firing`, `resolved`, `closed`).
    pub filter: &'a str,
    /// The subject filter.
    pub subject: &'a str,
    /// Firing alerts (shown first; empty under a state filter).
    pub firing: &'a [Alert],
    /// The rest: recent resolved and closed ones, or the filtered list.
    pub recent: &'a [Alert],
    /// A message.
    pub flash: Option<Flash>,
}

/// The state filters, by label.
const FILTERS: [(&str, &str); 4] = [
    ("all", "Firing and recent"),
    ("firing", "Firing"),
    ("resolved", "Resolved"),
    ("closed", "Closed"),
];

/// `/alerts`.
pub fn alerts(v: &AlertsView<'_>) -> Markup {
    let may_ack = authorize(Some(v.principal), Action::AcknowledgeAlerts).is_ok();
    let may_manage = authorize(Some(v.principal), Action::ManageAlerts).is_ok();
    let token = may_ack.then_some(v.csrf_token);
    page(
        "Alerts",
        Some(v.principal),
        "/alerts",
        html! {
            div.head-row {
                h1 { "Alerts" }
                @if may_manage {
                    div { a.button.secondary href="/alert-rules" { "Rules and channels" } " " a.button.secondary href="/alert-deliveries/dead" { "Dead letters" } }
                }
            }
            (flash(v.flash.as_ref()))
            nav.ranges aria-label="State" {
                @for (key, label) in FILTERS {
                    a class=[(v.filter == key).then_some("current")] href={ "/alerts?state=" (key) } { (label) }
                }
            }
            form.filters method="get" action="/alerts" {
                input type="hidden" name="state" value=(v.filter);
                div.field { label for="subject" { "Device or subject" } input #subject type="text" name="subject" value=(v.subject) maxlength="128"; }
                div.field { button.secondary type="submit" { "Filter" } }
            }
            @if v.filter == "all" {
                div.card #firing {
                    h2 { "Firing" }
                    (alert_table(v.firing, token, "No alert is firing."))
                }
                div.card #recent {
                    h2 { "Recently resolved" }
                    (alert_table(v.recent, token, "No resolved alerts yet."))
                }
            } @else {
                div.card #filtered {
                    (alert_table(v.recent, token, "No alerts in this state."))
                }
            }
        },
    )
}

/// Everything the rules and channels page shows.
#[derive(Debug)]
pub struct RulesView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// Every rule.
    pub rules: &'a [AlertRule],
    /// Every channel.
    pub channels: &'a [AlertChannel],
    /// A message.
    pub flash: Option<Flash>,
    /// A removal to confirm: (`rule` or `channel`, name).
    pub confirm: Option<(&'a str, &'a str)>,
    /// A refused rule, to fill its form again.
    pub rule_draft: Option<&'a RuleRequest>,
    /// A refused channel, to fill its form again (never its URL or secret).
    pub channel_draft: Option<&'a ChannelRequest>,
}

fn scope_text(s: &RuleScope) -> Markup {
    html! {
        @match s {
            RuleScope::Fleet => "every device",
            RuleScope::Owner(o) => { "owner " (o) },
            RuleScope::Device(d) => { "device " a href={ "/devices/" (d) } { (d) } },
        }
    }
}

/// `/alert-rules`.
pub fn rules(v: &RulesView<'_>) -> Markup {
    let r = v.rule_draft;
    let rv = |f: fn(&RuleRequest) -> &str| r.map_or("", f);
    let c = v.channel_draft;
    page(
        "Alert rules",
        Some(v.principal),
        "/alerts",
        html! {
            p.crumbs { a href="/alerts" { "Alerts" } " / rules and channels" }
            h1 { "Rules and channels" }
            p.hint.lead { "A rule watches devices (or the broker) and notifies a webhook channel when its condition starts and stops holding. Changes reach the running server within a second." }
            (flash(v.flash.as_ref()))
            @if let Some((what, name)) = v.confirm {
                div.card.confirm #confirm {
                    @if what == "rule" {
                        h2 { "Remove rule " (name) "?" }
                        p { "Its firing alerts are closed without a notification." }
                    } @else {
                        h2 { "Remove channel " (name) "?" }
                        p { "Notifications still waiting for it become dead letters. A channel that rules use cannot be removed." }
                    }
                    form method="post" action={ "/alert-" (what) "s/" (name) "/remove" } {
                        (csrf(v.csrf_token))
                        input type="hidden" name="confirm" value="yes";
                        div.actions {
                            button.danger type="submit" { "Yes, remove " (name) }
                            a.button.secondary href="/alert-rules" { "Cancel" }
                        }
                    }
                }
            }
            div.card #rules {
                h2 { "Rules" }
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Expression" } th { "Watches" } th { "Channel" } th { "Added" } th {} } }
                    tbody {
                        @if v.rules.is_empty() {
                            tr { td colspan="6" { span.hint { "No rules yet." } } }
                        }
                        @for r in v.rules {
                            tr {
                                td.mono { (r.name) }
                                td { code { (r.expr) } }
                                td { (scope_text(&r.scope)) }
                                td.mono { (r.channel) }
                                td { (when(r.created_at)) br; span.hint { (r.created_by) } }
                                td { a.button.small.secondary href={ "/alert-rules?remove-rule=" (r.name) "#confirm" } { "Remove…" } }
                            }
                        }
                    }
                } }
            }
            div.card #add-rule {
                h2 { "Add a rule" }
                @if v.channels.is_empty() {
                    p.hint { "Add a channel first: every rule notifies one." }
                } @else {
                    form method="post" action="/alert-rules" {
                        (csrf(v.csrf_token))
                        div.fields {
                            div {
                                label for="rule-name" { "Name" }
                                input #rule-name type="text" name="name" required maxlength="64" placeholder="e.g. greenhouse-hot" value=(rv(|r| &r.name));
                            }
                            div {
                                label for="rule-channel" { "Channel" }
                                select #rule-channel name="channel" {
                                    @for ch in v.channels { option value=(ch.name) selected[rv(|r| &r.channel) == ch.name] { (ch.name) } }
                                }
                            }
                        }
                        label for="rule-expr" { "Expression" }
                        input #rule-expr type="text" name="expr" required maxlength="200" placeholder=(EXPRESSION_EXAMPLES[0]) aria-describedby="expr-help" value=(rv(|r| &r.expr));
                        p.hint #expr-help {
                            "For example "
                            @for (i, e) in EXPRESSION_EXAMPLES.iter().enumerate() {
                                @if i > 0 { ", " }
                                code { (e) }
                            }
                            ". A threshold's metric must be one some device sends, unless you tick the box below."
                        }
                        div.fields {
                            div {
                                label for="rule-device" { "Only this device (optional)" }
                                input #rule-device type="text" name="device" maxlength="128" value=(rv(|r| r.device.as_deref().unwrap_or_default()));
                            }
                            div {
                                label for="rule-owner" { "Only devices of this owner (optional)" }
                                input #rule-owner type="text" name="owner" maxlength="128" placeholder="user:NAME" value=(rv(|r| r.owner.as_deref().unwrap_or_default()));
                            }
                        }
                        label.check { input type="checkbox" name="new_metric" value="yes" checked[r.is_some_and(|r| r.new_metric)]; " The metric is new: no device sends it yet" }
                        button type="submit" { "Add rule" }
                    }
                }
            }
            div.card #channels {
                h2 { "Channels" }
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Kind" } th { "Target" } th { "Per minute" } th { "Added" } th {} } }
                    tbody {
                        @if v.channels.is_empty() {
                            tr { td colspan="6" { span.hint { "No channels yet." } } }
                        }
                        @for c in v.channels {
                            tr {
                                td.mono { (c.name) }
                                td { (c.kind) @if c.signed { " " span.badge { "signed" } } }
                                td.mono { (c.target) @if c.allow_private { " " span.badge.off { "private allowed" } } }
                                td { (c.per_minute) }
                                td { (when(c.created_at)) br; span.hint { (c.created_by) } }
                                td { a.button.small.secondary href={ "/alert-rules?remove-channel=" (c.name) "#confirm" } { "Remove…" } }
                            }
                        }
                    }
                } }
            }
            div.card #add-channel {
                h2 { "Add a webhook channel" }
                form method="post" action="/alert-channels" autocomplete="off" {
                    (csrf(v.csrf_token))
                    div.fields {
                        div {
                            label for="channel-name" { "Name" }
                            input #channel-name type="text" name="name" required maxlength="64" placeholder="e.g. ops-discord" value=(c.map_or("", |c| c.name.as_str()));
                        }
                        div {
                            label for="channel-kind" { "Kind" }
                            select #channel-kind name="kind" {
                                @for (kind, label) in [("discord", "Discord"), ("slack", "Slack"), ("json", "Generic JSON")] {
                                    option value=(kind) selected[c.is_some_and(|c| c.kind == kind)] { (label) }
                                }
                            }
                        }
                        div {
                            label for="channel-rate" { "Deliveries per minute" }
                            input #channel-rate type="number" name="per_minute" min="1" max="600" value=(c.and_then(|c| c.per_minute).unwrap_or(crate::alert_config::DEFAULT_PER_MINUTE));
                        }
                    }
                    label for="channel-url" { "Webhook URL" }
                    input #channel-url type="password" name="url" required maxlength="2048" placeholder="https://…" autocomplete="off";
                    p.hint { "The URL is a secret: it is stored sealed and never shown again, only its scheme and host. It must be https and reach a public address." }
                    label for="channel-secret" { "Signing secret (generic JSON only, optional)" }
                    input #channel-secret type="password" name="secret" maxlength="256" autocomplete="off";
                    label.check.danger-flag {
                        input type="checkbox" name="allow_private" value="yes" checked[c.is_some_and(|c| c.allow_private)];
                        " "
                        strong { "Dangerous:" }
                        " allow plain http and private or loopback addresses (the server could then reach your internal network)"
                    }
                    button type="submit" { "Add channel" }
                }
            }
        },
    )
}

/// Everything the dead letters page shows.
#[derive(Debug)]
pub struct DeadView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// The dead letters, newest first.
    pub dead: &'a [Delivery],
    /// A message.
    pub flash: Option<Flash>,
}

/// `/alert-deliveries/dead`.
pub fn dead_letters(v: &DeadView<'_>) -> Markup {
    page(
        "Dead letters",
        Some(v.principal),
        "/alerts",
        html! {
            p.crumbs { a href="/alerts" { "Alerts" } " / dead letters" }
            h1 { "Dead letters" }
            p.hint.lead { "Notifications given up on after their retries. Retrying puts one back in the queue, due now." }
            (flash(v.flash.as_ref()))
            div.card { div.table-wrap { table #dead {
                thead { tr { th { "Id" } th { "Alert" } th { "Change" } th { "Rule" } th { "Subject" } th { "Attempts" } th { "Last error" } th {} } }
                tbody {
                    @if v.dead.is_empty() {
                        tr { td colspan="8" { span.hint { "No dead letters." } } }
                    }
                    @for d in v.dead {
                        tr {
                            td { (d.id) }
                            td { (d.alert_id) }
                            td { @if d.firing { span.badge.off { "firing" } } @else { span.badge.on { "resolved" } } br; span.hint { (when(d.at)) } }
                            td.mono { (d.rule) }
                            td.mono { (d.subject) }
                            td { (d.attempts) }
                            td { (d.last_error.as_deref().unwrap_or("")) }
                            td {
                                form.inline method="post" action={ "/alert-deliveries/" (d.id) "/retry" } {
                                    (csrf(v.csrf_token))
                                    button.small type="submit" { "Retry" }
                                }
                            }
                        }
                    }
                }
            } } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_subjects_link_to_a_device() {
        assert!(is_device_subject("sensor-1"));
        assert!(!is_device_subject("10.0.0.7"));
        assert!(!is_device_subject("::1"));
        assert!(!is_device_subject("campaign:4"));
    }
}
