//! Claims of devices by users and groups.

use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::db;
use crate::millis::to_ms;
use crate::records::ClaimRow;
use crate::{Claim, ClaimStatus, NewClaim, Owner, Result, StoreError};

const SELECT_CLAIM: &str = "SELECT id, device_id, owner_type, owner_id, nonce, status, reason,
        attempts, created_at, expires_at, finished_at
    FROM claims";

fn claim_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimRow> {
    Ok(ClaimRow {
        id: r.get(0)?,
        device: r.get(1)?,
        owner_type: r.get(2)?,
        owner_id: r.get(3)?,
        nonce: r.get(4)?,
        status: r.get(5)?,
        reason: r.get(6)?,
        attempts: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

/// One claim by number.
pub(super) fn get(conn: &Connection, id: u64) -> Result<Option<Claim>> {
    let Ok(id) = i64::try_from(id) else {
        return Ok(None);
    };
    conn.prepare_cached(&format!("{SELECT_CLAIM} WHERE id = ?1"))
        .map_err(db)?
        .query_row(params![id], claim_row)
        .optional()
        .map_err(db)?
        .map(ClaimRow::into_claim)
        .transpose()
}

/// One claim by number, or [`StoreError::ClaimNotFound`].
pub(super) fn require(conn: &Connection, id: u64) -> Result<Claim> {
    get(conn, id)?.ok_or(StoreError::ClaimNotFound(id))
}

/// The device's newest claim.
pub(super) fn latest(conn: &Connection, device: &DeviceId) -> Result<Option<Claim>> {
    conn.prepare_cached(&format!(
        "{SELECT_CLAIM} WHERE device_id = ?1 ORDER BY id DESC LIMIT 1"
    ))
    .map_err(db)?
    .query_row(params![device.as_str()], claim_row)
    .optional()
    .map_err(db)?
    .map(ClaimRow::into_claim)
    .transpose()
}

/// The device's claim code hash.
pub(super) fn code_hash(conn: &Connection, device: &DeviceId) -> Result<Option<String>> {
    conn.query_row(
        "SELECT claim_code_hash FROM devices WHERE id = ?1",
        params![device.as_str()],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| StoreError::NotFound(device.clone()))
}

/// Supersedes the device's pending claim and inserts `c` as pending,
/// started by `requested_by` (an audit actor name); returns the new
/// claim's number.
pub(super) fn insert(
    tx: &Transaction<'_>,
    c: &NewClaim,
    requested_by: &str,
    now_ms: i64,
) -> Result<u64> {
    tx.execute(
        "UPDATE claims SET status = 'superseded', finished_at = ?2
         WHERE device_id = ?1 AND status = 'pending'",
        params![c.device.as_str(), now_ms],
    )
    .map_err(db)?;
    tx.execute(
        "INSERT INTO claims (device_id, owner_type, owner_id, nonce, status, created_at,
                             expires_at, requested_by)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7)",
        params![
            c.device.as_str(),
            c.owner.kind(),
            c.owner.name(),
            c.nonce,
            now_ms,
            to_ms(c.expires_at),
            requested_by
        ],
    )
    .map_err(db)?;
    Ok(tx.last_insert_rowid() as u64)
}

/// Ends a claim with `status` and `reason`.
pub(super) fn finish(
    tx: &Transaction<'_>,
    id: u64,
    status: ClaimStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE claims SET status = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
        params![id as i64, status.as_str(), reason, now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Binds the device to `owner` and consumes its claim code.
pub(super) fn bind(
    tx: &Transaction<'_>,
    device: &DeviceId,
    owner: &Owner,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = 'bound', owner_type = ?2, owner_id = ?3,
                claim_code_hash = NULL, updated_at = ?4
         WHERE id = ?1",
        params![device.as_str(), owner.kind(), owner.name(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Adds one wrong-nonce attempt; returns the count.
pub(super) fn count_attempt(tx: &Transaction<'_>, id: u64) -> Result<u32> {
    let attempts: Option<i64> = tx
        .query_row(
            "UPDATE claims SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts",
            params![id as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    attempts
        .map(|a| u32::try_from(a).unwrap_or(u32::MAX))
        .ok_or(StoreError::ClaimNotFound(id))
}
