//! Devices and their certificates.

use deadpool_postgres::{GenericClient, Transaction};
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{db, get};
use crate::fleet::id_pattern;
use crate::millis::to_ms;
use crate::model::IdentityKind;
use crate::records::{CertificateRow, DeviceRow, RevokedRow, contains_pattern};
use crate::{
    CertificateRecord, Device, DeviceFilter, DevicePage, DeviceQuery, DeviceState, FleetSummary,
    NewDevice, Owner, Result, RevokedCertificate, StoreError,
};

const SELECT_DEVICE: &str = "SELECT d.id, d.state, d.owner_type, d.owner_id, d.cert_serial,
        c.fingerprint, c.not_after, d.online, d.last_seen, d.created_at, d.updated_at
    FROM devices d JOIN certificates c ON c.serial = d.cert_serial";

fn device_row(r: &Row) -> Result<DeviceRow> {
    Ok(DeviceRow {
        id: get(r, 0)?,
        state: get(r, 1)?,
        owner_type: get(r, 2)?,
        owner_id: get(r, 3)?,
        serial: get(r, 4)?,
        fingerprint: get(r, 5)?,
        not_after: get(r, 6)?,
        online: get(r, 7)?,
        last_seen: get(r, 8)?,
        created_at: get(r, 9)?,
        updated_at: get(r, 10)?,
    })
}

/// One device by id.
pub(super) async fn get_device(c: &impl GenericClient, id: &str) -> Result<Option<Device>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT_DEVICE} WHERE d.id = $1"))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(db)? {
        Some(row) => device_row(&row)?.into_device().map(Some),
        None => Ok(None),
    }
}

/// One device by id, or [`StoreError::NotFound`].
pub(super) async fn require(c: &impl GenericClient, id: &DeviceId) -> Result<Device> {
    get_device(c, id.as_str())
        .await?
        .ok_or_else(|| StoreError::NotFound(id.clone()))
}

/// Devices matching `filter`, ordered by id. `ILIKE` matches SQLite's
/// `LIKE`, which ignores the case of ASCII letters (ids are ASCII).
pub(super) async fn list(c: &impl GenericClient, filter: &DeviceFilter) -> Result<Vec<Device>> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT_DEVICE}
             WHERE ($1::text IS NULL OR d.state = $1::text)
               AND ($2::text IS NULL OR d.id ILIKE $2::text)
             ORDER BY d.id LIMIT $3 OFFSET $4"
        ))
        .await
        .map_err(db)?;
    let state = filter.state.map(DeviceState::as_str);
    let search = filter.search.as_deref().map(contains_pattern);
    let limit = filter.limit.map(i64::from);
    let offset = i64::from(filter.offset);
    c.query(&stmt, &[&state, &search, &limit, &offset])
        .await
        .map_err(db)?
        .iter()
        .map(|r| device_row(r)?.into_device())
        .collect()
}

/// Whether a device or service holds `id`.
pub(super) async fn identity_exists(c: &impl GenericClient, id: &DeviceId) -> Result<bool> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM identities WHERE id = $1)",
            &[&id.as_str()],
        )
        .await
        .map_err(db)?;
    get(&row, 0)
}

/// Reserves `id` in the shared identity namespace and records its first
/// certificate as current. The primary key decides a race between two
/// writers: the loser gets [`StoreError::IdTaken`], as it would have
/// had it come second.
pub(super) async fn insert_identity(
    tx: &Transaction<'_>,
    id: &DeviceId,
    kind: IdentityKind,
    cert: (&str, &str, OffsetDateTime, OffsetDateTime),
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO identities (id, kind, created_at) VALUES ($1, $2, $3)",
        &[&id.as_str(), &kind.as_str(), &now_ms],
    )
    .await
    .map_err(|e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            StoreError::IdTaken(id.clone())
        } else {
            db(e)
        }
    })?;
    let (serial, fingerprint, not_before, not_after) = cert;
    tx.execute(
        "INSERT INTO certificates (serial, identity_id, kind, fingerprint, not_before, not_after, status, issued_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'current', $7)",
        &[
            &serial,
            &id.as_str(),
            &kind.as_str(),
            &fingerprint,
            &to_ms(not_before),
            &to_ms(not_after),
            &now_ms,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Inserts identity, certificate and device rows.
pub(super) async fn insert(tx: &Transaction<'_>, d: &NewDevice, now_ms: i64) -> Result<()> {
    insert_identity(
        tx,
        &d.id,
        IdentityKind::Device,
        (&d.serial, &d.fingerprint, d.not_before, d.not_after),
        now_ms,
    )
    .await?;
    tx.execute(
        "INSERT INTO devices (id, state, cert_serial, claim_code_hash, created_at, updated_at)
         VALUES ($1, 'unbound', $2, $3, $4, $4)",
        &[&d.id.as_str(), &d.serial, &d.claim_code_hash, &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Marks a certificate revoked (no-op if it already is).
pub(super) async fn revoke_certificate(
    tx: &Transaction<'_>,
    serial: &str,
    reason: RevocationReason,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'revoked', revocation_reason = $2, revoked_at = $3
         WHERE serial = $1 AND status <> 'revoked'",
        &[&serial, &reason.to_string(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Sets a device's state.
pub(super) async fn set_state(
    tx: &Transaction<'_>,
    id: &DeviceId,
    state: DeviceState,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = $2, updated_at = $3 WHERE id = $1",
        &[&id.as_str(), &state.as_str(), &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Sets a device's claim code hash.
pub(super) async fn set_claim_code(
    tx: &Transaction<'_>,
    id: &DeviceId,
    hash: &str,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET claim_code_hash = $2, updated_at = $3 WHERE id = $1",
        &[&id.as_str(), &hash, &now_ms],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Records presence; a device that does not exist is left alone.
pub(super) async fn set_presence(
    c: &impl GenericClient,
    id: &DeviceId,
    online: bool,
    at_ms: i64,
) -> Result<()> {
    let stmt = c
        .prepare_cached("UPDATE devices SET online = $2, last_seen = $3 WHERE id = $1")
        .await
        .map_err(db)?;
    c.execute(&stmt, &[&id.as_str(), &online, &at_ms])
        .await
        .map_err(db)?;
    Ok(())
}

/// Removes the device and frees its id; certificates stay for the CRL.
pub(super) async fn remove(tx: &Transaction<'_>, id: &DeviceId) -> Result<()> {
    tx.execute("DELETE FROM identities WHERE id = $1", &[&id.as_str()])
        .await
        .map_err(db)?;
    Ok(())
}

/// The columns of a [`CertificateRow`], in its order.
pub(super) const SELECT_CERTIFICATE: &str =
    "SELECT serial, identity_id, kind, fingerprint, not_before, not_after, status,
            revocation_reason, revoked_at
     FROM certificates";

/// Reads a row selected with [`SELECT_CERTIFICATE`].
pub(super) fn certificate_row(r: &Row) -> Result<CertificateRow> {
    Ok(CertificateRow {
        serial: get(r, 0)?,
        identity: get(r, 1)?,
        kind: get(r, 2)?,
        fingerprint: get(r, 3)?,
        not_before: get(r, 4)?,
        not_after: get(r, 5)?,
        status: get(r, 6)?,
        revocation_reason: get(r, 7)?,
        revoked_at: get(r, 8)?,
    })
}

/// One certificate by serial.
pub(super) async fn certificate(
    c: &impl GenericClient,
    serial: &str,
) -> Result<Option<CertificateRecord>> {
    let stmt = c
        .prepare_cached(&format!("{SELECT_CERTIFICATE} WHERE serial = $1"))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&serial]).await.map_err(db)? {
        Some(r) => certificate_row(&r)?.into_record().map(Some),
        None => Ok(None),
    }
}

/// Every revoked certificate, oldest revocation first: those revoked
/// outright and those superseded by a renewal.
pub(super) async fn revoked(c: &impl GenericClient) -> Result<Vec<RevokedCertificate>> {
    let stmt = c
        .prepare_cached(
            "SELECT serial, identity_id, revocation_reason, revoked_at, not_after FROM certificates
             WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial",
        )
        .await
        .map_err(db)?;
    c.query(&stmt, &[])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            RevokedRow {
                serial: get(r, 0)?,
                identity: get(r, 1)?,
                reason: get(r, 2)?,
                revoked_at: get(r, 3)?,
                not_after: get(r, 4)?,
            }
            .into_revoked()
        })
        .collect()
}

/// `WHERE` of the console's device list; parameters `$1`..`$6`.
const QUERY_FILTER: &str = "WHERE ($1::text IS NULL OR d.id ILIKE $1::text)
       AND ($2::text IS NULL OR d.state = $2::text)
       AND ($3::bool IS NULL OR d.online = $3::bool)
       AND ($4::text IS NULL OR (d.owner_type = $4::text AND d.owner_id = $5::text))
       AND ($6::bigint IS NULL OR c.not_after < $6::bigint)
       AND ($7::text IS NULL OR EXISTS (SELECT 1 FROM device_state s
            WHERE s.device_id = d.id AND (s.reported::jsonb ->> 'fw') = $7::text))";

/// One page of the devices matching `q`, and how many match in all, read
/// from one snapshot so that the two agree.
pub(super) async fn query(
    client: &mut deadpool_postgres::Client,
    q: &DeviceQuery,
) -> Result<DevicePage> {
    let pattern = q.id.as_ref().map(id_pattern);
    let (owner_type, owner_id) = match &q.owner {
        Some(Owner::User(u)) => (Some("user"), Some(u.as_str())),
        Some(Owner::Group(g)) => (Some("group"), Some(g.as_str())),
        None => (None, None),
    };
    let state = q.state.map(DeviceState::as_str);
    let expires = q.cert_expires_before.map(to_ms);
    let limit = q.page_size();
    let (limit_sql, offset_sql) = (i64::from(limit), i64::from(q.offset));
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db)?;
    let count = tx
        .prepare_cached(&format!(
            "SELECT count(*) FROM devices d JOIN certificates c ON c.serial = d.cert_serial
             {QUERY_FILTER}"
        ))
        .await
        .map_err(db)?;
    let total: i64 = get(
        &tx.query_one(
            &count,
            &[
                &pattern,
                &state,
                &q.online,
                &owner_type,
                &owner_id,
                &expires,
                &q.firmware,
            ],
        )
        .await
        .map_err(db)?,
        0,
    )?;
    let page = tx
        .prepare_cached(&format!(
            "{SELECT_DEVICE} {QUERY_FILTER} ORDER BY {} LIMIT $8 OFFSET $9",
            q.order_by()
        ))
        .await
        .map_err(db)?;
    let devices = tx
        .query(
            &page,
            &[
                &pattern,
                &state,
                &q.online,
                &owner_type,
                &owner_id,
                &expires,
                &q.firmware,
                &limit_sql,
                &offset_sql,
            ],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| device_row(r)?.into_device())
        .collect::<Result<Vec<_>>>()?;
    tx.commit().await.map_err(db)?;
    Ok(DevicePage {
        devices,
        total: u64::try_from(total).unwrap_or(0),
        offset: q.offset,
        limit,
    })
}

/// Device counts per state and online.
pub(super) async fn summary(c: &impl GenericClient) -> Result<FleetSummary> {
    let stmt = c
        .prepare_cached(
            "SELECT state, count(*), count(*) FILTER (WHERE online) FROM devices GROUP BY state",
        )
        .await
        .map_err(db)?;
    let mut out = Vec::new();
    for row in c.query(&stmt, &[]).await.map_err(db)? {
        let state: String = get(&row, 0)?;
        let n: i64 = get(&row, 1)?;
        let online: i64 = get(&row, 2)?;
        let state = state.parse::<DeviceState>().map_err(StoreError::Corrupt)?;
        out.push((
            state,
            u64::try_from(n).unwrap_or(0),
            u64::try_from(online).unwrap_or(0),
        ));
    }
    Ok(FleetSummary::from_rows(out))
}
