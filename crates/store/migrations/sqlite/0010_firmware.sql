-- Firmware (issue 9): the public keys trusted to sign firmware bundles, and
-- the uploaded bundles that verified with one of them. Images live in the
-- data dir, content-addressed by `sha256`; the manifest bytes and signature
-- are kept here so that an offer to a device carries exactly what was
-- signed. The store records only bundles verified by the caller
-- (`NewFirmware` is made from a `VerifiedFirmware`), and refuses one whose
-- key is not (or no longer) trusted in the same transaction.
CREATE TABLE firmware_keys (
    name        TEXT PRIMARY KEY,
    -- First 8 bytes of SHA-256 of the public key, lowercase hex.
    key_id      TEXT NOT NULL UNIQUE CHECK (length(key_id) = 16),
    -- The 32-byte Ed25519 public key, lowercase hex.
    public_key  TEXT NOT NULL UNIQUE CHECK (length(public_key) = 64),
    added_at    INTEGER NOT NULL,
    added_by    TEXT NOT NULL
);

CREATE TABLE firmware (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    device_type       TEXT NOT NULL,
    version           TEXT NOT NULL,
    security_version  INTEGER NOT NULL CHECK (security_version >= 0),
    size              INTEGER NOT NULL CHECK (size >= 0),
    sha256            TEXT NOT NULL CHECK (length(sha256) = 64),
    key_id            TEXT NOT NULL,
    manifest          BLOB NOT NULL,
    signature         BLOB NOT NULL,
    uploaded_at       INTEGER NOT NULL,
    uploaded_by       TEXT NOT NULL,
    UNIQUE (device_type, version)
);
CREATE INDEX firmware_by_sha256 ON firmware (sha256);
