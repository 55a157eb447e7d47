//! Alerts in `serve` (issue 10): the evaluation engine and the webhook
//! deliverer, wired to the pipeline's fan-out, the broker's security
//! notices, the change feed and the store's outbox.
//!
//! The rules, their evaluation and the message formats are
//! `rampart_alerts` (pure); the tables are `rampart_store::AlertStore`;
//! this module is the wiring: two tasks and their counters.

pub mod declared;
mod deliver;
mod engine;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rampart_ingest::LiveEvent;
use rampart_proto::ingest::SecurityNotice;
use rampart_store::{AnyStore, Change};
use rampart_web::auth::SealingKey;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use deliver::DeliveryOptions;

/// Security notices buffered between the broker and the engine.
const SECURITY_BUFFER: usize = 4_096;

/// Counters of the alert engine and deliverer.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    /// Alerts that fired.
    pub fired: AtomicU64,
    /// Alerts that resolved.
    pub resolved: AtomicU64,
    /// Absence alerts not fired because the registry showed the device back.
    pub suppressed: AtomicU64,
    /// Fan-out events the engine missed by falling behind.
    pub events_lagged: AtomicU64,
    /// Security notices dropped because the engine was behind.
    pub notices_dropped: AtomicU64,
    /// Rule reloads.
    pub rule_reloads: AtomicU64,
    /// Alert changes the store refused.
    pub store_errors: AtomicU64,
    /// Notifications delivered.
    pub delivered: AtomicU64,
    /// Attempts that will be retried.
    pub retried: AtomicU64,
    /// Notifications moved to the dead letters.
    pub dead: AtomicU64,
    /// Deliveries held back by a channel's rate limit.
    pub rate_limited: AtomicU64,
}

impl AlertMetrics {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter as (name, value), for exposition.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("fired", get(&self.fired)),
            ("resolved", get(&self.resolved)),
            ("suppressed", get(&self.suppressed)),
            ("events_lagged", get(&self.events_lagged)),
            ("notices_dropped", get(&self.notices_dropped)),
            ("rule_reloads", get(&self.rule_reloads)),
            ("store_errors", get(&self.store_errors)),
            ("delivered", get(&self.delivered)),
            ("retried", get(&self.retried)),
            ("dead", get(&self.dead)),
            ("rate_limited", get(&self.rate_limited)),
        ]
    }
}

/// The broker's side of the security notices: never blocks.
#[derive(Debug, Clone)]
pub struct SecurityFeed {
    tx: mpsc::Sender<SecurityNotice>,
    metrics: Arc<AlertMetrics>,
}

impl SecurityFeed {
    /// Hands a notice to the engine, or counts it dropped.
    pub fn send(&self, notice: SecurityNotice) {
        if self.tx.try_send(notice).is_err() {
            AlertMetrics::inc(&self.metrics.notices_dropped);
        }
    }
}

/// The alerting tasks of one `serve`.
#[derive(Debug)]
pub struct Alerting {
    engine: JoinHandle<()>,
    deliverer: JoinHandle<()>,
}

/// What [`Alerting::spawn`] needs.
#[derive(Debug)]
pub struct AlertingOptions {
    /// Extra delay before an offline event counts (flapping suppression).
    pub presence_hold_down: Duration,
    /// Delivery settings.
    pub delivery: DeliveryOptions,
}

/// A security feed and the receiving end the engine takes.
pub fn security_feed(
    metrics: &Arc<AlertMetrics>,
) -> (SecurityFeed, mpsc::Receiver<SecurityNotice>) {
    let (tx, rx) = mpsc::channel(SECURITY_BUFFER);
    (
        SecurityFeed {
            tx,
            metrics: Arc::clone(metrics),
        },
        rx,
    )
}

impl Alerting {
    /// Starts the engine and the deliverer.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        store: AnyStore,
        key: SealingKey,
        live: broadcast::Receiver<Arc<LiveEvent>>,
        changes: broadcast::Receiver<Change>,
        security: mpsc::Receiver<SecurityNotice>,
        metrics: Arc<AlertMetrics>,
        options: AlertingOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let engine = tokio::spawn(engine::run(
            engine::EngineInputs {
                store: store.clone(),
                live,
                changes,
                security,
                deliveries: Arc::clone(&wake),
                metrics: Arc::clone(&metrics),
                hold_down: options.presence_hold_down,
            },
            shutdown.clone(),
        ));
        let deliverer = tokio::spawn(deliver::run(
            deliver::DelivererInputs {
                store,
                key,
                wake,
                metrics,
                options: options.delivery,
            },
            shutdown,
        ));
        Self { engine, deliverer }
    }

    /// Waits for both tasks after shutdown was signalled.
    pub async fn stopped(self) {
        let _ = self.engine.await;
        let _ = self.deliverer.await;
    }
}
