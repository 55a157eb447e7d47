//! Audit rows: appended inside the caller's transaction, read for display
//! and verification.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{db, from_ms};
use crate::audit::GENESIS_MAC;
use crate::{AuditEntry, AuditKey, AuditRecord, Result, StoreError};

/// Appends `entry` to the chain inside `tx`.
pub(super) fn append(
    tx: &Transaction<'_>,
    key: &AuditKey,
    entry: &AuditEntry,
) -> Result<AuditRecord> {
    let (at, at_ms) = super::now_ms();
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let (seq, prev_mac) = match last {
        Some((s, m)) => (s as u64 + 1, m),
        None => (1, GENESIS_MAC.to_owned()),
    };
    let detail_raw = entry.detail.to_string();
    let mac = key.mac(
        seq,
        at_ms,
        &entry.actor.name,
        &entry.actor.source,
        &entry.action,
        entry.subject.as_deref(),
        &detail_raw,
        &prev_mac,
    );
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, source, action, subject, detail, prev_mac, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            seq as i64,
            at_ms,
            entry.actor.name,
            entry.actor.source,
            entry.action,
            entry.subject,
            detail_raw,
            prev_mac,
            mac
        ],
    )
    .map_err(db)?;
    Ok(AuditRecord {
        seq,
        at,
        actor: entry.actor.name.clone(),
        source: entry.actor.source.clone(),
        action: entry.action.clone(),
        subject: entry.subject.clone(),
        detail: entry.detail.clone(),
        detail_raw,
        prev_mac,
        mac,
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

type RawRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

fn record(raw: RawRow) -> Result<AuditRecord> {
    let (seq, at, actor, source, action, subject, detail_raw, prev_mac, mac) = raw;
    // A row whose detail is not JSON has been tampered with; keep it visible
    // as a string so that verification, not parsing, reports it.
    let detail = serde_json::from_str(&detail_raw)
        .unwrap_or_else(|_| serde_json::Value::String(detail_raw.clone()));
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
        at: from_ms(at)?,
        actor,
        source,
        action,
        subject,
        detail,
        detail_raw,
        prev_mac,
        mac,
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
    rows.map(|r| r.map_err(db).and_then(record)).collect()
}

/// Verifies the whole chain, streaming rows.
pub(super) fn verify(conn: &Connection, key: &AuditKey) -> Result<crate::AuditReport> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} ORDER BY seq"))
        .map_err(db)?;
    let rows = stmt.query_map([], row).map_err(db)?;
    key.verify(rows.map(|r| r.map_err(db).and_then(record)))
}
