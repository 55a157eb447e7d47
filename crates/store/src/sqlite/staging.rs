//! Staged points (decision 0018): what a group commit appends instead of
//! writing `points` and `rollups`, and the compaction rounds that move it.
//!
//! A commit that stores a few readings per series would otherwise rewrite
//! one `points` leaf per series and one `rollups` leaf per series and
//! resolution, and fsync every one of them. Appended to `staged_points`
//! (a rowid table, so its hot end is a page or two) they cost a few pages.
//!
//! A *round* takes every staged row (the largest id taken is its `mark`),
//! sorted by series, and each following commit moves the next few series
//! of it into `points` and `rollups` and records how far it got in
//! `staged_progress`, in the same transaction; the commit that moves the
//! last series deletes the round's rows (`id <= mark`). Each series'
//! leaves are so rewritten once per round instead of once per commit.
//! Whatever the moment, a staged row is either in `points` (and counted in
//! `rollups`) or *pending* by [`Progress::pending`], never both: readers
//! ([`pending_points`]) add pending rows to what they read, in the same
//! snapshot.
//!
//! The committer keeps the round in memory ([`Staging`]), and the rows
//! staged since it started, so that the next round starts without reading
//! them back. At each commit it checks the stored progress and whether
//! another connection committed (a second store on the same file, another
//! process): then it reloads both from the table, as after a restart.

use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, params};

use super::db;
use crate::Result;

/// How commits stage points; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct StagingOptions {
    /// A commit that stores at least this many points writes them into
    /// `points` and `rollups` directly: large batches fill whole leaves,
    /// and staging would only write them twice. 0 turns staging off.
    pub direct_points: usize,
    /// A round starts once this many points wait in the staging table...
    pub round_points: usize,
    /// ...or once the oldest of them waited this long.
    pub round_age: Duration,
    /// Each commit during a round moves series until it moved this many
    /// times the points it staged itself (at least one series), so rounds
    /// end faster than input arrives.
    pub catch_up: usize,
}

impl Default for StagingOptions {
    fn default() -> Self {
        Self {
            direct_points: 4096,
            round_points: 16_384,
            round_age: Duration::from_secs(1),
            catch_up: 2,
        }
    }
}

/// `next_series` between rounds: every staged row is pending.
const NO_ROUND: i64 = i64::MIN;

/// The stored progress of compaction (`staged_progress`). A staged row
/// `(id, series)` is *pending*, not in `points` yet, when
/// `id > mark || series >= next_series`; the SQL of readers and of
/// [`Staging::drain`] spells out this test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    pub mark: i64,
    pub next_series: i64,
}

impl Progress {
    /// Reads it (inside the caller's transaction, for a consistent view).
    pub(super) fn read(conn: &Connection) -> Result<Self> {
        conn.prepare_cached("SELECT mark, next_series FROM staged_progress WHERE only = 1")
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok(Self {
                        mark: r.get(0)?,
                        next_series: r.get(1)?,
                    })
                })
            })
            .map_err(db)
    }

    fn write(self, tx: &Transaction<'_>) -> Result<()> {
        tx.prepare_cached("UPDATE staged_progress SET mark = ?1, next_series = ?2 WHERE only = 1")
            .and_then(|mut s| s.execute(params![self.mark, self.next_series]))
            .map_err(db)?;
        Ok(())
    }

    fn in_round(self) -> bool {
        self.next_series != NO_ROUND
    }
}

/// One staged point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct StagedPoint {
    pub series: i64,
    pub ts: i64,
    pub seq: i64,
    pub value: f64,
}

impl StagedPoint {
    fn key(&self) -> (i64, i64, i64) {
        (self.series, self.ts, self.seq)
    }
}

/// The rows of a round not moved yet, sorted by series, time and seq.
#[derive(Debug)]
struct Round {
    mark: i64,
    rows: Vec<StagedPoint>,
    /// Index of the first row not moved.
    pos: usize,
}

impl Round {
    /// Loads the staged rows that `select` picks.
    fn load(
        conn: &Connection,
        mark: i64,
        select: &str,
        args: impl rusqlite::Params,
    ) -> Result<Self> {
        Ok(Self {
            mark,
            rows: sorted_points(conn, select, args)?,
            pos: 0,
        })
    }

    /// A new round of every staged row (between rounds all are pending, and
    /// the committer holds them as [`Waiting`]): sorted in memory, without
    /// reading the table back.
    fn start(waiting: &Waiting) -> Option<Self> {
        let mark = waiting.last_id?;
        let mut rows = waiting.rows.clone();
        rows.sort_by_key(StagedPoint::key);
        Some(Self { mark, rows, pos: 0 })
    }

    /// The rest of the round `progress` describes.
    fn resume(conn: &Connection, progress: Progress) -> Result<Self> {
        Self::load(
            conn,
            progress.mark,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id <= ?1 AND series_id >= ?2",
            params![progress.mark, progress.next_series],
        )
    }
}

/// The committer's view of the staging table. Lives next to the writer
/// connection and changes only once the transaction that changed the table
/// committed (see [`Step`]).
#[derive(Debug)]
pub(super) struct Staging {
    options: StagingOptions,
    /// The progress this process last read or wrote; `None` before the
    /// first commit.
    known: Option<Progress>,
    /// The writer connection's `data_version` when the view was last
    /// brought in line: it changes when any other connection commits.
    version: Option<i64>,
    round: Option<Round>,
    /// Rows staged and not in the round.
    waiting: Waiting,
    /// Since when the first of them waits.
    waiting_since: Option<Instant>,
}

/// The staged rows that no round took yet, as the table holds them: what
/// the next round starts from. Kept by the committer as it appends them,
/// so that starting a round does not read thousands of rows back inside a
/// commit (it did: 10-20 ms of a commit every third of a second at 12,000
/// messages/s).
#[derive(Debug, Default)]
struct Waiting {
    rows: Vec<StagedPoint>,
    /// The largest id among them.
    last_id: Option<i64>,
}

impl Waiting {
    /// The rows of the table with an id above `after` (all with `None`).
    fn load(conn: &Connection, after: Option<i64>) -> Result<Self> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, series_id, ts, seq, value FROM staged_points
                 WHERE id > ?1 ORDER BY id",
            )
            .map_err(db)?;
        let mut waiting = Self::default();
        let mut rows = stmt.query(params![after.unwrap_or(i64::MIN)]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            waiting.last_id = Some(r.get(0).map_err(db)?);
            waiting.rows.push(StagedPoint {
                series: r.get(1).map_err(db)?,
                ts: r.get(2).map_err(db)?,
                seq: r.get(3).map_err(db)?,
                value: r.get(4).map_err(db)?,
            });
        }
        Ok(waiting)
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What one transaction did to the staging table, applied with
/// [`Staging::apply`] once it committed (a rolled-back transaction leaves
/// the view as it was, like the table).
#[derive(Debug)]
#[must_use]
pub(super) struct Step {
    progress: Progress,
    started: Option<Round>,
    pos: usize,
    /// Rows the transaction appended, and the id of the last.
    appended: Vec<StagedPoint>,
    last_id: Option<i64>,
    drained: bool,
}

impl Staging {
    pub(super) fn new(options: StagingOptions) -> Self {
        Self {
            options,
            known: None,
            version: None,
            round: None,
            waiting: Waiting::default(),
            waiting_since: None,
        }
    }

    pub(super) fn options(&self) -> StagingOptions {
        self.options
    }

    /// Brings the view in line with the table when another connection
    /// committed since this one last did (SQLite's `data_version`: another
    /// store on the same file, another process), or before the first
    /// commit. Comparing the stored progress alone is not enough: rowids are
    /// reused once a round empties the table, so another writer can leave
    /// the same progress over different rows.
    fn sync(&mut self, conn: &Connection, now: Instant) -> Result<Progress> {
        let stored = Progress::read(conn)?;
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(db)?;
        if self.known == Some(stored) && self.version == Some(version) {
            return Ok(stored);
        }
        self.version = Some(version);
        self.round = if stored.in_round() {
            Some(Round::resume(conn, stored)?)
        } else {
            None
        };
        self.waiting = Waiting::load(conn, stored.in_round().then_some(stored.mark))?;
        self.waiting_since = (!self.waiting.is_empty()).then_some(now);
        self.known = Some(stored);
        Ok(stored)
    }

    /// The compaction step of a commit that is about to stage `incoming`
    /// points: moves the next series of the round in progress (starting
    /// one when enough waits), handing each moved row to `moved`.
    pub(super) fn step(
        &mut self,
        tx: &Transaction<'_>,
        incoming: usize,
        now: Instant,
        mut moved: impl FnMut(&StagedPoint) -> Result<()>,
    ) -> Result<Step> {
        let progress = self.sync(tx, now)?;
        let due = !self.waiting.is_empty()
            && (self.waiting.len() >= self.options.round_points
                || self
                    .waiting_since
                    .is_some_and(|t| now.duration_since(t) >= self.options.round_age));
        let started = match (&self.round, due) {
            (None, true) => Round::start(&self.waiting),
            _ => None,
        };
        let Some(round) = started.as_ref().or(self.round.as_ref()) else {
            return Ok(Step {
                progress,
                started: None,
                pos: 0,
                appended: Vec::new(),
                last_id: None,
                drained: false,
            });
        };
        let budget = incoming.saturating_mul(self.options.catch_up).max(1);
        let mut end = round.pos;
        while end < round.rows.len() && end - round.pos < budget {
            let series = round.rows[end].series;
            while let Some(row) = round.rows.get(end).filter(|r| r.series == series) {
                moved(row)?;
                end += 1;
            }
        }
        let next = Progress {
            mark: round.mark,
            next_series: round.rows.get(end).map_or(NO_ROUND, |r| r.series),
        };
        next.write(tx)?;
        if !next.in_round() {
            tx.prepare_cached("DELETE FROM staged_points WHERE id <= ?1")
                .and_then(|mut s| s.execute(params![round.mark]))
                .map_err(db)?;
        }
        Ok(Step {
            progress: next,
            pos: end,
            started,
            appended: Vec::new(),
            last_id: None,
            drained: false,
        })
    }

    /// Moves every pending row (retention runs on a table without staged
    /// rows, so it prunes what it reads) and empties the table.
    pub(super) fn drain(
        &mut self,
        tx: &Transaction<'_>,
        now: Instant,
        mut moved: impl FnMut(&StagedPoint) -> Result<()>,
    ) -> Result<Step> {
        let progress = self.sync(tx, now)?;
        let pending = Round::load(
            tx,
            progress.mark,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id > ?1 OR series_id >= ?2",
            params![progress.mark, progress.next_series],
        )?;
        for row in &pending.rows {
            moved(row)?;
        }
        tx.execute("DELETE FROM staged_points", []).map_err(db)?;
        let next = Progress {
            mark: progress.mark,
            next_series: NO_ROUND,
        };
        next.write(tx)?;
        Ok(Step {
            progress: next,
            started: None,
            pos: 0,
            appended: Vec::new(),
            last_id: None,
            drained: true,
        })
    }

    /// Appends the points of a commit (after its [`step`](Self::step)).
    pub(super) fn append(
        tx: &Transaction<'_>,
        step: &mut Step,
        points: &[StagedPoint],
    ) -> Result<()> {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO staged_points (series_id, ts, seq, value) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db)?;
        for p in points {
            insert
                .execute(params![p.series, p.ts, p.seq, p.value])
                .map_err(db)?;
        }
        if !points.is_empty() {
            step.appended.extend_from_slice(points);
            step.last_id = Some(tx.last_insert_rowid());
        }
        Ok(())
    }

    /// Takes in a committed step.
    pub(super) fn apply(&mut self, step: Step, now: Instant) {
        self.known = Some(step.progress);
        if step.drained {
            self.round = None;
            self.waiting = Waiting::default();
            self.waiting_since = None;
        }
        if let Some(round) = step.started {
            // The round took every row that waited.
            self.round = Some(round);
            self.waiting = Waiting::default();
            self.waiting_since = None;
        }
        if let Some(round) = &mut self.round {
            round.pos = step.pos;
        }
        if !step.progress.in_round() {
            self.round = None;
        }
        if let Some(last) = step.last_id {
            self.waiting.rows.extend(step.appended);
            self.waiting.last_id = Some(last);
            self.waiting_since.get_or_insert(now);
        }
    }
}

/// The pending staged rows of `series` with `ts` in `[from, to)`, sorted
/// by time and seq, as of `progress` (read in the same transaction). The
/// table has no index on series (it would put a leaf per series back into
/// every commit): a series the round already moved has only rows after the
/// mark pending, a rowid range; any other is a scan of the table, which a
/// round keeps to about a second of input.
pub(super) fn pending_points(
    conn: &Connection,
    progress: Progress,
    series: i64,
    from: i64,
    to: i64,
) -> Result<Vec<StagedPoint>> {
    let after = if series >= progress.next_series {
        i64::MIN
    } else {
        progress.mark
    };
    sorted_points(
        conn,
        "SELECT series_id, ts, seq, value FROM staged_points
         WHERE id > ?1 AND series_id = ?2 AND ts >= ?3 AND ts < ?4",
        params![after, series, from, to],
    )
}

/// The staged points `select` picks (`series_id, ts, seq, value`), sorted
/// by series, time and seq.
fn sorted_points(
    conn: &Connection,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<StagedPoint>> {
    let mut stmt = conn.prepare_cached(select).map_err(db)?;
    let mut rows = stmt
        .query_map(args, |r| {
            Ok(StagedPoint {
                series: r.get(0)?,
                ts: r.get(1)?,
                seq: r.get(2)?,
                value: r.get(3)?,
            })
        })
        .map_err(db)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db)?;
    rows.sort_by_key(StagedPoint::key);
    Ok(rows)
}
