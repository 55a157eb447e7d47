//! Fan-out: one device publishes to `devices/{id}/telemetry/up`; N
//! subscribers, each its own identity and mTLS connection, subscribe to
//! exactly that topic. Reports deliveries per second over all subscribers,
//! publish-to-delivery latency, and lost and duplicated deliveries.
//!
//! Connecting a thousand mTLS subscribers takes longer than measuring them
//! (seconds against Mosquitto), so one run connects them once and measures
//! one *phase* per requested QoS on the same connections. They subscribe
//! at the highest QoS of the phases; a QoS 0 phase publishes at QoS 0, which
//! the broker delivers at QoS 0 (MQTT 5 §3.8.4: the lower of the published
//! and the granted QoS). Each phase has its own run id, so a late delivery
//! of an earlier phase counts as stale, not as this phase's.
//!
//! The publisher runs a closed loop over the *whole path*: message `n` is
//! sent only once every subscriber has received message `n - window` (and,
//! at QoS 1, fewer than `window` PUBACKs are outstanding). So no
//! subscriber ever has more than `window` messages waiting in the broker,
//! far below either broker's queue limit: the figure is the broker's
//! sustained fan-out rate, not its drop policy, and a lost or duplicated
//! delivery is a real one. Latency is measured from the actual send time
//! (closed loop: it reflects the load the window creates, `window` messages
//! × subscribers deliveries queued at most).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mqtt5_protocol::Packet;
use mqtt5_protocol::packet::puback::PubAckPacket;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::client::{Client, SessionKind, Target};
use crate::fanin::{Outstanding, nanos_since, topic};
use crate::payload::Stamp;
use crate::{CertDir, LoadgenError, MqttVersion, Percentiles, Qos, tracking};

/// Highest sequence number a subscriber tracks; beyond it a message counts
/// as malformed rather than growing memory without bound.
const MAX_SEQ: u64 = 1 << 26;

/// Fan-out parameters.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Broker and protocol.
    pub target: Target,
    /// The publisher's identities: the first device identity is used.
    pub certs: CertDir,
    /// Identity left out when choosing the publisher (the fan-in reader).
    pub exclude: String,
    /// The subscribers' identities: the first `subscribers`, sorted.
    pub subscriber_certs: CertDir,
    /// Number of subscribers.
    pub subscribers: usize,
    /// The phases, in order: the QoS the device publishes at in each.
    pub phases: Vec<Qos>,
    /// Messages the slowest subscriber may be behind the publisher.
    pub window: usize,
    /// How long the device publishes, per phase.
    pub duration: Duration,
    /// Leading part of the run left out of the latency histogram.
    pub warmup: Duration,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Simultaneous handshakes while connecting the subscribers.
    pub connect_concurrency: usize,
}

/// Pause between phases: each phase ends once every subscriber holds
/// everything sent, so this only lets the last acknowledgements settle.
const PHASE_PAUSE: Duration = Duration::from_millis(500);

/// Results of a run: the subscribers' set-up and one report per phase.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FanoutRun {
    /// Always "fanout".
    pub scenario: String,
    /// The publishing device.
    pub publisher: String,
    /// Subscribers connected and subscribed.
    pub subscribers: usize,
    /// QoS of the subscriptions (the highest of the phases).
    pub subscription_qos: Qos,
    /// Wall time to connect and subscribe every subscriber, seconds.
    pub connect_wall_s: f64,
    /// One report per phase, in order. Fewer than asked when the publisher's
    /// connection failed; the last report's `errors` say why.
    pub phases: Vec<FanoutReport>,
}

/// Results of one phase.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FanoutReport {
    /// Always "fanout".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// QoS.
    pub qos: Qos,
    /// The publishing device.
    pub publisher: String,
    /// Subscribers connected.
    pub subscribers: usize,
    /// End-to-end window, messages.
    pub window: usize,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Warm-up left out of the latency histogram, seconds.
    pub warmup_s: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Wall time to connect and subscribe every subscriber, seconds (once
    /// per run: shared by its phases).
    pub connect_wall_s: f64,
    /// PUBLISH packets sent.
    pub sent: u64,
    /// Acknowledged with success (QoS 1).
    pub acked: u64,
    /// Acknowledged with a failure reason (QoS 1).
    pub rejected: u64,
    /// `sent / duration_s`.
    pub published_per_s: f64,
    /// Deliveries of this run's messages, over all subscribers.
    pub deliveries: u64,
    /// Deliveries received during the publishing window.
    pub deliveries_in_window: u64,
    /// `deliveries_in_window / duration_s`: the headline throughput.
    pub deliveries_per_s: f64,
    /// Expected deliveries (acknowledged or, at QoS 0, sent; times subscribers).
    pub expected_deliveries: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries beyond the first of a message to a subscriber.
    pub duplicated: u64,
    /// Payloads that were not this publisher's benchmark payloads.
    pub malformed: u64,
    /// Late messages of an earlier run (left out of every other count).
    pub stale: u64,
    /// Delivery time minus send time, after the warm-up.
    pub latency: Percentiles,
    /// Errors of the publisher or of individual subscribers (first few).
    pub errors: Vec<String>,
}

/// How far each subscriber has got, and the publisher's wake-up.
///
/// A subscriber publishes its progress (highest sequence number received
/// plus one); the publisher stores the progress it needs from everyone
/// before it may send again, and the subscriber that crosses that mark
/// wakes it. Both sides use `SeqCst`, so at least one of them sees the
/// other's store: either the subscriber notifies, or the publisher's
/// re-check after storing its mark finds the progress already there.
#[derive(Debug)]
struct Progress {
    next: Vec<AtomicU64>,
    needed: AtomicU64,
    wake: Notify,
}

impl Progress {
    fn new(subscribers: usize) -> Self {
        Self {
            next: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            needed: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    /// Subscriber `index` has received everything it will below `next`.
    fn advance(&self, index: usize, next: u64) {
        let Some(slot) = self.next.get(index) else {
            return;
        };
        let old = slot.fetch_max(next, Ordering::SeqCst);
        let needed = self.needed.load(Ordering::SeqCst);
        if old < needed && needed <= next {
            self.wake.notify_one();
        }
    }

    /// Subscriber `index` has stopped: the publisher no longer waits for it.
    fn stop(&self, index: usize) {
        self.advance(index, u64::MAX);
    }

    /// The progress of the slowest subscriber.
    fn slowest(&self) -> u64 {
        self.next
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// When the run's phases start and end.
#[derive(Debug, Clone, Copy)]
struct Clock {
    run: u32,
    epoch: Instant,
    end: Instant,
    latency_from: Instant,
}

/// Publish one phase; the connection is kept for the next phase.
async fn publish(
    client: &mut Client,
    cfg: &FanoutConfig,
    qos: Qos,
    progress: &Progress,
    clock: Clock,
    drain: Duration,
) -> Result<Outstanding, LoadgenError> {
    let topic = topic(&client.id);
    let mut out = Outstanding::default();
    let window = u64::try_from(cfg.window.max(1)).unwrap_or(u64::MAX);
    let qos1 = qos == Qos::AtLeastOnce;
    let acks_allow = |out: &Outstanding| !qos1 || (out.in_flight() as u64) < window;
    tokio::time::sleep_until(clock.epoch).await;
    loop {
        let now = Instant::now();
        if now >= clock.end {
            break;
        }
        let allowed = progress.slowest().saturating_add(window);
        while out.sent < allowed && acks_allow(&out) {
            let (seq, pid) = out.next(qos);
            let stamp = Stamp {
                run: clock.run,
                device: 0,
                seq,
                intended_ns: nanos_since(clock.epoch, now),
            };
            let p = client.publish_packet(&topic, stamp.encode(cfg.payload_size), qos, pid);
            client.queue(&p)?;
        }
        if client.pending_write() > 0 {
            client.flush().await?;
        }
        // Message `sent` may go once the slowest subscriber has reached
        // `sent + 1 - window`.
        let needed = (out.sent + 1).saturating_sub(window);
        progress.needed.store(needed, Ordering::SeqCst);
        if progress.slowest() >= needed && acks_allow(&out) {
            continue;
        }
        tokio::select! {
            () = progress.wake.notified() => {}
            read = client.read_more(), if qos1 => {
                read?;
                out.drain_acks(client)?;
            }
            () = tokio::time::sleep_until(clock.end) => {}
        }
    }
    let give_up = clock.end + drain;
    while out.in_flight() > 0 {
        match tokio::time::timeout_at(give_up, client.read_more()).await {
            Err(_elapsed) => break,
            Ok(read) => read?,
        }
        out.drain_acks(client)?;
    }
    Ok(out)
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// Per sequence number: how many times it arrived.
    counts: Vec<u8>,
    /// Latencies in microseconds (after the warm-up).
    latencies_us: Vec<u32>,
    total: u64,
    in_window: u64,
    malformed: u64,
    stale: u64,
    error: Option<String>,
}

impl Seen {
    /// Record one payload received at `now`; returns its sequence number
    /// when it belongs to this run.
    fn record(&mut self, payload: &[u8], now: Instant, clock: &Clock) -> Option<u64> {
        let Some(stamp) = Stamp::decode(payload) else {
            self.malformed += 1;
            return None;
        };
        if stamp.run != clock.run {
            self.stale += 1;
            return None;
        }
        if stamp.device != 0 || stamp.seq >= MAX_SEQ {
            self.malformed += 1;
            return None;
        }
        self.total += 1;
        if now < clock.end {
            self.in_window += 1;
        }
        let seq = usize::try_from(stamp.seq).ok()?;
        if self.counts.len() <= seq {
            self.counts.resize(seq + 1, 0);
        }
        if let Some(c) = self.counts.get_mut(seq) {
            *c = c.saturating_add(1);
        }
        let sent = clock.epoch + Duration::from_nanos(stamp.intended_ns);
        if sent >= clock.latency_from {
            let us = now.saturating_duration_since(sent).as_micros();
            self.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX).max(1));
        }
        Some(stamp.seq)
    }
}

/// Receive until everything the publisher sent has arrived (in order: MQTT
/// 5 §4.6 keeps one publisher's messages on one topic ordered), or until
/// `drain` after the publisher stopped. Gives the connection back for the
/// next phase unless it failed.
async fn subscribe(
    mut client: Client,
    index: usize,
    progress: Arc<Progress>,
    clock: Clock,
    mut sent: watch::Receiver<Option<u64>>,
    drain: Duration,
) -> (Option<Client>, Seen) {
    let mut seen = Seen::default();
    let mut next = 0u64;
    let mut give_up: Option<Instant> = None;
    let result: Result<(), LoadgenError> = async {
        loop {
            let total = *sent.borrow();
            if let Some(total) = total {
                if next >= total {
                    return Ok(());
                }
                if give_up.is_none() {
                    give_up = Some(Instant::now() + drain);
                }
            }
            tokio::select! {
                read = client.read_more() => read?,
                changed = sent.changed(), if give_up.is_none() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                () = tokio::time::sleep_until(give_up.unwrap_or(clock.end)), if give_up.is_some() => {
                    return Ok(());
                }
            }
            let now = Instant::now();
            while let Some(packet) = client.next_buffered()? {
                let Packet::Publish(publish) = packet else {
                    continue;
                };
                if let Some(id) = publish.packet_id {
                    client.queue(&PubAckPacket::new(id))?;
                }
                if let Some(seq) = seen.record(&publish.payload, now, &clock) {
                    next = next.max(seq + 1);
                }
            }
            progress.advance(index, next);
            if client.pending_write() > 0 {
                client.flush().await?;
            }
        }
    }
    .await;
    progress.stop(index);
    match result {
        Ok(()) => (Some(client), seen),
        Err(e) => {
            seen.error = Some(e.to_string());
            (None, seen)
        }
    }
}

/// Connect and subscribe every identity in `ids` to `filter`, at most
/// `concurrency` at a time; fails if any of them fails.
async fn connect_subscribers(
    cfg: &FanoutConfig,
    ids: &[String],
    filter: &str,
    qos: Qos,
) -> Result<Vec<Client>, LoadgenError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let (target, certs, id, limit, filter, qos) = (
            cfg.target.clone(),
            cfg.subscriber_certs.clone(),
            id.clone(),
            Arc::clone(&limit),
            filter.to_string(),
            qos,
        );
        tasks.spawn(async move {
            let result = async {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .map_err(|_| LoadgenError::Config("connection limiter closed".into()))?;
                let config = certs.client_config(&certs.load(&id)?, true)?;
                tracking::connect_subscriber(&target, config, &id, &filter, qos, SessionKind::Clean)
                    .await
            }
            .await;
            (index, result)
        });
    }
    let mut clients: Vec<Option<Client>> = (0..ids.len()).map(|_| None).collect();
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(client))) => {
                if let Some(slot) = clients.get_mut(index) {
                    *slot = Some(client);
                }
            }
            Ok((_, Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("subscriber connect task: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(LoadgenError::Protocol(format!(
            "{failed} of {} subscribers could not connect and subscribe; first: {e}",
            ids.len()
        )));
    }
    Ok(clients.into_iter().flatten().collect())
}

/// Connect the subscribers once and run every phase on them.
pub async fn run(cfg: FanoutConfig) -> Result<FanoutRun, LoadgenError> {
    if cfg.subscribers == 0 || cfg.duration <= cfg.warmup || cfg.phases.is_empty() {
        return Err(LoadgenError::Config(
            "fan-out needs subscribers, at least one phase and a duration longer than the warm-up"
                .into(),
        ));
    }
    let publisher_id = cfg
        .certs
        .device_ids(1, &cfg.exclude)?
        .into_iter()
        .next()
        .ok_or_else(|| LoadgenError::Config("no publisher identity".into()))?;
    let filter = topic(&publisher_id);
    let subscriber_ids = cfg.subscriber_certs.device_ids(cfg.subscribers, "")?;
    if subscriber_ids.contains(&publisher_id) {
        return Err(LoadgenError::Config(format!(
            "the publisher '{publisher_id}' is also among the subscribers"
        )));
    }
    let subscription_qos = if cfg.phases.contains(&Qos::AtLeastOnce) {
        Qos::AtLeastOnce
    } else {
        Qos::AtMostOnce
    };
    let connect_started = Instant::now();
    let mut subscribers =
        connect_subscribers(&cfg, &subscriber_ids, &filter, subscription_qos).await?;
    let connect_wall_s = connect_started.elapsed().as_secs_f64();
    let mut publisher = Client::connect(
        &cfg.target,
        cfg.certs
            .client_config(&cfg.certs.load(&publisher_id)?, true)?,
        &publisher_id,
        SessionKind::Clean,
    )
    .await?;
    let connected = subscribers.len();
    let cfg = Arc::new(cfg);
    let mut phases = Vec::with_capacity(cfg.phases.len());
    for (i, &qos) in cfg.phases.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(PHASE_PAUSE).await;
        }
        let (mut report, survivors, publisher_ok) =
            phase(&cfg, qos, &mut publisher, subscribers).await?;
        subscribers = survivors;
        report.connect_wall_s = connect_wall_s;
        if subscribers.len() < connected && report.errors.len() < 5 {
            report.errors.push(format!(
                "{} of {connected} subscribers lost their connection so far",
                connected - subscribers.len()
            ));
        }
        phases.push(report);
        if !publisher_ok {
            break;
        }
    }
    // Best effort: the counts are what matter.
    let _ = publisher.disconnect().await;
    for s in subscribers {
        let _ = s.disconnect().await;
    }
    Ok(FanoutRun {
        scenario: "fanout".into(),
        publisher: publisher_id,
        subscribers: connected,
        subscription_qos,
        connect_wall_s,
        phases,
    })
}

/// One measured phase at `qos`: returns its report, the subscribers whose
/// connections are still good, and whether the publisher's is.
async fn phase(
    cfg: &Arc<FanoutConfig>,
    qos: Qos,
    publisher: &mut Client,
    subscribers: Vec<Client>,
) -> Result<(FanoutReport, Vec<Client>, bool), LoadgenError> {
    let drain = Duration::from_secs(5);
    let epoch = Instant::now() + Duration::from_millis(50);
    let clock = Clock {
        run: crate::payload::new_run_id(),
        epoch,
        end: epoch + cfg.duration,
        latency_from: epoch + cfg.warmup,
    };
    let progress = Arc::new(Progress::new(subscribers.len()));
    let (sent_tx, sent_rx) = watch::channel(None);
    let mut receivers = tokio::task::JoinSet::new();
    for (index, client) in subscribers.into_iter().enumerate() {
        receivers.spawn(subscribe(
            client,
            index,
            Arc::clone(&progress),
            clock,
            sent_rx.clone(),
            Duration::from_secs(2),
        ));
    }
    drop(sent_rx);
    let published = publish(publisher, cfg, qos, &progress, clock, drain).await;
    let mut errors = Vec::new();
    let out = match published {
        Ok(out) => out,
        Err(e) => {
            errors.push(format!("publisher: {e}"));
            Outstanding::default()
        }
    };
    let publisher_ok = errors.is_empty();
    // Subscribers stop once they hold everything sent (or after the drain).
    let _ = sent_tx.send(Some(if publisher_ok { out.sent } else { 0 }));

    let mut hist = crate::latency_histogram()?;
    let mut report = FanoutReport {
        scenario: "fanout".into(),
        mqtt_version: cfg.target.version,
        qos,
        publisher: publisher.id.clone(),
        subscribers: progress.next.len(),
        window: cfg.window,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        payload_bytes: cfg.payload_size,
        connect_wall_s: 0.0,
        sent: out.sent,
        acked: out.acked,
        rejected: out.rejected,
        published_per_s: out.sent as f64 / cfg.duration.as_secs_f64(),
        deliveries: 0,
        deliveries_in_window: 0,
        deliveries_per_s: 0.0,
        expected_deliveries: 0,
        lost: 0,
        duplicated: 0,
        malformed: 0,
        stale: 0,
        latency: Percentiles::default(),
        errors,
    };
    let expected_per_subscriber = out.expected.iter().filter(|&&e| e).count() as u64;
    let mut survivors = Vec::with_capacity(report.subscribers);
    while let Some(joined) = receivers.join_next().await {
        let (client, seen) = match joined {
            Ok(done) => done,
            Err(e) => {
                if report.errors.len() < 5 {
                    report.errors.push(format!("subscriber task: {e}"));
                }
                // Everything this subscriber should have had is unaccounted for.
                report.lost += expected_per_subscriber;
                report.expected_deliveries += expected_per_subscriber;
                continue;
            }
        };
        survivors.extend(client);
        let acc = account(&out.expected, &seen.counts);
        report.expected_deliveries += expected_per_subscriber;
        report.lost += acc.0;
        report.duplicated += acc.1;
        report.deliveries += seen.total;
        report.deliveries_in_window += seen.in_window;
        report.malformed += seen.malformed;
        report.stale += seen.stale;
        for us in seen.latencies_us {
            hist.saturating_record(u64::from(us));
        }
        if let Some(e) = seen.error
            && report.errors.len() < 5
        {
            report.errors.push(format!("subscriber: {e}"));
        }
    }
    report.deliveries_per_s = report.deliveries_in_window as f64 / report.duration_s;
    report.latency = Percentiles::of(&hist);
    Ok((report, survivors, publisher_ok))
}

/// Lost and duplicated deliveries to one subscriber: `expected[seq]` says
/// whether message `seq` should have arrived, `counts[seq]` how often it did.
fn account(expected: &[bool], counts: &[u8]) -> (u64, u64) {
    let lost = expected
        .iter()
        .enumerate()
        .filter(|&(seq, &e)| e && counts.get(seq).copied().unwrap_or(0) == 0)
        .count() as u64;
    let duplicated = counts.iter().map(|&c| u64::from(c.saturating_sub(1))).sum();
    (lost, duplicated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_per_subscriber() {
        // Message 1 lost, message 2 twice, message 3 not expected (unacknowledged).
        assert_eq!(account(&[true, true, true, false], &[1, 0, 2]), (1, 1));
        assert_eq!(account(&[true, true], &[]), (2, 0));
        assert_eq!(account(&[], &[1, 3]), (0, 2));
    }

    #[tokio::test]
    async fn progress_wakes_the_publisher_when_the_slowest_subscriber_crosses_its_mark() {
        let p = Arc::new(Progress::new(2));
        p.needed.store(3, Ordering::SeqCst);
        p.advance(0, 5);
        assert_eq!(p.slowest(), 0);
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.wake.notified().await })
        };
        p.advance(1, 3);
        assert_eq!(p.slowest(), 3);
        // The crossing stored a permit or woke the waiter: either way it returns.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .is_ok()
        );
        // Progress never goes back; a stopped subscriber no longer holds anyone up.
        p.advance(1, 1);
        assert_eq!(p.slowest(), 3);
        p.stop(0);
        p.stop(1);
        assert_eq!(p.slowest(), u64::MAX);
    }

    #[test]
    fn seen_records_this_runs_messages_only() {
        let epoch = Instant::now();
        let clock = Clock {
            run: 7,
            epoch,
            end: epoch + Duration::from_secs(1),
            latency_from: epoch + Duration::from_millis(100),
        };
        let stamp = |run, device, seq, intended_ms: u64| {
            Stamp {
                run,
                device,
                seq,
                intended_ns: intended_ms * 1_000_000,
            }
            .encode(100)
        };
        let mut seen = Seen::default();
        let at = epoch + Duration::from_millis(300);
        assert_eq!(seen.record(&stamp(7, 0, 2, 200), at, &clock), Some(2));
        // Sent during the warm-up: counted, no latency sample.
        assert_eq!(seen.record(&stamp(7, 0, 0, 50), at, &clock), Some(0));
        assert_eq!(seen.record(&stamp(6, 0, 1, 200), at, &clock), None);
        assert_eq!(seen.record(&stamp(7, 3, 1, 200), at, &clock), None);
        assert_eq!(seen.record(b"not a stamp", at, &clock), None);
        assert_eq!(seen.counts, vec![1, 0, 1]);
        assert_eq!((seen.total, seen.in_window), (2, 2));
        assert_eq!((seen.stale, seen.malformed), (1, 2));
        assert_eq!(seen.latencies_us, vec![100_000]);
    }
}
