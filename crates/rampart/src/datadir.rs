//! The data directory: what lives where, how it is created, and the lock
//! that keeps one `serve` per directory.
//!
//! ```text
//! DATA/
//!   .rampart-data   marker and layout version
//!   rampart.db      SQLite store (+ -wal, -shm)
//!   audit.key       HMAC key of the audit chain (0600; never in the database)
//!   audit.head      last audit row seen (truncation check)
//!   pki/            CA, server certificate, CRL (see rampart-pki)
//!   archive/        raw telemetry past retention, gzip'd JSON lines
//!   serve.lock      held by the running `serve`
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::RngCore;

const MARKER: &str = ".rampart-data";
const MARKER_CONTENT: &str = "rampart data dir, layout 1\n";

/// What an interrupted `init` may leave before the marker is written; a
/// directory holding only these is resumed, anything else is foreign.
const UNFINISHED_ENTRIES: &[&str] = &[
    "audit.key",
    "audit.head",
    "pki",
    "rampart.db",
    "rampart.db-wal",
    "rampart.db-shm",
    "rampart.db-journal",
    "serve.lock",
];

/// A Rampart data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Whether [`DataDir::create`] made the directory or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Made now.
    New,
    /// Already there.
    Existing,
}

impl DataDir {
    /// Opens an existing data dir, with a clear error when it is missing or foreign.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = Self {
            root: root.to_owned(),
        };
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("data dir {} is not a directory", root.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no data dir at {}; run `rampart init` first, or pass --data-dir",
                root.display()
            ),
            Err(e) => bail!("cannot read data dir {}: {e}", root.display()),
        }
        dir.check_marker()?;
        Ok(dir)
    }

    /// Creates the directory skeleton (mode 0700) with its marker and audit
    /// key, or opens it if it exists. A directory holding other files is
    /// refused rather than taken over.
    pub fn create(root: &Path) -> Result<(Self, Created)> {
        let dir = Self {
            root: root.to_owned(),
        };
        match fs::read_dir(root) {
            Ok(entries) => {
                if dir.marker().exists() {
                    dir.check_marker()?;
                    return Ok((dir, Created::Existing));
                }
                let foreign = entries.flatten().any(|e| {
                    !UNFINISHED_ENTRIES.contains(&e.file_name().to_string_lossy().as_ref())
                });
                if foreign {
                    bail!(
                        "{} is not a Rampart data dir: it exists, holds other files and has no {MARKER} marker; choose an empty or new directory",
                        root.display()
                    );
                }
                fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot set mode 0700 on {}", root.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(root)
                    .with_context(|| format!("cannot create data dir {}", root.display()))?;
            }
            Err(e) => bail!("cannot read data dir {}: {e}", root.display()),
        }
        // The marker is written last, by `mark_finished`: until then the
        // directory is unfinished and `discard_unfinished` may remove it.
        if !dir.audit_key_path().exists() {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_private(&dir.audit_key_path(), hex::encode(key).as_bytes())?;
        }
        Ok((dir, Created::New))
    }

    /// Writes the marker: the directory is complete.
    pub fn mark_finished(&self) -> Result<()> {
        if self.marker().exists() {
            return Ok(());
        }
        write_private(&self.marker(), MARKER_CONTENT.as_bytes())
    }

    /// Removes what `create` and a failed initialisation left behind.
    pub fn discard_unfinished(&self) {
        if self.marker().exists() {
            return;
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
        let _ = fs::remove_dir(&self.root);
    }

    fn check_marker(&self) -> Result<()> {
        let text = fs::read_to_string(self.marker()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "{} is not a Rampart data dir (no {MARKER} marker); run `rampart init` or pass the right --data-dir",
                    self.root.display()
                )
            } else {
                anyhow::anyhow!("cannot read data dir {}: {e}", self.root.display())
            }
        })?;
        if text != MARKER_CONTENT {
            bail!(
                "{} was written by an incompatible Rampart version ({:?})",
                self.root.display(),
                text.trim()
            );
        }
        Ok(())
    }

    fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Raw telemetry leaving retention, compressed (see `rampart-ingest`).
    pub fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }

    /// Firmware images, content-addressed by SHA-256 (`rampart firmware upload`).
    pub fn firmware(&self) -> PathBuf {
        self.root.join("firmware")
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("rampart.db")
    }

    /// The audit chain key.
    pub fn audit_key_path(&self) -> PathBuf {
        self.root.join("audit.key")
    }

    /// The audit chain head.
    pub fn audit_head_path(&self) -> PathBuf {
        self.root.join("audit.head")
    }

    /// The key sealing console TOTP secrets (hex, mode 0600). Kept out of
    /// the database so that a database dump alone reveals no second factor.
    pub fn console_key_path(&self) -> PathBuf {
        self.root.join("console.key")
    }

    /// The console key, created on first use.
    pub fn console_key(&self) -> Result<[u8; 32]> {
        let path = self.console_key_path();
        if !path.exists() {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_private(&path, hex::encode(key).as_bytes())?;
        }
        rampart_store::read_key_file(&path)
            .with_context(|| format!("cannot read the console key {}", path.display()))
    }

    /// The CA directory.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// Takes the `serve` lock, or explains who holds it.
    pub fn lock_for_serve(&self) -> Result<ServeLock> {
        let path = self.root.join("serve.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
            Ok(true) => {}
            Ok(false) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                bail!(
                    "another `rampart serve`{who} is already running on data dir {}; stop it first or use another --data-dir",
                    self.root.display()
                );
            }
            Err(e) => bail!("cannot lock {}: {e}", path.display()),
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        file.sync_data()?;
        Ok(ServeLock { _file: file })
    }
}

/// Held while `serve` runs; released when dropped or when the process dies.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// Writes a secret file atomically with mode 0600 from the first byte.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(parent)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_dir_and_refuses_foreign_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        let (dir, created) = DataDir::create(&root).expect("create");
        assert_eq!(created, Created::New);
        dir.mark_finished().expect("finish");
        let mode = fs::metadata(&root).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key_mode = fs::metadata(dir.audit_key_path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(DataDir::create(&root).expect("again").1, Created::Existing);

        let foreign = tmp.path().join("foreign");
        fs::create_dir(&foreign).expect("mkdir");
        fs::write(foreign.join("notes.txt"), "mine").expect("write");
        let err = DataDir::create(&foreign).expect_err("foreign");
        assert!(err.to_string().contains("not a Rampart data dir"), "{err}");
        assert!(DataDir::open(&foreign).is_err());
        assert!(DataDir::open(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn serve_lock_is_exclusive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, _) = DataDir::create(tmp.path()).expect("create");
        dir.mark_finished().expect("finish");
        let held = dir.lock_for_serve().expect("first lock");
        let err = dir.lock_for_serve().expect_err("second lock");
        assert!(err.to_string().contains("already running"), "{err}");
        drop(held);
        dir.lock_for_serve().expect("lock again after release");
    }
}
