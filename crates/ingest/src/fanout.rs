//! Step 6, fan-out: committed data goes to live subscribers (console charts
//! over SSE, rules and alerts). Best effort by design: a subscriber that
//! falls behind loses events (it is told how many) and re-reads the store,
//! which is the record; the broker's own routing to MQTT subscribers is
//! separate and keeps its delivery guarantees.

use std::sync::Arc;

use rampart_proto::DeviceId;
use rampart_proto::ingest::DisconnectReason;
use rampart_proto::telemetry::MetricName;
use tokio::sync::broadcast;

/// A reading as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Sequence number.
    pub seq: u64,
    /// Stored timestamp, Unix ms.
    pub ts_ms: i64,
    /// The values.
    pub metrics: Vec<(MetricName, f64)>,
}

/// Something that just became durable.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// New readings of a device.
    Readings {
        /// The device.
        device: DeviceId,
        /// The readings stored (duplicates and conflicts left out).
        readings: Vec<StoredReading>,
    },
    /// A device reported state.
    State {
        /// The device.
        device: DeviceId,
        /// The reported object.
        reported: serde_json::Value,
    },
    /// A device connected or went away.
    Presence {
        /// The device.
        device: DeviceId,
        /// Online now?
        online: bool,
        /// Why it went away.
        reason: Option<DisconnectReason>,
        /// When, Unix ms.
        at_ms: i64,
    },
    /// A message was rejected.
    Rejected {
        /// The device.
        device: DeviceId,
        /// Reason class.
        kind: String,
    },
}

/// The publishing side.
#[derive(Debug, Clone)]
pub struct Fanout {
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

impl Fanout {
    /// A fan-out buffering `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(16)).0,
        }
    }

    /// Publishes to whoever listens (no listener is fine).
    pub fn publish(&self, event: LiveEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Whether anyone listens (events need not be built otherwise).
    pub fn is_listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new subscription, starting now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }
}
