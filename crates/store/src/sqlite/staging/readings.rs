//! The readings lane (decision 0019): batches of readings in
//! `staged_reading_batches` (decision 0024), moved into `readings` in its
//! key order (device, seq), its progress in `staged_readings_progress`
//! (`next_device` NULL between rounds).
//!
//! `readings` is the dedupe record: clustered by device, so a commit that
//! inserted the readings of 20 devices rewrote 20 leaves. Staged, a
//! commit appends them to one hot page, and the committer answers "was
//! this (device, seq) stored, and with which digest?" for staged rows
//! from memory ([`Lane::digest_of`]) and for moved ones from the table.

use std::cmp::Ordering;

use rusqlite::{Connection, Transaction, params};

use super::{Kind, Lane, Progress, batch};
use crate::Result;
use crate::sqlite::db;
use crate::sqlite::rows::RowInsert;
use crate::telemetry::FastMap;

/// One staged reading: the row it becomes in `readings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::sqlite) struct StagedReading {
    pub device: String,
    pub seq: i64,
    pub ts: i64,
    pub received_at: i64,
    pub digest: i64,
    pub flags: i64,
}

/// The readings lane.
#[derive(Debug)]
pub(in crate::sqlite) struct Readings;

/// Digests of the waiting rows by device and seq.
pub(in crate::sqlite) type DigestIndex = FastMap<String, FastMap<i64, i64>>;

impl Kind for Readings {
    type Row = StagedReading;
    type Pos = (String, i64);
    type Index = DigestIndex;
    /// The largest seq stored for each device looked up so far (in
    /// `readings` or staged; `i64::MIN` for none): a reading above it is
    /// new without a lookup, and devices count upwards.
    type Memo = FastMap<String, i64>;

    fn order(a: &StagedReading, b: &StagedReading) -> Ordering {
        (a.device.as_str(), a.seq).cmp(&(b.device.as_str(), b.seq))
    }

    fn pos(row: &StagedReading) -> (String, i64) {
        (row.device.clone(), row.seq)
    }

    fn same_pos(a: &StagedReading, b: &StagedReading) -> bool {
        a.seq == b.seq && a.device == b.device
    }

    fn index(index: &mut DigestIndex, row: &StagedReading) {
        index
            .entry(row.device.clone())
            .or_default()
            .insert(row.seq, row.digest);
    }

    fn at_or_after(row: &StagedReading, next: &(String, i64)) -> bool {
        (row.device.as_str(), row.seq) >= (next.0.as_str(), next.1)
    }

    fn read_progress(conn: &Connection) -> Result<Progress<(String, i64)>> {
        progress(conn)
    }

    fn write_progress(tx: &Transaction<'_>, p: &Progress<(String, i64)>) -> Result<()> {
        let (device, seq) = p.next.as_ref().map(|(d, s)| (d.as_str(), *s)).unzip();
        tx.prepare_cached(
            "UPDATE staged_readings_progress SET mark = ?1, next_device = ?2, next_seq = ?3
             WHERE only = 1",
        )
        .and_then(|mut s| s.execute(params![p.mark, device, seq]))
        .map_err(db)?;
        Ok(())
    }

    batch_table!("staged_reading_batches");
    const ROW_BYTES: usize = 2 + 16 + 5 * 8;

    fn encode(r: &StagedReading, out: &mut Vec<u8>) {
        batch::put_str(out, &r.device);
        batch::put_i64(out, r.seq);
        batch::put_i64(out, r.ts);
        batch::put_i64(out, r.received_at);
        batch::put_i64(out, r.digest);
        batch::put_i64(out, r.flags);
    }

    fn decode(f: &mut batch::Fields<'_>) -> Option<StagedReading> {
        Some(StagedReading {
            device: f.str()?.to_owned(),
            seq: f.i64()?,
            ts: f.i64()?,
            received_at: f.i64()?,
            digest: f.i64()?,
            flags: f.i64()?,
        })
    }
}

impl Readings {
    /// Binds a reading's columns (device, seq, ts, received_at, digest,
    /// flags) to the parameters `at`, `at + 1`, ... of a multi-row insert
    /// into `readings`.
    pub(in crate::sqlite) fn bind_at(
        stmt: &mut rusqlite::Statement<'_>,
        at: usize,
        r: &StagedReading,
    ) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(at, r.device.as_str())?;
        stmt.raw_bind_parameter(at + 1, r.seq)?;
        stmt.raw_bind_parameter(at + 2, r.ts)?;
        stmt.raw_bind_parameter(at + 3, r.received_at)?;
        stmt.raw_bind_parameter(at + 4, r.digest)?;
        stmt.raw_bind_parameter(at + 5, r.flags)
    }
}

impl Lane<Readings> {
    /// Whether `(device, seq)` may be stored already: false when `seq` is
    /// above every seq stored for `device`, which is the rule for a device
    /// counting upwards, so most readings need no lookup in `readings`.
    /// Learns a device's largest seq from the table and the lane on first
    /// use; call after the transaction's [`Lane::sync`].
    pub(in crate::sqlite) fn may_hold(
        &mut self,
        conn: &Connection,
        device: &str,
        seq: i64,
    ) -> Result<bool> {
        if let Some(highest) = self.memo.get(device) {
            return Ok(seq <= *highest);
        }
        let stored: Option<i64> = conn
            .prepare_cached("SELECT max(seq) FROM readings WHERE device_id = ?1")
            .and_then(|mut s| s.query_row([device], |r| r.get(0)))
            .map_err(db)?;
        let waiting = self
            .waiting
            .index
            .get(device)
            .and_then(|seqs| seqs.keys().max().copied());
        let in_round = self.round.as_ref().and_then(|round| {
            let pending = round.pending();
            // The round is sorted by device and seq: the device's last row
            // is just before the first row of a greater device.
            let end = pending.partition_point(|r| r.device.as_str() <= device);
            end.checked_sub(1)
                .map(|i| &pending[i])
                .filter(|r| r.device == device)
                .map(|r| r.seq)
        });
        let highest = stored.max(waiting).max(in_round).unwrap_or(i64::MIN);
        self.memo.insert(device.to_owned(), highest);
        Ok(seq <= highest)
    }

    /// Takes in a committed reading of `device` up to `seq`.
    pub(super) fn stored(&mut self, device: &str, seq: i64) {
        // Only a device looked up already: otherwise the table may hold
        // larger seqs than this one.
        if let Some(highest) = self.memo.get_mut(device) {
            *highest = (*highest).max(seq);
        }
    }

    /// The digest of the staged reading `(device, seq)` not moved into
    /// `readings` yet, as of the last committed step (the caller's own
    /// transaction has not changed the lane before its step).
    pub(in crate::sqlite) fn digest_of(&self, device: &str, seq: i64) -> Option<i64> {
        if let Some(d) = self.waiting.index.get(device).and_then(|m| m.get(&seq)) {
            return Some(*d);
        }
        let pending = self.round.as_ref()?.pending();
        pending
            .binary_search_by(|r| (r.device.as_str(), r.seq).cmp(&(device, seq)))
            .ok()
            .map(|i| pending[i].digest)
    }
}

/// The stored progress of the readings lane (inside the caller's
/// transaction, for a consistent view).
pub(in crate::sqlite) fn progress(conn: &Connection) -> Result<Progress<(String, i64)>> {
    conn.prepare_cached(
        "SELECT mark, next_device, next_seq FROM staged_readings_progress WHERE only = 1",
    )
    .and_then(|mut s| {
        s.query_row([], |r| {
            let device: Option<String> = r.get(1)?;
            let seq: Option<i64> = r.get(2)?;
            Ok(Progress {
                mark: r.get(0)?,
                next: device.zip(seq),
            })
        })
    })
    .map_err(db)
}

/// Inserts readings into `readings` (moved from the lane, or written
/// directly by a large commit), many rows per statement; a reading whose
/// `(device, seq)` is there already is left out.
pub(in crate::sqlite) fn write_readings(
    tx: &Transaction<'_>,
    rows: &[StagedReading],
) -> Result<()> {
    static INSERT: RowInsert = RowInsert::new(
        "INSERT INTO readings (device_id, seq, ts, received_at, digest, flags) VALUES",
        6,
        "ON CONFLICT (device_id, seq) DO NOTHING",
    );
    INSERT.run(tx, rows, Readings::bind_at)
}

/// The smallest timestamp of any staged reading, moved or not.
pub(in crate::sqlite) fn oldest_staged(conn: &Connection) -> Result<Option<i64>> {
    let mut oldest: Option<i64> = None;
    batch::for_each::<Readings>(conn, Readings::SELECT_AFTER, [i64::MIN], |_, rows| {
        for r in rows {
            oldest = Some(oldest.map_or(r.ts, |o| o.min(r.ts)));
        }
        Ok(())
    })?;
    Ok(oldest)
}
