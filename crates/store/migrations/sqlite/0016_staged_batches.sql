-- Staged rows in batches (decision 0024): a group commit appends the points
-- and the readings it staged as one row per lane, `body` packing them in the
-- store's own binary encoding (a format byte, then fixed-width little-endian
-- fields per row; `crates/store/src/sqlite/staging/batch.rs`), instead of
-- one row per point and per reading. Ids keep their meaning: the progress
-- rows' `mark` is the id of a batch, and a row's id is its batch's.
--
-- The rows of `staged_points` and `staged_readings` are carried over by the
-- store when it applies this migration, one batch per row with the row's id
-- (so the stored progress stays true), and the two tables are dropped then:
-- SQL cannot write the encoding.
CREATE TABLE staged_point_batches (
    id    INTEGER PRIMARY KEY,
    body  BLOB NOT NULL
);

CREATE TABLE staged_reading_batches (
    id    INTEGER PRIMARY KEY,
    body  BLOB NOT NULL
);
