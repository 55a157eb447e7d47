-- Enrollment tokens (issue 7): a device presenting one over HTTPS registers
-- itself from its CSR. Only the SHA-256 of a token is kept; `id` is the
-- public handle operators list and revoke it by. Uses are counted in the
-- transaction that registers the device, so a refused attempt never
-- consumes one and two racing enrollments cannot both take the last.
CREATE TABLE enrollment_tokens (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    uses_allowed  INTEGER NOT NULL CHECK (uses_allowed > 0),
    uses_used     INTEGER NOT NULL DEFAULT 0
                  CHECK (uses_used >= 0 AND uses_used <= uses_allowed),
    -- Scope: ids it registers start with this prefix; devices it registers
    -- belong to this owner.
    id_prefix     TEXT,
    owner_type    TEXT CHECK (owner_type IN ('user', 'group')),
    owner_id      TEXT,
    revoked_at    INTEGER,
    created_by    TEXT NOT NULL,
    last_used_at  INTEGER,
    CHECK ((owner_type IS NULL) = (owner_id IS NULL))
);
