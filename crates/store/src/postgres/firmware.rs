//! Trusted firmware keys and uploaded firmware.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ledger::{self, Ledger};
use super::{PostgresStore, audit, db, get};
use crate::firmware::{
    FIRMWARE_COLUMNS, FirmwareRow, KEY_COLUMNS, KeyRow, firmware_added, key_added, keys_removed,
    size_column,
};
use crate::millis::now_ms;
use crate::{
    Actor, AuditRecord, Firmware, FirmwareKey, FirmwareStore, NewFirmware, NewFirmwareKey, Result,
    StoreError,
};

fn key_row(r: &Row) -> Result<FirmwareKey> {
    KeyRow {
        name: get(r, 0)?,
        key_id: get(r, 1)?,
        public_key: get(r, 2)?,
        added_at: get(r, 3)?,
        added_by: get(r, 4)?,
    }
    .into_key()
}

fn firmware_row(r: &Row) -> Result<Firmware> {
    FirmwareRow {
        id: get(r, 0)?,
        device_type: get(r, 1)?,
        version: get(r, 2)?,
        security_version: get(r, 3)?,
        size: get(r, 4)?,
        sha256: get(r, 5)?,
        key_id: get(r, 6)?,
        manifest: get(r, 7)?,
        signature: get(r, 8)?,
        uploaded_at: get(r, 9)?,
        uploaded_by: get(r, 10)?,
    }
    .into_firmware()
}

async fn key_where(
    c: &impl GenericClient,
    column: &str,
    value: &str,
) -> Result<Option<FirmwareKey>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM firmware_keys WHERE {column} = $1"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&value]).await.map_err(db)? {
        Some(r) => key_row(&r).map(Some),
        None => Ok(None),
    }
}

async fn firmware_where(
    c: &impl GenericClient,
    clause: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Firmware>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {FIRMWARE_COLUMNS} FROM firmware {clause} ORDER BY id DESC"
        ))
        .await
        .map_err(db)?;
    c.query(&stmt, params)
        .await
        .map_err(db)?
        .iter()
        .map(firmware_row)
        .collect()
}

async fn insert_key(
    ledger: &Ledger<'_, '_>,
    audit_key: &crate::AuditKey,
    k: &NewFirmwareKey,
    actor: &Actor,
) -> Result<(FirmwareKey, AuditRecord)> {
    let tx = ledger.tx();
    k.check()?;
    let key_id = k.key_id();
    if let Some(existing) = key_where(tx, "name", &k.name).await? {
        return Err(StoreError::FirmwareKeyExists(format!(
            "a firmware key named '{}' exists already (key id {})",
            existing.name, existing.key_id
        )));
    }
    if let Some(existing) = key_where(tx, "key_id", &key_id).await? {
        return Err(StoreError::FirmwareKeyExists(format!(
            "key {key_id} is trusted already, as '{}'",
            existing.name
        )));
    }
    let (_, now) = now_ms();
    tx.execute(
        "INSERT INTO firmware_keys (name, key_id, public_key, added_at, added_by)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &k.name,
            &key_id,
            &hex::encode(k.public_key),
            &now,
            &actor.name,
        ],
    )
    .await
    .map_err(db)?;
    let rec = audit::append(ledger, audit_key, &key_added(k, actor)).await?;
    let added = key_where(tx, "name", &k.name)
        .await?
        .ok_or_else(|| StoreError::FirmwareKeyNotFound(k.name.clone()))?;
    Ok((added, rec))
}

async fn remove_keys(
    ledger: &Ledger<'_, '_>,
    audit_key: &crate::AuditKey,
    names: &[String],
    actor: &Actor,
) -> Result<(Vec<FirmwareKey>, AuditRecord)> {
    let tx = ledger.tx();
    let mut removed: Vec<FirmwareKey> = Vec::with_capacity(names.len());
    for name in names {
        let key = key_where(tx, "name", name)
            .await?
            .ok_or_else(|| StoreError::FirmwareKeyNotFound(name.clone()))?;
        if removed.iter().all(|k| k.name != key.name) {
            removed.push(key);
        }
    }
    for key in &removed {
        tx.execute("DELETE FROM firmware_keys WHERE name = $1", &[&key.name])
            .await
            .map_err(db)?;
    }
    let rec = audit::append(ledger, audit_key, &keys_removed(&removed, actor)).await?;
    Ok((removed, rec))
}

async fn insert_firmware(
    ledger: &Ledger<'_, '_>,
    audit_key: &crate::AuditKey,
    f: &NewFirmware,
    actor: &Actor,
) -> Result<(Firmware, AuditRecord)> {
    let tx = ledger.tx();
    let key = key_where(tx, "key_id", &f.key_id)
        .await?
        .ok_or_else(|| StoreError::FirmwareKeyNotTrusted(f.key_id.clone()))?;
    let existing = tx
        .query_opt(
            "SELECT id FROM firmware WHERE device_type = $1 AND version = $2",
            &[&f.device_type, &f.version],
        )
        .await
        .map_err(db)?;
    if let Some(r) = existing {
        let id: i64 = get(&r, 0)?;
        return Err(StoreError::FirmwareExists {
            device_type: f.device_type.clone(),
            version: f.version.clone(),
            id: u64::try_from(id).unwrap_or_default(),
        });
    }
    let (_, now) = now_ms();
    let row = tx
        .query_one(
            "INSERT INTO firmware (device_type, version, security_version, size, sha256,
                 key_id, manifest, signature, uploaded_at, uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &f.device_type,
                &f.version,
                &i64::from(f.security_version),
                &size_column(f.size)?,
                &f.sha256,
                &f.key_id,
                &f.manifest,
                &f.signature,
                &now,
                &actor.name,
            ],
        )
        .await
        .map_err(db)?;
    let id: i64 = get(&row, 0)?;
    let rec = audit::append(ledger, audit_key, &firmware_added(f, &key.name, actor)).await?;
    let stored = firmware_where(tx, "WHERE id = $1", &[&id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt(format!("firmware {id} vanished")))?;
    Ok((stored, rec))
}

#[async_trait]
impl FirmwareStore for PostgresStore {
    async fn add_firmware_key(&self, key: NewFirmwareKey, actor: &Actor) -> Result<FirmwareKey> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = insert_key(&ledger, &self.inner.audit_key, &key, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn firmware_keys(&self) -> Result<Vec<FirmwareKey>> {
        self.retrying(|| async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM firmware_keys ORDER BY name"
                ))
                .await
                .map_err(db)?;
            client
                .query(&stmt, &[])
                .await
                .map_err(db)?
                .iter()
                .map(key_row)
                .collect()
        })
        .await
    }

    async fn remove_firmware_keys(
        &self,
        names: &[String],
        actor: &Actor,
    ) -> Result<Vec<FirmwareKey>> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = remove_keys(&ledger, &self.inner.audit_key, names, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn add_firmware(&self, f: NewFirmware, actor: &Actor) -> Result<Firmware> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = insert_firmware(&ledger, &self.inner.audit_key, &f, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn list_firmware(&self) -> Result<Vec<Firmware>> {
        self.retrying(|| async {
            let client = self.client().await?;
            firmware_where(&client, "", &[]).await
        })
        .await
    }

    async fn firmware(&self, id: u64) -> Result<Option<Firmware>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.retrying(|| async {
            let client = self.client().await?;
            Ok(firmware_where(&client, "WHERE id = $1", &[&id])
                .await?
                .into_iter()
                .next())
        })
        .await
    }
}
