//! The points lane (decision 0018): `staged_points`, moved into `points`
//! and `rollups` a whole series at a time, its progress in
//! `staged_progress` (`next_series`, the smallest integer between rounds).

use std::cmp::Ordering;

use rusqlite::{Connection, Transaction, params};

use super::{Kind, Progress};
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
        select(
            conn,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id <= ?1 AND series_id >= ?2",
            params![mark, next],
        )
    }

    fn load_pending(conn: &Connection, p: &Progress<i64>) -> Result<Vec<StagedPoint>> {
        select(
            conn,
            "SELECT series_id, ts, seq, value FROM staged_points
             WHERE id > ?1 OR series_id >= ?2",
            params![p.mark, next_series(p)],
        )
    }

    fn load_after(
        conn: &Connection,
        after: Option<i64>,
    ) -> Result<(Vec<StagedPoint>, Option<i64>)> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, series_id, ts, seq, value FROM staged_points
                 WHERE id > ?1 ORDER BY id",
            )
            .map_err(db)?;
        let mut out = Vec::new();
        let mut last = None;
        let mut rows = stmt.query(params![after.unwrap_or(i64::MIN)]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            last = Some(r.get(0).map_err(db)?);
            out.push(StagedPoint {
                series: r.get(1).map_err(db)?,
                ts: r.get(2).map_err(db)?,
                seq: r.get(3).map_err(db)?,
                value: r.get(4).map_err(db)?,
            });
        }
        Ok((out, last))
    }

    fn append(tx: &Transaction<'_>, rows: &[StagedPoint]) -> Result<i64> {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO staged_points (series_id, ts, seq, value) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db)?;
        for p in rows {
            insert
                .execute(params![p.series, p.ts, p.seq, p.value])
                .map_err(db)?;
        }
        Ok(tx.last_insert_rowid())
    }

    fn delete(tx: &Transaction<'_>, through: Option<i64>) -> Result<()> {
        tx.prepare_cached("DELETE FROM staged_points WHERE id <= ?1")
            .and_then(|mut s| s.execute(params![through.unwrap_or(i64::MAX)]))
            .map_err(db)?;
        Ok(())
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
    let mut rows = select(
        conn,
        "SELECT series_id, ts, seq, value FROM staged_points
         WHERE id > ?1 AND series_id = ?2 AND ts >= ?3 AND ts < ?4",
        params![after, series, from, to],
    )?;
    rows.sort_by(Points::order);
    Ok(rows)
}

/// The staged points `select` picks (`series_id, ts, seq, value`).
fn select(
    conn: &Connection,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<StagedPoint>> {
    let mut stmt = conn.prepare_cached(select).map_err(db)?;
    stmt.query_map(args, |r| {
        Ok(StagedPoint {
            series: r.get(0)?,
            ts: r.get(1)?,
            seq: r.get(2)?,
            value: r.get(3)?,
        })
    })
    .map_err(db)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(db)
}
