//! The simulated device's firmware: two A/B slots as files in its state
//! dir, the core's update machine (`rampart_core::ota::update::Ota`) over
//! them, and its persisted state, so that the version a device runs after
//! a reboot is the version of the image in its active slot.
//!
//! The core decides everything (which offers to take, when an image is
//! complete and sound, which slot boots, when to roll back); this module
//! only owns the bytes: slot files, the manifest of each slot, and
//! `ota.bin` (the machine's [`OtaState`] in the core's byte layout), written
//! durably whenever the core says the state changed, before the device acts
//! on it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rampart_core::ota::Manifest;
use rampart_core::ota::TrustedKey;
use rampart_core::ota::bundle::SIGNATURE_LEN;
use rampart_core::ota::update::{
    Boot, FlashSlot, Next, Ota, OtaConfig, OtaError, OtaParts, OtaReport, OtaState, OtaStatus,
    STATE_LEN, Slot, encode_ota_report, failure_report,
};
use tracing::warn;

use crate::faults::FaultKind;
use crate::statedir::{DeviceDir, StateError};

/// The file name letter of a slot.
fn letter(slot: Slot) -> char {
    match slot {
        Slot::A => 'a',
        Slot::B => 'b',
    }
}

/// Two firmware slots as files (`slot-a.bin`, `slot-b.bin`) of a fixed
/// capacity, written strictly in sequence as flash is.
#[derive(Debug, Clone)]
pub struct SlotFiles {
    dir: DeviceDir,
    capacity: u64,
}

impl SlotFiles {
    /// The slots of the device in `dir`, each holding `capacity` bytes.
    pub fn new(dir: DeviceDir, capacity: u64) -> Self {
        Self { dir, capacity }
    }

    /// The file of `slot`.
    pub fn path(&self, slot: Slot) -> PathBuf {
        self.dir.slot_path(letter(slot))
    }
}

/// Why a slot file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A write did not continue where the slot ends (flash is written in sequence).
    #[error("slot {slot:?} holds {len} bytes; a write at {offset} would leave a gap or overwrite")]
    OutOfSequence {
        /// The slot.
        slot: Slot,
        /// Its current length.
        len: u64,
        /// The offset asked for.
        offset: u64,
    },
    /// The write would go beyond the slot's capacity.
    #[error("slot {slot:?} holds at most {capacity} bytes")]
    Full {
        /// The slot.
        slot: Slot,
        /// Its capacity.
        capacity: u64,
    },
}

impl FlashSlot for SlotFiles {
    type Error = FlashError;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Empties the slot file and forgets its manifest.
    fn erase(&mut self, slot: Slot) -> Result<(), FlashError> {
        self.dir.remove_slot_manifest(letter(slot))?;
        let path = self.path(slot);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map(drop)
            .map_err(|source| StateError::Io { path, source }.into())
    }

    fn write(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let path = self.path(slot);
        let io = |source| {
            FlashError::State(StateError::Io {
                path: path.clone(),
                source,
            })
        };
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len != offset {
            return Err(FlashError::OutOfSequence { slot, len, offset });
        }
        let end = offset.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        if end > self.capacity {
            return Err(FlashError::Full {
                slot,
                capacity: self.capacity,
            });
        }
        file.write_all(data).map_err(io)
    }
}

/// What every device of a fleet is built with: its type, factory version,
/// embedded keys and boot policy.
#[derive(Debug, Clone)]
pub struct FirmwareBuild {
    /// The device type (manifests for another are refused).
    pub device_type: String,
    /// The version of the factory image (a slot without a manifest).
    pub factory_version: String,
    /// Keys trusted to sign firmware.
    pub trusted_keys: Arc<[TrustedKey]>,
    /// Trial boots allowed before a rollback.
    pub max_boot_attempts: u8,
    /// How long a trial image has to confirm, ms.
    pub confirm_timeout_ms: u64,
    /// Bytes one slot holds.
    pub slot_size: u64,
}

/// What runs after a boot ([`Firmware::boot_through`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// A confirmed image (possibly the one rolled back to).
    Normal,
    /// A new image on trial: it confirms once connected and published.
    Trial {
        /// Its deadline (fleet clock, ms).
        deadline_ms: u64,
    },
    /// `hang`: the image on trial does nothing until its deadline.
    Hung {
        /// Its deadline (fleet clock, ms).
        deadline_ms: u64,
    },
    /// `no-network`: the image on trial runs but cannot connect.
    Offline {
        /// Its deadline (fleet clock, ms).
        deadline_ms: u64,
    },
}

/// What happened on the way ([`Firmware::boot_through`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootLog {
    /// Trial boots that crashed.
    pub crashes: u32,
    /// Whether the core rolled a crash-looping image back.
    pub rolled_back: bool,
}

/// One device's firmware: the update machine (kept as [`OtaParts`], since
/// an async device task cannot hold the machine's borrow of its own
/// configuration), its slots, and the version of the running image.
#[derive(Debug)]
pub struct Firmware {
    build: FirmwareBuild,
    dir: DeviceDir,
    flash: SlotFiles,
    running_version: String,
    machine: OtaParts,
    /// The manifest of the image being received (stored with the slot on
    /// success).
    receiving_manifest: Vec<u8>,
}

fn config<'a>(build: &'a FirmwareBuild, running_version: &'a str) -> OtaConfig<'a> {
    OtaConfig {
        device_type: &build.device_type,
        running_version,
        trusted_keys: &build.trusted_keys,
        max_boot_attempts: build.max_boot_attempts,
        confirm_timeout_ms: build.confirm_timeout_ms,
    }
}

/// The version of the image in `slot`: its manifest's, or the factory version.
fn slot_version(build: &FirmwareBuild, dir: &DeviceDir, slot: Slot) -> Result<String, StateError> {
    let Some(bytes) = dir.slot_manifest(letter(slot))? else {
        return Ok(build.factory_version.clone());
    };
    Manifest::decode(&bytes)
        .map(|m| m.version.as_str().to_owned())
        .map_err(|e| StateError::Corrupt {
            path: dir.path().join(format!("slot-{}.manifest", letter(slot))),
            reason: e.to_string(),
        })
}

/// Writes the state if the core changed it.
fn persist(dir: &DeviceDir, ota: &mut Ota<'_>) -> Result<(), StateError> {
    if !ota.state_changed() {
        return Ok(());
    }
    let mut buf = [0u8; STATE_LEN];
    let n = ota
        .state()
        .to_bytes(&mut buf)
        .map_err(|_| StateError::Corrupt {
            path: dir.path().join("ota.bin"),
            reason: "the update state does not fit its own layout".to_owned(),
        })?;
    dir.save_ota_state(buf.get(..n).unwrap_or(&buf))?;
    ota.mark_persisted();
    Ok(())
}

/// One boot from `state`: the running version is that of the active slot's
/// image; [`Ota::start`] counts a trial boot or rolls back (then the
/// previous slot's image is the one that runs).
fn start(
    build: &FirmwareBuild,
    dir: &DeviceDir,
    state: OtaState,
    now_ms: u64,
) -> Result<(String, OtaParts, Boot), StateError> {
    let version = slot_version(build, dir, state.active())?;
    let (mut ota, boot) = Ota::start(config(build, &version), state, now_ms);
    persist(dir, &mut ota)?;
    let parts = ota.into_parts();
    let version = match boot {
        Boot::RollBack => slot_version(build, dir, parts.state().active())?,
        _ => version,
    };
    Ok((version, parts, boot))
}

impl Firmware {
    /// Boots the device's firmware from its state dir: reads the persisted
    /// state (a missing or unreadable one is a factory state: slot A, minimum
    /// security version 0), runs [`Ota::start`] and persists what it changed.
    pub fn boot(
        build: FirmwareBuild,
        dir: DeviceDir,
        now_ms: u64,
    ) -> Result<(Self, Boot), StateError> {
        let state = match dir.ota_state()? {
            None => OtaState::new(Slot::A, 0),
            Some(bytes) => OtaState::from_bytes(&bytes).unwrap_or_else(|e| {
                warn!(path = %dir.path().join("ota.bin").display(), reason = %e, "update state unreadable; starting from the factory state");
                OtaState::new(Slot::A, 0)
            }),
        };
        let (running_version, machine, boot) = start(&build, &dir, state, now_ms)?;
        let firmware = Firmware {
            flash: SlotFiles::new(dir.clone(), build.slot_size),
            running_version,
            machine,
            receiving_manifest: Vec::new(),
            build,
            dir,
        };
        Ok((firmware, boot))
    }

    /// Reboots: a new [`Ota::start`] from the current state (what was
    /// being received is lost, as RAM is).
    pub fn reboot(&mut self, now_ms: u64) -> Result<Boot, StateError> {
        let state = *self.machine.state();
        let (version, machine, boot) = start(&self.build, &self.dir, state, now_ms)?;
        self.running_version = version;
        self.machine = machine;
        self.receiving_manifest.clear();
        Ok(boot)
    }

    /// Boots through the device's update fault until an image runs: a
    /// trial image with `crash-on-boot` crashes on every boot until the
    /// core rolls it back (then the previous image boots normally); `hang`
    /// and `no-network` keep the trial image (which the deadline will roll
    /// back). `boot` is what the last [`Ota::start`] found.
    pub fn boot_through(
        &mut self,
        mut boot: Boot,
        fault: Option<FaultKind>,
        now_ms: u64,
    ) -> Result<(Running, BootLog), StateError> {
        let mut log = BootLog::default();
        // Each pass is one boot; the core rolls back after max_boot_attempts.
        let most = usize::from(self.build.max_boot_attempts).saturating_add(2);
        for _ in 0..most {
            match boot {
                Boot::Normal => return Ok((Running::Normal, log)),
                Boot::RollBack => log.rolled_back = true,
                Boot::Trial { deadline_ms } => match fault {
                    Some(FaultKind::CrashOnBoot) => log.crashes = log.crashes.saturating_add(1),
                    Some(FaultKind::Hang) => return Ok((Running::Hung { deadline_ms }, log)),
                    Some(FaultKind::NoNetwork) => {
                        return Ok((Running::Offline { deadline_ms }, log));
                    }
                    Some(FaultKind::CorruptDownload) | None => {
                        return Ok((Running::Trial { deadline_ms }, log));
                    }
                },
            }
            boot = self.reboot(now_ms)?;
        }
        // The core rolls back within max_boot_attempts + 1 boots; reaching
        // this means the state is not what it wrote.
        Err(StateError::Corrupt {
            path: self.dir.path().join("ota.bin"),
            reason: format!("still booting on trial after {most} boots"),
        })
    }

    /// Runs `f` on the machine with its configuration, then persists what
    /// changed (before the caller acts on the result).
    fn with_ota<R>(
        &mut self,
        f: impl FnOnce(&mut Ota<'_>, &mut SlotFiles) -> R,
    ) -> (R, Result<(), StateError>) {
        let mut ota = Ota::from_parts(
            config(&self.build, &self.running_version),
            self.machine.clone(),
        );
        let r = f(&mut ota, &mut self.flash);
        let persisted = persist(&self.dir, &mut ota);
        self.machine = ota.into_parts();
        (r, persisted)
    }

    /// Reads the machine.
    fn peek<R>(&self, f: impl FnOnce(&Ota<'_>) -> R) -> R {
        let ota = Ota::from_parts(
            config(&self.build, &self.running_version),
            self.machine.clone(),
        );
        f(&ota)
    }

    /// The version of the running image.
    pub fn running_version(&self) -> &str {
        &self.running_version
    }

    /// The device type.
    pub fn device_type(&self) -> &str {
        &self.build.device_type
    }

    /// The persisted state.
    pub fn state(&self) -> &OtaState {
        self.machine.state()
    }

    /// The slot files.
    pub fn flash(&self) -> &SlotFiles {
        &self.flash
    }

    /// An offer: the core checks it and erases the inactive slot; returns
    /// the image size to download.
    pub fn offer(
        &mut self,
        manifest: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<u64, OtaError> {
        let (r, persisted) = self.with_ota(|ota, flash| ota.offer(manifest, signature, flash));
        if r.is_ok() {
            self.receiving_manifest = manifest.to_vec();
        }
        persisted.map_err(|_| OtaError::Flash)?;
        r
    }

    /// The SHA-256 of the image being received.
    pub fn receiving_sha256(&self) -> Option<[u8; 32]> {
        self.peek(|ota| ota.receiving_sha256().copied())
    }

    /// The SHA-256 of the update in progress: the image being received,
    /// or the new image awaiting its reboot or on trial (docs/ota.md §2: an
    /// offer for it again is ignored, not refused).
    pub fn update_in_progress(&self) -> Option<[u8; 32]> {
        if let Some(sha) = self.receiving_sha256() {
            return Some(sha);
        }
        if !self.state().pending() {
            return None;
        }
        let bytes = self
            .dir
            .slot_manifest(letter(self.state().active()))
            .ok()
            .flatten()?;
        Manifest::decode(&bytes).ok().map(|m| m.image_sha256)
    }

    /// The next chunk of the image; returns `(bytes so far, total)`.
    pub fn write(&mut self, data: &[u8]) -> Result<(u64, u64), OtaError> {
        self.with_ota(|ota, flash| ota.write_chunk(data, flash)).0
    }

    /// Discards the download in progress (the slot is erased).
    pub fn abort(&mut self) -> bool {
        self.receiving_manifest.clear();
        self.with_ota(|ota, flash| ota.abort_download(flash)).0
    }

    /// The whole image arrived: the core checks length and hash and, if
    /// sound, selects the new slot pending. The slot's manifest is stored
    /// before the state that selects it, so a crash in between boots the
    /// old slot with the old state.
    pub fn finish(&mut self) -> Result<Next, OtaError> {
        let target = self.state().active().other();
        if self.peek(|ota| ota.receiving()) && !self.receiving_manifest.is_empty() {
            let stored = self
                .dir
                .save_slot_manifest(letter(target), &self.receiving_manifest);
            if let Err(e) = stored {
                warn!(path = %self.dir.path().display(), reason = %e, "cannot store the slot's manifest");
                self.abort();
                return Err(OtaError::Flash);
            }
        }
        let (r, persisted) = self.with_ota(|ota, flash| ota.finish(flash));
        self.receiving_manifest.clear();
        persisted.map_err(|_| OtaError::Flash)?;
        r
    }

    /// The image on trial connected and published: confirm it.
    pub fn confirm(&mut self, now_ms: u64) -> Result<Next, StateError> {
        let (r, persisted) = self.with_ota(|ota, _| ota.confirm(now_ms));
        persisted.map(|()| r)
    }

    /// Time passes: a trial image past its deadline rolls back.
    pub fn tick(&mut self, now_ms: u64) -> Result<Next, StateError> {
        let (r, persisted) = self.with_ota(|ota, _| ota.tick(now_ms));
        persisted.map(|()| r)
    }

    /// The trial deadline (fleet clock, ms), while an image is on trial.
    pub fn trial_deadline(&self) -> Option<u64> {
        self.peek(|ota| ota.trial_deadline())
    }

    /// The version being received or on trial.
    pub fn update_version(&self) -> String {
        self.peek(|ota| ota.update_version().to_owned())
    }

    /// The outcome still to report (`succeeded`, `rolled-back`), encoded,
    /// with its status.
    pub fn pending_report(&self) -> Option<(OtaStatus, Vec<u8>)> {
        self.peek(|ota| ota.pending_report().map(|r| (r.status, encode(&r))))
    }

    /// The outcome report was delivered.
    pub fn report_sent(&mut self) -> Result<(), StateError> {
        self.with_ota(|ota, _| ota.report_sent()).1
    }

    /// The `downloading` report of the image being received, encoded.
    pub fn progress_report(&self) -> Option<Vec<u8>> {
        self.peek(|ota| ota.progress_report().map(|r| encode(&r)))
    }

    /// A report of `status` for the update in progress (or on trial).
    pub fn status_report(&self, status: OtaStatus) -> Vec<u8> {
        let version = self.update_version();
        encode(&OtaReport {
            status,
            version: &version,
            progress: None,
            reason: None,
        })
    }
}

/// A `failed` report for an update of `version`.
pub fn failed_report(version: &str, error: &OtaError) -> Vec<u8> {
    encode(&failure_report(version, error))
}

/// A `failed` report with the reason `download` (the image could not be fetched).
pub fn download_failed_report(version: &str) -> Vec<u8> {
    encode(&OtaReport {
        status: OtaStatus::Failed,
        version,
        progress: None,
        reason: Some("download"),
    })
}

fn encode(report: &OtaReport<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    match encode_ota_report(report, &mut buf) {
        Ok(n) => buf.truncate(n),
        // A version is at most 64 bytes: 256 always fits.
        Err(_) => buf = b"{}".to_vec(),
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statedir::StateDir;
    use rampart_core::ota::parse_head;
    use rampart_ota::{SignRequest, SigningKey, sign};

    struct Bench {
        _tmp: tempfile::TempDir,
        dir: DeviceDir,
        key: SigningKey,
        build: FirmwareBuild,
    }

    fn bench() -> Bench {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(tmp.path(), Some("fw")).expect("state dir");
        let dir = state.device(&state.device_id(1).expect("id")).expect("dir");
        let key = SigningKey::generate();
        let build = FirmwareBuild {
            device_type: "rampart-sim".into(),
            factory_version: "1.0.0".into(),
            trusted_keys: vec![TrustedKey::new(*key.public_key().bytes())].into(),
            max_boot_attempts: 3,
            confirm_timeout_ms: 1_000,
            slot_size: 4096,
        };
        Bench {
            _tmp: tmp,
            dir,
            key,
            build,
        }
    }

    fn image(version: &str) -> Vec<u8> {
        format!("simulated firmware {version} ")
            .repeat(40)
            .into_bytes()
    }

    fn bundle(b: &Bench, version: &str, security_version: u32) -> Vec<u8> {
        let req = SignRequest {
            device_type: "rampart-sim",
            version,
            security_version,
            created_at_ms: 1,
        };
        sign(&image(version), &b.key, &req).expect("sign")
    }

    /// Offers `bundle`, writes its image in 100-byte chunks (with `edit`
    /// applied), and finishes.
    fn install(
        fw: &mut Firmware,
        bundle: &[u8],
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Next, OtaError> {
        let head = parse_head(bundle).expect("head");
        let size = fw.offer(head.manifest_bytes, &head.signature)?;
        let mut img = bundle
            .get(bundle.len() - usize::try_from(size).expect("size")..)
            .expect("image")
            .to_vec();
        edit(&mut img);
        for chunk in img.chunks(100) {
            fw.write(chunk)?;
        }
        fw.finish()
    }

    #[test]
    fn slot_files_are_written_in_sequence_within_capacity() {
        let b = bench();
        let mut flash = SlotFiles::new(b.dir.clone(), 10);
        flash.erase(Slot::B).expect("erase");
        flash.write(Slot::B, 0, b"hello").expect("write");
        flash.write(Slot::B, 5, b"12345").expect("write");
        assert_eq!(
            std::fs::read(b.dir.slot_path('b')).expect("read"),
            b"hello12345"
        );
        assert!(matches!(
            flash.write(Slot::B, 3, b"x"),
            Err(FlashError::OutOfSequence { len: 10, .. })
        ));
        assert!(matches!(
            flash.write(Slot::B, 10, b"x"),
            Err(FlashError::Full { capacity: 10, .. })
        ));
        b.dir.save_slot_manifest('b', b"m").expect("manifest");
        flash.erase(Slot::B).expect("erase");
        assert_eq!(std::fs::read(b.dir.slot_path('b')).expect("read"), b"");
        assert_eq!(b.dir.slot_manifest('b').expect("read"), None);
        assert_eq!(std::fs::read(b.dir.slot_path('a')).ok(), None, "untouched");
    }

    #[test]
    fn an_update_installs_into_the_other_slot_and_survives_a_restart() {
        let b = bench();
        let (mut fw, boot) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        assert_eq!(boot, Boot::Normal);
        assert_eq!(fw.running_version(), "1.0.0");
        let v2 = bundle(&b, "1.1.0", 2);
        assert_eq!(install(&mut fw, &v2, |_| {}), Ok(Next::PersistAndReboot));
        assert_eq!(
            std::fs::read(b.dir.slot_path('b')).expect("slot"),
            image("1.1.0")
        );
        // The state on disk selects slot B on trial before the reboot.
        let on_disk = OtaState::from_bytes(&b.dir.ota_state().expect("read").expect("written"))
            .expect("valid");
        assert_eq!((on_disk.active(), on_disk.pending()), (Slot::B, true));

        let sha = parse_head(&v2).expect("head").manifest.image_sha256;
        assert_eq!(fw.update_in_progress(), Some(sha), "awaiting its reboot");
        let boot = fw.reboot(100).expect("reboot");
        assert_eq!(boot, Boot::Trial { deadline_ms: 1_100 });
        assert_eq!(fw.update_in_progress(), Some(sha), "on trial");
        assert_eq!(fw.running_version(), "1.1.0");
        assert_eq!(
            fw.boot_through(boot, None, 100).expect("boot"),
            (Running::Trial { deadline_ms: 1_100 }, BootLog::default())
        );
        assert_eq!(
            String::from_utf8(fw.status_report(OtaStatus::PendingConfirm)).expect("utf-8"),
            r#"{"status":"pending-confirm","version":"1.1.0"}"#
        );
        assert_eq!(fw.confirm(500).expect("persisted"), Next::Nothing);
        assert_eq!(fw.trial_deadline(), None);
        assert_eq!(fw.update_in_progress(), None, "done");
        assert_eq!(fw.state().min_security_version(), 2);

        // A restarted simulator: the same slot, version and pending report.
        let (mut again, boot) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        assert_eq!(boot, Boot::Normal);
        assert_eq!(again.running_version(), "1.1.0");
        let (status, report) = again.pending_report().expect("succeeded to report");
        assert_eq!(status, OtaStatus::Succeeded);
        assert_eq!(
            String::from_utf8(report).expect("utf-8"),
            r#"{"status":"succeeded","version":"1.1.0"}"#
        );
        again.report_sent().expect("persisted");
        let (again, _) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        assert_eq!(again.pending_report(), None);
        // The same offer again is not newer; an older security version is a downgrade.
        let mut again = again;
        let head = parse_head(&v2).expect("head");
        assert_eq!(
            again.offer(head.manifest_bytes, &head.signature),
            Err(OtaError::NotNewer)
        );
        let old_sv = bundle(&b, "1.2.0", 1);
        assert_eq!(
            install(&mut again, &old_sv, |_| {}).map_err(|e| e.code()),
            Err("downgrade")
        );
    }

    #[test]
    fn a_corrupted_download_is_discarded_and_reported() {
        let b = bench();
        let (mut fw, _) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        let v2 = bundle(&b, "1.1.0", 0);
        let err = install(&mut fw, &v2, |img| {
            if let Some(byte) = img.get_mut(300) {
                *byte ^= 0xff;
            }
        })
        .expect_err("hash mismatch");
        assert_eq!(err.code(), "hash-mismatch");
        assert_eq!(std::fs::read(b.dir.slot_path('b')).expect("slot"), b"");
        assert_eq!(b.dir.slot_manifest('b').expect("read"), None);
        assert_eq!(fw.state(), &OtaState::new(Slot::A, 0));
        assert_eq!(
            String::from_utf8(failed_report("1.1.0", &err)).expect("utf-8"),
            r#"{"status":"failed","version":"1.1.0","reason":"hash-mismatch"}"#
        );
        // Aborting mid-download (a cancel) also erases the slot.
        let head = parse_head(&v2).expect("head");
        fw.offer(head.manifest_bytes, &head.signature)
            .expect("offer");
        fw.write(b"partial").expect("chunk");
        assert_eq!(fw.receiving_sha256(), Some(head.manifest.image_sha256));
        assert_eq!(fw.update_in_progress(), Some(head.manifest.image_sha256));
        assert!(fw.abort());
        assert_eq!(fw.receiving_sha256(), None);
        assert_eq!(std::fs::read(b.dir.slot_path('b')).expect("slot"), b"");
    }

    #[test]
    fn crash_on_boot_loops_until_the_rollback() {
        let b = bench();
        let (mut fw, _) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        install(&mut fw, &bundle(&b, "2.0.0", 5), |_| {}).expect("install");
        let boot = fw.reboot(10).expect("reboot");
        let (running, log) = fw
            .boot_through(boot, Some(FaultKind::CrashOnBoot), 10)
            .expect("boots");
        assert_eq!(running, Running::Normal);
        assert_eq!(
            log,
            BootLog {
                crashes: 3,
                rolled_back: true
            }
        );
        assert_eq!(fw.running_version(), "1.0.0");
        assert_eq!(fw.state().active(), Slot::A);
        assert_eq!(fw.state().min_security_version(), 0, "not raised");
        let (status, report) = fw.pending_report().expect("report");
        assert_eq!(status, OtaStatus::RolledBack);
        assert_eq!(
            String::from_utf8(report).expect("utf-8"),
            r#"{"status":"rolled-back","version":"2.0.0","reason":"crash-loop"}"#
        );
    }

    #[test]
    fn hang_and_no_network_roll_back_at_the_deadline() {
        for fault in [FaultKind::Hang, FaultKind::NoNetwork] {
            let b = bench();
            let (mut fw, _) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
            install(&mut fw, &bundle(&b, "2.0.0", 5), |_| {}).expect("install");
            let boot = fw.reboot(10).expect("reboot");
            let (running, log) = fw.boot_through(boot, Some(fault), 10).expect("boots");
            let expected = match fault {
                FaultKind::Hang => Running::Hung { deadline_ms: 1_010 },
                _ => Running::Offline { deadline_ms: 1_010 },
            };
            assert_eq!((running, log), (expected, BootLog::default()));
            assert_eq!(fw.running_version(), "2.0.0");
            assert_eq!(fw.tick(1_010).expect("tick"), Next::Nothing);
            assert_eq!(fw.tick(1_011).expect("tick"), Next::PersistAndReboot);
            let boot = fw.reboot(1_012).expect("reboot");
            assert_eq!(boot, Boot::Normal);
            assert_eq!(fw.running_version(), "1.0.0");
            let (status, report) = fw.pending_report().expect("report");
            assert_eq!(status, OtaStatus::RolledBack);
            assert!(
                String::from_utf8(report)
                    .expect("utf-8")
                    .contains("not-confirmed"),
                "{fault}"
            );
        }
    }

    #[test]
    fn a_corrupt_state_file_is_a_factory_state_and_a_bad_manifest_is_refused() {
        let b = bench();
        b.dir.save_ota_state(b"garbage").expect("write");
        let (fw, boot) = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect("boot");
        assert_eq!(boot, Boot::Normal);
        assert_eq!(fw.state(), &OtaState::new(Slot::A, 0));
        b.dir
            .save_slot_manifest('a', b"not a manifest")
            .expect("write");
        let err = Firmware::boot(b.build.clone(), b.dir.clone(), 0).expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}
