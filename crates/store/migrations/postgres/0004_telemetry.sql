-- Telemetry: readings (the dedupe record), points, rollups, rejected
-- messages, presence history, reported state, per-device counters.
-- The same tables as migrations/sqlite/0004, in PostgreSQL's types.
-- Telemetry rows have no foreign keys to `devices`: they are history, and
-- ingest must not pay for the checks. Timestamps are Unix milliseconds
-- (BIGINT). Device ids and metric names use the "C" collation, so that
-- listings sort in byte order, as in SQLite.

-- One (device, metric) pair. Points and rollups refer to it by `id`, so the
-- hot tables carry an integer instead of two strings. Ids are handed out in
-- creation order, as SQLite's are, so exports walk series in the same order.
CREATE TABLE series (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT COLLATE "C" NOT NULL,
    metric     TEXT COLLATE "C" NOT NULL,
    UNIQUE (device_id, metric)
);

-- One row per stored reading: the dedupe identity (device, seq) and a
-- digest of what the device sent (its own `ts`, if any, and its metrics),
-- so that a replay is recognised and a different payload under a used
-- `seq` is a sequence conflict.
CREATE TABLE readings (
    device_id    TEXT COLLATE "C" NOT NULL,
    seq          BIGINT NOT NULL,
    ts           BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    digest       BIGINT NOT NULL,
    -- bit 0: the device's timestamp was implausible and replaced
    flags        BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX readings_ts ON readings (ts);

-- Raw points. The primary key carries the value as well, so that a chart
-- query over raw points is one index-only range scan (SQLite's WITHOUT
-- ROWID table clusters the same way).
CREATE TABLE points (
    series_id  BIGINT NOT NULL,
    ts         BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, ts, seq) INCLUDE (value)
);

-- Rollups per resolution (60000, 3600000, 86400000 ms), maintained at
-- ingest. `last_*` is the point with the greatest (ts, seq) in the bucket.
-- The current buckets are rewritten by every commit: free space on each
-- page lets those updates stay on the page (HOT), without index writes.
CREATE TABLE rollups (
    series_id   BIGINT NOT NULL,
    resolution  BIGINT NOT NULL,
    bucket      BIGINT NOT NULL,
    min         DOUBLE PRECISION NOT NULL,
    max         DOUBLE PRECISION NOT NULL,
    sum         DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL,
    last_ts     BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    last_value  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, resolution, bucket)
) WITH (fillfactor = 70);

-- Messages refused by the pipeline, kept for inspection (bounded).
CREATE TABLE rejected (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    category    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    seq         BIGINT,
    payload     BYTEA NOT NULL,
    payload_len BIGINT NOT NULL
);
CREATE INDEX rejected_device ON rejected (device_id, id);

-- Connect and disconnect events with their reasons.
CREATE TABLE presence_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    online     BOOLEAN NOT NULL,
    reason     TEXT,
    addr       TEXT
);
CREATE INDEX presence_events_device ON presence_events (device_id, at);
CREATE INDEX presence_events_at ON presence_events (at);

-- The latest reported state (`state/up`) per device. TEXT, not JSONB: it
-- reads back exactly as reported, as from SQLite.
CREATE TABLE device_state (
    device_id   TEXT COLLATE "C" PRIMARY KEY,
    reported    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Per-device ingest counters and the sequence-conflict flag.
CREATE TABLE device_stats (
    device_id        TEXT COLLATE "C" PRIMARY KEY,
    readings         BIGINT NOT NULL DEFAULT 0,
    duplicates       BIGINT NOT NULL DEFAULT 0,
    rejected         BIGINT NOT NULL DEFAULT 0,
    conflicts        BIGINT NOT NULL DEFAULT 0,
    last_seq         BIGINT,
    last_reading_at  BIGINT,
    flagged_at       BIGINT,
    flag_reason      TEXT
);

-- Durable outbox of the InfluxDB export: one row per committed batch,
-- deleted once the receiver accepted it. Appends are serialised by an
-- advisory lock (src/postgres/telemetry.rs), so ids commit in order and
-- acknowledging "up to id N" never drops a batch that committed later.
CREATE TABLE export_outbox (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    body     BYTEA NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0
);
