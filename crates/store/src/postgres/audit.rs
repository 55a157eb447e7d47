//! Audit rows: appended under the append lock inside the caller's
//! transaction, read for display and verification.

use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::{IsolationLevel, Row};

use super::ledger::Ledger;
use super::{db, get};
use crate::audit::AuditRow;
use crate::millis::{now_ms, to_ms};
use crate::{AuditEntry, AuditKey, AuditRecord, AuditReport, Result};

/// Rows fetched per query while verifying, so that a long log is never
/// held in memory at once.
const VERIFY_PAGE: i64 = 1000;

/// Appends `entry` to the chain. The append lock, held from reading the
/// newest row until commit, is what keeps two writers from both extending
/// the same row.
pub(super) async fn append(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    entry: &AuditEntry,
) -> Result<AuditRecord> {
    let tx = ledger.tx();
    let (at, _) = now_ms();
    let last = match tx
        .query_opt(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(db)?
    {
        Some(r) => Some((get::<i64>(&r, 0)?, get::<String>(&r, 1)?)),
        None => None,
    };
    let rec = key.seal(entry, last.map(|(s, m)| (s as u64, m)), at);
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, source, action, subject, detail, prev_mac, mac)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &(rec.seq as i64),
            &to_ms(rec.at),
            &rec.actor,
            &rec.source,
            &rec.action,
            &rec.subject,
            &rec.detail_raw,
            &rec.prev_mac,
            &rec.mac,
        ],
    )
    .await
    .map_err(db)?;
    Ok(rec)
}

fn row(r: &Row) -> Result<AuditRecord> {
    AuditRow {
        seq: get(r, 0)?,
        at: get(r, 1)?,
        actor: get(r, 2)?,
        source: get(r, 3)?,
        action: get(r, 4)?,
        subject: get(r, 5)?,
        detail: get(r, 6)?,
        prev_mac: get(r, 7)?,
        mac: get(r, 8)?,
    }
    .into_record()
}

const PAGE: &str = "SELECT seq, at, actor, source, action, subject, detail, prev_mac, mac
    FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";

/// Rows after `after`, oldest first.
pub(super) async fn page(
    c: &impl GenericClient,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditRecord>> {
    let stmt = c.prepare_cached(PAGE).await.map_err(db)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    c.query(&stmt, &[&after, &i64::from(limit)])
        .await
        .map_err(db)?
        .iter()
        .map(row)
        .collect()
}

/// Rows matching `s`, newest first (see [`crate::Store::search_audit`]).
pub(super) async fn search(
    c: &impl GenericClient,
    s: &crate::AuditSearch,
) -> Result<Vec<AuditRecord>> {
    let (before, action, prefix, actor, subject, since, until) = s.bound();
    let stmt = c
        .prepare_cached(
            "SELECT seq, at, actor, source, action, subject, detail, prev_mac, mac
             FROM audit_log
             WHERE ($1::BIGINT IS NULL OR seq < $1)
               AND ($2::TEXT IS NULL OR action = $2)
               AND ($3::TEXT IS NULL OR left(action, length($3)) = $3)
               AND ($4::TEXT IS NULL OR actor = $4)
               AND ($5::TEXT IS NULL OR subject = $5)
               AND ($6::BIGINT IS NULL OR at >= $6)
               AND ($7::BIGINT IS NULL OR at < $7)
             ORDER BY seq DESC LIMIT $8",
        )
        .await
        .map_err(db)?;
    c.query(
        &stmt,
        &[
            &before,
            &action,
            &prefix,
            &actor,
            &subject,
            &since,
            &until,
            &i64::from(s.limit),
        ],
    )
    .await
    .map_err(db)?
    .iter()
    .map(row)
    .collect()
}

/// Verifies the whole chain (or only the rows after `anchor`, see
/// [`crate::Store::verify_audit_since`]) page by page, in one snapshot: a
/// REPEATABLE READ transaction sees the log as it was at its first query,
/// so rows appended meanwhile cannot shift the pages.
pub(super) async fn verify(
    client: &mut Client,
    key: &AuditKey,
    anchor: Option<&crate::AuditAnchor>,
) -> Result<AuditReport> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let mut check = match anchor {
        None => key.check()?,
        Some(anchor) => {
            let seq = i64::try_from(anchor.seq).unwrap_or(i64::MAX);
            let found = tx
                .query_opt(
                    "SELECT seq, at, actor, source, action, subject, detail, prev_mac, mac
                     FROM audit_log WHERE seq = $1",
                    &[&seq],
                )
                .await
                .map_err(db)?;
            let anchor_row = found.as_ref().map(row).transpose()?;
            match key.resume(anchor, anchor_row)? {
                Ok(check) => check,
                Err(broken) => return Ok(broken),
            }
        }
    };
    let stmt = tx.prepare_cached(PAGE).await.map_err(db)?;
    loop {
        let after = i64::try_from(check.last_seq()).unwrap_or(i64::MAX);
        let rows = tx.query(&stmt, &[&after, &VERIFY_PAGE]).await.map_err(db)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            if let Some(broken) = check.push(row(r)?) {
                return Ok(broken);
            }
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(check.finish())
}
