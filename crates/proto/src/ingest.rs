//! The contract between the broker and the telemetry pipeline
//! (docs/decisions/0004-ingest-hook.md).
//!
//! The broker hands every device publish on `devices/{id}/{category}/up`
//! to an [`IngestSink`] and acts on the answer in two steps
//! ([`IngestSink::admit`], docs/decisions/0016): once the sink has checked
//! the message and queued it for its commit ([`Admission::Queued`]) the
//! broker routes it to subscribers; it acknowledges a QoS ≥ 1 message only
//! once the commit's final outcome is in (for
//! [`IngestOutcome::Committed`], once it is durable). A message the sink
//! refuses at admission is never routed. While admission is pending the
//! broker reads nothing more from that connection, and while commits are
//! pending it reads on only up to its Receive Maximum of unacknowledged
//! publishes (back-pressure: nothing is dropped). Publishes that arrived together may be offered
//! concurrently; their answers are applied in arrival order. Connection
//! events are handed over as [`PresenceEvent`]s.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::DeviceId;
use crate::topic::Category;

/// Delivery guarantee a message was published with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

/// MQTT 5 properties of a publish that the pipeline may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Content type (MQTT 5 §3.3.2.3.9), e.g. `application/cbor`.
    pub content_type: Option<String>,
    /// Payload format indicator said UTF-8 (§3.3.2.3.2).
    pub utf8_payload: bool,
    /// User properties, in order (§3.3.2.3.7).
    pub user_properties: Vec<(String, String)>,
}

/// A device publish offered to the pipeline.
#[derive(Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The publishing device (the topic's id equals the certificate CN).
    pub device: DeviceId,
    /// The topic's category.
    pub category: Category,
    /// QoS it was published with.
    pub qos: QoS,
    /// The payload, as received.
    pub payload: Bytes,
    /// MQTT 5 properties (empty for MQTT 3.1.1).
    pub properties: MessageProperties,
    /// When the broker received it, Unix milliseconds.
    pub received_at_ms: i64,
}

impl fmt::Debug for InboundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundMessage")
            .field("device", &self.device)
            .field("category", &self.category)
            .field("qos", &self.qos)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What the pipeline did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Durably stored: acknowledge and route.
    Committed,
    /// Already stored earlier (a replay): acknowledge as success and route.
    Duplicate,
    /// Refused: acknowledge with the reason (MQTT 5) or acknowledge and
    /// drop (MQTT 3.1.1); never a disconnect. Refused at admission: never
    /// routed.
    Rejected(Rejection),
}

/// Why the pipeline refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The class of problem; decides the MQTT 5 reason code.
    pub kind: RejectionKind,
    /// A sentence for logs and the MQTT 5 reason string.
    pub detail: String,
}

/// Classes of rejection, each with an MQTT 5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The payload does not decode or validate (0x99 Payload format invalid).
    PayloadFormatInvalid,
    /// Over a size or count limit (0x97 Quota exceeded).
    QuotaExceeded,
    /// The device may not send this (0x87 Not authorized).
    NotAuthorized,
    /// The pipeline failed (0x83 Implementation specific error).
    Internal,
}

impl RejectionKind {
    /// The MQTT 5 PUBACK/PUBREC reason code.
    pub fn reason_code(self) -> u8 {
        match self {
            RejectionKind::PayloadFormatInvalid => 0x99,
            RejectionKind::QuotaExceeded => 0x97,
            RejectionKind::NotAuthorized => 0x87,
            RejectionKind::Internal => 0x83,
        }
    }

    /// A short stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            RejectionKind::PayloadFormatInvalid => "payload_format_invalid",
            RejectionKind::QuotaExceeded => "quota_exceeded",
            RejectionKind::NotAuthorized => "not_authorized",
            RejectionKind::Internal => "internal",
        }
    }
}

/// Why a connection ended (DESIGN.md "Presence").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Clean,
    /// The connection dropped without DISCONNECT.
    ConnectionLost,
    /// Nothing received for 1.5 × keepalive.
    KeepaliveTimeout,
    /// The client broke the protocol.
    ProtocolError,
    /// Its certificate was revoked.
    Revoked,
    /// It was disabled (or deleted).
    Disabled,
    /// A new connection with the same id took the session over.
    TakenOver,
    /// The server is shutting down.
    ServerShutdown,
}

impl DisconnectReason {
    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Clean => "clean",
            DisconnectReason::ConnectionLost => "connection_lost",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Revoked => "revoked",
            DisconnectReason::Disabled => "disabled",
            DisconnectReason::TakenOver => "taken_over",
            DisconnectReason::ServerShutdown => "server_shutdown",
        }
    }
}

/// A device came or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// CONNECT accepted.
    Connected {
        /// The device.
        device: DeviceId,
        /// When, Unix milliseconds.
        at_ms: i64,
        /// Its address.
        addr: SocketAddr,
        /// MQTT protocol level (4 = 3.1.1, 5 = 5.0).
        protocol: u8,
    },
    /// The connection ended.
    Disconnected {
        /// The device.
        device: DeviceId,
        /// When, Unix milliseconds.
        at_ms: i64,
        /// Why.
        reason: DisconnectReason,
    },
}

/// A security-relevant event the broker saw, for alert rules
/// (`handshake-failures`, `acl-denials`). Best effort: a sink may drop
/// notices under load (it counts them), never blocks the broker on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityNotice {
    /// A TLS handshake failed (bad or missing certificate, garbage).
    HandshakeFailed {
        /// Where it came from.
        source: std::net::IpAddr,
        /// When, Unix milliseconds.
        at_ms: i64,
    },
    /// The ACL refused a publish, subscription or will of an identity.
    AclDenied {
        /// The device or service.
        identity: DeviceId,
        /// When, Unix milliseconds.
        at_ms: i64,
    },
}

/// The final outcome of an admitted message, once its transaction is
/// durable (or failed).
pub type PendingOutcome =
    std::pin::Pin<Box<dyn std::future::Future<Output = IngestOutcome> + Send + Sync>>;

/// The sink's first answer to a publish ([`IngestSink::admit`]).
pub enum Admission {
    /// The outcome is final already: refused (never routed), passed
    /// through, or a sink that decides in one step.
    Decided(IngestOutcome),
    /// Checked and queued for its commit, in arrival order: the broker may
    /// route it now. The future resolves with the final outcome once the
    /// transaction holding it is durable; only then is it acknowledged.
    /// A commit that fails or finds a sequence conflict after routing
    /// leaves subscribers with a copy the publisher will send again (QoS 1
    /// is at least once).
    Queued(PendingOutcome),
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admission::Decided(o) => f.debug_tuple("Decided").field(o).finish(),
            Admission::Queued(_) => f.write_str("Queued(..)"),
        }
    }
}

impl Admission {
    /// The final outcome: waits for the commit of a queued message.
    pub async fn outcome(self) -> IngestOutcome {
        match self {
            Admission::Decided(o) => o,
            Admission::Queued(pending) => pending.await,
        }
    }
}

/// The pipeline, as the broker sees it.
#[async_trait::async_trait]
pub trait IngestSink: Send + Sync + fmt::Debug {
    /// Offers one device publish; returns once the outcome is final (for
    /// `Committed`, once it is durable). Slow answers are back-pressure.
    async fn ingest(&self, message: InboundMessage) -> IngestOutcome;

    /// Offers one device publish in two steps: returns once the message is
    /// checked and queued for its commit (or refused), so that the broker
    /// can route it without waiting for the disk; the queued outcome
    /// resolves when it is durable. Slow admissions are back-pressure.
    /// The default decides in one step, through [`IngestSink::ingest`].
    async fn admit(&self, message: InboundMessage) -> Admission {
        Admission::Decided(self.ingest(message).await)
    }

    /// Records a presence event. Must not block for long.
    async fn presence(&self, event: PresenceEvent);

    /// Notes a security event; must return at once (drop rather than wait).
    fn security(&self, notice: SecurityNotice) {
        let _ = notice;
    }
}
