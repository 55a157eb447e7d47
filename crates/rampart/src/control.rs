//! The MQTT control plane of `serve`: certificate renewal on
//! `devices/{id}/cert/up` and claim confirmation on `devices/{id}/bind/up`,
//! answered on the matching `down` topics; and the claim requests that the
//! change feed announces, sent on `devices/{id}/bind/down`.
//!
//! [`ControlPlane`] is the broker's [`IngestSink`]: it handles those two
//! categories itself and hands every other uplink to the telemetry
//! pipeline unchanged (same ordering and back-pressure contract). A
//! device's QoS 1 `cert/up` or `bind/up` is acknowledged only once the
//! outcome is in the store and the answer is queued (durably, for a
//! persistent session). The decisions are `rampart_provisioning`'s; this
//! module is the wiring: limits, decoding, answering, counting, logging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use rampart_broker::Broker;
use rampart_ingest::Pipeline;
use rampart_proto::DeviceId;
use rampart_proto::control::{
    BindErrorCode, BindMessage, ClaimConfirmation, RenewalAnswer, RenewalErrorCode, RenewalRequest,
};
use rampart_proto::ingest::{
    Admission, InboundMessage, IngestOutcome, IngestSink, PresenceEvent, Rejection, RejectionKind,
    SecurityNotice,
};
use rampart_proto::topic::{Category, DeviceTopic, Direction};
use rampart_provisioning::claim::{self, ClaimPolicy};
use rampart_provisioning::limit::{RateLimiter, RatePolicy};
use rampart_provisioning::renewal::{Renewal, RenewalError};
use rampart_store::{Actor, Change, ChangeKind, ClaimStatus, Store};
use time::OffsetDateTime;

use crate::alerting::SecurityFeed;
use crate::platform::Platform;
use crate::rollout::Rollout;

/// Counters of the control plane.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    /// Renewed certificates issued (pending until used).
    pub renewals_issued: AtomicU64,
    /// Renewal requests refused (any reason, rate limit included).
    pub renewals_refused: AtomicU64,
    /// Renewal requests refused by the rate limit.
    pub renewals_rate_limited: AtomicU64,
    /// Claim requests sent to devices.
    pub claim_requests_sent: AtomicU64,
    /// Devices bound by a confirmed claim.
    pub claims_bound: AtomicU64,
    /// Claim confirmations refused (any reason).
    pub confirmations_refused: AtomicU64,
    /// Answers that could not be queued for the device.
    pub answers_failed: AtomicU64,
}

impl ControlMetrics {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter as (name, value), for exposition.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("renewals_issued", get(&self.renewals_issued)),
            ("renewals_refused", get(&self.renewals_refused)),
            ("renewals_rate_limited", get(&self.renewals_rate_limited)),
            ("claim_requests_sent", get(&self.claim_requests_sent)),
            ("claims_bound", get(&self.claims_bound)),
            ("confirmations_refused", get(&self.confirmations_refused)),
            ("answers_failed", get(&self.answers_failed)),
        ]
    }
}

/// The limits and policies of the control plane.
#[derive(Debug, Clone, Copy)]
pub struct ControlOptions {
    /// How often a device may ask for a renewal.
    pub renewals: RatePolicy,
    /// How often a device may send a claim confirmation.
    pub confirmations: RatePolicy,
    /// Claim expiry and attempts.
    pub claims: ClaimPolicy,
}

/// The broker's sink: control topics here, telemetry to the pipeline.
#[derive(Debug)]
pub struct ControlPlane {
    pipeline: Pipeline,
    platform: Arc<Platform>,
    /// Set once the broker exists (it needs this sink first). Weak: the
    /// broker owns this sink, and shutdown relies on dropping the broker.
    broker: OnceLock<Weak<Broker>>,
    renewals: Mutex<RateLimiter>,
    confirmations: Mutex<RateLimiter>,
    claims: ClaimPolicy,
    metrics: Arc<ControlMetrics>,
    /// Where the broker's security notices go (the alert engine).
    security: OnceLock<SecurityFeed>,
    /// The rollout engine, which handles `ota/up` and re-sends offers on
    /// connect; without one, `ota/up` goes to the pipeline like any other.
    rollout: OnceLock<Arc<Rollout>>,
}

/// How an answer to a device went.
enum Answered {
    /// Queued for the device (durably, for a persistent session).
    Queued,
    /// Could not be queued; the device's publish is not acknowledged as done.
    Failed,
}

impl ControlPlane {
    /// A control plane in front of `pipeline`.
    pub fn new(pipeline: Pipeline, platform: Arc<Platform>, options: ControlOptions) -> Arc<Self> {
        Arc::new(Self {
            pipeline,
            platform,
            broker: OnceLock::new(),
            renewals: Mutex::new(RateLimiter::new(options.renewals)),
            confirmations: Mutex::new(RateLimiter::new(options.confirmations)),
            claims: options.claims,
            metrics: Arc::new(ControlMetrics::default()),
            security: OnceLock::new(),
            rollout: OnceLock::new(),
        })
    }

    /// Sends the broker's security notices to the alert engine.
    pub fn feed_security(&self, feed: SecurityFeed) {
        if self.security.set(feed).is_err() {
            tracing::warn!("security feed attached twice; keeping the first");
        }
    }

    /// Hands `ota/up` and connects to the rollout engine.
    pub fn with_rollout(&self, rollout: Arc<Rollout>) {
        if self.rollout.set(rollout).is_err() {
            tracing::warn!("rollout engine set twice; keeping the first");
        }
    }

    /// Connects the control plane to the broker it answers through.
    pub fn attach(&self, broker: &Arc<Broker>) {
        if self.broker.set(Arc::downgrade(broker)).is_err() {
            tracing::warn!("control plane attached twice; keeping the first broker");
        }
    }

    /// The control plane's counters.
    pub fn metrics(&self) -> Arc<ControlMetrics> {
        Arc::clone(&self.metrics)
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    fn store(&self) -> &dyn Store {
        &self.platform.store
    }

    /// Publishes `payload` on `devices/{device}/{category}/down` at QoS 1.
    async fn answer(&self, device: &DeviceId, category: Category, payload: Vec<u8>) -> Answered {
        let topic = DeviceTopic::new(device.clone(), category, Direction::Down).to_string();
        let Some(broker) = self.broker() else {
            ControlMetrics::inc(&self.metrics.answers_failed);
            tracing::error!(device_id = %device, topic, "no broker to answer through");
            return Answered::Failed;
        };
        match broker
            .publish_from_server(&topic, Bytes::from(payload), 1)
            .await
        {
            Ok(0) => {
                tracing::warn!(device_id = %device, topic, "answer sent, but the device is not subscribed to it");
                Answered::Queued
            }
            Ok(_) => Answered::Queued,
            Err(e) => {
                ControlMetrics::inc(&self.metrics.answers_failed);
                tracing::error!(device_id = %device, topic, error = %e, "cannot answer the device");
                Answered::Failed
            }
        }
    }

    fn admitted(
        &self,
        limiter: &Mutex<RateLimiter>,
        device: &DeviceId,
    ) -> Result<(), std::time::Duration> {
        match limiter.lock() {
            Ok(mut l) => l.admit(device, Instant::now()),
            // A poisoned limiter must not stop renewals: admit.
            Err(_) => Ok(()),
        }
    }

    /// `devices/{id}/cert/up`.
    async fn renewal(&self, m: InboundMessage) -> IngestOutcome {
        let device = &m.device;
        let result = match self.admitted(&self.renewals, device) {
            Err(retry_after) => Err(RenewalError::RateLimited {
                device: device.clone(),
                retry_after,
            }),
            Ok(()) => self.renew(&m).await,
        };
        let (answer, outcome) = match result {
            Ok(renewed) => {
                ControlMetrics::inc(&self.metrics.renewals_issued);
                tracing::info!(
                    device_id = %device,
                    serial = %renewed.certificate.serial,
                    replaced_pending = renewed.replaced.as_deref().unwrap_or("-"),
                    "renewed certificate issued; pending until the device connects with it"
                );
                (
                    RenewalAnswer::Issued(renewed.answer()),
                    IngestOutcome::Committed,
                )
            }
            Err(e) => {
                ControlMetrics::inc(&self.metrics.renewals_refused);
                let code = e.code();
                if code == RenewalErrorCode::RateLimited {
                    ControlMetrics::inc(&self.metrics.renewals_rate_limited);
                }
                tracing::warn!(device_id = %device, code = code.as_str(), error = %e, "renewal refused");
                let kind = match code {
                    RenewalErrorCode::InvalidRequest | RenewalErrorCode::InvalidCsr => {
                        RejectionKind::PayloadFormatInvalid
                    }
                    RenewalErrorCode::RateLimited => RejectionKind::QuotaExceeded,
                    RenewalErrorCode::Internal => RejectionKind::Internal,
                    RenewalErrorCode::IdMismatch
                    | RenewalErrorCode::SameKey
                    | RenewalErrorCode::NotAllowed => RejectionKind::NotAuthorized,
                };
                let detail = e.to_string();
                (
                    RenewalAnswer::refused(code, detail.clone()),
                    IngestOutcome::Rejected(Rejection { kind, detail }),
                )
            }
        };
        match self.answer(device, Category::Cert, answer.encode()).await {
            Answered::Queued => outcome,
            Answered::Failed => failed("the answer could not be queued"),
        }
    }

    async fn renew(
        &self,
        m: &InboundMessage,
    ) -> Result<rampart_provisioning::renewal::Renewed, RenewalError> {
        let request = RenewalRequest::decode(&m.payload)
            .map_err(|e| RenewalError::InvalidRequest(e.to_string()))?;
        // The key the device proved it holds by connecting: a renewal must
        // bring another.
        let connected = self
            .broker()
            .and_then(|b| b.connected_identity(m.device.as_str()))
            .ok_or_else(|| RenewalError::NotAllowed {
                device: m.device.clone(),
                why: "it is not connected any more".into(),
            })?;
        let renewal = Renewal {
            store: self.store(),
            pki: &self.platform.pki,
        };
        renewal
            .renew(
                &m.device,
                &connected.public_key_sha256,
                &request,
                &device_actor(&m.device),
            )
            .await
    }

    /// `devices/{id}/bind/up`.
    async fn confirmation(&self, m: InboundMessage) -> IngestOutcome {
        let device = &m.device;
        let result = match self.admitted(&self.confirmations, device) {
            Err(retry_after) => Err(claim::ConfirmError {
                code: BindErrorCode::RateLimited,
                message: format!(
                    "too many confirmations; try again in {} s",
                    retry_after.as_secs().max(1)
                ),
            }),
            Ok(()) => match ClaimConfirmation::decode(&m.payload) {
                Err(e) => Err(claim::ConfirmError {
                    code: BindErrorCode::InvalidRequest,
                    message: format!("the confirmation is not {{\"nonce\": \"<hex>\"}}: {e}"),
                }),
                Ok(c) => {
                    claim::confirm(
                        self.store(),
                        device,
                        &c,
                        &self.claims,
                        OffsetDateTime::now_utc(),
                        &device_actor(device),
                    )
                    .await
                }
            },
        };
        let (answer, outcome) = match result {
            Ok(bound) => {
                ControlMetrics::inc(&self.metrics.claims_bound);
                let answer = claim::bound_message(&bound);
                if let BindMessage::Bound { owner } = &answer {
                    tracing::info!(device_id = %device, owner, "claim confirmed: device bound");
                }
                (answer, IngestOutcome::Committed)
            }
            Err(e) => {
                ControlMetrics::inc(&self.metrics.confirmations_refused);
                tracing::warn!(device_id = %device, code = e.code.as_str(), error = %e, "claim confirmation refused");
                let kind = match e.code {
                    BindErrorCode::InvalidRequest => RejectionKind::PayloadFormatInvalid,
                    BindErrorCode::RateLimited => RejectionKind::QuotaExceeded,
                    BindErrorCode::Internal => RejectionKind::Internal,
                    BindErrorCode::ClaimExpired
                    | BindErrorCode::NonceMismatch
                    | BindErrorCode::NoPendingClaim
                    | BindErrorCode::AlreadyBound
                    | BindErrorCode::NotAllowed => RejectionKind::NotAuthorized,
                };
                (
                    e.message(),
                    IngestOutcome::Rejected(Rejection {
                        kind,
                        detail: e.message,
                    }),
                )
            }
        };
        match self.answer(device, Category::Bind, answer.encode()).await {
            Answered::Queued => outcome,
            Answered::Failed => failed("the answer could not be queued"),
        }
    }

    /// Acts on a change-feed row: a claim started (by the CLI or the
    /// console) is sent to its device.
    pub async fn apply_change(&self, change: &Change) {
        if change.kind != ChangeKind::ClaimRequested {
            return;
        }
        let Ok(device) = DeviceId::parse(&change.subject) else {
            tracing::warn!(subject = %change.subject, "claim change for an invalid device id");
            return;
        };
        if let Err(e) = self.send_claim_request(&device).await {
            tracing::error!(device_id = %device, error = %e, "cannot send the claim request");
        }
    }

    async fn send_claim_request(&self, device: &DeviceId) -> Result<(), rampart_store::StoreError> {
        let Some(pending) = self.store().latest_claim(device).await? else {
            return Ok(());
        };
        // A later change may have ended or replaced it already.
        if pending.status != ClaimStatus::Pending || pending.expires_at <= OffsetDateTime::now_utc()
        {
            return Ok(());
        }
        let topic = DeviceTopic::new(device.clone(), Category::Bind, Direction::Down).to_string();
        let payload = claim::request_message(&pending).encode();
        let Some(broker) = self.broker() else {
            return Ok(());
        };
        match broker
            .publish_from_server(&topic, Bytes::from(payload), 1)
            .await
        {
            Ok(0) => {
                // Nobody would ever confirm: end it now with a clear reason
                // rather than let the user wait for the expiry.
                tracing::warn!(device_id = %device, claim = pending.id, "claim request reached no session: the device is not subscribed to its bind/down topic");
                self.store()
                    .end_claim(
                        pending.id,
                        ClaimStatus::Refused,
                        "not_delivered",
                        &Actor::system(),
                    )
                    .await?;
            }
            Ok(_) => {
                ControlMetrics::inc(&self.metrics.claim_requests_sent);
                tracing::info!(device_id = %device, claim = pending.id, owner = %pending.owner, "claim request sent");
            }
            Err(e) => {
                ControlMetrics::inc(&self.metrics.answers_failed);
                tracing::error!(device_id = %device, claim = pending.id, error = %e, "cannot send the claim request");
            }
        }
        Ok(())
    }
}

/// The actor of what a device does on its own session.
fn device_actor(device: &DeviceId) -> Actor {
    Actor {
        name: device.to_string(),
        source: "mqtt".into(),
    }
}

fn failed(detail: &str) -> IngestOutcome {
    IngestOutcome::Rejected(Rejection {
        kind: RejectionKind::Internal,
        detail: detail.to_owned(),
    })
}

#[async_trait::async_trait]
impl IngestSink for ControlPlane {
    async fn ingest(&self, message: InboundMessage) -> IngestOutcome {
        match message.category {
            Category::Cert => self.renewal(message).await,
            Category::Bind => self.confirmation(message).await,
            Category::Ota => match self.rollout.get() {
                Some(r) => r.report(&message).await,
                None => self.pipeline.process(message).await,
            },
            _ => self.pipeline.process(message).await,
        }
    }

    /// Telemetry, state and the rest are routed once queued for their
    /// commit; certificate, claim and OTA messages are decided in one step
    /// (each changes the registry before it is answered).
    async fn admit(&self, message: InboundMessage) -> Admission {
        match message.category {
            Category::Cert | Category::Bind => Admission::Decided(self.ingest(message).await),
            Category::Ota if self.rollout.get().is_some() => {
                Admission::Decided(self.ingest(message).await)
            }
            _ => self.pipeline.admit(message).await,
        }
    }

    async fn presence(&self, event: PresenceEvent) {
        // Offers are re-sent in the background: presence must not block.
        if let (PresenceEvent::Connected { device, .. }, Some(r)) = (&event, self.rollout.get()) {
            tokio::spawn(Arc::clone(r).connected(device.clone()));
        }
        self.pipeline.record_presence(event).await;
    }

    fn security(&self, notice: SecurityNotice) {
        if let Some(feed) = self.security.get() {
            feed.send(notice);
        }
    }
}
