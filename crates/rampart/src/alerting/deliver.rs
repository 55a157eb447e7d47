//! The delivery task: sends the outbox's notifications to their webhook
//! channels, at least once, without ever blocking the pipeline.
//!
//! - Each delivery is its own task with a time limit per request, so a
//!   receiver that hangs holds up only its own notifications; at most
//!   `max_concurrent` run at once.
//! - Channels have a rate limit (token bucket, `per_minute`); a limited
//!   delivery simply stays pending for a later round.
//! - Outcomes are recorded in the store by the attempt itself: delivered,
//!   retry at a backed-off time (honouring `Retry-After`), or dead letter
//!   (other 4xx, a target that is not allowed, too many redirects, or the
//!   attempts used up).
//! - Safety: the URL is opened from its sealed form only here; names are
//!   resolved by a resolver that drops non-public addresses unless the
//!   channel has the danger flag (so DNS rebinding cannot reach inside);
//!   redirects are followed by hand, each hop checked like the original;
//!   proxies from the environment are ignored (they would bypass the
//!   address check). The URL never reaches a log: errors carry the
//!   redacted target.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_alerts::Change;
use rampart_alerts::delivery::{Attempt, RetryPolicy, classify};
use rampart_alerts::message::{
    ChannelKind, IDEMPOTENCY_HEADER, Message, SIGNATURE_HEADER, idempotency_key, render, sign,
};
use rampart_alerts::target::{TargetError, WebhookUrl, is_public};
use rampart_store::{AlertChannel, AlertStore, AnyStore, AttemptOutcome, Delivery};
use rampart_web::alert_config::{open_url, sealing_context};
use rampart_web::auth::SealingKey;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::AlertMetrics;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Time limit of one HTTP request (connect included).
    pub timeout: Duration,
    /// Retry backoff and attempts.
    pub retry: RetryPolicy,
    /// Deliveries in flight at once.
    pub max_concurrent: usize,
    /// Redirect hops followed.
    pub max_redirects: u8,
    /// The console's public base URL, for links in messages.
    pub console_url: Option<String>,
}

/// A resolver that returns only public addresses.
#[derive(Debug)]
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let first = all.first().map(|a| a.ip());
                return Err(match first {
                    Some(ip) => Box::new(TargetError::NotPublic(ip)) as _,
                    None => format!("{host} does not resolve").into(),
                });
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The two HTTP clients: public targets only, and the danger flag's.
#[derive(Debug, Clone)]
struct Clients {
    public: reqwest::Client,
    private: reqwest::Client,
}

fn tls() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Clients {
    fn new(timeout: Duration) -> anyhow::Result<Self> {
        let build = |public: bool| -> anyhow::Result<reqwest::Client> {
            let mut b = reqwest::Client::builder()
                .tls_backend_preconfigured(tls()?)
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")));
            if public {
                b = b.dns_resolver(Arc::new(PublicOnly));
            }
            Ok(b.build()?)
        };
        Ok(Self {
            public: build(true)?,
            private: build(false)?,
        })
    }

    fn for_target(&self, url: &WebhookUrl) -> &reqwest::Client {
        if url.allows_private() {
            &self.private
        } else {
            &self.public
        }
    }
}

/// A channel's rate limit.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        let cap = f64::from(per_minute.max(1));
        let refill = now.duration_since(self.at).as_secs_f64() * cap / 60.0;
        self.tokens = (self.tokens + refill).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the delivery loop needs.
pub(crate) struct DelivererInputs {
    pub(crate) store: AnyStore,
    pub(crate) key: SealingKey,
    pub(crate) wake: Arc<Notify>,
    pub(crate) metrics: Arc<AlertMetrics>,
    pub(crate) options: DeliveryOptions,
}

/// Runs deliveries until `shutdown`. In-flight attempts are abandoned at
/// shutdown; they stay pending and are made again after a restart.
pub(crate) async fn run(inputs: DelivererInputs, shutdown: CancellationToken) {
    let clients = match Clients::new(inputs.options.timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; alerts are recorded but not delivered");
            return;
        }
    };
    match inputs.store.alert_channels().await {
        Ok(channels) => {
            for c in channels.iter().filter(|c| c.allow_private) {
                tracing::warn!(channel = %c.name, target = %c.target, "DANGER: alert channel created with --danger-allow-private may reach private and loopback addresses over plain http");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the alert channels"),
    }
    let shared = Arc::new(Shared {
        store: inputs.store,
        key: inputs.key,
        metrics: inputs.metrics,
        options: inputs.options,
        clients,
    });
    let mut buckets: HashMap<u64, Bucket> = HashMap::new();
    let mut inflight: HashSet<u64> = HashSet::new();
    let mut tasks: JoinSet<u64> = JoinSet::new();
    loop {
        let mut limited = false;
        if tasks.len() < shared.options.max_concurrent {
            match shared.due(&inflight).await {
                Ok((due, channels)) => {
                    for d in due {
                        if tasks.len() >= shared.options.max_concurrent {
                            break;
                        }
                        let Some(channel) = channels.get(&d.channel_id).cloned() else {
                            shared
                                .record(d.id, AttemptOutcome::Dead("channel removed".into()))
                                .await;
                            continue;
                        };
                        let bucket = buckets.entry(channel.id).or_insert(Bucket {
                            tokens: f64::from(channel.per_minute.max(1)),
                            at: Instant::now(),
                        });
                        if !bucket.take(channel.per_minute, Instant::now()) {
                            limited = true;
                            AlertMetrics::inc(&shared.metrics.rate_limited);
                            continue;
                        }
                        inflight.insert(d.id);
                        let s = Arc::clone(&shared);
                        tasks.spawn(async move {
                            let id = d.id;
                            s.attempt(d, channel).await;
                            id
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the alert outbox; retrying"),
            }
        }
        // A finished attempt and a new alert wake the loop; otherwise it
        // looks again when the next retry is due (attempts in flight are
        // due already but taken: no need to spin on them).
        let wait = if limited {
            Duration::from_secs(1)
        } else if !tasks.is_empty() {
            Duration::from_millis(500)
        } else {
            shared.until_next_due().await
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(id) = done {
                    inflight.remove(&id);
                }
            }
            _ = inputs.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tasks.abort_all();
}

struct Shared {
    store: AnyStore,
    key: SealingKey,
    metrics: Arc<AlertMetrics>,
    options: DeliveryOptions,
    clients: Clients,
}

impl Shared {
    async fn due(
        &self,
        inflight: &HashSet<u64>,
    ) -> rampart_store::Result<(Vec<Delivery>, HashMap<u64, AlertChannel>)> {
        let due = self
            .store
            .due_deliveries(OffsetDateTime::now_utc(), 500)
            .await?
            .into_iter()
            .filter(|d| !inflight.contains(&d.id))
            .collect::<Vec<_>>();
        if due.is_empty() {
            return Ok((due, HashMap::new()));
        }
        let channels = self
            .store
            .alert_channels()
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        Ok((due, channels))
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.next_delivery_due().await {
            Ok(Some(at)) => {
                let left = at - OffsetDateTime::now_utc();
                Duration::try_from(left)
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(20), Duration::from_secs(5))
            }
            _ => Duration::from_secs(5),
        }
    }

    async fn record(&self, id: u64, outcome: AttemptOutcome) {
        if let Err(e) = self.store.record_attempt(id, outcome).await {
            tracing::error!(delivery = id, error = %e, "cannot record a delivery attempt");
        }
    }

    /// One attempt of `d` to `channel`, recorded in the store.
    async fn attempt(&self, d: Delivery, channel: AlertChannel) {
        let outcome = match self.send(&d, &channel).await {
            Ok(Attempt::Delivered) => {
                AlertMetrics::inc(&self.metrics.delivered);
                tracing::info!(delivery = d.id, alert = d.alert_id, channel = %channel.name, "notification delivered");
                AttemptOutcome::Delivered(OffsetDateTime::now_utc())
            }
            Ok(Attempt::Retry { after }) => {
                self.retry(&d, &channel, "the receiver asked to retry", after)
            }
            Ok(Attempt::Permanent) => self.dead(&d, &channel, "the receiver refused it".into()),
            Err(SendError::Transient(why)) => self.retry(&d, &channel, &why, None),
            Err(SendError::Permanent(why)) => self.dead(&d, &channel, why),
        };
        self.record(d.id, outcome).await;
    }

    fn retry(
        &self,
        d: &Delivery,
        channel: &AlertChannel,
        why: &str,
        after: Option<Duration>,
    ) -> AttemptOutcome {
        let attempts = d.attempts.saturating_add(1);
        match self
            .options
            .retry
            .next_delay(attempts, rand::random::<f64>(), after)
        {
            Some(delay) => {
                AlertMetrics::inc(&self.metrics.retried);
                tracing::warn!(delivery = d.id, channel = %channel.name, target = %channel.target, attempts, retry_in_ms = delay.as_millis() as u64, reason = why, "notification not delivered; will retry");
                AttemptOutcome::RetryAt(
                    OffsetDateTime::now_utc() + delay,
                    format!("attempt {attempts}: {why}"),
                )
            }
            None => self.dead(
                d,
                channel,
                format!("gave up after {attempts} attempts: {why}"),
            ),
        }
    }

    fn dead(&self, d: &Delivery, channel: &AlertChannel, why: String) -> AttemptOutcome {
        AlertMetrics::inc(&self.metrics.dead);
        tracing::error!(delivery = d.id, channel = %channel.name, target = %channel.target, reason = %why, "notification moved to the dead letters");
        AttemptOutcome::Dead(why)
    }

    async fn send(&self, d: &Delivery, channel: &AlertChannel) -> Result<Attempt, SendError> {
        let secrets = self
            .store
            .alert_channel_secrets(channel.id)
            .await
            .map_err(|e| SendError::Transient(format!("store: {e}")))?
            .ok_or_else(|| SendError::Permanent("channel removed".into()))?;
        let context = sealing_context(&channel.name);
        let mut url = open_url(
            &self.key,
            &channel.name,
            &secrets.url_sealed,
            channel.allow_private,
        )
        .map_err(SendError::Permanent)?;
        let secret = secrets
            .secret_sealed
            .map(|s| self.key.open_bytes(&s, &context))
            .transpose()
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let kind = ChannelKind::parse(&channel.kind).ok_or_else(|| {
            SendError::Permanent(format!("unknown channel kind {}", channel.kind))
        })?;
        let change = if d.firing {
            Change::Firing
        } else {
            Change::Resolved
        };
        let link = self
            .options
            .console_url
            .as_ref()
            .map(|base| format!("{}/alerts/{}", base.trim_end_matches('/'), d.alert_id));
        let body = render(
            kind,
            &Message {
                alert_id: d.alert_id,
                rule: &d.rule,
                expr: &d.expr,
                subject: &d.subject,
                change,
                at_ms: u64::try_from(d.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                value: d.value,
                link: link.as_deref(),
            },
        );
        let key = idempotency_key(d.alert_id, change);
        for _hop in 0..=self.options.max_redirects {
            let mut req = self
                .clients
                .for_target(&url)
                .post(url.expose().clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(IDEMPOTENCY_HEADER, &key)
                .body(body.clone());
            if let Some(secret) = &secret {
                let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
                req = req.header(SIGNATURE_HEADER, sign(secret, now, &body));
            }
            let resp = req.send().await.map_err(|e| classify_error(&e))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        SendError::Permanent(format!("HTTP {status} without a Location"))
                    })?
                    .to_owned();
                url = url
                    .follow(&location)
                    .map_err(|e| SendError::Permanent(format!("redirect refused: {e}")))?;
                continue;
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return match classify(status.as_u16(), retry_after.as_deref()) {
                Attempt::Permanent => Err(SendError::Permanent(format!("HTTP {status}"))),
                Attempt::Retry { after } if after.is_none() => {
                    Err(SendError::Transient(format!("HTTP {status}")))
                }
                other => Ok(other),
            };
        }
        Err(SendError::Permanent(format!(
            "more than {} redirects",
            self.options.max_redirects
        )))
    }
}

/// Why a send did not get an answer to classify.
#[derive(Debug)]
enum SendError {
    /// Worth retrying (timeout, connection refused, 5xx).
    Transient(String),
    /// Never going to work (bad target, refused address, 4xx).
    Permanent(String),
}

/// Transport errors: a refused address is permanent, the rest transient.
/// The message names no URL (reqwest's would carry the secret path).
fn classify_error(e: &reqwest::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TargetError>() {
            return SendError::Permanent(t.to_string());
        }
        source = s.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let detail = std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    SendError::Transient(format!("{what}{detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 2.0,
            at: start,
        };
        assert!(b.take(2, start));
        assert!(b.take(2, start));
        assert!(!b.take(2, start), "empty");
        assert!(
            !b.take(2, start + Duration::from_secs(20)),
            "2/min: 2/3 of a token"
        );
        assert!(b.take(2, start + Duration::from_secs(31)));
    }
}
