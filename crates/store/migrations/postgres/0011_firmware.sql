-- Firmware (issue 9): the same tables as migrations/sqlite/0010, in
-- PostgreSQL's types. Trusted signing keys, and uploaded bundles that
-- verified with one of them; images live in the data dir by `sha256`.
CREATE TABLE firmware_keys (
    name        TEXT COLLATE "C" PRIMARY KEY,
    key_id      TEXT COLLATE "C" NOT NULL UNIQUE CHECK (length(key_id) = 16),
    public_key  TEXT COLLATE "C" NOT NULL UNIQUE CHECK (length(public_key) = 64),
    added_at    BIGINT NOT NULL,
    added_by    TEXT NOT NULL
);

CREATE TABLE firmware (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_type       TEXT COLLATE "C" NOT NULL,
    version           TEXT COLLATE "C" NOT NULL,
    security_version  BIGINT NOT NULL CHECK (security_version >= 0 AND security_version <= 4294967295),
    size              BIGINT NOT NULL CHECK (size >= 0),
    sha256            TEXT COLLATE "C" NOT NULL CHECK (length(sha256) = 64),
    key_id            TEXT COLLATE "C" NOT NULL,
    manifest          BYTEA NOT NULL,
    signature         BYTEA NOT NULL,
    uploaded_at       BIGINT NOT NULL,
    uploaded_by       TEXT NOT NULL,
    UNIQUE (device_type, version)
);
CREATE INDEX firmware_by_sha256 ON firmware (sha256);
