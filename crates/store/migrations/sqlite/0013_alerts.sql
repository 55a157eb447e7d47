-- Alerts (issue 10): webhook channels, rules, the alerts they raise, and
-- the outbox of notifications still to deliver.
--
-- A channel's URL is a credential (a Discord URL carries its token): only
-- its sealed form (AES-GCM under the console key, sealed by the caller) and
-- a redacted form (scheme and host) are stored. One firing alert per
-- (rule, subject) at a time: the partial unique index is the dedupe.
-- The outbox row is written in the transaction that fires or resolves the
-- alert, so a notification is never lost between the two (at-least-once
-- with an idempotency key).
CREATE TABLE alert_channels (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('discord', 'slack', 'json')),
    target          TEXT NOT NULL,
    url_sealed      BLOB NOT NULL,
    secret_sealed   BLOB,
    allow_private   INTEGER NOT NULL CHECK (allow_private IN (0, 1)),
    per_minute      INTEGER NOT NULL CHECK (per_minute > 0),
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL
);

CREATE TABLE alert_rules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    expr        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('fleet', 'owner', 'device')),
    scope_value TEXT,
    channel_id  INTEGER NOT NULL REFERENCES alert_channels (id),
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    CHECK ((scope = 'fleet') = (scope_value IS NULL))
);
CREATE INDEX alert_rules_by_channel ON alert_rules (channel_id);

CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id         INTEGER NOT NULL,
    rule_name       TEXT NOT NULL,
    expr            TEXT NOT NULL,
    subject         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('firing', 'resolved', 'closed')),
    fired_at        INTEGER NOT NULL,
    fired_value     REAL,
    resolved_at     INTEGER,
    resolved_value  REAL,
    acked_at        INTEGER,
    acked_by        TEXT
);
CREATE UNIQUE INDEX alerts_one_firing ON alerts (rule_id, subject) WHERE state = 'firing';
CREATE INDEX alerts_by_subject ON alerts (subject, id);
CREATE INDEX alerts_by_state ON alerts (state, id);

CREATE TABLE alert_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id),
    channel_id      INTEGER NOT NULL,
    change          TEXT NOT NULL CHECK (change IN ('firing', 'resolved')),
    at              INTEGER NOT NULL,
    value           REAL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER,
    UNIQUE (alert_id, channel_id, change)
);
CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at, id);
