-- Certificate renewal and claims (issue 7); the same as
-- migrations/sqlite/0006, in PostgreSQL's types.
--
-- A certificate issued by a renewal is 'pending' until its device connects
-- with it; it then becomes 'current' and the one before it 'superseded',
-- with a revocation reason and time so that the CRL lists it.
ALTER TABLE certificates DROP CONSTRAINT certificates_status_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_status_check
    CHECK (status IN ('pending', 'current', 'superseded', 'revoked'));
-- One pending certificate per identity: a second renewal replaces the first.
CREATE UNIQUE INDEX certificates_one_pending ON certificates (identity_id)
    WHERE status = 'pending';

-- Claims (DESIGN.md "Claiming"): a user or group asks for a device, the
-- device confirms with the nonce sent on devices/{id}/bind/down.
CREATE TABLE claims (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
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
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE UNIQUE INDEX claims_one_pending ON claims (device_id) WHERE status = 'pending';
CREATE INDEX claims_device ON claims (device_id, id);
