//! Migrations, embedded in the binary and applied at open.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::db;
use crate::migrations::{self, Migration};
use crate::{Result, StoreError};

/// `PRAGMA application_id` of a Rampart database: "RMPT".
const APPLICATION_ID: i32 = 0x524D_5054;

/// Every migration, by the number of its file, ascending. Numbers may have
/// gaps (see [`crate::migrations`]).
const MIGRATIONS: &[Migration] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_foundation.sql"),
    ),
    (2, include_str!("../../migrations/sqlite/0002_services.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_mqtt_sessions.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_telemetry.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_enrollment.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_renewal_claims.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_enrollment_answers.sql"),
    ),
    (8, include_str!("../../migrations/sqlite/0008_users.sql")),
    (
        9,
        include_str!("../../migrations/sqlite/0009_device_list.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_firmware.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_campaigns.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_notifications.sql"),
    ),
    (13, include_str!("../../migrations/sqlite/0013_alerts.sql")),
    (
        14,
        include_str!("../../migrations/sqlite/0014_staged_points.sql"),
    ),
    (
        15,
        include_str!("../../migrations/sqlite/0015_staged_readings.sql"),
    ),
    (
        16,
        include_str!("../../migrations/sqlite/0016_staged_batches.sql"),
    ),
];

/// What a migration needs beyond its SQL, run right after it in the same
/// transaction.
fn after_migration(tx: &rusqlite::Transaction<'_>, number: i64) -> Result<()> {
    match number {
        16 => super::staging::batch::pack_row_tables(tx),
        _ => Ok(()),
    }
}

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
    migrate_with(conn, path, MIGRATIONS)
}

/// [`migrate`] with the migrations given (tests: a database as an older
/// binary left it).
fn migrate_with(conn: &mut Connection, path: &Path, migrations: &[Migration]) -> Result<()> {
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
    let recorded: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'rampart_migrations')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let applied = if recorded {
        let mut stmt = tx
            .prepare("SELECT number FROM rampart_migrations")
            .map_err(db)?;
        let numbers = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(db)?
            .collect::<rusqlite::Result<BTreeSet<i64>>>()
            .map_err(db)?;
        Some(numbers)
    } else {
        None
    };
    let plan = migrations::plan(migrations, applied.as_ref(), version)?;
    if !recorded {
        // Record what the version marker meant (1..=version) before adding to it.
        tx.execute_batch("CREATE TABLE rampart_migrations (number INTEGER PRIMARY KEY)")
            .map_err(db)?;
        for (n, _) in migrations.iter().filter(|(n, _)| *n <= version) {
            tx.execute("INSERT INTO rampart_migrations (number) VALUES (?1)", [n])
                .map_err(db)?;
        }
    }
    for i in plan.apply {
        let (number, sql) = migrations[i];
        tx.execute_batch(sql).map_err(db)?;
        after_migration(&tx, number)?;
        tx.execute(
            "INSERT INTO rampart_migrations (number) VALUES (?1)",
            [number],
        )
        .map_err(db)?;
        tracing::info!(migration = number, "applied store migration");
    }
    tx.pragma_update(None, "user_version", plan.marker)
        .map_err(db)?;
    tx.commit().map_err(db)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::{MIGRATIONS, migrate, migrate_with};
    use crate::sqlite::staging::batch;
    use crate::sqlite::staging::points::Points;
    use crate::sqlite::staging::readings::Readings;

    #[test]
    fn migration_numbers_ascend() {
        assert!(crate::migrations::numbers_ascend(MIGRATIONS));
    }

    /// The batches of a table: id and decoded rows.
    fn batches<K: crate::sqlite::staging::Kind>(conn: &Connection) -> Vec<(i64, Vec<K::Row>)> {
        let mut out = Vec::new();
        batch::for_each::<K>(conn, K::SELECT_AFTER, [i64::MIN], |id, rows| {
            out.push((id, rows));
            Ok(())
        })
        .expect("batches");
        out
    }

    /// A database that an older binary left with staged rows in the
    /// row-per-point and row-per-reading tables, in the middle of a round:
    /// migration 16 carries every row over, with its id, so the stored
    /// progress stays true, and drops the old tables.
    #[test]
    fn staged_rows_become_batches_with_their_ids() {
        let mut conn = Connection::open_in_memory().expect("open");
        let path = Path::new(":memory:");
        let before: Vec<_> = MIGRATIONS
            .iter()
            .copied()
            .filter(|(n, _)| *n < 16)
            .collect();
        migrate_with(&mut conn, path, &before).expect("migrate to 15");
        conn.execute_batch(
            "INSERT INTO staged_points (id, series_id, ts, seq, value) VALUES
                 (7, 2, 1000, 1, 0.1), (9, 1, 1001, 2, -2.5e300), (12, 3, 1002, 3, 4.0);
             INSERT INTO staged_readings (id, device_id, seq, ts, received_at, digest, flags)
                 VALUES (4, 'dev-b', 5, 1000, 1100, -77, 0), (6, 'dev-a', 6, 1001, 1101, 88, 1);
             UPDATE staged_progress SET mark = 9, next_series = 2;
             UPDATE staged_readings_progress SET mark = 6, next_device = 'dev-b', next_seq = 5;",
        )
        .expect("old rows");
        migrate(&mut conn, path).expect("migrate");
        let points = batches::<Points>(&conn);
        let ids: Vec<i64> = points.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [7, 9, 12]);
        let second = &points[1].1;
        assert_eq!(second.len(), 1);
        assert_eq!(
            (
                second[0].series,
                second[0].ts,
                second[0].seq,
                second[0].value
            ),
            (1, 1001, 2, -2.5e300)
        );
        let readings = batches::<Readings>(&conn);
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].0, 4);
        let first = &readings[0].1[0];
        assert_eq!(
            (
                first.device.as_str(),
                first.seq,
                first.ts,
                first.received_at,
                first.digest,
                first.flags
            ),
            ("dev-b", 5, 1000, 1100, -77, 0)
        );
        let progress: (i64, i64) = conn
            .query_row("SELECT mark, next_series FROM staged_progress", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("progress");
        assert_eq!(progress, (9, 2));
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master
                 WHERE name IN ('staged_points', 'staged_readings')",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(old, 0, "the row tables are gone");
        // Opening again applies nothing more.
        migrate(&mut conn, path).expect("again");
        assert_eq!(batches::<Points>(&conn).len(), 3);
    }
}
