//! Migrations, embedded in the binary and applied at connect.
//!
//! A Rampart database carries a marker table, `rampart_schema`, holding the
//! schema version (SQLite's `application_id` and `user_version`). A schema
//! (the `current_schema()` of the connection, normally `public`) that holds
//! tables but no marker belongs to another application and is refused,
//! as is a version newer than this binary.

use std::collections::BTreeSet;

use deadpool_postgres::Client;

use super::{db, get};
use crate::migrations::{self, Migration};
use crate::{Result, StoreError};

/// Every migration, by the number of its file, ascending. The steps mirror
/// `migrations/sqlite` up to 0006. Numbers may have gaps (see
/// [`crate::migrations`]).
const MIGRATIONS: &[Migration] = &[
    (
        1,
        include_str!("../../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        include_str!("../../migrations/postgres/0002_services.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_mqtt_sessions.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_telemetry.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_grafana_views.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_enrollment.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_renewal_claims.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_enrollment_answers.sql"),
    ),
    (9, include_str!("../../migrations/postgres/0009_users.sql")),
    (
        10,
        include_str!("../../migrations/postgres/0010_device_list.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_firmware.sql"),
    ),
    (
        12,
        include_str!("../../migrations/postgres/0012_campaigns.sql"),
    ),
];

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
    let recorded: bool = get(
        &tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'rampart_migrations')",
            &[&schema],
        )
        .await
        .map_err(db)?,
        0,
    )?;
    let applied = if recorded {
        let rows = tx
            .query("SELECT number FROM rampart_migrations", &[])
            .await
            .map_err(db)?;
        let mut numbers = BTreeSet::new();
        for row in &rows {
            numbers.insert(get::<i64>(row, 0)?);
        }
        Some(numbers)
    } else {
        None
    };
    let plan = migrations::plan(MIGRATIONS, applied.as_ref(), version)?;
    if !recorded {
        // Record what the version marker meant (1..=version) before adding to it.
        tx.batch_execute("CREATE TABLE rampart_migrations (number BIGINT PRIMARY KEY)")
            .await
            .map_err(db)?;
        for (n, _) in MIGRATIONS.iter().filter(|(n, _)| *n <= version) {
            tx.execute("INSERT INTO rampart_migrations (number) VALUES ($1)", &[n])
                .await
                .map_err(db)?;
        }
    }
    for i in plan.apply {
        let (number, sql) = MIGRATIONS[i];
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO rampart_migrations (number) VALUES ($1)",
            &[&number],
        )
        .await
        .map_err(db)?;
        tracing::info!(migration = number, "applied store migration");
    }
    tx.execute("UPDATE rampart_schema SET version = $1", &[&plan.marker])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

#[cfg(test)]
mod tests {
    #[test]
    fn migration_numbers_ascend() {
        assert!(crate::migrations::numbers_ascend(super::MIGRATIONS));
    }
}
