-- Console users, their sessions, the first-start setup token and API tokens
-- (issue 8). Secrets are never stored in clear: passwords as Argon2id PHC
-- strings, session ids, setup, invite and API tokens as SHA-256 hex, TOTP
-- secrets sealed (AES-256-GCM) by the web part with a key outside the
-- database. Times are Unix milliseconds.

CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    email             TEXT,
    password_hash     TEXT,
    role              TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer')),
    disabled          BOOLEAN NOT NULL DEFAULT FALSE,
    totp_secret       BYTEA,
    mfa_enabled       BOOLEAN NOT NULL DEFAULT FALSE,
    failed_logins     INTEGER NOT NULL DEFAULT 0,
    locked_until      BIGINT,
    invite_hash       TEXT UNIQUE,
    invite_expires_at BIGINT,
    created_by        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
-- Names are unique whatever their case ("Alice" and "alice" are one user).
CREATE UNIQUE INDEX users_name ON users (lower(name));
-- At most one owner.
CREATE UNIQUE INDEX users_one_owner ON users (role) WHERE role = 'owner';

CREATE TABLE user_sessions (
    id_hash             TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    last_used_at        BIGINT NOT NULL,
    idle_expires_at     BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    user_agent          TEXT NOT NULL,
    ip                  TEXT NOT NULL
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);

CREATE TABLE setup_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer')),
    created_by   TEXT NOT NULL REFERENCES users (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_creator ON api_tokens (created_by);
