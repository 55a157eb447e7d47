//! Audit rows: appended inside the caller's transaction, read for display
//! and verification.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::db;
use crate::audit::AuditRow;
use crate::{AuditEntry, AuditKey, AuditRecord, Result};

/// Appends `entry` to the chain inside `tx`. The `BEGIN IMMEDIATE` write
/// lock, held from here to commit, is the chain's append lock.
pub(super) fn append(
    tx: &Transaction<'_>,
    key: &AuditKey,
    entry: &AuditEntry,
) -> Result<AuditRecord> {
    let (at, _) = crate::millis::now_ms();
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let rec = key.seal(entry, last.map(|(s, m)| (s as u64, m)), at);
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, source, action, subject, detail, prev_mac, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            rec.seq as i64,
            crate::millis::to_ms(rec.at),
            rec.actor,
            rec.source,
            rec.action,
            rec.subject,
            rec.detail_raw,
            rec.prev_mac,
            rec.mac
        ],
    )
    .map_err(db)?;
    Ok(rec)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        source: r.get(3)?,
        action: r.get(4)?,
        subject: r.get(5)?,
        detail: r.get(6)?,
        prev_mac: r.get(7)?,
        mac: r.get(8)?,
    })
}

const SELECT: &str =
    "SELECT seq, at, actor, source, action, subject, detail, prev_mac, mac FROM audit_log";

/// Rows after `after`, oldest first.
pub(super) fn page(conn: &Connection, after: u64, limit: u32) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![after as i64, limit], row)
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(AuditRow::into_record))
        .collect()
}

/// Rows matching `s`, newest first (see [`crate::Store::search_audit`]).
pub(super) fn search(conn: &Connection, s: &crate::AuditSearch) -> Result<Vec<AuditRecord>> {
    let (before, action, prefix, actor, subject, since, until) = s.bound();
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE (?1 IS NULL OR seq < ?1)
               AND (?2 IS NULL OR action = ?2)
               AND (?3 IS NULL OR substr(action, 1, length(?3)) = ?3)
               AND (?4 IS NULL OR actor = ?4)
               AND (?5 IS NULL OR subject = ?5)
               AND (?6 IS NULL OR at >= ?6)
               AND (?7 IS NULL OR at < ?7)
             ORDER BY seq DESC LIMIT ?8"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                before, action, prefix, actor, subject, since, until, s.limit
            ],
            row,
        )
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(AuditRow::into_record))
        .collect()
}

/// Verifies the rows after `anchor`, streaming them, in one read
/// transaction (one snapshot of the log).
pub(super) fn verify_since(
    conn: &Connection,
    key: &AuditKey,
    anchor: &crate::AuditAnchor,
) -> Result<crate::AuditReport> {
    let tx = conn.unchecked_transaction().map_err(db)?;
    let seq = i64::try_from(anchor.seq).unwrap_or(i64::MAX);
    let anchor_row = tx
        .query_row(&format!("{SELECT} WHERE seq = ?1"), params![seq], row)
        .optional()
        .map_err(db)?
        .map(AuditRow::into_record)
        .transpose()?;
    let mut check = match key.resume(anchor, anchor_row)? {
        Ok(check) => check,
        Err(broken) => return Ok(broken),
    };
    let report = {
        let mut stmt = tx
            .prepare(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq"))
            .map_err(db)?;
        let rows = stmt.query_map(params![seq], row).map_err(db)?;
        let mut broken = None;
        for r in rows {
            if let Some(b) = check.push(r.map_err(db).and_then(AuditRow::into_record)?) {
                broken = Some(b);
                break;
            }
        }
        broken.unwrap_or_else(|| check.finish())
    };
    tx.finish().map_err(db)?;
    Ok(report)
}

/// Verifies the whole chain, streaming rows.
pub(super) fn verify(conn: &Connection, key: &AuditKey) -> Result<crate::AuditReport> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} ORDER BY seq"))
        .map_err(db)?;
    let rows = stmt.query_map([], row).map_err(db)?;
    key.verify(rows.map(|r| r.map_err(db).and_then(AuditRow::into_record)))
}
