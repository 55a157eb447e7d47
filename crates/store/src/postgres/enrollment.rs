//! Enrollment tokens and their use.

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use super::ledger::Ledger;
use super::{audit, changes, db, devices, get};
use crate::enrollment::{
    self, EnrollmentAnswer, TOKEN_COLUMNS, TokenRow, device_enrolled, enrollment_repeated,
    is_repeat, issued_for, owner_columns, use_counted,
};
use crate::millis::{now_ms, to_ms};
use crate::{
    Actor, AuditKey, AuditRecord, Enrolled, Enrollment, EnrollmentRefusal, EnrollmentToken,
    NewDevice, NewEnrollmentToken, Result, StoreError,
};

fn token_row(r: &Row) -> Result<EnrollmentToken> {
    TokenRow {
        id: get(r, 0)?,
        created_at: get(r, 1)?,
        expires_at: get(r, 2)?,
        uses_allowed: get(r, 3)?,
        uses_used: get(r, 4)?,
        id_prefix: get(r, 5)?,
        owner_type: get(r, 6)?,
        owner_id: get(r, 7)?,
        revoked_at: get(r, 8)?,
        created_by: get(r, 9)?,
        last_used_at: get(r, 10)?,
    }
    .into_token()
}

/// The token whose `column` (`id` or `token_hash`) is `value`; `lock`
/// appends `FOR UPDATE`, holding the row until the transaction ends.
async fn get_by(
    c: &impl GenericClient,
    column: &str,
    value: &str,
    lock: bool,
) -> Result<Option<EnrollmentToken>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE {column} = $1{}",
            if lock { " FOR UPDATE" } else { "" }
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&value]).await.map_err(db)? {
        Some(r) => token_row(&r).map(Some),
        None => Ok(None),
    }
}

/// One token by hash.
pub(super) async fn by_hash(c: &impl GenericClient, hash: &str) -> Result<Option<EnrollmentToken>> {
    get_by(c, "token_hash", hash, false).await
}

async fn require(c: &impl GenericClient, id: &str, lock: bool) -> Result<EnrollmentToken> {
    get_by(c, "id", id, lock)
        .await?
        .ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))
}

/// Every token, oldest first.
pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<EnrollmentToken>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        ))
        .await
        .map_err(db)?;
    c.query(&stmt, &[])
        .await
        .map_err(db)?
        .iter()
        .map(token_row)
        .collect()
}

/// Inserts a token with its audit row.
pub(super) async fn create(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    t: &NewEnrollmentToken,
    actor: &Actor,
) -> Result<(EnrollmentToken, AuditRecord)> {
    let tx = ledger.tx();
    let (_, now) = now_ms();
    let (owner_type, owner_id) = owner_columns(t.owner.as_ref());
    tx.execute(
        "INSERT INTO enrollment_tokens (id, token_hash, created_at, expires_at, uses_allowed,
             id_prefix, owner_type, owner_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &t.id,
            &t.token_hash,
            &now,
            &to_ms(t.expires_at),
            &i64::from(t.uses_allowed),
            &t.id_prefix,
            &owner_type,
            &owner_id,
            &actor.name,
        ],
    )
    .await
    .map_err(db)?;
    let rec = audit::append(ledger, key, &enrollment::token_created(t, actor)).await?;
    Ok((require(tx, &t.id, false).await?, rec))
}

/// Marks a token revoked with its audit row.
pub(super) async fn revoke(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    id: &str,
    actor: &Actor,
) -> Result<(EnrollmentToken, AuditRecord)> {
    let tx = ledger.tx();
    let (at, now) = now_ms();
    let entry = enrollment::token_revoked(&require(tx, id, true).await?, actor, at)?;
    tx.execute(
        "UPDATE enrollment_tokens SET revoked_at = $2 WHERE id = $1",
        &[&id, &now],
    )
    .await
    .map_err(db)?;
    let rec = audit::append(ledger, key, &entry).await?;
    Ok((require(tx, id, false).await?, rec))
}

/// One use of a token; see [`crate::Store::enroll_device`]. Besides the
/// append lock, the token row is locked `FOR UPDATE`, so the check and
/// the count see the same number of uses whatever else runs.
pub(super) async fn enroll(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    e: &Enrollment,
    actor: &Actor,
) -> Result<(Enrolled, AuditRecord)> {
    let tx: &Transaction<'_> = ledger.tx();
    let (at, now) = now_ms();
    let token = get_by(tx, "token_hash", &e.token_hash, true)
        .await?
        .ok_or(EnrollmentRefusal::UnknownToken)?;
    let check = token.check_use(Some(&e.id), at);
    if devices::identity_exists(tx, &e.id).await? {
        if let Some(repeated) = repeat(ledger, key, e, &token, &check, actor, now).await? {
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
    )
    .await?;
    let (owner_type, owner_id) = owner_columns(token.owner.as_ref());
    tx.execute(
        "UPDATE devices SET owner_type = $2, owner_id = $3 WHERE id = $1",
        &[&e.id.as_str(), &owner_type, &owner_id],
    )
    .await
    .map_err(db)?;
    let counted = tx
        .execute(
            "UPDATE enrollment_tokens SET uses_used = uses_used + 1, last_used_at = $2
             WHERE id = $1 AND uses_used < uses_allowed",
            &[&token.id, &now],
        )
        .await
        .map_err(db)?;
    use_counted(counted == 1, &token)?;
    tx.execute(
        "INSERT INTO enrollment_answers
             (device_id, token_id, public_key_sha256, certificate_pem, enrolled_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &e.id.as_str(),
            &token.id,
            &e.public_key_sha256,
            &cert.pem,
            &now,
        ],
    )
    .await
    .map_err(db)?;
    let (change, entry) = device_enrolled(&token, &cert, actor);
    changes::append(ledger, change.kind, change.subject.as_str(), now).await?;
    let rec = audit::append(ledger, key, &entry).await?;
    let enrolled = Enrolled {
        device: devices::require(tx, &e.id).await?,
        certificate: cert,
        token: require(tx, &token.id, false).await?,
        repeated: false,
    };
    Ok((enrolled, rec))
}

/// Answers `e` again if it repeats the enrollment that registered its id
/// ([`is_repeat`]): the stored certificate, a new claim code (the first
/// one may never have arrived), no use counted; `None` otherwise.
async fn repeat(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    e: &Enrollment,
    token: &EnrollmentToken,
    check: &std::result::Result<(), EnrollmentRefusal>,
    actor: &Actor,
    now: i64,
) -> Result<Option<(Enrolled, AuditRecord)>> {
    let tx: &Transaction<'_> = ledger.tx();
    let answer = tx
        .query_opt(
            "SELECT token_id, public_key_sha256, certificate_pem, enrolled_at
             FROM enrollment_answers WHERE device_id = $1",
            &[&e.id.as_str()],
        )
        .await
        .map_err(db)?
        .map(|r| -> Result<EnrollmentAnswer> {
            Ok(EnrollmentAnswer {
                token_id: get(&r, 0)?,
                public_key_sha256: get(&r, 1)?,
                certificate_pem: get(&r, 2)?,
                enrolled_at: get(&r, 3)?,
            })
        })
        .transpose()?;
    let (Some(answer), Some(device)) = (answer, devices::get_device(tx, e.id.as_str()).await?)
    else {
        return Ok(None);
    };
    let cert = enrollment::stored_certificate(&answer)?;
    if !is_repeat(e, token, check, &answer, &device, &cert, now) {
        return Ok(None);
    }
    devices::set_claim_code(tx, &e.id, &e.claim_code_hash, now).await?;
    let rec = audit::append(ledger, key, &enrollment_repeated(token, &cert, actor)).await?;
    let enrolled = Enrolled {
        device: devices::require(tx, &e.id).await?,
        certificate: cert,
        token: token.clone(),
        repeated: true,
    };
    Ok(Some((enrolled, rec)))
}
