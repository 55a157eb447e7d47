-- Durable MQTT state: persistent sessions, their subscriptions and queued
-- QoS 1/2 deliveries, and retained messages. Written by the broker with
-- group commit before it acknowledges what depends on them.
CREATE TABLE mqtt_sessions (
    client_id         TEXT COLLATE "C" PRIMARY KEY,
    expiry_secs       BIGINT NOT NULL,
    disconnected_at   BIGINT,
    subscriptions     TEXT NOT NULL  -- JSON array of {filter, qos, no_local, retain_as_published, subscription_id}
);

CREATE TABLE mqtt_queue (
    client_id         TEXT COLLATE "C" NOT NULL,
    id                BIGINT NOT NULL,
    topic             TEXT NOT NULL,
    payload           BYTEA NOT NULL,
    qos               SMALLINT NOT NULL,
    retain            BOOLEAN NOT NULL,
    properties        BYTEA NOT NULL,
    expires_at        BIGINT,
    subscription_ids  TEXT NOT NULL,  -- JSON array of integers
    PRIMARY KEY (client_id, id)
);

CREATE TABLE mqtt_retained (
    topic       TEXT COLLATE "C" PRIMARY KEY,
    payload     BYTEA NOT NULL,
    qos         SMALLINT NOT NULL,
    properties  BYTEA NOT NULL,
    expires_at  BIGINT
);
