//! Service identities.

use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{db, devices};
use crate::model::IdentityKind;
use crate::records::ServiceRow;
use crate::{NewService, Result, Service};

const SELECT: &str = "SELECT s.id, s.state, s.cert_serial, c.fingerprint, c.not_after, s.created_at
    FROM services s JOIN certificates c ON c.serial = s.cert_serial";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceRow> {
    Ok(ServiceRow {
        id: r.get(0)?,
        state: r.get(1)?,
        serial: r.get(2)?,
        fingerprint: r.get(3)?,
        not_after: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// Inserts identity, certificate and service rows.
pub(super) fn insert(tx: &Transaction<'_>, s: &NewService, now_ms: i64) -> Result<()> {
    devices::insert_identity(
        tx,
        &s.id,
        IdentityKind::Service,
        (&s.serial, &s.fingerprint, s.not_before, s.not_after),
        now_ms,
    )?;
    tx.execute(
        "INSERT INTO services (id, state, cert_serial, created_at, updated_at)
         VALUES (?1, 'active', ?2, ?3, ?3)",
        params![s.id.as_str(), s.serial, now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// One service by name.
pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<Service>> {
    conn.prepare_cached(&format!("{SELECT} WHERE s.id = ?1"))
        .map_err(db)?
        .query_row(params![id], row)
        .optional()
        .map_err(db)?
        .map(ServiceRow::into_service)
        .transpose()
}

/// All services by name.
pub(super) fn list(conn: &Connection) -> Result<Vec<Service>> {
    let mut stmt = conn
        .prepare_cached(&format!("{SELECT} ORDER BY s.id"))
        .map_err(db)?;
    let rows = stmt.query_map([], row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(ServiceRow::into_service))
        .collect()
}

/// Marks a service revoked.
pub(super) fn set_revoked(tx: &Transaction<'_>, id: &DeviceId, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE services SET state = 'revoked', updated_at = ?2 WHERE id = ?1",
        params![id.as_str(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}
