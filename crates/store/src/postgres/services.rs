//! Service identities.

use deadpool_postgres::{GenericClient, Transaction};
use rampart_proto::DeviceId;
use tokio_postgres::Row;

use super::{db, devices, get};
use crate::model::IdentityKind;
use crate::records::ServiceRow;
use crate::{NewService, Result, Service};

const SELECT: &str = "SELECT s.id, s.state, s.cert_serial, c.fingerprint, c.not_after, s.created_at
    FROM services s JOIN certificates c ON c.serial = s.cert_serial";

fn row(r: &Row) -> Result<ServiceRow> {
    Ok(ServiceRow {
        id: get(r, 0)?,
        state: get(r, 1)?,
        serial: get(r, 2)?,
        fingerprint: get(r, 3)?,
        not_after: get(r, 4)?,
        created_at: get(r, 5)?,
    })
}

/// Inserts identity, certificate and service rows.
pub(super) async fn insert(tx: &Transaction<'_>, s: &NewService, now_ms: i64) -> Result<()> {
    devices::insert_identity(
        tx,
        &s.id,
        IdentityKind::Service,
        (&s.serial, &s.fingerprint, s.not_before, s.not_after),
        now_ms,
    )
    .await?;
    tx.execute(
        "INSERT INTO services (id, state, cert_serial, created_at, updated_at)
         VALUES ($1, 'active', $2, $3, $3)",
        &[&s.id.as_str(), &s.serial, &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// One service by name.
pub(super) async fn get_service(c: &impl GenericClient, id: &str) -> Result<Option<Service>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} WHERE s.id = $1"))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(db)? {
        Some(r) => row(&r)?.into_service().map(Some),
        None => Ok(None),
    }
}

/// All services by name.
pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<Service>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} ORDER BY s.id"))
        .await
        .map_err(db)?;
    c.query(&stmt, &[])
        .await
        .map_err(db)?
        .iter()
        .map(|r| row(r)?.into_service())
        .collect()
}

/// Marks a service revoked.
pub(super) async fn set_revoked(tx: &Transaction<'_>, id: &DeviceId, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE services SET state = 'revoked', updated_at = $2 WHERE id = $1",
        &[&id.as_str(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}
