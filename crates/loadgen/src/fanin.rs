//! Fan-in: N devices publish to `devices/{id}/telemetry/up` as fast as a
//! window of unacknowledged QoS 1 messages allows (QoS 0: as fast as the
//! socket takes them); one subscriber identity receives everything through
//! `devices/+/telemetry/up`. Reports the subscriber's receive rate over the
//! fixed duration and the lost and duplicated messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mqtt5_protocol::{Packet, ReasonCode};
use tokio::time::Instant;

use crate::client::{Client, SessionKind, Target, connect_many};
use crate::payload::Stamp;
use crate::tracking::{self, Plan};
use crate::{CertDir, LoadgenError, MqttVersion, Qos};

/// The topic filter the subscriber uses.
pub const FILTER: &str = "devices/+/telemetry/up";

/// The topic a device publishes telemetry to.
pub fn topic(id: &str) -> String {
    Uplink::Telemetry.topic(id)
}

/// Which uplink devices publish on, and so what Rampart does with each
/// message before PUBACK (DESIGN.md, "Topics"). Mosquitto treats both
/// alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Uplink {
    /// `devices/{id}/telemetry/up`: decoded, validated and committed to
    /// the store (group commit, fsync) before PUBACK.
    #[default]
    Telemetry,
    /// `devices/{id}/cmd/up` (command results): checked against the ACL
    /// and routed, never stored by the pipeline. What is left is the
    /// broker alone, with the same TLS, ACL and persistent-session work.
    Cmd,
}

impl Uplink {
    /// The uplink's category level in the topic.
    pub fn category(self) -> &'static str {
        match self {
            Uplink::Telemetry => "telemetry",
            Uplink::Cmd => "cmd",
        }
    }

    /// The topic device `id` publishes to.
    pub fn topic(self, id: &str) -> String {
        format!("devices/{id}/{}/up", self.category())
    }

    /// The filter the subscriber takes every device's messages with.
    pub fn filter(self) -> String {
        format!("devices/+/{}/up", self.category())
    }
}

impl std::str::FromStr for Uplink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "telemetry" => Ok(Uplink::Telemetry),
            "cmd" => Ok(Uplink::Cmd),
            other => Err(format!("uplink must be telemetry or cmd, not '{other}'")),
        }
    }
}

/// Fan-in parameters.
#[derive(Debug, Clone)]
pub struct FaninConfig {
    /// Broker and protocol.
    pub target: Target,
    /// Identities.
    pub certs: CertDir,
    /// Number of publishing devices.
    pub devices: usize,
    /// The subscriber's identity.
    pub subscriber: String,
    /// QoS of publishing and of the subscription.
    pub qos: Qos,
    /// Unacknowledged QoS 1 messages per device.
    pub window: usize,
    /// How long devices publish.
    pub duration: Duration,
    /// Payload size in bytes (at least 20).
    pub payload_size: usize,
    /// Whether the broker keeps (and stores) the subscriber's session.
    pub subscriber_session: SessionKind,
    /// Simultaneous handshakes while connecting the devices.
    pub connect_concurrency: usize,
}

/// Fan-in results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FaninReport {
    /// Always "fanin".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// QoS.
    pub qos: Qos,
    /// Publishing devices.
    pub devices: usize,
    /// In-flight window per device (QoS 1).
    pub window: usize,
    /// Publishing time in seconds.
    pub duration_s: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Subscriber session kind.
    pub subscriber_session: SessionKind,
    /// PUBLISH packets sent by the devices.
    pub sent: u64,
    /// Of those, acknowledged with success (QoS 1).
    pub acked: u64,
    /// Acknowledged with a failure reason (QoS 1).
    pub rejected: u64,
    /// Messages the subscriber received (window and drain).
    pub received: u64,
    /// Messages received during the publishing window.
    pub received_in_window: u64,
    /// `received_in_window / duration_s`: the headline throughput.
    pub msgs_per_s: f64,
    /// Acknowledged (QoS 1) or sent (QoS 0) but never received.
    pub lost: u64,
    /// Receptions beyond the first.
    pub duplicated: u64,
    /// Payloads that were not benchmark payloads.
    pub malformed: u64,
    /// Late messages of an earlier run (left out of every other count).
    pub stale: u64,
    /// Errors of individual devices (first few).
    pub errors: Vec<String>,
}

/// Packet ids and sequence numbers of unacknowledged QoS 1 messages, and
/// which sequence numbers a device may expect the subscriber to get.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    /// In-flight QoS 1 messages: sequence number and when it was queued.
    by_packet_id: HashMap<u16, (u64, Instant)>,
    /// Where the open-loop latency run records its timing breakdown.
    pub timing: Option<Timing>,
    last_packet_id: u16,
    /// `expected[seq]`: sent (QoS 0) or acknowledged with success (QoS 1).
    pub expected: Vec<bool>,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    /// Open loop only: messages scheduled before the end but never sent
    /// (the publisher fell too far behind its schedule).
    pub unsent: u64,
}

impl Outstanding {
    pub fn in_flight(&self) -> usize {
        self.by_packet_id.len()
    }

    /// Register the next message; returns its sequence number and, for
    /// QoS 1, a free packet id (MQTT 5 §2.2.1: non-zero, unique in flight).
    pub fn next(&mut self, qos: Qos) -> (u64, u16) {
        let seq = self.sent;
        self.sent += 1;
        match qos {
            Qos::AtMostOnce => {
                self.expected.push(true);
                (seq, 0)
            }
            Qos::AtLeastOnce => {
                self.expected.push(false);
                let mut id = self.last_packet_id;
                loop {
                    id = id.wrapping_add(1);
                    if id != 0 && !self.by_packet_id.contains_key(&id) {
                        break;
                    }
                }
                self.last_packet_id = id;
                self.by_packet_id.insert(id, (seq, Instant::now()));
                (seq, id)
            }
        }
    }

    /// Handle the broker's PUBACKs in the client's read buffer.
    pub fn drain_acks(&mut self, client: &mut Client) -> Result<(), LoadgenError> {
        while let Some(packet) = client.next_buffered()? {
            if let Packet::PubAck(ack) = packet
                && let Some((seq, queued)) = self.by_packet_id.remove(&ack.packet_id)
            {
                if let Some(t) = self.timing.as_mut() {
                    t.acknowledged(queued);
                }
                // MQTT 5 §3.4.2.1: 0x10 "no matching subscribers" is a success too.
                if ack.reason_code == ReasonCode::Success
                    || ack.reason_code == ReasonCode::NoMatchingSubscribers
                {
                    self.acked += 1;
                    if let Some(e) = usize::try_from(seq)
                        .ok()
                        .and_then(|s| self.expected.get_mut(s))
                    {
                        *e = true;
                    }
                } else {
                    self.rejected += 1;
                }
            }
        }
        Ok(())
    }
}

/// Where an open-loop publisher's time goes, after the warm-up: how late
/// each message was queued for sending against its schedule (a full window
/// or a stalled publisher), and how long its PUBACK took.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// Messages scheduled before this are left out.
    from: Instant,
    /// Queued minus scheduled, µs.
    pub lag: hdrhistogram::Histogram<u64>,
    /// PUBACK received minus queued, µs.
    pub ack: hdrhistogram::Histogram<u64>,
}

impl Timing {
    pub fn new(from: Instant) -> Result<Self, LoadgenError> {
        Ok(Self {
            from,
            lag: crate::latency_histogram()?,
            ack: crate::latency_histogram()?,
        })
    }

    /// A message scheduled at `scheduled` is being queued at `now`.
    pub fn queued(&mut self, scheduled: Instant, now: Instant) {
        if scheduled >= self.from {
            let lag = now.saturating_duration_since(scheduled);
            self.lag.saturating_record(crate::micros(lag));
        }
    }

    /// The PUBACK of a message queued at `queued` arrived now.
    fn acknowledged(&mut self, queued: Instant) {
        if queued >= self.from {
            self.ack.saturating_record(crate::micros(
                Instant::now().saturating_duration_since(queued),
            ));
        }
    }

    /// Adds another publisher's figures.
    pub fn merge(&mut self, other: &Timing) {
        let _ = self.lag.add(&other.lag);
        let _ = self.ack.add(&other.ack);
    }
}

/// `t` as nanoseconds after `epoch` (a payload's time stamp).
pub(crate) fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

struct Device {
    client: Client,
    index: u32,
    topic: String,
}

async fn closed_loop(
    mut d: Device,
    cfg: Arc<FaninConfig>,
    run: u32,
    epoch: Instant,
    end: Instant,
    drain: Duration,
) -> Result<Outstanding, LoadgenError> {
    let mut out = Outstanding::default();
    tokio::time::sleep_until(epoch).await;
    let window = cfg.window.max(1);
    loop {
        let now = Instant::now();
        if now < end {
            let batch = match cfg.qos {
                Qos::AtMostOnce => 16,
                Qos::AtLeastOnce => window.saturating_sub(out.in_flight()),
            };
            for _ in 0..batch {
                let (seq, pid) = out.next(cfg.qos);
                let stamp = Stamp {
                    run,
                    device: d.index,
                    seq,
                    intended_ns: nanos_since(epoch, now),
                };
                let p =
                    d.client
                        .publish_packet(&d.topic, stamp.encode(cfg.payload_size), cfg.qos, pid);
                d.client.queue(&p)?;
            }
            d.client.flush().await?;
            if cfg.qos == Qos::AtMostOnce {
                continue;
            }
        } else if out.in_flight() == 0 {
            break;
        }
        match tokio::time::timeout_at(end + drain, d.client.read_more()).await {
            Err(_elapsed) => break,
            Ok(read) => read?,
        }
        out.drain_acks(&mut d.client)?;
    }
    let _ = d.client.disconnect().await;
    Ok(out)
}

/// The `devices` publishing identities (every certificate in `certs` but
/// the subscriber's) and the subscriber, subscribed to `filter`.
pub(crate) async fn devices_and_subscriber(
    target: &Target,
    certs: &CertDir,
    devices: usize,
    subscriber: &str,
    filter: &str,
    qos: Qos,
    session: SessionKind,
) -> Result<(Vec<String>, Client), LoadgenError> {
    let ids = certs.device_ids(devices, subscriber)?;
    let config = certs.client_config(&certs.load(subscriber)?, true)?;
    let client =
        tracking::connect_subscriber(target, config, subscriber, filter, qos, session).await?;
    Ok((ids, client))
}

/// Run a fan-in measurement.
pub async fn run(cfg: FaninConfig) -> Result<FaninReport, LoadgenError> {
    if cfg.devices == 0 || cfg.duration.is_zero() {
        return Err(LoadgenError::Config(
            "fan-in needs devices and a duration".into(),
        ));
    }
    let cfg = Arc::new(cfg);
    let (ids, subscriber) = devices_and_subscriber(
        &cfg.target,
        &cfg.certs,
        cfg.devices,
        &cfg.subscriber,
        FILTER,
        cfg.qos,
        cfg.subscriber_session,
    )
    .await?;
    let mut devices = Vec::with_capacity(ids.len());
    for (index, connected) in connect_many(
        &cfg.target,
        &cfg.certs,
        &ids,
        cfg.connect_concurrency,
        SessionKind::Clean,
    )
    .await
    .into_iter()
    .enumerate()
    {
        let (client, _) = connected?;
        let index =
            u32::try_from(index).map_err(|_| LoadgenError::Config("too many devices".into()))?;
        let topic = topic(&client.id);
        devices.push(Device {
            client,
            index,
            topic,
        });
    }

    let drain = Duration::from_secs(10);
    let run = crate::payload::new_run_id();
    let epoch = Instant::now() + Duration::from_millis(50);
    let end = epoch + cfg.duration;
    let done = Arc::new(AtomicBool::new(false));
    let receiver = tokio::spawn(tracking::receive(
        subscriber,
        cfg.devices,
        Plan {
            run,
            epoch,
            window_end: end,
            latency_from: None,
            sent: None,
            timeline: false,
        },
        Arc::clone(&done),
        Duration::from_secs(1),
        end + drain + Duration::from_secs(5),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for d in devices {
        let cfg = Arc::clone(&cfg);
        tasks.spawn(async move {
            let index = d.index;
            (index, closed_loop(d, cfg, run, epoch, end, drain).await)
        });
    }
    let (expected, totals, errors) = collect(&mut tasks, cfg.devices).await;
    done.store(true, Ordering::Release);
    let received = receiver
        .await
        .map_err(|e| LoadgenError::Protocol(format!("subscriber task: {e}")))??;
    let acc = received.account(&expected);
    let duration_s = cfg.duration.as_secs_f64();
    Ok(FaninReport {
        scenario: "fanin".into(),
        mqtt_version: cfg.target.version,
        qos: cfg.qos,
        devices: cfg.devices,
        window: cfg.window,
        duration_s,
        payload_bytes: cfg.payload_size,
        subscriber_session: cfg.subscriber_session,
        sent: totals.sent,
        acked: totals.acked,
        rejected: totals.rejected,
        received: received.total,
        received_in_window: received.in_window,
        msgs_per_s: received.in_window as f64 / duration_s,
        lost: acc.lost,
        duplicated: acc.duplicated,
        malformed: received.malformed,
        stale: received.stale,
        errors,
    })
}

/// Publisher counts summed over devices.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub unsent: u64,
    /// Open-loop timing breakdown, merged over devices.
    pub timing: Option<Timing>,
}

/// Gather publisher results: expected bitmaps by device index, totals and
/// the first few errors.
pub(crate) async fn collect(
    tasks: &mut tokio::task::JoinSet<(u32, Result<Outstanding, LoadgenError>)>,
    devices: usize,
) -> (Vec<Vec<bool>>, Totals, Vec<String>) {
    let mut expected = vec![Vec::new(); devices];
    let mut totals = Totals::default();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(out))) => {
                totals.sent += out.sent;
                totals.acked += out.acked;
                totals.rejected += out.rejected;
                totals.unsent += out.unsent;
                if let Some(t) = &out.timing {
                    match totals.timing.as_mut() {
                        Some(all) => all.merge(t),
                        None => totals.timing = Some(t.clone()),
                    }
                }
                if let Some(slot) = expected.get_mut(index as usize) {
                    *slot = out.expected;
                }
            }
            Ok((index, Err(e))) => {
                if errors.len() < 5 {
                    errors.push(format!("device #{index}: {e}"));
                }
            }
            Err(e) => {
                if errors.len() < 5 {
                    errors.push(format!("publisher task: {e}"));
                }
            }
        }
    }
    (expected, totals, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_names_the_topic_its_subscriber_filters_on() {
        for (arg, uplink) in [("telemetry", Uplink::Telemetry), ("cmd", Uplink::Cmd)] {
            assert_eq!(arg.parse::<Uplink>(), Ok(uplink));
            let topic = uplink.topic("dev-7");
            assert_eq!(topic, format!("devices/dev-7/{arg}/up"));
            let filter = uplink.filter();
            let (head, tail) = filter.split_once('+').unwrap_or_default();
            assert!(topic.starts_with(head) && topic.ends_with(tail), "{filter}");
        }
        assert_eq!(topic("dev-7"), Uplink::default().topic("dev-7"));
        assert_eq!(Uplink::default().filter(), FILTER);
        assert!("state".parse::<Uplink>().is_err());
    }

    #[test]
    fn packet_ids_skip_zero_and_in_flight() {
        let mut out = Outstanding {
            last_packet_id: u16::MAX - 1,
            ..Outstanding::default()
        };
        assert_eq!(out.next(Qos::AtLeastOnce), (0, u16::MAX));
        assert_eq!(out.next(Qos::AtLeastOnce), (1, 1));
        out.last_packet_id = u16::MAX;
        // 1 is still in flight: the next free id is 2.
        assert_eq!(out.next(Qos::AtLeastOnce), (2, 2));
        assert_eq!(out.in_flight(), 3);
        assert_eq!(out.next(Qos::AtMostOnce), (3, 0));
        assert_eq!(out.expected, vec![false, false, false, true]);
    }

    #[test]
    fn timing_leaves_out_the_warm_up_and_merges() {
        let start = Instant::now();
        let from = start + Duration::from_secs(3600);
        let mut t = Timing::new(from).expect("histograms");
        // Scheduled during the warm-up: not counted.
        t.queued(start, Instant::now());
        t.acknowledged(start);
        assert_eq!((t.lag.len(), t.ack.len()), (0, 0));
        let mut measured = Timing::new(start).expect("histograms");
        measured.queued(start, Instant::now());
        measured.acknowledged(start);
        assert_eq!((measured.lag.len(), measured.ack.len()), (1, 1));
        // Every sample is at least 1 µs, so a histogram never holds zeros.
        assert!(measured.lag.min() >= 1);
        t.merge(&measured);
        t.merge(&measured);
        assert_eq!((t.lag.len(), t.ack.len()), (2, 2));
    }
}
