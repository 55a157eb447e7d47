//! WAL checkpoints off the writer's path.
//!
//! In WAL mode every commit appends pages to the `-wal` file, and a
//! *checkpoint* copies them back into the database file and fsyncs it. By
//! default the connection whose commit crosses `wal_autocheckpoint` runs the
//! whole checkpoint itself, inside its commit call: with the telemetry
//! committer that meant a stall of tens to hundreds of milliseconds about
//! once a second under load (tens of MiB of WAL copied to scattered pages,
//! then an fsync of the database file), during which no group commit ran,
//! acknowledgements waited and, behind them, devices' in-flight windows
//! filled (BENCHMARKS.md, "WAL checkpoints off the writer's path").
//!
//! A [`Checkpointer`] runs a *passive* checkpoint on a connection and thread
//! of its own every interval: it copies whatever is committed while the
//! writer goes on appending (a passive checkpoint never waits for, nor
//! blocks, readers and writers). The writer keeps its automatic checkpoint
//! as the step that lets the WAL start over from its beginning: when it
//! crosses the threshold, nearly every frame is already copied, so it copies
//! the last few and fsyncs, instead of doing all the work at once.
//!
//! Durability does not change: a commit is durable once its WAL frames are
//! fsynced (`synchronous = FULL`), whoever checkpoints them later.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::db;
use crate::{Result, StoreError};

/// A thread that checkpoints the WAL of one database file every interval;
/// stopped (and joined) when dropped.
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection of its own to `path` and starts the thread.
    pub(super) fn start(
        path: &Path,
        interval: Duration,
        priority: super::WriterPriority,
    ) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        // It reads no pages through its own cache: keep that small.
        conn.pragma_update(None, "cache_size", -256).map_err(db)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                super::writer::apply(priority, "sqlite-checkpoint");
                run(&conn, &signal, interval);
            })
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        if let Ok(mut stopped) = flag.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar), interval: Duration) {
    let (flag, wake) = stop;
    let Ok(mut stopped) = flag.lock() else { return };
    loop {
        stopped = match wake.wait_timeout_while(stopped, interval, |s| !*s) {
            Ok((guard, _)) => guard,
            Err(_) => return,
        };
        if *stopped {
            return;
        }
        // Not holding the flag while the checkpoint runs: a drop waits only
        // for the checkpoint in progress.
        drop(stopped);
        checkpoint(conn);
        stopped = match flag.lock() {
            Ok(guard) => guard,
            Err(_) => return,
        };
    }
}

/// One passive checkpoint. SQLITE_BUSY (the writer is checkpointing at this
/// moment) and errors are left for the next round: the writer's automatic
/// checkpoint still bounds the WAL.
fn checkpoint(conn: &Connection) {
    let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match outcome {
        Ok((busy, frames, copied)) => {
            tracing::trace!(busy, frames, copied, "WAL checkpoint");
        }
        Err(e) => tracing::debug!(error = %e, "WAL checkpoint did not run"),
    }
}
