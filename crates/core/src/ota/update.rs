//! The device's update state machine, modelled on ESP-IDF's pending-verify
//! rollback and MCUboot's test-then-confirm swap:
//!
//! ```text
//! Idle ─offer (signature, key, device type, version, security version ≥ minimum)→ Receiving
//! Receiving ─chunks into the inactive slot, hashed─→ Receiving ─finish, hash ok→ AwaitingReboot
//! Receiving ─hash mismatch, short or long image, flash error→ Idle (slot discarded, report failed)
//! AwaitingReboot ─host persists the state and reboots→ (boot) Trial { deadline }
//! Trial ─confirm (connected and published) before the deadline→ Idle: minimum security version raised
//! Trial ─deadline passed (hang, no connection)→ rolled back to the previous slot, reboot
//! boot with more than `max_boot_attempts` trial boots (crash loop)→ rolled back, reboot
//! ```
//!
//! The persisted [`OtaState`] is what the bootloader and the next boot see:
//! the active slot, whether it is pending (on trial), how many times it was
//! booted on trial, the minimum security version, and an outcome still to
//! be reported. The host writes [`OtaState::to_bytes`] to flash whenever
//! [`Ota::state_changed`] says so, *before* acting (rebooting, running
//! application code), so a power cut at any point leaves a state the next
//! boot handles: a crash during the trial counts as an attempt.
//!
//! The minimum security version is raised only on confirmation: a trial
//! image that fails leaves the previous image bootable.

use core::fmt;

use sha2::{Digest, Sha256};

use super::bundle::{SIGNATURE_LEN, TrustedKey, VerifyError, verify_manifest};
use super::semver::{MAX_VERSION_LEN, Version};
use crate::LayoutError;
use crate::layout::{Writer, check_crc, open};
pub use crate::payload::{OtaReport, OtaStatus, encode_ota_report};

/// One of the two firmware slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Flash holding the two firmware slots, implemented by the host (flash
/// partitions on a board, files in the simulator).
pub trait FlashSlot {
    /// The host's flash error.
    type Error;
    /// Bytes one slot holds.
    fn capacity(&self) -> u64;
    /// Erases `slot` (before writing a new image, and to discard a bad one).
    fn erase(&mut self, slot: Slot) -> Result<(), Self::Error>;
    /// Writes `data` at `offset` in `slot`.
    fn write(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), Self::Error>;
}

/// A version string kept by value (for reports after the manifest is gone).
#[derive(Clone, Copy, PartialEq, Eq)]
struct VersionText {
    len: u8,
    bytes: [u8; MAX_VERSION_LEN],
}

impl VersionText {
    const EMPTY: VersionText = VersionText {
        len: 0,
        bytes: [0; MAX_VERSION_LEN],
    };

    fn new(s: &str) -> Self {
        let mut out = Self::EMPTY;
        let n = s.len().min(MAX_VERSION_LEN);
        if let (Some(dst), Some(src)) = (out.bytes.get_mut(..n), s.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
            out.len = u8::try_from(n).unwrap_or(0);
        }
        out
    }

    fn as_str(&self) -> &str {
        self.bytes
            .get(..usize::from(self.len))
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl fmt::Debug for VersionText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why the last trial image was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackReason {
    /// It was booted more than the allowed number of times without
    /// confirming: it crashes or resets on boot.
    CrashLoop,
    /// It did not connect and publish before the deadline.
    NotConfirmed,
}

impl RollbackReason {
    /// The stable code reported on `ota/up`.
    pub fn code(&self) -> &'static str {
        match self {
            RollbackReason::CrashLoop => "crash-loop",
            RollbackReason::NotConfirmed => "not-confirmed",
        }
    }
}

/// An outcome to report once the device is connected (it may have been
/// decided in another image, before a reboot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    None,
    Succeeded,
    RolledBack(RollbackReason),
}

/// Persisted layout magic.
const STATE_MAGIC: [u8; 4] = *b"ROTA";
/// Persisted layout version.
const STATE_VERSION: u16 = 1;
/// Length of [`OtaState::to_bytes`].
pub const STATE_LEN: usize = 4 + 2 + 1 + 1 + 1 + 1 + 4 + 4 + 1 + MAX_VERSION_LEN + 4;

/// What survives reboots, in flash, as [`STATE_LEN`] bytes:
///
/// | bytes | field |
/// |---|---|
/// | 4 | magic `ROTA` |
/// | 2 | layout version (1) |
/// | 1 | active slot (0 = A, 1 = B) |
/// | 1 | flags: bit 0 pending (the active slot is on trial) |
/// | 1 | trial boots so far |
/// | 1 | outcome to report: 0 none, 1 succeeded, 2 rolled back (crash loop), 3 rolled back (not confirmed) |
/// | 4 | minimum security version |
/// | 4 | security version of the trial image |
/// | 1 + 64 | version of the trial (or last) image: length, bytes zero-padded |
/// | 4 | CRC-32 of all the above |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaState {
    active: Slot,
    pending: bool,
    boot_attempts: u8,
    outcome: Outcome,
    min_security_version: u32,
    trial_security_version: u32,
    trial_version: VersionText,
}

impl OtaState {
    /// A device's first state: running from `active`, nothing pending, a
    /// minimum security version set at manufacture.
    pub fn new(active: Slot, min_security_version: u32) -> Self {
        OtaState {
            active,
            pending: false,
            boot_attempts: 0,
            outcome: Outcome::None,
            min_security_version,
            trial_security_version: 0,
            trial_version: VersionText::EMPTY,
        }
    }

    /// The slot to boot.
    pub fn active(&self) -> Slot {
        self.active
    }

    /// Whether the active slot is on trial (not yet confirmed).
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Trial boots of the pending image so far.
    pub fn boot_attempts(&self) -> u8 {
        self.boot_attempts
    }

    /// The lowest security version this device installs.
    pub fn min_security_version(&self) -> u32 {
        self.min_security_version
    }

    /// Writes the persisted form into `buf` (at least [`STATE_LEN`] bytes);
    /// returns the length.
    pub fn to_bytes(&self, buf: &mut [u8]) -> Result<usize, crate::BufferTooSmall> {
        let out = buf.get_mut(..STATE_LEN).ok_or(crate::BufferTooSmall)?;
        let outcome: u8 = match self.outcome {
            Outcome::None => 0,
            Outcome::Succeeded => 1,
            Outcome::RolledBack(RollbackReason::CrashLoop) => 2,
            Outcome::RolledBack(RollbackReason::NotConfirmed) => 3,
        };
        let mut w = Writer::new(out);
        let ok = w.put(&STATE_MAGIC)
            && w.u16(STATE_VERSION)
            && w.u8(match self.active {
                Slot::A => 0,
                Slot::B => 1,
            })
            && w.u8(u8::from(self.pending))
            && w.u8(self.boot_attempts)
            && w.u8(outcome)
            && w.u32(self.min_security_version)
            && w.u32(self.trial_security_version)
            && w.u8(self.trial_version.len)
            && w.put(&self.trial_version.bytes)
            && w.finish_with_crc();
        if ok {
            Ok(STATE_LEN)
        } else {
            Err(crate::BufferTooSmall)
        }
    }

    /// Reads the persisted form; refuses garbage, torn writes and out-of-range fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = open(bytes, STATE_LEN, STATE_MAGIC, STATE_VERSION)?;
        check_crc(bytes, STATE_LEN)?;
        let short = LayoutError::TooShort {
            needed: STATE_LEN,
            got: bytes.len(),
        };
        let active = match r.u8().ok_or(short)? {
            0 => Slot::A,
            1 => Slot::B,
            _ => return Err(LayoutError::Corrupt("active slot")),
        };
        let pending = match r.u8().ok_or(short)? {
            0 => false,
            1 => true,
            _ => return Err(LayoutError::Corrupt("flags")),
        };
        let boot_attempts = r.u8().ok_or(short)?;
        let outcome = match r.u8().ok_or(short)? {
            0 => Outcome::None,
            1 => Outcome::Succeeded,
            2 => Outcome::RolledBack(RollbackReason::CrashLoop),
            3 => Outcome::RolledBack(RollbackReason::NotConfirmed),
            _ => return Err(LayoutError::Corrupt("outcome")),
        };
        let min_security_version = r.u32().ok_or(short)?;
        let trial_security_version = r.u32().ok_or(short)?;
        let len = r.u8().ok_or(short)?;
        let bytes = r.take::<MAX_VERSION_LEN>().ok_or(short)?;
        let trial_version = VersionText { len, bytes };
        if usize::from(len) > MAX_VERSION_LEN
            || (len > 0 && Version::parse(trial_version.as_str()).is_err())
        {
            return Err(LayoutError::Corrupt("trial version"));
        }
        Ok(OtaState {
            active,
            pending,
            boot_attempts,
            outcome,
            min_security_version,
            trial_security_version,
            trial_version,
        })
    }
}

/// What the device knows at build time.
#[derive(Debug, Clone, Copy)]
pub struct OtaConfig<'k> {
    /// This device's type; offers for another are refused.
    pub device_type: &'k str,
    /// The version of the running image; offers not newer are refused.
    pub running_version: &'k str,
    /// Public keys trusted to sign firmware (embedded in the image).
    pub trusted_keys: &'k [TrustedKey],
    /// Trial boots allowed before the image counts as crash-looping.
    pub max_boot_attempts: u8,
    /// How long a trial image has to connect and publish, ms.
    pub confirm_timeout_ms: u64,
}

/// Why an offer or a download was refused (the device stays on its firmware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaError {
    /// The manifest, signature, size, device type or image hash failed.
    Verify(VerifyError),
    /// The offered security version is below the device's minimum.
    Downgrade {
        /// The offer's security version.
        offered: u32,
        /// The device's minimum.
        minimum: u32,
    },
    /// The offered version is not newer than the running one.
    NotNewer,
    /// Another update is in progress or on trial.
    Busy,
    /// No update is being received.
    NotReceiving,
    /// The flash failed; the slot was discarded.
    Flash,
}

impl OtaError {
    /// The stable code reported on `ota/up`.
    pub fn code(&self) -> &'static str {
        match self {
            OtaError::Verify(e) => e.code(),
            OtaError::Downgrade { .. } => "downgrade",
            OtaError::NotNewer => "not-newer",
            OtaError::Busy => "busy",
            OtaError::NotReceiving => "not-receiving",
            OtaError::Flash => "flash-error",
        }
    }
}

impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaError::Verify(e) => e.fmt(f),
            OtaError::Downgrade { offered, minimum } => write!(
                f,
                "security version {offered} is below this device's minimum {minimum} (downgrade refused)"
            ),
            OtaError::NotNewer => {
                f.write_str("the offered version is not newer than the running one")
            }
            OtaError::Busy => f.write_str("another update is in progress or awaiting confirmation"),
            OtaError::NotReceiving => f.write_str("no update is being received"),
            OtaError::Flash => {
                f.write_str("writing the update slot failed; the update was discarded")
            }
        }
    }
}

impl core::error::Error for OtaError {}

impl From<VerifyError> for OtaError {
    fn from(e: VerifyError) -> Self {
        OtaError::Verify(e)
    }
}

/// Where the running update is (RAM only; the persisted part is [`OtaState`]).
// Without an allocator the hasher cannot be boxed; one machine per device
// makes the size difference irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Receiving {
        expected: u64,
        written: u64,
        sha256: [u8; 32],
        hasher: Sha256,
        security_version: u32,
        version: VersionText,
    },
    AwaitingReboot,
    Trial {
        deadline_ms: u64,
    },
}

/// What [`Ota::start`] found at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// No update on trial: run normally.
    Normal,
    /// The running image is on trial: it must connect and publish, then
    /// call [`Ota::confirm`], before this time.
    Trial {
        /// The deadline (host clock, ms).
        deadline_ms: u64,
    },
    /// The trial image crash-looped; the state now selects the previous
    /// slot: persist it and reboot.
    RollBack,
}

/// What to do after [`Ota::finish`] or [`Ota::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Nothing,
    /// Persist the state and reboot (into [`OtaState::active`]).
    PersistAndReboot,
}

/// The device's update machine.
#[derive(Debug, Clone)]
pub struct Ota<'k> {
    config: OtaConfig<'k>,
    state: OtaState,
    phase: Phase,
    dirty: bool,
}

/// An update machine without its borrowed configuration ([`Ota::into_parts`]):
/// what a host keeps between calls when it cannot hold a borrow for the
/// machine's whole life (an async task that owns the configuration's
/// strings and keys next to the machine). Opaque: only [`Ota::from_parts`]
/// makes a machine of it again, so no phase can be forged.
#[derive(Debug, Clone)]
pub struct OtaParts {
    state: OtaState,
    phase: Phase,
    dirty: bool,
}

impl OtaParts {
    /// The persisted state.
    pub fn state(&self) -> &OtaState {
        &self.state
    }
}

impl<'k> Ota<'k> {
    /// Starts at boot from the persisted state (or [`OtaState::new`] when
    /// none was valid). A pending image counts one more trial boot; past
    /// [`OtaConfig::max_boot_attempts`] it is rolled back.
    pub fn start(config: OtaConfig<'k>, state: OtaState, now_ms: u64) -> (Self, Boot) {
        let mut ota = Ota {
            config,
            state,
            phase: Phase::Idle,
            dirty: false,
        };
        if !ota.state.pending {
            return (ota, Boot::Normal);
        }
        ota.state.boot_attempts = ota.state.boot_attempts.saturating_add(1);
        ota.dirty = true;
        if ota.state.boot_attempts > ota.config.max_boot_attempts {
            ota.roll_back(RollbackReason::CrashLoop);
            return (ota, Boot::RollBack);
        }
        let deadline_ms = now_ms.saturating_add(ota.config.confirm_timeout_ms);
        ota.phase = Phase::Trial { deadline_ms };
        (ota, Boot::Trial { deadline_ms })
    }

    /// Sets the configuration aside ([`OtaParts`]); nothing else changes.
    pub fn into_parts(self) -> OtaParts {
        OtaParts {
            state: self.state,
            phase: self.phase,
            dirty: self.dirty,
        }
    }

    /// The machine of [`Ota::into_parts`] again, with `config` (the same
    /// configuration within one boot; a new running version needs a new
    /// boot through [`Ota::start`]).
    pub fn from_parts(config: OtaConfig<'k>, parts: OtaParts) -> Self {
        Ota {
            config,
            state: parts.state,
            phase: parts.phase,
            dirty: parts.dirty,
        }
    }

    /// The persisted state.
    pub fn state(&self) -> &OtaState {
        &self.state
    }

    /// Whether an image is being received.
    pub fn receiving(&self) -> bool {
        matches!(self.phase, Phase::Receiving { .. })
    }

    /// The SHA-256 of the image being received, to recognise a re-sent offer.
    pub fn receiving_sha256(&self) -> Option<&[u8; 32]> {
        match &self.phase {
            Phase::Receiving { sha256, .. } => Some(sha256),
            _ => None,
        }
    }

    /// The deadline of the image on trial (host clock, ms), if one is.
    pub fn trial_deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Trial { deadline_ms } => Some(deadline_ms),
            _ => None,
        }
    }

    /// Discards the update being received (a `cancel` downlink, or a
    /// download that must start over): the inactive slot is erased and the
    /// machine is idle again, ready for an offer. Returns whether an update
    /// was being received; an update already switched is not touched.
    pub fn abort_download<F: FlashSlot>(&mut self, flash: &mut F) -> bool {
        if !self.receiving() {
            return false;
        }
        self.discard(flash);
        true
    }

    /// Whether the persisted state changed since the last
    /// [`Ota::mark_persisted`]: write it before acting.
    pub fn state_changed(&self) -> bool {
        self.dirty
    }

    /// The host wrote [`Ota::state`] to flash.
    pub fn mark_persisted(&mut self) {
        self.dirty = false;
    }

    fn roll_back(&mut self, reason: RollbackReason) {
        self.state.active = self.state.active.other();
        self.state.pending = false;
        self.state.boot_attempts = 0;
        self.state.outcome = Outcome::RolledBack(reason);
        self.phase = Phase::Idle;
        self.dirty = true;
    }

    /// An update was offered: its manifest bytes and signature. Checks the
    /// signature against the embedded keys, the device type, the size
    /// against the slot, the version and the security version; on success
    /// erases the inactive slot and returns the image size it expects.
    pub fn offer<F: FlashSlot>(
        &mut self,
        manifest_bytes: &[u8],
        signature: &[u8; SIGNATURE_LEN],
        flash: &mut F,
    ) -> Result<u64, OtaError> {
        if !matches!(self.phase, Phase::Idle) || self.state.pending {
            return Err(OtaError::Busy);
        }
        let signed = verify_manifest(manifest_bytes, signature, self.config.trusted_keys)?;
        let m = signed.manifest();
        if m.device_type != self.config.device_type {
            return Err(VerifyError::WrongDeviceType.into());
        }
        if m.image_size > flash.capacity() {
            return Err(VerifyError::Oversized {
                size: m.image_size,
                max: flash.capacity(),
            }
            .into());
        }
        if m.security_version < self.state.min_security_version {
            return Err(OtaError::Downgrade {
                offered: m.security_version,
                minimum: self.state.min_security_version,
            });
        }
        // A running version that does not parse (a development build) lets
        // any signed version through; the security version still applies.
        if let Ok(running) = Version::parse(self.config.running_version)
            && m.version <= running
        {
            return Err(OtaError::NotNewer);
        }
        flash
            .erase(self.state.active.other())
            .map_err(|_| OtaError::Flash)?;
        self.phase = Phase::Receiving {
            expected: m.image_size,
            written: 0,
            sha256: m.image_sha256,
            hasher: Sha256::new(),
            security_version: m.security_version,
            version: VersionText::new(m.version.as_str()),
        };
        Ok(m.image_size)
    }

    /// The version being received or on trial (for reports).
    pub fn update_version(&self) -> &str {
        match &self.phase {
            Phase::Receiving { version, .. } => version.as_str(),
            _ => self.state.trial_version.as_str(),
        }
    }

    /// The `downloading` report of the update being received, or `None`.
    pub fn progress_report(&self) -> Option<OtaReport<'_>> {
        match &self.phase {
            Phase::Receiving {
                expected,
                written,
                version,
                ..
            } => Some(OtaReport {
                status: OtaStatus::Downloading,
                version: version.as_str(),
                progress: Some((*written, *expected)),
                reason: None,
            }),
            _ => None,
        }
    }

    /// Discards the update being received (erasing its slot, best effort).
    fn discard<F: FlashSlot>(&mut self, flash: &mut F) {
        self.phase = Phase::Idle;
        // The slot is inactive; a failed erase leaves garbage that is never booted.
        let _ = flash.erase(self.state.active.other());
    }

    /// The next chunk of the image: written to the inactive slot and
    /// hashed. Returns `(bytes so far, total)`. More bytes than the
    /// manifest announced, or a flash error, discard the update.
    pub fn write_chunk<F: FlashSlot>(
        &mut self,
        data: &[u8],
        flash: &mut F,
    ) -> Result<(u64, u64), OtaError> {
        let target = self.state.active.other();
        let Phase::Receiving {
            expected,
            written,
            hasher,
            ..
        } = &mut self.phase
        else {
            return Err(OtaError::NotReceiving);
        };
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let end = written.saturating_add(len);
        if end > *expected {
            let extra = end.saturating_sub(*expected);
            self.discard(flash);
            return Err(VerifyError::TrailingBytes { extra }.into());
        }
        if flash.write(target, *written, data).is_err() {
            self.discard(flash);
            return Err(OtaError::Flash);
        }
        hasher.update(data);
        *written = end;
        Ok((end, *expected))
    }

    /// The whole image was received: checks its length and SHA-256 and, if
    /// both match, selects the new slot in the pending state. Persist the
    /// state and reboot on [`Next::PersistAndReboot`].
    pub fn finish<F: FlashSlot>(&mut self, flash: &mut F) -> Result<Next, OtaError> {
        let Phase::Receiving {
            expected,
            written,
            sha256,
            hasher,
            security_version,
            version,
        } = &self.phase
        else {
            return Err(OtaError::NotReceiving);
        };
        if written < expected {
            let err = VerifyError::Truncated {
                needed: *expected,
                got: *written,
            };
            self.discard(flash);
            return Err(err.into());
        }
        let digest = hasher.clone().finalize();
        if digest.as_slice() != sha256.as_slice() {
            self.discard(flash);
            return Err(VerifyError::HashMismatch.into());
        }
        self.state.trial_security_version = *security_version;
        self.state.trial_version = *version;
        self.state.active = self.state.active.other();
        self.state.pending = true;
        self.state.boot_attempts = 0;
        self.state.outcome = Outcome::None;
        self.phase = Phase::AwaitingReboot;
        self.dirty = true;
        Ok(Next::PersistAndReboot)
    }

    /// The trial image connected and published: it is confirmed, and only
    /// now the minimum security version rises to its security version.
    /// After the deadline this rolls back instead.
    pub fn confirm(&mut self, now_ms: u64) -> Next {
        let Phase::Trial { deadline_ms } = self.phase else {
            return Next::Nothing;
        };
        if now_ms > deadline_ms {
            self.roll_back(RollbackReason::NotConfirmed);
            return Next::PersistAndReboot;
        }
        self.state.pending = false;
        self.state.boot_attempts = 0;
        self.state.min_security_version = self
            .state
            .min_security_version
            .max(self.state.trial_security_version);
        self.state.outcome = Outcome::Succeeded;
        self.phase = Phase::Idle;
        self.dirty = true;
        Next::Nothing
    }

    /// Time passes: a trial image past its deadline is rolled back.
    pub fn tick(&mut self, now_ms: u64) -> Next {
        match self.phase {
            Phase::Trial { deadline_ms } if now_ms > deadline_ms => {
                self.roll_back(RollbackReason::NotConfirmed);
                Next::PersistAndReboot
            }
            _ => Next::Nothing,
        }
    }

    /// The result still to report on `ota/up` (succeeded or rolled back),
    /// possibly decided before a reboot. Clear it with [`Ota::report_sent`]
    /// once published.
    pub fn pending_report(&self) -> Option<OtaReport<'_>> {
        let (status, reason) = match self.state.outcome {
            Outcome::None => return None,
            Outcome::Succeeded => (OtaStatus::Succeeded, None),
            Outcome::RolledBack(r) => (OtaStatus::RolledBack, Some(r.code())),
        };
        Some(OtaReport {
            status,
            version: self.state.trial_version.as_str(),
            progress: None,
            reason,
        })
    }

    /// The report of [`Ota::pending_report`] was published.
    pub fn report_sent(&mut self) {
        if self.state.outcome != Outcome::None {
            self.state.outcome = Outcome::None;
            self.dirty = true;
        }
    }
}

/// A failure report for `ota/up`.
pub fn failure_report<'a>(version: &'a str, error: &OtaError) -> OtaReport<'a> {
    OtaReport {
        status: OtaStatus::Failed,
        version,
        progress: None,
        reason: Some(error.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::bundle::parse_head;
    use crate::ota::bundle::tests::{bundle, key, trusted};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Two slots in memory; counts erases; can fail writes.
    #[derive(Debug)]
    struct Flash {
        a: Vec<u8>,
        b: Vec<u8>,
        capacity: u64,
        fail_writes: bool,
        erases: u32,
    }

    impl Flash {
        fn new(capacity: u64) -> Self {
            Flash {
                a: vec![],
                b: vec![],
                capacity,
                fail_writes: false,
                erases: 0,
            }
        }
        fn slot(&self, s: Slot) -> &[u8] {
            match s {
                Slot::A => &self.a,
                Slot::B => &self.b,
            }
        }
    }

    impl FlashSlot for Flash {
        type Error = ();
        fn capacity(&self) -> u64 {
            self.capacity
        }
        fn erase(&mut self, slot: Slot) -> Result<(), ()> {
            self.erases += 1;
            match slot {
                Slot::A => self.a.clear(),
                Slot::B => self.b.clear(),
            }
            Ok(())
        }
        fn write(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), ()> {
            if self.fail_writes {
                return Err(());
            }
            let s = match slot {
                Slot::A => &mut self.a,
                Slot::B => &mut self.b,
            };
            assert_eq!(s.len() as u64, offset, "writes are sequential");
            s.extend_from_slice(data);
            Ok(())
        }
    }

    const IMAGE: &[u8] = b"new firmware image, version 1.1.0, a few bytes long";

    fn keys() -> [TrustedKey; 1] {
        [trusted(&key(1))]
    }

    fn config(keys: &[TrustedKey]) -> OtaConfig<'_> {
        OtaConfig {
            device_type: "sensor",
            running_version: "1.0.0",
            trusted_keys: keys,
            max_boot_attempts: 3,
            confirm_timeout_ms: 60_000,
        }
    }

    fn offer_bundle(ota: &mut Ota<'_>, b: &[u8], flash: &mut Flash) -> Result<u64, OtaError> {
        let head = parse_head(b).expect("head");
        ota.offer(head.manifest_bytes, &head.signature, flash)
    }

    /// A fresh device on slot A, minimum security version 2.
    fn device<'k>(keys: &'k [TrustedKey]) -> Ota<'k> {
        Ota::start(config(keys), OtaState::new(Slot::A, 2), 0).0
    }

    /// Offers and streams `image` in 7-byte chunks, then finishes.
    fn install(ota: &mut Ota<'_>, flash: &mut Flash, sv: u32) -> Result<Next, OtaError> {
        let b = bundle(&key(1), "sensor", "1.1.0", sv, IMAGE);
        offer_bundle(ota, &b, flash)?;
        for chunk in IMAGE.chunks(7) {
            ota.write_chunk(chunk, flash)?;
        }
        ota.finish(flash)
    }

    /// Persists and boots again at `now`.
    fn reboot<'k>(ota: &Ota<'k>, now: u64) -> (Ota<'k>, Boot) {
        let mut buf = [0u8; STATE_LEN];
        ota.state().to_bytes(&mut buf).expect("fits");
        let state = OtaState::from_bytes(&buf).expect("round trip");
        Ota::start(ota.config, state, now)
    }

    #[test]
    fn a_good_update_installs_and_confirms() {
        let keys = keys();
        let mut ota = device(&keys);
        let mut flash = Flash::new(4096);
        assert_eq!(install(&mut ota, &mut flash, 3), Ok(Next::PersistAndReboot));
        assert_eq!(flash.slot(Slot::B), IMAGE);
        assert_eq!(ota.state().active(), Slot::B);
        assert!(ota.state().pending());
        // Not raised before confirmation.
        assert_eq!(ota.state().min_security_version(), 2);

        let (mut ota, boot) = reboot(&ota, 1_000);
        assert_eq!(
            boot,
            Boot::Trial {
                deadline_ms: 61_000
            }
        );
        assert_eq!(ota.state().boot_attempts(), 1);
        assert_eq!(ota.state().min_security_version(), 2);
        assert_eq!(ota.tick(60_000), Next::Nothing);
        assert_eq!(ota.confirm(61_000), Next::Nothing);
        assert!(!ota.state().pending());
        assert_eq!(ota.state().active(), Slot::B);
        assert_eq!(ota.state().min_security_version(), 3);
        assert_eq!(
            ota.pending_report(),
            Some(OtaReport {
                status: OtaStatus::Succeeded,
                version: "1.1.0",
                progress: None,
                reason: None
            })
        );
        ota.report_sent();
        assert_eq!(ota.pending_report(), None);
        // Later boots are normal.
        let (_, boot) = reboot(&ota, 99_000);
        assert_eq!(boot, Boot::Normal);
    }

    #[test]
    fn crash_on_boot_rolls_back_after_the_allowed_attempts() {
        let keys = keys();
        let mut ota = device(&keys);
        let mut flash = Flash::new(4096);
        install(&mut ota, &mut flash, 5).expect("installs");
        // The trial image crashes before confirming, three times.
        let mut now = 0;
        for attempt in 1..=3 {
            let (next, boot) = reboot(&ota, now);
            assert!(matches!(boot, Boot::Trial { .. }), "attempt {attempt}");
            assert_eq!(next.state().boot_attempts(), attempt);
            ota = next;
            now += 100;
        }
        let (ota, boot) = reboot(&ota, now);
        assert_eq!(boot, Boot::RollBack);
        assert!(ota.state_changed());
        assert_eq!(ota.state().active(), Slot::A);
        assert!(!ota.state().pending());
        assert_eq!(ota.state().min_security_version(), 2, "not raised");
        // The old image boots normally and reports the rollback.
        let (ota, boot) = reboot(&ota, now + 100);
        assert_eq!(boot, Boot::Normal);
        let report = ota.pending_report().expect("report");
        assert_eq!(report.status, OtaStatus::RolledBack);
        assert_eq!(report.reason, Some("crash-loop"));
        assert_eq!(report.version, "1.1.0");
    }

    #[test]
    fn a_missed_confirmation_deadline_rolls_back() {
        let keys = keys();
        let mut ota = device(&keys);
        let mut flash = Flash::new(4096);
        install(&mut ota, &mut flash, 5).expect("installs");
        let (mut ota, boot) = reboot(&ota, 10);
        assert_eq!(
            boot,
            Boot::Trial {
                deadline_ms: 60_010
            }
        );
        // Hang or no connection: the deadline passes.
        assert_eq!(ota.tick(60_010), Next::Nothing);
        assert_eq!(ota.tick(60_011), Next::PersistAndReboot);
        assert_eq!(ota.state().active(), Slot::A);
        assert_eq!(ota.state().min_security_version(), 2);
        assert_eq!(
            ota.pending_report().and_then(|r| r.reason),
            Some("not-confirmed")
        );

        // A confirmation that arrives late rolls back too.
        let mut ota = device(&keys);
        install(&mut ota, &mut flash, 5).expect("installs");
        let (mut ota, _) = reboot(&ota, 0);
        assert_eq!(ota.confirm(60_001), Next::PersistAndReboot);
        assert_eq!(ota.state().active(), Slot::A);
        assert_eq!(ota.state().min_security_version(), 2);
    }

    #[test]
    fn refusals_leave_the_device_on_its_firmware() {
        let keys = keys();
        let mut flash = Flash::new(4096);
        let cases: [(Vec<u8>, OtaError); 5] = [
            (
                bundle(&key(2), "sensor", "1.1.0", 3, IMAGE),
                OtaError::Verify(VerifyError::UnknownKey(crate::ota::KeyId::of(
                    &key(2).verifying_key().to_bytes(),
                ))),
            ),
            (
                bundle(&key(1), "gateway", "1.1.0", 3, IMAGE),
                OtaError::Verify(VerifyError::WrongDeviceType),
            ),
            (
                bundle(&key(1), "sensor", "1.1.0", 1, IMAGE),
                OtaError::Downgrade {
                    offered: 1,
                    minimum: 2,
                },
            ),
            (
                bundle(&key(1), "sensor", "1.0.0", 3, IMAGE),
                OtaError::NotNewer,
            ),
            (
                bundle(&key(1), "sensor", "1.1.0", 3, &[0u8; 5000]),
                OtaError::Verify(VerifyError::Oversized {
                    size: 5000,
                    max: 4096,
                }),
            ),
        ];
        for (b, expected) in cases {
            let mut ota = device(&keys);
            assert_eq!(offer_bundle(&mut ota, &b, &mut flash), Err(expected));
            assert!(!ota.state_changed());
            assert_eq!(ota.state(), &OtaState::new(Slot::A, 2));
            assert_eq!(
                ota.write_chunk(b"x", &mut flash),
                Err(OtaError::NotReceiving)
            );
        }

        // A forged manifest (signature of another manifest).
        let mut ota = device(&keys);
        let good = bundle(&key(1), "sensor", "1.1.0", 3, IMAGE);
        let other = bundle(&key(1), "sensor", "1.2.0", 3, IMAGE);
        let head = parse_head(&good).expect("head");
        let other_head = parse_head(&other).expect("head");
        assert_eq!(
            ota.offer(head.manifest_bytes, &other_head.signature, &mut flash),
            Err(OtaError::Verify(VerifyError::BadSignature(keys[0].id)))
        );
        // Malformed manifest bytes.
        assert_eq!(
            ota.offer(&[1, 0, 0], &head.signature, &mut flash)
                .map_err(|e| e.code()),
            Err("bad-manifest")
        );
    }

    #[test]
    fn a_tampered_download_is_discarded() {
        let keys = keys();
        let mut flash = Flash::new(4096);
        let mut ota = device(&keys);
        let b = bundle(&key(1), "sensor", "1.1.0", 3, IMAGE);
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        let mut tampered = IMAGE.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            ota.write_chunk(&tampered, &mut flash),
            Ok((IMAGE.len() as u64, IMAGE.len() as u64))
        );
        assert_eq!(
            ota.finish(&mut flash),
            Err(OtaError::Verify(VerifyError::HashMismatch))
        );
        assert!(flash.slot(Slot::B).is_empty(), "discarded");
        assert_eq!(ota.state(), &OtaState::new(Slot::A, 2));
        assert!(!ota.state_changed());
        // A new offer is possible afterwards.
        assert!(offer_bundle(&mut ota, &b, &mut flash).is_ok());
        assert_eq!(ota.update_version(), "1.1.0");
        assert_eq!(
            ota.progress_report(),
            Some(OtaReport {
                status: OtaStatus::Downloading,
                version: "1.1.0",
                progress: Some((0, IMAGE.len() as u64)),
                reason: None
            })
        );
        ota.write_chunk(&IMAGE[..5], &mut flash).expect("chunk");
        assert_eq!(
            ota.progress_report().and_then(|r| r.progress),
            Some((5, IMAGE.len() as u64))
        );
    }

    #[test]
    fn short_long_and_unwritable_downloads_are_discarded() {
        let keys = keys();
        let b = bundle(&key(1), "sensor", "1.1.0", 3, IMAGE);
        let mut flash = Flash::new(4096);

        let mut ota = device(&keys);
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        ota.write_chunk(&IMAGE[..10], &mut flash).expect("chunk");
        assert!(matches!(
            ota.finish(&mut flash),
            Err(OtaError::Verify(VerifyError::Truncated { .. }))
        ));

        let mut ota = device(&keys);
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        let mut long = IMAGE.to_vec();
        long.push(0);
        assert_eq!(
            ota.write_chunk(&long, &mut flash),
            Err(OtaError::Verify(VerifyError::TrailingBytes { extra: 1 }))
        );
        assert_eq!(ota.finish(&mut flash), Err(OtaError::NotReceiving));

        let mut ota = device(&keys);
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        flash.fail_writes = true;
        assert_eq!(ota.write_chunk(IMAGE, &mut flash), Err(OtaError::Flash));
        assert_eq!(ota.state(), &OtaState::new(Slot::A, 2));
    }

    #[test]
    fn offers_during_an_update_are_busy() {
        let keys = keys();
        let b = bundle(&key(1), "sensor", "1.1.0", 3, IMAGE);
        let mut flash = Flash::new(4096);
        let mut ota = device(&keys);
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        assert_eq!(offer_bundle(&mut ota, &b, &mut flash), Err(OtaError::Busy));
        for chunk in IMAGE.chunks(5) {
            ota.write_chunk(chunk, &mut flash).expect("chunk");
        }
        ota.finish(&mut flash).expect("finish");
        assert_eq!(offer_bundle(&mut ota, &b, &mut flash), Err(OtaError::Busy));
        let (mut ota, _) = reboot(&ota, 0);
        let newer = bundle(&key(1), "sensor", "1.2.0", 3, IMAGE);
        assert_eq!(
            offer_bundle(&mut ota, &newer, &mut flash),
            Err(OtaError::Busy)
        );
        assert_eq!(ota.confirm(5), Next::Nothing);
        // Confirmed on 1.1.0 with minimum 3: a 1.2.0 with security version 3 is fine.
        let cfg = OtaConfig {
            running_version: "1.1.0",
            ..ota.config
        };
        let (mut ota, _) = Ota::start(cfg, *ota.state(), 10);
        assert!(offer_bundle(&mut ota, &newer, &mut flash).is_ok());
    }

    #[test]
    fn parts_keep_the_machine_and_abort_discards_only_a_download() {
        let keys = keys();
        let mut flash = Flash::new(4096);
        let mut ota = device(&keys);
        let b = bundle(&key(1), "sensor", "1.1.0", 3, IMAGE);
        assert!(!ota.abort_download(&mut flash));
        offer_bundle(&mut ota, &b, &mut flash).expect("accepted");
        let sha = parse_head(&b).expect("head").manifest.image_sha256;
        assert_eq!(ota.receiving_sha256(), Some(&sha));
        ota.write_chunk(&IMAGE[..9], &mut flash).expect("chunk");
        // Set aside and resumed, it carries on hashing where it was.
        let parts = ota.clone().into_parts();
        assert_eq!(parts.state(), ota.state());
        let mut ota = Ota::from_parts(config(&keys), parts);
        assert!(ota.receiving());
        ota.write_chunk(&IMAGE[9..], &mut flash).expect("rest");
        let mut aborted = ota.clone();
        assert_eq!(ota.finish(&mut flash), Ok(Next::PersistAndReboot));
        // Aborting the download erases the slot and allows a new offer.
        assert!(aborted.abort_download(&mut flash));
        assert!(!aborted.receiving() && aborted.receiving_sha256().is_none());
        assert!(flash.slot(Slot::B).is_empty());
        assert_eq!(aborted.state(), &OtaState::new(Slot::A, 2));
        assert!(offer_bundle(&mut aborted, &b, &mut flash).is_ok());
        // A switched update is not aborted.
        assert!(!ota.abort_download(&mut flash));
        assert!(ota.state().pending());
        let (ota, _) = reboot(&ota, 5);
        assert_eq!(ota.trial_deadline(), Some(60_005));
    }

    #[test]
    fn persisted_state_round_trips_and_refuses_corruption() {
        let keys = keys();
        let mut ota = device(&keys);
        let mut flash = Flash::new(4096);
        install(&mut ota, &mut flash, 7).expect("installs");
        let mut buf = [0u8; STATE_LEN];
        assert_eq!(ota.state().to_bytes(&mut buf), Ok(STATE_LEN));
        assert_eq!(OtaState::from_bytes(&buf), Ok(*ota.state()));
        for i in 0..STATE_LEN {
            let mut bad = buf;
            bad[i] ^= 0x01;
            assert!(OtaState::from_bytes(&bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            OtaState::from_bytes(&buf[..STATE_LEN - 1]),
            Err(LayoutError::TooShort { .. })
        ));
        assert_eq!(
            OtaState::new(Slot::B, 0).to_bytes(&mut [0u8; 10]),
            Err(crate::BufferTooSmall)
        );
    }

    #[test]
    fn failure_reports_carry_the_code() {
        let r = failure_report(
            "1.1.0",
            &OtaError::Downgrade {
                offered: 1,
                minimum: 2,
            },
        );
        let mut buf = [0u8; 128];
        let n = encode_ota_report(&r, &mut buf).expect("fits");
        assert_eq!(
            &buf[..n],
            br#"{"status":"failed","version":"1.1.0","reason":"downgrade"}"#
        );
    }

    proptest! {
        #[test]
        fn state_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(state) = OtaState::from_bytes(&bytes) {
                let mut buf = [0u8; STATE_LEN];
                state.to_bytes(&mut buf).expect("fits");
                prop_assert_eq!(&buf[..], &bytes[..STATE_LEN]);
            }
        }

        #[test]
        fn offers_of_random_bytes_never_panic(
            manifest in proptest::collection::vec(any::<u8>(), 0..200),
            sig in proptest::collection::vec(any::<u8>(), 64..=64),
        ) {
            let keys = keys();
            let mut ota = device(&keys);
            let mut flash = Flash::new(4096);
            let sig: [u8; 64] = sig.try_into().expect("64");
            prop_assert!(ota.offer(&manifest, &sig, &mut flash).is_err());
        }
    }
}
