//! What `serve` hands device publishes and presence to, until the telemetry
//! pipeline (issue 5) takes over this role.
//!
//! Presence is recorded in the registry (online flag, last seen). Telemetry
//! is *routed* to subscribers but not yet stored: this sink answers
//! `Committed` without durable storage, which is only honest because
//! nothing stores telemetry yet; the pipeline replaces it.

use std::sync::Arc;

use rampart_proto::ingest::{InboundMessage, IngestOutcome, IngestSink, PresenceEvent};
use rampart_store::Store;
use time::OffsetDateTime;

/// Presence into the registry; telemetry passed through to routing.
#[derive(Debug)]
pub struct RegistrySink {
    store: Arc<dyn Store>,
}

impl RegistrySink {
    /// A sink writing presence to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

#[async_trait::async_trait]
impl IngestSink for RegistrySink {
    async fn ingest(&self, _message: InboundMessage) -> IngestOutcome {
        IngestOutcome::Committed
    }

    async fn presence(&self, event: PresenceEvent) {
        let (device, online, at_ms) = match &event {
            PresenceEvent::Connected { device, at_ms, .. } => (device, true, *at_ms),
            PresenceEvent::Disconnected { device, at_ms, .. } => (device, false, *at_ms),
        };
        if let Err(e) = self.store.record_presence(device, online, at(at_ms)).await {
            tracing::warn!(device_id = %device, error = %e, "cannot record presence");
        }
    }
}
