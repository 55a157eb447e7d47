//! The change feed that a running `serve` follows.

use rusqlite::{Connection, Transaction, params};

use super::{db, from_ms};
use crate::{Change, ChangeKind, Result, StoreError};

/// How many feed rows are kept; a follower further behind resynchronises.
const RETAINED: i64 = 10_000;

/// Appends a change inside `tx` and trims the feed.
pub(super) fn append(
    tx: &Transaction<'_>,
    kind: ChangeKind,
    subject: &str,
    at_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO changes (at, kind, subject) VALUES (?1, ?2, ?3)",
        params![at_ms, kind.as_str(), subject],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM changes WHERE seq <= last_insert_rowid() - ?1",
        params![RETAINED],
    )
    .map_err(db)?;
    Ok(())
}

/// Rows after `after`, oldest first.
pub(super) fn since(conn: &Connection, after: u64) -> Result<Vec<Change>> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, at, kind, subject FROM changes WHERE seq > ?1 ORDER BY seq")
        .map_err(db)?;
    let rows = stmt
        .query_map(params![after as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(db)?;
    rows.map(|r| {
        let (seq, at, kind, subject) = r.map_err(db)?;
        Ok(Change {
            seq: seq as u64,
            at: from_ms(at)?,
            kind: ChangeKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind '{kind}'")))?,
            subject,
        })
    })
    .collect()
}

/// The newest sequence number, 0 when the feed is empty.
pub(super) fn latest(conn: &Connection) -> Result<u64> {
    let seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })
        .map_err(db)?;
    Ok(seq as u64)
}
