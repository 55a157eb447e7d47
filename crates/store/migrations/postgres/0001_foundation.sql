-- Foundation: identities, devices, certificates, audit log, change feed.
-- The same schema as migrations/sqlite/0001, in PostgreSQL's types.
-- Timestamps are Unix milliseconds (BIGINT). Names and serials use the "C"
-- collation: byte order, as SQLite sorts them, whatever the server's locale.

-- Device ids and service names share one namespace: a row here reserves it.
CREATE TABLE identities (
    id          TEXT COLLATE "C" PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE devices (
    id               TEXT COLLATE "C" PRIMARY KEY REFERENCES identities (id) ON DELETE CASCADE,
    state            TEXT NOT NULL CHECK (state IN ('unbound', 'bound', 'disabled', 'revoked')),
    -- Who the device belongs to once claimed. owner_type 'group' arrives with
    -- organizations; the column pair is ready for it.
    owner_type       TEXT CHECK (owner_type IN ('user', 'group')),
    owner_id         TEXT,
    cert_serial      TEXT COLLATE "C" NOT NULL,
    claim_code_hash  TEXT,
    online           BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen        BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    CHECK ((owner_type IS NULL) = (owner_id IS NULL))
);
CREATE INDEX devices_state ON devices (state);
CREATE INDEX devices_owner ON devices (owner_type, owner_id);

-- Every certificate ever issued. Rows outlive their identity so that the CRL
-- keeps listing the serials of deleted devices.
CREATE TABLE certificates (
    serial             TEXT COLLATE "C" PRIMARY KEY,
    identity_id        TEXT COLLATE "C" NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    fingerprint        TEXT NOT NULL UNIQUE,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('current', 'superseded', 'revoked')),
    revocation_reason  TEXT,
    revoked_at         BIGINT,
    issued_at          BIGINT NOT NULL
);
CREATE INDEX certificates_identity ON certificates (identity_id);
CREATE INDEX certificates_not_after ON certificates (not_after) WHERE status = 'current';

-- Append-only, HMAC-chained audit log (see src/audit.rs). Rows are appended
-- under a transaction-scoped advisory lock (src/postgres/ledger.rs), so seq
-- has no gaps and each row links to the one committed before it. detail is
-- TEXT, not JSONB: the mac covers its exact bytes.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    source    TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT,
    detail    TEXT NOT NULL,
    prev_mac  TEXT NOT NULL,
    mac       TEXT NOT NULL
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Change feed: every state change a running server must apply (revocations,
-- disables, ...) is appended in the same transaction; `serve` follows it.
-- Appends take the same advisory lock as the audit log, so seq values are
-- handed out in commit order and a follower reading `seq > last` never
-- skips a row that commits later with a smaller seq.
CREATE TABLE changes (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    subject  TEXT NOT NULL
);

-- Small counters and settings (e.g. the CRL number).
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
