//! The simulator's state directory: what each simulated device keeps in
//! its flash and RTC memory, so that a restarted simulator resumes the same
//! identities and sequence numbers.
//!
//! ```text
//! STATE_DIR/                     0700
//!   fleet.json                   {"idPrefix": "sim-7f3a9c"}
//!   devices/ID/                  0700, one per device
//!     identity.json              id, certificate generation, serial, expiry, claim code
//!     key-G.pem                  P-256 key of generation G (PKCS#8, 0600)
//!     cert-G.pem                 its certificate and chain
//!     provision.bin              the core's provisioning state (its byte layout)
//!     boot                       the boot counter (decimal)
//!     ring.bin                   the measurement ring, in the core's byte layout
//!     ota.bin                    the update machine's state (`OtaState`, its byte layout)
//!     slot-a.bin, slot-b.bin     the two firmware slots (the image bytes)
//!     slot-a.manifest, …         the signed manifest of the image in a slot
//!                                (absent: the factory image, `--firmware-version`)
//! ```
//!
//! Every file is replaced atomically (write a temporary file, rename it
//! over the old one), so a simulator killed at any moment leaves either the
//! old or the new version, never a torn one. Files a device's identity or
//! sequence numbers depend on (key, certificate, identity, boot counter) are
//! also flushed to disk before the rename counts; the ring is not, like RTC
//! memory, which survives a crash of the program but not a power cut.
//! A renewal writes the new key and certificate first and then
//! `identity.json` naming the new generation: that rename is the commit.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rampart_core::seq::BootCounterStore;
use rampart_proto::DeviceId;
use rand::Rng;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds something other than what the simulator wrote.
    #[error("{path}: {reason}; delete the device's directory to start it afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `--id-prefix` differs from the prefix the directory was created with.
    #[error(
        "state dir {dir} holds a fleet with id prefix '{stored}', not '{asked}'; \
         use another --state-dir for another prefix"
    )]
    PrefixMismatch {
        /// The state directory.
        dir: PathBuf,
        /// The prefix it was created with.
        stored: String,
        /// The prefix asked for.
        asked: String,
    },
    /// The prefix or a device id made from it is not a valid device id.
    #[error("device id '{id}' made from the id prefix is invalid: {reason}")]
    BadId {
        /// The id.
        id: String,
        /// Why it is invalid.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in
/// the same directory, renamed over `path`. With `durable`, the data and
/// the rename are flushed to disk before returning.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    if durable {
        file.sync_all().map_err(io_err(&tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if durable && let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Reads `path`, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn make_dir(path: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FleetFile {
    id_prefix: String,
}

/// An opened state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    prefix: String,
}

impl StateDir {
    /// Opens (creating if needed) the state directory at `root`. A new
    /// directory takes `id_prefix`, or a random `sim-xxxxxx`; an existing
    /// one keeps its prefix, and a different `id_prefix` is refused.
    pub fn open(root: &Path, id_prefix: Option<&str>) -> Result<Self, StateError> {
        make_dir(&root.join("devices"))?;
        let fleet = root.join("fleet.json");
        let prefix = match read_optional(&fleet)? {
            Some(bytes) => {
                let stored: FleetFile =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                        path: fleet.clone(),
                        reason: e.to_string(),
                    })?;
                if let Some(asked) = id_prefix
                    && asked != stored.id_prefix
                {
                    return Err(StateError::PrefixMismatch {
                        dir: root.to_path_buf(),
                        stored: stored.id_prefix,
                        asked: asked.to_owned(),
                    });
                }
                stored.id_prefix
            }
            None => {
                let prefix = match id_prefix {
                    Some(p) => p.to_owned(),
                    None => format!("sim-{}", hex::encode(rand::rng().random::<[u8; 3]>())),
                };
                let file = FleetFile {
                    id_prefix: prefix.clone(),
                };
                let json = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Corrupt {
                    path: fleet.clone(),
                    reason: e.to_string(),
                })?;
                write_atomic(&fleet, &json, true)?;
                prefix
            }
        };
        let dir = Self {
            root: root.to_path_buf(),
            prefix,
        };
        // Refuse a prefix that cannot make ids before any device starts.
        dir.device_id(1)?;
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fleet's id prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The id of the `n`-th device (from 1): the prefix, a `-` unless the
    /// prefix already ends in a separator, and `n` in four or more digits.
    pub fn device_id(&self, n: usize) -> Result<DeviceId, StateError> {
        let sep = if self.prefix.ends_with(['-', '_', '.', ':']) {
            ""
        } else {
            "-"
        };
        let id = format!("{}{sep}{n:04}", self.prefix);
        DeviceId::parse(&id).map_err(|e| StateError::BadId {
            id,
            reason: e.to_string(),
        })
    }

    /// The directory of device `id`, created if absent.
    pub fn device(&self, id: &DeviceId) -> Result<DeviceDir, StateError> {
        let dir = self.root.join("devices").join(id.as_str());
        make_dir(&dir)?;
        Ok(DeviceDir { dir })
    }
}

/// What a device remembers about its certificate (`identity.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredIdentity {
    /// The device id (certificate CN).
    pub id: String,
    /// Which `key-G.pem` / `cert-G.pem` pair is current.
    pub generation: u32,
    /// The current certificate's serial (hex).
    pub serial: String,
    /// The current certificate's SHA-256 fingerprint (hex).
    pub fingerprint: String,
    /// When the current certificate was issued, Unix ms (the simulator's clock).
    pub issued_at_ms: u64,
    /// When the current certificate expires, Unix ms.
    pub not_after_ms: u64,
    /// The claim code from enrollment (the label's secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_code: Option<String>,
    /// The label's QR payload from enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_payload: Option<String>,
    /// Owner the device was bound to by a claim, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_to: Option<String>,
}

/// One device's directory.
#[derive(Debug, Clone)]
pub struct DeviceDir {
    dir: PathBuf,
}

impl DeviceDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stored identity, `None` before the first enrollment.
    pub fn identity(&self) -> Result<Option<StoredIdentity>, StateError> {
        let path = self.file("identity.json");
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Replaces the stored identity (durably: this is the commit point of
    /// enrollment and renewal).
    pub fn save_identity(&self, identity: &StoredIdentity) -> Result<(), StateError> {
        let path = self.file("identity.json");
        let json = serde_json::to_vec_pretty(identity).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json, true)
    }

    /// Removes the key and certificate files of generations before
    /// `generation` (once the new certificate is known to work).
    pub fn remove_generations_before(&self, generation: u32) -> Result<(), StateError> {
        for g in 0..generation {
            for name in [format!("key-{g}.pem"), format!("cert-{g}.pem")] {
                let old = self.file(&name);
                match fs::remove_file(&old) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&old)(e)),
                }
            }
        }
        Ok(())
    }

    /// The key of `generation` (PEM), `None` if not made yet.
    pub fn key(&self, generation: u32) -> Result<Option<String>, StateError> {
        self.text(&format!("key-{generation}.pem"))
    }

    /// Stores the key of `generation` (PEM, 0600, durably).
    pub fn save_key(&self, generation: u32, pem: &str) -> Result<(), StateError> {
        self.save_text(&format!("key-{generation}.pem"), pem)
    }

    /// The certificate chain of `generation` (PEM), `None` if absent.
    pub fn cert(&self, generation: u32) -> Result<Option<String>, StateError> {
        self.text(&format!("cert-{generation}.pem"))
    }

    /// Stores the certificate chain of `generation` (PEM, durably).
    pub fn save_cert(&self, generation: u32, pem: &str) -> Result<(), StateError> {
        self.save_text(&format!("cert-{generation}.pem"), pem)
    }

    fn save_text(&self, name: &str, text: &str) -> Result<(), StateError> {
        write_atomic(&self.file(name), text.as_bytes(), true)
    }

    fn text(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.file(name);
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StateError::Corrupt {
                    path,
                    reason: "not UTF-8 text".to_owned(),
                }),
        }
    }

    /// The persisted provisioning state, `None` if never written.
    pub fn provisioning(&self) -> Result<Option<Vec<u8>>, StateError> {
        read_optional(&self.file("provision.bin"))
    }

    /// Replaces the persisted provisioning state (durably).
    pub fn save_provisioning(&self, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.file("provision.bin"), bytes, true)
    }

    /// The persisted ring bytes, `None` if never written.
    pub fn ring(&self) -> Result<Option<Vec<u8>>, StateError> {
        read_optional(&self.file("ring.bin"))
    }

    /// Replaces the persisted ring (atomically, not flushed to disk).
    pub fn save_ring(&self, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.file("ring.bin"), bytes, false)
    }

    /// The persisted update state (`OtaState` bytes), `None` if never written.
    pub fn ota_state(&self) -> Result<Option<Vec<u8>>, StateError> {
        read_optional(&self.file("ota.bin"))
    }

    /// Replaces the persisted update state (durably: the next boot, and the
    /// bootloader's slot choice, depend on it).
    pub fn save_ota_state(&self, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.file("ota.bin"), bytes, true)
    }

    /// The image file of firmware slot `name` (`a` or `b`).
    pub fn slot_path(&self, name: char) -> PathBuf {
        self.file(&format!("slot-{name}.bin"))
    }

    /// The manifest of the image in slot `name`, `None` for the factory image.
    pub fn slot_manifest(&self, name: char) -> Result<Option<Vec<u8>>, StateError> {
        read_optional(&self.file(&format!("slot-{name}.manifest")))
    }

    /// Records the manifest of the image just written to slot `name` (durably).
    pub fn save_slot_manifest(&self, name: char, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.file(&format!("slot-{name}.manifest")), bytes, true)
    }

    /// Forgets the manifest of slot `name` (its image is being replaced).
    pub fn remove_slot_manifest(&self, name: char) -> Result<(), StateError> {
        let path = self.file(&format!("slot-{name}.manifest"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The boot counter's storage.
    pub fn boot_counter(&self) -> BootFile {
        BootFile {
            path: self.file("boot"),
        }
    }
}

/// The boot counter in a file, for [`rampart_core::seq::SeqGen`].
#[derive(Debug, Clone)]
pub struct BootFile {
    path: PathBuf,
}

impl BootCounterStore for BootFile {
    type Error = StateError;

    fn load(&mut self) -> Result<Option<u32>, StateError> {
        let Some(bytes) = read_optional(&self.path)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| StateError::Corrupt {
                path: self.path.clone(),
                reason: format!("boot counter {:?} is not a number", text.trim()),
            })
    }

    fn store(&mut self, boot: u32) -> Result<(), StateError> {
        write_atomic(&self.path, format!("{boot}\n").as_bytes(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_dir_gets_a_random_prefix_that_sticks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = StateDir::open(tmp.path(), None).expect("open");
        assert!(a.prefix().starts_with("sim-") && a.prefix().len() == 10);
        let b = StateDir::open(tmp.path(), None).expect("reopen");
        assert_eq!(a.prefix(), b.prefix());
        assert_eq!(
            b.device_id(7).expect("id").as_str(),
            format!("{}-0007", a.prefix())
        );
        let other = tempfile::tempdir().expect("tmp");
        assert_ne!(
            StateDir::open(other.path(), None).expect("open").prefix(),
            a.prefix()
        );
        let err = StateDir::open(tmp.path(), Some("greenhouse")).expect_err("mismatch");
        assert!(matches!(err, StateError::PrefixMismatch { .. }), "{err}");
        assert!(err.to_string().contains("another --state-dir"), "{err}");
    }

    #[test]
    fn chosen_prefixes_are_checked_and_joined_sensibly() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = StateDir::open(&tmp.path().join("a"), Some("greenhouse-")).expect("open");
        assert_eq!(d.device_id(12345).expect("id").as_str(), "greenhouse-12345");
        let err = StateDir::open(&tmp.path().join("b"), Some("bad/prefix")).expect_err("bad");
        assert!(matches!(err, StateError::BadId { .. }), "{err}");
    }

    #[test]
    fn identity_key_cert_and_ring_round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = StateDir::open(tmp.path(), Some("t")).expect("open");
        let dev = d.device(&d.device_id(1).expect("id")).expect("dir");
        assert_eq!(dev.identity().expect("read"), None);
        dev.save_key(0, "KEY0").expect("key");
        dev.save_cert(0, "CERT0").expect("cert");
        let mut id = StoredIdentity {
            id: "t-0001".into(),
            generation: 0,
            serial: "01".into(),
            fingerprint: "ab".into(),
            issued_at_ms: 1,
            not_after_ms: 2,
            claim_code: Some("c".into()),
            qr_payload: None,
            bound_to: None,
        };
        dev.save_identity(&id).expect("save");
        assert_eq!(dev.identity().expect("read"), Some(id.clone()));
        let mode = fs::metadata(dev.path().join("key-0.pem"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dev.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // A renewal: new generation committed, the old files go.
        dev.save_key(1, "KEY1").expect("key");
        dev.save_cert(1, "CERT1").expect("cert");
        id.generation = 1;
        dev.save_identity(&id).expect("save");
        assert_eq!(dev.key(0).expect("read").as_deref(), Some("KEY0"));
        dev.remove_generations_before(1).expect("remove");
        assert_eq!(dev.key(0).expect("read"), None);
        assert_eq!(dev.cert(1).expect("read").as_deref(), Some("CERT1"));

        dev.save_provisioning(&[9]).expect("provisioning");
        assert_eq!(dev.provisioning().expect("read"), Some(vec![9]));
        dev.save_ring(&[1, 2, 3]).expect("ring");
        assert_eq!(dev.ring().expect("ring"), Some(vec![1, 2, 3]));
        assert!(
            !dev.path().join(".ring.bin.tmp").exists(),
            "no temporary left"
        );
    }

    #[test]
    fn boot_counter_persists_and_refuses_garbage() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = StateDir::open(tmp.path(), Some("t")).expect("open");
        let dev = d.device(&d.device_id(1).expect("id")).expect("dir");
        let mut boot = dev.boot_counter();
        assert_eq!(boot.load().expect("load"), None);
        let first = rampart_core::seq::SeqGen::start(&mut boot).expect("start");
        let second = rampart_core::seq::SeqGen::start(&mut dev.boot_counter()).expect("start");
        assert_eq!((first.boot(), second.boot()), (0, 1));
        fs::write(dev.path().join("boot"), "x").expect("write");
        let err = dev.boot_counter().load().expect_err("garbage");
        assert!(err.to_string().contains("not a number"), "{err}");
        let bad_identity = dev.path().join("identity.json");
        fs::write(&bad_identity, "{").expect("write");
        assert!(matches!(dev.identity(), Err(StateError::Corrupt { .. })));
    }
}
