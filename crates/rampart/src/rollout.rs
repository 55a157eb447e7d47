//! The rollout engine of `serve` (docs/ota.md §5): every `ota.tick` it
//! times out entries, sends the `cancel` downlinks of cancelled campaigns,
//! and asks [`rampart_ota::campaign::decide`] what each running or paused
//! campaign does next (abort, pause, start a wave by publishing offers,
//! complete). Device reports on `devices/{id}/ota/up` move entries as they
//! arrive, and a device that reconnects while holding an offer gets it
//! again.
//!
//! Every move is a conditional update in the store, so the CLI, the
//! console and other replicas may change campaigns at any time: the engine
//! reads the store afresh on each tick and a move that lost a race is
//! simply not made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rampart_broker::Broker;
use rampart_ota::campaign::{self, CampaignStatus, Decision, EntryState, Progress};
use rampart_ota::download::{self, DownloadGrant, TokenKey};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{InboundMessage, IngestOutcome, Rejection, RejectionKind};
use rampart_proto::topic::{Category, DeviceTopic, Direction};
use rampart_store::{
    Actor, AnyStore, Campaign, CampaignChange, CampaignEntry, CampaignStore, EntryMove, Firmware,
    FirmwareStore, PauseReason, StoreError,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Largest `ota/up` payload read.
pub const MAX_REPORT_BYTES: usize = 1024;
/// Longest reason code kept from a report.
const MAX_REASON_LEN: usize = 64;
/// Entries handled per tick for each kind of work (timeouts, cancels).
const BATCH: u32 = 1000;
/// How long an offer is retried after a connect, while the device has not
/// subscribed to `ota/down` yet.
const RESEND_WINDOW: Duration = Duration::from_secs(10);
/// Pause between those retries.
const RESEND_STEP: Duration = Duration::from_millis(100);

/// Counters of the rollout engine.
#[derive(Debug, Default)]
pub struct RolloutMetrics {
    /// Offers published (waves started and re-sends on connect).
    pub offers_sent: AtomicU64,
    /// Offers that could not be published.
    pub offers_failed: AtomicU64,
    /// `cancel` downlinks published.
    pub cancels_sent: AtomicU64,
    /// Entries failed by a timeout.
    pub timeouts: AtomicU64,
    /// Reports by status, in [`REPORT_STATUSES`] order.
    pub reports: [AtomicU64; 7],
    /// Reports matching no open entry of an offered campaign.
    pub reports_unmatched: AtomicU64,
    /// Reports that matched but did not move the entry (late, repeated).
    pub reports_stale: AtomicU64,
    /// Reports that were not valid JSON of docs/ota.md §3.
    pub reports_invalid: AtomicU64,
    /// Campaigns per status, in [`CampaignStatus::ALL`] order (a gauge,
    /// refreshed every tick).
    pub campaigns: [AtomicU64; 6],
}

/// The statuses a device reports, in [`RolloutMetrics::reports`] order.
pub const REPORT_STATUSES: [EntryState; 7] = [
    EntryState::Downloading,
    EntryState::Verifying,
    EntryState::PendingReboot,
    EntryState::PendingConfirm,
    EntryState::Succeeded,
    EntryState::Failed,
    EntryState::RolledBack,
];

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the engine needs besides the store.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// How often it runs.
    pub tick: Duration,
    /// Lifetime of a download URL.
    pub token_ttl: Duration,
    /// Base of download URLs, `https://host:port`, without a trailing `/`.
    pub download_base: String,
}

/// An `ota/down` message (docs/ota.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Downlink {
    /// Install this firmware.
    Offer {
        /// The campaign.
        campaign: u64,
        /// The signed manifest, hex.
        manifest: String,
        /// Its signature, hex.
        signature: String,
        /// Where to download the image.
        url: String,
        /// Image size.
        size: u64,
        /// Image SHA-256, lowercase hex.
        sha256: String,
    },
    /// Discard the download of this campaign.
    Cancel {
        /// The campaign.
        campaign: u64,
    },
}

/// An `ota/up` report (docs/ota.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Report {
    /// `downloading` … `rolled-back`.
    pub status: String,
    /// The version being installed.
    pub version: String,
    /// Bytes received.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Bytes expected.
    #[serde(default)]
    pub total: Option<u64>,
    /// Why it failed or rolled back.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Larger than [`MAX_REPORT_BYTES`].
    #[error("the report is {0} bytes; at most {MAX_REPORT_BYTES} are read")]
    TooLarge(usize),
    /// Not the JSON of docs/ota.md §3.
    #[error("the report is not {{\"status\",\"version\",...}} JSON: {0}")]
    Format(String),
    /// A status a device does not report.
    #[error("unknown report status '{0}'")]
    Status(String),
}

/// Parses an `ota/up` payload into the entry move it asks for (the
/// campaign is found later, by version).
pub fn parse_report(payload: &[u8]) -> Result<(Report, EntryState), ReportError> {
    if payload.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge(payload.len()));
    }
    let mut report: Report =
        serde_json::from_slice(payload).map_err(|e| ReportError::Format(e.to_string()))?;
    let state = report
        .status
        .parse::<EntryState>()
        .ok()
        .filter(|s| REPORT_STATUSES.contains(s))
        .ok_or_else(|| ReportError::Status(report.status.chars().take(40).collect()))?;
    // Reason codes are short and plain; anything else is cut and cleaned so
    // that what a device sends cannot fill the store or the console.
    report.reason = report.reason.map(|r| {
        r.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(MAX_REASON_LEN)
            .collect()
    });
    Ok((report, state))
}

/// The rollout engine.
pub struct Rollout {
    store: AnyStore,
    /// Weak: the broker owns the sink that holds this engine.
    broker: OnceLock<Weak<Broker>>,
    token_key: TokenKey,
    options: RolloutOptions,
    metrics: Arc<RolloutMetrics>,
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token key.
        f.debug_struct("Rollout")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Rollout {
    /// An engine on `store`, minting download tokens under `token_key`.
    pub fn new(store: AnyStore, token_key: TokenKey, options: RolloutOptions) -> Arc<Self> {
        Arc::new(Self {
            store,
            broker: OnceLock::new(),
            token_key,
            options,
            metrics: Arc::new(RolloutMetrics::default()),
        })
    }

    /// Connects the engine to the broker it publishes through.
    pub fn attach(&self, broker: &Arc<Broker>) {
        if self.broker.set(Arc::downgrade(broker)).is_err() {
            tracing::warn!("rollout engine attached twice; keeping the first broker");
        }
    }

    /// The engine's counters.
    pub fn metrics(&self) -> Arc<RolloutMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs a tick every `ota.tick` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.options.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if let Err(e) = self.tick(OffsetDateTime::now_utc()).await {
                        tracing::warn!(error = %e, "rollout tick failed; retrying on the next one");
                    }
                }
            }
        }
    }

    /// One pass: timeouts, due cancels, then each active campaign's next
    /// step, then the campaign gauge.
    pub async fn tick(&self, now: OffsetDateTime) -> Result<(), StoreError> {
        for e in self.store.expire_entries(now, BATCH).await? {
            inc(&self.metrics.timeouts);
            tracing::info!(
                campaign = e.campaign_id,
                device_id = %e.device_id,
                reason = e.reason.as_deref().unwrap_or("-"),
                "campaign entry timed out"
            );
        }
        for e in self.store.pending_cancels(BATCH).await? {
            self.send_cancel(&e).await?;
        }
        let active = self
            .store
            .list_campaigns(&[CampaignStatus::Running, CampaignStatus::Paused])
            .await?;
        for c in active {
            if let Err(e) = self.advance(&c, now).await {
                tracing::warn!(campaign = c.id, error = %e, "cannot advance campaign");
            }
        }
        let all = self.store.list_campaigns(&[]).await?;
        for (i, status) in CampaignStatus::ALL.iter().enumerate() {
            let n = all.iter().filter(|c| c.status == *status).count() as u64;
            if let Some(g) = self.metrics.campaigns.get(i) {
                g.store(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Applies [`campaign::decide`] to one campaign.
    async fn advance(&self, c: &Campaign, now: OffsetDateTime) -> Result<(), StoreError> {
        let waves = self.store.campaign_waves(c.id).await?;
        let progress = Progress {
            status: c.status,
            current_wave: c.current_wave,
            reviewed_wave: c.reviewed_wave,
            waves: &waves,
            thresholds: c.thresholds(),
            soak: c.soak,
            now_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        };
        let engine = Actor {
            name: "system".into(),
            source: "rollout".into(),
        };
        match campaign::decide(&progress) {
            Decision::Wait => {}
            Decision::Abort { failures, offered } => {
                self.change(c, CampaignChange::Abort { failures, offered }, &engine)
                    .await?;
                tracing::warn!(
                    campaign = c.id,
                    failures,
                    offered,
                    threshold = c.failure_threshold,
                    "campaign aborted: failures reached the failure threshold"
                );
            }
            Decision::Pause {
                wave,
                succeeded,
                offered,
            } => {
                let reason = PauseReason::SuccessThreshold {
                    wave,
                    succeeded,
                    offered,
                };
                self.change(c, CampaignChange::Pause(reason), &engine)
                    .await?;
                tracing::warn!(
                    campaign = c.id,
                    wave,
                    succeeded,
                    offered,
                    threshold = c.success_threshold,
                    "campaign paused: the wave's success share is below the threshold; resume to go on"
                );
            }
            Decision::Complete => {
                self.change(c, CampaignChange::Complete, &engine).await?;
                tracing::info!(campaign = c.id, "campaign completed");
            }
            Decision::StartWave(wave) => {
                let Some(entries) = self.store.start_wave(c.id, wave, &engine).await? else {
                    return Ok(());
                };
                tracing::info!(
                    campaign = c.id,
                    wave,
                    devices = entries.len(),
                    "campaign wave started"
                );
                let Some(fw) = self.store.firmware(c.firmware_id).await? else {
                    tracing::error!(
                        campaign = c.id,
                        firmware = c.firmware_id,
                        "campaign firmware is gone; its offers time out"
                    );
                    return Ok(());
                };
                for e in &entries {
                    self.send_offer(c.id, &fw, &e.device_id).await;
                }
            }
        }
        Ok(())
    }

    /// A status change that another process may have made first: losing
    /// that race is not an error.
    async fn change(
        &self,
        c: &Campaign,
        change: CampaignChange,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        match self.store.change_campaign(c.id, change, actor).await {
            Ok(_) | Err(StoreError::CampaignStatus { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The offer of campaign `campaign` for `device` (docs/ota.md §2).
    pub fn offer(&self, campaign: u64, fw: &Firmware, device: &DeviceId) -> Option<Downlink> {
        let ttl_ms = u64::try_from(self.options.token_ttl.as_millis()).unwrap_or(u64::MAX);
        let now_ms = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or_default();
        let token = download::mint(
            &self.token_key,
            &DownloadGrant {
                device_id: device.as_str().to_owned(),
                sha256: fw.sha256.clone(),
                expires_at_ms: now_ms.saturating_add(ttl_ms),
            },
        )?;
        Some(Downlink::Offer {
            campaign,
            manifest: hex::encode(&fw.manifest),
            signature: hex::encode(&fw.signature),
            url: format!(
                "{}/ota/v1/images/{}?t={token}",
                self.options.download_base, fw.sha256
            ),
            size: fw.size,
            sha256: fw.sha256.clone(),
        })
    }

    /// Publishes `message` on the device's `ota/down` at QoS 1; the number
    /// of sessions it reached.
    async fn publish(&self, device: &DeviceId, message: &Downlink) -> Option<usize> {
        let topic = DeviceTopic::new(device.clone(), Category::Ota, Direction::Down).to_string();
        let payload = match serde_json::to_vec(message) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(device_id = %device, error = %e, "cannot encode ota/down");
                return None;
            }
        };
        let broker = self.broker.get().and_then(Weak::upgrade)?;
        match broker
            .publish_from_server(&topic, Bytes::from(payload), 1)
            .await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(device_id = %device, topic, error = %e, "cannot publish on ota/down");
                None
            }
        }
    }

    /// Sends one offer; returns the sessions it reached.
    async fn send_offer(&self, campaign: u64, fw: &Firmware, device: &DeviceId) -> usize {
        let Some(offer) = self.offer(campaign, fw, device) else {
            inc(&self.metrics.offers_failed);
            tracing::error!(device_id = %device, campaign, "cannot mint a download token");
            return 0;
        };
        match self.publish(device, &offer).await {
            Some(n) => {
                inc(&self.metrics.offers_sent);
                if n == 0 {
                    tracing::info!(device_id = %device, campaign, "offer sent; the device is not subscribed now and gets it again when it connects");
                } else {
                    tracing::info!(device_id = %device, campaign, version = %fw.version, "offer sent");
                }
                n
            }
            None => {
                inc(&self.metrics.offers_failed);
                0
            }
        }
    }

    async fn send_cancel(&self, e: &CampaignEntry) -> Result<(), StoreError> {
        let message = Downlink::Cancel {
            campaign: e.campaign_id,
        };
        if self.publish(&e.device_id, &message).await.is_some() {
            inc(&self.metrics.cancels_sent);
            tracing::info!(device_id = %e.device_id, campaign = e.campaign_id, "cancel sent");
            self.store.cancel_sent(e.campaign_id, &e.device_id).await?;
        }
        Ok(())
    }

    /// `devices/{id}/ota/up`: moves the matching entry.
    pub async fn report(&self, m: &InboundMessage) -> IngestOutcome {
        let device = &m.device;
        let (report, state) = match parse_report(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                inc(&self.metrics.reports_invalid);
                tracing::warn!(device_id = %device, error = %e, "ota report refused");
                return IngestOutcome::Rejected(Rejection {
                    kind: match e {
                        ReportError::TooLarge(_) => RejectionKind::QuotaExceeded,
                        _ => RejectionKind::PayloadFormatInvalid,
                    },
                    detail: e.to_string(),
                });
            }
        };
        if let Some(i) = REPORT_STATUSES.iter().position(|s| *s == state)
            && let Some(c) = self.metrics.reports.get(i)
        {
            inc(c);
        }
        let entry = match self.store.active_entry(device, &report.version).await {
            Ok(e) => e,
            Err(e) => return internal(device, &e),
        };
        let Some(entry) = entry else {
            inc(&self.metrics.reports_unmatched);
            tracing::warn!(
                device_id = %device,
                status = state.as_str(),
                version = %report.version.chars().take(64).collect::<String>(),
                reason = report.reason.as_deref().unwrap_or("-"),
                "ota report matches no campaign entry"
            );
            return IngestOutcome::Committed;
        };
        let reason = match state {
            EntryState::Failed | EntryState::RolledBack => {
                Some(report.reason.clone().unwrap_or_else(|| "unknown".into()))
            }
            _ => None,
        };
        let moved = self
            .store
            .move_entry(EntryMove {
                campaign_id: entry.campaign_id,
                device_id: device.clone(),
                to: state,
                reason,
                bytes: report.bytes,
                total: report.total,
            })
            .await;
        match moved {
            Ok(Some(e)) => {
                if state != EntryState::Downloading || entry.state != EntryState::Downloading {
                    tracing::info!(
                        device_id = %device,
                        campaign = e.campaign_id,
                        state = e.state.as_str(),
                        reason = e.reason.as_deref().unwrap_or("-"),
                        "campaign entry moved"
                    );
                }
                IngestOutcome::Committed
            }
            Ok(None) => {
                inc(&self.metrics.reports_stale);
                tracing::debug!(device_id = %device, campaign = entry.campaign_id, status = state.as_str(), "late ota report ignored");
                IngestOutcome::Committed
            }
            Err(e) => internal(device, &e),
        }
    }

    /// A device connected: re-send the offers it holds. It subscribes to
    /// `ota/down` just after its CONNECT, so an offer reaching no session
    /// is retried for a few seconds.
    pub async fn connected(self: Arc<Self>, device: DeviceId) {
        let entries = match self.store.open_entries_of(&device).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(device_id = %device, error = %e, "cannot look up offers to re-send");
                return;
            }
        };
        for e in entries.into_iter().filter(|e| e.state.resends_offer()) {
            let Ok(Some(c)) = self.store.campaign(e.campaign_id).await else {
                continue;
            };
            if !matches!(c.status, CampaignStatus::Running | CampaignStatus::Paused) {
                continue;
            }
            let Ok(Some(fw)) = self.store.firmware(c.firmware_id).await else {
                continue;
            };
            let deadline = tokio::time::Instant::now() + RESEND_WINDOW;
            while self.send_offer(c.id, &fw, &device).await == 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(RESEND_STEP).await;
            }
        }
    }
}

fn internal(device: &DeviceId, e: &StoreError) -> IngestOutcome {
    tracing::error!(device_id = %device, error = %e, "cannot record an ota report");
    IngestOutcome::Rejected(Rejection {
        kind: RejectionKind::Internal,
        detail: "the report could not be recorded".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_as_docs_ota_3_says() {
        let (r, s) = parse_report(
            br#"{"status":"downloading","version":"1.4.2","bytes":65536,"total":123456}"#,
        )
        .expect("parses");
        assert_eq!(s, EntryState::Downloading);
        assert_eq!((r.bytes, r.total), (Some(65536), Some(123456)));
        let (r, s) =
            parse_report(br#"{"status":"failed","version":"1.4.2","reason":"hash-mismatch"}"#)
                .expect("parses");
        assert_eq!(
            (s, r.reason.as_deref()),
            (EntryState::Failed, Some("hash-mismatch"))
        );
        let (_, s) = parse_report(br#"{"status":"rolled-back","version":"1"}"#).expect("ok");
        assert_eq!(s, EntryState::RolledBack);
    }

    #[test]
    fn bad_reports_are_refused_with_a_reason() {
        assert!(matches!(
            parse_report(br#"{"status":"queued","version":"1"}"#),
            Err(ReportError::Status(_))
        ));
        assert!(matches!(
            parse_report(br#"{"status":"offered","version":"1"}"#),
            Err(ReportError::Status(_))
        ));
        assert!(matches!(parse_report(b"nope"), Err(ReportError::Format(_))));
        assert!(matches!(
            parse_report(br#"{"version":"1"}"#),
            Err(ReportError::Format(_))
        ));
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(parse_report(&big), Err(ReportError::TooLarge(_))));
        let (r, _) = parse_report(
            format!(
                r#"{{"status":"failed","version":"1","reason":"{}<script>"}}"#,
                "x".repeat(100)
            )
            .as_bytes(),
        )
        .expect("ok");
        assert_eq!(r.reason.map(|r| r.len()), Some(MAX_REASON_LEN));
    }

    #[test]
    fn downlinks_have_the_wire_shape() {
        let cancel = serde_json::to_value(Downlink::Cancel { campaign: 17 }).expect("json");
        assert_eq!(
            cancel,
            serde_json::json!({"type": "cancel", "campaign": 17})
        );
        let offer = serde_json::to_value(Downlink::Offer {
            campaign: 1,
            manifest: "ab".into(),
            signature: "cd".into(),
            url: "https://h:1/ota/v1/images/x?t=y".into(),
            size: 3,
            sha256: "x".into(),
        })
        .expect("json");
        assert_eq!(offer["type"], "offer");
        assert_eq!(offer["size"], 3);
        assert_eq!(offer["url"], "https://h:1/ota/v1/images/x?t=y");
    }
}
