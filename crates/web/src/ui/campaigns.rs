//! The campaign pages: the list, one campaign (progress per state, waves,
//! thresholds, devices, actions with confirmation) and the new-campaign
//! form. Progress bars are `<progress>` elements: no inline style, which
//! the CSP forbids.

use maud::{Markup, html};
use rampart_ota::campaign::{CampaignStatus, EntryState, StateCounts, WaveProgress};
use rampart_span::format as dur;
use rampart_store::Firmware;
use rampart_store::campaigns::{Campaign, CampaignTarget, EntryPage, EntryQuery};

use super::layout::{Flash, flash, page};
use super::pages::{csrf, when};
use crate::auth::{Action, Principal, authorize};

fn status_badge(s: CampaignStatus) -> Markup {
    let class = match s {
        CampaignStatus::Running | CampaignStatus::Completed => "badge on",
        CampaignStatus::Aborted | CampaignStatus::Cancelled => "badge off",
        CampaignStatus::Paused => "badge warn",
        CampaignStatus::Draft => "badge",
    };
    html! { span class=(class) { (s.as_str()) } }
}

fn state_badge(s: EntryState) -> Markup {
    let class = match s {
        EntryState::Succeeded => "badge on",
        EntryState::Failed | EntryState::RolledBack => "badge off",
        EntryState::Cancelled => "badge warn",
        _ => "badge",
    };
    html! { span class=(class) { (s.as_str()) } }
}

/// `done / total` in one bar: succeeded over all devices.
fn overall(counts: &StateCounts) -> Markup {
    let total = counts.total();
    html! {
        progress value=(counts.succeeded) max=(total.max(1)) { (counts.succeeded) " of " (total) }
        span.hint { " " (counts.succeeded) " / " (total) " succeeded" @if counts.failures() > 0 { ", " (counts.failures()) " failed" } }
    }
}

fn target(t: &CampaignTarget) -> String {
    match t {
        CampaignTarget::All => "every device of the type".to_owned(),
        CampaignTarget::State(s) => format!("{s} devices of the type"),
        CampaignTarget::Devices(ids) => format!("{} listed device(s)", ids.len()),
    }
}

fn pct(f: f64) -> String {
    format!("{:.0} %", f * 100.0)
}

/// `/campaigns`.
pub fn campaigns(
    p: &Principal,
    list: &[(Campaign, StateCounts)],
    message: Option<&Flash>,
) -> Markup {
    let may_create = authorize(Some(p), Action::StartCampaigns).is_ok();
    page(
        "Campaigns",
        Some(p),
        "/campaigns",
        html! {
            div.head-row {
                h1 { "Update campaigns" }
                @if may_create { a.button href="/campaigns/new" { "New campaign" } }
            }
            p.hint.lead { "A campaign rolls one uploaded firmware out to devices of its type in waves, pausing or aborting itself at its thresholds." }
            (flash(message))
            div.card { div.table-wrap { table #campaign-list {
                thead { tr { th { "Campaign" } th { "Status" } th { "Progress" } th { "Firmware" } th { "Wave" } th { "Created" } } }
                tbody {
                    @if list.is_empty() {
                        tr { td colspan="6" { span.hint { "No campaigns yet." } } }
                    }
                    @for (c, counts) in list {
                        tr {
                            td { a href={ "/campaigns/" (c.id) } { (c.name) } span.hint { " #" (c.id) } }
                            td { (status_badge(c.status)) }
                            td { (overall(counts)) }
                            td.mono { (c.version) " · " (c.device_type) }
                            td { (c.current_wave) " / " (c.waves.len()) }
                            td { (when(c.created_at)) " · " (c.created_by) }
                        }
                    }
                }
            } } }
        },
    )
}

/// Everything one campaign's page shows.
#[derive(Debug)]
pub struct CampaignView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token.
    pub csrf_token: &'a str,
    /// The campaign.
    pub campaign: &'a Campaign,
    /// Its waves.
    pub waves: &'a [WaveProgress],
    /// Its devices per state.
    pub counts: &'a StateCounts,
    /// One page of its devices.
    pub entries: &'a EntryPage,
    /// The filter of that page.
    pub query: &'a EntryQuery,
    /// An action waiting for confirmation.
    pub confirm: Option<&'a str>,
    /// A message.
    pub flash: Option<Flash>,
}

/// Which actions the status allows, and who may take them.
fn actions(status: CampaignStatus) -> &'static [&'static str] {
    match status {
        CampaignStatus::Draft => &["approve", "cancel"],
        CampaignStatus::Running => &["pause", "cancel"],
        CampaignStatus::Paused => &["resume", "cancel"],
        _ => &[],
    }
}

fn action_needs(what: &str) -> Action {
    match what {
        "pause" | "cancel" => Action::StopCampaigns,
        _ => Action::StartCampaigns,
    }
}

fn action_label(what: &str) -> &'static str {
    match what {
        "approve" => "Approve and start",
        "pause" => "Pause",
        "resume" => "Resume",
        _ => "Emergency stop (cancel)",
    }
}

fn confirmation(id: u64, csrf_token: &str, what: &str) -> Markup {
    let (title, text, class) = match what {
        "approve" => (
            "Approve this campaign?",
            "It starts running: the first wave is offered the update within seconds.",
            "",
        ),
        "pause" => (
            "Pause this campaign?",
            "No further devices are offered the update. Devices already updating finish and report.",
            "secondary",
        ),
        "resume" => (
            "Resume this campaign?",
            "It runs again; after a pause at the success threshold, the current wave is accepted and the next may start.",
            "",
        ),
        _ => (
            "Emergency stop: cancel this campaign?",
            "No further offers. Devices not yet offered are cancelled; devices downloading are told to stop and discard the download. Devices that already switched to the new image finish. This cannot be undone.",
            "danger",
        ),
    };
    html! {
        div.card.confirm #confirm {
            h2 { (title) }
            p { (text) }
            form method="post" action={ "/campaigns/" (id) "/" (what) } {
                (csrf(csrf_token))
                input type="hidden" name="confirm" value="yes";
                div.actions {
                    button class=(class) type="submit" { "Yes, " (action_label(what).to_lowercase()) }
                    a.button.secondary href={ "/campaigns/" (id) } { "Back" }
                }
            }
        }
    }
}

fn page_link(id: u64, q: &EntryQuery, offset: u32) -> String {
    let mut url = format!("/campaigns/{id}?offset={offset}");
    if let Some(s) = q.state {
        url.push_str("&state=");
        url.push_str(s.as_str());
    }
    if let Some(w) = q.wave {
        url.push_str(&format!("&wave={w}"));
    }
    url.push_str("#devices");
    url
}

/// `/campaigns/{id}`.
pub fn campaign(v: &CampaignView<'_>) -> Markup {
    let c = v.campaign;
    let total = v.counts.total().max(1);
    let allowed: Vec<&str> = actions(c.status)
        .iter()
        .copied()
        .filter(|a| authorize(Some(v.principal), action_needs(a)).is_ok())
        .collect();
    let size = v.query.page_size();
    page(
        &format!("Campaign {}", c.id),
        Some(v.principal),
        "/campaigns",
        html! {
            p { a href="/campaigns" { "← Campaigns" } }
            h1 { (c.name) " " (status_badge(c.status)) }
            (flash(v.flash.as_ref()))
            @if let Some(what) = v.confirm.filter(|w| allowed.contains(w)) {
                (confirmation(c.id, v.csrf_token, what))
            }
            div.grid {
                div.card #summary {
                    h2 { "Summary" }
                    p { "Firmware " a href="/firmware" { span.mono { (c.version) } } " for " span.mono { (c.device_type) } " (id " (c.firmware_id) ")" }
                    p { "Target: " (target(&c.target)) ", " (c.devices) " device(s)." }
                    @if let Some(r) = &c.status_reason { p { "Stopped by the " strong { (r) } "." } }
                    p.hint { "Created " (when(c.created_at)) " by " (c.created_by) "; last change " (when(c.updated_at)) "." }
                    p { (overall(v.counts)) }
                    @if !allowed.is_empty() {
                        div.actions #actions {
                            @for a in &allowed {
                                a class={ "button " (if *a == "cancel" { "danger" } else if *a == "pause" { "secondary" } else { "" }) }
                                  href={ "/campaigns/" (c.id) "?confirm=" (a) "#confirm" } { (action_label(a)) }
                            }
                        }
                    }
                }
                div.card #thresholds {
                    h2 { "Rules" }
                    table { tbody {
                        tr { th { "Waves" } td { (c.waves.percentages().iter().map(|p| format!("{p} %")).collect::<Vec<_>>().join(", ")) } }
                        tr { th { "Soak between waves" } td { (dur(c.soak)) } }
                        tr { th { "Pause below success" } td { (pct(c.success_threshold)) } }
                        tr { th { "Abort at failures" } td { (pct(c.failure_threshold)) } }
                        tr { th { "Timeouts" } td.hint { "offered " (dur(c.timeouts.offered)) ", downloading " (dur(c.timeouts.downloading)) ", verifying " (dur(c.timeouts.verifying)) ", reboot " (dur(c.timeouts.pending_reboot)) ", confirm " (dur(c.timeouts.pending_confirm)) } }
                    } }
                }
            }
            div.card #progress {
                h2 { "Devices by state" }
                table { tbody {
                    @for s in EntryState::ALL {
                        @let n = v.counts.get(s);
                        tr {
                            th { a href={ "/campaigns/" (c.id) "?state=" (s.as_str()) "#devices" } { (s.as_str()) } }
                            td { progress value=(n) max=(total) aria-label=(s.as_str()) { (n) } }
                            td { (n) }
                        }
                    }
                } }
            }
            div.card #waves {
                h2 { "Waves" }
                div.table-wrap { table {
                    thead { tr { th { "Wave" } th { "Up to" } th { "Devices" } th { "Offered" } th { "Succeeded" } th { "Failed" } th { "State" } } }
                    tbody {
                        @for w in v.waves {
                            @let share = c.waves.percentages().get(usize::try_from(w.wave).unwrap_or(usize::MAX).saturating_sub(1)).copied().unwrap_or(100);
                            tr {
                                td { (w.wave) }
                                td { (share) " %" }
                                td { (w.counts.total()) }
                                td { (w.offered) }
                                td { (w.counts.succeeded) }
                                td { (w.counts.failures()) }
                                td {
                                    @if w.wave > c.current_wave { span.badge { "waiting" } }
                                    @else if w.counts.open() > 0 { span.badge.warn { "in progress" } }
                                    @else { span.badge.on { "done" } }
                                }
                            }
                        }
                    }
                } }
            }
            div.card #devices {
                h2 { "Devices" }
                form.filters method="get" action={ "/campaigns/" (c.id) } {
                    label for="state" { "State" }
                    select #state name="state" {
                        option value="" selected[v.query.state.is_none()] { "any" }
                        @for s in EntryState::ALL {
                            option value=(s.as_str()) selected[v.query.state == Some(s)] { (s.as_str()) }
                        }
                    }
                    button.small type="submit" { "Filter" }
                }
                div.table-wrap { table {
                    thead { tr { th { "Device" } th { "State" } th { "Reason" } th { "Wave" } th { "Download" } th { "Updated" } } }
                    tbody {
                        @if v.entries.entries.is_empty() {
                            tr { td colspan="6" { span.hint { "No device in this state." } } }
                        }
                        @for e in &v.entries.entries {
                            tr {
                                td { a href={ "/devices/" (e.device_id) } { (e.device_id) } }
                                td { (state_badge(e.state)) }
                                td.mono { (e.reason.as_deref().unwrap_or("")) }
                                td { (e.wave) }
                                td {
                                    @if let (Some(b), Some(t)) = (e.bytes, e.total) {
                                        progress value=(b) max=(t.max(1)) { (b) " / " (t) }
                                    }
                                }
                                td { (when(e.updated_at)) }
                            }
                        }
                    }
                } }
                p.hint { (v.entries.total) " device(s) match." }
                div.pager {
                    @if v.query.offset > 0 {
                        a href=(page_link(c.id, v.query, v.query.offset.saturating_sub(size))) { "← Previous" }
                    }
                    @if u64::from(v.query.offset) + u64::from(size) < v.entries.total {
                        a href=(page_link(c.id, v.query, v.query.offset.saturating_add(size))) { "Next →" }
                    }
                }
            }
        },
    )
}

/// The new-campaign form's fields as typed (kept on an error).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CampaignFormFields {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Firmware id.
    #[serde(default)]
    pub firmware_id: String,
    /// `all`, `bound`, `unbound` or `devices`.
    #[serde(default)]
    pub target: String,
    /// Device ids, separated by spaces, commas or lines.
    #[serde(default)]
    pub devices: String,
    /// Wave percentages, comma-separated.
    #[serde(default)]
    pub waves: String,
    /// Soak.
    #[serde(default)]
    pub soak: String,
    /// Success threshold in percent.
    #[serde(default)]
    pub success_percent: String,
    /// Failure threshold in percent.
    #[serde(default)]
    pub failure_percent: String,
    /// `yes` to start at once.
    #[serde(default)]
    pub approve: String,
    /// The CSRF field (checked by the guard, not read here).
    #[allow(dead_code)]
    #[serde(default)]
    pub csrf_token: String,
}

/// `/campaigns/new`.
pub fn new_campaign(
    p: &Principal,
    csrf_token: &str,
    firmware: &[Firmware],
    f: &CampaignFormFields,
    message: Option<&Flash>,
) -> Markup {
    let target = if f.target.is_empty() {
        "all"
    } else {
        f.target.as_str()
    };
    page(
        "New campaign",
        Some(p),
        "/campaigns",
        html! {
            p { a href="/campaigns" { "← Campaigns" } }
            h1 { "New campaign" }
            (flash(message))
            div.card {
                form #campaign-form method="post" action="/campaigns" {
                    (csrf(csrf_token))
                    label for="name" { "Name" }
                    input #name type="text" name="name" value=(f.name) required maxlength="100";
                    label for="firmware_id" { "Firmware" }
                    select #firmware_id name="firmware_id" required {
                        @for fw in firmware {
                            option value=(fw.id) selected[f.firmware_id == fw.id.to_string()] {
                                (fw.version) " for " (fw.device_type) " (id " (fw.id) ", security version " (fw.security_version) ")"
                            }
                        }
                    }
                    @if firmware.is_empty() { p.hint { "Upload firmware first (" a href="/firmware" { "Firmware" } ")." } }
                    label for="target" { "Devices of the firmware's type" }
                    select #target name="target" {
                        @for (value, label) in [("all", "All"), ("bound", "Bound (claimed) only"), ("unbound", "Unbound only"), ("devices", "Only the devices listed below")] {
                            option value=(value) selected[target == value] { (label) }
                        }
                    }
                    label for="devices" { "Device list" }
                    textarea #devices name="devices" rows="3" placeholder="greenhouse-1, greenhouse-2" { (f.devices) }
                    p.hint { "Devices already on this version, revoked or disabled are left out." }
                    label for="waves" { "Waves (cumulative %)" }
                    input #waves type="text" name="waves" value=(f.waves) placeholder="1, 10, 50, 100" inputmode="numeric";
                    label for="soak" { "Soak between waves" }
                    input #soak type="text" name="soak" value=(f.soak) placeholder="10m";
                    label for="success_percent" { "Pause when a wave's success is below (%)" }
                    input #success_percent type="number" min="0" max="100" name="success_percent" value=(f.success_percent) placeholder="90";
                    label for="failure_percent" { "Abort when failures reach (%)" }
                    input #failure_percent type="number" min="0" max="100" name="failure_percent" value=(f.failure_percent) placeholder="10";
                    label { input type="checkbox" name="approve" value="yes" checked[f.approve == "yes"]; " Approve now (start at once instead of a draft)" }
                    button type="submit" { "Create campaign" }
                }
            }
        },
    )
}
