//! The console's device pages: fleet overview, device list, device detail
//! (charts, presence, state, certificate, actions), claiming.

use maud::{Markup, PreEscaped, html};
use rampart_store::{DevicePage, DeviceSort, DeviceState, FleetSummary};
use time::OffsetDateTime;

use super::layout::{Flash, flash, page};
use crate::auth::{Action, Principal, authorize};
use crate::devices::{ClaimView, DeviceDetail, DeviceView, RejectedView};
use crate::routes::guard::CSRF_FIELD;
use rampart_store::telemetry::PresenceHistoryRecord;

fn when(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

fn when_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(when)
        .unwrap_or_default()
}

fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

fn state_badge(s: DeviceState) -> Markup {
    let class = match s {
        DeviceState::Bound => "badge on",
        DeviceState::Unbound => "badge",
        DeviceState::Disabled => "badge warn",
        DeviceState::Revoked => "badge off",
    };
    html! { span class=(class) { (s.as_str()) } }
}

fn online_badge(online: bool) -> Markup {
    html! {
        @if online { span.badge.on { "online" } } @else { span.badge { "offline" } }
    }
}

/// The script of the device and claim pages (served from `/static`).
pub(crate) fn script() -> Markup {
    html! { script src={ "/static/console.js?v=" (super::console_script_version()) } defer {} }
}

/// What the overview shows.
#[derive(Debug)]
pub struct FleetView<'a> {
    /// Counts.
    pub summary: &'a FleetSummary,
    /// Readings stored in the last full minute.
    pub per_minute: u64,
    /// Readings per minute over the last hour, oldest first (for the sparkline).
    pub per_minute_hour: &'a [(i64, u64)],
    /// Recent rejected payloads across the fleet, newest first.
    pub problems: &'a [(String, RejectedView)],
    /// Certificates expiring within 30 days.
    pub expiring: u64,
    /// Devices disabled or revoked.
    pub blocked: u64,
    /// Alerts firing, when the caller may read alerts.
    pub firing_alerts: Option<usize>,
}

/// `/`: the fleet at a glance.
pub fn fleet(p: &Principal, v: &FleetView<'_>) -> Markup {
    let s = v.summary;
    let count = |st: DeviceState| {
        s.by_state
            .iter()
            .find(|(x, _)| *x == st)
            .map_or(0, |(_, n)| *n)
    };
    let max = v
        .per_minute_hour
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
        .max(1);
    page(
        "Fleet",
        Some(p),
        "/",
        html! {
            h1 { "Fleet overview" }
            div.stats {
                a.stat href="/devices" { span.num { (s.total) } span.label { "devices" } }
                a.stat href="/devices?online=true" { span.num.ok { (s.online) } span.label { "online now" } }
                div.stat { span.num { (v.per_minute) } span.label { "messages / min" } }
                a.stat href="/devices?certExpiringDays=30" {
                    span class={ "num" @if v.expiring > 0 { " warn" } } { (v.expiring) }
                    span.label { "certificates expiring in 30 days" }
                }
            }
            div.grid {
                div.card {
                    h2 { "Devices by state" }
                    table {
                        tbody {
                            @for st in DeviceState::ALL {
                                tr {
                                    td { (state_badge(st)) }
                                    td.num { a href={ "/devices?state=" (st.as_str()) } { (count(st)) } }
                                }
                            }
                        }
                    }
                }
                div.card {
                    h2 { "Messages per minute, last hour" }
                    @if v.per_minute_hour.is_empty() {
                        p.hint { "No readings in the last hour." }
                    } @else {
                        div.spark role="img" aria-label="messages per minute over the last hour" {
                            @for (_, n) in v.per_minute_hour {
                                // Heights as classes (CSP forbids inline style): 0..10.
                                span class={ "h" ((n * 10).div_ceil(max)) } title=(n) {}
                            }
                        }
                    }
                }
            }
            div.card {
                h2 { "Recent problems" }
                @if let Some(n) = v.firing_alerts.filter(|n| *n > 0) {
                    p #firing-alerts { span.badge.off { (n) " firing" } " " a href="/alerts?state=firing" { (if n == 1 { "alert" } else { "alerts" }) } }
                }
                @if v.problems.is_empty() && v.blocked == 0 {
                    p.hint { "Nothing to report: no rejected messages recently." }
                } @else {
                    @if v.blocked > 0 {
                        p { (v.blocked) " device(s) disabled or revoked. " a href="/devices?state=disabled" { "Show disabled" } }
                    }
                    div.table-wrap {
                        table {
                            thead { tr { th { "When" } th { "Device" } th { "Problem" } th { "Detail" } } }
                            tbody {
                                @for (device, r) in v.problems {
                                    tr {
                                        td { (when_ms(r.at_ms)) }
                                        td { a href={ "/devices/" (device) } { (device) } }
                                        td { span.badge.off { (r.kind) } }
                                        td { (r.detail) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The list's current parameters, to rebuild links.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Search text.
    pub q: String,
    /// State filter.
    pub state: String,
    /// Online filter (`true`, `false`, "").
    pub online: String,
    /// Owner filter.
    pub owner: String,
    /// Certificate expiring within days.
    pub cert_expiring_days: String,
    /// Firmware version last reported.
    pub firmware: String,
    /// Sort.
    pub sort: DeviceSort,
    /// Descending.
    pub desc: bool,
}

impl ListParams {
    /// The query string for `offset` (and the same filters).
    pub fn link(&self, offset: u32, sort: DeviceSort, desc: bool) -> String {
        let mut s = format!(
            "/devices?sort={}&order={}",
            sort.as_str(),
            if desc { "desc" } else { "asc" }
        );
        for (k, v) in [
            ("q", &self.q),
            ("state", &self.state),
            ("online", &self.online),
            ("owner", &self.owner),
            ("certExpiringDays", &self.cert_expiring_days),
            ("firmware", &self.firmware),
        ] {
            if !v.is_empty() {
                s.push('&');
                s.push_str(k);
                s.push('=');
                s.push_str(&encode(v));
            }
        }
        if offset > 0 {
            s.push_str(&format!("&offset={offset}"));
        }
        s
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/devices`: search, filters, sortable columns, pages.
pub fn devices(
    p: &Principal,
    params: &ListParams,
    list: &DevicePage,
    message: Option<&Flash>,
) -> Markup {
    let first = if list.total == 0 {
        0
    } else {
        u64::from(list.offset) + 1
    };
    let last = u64::from(list.offset) + list.devices.len() as u64;
    let sort_link = |label: &str, sort: DeviceSort| {
        let desc = params.sort == sort && !params.desc;
        let mark = if params.sort == sort {
            if params.desc { " ↓" } else { " ↑" }
        } else {
            ""
        };
        html! { a href=(params.link(0, sort, desc)) { (label) (mark) } }
    };
    page(
        "Devices",
        Some(p),
        "/devices",
        html! {
            div.head-row {
                h1 { "Devices" }
                @if authorize(Some(p), Action::ClaimDevice).is_ok() {
                    a.button href="/claim" { "Claim a device" }
                }
            }
            (flash(message))
            form.filters.card method="get" action="/devices" {
                div.field.grow {
                    label for="q" { "Search" }
                    input #q type="search" name="q" value=(params.q) placeholder="Device id contains…" maxlength="128";
                }
                div.field {
                    label for="state" { "State" }
                    select #state name="state" {
                        option value="" { "Any" }
                        @for st in DeviceState::ALL {
                            option value=(st.as_str()) selected[params.state == st.as_str()] { (st.as_str()) }
                        }
                    }
                }
                div.field {
                    label for="online" { "Connection" }
                    select #online name="online" {
                        option value="" { "Any" }
                        option value="true" selected[params.online == "true"] { "Online" }
                        option value="false" selected[params.online == "false"] { "Offline" }
                    }
                }
                div.field {
                    label for="owner" { "Owner" }
                    input #owner type="text" name="owner" value=(params.owner) placeholder="user:name";
                }
                div.field {
                    label for="cert" { "Certificate expires within" }
                    select #cert name="certExpiringDays" {
                        option value="" { "Any time" }
                        @for d in ["7", "30", "90"] {
                            option value=(d) selected[params.cert_expiring_days == d] { (d) " days" }
                        }
                    }
                }
                div.field {
                    label for="firmware" { "Firmware" }
                    input #firmware type="text" name="firmware" value=(params.firmware) placeholder="1.4.2";
                }
                input type="hidden" name="sort" value=(params.sort.as_str());
                input type="hidden" name="order" value=(if params.desc { "desc" } else { "asc" });
                div.field { button type="submit" { "Apply" } }
            }
            div.card {
                p.hint { (first) "–" (last) " of " (list.total) " devices" }
                div.table-wrap {
                    table.devices {
                        thead {
                            tr {
                                th { (sort_link("Device", DeviceSort::Id)) }
                                th { "State" }
                                th { "Connection" }
                                th { (sort_link("Last seen", DeviceSort::LastSeen)) }
                                th { "Owner" }
                                th { (sort_link("Certificate expires", DeviceSort::CertExpiry)) }
                            }
                        }
                        tbody {
                            @for d in &list.devices {
                                tr {
                                    td { a href={ "/devices/" (d.id) } { (d.id) } }
                                    td { (state_badge(d.state)) }
                                    td { (online_badge(d.online)) }
                                    td { (d.last_seen.map(when).unwrap_or_else(|| "never".into())) }
                                    td { (d.owner.as_ref().map(ToString::to_string).unwrap_or_else(|| "—".into())) }
                                    td { (when(d.not_after)) }
                                }
                            }
                            @if list.devices.is_empty() {
                                tr { td colspan="6" { p.hint { "No device matches these filters." } } }
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if list.offset > 0 {
                        a.button.secondary href=(params.link(list.offset.saturating_sub(list.limit), params.sort, params.desc)) { "← Previous" }
                    }
                    @if last < list.total {
                        a.button.secondary href=(params.link(list.offset + list.limit, params.sort, params.desc)) { "Next →" }
                    }
                }
            }
        },
    )
}

/// The chart ranges offered.
pub const RANGES: &[(&str, &str)] = &[
    ("1h", "1 h"),
    ("24h", "24 h"),
    ("7d", "7 d"),
    ("30d", "30 d"),
];

/// What the device page shows besides the detail.
#[derive(Debug)]
pub struct DeviceExtras<'a> {
    /// The charts, rendered SVG, by title.
    pub charts: &'a [(String, String)],
    /// The range picked (`1h`...`30d` or `custom`).
    pub range: &'a str,
    /// Custom range text (from, to).
    pub custom: (&'a str, &'a str),
    /// The CSV link for the range.
    pub csv_href: String,
    /// Presence history, newest first.
    pub presence: &'a [PresenceHistoryRecord],
    /// A confirmation asked for: `disable`, `enable`, `revoke`.
    pub confirm: Option<&'a str>,
    /// The device's alerts (firing and recent), when the caller may read
    /// alerts.
    pub alerts: Option<&'a [rampart_store::Alert]>,
}

/// `/devices/{id}`.
pub fn device(
    p: &Principal,
    csrf_token: &str,
    d: &DeviceDetail,
    x: &DeviceExtras<'_>,
    message: Option<&Flash>,
) -> Markup {
    let dev: &DeviceView = &d.device;
    let id = dev.id.as_str();
    let may_disable = authorize(Some(p), Action::DisableDevice).is_ok();
    let may_revoke = authorize(Some(p), Action::RevokeDevice).is_ok();
    page(
        id,
        Some(p),
        "/devices",
        html! {
            div #device data-device=(id) data-range=(x.range) {
                p.crumbs { a href="/devices" { "Devices" } " / " (id) }
                div.head-row {
                    h1 { (id) }
                    div {
                        (state_badge(dev.state)) " "
                        span #presence-badge { (online_badge(dev.online)) }
                    }
                }
                (flash(message))
                @if let Some(what) = x.confirm {
                    (confirmation(id, csrf_token, what))
                }
                @if let Some(alerts) = x.alerts {
                    div.card #device-alerts {
                        div.head-row {
                            h2 { "Alerts" }
                            a href={ "/alerts?subject=" (id) } { "All alerts of " (id) }
                        }
                        (super::alerts::alert_table(
                            alerts,
                            authorize(Some(p), Action::AcknowledgeAlerts).is_ok().then_some(csrf_token),
                            "No alerts for this device.",
                        ))
                    }
                }
                div.card {
                    div.head-row {
                        h2 { "Telemetry" }
                        nav.ranges aria-label="Range" {
                            @for (key, label) in RANGES {
                                a class=[(x.range == *key).then_some("current")] href={ "/devices/" (id) "?range=" (key) } { (label) }
                            }
                        }
                    }
                    form.filters.custom method="get" action={ "/devices/" (id) } {
                        input type="hidden" name="range" value="custom";
                        div.field { label for="from" { "From" } input #from type="text" name="from" value=(x.custom.0) placeholder="-3d or 2026-11-20T00:00:00Z"; }
                        div.field { label for="to" { "To" } input #to type="text" name="to" value=(x.custom.1) placeholder="now"; }
                        div.field { button.secondary type="submit" { "Show" } }
                    }
                    p.hint #live-status { "Latest: " span #latest { "waiting for readings…" } }
                    div #charts {
                        @for (title, svg) in x.charts {
                            figure.chart {
                                figcaption { (title) }
                                (PreEscaped(svg))
                            }
                        }
                    }
                    p { a href=(x.csv_href) download { "Download CSV" } " · raw points of this range" }
                }
                div.grid {
                    div.card {
                        h2 { "Device" }
                        dl.facts {
                            dt { "State" } dd { (dev.state.as_str()) }
                            dt { "Owner" } dd { (dev.owner.as_deref().unwrap_or("— (unclaimed)")) }
                            dt { "Last seen" } dd #last-seen { (dev.last_seen.map(when).unwrap_or_else(|| "never".into())) }
                            dt { "Registered" } dd { (when(dev.created_at)) }
                            dt { "Readings stored" } dd { (d.telemetry.readings) }
                            dt { "Rejected" } dd { (d.telemetry.rejected) }
                            @if let Some(reason) = &d.telemetry.flag_reason {
                                dt { "Flagged" } dd.warn { (reason) }
                            }
                        }
                        @if may_disable || may_revoke {
                            div.actions {
                                @if may_disable && matches!(dev.state, DeviceState::Bound | DeviceState::Unbound) {
                                    a.button.secondary href={ "/devices/" (id) "?confirm=disable#confirm" } { "Disable" }
                                }
                                @if may_disable && dev.state == DeviceState::Disabled {
                                    a.button.secondary href={ "/devices/" (id) "?confirm=enable#confirm" } { "Enable" }
                                }
                                @if may_revoke && dev.state != DeviceState::Revoked {
                                    a.button.danger href={ "/devices/" (id) "?confirm=revoke#confirm" } { "Revoke…" }
                                }
                            }
                        }
                    }
                    div.card {
                        h2 { "Certificate" }
                        @if let Some(c) = &d.certificate {
                            dl.facts {
                                dt { "Status" } dd { (c.status.as_str()) }
                                dt { "Serial" } dd.mono { (c.serial) }
                                dt { "Fingerprint (SHA-256)" } dd.mono { (c.fingerprint) }
                                dt { "Valid from" } dd { (when(c.not_before)) }
                                dt { "Expires" } dd { (when(c.not_after)) }
                            }
                        } @else {
                            dl.facts {
                                dt { "Serial" } dd.mono { (dev.serial) }
                                dt { "Fingerprint (SHA-256)" } dd.mono { (dev.fingerprint) }
                                dt { "Expires" } dd { (when(dev.cert_expires_at)) }
                            }
                        }
                    }
                }
                div.grid {
                    div.card {
                        h2 { "Reported state" }
                        @match (&d.reported_state, d.reported_at_ms) {
                            (Some(v), Some(at)) => {
                                p.hint { "Reported " (when_ms(at)) }
                                pre.state { (serde_json::to_string_pretty(v).unwrap_or_default()) }
                            }
                            _ => { p.hint { "The device has not reported its state yet." } }
                        }
                    }
                    div.card {
                        h2 { "Presence" }
                        @if x.presence.is_empty() {
                            p.hint { "No connection recorded yet." }
                        } @else {
                            div.table-wrap {
                                table {
                                    tbody #presence {
                                        @for e in x.presence.iter().take(15) {
                                            tr {
                                                td { (when_ms(e.at_ms)) }
                                                td { (online_badge(e.online)) }
                                                td { (e.reason.as_deref().unwrap_or("")) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                div.card {
                    h2 { "Last rejected payloads" }
                    @if d.rejected.is_empty() {
                        p.hint { "None: every message from this device was accepted." }
                    } @else {
                        div.table-wrap {
                            table {
                                thead { tr { th { "When" } th { "Kind" } th { "Detail" } th { "Size" } } }
                                tbody {
                                    @for r in &d.rejected {
                                        tr { td { (when_ms(r.at_ms)) } td { span.badge.off { (r.kind) } } td { (r.detail) } td { (r.payload_len) " B" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (script())
        },
    )
}

fn confirmation(id: &str, csrf_token: &str, what: &str) -> Markup {
    let (title, text, class) = match what {
        "disable" => (
            "Disable this device?",
            "It is disconnected and cannot connect until it is enabled again. Its certificate stays valid.",
            "secondary",
        ),
        "enable" => (
            "Enable this device?",
            "It may connect again with its certificate.",
            "secondary",
        ),
        _ => (
            "Revoke this device?",
            "Its certificate is revoked and published on the CRL; it is disconnected and can never connect with it again. This cannot be undone.",
            "danger",
        ),
    };
    html! {
        div.card.confirm #confirm {
            h2 { (title) }
            p { (text) }
            form method="post" action={ "/devices/" (id) "/" (what) } {
                (csrf(csrf_token))
                input type="hidden" name="confirm" value="yes";
                @if what == "revoke" {
                    label for="reason" { "Reason" }
                    select #reason name="reason" {
                        option value="unspecified" { "Unspecified" }
                        option value="key-compromise" { "Key compromise" }
                        option value="cessation-of-operation" { "Decommissioned" }
                        option value="privilege-withdrawn" { "Privilege withdrawn" }
                        option value="affiliation-changed" { "Affiliation changed" }
                    }
                }
                div.actions {
                    button class=(class) type="submit" { "Yes, " (what) " " (id) }
                    a.button.secondary href={ "/devices/" (id) } { "Cancel" }
                }
            }
        }
    }
}

/// `/claim`: paste or scan the label, then follow the claim.
pub fn claim(
    p: &Principal,
    csrf_token: &str,
    qr: &str,
    claim: Option<&ClaimView>,
    message: Option<&Flash>,
) -> Markup {
    page(
        "Claim a device",
        Some(p),
        "/claim",
        html! {
            h1 { "Claim a device" }
            (flash(message))
            @if let Some(c) = claim {
                div.card #claim-status data-claim=(c.id) data-status=(c.status.to_string()) {
                    h2 { "Claim of " (c.device) }
                    @match c.status.to_string().as_str() {
                        "pending" => {
                            p.pending { span.spinner {} "Waiting for " strong { (c.device) } " to confirm… The device must be online; it answers within seconds." }
                            p.hint { "The claim expires at " (when(c.expires_at)) "." }
                            noscript { p { a href={ "/claim?id=" (c.id) } { "Refresh" } } }
                        }
                        "bound" => {
                            div.flash.ok { "Done: " (c.device) " is now yours (" (c.owner) ")." }
                            p { a.button href={ "/devices/" (c.device) } { "Open " (c.device) } }
                        }
                        _ => {
                            div.flash.error { (c.message.as_deref().unwrap_or("The claim failed.")) }
                            p { a.button.secondary href="/claim" { "Try again" } }
                        }
                    }
                    p.hint #claim-message {}
                }
            }
            div.card {
                h2 { "Scan or paste the label" }
                p.hint { "The QR code on the device's label holds its id, certificate fingerprint and claim code. Scan it with your camera, or paste what a QR reader shows." }
                div #scanner hidden {
                    button.secondary #scan-start type="button" { "Scan with camera" }
                    video #scan-video playsinline muted hidden {}
                    p.hint #scan-hint {}
                }
                form method="post" action="/claim" #claim-form {
                    (csrf(csrf_token))
                    label for="qr" { "Label content" }
                    textarea #qr name="qr" rows="3" placeholder="{\"deviceId\":\"…\",\"fingerprint\":\"…\",\"claimCode\":\"…\"}" { (qr) }
                    p.hint { "Or type the id and code printed on the label:" }
                    div.grid.two {
                        div { label for="device_id" { "Device id" } input #device_id type="text" name="device_id" autocomplete="off"; }
                        div { label for="claim_code" { "Claim code" } input #claim_code type="text" name="claim_code" autocomplete="off"; }
                    }
                    button type="submit" { "Claim" }
                }
            }
            (script())
        },
    )
}

/// A refusal or failure on a console page, inside the layout.
pub fn problem(p: &Principal, status: u16, message: &str) -> Markup {
    let title = match status {
        404 => "Not found",
        400..=499 => "Cannot do that",
        _ => "Something went wrong",
    };
    page(
        title,
        Some(p),
        "",
        html! {
            div.card {
                h1 { (title) }
                p { (message) }
                p { a href="/devices" { "Back to the devices" } }
            }
        },
    )
}

/// What the notifications page shows.
#[derive(Debug)]
pub struct NotificationsView<'a> {
    /// Who is signed in.
    pub principal: &'a Principal,
    /// Their session's CSRF token.
    pub csrf_token: &'a str,
    /// One page, newest first.
    pub notifications: &'a [rampart_store::Notification],
    /// Unread in all pages.
    pub unread: u64,
    /// The cursor of the next page.
    pub next_before: Option<u64>,
    /// A query string that could not be read (the first page is shown).
    pub problem: Option<String>,
}

/// `/notifications`: newest first, unread ones marked, "mark all read".
pub fn notifications(v: &NotificationsView<'_>) -> Markup {
    let newest = v.notifications.first().map(|n| n.id);
    page(
        "Notifications",
        Some(v.principal),
        "/notifications",
        html! {
            h1 { "Notifications" }
            @if let Some(problem) = &v.problem {
                (flash(Some(&Flash::error(problem.clone()))))
            }
            div.card {
                p #notify-summary {
                    @match v.unread {
                        0 => "Nothing unread.",
                        1 => "1 unread notification.",
                        n => { (n) " unread notifications." },
                    }
                }
                @if v.unread > 0 {
                    form method="post" action="/notifications/read" {
                        (csrf(v.csrf_token))
                        @if let Some(id) = newest { input type="hidden" name="up_to" value=(id); }
                        button type="submit" { "Mark all read" }
                    }
                }
            }
            div.card {
                @if v.notifications.is_empty() {
                    p.hint { "No notifications yet. Claims you start tell you here when they finish." }
                } @else {
                    ul.notifications {
                        @for n in v.notifications {
                            li class=[n.read_at.is_none().then_some("unread")] data-kind=(n.kind) {
                                div.head {
                                    @if n.read_at.is_none() { span.badge.on { "new" } " " }
                                    @if let Some(link) = &n.link {
                                        a href=(link) { strong { (n.title) } }
                                    } @else {
                                        strong { (n.title) }
                                    }
                                    span.hint { " · " (when(n.created_at)) }
                                }
                                @if !n.body.is_empty() { p { (n.body) } }
                            }
                        }
                    }
                }
            }
            @if let Some(b) = v.next_before {
                p { a.button.secondary href={ "/notifications?before=" (b) } { "Older notifications" } }
            }
        },
    )
}
