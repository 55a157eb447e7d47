-- Staged readings (decision 0019): each group commit appends the readings
-- it stored here, in arrival order, instead of inserting them into
-- `readings` (clustered by device: one B-tree leaf per device). A
-- compaction round later moves them in (device, seq) order, a slice per
-- commit, and records its progress in `staged_readings_progress` in the
-- same transaction. The committer answers dedupe lookups for staged rows
-- from memory, and for moved ones from `readings`.
CREATE TABLE staged_readings (
    id           INTEGER PRIMARY KEY,
    device_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    ts           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    digest       INTEGER NOT NULL,
    flags        INTEGER NOT NULL
);

-- The compaction round in progress: staged rows with `id <= mark` before
-- (`next_device`, `next_seq`) are already in `readings`; every other staged
-- row is not. Between rounds `next_device` is NULL: every row is pending.
CREATE TABLE staged_readings_progress (
    only         INTEGER PRIMARY KEY CHECK (only = 1),
    mark         INTEGER NOT NULL,
    next_device  TEXT,
    next_seq     INTEGER,
    CHECK ((next_device IS NULL) = (next_seq IS NULL))
);
INSERT INTO staged_readings_progress (only, mark, next_device, next_seq) VALUES (1, 0, NULL, NULL);
