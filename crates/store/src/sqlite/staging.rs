//! Staged rows (decisions 0018 and 0019): what a group commit appends
//! instead of writing `points`, `rollups` and `readings`, and the
//! compaction rounds that move it.
//!
//! A commit that stores a few readings of many devices would otherwise
//! rewrite one `readings` leaf per device, one `points` leaf per series and
//! one `rollups` leaf per series and resolution, and fsync every one of
//! them. Appended to a rowid table (its hot end is a page or two) they cost
//! a few pages. Each kind of row has its *lane*: a staging table, a
//! progress row and the committer's view of both ([`Lane`]); points
//! ([`points`]) and readings ([`readings`]) are the two lanes.
//!
//! A commit appends its rows of a lane as one *batch*, a single row whose
//! body packs them ([`batch`], decision 0024): two row inserts per commit
//! instead of one per point and per reading. A staged row's id is its
//! batch's; everything below holds for batches as it did for single rows.
//!
//! A *round* takes every staged row of a lane (the largest id taken is its
//! `mark`), sorted in the order of the destination table, and each
//! following commit moves the next few rows of it there and records how
//! far it got (the position of the first row not moved) in the lane's
//! progress row, in the same transaction; the commit that moves the last
//! row deletes the round's rows (`id <= mark`). Each destination leaf is so
//! rewritten once per round instead of once per commit. Whatever the
//! moment, a staged row is either in its destination or *pending* (`id >
//! mark`, no round, or at or after the stored position), never both:
//! readers add pending rows to what they read, in the same snapshot.
//!
//! Rounds are moved by the writer thread's background work
//! ([`Staging::background_due`]), a slice of about
//! [`StagingOptions::slice_rows`] rows per lane (whole positions) in a
//! transaction of its own, while no write waits: the acknowledgement's transaction then only
//! appends. Such a transaction does not wait for its fsync (`synchronous =
//! NORMAL`): lost in a power cut, it leaves the rows staged as they were,
//! and the next acknowledgement's fsync makes it durable with its own. A
//! commit moves a slice itself only when the lane is behind
//! ([`StagingOptions::behind_rows`]: the writer had no idle moment for a
//! while), or when background slices are off.
//!
//! The committer keeps each lane's round in memory, and the rows staged
//! since it started, so that the next round starts without reading them
//! back. At each commit it checks the stored progress and whether another
//! connection committed (a second store on the same file, another
//! process): then it reloads both from the table, as after a restart.

/// The SQL of a lane's batch table, as the associated constants of
/// [`Kind`]: `batch_table!("staged_point_batches")`.
macro_rules! batch_table {
    ($table:literal) => {
        const TABLE: &'static str = $table;
        const SELECT_AFTER: &'static str = concat!(
            "SELECT id, body FROM ",
            $table,
            " WHERE id > ?1 ORDER BY id"
        );
        const SELECT_THROUGH: &'static str = concat!(
            "SELECT id, body FROM ",
            $table,
            " WHERE id <= ?1 ORDER BY id"
        );
        const INSERT: &'static str = concat!("INSERT INTO ", $table, " (body) VALUES (?1)");
        const DELETE: &'static str = concat!("DELETE FROM ", $table, " WHERE id <= ?1");
    };
}

pub(super) mod batch;
pub(super) mod points;
pub(super) mod readings;

use std::cmp::Ordering;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};

use super::db;
use crate::Result;
use points::Points;
use readings::Readings;

/// How commits stage points and readings; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct StagingOptions {
    /// A commit that stores at least this many points writes them (and its
    /// readings) into `points`, `rollups` and `readings` directly: large
    /// batches fill whole leaves, and staging would only write them twice.
    /// 0 turns staging off.
    pub direct_points: usize,
    /// A round starts once this many rows wait in a staging table...
    pub round_points: usize,
    /// ...or once the oldest of them waited this long.
    pub round_age: Duration,
    /// A commit that moves rows itself (see `behind_rows`) moves until it
    /// moved this many times the rows it staged (at least one position),
    /// so rounds end faster than input arrives.
    pub catch_up: usize,
    /// Rows of each lane that one background slice moves: whole positions
    /// (a series, a reading) until it moved at least this many, or the
    /// round ended. Its transaction is what a write
    /// queued meanwhile waits for, so it is kept to about a millisecond.
    /// 0 turns background slices off: every commit moves rows.
    pub slice_rows: usize,
    /// A lane whose staged rows not moved yet reach this many is behind:
    /// commits move rows too, as with `slice_rows` 0, until it is not.
    pub behind_rows: usize,
}

impl Default for StagingOptions {
    fn default() -> Self {
        Self {
            direct_points: 4096,
            round_points: 16_384,
            round_age: Duration::from_secs(1),
            catch_up: 2,
            slice_rows: 512,
            behind_rows: 32_768,
        }
    }
}

impl StagingOptions {
    /// The rows a commit that stages `incoming` rows moves itself, with
    /// `backlog` rows of the lane not moved yet.
    fn commit_budget(&self, incoming: usize, backlog: usize) -> usize {
        if self.slice_rows == 0 || backlog >= self.behind_rows {
            incoming.saturating_mul(self.catch_up).max(1)
        } else {
            0
        }
    }
}

/// What a lane stages: its rows, their order, and the SQL of its staging
/// table and progress row.
pub(super) trait Kind {
    /// A staged row.
    type Row: Clone + Debug;
    /// Where a round stands: the position of the first row not moved.
    /// Rows of equal position move in the same commit.
    type Pos: Clone + PartialEq + Debug;
    /// What the lane indexes of its waiting rows for lookups.
    type Index: Default + Debug;
    /// What the lane learns from the tables as it goes; dropped whenever
    /// the view is reloaded (another writer may have changed the tables).
    type Memo: Default + Debug;

    /// The order of a round (the destination's), consistent with [`Kind::pos`].
    fn order(a: &Self::Row, b: &Self::Row) -> Ordering;
    fn pos(row: &Self::Row) -> Self::Pos;
    /// Whether two rows have the same position (without building it).
    fn same_pos(a: &Self::Row, b: &Self::Row) -> bool;
    fn index(index: &mut Self::Index, row: &Self::Row);

    /// Whether `row` is at or after the position `next` of a round.
    fn at_or_after(row: &Self::Row, next: &Self::Pos) -> bool;

    fn read_progress(conn: &Connection) -> Result<Progress<Self::Pos>>;
    fn write_progress(tx: &Transaction<'_>, progress: &Progress<Self::Pos>) -> Result<()>;

    /// The lane's batch table ([`batch`]).
    const TABLE: &'static str;
    /// `SELECT id, body FROM <table> WHERE id > ?1 ORDER BY id`.
    const SELECT_AFTER: &'static str;
    /// `SELECT id, body FROM <table> WHERE id <= ?1 ORDER BY id`.
    const SELECT_THROUGH: &'static str;
    /// `INSERT INTO <table> (body) VALUES (?1)`.
    const INSERT: &'static str;
    /// `DELETE FROM <table> WHERE id <= ?1`.
    const DELETE: &'static str;
    /// The encoded size of a row (about, for a string's length).
    const ROW_BYTES: usize;
    /// Appends the row's fields to a batch body.
    fn encode(row: &Self::Row, out: &mut Vec<u8>);
    /// The next row of a batch body; `None` when the body ends inside it.
    fn decode(fields: &mut batch::Fields<'_>) -> Option<Self::Row>;
}

/// The rows of the round `mark` and `next` describe that are not moved
/// yet (`id <= mark`, at or after `next`).
fn load_round<K: Kind>(conn: &Connection, mark: i64, next: &K::Pos) -> Result<Vec<K::Row>> {
    let mut out = Vec::new();
    batch::for_each::<K>(conn, K::SELECT_THROUGH, [mark], |_, rows| {
        out.extend(rows.into_iter().filter(|r| K::at_or_after(r, next)));
        Ok(())
    })?;
    Ok(out)
}

/// Every pending row as of `progress` (read in the same transaction), in
/// batch order.
pub(super) fn load_pending<K: Kind>(
    conn: &Connection,
    progress: &Progress<K::Pos>,
) -> Result<Vec<K::Row>> {
    let mut out = Vec::new();
    batch::for_each::<K>(conn, K::SELECT_AFTER, [i64::MIN], |id, rows| {
        out.extend(
            rows.into_iter()
                .filter(|r| progress.is_pending(id, |next| K::at_or_after(r, next))),
        );
        Ok(())
    })?;
    Ok(out)
}

/// The rows with an id above `after` (all with `None`) in id order, and
/// the id of the last.
fn load_after<K: Kind>(
    conn: &Connection,
    after: Option<i64>,
) -> Result<(Vec<K::Row>, Option<i64>)> {
    let rows = batch::rows_after::<K>(conn, after.unwrap_or(i64::MIN))?;
    let last = rows.last().map(|(id, _)| *id);
    Ok((rows.into_iter().map(|(_, r)| r).collect(), last))
}

/// Deletes the rows up to `through` (all with `None`).
fn delete<K: Kind>(tx: &Transaction<'_>, through: Option<i64>) -> Result<()> {
    tx.prepare_cached(K::DELETE)
        .and_then(|mut s| s.execute([through.unwrap_or(i64::MAX)]))
        .map_err(db)?;
    Ok(())
}

/// The stored progress of a lane. A staged row is *pending*, not in its
/// destination yet, when `id > mark`, when no round is in progress
/// (`next` is `None`), or when its position is at or after `next`; the
/// SQL of readers and of each [`Kind`] spells out this test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Progress<P> {
    pub mark: i64,
    pub next: Option<P>,
}

impl<P> Progress<P> {
    /// Whether a row of the batch `id` is pending; `at_or_after` says
    /// whether the row is at or after a round's position.
    pub(super) fn is_pending(&self, id: i64, at_or_after: impl FnOnce(&P) -> bool) -> bool {
        id > self.mark || self.next.as_ref().is_none_or(at_or_after)
    }
}

/// The rows of a round not moved yet, in the lane's order.
#[derive(Debug)]
struct Round<K: Kind> {
    mark: i64,
    rows: Vec<K::Row>,
    /// Index of the first row not moved.
    pos: usize,
}

impl<K: Kind> Round<K> {
    /// A new round of every staged row (between rounds all are pending, and
    /// the committer holds them as [`Waiting`]): sorted in memory, without
    /// reading the table back.
    fn start(waiting: &Waiting<K>) -> Option<Self> {
        let mark = waiting.last_id?;
        let mut rows = waiting.rows.clone();
        rows.sort_by(K::order);
        Some(Self { mark, rows, pos: 0 })
    }

    /// The rest of the round `progress` describes.
    fn resume(conn: &Connection, mark: i64, next: &K::Pos) -> Result<Self> {
        let mut rows = load_round::<K>(conn, mark, next)?;
        rows.sort_by(K::order);
        Ok(Self { mark, rows, pos: 0 })
    }

    /// The rows not moved yet.
    fn pending(&self) -> &[K::Row] {
        &self.rows[self.pos..]
    }
}

/// The staged rows that no round took yet, as the table holds them: what
/// the next round starts from. Kept by the committer as it appends them,
/// so that starting a round does not read thousands of rows back inside a
/// commit (it did: 10-20 ms of a commit every third of a second at 12,000
/// messages/s).
#[derive(Debug)]
struct Waiting<K: Kind> {
    rows: Vec<K::Row>,
    index: K::Index,
    /// The largest id among them.
    last_id: Option<i64>,
}

impl<K: Kind> Default for Waiting<K> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            index: K::Index::default(),
            last_id: None,
        }
    }
}

impl<K: Kind> Waiting<K> {
    fn load(conn: &Connection, after: Option<i64>) -> Result<Self> {
        let (rows, last_id) = load_after::<K>(conn, after)?;
        let mut waiting = Self {
            rows: Vec::new(),
            index: K::Index::default(),
            last_id,
        };
        waiting.extend(rows);
        Ok(waiting)
    }

    fn extend(&mut self, rows: Vec<K::Row>) {
        for row in &rows {
            K::index(&mut self.index, row);
        }
        self.rows.extend(rows);
    }
}

/// A lane's progress as [`Lane::sync`] found it in the current
/// transaction.
#[derive(Debug)]
#[must_use]
pub(super) struct Synced<K: Kind>(Progress<K::Pos>);

/// The committer's view of one staging table. Lives next to the writer
/// connection and changes only once the transaction that changed the table
/// committed (see [`LaneStep`]).
#[derive(Debug)]
pub(super) struct Lane<K: Kind> {
    options: StagingOptions,
    /// The progress this process last read or wrote; `None` before the
    /// first commit.
    known: Option<Progress<K::Pos>>,
    /// The writer connection's `data_version` when the view was last
    /// brought in line: it changes when any other connection commits.
    version: Option<i64>,
    round: Option<Round<K>>,
    /// Rows staged and not in the round.
    waiting: Waiting<K>,
    /// Since when the first of them waits.
    waiting_since: Option<Instant>,
    memo: K::Memo,
}

/// What one transaction did to a staging table, applied with
/// [`Lane::apply`] once it committed (a rolled-back transaction leaves the
/// view as it was, like the table).
#[derive(Debug)]
#[must_use]
pub(super) struct LaneStep<K: Kind> {
    progress: Progress<K::Pos>,
    started: Option<Round<K>>,
    /// Where the round stands after the step; `None` when the step moved
    /// nothing (a commit that left moving to the background slices), so
    /// that the round stays where it is.
    pos: Option<usize>,
    /// Rows the transaction appended, and the id of the last.
    appended: Vec<K::Row>,
    last_id: Option<i64>,
    drained: bool,
}

impl<K: Kind> LaneStep<K> {
    fn at(progress: Progress<K::Pos>) -> Self {
        Self {
            progress,
            started: None,
            pos: None,
            appended: Vec::new(),
            last_id: None,
            drained: false,
        }
    }
}

impl<K: Kind> Lane<K> {
    fn new(options: StagingOptions) -> Self {
        Self {
            options,
            known: None,
            version: None,
            round: None,
            waiting: Waiting::default(),
            waiting_since: None,
            memo: K::Memo::default(),
        }
    }

    /// Brings the view in line with the table when another connection
    /// committed since this one last did (SQLite's `data_version`: another
    /// store on the same file, another process), or before the first
    /// commit. Comparing the stored progress alone is not enough: rowids are
    /// reused once a round empties the table, so another writer can leave
    /// the same progress over different rows. Once per transaction: the
    /// returned [`Synced`] is what [`Lane::step`] goes on from.
    pub(super) fn sync(&mut self, conn: &Connection, now: Instant) -> Result<Synced<K>> {
        self.bring_in_line(conn, now).map(Synced)
    }

    fn bring_in_line(&mut self, conn: &Connection, now: Instant) -> Result<Progress<K::Pos>> {
        let stored = K::read_progress(conn)?;
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(db)?;
        if self.known.as_ref() == Some(&stored) && self.version == Some(version) {
            return Ok(stored);
        }
        self.version = Some(version);
        self.round = match &stored.next {
            Some(next) => Some(Round::resume(conn, stored.mark, next)?),
            None => None,
        };
        self.waiting = Waiting::load(conn, stored.next.is_some().then_some(stored.mark))?;
        self.waiting_since = (!self.waiting.rows.is_empty()).then_some(now);
        self.memo = K::Memo::default();
        self.known = Some(stored.clone());
        Ok(stored)
    }

    /// Staged rows not moved yet: the rest of the round and those waiting.
    fn backlog(&self) -> usize {
        self.round.as_ref().map_or(0, |r| r.pending().len()) + self.waiting.rows.len()
    }

    /// How long until a slice has work: zero during a round or once a
    /// round is due, `None` while nothing waits.
    fn due_in(&self, now: Instant) -> Option<Duration> {
        if self.round.is_some() || self.waiting.rows.len() >= self.options.round_points {
            return Some(Duration::ZERO);
        }
        let since = self
            .waiting_since
            .filter(|_| !self.waiting.rows.is_empty())?;
        Some(
            self.options
                .round_age
                .saturating_sub(now.saturating_duration_since(since)),
        )
    }

    /// The rows a commit that stages `incoming` rows moves itself.
    pub(super) fn commit_budget(&self, incoming: usize) -> usize {
        self.options.commit_budget(incoming, self.backlog())
    }

    /// A compaction step in the transaction `synced` came from: moves the
    /// next rows of the round in progress, at least `budget` of them
    /// unless the round ends first (whole positions; nothing with 0),
    /// starting a round when enough waits, and hands the moved rows to
    /// `moved` (one slice, in the round's order).
    pub(super) fn step(
        &mut self,
        tx: &Transaction<'_>,
        Synced(progress): Synced<K>,
        budget: usize,
        now: Instant,
        mut moved: impl FnMut(&[K::Row]) -> Result<()>,
    ) -> Result<LaneStep<K>> {
        if budget == 0 {
            return Ok(LaneStep::at(progress));
        }
        let due = self.due_in(now) == Some(Duration::ZERO);
        let started = match (&self.round, due) {
            (None, true) => Round::start(&self.waiting),
            _ => None,
        };
        let Some(round) = started.as_ref().or(self.round.as_ref()) else {
            return Ok(LaneStep::at(progress));
        };
        let mut end = round.pos;
        while end < round.rows.len() && end - round.pos < budget {
            let first = end;
            while round
                .rows
                .get(end)
                .is_some_and(|r| K::same_pos(r, &round.rows[first]))
            {
                end += 1;
            }
        }
        moved(&round.rows[round.pos..end])?;
        let next = Progress {
            mark: round.mark,
            next: round.rows.get(end).map(K::pos),
        };
        K::write_progress(tx, &next)?;
        if next.next.is_none() {
            delete::<K>(tx, Some(round.mark))?;
        }
        Ok(LaneStep {
            pos: Some(end),
            started,
            ..LaneStep::at(next)
        })
    }

    /// Moves every pending row (retention runs on tables without staged
    /// rows, so it prunes what it reads) and empties the table.
    pub(super) fn drain(
        &mut self,
        tx: &Transaction<'_>,
        now: Instant,
        mut moved: impl FnMut(&[K::Row]) -> Result<()>,
    ) -> Result<LaneStep<K>> {
        let progress = self.bring_in_line(tx, now)?;
        let mut pending = load_pending::<K>(tx, &progress)?;
        pending.sort_by(K::order);
        moved(&pending)?;
        delete::<K>(tx, None)?;
        let next = Progress {
            mark: progress.mark,
            next: None,
        };
        K::write_progress(tx, &next)?;
        Ok(LaneStep {
            drained: true,
            ..LaneStep::at(next)
        })
    }

    /// Appends the rows of a commit (after its [`step`](Self::step)).
    pub(super) fn append(
        tx: &Transaction<'_>,
        step: &mut LaneStep<K>,
        rows: Vec<K::Row>,
    ) -> Result<()> {
        if !rows.is_empty() {
            step.last_id = Some(batch::append::<K>(tx, &rows)?);
            step.appended = rows;
        }
        Ok(())
    }

    /// Takes in a committed step.
    fn apply(&mut self, step: LaneStep<K>, now: Instant) {
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
        if let (Some(round), Some(pos)) = (&mut self.round, step.pos) {
            round.pos = pos;
        }
        if step.progress.next.is_none() {
            self.round = None;
        }
        self.known = Some(step.progress);
        if let Some(last) = step.last_id {
            self.waiting.extend(step.appended);
            self.waiting.last_id = Some(last);
            self.waiting_since.get_or_insert(now);
        }
    }
}

/// The committer's view of both staging tables.
#[derive(Debug)]
pub(super) struct Staging {
    pub points: Lane<Points>,
    pub readings: Lane<Readings>,
}

/// What one transaction did to both staging tables.
#[derive(Debug)]
#[must_use]
pub(super) struct Step {
    pub points: LaneStep<Points>,
    pub readings: LaneStep<Readings>,
    /// The readings it stored (staged or written directly): device and
    /// largest seq.
    pub stored: Vec<(String, i64)>,
}

impl Staging {
    pub(super) fn new(options: StagingOptions) -> Self {
        Self {
            points: Lane::new(options),
            readings: Lane::new(options),
        }
    }

    pub(super) fn options(&self) -> StagingOptions {
        self.points.options
    }

    /// Brings both lanes in line with the tables, once per transaction
    /// ([`Lane::sync`]).
    pub(super) fn sync(
        &mut self,
        conn: &Connection,
        now: Instant,
    ) -> Result<(Synced<Points>, Synced<Readings>)> {
        Ok((self.points.sync(conn, now)?, self.readings.sync(conn, now)?))
    }

    /// Staged rows of both lanes not moved yet.
    pub(super) fn backlog(&self) -> usize {
        self.points.backlog() + self.readings.backlog()
    }

    /// When the background work's next slice has rows to move: zero when
    /// one does now, `None` while nothing is staged (or slices are off).
    pub(super) fn background_due(&self, now: Instant) -> Option<Duration> {
        if self.options().slice_rows == 0 {
            return None;
        }
        match (self.points.due_in(now), self.readings.due_in(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes in a committed step.
    pub(super) fn apply(&mut self, step: Step, now: Instant) {
        self.points.apply(step.points, now);
        self.readings.apply(step.readings, now);
        for (device, seq) in step.stored {
            self.readings.stored(&device, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::points::StagedPoint;
    use super::*;

    /// A connection holding the points lane's tables, as migrated.
    fn lane_db() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        for sql in [
            include_str!("../../migrations/sqlite/0014_staged_points.sql"),
            include_str!("../../migrations/sqlite/0016_staged_batches.sql"),
        ] {
            conn.execute_batch(sql).expect("schema");
        }
        conn
    }

    fn point(series: i64) -> StagedPoint {
        StagedPoint {
            series,
            ts: 1_000 + series,
            seq: series,
            value: series as f64,
        }
    }

    /// One committed transaction of the lane: a step moving `budget`
    /// rows, then `rows` appended; the series the step moved.
    fn commit(
        conn: &mut Connection,
        lane: &mut Lane<Points>,
        budget: usize,
        rows: Vec<StagedPoint>,
    ) -> Vec<i64> {
        let now = Instant::now();
        let tx = conn.transaction().expect("begin");
        let synced = lane.sync(&tx, now).expect("sync");
        let mut moved = Vec::new();
        let mut step = lane
            .step(&tx, synced, budget, now, |rows| {
                moved.extend(rows.iter().map(|p| p.series));
                Ok(())
            })
            .expect("step");
        Lane::append(&tx, &mut step, rows).expect("append");
        tx.commit().expect("commit");
        lane.apply(step, now);
        moved
    }

    /// A commit that leaves moving to the background slices (budget 0)
    /// in the middle of a round leaves the round where it was: the next
    /// slice moves the next series, not the first ones again.
    #[test]
    fn a_step_that_moves_nothing_keeps_the_round_where_it_was() {
        let mut conn = lane_db();
        let mut lane = Lane::<Points>::new(StagingOptions {
            round_points: 1,
            round_age: Duration::ZERO,
            ..StagingOptions::default()
        });
        let first = (1..=3).map(point).collect();
        assert!(commit(&mut conn, &mut lane, 0, first).is_empty());
        // A slice starts the round and moves its first series.
        assert_eq!(commit(&mut conn, &mut lane, 1, Vec::new()), [1]);
        // A commit appends without moving anything.
        assert!(commit(&mut conn, &mut lane, 0, vec![point(4)]).is_empty());
        assert_eq!(lane.backlog(), 3, "series 2 and 3 of the round, 4 waits");
        // The next slices go on with the round, then start the next one.
        assert_eq!(commit(&mut conn, &mut lane, 1, Vec::new()), [2]);
        assert_eq!(commit(&mut conn, &mut lane, 5, Vec::new()), [3]);
        assert_eq!(commit(&mut conn, &mut lane, 5, Vec::new()), [4]);
        assert_eq!(lane.backlog(), 0);
        assert!(commit(&mut conn, &mut lane, 5, Vec::new()).is_empty());
    }
}
