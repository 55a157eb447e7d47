//! The SQLite implementation of [`Store`](crate::Store): the default store,
//! one file in the data dir.
//!
//! SQLite is used in WAL mode with a busy timeout, and every write runs in a
//! `BEGIN IMMEDIATE` transaction, so the CLI and a running `serve` can write
//! the same file at once: the second writer waits for the first instead of
//! failing half-way with "database is locked". Blocking calls run on tokio's
//! blocking pool; one writer connection serialises writes within a process,
//! and a small pool of reader connections serves reads concurrently.

mod alerts;
mod audit;
mod campaigns;
mod changes;
mod checkpoint;
mod claims;
mod devices;
mod enrollment;
mod firmware;
mod mqtt;
mod notifications;
mod renewal;
mod rows;
mod schema;
mod services;
mod staging;
mod store;
mod telemetry;
mod users;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{AuditKey, Result, StoreError};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
pub use staging::StagingOptions;
pub use writer::{WriterPriority, WriterStats};

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a writer waits for another process's transaction.
    pub busy_timeout: Duration,
    /// How group commits stage telemetry points (decision 0018).
    pub staging: StagingOptions,
    /// How often a thread of the store's own checkpoints the WAL, so that
    /// the writer's commits do not stall on whole checkpoints (see
    /// `checkpoint.rs`); `None` leaves checkpoints to the writer alone.
    pub checkpoint_interval: Option<Duration>,
    /// How the writer thread and the checkpointer are scheduled. The
    /// library's default is [`WriterPriority::Normal`], which changes no
    /// thread's policy; `rampart serve` runs [`WriterPriority::Adaptive`]
    /// unless `store.writer_priority` says otherwise (decision 0020).
    pub writer_priority: WriterPriority,
    /// Under [`WriterPriority::Adaptive`]: how long the oldest queued write
    /// may wait before a thread at the process's policy takes the queue
    /// over from the idle writer.
    pub writer_takeover_after: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            staging: StagingOptions::default(),
            checkpoint_interval: Some(CHECKPOINT_INTERVAL),
            writer_priority: WriterPriority::Normal,
            writer_takeover_after: WRITER_TAKEOVER_AFTER,
        }
    }
}

/// The SQLite store. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// First, so that it stops before the writer closes.
    _checkpointer: Option<checkpoint::Checkpointer>,
    /// Where write transactions run.
    writer_thread: writer::WriterThread,
    path: PathBuf,
    options: SqliteOptions,
    audit_key: AuditKey,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    series: Mutex<crate::telemetry::SeriesCache>,
    staging: Mutex<staging::Staging>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// SQLite page cache of the writer connection, KiB. Small on purpose: a
/// B-tree split that renumbers pages borrows the lock-byte page's number
/// (1 GiB into the file) as a temporary key, and the end of such a
/// transaction then walks the writer's whole page cache to drop pages past
/// the end of a database smaller than 1 GiB. With 128 MiB the cache filled
/// within a minute at 12,000 msg/s and that walk took a third of the
/// writer's CPU; at 16 MiB the writer used a fifth less CPU in steady state
/// and large-batch ingest stayed within the run-to-run spread
/// (BENCHMARKS.md, "A smaller writer page cache"). Reads outside write
/// transactions go through the memory map, not this cache.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of each reader connection, KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;
/// Pages in the WAL before a commit checkpoints it (4 KiB pages: 32 MiB).
/// With the background checkpointer most of them are copied already by
/// then, and this checkpoint is what lets the WAL start over.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;
/// How often the background checkpointer runs by default: at 10,000
/// messages/s about a thousand frames each time.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a write may wait for the idle writer before the standby
/// thread takes the queue over, by default: a few group-commit intervals
/// and fsyncs, so that a busy moment of the broker's own threads rarely
/// counts as starvation, and short enough that a CPU-bound neighbour
/// delays acknowledgements by a fraction of a second once, not for as long
/// as it runs.
pub const WRITER_TAKEOVER_AFTER: Duration = Duration::from_millis(50);
/// Bytes of the database file mapped into memory for reads.
const MMAP_BYTES: i64 = 1 << 30;

/// Readers kept open for reuse; more are opened on demand and dropped after.
const POOLED_READERS: usize = 4;

impl SqliteStore {
    /// Opens (creating if absent) the database at `path` and brings its schema
    /// up to date. Refuses files that are not Rampart databases and schemas
    /// newer than this binary.
    pub fn open(path: &Path, audit_key: AuditKey, options: SqliteOptions) -> Result<Self> {
        schema::check_not_foreign(path)?;
        let mut writer = connect(path, &options, false)?;
        schema::migrate(&mut writer, path)?;
        let staging = staging::Staging::new(options.staging);
        let checkpointer = options
            .checkpoint_interval
            .map(|every| checkpoint::Checkpointer::start(path, every, options.writer_priority))
            .transpose()?;
        let writer_thread =
            writer::WriterThread::start(options.writer_priority, options.writer_takeover_after)?;
        let inner = Arc::new(Inner {
            _checkpointer: checkpointer,
            writer_thread,
            path: path.to_owned(),
            options,
            audit_key,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            series: Mutex::new(crate::telemetry::SeriesCache::default()),
            staging: Mutex::new(staging),
        });
        // The writer thread moves staged telemetry while no write waits. It
        // must not keep the store alive: the store's last handle closes it.
        let weak = Arc::downgrade(&inner);
        inner.writer_thread.set_background(Box::new(move || {
            weak.upgrade()
                .map_or(writer::Next::AfterNextJob, |inner| inner.move_staged())
        }));
        Ok(Self { inner })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer threads have done (takeovers of the queue under
    /// [`WriterPriority::Adaptive`]).
    pub fn writer_stats(&self) -> WriterStats {
        let staged_rows = self.inner.staging.lock().map_or(0, |s| s.backlog() as u64);
        WriterStats {
            staged_rows,
            ..self.inner.writer_thread.stats()
        }
    }

    /// Runs `f` in an immediate write transaction on the writer thread.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &AuditKey) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.inner
            .writer_thread
            .run(move || {
                let mut conn = inner.lock_writer()?;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db)?;
                let out = f(&tx, &inner.audit_key)?;
                tx.commit().map_err(db)?;
                Ok(out)
            })
            .await
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &AuditKey) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path, &inner.options, true)?,
            };
            let out = f(&conn, &inner.audit_key);
            if let Ok(mut pool) = inner.readers.lock()
                && pool.len() < POOLED_READERS
            {
                pool.push(conn);
            }
            out
        })
        .await
    }
}

impl Inner {
    /// The writer connection (taken on the writer thread only).
    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Corrupt("writer connection poisoned".into()))
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Database(Box::new(e)))?
}

fn connect(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Foreign {
        path: path.display().to_string(),
        why: format!("cannot open it: {e}"),
    })?;
    conn.busy_timeout(options.busy_timeout).map_err(db)?;
    // The telemetry commit alone keeps three multi-row insert sizes per
    // table it writes (`rows::CHUNKS`).
    conn.set_prepared_statement_cache_capacity(128);
    if !read_only {
        // WAL lets readers (the CLI, the console) proceed while `serve` writes.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "could not switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        // NORMAL is durable in WAL mode except for the last transactions on
        // power loss; an acknowledged message must survive that: FULL.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        // The writer walks the hot end of every series' B-tree on each
        // commit: keep those pages in SQLite's cache instead of re-reading
        // them through read(2) (the default cache is 2 MiB; see
        // `WRITER_CACHE_KIB` for why not more).
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(db)?;
        // Fewer, larger checkpoints: each one fsyncs the database file.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(db)?;
    } else {
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(db)?;
    }
    // Reads of the database file through the page cache, without a copy.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    Ok(conn)
}

/// Maps a SQLite error, turning lock timeouts into [`StoreError::Busy`].
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => StoreError::Busy,
        _ => StoreError::Database(Box::new(e)),
    }
}

impl SqliteStore {
    /// Writes a consistent copy of the database to `dest` with SQLite's
    /// online backup API, while other connections keep writing: the copy is
    /// taken in one step, inside one read transaction.
    pub async fn snapshot_to(&self, dest: &Path) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let dest = dest.to_owned();
        run_blocking(move || {
            let source = connect(&inner.path, &inner.options, true)?;
            let mut target = Connection::open(&dest).map_err(db)?;
            let backup = rusqlite::backup::Backup::new(&source, &mut target).map_err(db)?;
            // -1: every page in one step, so the copy is one consistent read.
            // A writer holding the lock makes the step report Busy; retry
            // within the busy timeout.
            let deadline = std::time::Instant::now() + inner.options.busy_timeout;
            loop {
                match backup.step(-1).map_err(db)? {
                    rusqlite::backup::StepResult::Done => break,
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => return Err(StoreError::Busy),
                }
            }
            drop(backup);
            target
                .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
                .map_err(db)
                .and_then(|ok| {
                    if ok == "ok" {
                        Ok(())
                    } else {
                        Err(StoreError::Corrupt(format!(
                            "snapshot integrity check: {ok}"
                        )))
                    }
                })
        })
        .await
    }
}
