//! Migrations, embedded in the binary and applied at open.

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::db;
use crate::{Result, StoreError};

/// `PRAGMA application_id` of a Rampart database: "RMPT".
const APPLICATION_ID: i32 = 0x524D_5054;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_foundation.sql"),
    include_str!("../../migrations/sqlite/0002_services.sql"),
    include_str!("../../migrations/sqlite/0003_mqtt_sessions.sql"),
    include_str!("../../migrations/sqlite/0004_telemetry.sql"),
    include_str!("../../migrations/sqlite/0005_enrollment.sql"),
    include_str!("../../migrations/sqlite/0006_renewal_claims.sql"),
    // 0007 is taken by a concurrent change; when both land, list them in
    // file order (this one after 0007).
    include_str!("../../migrations/sqlite/0008_users.sql"),
];

/// Newest schema version this binary knows.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a file that exists but is not an SQLite database at all, before
/// SQLite gets a chance to treat it as one.
pub(super) fn check_not_foreign(path: &Path) -> Result<()> {
    let mut header = [0u8; 16];
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Foreign {
                path: path.display().to_string(),
                why: format!("cannot read it: {e}"),
            });
        }
    };
    match file.read(&mut header) {
        Ok(0) => Ok(()),
        Ok(16) if &header == b"SQLite format 3\0" => Ok(()),
        Ok(_) => Err(StoreError::Foreign {
            path: path.display().to_string(),
            why: "it is not an SQLite file".into(),
        }),
        Err(e) => Err(StoreError::Foreign {
            path: path.display().to_string(),
            why: format!("cannot read it: {e}"),
        }),
    }
}

/// Applies missing migrations in one immediate transaction, so that two
/// processes opening a new database at once cannot both migrate it.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let foreign = |why: String| StoreError::Foreign {
        path: path.display().to_string(),
        why,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| match db(e) {
            StoreError::Database(e) => foreign(e.to_string()),
            other => other,
        })?;
    let app_id: i32 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| foreign(e.to_string()))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    if app_id == 0 {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(db)?;
        if tables > 0 {
            return Err(foreign(format!(
                "it already holds {tables} tables of another application"
            )));
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(db)?;
    } else if app_id != APPLICATION_ID {
        return Err(foreign(format!("its application id is {app_id:#x}")));
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}
