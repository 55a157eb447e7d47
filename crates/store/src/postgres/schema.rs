//! Migrations, embedded in the binary and applied at connect.
//!
//! A Rampart database carries a marker table, `rampart_schema`, holding the
//! schema version (SQLite's `application_id` and `user_version`). A schema
//! (the `current_schema()` of the connection, normally `public`) that holds
//! tables but no marker belongs to another application and is refused,
//! as is a version newer than this binary.

use deadpool_postgres::Client;

use super::{db, get};
use crate::{Result, StoreError};

/// Migration `i` brings the schema from version `i` to `i + 1`. The steps
/// mirror `migrations/sqlite`, so a version means the same on both.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_foundation.sql"),
    include_str!("../../migrations/postgres/0002_services.sql"),
    include_str!("../../migrations/postgres/0003_mqtt_sessions.sql"),
    include_str!("../../migrations/postgres/0004_telemetry.sql"),
    include_str!("../../migrations/postgres/0005_grafana_views.sql"),
    include_str!("../../migrations/postgres/0006_enrollment.sql"),
    include_str!("../../migrations/postgres/0007_renewal_claims.sql"),
    // 0008 is taken by a concurrent change; when both land, list them in
    // file order (this one after 0008).
    include_str!("../../migrations/postgres/0009_users.sql"),
];

/// Newest schema version this binary knows.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock serialising migrations: "RMPT" and 0.
const MIGRATION_LOCK: i64 = 0x524D_5054_0000;

/// Checks the database is ours and applies missing migrations in one
/// transaction. Replicas starting at once wait on an advisory lock, so only
/// the first migrates; DDL is transactional in PostgreSQL, so a failed
/// migration leaves nothing behind.
pub(super) async fn migrate(client: &mut Client, target: &str) -> Result<()> {
    let foreign = |why: String| StoreError::Foreign {
        path: target.to_owned(),
        why,
    };
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    let schema: Option<String> = get(
        &tx.query_one("SELECT current_schema()::text", &[])
            .await
            .map_err(db)?,
        0,
    )?;
    let Some(schema) = schema else {
        return Err(foreign(
            "no schema is selected (the search_path names no existing schema)".into(),
        ));
    };
    let marked: bool = get(
        &tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'rampart_schema')",
            &[&schema],
        )
        .await
        .map_err(db)?,
        0,
    )?;
    if !marked {
        let tables: i64 = get(
            &tx.query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )
            .await
            .map_err(db)?,
            0,
        )?;
        if tables > 0 {
            return Err(foreign(format!(
                "schema '{schema}' already holds {tables} tables of another application"
            )));
        }
        tx.batch_execute(
            "CREATE TABLE rampart_schema (
                 only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
                 version   BIGINT NOT NULL
             );
             INSERT INTO rampart_schema (version) VALUES (0);",
        )
        .await
        .map_err(db)?;
    }
    let version: i64 = get(
        &tx.query_one("SELECT version FROM rampart_schema", &[])
            .await
            .map_err(db)?,
        0,
    )?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(db)?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    tx.execute("UPDATE rampart_schema SET version = $1", &[&SCHEMA_VERSION])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}
