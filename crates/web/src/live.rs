//! Live telemetry for the console: committed readings and presence of one
//! device, pushed to browsers as Server-Sent Events.
//!
//! One [`LiveHub`] task reads the pipeline's fan-out (a broadcast of
//! everything committed) and routes each event to the subscribers of its
//! device. Each subscriber has a small bounded queue; the hub never waits
//! for one: when a queue is full the event is dropped for that subscriber,
//! counted, and the subscriber is sent a `lagged` event saying how many it
//! missed, so that the page re-reads the store (the record). A slow
//! browser therefore costs the pipeline nothing. The number of open
//! streams is capped; one more is refused with 503.
//!
//! The route is mounted by the console behind its authorization; this
//! module provides the hub, the subscription and [`device_events`], an
//! axum handler over any state the hub can be taken from.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use rampart_ingest::LiveEvent;
use rampart_proto::DeviceId;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Limits of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOptions {
    /// Events queued per subscriber before it lags.
    pub per_subscriber: usize,
    /// Most streams open at once.
    pub max_streams: usize,
    /// Interval of keep-alive comments on idle streams (proxies close
    /// silent connections).
    pub keep_alive: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            per_subscriber: 64,
            max_streams: 256,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// One message of a device's live stream (the SSE `data`, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveMessage {
    /// A committed reading (SSE event `reading`).
    Reading {
        /// Sequence number.
        seq: u64,
        /// Timestamp, Unix ms.
        ts_ms: i64,
        /// Metric name → value.
        metrics: HashMap<String, f64>,
    },
    /// The device connected or went away (SSE event `presence`).
    Presence {
        /// Online now?
        online: bool,
        /// Why it went away.
        reason: Option<&'static str>,
        /// When, Unix ms.
        at_ms: i64,
    },
    /// Events were dropped because this stream fell behind (SSE event
    /// `lagged`): re-read the store.
    Lagged {
        /// How many were dropped.
        missed: u64,
    },
}

impl LiveMessage {
    /// The SSE event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            LiveMessage::Reading { .. } => "reading",
            LiveMessage::Presence { .. } => "presence",
            LiveMessage::Lagged { .. } => "lagged",
        }
    }
}

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct LiveMetrics {
    /// Streams opened.
    pub opened: AtomicU64,
    /// Streams refused at the cap.
    pub refused: AtomicU64,
    /// Messages dropped for slow subscribers.
    pub dropped: AtomicU64,
    /// Events the hub itself missed from the fan-out.
    pub hub_lagged: AtomicU64,
}

/// A subscriber as the hub sees it.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<LiveMessage>,
    missed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct HubInner {
    subscribers: Mutex<HashMap<String, Vec<Subscriber>>>,
    slots: Arc<Semaphore>,
    options: LiveOptions,
    next_id: AtomicU64,
    metrics: LiveMetrics,
}

/// Routes committed events to per-device subscribers; cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveHub {
    inner: Arc<HubInner>,
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LiveError {
    /// `max_streams` streams are open.
    #[error("{0} live streams are open, the most allowed; close one or retry later")]
    TooManyStreams(usize),
}

impl LiveHub {
    /// A hub reading `events` (from `Fanout::subscribe` or
    /// `Pipeline::subscribe`) until `shutdown` or until the fan-out closes;
    /// then every stream ends.
    pub fn spawn(
        mut events: broadcast::Receiver<Arc<LiveEvent>>,
        options: LiveOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                subscribers: Mutex::new(HashMap::new()),
                slots: Arc::new(Semaphore::new(options.max_streams)),
                options,
                next_id: AtomicU64::new(0),
                metrics: LiveMetrics::default(),
            }),
        };
        let task = hub.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = events.recv() => e,
                };
                match event {
                    Ok(event) => task.dispatch(&event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        task.inner
                            .metrics
                            .hub_lagged
                            .fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(missed = n, "live hub fell behind the fan-out");
                        task.all_lagged(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            // Dropping every sender ends every stream.
            task.lock().clear();
        });
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The hub's counters.
    pub fn metrics(&self) -> &LiveMetrics {
        &self.inner.metrics
    }

    /// The interval of keep-alive comments.
    pub fn keep_alive(&self) -> Duration {
        self.inner.options.keep_alive
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.options.max_streams - self.inner.slots.available_permits()
    }

    /// Opens a stream of `device`'s events, from now on.
    pub fn subscribe(&self, device: &DeviceId) -> Result<Subscription, LiveError> {
        let Ok(permit) = Arc::clone(&self.inner.slots).try_acquire_owned() else {
            self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err(LiveError::TooManyStreams(self.inner.options.max_streams));
        };
        let (tx, rx) = mpsc::channel(self.inner.options.per_subscriber.max(1));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let missed = Arc::new(AtomicU64::new(0));
        self.lock()
            .entry(device.as_str().to_owned())
            .or_default()
            .push(Subscriber {
                id,
                tx,
                missed: Arc::clone(&missed),
            });
        self.inner.metrics.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            rx,
            missed,
            _guard: SubscriptionGuard {
                hub: self.clone(),
                device: device.as_str().to_owned(),
                id,
                _permit: permit,
            },
        })
    }

    /// Routes one event to its device's subscribers without waiting.
    fn dispatch(&self, event: &LiveEvent) {
        let device = match event {
            LiveEvent::Readings { device, .. } | LiveEvent::Presence { device, .. } => device,
            // Reported state and rejections are not streamed (yet).
            _ => return,
        };
        // Most events concern a device nobody watches: they are looked up
        // before anything is built for them.
        let mut map = self.lock();
        let Some(subs) = map.get_mut(device.as_str()) else {
            return;
        };
        let messages = match event {
            LiveEvent::Readings { readings, .. } => readings
                .iter()
                .map(|r| LiveMessage::Reading {
                    seq: r.seq,
                    ts_ms: r.ts_ms,
                    metrics: r.metrics.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
                })
                .collect::<Vec<_>>(),
            LiveEvent::Presence {
                online,
                reason,
                at_ms,
                ..
            } => vec![LiveMessage::Presence {
                online: *online,
                reason: reason.map(|r| r.as_str()),
                at_ms: *at_ms,
            }],
            _ => return,
        };
        subs.retain(|s| {
            for m in &messages {
                match s.tx.try_send(m.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.missed.fetch_add(1, Ordering::Relaxed);
                        self.inner.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        if subs.is_empty() {
            map.remove(device.as_str());
        }
    }

    /// Tells every subscriber it may have missed `n` events.
    fn all_lagged(&self, n: u64) {
        for subs in self.lock().values() {
            for s in subs {
                s.missed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn remove(&self, device: &str, id: u64) {
        let mut map = self.lock();
        if let Some(subs) = map.get_mut(device) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                map.remove(device);
            }
        }
    }
}

/// Removes the subscriber and frees its slot when the stream is dropped
/// (the browser left).
#[derive(Debug)]
struct SubscriptionGuard {
    hub: LiveHub,
    device: String,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.hub.remove(&self.device, self.id);
    }
}

/// One open stream of a device's events.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<LiveMessage>,
    missed: Arc<AtomicU64>,
    _guard: SubscriptionGuard,
}

impl Subscription {
    /// The next message: a `Lagged` first if events were dropped since the
    /// last call; `None` once the hub has stopped.
    pub async fn next(&mut self) -> Option<LiveMessage> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        if missed > 0 {
            return Some(LiveMessage::Lagged { missed });
        }
        let message = self.rx.recv().await?;
        // Drops noticed while this message waited come before the next one.
        Some(message)
    }

    /// The subscription as a stream of SSE events.
    pub fn into_events(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut sub| async move {
            let message = sub.next().await?;
            let event = Event::default()
                .event(message.event_name())
                .json_data(&message)
                .unwrap_or_else(|_| Event::default().comment("unserialisable event"));
            Some((Ok(event), sub))
        })
    }
}

/// An SSE response (`text/event-stream`) streaming `subscription`, with
/// keep-alive comments every `keep_alive`.
pub fn sse_response(subscription: Subscription, keep_alive: Duration) -> Response {
    Sse::new(subscription.into_events())
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response()
}

/// `GET .../devices/{id}/live`: the device's live events as SSE. 400 for
/// an invalid id, 503 with `Retry-After` at the stream cap. Whether the
/// caller may see the device is decided by the route's authorization,
/// before this runs.
pub async fn device_events(State(hub): State<LiveHub>, Path(id): Path<String>) -> Response {
    let Ok(device) = DeviceId::parse(&id) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_device_id",
            "the device id is not valid",
        )
        .into_response();
    };
    match hub.subscribe(&device) {
        Ok(sub) => sse_response(sub, hub.inner.options.keep_alive),
        Err(e) => ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                e.to_string(),
            )
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use rampart_ingest::{Fanout, StoredReading};
    use rampart_proto::telemetry::MetricName;

    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("id")
    }

    fn readings(device: &str, seqs: std::ops::Range<u64>) -> LiveEvent {
        LiveEvent::Readings {
            device: id(device),
            readings: seqs
                .map(|seq| StoredReading {
                    seq,
                    ts_ms: 1000 + seq as i64,
                    metrics: vec![(MetricName::parse("t").expect("metric"), seq as f64)],
                })
                .collect(),
        }
    }

    async fn next(sub: &mut Subscription) -> LiveMessage {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message in time")
            .expect("stream open")
    }

    /// Waits until the hub task has routed everything published so far.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn events_go_to_their_device_only() {
        let fanout = Fanout::new(64);
        let hub = LiveHub::spawn(
            fanout.subscribe(),
            LiveOptions::default(),
            CancellationToken::new(),
        );
        let mut a = hub.subscribe(&id("a")).expect("subscribe");
        let mut b = hub.subscribe(&id("b")).expect("subscribe");
        fanout.publish(readings("a", 1..2));
        fanout.publish(LiveEvent::Presence {
            device: id("b"),
            online: false,
            reason: Some(rampart_proto::ingest::DisconnectReason::KeepaliveTimeout),
            at_ms: 5,
        });
        match next(&mut a).await {
            LiveMessage::Reading { seq, metrics, .. } => {
                assert_eq!((seq, metrics.get("t")), (1, Some(&1.0)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            next(&mut b).await,
            LiveMessage::Presence {
                online: false,
                reason: Some("keepalive_timeout"),
                at_ms: 5
            }
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_reports_lag_without_blocking() {
        let fanout = Fanout::new(1024);
        let hub = LiveHub::spawn(
            fanout.subscribe(),
            LiveOptions {
                per_subscriber: 4,
                ..LiveOptions::default()
            },
            CancellationToken::new(),
        );
        let mut slow = hub.subscribe(&id("a")).expect("subscribe");
        // Ten readings into a queue of four: the publisher never waits.
        fanout.publish(readings("a", 0..10));
        settle().await;
        assert_eq!(hub.metrics().dropped.load(Ordering::Relaxed), 6);
        assert_eq!(next(&mut slow).await, LiveMessage::Lagged { missed: 6 });
        let mut seqs = Vec::new();
        for _ in 0..4 {
            if let LiveMessage::Reading { seq, .. } = next(&mut slow).await {
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, [0, 1, 2, 3]);
        // Caught up: new events flow again.
        fanout.publish(readings("a", 10..11));
        assert!(matches!(
            next(&mut slow).await,
            LiveMessage::Reading { seq: 10, .. }
        ));
    }

    #[tokio::test]
    async fn streams_are_capped_and_freed_on_drop() {
        let fanout = Fanout::new(64);
        let hub = LiveHub::spawn(
            fanout.subscribe(),
            LiveOptions {
                max_streams: 2,
                ..LiveOptions::default()
            },
            CancellationToken::new(),
        );
        let first = hub.subscribe(&id("a")).expect("first");
        let _second = hub.subscribe(&id("a")).expect("second");
        assert_eq!(
            hub.subscribe(&id("b")).err(),
            Some(LiveError::TooManyStreams(2))
        );
        assert_eq!(hub.open_streams(), 2);
        drop(first);
        assert_eq!(hub.open_streams(), 1);
        assert_eq!(hub.lock().get("a").map(Vec::len), Some(1));
        hub.subscribe(&id("b")).expect("a slot is free again");
    }

    #[tokio::test]
    async fn streams_end_when_the_hub_stops() {
        let fanout = Fanout::new(64);
        let stop = CancellationToken::new();
        let hub = LiveHub::spawn(fanout.subscribe(), LiveOptions::default(), stop.clone());
        let mut sub = hub.subscribe(&id("a")).expect("subscribe");
        stop.cancel();
        let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("ends in time");
        assert_eq!(end, None);
    }
}
