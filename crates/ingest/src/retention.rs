//! Retention: raw points, minute and hour rollups and presence history each
//! leave the store after their own window; raw points can be archived to
//! compressed files first.
//!
//! Why archive: raw points are the only exact record of what devices sent.
//! Rollups outlive them (daily rollups are kept forever) and still answer
//! charts, but cannot give the points back. With
//! [`RetentionOptions::archive_dir`] set, a pass first writes every raw point
//! leaving retention to gzip-compressed JSON lines (the line format of
//! [`crate::export`]), makes the files durable (file fsync, rename, directory
//! fsync), and only then deletes. If archiving fails, nothing is deleted and
//! the next pass tries again.
//!
//! Files: one per UTC day of the points' timestamps and per pass,
//! `raw-YYYY-MM-DD-<pass Unix ms>.jsonl.gz`. A pass never opens an existing
//! archive file: appending to one (even as a new gzip member) could leave a
//! torn member behind a good file after a crash, while a new file appears
//! whole through its rename or not at all. A day cut by the moving cutoff is
//! therefore spread over the files of several passes; `zcat
//! raw-2026-10-25-*.jsonl.gz` reads it back whole.
//!
//! At least once: a process that dies between the rename and the delete
//! archives the same points again on its next pass, into new files. A point
//! is identified by `(device, metric, seq)`, so such duplicates are
//! recognisable.
//!
//! Known window: the store deletes by timestamp in its own transaction, so a
//! reading whose device timestamp is already older than the cutoff and that
//! is committed between a pass's archive and its delete is deleted without
//! being archived. Devices rarely deliver readings older than the raw window
//! (30 days by default); closing this fully needs a delete in the store
//! bounded by what was archived.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use rampart_store::StoreError;
use rampart_store::telemetry::{PointFilter, PointRecord, Pruned, TelemetryStore};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::export::{self, ExportError};

const DAY_MS: i64 = 86_400_000;

/// Days of points one archive scan covers; bounds the files open at once
/// (each gzip stream holds a few hundred KiB of state) while a first pass
/// over a long history still reads the store in few scans.
const WINDOW_DAYS: i64 = 31;

/// Shortest pause between two passes of [`run`].
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long each kind of telemetry is kept. Daily rollups are kept forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionOptions {
    /// Raw points (and their dedupe records).
    pub raw: Duration,
    /// One-minute rollups.
    pub minute: Duration,
    /// Hourly rollups; `None` keeps them forever.
    pub hour: Option<Duration>,
    /// Presence (connect/disconnect) history.
    pub presence: Duration,
    /// Where raw points are archived before deletion; `None`: no archive.
    pub archive_dir: Option<PathBuf>,
    /// Time between passes of [`run`] (at least one second).
    pub interval: Duration,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            raw: Duration::from_secs(30 * DAY),
            minute: Duration::from_secs(365 * DAY),
            hour: None,
            presence: Duration::from_secs(90 * DAY),
            archive_dir: None,
            interval: Duration::from_secs(3600),
        }
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Raw points with a timestamp before this (Unix ms) left retention.
    pub raw_before_ms: i64,
    /// Points written to the archive.
    pub archived_points: u64,
    /// Archive files written, in day order.
    pub archive_files: Vec<PathBuf>,
    /// What the store deleted.
    pub pruned: Pruned,
}

/// Why a retention pass stopped. Whatever the error, nothing was deleted
/// unless it was archived first.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The store failed.
    #[error("retention could not use the store: {0}")]
    Store(#[from] StoreError),
    /// An archive file or the archive directory could not be written.
    #[error(
        "archiving raw points failed at {}: {source}; nothing was deleted (check the archive directory's permissions and free space)",
        path.display()
    )]
    Archive {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A stored point could not be written as a line.
    #[error("archiving raw points failed: {0}; nothing was deleted")]
    Point(ExportError),
}

fn archive_err(path: &Path) -> impl FnOnce(io::Error) -> RetentionError + '_ {
    move |source| RetentionError::Archive {
        path: path.to_owned(),
        source,
    }
}

/// `now_ms` minus `window`, saturating.
fn cutoff(now_ms: i64, window: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
}

/// One pass at time `now_ms`: archives raw points leaving retention (when
/// an archive directory is set), then deletes everything past its window.
pub async fn run_once(
    store: &dyn TelemetryStore,
    options: &RetentionOptions,
    now_ms: i64,
) -> Result<RetentionReport, RetentionError> {
    let raw_before_ms = cutoff(now_ms, options.raw);
    let mut report = RetentionReport {
        raw_before_ms,
        ..RetentionReport::default()
    };
    if let Some(dir) = &options.archive_dir {
        let (points, files) = archive(store, dir, raw_before_ms, now_ms).await?;
        report.archived_points = points;
        report.archive_files = files;
    }
    report.pruned = store
        .prune(
            raw_before_ms,
            cutoff(now_ms, options.minute),
            options.hour.map(|h| cutoff(now_ms, h)),
            cutoff(now_ms, options.presence),
        )
        .await?;
    Ok(report)
}

/// Runs a pass at start and then every `options.interval` until `shutdown`.
/// A failed pass is logged and retried at the next interval.
pub async fn run(
    store: Arc<dyn TelemetryStore>,
    options: RetentionOptions,
    shutdown: CancellationToken,
) {
    loop {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        // An interrupted pass leaves no partial archive (temporary files are
        // removed) and deletes nothing, or it already committed its delete.
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = run_once(&*store, &options, now_ms) => match result {
                Ok(r) => tracing::info!(
                    raw_before_ms = r.raw_before_ms,
                    archived_points = r.archived_points,
                    archive_files = r.archive_files.len(),
                    pruned_points = r.pruned.points,
                    pruned_rollups = r.pruned.rollups,
                    pruned_presence = r.pruned.presence,
                    "retention pass done"
                ),
                Err(e) => tracing::error!(error = %e, "retention pass failed; retrying at the next interval"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(options.interval.max(MIN_INTERVAL)) => {}
        }
    }
}

/// Archives every point with `ts < before_ms` into `dir` and returns the
/// number of points and the files written.
async fn archive(
    store: &dyn TelemetryStore,
    dir: &Path,
    before_ms: i64,
    pass_ms: i64,
) -> Result<(u64, Vec<PathBuf>), RetentionError> {
    let owned = dir.to_owned();
    blocking(dir, move || prepare_dir(&owned)).await?;
    let mut archive = Archive::new(dir.to_owned(), pass_ms);
    // Scan in windows of whole UTC days so that a day's file is finished
    // within one window. The first window is open below: correctness does
    // not depend on `oldest_point`, only the number of open files does.
    let oldest = store.oldest_point().await?.unwrap_or(before_ms);
    let mut from = None;
    let mut window_start = oldest.div_euclid(DAY_MS) * DAY_MS;
    loop {
        let to = before_ms.min(window_start.saturating_add(WINDOW_DAYS * DAY_MS));
        let filter = PointFilter {
            device: None,
            from_ms: from,
            to_ms: Some(to),
        };
        let mut cursor = None;
        loop {
            let (points, next) = store
                .export_points(&filter, cursor, export::PAGE_SIZE)
                .await?;
            archive = blocking(dir, move || {
                archive.write(&points)?;
                Ok(archive)
            })
            .await?;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        archive = blocking(dir, move || {
            archive.finish_open_days()?;
            Ok(archive)
        })
        .await?;
        if to >= before_ms {
            break;
        }
        from = Some(to);
        window_start = to;
    }
    blocking(dir, move || archive.commit()).await
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> Result<T, RetentionError> + Send + 'static,
) -> Result<T, RetentionError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RetentionError::Archive {
            path: dir.to_owned(),
            source: io::Error::other(format!("archive task stopped: {e}")),
        })?
}

/// Creates the directory and removes temporary files left by a pass that
/// was interrupted (they were never renamed, so nothing relied on them).
fn prepare_dir(dir: &Path) -> Result<(), RetentionError> {
    fs::create_dir_all(dir).map_err(archive_err(dir))?;
    for entry in fs::read_dir(dir).map_err(archive_err(dir))? {
        let entry = entry.map_err(archive_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".raw-") && name.ends_with(".jsonl.gz.tmp") {
            let path = entry.path();
            fs::remove_file(&path).map_err(archive_err(&path))?;
        }
    }
    Ok(())
}

/// The files of one pass: temporary until [`Archive::commit`]; dropping an
/// uncommitted archive removes them.
#[derive(Debug)]
struct Archive {
    dir: PathBuf,
    pass_ms: i64,
    open: BTreeMap<String, DayFile>,
    /// Finished and synced: `(day, temporary path)`.
    finished: Vec<(String, PathBuf)>,
    /// Every temporary file not yet renamed.
    temporary: Vec<PathBuf>,
    points: u64,
}

#[derive(Debug)]
struct DayFile {
    path: PathBuf,
    out: GzEncoder<BufWriter<File>>,
}

impl Archive {
    fn new(dir: PathBuf, pass_ms: i64) -> Self {
        Self {
            dir,
            pass_ms,
            open: BTreeMap::new(),
            finished: Vec::new(),
            temporary: Vec::new(),
            points: 0,
        }
    }

    fn write(&mut self, points: &[PointRecord]) -> Result<(), RetentionError> {
        for point in points {
            let day = export::utc_day(point).map_err(RetentionError::Point)?;
            let file = match self.open.entry(day) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let path =
                        self.dir
                            .join(format!(".raw-{}-{}.jsonl.gz.tmp", e.key(), self.pass_ms));
                    // `create_new`: a day seen twice in one pass is a bug,
                    // and must not truncate what was written.
                    let file = File::options()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(archive_err(&path))?;
                    self.temporary.push(path.clone());
                    e.insert(DayFile {
                        path,
                        out: GzEncoder::new(BufWriter::new(file), Compression::default()),
                    })
                }
            };
            export::write_jsonl_line(&mut file.out, point).map_err(|e| match e {
                ExportError::Io(source) => RetentionError::Archive {
                    path: file.path.clone(),
                    source,
                },
                other => RetentionError::Point(other),
            })?;
            self.points += 1;
        }
        Ok(())
    }

    /// Ends the gzip streams of the open days and syncs their files.
    fn finish_open_days(&mut self) -> Result<(), RetentionError> {
        for (day, file) in std::mem::take(&mut self.open) {
            let DayFile { path, out } = file;
            let synced = out
                .finish()
                .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
                .and_then(|f| f.sync_all());
            synced.map_err(archive_err(&path))?;
            self.finished.push((day, path));
        }
        Ok(())
    }

    /// Moves the finished files to their names and syncs the directory.
    fn commit(mut self) -> Result<(u64, Vec<PathBuf>), RetentionError> {
        let mut files = Vec::new();
        for (day, path) in std::mem::take(&mut self.finished) {
            let dest = self.free_name(&day)?;
            fs::rename(&path, &dest).map_err(archive_err(&dest))?;
            self.temporary.retain(|t| t != &path);
            files.push(dest);
        }
        sync_dir(&self.dir)?;
        Ok((self.points, files))
    }

    /// `raw-<day>-<pass>.jsonl.gz`, or with a counter if a pass at the same
    /// millisecond already wrote it: an archive file is never replaced.
    /// (One retention task runs per data directory.)
    fn free_name(&self, day: &str) -> Result<PathBuf, RetentionError> {
        let mut n = 0u32;
        loop {
            let name = match n {
                0 => format!("raw-{day}-{}.jsonl.gz", self.pass_ms),
                n => format!("raw-{day}-{}-{n}.jsonl.gz", self.pass_ms),
            };
            let path = self.dir.join(name);
            if !path.try_exists().map_err(archive_err(&path))? {
                return Ok(path);
            }
            n += 1;
        }
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        for path in &self.temporary {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary archive file");
            }
        }
    }
}

/// Makes the renames durable: POSIX keeps directory entries in the
/// directory's own data.
fn sync_dir(dir: &Path) -> Result<(), RetentionError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(archive_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_saturate() {
        assert_eq!(cutoff(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(cutoff(0, Duration::MAX), i64::MIN + 1);
        assert_eq!(cutoff(i64::MIN, Duration::from_secs(1)), i64::MIN);
    }

    #[test]
    fn a_dropped_archive_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Archive::new(dir.path().to_owned(), 1);
        let point = PointRecord {
            device: "d".into(),
            metric: "m".into(),
            ts_ms: 0,
            value: 1.0,
            seq: 1,
        };
        a.write(std::slice::from_ref(&point)).expect("write");
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
        drop(a);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn an_existing_archive_file_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("raw-1970-01-01-5.jsonl.gz"), b"older").expect("write");
        let mut a = Archive::new(dir.path().to_owned(), 5);
        let point = PointRecord {
            device: "d".into(),
            metric: "m".into(),
            ts_ms: 0,
            value: 1.0,
            seq: 1,
        };
        a.write(&[point]).expect("write");
        a.finish_open_days().expect("finish");
        let (n, files) = a.commit().expect("commit");
        assert_eq!(n, 1);
        assert_eq!(files, vec![dir.path().join("raw-1970-01-01-5-1.jsonl.gz")]);
        assert_eq!(
            fs::read(dir.path().join("raw-1970-01-01-5.jsonl.gz")).expect("read"),
            b"older"
        );
    }
}
