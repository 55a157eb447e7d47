//! Certificates issued by renewal: pending until the device connects with
//! one, then current, the one before superseded and on the CRL.

use deadpool_postgres::{GenericClient, Transaction};
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;

use super::devices::{SELECT_CERTIFICATE, certificate_row};
use super::{db, get};
use crate::millis::to_ms;
use crate::{CertificateRecord, NewCertificate, Result};

/// The identity's pending certificate's serial, if it has one.
pub(super) async fn pending_serial(tx: &Transaction<'_>, id: &DeviceId) -> Result<Option<String>> {
    match tx
        .query_opt(
            "SELECT serial FROM certificates WHERE identity_id = $1 AND status = 'pending'",
            &[&id.as_str()],
        )
        .await
        .map_err(db)?
    {
        Some(row) => get(&row, 0).map(Some),
        None => Ok(None),
    }
}

/// Marks a pending or current certificate superseded and revoked as
/// `superseded`, so that the CRL lists it.
pub(super) async fn supersede(tx: &Transaction<'_>, serial: &str, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'superseded', revocation_reason = $2, revoked_at = $3
         WHERE serial = $1 AND status IN ('pending', 'current')",
        &[&serial, &RevocationReason::Superseded.as_str(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Inserts a renewal's certificate as pending.
pub(super) async fn insert_pending(
    tx: &Transaction<'_>,
    c: &NewCertificate,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO certificates (serial, identity_id, kind, fingerprint, not_before, not_after, status, issued_at)
         VALUES ($1, $2, 'device', $3, $4, $5, 'pending', $6)",
        &[
            &c.serial,
            &c.identity.as_str(),
            &c.fingerprint,
            &to_ms(c.not_before),
            &to_ms(c.not_after),
            &now_ms,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Makes `serial` current and the device row name it.
pub(super) async fn make_current(
    tx: &Transaction<'_>,
    id: &DeviceId,
    serial: &str,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'current' WHERE serial = $1 AND status = 'pending'",
        &[&serial],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE devices SET cert_serial = $2, updated_at = $3 WHERE id = $1",
        &[&id.as_str(), &serial, &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Revokes the identity's pending certificate, if any, with its device.
pub(super) async fn revoke_pending(
    tx: &Transaction<'_>,
    id: &DeviceId,
    reason: RevocationReason,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'revoked', revocation_reason = $2, revoked_at = $3
         WHERE identity_id = $1 AND status = 'pending'",
        &[&id.as_str(), &reason.as_str(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Every certificate of `id`, oldest first.
pub(super) async fn of_identity(
    c: &impl GenericClient,
    id: &DeviceId,
) -> Result<Vec<CertificateRecord>> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT_CERTIFICATE} WHERE identity_id = $1 ORDER BY issued_at, serial"
        ))
        .await
        .map_err(db)?;
    c.query(&stmt, &[&id.as_str()])
        .await
        .map_err(db)?
        .iter()
        .map(|r| certificate_row(r)?.into_record())
        .collect()
}
