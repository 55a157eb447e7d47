-- Staged points (decision 0018): each group commit appends the points of
-- the readings it stored here, in arrival order, instead of writing them
-- into `points` and `rollups` (one B-tree leaf per series and bucket). A
-- compaction round later moves them, a few series per commit, and records
-- its progress in `staged_progress` in the same transaction.
CREATE TABLE staged_points (
    id         INTEGER PRIMARY KEY,
    series_id  INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    value      REAL NOT NULL
);

-- The compaction round in progress: staged rows with `id <= mark` of the
-- series below `next_series` are already in `points` and `rollups`; every
-- other staged row is not. Between rounds `next_series` is the smallest
-- integer, so every staged row is pending whatever its id (a round deletes
-- its rows when it ends, and SQLite may then reuse their ids).
CREATE TABLE staged_progress (
    only         INTEGER PRIMARY KEY CHECK (only = 1),
    mark         INTEGER NOT NULL,
    next_series  INTEGER NOT NULL
);
INSERT INTO staged_progress (only, mark, next_series) VALUES (1, 0, -9223372036854775808);
