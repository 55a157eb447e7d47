//! The points lane (decision 0018): `staged_points`, moved into `points`
//! and `rollups` a whole series at a time, its progress in
//! `staged_progress` (`next_series`, the smallest integer between rounds).

use std::cmp::Ordering;

use rusqlite::{Connection, Transaction, params};

use super::{Kind, Progress, select};
use crate::Result;
use crate::sqlite::db;
use crate::sqlite::rows::RowInsert;

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

    fn read_progress(conn: &Connection) -> Result<Progress<i64>> {
        progress(conn)
    }

    fn write_progress(tx: &Transaction<'_>, p: &Progress<i64>) -> Result<()> {
        tx.prepare_cached("UPDATE staged_progress SET mark = ?1, next_series = ?2 WHERE only = 1")
            .and_then(|mut s| s.execute(params![p.mark, next_series(p)]))
            .map_err(db)?;
        Ok(())
    }

    fn load_round(conn: &Connection, mark: i64, next: &i64) -> Result<Vec<StagedPoint>> {
        select::<Self>(
            conn,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id <= ?1 AND series_id >= ?2",
            params![mark, next],
        )
    }

    fn load_pending(conn: &Connection, p: &Progress<i64>) -> Result<Vec<StagedPoint>> {
        select::<Self>(
            conn,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id > ?1 OR series_id >= ?2",
            params![p.mark, next_series(p)],
        )
    }

    const SELECT_AFTER: &'static str = "SELECT id, series_id, ts, seq, value FROM staged_points
         WHERE id > ?1 ORDER BY id";
    fn insert() -> &'static RowInsert {
        static INSERT: RowInsert = RowInsert::new(
            "INSERT INTO staged_points (series_id, ts, seq, value) VALUES",
            4,
            "",
        );
        &INSERT
    }
    const DELETE: &'static str = "DELETE FROM staged_points WHERE id <= ?1";

    fn from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StagedPoint> {
        Ok(StagedPoint {
            series: r.get(at)?,
            ts: r.get(at + 1)?,
            seq: r.get(at + 2)?,
            value: r.get(at + 3)?,
        })
    }

    fn bind_at(
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
/// table has no index on series (it would put a leaf per series back into
/// every commit): a series the round already moved has only rows after the
/// mark pending, a rowid range; any other is a scan of the table, which a
/// round keeps to about a second of input.
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
    let mut rows = select::<Points>(
        conn,
        "SELECT series_id, ts, seq, value FROM staged_points
         WHERE id > ?1 AND series_id = ?2 AND ts >= ?3 AND ts < ?4",
        params![after, series, from, to],
    )?;
    rows.sort_by(Points::order);
    Ok(rows)
}
