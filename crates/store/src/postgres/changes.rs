//! The change feed that every `serve` replica follows.

use deadpool_postgres::GenericClient;

use super::ledger::Ledger;
use super::{db, get};
use crate::records::ChangeRow;
use crate::{Change, ChangeKind, Result};

/// Appends a change under the append lock and trims the feed. The lock is
/// what makes `seq` order equal commit order (see [`super::ledger`]).
pub(super) async fn append(
    ledger: &Ledger<'_, '_>,
    kind: ChangeKind,
    subject: &str,
    at_ms: i64,
) -> Result<()> {
    let tx = ledger.tx();
    let seq: i64 = get(
        &tx.query_one(
            "INSERT INTO changes (at, kind, subject) VALUES ($1, $2, $3) RETURNING seq",
            &[&at_ms, &kind.as_str(), &subject],
        )
        .await
        .map_err(db)?,
        0,
    )?;
    tx.execute(
        "DELETE FROM changes WHERE seq <= $1",
        &[&(seq - crate::CHANGES_RETAINED)],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Rows after `after`, oldest first.
pub(super) async fn since(c: &impl GenericClient, after: u64) -> Result<Vec<Change>> {
    let stmt = c
        .prepare_cached("SELECT seq, at, kind, subject FROM changes WHERE seq > $1 ORDER BY seq")
        .await
        .map_err(db)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    c.query(&stmt, &[&after])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            ChangeRow {
                seq: get(r, 0)?,
                at: get(r, 1)?,
                kind: get(r, 2)?,
                subject: get(r, 3)?,
            }
            .into_change()
        })
        .collect()
}

/// The newest sequence number, 0 when the feed is empty.
pub(super) async fn latest(c: &impl GenericClient) -> Result<u64> {
    let seq: i64 = get(
        &c.query_one("SELECT coalesce(max(seq), 0) FROM changes", &[])
            .await
            .map_err(db)?,
        0,
    )?;
    Ok(u64::try_from(seq).unwrap_or(0))
}
