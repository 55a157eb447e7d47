//! Claims of devices by users and groups.

use deadpool_postgres::{GenericClient, Transaction};
use rampart_proto::DeviceId;
use tokio_postgres::Row;

use super::{db, get};
use crate::millis::to_ms;
use crate::records::ClaimRow;
use crate::{Claim, ClaimStatus, NewClaim, Owner, Result, StoreError};

const SELECT_CLAIM: &str = "SELECT id, device_id, owner_type, owner_id, nonce, status, reason,
        attempts, created_at, expires_at, finished_at
    FROM claims";

fn claim_row(r: &Row) -> Result<Claim> {
    ClaimRow {
        id: get(r, 0)?,
        device: get(r, 1)?,
        owner_type: get(r, 2)?,
        owner_id: get(r, 3)?,
        nonce: get(r, 4)?,
        status: get(r, 5)?,
        reason: get(r, 6)?,
        attempts: i64::from(get::<i32>(r, 7)?),
        created_at: get(r, 8)?,
        expires_at: get(r, 9)?,
        finished_at: get(r, 10)?,
    }
    .into_claim()
}

/// One claim by number.
pub(super) async fn get_claim(c: &impl GenericClient, id: u64) -> Result<Option<Claim>> {
    let Ok(id) = i64::try_from(id) else {
        return Ok(None);
    };
    let stmt = c
        .prepare_cached(&format!("{SELECT_CLAIM} WHERE id = $1"))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(db)? {
        Some(r) => claim_row(&r).map(Some),
        None => Ok(None),
    }
}

/// One claim by number, or [`StoreError::ClaimNotFound`].
pub(super) async fn require(c: &impl GenericClient, id: u64) -> Result<Claim> {
    get_claim(c, id).await?.ok_or(StoreError::ClaimNotFound(id))
}

/// The device's newest claim.
pub(super) async fn latest(c: &impl GenericClient, device: &DeviceId) -> Result<Option<Claim>> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT_CLAIM} WHERE device_id = $1 ORDER BY id DESC LIMIT 1"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&device.as_str()]).await.map_err(db)? {
        Some(r) => claim_row(&r).map(Some),
        None => Ok(None),
    }
}

/// The device's claim code hash.
pub(super) async fn code_hash(c: &impl GenericClient, device: &DeviceId) -> Result<Option<String>> {
    match c
        .query_opt(
            "SELECT claim_code_hash FROM devices WHERE id = $1",
            &[&device.as_str()],
        )
        .await
        .map_err(db)?
    {
        Some(r) => get(&r, 0),
        None => Err(StoreError::NotFound(device.clone())),
    }
}

/// Supersedes the device's pending claim and inserts `c` as pending;
/// returns the new claim's number.
pub(super) async fn insert(
    tx: &Transaction<'_>,
    c: &NewClaim,
    requested_by: &str,
    now_ms: i64,
) -> Result<u64> {
    tx.execute(
        "UPDATE claims SET status = 'superseded', finished_at = $2
         WHERE device_id = $1 AND status = 'pending'",
        &[&c.device.as_str(), &now_ms],
    )
    .await
    .map_err(db)?;
    let row = tx
        .query_one(
            "INSERT INTO claims (device_id, owner_type, owner_id, nonce, status, created_at,
                                 expires_at, requested_by)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7) RETURNING id",
            &[
                &c.device.as_str(),
                &c.owner.kind(),
                &c.owner.name(),
                &c.nonce,
                &now_ms,
                &to_ms(c.expires_at),
                &requested_by,
            ],
        )
        .await
        .map_err(db)?;
    let id: i64 = get(&row, 0)?;
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("claim id {id}")))
}

/// Ends a claim with `status` and `reason`.
pub(super) async fn finish(
    tx: &Transaction<'_>,
    id: u64,
    status: ClaimStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE claims SET status = $2, reason = $3, finished_at = $4 WHERE id = $1",
        &[&(id as i64), &status.as_str(), &reason, &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Binds the device to `owner` and consumes its claim code.
pub(super) async fn bind(
    tx: &Transaction<'_>,
    device: &DeviceId,
    owner: &Owner,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = 'bound', owner_type = $2, owner_id = $3,
                claim_code_hash = NULL, updated_at = $4
         WHERE id = $1",
        &[&device.as_str(), &owner.kind(), &owner.name(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Adds one wrong-nonce attempt; returns the count.
pub(super) async fn count_attempt(c: &impl GenericClient, id: u64) -> Result<u32> {
    match c
        .query_opt(
            "UPDATE claims SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
            &[&(id as i64)],
        )
        .await
        .map_err(db)?
    {
        Some(r) => Ok(u32::try_from(get::<i32>(&r, 0)?).unwrap_or(u32::MAX)),
        None => Err(StoreError::ClaimNotFound(id)),
    }
}
