-- Foundation: identities, devices, certificates, audit log, change feed.
-- Timestamps are Unix milliseconds (INTEGER here, BIGINT in PostgreSQL).

-- Device ids and service names share one namespace: a row here reserves it.
CREATE TABLE identities (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE devices (
    id               TEXT PRIMARY KEY REFERENCES identities (id) ON DELETE CASCADE,
    state            TEXT NOT NULL CHECK (state IN ('unbound', 'bound', 'disabled', 'revoked')),
    -- Who the device belongs to once claimed. owner_type 'group' arrives with
    -- organizations; the column pair is ready for it.
    owner_type       TEXT CHECK (owner_type IN ('user', 'group')),
    owner_id         TEXT,
    cert_serial      TEXT NOT NULL,
    claim_code_hash  TEXT,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen        INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((owner_type IS NULL) = (owner_id IS NULL))
);
CREATE INDEX devices_state ON devices (state);
CREATE INDEX devices_owner ON devices (owner_type, owner_id);

-- Every certificate ever issued. Rows outlive their identity so that the CRL
-- keeps listing the serials of deleted devices.
CREATE TABLE certificates (
    serial             TEXT PRIMARY KEY,
    identity_id        TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    fingerprint        TEXT NOT NULL UNIQUE,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('current', 'superseded', 'revoked')),
    revocation_reason  TEXT,
    revoked_at         INTEGER,
    issued_at          INTEGER NOT NULL
);
CREATE INDEX certificates_identity ON certificates (identity_id);
CREATE INDEX certificates_not_after ON certificates (not_after) WHERE status = 'current';

-- Append-only, HMAC-chained audit log (see audit.rs).
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    source    TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT,
    detail    TEXT NOT NULL,
    prev_mac  TEXT NOT NULL,
    mac       TEXT NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Change feed: every state change a running server must apply (revocations,
-- disables, ...) is appended in the same transaction; `serve` follows it.
CREATE TABLE changes (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    subject  TEXT NOT NULL
);

-- Small counters and settings (e.g. the CRL number).
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
