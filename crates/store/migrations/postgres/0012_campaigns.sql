-- OTA campaigns (issue 9, docs/ota.md §5): the same tables as
-- migrations/sqlite/0011, in PostgreSQL types. One row per campaign and one per
-- device in it. The target is resolved once, at creation; every later move
-- is a conditional update (`WHERE status = ...`, `WHERE state IN (...)`), so
-- two engines on one database never move a row twice. Durations are
-- milliseconds, timestamps Unix milliseconds.
CREATE TABLE campaigns (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                     TEXT NOT NULL,
    firmware_id              BIGINT NOT NULL REFERENCES firmware (id),
    -- Copied from the firmware row: reports are matched by version.
    device_type              TEXT COLLATE "C" NOT NULL,
    version                  TEXT COLLATE "C" NOT NULL,
    -- The target spec as given (JSON), for display.
    target                   TEXT NOT NULL,
    -- Cumulative percentages, e.g. "1,10,50,100".
    waves                    TEXT NOT NULL,
    soak_ms                  BIGINT NOT NULL CHECK (soak_ms >= 0),
    success_threshold        DOUBLE PRECISION NOT NULL CHECK (success_threshold BETWEEN 0 AND 1),
    failure_threshold        DOUBLE PRECISION NOT NULL CHECK (failure_threshold BETWEEN 0 AND 1),
    offered_timeout_ms         BIGINT NOT NULL CHECK (offered_timeout_ms > 0),
    downloading_timeout_ms     BIGINT NOT NULL CHECK (downloading_timeout_ms > 0),
    verifying_timeout_ms       BIGINT NOT NULL CHECK (verifying_timeout_ms > 0),
    pending_reboot_timeout_ms  BIGINT NOT NULL CHECK (pending_reboot_timeout_ms > 0),
    pending_confirm_timeout_ms BIGINT NOT NULL CHECK (pending_confirm_timeout_ms > 0),
    status                   TEXT NOT NULL CHECK (status IN
        ('draft', 'running', 'paused', 'completed', 'aborted', 'cancelled')),
    -- Why the status is what it is (e.g. 'success-threshold'), if not by hand.
    status_reason            TEXT,
    -- The last wave started (0: none), and the last one whose success
    -- check passed or an operator overrode by resuming.
    current_wave             BIGINT NOT NULL DEFAULT 0,
    reviewed_wave            BIGINT NOT NULL DEFAULT 0,
    devices                  BIGINT NOT NULL,
    created_at               BIGINT NOT NULL,
    created_by               TEXT NOT NULL,
    updated_at               BIGINT NOT NULL
);
CREATE INDEX campaigns_status ON campaigns (status);

CREATE TABLE campaign_devices (
    campaign_id     BIGINT NOT NULL REFERENCES campaigns (id),
    device_id       TEXT COLLATE "C" NOT NULL,
    wave            BIGINT NOT NULL CHECK (wave >= 1),
    -- Place in the campaign's stable shuffle.
    position        BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'offered', 'downloading',
        'verifying', 'pending-reboot', 'pending-confirm', 'succeeded', 'failed',
        'rolled-back', 'cancelled')),
    reason          TEXT,
    bytes           BIGINT,
    total           BIGINT,
    -- When the current state times out (NULL: queued or final).
    deadline        BIGINT,
    offered_at      BIGINT,
    -- Cancelled while the device held the offer: a `cancel` downlink is due.
    cancel_pending  BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, device_id)
);
CREATE INDEX campaign_devices_wave ON campaign_devices (campaign_id, wave, state);
CREATE INDEX campaign_devices_device ON campaign_devices (device_id, state);
CREATE INDEX campaign_devices_deadline ON campaign_devices (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX campaign_devices_cancel ON campaign_devices (campaign_id) WHERE cancel_pending;
