//! Rampart's telemetry pipeline: what happens to a device's uplink between
//! the broker reading it and the broker acknowledging it.
//!
//! Named steps, one module each: [`decode`] → [`validate`] → [`dedupe`] →
//! [`commit`] (group commit into a [`TelemetryStore`]) → [`acknowledge`] →
//! [`fanout`]. The [`Pipeline`] implements the broker's
//! [`IngestSink`](rampart_proto::ingest::IngestSink): a QoS ≥ 1 message is
//! acknowledged only once the transaction holding it is durable, and a
//! replay is acknowledged without being stored twice.
//!
//! A bad message is rejected alone: it is counted (per device in the store,
//! globally in [`PipelineMetrics`]), logged at debug level (the broker logs
//! every rejection it acknowledges), and kept in the bounded rejected
//! table; nothing else in the batch is affected.

pub mod acknowledge;
pub mod commit;
pub mod decode;
pub mod dedupe;
pub mod export;
pub mod fanout;
pub mod influx;
pub mod metrics;
pub mod retention;
pub mod validate;

use std::sync::Arc;

use rampart_proto::DeviceId;
use rampart_proto::ingest::{
    Admission, InboundMessage, IngestOutcome, IngestSink, PresenceEvent, Rejection, RejectionKind,
};
use rampart_proto::telemetry::{Limits, MetricName};
use rampart_store::telemetry::{
    IngestItem, ItemOutcome, NewReading, NewRejection, PresenceRecord, ReadingFate, TelemetryStore,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use commit::CommitOptions;
pub use decode::Decoded;
pub use fanout::{Fanout, LiveEvent, StoredReading};

/// The `kind` of a [`LiveEvent::Rejected`] announcing a sequence conflict
/// (same `seq`, other payload): kept aside by the store, flagged live.
pub const SEQUENCE_CONFLICT: &str = "sequence_conflict";
pub use metrics::PipelineMetrics;

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Payload limits.
    pub limits: Limits,
    /// Group-commit tuning.
    pub commit: CommitOptions,
    /// Messages waiting for a transaction before offers wait (back-pressure).
    pub queue: usize,
    /// Live events buffered per slow subscriber.
    pub live_buffer: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            commit: CommitOptions::default(),
            queue: 16_384,
            live_buffer: 4096,
        }
    }
}

/// The telemetry pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipeline {
    queue: mpsc::Sender<commit::Job>,
    limits: Limits,
    fanout: Fanout,
    metrics: Arc<PipelineMetrics>,
}

impl Pipeline {
    /// Starts the committer on `store`. The returned task ends once every
    /// clone of the pipeline is dropped and the queue is committed.
    pub fn start(
        store: Arc<dyn TelemetryStore>,
        options: PipelineOptions,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let metrics = Arc::new(PipelineMetrics::default());
        let task = tokio::spawn(commit::run(store, rx, options.commit, Arc::clone(&metrics)));
        (
            Self {
                queue: tx,
                limits: options.limits,
                fanout: Fanout::new(options.live_buffer),
                metrics,
            },
            task,
        )
    }

    /// Live events, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveEvent>> {
        self.fanout.subscribe()
    }

    /// The pipeline's counters.
    pub fn metrics(&self) -> &Arc<PipelineMetrics> {
        &self.metrics
    }

    /// Queues `items` and waits for their transaction. `None` when the store
    /// could not commit them (or the pipeline is shutting down).
    async fn commit(&self, items: Vec<IngestItem>) -> Option<Vec<ItemOutcome>> {
        self.enqueue(items, |outcomes| outcomes)
            .await?
            .await
            .ok()
            .flatten()
    }

    /// Queues `items` for the next transaction (waiting for room: this is
    /// the back-pressure) and returns where what `then` makes of their
    /// outcomes will arrive. `then` runs on the committer right after the
    /// commit, whether or not anyone still waits. `None` when the pipeline
    /// is shutting down.
    async fn enqueue<T: Send + 'static>(
        &self,
        items: Vec<IngestItem>,
        then: impl FnOnce(Option<Vec<ItemOutcome>>) -> T + Send + 'static,
    ) -> Option<oneshot::Receiver<T>> {
        let (tx, rx) = oneshot::channel();
        let reply: commit::Reply = Box::new(move |outcomes| {
            // The waiter may have gone (its connection was cut): the commit
            // stands and dedupe absorbs the device's resend.
            let _ = tx.send(then(outcomes));
        });
        let job = commit::Job {
            items,
            reply: Some(reply),
        };
        self.queue.send(job).await.ok()?;
        Some(rx)
    }

    /// Queues `items` and returns the admission that resolves once their
    /// transaction is in, to what `after` makes of the outcomes. `after`
    /// (counting, the live fan-out that the console and the alert engine
    /// follow) runs on the committer, so it happens even if the broker stops
    /// waiting (a QoS 0 message, a connection cut off meanwhile).
    async fn queue_then(
        &self,
        items: Vec<IngestItem>,
        after: impl FnOnce(Option<Vec<ItemOutcome>>) -> IngestOutcome + Send + 'static,
    ) -> Admission {
        let Some(outcome) = self.enqueue(items, after).await else {
            return Admission::Decided(self.failed());
        };
        Admission::Queued(Box::pin(async move {
            outcome
                .await
                .unwrap_or_else(|_| acknowledge::store_failed())
        }))
    }

    /// Runs one message through every step and returns its final outcome.
    pub async fn process(&self, message: InboundMessage) -> IngestOutcome {
        self.admit(message).await.outcome().await
    }

    /// Runs one message through decode, validate and into the commit
    /// queue; a refused message is recorded and answered at once. The
    /// queued outcome resolves when its transaction is durable.
    pub async fn admit(&self, message: InboundMessage) -> Admission {
        PipelineMetrics::inc(&self.metrics.messages);
        let decoded = match decode::decode(
            message.category,
            &message.payload,
            message.properties.content_type.as_deref(),
            &self.limits,
        ) {
            Ok(d) => d,
            Err(rejection) => {
                return Admission::Decided(self.reject(&message, rejection, None).await);
            }
        };
        match decoded {
            Decoded::PassThrough => Admission::Decided(IngestOutcome::Committed),
            Decoded::State(reported) => {
                let item = IngestItem::State {
                    device: message.device.clone(),
                    at_ms: message.received_at_ms,
                    reported: reported.clone(),
                };
                let after = self.after_commit();
                self.queue_then(vec![item], move |outcomes| match outcomes {
                    Some(_) => {
                        after.fanout.publish(LiveEvent::State {
                            device: message.device,
                            reported,
                        });
                        IngestOutcome::Committed
                    }
                    None => after.failed(),
                })
                .await
            }
            Decoded::Readings(readings) => {
                match validate::validate(readings, message.received_at_ms) {
                    Ok(valid) => self.readings(message, valid).await,
                    Err(rejection) => {
                        Admission::Decided(self.reject(&message, rejection, None).await)
                    }
                }
            }
        }
    }

    /// What a queued message needs once its transaction is in.
    fn after_commit(&self) -> AfterCommit {
        AfterCommit {
            fanout: self.fanout.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    async fn readings(
        &self,
        message: InboundMessage,
        valid: Vec<validate::ValidReading>,
    ) -> Admission {
        // The metrics move into the store's item; a copy is kept only when
        // someone listens for live readings.
        let live = self.fanout.is_listened();
        let mut kept = Vec::with_capacity(valid.len());
        let readings: Vec<NewReading> = valid
            .into_iter()
            .map(|v| {
                let digest = dedupe::digest(&v.reading);
                kept.push(Kept {
                    seq: v.reading.seq,
                    ts_ms: v.ts_ms,
                    points: v.reading.metrics.len(),
                    metrics: if live {
                        v.reading.metrics.clone()
                    } else {
                        Vec::new()
                    },
                });
                NewReading {
                    seq: v.reading.seq,
                    ts_ms: v.ts_ms,
                    received_ms: message.received_at_ms,
                    flags: v.flags,
                    digest,
                    metrics: v.reading.metrics,
                }
            })
            .collect();
        let item = IngestItem::Readings {
            device: message.device.clone(),
            readings,
            payload: message.payload.clone(),
        };
        let after = self.after_commit();
        self.queue_then(vec![item], move |outcomes| match outcomes {
            Some(outcomes) => after.readings(message.device, kept, live, outcomes),
            None => after.failed(),
        })
        .await
    }

    /// Records a rejection (kept in the store, counted, published) and
    /// returns it as the outcome.
    async fn reject(
        &self,
        message: &InboundMessage,
        rejection: Rejection,
        seq: Option<u64>,
    ) -> IngestOutcome {
        self.count_rejection(rejection.kind);
        tracing::debug!(device_id = %message.device, reason = rejection.kind.label(), detail = %rejection.detail, "message rejected");
        let item = IngestItem::Rejected(NewRejection {
            device: message.device.clone(),
            at_ms: message.received_at_ms,
            category: message.category.as_str().to_owned(),
            kind: rejection.kind.label().to_owned(),
            detail: rejection.detail.clone(),
            seq,
            payload: message.payload[..message
                .payload
                .len()
                .min(rampart_store::telemetry::REJECTED_PAYLOAD_PREFIX)]
                .to_vec(),
            payload_len: message.payload.len(),
        });
        // Waiting on the record's commit also slows a device that floods
        // bad payloads down to the store's pace.
        if self.commit(vec![item]).await.is_none() {
            tracing::warn!(device_id = %message.device, "could not record a rejected message");
        }
        self.fanout.publish(LiveEvent::Rejected {
            device: message.device.clone(),
            kind: rejection.kind.label().to_owned(),
        });
        IngestOutcome::Rejected(rejection)
    }

    fn count_rejection(&self, kind: RejectionKind) {
        count_rejection(&self.metrics, kind);
    }

    fn failed(&self) -> IngestOutcome {
        store_failed(&self.metrics)
    }

    /// Records a presence event without waiting for its commit.
    pub async fn record_presence(&self, event: PresenceEvent) {
        let (record, live) = match event {
            PresenceEvent::Connected {
                device,
                at_ms,
                addr,
                ..
            } => (
                PresenceRecord {
                    device: device.clone(),
                    at_ms,
                    online: true,
                    reason: None,
                    addr: Some(addr.to_string()),
                },
                LiveEvent::Presence {
                    device,
                    online: true,
                    reason: None,
                    at_ms,
                },
            ),
            PresenceEvent::Disconnected {
                device,
                at_ms,
                reason,
            } => (
                PresenceRecord {
                    device: device.clone(),
                    at_ms,
                    online: false,
                    reason: Some(reason.as_str().to_owned()),
                    addr: None,
                },
                LiveEvent::Presence {
                    device,
                    online: false,
                    reason: Some(reason),
                    at_ms,
                },
            ),
        };
        let job = commit::Job {
            items: vec![IngestItem::Presence(record)],
            reply: None,
        };
        if self.queue.send(job).await.is_err() {
            tracing::warn!("pipeline stopped: presence event not recorded");
        }
        self.fanout.publish(live);
    }
}

/// One validated reading, as remembered for the steps after its commit.
struct Kept {
    seq: u64,
    ts_ms: i64,
    points: usize,
    /// Empty unless someone listens for live readings.
    metrics: Vec<(MetricName, f64)>,
}

/// The steps after a commit (counting, live fan-out, the outcome): what a
/// queued message's reply holds instead of the whole pipeline.
struct AfterCommit {
    fanout: Fanout,
    metrics: Arc<PipelineMetrics>,
}

impl AfterCommit {
    fn failed(&self) -> IngestOutcome {
        store_failed(&self.metrics)
    }

    /// Counts and publishes what the store did with `device`'s readings.
    fn readings(
        &self,
        device: DeviceId,
        kept: Vec<Kept>,
        live: bool,
        mut outcomes: Vec<ItemOutcome>,
    ) -> IngestOutcome {
        let fates = match outcomes.pop() {
            Some(ItemOutcome::Readings(f)) if f.len() == kept.len() => f,
            other => {
                tracing::error!(?other, "telemetry store answered for the wrong items");
                return self.failed();
            }
        };
        let m = &self.metrics;
        let mut stored = Vec::new();
        let mut readings_stored = 0;
        for (k, fate) in kept.into_iter().zip(&fates) {
            match fate {
                ReadingFate::Stored => {
                    readings_stored += 1;
                    PipelineMetrics::add(&m.points_stored, k.points as u64);
                    if live {
                        stored.push(StoredReading {
                            seq: k.seq,
                            ts_ms: k.ts_ms,
                            metrics: k.metrics,
                        });
                    }
                }
                ReadingFate::Duplicate => PipelineMetrics::inc(&m.duplicates),
                ReadingFate::Conflict => {
                    PipelineMetrics::inc(&m.conflicts);
                    tracing::warn!(device_id = %device, seq = k.seq, "sequence conflict: device flagged");
                    self.fanout.publish(LiveEvent::Rejected {
                        device: device.clone(),
                        kind: SEQUENCE_CONFLICT.to_owned(),
                    });
                }
            }
        }
        PipelineMetrics::add(&m.readings_stored, readings_stored);
        if !stored.is_empty() {
            self.fanout.publish(LiveEvent::Readings {
                device,
                readings: stored,
            });
        }
        let outcome = acknowledge::outcome(&fates);
        if let IngestOutcome::Rejected(r) = &outcome {
            count_rejection(m, r.kind);
        }
        outcome
    }
}

/// The outcome when the store could not commit, counted.
fn store_failed(m: &PipelineMetrics) -> IngestOutcome {
    count_rejection(m, RejectionKind::Internal);
    acknowledge::store_failed()
}

fn count_rejection(m: &PipelineMetrics, kind: RejectionKind) {
    PipelineMetrics::inc(&m.rejected);
    match kind {
        RejectionKind::PayloadFormatInvalid => PipelineMetrics::inc(&m.rejected_format),
        RejectionKind::QuotaExceeded => PipelineMetrics::inc(&m.rejected_quota),
        RejectionKind::Internal => PipelineMetrics::inc(&m.rejected_internal),
        RejectionKind::NotAuthorized => {}
    }
}

#[async_trait::async_trait]
impl IngestSink for Pipeline {
    async fn ingest(&self, message: InboundMessage) -> IngestOutcome {
        self.process(message).await
    }

    async fn admit(&self, message: InboundMessage) -> Admission {
        Pipeline::admit(self, message).await
    }

    async fn presence(&self, event: PresenceEvent) {
        self.record_presence(event).await;
    }
}
