//! Records of the broker's durable state: persistent sessions, their
//! queued deliveries, retained messages. The broker owns their meaning;
//! the store keeps them and applies a batch of changes atomically.

use serde::{Deserialize, Serialize};

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The raw filter, including any `$share/{group}/` prefix.
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// MQTT 5 no-local.
    pub no_local: bool,
    /// MQTT 5 retain-as-published.
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
}

/// A message kept for a session or as retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// QoS of the delivery (or of the retained publish).
    pub qos: u8,
    /// RETAIN flag to deliver with.
    pub retain: bool,
    /// Encoded MQTT 5 properties (opaque to the store).
    pub properties: Vec<u8>,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// Subscription identifiers to deliver with.
    pub subscription_ids: Vec<u32>,
}

/// One change to durable MQTT state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttOp {
    /// Creates or replaces a persistent session and its subscriptions.
    SaveSession {
        /// Client identifier.
        client: String,
        /// Session expiry interval in seconds.
        expiry_secs: u32,
        /// All its subscriptions.
        subscriptions: Vec<StoredSubscription>,
    },
    /// Records that the session's connection ended (its expiry starts).
    Disconnected {
        /// Client identifier.
        client: String,
        /// When, Unix milliseconds.
        at_ms: i64,
    },
    /// Removes a session and everything queued for it.
    DeleteSession {
        /// Client identifier.
        client: String,
    },
    /// Queues a delivery for a persistent session.
    Enqueue {
        /// Client identifier.
        client: String,
        /// Delivery id, increasing per broker.
        id: u64,
        /// The delivery.
        message: StoredMessage,
    },
    /// Removes a delivered (acknowledged) message.
    Ack {
        /// Client identifier.
        client: String,
        /// Delivery id.
        id: u64,
    },
    /// Sets the retained message of a topic.
    Retain {
        /// The message (its topic is the key).
        message: StoredMessage,
    },
    /// Clears the retained message of a topic.
    ClearRetained {
        /// Topic name.
        topic: String,
    },
}

/// A persistent session as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Client identifier.
    pub client: String,
    /// Session expiry interval in seconds.
    pub expiry_secs: u32,
    /// When its last connection ended, Unix milliseconds (none if it was
    /// connected when the server stopped).
    pub disconnected_at_ms: Option<i64>,
    /// Its subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// Queued deliveries, oldest first, with their ids.
    pub queue: Vec<(u64, StoredMessage)>,
}

/// Everything the broker restores at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttSnapshot {
    /// Persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// Retained messages.
    pub retained: Vec<StoredMessage>,
}
