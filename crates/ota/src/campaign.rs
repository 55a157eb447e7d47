//! Rollout decisions for campaigns (docs/ota.md §5), without I/O: campaign
//! and per-device states with their forward-only order, waves (cumulative
//! percentages) and the stable shuffle that fills them, thresholds, state
//! timeouts, and [`decide`], the engine's one question per tick: abort,
//! pause, start a wave, complete, or wait.
//!
//! The store records what these functions decide; the engine in `serve`
//! asks them. Timestamps are Unix milliseconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why campaign parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// Waves are not ascending percentages ending at 100.
    #[error(
        "waves must be ascending percentages from 1 to 100 ending at 100 (e.g. 1,10,50,100): {0}"
    )]
    InvalidWaves(String),
    /// A threshold outside `0..=1`.
    #[error("the {which} threshold must be a fraction between 0 and 1, not {value}")]
    InvalidThreshold {
        /// `success` or `failure`.
        which: &'static str,
        /// What was given.
        value: String,
    },
    /// A name that is not a campaign status or entry state.
    #[error("unknown {what} '{value}'")]
    UnknownName {
        /// `campaign status` or `entry state`.
        what: &'static str,
        /// What was given.
        value: String,
    },
}

/// The most waves a campaign may have.
pub const MAX_WAVES: usize = 20;

/// A campaign's status (docs/ota.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    /// Created, waiting for approval.
    Draft,
    /// Offering waves.
    Running,
    /// Stopped for an operator (by hand or below the success threshold).
    Paused,
    /// Every wave finished.
    Completed,
    /// Stopped by the failure threshold.
    Aborted,
    /// Stopped by an operator (emergency stop).
    Cancelled,
}

impl CampaignStatus {
    /// Every status.
    pub const ALL: [CampaignStatus; 6] = [
        CampaignStatus::Draft,
        CampaignStatus::Running,
        CampaignStatus::Paused,
        CampaignStatus::Completed,
        CampaignStatus::Aborted,
        CampaignStatus::Cancelled,
    ];

    /// Its name in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Draft => "draft",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Aborted => "aborted",
            CampaignStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the campaign may still offer updates (draft, running, paused).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            CampaignStatus::Draft | CampaignStatus::Running | CampaignStatus::Paused
        )
    }
}

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CampaignStatus {
    type Err = CampaignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CampaignStatus::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CampaignError::UnknownName {
                what: "campaign status",
                value: s.to_owned(),
            })
    }
}

/// Where one device is in a campaign (docs/ota.md §5). States only move
/// forward: see [`EntryState::can_move_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// In a wave not started yet.
    Queued,
    /// Sent an offer; no report yet.
    Offered,
    /// Downloading the image.
    Downloading,
    /// Checking the downloaded image.
    Verifying,
    /// Slot switched; rebooting into it.
    PendingReboot,
    /// Running the new image; confirming health.
    PendingConfirm,
    /// Confirmed on the new version (final).
    Succeeded,
    /// Refused or could not finish, with a reason (final).
    Failed,
    /// Fell back to the previous image, with a reason (final).
    RolledBack,
    /// Never offered, or cancelled before switching (final).
    Cancelled,
}

impl EntryState {
    /// Every state, in order.
    pub const ALL: [EntryState; 10] = [
        EntryState::Queued,
        EntryState::Offered,
        EntryState::Downloading,
        EntryState::Verifying,
        EntryState::PendingReboot,
        EntryState::PendingConfirm,
        EntryState::Succeeded,
        EntryState::Failed,
        EntryState::RolledBack,
        EntryState::Cancelled,
    ];

    /// Its name (the device's report status where there is one).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Queued => "queued",
            EntryState::Offered => "offered",
            EntryState::Downloading => "downloading",
            EntryState::Verifying => "verifying",
            EntryState::PendingReboot => "pending-reboot",
            EntryState::PendingConfirm => "pending-confirm",
            EntryState::Succeeded => "succeeded",
            EntryState::Failed => "failed",
            EntryState::RolledBack => "rolled-back",
            EntryState::Cancelled => "cancelled",
        }
    }

    /// Its place in the forward order; every final state is last.
    pub fn rank(self) -> u8 {
        match self {
            EntryState::Queued => 0,
            EntryState::Offered => 1,
            EntryState::Downloading => 2,
            EntryState::Verifying => 3,
            EntryState::PendingReboot => 4,
            EntryState::PendingConfirm => 5,
            EntryState::Succeeded
            | EntryState::Failed
            | EntryState::RolledBack
            | EntryState::Cancelled => 6,
        }
    }

    /// Whether nothing moves it any more.
    pub fn is_final(self) -> bool {
        self.rank() == 6
    }

    /// Whether an entry in this state may become `to`: only forward, never
    /// out of a final state, never back to `queued`, and `cancelled` only
    /// before the device switched slots (docs/ota.md §2: a switched update
    /// finishes and reports).
    pub fn can_move_to(self, to: EntryState) -> bool {
        if self.is_final() || to.rank() <= self.rank() {
            return false;
        }
        match to {
            EntryState::Cancelled => self.rank() <= EntryState::Verifying.rank(),
            _ => true,
        }
    }

    /// The states an entry may be in to become `to` (the `WHERE state IN`
    /// of a conditional update).
    pub fn sources(to: EntryState) -> Vec<EntryState> {
        EntryState::ALL
            .into_iter()
            .filter(|s| s.can_move_to(to))
            .collect()
    }

    /// Whether the device holds an offer it may still act on, so that it
    /// gets the offer again when it reconnects.
    pub fn resends_offer(self) -> bool {
        matches!(self, EntryState::Offered | EntryState::Downloading)
    }
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryState {
    type Err = CampaignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntryState::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| CampaignError::UnknownName {
                what: "entry state",
                value: s.to_owned(),
            })
    }
}

/// Cumulative wave percentages, ascending, each 1..=100, the last 100.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Waves(Vec<u8>);

impl Waves {
    /// Checks `percentages`.
    pub fn new(percentages: Vec<u8>) -> Result<Self, CampaignError> {
        let bad = |why: &str| CampaignError::InvalidWaves(format!("{percentages:?}: {why}"));
        if percentages.is_empty() || percentages.len() > MAX_WAVES {
            return Err(bad(&format!("give 1 to {MAX_WAVES} waves")));
        }
        if percentages.iter().any(|p| *p == 0 || *p > 100) {
            return Err(bad("each must be between 1 and 100"));
        }
        if percentages.windows(2).any(|w| w.first() >= w.get(1)) {
            return Err(bad("each must be larger than the one before"));
        }
        if percentages.last() != Some(&100) {
            return Err(bad("the last must be 100"));
        }
        Ok(Waves(percentages))
    }

    /// One wave of everything.
    pub fn all_at_once() -> Self {
        Waves(vec![100])
    }

    /// The percentages.
    pub fn percentages(&self) -> &[u8] {
        &self.0
    }

    /// How many waves.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a campaign has at least one wave); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where each wave ends in the shuffled order of `devices` devices:
    /// `ceil(p × N / 100)`, but at least one past the previous wave while
    /// devices remain. Ascending, the last is `devices`.
    pub fn ends(&self, devices: usize) -> Vec<usize> {
        let mut ends = Vec::with_capacity(self.0.len());
        let mut prev = 0usize;
        for p in &self.0 {
            let share = (devices * usize::from(*p)).div_ceil(100);
            let end = share.max(prev.saturating_add(1)).min(devices);
            ends.push(end);
            prev = end;
        }
        ends
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u8::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Waves {
    type Err = CampaignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let percentages = s
            .split(',')
            .map(|p| p.trim().trim_end_matches('%').parse::<u8>())
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| CampaignError::InvalidWaves(format!("'{s}'")))?;
        Waves::new(percentages)
    }
}

/// The stable shuffle's sort key of a device in a campaign: the first 8
/// bytes of SHA-256 over the campaign id and the device id, so every
/// campaign orders the fleet differently and every replica the same way.
pub fn shuffle_key(campaign: u64, device: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"rampart-campaign-wave\0");
    h.update(campaign.to_be_bytes());
    h.update(device.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A device's place in a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSlot {
    /// The device id.
    pub device: String,
    /// Its wave, from 1.
    pub wave: u32,
    /// Its position in the shuffled order, from 0.
    pub position: u32,
}

/// Shuffles `devices` stably for `campaign` and gives each its wave.
/// Duplicates are kept once.
pub fn assign_waves(campaign: u64, devices: &[String], waves: &Waves) -> Vec<WaveSlot> {
    let mut order: Vec<(u64, &str)> = devices
        .iter()
        .map(|d| (shuffle_key(campaign, d), d.as_str()))
        .collect();
    order.sort_unstable();
    order.dedup_by(|a, b| a.1 == b.1);
    let ends = waves.ends(order.len());
    let mut wave = 0usize;
    order
        .into_iter()
        .enumerate()
        .map(|(i, (_, device))| {
            while ends.get(wave).is_some_and(|end| i >= *end) {
                wave += 1;
            }
            WaveSlot {
                device: device.to_owned(),
                wave: u32::try_from(wave + 1).unwrap_or(u32::MAX),
                position: u32::try_from(i).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

/// A threshold fraction in parts per million, so that comparisons with
/// counts are exact (0.3 × 10 is 3, not 3.0000000000000004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fraction(u32);

impl Fraction {
    /// One million parts.
    const WHOLE: u64 = 1_000_000;

    /// Nothing.
    pub const ZERO: Fraction = Fraction(0);

    /// `value` (0 to 1), to the nearest millionth.
    pub fn new(value: f64, which: &'static str) -> Result<Self, CampaignError> {
        if !(0.0..=1.0).contains(&value) {
            return Err(CampaignError::InvalidThreshold {
                which,
                value: value.to_string(),
            });
        }
        // In range 0..=1e6 after the check above.
        Ok(Fraction((value * Self::WHOLE as f64).round() as u32))
    }

    /// As a float, for display and storage.
    pub fn value(self) -> f64 {
        f64::from(self.0) / Self::WHOLE as f64
    }

    /// Whether `part / whole` is at least this fraction (`whole` > 0).
    pub fn reached_by(self, part: u64, whole: u64) -> bool {
        whole > 0
            && u128::from(part) * u128::from(Self::WHOLE) >= u128::from(self.0) * u128::from(whole)
    }
}

/// Thresholds of a campaign (fractions of the devices offered so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A finished wave below this success share pauses the campaign.
    pub success: Fraction,
    /// Failures reaching this share abort the campaign.
    pub failure: Fraction,
}

/// Default failure threshold (docs/ota.md §6).
pub const DEFAULT_FAILURE_THRESHOLD: f64 = 0.1;
/// Default success threshold (docs/ota.md §6).
pub const DEFAULT_SUCCESS_THRESHOLD: f64 = 0.9;

/// How long each non-final state may last after the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `offered` → `downloading`.
    pub offered: Duration,
    /// Until the download finished.
    pub downloading: Duration,
    /// Until the image is verified.
    pub verifying: Duration,
    /// Until the device rebooted into it.
    pub pending_reboot: Duration,
    /// Until the new image confirmed.
    pub pending_confirm: Duration,
}

impl Default for Timeouts {
    /// The defaults of docs/ota.md §6.
    fn default() -> Self {
        Timeouts {
            offered: Duration::from_secs(3600),
            downloading: Duration::from_secs(3600),
            verifying: Duration::from_secs(300),
            pending_reboot: Duration::from_secs(600),
            pending_confirm: Duration::from_secs(900),
        }
    }
}

impl Timeouts {
    /// How long an entry may stay in `state`; `None` for `queued` (it waits
    /// for its wave) and final states.
    pub fn for_state(&self, state: EntryState) -> Option<Duration> {
        match state {
            EntryState::Offered => Some(self.offered),
            EntryState::Downloading => Some(self.downloading),
            EntryState::Verifying => Some(self.verifying),
            EntryState::PendingReboot => Some(self.pending_reboot),
            EntryState::PendingConfirm => Some(self.pending_confirm),
            _ => None,
        }
    }

    /// The deadline of an entry entering `state` at `now_ms`.
    pub fn deadline_ms(&self, state: EntryState, now_ms: i64) -> Option<i64> {
        self.for_state(state).map(|d| {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            now_ms.saturating_add(ms)
        })
    }
}

/// The `failed` reason of an entry that stayed too long in `state`.
pub fn timeout_reason(state: EntryState) -> String {
    format!("timeout-{}", state.as_str())
}

/// Entries per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCounts {
    /// `queued`.
    pub queued: u64,
    /// `offered`.
    pub offered: u64,
    /// `downloading`.
    pub downloading: u64,
    /// `verifying`.
    pub verifying: u64,
    /// `pending-reboot`.
    pub pending_reboot: u64,
    /// `pending-confirm`.
    pub pending_confirm: u64,
    /// `succeeded`.
    pub succeeded: u64,
    /// `failed`.
    pub failed: u64,
    /// `rolled-back`.
    pub rolled_back: u64,
    /// `cancelled`.
    pub cancelled: u64,
}

impl StateCounts {
    fn slot(&mut self, state: EntryState) -> &mut u64 {
        match state {
            EntryState::Queued => &mut self.queued,
            EntryState::Offered => &mut self.offered,
            EntryState::Downloading => &mut self.downloading,
            EntryState::Verifying => &mut self.verifying,
            EntryState::PendingReboot => &mut self.pending_reboot,
            EntryState::PendingConfirm => &mut self.pending_confirm,
            EntryState::Succeeded => &mut self.succeeded,
            EntryState::Failed => &mut self.failed,
            EntryState::RolledBack => &mut self.rolled_back,
            EntryState::Cancelled => &mut self.cancelled,
        }
    }

    /// Adds `n` entries in `state`.
    pub fn add(&mut self, state: EntryState, n: u64) {
        let slot = self.slot(state);
        *slot = slot.saturating_add(n);
    }

    /// Entries in `state`.
    pub fn get(&self, state: EntryState) -> u64 {
        let mut copy = *self;
        *copy.slot(state)
    }

    /// Every entry.
    pub fn total(&self) -> u64 {
        EntryState::ALL.into_iter().map(|s| self.get(s)).sum()
    }

    /// `failed` + `rolled-back`.
    pub fn failures(&self) -> u64 {
        self.failed.saturating_add(self.rolled_back)
    }

    /// Entries not in a final state (queued included).
    pub fn open(&self) -> u64 {
        EntryState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .map(|s| self.get(s))
            .sum()
    }

    /// The sum of two counts.
    pub fn plus(&self, other: &StateCounts) -> StateCounts {
        let mut sum = *self;
        for s in EntryState::ALL {
            sum.add(s, other.get(s));
        }
        sum
    }
}

/// One wave as the engine sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    /// The wave, from 1.
    pub wave: u32,
    /// Its entries per state.
    pub counts: StateCounts,
    /// How many of its entries were offered (whatever their state now).
    pub offered: u64,
    /// When one of its entries last changed, Unix ms.
    pub last_change_ms: Option<i64>,
}

impl WaveProgress {
    /// Whether the wave holds devices.
    pub fn is_empty(&self) -> bool {
        self.counts.total() == 0
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The campaign's status.
    pub status: CampaignStatus,
    /// The last wave started (0: none yet).
    pub current_wave: u32,
    /// The last wave whose success check passed or an operator overrode.
    pub reviewed_wave: u32,
    /// Every wave, in order (wave 1 first), empty ones included.
    pub waves: &'a [WaveProgress],
    /// The campaign's thresholds.
    pub thresholds: Thresholds,
    /// Minimum time between a wave finishing and the next starting.
    pub soak: Duration,
    /// The time now, Unix ms.
    pub now_ms: i64,
}

/// What the engine does next with a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Failures reached the failure threshold: stop at once.
    Abort {
        /// `failed` + `rolled-back` so far.
        failures: u64,
        /// Devices offered so far.
        offered: u64,
    },
    /// A finished wave's success share is below the success threshold.
    Pause {
        /// The wave.
        wave: u32,
        /// Its devices that succeeded.
        succeeded: u64,
        /// Its devices that were offered.
        offered: u64,
    },
    /// Offer the update to this wave.
    StartWave(u32),
    /// Every wave finished.
    Complete,
    /// Nothing to do now.
    Wait,
}

/// The next step of a campaign (docs/ota.md §5). Failures are checked
/// first, in every active status, so an abort is never later than the
/// report that reached the threshold; a wave starts only when the one
/// before has no open entry and has soaked, so two waves are never in
/// flight at once.
pub fn decide(p: &Progress<'_>) -> Decision {
    if !matches!(p.status, CampaignStatus::Running | CampaignStatus::Paused) {
        return Decision::Wait;
    }
    let offered: u64 = p.waves.iter().map(|w| w.offered).sum();
    let failures: u64 = p.waves.iter().map(|w| w.counts.failures()).sum();
    if failures > 0 && p.thresholds.failure.reached_by(failures, offered) {
        return Decision::Abort { failures, offered };
    }
    if p.status != CampaignStatus::Running {
        return Decision::Wait;
    }
    let next_wave = |after: u32| {
        p.waves
            .iter()
            .find(|w| w.wave > after && !w.is_empty())
            .map(|w| w.wave)
    };
    if p.current_wave == 0 {
        return match next_wave(0) {
            Some(w) => Decision::StartWave(w),
            None => Decision::Complete,
        };
    }
    let Some(current) = p.waves.iter().find(|w| w.wave == p.current_wave) else {
        return Decision::Complete;
    };
    if current.counts.open() > 0 {
        return Decision::Wait;
    }
    if p.reviewed_wave < current.wave
        && current.offered > 0
        && !p
            .thresholds
            .success
            .reached_by(current.counts.succeeded, current.offered)
    {
        return Decision::Pause {
            wave: current.wave,
            succeeded: current.counts.succeeded,
            offered: current.offered,
        };
    }
    match next_wave(current.wave) {
        None => Decision::Complete,
        Some(next) => {
            let soak_ms = i64::try_from(p.soak.as_millis()).unwrap_or(i64::MAX);
            let finished = current.last_change_ms.unwrap_or(i64::MIN);
            if p.now_ms.saturating_sub(finished) >= soak_ms {
                Decision::StartWave(next)
            } else {
                Decision::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev-{i:04}")).collect()
    }

    fn th(success: f64, failure: f64) -> Thresholds {
        Thresholds {
            success: Fraction::new(success, "success").expect("ok"),
            failure: Fraction::new(failure, "failure").expect("ok"),
        }
    }

    fn wave(n: u32, counts: StateCounts, offered: u64, at: Option<i64>) -> WaveProgress {
        WaveProgress {
            wave: n,
            counts,
            offered,
            last_change_ms: at,
        }
    }

    fn counts(pairs: &[(EntryState, u64)]) -> StateCounts {
        let mut c = StateCounts::default();
        for (s, n) in pairs {
            c.add(*s, *n);
        }
        c
    }

    #[test]
    fn waves_parse_and_refuse() {
        let w: Waves = "1,10,50,100".parse().expect("parses");
        assert_eq!(w.percentages(), &[1, 10, 50, 100]);
        assert_eq!(w.to_string(), "1,10,50,100");
        assert_eq!(
            "10%, 100%".parse::<Waves>().expect("ok").percentages(),
            &[10, 100]
        );
        for bad in [
            "",
            "0,100",
            "10,50",
            "50,10,100",
            "10,10,100",
            "101",
            "a,100",
        ] {
            assert!(bad.parse::<Waves>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wave_ends_round_up_and_hold_one_device_each() {
        let w: Waves = "1,10,50,100".parse().expect("ok");
        assert_eq!(w.ends(100), vec![1, 10, 50, 100]);
        assert_eq!(w.ends(1000), vec![10, 100, 500, 1000]);
        assert_eq!(w.ends(10), vec![1, 2, 5, 10]);
        assert_eq!(w.ends(3), vec![1, 2, 3, 3]);
        assert_eq!(w.ends(0), vec![0, 0, 0, 0]);
    }

    #[test]
    fn the_shuffle_is_stable_and_depends_on_the_campaign() {
        let devices = ids(50);
        let w = Waves::all_at_once();
        let a = assign_waves(1, &devices, &w);
        let again = assign_waves(1, &devices, &w);
        let b = assign_waves(2, &devices, &w);
        assert_eq!(a, again);
        let order = |s: &[WaveSlot]| s.iter().map(|x| x.device.clone()).collect::<Vec<_>>();
        assert_ne!(order(&a), order(&b));
        let mut reversed = devices.clone();
        reversed.reverse();
        assert_eq!(order(&assign_waves(1, &reversed, &w)), order(&a));
    }

    #[test]
    fn states_only_move_forward() {
        use EntryState::*;
        assert!(Queued.can_move_to(Offered));
        assert!(Offered.can_move_to(PendingConfirm));
        assert!(PendingConfirm.can_move_to(Succeeded));
        assert!(!PendingConfirm.can_move_to(Downloading));
        assert!(!Downloading.can_move_to(Downloading));
        assert!(!Succeeded.can_move_to(Failed));
        assert!(!Failed.can_move_to(Cancelled));
        assert!(Verifying.can_move_to(Cancelled));
        assert!(!PendingReboot.can_move_to(Cancelled));
        assert!(PendingReboot.can_move_to(RolledBack));
        assert!(!Offered.can_move_to(Queued));
        assert_eq!(EntryState::sources(Offered), vec![Queued]);
        assert_eq!(
            EntryState::sources(Cancelled),
            vec![Queued, Offered, Downloading, Verifying]
        );
        for s in EntryState::ALL {
            assert_eq!(s.as_str().parse::<EntryState>(), Ok(s));
        }
        for s in CampaignStatus::ALL {
            assert_eq!(s.as_str().parse::<CampaignStatus>(), Ok(s));
        }
    }

    #[test]
    fn timeouts_name_their_state() {
        let t = Timeouts::default();
        assert_eq!(t.for_state(EntryState::Queued), None);
        assert_eq!(t.for_state(EntryState::Succeeded), None);
        assert_eq!(
            t.deadline_ms(EntryState::Verifying, 1000),
            Some(1000 + 300_000)
        );
        assert_eq!(
            timeout_reason(EntryState::PendingConfirm),
            "timeout-pending-confirm"
        );
    }

    #[test]
    fn fractions_compare_exactly() {
        let f = Fraction::new(0.3, "failure").expect("ok");
        assert!(f.reached_by(3, 10));
        assert!(!f.reached_by(2, 10));
        assert!(!f.reached_by(0, 0));
        assert!(Fraction::new(1.5, "failure").is_err());
        assert!(Fraction::new(f64::NAN, "failure").is_err());
    }

    #[test]
    fn a_fresh_running_campaign_starts_its_first_wave() {
        use EntryState::*;
        let waves = [
            wave(1, counts(&[(Queued, 1)]), 0, None),
            wave(2, counts(&[(Queued, 9)]), 0, None),
        ];
        let p = Progress {
            status: CampaignStatus::Running,
            current_wave: 0,
            reviewed_wave: 0,
            waves: &waves,
            thresholds: th(0.9, 0.1),
            soak: Duration::from_secs(60),
            now_ms: 0,
        };
        assert_eq!(decide(&p), Decision::StartWave(1));
        assert_eq!(
            decide(&Progress {
                status: CampaignStatus::Draft,
                ..p
            }),
            Decision::Wait
        );
    }

    #[test]
    fn a_finished_wave_soaks_then_the_next_starts() {
        use EntryState::*;
        let waves = [
            wave(1, counts(&[(Succeeded, 1)]), 1, Some(10_000)),
            wave(2, counts(&[(Queued, 9)]), 0, None),
        ];
        let p = Progress {
            status: CampaignStatus::Running,
            current_wave: 1,
            reviewed_wave: 0,
            waves: &waves,
            thresholds: th(0.9, 0.1),
            soak: Duration::from_secs(60),
            now_ms: 69_999,
        };
        assert_eq!(decide(&p), Decision::Wait);
        assert_eq!(
            decide(&Progress {
                now_ms: 70_000,
                ..p
            }),
            Decision::StartWave(2)
        );
    }

    #[test]
    fn a_weak_wave_pauses_until_reviewed() {
        use EntryState::*;
        let waves = [
            wave(
                1,
                counts(&[(Succeeded, 17), (Failed, 1), (Cancelled, 2)]),
                20,
                Some(0),
            ),
            wave(2, counts(&[(Queued, 80)]), 0, None),
        ];
        let p = Progress {
            status: CampaignStatus::Running,
            current_wave: 1,
            reviewed_wave: 0,
            waves: &waves,
            thresholds: th(0.9, 0.1),
            soak: Duration::ZERO,
            now_ms: 1,
        };
        assert_eq!(
            decide(&p),
            Decision::Pause {
                wave: 1,
                succeeded: 17,
                offered: 20
            }
        );
        assert_eq!(
            decide(&Progress {
                reviewed_wave: 1,
                ..p
            }),
            Decision::StartWave(2)
        );
    }

    #[test]
    fn the_last_wave_finishing_completes() {
        use EntryState::*;
        let waves = [
            wave(1, counts(&[(Succeeded, 2)]), 2, Some(0)),
            wave(2, StateCounts::default(), 0, None),
        ];
        let p = Progress {
            status: CampaignStatus::Running,
            current_wave: 1,
            reviewed_wave: 1,
            waves: &waves,
            thresholds: th(0.9, 0.1),
            soak: Duration::from_secs(3600),
            now_ms: 1,
        };
        assert_eq!(decide(&p), Decision::Complete);
    }

    #[test]
    fn failures_abort_even_while_paused() {
        use EntryState::*;
        let waves = [wave(
            1,
            counts(&[(RolledBack, 1), (PendingConfirm, 9)]),
            10,
            Some(0),
        )];
        let p = Progress {
            status: CampaignStatus::Paused,
            current_wave: 1,
            reviewed_wave: 0,
            waves: &waves,
            thresholds: th(0.9, 0.1),
            soak: Duration::ZERO,
            now_ms: 1,
        };
        assert_eq!(
            decide(&p),
            Decision::Abort {
                failures: 1,
                offered: 10
            }
        );
    }

    proptest! {
        #[test]
        fn waves_cover_every_device_exactly_once(
            n in 0usize..400,
            campaign in any::<u64>(),
            raw in proptest::collection::btree_set(1u8..100, 0..6),
        ) {
            let mut p: Vec<u8> = raw.into_iter().collect();
            p.push(100);
            let w = Waves::new(p).expect("valid");
            let devices = ids(n);
            let slots = assign_waves(campaign, &devices, &w);
            prop_assert_eq!(slots.len(), n);
            let mut seen: Vec<&str> = slots.iter().map(|s| s.device.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), n);
            // Waves ascend along the order, positions count up, and every
            // wave holds at least one device while devices remain.
            for (i, s) in slots.iter().enumerate() {
                prop_assert_eq!(s.position as usize, i);
                prop_assert!(s.wave >= 1 && s.wave as usize <= w.len());
            }
            prop_assert!(slots.windows(2).all(|p| p[0].wave <= p[1].wave));
            let ends = w.ends(n);
            for (k, end) in ends.iter().enumerate() {
                let before = if k == 0 { 0 } else { ends[k - 1] };
                let in_wave = slots.iter().filter(|s| s.wave as usize == k + 1).count();
                prop_assert_eq!(in_wave, end - before);
                if before < n {
                    prop_assert!(in_wave >= 1);
                }
                let pct = usize::from(w.percentages()[k]);
                prop_assert!(*end >= (n * pct).div_ceil(100).min(n));
            }
        }

        #[test]
        fn abort_happens_as_soon_as_failures_reach_the_threshold(
            offered in 1u64..500,
            failures in 0u64..500,
            threshold in 0.01f64..1.0,
        ) {
            let failures = failures.min(offered);
            let mut c = StateCounts::default();
            c.add(EntryState::Failed, failures);
            c.add(EntryState::Downloading, offered - failures);
            let waves = [wave(1, c, offered, Some(0)), wave(2, counts(&[(EntryState::Queued, 5)]), 0, None)];
            let p = Progress {
                status: CampaignStatus::Running,
                current_wave: 1,
                reviewed_wave: 0,
                waves: &waves,
                thresholds: th(0.9, threshold),
                soak: Duration::ZERO,
                now_ms: 1,
            };
            let f = Fraction::new(threshold, "failure").expect("ok");
            let reached = failures > 0
                && u128::from(failures) * 1_000_000 >= u128::from(f.0) * u128::from(offered);
            let aborts = matches!(decide(&p), Decision::Abort { .. });
            prop_assert_eq!(aborts, reached);
        }

        #[test]
        fn never_two_waves_in_flight(
            open in 0u64..5,
            done in 0u64..5,
            current in 1u32..4,
            reviewed in 0u32..4,
            now in 0i64..1_000_000,
        ) {
            let mut waves = Vec::new();
            for k in 1..=4u32 {
                let c = if k < current {
                    counts(&[(EntryState::Succeeded, 3)])
                } else if k == current {
                    counts(&[(EntryState::Downloading, open), (EntryState::Succeeded, done + 1)])
                } else {
                    counts(&[(EntryState::Queued, 3)])
                };
                let offered = if k <= current { c.total() } else { 0 };
                waves.push(wave(k, c, offered, Some(0)));
            }
            let p = Progress {
                status: CampaignStatus::Running,
                current_wave: current,
                reviewed_wave: reviewed,
                waves: &waves,
                thresholds: th(0.5, 1.0),
                soak: Duration::from_millis(1000),
                now_ms: now,
            };
            if let Decision::StartWave(k) = decide(&p) {
                prop_assert_eq!(open, 0);
                prop_assert_eq!(k, current + 1);
                prop_assert!(now >= 1000);
            }
        }
    }
}
