-- Certificate renewal and claims (issue 7).
--
-- A certificate issued by a renewal is 'pending' until its device connects
-- with it; it then becomes 'current' and the one before it 'superseded',
-- with a revocation reason and time so that the CRL lists it. SQLite cannot
-- change a CHECK constraint in place, so the table is rebuilt with the new
-- status (nothing references it by foreign key).
CREATE TABLE certificates_next (
    serial             TEXT PRIMARY KEY,
    identity_id        TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    fingerprint        TEXT NOT NULL UNIQUE,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('pending', 'current', 'superseded', 'revoked')),
    revocation_reason  TEXT,
    revoked_at         INTEGER,
    issued_at          INTEGER NOT NULL
);
INSERT INTO certificates_next (serial, identity_id, kind, fingerprint, not_before, not_after,
                               status, revocation_reason, revoked_at, issued_at)
    SELECT serial, identity_id, kind, fingerprint, not_before, not_after,
           status, revocation_reason, revoked_at, issued_at
    FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_next RENAME TO certificates;
CREATE INDEX certificates_identity ON certificates (identity_id);
CREATE INDEX certificates_not_after ON certificates (not_after) WHERE status = 'current';
-- One pending certificate per identity: a second renewal replaces the first.
CREATE UNIQUE INDEX certificates_one_pending ON certificates (identity_id)
    WHERE status = 'pending';

-- Claims (DESIGN.md "Claiming"): a user or group asks for a device, the
-- device confirms with the nonce sent on devices/{id}/bind/down.
CREATE TABLE claims (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    owner_type  TEXT NOT NULL CHECK (owner_type IN ('user', 'group')),
    owner_id    TEXT NOT NULL,
    -- 128 random bits, lowercase hex: the challenge the device sends back.
    nonce       TEXT NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('pending', 'bound', 'expired', 'refused', 'superseded')),
    -- Why it ended without binding (an error code such as claim_expired).
    reason      TEXT,
    -- Confirmations with a wrong nonce.
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE UNIQUE INDEX claims_one_pending ON claims (device_id) WHERE status = 'pending';
CREATE INDEX claims_device ON claims (device_id, id);
