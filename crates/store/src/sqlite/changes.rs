//! The change feed that a running `serve` follows.

use rusqlite::{Connection, Transaction, params};

use super::db;
use crate::records::ChangeRow;
use crate::{Change, ChangeKind, Result};

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
        params![crate::CHANGES_RETAINED],
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
            Ok(ChangeRow {
                seq: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                subject: r.get(3)?,
            })
        })
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(ChangeRow::into_change))
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
