-- Enrollment tokens (issue 7): the same table as migrations/sqlite/0005, in
-- PostgreSQL's types. Only the SHA-256 of a token is kept; `id` is the
-- public handle operators list and revoke it by. Uses are counted in the
-- transaction that registers the device (the row is locked FOR UPDATE), so
-- a refused attempt never consumes one and two racing enrollments cannot
-- both take the last.
CREATE TABLE enrollment_tokens (
    id            TEXT COLLATE "C" PRIMARY KEY,
    token_hash    TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    uses_allowed  BIGINT NOT NULL CHECK (uses_allowed > 0),
    uses_used     BIGINT NOT NULL DEFAULT 0
                  CHECK (uses_used >= 0 AND uses_used <= uses_allowed),
    id_prefix     TEXT COLLATE "C",
    owner_type    TEXT CHECK (owner_type IN ('user', 'group')),
    owner_id      TEXT,
    revoked_at    BIGINT,
    created_by    TEXT NOT NULL,
    last_used_at  BIGINT,
    CHECK ((owner_type IS NULL) = (owner_id IS NULL))
);
