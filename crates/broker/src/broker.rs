//! The broker's shared state: sessions, subscriptions, retained messages,
//! and the operations that cross connections (routing, takeover, kicking
//! revoked identities).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mqtt5_protocol::Properties;
use rampart_proto::ingest::{DisconnectReason, IngestSink};
use rampart_store::{Change, ChangeKind, MqttOp, Store, StoredMessage};

use crate::acl::{Acl, AclRuleError};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::persist::{Durable, Op, Persister, QueuedCopy};
use crate::router::{ClientId, Router, SubOptions};
use crate::session::{Delivery, Message, Session};
use crate::tls::{ReloadableConfig, TlsError, TlsMaterial};

/// Why a message Rampart itself publishes was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerPublishError {
    /// The topic is not a valid topic name (empty, wildcards, too long).
    #[error("'{topic}' is not a valid topic name: {why}")]
    InvalidTopic {
        /// The topic given.
        topic: String,
        /// What is wrong with it.
        why: String,
    },
    /// QoS other than 0, 1 or 2.
    #[error("QoS {0} does not exist; use 0, 1 or 2")]
    InvalidQos(u8),
    /// Copies queued for offline persistent sessions could not be stored.
    #[error(
        "the broker could not store the message for offline sessions (see the store's error in the log)"
    )]
    NotDurable,
}

/// Why the broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An ACL rule in the configuration is invalid.
    #[error(transparent)]
    Acl(#[from] AclRuleError),
}

/// Token bucket per source address.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) acl: Acl,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sink: Arc<dyn IngestSink>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tls: ReloadableConfig,
    pub(crate) sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    pub(crate) router: RwLock<Router>,
    pub(crate) retained: RwLock<HashMap<Arc<str>, Arc<Message>>>,
    pub(crate) persister: Persister,
    next_persist_id: AtomicU64,
    rate: Mutex<HashMap<IpAddr, Bucket>>,
    /// Set while [`crate::run`] accepts connections (readiness).
    pub(crate) accepting: std::sync::atomic::AtomicBool,
}

impl Broker {
    /// A broker with no sessions yet.
    pub fn new(
        config: BrokerConfig,
        tls: &TlsMaterial,
        store: Arc<dyn Store>,
        sink: Arc<dyn IngestSink>,
    ) -> Result<Arc<Self>, BrokerError> {
        // Fallible parts first: a refused configuration starts no task.
        let acl = Acl::new(&config.acl)?;
        let tls = ReloadableConfig::new(tls)?;
        let metrics = Arc::new(Metrics::default());
        let persister = Persister::start(
            Arc::clone(&store),
            Arc::clone(&metrics),
            config.delivery_grace,
        );
        Ok(Arc::new(Self {
            acl,
            tls,
            config,
            store: Arc::clone(&store),
            sink,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            router: RwLock::new(Router::new()),
            retained: RwLock::new(HashMap::new()),
            persister,
            next_persist_id: AtomicU64::new(1),
            rate: Mutex::new(HashMap::new()),
            accepting: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Whether the broker is accepting connections: its state is restored
    /// and its accept loop runs (the `/readyz` check).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Swaps in new certificates or a new CRL; live connections keep theirs.
    pub fn reload_tls(&self, material: &TlsMaterial) -> Result<(), TlsError> {
        self.tls.reload(material)
    }

    /// Publishes a message from Rampart itself: the `bind`, `cert` and
    /// `ota` downlinks, which only the server sends. There is no ACL check
    /// (no client publishes it) and no pipeline; otherwise it is routed as
    /// any publish, and QoS ≥ 1 copies for offline persistent sessions are
    /// queued durably: when this returns `Ok`, they survive a restart.
    /// Returns the number of sessions it was delivered or queued to.
    pub async fn publish_from_server(
        &self,
        topic: &str,
        payload: Bytes,
        qos: u8,
    ) -> Result<usize, ServerPublishError> {
        crate::topic::validate_name(topic).map_err(|e| ServerPublishError::InvalidTopic {
            topic: topic.chars().take(200).collect(),
            why: e.to_string(),
        })?;
        if qos > 2 {
            return Err(ServerPublishError::InvalidQos(qos));
        }
        Metrics::inc(&self.metrics.server_publishes);
        let message = Arc::new(Message {
            topic: Arc::from(topic),
            payload,
            qos,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        });
        let (durable, recipients) = self.route(&message);
        if crate::persist::durable(durable).await {
            Ok(recipients)
        } else {
            Err(ServerPublishError::NotDurable)
        }
    }

    /// The identity connected as `id` right now, with the certificate it
    /// connected with.
    pub fn connected_identity(&self, id: &str) -> Option<crate::identity::Identity> {
        self.session(id).and_then(|s| {
            s.control
                .lock()
                .ok()
                .and_then(|c| c.as_ref().map(|c| c.identity.clone()))
        })
    }

    /// Identities connected right now.
    pub fn connected(&self) -> Vec<String> {
        let sessions = self.sessions.lock().map(|s| s.clone()).unwrap_or_default();
        sessions
            .iter()
            .filter(|(_, s)| s.control.lock().is_ok_and(|c| c.is_some()))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Acts on a change made through the CLI, the console or another
    /// replica: a revoked, disabled or deleted identity is cut off at once.
    pub async fn apply_change(&self, change: &Change) {
        if !change.kind.affects_sessions() {
            return;
        }
        let reason = match change.kind {
            ChangeKind::DeviceRevoked | ChangeKind::ServiceRevoked => DisconnectReason::Revoked,
            _ => DisconnectReason::Disabled,
        };
        let control = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(change.subject.as_str()).cloned())
            .and_then(|s| s.control.lock().ok().and_then(|c| c.clone()));
        let Some(control) = control else { return };
        // Re-check rather than trust the feed: an enable may have followed.
        let still_allowed = crate::identity::check_allowed(
            self.store.as_ref(),
            &control.identity.id,
            control.identity.kind,
        )
        .await
        .is_ok()
            && self
                .store
                .certificate(&control.identity.serial)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.status == rampart_store::CertificateStatus::Current);
        if !still_allowed {
            Metrics::inc(&self.metrics.kicked_revoked);
            tracing::info!(device_id = %control.identity.id, reason = reason.as_str(), "closing session");
            control.close(reason);
        }
    }

    /// Whether `ip` may open another connection now.
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        let rate = self.config.connection_rate_per_ip;
        if rate == 0 || self.config.rate_limit_exempt.contains(&ip) {
            return true;
        }
        let Ok(mut buckets) = self.rate.lock() else {
            return true;
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            // Forget idle sources rather than grow without bound.
            buckets.retain(|_, b| now.duration_since(b.at).as_secs() < 10);
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: f64::from(rate),
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * f64::from(rate))
            .min(f64::from(rate));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Stores or clears a retained message (MQTT 5 §3.3.1.3), durably.
    pub(crate) fn retain(&self, message: &Arc<Message>) -> Option<Durable> {
        let op = if message.payload.is_empty() {
            MqttOp::ClearRetained {
                topic: message.topic.to_string(),
            }
        } else {
            MqttOp::Retain {
                message: stored(message, message.qos, true, &[]),
            }
        };
        let durable = self.persister.submit(vec![op]);
        if let Ok(mut retained) = self.retained.write() {
            if message.payload.is_empty() {
                retained.remove(&message.topic);
            } else {
                retained.insert(Arc::clone(&message.topic), Arc::clone(message));
            }
        }
        durable
    }

    /// Retained messages matching `filter`.
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .map(|r| {
                r.values()
                    .filter(|m| crate::topic::matches(filter, &m.topic))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hands `message` to every matching subscription. QoS ≥ 1 deliveries
    /// to persistent sessions are written to the durable queue; the result
    /// resolves once they are, and the publisher's acknowledgement waits
    /// for it. Also returns how many sessions it was handed to.
    pub(crate) fn route(&self, message: &Arc<Message>) -> (Option<Durable>, usize) {
        let targets = match self.router.read() {
            Ok(r) => r.route(&message.topic, message.publisher.as_deref()),
            Err(_) => return (None, 0),
        };
        let mut ops = Vec::new();
        let mut deliveries = Vec::with_capacity(targets.len());
        for t in targets {
            // One look-up per target: the session decides persistence and
            // receives the delivery.
            let Some(session) = self.session(&t.client) else {
                continue;
            };
            let qos = message.qos.min(t.qos);
            let mut delivery = Delivery {
                message: Arc::clone(message),
                qos,
                retain: t.retain_as_published && message.retain,
                subscription_ids: t.subscription_ids,
                persist_id: None,
            };
            if qos > 0 && session.state.lock().is_ok_and(|st| st.persistent()) {
                let id = self.next_persist_id.fetch_add(1, Ordering::Relaxed);
                delivery.persist_id = Some(id);
                ops.push(Op::Copy(QueuedCopy {
                    client: Arc::clone(&t.client),
                    id,
                    message: Arc::clone(message),
                    qos,
                    retain: delivery.retain,
                    subscription_ids: delivery.subscription_ids.clone(),
                }));
            }
            deliveries.push((t.client, session, delivery));
        }
        // Submitted before the deliveries become visible, so that a
        // subscriber's acknowledgement can never overtake its enqueue.
        let durable = self.persister.submit(ops);
        let recipients = deliveries.len();
        for (client, session, delivery) in deliveries {
            self.enqueue_to(&client, &session, delivery);
        }
        (durable, recipients)
    }

    /// The session of `client`, if it has one.
    fn session(&self, client: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .ok()
            .and_then(|s| s.get(client).cloned())
    }

    /// Rebuilds persistent sessions and retained messages from the store.
    pub(crate) async fn restore(&self) -> Result<(), rampart_store::StoreError> {
        let snapshot = self.store.mqtt_load().await?;
        let now = Instant::now();
        let wall_ms = now_ms();
        let mut max_id = 0;
        let (mut sessions, mut queued) = (0usize, 0usize);
        for s in snapshot.sessions {
            let client: ClientId = Arc::from(s.client.as_str());
            let session = Arc::new(Session::new());
            if let Ok(mut st) = session.state.lock() {
                st.expiry_secs = s.expiry_secs;
                let since = s
                    .disconnected_at_ms
                    .map_or(0, |d| (wall_ms - d).max(0) as u64 / 1000);
                let left = u64::from(s.expiry_secs).saturating_sub(since);
                st.expires_at = Some(now + std::time::Duration::from_secs(left));
                for sub in &s.subscriptions {
                    let opts = SubOptions {
                        qos: sub.qos,
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        subscription_id: sub.subscription_id,
                    };
                    if let Ok(parsed) = crate::topic::parse_subscription(&sub.filter)
                        && let Ok(mut router) = self.router.write()
                    {
                        router.subscribe(&client, parsed.filter, parsed.group, opts);
                    }
                    st.subscriptions.insert(sub.filter.clone(), opts);
                }
                for (id, m) in s.queue {
                    max_id = max_id.max(id);
                    let Some(message) = restored(m.clone(), wall_ms, now) else {
                        continue;
                    };
                    st.queue.push_back(Delivery {
                        message,
                        qos: m.qos,
                        retain: m.retain,
                        subscription_ids: m.subscription_ids,
                        persist_id: Some(id),
                    });
                    queued += 1;
                }
            }
            self.metrics
                .queued_messages
                .fetch_add(queued as i64, Ordering::Relaxed);
            if let Ok(mut all) = self.sessions.lock() {
                all.insert(client, session);
            }
            sessions += 1;
        }
        self.next_persist_id.store(max_id + 1, Ordering::Relaxed);
        let mut retained = 0;
        if let Ok(mut r) = self.retained.write() {
            for m in snapshot.retained {
                if let Some(message) = restored(m, wall_ms, now) {
                    r.insert(Arc::clone(&message.topic), message);
                    retained += 1;
                }
            }
        }
        tracing::info!(sessions, queued, retained, "restored broker state");
        Ok(())
    }

    /// Queues a delivery for one session, applying the overflow policy.
    pub(crate) fn enqueue(&self, client: &ClientId, delivery: Delivery) {
        if let Some(session) = self.session(client) {
            self.enqueue_to(client, &session, delivery);
        }
    }

    fn enqueue_to(&self, client: &ClientId, session: &Session, delivery: Delivery) {
        let mut dropped = None;
        if let Ok(mut state) = session.state.lock() {
            if state.queue.len() >= self.config.max_queued_messages {
                Metrics::inc(&self.metrics.dropped_queue_full);
                if delivery.qos == 0 {
                    return;
                }
                // Drop the oldest QoS 0 message if there is one, else the oldest.
                let victim = state.queue.iter().position(|d| d.qos == 0).unwrap_or(0);
                dropped = state.queue.remove(victim).and_then(|d| d.persist_id);
                self.metrics.queued_messages.fetch_sub(1, Ordering::Relaxed);
            }
            state.queue.push_back(delivery);
            self.metrics.queued_messages.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(id) = dropped {
            self.forget_delivery(client, id);
        }
        session.wake.notify_one();
    }

    /// Removes a delivery that was acknowledged, or will never be sent,
    /// from the durable queue.
    pub(crate) fn forget_delivery(&self, client: &ClientId, persist_id: u64) {
        self.persister.delivered(client, persist_id);
    }

    /// Closes every live connection (server shutdown).
    pub(crate) fn close_all(&self, reason: DisconnectReason) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        for s in sessions {
            if let Some(c) = s.control.lock().ok().and_then(|c| c.clone()) {
                c.close(reason);
            }
        }
    }

    /// Drops offline sessions whose expiry has passed.
    pub(crate) fn expire_sessions(&self) {
        let now = Instant::now();
        let expired: Vec<(ClientId, Arc<Session>)> = match self.sessions.lock() {
            Ok(mut sessions) => {
                let ids: Vec<ClientId> = sessions
                    .iter()
                    .filter(|(_, s)| {
                        s.control.lock().is_ok_and(|c| c.is_none())
                            && s.state
                                .lock()
                                .is_ok_and(|st| st.expires_at.is_some_and(|t| t <= now))
                    })
                    .map(|(id, _)| Arc::clone(id))
                    .collect();
                ids.into_iter()
                    .filter_map(|id| sessions.remove(&id).map(|s| (id, s)))
                    .collect()
            }
            Err(_) => return,
        };
        let mut ops = Vec::new();
        for (id, session) in expired {
            self.forget_subscriptions(&id, &session);
            ops.push(MqttOp::DeleteSession {
                client: id.to_string(),
            });
        }
        self.persister.submit_later(ops);
    }

    /// Removes a session's subscriptions from the router.
    pub(crate) fn forget_subscriptions(&self, id: &ClientId, session: &Session) {
        let filters: Vec<String> = session
            .state
            .lock()
            .map(|mut st| {
                let queued = st.queue.len() as i64;
                self.metrics
                    .queued_messages
                    .fetch_sub(queued, Ordering::Relaxed);
                st.queue.clear();
                st.subscriptions.drain().map(|(f, _)| f).collect()
            })
            .unwrap_or_default();
        if let Ok(mut router) = self.router.write() {
            for raw in filters {
                if let Ok(sub) = crate::topic::parse_subscription(&raw) {
                    router.unsubscribe(id, sub.filter, sub.group);
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A message as the durable queue keeps it.
pub(crate) fn stored(
    m: &Message,
    qos: u8,
    retain: bool,
    subscription_ids: &[u32],
) -> StoredMessage {
    let mut props = BytesMut::new();
    if m.properties.encode(&mut props).is_err() {
        props.clear();
    }
    let expires_at_ms = m
        .expires_at
        .map(|t| now_ms() + t.saturating_duration_since(Instant::now()).as_millis() as i64);
    StoredMessage {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos,
        retain,
        properties: props.to_vec(),
        expires_at_ms,
        subscription_ids: subscription_ids.to_vec(),
    }
}

/// A stored message back in memory; `None` if it has expired.
fn restored(m: StoredMessage, wall_ms: i64, now: Instant) -> Option<Arc<Message>> {
    let expires_at = match m.expires_at_ms {
        Some(at) if at <= wall_ms => return None,
        Some(at) => Some(now + std::time::Duration::from_millis((at - wall_ms) as u64)),
        None => None,
    };
    let mut raw = Bytes::from(m.properties);
    let properties = if raw.is_empty() {
        Properties::default()
    } else {
        Properties::decode(&mut raw).unwrap_or_default()
    };
    Some(Arc::new(Message {
        topic: Arc::from(m.topic.as_str()),
        payload: Bytes::from(m.payload),
        qos: m.qos,
        retain: m.retain,
        properties,
        expires_at,
        publisher: None,
    }))
}
