-- Telemetry: readings (the dedupe record), points, rollups, rejected
-- messages, presence history, reported state, per-device counters.
-- Telemetry rows have no foreign keys to `devices`: they are history, and
-- ingest must not pay for the checks. Timestamps are Unix milliseconds.

-- One (device, metric) pair. Points and rollups refer to it by `id`, so the
-- hot tables carry an integer instead of two strings.
CREATE TABLE series (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    metric     TEXT NOT NULL,
    UNIQUE (device_id, metric)
);

-- One row per stored reading: the dedupe identity (device, seq) and a
-- digest of what the device sent (its own `ts`, if any, and its metrics),
-- so that a replay is recognised and a different payload under a used
-- `seq` is a sequence conflict.
CREATE TABLE readings (
    device_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    ts           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    digest       INTEGER NOT NULL,
    -- bit 0: the device's timestamp was implausible and replaced
    flags        INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX readings_ts ON readings (ts);

-- Raw points, clustered by series and time: a chart query is one range scan.
CREATE TABLE points (
    series_id  INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    value      REAL NOT NULL,
    PRIMARY KEY (series_id, ts, seq)
) WITHOUT ROWID;

-- Rollups per resolution (60000, 3600000, 86400000 ms), maintained at
-- ingest. `last_*` is the point with the greatest (ts, seq) in the bucket.
CREATE TABLE rollups (
    series_id   INTEGER NOT NULL,
    resolution  INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    min         REAL NOT NULL,
    max         REAL NOT NULL,
    sum         REAL NOT NULL,
    count       INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    last_value  REAL NOT NULL,
    PRIMARY KEY (series_id, resolution, bucket)
) WITHOUT ROWID;

-- Messages refused by the pipeline, kept for inspection (bounded).
CREATE TABLE rejected (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    at         INTEGER NOT NULL,
    category   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL,
    seq        INTEGER,
    payload    BLOB NOT NULL,
    payload_len INTEGER NOT NULL
);
CREATE INDEX rejected_device ON rejected (device_id, id);

-- Connect and disconnect events with their reasons.
CREATE TABLE presence_events (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    at         INTEGER NOT NULL,
    online     INTEGER NOT NULL,
    reason     TEXT,
    addr       TEXT
);
CREATE INDEX presence_events_device ON presence_events (device_id, at);
CREATE INDEX presence_events_at ON presence_events (at);

-- The latest reported state (`state/up`) per device.
CREATE TABLE device_state (
    device_id   TEXT PRIMARY KEY,
    reported    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Per-device ingest counters and the sequence-conflict flag.
CREATE TABLE device_stats (
    device_id        TEXT PRIMARY KEY,
    readings         INTEGER NOT NULL DEFAULT 0,
    duplicates       INTEGER NOT NULL DEFAULT 0,
    rejected         INTEGER NOT NULL DEFAULT 0,
    conflicts        INTEGER NOT NULL DEFAULT 0,
    last_seq         INTEGER,
    last_reading_at  INTEGER,
    flagged_at       INTEGER,
    flag_reason      TEXT
);

-- Durable outbox of the InfluxDB export: one row per committed batch,
-- deleted once the receiver accepted it.
CREATE TABLE export_outbox (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    body     BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
