//! Trusted firmware keys and uploaded firmware.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{SqliteStore, audit, db};
use crate::firmware::{
    FIRMWARE_COLUMNS, FirmwareRow, KEY_COLUMNS, KeyRow, firmware_added, key_added, keys_removed,
    size_column,
};
use crate::millis::now_ms;
use crate::{
    Actor, Firmware, FirmwareKey, FirmwareStore, NewFirmware, NewFirmwareKey, Result, StoreError,
};

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        name: r.get(0)?,
        key_id: r.get(1)?,
        public_key: r.get(2)?,
        added_at: r.get(3)?,
        added_by: r.get(4)?,
    })
}

fn firmware_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FirmwareRow> {
    Ok(FirmwareRow {
        id: r.get(0)?,
        device_type: r.get(1)?,
        version: r.get(2)?,
        security_version: r.get(3)?,
        size: r.get(4)?,
        sha256: r.get(5)?,
        key_id: r.get(6)?,
        manifest: r.get(7)?,
        signature: r.get(8)?,
        uploaded_at: r.get(9)?,
        uploaded_by: r.get(10)?,
    })
}

fn key_where(conn: &Connection, column: &str, value: &str) -> Result<Option<FirmwareKey>> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM firmware_keys WHERE {column} = ?1"
    ))
    .map_err(db)?
    .query_row(params![value], key_row)
    .optional()
    .map_err(db)?
    .map(KeyRow::into_key)
    .transpose()
}

fn keys(conn: &Connection) -> Result<Vec<FirmwareKey>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM firmware_keys ORDER BY name"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], key_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(KeyRow::into_key))
        .collect()
}

fn firmware_where(
    conn: &Connection,
    clause: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Vec<Firmware>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {FIRMWARE_COLUMNS} FROM firmware {clause} ORDER BY id DESC"
        ))
        .map_err(db)?;
    let rows = if clause.contains("?1") {
        stmt.query_map(params![value], firmware_row)
    } else {
        stmt.query_map([], firmware_row)
    }
    .map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(FirmwareRow::into_firmware))
        .collect()
}

fn insert_key(tx: &Transaction<'_>, k: &NewFirmwareKey, actor: &Actor) -> Result<FirmwareKey> {
    k.check()?;
    let key_id = k.key_id();
    if let Some(existing) = key_where(tx, "name", &k.name)? {
        return Err(StoreError::FirmwareKeyExists(format!(
            "a firmware key named '{}' exists already (key id {})",
            existing.name, existing.key_id
        )));
    }
    if let Some(existing) = key_where(tx, "key_id", &key_id)? {
        return Err(StoreError::FirmwareKeyExists(format!(
            "key {key_id} is trusted already, as '{}'",
            existing.name
        )));
    }
    let (_, now) = now_ms();
    tx.execute(
        "INSERT INTO firmware_keys (name, key_id, public_key, added_at, added_by)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.name, key_id, hex::encode(k.public_key), now, actor.name],
    )
    .map_err(db)?;
    key_where(tx, "name", &k.name)?.ok_or_else(|| StoreError::FirmwareKeyNotFound(k.name.clone()))
}

#[async_trait]
impl FirmwareStore for SqliteStore {
    async fn add_firmware_key(&self, key: NewFirmwareKey, actor: &Actor) -> Result<FirmwareKey> {
        let actor = actor.clone();
        self.write_audited(move |tx, audit_key| {
            let added = insert_key(tx, &key, &actor)?;
            let rec = audit::append(tx, audit_key, &key_added(&key, &actor))?;
            Ok((added, rec))
        })
        .await
    }

    async fn firmware_keys(&self) -> Result<Vec<FirmwareKey>> {
        self.read(|conn, _| keys(conn)).await
    }

    async fn remove_firmware_keys(
        &self,
        names: &[String],
        actor: &Actor,
    ) -> Result<Vec<FirmwareKey>> {
        let (names, actor) = (names.to_vec(), actor.clone());
        self.write_audited(move |tx, audit_key| {
            let mut removed = Vec::with_capacity(names.len());
            for name in &names {
                let key = key_where(tx, "name", name)?
                    .ok_or_else(|| StoreError::FirmwareKeyNotFound(name.clone()))?;
                if removed.iter().all(|k: &FirmwareKey| k.name != key.name) {
                    removed.push(key);
                }
            }
            for key in &removed {
                tx.execute(
                    "DELETE FROM firmware_keys WHERE name = ?1",
                    params![key.name],
                )
                .map_err(db)?;
            }
            let rec = audit::append(tx, audit_key, &keys_removed(&removed, &actor))?;
            Ok((removed, rec))
        })
        .await
    }

    async fn add_firmware(&self, f: NewFirmware, actor: &Actor) -> Result<Firmware> {
        let actor = actor.clone();
        self.write_audited(move |tx, audit_key| {
            let key = key_where(tx, "key_id", &f.key_id)?
                .ok_or_else(|| StoreError::FirmwareKeyNotTrusted(f.key_id.clone()))?;
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM firmware WHERE device_type = ?1 AND version = ?2",
                    params![f.device_type, f.version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            if let Some(id) = id {
                return Err(StoreError::FirmwareExists {
                    device_type: f.device_type.clone(),
                    version: f.version.clone(),
                    id: u64::try_from(id).unwrap_or_default(),
                });
            }
            let (_, now) = now_ms();
            tx.execute(
                "INSERT INTO firmware (device_type, version, security_version, size, sha256,
                     key_id, manifest, signature, uploaded_at, uploaded_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    f.device_type,
                    f.version,
                    i64::from(f.security_version),
                    size_column(f.size)?,
                    f.sha256,
                    f.key_id,
                    f.manifest,
                    f.signature,
                    now,
                    actor.name
                ],
            )
            .map_err(db)?;
            let id = tx.last_insert_rowid();
            let rec = audit::append(tx, audit_key, &firmware_added(&f, &key.name, &actor))?;
            let stored = firmware_where(tx, "WHERE id = ?1", &id)?
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::Corrupt(format!("firmware {id} vanished")))?;
            Ok((stored, rec))
        })
        .await
    }

    async fn list_firmware(&self) -> Result<Vec<Firmware>> {
        self.read(|conn, _| firmware_where(conn, "", &0)).await
    }

    async fn firmware(&self, id: u64) -> Result<Option<Firmware>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.read(move |conn, _| {
            Ok(firmware_where(conn, "WHERE id = ?1", &id)?
                .into_iter()
                .next())
        })
        .await
    }
}
