//! The evaluation task: feeds the fleet's events to a
//! [`rampart_alerts::Evaluator`] and records its transitions as alerts.
//!
//! Inputs, none of which scans the store:
//! - the pipeline's fan-out (readings, presence, rejected payloads and
//!   sequence conflicts), which is lossy under overload: a lag is counted
//!   and logged, and an absence alert is checked against the registry
//!   before it fires so that a lost event cannot raise a false one;
//! - the broker's security notices (handshake failures, ACL denials);
//! - the change feed: rule and channel changes reload the rules (within
//!   the feed's poll interval), certificate and registry changes update
//!   certificate-expiry trackers and owners;
//! - its own timers (`for` holds, absences, expiry dates, sliding windows).
//!
//! At start it restores the firing alerts from the store and seeds the
//! trackers from the registry (who is offline since when, last telemetry,
//! certificate expiry), so a restart neither repeats nor forgets alerts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_alerts::{
    Change, Condition, DeviceRef, Evaluator, RolloutHalt, Rule, Scope, Transition,
};
use rampart_ingest::LiveEvent;
use rampart_ota::campaign::CampaignStatus;
use rampart_proto::DeviceId;
use rampart_proto::ingest::SecurityNotice;
use rampart_store::{
    AlertStore, AnyStore, CampaignStore, ChangeKind, DeviceFilter, DeviceState, RuleScope, Store,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::AlertMetrics;

/// What the engine needs to run.
pub(crate) struct EngineInputs {
    pub(crate) store: AnyStore,
    pub(crate) live: broadcast::Receiver<Arc<LiveEvent>>,
    pub(crate) changes: broadcast::Receiver<rampart_store::Change>,
    pub(crate) security: mpsc::Receiver<SecurityNotice>,
    pub(crate) deliveries: Arc<Notify>,
    pub(crate) metrics: Arc<AlertMetrics>,
    pub(crate) hold_down: Duration,
}

fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn ms_of(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn time_of(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The longest the loop sleeps without looking at its timers.
const MAX_IDLE: Duration = Duration::from_secs(1);

struct Engine {
    store: AnyStore,
    eval: Evaluator,
    /// Device → owner (`user:NAME`), for owner-scoped rules.
    owners: HashMap<String, Option<String>>,
    deliveries: Arc<Notify>,
    metrics: Arc<AlertMetrics>,
    hold_down_ms: u64,
    out: Vec<Transition>,
}

/// Runs the engine until `shutdown`.
pub(crate) async fn run(mut inputs: EngineInputs, shutdown: CancellationToken) {
    let mut engine = Engine {
        store: inputs.store.clone(),
        eval: Evaluator::new(),
        owners: HashMap::new(),
        deliveries: Arc::clone(&inputs.deliveries),
        metrics: Arc::clone(&inputs.metrics),
        hold_down_ms: u64::try_from(inputs.hold_down.as_millis()).unwrap_or(u64::MAX),
        out: Vec::new(),
    };
    // Start: retry until the store answers (it may be restarting).
    loop {
        match engine.start().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "alert engine cannot load its state; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    // One timer for the loop's life, moved earlier when a rule falls due
    // sooner and re-armed once it fired: creating a timer per message (and
    // dropping it unfired) took the runtime's timer lock twice per reading.
    let wake = tokio::time::sleep(MAX_IDLE);
    tokio::pin!(wake);
    loop {
        let idle = engine
            .eval
            .next_due()
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE);
        let due = tokio::time::Instant::now() + idle;
        if wake.is_elapsed() || due < wake.deadline() {
            wake.as_mut().reset(due);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = inputs.live.recv() => match event {
                Ok(event) => {
                    engine.live(&event).await;
                    // Take in what else is waiting before evaluating:
                    // readings arrive a commit at a time.
                    engine.live_backlog(&mut inputs.live).await;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => engine.lagged(n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            change = inputs.changes.recv() => match change {
                Ok(change) => engine.change(&change).await,
                Err(broadcast::error::RecvError::Lagged(_)) => engine.reload().await,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(notice) = inputs.security.recv() => engine.security(&notice),
            _ = &mut wake => {}
        }
        engine.eval.tick(now_ms(), &mut engine.out);
        engine.apply().await;
    }
}

/// Most live events taken in at once before the rules are evaluated, so
/// that the other inputs (registry changes, shutdown) wait for a bounded
/// batch only.
const LIVE_BATCH: usize = 1024;

/// The device an event is about, with its owner from the cache (borrowed:
/// no allocation per message).
fn device_ref<'a>(owners: &'a HashMap<String, Option<String>>, id: &'a str) -> DeviceRef<'a> {
    DeviceRef {
        id,
        owner: owners.get(id).and_then(|o| o.as_deref()),
    }
}

/// When a presence event counts for the rules: an offline event only
/// after the hold-down, so a device back within it raised nothing
/// (flapping suppression; 0 turns it off).
fn presence_at(online: bool, at_ms: u64, hold_down_ms: u64) -> u64 {
    if online {
        at_ms
    } else {
        at_ms.saturating_add(hold_down_ms)
    }
}

/// The rollout halt a campaign status is, if any.
fn halt_of(status: CampaignStatus) -> Option<RolloutHalt> {
    match status {
        CampaignStatus::Paused => Some(RolloutHalt::Paused),
        CampaignStatus::Aborted => Some(RolloutHalt::Aborted),
        _ => None,
    }
}

/// A store rule as the evaluator needs it; `None` (logged) if its
/// expression no longer parses (written by a newer version).
fn to_rule(r: &rampart_store::AlertRule) -> Option<Rule> {
    match rampart_alerts::parse(&r.expr) {
        Ok(condition) => Some(Rule {
            id: r.id,
            scope: match &r.scope {
                RuleScope::Fleet => Scope::Fleet,
                RuleScope::Owner(o) => Scope::Owner(o.clone()),
                RuleScope::Device(d) => Scope::Device(d.clone()),
            },
            condition,
        }),
        Err(e) => {
            tracing::error!(rule = %r.name, expr = %r.expr, error = %e, "alert rule does not parse; it is not evaluated");
            None
        }
    }
}

impl Engine {
    async fn start(&mut self) -> rampart_store::Result<()> {
        self.load_rules().await?;
        for alert in self.store.firing_alerts().await? {
            self.eval.restore_firing(alert.rule_id, &alert.subject);
        }
        self.seed().await?;
        self.apply().await;
        tracing::info!(
            rules = self.eval.rules().len(),
            tracked = self.eval.tracked(),
            "alert engine started"
        );
        Ok(())
    }

    async fn load_rules(&mut self) -> rampart_store::Result<()> {
        let rules = self.store.alert_rules().await?;
        self.eval
            .set_rules(rules.iter().filter_map(to_rule).collect());
        Ok(())
    }

    /// Seeds the trackers from the registry: presence, last telemetry,
    /// certificate expiry, owners.
    async fn seed(&mut self) -> rampart_store::Result<()> {
        let devices = self
            .store
            .list_devices(&DeviceFilter {
                state: None,
                search: None,
                limit: None,
                offset: 0,
            })
            .await?;
        let now = now_ms();
        for d in devices {
            let id = d.id.as_str().to_owned();
            if matches!(d.state, DeviceState::Revoked | DeviceState::Disabled) {
                continue;
            }
            self.owners
                .insert(id.clone(), d.owner.as_ref().map(ToString::to_string));
            let owner = d.owner.as_ref().map(ToString::to_string);
            let dev = DeviceRef {
                id: &id,
                owner: owner.as_deref(),
            };
            let last = d.last_seen.map_or(ms_of(d.created_at), ms_of);
            self.eval.presence(dev, d.online, last, &mut self.out);
            self.eval.seed_telemetry(dev, last);
            self.eval
                .certificate(dev, ms_of(d.not_after), now, &mut self.out);
        }
        // Campaigns paused now (aborts are final: alerted when they happen).
        for c in self.store.list_campaigns(&[CampaignStatus::Paused]).await? {
            self.eval
                .rollout(c.id, halt_of(c.status), now, &mut self.out);
        }
        Ok(())
    }

    /// Rules changed: reload them and seed the new ones.
    async fn reload(&mut self) {
        match self.load_rules().await {
            Ok(()) => {
                if let Err(e) = self.seed().await {
                    tracing::warn!(error = %e, "cannot seed the new alert rules from the registry");
                }
                AlertMetrics::inc(&self.metrics.rule_reloads);
                tracing::info!(rules = self.eval.rules().len(), "alert rules reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload the alert rules"),
        }
    }

    /// Takes in the live events already waiting, up to [`LIVE_BATCH`].
    async fn live_backlog(&mut self, live: &mut broadcast::Receiver<Arc<LiveEvent>>) {
        for _ in 0..LIVE_BATCH {
            match live.try_recv() {
                Ok(event) => self.live(&event).await,
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                Err(_) => break,
            }
        }
    }

    fn lagged(&self, missed: u64) {
        AlertMetrics::add(&self.metrics.events_lagged, missed);
        tracing::warn!(
            missed,
            "alert engine fell behind the pipeline's fan-out; absence alerts are checked against the registry before firing"
        );
    }

    async fn live(&mut self, event: &LiveEvent) {
        match event {
            LiveEvent::Readings { device, readings } => {
                let dev = device_ref(&self.owners, device.as_str());
                let now = now_ms();
                for r in readings {
                    let metrics: Vec<(&str, f64)> =
                        r.metrics.iter().map(|(m, v)| (m.as_str(), *v)).collect();
                    let at = u64::try_from(r.ts_ms).unwrap_or(0).max(1);
                    // Device clocks can be off: time rules run on arrival time.
                    let at = at.min(now).max(now.saturating_sub(60_000));
                    self.eval.reading(dev, &metrics, at, &mut self.out);
                }
            }
            LiveEvent::Presence {
                device,
                online,
                at_ms,
                ..
            } => {
                let at = presence_at(
                    *online,
                    u64::try_from(*at_ms).unwrap_or(0),
                    self.hold_down_ms,
                );
                let id = device.as_str().to_owned();
                let dev = device_ref(&self.owners, &id);
                self.eval.presence(dev, *online, at, &mut self.out);
            }
            LiveEvent::Rejected { device, kind } => {
                let event = if kind == rampart_ingest::SEQUENCE_CONFLICT {
                    rampart_alerts::SecurityEvent::SequenceConflict
                } else {
                    rampart_alerts::SecurityEvent::RejectedPayload
                };
                let id = device.as_str().to_owned();
                let dev = device_ref(&self.owners, &id);
                self.eval
                    .security(event, Some(dev), "", now_ms(), &mut self.out);
            }
            LiveEvent::State { .. } => {}
        }
    }

    fn security(&mut self, notice: &SecurityNotice) {
        match notice {
            SecurityNotice::HandshakeFailed { source, at_ms } => {
                let at = u64::try_from(*at_ms).unwrap_or(0);
                self.eval.security(
                    rampart_alerts::SecurityEvent::HandshakeFailure,
                    None,
                    &source.to_string(),
                    at,
                    &mut self.out,
                );
            }
            SecurityNotice::AclDenied { identity, at_ms } => {
                let at = u64::try_from(*at_ms).unwrap_or(0);
                let id = identity.as_str().to_owned();
                let dev = device_ref(&self.owners, &id);
                self.eval.security(
                    rampart_alerts::SecurityEvent::AclDenial,
                    Some(dev),
                    "",
                    at,
                    &mut self.out,
                );
            }
        }
    }

    async fn change(&mut self, change: &rampart_store::Change) {
        match change.kind {
            ChangeKind::AlertConfigChanged => self.reload().await,
            ChangeKind::CampaignChanged => {
                if let Ok(id) = change.subject.parse::<u64>() {
                    self.campaign(id).await;
                }
            }
            ChangeKind::DeviceDeleted | ChangeKind::DeviceRevoked => {
                self.owners.remove(&change.subject);
                self.eval
                    .forget_device(change.subject.as_str(), now_ms(), &mut self.out);
            }
            ChangeKind::DeviceCreated
            | ChangeKind::CertificateActivated
            | ChangeKind::DeviceBound
            | ChangeKind::DeviceEnabled => {
                if let Ok(id) = DeviceId::parse(&change.subject) {
                    self.refresh_device(&id).await;
                }
            }
            _ => {}
        }
    }

    /// A campaign's status changed: a pause or an abort is a rollout halt.
    async fn campaign(&mut self, id: u64) {
        match self.store.campaign(id).await {
            Ok(Some(c)) => {
                self.eval
                    .rollout(id, halt_of(c.status), now_ms(), &mut self.out);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(campaign = id, error = %e, "cannot read a campaign for its alerts")
            }
        }
    }

    /// Re-reads one device (owner, certificate) after a registry change.
    async fn refresh_device(&mut self, id: &DeviceId) {
        match self.store.device(id).await {
            Ok(Some(d)) => {
                let owner = d.owner.as_ref().map(ToString::to_string);
                self.owners.insert(id.as_str().to_owned(), owner.clone());
                let dev = DeviceRef {
                    id: id.as_str(),
                    owner: owner.as_deref(),
                };
                self.eval
                    .certificate(dev, ms_of(d.not_after), now_ms(), &mut self.out);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(device_id = %id, error = %e, "cannot re-read a device for its alerts")
            }
        }
    }

    /// Whether an absence alert about to fire still holds in the registry
    /// (the fan-out may have dropped the event that ended it).
    async fn still_absent(&mut self, t: &Transition) -> bool {
        let Some(rule) = self.eval.rules().iter().find(|r| r.id == t.rule) else {
            return false;
        };
        let offline = matches!(rule.condition, Condition::Offline { .. });
        if !offline {
            return true;
        }
        let Ok(id) = DeviceId::parse(&t.subject) else {
            return true;
        };
        match self.store.device(&id).await {
            Ok(Some(d)) if d.online => {
                // The fan-out lost its reconnection: tell the evaluator.
                let dev = device_ref(&self.owners, id.as_str());
                let mut ignored = Vec::new();
                self.eval.presence(dev, true, now_ms(), &mut ignored);
                false
            }
            _ => true,
        }
    }

    /// Records the evaluator's transitions as alerts (with their queued
    /// notifications) and wakes the deliverer.
    async fn apply(&mut self) {
        let transitions = std::mem::take(&mut self.out);
        let mut queued = false;
        for t in transitions {
            let at = time_of(t.at_ms);
            let result = match t.change {
                Change::Firing => {
                    if !self.still_absent(&t).await {
                        AlertMetrics::inc(&self.metrics.suppressed);
                        continue;
                    }
                    self.store.fire_alert(t.rule, &t.subject, at, t.value).await
                }
                Change::Resolved => {
                    self.store
                        .resolve_alert(t.rule, &t.subject, at, t.value)
                        .await
                }
            };
            match result {
                Ok(Some(alert)) => {
                    queued = true;
                    let counter = match t.change {
                        Change::Firing => &self.metrics.fired,
                        Change::Resolved => &self.metrics.resolved,
                    };
                    AlertMetrics::inc(counter);
                    tracing::info!(alert = alert.id, rule = %alert.rule, subject = %alert.subject, state = alert.state.as_str(), "alert changed");
                }
                Ok(None) => {}
                Err(e) => {
                    AlertMetrics::inc(&self.metrics.store_errors);
                    tracing::error!(rule = t.rule, subject = %t.subject, error = %e, "cannot record an alert change");
                }
            }
        }
        if queued {
            self.deliveries.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluator() -> Evaluator {
        let mut e = Evaluator::new();
        e.set_rules(vec![Rule {
            id: 1,
            scope: Scope::Fleet,
            condition: rampart_alerts::parse("offline for 1s").expect("parses"),
        }]);
        e
    }

    const DEV: DeviceRef<'static> = DeviceRef {
        id: "d",
        owner: None,
    };

    #[test]
    fn the_hold_down_swallows_a_flap_and_delays_a_real_absence() {
        let hold = 5_000;
        let mut e = evaluator();
        let mut out = Vec::new();
        e.presence(DEV, false, presence_at(false, 0, hold), &mut out);
        e.presence(DEV, true, presence_at(true, 3_000, hold), &mut out);
        e.tick(60_000, &mut out);
        assert!(out.is_empty(), "back within the hold-down: {out:?}");

        e.presence(DEV, false, presence_at(false, 100_000, hold), &mut out);
        e.tick(105_999, &mut out);
        assert!(out.is_empty(), "{out:?}");
        e.tick(106_000, &mut out);
        assert_eq!(out.len(), 1, "offline for 1 s after the 5 s hold-down");
        assert_eq!(presence_at(false, 7, 0), 7, "0 turns it off");
    }
}
