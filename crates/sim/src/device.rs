//! One simulated device: a thin host around the device core.
//!
//! The core decides (what to enroll, when to flush, how long to back off,
//! when to renew, what a downlink means, what bytes go on the wire); this
//! module performs: it reads the simulated sensor, makes keys and CSRs,
//! talks HTTPS and MQTT, and keeps the state dir. One tokio task runs one
//! device as a loop: wait for the next thing due (a reading, a packet, a
//! flush, a reconnect, a renewal), do it, repeat.
//!
//! Delivery: every reading goes into the core's ring with the next `seq`;
//! batches leave as QoS 1 publishes and readings leave the ring only when
//! the PUBACK of their batch (and of every older batch) came back. A lost
//! connection forgets what was in flight, and everything still in the ring
//! is sent again after the reconnect, with the same bytes (the core's
//! encoding is deterministic), so the server recognises replays.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mqtt5_protocol::packet::pingreq::PingReqPacket;
use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::publish::PublishPacket;
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use mqtt5_protocol::{Packet, PropertyId, PropertyValue, QoS, ReasonCode};
use rampart_core::backoff::{Backoff, RandomSource};
use rampart_core::batch::{Flush, Pending};
use rampart_core::measurement::{Measurement, Metric, Value};
use rampart_core::ota::Manifest;
use rampart_core::ota::manifest::MAX_MANIFEST_LEN;
use rampart_core::ota::update::{Boot, Next, OtaStatus};
use rampart_core::payload::json::{JsonObject, JsonValue};
use rampart_core::payload::{
    self, BindMessage, CertificateMessage, CommandStatus, MetricNames, OtaMessage, OtaOffer,
    ReportedState, StateValue,
};
use rampart_core::provision::{
    GiveUpReason, IgnoreReason, ProvisionAction, ProvisionConfig, ProvisionEvent, Provisioning,
    Refusal,
};
use rampart_core::renewal::{
    Fraction, Renewal, RenewalAction, RenewalConfig, RenewalEvent, RenewalState, Validity,
};
use rampart_core::ring::{Restored, Ring};
use rampart_core::seq::SeqGen;
use rampart_mqtt_client::{Client, ClientError, Qos, SessionKind};
use rampart_proto::DeviceId;
use rampart_proto::topic::{Category, DeviceTopic, Direction};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::download::{self as dl, Download, DownloadEvent, DownloadRequest};
use crate::enroll::EnrollError;
use crate::faults::FaultKind;
use crate::firmware::{self, Firmware, Running};
use crate::fleet::Shared;
use crate::sensor::Sensor;
use crate::statedir::{BootFile, DeviceDir, StateError, StoredIdentity};
use crate::stats::{Count, DeviceStats};
use crate::tls;

/// Readings one device buffers (its RTC memory): four minutes at one
/// reading per second. Beyond that the oldest are overwritten and counted
/// as dropped.
pub const RING_CAPACITY: usize = 256;

/// The ring of one device.
pub type DeviceRing = Ring<RING_CAPACITY>;

/// The metric-name table of a DHT sensor (indexes used in measurements).
pub const METRICS: [&str; 2] = ["temperature", "humidity"];
const TEMPERATURE: u8 = 0;
const HUMIDITY: u8 = 1;

/// `downloading` reports are sent at most this often (docs/ota.md §3).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Update reports kept while offline (failures and steps, in order).
const OTA_OUTBOX: usize = 16;

/// The commands a simulated device understands on `cmd/down`.
pub const COMMANDS: [&str; 5] = ["ping", "read", "reboot", "renew", "led"];

/// Wall-clock Unix milliseconds (timestamps, certificate validity, claims).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The instant at which the wall clock shows `ms` (at most a day ahead).
fn instant_at_wall(ms: u64) -> Instant {
    let ahead = ms.saturating_sub(wall_ms()).min(86_400_000);
    Instant::now() + Duration::from_millis(ahead)
}

/// The device's random source for the core (jitter, flaky drops).
#[derive(Debug)]
pub(crate) struct DeviceRng(SmallRng);

impl DeviceRng {
    /// A generator seeded from the operating system.
    pub(crate) fn from_entropy() -> Self {
        Self(SmallRng::from_rng(&mut rand::rng()))
    }
}

impl RandomSource for DeviceRng {
    fn next_u32(&mut self) -> u32 {
        self.0.random()
    }
}

/// A stable seed from the device id: a restarted simulator keeps each
/// device's climate (FNV-1a).
fn seed_of(id: &DeviceId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What an unacknowledged control uplink was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    State,
    ClaimConfirmation,
    CommandResult,
    RenewalCsr,
    Subscribe,
    /// An `ota/up` step or failure report.
    OtaStep,
    /// The `pending-confirm` report of the image on trial.
    OtaPendingConfirm,
    /// The `ota/up` outcome the core keeps until it is delivered.
    OtaOutcome,
}

/// A telemetry batch in flight.
#[derive(Debug)]
struct Batch {
    packet_id: u16,
    last_seq: u64,
    outcome: Option<Result<(), String>>,
}

/// A connection and what is in flight on it.
#[derive(Debug)]
struct Session {
    client: Client,
    batches: VecDeque<Batch>,
    control: Vec<(u16, Control)>,
    /// Newest `seq` published on this connection.
    last_sent_seq: Option<u64>,
    next_packet_id: u16,
    last_write: Instant,
    /// When the server last sent anything (keepalive, MQTT 5 §3.1.2.10).
    last_read: Instant,
    connected_at: Instant,
}

impl Session {
    fn new(client: Client) -> Self {
        let now = Instant::now();
        Self {
            client,
            batches: VecDeque::new(),
            control: Vec::new(),
            last_sent_seq: None,
            next_packet_id: 1,
            last_write: now,
            last_read: now,
            connected_at: now,
        }
    }

    /// A packet id not in use (MQTT 5 §2.2.1: non-zero, unique while in flight).
    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let used = self.batches.iter().any(|b| b.packet_id == id)
                || self.control.iter().any(|(p, _)| *p == id);
            if !used {
                return id;
            }
        }
    }

    fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        control: Option<Control>,
    ) -> Result<u16, ClientError> {
        let id = self.packet_id();
        let packet = self
            .client
            .publish_packet(topic, payload, Qos::AtLeastOnce, id);
        self.client.queue(&packet)?;
        if let Some(c) = control {
            self.control.push((id, c));
        }
        Ok(id)
    }

    /// Whether nothing waits for an acknowledgement.
    fn idle(&self) -> bool {
        self.batches.is_empty() && self.control.is_empty()
    }
}

/// A reply a downlink asks for.
#[derive(Debug)]
struct Uplink {
    category: Category,
    payload: Vec<u8>,
    control: Control,
}

/// What woke the device.
#[derive(Debug)]
enum Wake {
    Stop,
    Read,
    Network(Result<(), ClientError>),
    Flush,
    Ping,
    Connect,
    Provision,
    Renew,
    Sleep,
    /// Nothing from the server for 1.5 keepalives: the link is dead.
    Silent,
    /// The download task reported (`None`: it is gone).
    Download(Option<DownloadEvent>),
    /// The image on trial reached its confirmation deadline.
    TrialDeadline,
    /// Waiting for the update reports before a reboot took too long.
    RebootDue,
}

/// Topic names of one device.
#[derive(Debug)]
struct Topics {
    down: String,
    up: [(Category, String); 6],
}

impl Topics {
    fn new(id: &DeviceId) -> Self {
        let up = |c: Category| {
            (
                c,
                DeviceTopic::new(id.clone(), c, Direction::Up).to_string(),
            )
        };
        Self {
            down: format!("devices/{id}/+/down"),
            up: [
                up(Category::Telemetry),
                up(Category::State),
                up(Category::Bind),
                up(Category::Cert),
                up(Category::Cmd),
                up(Category::Ota),
            ],
        }
    }

    fn up(&self, c: Category) -> &str {
        self.up
            .iter()
            .find(|(cat, _)| *cat == c)
            .map_or("", |(_, t)| t.as_str())
    }
}

/// One simulated device.
#[derive(Debug)]
pub(crate) struct Device {
    id: DeviceId,
    topics: Topics,
    dir: DeviceDir,
    shared: Arc<Shared>,
    stats: Arc<DeviceStats>,
    sensor: Sensor,
    boot: BootFile,
    seq: SeqGen,
    ring: Box<DeviceRing>,
    ring_dirty: bool,
    /// When the ring was last written to the state dir.
    ring_saved_at: Option<Instant>,
    provisioning: Provisioning,
    identity: Option<StoredIdentity>,
    tls: Option<(u32, Arc<rustls::ClientConfig>)>,
    renewal: Option<Renewal>,
    /// When `--renew-every` forces the next renewal.
    forced_renewal_at: Option<Instant>,
    backoff: Backoff,
    rng: DeviceRng,
    session: Option<Session>,
    /// When to try connecting next (`None`: not now; asleep or not enrolled).
    connect_at: Option<Instant>,
    /// A connection slot reserved with the fleet's pacer.
    ticket: Option<Instant>,
    provision_at: Option<Instant>,
    renew_at: Option<Instant>,
    next_read: Instant,
    booted_at: Instant,
    report_state: bool,
    claim_in_flight: bool,
    led: bool,
    gave_up_logged: bool,
    reboot: bool,
    /// Reconnect at once (a new certificate is to be used).
    reconnect_now: bool,
    /// The firmware: slots, update machine, running version.
    firmware: Firmware,
    /// This device's update fault (`--ota-fault`).
    fault: Option<FaultKind>,
    /// The update being downloaded.
    download: Option<ActiveDownload>,
    /// `--ota-fault hang`: the trial image does nothing until its deadline.
    hung: bool,
    /// `--ota-fault no-network`: the trial image cannot reach the network.
    offline: bool,
    /// `pending-confirm` was published for the image on trial.
    pending_confirm_sent: bool,
    /// The outcome report is published and not yet acknowledged.
    outcome_in_flight: bool,
    /// Update reports waiting for a connection.
    ota_outbox: VecDeque<Vec<u8>>,
    /// A new image is selected: reboot once the update reports are
    /// acknowledged (so `pending-reboot` is not lost), at the latest then.
    reboot_after_reports: Option<Instant>,
}

/// An update being downloaded, with what a restart needs.
#[derive(Debug)]
struct ActiveDownload {
    download: Download,
    campaign: u64,
    manifest: Vec<u8>,
    signature: [u8; 64],
    version: String,
    /// Bytes written into the slot.
    written: u64,
    last_progress: Instant,
    /// `--ota-fault corrupt-download`: the byte flipped on its way to flash.
    corrupt_at: Option<u64>,
}

/// The next event of the download, or never without one.
async fn next_download(active: Option<&mut ActiveDownload>) -> Option<DownloadEvent> {
    match active {
        Some(a) => a.download.next().await,
        None => std::future::pending().await,
    }
}

impl Device {
    /// Loads (or creates) the device's state. Blocking file I/O: run it
    /// off the async workers.
    pub(crate) fn open(
        shared: Arc<Shared>,
        id: DeviceId,
        dir: DeviceDir,
        stats: Arc<DeviceStats>,
    ) -> Result<Self, StateError> {
        let options = &shared.options;
        let identity = dir.identity()?;
        let provision_config = ProvisionConfig {
            enrollment_timeout_ms: millis(options.io_timeout).saturating_add(1_000),
            retry: options.backoff,
        };
        let provisioning = match (dir.provisioning()?, &identity) {
            (Some(bytes), _) => match Provisioning::from_bytes(provision_config, &bytes) {
                Ok(p) if p.has_certificate() == identity.is_some() => p,
                Ok(_) | Err(_) => fallback_provisioning(provision_config, identity.is_some()),
            },
            (None, _) => fallback_provisioning(provision_config, identity.is_some()),
        };
        let mut boot = dir.boot_counter();
        let seq = SeqGen::start(&mut boot).map_err(|e| StateError::Corrupt {
            path: dir.path().join("boot"),
            reason: e.to_string(),
        })?;
        let (ring, restored) = match dir.ring()? {
            Some(bytes) => {
                let (ring, how) = DeviceRing::restore(&bytes);
                if let Restored::ColdBoot(e) = how {
                    warn!(device_id = %id, reason = %e, "persisted ring unreadable; starting with an empty buffer");
                }
                (ring, true)
            }
            None => (DeviceRing::new(), false),
        };
        if restored && !ring.is_empty() {
            stats.add(Count::Restored, ring.len() as u64);
        }
        stats.set_boot(seq.boot());
        stats.set_buffered(ring.len());
        stats.set_enrolled(identity.is_some());
        stats.set_state(provisioning.state().name());
        if let Some(i) = &identity {
            stats.set_serial(&i.serial);
        }
        let failure_rate = options
            .read_failure_rate
            .unwrap_or_else(|| options.sensor.typical_failure_rate());
        let fault = shared.faults.get(id.as_str()).copied();
        if let Some(kind) = fault {
            stats.set_ota_fault(kind.as_str());
        }
        let (firmware, first_boot) = Firmware::boot(
            shared.firmware.clone(),
            dir.clone(),
            millis(shared.epoch.elapsed()),
        )?;
        let mut rng = DeviceRng(SmallRng::from_rng(&mut rand::rng()));
        let wake = options.wake_interval();
        let first_read = Instant::now() + wake.mul_f64(rng.0.random_range(0.0..1.0));
        let mut device = Self {
            topics: Topics::new(&id),
            sensor: Sensor::new(options.sensor, failure_rate, seed_of(&id)),
            backoff: Backoff::new(options.backoff),
            id,
            dir,
            stats,
            boot,
            seq,
            ring: Box::new(ring),
            ring_dirty: false,
            ring_saved_at: None,
            provisioning,
            identity: None,
            tls: None,
            renewal: None,
            forced_renewal_at: None,
            rng,
            session: None,
            connect_at: None,
            ticket: None,
            provision_at: Some(Instant::now()),
            renew_at: None,
            next_read: first_read,
            booted_at: Instant::now(),
            report_state: true,
            claim_in_flight: false,
            led: false,
            gave_up_logged: false,
            reboot: false,
            reconnect_now: false,
            firmware,
            fault,
            download: None,
            hung: false,
            offline: false,
            pending_confirm_sent: false,
            outcome_in_flight: false,
            ota_outbox: VecDeque::new(),
            reboot_after_reports: None,
            shared,
        };
        device.after_boot(first_boot);
        if let Some(identity) = identity {
            device.install_identity(identity)?;
        }
        Ok(device)
    }

    /// Adopts a stored identity: renewal policy from its certificate.
    fn install_identity(&mut self, identity: StoredIdentity) -> Result<(), StateError> {
        let chain = self
            .dir
            .cert(identity.generation)?
            .ok_or_else(|| StateError::Corrupt {
                path: self
                    .dir
                    .path()
                    .join(format!("cert-{}.pem", identity.generation)),
                reason: "the certificate named by identity.json is missing".to_owned(),
            })?;
        let facts = tls::cert_facts(&self.id, &chain).map_err(|e| StateError::Corrupt {
            path: self.dir.path().join("identity.json"),
            reason: e.to_string(),
        })?;
        let options = &self.shared.options;
        let config = RenewalConfig {
            renew_after: Fraction::TWO_THIRDS,
            response_timeout_ms: millis(options.io_timeout),
            retry: options.backoff,
        };
        self.renewal = Some(Renewal::new(
            config,
            Validity {
                not_before_ms: facts.not_before_ms,
                not_after_ms: facts.not_after_ms,
            },
        ));
        self.forced_renewal_at = options
            .renew_every
            .map(|every| instant_at_wall(identity.issued_at_ms.saturating_add(millis(every))));
        self.stats.set_serial(&identity.serial);
        self.stats.set_enrolled(true);
        self.tls = None;
        self.identity = Some(identity);
        self.renew_at = Some(Instant::now());
        Ok(())
    }

    /// Milliseconds of the fleet's monotonic clock (for the backoff).
    fn mono_ms(&self) -> u64 {
        millis(self.shared.epoch.elapsed())
    }

    fn at_mono(&self, ms: u64) -> Instant {
        self.shared.epoch + Duration::from_millis(ms)
    }

    /// Runs the device until the fleet stops, then drains and persists.
    pub(crate) async fn run(mut self) {
        if self.provisioning.has_certificate() && self.shared.options.sleep_cycle.is_none() {
            self.connect_at = Some(Instant::now());
        }
        loop {
            if self.shared.stop.is_cancelled() {
                break;
            }
            if self.provision_at.is_some_and(|t| t <= Instant::now()) {
                self.step_provisioning().await;
            }
            let wake = self.wait().await;
            match wake {
                Wake::Stop => break,
                Wake::Read => self.on_read_due().await,
                Wake::Network(result) => self.on_network(result).await,
                Wake::Flush => self.with_session(|d, s| d.queue_flush(s, false)).await,
                Wake::Ping => {
                    self.with_session(|_, s| s.client.queue(&PingReqPacket::default()))
                        .await
                }
                Wake::Connect => self.connect().await,
                Wake::Provision => self.step_provisioning().await,
                Wake::Renew => self.step_renewal().await,
                Wake::Sleep => self.go_to_sleep("awake too long").await,
                Wake::Download(event) => self.on_download_event(event).await,
                Wake::TrialDeadline => self.on_trial_deadline(),
                // Checked below, with every wake.
                Wake::RebootDue => {}
                Wake::Silent => {
                    if let Some(s) = self.session.take() {
                        let e = ClientError::io(
                            format!("read as '{}'", self.id),
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the server sent nothing for 1.5 keepalive intervals",
                            ),
                        );
                        self.connection_lost(s, &e);
                    }
                }
            }
            if let Some(latest) = self.reboot_after_reports {
                let unacknowledged = self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.control.iter().any(|(_, c)| *c == Control::OtaStep));
                if !unacknowledged || Instant::now() >= latest {
                    self.reboot_after_reports = None;
                    self.reboot = true;
                }
            }
            if self.reboot {
                self.do_reboot().await;
            }
            self.maybe_sleep().await;
        }
        self.drain().await;
        self.save_ring();
        self.stats.set_connected(false);
    }

    /// Waits for the next thing due.
    async fn wait(&mut self) -> Wake {
        let stop = self.shared.stop.clone();
        let read_at = self.next_read;
        let provision_at = self.provision_at;
        let connect_at = if self.session.is_none() {
            self.connect_at
        } else {
            None
        };
        let flush_at = self.flush_at();
        let renew_at = match (self.renew_at, self.forced_renewal_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|_| self.session.is_some());
        let keepalive = self.shared.options.keepalive;
        let sleep_at = self
            .session
            .as_ref()
            .filter(|_| self.shared.options.sleep_cycle.is_some())
            .map(|s| s.connected_at + self.shared.options.io_timeout);
        let far = Instant::now() + Duration::from_secs(86_400);
        let trial_at = self
            .firmware
            .trial_deadline()
            .map(|ms| self.at_mono(ms.saturating_add(1)));
        if self.hung {
            // A hung image does nothing; only the deadline (the
            // bootloader's watchdog) ends it.
            return tokio::select! {
                biased;
                _ = stop.cancelled() => Wake::Stop,
                _ = sleep_until(trial_at.unwrap_or(far)) => Wake::TrialDeadline,
            };
        }
        let downloading = self.download.is_some();
        let reboot_at = self.reboot_after_reports;
        let active = self.download.as_mut();
        match self.session.as_mut() {
            Some(s) => {
                let ping_at = s.last_write + keepalive.mul_f64(0.75);
                let silent_at = s.last_read + keepalive.mul_f64(1.5);
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => Wake::Stop,
                    r = s.client.read_more() => Wake::Network(r),
                    _ = sleep_until(read_at) => Wake::Read,
                    _ = sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => Wake::Flush,
                    _ = sleep_until(ping_at) => Wake::Ping,
                    _ = sleep_until(renew_at.unwrap_or(far)), if renew_at.is_some() => Wake::Renew,
                    _ = sleep_until(provision_at.unwrap_or(far)), if provision_at.is_some() => Wake::Provision,
                    _ = sleep_until(sleep_at.unwrap_or(far)), if sleep_at.is_some() => Wake::Sleep,
                    _ = sleep_until(silent_at) => Wake::Silent,
                    event = next_download(active), if downloading => Wake::Download(event),
                    _ = sleep_until(trial_at.unwrap_or(far)), if trial_at.is_some() => Wake::TrialDeadline,
                    _ = sleep_until(reboot_at.unwrap_or(far)), if reboot_at.is_some() => Wake::RebootDue,
                }
            }
            None => tokio::select! {
                biased;
                _ = stop.cancelled() => Wake::Stop,
                _ = sleep_until(read_at) => Wake::Read,
                _ = sleep_until(connect_at.unwrap_or(far)), if connect_at.is_some() => Wake::Connect,
                _ = sleep_until(provision_at.unwrap_or(far)), if provision_at.is_some() => Wake::Provision,
                event = next_download(active), if downloading => Wake::Download(event),
                _ = sleep_until(trial_at.unwrap_or(far)), if trial_at.is_some() => Wake::TrialDeadline,
            },
        }
    }

    /// Runs `f` on the live session; a failure ends the connection.
    async fn with_session(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Session) -> Result<(), ClientError>,
    ) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        let result = f(self, &mut s);
        self.keep_or_lose(s, result).await;
    }

    /// Sends what the step that gave `result` queued and keeps the
    /// session, or ends it if the step or the write failed.
    async fn keep_or_lose(&mut self, mut s: Session, result: Result<(), ClientError>) {
        let result = match result {
            Ok(()) => self.send(&mut s).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => self.session = Some(s),
            Err(e) => self.connection_lost(s, &e),
        }
    }

    /// Writes what is queued, within the I/O time limit.
    async fn send(&self, s: &mut Session) -> Result<(), ClientError> {
        if s.client.pending_write() == 0 {
            return Ok(());
        }
        match timeout(self.shared.options.io_timeout, s.client.flush()).await {
            Ok(r) => {
                s.last_write = Instant::now();
                r
            }
            Err(_) => Err(ClientError::io(
                format!("write as '{}'", self.id),
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped reading"),
            )),
        }
    }

    // ---- readings --------------------------------------------------------

    async fn on_read_due(&mut self) {
        let wake = self.shared.options.wake_interval();
        let now = Instant::now();
        while self.next_read <= now {
            self.next_read += wake;
        }
        self.take_reading();
        self.persist_ring();
        if self.session.is_some() && self.flaky_drop() {
            return;
        }
        if self.shared.options.sleep_cycle.is_some() {
            // Woken from deep sleep: connect, flush everything, sleep again.
            if self.session.is_none() && self.identity.is_some() {
                self.connect().await;
            }
            self.with_session(|d, s| d.queue_flush(s, true)).await;
        } else {
            self.with_session(|d, s| d.queue_flush(s, false)).await;
        }
    }

    /// Reads the sensor; a good reading goes into the ring with the next seq.
    fn take_reading(&mut self) -> Option<u64> {
        let now = wall_ms();
        let reading = match self.sensor.read(now) {
            Ok(r) => r,
            Err(failure) => {
                self.stats.bump(Count::ReadFailure);
                debug!(device_id = %self.id, reason = %failure, "sensor read failed");
                return None;
            }
        };
        let seq = match self.seq.next(&mut self.boot) {
            Ok(seq) => seq,
            Err(e) => {
                error!(device_id = %self.id, reason = %e, "no sequence number; reading discarded");
                self.stats.set_error(e.to_string());
                return None;
            }
        };
        let metrics = [
            Metric::new(TEMPERATURE, Value::F32(reading.temperature)),
            Metric::new(HUMIDITY, Value::F32(reading.humidity)),
        ];
        let m = match Measurement::new(seq, Some(now), &metrics) {
            Ok(m) => m,
            Err(e) => {
                error!(device_id = %self.id, reason = %e, "reading refused by the core");
                return None;
            }
        };
        self.ring.push(m);
        let dropped = self.ring.take_drops();
        if dropped > 0 {
            self.stats.add(Count::Dropped, dropped);
            debug!(device_id = %self.id, dropped, "ring full; oldest readings overwritten");
        }
        self.stats.bump(Count::Reading);
        self.stats.set_buffered(self.ring.len());
        self.ring_dirty = true;
        Some(seq)
    }

    /// Writes the ring to the state dir if it changed and was last written
    /// at least `--persist-every` ago. Writing all of it after every
    /// reading cost thousands of file replacements a second in a big
    /// fleet; like RTC memory it survives the process (not a power cut),
    /// and a kill -9 loses at most that interval of unacknowledged readings
    /// (sequence numbers never repeat: the boot counter is stored durably).
    fn persist_ring(&mut self) {
        let every = self.shared.options.persist_every;
        if self.ring_saved_at.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.save_ring();
    }

    /// Writes the ring to the state dir now if it changed (not flushed to
    /// disk): before sleeping, rebooting and stopping.
    fn save_ring(&mut self) {
        if !self.ring_dirty {
            return;
        }
        self.ring_saved_at = Some(Instant::now());
        let mut bytes = vec![0u8; DeviceRing::BYTE_LEN];
        match self.ring.to_bytes(&mut bytes) {
            Ok(n) => {
                bytes.truncate(n);
                match self.dir.save_ring(&bytes) {
                    Ok(()) => self.ring_dirty = false,
                    Err(e) => {
                        warn!(device_id = %self.id, reason = %e, "cannot persist the ring");
                    }
                }
            }
            Err(_) => warn!(device_id = %self.id, "ring larger than its own byte layout"),
        }
    }

    /// `--flaky`: drops the connection abruptly with the configured probability.
    fn flaky_drop(&mut self) -> bool {
        let p = self.shared.options.flaky;
        if p <= 0.0 || !self.rng.0.random_bool(p.min(1.0)) {
            return false;
        }
        if let Some(s) = self.session.take() {
            self.stats.bump(Count::FlakyDrop);
            debug!(device_id = %self.id, "--flaky: dropping the connection");
            // Dropping the stream closes TCP without DISCONNECT: the broker
            // sees a lost connection.
            self.went_offline(s);
        }
        true
    }

    /// When the batching policy wants the next flush, if not now.
    fn flush_at(&self) -> Option<Instant> {
        let s = self.session.as_ref()?;
        if s.batches.len() >= self.shared.options.max_inflight {
            return None;
        }
        let before_sleep = self.shared.options.sleep_cycle.is_some();
        match self
            .shared
            .options
            .batch
            .decide(self.pending(s), wall_ms(), before_sleep)
        {
            Flush::Now(_) => Some(Instant::now()),
            Flush::At(t) => Some(instant_at_wall(t)),
            Flush::Idle => None,
        }
    }

    /// Readings not yet published on this connection.
    fn unsent<'a>(&'a self, s: &Session) -> impl Iterator<Item = &'a Measurement> + Clone + 'a {
        let after = s.last_sent_seq;
        self.ring
            .iter()
            .skip_while(move |m| after.is_some_and(|l| m.seq() <= l))
    }

    fn pending(&self, s: &Session) -> Option<Pending> {
        let mut unsent = self.unsent(s);
        let oldest = unsent.next()?;
        Some(Pending {
            count: 1 + unsent.count(),
            oldest_at_ms: oldest.ts_ms().unwrap_or_else(wall_ms),
        })
    }

    /// Publishes batches while the policy says so and the window allows.
    fn queue_flush(&mut self, s: &mut Session, before_sleep: bool) -> Result<(), ClientError> {
        let options = &self.shared.options;
        let names = MetricNames::new(&METRICS).map_err(|e| {
            ClientError::Protocol(format!("metric names refused by the core: {e:?}"))
        })?;
        while s.batches.len() < options.max_inflight {
            let Some(pending) = self.pending(s) else {
                break;
            };
            if !matches!(
                options.batch.decide(Some(pending), wall_ms(), before_sleep),
                Flush::Now(_)
            ) {
                break;
            }
            let size = pending
                .count
                .saturating_mul(112)
                .saturating_add(64)
                .min(payload::MAX_PAYLOAD);
            let mut buf = vec![0u8; size];
            let unsent = self.unsent(s);
            let (len, count) = if pending.count == 1 {
                let first = unsent.clone().next();
                match first.map(|m| payload::encode_reading(m, &names, options.format, &mut buf)) {
                    Some(Ok(len)) => (len, 1),
                    _ => break,
                }
            } else {
                match payload::encode_batch(
                    unsent.clone(),
                    &names,
                    options.format,
                    payload::MAX_BATCH,
                    &mut buf,
                ) {
                    Ok(e) => (e.len, e.readings),
                    Err(e) => {
                        error!(device_id = %self.id, reason = ?e, "cannot encode readings");
                        break;
                    }
                }
            };
            let Some(last_seq) = unsent.clone().nth(count.saturating_sub(1)).map(|m| m.seq())
            else {
                break;
            };
            buf.truncate(len);
            let packet_id = s.publish(self.topics.up(Category::Telemetry), buf, None)?;
            s.batches.push_back(Batch {
                packet_id,
                last_seq,
                outcome: None,
            });
            s.last_sent_seq = Some(last_seq);
            self.stats.add(Count::Sent, count as u64);
        }
        Ok(())
    }

    /// Drops acknowledged readings from the ring, oldest batch first.
    fn settle(&mut self, s: &mut Session) {
        while let Some(b) = s.batches.front() {
            let Some(outcome) = &b.outcome else {
                break;
            };
            let n = self.ring.ack_through(b.last_seq) as u64;
            match outcome {
                Ok(()) => {
                    self.stats.add(Count::Acknowledged, n);
                    self.stats.set_last_acked(b.last_seq);
                }
                Err(reason) => {
                    self.stats.add(Count::Rejected, n);
                    warn!(device_id = %self.id, readings = n, reason = %reason, "server refused readings; they are dropped");
                    self.stats.set_error(format!("readings refused: {reason}"));
                }
            }
            self.ring_dirty = true;
            s.batches.pop_front();
        }
        self.stats.set_buffered(self.ring.len());
    }

    // ---- the connection ----------------------------------------------------

    /// Reserves a slot with the fleet's connection pacer (or, with
    /// `enrolling`, its enrollment pacer); `Some(t)` means wait until `t`.
    /// Connecting and enrolling never overlap, so one ticket serves both.
    fn need_slot(&mut self, enrolling: bool) -> Option<Instant> {
        let now = Instant::now();
        match self.ticket {
            Some(t) if t <= now => {
                self.ticket = None;
                None
            }
            Some(t) => Some(t),
            None => {
                let t = if enrolling {
                    self.shared.enroll_pacer.reserve()
                } else {
                    self.shared.pacer.reserve()
                };
                if t <= now + Duration::from_millis(1) {
                    None
                } else {
                    self.ticket = Some(t);
                    Some(t)
                }
            }
        }
    }

    /// The TLS configuration of the current certificate.
    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, String> {
        let identity = self.identity.as_ref().ok_or("not enrolled")?;
        if let Some((generation, config)) = &self.tls
            && *generation == identity.generation
        {
            return Ok(Arc::clone(config));
        }
        let g = identity.generation;
        let chain = self
            .dir
            .cert(g)
            .map_err(|e| e.to_string())?
            .ok_or("the certificate file is missing")?;
        let key = self
            .dir
            .key(g)
            .map_err(|e| e.to_string())?
            .ok_or("the key file is missing")?;
        let config = self
            .shared
            .trust
            .device_config(&self.id, &chain, &key)
            .map_err(|e| e.to_string())?;
        self.tls = Some((g, Arc::clone(&config)));
        Ok(config)
    }

    async fn connect(&mut self) {
        if self.session.is_some() || self.identity.is_none() {
            self.connect_at = None;
            return;
        }
        if self.offline {
            self.connect_failed(
                "--ota-fault no-network: the image on trial cannot reach the network".to_owned(),
            );
            return;
        }
        if let Some(t) = self.need_slot(false) {
            self.connect_at = Some(t);
            return;
        }
        self.connect_at = None;
        let config = match self.tls_config() {
            Ok(c) => c,
            Err(reason) => {
                self.connect_failed(format!("cannot load this device's certificate: {reason}"));
                return;
            }
        };
        let io_timeout = self.shared.options.io_timeout;
        let target = &self.shared.target;
        let attempt = timeout(
            io_timeout,
            Client::connect(target, config, self.id.as_str(), SessionKind::Resume),
        )
        .await;
        match attempt {
            Ok(Ok(client)) => self.on_connected(client).await,
            Ok(Err(e)) => self.connect_failed(describe(&e)),
            Err(_) => self.connect_failed(format!(
                "no CONNACK within {io_timeout:?} (server overloaded or unreachable)"
            )),
        }
    }

    fn connect_failed(&mut self, reason: String) {
        self.stats.bump(Count::ConnectFailure);
        let delay = self.backoff.next_delay(&mut self.rng);
        self.connect_at = if self.shared.options.sleep_cycle.is_some() {
            // A sleeping device tries again at its next wake.
            None
        } else {
            Some(Instant::now() + Duration::from_millis(delay))
        };
        warn!(device_id = %self.id, reason = %reason, retry_in_ms = delay, "connection failed; readings stay buffered");
        self.stats.set_error(reason);
    }

    async fn on_connected(&mut self, client: Client) {
        let mut s = Session::new(client);
        self.backoff.connected(self.mono_ms());
        self.stats.bump(Count::Connect);
        self.stats.set_connected(true);
        debug!(device_id = %self.id, session_present = s.client.session_present(), "connected");
        self.provision_event(ProvisionEvent::Connected);
        if let Some(renewal) = &mut self.renewal
            && matches!(renewal.state(), RenewalState::CertificateReceived { .. })
        {
            // Connected with the new certificate: the server made it
            // current and revoked the old one.
            if let Err(e) = renewal.handle(RenewalEvent::Installed, wall_ms(), &mut self.rng) {
                warn!(device_id = %self.id, reason = %e, "renewal state");
            }
            if let Some(identity) = &self.identity {
                info!(device_id = %self.id, serial = %identity.serial, "renewal complete: connected with the new certificate");
                if let Err(e) = self.dir.remove_generations_before(identity.generation) {
                    warn!(device_id = %self.id, reason = %e, "cannot remove the old key");
                }
                if let Some(every) = self.shared.options.renew_every {
                    self.forced_renewal_at = Some(Instant::now() + every);
                }
            }
            self.stats.bump(Count::Renewal);
            self.renew_at = Some(Instant::now());
        }
        let result = self.start_session(&mut s);
        self.keep_or_lose(s, result).await;
        self.provision_at = Some(Instant::now());
    }

    /// Subscribes, reports state, and flushes what is buffered.
    fn start_session(&mut self, s: &mut Session) -> Result<(), ClientError> {
        let id = s.packet_id();
        let subscribe =
            SubscribePacket::new(id).add_filter(self.topics.down.clone(), QoS::AtLeastOnce);
        s.client.queue(&subscribe)?;
        s.control.push((id, Control::Subscribe));
        // A state report after every connect (docs/ota.md §1), so the
        // version running after an update shows within a connection.
        let payload = self.state_report();
        s.publish(
            self.topics.up(Category::State),
            payload,
            Some(Control::State),
        )?;
        self.report_state = false;
        self.queue_ota_reports(s)?;
        let before_sleep = self.shared.options.sleep_cycle.is_some();
        self.queue_flush(s, before_sleep)
    }

    /// The connection failed: forget what was in flight, back off.
    fn connection_lost(&mut self, s: Session, e: &ClientError) {
        let reason = describe(e);
        warn!(device_id = %self.id, reason = %reason, "connection lost; readings stay buffered");
        self.stats.set_error(reason);
        self.went_offline(s);
    }

    fn went_offline(&mut self, s: Session) {
        if s.control
            .iter()
            .any(|(_, c)| *c == Control::OtaPendingConfirm)
        {
            // Not acknowledged: say it again on the next connection.
            self.pending_confirm_sent = false;
        }
        drop(s);
        self.outcome_in_flight = false;
        self.stats.set_connected(false);
        let now = self.mono_ms();
        self.backoff.disconnected(now);
        let retry = self.backoff.retry_at(now, &mut self.rng);
        self.claim_in_flight = false;
        self.connect_at = if self.shared.options.sleep_cycle.is_some() {
            None
        } else {
            Some(self.at_mono(retry))
        };
    }

    /// Ends the session cleanly (DISCONNECT).
    async fn disconnect(&mut self) {
        if let Some(s) = self.session.take() {
            let io_timeout = self.shared.options.io_timeout;
            if let Ok(Err(e)) = timeout(io_timeout, s.client.disconnect()).await {
                debug!(device_id = %self.id, reason = %e, "disconnect");
            }
            self.stats.set_connected(false);
            self.backoff.disconnected(self.mono_ms());
        }
    }

    async fn on_network(&mut self, result: Result<(), ClientError>) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        let result = match result {
            Ok(()) => {
                s.last_read = Instant::now();
                self.process_packets(&mut s)
            }
            Err(e) => Err(e),
        };
        self.keep_or_lose(s, result).await;
    }

    /// Handles every complete packet in the read buffer.
    fn process_packets(&mut self, s: &mut Session) -> Result<(), ClientError> {
        while let Some(packet) = s.client.next_buffered()? {
            match packet {
                Packet::PubAck(ack) => {
                    let reason = reason_string(&ack.properties);
                    self.on_puback(s, ack.packet_id, ack.reason_code, reason)?;
                }
                Packet::Publish(p) => self.on_downlink(s, p)?,
                Packet::SubAck(ack) => {
                    s.control.retain(|(id, _)| *id != ack.packet_id);
                    if !ack.reason_codes.iter().all(|c| c.is_success()) {
                        warn!(device_id = %self.id, codes = ?ack.reason_codes, "subscription to its downlink topics refused; claims, commands and renewals cannot reach it");
                    }
                }
                Packet::PingResp => {}
                other => {
                    debug!(device_id = %self.id, packet = other.packet_type_name(), "ignored packet");
                }
            }
        }
        Ok(())
    }

    fn on_puback(
        &mut self,
        s: &mut Session,
        packet_id: u16,
        code: ReasonCode,
        reason: Option<String>,
    ) -> Result<(), ClientError> {
        if code == ReasonCode::ImplementationSpecificError {
            // The server could not store it right now (docs/payloads.md):
            // reconnect later and send it again.
            return Err(ClientError::Refused {
                id: self.id.to_string(),
                reason: format!(
                    "the server could not process a publish ({})",
                    reason.unwrap_or_else(|| "0x83".to_owned())
                ),
            });
        }
        if let Some(b) = s.batches.iter_mut().find(|b| b.packet_id == packet_id) {
            b.outcome = Some(if code.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "PUBACK {:#04x} {}",
                    u8::from(code),
                    reason.unwrap_or_default()
                ))
            });
            self.settle(s);
            if code.is_success() {
                // Connected and published: an image on trial is healthy.
                self.confirm_trial(s)?;
            }
            return Ok(());
        }
        let Some(at) = s.control.iter().position(|(id, _)| *id == packet_id) else {
            debug!(device_id = %self.id, packet_id, "PUBACK for no publish in flight");
            return Ok(());
        };
        let (_, control) = s.control.swap_remove(at);
        if control == Control::OtaOutcome {
            self.outcome_in_flight = false;
        }
        if control == Control::OtaOutcome && code.is_success() {
            if let Err(e) = self.firmware.report_sent() {
                warn!(device_id = %self.id, reason = %e, "cannot persist the update state");
            }
            return Ok(());
        }
        if code.is_error() {
            warn!(device_id = %self.id, what = ?control, code = u8::from(code), reason = ?reason, "uplink refused by the server");
            if control == Control::ClaimConfirmation {
                // The server did not take the confirmation: the claim
                // failed (it says why on bind/down); never repeat it.
                self.claim_in_flight = false;
                self.provision_event(ProvisionEvent::BindRefused);
            }
            return Ok(());
        }
        if control == Control::ClaimConfirmation {
            self.claim_in_flight = false;
            self.stats.bump(Count::ClaimConfirmed);
            self.provision_event(ProvisionEvent::ClaimConfirmed);
        }
        Ok(())
    }

    // ---- downlinks -----------------------------------------------------------

    fn on_downlink(&mut self, s: &mut Session, p: PublishPacket) -> Result<(), ClientError> {
        self.stats.bump(Count::Downlink);
        if p.qos != QoS::AtMostOnce
            && let Some(id) = p.packet_id
        {
            // Acknowledged whatever its content: refusing it would only make
            // the broker deliver it again (MQTT 5 §4.3.2).
            s.client.queue(&PubAckPacket::new(id))?;
        }
        let topic = DeviceTopic::parse(&p.topic_name)
            .filter(|t| t.device == self.id && t.direction == Direction::Down);
        let result = match topic.map(|t| t.category) {
            Some(Category::Bind) => self.on_bind(&p.payload),
            Some(Category::Cert) => self.on_certificate(&p.payload),
            Some(Category::State) => self.on_state_request(&p.payload),
            Some(Category::Cmd) => self.on_command(&p.payload),
            Some(Category::Ota) => self.on_ota(&p.payload),
            Some(other) => Err(format!(
                "the simulator does not handle {} downlinks",
                other.as_str()
            )),
            None => Err("not one of this device's downlink topics".to_owned()),
        };
        match result {
            Ok(replies) => {
                for reply in replies {
                    s.publish(
                        self.topics.up(reply.category),
                        reply.payload,
                        Some(reply.control),
                    )?;
                    if reply.control == Control::RenewalCsr {
                        self.renewal_event(RenewalEvent::CsrSent);
                    }
                }
            }
            Err(reason) => {
                self.stats.bump(Count::MalformedDownlink);
                warn!(device_id = %self.id, topic = %p.topic_name, reason = %reason, "downlink ignored");
                self.stats.set_error(format!("downlink ignored: {reason}"));
            }
        }
        Ok(())
    }

    fn on_bind(&mut self, payload: &[u8]) -> Result<Vec<Uplink>, String> {
        let message = payload::parse_bind(payload).map_err(|e| format!("bind/down: {e:?}"))?;
        match message {
            BindMessage::Claim {
                nonce,
                expires_at_ms,
            } => {
                let action = self
                    .provisioning
                    .handle(
                        ProvisionEvent::ClaimRequested {
                            nonce,
                            expires_at_ms,
                        },
                        wall_ms(),
                        &mut self.rng,
                    )
                    .map_err(|e| e.to_string())?;
                self.persist_provisioning();
                match action {
                    ProvisionAction::PublishClaimConfirmation(nonce) => {
                        info!(device_id = %self.id, "claim requested; confirming with the server's nonce");
                        self.claim_in_flight = true;
                        Ok(vec![claim_confirmation(&nonce)?])
                    }
                    ProvisionAction::Ignored(IgnoreReason::AlreadyBound) => {
                        info!(device_id = %self.id, "claim request ignored: already bound");
                        Ok(Vec::new())
                    }
                    other => {
                        debug!(device_id = %self.id, action = ?other, "claim request");
                        self.provision_at = Some(Instant::now());
                        Ok(Vec::new())
                    }
                }
            }
            BindMessage::Bound { owner } => {
                self.provision_event(ProvisionEvent::Bound);
                let owner = owner.to_string();
                info!(device_id = %self.id, owner = %owner, "bound");
                if let Some(identity) = &mut self.identity {
                    identity.bound_to = Some(owner);
                    if let Err(e) = self.dir.save_identity(identity) {
                        warn!(device_id = %self.id, reason = %e, "cannot store the owner");
                    }
                }
                self.report_state = true;
                Ok(self.take_state_report())
            }
            BindMessage::Error { code, message } => {
                self.provision_event(ProvisionEvent::BindRefused);
                warn!(device_id = %self.id, code = %code, message = %message, "claim refused by the server");
                Ok(Vec::new())
            }
        }
    }

    fn on_certificate(&mut self, payload: &[u8]) -> Result<Vec<Uplink>, String> {
        let message =
            payload::parse_certificate(payload).map_err(|e| format!("cert/down: {e:?}"))?;
        let identity = self
            .identity
            .clone()
            .ok_or("a certificate arrived before enrollment")?;
        match message {
            CertificateMessage::Issued {
                certificate,
                chain,
                serial,
                not_after_ms,
            } => {
                let next = identity.generation.saturating_add(1);
                let key = self
                    .dir
                    .key(next)
                    .map_err(|e| e.to_string())?
                    .ok_or("a certificate arrived but no renewal is in progress")?;
                let chain_pem = tls::join_chain(&certificate.to_string(), &chain.to_string());
                let facts = tls::cert_facts(&self.id, &chain_pem).map_err(|e| e.to_string())?;
                // Refuse a certificate for another key before storing it.
                self.shared
                    .trust
                    .device_config(&self.id, &chain_pem, &key)
                    .map_err(|e| format!("the new certificate does not fit the new key: {e}"))?;
                let validity = Validity {
                    not_before_ms: facts.not_before_ms,
                    not_after_ms: facts
                        .not_after_ms
                        .min(not_after_ms.max(facts.not_before_ms)),
                };
                let renewal = self.renewal.as_mut().ok_or("no renewal policy")?;
                let action = renewal
                    .handle(
                        RenewalEvent::CertificateIssued(validity),
                        wall_ms(),
                        &mut self.rng,
                    )
                    .map_err(|e| e.to_string())?;
                if !matches!(action, RenewalAction::InstallCertificate(_)) {
                    return Err(format!("renewal answered {action:?} to a new certificate"));
                }
                self.dir
                    .save_cert(next, &chain_pem)
                    .map_err(|e| e.to_string())?;
                let renewed = StoredIdentity {
                    generation: next,
                    serial: serial.to_string(),
                    issued_at_ms: wall_ms(),
                    not_after_ms: validity.not_after_ms,
                    ..identity.clone()
                };
                self.dir
                    .save_identity(&renewed)
                    .map_err(|e| e.to_string())?;
                info!(device_id = %self.id, old_serial = %identity.serial, new_serial = %renewed.serial, "new certificate stored; reconnecting with it");
                self.stats.set_serial(&renewed.serial);
                self.identity = Some(renewed);
                self.tls = None;
                // Reconnect with the new certificate (after this packet's
                // PUBACK has gone out).
                self.reconnect_now = true;
                Ok(Vec::new())
            }
            CertificateMessage::Refused { code, message } => {
                let code = code.to_string();
                let permanent = !matches!(
                    code.as_str(),
                    "rate_limited" | "unavailable" | "internal" | "busy" | "timeout"
                );
                self.renewal_event(RenewalEvent::Refused { permanent });
                warn!(device_id = %self.id, code = %code, message = %message, permanent, "renewal refused by the server");
                Ok(Vec::new())
            }
        }
    }

    fn on_state_request(&mut self, payload: &[u8]) -> Result<Vec<Uplink>, String> {
        let request =
            payload::parse_state_request(payload).map_err(|e| format!("state/down: {e:?}"))?;
        if !request.is_report_request() {
            self.apply_desired(request.desired())?;
        }
        self.report_state = true;
        Ok(self.take_state_report())
    }

    /// Applies the desired fields the device knows (`led`); others are
    /// refused with the reason.
    fn apply_desired(&mut self, desired: JsonObject<'_>) -> Result<(), String> {
        let mut unknown = Vec::new();
        for (name, value) in desired.iter() {
            match (name.to_string().as_str(), value) {
                ("led", JsonValue::Bool(on)) => self.led = on,
                ("led", _) => return Err("desired \"led\" must be true or false".to_owned()),
                (other, _) => unknown.push(other.to_owned()),
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unknown desired fields {unknown:?}; a simulated device knows \"led\""
            ))
        }
    }

    fn on_command(&mut self, payload: &[u8]) -> Result<Vec<Uplink>, String> {
        let command = payload::parse_command(payload).map_err(|e| format!("cmd/down: {e:?}"))?;
        let name = command.name.to_string();
        let (status, message) = match name.as_str() {
            "ping" => (CommandStatus::Ok, "pong".to_owned()),
            "read" => match self.take_reading() {
                Some(seq) => (CommandStatus::Ok, format!("reading {seq} taken")),
                None => (
                    CommandStatus::Error,
                    "the sensor read failed; try again".to_owned(),
                ),
            },
            "reboot" => {
                self.reboot = true;
                (CommandStatus::Ok, "rebooting".to_owned())
            }
            "renew" => match &mut self.renewal {
                Some(r) => {
                    r.force();
                    self.renew_at = Some(Instant::now());
                    (CommandStatus::Ok, "certificate renewal started".to_owned())
                }
                None => (CommandStatus::Error, "not enrolled".to_owned()),
            },
            "led" => match command.args.get("on") {
                Some(JsonValue::Bool(on)) => {
                    self.led = on;
                    self.report_state = true;
                    (
                        CommandStatus::Ok,
                        format!("led {}", if on { "on" } else { "off" }),
                    )
                }
                _ => (
                    CommandStatus::Error,
                    "args must be {\"on\": true|false}".to_owned(),
                ),
            },
            other => (
                CommandStatus::Unknown,
                format!("unknown command '{other}'; known: {}", COMMANDS.join(", ")),
            ),
        };
        self.stats.bump(Count::Command);
        let mut buf = vec![0u8; 256 + message.len() + command.id.unescaped_len() * 6];
        let len = payload::encode_command_result(&command.id, status, Some(&message), &mut buf)
            .map_err(|e| format!("cannot encode the command result: {e:?}"))?;
        buf.truncate(len);
        let mut replies = vec![Uplink {
            category: Category::Cmd,
            payload: buf,
            control: Control::CommandResult,
        }];
        replies.extend(self.take_state_report());
        Ok(replies)
    }

    /// The state report, if one is due.
    fn take_state_report(&mut self) -> Vec<Uplink> {
        if !std::mem::take(&mut self.report_state) {
            return Vec::new();
        }
        vec![Uplink {
            category: Category::State,
            payload: self.state_report(),
            control: Control::State,
        }]
    }

    /// `state/up`: firmware, uptime and the simulator's own fields.
    fn state_report(&self) -> Vec<u8> {
        let counts = self.stats.counts();
        let serial = self.identity.as_ref().map_or("", |i| i.serial.as_str());
        let int = |v: u64| StateValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let fields = [
            ("sensor", StateValue::Str(self.sensor.kind().name())),
            ("boot", StateValue::Int(i64::from(self.seq.boot()))),
            ("readFailures", int(counts.read_failures)),
            ("buffered", int(self.ring.len() as u64)),
            ("dropped", int(counts.dropped)),
            ("serial", StateValue::Str(serial)),
            ("bound", StateValue::Bool(self.provisioning.is_bound())),
            ("led", StateValue::Bool(self.led)),
        ];
        let state = ReportedState {
            firmware: self.firmware.running_version(),
            device_type: self.firmware.device_type(),
            uptime_ms: millis(self.booted_at.elapsed()),
            rssi: None,
            fields: &fields,
        };
        let mut buf = vec![0u8; 1024];
        match payload::encode_state(&state, &mut buf) {
            Ok(len) => buf.truncate(len),
            Err(e) => {
                warn!(device_id = %self.id, reason = ?e, "cannot encode the state report");
                buf = b"{}".to_vec();
            }
        }
        buf
    }

    // ---- firmware updates ------------------------------------------------------------

    /// Acts on how the firmware booted: a crash-looping image rolled back
    /// boots again into the previous slot; an image on trial runs (or,
    /// with `--ota-fault`, crashes, hangs or stays offline).
    fn after_boot(&mut self, boot: Boot) {
        self.hung = false;
        self.offline = false;
        self.pending_confirm_sent = false;
        match self.firmware.boot_through(boot, self.fault, self.mono_ms()) {
            Ok((running, log)) => {
                if log.crashes > 0 {
                    self.stats.add(Count::BootCrash, u64::from(log.crashes));
                    warn!(device_id = %self.id, crashes = log.crashes, "--ota-fault crash-on-boot: the image on trial crashed while booting");
                }
                if log.rolled_back {
                    self.stats.bump(Count::OtaRolledBack);
                    warn!(device_id = %self.id, reason = "crash-loop", version = %self.firmware.running_version(), "the image on trial never came up; rolled back to the previous slot");
                }
                let version = self.firmware.running_version();
                match running {
                    Running::Normal => {}
                    Running::Trial { deadline_ms } => {
                        info!(device_id = %self.id, version = %version, deadline_in_ms = deadline_ms.saturating_sub(self.mono_ms()), "booted a new image on trial; it confirms once connected and published");
                    }
                    Running::Hung { .. } => {
                        warn!(device_id = %self.id, version = %version, "--ota-fault hang: the image on trial hangs and will not connect");
                        self.hung = true;
                    }
                    Running::Offline { .. } => {
                        warn!(device_id = %self.id, version = %version, "--ota-fault no-network: the image on trial cannot reach the network");
                        self.offline = true;
                    }
                }
            }
            Err(e) => {
                error!(device_id = %self.id, reason = %e, "boot: the firmware state is unusable");
                self.stats.set_error(e.to_string());
            }
        }
        self.stats.set_firmware(self.firmware.running_version());
    }

    /// An acknowledged publish: the image on trial is confirmed (the core
    /// raises the minimum security version), or rolled back if too late.
    fn confirm_trial(&mut self, s: &mut Session) -> Result<(), ClientError> {
        if self.firmware.trial_deadline().is_none() {
            return Ok(());
        }
        match self.firmware.confirm(self.mono_ms()) {
            Ok(Next::Nothing) => {
                info!(device_id = %self.id, version = %self.firmware.running_version(), "update confirmed");
                self.stats.bump(Count::OtaSucceeded);
                self.queue_ota_reports(s)
            }
            Ok(Next::PersistAndReboot) => {
                warn!(device_id = %self.id, reason = "not-confirmed", "confirmed after the deadline; rolling back");
                self.stats.bump(Count::OtaRolledBack);
                self.reboot = true;
                Ok(())
            }
            Err(e) => {
                error!(device_id = %self.id, reason = %e, "cannot persist the update state");
                Ok(())
            }
        }
    }

    /// Publishes what the update machine has to say on a live connection:
    /// the outcome it keeps (succeeded, rolled back), `pending-confirm`
    /// for an image on trial, and reports kept while offline.
    fn queue_ota_reports(&mut self, s: &mut Session) -> Result<(), ClientError> {
        if self.firmware.trial_deadline().is_some() && !self.pending_confirm_sent {
            let report = self.firmware.status_report(OtaStatus::PendingConfirm);
            s.publish(
                self.topics.up(Category::Ota),
                report,
                Some(Control::OtaPendingConfirm),
            )?;
            self.pending_confirm_sent = true;
        }
        if !self.outcome_in_flight
            && let Some((status, report)) = self.firmware.pending_report()
        {
            if status == OtaStatus::RolledBack {
                info!(device_id = %self.id, version = %self.firmware.running_version(), "reporting the rollback");
            }
            s.publish(
                self.topics.up(Category::Ota),
                report,
                Some(Control::OtaOutcome),
            )?;
            self.outcome_in_flight = true;
        }
        while let Some(report) = self.ota_outbox.pop_front() {
            s.publish(
                self.topics.up(Category::Ota),
                report,
                Some(Control::OtaStep),
            )?;
        }
        Ok(())
    }

    /// Publishes an `ota/up` report now, or keeps it for the next
    /// connection (progress reports are only worth sending live).
    async fn send_ota(&mut self, report: Vec<u8>, keep: bool) {
        if self.session.is_some() {
            let topic = self.topics.up(Category::Ota).to_owned();
            self.with_session(|_, s| {
                s.publish(&topic, report, Some(Control::OtaStep))
                    .map(|_| ())
            })
            .await;
        } else if keep {
            if self.ota_outbox.len() >= OTA_OUTBOX {
                self.ota_outbox.pop_front();
            }
            self.ota_outbox.push_back(report);
        }
    }

    fn on_ota(&mut self, payload: &[u8]) -> Result<Vec<Uplink>, String> {
        let mut buf = [0u8; MAX_MANIFEST_LEN];
        let message =
            payload::parse_ota(payload, &mut buf).map_err(|e| format!("ota/down: {e}"))?;
        let offer = match message {
            OtaMessage::Cancel { campaign } => {
                if self
                    .download
                    .as_ref()
                    .is_some_and(|d| d.campaign == campaign)
                {
                    self.download = None;
                    self.firmware.abort();
                    info!(device_id = %self.id, campaign, "update cancelled; the download is discarded");
                } else {
                    debug!(device_id = %self.id, campaign, "cancel for no download in progress");
                }
                return Ok(Vec::new());
            }
            OtaMessage::Offer(offer) => offer,
        };
        if self.firmware.update_in_progress() == Some(offer.sha256) {
            // docs/ota.md §2: the server may re-send an offer on reconnect.
            debug!(device_id = %self.id, campaign = offer.campaign, "offer for the update in progress; ignored");
            return Ok(Vec::new());
        }
        let version = Manifest::decode(offer.manifest)
            .map(|m| m.version.as_str().to_owned())
            .unwrap_or_default();
        let report = match self.firmware.offer(offer.manifest, &offer.signature) {
            Err(e) => {
                self.stats.bump(Count::OtaFailed);
                warn!(device_id = %self.id, campaign = offer.campaign, version = %version, reason = e.code(), "update offer refused: {e}");
                firmware::failed_report(&version, &e)
            }
            Ok(size) => match self.start_download(&offer, size, &version) {
                Ok(()) => {
                    self.stats.bump(Count::OtaOffer);
                    info!(device_id = %self.id, campaign = offer.campaign, version = %version, size, "update offer accepted; downloading");
                    self.firmware
                        .progress_report()
                        .unwrap_or_else(|| self.firmware.status_report(OtaStatus::Downloading))
                }
                Err(reason) => {
                    self.firmware.abort();
                    self.stats.bump(Count::OtaFailed);
                    warn!(device_id = %self.id, campaign = offer.campaign, reason = %reason, "cannot start the download");
                    firmware::download_failed_report(&version)
                }
            },
        };
        Ok(vec![Uplink {
            category: Category::Ota,
            payload: report,
            control: Control::OtaStep,
        }])
    }

    fn start_download(
        &mut self,
        offer: &OtaOffer<'_, '_>,
        size: u64,
        version: &str,
    ) -> Result<(), String> {
        let tls = self.tls_config()?;
        let options = &self.shared.options;
        let client = dl::client((*tls).clone(), options.io_timeout)?;
        let flaky = options.flaky_downloads.unwrap_or(options.flaky);
        let cut_after = (flaky > 0.0 && size > 1 && self.rng.0.random_bool(flaky.min(1.0)))
            .then(|| self.rng.0.random_range(1..size));
        let request = DownloadRequest {
            url: offer.url.to_string(),
            size,
            sha256_hex: hex::encode(offer.sha256),
            cut_after,
            backoff: options.backoff,
        };
        let corrupt_at =
            (self.fault == Some(FaultKind::CorruptDownload) && size > 0).then_some(size / 2);
        self.download = Some(ActiveDownload {
            download: Download::start(
                client,
                request,
                Arc::clone(&self.stats),
                self.id.to_string(),
            ),
            campaign: offer.campaign,
            manifest: offer.manifest.to_vec(),
            signature: offer.signature,
            version: version.to_owned(),
            written: 0,
            last_progress: Instant::now(),
            corrupt_at,
        });
        Ok(())
    }

    /// Bytes (or the end) of the download: into the slot through the core.
    async fn on_download_event(&mut self, event: Option<DownloadEvent>) {
        let Some(mut active) = self.download.take() else {
            return;
        };
        match event {
            Some(DownloadEvent::Chunk(bytes)) => {
                let mut data = bytes.to_vec();
                if let Some(at) = active.corrupt_at
                    && let Some(byte) = at
                        .checked_sub(active.written)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| data.get_mut(i))
                {
                    *byte ^= 0xff;
                    debug!(device_id = %self.id, offset = at, "--ota-fault corrupt-download: a byte flipped");
                }
                match self.firmware.write(&data) {
                    Ok((written, _)) => {
                        active.written = written;
                        let due = active.last_progress.elapsed() >= PROGRESS_EVERY;
                        if due {
                            active.last_progress = Instant::now();
                        }
                        self.download = Some(active);
                        if due && let Some(report) = self.firmware.progress_report() {
                            self.send_ota(report, false).await;
                        }
                    }
                    Err(e) => {
                        self.stats.bump(Count::OtaFailed);
                        warn!(device_id = %self.id, version = %active.version, reason = e.code(), "download discarded: {e}");
                        self.send_ota(firmware::failed_report(&active.version, &e), true)
                            .await;
                    }
                }
            }
            Some(DownloadEvent::Restart) => {
                // A fresh machine state for the whole image: discard and
                // offer the same manifest again.
                self.firmware.abort();
                match self.firmware.offer(&active.manifest, &active.signature) {
                    Ok(_) => {
                        active.written = 0;
                        self.download = Some(active);
                    }
                    Err(e) => {
                        self.stats.bump(Count::OtaFailed);
                        warn!(device_id = %self.id, reason = e.code(), "restarted download refused: {e}");
                        self.send_ota(firmware::failed_report(&active.version, &e), true)
                            .await;
                    }
                }
            }
            Some(DownloadEvent::Done) => {
                self.send_ota(self.firmware.status_report(OtaStatus::Verifying), true)
                    .await;
                match self.firmware.finish() {
                    Ok(Next::PersistAndReboot) => {
                        info!(device_id = %self.id, version = %active.version, "image verified and selected; rebooting into it");
                        self.send_ota(self.firmware.status_report(OtaStatus::PendingReboot), true)
                            .await;
                        self.reboot_after_reports =
                            Some(Instant::now() + self.shared.options.io_timeout);
                    }
                    Ok(Next::Nothing) => {}
                    Err(e) => {
                        self.stats.bump(Count::OtaFailed);
                        warn!(device_id = %self.id, version = %active.version, reason = e.code(), "downloaded image refused: {e}");
                        self.send_ota(firmware::failed_report(&active.version, &e), true)
                            .await;
                    }
                }
            }
            Some(DownloadEvent::Failed(reason)) => {
                self.firmware.abort();
                self.stats.bump(Count::OtaFailed);
                warn!(device_id = %self.id, version = %active.version, reason = %reason, "download failed; staying on the running firmware");
                self.stats.set_error(format!("download failed: {reason}"));
                self.send_ota(firmware::download_failed_report(&active.version), true)
                    .await;
            }
            None => {
                self.firmware.abort();
                self.stats.bump(Count::OtaFailed);
                error!(device_id = %self.id, "the download task ended without a result");
                self.send_ota(firmware::download_failed_report(&active.version), true)
                    .await;
            }
        }
    }

    /// The image on trial did not confirm in time: the core rolls back.
    fn on_trial_deadline(&mut self) {
        match self.firmware.tick(self.mono_ms()) {
            Ok(Next::PersistAndReboot) => {
                let cause = match self.fault {
                    Some(FaultKind::Hang) => "the image hung",
                    Some(FaultKind::NoNetwork) => "the image could not reach the network",
                    _ => "the image did not connect and publish",
                };
                warn!(device_id = %self.id, reason = "not-confirmed", cause, "no confirmation before the deadline; rolling back to the previous slot");
                self.stats.bump(Count::OtaRolledBack);
                self.reboot = true;
            }
            Ok(Next::Nothing) => {}
            Err(e) => error!(device_id = %self.id, reason = %e, "cannot persist the update state"),
        }
    }

    // ---- provisioning ----------------------------------------------------------

    /// Applies a provisioning event and persists the state.
    fn provision_event(&mut self, event: ProvisionEvent) {
        match self.provisioning.handle(event, wall_ms(), &mut self.rng) {
            Ok(_) => {
                self.persist_provisioning();
                self.provision_at = Some(Instant::now());
            }
            Err(e) => debug!(device_id = %self.id, reason = %e, "provisioning"),
        }
    }

    fn persist_provisioning(&mut self) {
        self.stats.set_state(self.provisioning.state().name());
        if let Err(e) = self.dir.save_provisioning(&self.provisioning.to_bytes()) {
            warn!(device_id = %self.id, reason = %e, "cannot persist the provisioning state");
        }
    }

    /// Acts on the provisioning machine until it has to wait.
    async fn step_provisioning(&mut self) {
        self.provision_at = None;
        for _ in 0..8 {
            let action = self.provisioning.poll(wall_ms(), &mut self.rng);
            match action {
                ProvisionAction::Nothing | ProvisionAction::Ignored(_) => return,
                ProvisionAction::WaitUntil(t) => {
                    self.provision_at = Some(instant_at_wall(t));
                    return;
                }
                ProvisionAction::GenerateKey => {
                    if let Err(e) = self.generate_key(0).await {
                        error!(device_id = %self.id, reason = %e, "cannot make or store the device key");
                        self.stats.set_error(e);
                        self.provision_at = Some(Instant::now() + self.shared.options.io_timeout);
                        return;
                    }
                    self.provision_event(ProvisionEvent::KeyGenerated);
                }
                ProvisionAction::SendCsr => {
                    if !self.enroll().await {
                        return;
                    }
                }
                ProvisionAction::StoreCertificate => {
                    // Stored by `enroll` before it reports acceptance; a
                    // restart in between comes back at "key made".
                    self.provision_event(ProvisionEvent::CertificateStored);
                }
                ProvisionAction::Connect => {
                    if self.session.is_none() && self.connect_at.is_none() {
                        self.connect_at = if self.shared.options.sleep_cycle.is_some() {
                            None
                        } else {
                            Some(Instant::now())
                        };
                    }
                    return;
                }
                ProvisionAction::PublishClaimConfirmation(nonce) => {
                    if self.claim_in_flight {
                        return;
                    }
                    let Ok(reply) = claim_confirmation(&nonce) else {
                        return;
                    };
                    self.claim_in_flight = true;
                    self.with_session(|d, s| {
                        s.publish(
                            d.topics.up(Category::Bind),
                            reply.payload,
                            Some(Control::ClaimConfirmation),
                        )
                        .map(|_| ())
                    })
                    .await;
                    if self.session.is_none() {
                        self.claim_in_flight = false;
                    }
                    return;
                }
                ProvisionAction::GiveUp(GiveUpReason::TokenRefused) => {
                    if !std::mem::replace(&mut self.gave_up_logged, true) {
                        error!(device_id = %self.id, "the enrollment token was refused for good; the device keeps buffering readings; restart the simulator with a new --token");
                    }
                    return;
                }
            }
        }
        self.provision_at = Some(Instant::now());
    }

    /// Makes and durably stores the key of `generation` unless it exists.
    async fn generate_key(&mut self, generation: u32) -> Result<String, String> {
        if let Some(key) = self.dir.key(generation).map_err(|e| e.to_string())? {
            return Ok(key);
        }
        let id = self.id.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let key = tls::new_key(&id).map_err(|e| e.to_string())?;
            dir.save_key(generation, &key).map_err(|e| e.to_string())?;
            Ok(key)
        })
        .await
        .map_err(|e| format!("key task: {e}"))?
    }

    /// One enrollment attempt; `false` when the device must wait.
    async fn enroll(&mut self) -> bool {
        let Some(enroller) = self.shared.enroller.clone() else {
            if !std::mem::replace(&mut self.gave_up_logged, true) {
                error!(device_id = %self.id, "not enrolled and no --token given; the device keeps buffering readings");
                self.stats.set_error("not enrolled and no --token given");
            }
            return false;
        };
        if let Some(t) = self.need_slot(true) {
            self.provision_at = Some(t);
            return false;
        }
        let csr = match self
            .dir
            .key(0)
            .map_err(|e| e.to_string())
            .and_then(|k| k.ok_or_else(|| "the device key is missing".to_owned()))
            .and_then(|k| tls::csr(&self.id, &k).map_err(|e| e.to_string()))
        {
            Ok(csr) => csr,
            Err(reason) => {
                error!(device_id = %self.id, reason = %reason, "cannot make the CSR");
                self.stats.set_error(reason);
                self.provision_at = Some(Instant::now() + self.shared.options.io_timeout);
                return false;
            }
        };
        self.provision_event(ProvisionEvent::CsrSubmitted);
        match enroller.enroll(&csr).await {
            Ok(enrolled) => match self.store_enrollment(enrolled) {
                Ok(()) => {
                    info!(device_id = %self.id, "enrolled");
                    self.provision_event(ProvisionEvent::EnrollmentAccepted);
                    true
                }
                Err(reason) => {
                    self.stats.bump(Count::EnrollFailure);
                    error!(device_id = %self.id, reason = %reason, "enrollment answer unusable");
                    self.stats.set_error(reason);
                    self.provision_event(ProvisionEvent::EnrollmentRefused(Refusal::Retryable));
                    false
                }
            },
            Err(e) => {
                self.stats.bump(Count::EnrollFailure);
                let refusal = refusal_of(&e);
                warn!(device_id = %self.id, reason = %e, permanent = (refusal == Refusal::Permanent), "enrollment failed; readings stay buffered");
                self.stats.set_error(e.to_string());
                self.provision_event(ProvisionEvent::EnrollmentRefused(refusal));
                if let Some(after) = e.retry_after() {
                    // Honour the server's 429 Retry-After over a shorter backoff.
                    let earliest = Instant::now() + after;
                    self.provision_at =
                        Some(self.provision_at.map_or(earliest, |t| t.max(earliest)));
                    return false;
                }
                true
            }
        }
    }

    /// Stores the enrollment answer: certificate, then identity (the commit).
    fn store_enrollment(&mut self, e: crate::enroll::Enrolled) -> Result<(), String> {
        if e.device_id != self.id.as_str() {
            return Err(format!(
                "the server issued a certificate for '{}', not for this device",
                e.device_id
            ));
        }
        let chain = tls::join_chain(&e.certificate, &e.chain);
        tls::cert_facts(&self.id, &chain).map_err(|err| err.to_string())?;
        let key = self
            .dir
            .key(0)
            .map_err(|err| err.to_string())?
            .ok_or("the device key is missing")?;
        self.shared
            .trust
            .device_config(&self.id, &chain, &key)
            .map_err(|err| format!("the certificate does not fit the device key: {err}"))?;
        self.dir
            .save_cert(0, &chain)
            .map_err(|err| err.to_string())?;
        let identity = StoredIdentity {
            id: self.id.to_string(),
            generation: 0,
            serial: e.serial,
            fingerprint: e.fingerprint,
            issued_at_ms: wall_ms(),
            not_after_ms: e.not_after,
            claim_code: e.claim_code,
            qr_payload: e.qr_payload,
            bound_to: None,
        };
        self.dir
            .save_identity(&identity)
            .map_err(|err| err.to_string())?;
        self.install_identity(identity)
            .map_err(|err| err.to_string())
    }

    // ---- renewal ------------------------------------------------------------------

    fn renewal_event(&mut self, event: RenewalEvent) {
        if let Some(r) = &mut self.renewal {
            match r.handle(event, wall_ms(), &mut self.rng) {
                Ok(RenewalAction::GiveUp) => {
                    error!(device_id = %self.id, "certificate renewal refused for good; the current certificate stays in use");
                }
                Ok(_) => {}
                Err(e) => debug!(device_id = %self.id, reason = %e, "renewal"),
            }
        }
        self.renew_at = Some(Instant::now());
    }

    /// Acts on the renewal policy (online only).
    async fn step_renewal(&mut self) {
        self.renew_at = None;
        if self.forced_renewal_at.is_some_and(|t| t <= Instant::now()) {
            self.forced_renewal_at = None;
            if let Some(r) = &mut self.renewal {
                r.force();
            }
        }
        let Some(renewal) = &mut self.renewal else {
            return;
        };
        match renewal.poll(wall_ms(), &mut self.rng) {
            RenewalAction::Nothing | RenewalAction::GiveUp => {}
            RenewalAction::WaitUntil(t) => self.renew_at = Some(instant_at_wall(t)),
            RenewalAction::InstallCertificate(_) => {
                // Stored; the reconnect with it reports it installed.
                if self.session.is_some() {
                    self.reconnect_now = true;
                }
            }
            RenewalAction::SendCsr => {
                let generation = self
                    .identity
                    .as_ref()
                    .map_or(0, |i| i.generation.saturating_add(1));
                let key = match self.generate_key(generation).await {
                    Ok(k) => k,
                    Err(reason) => {
                        error!(device_id = %self.id, reason = %reason, "cannot make the renewal key");
                        self.renew_at = Some(Instant::now() + self.shared.options.io_timeout);
                        return;
                    }
                };
                let request = tls::csr(&self.id, &key)
                    .map_err(|e| e.to_string())
                    .and_then(|csr| {
                        let mut buf = vec![0u8; csr.len() * 2 + 64];
                        payload::encode_renewal_request(&csr, &mut buf)
                            .map(|len| {
                                buf.truncate(len);
                                buf
                            })
                            .map_err(|e| format!("{e:?}"))
                    });
                let payload = match request {
                    Ok(p) => p,
                    Err(reason) => {
                        error!(device_id = %self.id, reason = %reason, "cannot make the renewal CSR");
                        self.renew_at = Some(Instant::now() + self.shared.options.io_timeout);
                        return;
                    }
                };
                info!(device_id = %self.id, "renewing the certificate");
                self.with_session(|d, s| {
                    s.publish(
                        d.topics.up(Category::Cert),
                        payload,
                        Some(Control::RenewalCsr),
                    )
                    .map(|_| ())
                })
                .await;
                if self.session.is_some() {
                    self.renewal_event(RenewalEvent::CsrSent);
                }
            }
        }
    }

    // ---- sleep, reboot, drain -------------------------------------------------------

    /// In `--sleep-cycle` mode: once everything is delivered, disconnect and sleep.
    async fn maybe_sleep(&mut self) {
        if self.reconnect_now {
            self.reconnect_now = false;
            self.disconnect().await;
            self.connect_at = Some(Instant::now());
            return;
        }
        if self.shared.options.sleep_cycle.is_none() {
            return;
        }
        let Some(s) = &self.session else {
            return;
        };
        let busy = !s.idle()
            || self.pending(s).is_some()
            || self.claim_in_flight
            || self
                .renewal
                .as_ref()
                .is_some_and(|r| matches!(r.state(), RenewalState::CsrSent { .. }));
        if !busy {
            self.go_to_sleep("flushed").await;
        }
    }

    async fn go_to_sleep(&mut self, why: &str) {
        debug!(device_id = %self.id, why, "going to sleep");
        self.disconnect().await;
        self.save_ring();
        self.connect_at = None;
    }

    /// `reboot` command: end the session, start a new boot (new boot
    /// number, uptime from zero), keep the ring (RTC memory), reconnect.
    async fn do_reboot(&mut self) {
        self.reboot = false;
        self.disconnect().await;
        self.save_ring();
        let mut boot = self.boot.clone();
        let started = tokio::task::spawn_blocking(move || SeqGen::start(&mut boot)).await;
        match started {
            Ok(Ok(seq)) => {
                info!(device_id = %self.id, boot = seq.boot(), "rebooted");
                self.seq = seq;
                self.stats.set_boot(seq.boot());
            }
            Ok(Err(e)) => {
                error!(device_id = %self.id, reason = %e, "reboot: boot counter unusable; keeping the old one");
            }
            Err(e) => error!(device_id = %self.id, reason = %e, "reboot task"),
        }
        // What was being received is lost with RAM; the core boots the
        // slot its persisted state selects.
        self.download = None;
        self.reboot_after_reports = None;
        match self.firmware.reboot(self.mono_ms()) {
            Ok(boot) => self.after_boot(boot),
            Err(e) => {
                error!(device_id = %self.id, reason = %e, "reboot: the firmware state is unusable");
                self.stats.set_error(e.to_string());
            }
        }
        self.booted_at = Instant::now();
        self.report_state = true;
        if self.shared.options.sleep_cycle.is_none() {
            self.connect_at = Some(Instant::now());
        }
    }

    /// After reading stops: deliver what is buffered within the drain
    /// timeout, then disconnect cleanly.
    async fn drain(&mut self) {
        if self.hung {
            // A hung image delivers nothing.
            return;
        }
        let deadline = Instant::now() + self.shared.options.drain_timeout;
        loop {
            let buffered = !self.ring.is_empty();
            let in_flight = self.session.as_ref().is_some_and(|s| !s.idle());
            if !buffered && !in_flight {
                break;
            }
            if Instant::now() >= deadline || self.identity.is_none() {
                break;
            }
            if self.session.is_none() {
                let at = self.connect_at.unwrap_or_else(Instant::now).min(deadline);
                tokio::time::sleep_until(at).await;
                self.connect_at = Some(Instant::now());
                self.connect().await;
                if self.session.is_none() && self.connect_at.is_none() {
                    // A sleeping device's failed wake leaves no retry time;
                    // while draining it backs off like any other.
                    let delay = self.backoff.next_delay(&mut self.rng);
                    self.connect_at = Some(Instant::now() + Duration::from_millis(delay));
                }
                continue;
            }
            self.with_session(|d, s| d.queue_flush(s, true)).await;
            let Some(s) = self.session.as_mut() else {
                continue;
            };
            let read = tokio::select! {
                r = s.client.read_more() => Some(r),
                _ = sleep_until(deadline) => None,
            };
            match read {
                Some(r) => self.on_network(r).await,
                None => break,
            }
        }
        let left = self.ring.len();
        if left > 0 {
            warn!(device_id = %self.id, buffered = left, "stopping with readings still buffered; they are kept in the state dir for the next run");
        }
        self.disconnect().await;
    }
}

fn fallback_provisioning(config: ProvisionConfig, has_certificate: bool) -> Provisioning {
    if has_certificate {
        Provisioning::pre_provisioned(config)
    } else {
        Provisioning::new(config)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn claim_confirmation(nonce: &payload::Nonce) -> Result<Uplink, String> {
    let mut buf = vec![0u8; 128];
    let len = payload::encode_claim_confirmation(nonce, &mut buf)
        .map_err(|e| format!("cannot encode the claim confirmation: {e:?}"))?;
    buf.truncate(len);
    Ok(Uplink {
        category: Category::Bind,
        payload: buf,
        control: Control::ClaimConfirmation,
    })
}

/// Whether an enrollment failure can change by retrying with the same token.
fn refusal_of(e: &EnrollError) -> Refusal {
    match e {
        EnrollError::Refused { status, code, .. } => match code.as_str() {
            "rate_limited" => Refusal::Retryable,
            "token_invalid" | "token_expired" | "token_used_up" | "id_prefix_mismatch"
            | "id_taken" | "invalid_csr" => Refusal::Permanent,
            _ if *status >= 500 => Refusal::Retryable,
            _ => Refusal::Permanent,
        },
        EnrollError::Transport { .. } | EnrollError::Malformed { .. } => Refusal::Retryable,
    }
}

/// The reason string property of an acknowledgement (MQTT 5 §3.4.2.2.2).
fn reason_string(properties: &mqtt5_protocol::Properties) -> Option<String> {
    match properties.get(PropertyId::ReasonString) {
        Some(PropertyValue::Utf8String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A connection failure as a sentence that says what to check.
fn describe(e: &ClientError) -> String {
    if let ClientError::Io { source, .. } = e {
        if let Some(tls) = source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::InvalidCertificate(why) => format!(
                    "the server's certificate is not trusted ({why:?}); is --ca the output of `rampart ca export` for this server?"
                ),
                rustls::Error::AlertReceived(alert) => format!(
                    "the server rejected this device's certificate (TLS alert {alert:?}): revoked, unknown or superseded"
                ),
                other => format!("TLS failed: {other}"),
            };
        }
        return match source.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "server unreachable (connection refused)".to_owned()
            }
            std::io::ErrorKind::TimedOut => format!("timed out: {e}"),
            _ => e.to_string(),
        };
    }
    match e {
        ClientError::Refused { reason, .. } => format!("the broker refused: {reason}"),
        ClientError::Disconnected { reason, .. } => {
            format!("the broker disconnected it ({reason:?})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_refusals_that_a_retry_cannot_fix_are_permanent() {
        let refused = |status: u16, code: &str| EnrollError::Refused {
            status,
            code: code.to_owned(),
            message: String::new(),
            retry_after: None,
        };
        assert_eq!(
            refusal_of(&refused(429, "rate_limited")),
            Refusal::Retryable
        );
        assert_eq!(
            refusal_of(&refused(401, "token_expired")),
            Refusal::Permanent
        );
        assert_eq!(
            refusal_of(&refused(403, "token_used_up")),
            Refusal::Permanent
        );
        assert_eq!(refusal_of(&refused(503, "http_503")), Refusal::Retryable);
        let unreachable = EnrollError::Transport {
            url: "u".into(),
            reason: "refused".into(),
        };
        assert_eq!(refusal_of(&unreachable), Refusal::Retryable);
    }

    #[test]
    fn failures_read_as_sentences() {
        let refused = ClientError::io(
            "connect",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        );
        assert!(describe(&refused).contains("unreachable"));
        let untrusted = ClientError::io(
            "handshake",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
        );
        assert!(
            describe(&untrusted).contains("--ca"),
            "{}",
            describe(&untrusted)
        );
        let rejected = ClientError::io(
            "read",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked),
            ),
        );
        assert!(describe(&rejected).contains("rejected this device's certificate"));
    }

    #[test]
    fn topics_and_seeds_are_per_device() {
        let a = DeviceId::parse("sim-1").expect("id");
        let b = DeviceId::parse("sim-2").expect("id");
        let t = Topics::new(&a);
        assert_eq!(t.down, "devices/sim-1/+/down");
        assert_eq!(t.up(Category::Telemetry), "devices/sim-1/telemetry/up");
        assert_eq!(t.up(Category::Cert), "devices/sim-1/cert/up");
        assert_ne!(seed_of(&a), seed_of(&b));
        assert_eq!(seed_of(&a), seed_of(&a.clone()));
    }
}
