-- Alerts (issue 10): the same tables as migrations/sqlite/0013, in
-- PostgreSQL's types. Channels (sealed URL, redacted target), rules,
-- alerts (one firing per rule and subject), and the delivery outbox
-- written in the same transaction as the alert change.
CREATE TABLE alert_channels (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('discord', 'slack', 'json')),
    target          TEXT NOT NULL,
    url_sealed      BYTEA NOT NULL,
    secret_sealed   BYTEA,
    allow_private   BOOLEAN NOT NULL,
    per_minute      BIGINT NOT NULL CHECK (per_minute > 0),
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL
);

CREATE TABLE alert_rules (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    expr        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('fleet', 'owner', 'device')),
    scope_value TEXT COLLATE "C",
    channel_id  BIGINT NOT NULL REFERENCES alert_channels (id),
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    CHECK ((scope = 'fleet') = (scope_value IS NULL))
);
CREATE INDEX alert_rules_by_channel ON alert_rules (channel_id);

CREATE TABLE alerts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         BIGINT NOT NULL,
    rule_name       TEXT NOT NULL,
    expr            TEXT NOT NULL,
    subject         TEXT COLLATE "C" NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('firing', 'resolved', 'closed')),
    fired_at        BIGINT NOT NULL,
    fired_value     DOUBLE PRECISION,
    resolved_at     BIGINT,
    resolved_value  DOUBLE PRECISION,
    acked_at        BIGINT,
    acked_by        TEXT
);
CREATE UNIQUE INDEX alerts_one_firing ON alerts (rule_id, subject) WHERE state = 'firing';
CREATE INDEX alerts_by_subject ON alerts (subject, id);
CREATE INDEX alerts_by_state ON alerts (state, id);

CREATE TABLE alert_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        BIGINT NOT NULL REFERENCES alerts (id),
    channel_id      BIGINT NOT NULL,
    change          TEXT NOT NULL CHECK (change IN ('firing', 'resolved')),
    at              BIGINT NOT NULL,
    value           DOUBLE PRECISION,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    delivered_at    BIGINT,
    UNIQUE (alert_id, channel_id, change)
);
CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at, id);
