//! Certificates issued by renewal: pending until the device connects with
//! one, then current, the one before superseded and on the CRL.

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::db;
use super::devices::{SELECT_CERTIFICATE, certificate_row};
use crate::millis::to_ms;
use crate::records::CertificateRow;
use crate::{CertificateRecord, NewCertificate, Result};

/// The identity's pending certificate's serial, if it has one.
pub(super) fn pending_serial(tx: &Transaction<'_>, id: &DeviceId) -> Result<Option<String>> {
    tx.query_row(
        "SELECT serial FROM certificates WHERE identity_id = ?1 AND status = 'pending'",
        params![id.as_str()],
        |r| r.get(0),
    )
    .optional()
    .map_err(db)
}

/// Marks a pending or current certificate superseded and revoked as
/// `superseded`, so that the CRL lists it.
pub(super) fn supersede(tx: &Transaction<'_>, serial: &str, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'superseded', revocation_reason = ?2, revoked_at = ?3
         WHERE serial = ?1 AND status IN ('pending', 'current')",
        params![serial, RevocationReason::Superseded.as_str(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Inserts a renewal's certificate as pending.
pub(super) fn insert_pending(tx: &Transaction<'_>, c: &NewCertificate, now_ms: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO certificates (serial, identity_id, kind, fingerprint, not_before, not_after, status, issued_at)
         VALUES (?1, ?2, 'device', ?3, ?4, ?5, 'pending', ?6)",
        params![
            c.serial,
            c.identity.as_str(),
            c.fingerprint,
            to_ms(c.not_before),
            to_ms(c.not_after),
            now_ms
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Makes `serial` current and the device row name it.
pub(super) fn make_current(
    tx: &Transaction<'_>,
    id: &DeviceId,
    serial: &str,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'current' WHERE serial = ?1 AND status = 'pending'",
        params![serial],
    )
    .map_err(db)?;
    tx.execute(
        "UPDATE devices SET cert_serial = ?2, updated_at = ?3 WHERE id = ?1",
        params![id.as_str(), serial, now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Revokes the identity's pending certificate, if any, with its device.
pub(super) fn revoke_pending(
    tx: &Transaction<'_>,
    id: &DeviceId,
    reason: RevocationReason,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'revoked', revocation_reason = ?2, revoked_at = ?3
         WHERE identity_id = ?1 AND status = 'pending'",
        params![id.as_str(), reason.as_str(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Every certificate of `id`, oldest first.
pub(super) fn of_identity(conn: &Connection, id: &DeviceId) -> Result<Vec<CertificateRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT_CERTIFICATE} WHERE identity_id = ?1 ORDER BY issued_at, serial"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![id.as_str()], certificate_row)
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(CertificateRow::into_record))
        .collect()
}
