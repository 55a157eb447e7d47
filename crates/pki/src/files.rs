//! The CA directory on disk: file names, private permissions, atomic writes.
//!
//! Every file is written to a temporary name in the same directory, flushed to
//! disk, renamed over its final name and the directory flushed, so a crash
//! leaves either the old or the new file, never half of one. Keys are created
//! with mode 0600 from the start (never chmod-ed afterwards), the directory
//! with 0700.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::PkiError;

/// Self-signed root CA certificate (own CA only).
pub(crate) const ROOT_CERT: &str = "root.crt";
/// Root CA private key; absent after [`crate::Pki::export_root_key`] with `remove`.
pub(crate) const ROOT_KEY: &str = "root.key";
/// Issuing CA certificate: the one that signs every leaf and the CRL.
pub(crate) const CA_CERT: &str = "ca.crt";
/// Issuing CA private key; absent for a verify-only imported CA.
pub(crate) const CA_KEY: &str = "ca.key";
/// Issuers of an imported CA, as supplied (optional).
pub(crate) const CHAIN_CERT: &str = "chain.crt";
/// Marker: the issuing CA was imported, not created here.
pub(crate) const IMPORTED_MARKER: &str = "IMPORTED";
/// Server certificate for the broker and web parts.
pub(crate) const SERVER_CERT: &str = "server.crt";
/// Server private key (never encrypted: the server starts unattended).
pub(crate) const SERVER_KEY: &str = "server.key";
/// Current certificate revocation list.
pub(crate) const CRL: &str = "crl.pem";

/// Mode of private keys.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode of certificates and CRLs: public material.
pub(crate) const PUBLIC: u32 = 0o644;

/// Reads a text file; `Ok(None)` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io("read", path, e)),
    }
}

/// Writes `contents` to `path` atomically, the file having `mode` from its creation.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", random_suffix()));
    let result = write_new(&temp, contents, mode)
        .and_then(|()| fs::rename(&temp, path).map_err(|e| PkiError::io("replace", path, e)));
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir)
}

/// Creates `path` (which must not exist), writes and flushes `contents`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::io("create", path, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::io("write", path, e))
}

/// Removes a file and flushes its directory, so the removal survives a crash.
pub(crate) fn remove_durably(path: &Path) -> Result<(), PkiError> {
    fs::remove_file(path).map_err(|e| PkiError::io("remove", path, e))?;
    sync_dir(parent_of(path))
}

/// Flushes a directory's entries (new, renamed or removed files) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io("flush directory", dir, e))
}

/// The directory holding `path`; `.` for a bare file name.
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a directory with mode 0700 (and its missing parents with the default mode).
fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| PkiError::io("create", parent, e))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| PkiError::io("create", path, e))?;
    // The umask can only remove bits, but be explicit about the result.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| PkiError::io("set permissions of", path, e))
}

/// Whether `dir` is absent, or an empty directory.
pub(crate) fn is_absent_or_empty(dir: &Path) -> Result<bool, PkiError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(PkiError::io("list", dir, e)),
    }
}

fn random_suffix() -> String {
    hex::encode(rand::rng().random::<[u8; 6]>())
}

/// A new CA directory being filled next to its final place.
///
/// Files are written into a hidden sibling directory; [`Staging::commit`]
/// renames it to the final name in one step. Dropped without commit, it
/// removes itself, so a failed `init` or `import` leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staging {
    /// Starts a staging directory for `target`, which must be absent or empty.
    pub(crate) fn new(target: &Path) -> Result<Self, PkiError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| PkiError::InvalidOptions {
                reason: format!("CA directory {} has no final name", target.display()),
            })?;
        let path = parent_of(target).join(format!(".{name}.{}.new", random_suffix()));
        create_private_dir(&path)?;
        Ok(Self {
            path,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Path of `file` inside the staging directory.
    pub(crate) fn file(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Writes `file` into the staging directory.
    pub(crate) fn write(&self, file: &str, contents: &[u8], mode: u32) -> Result<(), PkiError> {
        write_new(&self.file(file), contents, mode)
    }

    /// Moves the staging directory to its final name.
    ///
    /// An existing empty target directory is replaced (rename(2) allows it).
    pub(crate) fn commit(mut self) -> Result<(), PkiError> {
        sync_dir(&self.path)?;
        fs::rename(&self.path, &self.target)
            .map_err(|e| PkiError::io("move the new CA into", &self.target, e))?;
        self.committed = true;
        sync_dir(parent_of(&self.target))
    }

    /// Moves the existing target directory to `aside`, then the staging
    /// directory to the target's name; if the second step fails, the old
    /// directory is moved back.
    pub(crate) fn commit_replacing(mut self, aside: &Path) -> Result<(), PkiError> {
        sync_dir(&self.path)?;
        fs::rename(&self.target, aside).map_err(|e| PkiError::io("move aside", &self.target, e))?;
        if let Err(e) = fs::rename(&self.path, &self.target) {
            // Best effort: put the old CA back where the caller expects it.
            let _ = fs::rename(aside, &self.target);
            return Err(PkiError::io("move the new CA into", &self.target, e));
        }
        self.committed = true;
        sync_dir(parent_of(&self.target))
    }
}

/// A free sibling path `<dir>.<what>-<UTC timestamp>` for keeping `dir` aside.
pub(crate) fn aside_path(dir: &Path, what: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let candidate = parent_of(dir).join(format!("{name}.{what}-{stamp}"));
    if candidate.exists() {
        parent_of(dir).join(format!("{name}.{what}-{stamp}-{}", random_suffix()))
    } else {
        candidate
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: nothing in it is referenced by anything.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_with_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        write_atomic(&path, b"one", PRIVATE).expect("first write");
        write_atomic(&path, b"two", PRIVATE).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["k"], "no temporary file is left behind");
    }

    #[test]
    fn staging_dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("ca");
        {
            let staging = Staging::new(&target).expect("staging");
            staging.write("x", b"secret", PRIVATE).expect("write");
        }
        assert!(is_absent_or_empty(dir.path()).expect("list"));
    }

    #[test]
    fn staging_commit_replaces_an_empty_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("ca");
        fs::create_dir(&target).expect("mkdir");
        let staging = Staging::new(&target).expect("staging");
        staging.write("x", b"data", PUBLIC).expect("write");
        staging.commit().expect("commit");
        assert_eq!(fs::read(target.join("x")).expect("read"), b"data");
        let mode = fs::metadata(&target).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
