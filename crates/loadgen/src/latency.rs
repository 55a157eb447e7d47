//! Latency: open-loop publishing at a fixed total rate. Send times are
//! scheduled in advance and each message carries its *intended* send time;
//! latency is the subscriber's receive time minus that, so a stalled broker
//! (or a stalled publisher) shows up in the figures instead of silently
//! lowering the rate (coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Client, SessionKind, Target, connect_many};
use crate::fanin::{Outstanding, Timing, Uplink, collect, devices_and_subscriber, nanos_since};
use crate::pacer::Pacer;
use crate::payload::Stamp;
use crate::stalls::{OutsideStalls, outside_stalls};
use crate::tracking::{self, Plan, SendLog};
use crate::{CertDir, LoadgenError, MqttVersion, Percentiles, Qos};

/// Latency parameters.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// Broker and protocol.
    pub target: Target,
    /// Identities.
    pub certs: CertDir,
    /// Number of publishing devices; the rate is spread evenly over them.
    pub devices: usize,
    /// The subscriber's identity.
    pub subscriber: String,
    /// The uplink devices publish on (stored by Rampart or only routed).
    pub uplink: Uplink,
    /// QoS of publishing and of the subscription.
    pub qos: Qos,
    /// Total messages per second over all devices.
    pub rate: f64,
    /// How long devices publish (warm-up included).
    pub duration: Duration,
    /// Leading part of the run left out of the histogram.
    pub warmup: Duration,
    /// Most unacknowledged QoS 1 messages per device; a full window delays
    /// sends, and that delay counts as latency.
    pub window: usize,
    /// Payload size in bytes (at least 20).
    pub payload_size: usize,
    /// Whether the broker keeps (and stores) the subscriber's session.
    pub subscriber_session: SessionKind,
    /// Simultaneous handshakes while connecting the devices.
    pub connect_concurrency: usize,
    /// The broker's process, for its CPU use while measured.
    pub broker_pid: Option<u32>,
    /// Writes every measured message's times here as CSV
    /// ([`tracking::write_timeline`]): to see how the latency is
    /// distributed over the run, not only its percentiles.
    pub timeline: Option<std::path::PathBuf>,
}

/// Latency results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LatencyReport {
    /// Always "latency".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// QoS.
    pub qos: Qos,
    /// Publishing devices.
    pub devices: usize,
    /// The uplink they published on.
    #[serde(default)]
    pub uplink: Uplink,
    /// Requested total rate, messages per second.
    pub rate_target: f64,
    /// Sent messages divided by the duration.
    pub rate_sent: f64,
    /// Publishing time in seconds.
    pub duration_s: f64,
    /// Warm-up left out of the histogram, seconds.
    pub warmup_s: f64,
    /// Subscriber session kind.
    pub subscriber_session: SessionKind,
    /// PUBLISH packets sent.
    pub sent: u64,
    /// Acknowledged with success (QoS 1).
    pub acked: u64,
    /// Acknowledged with a failure reason (QoS 1).
    #[serde(default)]
    pub rejected: u64,
    /// Scheduled before the end but never sent: the publishers were still
    /// waiting for PUBACKs (full window) when they gave up.
    #[serde(default)]
    pub unsent: u64,
    /// Messages received.
    pub received: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Receptions beyond the first.
    pub duplicated: u64,
    /// Late messages of an earlier run (left out of every other count).
    pub stale: u64,
    /// Receive time minus intended send time, after the warm-up.
    pub latency: Percentiles,
    /// Where the publishers' time went: how late each message was queued
    /// for sending against its schedule (a full window of unacknowledged
    /// messages delays it), after the warm-up.
    #[serde(default)]
    pub send_lag: Option<Percentiles>,
    /// PUBACK received minus queued for sending, after the warm-up.
    #[serde(default)]
    pub ack: Option<Percentiles>,
    /// Receive time minus the time the publisher queued the message, for
    /// the messages in `latency`: the broker's part of the latency plus
    /// the load generator's own sending and receiving, without its
    /// lateness against the schedule (`send_lag`).
    #[serde(default)]
    pub transit: Option<Percentiles>,
    /// The latency of the messages in `transit` scheduled outside windows
    /// in which everything stood still ([`crate::stalls`]), and how many
    /// such windows there were (over the first
    /// [`tracking::TIMELINE_ROOM`] messages of a very long run).
    #[serde(default)]
    pub outside_stalls: Option<OutsideStalls>,
    /// The broker's CPU use from the end of the warm-up to the end of
    /// publishing, in percent of one core (with `broker_pid`).
    #[serde(default)]
    pub broker_cpu_percent: Option<f64>,
    /// The load generator's own CPU use over the same time, percent of one core.
    #[serde(default)]
    pub loadgen_cpu_percent: Option<f64>,
    /// Errors of individual devices (first few).
    pub errors: Vec<String>,
}

/// How long after the end publishers keep sending late messages and
/// waiting for PUBACKs in a latency run.
pub const GIVE_UP: Duration = Duration::from_secs(10);

/// Most messages of one run whose queue times are kept (8 bytes each).
const SEND_LOG_ROOM: usize = 1 << 24;

/// What every publisher of one run shares.
struct Run {
    /// Run id (in every payload).
    id: u32,
    /// Schedules are nanoseconds after this.
    epoch: Instant,
    /// Nothing is scheduled from here on.
    end: Instant,
    /// How long after `end` publishers keep waiting.
    give_up: Duration,
    /// Where publishers record when they queued each message.
    sent: Arc<SendLog>,
}

async fn open_loop(
    mut client: Client,
    index: u32,
    cfg: Arc<LatencyConfig>,
    shared: Arc<Run>,
) -> Result<Outstanding, LoadgenError> {
    let (run, epoch, end, give_up) = (shared.id, shared.epoch, shared.end, shared.give_up);
    let topic = cfg.uplink.topic(&client.id);
    let mut out = Outstanding::default();
    out.timing = Some(Timing::new(epoch + cfg.warmup)?);
    let devices = cfg.devices.max(1) as f64;
    let interval = Duration::from_secs_f64(devices / cfg.rate);
    // Spread the devices' schedules evenly over one interval.
    let mut next = epoch + interval.mul_f64(f64::from(index) / devices);
    let give_up = end + give_up;
    let window = cfg.window.max(1);
    let qos1 = cfg.qos == Qos::AtLeastOnce;
    let mut pacer = Pacer::new().map_err(|e| LoadgenError::io("send clock (timerfd)", e))?;
    loop {
        let now = Instant::now();
        while next <= now && next < end && (!qos1 || out.in_flight() < window) {
            let (seq, pid) = out.next(cfg.qos);
            let stamp = Stamp {
                run,
                device: index,
                seq,
                intended_ns: nanos_since(epoch, next),
            };
            let p = client.publish_packet(&topic, stamp.encode(cfg.payload_size), cfg.qos, pid);
            client.queue(&p)?;
            let queued = Instant::now();
            if let Some(t) = out.timing.as_mut() {
                t.queued(next, queued);
            }
            shared.sent.record(index, seq, nanos_since(epoch, queued));
            next += interval;
        }
        if client.pending_write() > 0 {
            client.flush().await?;
        }
        if next >= end && out.in_flight() == 0 {
            break;
        }
        let can_send = next < end && (!qos1 || out.in_flight() < window);
        tokio::select! {
            slept = pacer.sleep_until(next), if can_send => {
                slept.map_err(|e| LoadgenError::io("send clock (timerfd)", e))?;
            }
            read = client.read_more(), if qos1 => {
                read?;
                out.drain_acks(&mut client)?;
            }
            () = tokio::time::sleep_until(give_up) => break,
        }
    }
    while next < end {
        out.unsent += 1;
        next += interval;
    }
    let _ = client.disconnect().await;
    Ok(out)
}

/// CPU use of each process between `from` and `to`, in percent of one
/// core (`None` for a process that is not given or cannot be read).
async fn cpu_use<const N: usize>(
    pids: [Option<u32>; N],
    from: Instant,
    to: Instant,
) -> [Option<f64>; N] {
    let sample = || pids.map(|p| p.and_then(crate::procfs::cpu_seconds));
    tokio::time::sleep_until(from).await;
    let (before, started) = (sample(), Instant::now());
    tokio::time::sleep_until(to).await;
    let (after, seconds) = (sample(), started.elapsed().as_secs_f64());
    let mut out = [None; N];
    for (o, (b, a)) in out.iter_mut().zip(before.into_iter().zip(after)) {
        if let (Some(b), Some(a)) = (b, a)
            && seconds > 0.0
        {
            *o = Some(((a - b) / seconds * 100.0).max(0.0));
        }
    }
    out
}

/// Run a latency measurement.
pub async fn run(cfg: LatencyConfig) -> Result<LatencyReport, LoadgenError> {
    run_with_give_up(cfg, GIVE_UP).await
}

/// Run a latency measurement whose publishers stop sending late messages
/// and waiting for PUBACKs `give_up` after the end.
pub async fn run_with_give_up(
    cfg: LatencyConfig,
    give_up: Duration,
) -> Result<LatencyReport, LoadgenError> {
    if cfg.devices == 0 || cfg.duration <= cfg.warmup || !cfg.rate.is_finite() || cfg.rate <= 0.0 {
        return Err(LoadgenError::Config(
            "latency needs devices, a positive rate and a duration longer than the warm-up".into(),
        ));
    }
    let cfg = Arc::new(cfg);
    let (ids, subscriber) = devices_and_subscriber(
        &cfg.target,
        &cfg.certs,
        cfg.devices,
        &cfg.subscriber,
        &cfg.uplink.filter(),
        cfg.qos,
        cfg.subscriber_session,
    )
    .await?;
    let mut clients = Vec::with_capacity(ids.len());
    for connected in connect_many(
        &cfg.target,
        &cfg.certs,
        &ids,
        cfg.connect_concurrency,
        SessionKind::Clean,
    )
    .await
    {
        clients.push(connected?.0);
    }
    let run = crate::payload::new_run_id();
    let epoch = Instant::now() + Duration::from_millis(50);
    let end = epoch + cfg.duration;
    let done = Arc::new(AtomicBool::new(false));
    // Each device sends rate / devices messages a second; one more for the
    // rounding of its first schedule. Past the log's room (a very long or
    // fast run) only the first messages count in transit.
    let per_device = ((cfg.rate / cfg.devices as f64 * cfg.duration.as_secs_f64()).ceil() as usize)
        .saturating_add(1)
        .min(SEND_LOG_ROOM / cfg.devices);
    let sent = Arc::new(SendLog::new(cfg.devices, per_device));
    let receiver = tokio::spawn(tracking::receive(
        subscriber,
        cfg.devices,
        Plan {
            run,
            epoch,
            window_end: end,
            latency_from: Some(epoch + cfg.warmup),
            sent: Some(Arc::clone(&sent)),
            // Kept in every run: the latency outside stalls needs it.
            timeline: true,
        },
        Arc::clone(&done),
        Duration::from_secs(1),
        end + give_up + Duration::from_secs(5),
    ));
    let cpu = tokio::spawn(cpu_use(
        [cfg.broker_pid, Some(std::process::id())],
        epoch + cfg.warmup,
        end,
    ));
    let shared = Arc::new(Run {
        id: run,
        epoch,
        end,
        give_up,
        sent,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let index =
            u32::try_from(index).map_err(|_| LoadgenError::Config("too many devices".into()))?;
        let cfg = Arc::clone(&cfg);
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { (index, open_loop(client, index, cfg, shared).await) });
    }
    let (expected, totals, errors) = collect(&mut tasks, cfg.devices).await;
    done.store(true, Ordering::Release);
    let received = receiver
        .await
        .map_err(|e| LoadgenError::Protocol(format!("subscriber task: {e}")))??;
    if let Some(path) = &cfg.timeline {
        tracking::write_timeline(path, &received.timeline).map_err(|e| {
            LoadgenError::Config(format!("cannot write the timeline {}: {e}", path.display()))
        })?;
    }
    let acc = received.account(&expected);
    let [broker_cpu_percent, loadgen_cpu_percent] = cpu.await.unwrap_or_default();
    let duration_s = cfg.duration.as_secs_f64();
    Ok(LatencyReport {
        scenario: "latency".into(),
        mqtt_version: cfg.target.version,
        qos: cfg.qos,
        devices: cfg.devices,
        uplink: cfg.uplink,
        rate_target: cfg.rate,
        rate_sent: totals.sent as f64 / duration_s,
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        subscriber_session: cfg.subscriber_session,
        sent: totals.sent,
        acked: totals.acked,
        rejected: totals.rejected,
        unsent: totals.unsent,
        received: received.total,
        lost: acc.lost,
        duplicated: acc.duplicated,
        stale: received.stale,
        latency: Percentiles::of(&received.latency),
        send_lag: totals.timing.as_ref().map(|t| Percentiles::of(&t.lag)),
        ack: totals
            .timing
            .as_ref()
            .filter(|_| cfg.qos == Qos::AtLeastOnce)
            .map(|t| Percentiles::of(&t.ack)),
        transit: Some(Percentiles::of(&received.transit)),
        outside_stalls: outside_stalls(&received.timeline)?,
        broker_cpu_percent,
        loadgen_cpu_percent,
        errors,
    })
}
