//! Service identities.

use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{db, devices, from_ms};
use crate::model::IdentityKind;
use crate::{NewService, Result, Service, ServiceState, StoreError};

const SELECT: &str = "SELECT s.id, s.state, s.cert_serial, c.fingerprint, c.not_after, s.created_at
    FROM services s JOIN certificates c ON c.serial = s.cert_serial";

type Raw = (String, String, String, String, i64, i64);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn service((id, state, serial, fingerprint, not_after, created): Raw) -> Result<Service> {
    Ok(Service {
        id: DeviceId::parse(&id).map_err(|e| StoreError::Corrupt(format!("service id: {e}")))?,
        state: match state.as_str() {
            "active" => ServiceState::Active,
            "revoked" => ServiceState::Revoked,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "service {id} has state '{other}'"
                )));
            }
        },
        serial,
        fingerprint,
        not_after: from_ms(not_after)?,
        created_at: from_ms(created)?,
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
        .map(service)
        .transpose()
}

/// All services by name.
pub(super) fn list(conn: &Connection) -> Result<Vec<Service>> {
    let mut stmt = conn
        .prepare_cached(&format!("{SELECT} ORDER BY s.id"))
        .map_err(db)?;
    let rows = stmt.query_map([], row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(service)).collect()
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
