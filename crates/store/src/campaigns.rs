//! OTA campaigns (issue 9, docs/ota.md §5): one trait, [`CampaignStore`],
//! implemented by both backends.
//!
//! Creation resolves the target from the registry in the same transaction
//! that writes the rows, refuses devices busy in another campaign, and
//! places every device in a wave by the stable shuffle of
//! [`rampart_ota::campaign`]. After that, every move is conditional on the
//! row's current status or state, so two engines sharing a database (two
//! `serve` replicas on PostgreSQL) never move a row twice: a move that lost
//! the race returns `None` or an empty list, not an error. Status changes
//! are audited in their transaction; per-device moves are not (they are
//! device reports, like telemetry), except as figures in the campaign's
//! audited changes.
//!
//! Deciding *when* to move (thresholds, soak, timeouts) is not done here:
//! the engine asks [`rampart_ota::campaign::decide`].

use std::time::Duration;

use async_trait::async_trait;
use rampart_proto::DeviceId;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;
use time::OffsetDateTime;

pub use rampart_ota::campaign::{
    CampaignStatus, EntryState, StateCounts, Timeouts, WaveProgress, Waves,
};
use rampart_ota::campaign::{Fraction, Thresholds};

use crate::millis::from_ms;
use crate::{Actor, AuditEntry, DeviceState, Result, StoreError};

/// Longest campaign name.
pub const MAX_CAMPAIGN_NAME: usize = 100;
/// Largest page of [`CampaignStore::campaign_entries`].
pub const MAX_ENTRY_PAGE: u32 = 1000;

/// Which devices a campaign is for, besides its device type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CampaignTarget {
    /// These devices (those of the firmware's type).
    Devices(Vec<DeviceId>),
    /// Devices in this registry state (`bound` or `unbound`).
    State(DeviceState),
    /// Every device of the type.
    All,
}

/// A campaign to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCampaign {
    /// A name for people: 1 to 100 characters.
    pub name: String,
    /// The uploaded firmware to roll out.
    pub firmware_id: u64,
    /// Which devices of the firmware's type.
    pub target: CampaignTarget,
    /// Cumulative wave percentages.
    pub waves: Waves,
    /// Minimum time between a wave finishing and the next starting.
    pub soak: Duration,
    /// A finished wave below this success share pauses (0 to 1).
    pub success_threshold: f64,
    /// Failures reaching this share of the offered devices abort (0 to 1).
    pub failure_threshold: f64,
    /// How long each per-device state may last.
    pub timeouts: Timeouts,
    /// Start `running` instead of `draft`.
    pub approve: bool,
}

impl NewCampaign {
    pub(crate) fn check(&self) -> Result<()> {
        let name_ok = !self.name.trim().is_empty()
            && self.name.chars().count() <= MAX_CAMPAIGN_NAME
            && !self.name.chars().any(char::is_control);
        if !name_ok {
            return Err(StoreError::InvalidCampaign(format!(
                "a campaign name must be 1 to {MAX_CAMPAIGN_NAME} printable characters"
            )));
        }
        Fraction::new(self.success_threshold, "success")
            .and_then(|_| Fraction::new(self.failure_threshold, "failure"))
            .map_err(|e| StoreError::InvalidCampaign(e.to_string()))?;
        let t = &self.timeouts;
        let all = [
            t.offered,
            t.downloading,
            t.verifying,
            t.pending_reboot,
            t.pending_confirm,
        ];
        if all.iter().any(|d| d.as_millis() == 0 || ms(*d).is_err()) {
            return Err(StoreError::InvalidCampaign(
                "every state timeout must be at least 1 ms".into(),
            ));
        }
        ms(self.soak)?;
        Ok(())
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Campaign {
    /// Its number.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The firmware rolled out.
    pub firmware_id: u64,
    /// The firmware's device type.
    pub device_type: String,
    /// The firmware's version (reports are matched by it).
    pub version: String,
    /// The target as given.
    pub target: CampaignTarget,
    /// Cumulative wave percentages.
    #[serde(serialize_with = "waves_ser")]
    pub waves: Waves,
    /// Minimum time between waves.
    #[serde(rename = "soakMs", serialize_with = "duration_ms")]
    pub soak: Duration,
    /// Success threshold (0 to 1).
    pub success_threshold: f64,
    /// Failure threshold (0 to 1).
    pub failure_threshold: f64,
    /// Per-state timeouts.
    #[serde(serialize_with = "timeouts_ser")]
    pub timeouts: Timeouts,
    /// Its status.
    pub status: CampaignStatus,
    /// Why, when the engine set it (`success-threshold`, `failure-threshold`).
    pub status_reason: Option<String>,
    /// The last wave started (0: none yet).
    pub current_wave: u32,
    /// The last wave whose success check passed or was overridden.
    pub reviewed_wave: u32,
    /// How many devices it holds.
    pub devices: u64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who created it.
    pub created_by: String,
    /// When its status last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Campaign {
    /// Its thresholds, for [`rampart_ota::campaign::decide`].
    pub fn thresholds(&self) -> Thresholds {
        // Both were checked at creation and by the table's CHECKs; a value
        // out of range can only come from a hand edit and then reads as 0.
        Thresholds {
            success: Fraction::new(self.success_threshold, "success").unwrap_or(Fraction::ZERO),
            failure: Fraction::new(self.failure_threshold, "failure").unwrap_or(Fraction::ZERO),
        }
    }
}

fn waves_ser<S: Serializer>(w: &Waves, s: S) -> std::result::Result<S::Ok, S::Error> {
    w.percentages().serialize(s)
}

fn duration_ms<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .serialize(s)
}

fn timeouts_ser<S: Serializer>(t: &Timeouts, s: S) -> std::result::Result<S::Ok, S::Error> {
    let m = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    json!({
        "offeredMs": m(t.offered),
        "downloadingMs": m(t.downloading),
        "verifyingMs": m(t.verifying),
        "pendingRebootMs": m(t.pending_reboot),
        "pendingConfirmMs": m(t.pending_confirm),
    })
    .serialize(s)
}

/// One device in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignEntry {
    /// The campaign.
    pub campaign_id: u64,
    /// The device.
    pub device_id: DeviceId,
    /// Its wave, from 1.
    pub wave: u32,
    /// Its place in the campaign's shuffle, from 0.
    pub position: u32,
    /// Where it is.
    pub state: EntryState,
    /// Why it failed, rolled back or was cancelled.
    pub reason: Option<String>,
    /// Bytes downloaded, as last reported.
    pub bytes: Option<u64>,
    /// Image size, as last reported.
    pub total: Option<u64>,
    /// When its state times out.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deadline: Option<OffsetDateTime>,
    /// When it was offered the update.
    #[serde(with = "time::serde::rfc3339::option")]
    pub offered_at: Option<OffsetDateTime>,
    /// A `cancel` downlink is due (cancelled while holding the offer).
    pub cancel_pending: bool,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Which entries of a campaign to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryQuery {
    /// Only entries in this state.
    pub state: Option<EntryState>,
    /// Only entries of this wave.
    pub wave: Option<u32>,
    /// Entries to skip (in wave, then shuffle order).
    pub offset: u32,
    /// Most entries to return (0: 100; at most [`MAX_ENTRY_PAGE`]).
    pub limit: u32,
}

impl EntryQuery {
    /// The page size asked for, within bounds.
    pub fn page_size(&self) -> u32 {
        match self.limit {
            0 => 100,
            n => n.min(MAX_ENTRY_PAGE),
        }
    }
}

/// One page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPage {
    /// The entries, in wave then shuffle order.
    pub entries: Vec<CampaignEntry>,
    /// How many entries match in all.
    pub total: u64,
}

/// Why an engine paused a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// An operator did.
    Operator,
    /// A finished wave's success share stayed below the threshold.
    SuccessThreshold {
        /// The wave.
        wave: u32,
        /// Its devices that succeeded.
        succeeded: u64,
        /// Its devices offered.
        offered: u64,
    },
}

/// A status change of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignChange {
    /// `draft` → `running`.
    Approve,
    /// `running` → `paused`.
    Pause(PauseReason),
    /// `paused` → `running`; after a success-threshold pause the operator
    /// accepts the wave and the next one may start.
    Resume,
    /// Emergency stop, from `draft`, `running` or `paused`: queued devices
    /// become `cancelled`, devices holding the offer (`offered`,
    /// `downloading`, `verifying`) too, with a `cancel` downlink due.
    Cancel,
    /// Failures reached the threshold (`running` or `paused` →
    /// `aborted`): queued devices become `cancelled`; devices already
    /// updating finish and report.
    Abort {
        /// `failed` + `rolled-back` so far.
        failures: u64,
        /// Devices offered so far.
        offered: u64,
    },
    /// `running` → `completed`, only when no entry is open.
    Complete,
}

impl CampaignChange {
    /// The statuses it starts from.
    pub fn from_statuses(self) -> &'static [CampaignStatus] {
        use CampaignStatus::*;
        match self {
            CampaignChange::Approve => &[Draft],
            CampaignChange::Pause(_) => &[Running],
            CampaignChange::Resume => &[Paused],
            CampaignChange::Cancel => &[Draft, Running, Paused],
            CampaignChange::Abort { .. } => &[Running, Paused],
            CampaignChange::Complete => &[Running],
        }
    }

    /// The status it leads to.
    pub fn to_status(self) -> CampaignStatus {
        match self {
            CampaignChange::Approve | CampaignChange::Resume => CampaignStatus::Running,
            CampaignChange::Pause(_) => CampaignStatus::Paused,
            CampaignChange::Cancel => CampaignStatus::Cancelled,
            CampaignChange::Abort { .. } => CampaignStatus::Aborted,
            CampaignChange::Complete => CampaignStatus::Completed,
        }
    }

    /// Its audit action name.
    pub fn action(self) -> &'static str {
        match self {
            CampaignChange::Approve => "campaign.approve",
            CampaignChange::Pause(_) => "campaign.pause",
            CampaignChange::Resume => "campaign.resume",
            CampaignChange::Cancel => "campaign.cancel",
            CampaignChange::Abort { .. } => "campaign.abort",
            CampaignChange::Complete => "campaign.complete",
        }
    }

    /// The `status_reason` it records.
    pub(crate) fn reason(self) -> Option<&'static str> {
        match self {
            CampaignChange::Pause(PauseReason::SuccessThreshold { .. }) => {
                Some("success-threshold")
            }
            CampaignChange::Abort { .. } => Some("failure-threshold"),
            _ => None,
        }
    }

    pub(crate) fn detail(self) -> serde_json::Value {
        match self {
            CampaignChange::Pause(PauseReason::SuccessThreshold {
                wave,
                succeeded,
                offered,
            }) => json!({"reason": "success-threshold", "wave": wave,
                         "succeeded": succeeded, "offered": offered}),
            CampaignChange::Abort { failures, offered } => {
                json!({"reason": "failure-threshold", "failures": failures, "offered": offered})
            }
            _ => json!({}),
        }
    }

    /// Why `status` cannot take this change, for the error.
    pub(crate) fn refusal(self, id: u64, status: CampaignStatus) -> StoreError {
        let allowed: Vec<&str> = self.from_statuses().iter().map(|s| s.as_str()).collect();
        StoreError::CampaignStatus {
            id,
            status: status.as_str().to_owned(),
            why: format!(
                "{} needs a campaign that is {}",
                self.action().trim_start_matches("campaign."),
                allowed.join(" or ")
            ),
        }
    }
}

/// A device report moving an entry (docs/ota.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMove {
    /// The campaign.
    pub campaign_id: u64,
    /// The device.
    pub device_id: DeviceId,
    /// The state reported.
    pub to: EntryState,
    /// The reason code of a failure or rollback.
    pub reason: Option<String>,
    /// Bytes downloaded so far.
    pub bytes: Option<u64>,
    /// Image size.
    pub total: Option<u64>,
}

/// A device in another campaign's open entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusyDevice {
    /// The device.
    pub device_id: String,
    /// The campaign it is in.
    pub campaign_id: u64,
}

/// The `device_busy` message.
pub(crate) fn busy_message(devices: &[BusyDevice]) -> String {
    let shown: Vec<String> = devices
        .iter()
        .take(20)
        .map(|b| format!("{} (campaign {})", b.device_id, b.campaign_id))
        .collect();
    let more = devices.len().saturating_sub(shown.len());
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "device_busy: {} device(s) are in another campaign's open update: {}{tail}; \
         wait for it to finish, cancel it, or leave them out",
        devices.len(),
        shown.join(", ")
    )
}

/// Storage of OTA campaigns and their per-device entries.
#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// Creates a campaign (`draft`, or `running` when approved), resolving
    /// its target from the registry as docs/ota.md §5 says: devices whose
    /// reported `type` is the firmware's device type, within the target,
    /// neither revoked nor disabled, not reporting the firmware's version
    /// already. Refused if the firmware is unknown
    /// ([`StoreError::FirmwareNotFound`]), a listed device is unknown
    /// ([`StoreError::NotFound`]), no device remains
    /// ([`StoreError::InvalidCampaign`]), or some are in an open entry of
    /// another campaign ([`StoreError::DeviceBusy`], listing them).
    async fn create_campaign(&self, campaign: NewCampaign, actor: &Actor) -> Result<Campaign>;

    /// One campaign.
    async fn campaign(&self, id: u64) -> Result<Option<Campaign>>;

    /// Campaigns in one of `statuses` (all when empty), newest first.
    async fn list_campaigns(&self, statuses: &[CampaignStatus]) -> Result<Vec<Campaign>>;

    /// One page of a campaign's entries, in wave then shuffle order.
    async fn campaign_entries(&self, id: u64, query: &EntryQuery) -> Result<EntryPage>;

    /// Every wave of a campaign (1 first, empty ones included) with its
    /// counts per state: what [`rampart_ota::campaign::decide`] reads.
    async fn campaign_waves(&self, id: u64) -> Result<Vec<WaveProgress>>;

    /// Changes a campaign's status if it is in one the change starts from
    /// ([`StoreError::CampaignStatus`] otherwise), with its side effects on
    /// entries and its audit row in one transaction.
    async fn change_campaign(
        &self,
        id: u64,
        change: CampaignChange,
        actor: &Actor,
    ) -> Result<Campaign>;

    /// Starts wave `wave` of a running campaign whose current wave is
    /// below it: its queued entries become `offered` with their deadline.
    /// Returns them, or `None` if the campaign is not running or the wave
    /// was started already (by another engine). Audited.
    async fn start_wave(
        &self,
        id: u64,
        wave: u32,
        actor: &Actor,
    ) -> Result<Option<Vec<CampaignEntry>>>;

    /// Moves an entry forward by a device report: only from a state that
    /// may become `m.to` ([`EntryState::can_move_to`]); a `downloading`
    /// report while downloading updates the progress. The new state gets
    /// its deadline from the campaign's timeouts. `None` when the entry is
    /// not in such a state (a late or repeated report).
    async fn move_entry(&self, m: EntryMove) -> Result<Option<CampaignEntry>>;

    /// Fails the open entries whose deadline is at or before `now` as
    /// `failed(timeout-<state>)`, at most `limit`; returns them as they
    /// are now (an entry moved meanwhile is left alone).
    async fn expire_entries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<CampaignEntry>>;

    /// The device's open, offered entry for firmware `version` (the one a
    /// report of that version moves), newest campaign first.
    async fn active_entry(&self, device: &DeviceId, version: &str)
    -> Result<Option<CampaignEntry>>;

    /// The device's open entries that were offered, newest campaign first
    /// (to re-send an offer when it reconnects).
    async fn open_entries_of(&self, device: &DeviceId) -> Result<Vec<CampaignEntry>>;

    /// Entries with a `cancel` downlink due, at most `limit`.
    async fn pending_cancels(&self, limit: u32) -> Result<Vec<CampaignEntry>>;

    /// Records that the `cancel` downlink was sent; `false` if another
    /// engine did already.
    async fn cancel_sent(&self, campaign_id: u64, device: &DeviceId) -> Result<bool>;
}

/// Columns of `campaigns`, in [`CampaignRow`] order.
pub(crate) const CAMPAIGN_COLUMNS: &str = "id, name, firmware_id, device_type, version, target, \
     waves, soak_ms, success_threshold, failure_threshold, offered_timeout_ms, \
     downloading_timeout_ms, verifying_timeout_ms, pending_reboot_timeout_ms, \
     pending_confirm_timeout_ms, status, status_reason, current_wave, reviewed_wave, devices, \
     created_at, created_by, updated_at";

/// Columns of `campaign_devices`, in [`EntryRow`] order.
pub(crate) const ENTRY_COLUMNS: &str = "campaign_id, device_id, wave, position, state, reason, \
     bytes, total, deadline, offered_at, cancel_pending, updated_at";

/// Open states, as an SQL list.
pub(crate) fn open_states_sql() -> String {
    states_sql(EntryState::ALL.iter().filter(|s| !s.is_final()).copied())
}

/// States as an SQL list of literals (our own constant names).
pub(crate) fn states_sql(states: impl IntoIterator<Item = EntryState>) -> String {
    states
        .into_iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statuses as an SQL list of literals.
pub(crate) fn statuses_sql(statuses: &[CampaignStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `campaigns` row as stored.
pub(crate) struct CampaignRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) firmware_id: i64,
    pub(crate) device_type: String,
    pub(crate) version: String,
    pub(crate) target: String,
    pub(crate) waves: String,
    pub(crate) soak_ms: i64,
    pub(crate) success_threshold: f64,
    pub(crate) failure_threshold: f64,
    pub(crate) timeouts_ms: [i64; 5],
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) current_wave: i64,
    pub(crate) reviewed_wave: i64,
    pub(crate) devices: i64,
    pub(crate) created_at: i64,
    pub(crate) created_by: String,
    pub(crate) updated_at: i64,
}

fn corrupt(what: &str, v: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("campaign {what} {v}"))
}

fn unsigned<T: TryFrom<i64>>(what: &str, v: i64) -> Result<T> {
    T::try_from(v).map_err(|_| corrupt(what, v))
}

fn duration(what: &str, v: i64) -> Result<Duration> {
    Ok(Duration::from_millis(unsigned(what, v)?))
}

/// A duration as stored milliseconds.
pub(crate) fn ms(d: Duration) -> Result<i64> {
    i64::try_from(d.as_millis())
        .map_err(|_| StoreError::InvalidCampaign(format!("duration {d:?} is too long")))
}

impl CampaignRow {
    pub(crate) fn into_campaign(self) -> Result<Campaign> {
        let [o, d, v, r, c] = self.timeouts_ms;
        Ok(Campaign {
            id: unsigned("id", self.id)?,
            name: self.name,
            firmware_id: unsigned("firmware id", self.firmware_id)?,
            device_type: self.device_type,
            version: self.version,
            target: serde_json::from_str(&self.target).map_err(|e| corrupt("target", e))?,
            waves: self
                .waves
                .parse()
                .map_err(|e: rampart_ota::campaign::CampaignError| corrupt("waves", e))?,
            soak: duration("soak", self.soak_ms)?,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
            timeouts: Timeouts {
                offered: duration("timeout", o)?,
                downloading: duration("timeout", d)?,
                verifying: duration("timeout", v)?,
                pending_reboot: duration("timeout", r)?,
                pending_confirm: duration("timeout", c)?,
            },
            status: self
                .status
                .parse()
                .map_err(|e: rampart_ota::campaign::CampaignError| corrupt("status", e))?,
            status_reason: self.status_reason,
            current_wave: unsigned("wave", self.current_wave)?,
            reviewed_wave: unsigned("wave", self.reviewed_wave)?,
            devices: unsigned("devices", self.devices)?,
            created_at: from_ms(self.created_at)?,
            created_by: self.created_by,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

/// A `campaign_devices` row as stored.
pub(crate) struct EntryRow {
    pub(crate) campaign_id: i64,
    pub(crate) device_id: String,
    pub(crate) wave: i64,
    pub(crate) position: i64,
    pub(crate) state: String,
    pub(crate) reason: Option<String>,
    pub(crate) bytes: Option<i64>,
    pub(crate) total: Option<i64>,
    pub(crate) deadline: Option<i64>,
    pub(crate) offered_at: Option<i64>,
    pub(crate) cancel_pending: bool,
    pub(crate) updated_at: i64,
}

impl EntryRow {
    pub(crate) fn into_entry(self) -> Result<CampaignEntry> {
        Ok(CampaignEntry {
            campaign_id: unsigned("id", self.campaign_id)?,
            device_id: DeviceId::parse(&self.device_id)
                .map_err(|e| corrupt("device id", format!("'{}': {e}", self.device_id)))?,
            wave: unsigned("wave", self.wave)?,
            position: unsigned("position", self.position)?,
            state: self
                .state
                .parse()
                .map_err(|e: rampart_ota::campaign::CampaignError| corrupt("entry state", e))?,
            reason: self.reason,
            bytes: self.bytes.map(|b| unsigned("bytes", b)).transpose()?,
            total: self.total.map(|b| unsigned("total", b)).transpose()?,
            deadline: self.deadline.map(from_ms).transpose()?,
            offered_at: self.offered_at.map(from_ms).transpose()?,
            cancel_pending: self.cancel_pending,
            updated_at: from_ms(self.updated_at)?,
        })
    }
}

/// A registry row considered for a campaign's target.
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) state: String,
    /// The latest `state/up` report, as received (absent: never reported).
    pub(crate) reported: Option<String>,
}

/// What target resolution found.
pub(crate) struct Resolved {
    /// The devices to update.
    pub(crate) devices: Vec<String>,
    /// Devices of the type left out because they run the version already.
    pub(crate) up_to_date: u64,
    /// Devices of the type left out because they are revoked or disabled.
    pub(crate) blocked: u64,
}

/// Picks the campaign's devices among `candidates` (every registered
/// device, or the listed ones) by docs/ota.md §5. Reports that are not JSON
/// objects, or lack `type`, never match.
pub(crate) fn resolve(
    candidates: Vec<Candidate>,
    target: &CampaignTarget,
    device_type: &str,
    version: &str,
) -> Result<Resolved> {
    if let CampaignTarget::Devices(list) = target
        && let Some(missing) = list
            .iter()
            .find(|d| !candidates.iter().any(|c| c.id == d.as_str()))
    {
        return Err(StoreError::NotFound(missing.clone()));
    }
    let mut out = Resolved {
        devices: Vec::new(),
        up_to_date: 0,
        blocked: 0,
    };
    for c in candidates {
        let in_target = match target {
            CampaignTarget::Devices(list) => list.iter().any(|d| d.as_str() == c.id),
            CampaignTarget::State(s) => c.state == s.as_str(),
            CampaignTarget::All => true,
        };
        if !in_target {
            continue;
        }
        let reported: Option<serde_json::Value> = c
            .reported
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        let field = |name: &str| {
            reported
                .as_ref()
                .and_then(|r| r.get(name))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        if field("type").as_deref() != Some(device_type) {
            continue;
        }
        if c.state == "revoked" || c.state == "disabled" {
            out.blocked += 1;
            continue;
        }
        if field("fw").as_deref() == Some(version) {
            out.up_to_date += 1;
            continue;
        }
        out.devices.push(c.id);
    }
    if out.devices.is_empty() {
        return Err(StoreError::InvalidCampaign(format!(
            "no device to update: none in the target reports type '{device_type}' and runs \
             another version than {version} ({} on it already, {} revoked or disabled)",
            out.up_to_date, out.blocked
        )));
    }
    Ok(out)
}

/// The audit row of a campaign created.
pub(crate) fn created_audit(c: &Campaign, r: &Resolved, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "campaign.create".into(),
        subject: Some(c.id.to_string()),
        detail: json!({
            "name": c.name,
            "firmware_id": c.firmware_id,
            "device_type": c.device_type,
            "version": c.version,
            "target": c.target,
            "waves": c.waves.percentages(),
            "soak_ms": u64::try_from(c.soak.as_millis()).unwrap_or(u64::MAX),
            "success_threshold": c.success_threshold,
            "failure_threshold": c.failure_threshold,
            "devices": r.devices.len(),
            "left_out_up_to_date": r.up_to_date,
            "left_out_revoked_or_disabled": r.blocked,
            "status": c.status,
        }),
    }
}

/// The audit row of a status change.
pub(crate) fn change_audit(
    id: u64,
    change: CampaignChange,
    from: CampaignStatus,
    affected: u64,
    actor: &Actor,
) -> AuditEntry {
    let mut detail = change.detail();
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("from".into(), json!(from));
        obj.insert("to".into(), json!(change.to_status()));
        obj.insert("entries_cancelled".into(), json!(affected));
    }
    AuditEntry {
        actor: actor.clone(),
        action: change.action().into(),
        subject: Some(id.to_string()),
        detail,
    }
}

/// The audit row of a wave started.
pub(crate) fn wave_audit(id: u64, wave: u32, offered: usize, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "campaign.wave".into(),
        subject: Some(id.to_string()),
        detail: json!({ "wave": wave, "offered": offered }),
    }
}

/// Per-wave counts from `(wave, state, count, offered, last_change)` rows,
/// one entry per wave `1..=waves` whether it holds devices or not.
pub(crate) fn waves_from_rows(
    waves: usize,
    rows: Vec<(i64, String, i64, i64, Option<i64>)>,
) -> Result<Vec<WaveProgress>> {
    let mut out: Vec<WaveProgress> = (1..=waves)
        .map(|w| WaveProgress {
            wave: u32::try_from(w).unwrap_or(u32::MAX),
            ..WaveProgress::default()
        })
        .collect();
    for (wave, state, count, offered, last) in rows {
        let state: EntryState = state
            .parse()
            .map_err(|e: rampart_ota::campaign::CampaignError| corrupt("entry state", e))?;
        let idx: usize = unsigned::<usize>("wave", wave)?
            .checked_sub(1)
            .ok_or_else(|| corrupt("wave", wave))?;
        let w = out.get_mut(idx).ok_or_else(|| corrupt("wave", wave))?;
        w.counts.add(state, unsigned("count", count)?);
        w.offered = w.offered.saturating_add(unsigned("count", offered)?);
        w.last_change_ms = match (w.last_change_ms, last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(out)
}
