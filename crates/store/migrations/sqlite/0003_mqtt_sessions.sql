-- Durable MQTT state: persistent sessions, their subscriptions and queued
-- QoS 1/2 deliveries, and retained messages. Written by the broker with
-- group commit before it acknowledges what depends on them.
CREATE TABLE mqtt_sessions (
    client_id         TEXT PRIMARY KEY,
    expiry_secs       INTEGER NOT NULL,
    disconnected_at   INTEGER,
    subscriptions     TEXT NOT NULL  -- JSON array of {filter, qos, no_local, retain_as_published, subscription_id}
);

CREATE TABLE mqtt_queue (
    client_id   TEXT NOT NULL,
    id          INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    properties  BLOB NOT NULL,
    expires_at  INTEGER,
    subscription_ids TEXT NOT NULL,
    PRIMARY KEY (client_id, id)
) WITHOUT ROWID;

CREATE TABLE mqtt_retained (
    topic       TEXT PRIMARY KEY,
    payload     BLOB NOT NULL,
    qos         INTEGER NOT NULL,
    properties  BLOB NOT NULL,
    expires_at  INTEGER
) WITHOUT ROWID;
