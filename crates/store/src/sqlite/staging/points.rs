//! The points lane (decision 0018): batches of points in
//! `staged_point_batches` (decision 0024), moved into `points` and
//! `rollups` a whole series at a time, its progress in `staged_progress`
//! (`next_series`, the smallest integer between rounds).

use std::cmp::Ordering;

use rusqlite::{Connection, Transaction, params};

use super::{Kind, Progress, batch};
use crate::Result;
use crate::sqlite::db;

/// `next_series` between rounds: every staged row is pending.
const NO_ROUND: i64 = i64::MIN;

/// One staged point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(in crate::sqlite) struct StagedPoint {
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

/// The points lane.
#[derive(Debug)]
pub(in crate::sqlite) struct Points;

impl Kind for Points {
    type Row = StagedPoint;
    /// The series: a commit moves whole series, so that a reader can tell
    /// which rows of a series are pending by the series alone.
    type Pos = i64;
    type Index = ();
    type Memo = ();

    fn order(a: &StagedPoint, b: &StagedPoint) -> Ordering {
        a.key().cmp(&b.key())
    }

    fn pos(row: &StagedPoint) -> i64 {
        row.series
    }

    fn same_pos(a: &StagedPoint, b: &StagedPoint) -> bool {
        a.series == b.series
    }

    fn index((): &mut (), _: &StagedPoint) {}

    fn at_or_after(row: &StagedPoint, next: &i64) -> bool {
        row.series >= *next
    }

    fn read_progress(conn: &Connection) -> Result<Progress<i64>> {
        progress(conn)
    }

    fn write_progress(tx: &Transaction<'_>, p: &Progress<i64>) -> Result<()> {
        tx.prepare_cached("UPDATE staged_progress SET mark = ?1, next_series = ?2 WHERE only = 1")
            .and_then(|mut s| s.execute(params![p.mark, next_series(p)]))
            .map_err(db)?;
        Ok(())
    }

    batch_table!("staged_point_batches");
    const ROW_BYTES: usize = 32;

    fn encode(p: &StagedPoint, out: &mut Vec<u8>) {
        batch::put_i64(out, p.series);
        batch::put_i64(out, p.ts);
        batch::put_i64(out, p.seq);
        batch::put_f64(out, p.value);
    }

    fn decode(f: &mut batch::Fields<'_>) -> Option<StagedPoint> {
        Some(StagedPoint {
            series: f.i64()?,
            ts: f.i64()?,
            seq: f.i64()?,
            value: f.f64()?,
        })
    }
}

impl Points {
    /// Binds a point's columns (series, ts, seq, value) to the parameters
    /// `at`, `at + 1`, ... of a multi-row insert into `points`.
    pub(in crate::sqlite) fn bind_at(
        stmt: &mut rusqlite::Statement<'_>,
        at: usize,
        p: &StagedPoint,
    ) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(at, p.series)?;
        stmt.raw_bind_parameter(at + 1, p.ts)?;
        stmt.raw_bind_parameter(at + 2, p.seq)?;
        stmt.raw_bind_parameter(at + 3, p.value)
    }
}

/// The stored progress of the points lane (inside the caller's
/// transaction, for a consistent view).
pub(in crate::sqlite) fn progress(conn: &Connection) -> Result<Progress<i64>> {
    conn.prepare_cached("SELECT mark, next_series FROM staged_progress WHERE only = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                let next: i64 = r.get(1)?;
                Ok(Progress {
                    mark: r.get(0)?,
                    next: (next != NO_ROUND).then_some(next),
                })
            })
        })
        .map_err(db)
}

/// `next_series` as stored: a staged row is pending when `id > mark OR
/// series_id >= next_series`, true for every row between rounds.
pub(in crate::sqlite) fn next_series(p: &Progress<i64>) -> i64 {
    p.next.unwrap_or(NO_ROUND)
}

/// The pending staged rows of `series` with `ts` in `[from, to)`, sorted
/// by time and seq, as of `progress` (read in the same transaction). The
/// batches are not indexed by series (each holds many): a series the
/// round already moved has only rows after the mark pending, a range of
/// batches; any other needs every batch, which a round keeps to about a
/// second of input.
pub(in crate::sqlite) fn pending_points(
    conn: &Connection,
    progress: &Progress<i64>,
    series: i64,
    from: i64,
    to: i64,
) -> Result<Vec<StagedPoint>> {
    let after = if series >= next_series(progress) {
        i64::MIN
    } else {
        progress.mark
    };
    let mut rows = Vec::new();
    batch::for_each::<Points>(conn, Points::SELECT_AFTER, [after], |_, batch| {
        rows.extend(
            batch
                .into_iter()
                .filter(|p| p.series == series && p.ts >= from && p.ts < to),
        );
        Ok(())
    })?;
    rows.sort_by(Points::order);
    Ok(rows)
}
