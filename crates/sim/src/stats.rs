//! Counters: each device counts what happened to it; the fleet adds them up
//! for the progress line and the summary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One device's live counters (updated by its task, read by the reporter).
#[derive(Debug, Default)]
pub struct DeviceStats {
    enrolled: AtomicBool,
    connected: AtomicBool,
    readings: AtomicU64,
    read_failures: AtomicU64,
    sent: AtomicU64,
    acknowledged: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    buffered: AtomicU64,
    restored: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    enroll_failures: AtomicU64,
    flaky_drops: AtomicU64,
    downlinks: AtomicU64,
    malformed_downlinks: AtomicU64,
    claims_confirmed: AtomicU64,
    commands: AtomicU64,
    renewals: AtomicU64,
    ota_offers: AtomicU64,
    ota_succeeded: AtomicU64,
    ota_failed: AtomicU64,
    ota_rolled_back: AtomicU64,
    download_resumes: AtomicU64,
    boot_crashes: AtomicU64,
    boot: AtomicU64,
    last_acked_seq: AtomicU64,
    has_acked: AtomicBool,
    detail: Mutex<Detail>,
}

/// Slowly changing facts about a device (for the summary).
#[derive(Debug, Default, Clone)]
struct Detail {
    serial: Option<String>,
    state: &'static str,
    last_error: Option<String>,
    firmware: Option<String>,
    ota_fault: Option<&'static str>,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A reading was taken and buffered.
    Reading,
    /// A sensor read failed.
    ReadFailure,
    /// Readings were published (resends count again).
    Sent,
    /// Readings were acknowledged and left the ring.
    Acknowledged,
    /// Readings were refused by the server and left the ring.
    Rejected,
    /// Readings were overwritten in a full ring before delivery.
    Dropped,
    /// Readings were found in the ring persisted by an earlier run.
    Restored,
    /// A connection came up.
    Connect,
    /// A connection attempt failed.
    ConnectFailure,
    /// An enrollment attempt failed.
    EnrollFailure,
    /// `--flaky` dropped the connection.
    FlakyDrop,
    /// A downlink arrived.
    Downlink,
    /// A downlink could not be understood.
    MalformedDownlink,
    /// A claim was confirmed on `bind/up`.
    ClaimConfirmed,
    /// A command was answered.
    Command,
    /// A certificate renewal completed.
    Renewal,
    /// An update offer was accepted (its download started).
    OtaOffer,
    /// An update was confirmed (`succeeded` reported).
    OtaSucceeded,
    /// An update was refused or failed (`failed` reported).
    OtaFailed,
    /// A trial image was rolled back.
    OtaRolledBack,
    /// A broken download was resumed with a range request.
    DownloadResume,
    /// A trial boot crashed (`--ota-fault crash-on-boot`).
    BootCrash,
}

impl DeviceStats {
    fn counter(&self, c: Count) -> &AtomicU64 {
        match c {
            Count::Reading => &self.readings,
            Count::ReadFailure => &self.read_failures,
            Count::Sent => &self.sent,
            Count::Acknowledged => &self.acknowledged,
            Count::Rejected => &self.rejected,
            Count::Dropped => &self.dropped,
            Count::Restored => &self.restored,
            Count::Connect => &self.connects,
            Count::ConnectFailure => &self.connect_failures,
            Count::EnrollFailure => &self.enroll_failures,
            Count::FlakyDrop => &self.flaky_drops,
            Count::Downlink => &self.downlinks,
            Count::MalformedDownlink => &self.malformed_downlinks,
            Count::ClaimConfirmed => &self.claims_confirmed,
            Count::Command => &self.commands,
            Count::Renewal => &self.renewals,
            Count::OtaOffer => &self.ota_offers,
            Count::OtaSucceeded => &self.ota_succeeded,
            Count::OtaFailed => &self.ota_failed,
            Count::OtaRolledBack => &self.ota_rolled_back,
            Count::DownloadResume => &self.download_resumes,
            Count::BootCrash => &self.boot_crashes,
        }
    }

    /// Adds `n` to a counter.
    pub fn add(&self, c: Count, n: u64) {
        self.counter(c).fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn bump(&self, c: Count) {
        self.add(c, 1);
    }

    /// The value of a counter.
    pub fn get(&self, c: Count) -> u64 {
        self.counter(c).load(Ordering::Relaxed)
    }

    /// Records whether the device holds a certificate.
    pub fn set_enrolled(&self, yes: bool) {
        self.enrolled.store(yes, Ordering::Relaxed);
    }

    /// Records whether the device is connected.
    pub fn set_connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::Relaxed);
    }

    /// Records how many readings wait in the ring.
    pub fn set_buffered(&self, n: usize) {
        self.buffered.store(n as u64, Ordering::Relaxed);
    }

    /// Records the boot number of this run.
    pub fn set_boot(&self, boot: u32) {
        self.boot.store(u64::from(boot), Ordering::Relaxed);
    }

    /// Records that readings up to `seq` were acknowledged.
    pub fn set_last_acked(&self, seq: u64) {
        self.last_acked_seq.fetch_max(seq, Ordering::Relaxed);
        self.has_acked.store(true, Ordering::Relaxed);
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        // A poisoned lock only means a reporter panicked mid-read; the
        // data (plain values) is still consistent.
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the current certificate serial.
    pub fn set_serial(&self, serial: &str) {
        self.detail().serial = Some(serial.to_owned());
    }

    /// Records the provisioning state's name.
    pub fn set_state(&self, state: &'static str) {
        self.detail().state = state;
    }

    /// Records the version of the running firmware.
    pub fn set_firmware(&self, version: &str) {
        self.detail().firmware = Some(version.to_owned());
    }

    /// Records the device's update fault (`--ota-fault`).
    pub fn set_ota_fault(&self, kind: &'static str) {
        self.detail().ota_fault = Some(kind);
    }

    /// Records the last failure seen (for the summary).
    pub fn set_error(&self, error: impl Into<String>) {
        self.detail().last_error = Some(error.into());
    }

    /// This device's figures for the summary.
    pub fn report(&self, id: &str) -> DeviceReport {
        let d = self.detail().clone();
        DeviceReport {
            id: id.to_owned(),
            enrolled: self.enrolled.load(Ordering::Relaxed),
            state: d.state.to_owned(),
            serial: d.serial,
            boot: self.boot.load(Ordering::Relaxed),
            last_acked_seq: self
                .has_acked
                .load(Ordering::Relaxed)
                .then(|| self.last_acked_seq.load(Ordering::Relaxed)),
            counts: self.counts(),
            last_error: d.last_error,
            firmware: d.firmware,
            ota_fault: d.ota_fault.map(str::to_owned),
        }
    }

    /// This device's counters.
    pub fn counts(&self) -> Counts {
        Counts {
            devices: 1,
            enrolled: u64::from(self.enrolled.load(Ordering::Relaxed)),
            connected: u64::from(self.connected.load(Ordering::Relaxed)),
            readings: self.get(Count::Reading),
            read_failures: self.get(Count::ReadFailure),
            sent: self.get(Count::Sent),
            acknowledged: self.get(Count::Acknowledged),
            rejected: self.get(Count::Rejected),
            dropped: self.get(Count::Dropped),
            buffered: self.buffered.load(Ordering::Relaxed),
            restored: self.get(Count::Restored),
            connects: self.get(Count::Connect),
            connect_failures: self.get(Count::ConnectFailure),
            enroll_failures: self.get(Count::EnrollFailure),
            flaky_drops: self.get(Count::FlakyDrop),
            downlinks: self.get(Count::Downlink),
            malformed_downlinks: self.get(Count::MalformedDownlink),
            claims_confirmed: self.get(Count::ClaimConfirmed),
            commands: self.get(Count::Command),
            renewals: self.get(Count::Renewal),
            ota_offers: self.get(Count::OtaOffer),
            ota_succeeded: self.get(Count::OtaSucceeded),
            ota_failed: self.get(Count::OtaFailed),
            ota_rolled_back: self.get(Count::OtaRolledBack),
            download_resumes: self.get(Count::DownloadResume),
            boot_crashes: self.get(Count::BootCrash),
        }
    }
}

/// Counters of one device or the sum over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Devices counted.
    pub devices: u64,
    /// Devices holding a certificate.
    pub enrolled: u64,
    /// Devices connected now.
    pub connected: u64,
    /// Readings taken and buffered.
    pub readings: u64,
    /// Sensor reads that failed (no reading).
    pub read_failures: u64,
    /// Readings published, resends included.
    pub sent: u64,
    /// Readings the server acknowledged (each counted once).
    pub acknowledged: u64,
    /// Readings the server refused.
    pub rejected: u64,
    /// Readings overwritten in a full ring before delivery.
    pub dropped: u64,
    /// Readings waiting in the rings.
    pub buffered: u64,
    /// Readings found in rings persisted by an earlier run.
    pub restored: u64,
    /// Connections made.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Enrollment attempts that failed.
    pub enroll_failures: u64,
    /// Connections dropped on purpose by `--flaky`.
    pub flaky_drops: u64,
    /// Downlinks received.
    pub downlinks: u64,
    /// Downlinks that could not be understood.
    pub malformed_downlinks: u64,
    /// Claims confirmed.
    pub claims_confirmed: u64,
    /// Commands answered.
    pub commands: u64,
    /// Certificate renewals completed.
    pub renewals: u64,
    /// Update offers accepted (downloads started).
    #[serde(default)]
    pub ota_offers: u64,
    /// Updates confirmed.
    #[serde(default)]
    pub ota_succeeded: u64,
    /// Updates refused or failed.
    #[serde(default)]
    pub ota_failed: u64,
    /// Trial images rolled back.
    #[serde(default)]
    pub ota_rolled_back: u64,
    /// Broken downloads resumed with a range request.
    #[serde(default)]
    pub download_resumes: u64,
    /// Trial boots that crashed (`--ota-fault crash-on-boot`).
    #[serde(default)]
    pub boot_crashes: u64,
}

impl Counts {
    /// Connections beyond each device's first.
    pub fn reconnects(&self) -> u64 {
        self.connects
            .saturating_sub(self.enrolled.min(self.connects))
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.devices += o.devices;
        self.enrolled += o.enrolled;
        self.connected += o.connected;
        self.readings += o.readings;
        self.read_failures += o.read_failures;
        self.sent += o.sent;
        self.acknowledged += o.acknowledged;
        self.rejected += o.rejected;
        self.dropped += o.dropped;
        self.buffered += o.buffered;
        self.restored += o.restored;
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.enroll_failures += o.enroll_failures;
        self.flaky_drops += o.flaky_drops;
        self.downlinks += o.downlinks;
        self.malformed_downlinks += o.malformed_downlinks;
        self.claims_confirmed += o.claims_confirmed;
        self.commands += o.commands;
        self.renewals += o.renewals;
        self.ota_offers += o.ota_offers;
        self.ota_succeeded += o.ota_succeeded;
        self.ota_failed += o.ota_failed;
        self.ota_rolled_back += o.ota_rolled_back;
        self.download_resumes += o.download_resumes;
        self.boot_crashes += o.boot_crashes;
    }
}

/// One device in the summary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReport {
    /// Device id.
    pub id: String,
    /// Whether it holds a certificate.
    pub enrolled: bool,
    /// Provisioning state (`unbound`, `bound`, `needs a new token`, …).
    pub state: String,
    /// Current certificate serial.
    pub serial: Option<String>,
    /// Boot number of this run (sequence numbers are `boot << 32 | n`).
    pub boot: u64,
    /// Highest sequence number acknowledged in this run.
    pub last_acked_seq: Option<u64>,
    /// Its counters.
    pub counts: Counts,
    /// The last failure it saw.
    pub last_error: Option<String>,
    /// The version of the firmware it runs.
    #[serde(default)]
    pub firmware: Option<String>,
    /// Its update fault (`--ota-fault`), if any.
    #[serde(default)]
    pub ota_fault: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_reconnects_exclude_first_connections() {
        let a = DeviceStats::default();
        a.set_enrolled(true);
        a.add(Count::Connect, 3);
        a.add(Count::Acknowledged, 10);
        a.set_last_acked(7);
        a.set_last_acked(5);
        let b = DeviceStats::default();
        b.bump(Count::ReadFailure);
        let mut total = Counts::default();
        total += a.counts();
        total += b.counts();
        assert_eq!(total.devices, 2);
        assert_eq!(total.acknowledged, 10);
        assert_eq!(total.read_failures, 1);
        assert_eq!(total.reconnects(), 2);
        let r = a.report("d");
        assert_eq!(r.last_acked_seq, Some(7));
        assert_eq!(b.report("e").last_acked_seq, None);
    }
}
