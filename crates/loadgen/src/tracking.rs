//! The subscriber side of fan-in and latency runs: receive, acknowledge,
//! and record which (device, sequence) pairs arrived, how often, and when.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mqtt5_protocol::Packet;
use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use tokio::time::Instant;

use crate::client::{Client, MqttVersion, SessionKind, Target};
use crate::payload::Stamp;
use crate::{LoadgenError, Qos};

/// Highest sequence number tracked per device; beyond it a message counts as
/// malformed rather than growing memory without bound.
const MAX_SEQ: u64 = 1 << 26;

/// When each message was queued for sending, as its publisher recorded it,
/// so that the subscriber can tell a message's time in transit (receive
/// time minus queued) from its latency (receive time minus schedule): the
/// difference is the load generator's own lateness.
#[derive(Debug)]
pub struct SendLog {
    /// Per device, per sequence number: nanoseconds after the run's epoch
    /// plus one (zero: not recorded).
    queued: Vec<Box<[AtomicU64]>>,
}

impl SendLog {
    /// Room for `per_device` messages from each of `devices`.
    pub fn new(devices: usize, per_device: usize) -> Self {
        Self {
            queued: (0..devices)
                .map(|_| (0..per_device).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }

    /// Message `seq` of `device` was queued `ns` after the epoch (ignored
    /// beyond the log's room).
    pub fn record(&self, device: u32, seq: u64, ns: u64) {
        if let Some(slot) = self.slot(device, seq) {
            slot.store(ns.saturating_add(1), Ordering::Release);
        }
    }

    /// When message `seq` of `device` was queued, if it was recorded.
    pub fn queued_ns(&self, device: u32, seq: u64) -> Option<u64> {
        let v = self.slot(device, seq)?.load(Ordering::Acquire);
        v.checked_sub(1)
    }

    fn slot(&self, device: u32, seq: u64) -> Option<&AtomicU64> {
        let per_device = self.queued.get(usize::try_from(device).ok()?)?;
        per_device.get(usize::try_from(seq).ok()?)
    }
}

/// Times the subscriber measures against.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This run's id; payloads of other runs are counted as stale.
    pub run: u32,
    /// The run's epoch: payload send times are nanoseconds after it.
    pub epoch: Instant,
    /// Messages received in `[epoch, window_end)` count towards the rate.
    pub window_end: Instant,
    /// Record latency for messages intended to be sent at or after this.
    pub latency_from: Option<Instant>,
    /// Where the publishers record when they queued each message (open
    /// loop): with it, time in transit is recorded too.
    pub sent: Option<Arc<SendLog>>,
    /// Keep every measured message's times ([`Received::timeline`]).
    pub timeline: bool,
}

/// One measured message's times, nanoseconds after the run's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Publishing device (its index in the scenario).
    pub device: u32,
    /// Its sequence number.
    pub seq: u64,
    /// When it was to be sent.
    pub scheduled_ns: u64,
    /// When its publisher queued it for sending.
    pub queued_ns: u64,
    /// When the subscriber read it.
    pub received_ns: u64,
}

/// Most [`Moment`]s kept in one run (32 bytes each).
pub const TIMELINE_ROOM: usize = 1 << 24;

/// Writes `moments` as CSV (header `device,seq,scheduled_ns,queued_ns,received_ns`).
pub fn write_timeline(path: &std::path::Path, moments: &[Moment]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "device,seq,scheduled_ns,queued_ns,received_ns")?;
    for m in moments {
        writeln!(
            out,
            "{},{},{},{},{}",
            m.device, m.seq, m.scheduled_ns, m.queued_ns, m.received_ns
        )?;
    }
    out.flush()
}

/// What the subscriber saw.
#[derive(Debug)]
pub struct Received {
    /// Per device, per sequence number: how many times it arrived.
    pub counts: Vec<Vec<u8>>,
    /// Messages received in total.
    pub total: u64,
    /// Messages received inside the measurement window.
    pub in_window: u64,
    /// Payloads that were not benchmark payloads.
    pub malformed: u64,
    /// Messages of an earlier run, delivered late (not counted elsewhere).
    pub stale: u64,
    /// Latency (receive time minus intended send time), microseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Time in transit (receive time minus the time the publisher queued
    /// it), microseconds, for the messages in `latency` whose queue time
    /// was recorded ([`Plan::sent`]).
    pub transit: hdrhistogram::Histogram<u64>,
    /// With [`Plan::timeline`]: the times of the messages in `transit`, in
    /// the order received (at most [`TIMELINE_ROOM`]).
    pub timeline: Vec<Moment>,
}

/// Loss and duplicate counts against what publishers sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Expected (acknowledged, or sent for QoS 0) but never received.
    pub lost: u64,
    /// Receptions beyond the first of the same message.
    pub duplicated: u64,
}

impl Received {
    /// Compare with `expected[device][seq]` (acknowledged or sent).
    pub fn account(&self, expected: &[Vec<bool>]) -> Accounting {
        let mut acc = Accounting::default();
        for (device, exp) in expected.iter().enumerate() {
            let got = self.counts.get(device).map(Vec::as_slice).unwrap_or(&[]);
            for (seq, &e) in exp.iter().enumerate() {
                if e && got.get(seq).copied().unwrap_or(0) == 0 {
                    acc.lost += 1;
                }
            }
        }
        for got in &self.counts {
            acc.duplicated += got
                .iter()
                .map(|&c| u64::from(c.saturating_sub(1)))
                .sum::<u64>();
        }
        acc
    }
}

/// Connect the subscriber identity and subscribe to `filter`.
///
/// A persistent MQTT 3.1.1 session is first cleared (connect with clean
/// session 1) so that nothing left from an earlier run is delivered.
pub async fn connect_subscriber(
    target: &Target,
    config: Arc<rustls::ClientConfig>,
    id: &str,
    filter: &str,
    qos: Qos,
    session: SessionKind,
) -> Result<Client, LoadgenError> {
    if session == SessionKind::Persistent && target.version == MqttVersion::V311 {
        Client::connect(target, Arc::clone(&config), id, SessionKind::Clean)
            .await?
            .disconnect()
            .await?;
    }
    let mut client = Client::connect(target, config, id, session).await?;
    let subscribe = match client.version() {
        MqttVersion::V5 => SubscribePacket::new(1),
        MqttVersion::V311 => SubscribePacket::new_v311(1),
    }
    .add_filter(filter, qos.wire());
    client.queue(&subscribe)?;
    client.flush().await?;
    match client.next_packet().await? {
        Packet::SubAck(ack) => {
            let granted = ack.reason_codes.first().map(|c| *c as u8);
            if granted.is_some_and(|g| g <= 2) {
                Ok(client)
            } else {
                Err(LoadgenError::Refused {
                    id: id.to_string(),
                    reason: format!("SUBACK {:?} for '{filter}'", ack.reason_codes),
                })
            }
        }
        other => Err(LoadgenError::Protocol(format!(
            "{} instead of SUBACK",
            other.packet_type_name()
        ))),
    }
}

/// Receive until the publishers are done (`publishers_done`) and nothing
/// has arrived for `quiet`, or until `deadline`. QoS 1 deliveries are
/// acknowledged in batches.
pub async fn receive(
    mut client: Client,
    devices: usize,
    plan: Plan,
    publishers_done: Arc<AtomicBool>,
    quiet: Duration,
    deadline: Instant,
) -> Result<Received, LoadgenError> {
    let mut rec = Received {
        counts: vec![Vec::new(); devices],
        total: 0,
        in_window: 0,
        malformed: 0,
        stale: 0,
        latency: crate::latency_histogram()?,
        transit: crate::latency_histogram()?,
        timeline: Vec::new(),
    };
    let mut last_rx = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline
            || (publishers_done.load(Ordering::Acquire) && now.duration_since(last_rx) >= quiet)
        {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), client.read_more()).await {
            Err(_elapsed) => continue,
            Ok(read) => read?,
        }
        let now = Instant::now();
        while let Some(packet) = client.next_buffered()? {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            last_rx = now;
            if let Some(id) = publish.packet_id {
                client.queue(&PubAckPacket::new(id))?;
            }
            let Some(stamp) = Stamp::decode(&publish.payload) else {
                rec.malformed += 1;
                continue;
            };
            if stamp.run != plan.run {
                rec.stale += 1;
                continue;
            }
            rec.total += 1;
            if now >= plan.epoch && now < plan.window_end {
                rec.in_window += 1;
            }
            let Some(per_device) = rec.counts.get_mut(stamp.device as usize) else {
                rec.malformed += 1;
                continue;
            };
            if stamp.seq >= MAX_SEQ {
                rec.malformed += 1;
                continue;
            }
            let seq = stamp.seq as usize;
            if per_device.len() <= seq {
                per_device.resize(seq + 1, 0);
            }
            if let Some(c) = per_device.get_mut(seq) {
                *c = c.saturating_add(1);
            }
            if let Some(from) = plan.latency_from {
                let intended = plan.epoch + Duration::from_nanos(stamp.intended_ns);
                if intended >= from {
                    let us = now.saturating_duration_since(intended).as_micros();
                    let us = u64::try_from(us).unwrap_or(u64::MAX).max(1);
                    rec.latency.saturating_record(us);
                    let queued = plan
                        .sent
                        .as_ref()
                        .and_then(|log| log.queued_ns(stamp.device, stamp.seq));
                    if let Some(ns) = queued {
                        let queued = plan.epoch + Duration::from_nanos(ns);
                        rec.transit.saturating_record(crate::micros(
                            now.saturating_duration_since(queued),
                        ));
                        if plan.timeline && rec.timeline.len() < TIMELINE_ROOM {
                            let received = now.saturating_duration_since(plan.epoch).as_nanos();
                            rec.timeline.push(Moment {
                                device: stamp.device,
                                seq: stamp.seq,
                                scheduled_ns: stamp.intended_ns,
                                queued_ns: ns,
                                received_ns: u64::try_from(received).unwrap_or(u64::MAX),
                            });
                        }
                    }
                }
            }
        }
        if client.pending_write() > 0 {
            client.flush().await?;
        }
    }
    // Best effort: the counts are what matter; a broker that already closed
    // the connection does not make the run fail.
    let _ = client.disconnect().await;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_counts_lost_and_duplicates() -> Result<(), LoadgenError> {
        let rec = Received {
            counts: vec![vec![1, 0, 2], vec![1]],
            total: 4,
            in_window: 4,
            malformed: 0,
            stale: 0,
            latency: crate::latency_histogram()?,
            transit: crate::latency_histogram()?,
            timeline: Vec::new(),
        };
        let expected = vec![vec![true, true, true, true], vec![true, false]];
        assert_eq!(
            rec.account(&expected),
            Accounting {
                lost: 2,
                duplicated: 1
            }
        );
        Ok(())
    }

    #[test]
    fn a_timeline_is_written_one_message_a_line() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("timeline.csv");
        let moments = [
            Moment {
                device: 3,
                seq: 7,
                scheduled_ns: 1_000,
                queued_ns: 1_200,
                received_ns: 91_000,
            },
            Moment {
                device: 0,
                seq: 8,
                scheduled_ns: 2_000,
                queued_ns: 2_050,
                received_ns: 60_000,
            },
        ];
        write_timeline(&path, &moments)?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "device,seq,scheduled_ns,queued_ns,received_ns\n3,7,1000,1200,91000\n0,8,2000,2050,60000\n"
        );
        Ok(())
    }

    #[test]
    fn the_send_log_keeps_queue_times_within_its_room() {
        let log = SendLog::new(2, 3);
        assert_eq!(log.queued_ns(0, 0), None);
        log.record(0, 0, 0);
        log.record(1, 2, 1_500);
        log.record(1, 3, 9);
        log.record(2, 0, 9);
        assert_eq!(log.queued_ns(0, 0), Some(0));
        assert_eq!(log.queued_ns(1, 2), Some(1_500));
        assert_eq!(log.queued_ns(1, 1), None);
        assert_eq!(log.queued_ns(1, 3), None);
        assert_eq!(log.queued_ns(2, 0), None);
    }
}
