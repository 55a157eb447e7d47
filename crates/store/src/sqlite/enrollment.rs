//! Enrollment tokens and their use.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{audit, changes, db, devices};
use crate::enrollment::{
    self, EnrollmentAnswer, TOKEN_COLUMNS, TokenRow, device_enrolled, enrollment_repeated,
    is_repeat, issued_for, owner_columns, use_counted,
};
use crate::millis::{now_ms, to_ms};
use crate::{
    Actor, AuditRecord, Enrolled, Enrollment, EnrollmentRefusal, EnrollmentToken, NewDevice,
    NewEnrollmentToken, Result, StoreError,
};

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        expires_at: r.get(2)?,
        uses_allowed: r.get(3)?,
        uses_used: r.get(4)?,
        id_prefix: r.get(5)?,
        owner_type: r.get(6)?,
        owner_id: r.get(7)?,
        revoked_at: r.get(8)?,
        created_by: r.get(9)?,
        last_used_at: r.get(10)?,
    })
}

/// The token whose `column` (`id` or `token_hash`) is `value`.
fn get_by(conn: &Connection, column: &str, value: &str) -> Result<Option<EnrollmentToken>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE {column} = ?1"
    ))
    .map_err(db)?
    .query_row(params![value], token_row)
    .optional()
    .map_err(db)?
    .map(TokenRow::into_token)
    .transpose()
}

/// One token by hash.
pub(super) fn by_hash(conn: &Connection, hash: &str) -> Result<Option<EnrollmentToken>> {
    get_by(conn, "token_hash", hash)
}

fn require(conn: &Connection, id: &str) -> Result<EnrollmentToken> {
    get_by(conn, "id", id)?.ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))
}

/// Every token, oldest first.
pub(super) fn list(conn: &Connection) -> Result<Vec<EnrollmentToken>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], token_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(TokenRow::into_token))
        .collect()
}

/// Inserts a token with its audit row.
pub(super) fn create(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    t: &NewEnrollmentToken,
    actor: &Actor,
) -> Result<(EnrollmentToken, AuditRecord)> {
    let (_, now) = now_ms();
    let (owner_type, owner_id) = owner_columns(t.owner.as_ref());
    tx.execute(
        "INSERT INTO enrollment_tokens (id, token_hash, created_at, expires_at, uses_allowed,
             id_prefix, owner_type, owner_id, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            t.id,
            t.token_hash,
            now,
            to_ms(t.expires_at),
            t.uses_allowed,
            t.id_prefix,
            owner_type,
            owner_id,
            actor.name
        ],
    )
    .map_err(db)?;
    let rec = audit::append(tx, key, &enrollment::token_created(t, actor))?;
    Ok((require(tx, &t.id)?, rec))
}

/// Marks a token revoked with its audit row.
pub(super) fn revoke(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    id: &str,
    actor: &Actor,
) -> Result<(EnrollmentToken, AuditRecord)> {
    let (at, now) = now_ms();
    let entry = enrollment::token_revoked(&require(tx, id)?, actor, at)?;
    tx.execute(
        "UPDATE enrollment_tokens SET revoked_at = ?2 WHERE id = ?1",
        params![id, now],
    )
    .map_err(db)?;
    let rec = audit::append(tx, key, &entry)?;
    Ok((require(tx, id)?, rec))
}

/// One use of a token; see [`crate::Store::enroll_device`]. The `BEGIN
/// IMMEDIATE` transaction holds the write lock from the first read, so no
/// other enrollment sees the token between the check and the count.
pub(super) fn enroll(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    e: &Enrollment,
    actor: &Actor,
) -> Result<(Enrolled, AuditRecord)> {
    let (at, now) = now_ms();
    let token = by_hash(tx, &e.token_hash)?.ok_or(EnrollmentRefusal::UnknownToken)?;
    let check = token.check_use(Some(&e.id), at);
    if devices::identity_exists(tx, &e.id)? {
        if let Some(repeated) = repeat(tx, key, e, &token, &check, actor, now)? {
            return Ok(repeated);
        }
        check?;
        return Err(StoreError::IdTaken(e.id.clone()));
    }
    check?;
    let cert = issued_for(e)?;
    devices::insert(
        tx,
        &NewDevice::from_certificate(&cert, e.claim_code_hash.clone()),
        now,
    )?;
    let (owner_type, owner_id) = owner_columns(token.owner.as_ref());
    tx.execute(
        "UPDATE devices SET owner_type = ?2, owner_id = ?3 WHERE id = ?1",
        params![e.id.as_str(), owner_type, owner_id],
    )
    .map_err(db)?;
    let counted = tx
        .execute(
            "UPDATE enrollment_tokens SET uses_used = uses_used + 1, last_used_at = ?2
             WHERE id = ?1 AND uses_used < uses_allowed",
            params![token.id, now],
        )
        .map_err(db)?;
    use_counted(counted == 1, &token)?;
    tx.execute(
        "INSERT INTO enrollment_answers
             (device_id, token_id, public_key_sha256, certificate_pem, enrolled_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.id.as_str(), token.id, e.public_key_sha256, cert.pem, now],
    )
    .map_err(db)?;
    let (change, entry) = device_enrolled(&token, &cert, actor);
    changes::append(tx, change.kind, change.subject.as_str(), now)?;
    let rec = audit::append(tx, key, &entry)?;
    let enrolled = Enrolled {
        device: devices::require(tx, &e.id)?,
        certificate: cert,
        token: require(tx, &token.id)?,
        repeated: false,
    };
    Ok((enrolled, rec))
}

/// Answers `e` again if it repeats the enrollment that registered its id
/// ([`is_repeat`]): the stored certificate, a new claim code (the first
/// one may never have arrived), no use counted; `None` otherwise.
fn repeat(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    e: &Enrollment,
    token: &EnrollmentToken,
    check: &std::result::Result<(), EnrollmentRefusal>,
    actor: &Actor,
    now: i64,
) -> Result<Option<(Enrolled, AuditRecord)>> {
    let answer = tx
        .query_row(
            "SELECT token_id, public_key_sha256, certificate_pem, enrolled_at
             FROM enrollment_answers WHERE device_id = ?1",
            params![e.id.as_str()],
            |r| {
                Ok(EnrollmentAnswer {
                    token_id: r.get(0)?,
                    public_key_sha256: r.get(1)?,
                    certificate_pem: r.get(2)?,
                    enrolled_at: r.get(3)?,
                })
            },
        )
        .optional()
        .map_err(db)?;
    let (Some(answer), Some(device)) = (answer, devices::get(tx, e.id.as_str())?) else {
        return Ok(None);
    };
    let cert = enrollment::stored_certificate(&answer)?;
    if !is_repeat(e, token, check, &answer, &device, &cert, now) {
        return Ok(None);
    }
    devices::set_claim_code(tx, &e.id, &e.claim_code_hash, now)?;
    let rec = audit::append(tx, key, &enrollment_repeated(token, &cert, actor))?;
    let enrolled = Enrolled {
        device: devices::require(tx, &e.id)?,
        certificate: cert,
        token: token.clone(),
        repeated: true,
    };
    Ok(Some((enrolled, rec)))
}
