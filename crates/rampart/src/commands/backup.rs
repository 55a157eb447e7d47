//! `rampart backup FILE` and `rampart restore FILE`.
//!
//! A backup is a tar file holding everything a data dir needs to run again:
//! the marker, the audit key and chain head, the CA directory, raw-data
//! archives, and a consistent snapshot of the SQLite store taken with the
//! online backup API while `serve` may be writing. The chain head is read
//! *before* the snapshot, so the restored head never claims rows the
//! snapshot lacks (which `audit verify` would report as truncation).
//! Secrets (CA keys, audit key) are in it: it is written 0600 and must be
//! stored like the data dir itself.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rampart_store::Store;
use serde_json::json;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::datadir::DataDir;
use crate::output;
use crate::output::say;
use crate::platform::Platform;

/// Top-level entries a backup may hold.
const ENTRIES: &[&str] = &[
    ".rampart-data",
    "audit.key",
    "audit.head",
    "rampart.db",
    "pki",
    "archive",
    "firmware",
];

/// Writes a backup of the data dir to `file`.
pub async fn backup(g: &GlobalArgs, config: Config, file: &Path) -> Result<ExitCode> {
    let dir = DataDir::open(&g.data_dir)?;
    let platform = Platform::open(&g.data_dir, config).await?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {} (it must not exist)", file.display()))?;
    let snapshot = partial_path(file, "db");
    let result = write_backup(&dir, &platform, out, &snapshot).await;
    let _ = fs::remove_file(&snapshot);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(file);
            return Err(e);
        }
    };
    let bytes = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if g.json {
        output::json(&json!({
            "file": file.display().to_string(),
            "bytes": bytes,
            "devices": summary.devices,
            "audit_rows": summary.audit_rows,
        }))?;
    } else {
        say!(
            "backup written to {} ({bytes} bytes, {} devices, {} audit rows)",
            file.display(),
            summary.devices,
            summary.audit_rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct Summary {
    devices: usize,
    audit_rows: u64,
}

fn partial_path(file: &Path, what: &str) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    file.with_file_name(format!(".{name}.{what}-partial"))
}

async fn write_backup(
    dir: &DataDir,
    platform: &Platform,
    out: File,
    snapshot: &Path,
) -> Result<Summary> {
    // Head first, then the snapshot: see the module documentation.
    let head = match fs::read(dir.audit_head_path()) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("cannot read the audit head"),
    };
    let rampart_store::AnyStore::Sqlite(sqlite) = &platform.store else {
        bail!(
            "the store is PostgreSQL ({}): back it up with pg_dump or continuous archiving (docs/operations.md); `rampart backup` covers the SQLite store",
            platform.store.location()
        );
    };
    sqlite
        .snapshot_to(snapshot)
        .await
        .context("cannot snapshot the database")?;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let root = dir.root();
    append_file(&mut tar, &root.join(".rampart-data"), ".rampart-data")?;
    append_file(&mut tar, &dir.audit_key_path(), "audit.key")?;
    if let Some(head) = head {
        append_bytes(&mut tar, "audit.head", &head)?;
    }
    append_file(&mut tar, snapshot, "rampart.db")?;
    for sub in ["pki", "archive", "firmware"] {
        let path = if sub == "archive" {
            dir.archive()
        } else {
            root.join(sub)
        };
        if path.is_dir() {
            append_tree(&mut tar, &path, Path::new(sub))?;
        }
    }
    let out = tar.into_inner().context("cannot finish the backup")?;
    out.sync_all().context("cannot flush the backup")?;
    // Report from the snapshot itself, not the live store.
    let copy = rampart_store::SqliteStore::open(
        snapshot,
        rampart_store::AuditKey::new(rampart_store::read_key_file(&dir.audit_key_path())?, None),
        rampart_store::sqlite::SqliteOptions::default(),
    )?;
    let devices = copy
        .list_devices(&rampart_store::DeviceFilter::default())
        .await?
        .len();
    let audit = copy.verify_audit().await?;
    if !audit.ok {
        bail!(
            "the snapshot's audit chain does not verify: the live database is damaged; run `rampart audit verify`"
        );
    }
    Ok(Summary {
        devices,
        audit_rows: audit.rows,
    })
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h
}

fn append_bytes(tar: &mut tar::Builder<File>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = header(bytes.len() as u64, 0o600, tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
        .with_context(|| format!("cannot add {name} to the backup"))
}

fn append_file(tar: &mut tar::Builder<File>, path: &Path, name: &str) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = header(len, 0o600, tar::EntryType::Regular);
    tar.append_data(&mut h, name, &mut f)
        .with_context(|| format!("cannot add {} to the backup", path.display()))
}

fn append_tree(tar: &mut tar::Builder<File>, dir: &Path, name: &Path) -> Result<()> {
    let mut h = header(0, 0o700, tar::EntryType::Directory);
    tar.append_data(&mut h, name, std::io::empty())?;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let kind = e.file_type()?;
        let child = name.join(e.file_name());
        if kind.is_dir() {
            append_tree(tar, &e.path(), &child)?;
        } else if kind.is_file() {
            append_file(tar, &e.path(), &child.to_string_lossy())?;
        }
        // Symlinks and special files are not part of a data dir: skipped.
    }
    Ok(())
}

/// Restores `file` into the (absent or empty) data dir.
pub async fn restore(g: &GlobalArgs, config: Config, file: &Path) -> Result<ExitCode> {
    let target = &g.data_dir;
    match fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: restore only into an empty or absent data dir",
                    target.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot read {}: {e}", target.display()),
    }
    let staging = partial_path(target, "restore");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    let result = extract(file, &staging);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if target.exists() {
        fs::remove_dir(target).with_context(|| format!("cannot replace {}", target.display()))?;
    }
    fs::rename(&staging, target)
        .with_context(|| format!("cannot move the restored data into {}", target.display()))?;
    let platform = Platform::open(target, config).await?;
    let audit = platform.store.verify_audit().await?;
    let devices = platform
        .store
        .list_devices(&rampart_store::DeviceFilter::default())
        .await?
        .len();
    if g.json {
        output::json(&json!({
            "data_dir": target.display().to_string(),
            "devices": devices,
            "audit_rows": audit.rows,
            "audit_ok": audit.ok,
        }))?;
    } else {
        say!(
            "restored into {} ({devices} devices; audit chain {}, {} rows)",
            target.display(),
            if audit.ok { "intact" } else { "BROKEN" },
            audit.rows
        );
    }
    Ok(if audit.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Extracts a backup into `dir`, refusing anything that is not part of a
/// data dir (absolute paths, `..`, links, unknown names).
fn extract(file: &Path, dir: &Path) -> Result<()> {
    let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut archive = tar::Archive::new(input);
    let mut seen = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{} is not a Rampart backup", file.display()))?
    {
        let mut entry = entry.with_context(|| format!("{} is damaged", file.display()))?;
        let path = entry.path()?.into_owned();
        let safe = path.components().all(|c| matches!(c, Component::Normal(_)));
        let top = path
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if !safe || !ENTRIES.contains(&top.as_str()) {
            bail!(
                "{} holds {:?}, which is not part of a data dir: refusing it",
                file.display(),
                path
            );
        }
        let dest = dir.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dest)?;
            }
            tar::EntryType::Regular => {
                if let Some(parent) = dest.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = entry.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])?;
                }
                out.sync_all()?;
                seen.push(top);
            }
            other => bail!(
                "{} holds {:?} of type {other:?}: only files and directories are restored",
                file.display(),
                path
            ),
        }
    }
    for needed in [".rampart-data", "audit.key", "rampart.db"] {
        if !seen.iter().any(|s| s == needed) {
            bail!(
                "{} has no {needed}: it is not a Rampart backup",
                file.display()
            );
        }
    }
    Ok(())
}
