//! Devices and their certificates.

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::db;
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

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        state: r.get(1)?,
        owner_type: r.get(2)?,
        owner_id: r.get(3)?,
        serial: r.get(4)?,
        fingerprint: r.get(5)?,
        not_after: r.get(6)?,
        online: r.get(7)?,
        last_seen: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// One device by id.
pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<Device>> {
    conn.prepare_cached(&format!("{SELECT_DEVICE} WHERE d.id = ?1"))
        .map_err(db)?
        .query_row(params![id], device_row)
        .optional()
        .map_err(db)?
        .map(DeviceRow::into_device)
        .transpose()
}

/// One device by id, or [`StoreError::NotFound`].
pub(super) fn require(conn: &Connection, id: &DeviceId) -> Result<Device> {
    get(conn, id.as_str())?.ok_or_else(|| StoreError::NotFound(id.clone()))
}

/// Devices matching `filter`, ordered by id.
pub(super) fn list(conn: &Connection, filter: &DeviceFilter) -> Result<Vec<Device>> {
    let search = filter.search.as_deref().map(contains_pattern);
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT_DEVICE}
             WHERE (?1 IS NULL OR d.state = ?1)
               AND (?2 IS NULL OR d.id LIKE ?2 ESCAPE '\\')
             ORDER BY d.id LIMIT ?3 OFFSET ?4"
        ))
        .map_err(db)?;
    let limit = filter.limit.map_or(-1, i64::from);
    let rows = stmt
        .query_map(
            params![
                filter.state.map(DeviceState::as_str),
                search,
                limit,
                filter.offset
            ],
            device_row,
        )
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(DeviceRow::into_device))
        .collect()
}

/// Whether a device or service holds `id`.
pub(super) fn identity_exists(conn: &Connection, id: &DeviceId) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM identities WHERE id = ?1)",
        params![id.as_str()],
        |r| r.get(0),
    )
    .map_err(db)
}

/// Reserves `id` in the shared identity namespace and records its first
/// certificate as current.
pub(super) fn insert_identity(
    tx: &Transaction<'_>,
    id: &DeviceId,
    kind: IdentityKind,
    cert: (&str, &str, OffsetDateTime, OffsetDateTime),
    now_ms: i64,
) -> Result<()> {
    if identity_exists(tx, id)? {
        return Err(StoreError::IdTaken(id.clone()));
    }
    tx.execute(
        "INSERT INTO identities (id, kind, created_at) VALUES (?1, ?2, ?3)",
        params![id.as_str(), kind.as_str(), now_ms],
    )
    .map_err(db)?;
    let (serial, fingerprint, not_before, not_after) = cert;
    tx.execute(
        "INSERT INTO certificates (serial, identity_id, kind, fingerprint, not_before, not_after, status, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'current', ?7)",
        params![
            serial,
            id.as_str(),
            kind.as_str(),
            fingerprint,
            to_ms(not_before),
            to_ms(not_after),
            now_ms
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// Inserts identity, certificate and device rows.
pub(super) fn insert(tx: &Transaction<'_>, d: &NewDevice, now_ms: i64) -> Result<()> {
    insert_identity(
        tx,
        &d.id,
        IdentityKind::Device,
        (&d.serial, &d.fingerprint, d.not_before, d.not_after),
        now_ms,
    )?;
    tx.execute(
        "INSERT INTO devices (id, state, cert_serial, claim_code_hash, created_at, updated_at)
         VALUES (?1, 'unbound', ?2, ?3, ?4, ?4)",
        params![d.id.as_str(), d.serial, d.claim_code_hash, now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Marks a certificate revoked (no-op if it already is).
pub(super) fn revoke_certificate(
    tx: &Transaction<'_>,
    serial: &str,
    reason: RevocationReason,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE certificates SET status = 'revoked', revocation_reason = ?2, revoked_at = ?3
         WHERE serial = ?1 AND status != 'revoked'",
        params![serial, reason.to_string(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Sets a device's state.
pub(super) fn set_state(
    tx: &Transaction<'_>,
    id: &DeviceId,
    state: DeviceState,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET state = ?2, updated_at = ?3 WHERE id = ?1",
        params![id.as_str(), state.as_str(), now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Sets a device's claim code hash.
pub(super) fn set_claim_code(
    tx: &Transaction<'_>,
    id: &DeviceId,
    hash: &str,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET claim_code_hash = ?2, updated_at = ?3 WHERE id = ?1",
        params![id.as_str(), hash, now_ms],
    )
    .map_err(db)?;
    Ok(())
}

/// Removes the device and frees its id; certificates stay for the CRL.
pub(super) fn remove(tx: &Transaction<'_>, id: &DeviceId) -> Result<()> {
    tx.execute("DELETE FROM identities WHERE id = ?1", params![id.as_str()])
        .map_err(db)?;
    Ok(())
}

/// The columns of a [`CertificateRow`], in its order.
pub(super) const SELECT_CERTIFICATE: &str =
    "SELECT serial, identity_id, kind, fingerprint, not_before, not_after, status,
            revocation_reason, revoked_at
     FROM certificates";

/// Reads a row selected with [`SELECT_CERTIFICATE`].
pub(super) fn certificate_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRow> {
    Ok(CertificateRow {
        serial: r.get(0)?,
        identity: r.get(1)?,
        kind: r.get(2)?,
        fingerprint: r.get(3)?,
        not_before: r.get(4)?,
        not_after: r.get(5)?,
        status: r.get(6)?,
        revocation_reason: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

/// One certificate by serial.
pub(super) fn certificate(conn: &Connection, serial: &str) -> Result<Option<CertificateRecord>> {
    conn.prepare_cached(&format!("{SELECT_CERTIFICATE} WHERE serial = ?1"))
        .map_err(db)?
        .query_row(params![serial], certificate_row)
        .optional()
        .map_err(db)?
        .map(CertificateRow::into_record)
        .transpose()
}

/// Every revoked certificate, oldest revocation first: those revoked
/// outright and those superseded by a renewal.
pub(super) fn revoked(conn: &Connection) -> Result<Vec<RevokedCertificate>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT serial, identity_id, revocation_reason, revoked_at, not_after FROM certificates
             WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(RevokedRow {
                serial: r.get(0)?,
                identity: r.get(1)?,
                reason: r.get(2)?,
                revoked_at: r.get(3)?,
                not_after: r.get(4)?,
            })
        })
        .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(RevokedRow::into_revoked))
        .collect()
}

/// `WHERE` of the console's device list; parameters `?1`..`?6`.
const QUERY_FILTER: &str = "WHERE (?1 IS NULL OR d.id LIKE ?1 ESCAPE '\\')
       AND (?2 IS NULL OR d.state = ?2)
       AND (?3 IS NULL OR d.online = ?3)
       AND (?4 IS NULL OR (d.owner_type = ?4 AND d.owner_id = ?5))
       AND (?6 IS NULL OR c.not_after < ?6)
       AND (?7 IS NULL OR EXISTS (SELECT 1 FROM device_state s
            WHERE s.device_id = d.id AND json_valid(s.reported)
              AND json_extract(s.reported, '$.fw') = ?7))";

/// One page of the devices matching `q`, and how many match in all, read
/// in one transaction so that the two agree.
pub(super) fn query(conn: &Connection, q: &DeviceQuery) -> Result<DevicePage> {
    let tx = conn.unchecked_transaction().map_err(db)?;
    let conn: &Connection = &tx;
    let pattern = q.id.as_ref().map(id_pattern);
    let (owner_type, owner_id) = match &q.owner {
        Some(Owner::User(u)) => (Some("user"), Some(u.as_str())),
        Some(Owner::Group(g)) => (Some("group"), Some(g.as_str())),
        None => (None, None),
    };
    let expires = q.cert_expires_before.map(to_ms);
    let filter = params![
        pattern,
        q.state.map(DeviceState::as_str),
        q.online,
        owner_type,
        owner_id,
        expires,
        q.firmware
    ];
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM devices d JOIN certificates c ON c.serial = d.cert_serial
             {QUERY_FILTER}"
        ))
        .map_err(db)?
        .query_row(filter, |r| r.get(0))
        .map_err(db)?;
    let limit = q.page_size();
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT_DEVICE} {QUERY_FILTER} ORDER BY {} LIMIT ?8 OFFSET ?9",
            q.order_by()
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                pattern,
                q.state.map(DeviceState::as_str),
                q.online,
                owner_type,
                owner_id,
                expires,
                q.firmware,
                limit,
                q.offset
            ],
            device_row,
        )
        .map_err(db)?;
    let devices = rows
        .map(|r| r.map_err(db).and_then(DeviceRow::into_device))
        .collect::<Result<Vec<_>>>()?;
    drop(stmt);
    tx.commit().map_err(db)?;
    Ok(DevicePage {
        devices,
        total: u64::try_from(total).unwrap_or(0),
        offset: q.offset,
        limit,
    })
}

/// Device counts per state and online.
pub(super) fn summary(conn: &Connection) -> Result<FleetSummary> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT state, count(*), coalesce(sum(online), 0) FROM devices GROUP BY state",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (state, n, online) = row.map_err(db)?;
        let state = state.parse::<DeviceState>().map_err(StoreError::Corrupt)?;
        out.push((
            state,
            u64::try_from(n).unwrap_or(0),
            u64::try_from(online).unwrap_or(0),
        ));
    }
    Ok(FleetSummary::from_rows(out))
}
