//! The on-disk form of staged rows (decision 0024): each commit appends
//! its rows of a lane as one *batch*, a row `(id, body)` whose body packs
//! them in a binary encoding of the store's own.
//!
//! A body is a format byte ([`FORMAT`]) followed by the rows, each a fixed
//! sequence of little-endian fields (a kind's [`Kind::encode`]). Decoding
//! checks every length: a body that does not decode is a
//! [`StoreError::Corrupt`], never skipped, because its rows are
//! acknowledged telemetry. The format byte leaves room to change the body
//! later without a migration of the rows already staged.

use rusqlite::{Connection, Transaction};

use super::Kind;
use super::points::{Points, StagedPoint};
use super::readings::{Readings, StagedReading};
use crate::sqlite::db;
use crate::{Result, StoreError};

/// The format byte of a batch body: fixed-width little-endian fields.
pub(in crate::sqlite) const FORMAT: u8 = 1;

/// Writes `rows` as one batch body into `out` (cleared first).
pub(in crate::sqlite) fn encode<K: Kind>(rows: &[K::Row], out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT);
    for row in rows {
        K::encode(row, out);
    }
}

/// The rows of one batch body.
pub(in crate::sqlite) fn decode<K: Kind>(body: &[u8], out: &mut Vec<K::Row>) -> Result<()> {
    let Some((&format, mut rest)) = body.split_first() else {
        return Err(corrupt::<K>("an empty batch"));
    };
    if format != FORMAT {
        return Err(corrupt::<K>(&format!("a batch of unknown format {format}")));
    }
    while !rest.is_empty() {
        let mut fields = Fields(rest);
        let row = K::decode(&mut fields).ok_or_else(|| corrupt::<K>("a truncated batch"))?;
        out.push(row);
        rest = fields.0;
    }
    Ok(())
}

fn corrupt<K: Kind>(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} in {}", K::TABLE))
}

/// The fields of a body not read yet; every read fails (`None`) past the
/// end.
pub(in crate::sqlite) struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(in crate::sqlite) fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_le_bytes)
    }

    pub(in crate::sqlite) fn f64(&mut self) -> Option<f64> {
        self.take::<8>().map(f64::from_le_bytes)
    }

    /// A string of up to 65,535 bytes, its length first (two bytes).
    pub(in crate::sqlite) fn str(&mut self) -> Option<&'a str> {
        let len = usize::from(u16::from_le_bytes(self.take::<2>()?));
        if self.0.len() < len {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).ok()
    }
}

pub(in crate::sqlite) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(in crate::sqlite) fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Puts a string with its length. Device ids are at most 64 bytes
/// (`rampart_proto::DeviceId`); a longer string is a bug of the caller.
pub(in crate::sqlite) fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("a staged string fits in 65,535 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Calls `each` with the id and rows of every batch picked by `sql` (which
/// selects `id, body` with its parameters `args`), in the order selected.
pub(in crate::sqlite) fn for_each<K: Kind>(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    mut each: impl FnMut(i64, Vec<K::Row>) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let mut rows = stmt.query(args).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let id: i64 = r.get(0).map_err(db)?;
        let body = r.get_ref(1).map_err(db)?.as_blob().map_err(|e| {
            StoreError::Corrupt(format!("batch {id} of {} is not a blob: {e}", K::TABLE))
        })?;
        let mut out = Vec::new();
        decode::<K>(body, &mut out)?;
        each(id, out)?;
    }
    Ok(())
}

/// Every staged row of the lane with an id above `after`, with the id of
/// its batch, in id order.
pub(in crate::sqlite) fn rows_after<K: Kind>(
    conn: &Connection,
    after: i64,
) -> Result<Vec<(i64, K::Row)>> {
    let mut out = Vec::new();
    for_each::<K>(conn, K::SELECT_AFTER, [after], |id, rows| {
        out.extend(rows.into_iter().map(|r| (id, r)));
        Ok(())
    })?;
    Ok(out)
}

/// Appends `rows` as one batch; the batch's id.
pub(in crate::sqlite) fn append<K: Kind>(tx: &Transaction<'_>, rows: &[K::Row]) -> Result<i64> {
    let mut body = Vec::with_capacity(1 + rows.len() * K::ROW_BYTES);
    encode::<K>(rows, &mut body);
    tx.prepare_cached(K::INSERT)
        .and_then(|mut s| s.execute([body]))
        .map_err(db)?;
    Ok(tx.last_insert_rowid())
}

/// Migration 16: carries the rows of the row-per-point and
/// row-per-reading staging tables over into batches of one row each,
/// keeping their ids (the progress rows' marks refer to them), and drops
/// the old tables.
pub(in crate::sqlite) fn pack_row_tables(tx: &Transaction<'_>) -> Result<()> {
    pack::<Points>(
        tx,
        "SELECT id, series_id, ts, seq, value FROM staged_points",
        |r| {
            Ok(StagedPoint {
                series: r.get(1)?,
                ts: r.get(2)?,
                seq: r.get(3)?,
                value: r.get(4)?,
            })
        },
    )?;
    pack::<Readings>(
        tx,
        "SELECT id, device_id, seq, ts, received_at, digest, flags FROM staged_readings",
        |r| {
            let device: String = r.get(1)?;
            // Device ids are at most 64 bytes; only a hand-edited file
            // holds a longer one, and the encoding has two length bytes.
            if device.len() > usize::from(u16::MAX) {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    "a staged device id longer than 65,535 bytes".into(),
                ));
            }
            Ok(StagedReading {
                device,
                seq: r.get(2)?,
                ts: r.get(3)?,
                received_at: r.get(4)?,
                digest: r.get(5)?,
                flags: r.get(6)?,
            })
        },
    )?;
    tx.execute_batch("DROP TABLE staged_points; DROP TABLE staged_readings;")
        .map_err(db)
}

fn pack<K: Kind>(
    tx: &Transaction<'_>,
    select: &str,
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<K::Row>,
) -> Result<()> {
    let mut stmt = tx.prepare(select).map_err(db)?;
    let mut insert = tx
        .prepare(&format!(
            "INSERT INTO {} (id, body) VALUES (?1, ?2)",
            K::TABLE
        ))
        .map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    let mut body = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        let id: i64 = r.get(0).map_err(db)?;
        encode::<K>(&[row(r).map_err(db)?], &mut body);
        insert.execute(rusqlite::params![id, body]).map_err(db)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip<K: Kind>(rows: &[K::Row]) -> Vec<K::Row> {
        let mut body = Vec::new();
        encode::<K>(rows, &mut body);
        let mut out = Vec::new();
        decode::<K>(&body, &mut out).expect("decode");
        out
    }

    fn reading(device: &str, seq: i64) -> StagedReading {
        StagedReading {
            device: device.to_owned(),
            seq,
            ts: -seq,
            received_at: i64::MAX,
            digest: i64::MIN,
            flags: 3,
        }
    }

    proptest! {
        #[test]
        fn points_come_back_bit_for_bit(
            rows in proptest::collection::vec(
                (any::<i64>(), any::<i64>(), any::<i64>(), any::<u64>()), 0..40),
        ) {
            let rows: Vec<StagedPoint> = rows
                .into_iter()
                .map(|(series, ts, seq, bits)| StagedPoint {
                    series, ts, seq, value: f64::from_bits(bits),
                })
                .collect();
            let back = round_trip::<Points>(&rows);
            prop_assert_eq!(back.len(), rows.len());
            for (a, b) in rows.iter().zip(&back) {
                prop_assert_eq!((a.series, a.ts, a.seq, a.value.to_bits()),
                                (b.series, b.ts, b.seq, b.value.to_bits()));
            }
        }

        #[test]
        fn readings_come_back(
            rows in proptest::collection::vec(("[a-z0-9_.-]{0,64}", any::<i64>()), 0..20),
        ) {
            let rows: Vec<StagedReading> =
                rows.iter().map(|(d, seq)| reading(d, *seq)).collect();
            prop_assert_eq!(round_trip::<Readings>(&rows), rows);
        }

        /// Any body decodes to rows or is refused as damaged; never a
        /// panic, never rows made up from a cut-off tail.
        #[test]
        fn damaged_bodies_are_refused(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            if decode::<Readings>(&body, &mut out).is_ok() {
                let mut again = Vec::new();
                encode::<Readings>(&out, &mut again);
                prop_assert_eq!(again, body);
            }
        }
    }

    #[test]
    fn a_cut_unknown_or_empty_body_is_corrupt() {
        let mut body = Vec::new();
        encode::<Readings>(&[reading("dev-1", 1), reading("dev-2", 2)], &mut body);
        let mut out = Vec::new();
        let cut = decode::<Readings>(&body[..body.len() - 3], &mut out).expect_err("cut");
        assert!(
            matches!(&cut, StoreError::Corrupt(m) if m.contains("truncated") && m.contains("staged_reading_batches")),
            "{cut}"
        );
        body[0] = 2;
        let unknown = decode::<Readings>(&body, &mut out).expect_err("format");
        assert!(
            unknown.to_string().contains("unknown format 2"),
            "{unknown}"
        );
        let empty = decode::<Points>(&[], &mut Vec::new()).expect_err("empty");
        assert!(empty.to_string().contains("empty batch"), "{empty}");
        // A points body must hold whole points.
        let mut points = Vec::new();
        encode::<Points>(
            &[StagedPoint {
                series: 1,
                ts: 2,
                seq: 3,
                value: 4.0,
            }],
            &mut points,
        );
        points.pop();
        assert!(decode::<Points>(&points, &mut Vec::new()).is_err());
    }
}
