-- Service identities: back-end consumers and operators' tools. They share
-- the identities namespace with devices.
CREATE TABLE services (
    id           TEXT COLLATE "C" PRIMARY KEY REFERENCES identities (id) ON DELETE CASCADE,
    state        TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    cert_serial  TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
