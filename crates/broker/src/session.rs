//! Session state (MQTT 5 §4.1): what survives a connection — subscriptions,
//! messages queued for the client, QoS 1/2 flows in progress — and the
//! handle through which routing and administration reach a live connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt5_protocol::Properties;
use rampart_proto::ingest::DisconnectReason;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::router::{ClientId, SubOptions};

/// A message on its way to subscribers, shared between their queues.
#[derive(Debug)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// MQTT 5 properties to forward (no topic alias, no subscription ids).
    pub properties: Properties,
    /// When it expires (MQTT 5 message expiry interval), if it does.
    pub expires_at: Option<Instant>,
    /// Who published it (for no-local).
    pub publisher: Option<ClientId>,
}

/// One queued delivery to one client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// QoS of this delivery (min of published and granted).
    pub qos: u8,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// Its id in the durable queue, for persistent sessions.
    pub persist_id: Option<u64>,
}

/// An outgoing QoS 1/2 delivery awaiting the client's acknowledgement.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// The delivery.
    pub delivery: Delivery,
    /// For QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP.
    pub released: bool,
}

/// Session state proper.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions: raw filter (including `$share/g/`) → options.
    pub subscriptions: HashMap<String, SubOptions>,
    /// Deliveries not yet sent.
    pub queue: VecDeque<Delivery>,
    /// Sent, unacknowledged QoS 1/2 deliveries by packet id.
    pub inflight: HashMap<u16, Inflight>,
    /// Incoming QoS 2 packet ids received (PUBREC sent), awaiting PUBREL.
    pub incoming_qos2: HashSet<u16>,
    /// Incoming QoS 2 packet ids taken by a connection that ended before
    /// their commit's outcome was known: `true` once it is (and
    /// `incoming_qos2` says whether it was stored). A retransmission waits
    /// for it before it is answered or offered again.
    pub unsettled_qos2: HashMap<u16, watch::Receiver<bool>>,
    /// Next outgoing packet id.
    pub next_packet_id: u16,
    /// Session expiry after disconnect, in seconds (0 = ends with the connection).
    pub expiry_secs: u32,
    /// When an offline session expires.
    pub expires_at: Option<Instant>,
}

impl SessionState {
    /// Whether the session outlives its connection (and is kept on disk).
    pub fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// The operation that stores this session, or `None` if it is not persistent.
    pub fn save_op(&self, client: &str) -> Option<rampart_store::MqttOp> {
        self.persistent()
            .then(|| rampart_store::MqttOp::SaveSession {
                client: client.to_owned(),
                expiry_secs: self.expiry_secs,
                subscriptions: self.stored_subscriptions(),
            })
    }

    /// Its subscriptions as stored.
    pub fn stored_subscriptions(&self) -> Vec<rampart_store::StoredSubscription> {
        let mut subs: Vec<_> = self
            .subscriptions
            .iter()
            .map(|(filter, o)| rampart_store::StoredSubscription {
                filter: filter.clone(),
                qos: o.qos,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                subscription_id: o.subscription_id,
            })
            .collect();
        subs.sort_by(|a, b| a.filter.cmp(&b.filter));
        subs
    }

    /// A free packet id (MQTT 5 §2.2.1: non-zero, not in use).
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }
}

/// How administration and takeover reach a live connection.
#[derive(Debug, Clone)]
pub struct Control {
    /// Cancelled to close the connection.
    pub kick: CancellationToken,
    /// Why it was closed (set before cancelling).
    pub reason: Arc<std::sync::Mutex<Option<DisconnectReason>>>,
    /// Resolves once the connection task has finished with the session.
    pub done: Arc<tokio::sync::Semaphore>,
    /// Who is connected.
    pub identity: Identity,
}

impl Control {
    /// Asks the connection to close with `reason`.
    pub fn close(&self, reason: DisconnectReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.kick.cancel();
    }

    /// The reason given to [`Control::close`].
    pub fn reason(&self) -> Option<DisconnectReason> {
        self.reason.lock().ok().and_then(|r| *r)
    }

    /// Waits until the connection task released the session.
    pub async fn finished(&self) {
        let _ = self.done.acquire().await;
    }
}

/// A session as the broker keeps it.
#[derive(Debug)]
pub struct Session {
    /// Its state.
    pub state: std::sync::Mutex<SessionState>,
    /// Woken when deliveries are queued.
    pub wake: Notify,
    /// The live connection, if any.
    pub control: std::sync::Mutex<Option<Control>>,
}

impl Session {
    /// A fresh session.
    pub fn new() -> Self {
        Self {
            state: std::sync::Mutex::new(SessionState::default()),
            wake: Notify::new(),
            control: std::sync::Mutex::new(None),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}
