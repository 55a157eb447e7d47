//! Multi-row `INSERT` statements for the telemetry commit.
//!
//! A group commit inserts about a dozen rows per message (staged readings
//! and points, later the same rows moved into `readings` and `points`, the
//! device counters). Executed one row per statement, SQLite opens and
//! closes a cursor, resets the statement and releases its registers for
//! each row, and rusqlite looks the statement up in its cache; for a rowid
//! append that fixed part was about as much work as the insert itself
//! (BENCHMARKS.md, "Multi-row inserts and exact read buffers").
//! [`RowInsert`] inserts the rows of
//! a slice with statements of up to [`CHUNKS`]`[0]` rows each (`VALUES
//! (...), (...), ...`), prepared once per size and kept in the
//! connection's statement cache: a few statements per table and commit.
//!
//! A multi-row `INSERT` behaves as its rows one after the other in one
//! statement: `ON CONFLICT` clauses apply row by row, and an error rolls
//! the whole statement back (the commit fails as a whole anyway).

use std::fmt::Write as _;
use std::sync::OnceLock;

use rusqlite::{Connection, Statement};

use super::db;
use crate::Result;

/// Rows per statement, largest first: a slice is inserted with as many
/// statements of the largest size as fit, then the next size, so any
/// length takes a handful of statements and each table at most this many
/// cached statement texts. At most 16: a multi-row statement journals each
/// page it changes for its own rollback (SQLite's statement journal), in
/// memory up to 64 KiB and in a temporary file beyond; with up to 64 rows
/// per statement one commit in five created, wrote and deleted such a
/// file, with 16 hardly any.
pub(super) const CHUNKS: [usize; 3] = [16, 4, 1];

/// An `INSERT` of `width` columns per row, of many rows per statement.
pub(super) struct RowInsert {
    /// `INSERT INTO table (columns) VALUES`.
    head: &'static str,
    /// What follows the rows (an `ON CONFLICT` clause), or "".
    tail: &'static str,
    width: usize,
    /// The statement text for each size of [`CHUNKS`], built on first use.
    sql: OnceLock<[String; CHUNKS.len()]>,
}

impl RowInsert {
    pub(super) const fn new(head: &'static str, width: usize, tail: &'static str) -> Self {
        Self {
            head,
            tail,
            width,
            sql: OnceLock::new(),
        }
    }

    fn sql(&self) -> &[String; CHUNKS.len()] {
        self.sql.get_or_init(|| CHUNKS.map(|rows| self.text(rows)))
    }

    /// The statement for `rows` rows: parameters `?1`, `?2`, ... row after
    /// row, `width` per row.
    fn text(&self, rows: usize) -> String {
        let mut sql =
            String::with_capacity(self.head.len() + self.tail.len() + rows * self.width * 6);
        sql.push_str(self.head);
        for row in 0..rows {
            sql.push_str(if row == 0 { " (" } else { ", (" });
            for col in 0..self.width {
                if col > 0 {
                    sql.push_str(", ");
                }
                // Writing to a String cannot fail.
                let _ = write!(sql, "?{}", row * self.width + col + 1);
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(self.tail);
        sql
    }

    /// Inserts `rows`; `bind(stmt, first, row)` binds a row's columns to
    /// the parameters `first`, `first + 1`, ... (1-based, as SQLite counts).
    pub(super) fn run<R>(
        &self,
        conn: &Connection,
        rows: &[R],
        bind: impl Fn(&mut Statement<'_>, usize, &R) -> rusqlite::Result<()>,
    ) -> Result<()> {
        let mut rest = rows;
        for (size, sql) in CHUNKS.iter().zip(self.sql()) {
            if rest.len() < *size {
                continue;
            }
            let mut stmt = conn.prepare_cached(sql).map_err(db)?;
            while rest.len() >= *size {
                let (chunk, after) = rest.split_at(*size);
                for (i, row) in chunk.iter().enumerate() {
                    bind(&mut stmt, i * self.width + 1, row).map_err(db)?;
                }
                stmt.raw_execute().map_err(db)?;
                rest = after;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static PAIRS: RowInsert = RowInsert::new("INSERT INTO t (a, b) VALUES", 2, "");
    static UPSERT: RowInsert = RowInsert::new(
        "INSERT INTO t (a, b) VALUES",
        2,
        "ON CONFLICT (a) DO UPDATE SET b = t.b + excluded.b",
    );

    fn table() -> rusqlite::Result<Connection> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("CREATE TABLE t (a INTEGER PRIMARY KEY, b INTEGER NOT NULL)")?;
        Ok(conn)
    }

    fn bind(stmt: &mut Statement<'_>, at: usize, row: &(i64, i64)) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(at, row.0)?;
        stmt.raw_bind_parameter(at + 1, row.1)
    }

    fn contents(conn: &Connection) -> rusqlite::Result<Vec<(i64, i64)>> {
        let mut stmt = conn.prepare("SELECT a, b FROM t ORDER BY a")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    #[test]
    fn statement_text_numbers_the_parameters_row_after_row() {
        assert_eq!(
            PAIRS.text(3),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4), (?5, ?6) "
        );
    }

    #[test]
    fn every_row_of_any_length_is_inserted_once_in_order() -> Result<()> {
        // Lengths around and across each chunk size.
        for len in [0, 1, 3, 4, 5, 15, 16, 17, 16 + 4 + 1, 63, 64, 65, 200] {
            let conn = table().map_err(db)?;
            let rows: Vec<(i64, i64)> = (0..len).map(|i| (i, i * 10)).collect();
            PAIRS.run(&conn, &rows, bind)?;
            assert_eq!(contents(&conn).map_err(db)?, rows, "{len} rows");
        }
        Ok(())
    }

    #[test]
    fn conflict_clauses_apply_row_by_row() -> Result<()> {
        let conn = table().map_err(db)?;
        UPSERT.run(&conn, &[(1, 1), (2, 2)], bind)?;
        // A chunk of 4 whose rows hit stored keys and new ones.
        UPSERT.run(&conn, &[(1, 10), (3, 3), (2, 20), (4, 4)], bind)?;
        assert_eq!(
            contents(&conn).map_err(db)?,
            vec![(1, 11), (2, 22), (3, 3), (4, 4)]
        );
        Ok(())
    }

    #[test]
    fn an_error_is_reported_not_swallowed() -> Result<()> {
        let conn = table().map_err(db)?;
        PAIRS.run(&conn, &[(1, 1)], bind)?;
        assert!(
            PAIRS
                .run(&conn, &[(2, 2), (1, 1), (3, 3), (4, 4)], bind)
                .is_err()
        );
        // The failed statement left nothing behind.
        assert_eq!(contents(&conn).map_err(db)?, vec![(1, 1)]);
        Ok(())
    }
}
